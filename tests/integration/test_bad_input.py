"""Bad input through a real clogfsd: a negative errno where a seq is known, never a crash.

After every bad request the daemon must still answer a good one, and the log's state must
be unchanged.
"""

from __future__ import annotations

import errno
import struct

import pytest
import trio

from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG, Protocol, encode_request
from tests.integration.conftest import Rig
from tests.integration.test_requests import bool_of, create, ctr_text, u64

pytestmark = pytest.mark.root


async def still_serving(rig: Rig, uuid: bytes = b"ALIVE") -> None:
    reply = await rig.emu.request(T.CTR, uuid, luid=77, data=ctr_text(rig, uuid))
    assert reply.error == 0
    assert rig.daemon.process.poll() is None


async def test_short_datagram_dropped(rig: Rig) -> None:
    await rig.emu.send_raw(b"\x05\x00\x00")
    await still_serving(rig)


async def test_truncated_connector_payload_gets_bare_ack(rig: Rig) -> None:
    good = encode_request(
        rig.emu.protocol,
        seq=4242,
        request_type=T.IN_SYNC,
        uuid=b"X",
        luid=1,
        data=u64(0),
        cn_seq=4242,
    )
    # claim a longer cn_msg.len than the datagram carries
    bad = bytearray(good)
    struct.pack_into("=H", bad, 32, len(good))
    await rig.emu.send_raw(bytes(bad))
    reply = await rig.emu.expect_reply(4242, timeout=5)
    assert reply.bare
    assert reply.error == -errno.EINVAL
    await still_serving(rig)


async def test_neither_shape_gets_bare_ack(rig: Rig) -> None:
    payload = b"\xff" * 170
    hdr = struct.pack("=IHHII", 16 + 20 + len(payload), 3, 0, 99, 0)
    cn = struct.pack("=IIIIHH", CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG, 99, 0, len(payload), 0)
    await rig.emu.send_raw(hdr + cn + payload)
    reply = await rig.emu.expect_reply(99, timeout=5)
    assert reply.bare
    assert reply.error == -errno.EINVAL
    await still_serving(rig)


async def test_other_connector_id_is_ignored(rig: Rig) -> None:
    payload = b"\0" * 40
    hdr = struct.pack("=IHHII", 16 + 20 + len(payload), 3, 0, 5, 0)
    cn = struct.pack("=IIIIHH", 1, 1, 5, 0, len(payload), 0)  # proc connector id
    await rig.emu.send_raw(hdr + cn + payload)
    with trio.move_on_after(0.3) as scope:
        await rig.emu.expect_reply(5)
    assert scope.cancelled_caught
    await still_serving(rig)


async def test_unknown_request_type(rig: Rig) -> None:
    await create(rig, b"UNK-1")
    reply = await rig.emu.request(200, b"UNK-1", luid=1)
    assert not reply.bare
    assert reply.error == -errno.EINVAL
    await still_serving(rig)


@pytest.mark.parametrize(
    "args",
    [
        "1000 nosync",
        "1 nosync",
        "0x400 nosync",
        "-1024",
        "1024 nosync nosync",
        "1024 sync nosync",
        "1024 bogus",
        "262144 nosync",
        "99999999999 nosync",
        "1024  nosync",
    ],
)
async def test_bad_ctr_arguments(rig: Rig, args: str) -> None:
    reply = await rig.emu.request(T.CTR, b"BAD-CTR", luid=1, data=ctr_text(rig, b"BAD-CTR", args))
    assert reply.error == -errno.EINVAL
    reply = await rig.emu.request(T.RESUME, b"BAD-CTR", luid=1)
    assert reply.error == -errno.ESRCH
    await still_serving(rig)


async def test_region_out_of_range_changes_nothing(rig: Rig) -> None:
    await create(rig, b"RANGE-1")
    for rtype in (T.IN_SYNC, T.IS_CLEAN, T.IS_REMOTE_RECOVERING, T.MARK_REGION, T.CLEAR_REGION):
        reply = await rig.emu.request(rtype, b"RANGE-1", luid=1, data=u64(128))
        assert (rtype, reply.error) == (rtype, -errno.EINVAL)
    if rig.emu.protocol is Protocol.ULOG:  # a batch is checked whole before anything applies
        reply = await rig.emu.request(T.MARK_REGION, b"RANGE-1", luid=1, data=u64(3) + u64(500))
        assert reply.error == -errno.EINVAL
        reply = await rig.emu.request(T.IS_CLEAN, b"RANGE-1", luid=1, data=u64(3))
        assert bool_of(rig, reply.data) == 1


async def test_wrong_payload_size(rig: Rig) -> None:
    await create(rig, b"SIZE-1")
    reply = await rig.emu.request(T.IN_SYNC, b"SIZE-1", luid=1, data=b"\0" * 5)
    assert reply.error == -errno.EINVAL
    reply = await rig.emu.request(T.MARK_REGION, b"SIZE-1", luid=1, data=b"\0" * 12)
    assert reply.error == -errno.EINVAL
    reply = await rig.emu.request(T.GET_SYNC_COUNT, b"SIZE-1", luid=1, data=b"\0" * 8)
    assert reply.error == -errno.EINVAL
    await still_serving(rig)


async def test_unknown_log(rig: Rig) -> None:
    reply = await rig.emu.request(T.IN_SYNC, b"NOPE", luid=9, data=u64(0))
    assert reply.error == -errno.ESRCH
    for rtype in (T.DTR, T.PRESUSPEND, T.POSTSUSPEND):
        reply = await rig.emu.request(rtype, b"NOPE", luid=9)
        assert (rtype, reply.error) == (rtype, 0)
    reply = await rig.emu.request(T.RESUME, b"NOPE", luid=9)
    assert reply.error == -errno.ESRCH


@pytest.mark.mainline_only("take 5 keys instances by CTR order, not luid")
async def test_same_key_different_ctr_string(rig: Rig) -> None:
    await create(rig, b"EXIST-1")
    reply = await rig.emu.request(
        T.CTR, b"EXIST-1", luid=1, data=ctr_text(rig, b"EXIST-1", "2048 nosync")
    )
    assert reply.error == -errno.EEXIST
    reply = await rig.emu.request(T.GET_REGION_SIZE, b"EXIST-1", luid=1)
    assert reply.data == u64(1024)


async def test_protocol_mismatch_is_refused(tmp_path, protocol: Protocol) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.harness import open_rig

    other = "take5" if protocol is Protocol.ULOG else "ulog"
    async with open_rig(tmp_path, protocol, args=["--protocol", other]) as rig:
        emu, daemon = rig.emu, rig.daemon
        reply = await emu.request(T.GET_SYNC_COUNT, b"MISMATCH", luid=1)
        assert reply.bare
        assert reply.error == -errno.EINVAL
        await daemon.wait_for_log("protocol mismatch")
