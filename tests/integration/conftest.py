"""Fixtures: a kernel emulator and a real clogfsd wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clogfs.netlink.emulator import KernelEmulator, open_kernel_emulator
from clogfs.netlink.wire import Protocol
from tests.integration.harness import Daemon, run_clogfsd


@dataclass
class Rig:
    """A daemon and the emulator that plays its kernel."""

    emu: KernelEmulator
    daemon: Daemon
    tmp: Path


@pytest.fixture(params=[Protocol.ULOG, Protocol.TAKE5], ids=["ulog", "take5"])
def protocol(request: pytest.FixtureRequest) -> Protocol:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def rig(tmp_path: Path, protocol: Protocol) -> AsyncIterator[Rig]:
    async with open_kernel_emulator(protocol) as emu:
        async with run_clogfsd(tmp_path / "d", kernel_port=emu.port_id) as daemon:
            yield Rig(emu, daemon, tmp_path)
