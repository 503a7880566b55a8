"""The kernel emulator over real connector sockets, answered by small responders built here.

Other tests on this machine may multicast to connector group 7 at the same time, so every
responder here answers only datagrams from its own emulator's port id.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from clogfs.netlink.emulator import EmulatedMirror, EmulatorError, open_kernel_emulator
from clogfs.netlink.requests import (
    RequestType,
    ResyncWork,
    decode_payload,
    encode_result,
    request_type_of,
)
from clogfs.netlink.wire import (
    CN_IDX_DM,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CONNECTOR,
    SOL_NETLINK,
    ConnectorMessage,
    Protocol,
    RequestHeader,
    classify,
    decode_request,
    encode_bare_ack,
    encode_reply,
    encode_request,
    split_datagram,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="user-to-user netlink needs CAP_NET_ADMIN"),
]

T = RequestType
UUID = b"EMU-UUID-1"
LUID = 0xFFFF_8880_1234_5600


@dataclass(frozen=True)
class Received:
    """One request a responder received from its emulator."""

    header: RequestHeader
    payload: bytes
    cn_seq: int


@dataclass
class Responder:
    """A connector socket joined to group 7 that reads one emulator's requests."""

    sock: trio.socket.SocketType
    port_id: int
    peer: int = -1  # the emulator's port id; datagrams from anyone else are ignored
    raw: list[bytes] = field(default_factory=list)

    async def receive(self) -> Received:
        """The next request from the emulator (malformed ones land in ``raw`` too)."""
        while True:
            datagram, address = await self.sock.recvfrom(65536)
            if address[0] != self.peer:
                continue
            self.raw.append(datagram)
            for msg in split_datagram(datagram):
                if not isinstance(msg, ConnectorMessage):
                    continue
                protocol = classify(msg.payload)
                if protocol is None:
                    return Received(_no_header(), b"", msg.seq)
                header, payload = decode_request(msg.payload, protocol)
                return Received(header, payload, msg.seq)

    async def send(self, datagram: bytes) -> None:
        await self.sock.sendto(datagram, (self.peer, 0))

    async def reply(self, req: Received, *, error: int = 0, data: bytes = b"") -> None:
        await self.send(encode_reply(req.header, error=error, data=data, nlmsg_pid=self.port_id))


def _no_header() -> RequestHeader:
    return RequestHeader(Protocol.ULOG, 0, b"", 0, 0, -1, 0, 0, b"")


@asynccontextmanager
async def open_responder() -> AsyncIterator[Responder]:
    sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    with sock:
        await sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, CN_IDX_DM)
        yield Responder(sock, sock.getsockname()[0])


# --- the emulator ---------------------------------------------------------------------------


async def test_request_gets_its_reply_by_multicast() -> None:
    async with open_responder() as resp, open_kernel_emulator() as emu:
        resp.peer = emu.port_id
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                req = await resp.receive()
                await resp.reply(req, data=struct.pack("=q", 1))

            nursery.start_soon(answer)
            reply = await emu.request(T.IN_SYNC, UUID, luid=LUID, data=struct.pack("=Q", 3))
    assert (reply.bare, reply.error, reply.data) == (False, 0, struct.pack("=q", 1))
    assert (reply.uuid, reply.luid, reply.request_type) == (UUID, LUID, T.IN_SYNC)


async def test_request_carries_the_documented_header() -> None:
    async with open_responder() as resp, open_kernel_emulator(Protocol.TAKE5) as emu:
        resp.peer = emu.port_id
        async with trio.open_nursery() as nursery:
            nursery.start_soon(emu.request, T.FLUSH, UUID)
            req = await resp.receive()
            await resp.reply(req)
    assert req.header.protocol is Protocol.TAKE5
    assert (req.header.uuid, req.header.request_type, req.header.seq) == (UUID, T.FLUSH, 0)
    assert req.cn_seq == req.header.seq


async def test_request_by_unicast_to_the_daemon_port() -> None:
    async with open_responder() as resp, open_kernel_emulator(daemon_port=resp.port_id) as emu:
        resp.peer = emu.port_id
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                req = await resp.receive()
                await resp.reply(req, error=-errno.ESRCH)

            nursery.start_soon(answer)
            reply = await emu.request(T.RESUME, UUID, luid=LUID)
    assert reply.error == -errno.ESRCH


async def test_many_requests_in_flight_match_their_replies() -> None:
    count = 6
    results: dict[int, bytes] = {}
    async with open_responder() as resp, open_kernel_emulator() as emu:
        resp.peer = emu.port_id

        async def ask(region: int) -> None:
            data = struct.pack("=Q", region)
            reply = await emu.request(T.IS_REMOTE_RECOVERING, UUID, luid=LUID, data=data)
            results[region] = reply.data

        async with trio.open_nursery() as nursery:
            for region in range(count):
                nursery.start_soon(ask, region)
            pending = [await resp.receive() for _ in range(count)]
            for req in reversed(pending):  # answer newest first
                await resp.reply(req, data=req.payload + bytes(8))
    assert results == {r: struct.pack("=Q", r) + bytes(8) for r in range(count)}
    assert len({req.header.seq for req in pending}) == count


async def test_bare_ack_completes_the_request() -> None:
    async with open_responder() as resp, open_kernel_emulator() as emu:
        resp.peer = emu.port_id
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                req = await resp.receive()
                await resp.send(encode_bare_ack(req.cn_seq, errno.EINVAL, nlmsg_pid=resp.port_id))

            nursery.start_soon(answer)
            reply = await emu.request(0x42, UUID, luid=LUID)
    assert (reply.bare, reply.error, reply.data) == (True, -errno.EINVAL, b"")


async def test_send_raw_then_expect_reply() -> None:
    async with open_responder() as resp, open_kernel_emulator() as emu:
        resp.peer = emu.port_id
        cn_seq = emu.allocate_seq()
        good = encode_request(Protocol.ULOG, seq=cn_seq, request_type=T.DTR, uuid=UUID)
        malformed = bytearray(good)
        malformed[36 + 144 + 1] = 1  # error field 0x100: neither shape
        await emu.send_raw(bytes(malformed))
        req = await resp.receive()
        assert req.header.seq == -1  # the responder saw no usable header
        await resp.send(encode_bare_ack(req.cn_seq, errno.EINVAL))
        reply = await emu.expect_reply(cn_seq)  # the reply may already have arrived
    assert (reply.bare, reply.cn_seq, reply.error) == (True, cn_seq, -errno.EINVAL)


async def test_request_without_reply_times_out() -> None:
    async with open_kernel_emulator(timeout=0.2) as emu:
        with pytest.raises(TimeoutError):
            await emu.request(T.GET_SYNC_COUNT, UUID)


async def test_replies_from_other_ports_are_ignored() -> None:
    async with (
        open_responder() as resp,
        open_responder() as impostor,
        open_kernel_emulator(daemon_port=resp.port_id) as emu,
    ):
        resp.peer = impostor.peer = emu.port_id
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                req = await resp.receive()
                forged = encode_reply(req.header, error=-errno.EIO)
                await impostor.send(forged)
                await resp.reply(req)

            nursery.start_soon(answer)
            reply = await emu.request(T.PRESUSPEND, UUID, luid=LUID)
    assert reply.error == 0


async def test_malformed_reply_is_recorded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clogfs.netlink.emulator")
    async with open_responder() as resp, open_kernel_emulator(timeout=0.3) as emu:
        resp.peer = emu.port_id
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                req = await resp.receive()
                await resp.send(encode_reply(req.header, error=0)[:-1])

            nursery.start_soon(answer)
            with pytest.raises(TimeoutError):
                await emu.request(T.DTR, UUID, luid=LUID)
    assert len(emu.malformed_replies) == 1
    assert "would refuse" in caplog.text


# --- EmulatedMirror against a scripted log ---------------------------------------------------

Script = Callable[[RequestType, object], object]


def canned(rtype: RequestType, value: object) -> object:
    """Results of a fully synced 128-region core log with region size 1024."""
    results: dict[RequestType, object] = {
        T.GET_REGION_SIZE: 1024,
        T.GET_SYNC_COUNT: 128,
        T.IN_SYNC: True,
        T.IS_CLEAN: True,
        T.GET_RESYNC_WORK: ResyncWork(0, 0),
        T.STATUS_INFO: "1 clustered-core",
        T.STATUS_TABLE: "clustered-core 3 1024 EMU-UUID-1 nosync ",
    }
    return results.get(rtype)


@asynccontextmanager
async def scripted_mirror(
    protocol: Protocol,
    ctr_args: str,
    script: Script = canned,
    *,
    integrated_flush: bool = False,
) -> AsyncIterator[tuple[EmulatedMirror, list[tuple[RequestType, object]]]]:
    """An EmulatedMirror whose requests a scripted log answers; yields it and the request log."""
    seen: list[tuple[RequestType, object]] = []
    async with open_responder() as resp, open_kernel_emulator(protocol, timeout=5) as emu:
        resp.peer = emu.port_id

        async def serve() -> None:
            while True:
                req = await resp.receive()
                rtype = request_type_of(req.header.request_type)
                assert rtype is not None
                value = decode_payload(rtype, req.payload, protocol)
                seen.append((rtype, value))
                try:
                    result = script(rtype, value)
                except EmulatorError as exc:
                    await resp.reply(req, error=-exc.errno)
                    continue
                await resp.reply(req, data=encode_result(rtype, result, protocol))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            luid = LUID if protocol is Protocol.ULOG else 0
            yield (
                EmulatedMirror(
                    emu, UUID, luid, ctr_args, 131072, integrated_flush=integrated_flush
                ),
                seen,
            )
            nursery.cancel_scope.cancel()


def types(seen: list[tuple[RequestType, object]]) -> list[RequestType]:
    return [rtype for rtype, _ in seen]


async def test_mirror_create_ulog() -> None:
    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024 nosync") as (mirror, seen):
        await mirror.create()
    assert types(seen) == [T.CTR, T.GET_REGION_SIZE, T.GET_SYNC_COUNT, T.RESUME, T.GET_RESYNC_WORK]
    assert seen[0][1] == decode_payload(T.CTR, b"131072 clustered-core 1024 nosync", Protocol.ULOG)
    assert (mirror.region_size, mirror.region_count, mirror.sync_count) == (1024, 128, 128)


async def test_mirror_create_take5() -> None:
    async with scripted_mirror(Protocol.TAKE5, "1024 EMU-UUID-1 nosync") as (mirror, seen):
        await mirror.create()
    assert types(seen) == [T.CTR, T.GET_SYNC_COUNT, T.RESUME, T.GET_RESYNC_WORK]
    assert seen[0][1] == decode_payload(T.CTR, b"1024 EMU-UUID-1 nosync 131072", Protocol.TAKE5)
    assert mirror.region_count == 128


async def test_mirror_create_failure_raises_with_errno() -> None:
    def refuse_ctr(rtype: RequestType, value: object) -> object:
        if rtype is T.CTR:
            raise EmulatorError(errno.EEXIST, rtype)
        return canned(rtype, value)

    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024", refuse_ctr) as (mirror, _):
        with pytest.raises(EmulatorError) as info:
            await mirror.create()
    assert (info.value.errno, info.value.request_type) == (errno.EEXIST, T.CTR)


async def test_mirror_write_plain() -> None:
    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024 nosync") as (mirror, seen):
        await mirror.create()
        del seen[:]
        await mirror.write(5)
    assert seen == [
        (T.IN_SYNC, 5),
        (T.IN_SYNC, 5),
        (T.MARK_REGION, (5,)),
        (T.FLUSH, ()),
        (T.CLEAR_REGION, (5,)),
        (T.FLUSH, ()),
    ]


async def test_mirror_write_integrated_flush_defers_the_clear_flush() -> None:
    async with scripted_mirror(
        Protocol.ULOG, "clustered-core 1024 nosync", integrated_flush=True
    ) as (mirror, seen):
        await mirror.create()
        del seen[:]
        await mirror.write(9)
        await mirror.suspend()
    assert seen == [
        (T.IN_SYNC, 9),
        (T.IN_SYNC, 9),
        (T.FLUSH, (9,)),
        (T.CLEAR_REGION, (9,)),
        (T.PRESUSPEND, None),
        (T.FLUSH, ()),
        (T.POSTSUSPEND, None),
    ]


async def test_mirror_read_and_status() -> None:
    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024 nosync") as (mirror, seen):
        await mirror.create()
        del seen[:]
        assert await mirror.read(3) == 1
        assert await mirror.status() == "128/128 1 clustered-core"
    assert types(seen) == [T.IN_SYNC, T.GET_SYNC_COUNT, T.STATUS_INFO]


async def test_mirror_take5_table() -> None:
    async with scripted_mirror(Protocol.TAKE5, "1024 EMU-UUID-1 nosync") as (mirror, _):
        await mirror.create()
        assert await mirror.table() == "clustered-core 3 1024 EMU-UUID-1 nosync "


async def test_mirror_resync_all_recovers_what_it_is_handed() -> None:
    work = [ResyncWork(1, 2), ResyncWork(1, 7)]

    def resync(rtype: RequestType, value: object) -> object:
        if rtype is T.GET_RESYNC_WORK:
            return work.pop(0) if work else ResyncWork(0, 0)
        return canned(rtype, value)

    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024", resync) as (mirror, seen):
        mirror.region_size = 1024  # as GET_REGION_SIZE would have said
        recovered = await mirror.resync_all()
    per_region = [T.GET_RESYNC_WORK, T.IN_SYNC, T.GET_SYNC_COUNT, T.SET_REGION_SYNC]
    per_region += [T.CLEAR_REGION, T.FLUSH]
    assert recovered == 2
    assert types(seen) == per_region * 2 + [T.GET_RESYNC_WORK, T.GET_SYNC_COUNT]
    assert seen[3][1] == decode_payload(T.SET_REGION_SYNC, struct.pack("=Qq", 2, 1), Protocol.ULOG)


async def test_mirror_resync_all_refuses_endless_work() -> None:
    def endless(rtype: RequestType, value: object) -> object:
        if rtype is T.GET_RESYNC_WORK:
            return ResyncWork(1, 0)
        return canned(rtype, value)

    async with scripted_mirror(Protocol.TAKE5, "4096 EMU-UUID-1", endless) as (mirror, _):
        mirror.target_len = 8192  # two regions
        with pytest.raises(EmulatorError) as info:
            await mirror.resync_all()
    assert info.value.errno == errno.ELOOP


async def test_mirror_remove_suspends_first() -> None:
    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024 nosync") as (mirror, seen):
        await mirror.create()
        del seen[:]
        await mirror.remove()
    assert types(seen) == [T.PRESUSPEND, T.POSTSUSPEND, T.DTR]


async def test_mirror_suspend_resume_remove() -> None:
    async with scripted_mirror(Protocol.ULOG, "clustered-core 1024 nosync") as (mirror, seen):
        await mirror.create()
        del seen[:]
        await mirror.suspend()
        await mirror.resume()
        await mirror.suspend()
        await mirror.remove()
    assert types(seen) == [
        T.PRESUSPEND,
        T.POSTSUSPEND,
        T.RESUME,
        T.GET_RESYNC_WORK,
        T.PRESUSPEND,
        T.POSTSUSPEND,
        T.DTR,
    ]


async def test_two_waiters_for_one_seq_are_refused() -> None:
    async with open_kernel_emulator(timeout=5) as emu, trio.open_nursery() as nursery:
        nursery.start_soon(emu.expect_reply, 99)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="already waits"):
            await emu.expect_reply(99)
        nursery.cancel_scope.cancel()


# --- blocking requests (benchmarks: the thread waits in recv, as the kernel's caller) -------


class ThreadResponder:
    """A stdlib connector socket answered from a thread of its own (the test's trio thread
    blocks in ``request_blocking``): each request from ``peer`` gets ``answers[seq]`` back,
    unless that is None (no reply); ``order`` lists the seqs to answer once all have come."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        self.sock.bind((0, 0))
        self.sock.settimeout(5)
        self.port_id: int = self.sock.getsockname()[0]
        self.peer = -1
        self.seen: list[RequestHeader] = []

    def serve(self, count: int, order: list[int] | None = None, forge: bool = False) -> None:
        """Receive ``count`` requests, then reply to them (in ``order`` of seqs if given);
        with ``forge`` a reply from another socket and a malformed one go first."""
        while len(self.seen) < count:
            datagram, address = self.sock.recvfrom(65536)
            if address[0] != self.peer:
                continue
            for msg in split_datagram(datagram):
                assert isinstance(msg, ConnectorMessage)
                protocol = classify(msg.payload)
                assert protocol is not None
                self.seen.append(decode_request(msg.payload, protocol)[0])
        by_seq = {h.seq: h for h in self.seen}
        for seq in order if order is not None else list(by_seq):
            header = by_seq[seq]
            data = struct.pack("=q", seq)
            reply = encode_reply(header, error=0, data=data, nlmsg_pid=self.port_id)
            if forge:
                family = socket.AF_NETLINK
                with socket.socket(family, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as other:
                    other.bind((0, 0))
                    other.sendto(encode_reply(header, error=-errno.EIO), (self.peer, 0))
                self.sock.sendto(reply[:-1], (self.peer, 0))
            self.sock.sendto(reply, (self.peer, 0))


async def test_blocking_request_gets_its_reply_and_trio_use_goes_on() -> None:
    resp = ThreadResponder()
    with resp.sock:
        async with open_kernel_emulator(daemon_port=resp.port_id, timeout=5) as emu:
            resp.peer = emu.port_id
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, resp.serve, 1)
                await trio.sleep(0.05)  # the thread is receiving
                with emu.blocking():
                    reply = emu.request_blocking(T.IN_SYNC, UUID, luid=LUID,
                                                 data=struct.pack("=Q", 3))  # fmt: skip
            assert (reply.error, reply.seq, reply.data) == (0, 0, struct.pack("=q", 0))
            (header,) = resp.seen
            assert (header.uuid, header.luid, header.request_type) == (UUID, LUID, T.IN_SYNC)
            # back to trio: the socket is non-blocking again and the reply task serves it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, resp.serve, 2)
                reply = await emu.request(T.FLUSH, UUID, luid=LUID)
            assert (reply.error, reply.seq) == (0, 1)
            assert not emu.malformed_replies


async def test_blocking_request_hands_other_replies_to_their_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply for an async waiter, one from a foreign port and a malformed one arrive while
    the thread blocks: only its own reply ends the wait; the waiter gets its reply."""
    caplog.set_level(logging.WARNING, logger="clogfs.netlink.emulator")
    resp = ThreadResponder()
    with resp.sock:
        async with open_kernel_emulator(daemon_port=resp.port_id, timeout=5) as emu:
            resp.peer = emu.port_id
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, resp.serve, 2, [0, 1], True)
                waiting: list[object] = []

                async def ask() -> None:
                    waiting.append(await emu.request(T.GET_SYNC_COUNT, UUID, luid=LUID))

                nursery.start_soon(ask)
                await trio.sleep(0.05)  # seq 0 sent, its task waits
                with emu.blocking():
                    mine = emu.request_blocking(T.GET_SYNC_COUNT, UUID, luid=LUID)
                assert (mine.seq, mine.error, mine.data) == (1, 0, struct.pack("=q", 1))
            (theirs,) = waiting
            assert isinstance(theirs, type(mine))
            assert (theirs.seq, theirs.error, theirs.data) == (0, 0, struct.pack("=q", 0))
            assert len(emu.malformed_replies) == 2  # the truncated replies to seqs 0 and 1


async def test_blocking_request_without_reply_times_out() -> None:
    resp = ThreadResponder()
    with resp.sock:
        async with open_kernel_emulator(daemon_port=resp.port_id, timeout=0.2) as emu:
            with emu.blocking():
                started = trio.current_time()
                with pytest.raises(TimeoutError, match="seq 0"):
                    emu.request_blocking(T.GET_SYNC_COUNT, UUID)
                assert trio.current_time() - started >= 0.19


async def test_blocking_request_only_inside_blocking() -> None:
    async with open_kernel_emulator(daemon_port=1, timeout=0.2) as emu:
        with pytest.raises(RuntimeError, match="outside blocking"):
            emu.request_blocking(T.GET_SYNC_COUNT, UUID)
        with emu.blocking(), pytest.raises(RuntimeError, match="already"), emu.blocking():
            pass
        with pytest.raises(RuntimeError, match="outside blocking"):
            emu.request_blocking(T.GET_SYNC_COUNT, UUID)
