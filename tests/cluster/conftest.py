"""Fixtures for the corosync tests: one rig per test module, torn down completely."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.rig import CorosyncRig, open_rig


@pytest.fixture(scope="module")
def rig1() -> Iterator[CorosyncRig]:
    """A one-node corosync cluster (node id 1)."""
    with open_rig(1) as rig:
        yield rig


@pytest.fixture(scope="module")
def rig3() -> Iterator[CorosyncRig]:
    """A three-node corosync cluster (node ids 1, 2, 3)."""
    with open_rig(3) as rig:
        yield rig
