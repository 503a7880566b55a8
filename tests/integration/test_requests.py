"""Every request type through a real clogfsd over real netlink sockets, in both formats."""

from __future__ import annotations

import errno
import struct

import pytest

from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import Protocol
from tests.integration.conftest import Rig

pytestmark = pytest.mark.root

TARGET = 131072  # sectors: 128 regions of 1024


def ctr_text(rig: Rig, uuid: bytes, args: str = "1024 nosync", *, disk: str | None = None) -> bytes:
    """The CTR string the kernel would send for a table with these log arguments."""
    words = args.split(" ")
    if rig.emu.protocol is Protocol.ULOG:
        kind = "clustered-disk" if disk else "clustered-core"
        dev = [disk] if disk else []
        return " ".join([str(TARGET), kind, *dev, *words]).encode()
    dev = [disk] if disk else []
    return " ".join([*dev, words[0], uuid.decode(), *words[1:], str(TARGET)]).encode()


async def create(rig: Rig, uuid: bytes, luid: int = 1, args: str = "1024 nosync") -> None:
    reply = await rig.emu.request(T.CTR, uuid, luid=luid, data=ctr_text(rig, uuid, args))
    assert reply.error == 0, rig.daemon.stderr()
    reply = await rig.emu.request(T.RESUME, uuid, luid=luid)
    assert reply.error == 0


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def s64_of(data: bytes) -> int:
    return struct.unpack("<q", data[:8])[0]


def bool_of(rig: Rig, data: bytes) -> int:
    if rig.emu.protocol is Protocol.ULOG:
        assert len(data) == 8
        return struct.unpack("=q", data)[0]
    assert len(data) == 4
    return struct.unpack("=i", data)[0]


async def test_ctr_and_lifecycle(rig: Rig) -> None:
    await create(rig, b"LIFE-1")
    for rtype in (T.PRESUSPEND, T.POSTSUSPEND, T.RESUME, T.PRESUSPEND, T.POSTSUSPEND, T.DTR):
        reply = await rig.emu.request(rtype, b"LIFE-1", luid=1)
        assert (rtype, reply.error) == (rtype, 0)
    # gone: a data-path request now asks the kernel to reconnect
    reply = await rig.emu.request(T.IN_SYNC, b"LIFE-1", luid=1, data=u64(0))
    assert reply.error == -errno.ESRCH


async def test_get_region_size(rig: Rig) -> None:
    await create(rig, b"GRS-1", args="2048 nosync")
    reply = await rig.emu.request(T.GET_REGION_SIZE, b"GRS-1", luid=1)
    assert (reply.error, reply.data) == (0, u64(2048))


async def test_in_sync_and_is_clean_nosync(rig: Rig) -> None:
    await create(rig, b"SYNC-1")
    reply = await rig.emu.request(T.IN_SYNC, b"SYNC-1", luid=1, data=u64(5))
    assert bool_of(rig, reply.data) == 1
    reply = await rig.emu.request(T.IS_CLEAN, b"SYNC-1", luid=1, data=u64(5))
    assert bool_of(rig, reply.data) == 1


async def test_mark_flush_clear_changes_is_clean(rig: Rig) -> None:
    await create(rig, b"MARK-1")
    assert (await rig.emu.request(T.MARK_REGION, b"MARK-1", luid=1, data=u64(7))).error == 0
    assert (await rig.emu.request(T.FLUSH, b"MARK-1", luid=1)).error == 0
    reply = await rig.emu.request(T.IS_CLEAN, b"MARK-1", luid=1, data=u64(7))
    assert bool_of(rig, reply.data) == 0
    assert (await rig.emu.request(T.CLEAR_REGION, b"MARK-1", luid=1, data=u64(7))).error == 0
    assert (await rig.emu.request(T.FLUSH, b"MARK-1", luid=1)).error == 0
    reply = await rig.emu.request(T.IS_CLEAN, b"MARK-1", luid=1, data=u64(7))
    assert bool_of(rig, reply.data) == 1


@pytest.mark.mainline_only("take 5 sends one region per MARK_REGION")
async def test_mark_batch_of_32(rig: Rig) -> None:
    await create(rig, b"BATCH-1")
    regions = b"".join(u64(r) for r in range(32, 64))
    assert (await rig.emu.request(T.MARK_REGION, b"BATCH-1", luid=1, data=regions)).error == 0
    for r in (31, 32, 63, 64):
        reply = await rig.emu.request(T.IS_CLEAN, b"BATCH-1", luid=1, data=u64(r))
        assert (r, bool_of(rig, reply.data)) == (r, 0 if 32 <= r < 64 else 1)


@pytest.mark.mainline_only("take 5 has no integrated flush")
async def test_integrated_flush_payload_marks(rig: Rig) -> None:
    await create(rig, b"IFL-1")
    reply = await rig.emu.request(T.FLUSH, b"IFL-1", luid=1, data=u64(3) + u64(4))
    assert (reply.error, reply.data) == (0, b"")  # data_size 0, never the payload echoed
    reply = await rig.emu.request(T.IS_CLEAN, b"IFL-1", luid=1, data=u64(4))
    assert bool_of(rig, reply.data) == 0


async def test_resync_cycle(rig: Rig) -> None:
    await create(rig, b"RES-1", args="1024")  # default sync: every region needs recovery
    reply = await rig.emu.request(T.GET_SYNC_COUNT, b"RES-1", luid=1)
    assert reply.data == u64(0)
    reply = await rig.emu.request(T.GET_RESYNC_WORK, b"RES-1", luid=1)
    assert reply.data == struct.pack("=qQ", 1, 0)
    reply = await rig.emu.request(T.IS_REMOTE_RECOVERING, b"RES-1", luid=1, data=u64(0))
    assert reply.data[:8] == struct.pack("=q", 1)
    data = u64(0) + struct.pack("=q", 1)
    assert (await rig.emu.request(T.SET_REGION_SYNC, b"RES-1", luid=1, data=data)).error == 0
    reply = await rig.emu.request(T.GET_SYNC_COUNT, b"RES-1", luid=1)
    assert reply.data == u64(1)
    reply = await rig.emu.request(T.IN_SYNC, b"RES-1", luid=1, data=u64(0))
    assert bool_of(rig, reply.data) == 1
    reply = await rig.emu.request(T.GET_RESYNC_WORK, b"RES-1", luid=1)
    assert reply.data == struct.pack("=qQ", 1, 1)


async def test_is_remote_recovering_in_sync_log(rig: Rig) -> None:
    await create(rig, b"IRR-1")
    reply = await rig.emu.request(T.IS_REMOTE_RECOVERING, b"IRR-1", luid=1, data=u64(9))
    assert reply.data == struct.pack("=qQ", 0, 128)


async def test_status_info_core(rig: Rig) -> None:
    await create(rig, b"STAT-1")
    reply = await rig.emu.request(T.STATUS_INFO, b"STAT-1", luid=1)
    assert reply.data == b"1 clustered-core\0"


async def test_status_table(rig: Rig) -> None:
    await create(rig, b"TAB-1")
    reply = await rig.emu.request(T.STATUS_TABLE, b"TAB-1", luid=1)
    if rig.emu.protocol is Protocol.TAKE5:
        assert reply.data == b"clustered-core 3 1024 TAB-1 nosync "
    else:
        assert reply.data == b"clustered-core 1024 nosync "


@pytest.mark.mainline_only("take 5 cannot tell a duplicate CTR from a reload (protocol.md §10)")
async def test_duplicate_ctr_is_harmless(rig: Rig) -> None:
    await create(rig, b"DUP-1")
    reply = await rig.emu.request(T.CTR, b"DUP-1", luid=1, data=ctr_text(rig, b"DUP-1"))
    assert reply.error == 0


async def test_many_requests_in_flight(rig: Rig) -> None:
    import trio

    for i in range(8):
        await create(rig, f"PAR-{i}".encode(), luid=100 + i)
    results: list[int] = []

    async def hammer(i: int) -> None:
        for r in range(20):
            reply = await rig.emu.request(
                T.MARK_REGION, f"PAR-{i}".encode(), luid=100 + i, data=u64(r)
            )
            results.append(reply.error)
            reply = await rig.emu.request(T.FLUSH, f"PAR-{i}".encode(), luid=100 + i)
            results.append(reply.error)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(hammer, i)
    assert results == [0] * 320
