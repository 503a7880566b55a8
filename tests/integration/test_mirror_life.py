"""A mirror's whole life as the kernel drives it (kernel-vm.md sequences), through clogfsd."""

from __future__ import annotations

import pytest

from clogfs.netlink.emulator import EmulatedMirror
from clogfs.netlink.wire import Protocol
from tests.integration.conftest import Rig

pytestmark = pytest.mark.root

TARGET = 131072  # 128 regions of 1024 sectors


def mirror(rig: Rig, uuid: bytes, flags: str, *, integrated_flush: bool = False) -> EmulatedMirror:
    words = f"clustered-core 1024 {flags}".strip()
    if rig.emu.protocol is Protocol.TAKE5:
        words = f"1024 {uuid.decode()} {flags}".strip()
    return EmulatedMirror(rig.emu, uuid, 7, words, TARGET, integrated_flush=integrated_flush)


async def test_nosync_mirror_life(rig: Rig) -> None:
    m = mirror(rig, b"LIFE-NOSYNC", "nosync")
    await m.create()
    for region in (0, 1, 64, 127, 0):
        await m.write(region)
        assert await m.read(region) == 1
    assert (await m.status()).endswith("128/128 1 clustered-core")
    await m.suspend()
    await m.resume()
    await m.write(5)
    await m.remove()


async def test_default_sync_mirror_resyncs_fully(rig: Rig) -> None:
    m = mirror(rig, b"LIFE-SYNC", "")
    await m.create()
    assert (await m.status()).startswith("0/128 ")
    assert await m.read(3) == 0
    recovered = await m.resync_all()
    assert recovered == 128
    assert (await m.status()).startswith("128/128 ")
    assert await m.read(3) == 1
    await m.write(3)
    await m.remove()


@pytest.mark.mainline_only("take 5 has no integrated flush")
async def test_integrated_flush_mirror(rig: Rig) -> None:
    m = mirror(rig, b"LIFE-IFL", "nosync", integrated_flush=True)
    await m.create()
    for region in range(10):
        await m.write(region)
    await m.flush_deferred()
    await m.remove()
