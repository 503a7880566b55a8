"""A kernel emulator: the kernel's side of the dirty-log wire, over a real connector socket.

For tests, benchmarks and the demo, where device-mapper cannot run. :class:`KernelEmulator`
speaks like ``dm-log-userspace-transfer.c`` (or the seed's take-5 transfer code) from an
ordinary ``AF_NETLINK``/``NETLINK_CONNECTOR`` datagram socket: it sends requests (multicast to
connector group ``CN_IDX_DM``, or unicast to a daemon's port id) and matches replies to
waiting callers exactly as the kernel does (protocol.md §7.1): full replies by header
``seq``, bare acks by ``cn_msg.seq``, one global sequence counter, late replies ignored.
Unlike the kernel it never resends: a request without a reply fails with ``TimeoutError``.

:class:`EmulatedMirror` replays the request sequences dm-raid1 and dm-log-userspace send
for one mirror (``spec/kernel-vm.md``, ``spec/semantics.md`` §7): create, write, read,
resync, status, suspend, resume, remove.

The daemon under test runs with ``--kernel-port <KernelEmulator.port_id>``. User-to-user
netlink needs CAP_NET_ADMIN (root) in the socket's network namespace (protocol.md §2.5).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import trio

from clogfs.errors import LocalProtocolError
from clogfs.netlink.requests import (
    CtrPayload,
    RemoteRecovering,
    RequestType,
    ResyncWork,
    SetRegionSync,
    decode_result,
    encode_payload,
    request_type_of,
)
from clogfs.netlink.wire import (
    CN_IDX_DM,
    DM_ULOG_REQUEST_VERSION,
    NETLINK_CONNECTOR,
    Protocol,
    Reply,
    decode_reply,
    encode_request,
)

log = logging.getLogger(__name__)

#: the kernel's own port id; the emulator binds with it so the kernel assigns one
AUTO_PORT_ID = 0
#: receive buffer the emulator asks for (replies of many requests in flight)
RECEIVE_BUFFER_BYTES = 1024 * 1024
#: one read; larger than CONNECTOR_MAX_MSG_SIZE + headers
DATAGRAM_BYTES = 65536
#: replies that arrived before anyone waited for them (send_raw, then expect_reply)
UNCLAIMED_REPLIES = 1024
_SEQ_MASK = 0xFFFF_FFFF


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO (0 means wait forever)."""
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1e6))


class EmulatorError(Exception):
    """The daemon answered a request with an error (as the kernel would see it).

    Attributes:
        errno: the positive errno (``-reply.error``).
        request_type: the request that failed.
    """

    def __init__(self, errno_: int, request_type: int, message: str | None = None) -> None:
        rtype = request_type_of(request_type)
        name = rtype.name if rtype is not None else str(request_type)
        text = message or f"{name} failed: {errno.errorcode.get(errno_, errno_)}"
        super().__init__(text)
        self.errno = errno_
        self.request_type = request_type


class _Waiter:
    """One caller waiting for the reply with one sequence number."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None


class KernelEmulator:
    """The kernel's side of the wire on one bound connector socket.

    Build it with :func:`open_kernel_emulator`. Many tasks may call :meth:`request` at once.

    Attributes:
        port_id: the netlink port id the kernel assigned to the emulator's socket; the daemon
            under test runs with ``--kernel-port`` set to it.
        protocol: the header format of every request sent and reply expected.
        malformed_replies: datagrams from the daemon that the kernel would refuse, with the
            reason; a test can assert this stays empty.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        protocol: Protocol,
        *,
        daemon_port: int | None,
        timeout: float,
    ) -> None:
        self._sock = sock
        self.port_id: int = sock.getsockname()[0]
        self.protocol = protocol
        self._daemon_port = daemon_port
        self._timeout = timeout
        self._next_seq = 0
        self._waiters: dict[int, _Waiter] = {}
        self._unclaimed: OrderedDict[int, Reply] = OrderedDict()
        self.malformed_replies: list[tuple[bytes, str]] = []
        self._raw: socket.socket | None = None  # inside blocking()

    def allocate_seq(self) -> int:
        """Take the next value of the one global sequence counter (as the kernel does)."""
        seq = self._next_seq
        self._next_seq = (seq + 1) & _SEQ_MASK
        return seq

    def _destination(self) -> tuple[int, int]:
        if self._daemon_port is None:
            return (AUTO_PORT_ID, 1 << (CN_IDX_DM - 1))  # multicast to connector group 7
        return (self._daemon_port, 0)

    async def send_raw(self, datagram: bytes) -> None:
        """Send ``datagram`` as it is (for malformed-input tests)."""
        await self._sock.sendto(datagram, self._destination())

    async def request(
        self,
        request_type: int,
        uuid: bytes,
        *,
        luid: int = 0,
        data: bytes = b"",
        version: int = DM_ULOG_REQUEST_VERSION,
        timeout: float | None = None,  # noqa: ASYNC109 (pinned API; the kernel's own timeout)
    ) -> Reply:
        """Send one request with the next sequence number and wait for its reply.

        Args:
            request_type: the whole ``request_type`` word (any u32, for unknown-type tests).
            uuid: the log's uuid, 1-128 bytes.
            luid: the log instance id (mainline only).
            data: the request payload.
            version: the mainline header version.
            timeout: seconds to wait; the emulator's default when None.

        Returns:
            The reply, full or bare.

        Raises:
            TimeoutError: no reply in time (the real kernel would resend).
        """
        seq = self.allocate_seq()
        datagram = encode_request(
            self.protocol,
            seq=seq,
            request_type=request_type,
            uuid=uuid,
            luid=luid,
            version=version,
            data=data,
        )
        waiter = self._register(seq)
        try:
            await self.send_raw(datagram)
            return await self._wait(seq, waiter, timeout)
        finally:
            del self._waiters[seq]

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """While inside, :meth:`request_blocking` may be used from this thread.

        Puts the socket in blocking mode with the emulator's timeout as ``SO_RCVTIMEO``, and
        back to non-blocking (as trio keeps it) on exit. Nothing of this thread's trio loop
        may run inside: await nothing there.
        """
        if self._raw is not None:
            raise RuntimeError("already in blocking mode")
        # the same socket as a stdlib object; detached on exit, so the socket stays open
        raw = socket.socket(fileno=self._sock.fileno())
        try:
            raw.setblocking(True)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self._timeout))
            self._raw = raw
            yield
        finally:
            self._raw = None
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
            raw.setblocking(False)
            raw.detach()

    def request_blocking(
        self, request_type: int, uuid: bytes, *, luid: int = 0, data: bytes = b""
    ) -> Reply:
        """:meth:`request`, but the thread blocks in recv(2) until the reply comes, without
        yielding to trio (inside :meth:`blocking` only).

        For a benchmark that times the daemon as the kernel sees it: the kernel's side of the
        wire costs microseconds, while :meth:`request` adds two trio task switches (the reply
        task, then the caller) to every reply. Every datagram received meanwhile is handled
        as the reply task would (a reply for another waiter goes to it); each one restarts
        the timeout.

        Raises:
            TimeoutError: no datagram within the emulator's timeout.
            RuntimeError: outside :meth:`blocking`.
        """
        raw = self._raw
        if raw is None:
            raise RuntimeError("request_blocking outside blocking()")
        seq = self.allocate_seq()
        datagram = encode_request(
            self.protocol, seq=seq, request_type=request_type, uuid=uuid, luid=luid, data=data
        )
        waiter = self._register(seq)
        try:
            raw.sendto(datagram, self._destination())
            while waiter.reply is None:
                try:
                    received, address = raw.recvfrom(DATAGRAM_BYTES)
                except BlockingIOError:  # SO_RCVTIMEO ran out
                    raise TimeoutError(f"no reply to seq {seq} within {self._timeout} s") from None
                self._receive(received, address)
            return waiter.reply
        finally:
            del self._waiters[seq]

    async def expect_reply(
        self,
        cn_seq: int,
        timeout: float | None = None,  # noqa: ASYNC109 (pinned API; the kernel's own timeout)
    ) -> Reply:
        """Wait for the reply to a datagram sent with :meth:`send_raw`.

        A reply that arrived before this call is kept (the last ``UNCLAIMED_REPLIES`` of
        them) and returned at once.

        Raises:
            TimeoutError: no reply with that sequence number in time.
        """
        reply = self._unclaimed.pop(cn_seq, None)
        if reply is not None:
            return reply
        waiter = self._register(cn_seq)
        try:
            return await self._wait(cn_seq, waiter, timeout)
        finally:
            del self._waiters[cn_seq]

    def _register(self, seq: int) -> _Waiter:
        if seq in self._waiters:
            raise ValueError(f"a caller already waits for the reply to seq {seq}")
        self._unclaimed.pop(seq, None)  # a stale reply from before the counter wrapped
        waiter = self._waiters[seq] = _Waiter()
        return waiter

    async def _wait(self, seq: int, waiter: _Waiter, seconds: float | None) -> Reply:
        limit = self._timeout if seconds is None else seconds
        with trio.move_on_after(limit):
            await waiter.done.wait()
        if waiter.reply is None:
            raise TimeoutError(f"no reply to seq {seq} within {limit} s")
        return waiter.reply

    async def serve_replies(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Receive replies and hand each to its waiter until cancelled.

        Resource handling: reads the emulator's socket; never closes it.
        Error handling: a datagram from a port other than the daemon's is ignored; a reply
        the kernel would refuse is logged and kept in ``malformed_replies``; ``ENOBUFS`` is
        logged and survived (replies were lost); any other socket error ends the task.
        """
        task_status.started()
        while True:
            try:
                datagram, address = await self._sock.recvfrom(DATAGRAM_BYTES)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.warning("emulator socket overflowed: replies were lost")
                continue
            self._receive(datagram, address)

    def _receive(self, datagram: bytes, address: tuple[int, int]) -> None:
        """One received datagram: to its waiter if it comes from the daemon (or anyone, when
        the emulator multicasts), else ignored."""
        if self._daemon_port is not None and address[0] != self._daemon_port:
            log.debug("ignoring a datagram from port %d", address[0])
            return
        self._dispatch(datagram)

    def _dispatch(self, datagram: bytes) -> None:
        try:
            reply = decode_reply(datagram, self.protocol)
        except LocalProtocolError as exc:
            log.warning("the daemon sent a reply the kernel would refuse: %s", exc)
            self.malformed_replies.append((datagram, str(exc)))
            return
        waiter = self._waiters.get(reply.seq)
        if waiter is not None and waiter.reply is None:
            waiter.reply = reply
            waiter.done.set()
            return
        self._unclaimed[reply.seq] = reply
        while len(self._unclaimed) > UNCLAIMED_REPLIES:
            self._unclaimed.popitem(last=False)


@asynccontextmanager
async def open_kernel_emulator(
    protocol: Protocol = Protocol.ULOG,
    *,
    daemon_port: int | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 (the default for each request, not for this call)
) -> AsyncIterator[KernelEmulator]:
    """Open a kernel emulator on a new connector socket, receiving replies in the background.

    Args:
        protocol: the wire format to speak.
        daemon_port: unicast requests to this port id; None multicasts them to group 7.
        timeout: the default seconds a request waits for its reply.

    Resource handling: the socket is bound with ``nl_pid`` 0 (the kernel assigns the port
    id), never joins a group, and is closed on exit; the receiver task is cancelled.
    Error handling: socket errors while opening propagate (``EPERM`` without CAP_NET_ADMIN).
    """
    sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        await sock.bind((AUTO_PORT_ID, 0))
        emu = KernelEmulator(sock, protocol, daemon_port=daemon_port, timeout=timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(emu.serve_replies)
            yield emu
            nursery.cancel_scope.cancel()


# --- one mirror, as dm-raid1 drives it -----------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class EmulatedMirror:
    """One mirror and its userspace log, driven the way dm-raid1 and the kernel log do.

    Args:
        emu: the emulator to send through.
        uuid: the log's uuid.
        luid: the log instance id (mainline; 0 for take 5).
        ctr_args: the log arguments; mainline ``"clustered-core 1024 nosync"`` (the kernel
            prepends the target length), take 5 ``"1024 UUID nosync"`` (it appends it).
        target_len: the mirror's length in sectors.
        integrated_flush: marks ride in FLUSH payloads (mainline version 3 only).
    """

    def __init__(
        self,
        emu: KernelEmulator,
        uuid: bytes,
        luid: int,
        ctr_args: str,
        target_len: int,
        *,
        integrated_flush: bool = False,
    ) -> None:
        if integrated_flush and emu.protocol is not Protocol.ULOG:
            raise ValueError("integrated flush exists only in the mainline protocol")
        self.emu = emu
        self.uuid = uuid
        self.luid = luid
        self.target_len = target_len
        self.integrated_flush = integrated_flush
        if emu.protocol is Protocol.ULOG:
            self.ctr_string = f"{target_len} {ctr_args}".encode()
            self.region_size: int | None = None  # asked with GET_REGION_SIZE
        else:
            self.ctr_string = f"{ctr_args} {target_len}".encode()
            self.region_size = _take5_region_size(ctr_args)
        self.sync_count = 0
        self.suspended = False
        self.clear_flush_pending = False

    @property
    def region_count(self) -> int:
        """Regions of the mirror, once the region size is known."""
        if self.region_size is None:
            raise RuntimeError("region size unknown before create()")
        return _ceil_div(self.target_len, self.region_size)

    async def call(self, rtype: RequestType, value: object = None) -> object:
        """Send one request of this log, check its error, and decode its result.

        Args:
            rtype: the request type.
            value: the request payload value (``requests`` module docstring).

        Returns:
            The decoded result (None for types without one).

        Raises:
            EmulatorError: the reply carried an error.
            LocalProtocolError: the reply is not a valid result for the type.
            TimeoutError: no reply in time.
        """
        data = encode_payload(rtype, value, self.emu.protocol)
        reply = await self.emu.request(rtype, self.uuid, luid=self.luid, data=data)
        if reply.error:
            raise EmulatorError(-reply.error, rtype)
        return decode_result(rtype, reply.data, self.emu.protocol)

    def call_blocking(self, rtype: RequestType, value: object = None) -> object:
        """:meth:`call` through :meth:`KernelEmulator.request_blocking` (inside
        ``emu.blocking()``): the thread blocks until the reply, as the kernel's caller does,
        for timing the daemon alone."""
        data = encode_payload(rtype, value, self.emu.protocol)
        reply = self.emu.request_blocking(rtype, self.uuid, luid=self.luid, data=data)
        if reply.error:
            raise EmulatorError(-reply.error, rtype)
        return decode_result(rtype, reply.data, self.emu.protocol)

    async def create(self) -> None:
        """Construct and resume: CTR, GET_REGION_SIZE (mainline), GET_SYNC_COUNT, RESUME,
        GET_RESYNC_WORK (the work handed out is left for :meth:`resync_all`).

        Raises:
            EmulatorError: a step failed.
        """
        await self.call(RequestType.CTR, CtrPayload(self.ctr_string, reconnect=False))
        if self.emu.protocol is Protocol.ULOG:
            size = await self.call(RequestType.GET_REGION_SIZE)
            assert isinstance(size, int)
            if size == 0:
                raise EmulatorError(errno.EINVAL, RequestType.GET_REGION_SIZE, "region size 0")
            self.region_size = size
        await self._sync_count()
        await self.call(RequestType.RESUME)
        await self.call(RequestType.GET_RESYNC_WORK)

    async def _sync_count(self) -> int:
        count = await self.call(RequestType.GET_SYNC_COUNT)
        assert isinstance(count, int)
        self.sync_count = count
        return count

    async def _in_sync(self, region: int) -> bool:
        result = await self.call(RequestType.IN_SYNC, region)
        assert isinstance(result, bool)
        return result

    async def write(self, region: int) -> None:
        """A write to a clean region: IN_SYNC, IN_SYNC, MARK, FLUSH, CLEAR, FLUSH; with
        integrated flush IN_SYNC, IN_SYNC, FLUSH([region]), CLEAR, and the clear-only FLUSH
        left pending (:meth:`flush_deferred`), as the kernel's 3 s timer does.
        """
        await self._in_sync(region)
        await self._in_sync(region)
        if self.integrated_flush:
            await self.call(RequestType.FLUSH, (region,))
            await self.call(RequestType.CLEAR_REGION, (region,))
            self.clear_flush_pending = True
            return
        await self.call(RequestType.MARK_REGION, (region,))
        await self.call(RequestType.FLUSH, ())
        await self.call(RequestType.CLEAR_REGION, (region,))
        await self.call(RequestType.FLUSH, ())

    async def flush_deferred(self) -> None:
        """Send the payload-less FLUSH an integrated-flush log defers after clears, if any."""
        if self.clear_flush_pending:
            self.clear_flush_pending = False
            await self.call(RequestType.FLUSH, ())

    async def read(self, region: int) -> int:
        """A read: one IN_SYNC. Returns 1 if the region is in sync, else 0."""
        return int(await self._in_sync(region))

    async def resync_all(self) -> int:
        """Recover every region the log hands out, as dm-raid1's recovery does.

        Per region: GET_RESYNC_WORK -> IN_SYNC -> GET_SYNC_COUNT -> SET_REGION_SYNC(r, 1) ->
        CLEAR_REGION -> FLUSH; ends with GET_RESYNC_WORK answering no work and a final
        GET_SYNC_COUNT.

        Returns:
            The number of regions recovered.

        Raises:
            EmulatorError: a step failed, or the log handed out more work than it has regions.
        """
        recovered = 0
        while True:
            work = await self.call(RequestType.GET_RESYNC_WORK)
            assert isinstance(work, ResyncWork)
            if not work.i:
                break
            if recovered >= self.region_count:
                raise EmulatorError(
                    errno.ELOOP, RequestType.GET_RESYNC_WORK, "more resync work than regions"
                )
            await self._in_sync(work.region)
            await self._sync_count()
            await self.call(RequestType.SET_REGION_SYNC, SetRegionSync(work.region, True))
            await self.call(RequestType.CLEAR_REGION, (work.region,))
            await self.call(RequestType.FLUSH, ())
            recovered += 1
        await self._sync_count()
        return recovered

    async def is_remote_recovering(self, region: int) -> RemoteRecovering:
        """Ask IS_REMOTE_RECOVERING for ``region``, as a write below no hint would."""
        result = await self.call(RequestType.IS_REMOTE_RECOVERING, region)
        assert isinstance(result, RemoteRecovering)
        return result

    async def status(self) -> str:
        """``dmsetup status``: GET_SYNC_COUNT, STATUS_INFO; returns ``"sync/total <info>"``."""
        count = await self._sync_count()
        info = await self.call(RequestType.STATUS_INFO)
        return f"{count}/{self.region_count} {info}"

    async def table(self) -> str:
        """``dmsetup table`` on a take-5 kernel: STATUS_TABLE (mainline never asks)."""
        result = await self.call(RequestType.STATUS_TABLE)
        assert isinstance(result, str)
        return result

    async def suspend(self) -> None:
        """PRESUSPEND, the deferred FLUSH if any (run early by postsuspend), POSTSUSPEND."""
        await self.call(RequestType.PRESUSPEND)
        await self.flush_deferred()
        await self.call(RequestType.POSTSUSPEND)
        self.suspended = True

    async def resume(self) -> None:
        """RESUME, then the mirror worker's GET_RESYNC_WORK."""
        await self.call(RequestType.RESUME)
        self.suspended = False
        await self.call(RequestType.GET_RESYNC_WORK)

    async def remove(self) -> None:
        """``dmsetup remove``: suspend unless suspended already, then DTR."""
        if not self.suspended:
            await self.suspend()
        await self.flush_deferred()
        await self.call(RequestType.DTR)


def _take5_region_size(ctr_args: str) -> int:
    """The region size the take-5 kernel parses itself from the log arguments."""
    words: Sequence[str] = ctr_args.split(" ")
    index = 0 if words[0].isdigit() else 1  # clustered-core starts with the region size
    if len(words) <= index or not words[index].isdigit() or int(words[index]) == 0:
        raise ValueError(f"no region size in take-5 log arguments {ctr_args!r}")
    return int(words[index])
