"""Fixtures: a kernel emulator and a real clogfsd wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clogfs.netlink.wire import Protocol
from tests.integration.harness import Rig, open_rig

__all__ = ["Rig"]


@pytest.fixture(params=[Protocol.ULOG, Protocol.TAKE5], ids=["ulog", "take5"])
def protocol(request: pytest.FixtureRequest) -> Protocol:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def rig(tmp_path: Path, protocol: Protocol) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path / "d", protocol) as rig:
        yield rig
