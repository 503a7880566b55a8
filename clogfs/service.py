"""The request service: from an accepted connector message to the reply, for every log.

Owns the per-instance FIFOs (requests of one log instance are processed in arrival order,
``protocol.md`` §7.3; replies across logs go out in any order), the hand-off of
state-changing requests to the ordered group, the durable commit of disk logs with group
commit (FLUSHes arriving while a write is in flight share the next write), the log devices
(one open device and one writer per device, shared by the instances of a table reload), and
the translation of errors into negative errnos at the kernel boundary.

Cluster mode (``--cluster corosync``, a ``cluster`` port given): the RESUME of a non-resumed
instance makes it a member of its log's group, and every ordered request of a member (the
cluster's ordered set, ``clogfs.cluster.messages.ORDERED_REQUESTS``, which adds RESUME and DTR)
goes to the cluster backend instead of the local group; the instance is busy until the backend
answers (``AwaitCluster``: the reply is sent inside the backend's answer when nothing waits
behind it, else by ``_drain``), the reply being the replica's ``Answer``.
Read-only requests keep the local fast path (answered from the local replica). Instances that
are not members (constructed, suspended) keep the local path. Without a cluster port nothing
changes.
"""

from __future__ import annotations

import collections
import errno
import logging
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from clogfs.cluster.group import Delivery, LocalGroup, OrderedGroup
from clogfs.cluster.messages import ORDERED_REQUESTS
from clogfs.disklog.device import LogDevice, LogWriteError
from clogfs.disklog.format import buffer_bytes, decode_header
from clogfs.errors import ClogfsError, KernelProtocolError, LogDeviceError, negative_errno
from clogfs.fusefs.inodes import instance_name
from clogfs.log.instance import (
    AwaitCommit,
    AwaitLoad,
    DeviceInfo,
    Lifecycle,
    LogInstance,
    LogRequest,
    Reply,
    WriteLog,
)
from clogfs.metrics import Metrics
from clogfs.netlink.endpoint import ConnectorSocket
from clogfs.netlink.requests import (
    REQUESTS,
    CtrPayload,
    RequestType,
    decode_payload,
    encode_result,
    request_type_of,
)
from clogfs.netlink.wire import (
    ConnectorMessage,
    Protocol,
    Rejected,
    RequestHeader,
    classify,
    decode_request,
    encode_bare_ack,
    encode_reply,
)
from clogfs.registry import LogKey, LogRegistry
from clogfs.snapshot import LogSnapshot

log = logging.getLogger(__name__)


class AwaitCluster:
    """An ordered request handed to the cluster backend: its reply comes later.

    The reply reaches either a task awaiting :meth:`wait` or, set with :meth:`then`, a
    callback run synchronously inside :meth:`resolve` (the hot path: no task switch between
    the backend's answer and the reply datagram).
    """

    def __init__(self) -> None:
        self._done = trio.Event()
        self.reply: Reply | None = None
        self._then: Callable[[Reply], None] | None = None

    def resolve(self, reply: Reply) -> None:
        """Record the reply (the first one wins), wake the waiter, run the callback."""
        if self.reply is None:
            self.reply = reply
            self._done.set()
            if self._then is not None:
                self._then(reply)

    def then(self, callback: Callable[[Reply], None]) -> None:
        """Run ``callback(reply)`` on resolution (at once if resolved already)."""
        self._then = callback
        if self.reply is not None:
            callback(self.reply)

    async def wait(self) -> Reply:
        """The reply, once resolved."""
        await self._done.wait()
        assert self.reply is not None
        return self.reply


class ClusterPort(typing.Protocol):
    """What the service needs from the cluster backend (``clogfs.cluster.backend``)."""

    @property
    def cluster_state(self) -> str:
        """``member`` or ``leader``."""

    def is_member(self, key: LogKey) -> bool:
        """Whether ordered requests of ``key`` go to the backend."""

    def members(self, key: LogKey) -> tuple[int, ...] | None:
        """Node ids of ``key``'s group, leader first; None if not a member."""

    def start_member(self, instance: LogInstance, resume_token: object, io: Any) -> None:
        """Join the instance's group; the RESUME is answered through ``io.answer``."""

    def request(self, key: LogKey, token: object, request: LogRequest) -> None:
        """An ordered request of a member; answered through ``io.answer``."""


Outcome = Reply | AwaitCommit | AwaitLoad | AwaitCluster


def uuid_text(uuid: bytes) -> str:
    """A log uuid for humans: printable ASCII as is, anything else escaped."""
    return "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in uuid)


class LogLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes ``[<last 8 characters of the uuid>]`` so one grep tells one log's story."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['tag'] if self.extra else '?'}] {msg}", kwargs


def log_for(uuid: bytes) -> LogLog:
    """The per-log logger adapter for ``uuid``."""
    return LogLog(log, {"tag": uuid_text(uuid)[-8:]})


class RateLimited:
    """At most one log line per key and interval; counts what it suppressed."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = collections.defaultdict(int)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] += 1
            return False
        self._last[key] = now
        return True


@dataclass
class Ticket:
    """One kernel request on its way to an answer."""

    header: RequestHeader
    request_type: RequestType
    arrived: float  # trio.current_time()
    wall: float  # time.time()
    regions: tuple[int, ...]
    log_name: str | None = None
    outcome: Outcome | None = None


@dataclass
class InstanceQueue:
    """The FIFO of one log instance."""

    busy: bool = False
    pending: collections.deque[tuple[Ticket, LogRequest]] = field(default_factory=collections.deque)


@dataclass
class SharedDevice:
    """One open log device and the instances using it (a table reload shares it)."""

    device: LogDevice
    users: set[LogKey] = field(default_factory=set)


def _regions_of(args: object) -> tuple[int, ...]:
    if isinstance(args, int) and not isinstance(args, bool):
        return (args,)
    if isinstance(args, tuple):
        return tuple(a for a in args if isinstance(a, int))
    region = getattr(args, "region", None)
    return (region,) if isinstance(region, int) else ()


class LogService:
    """Turns connector messages into replies for every log this daemon serves.

    Args:
        registry: the pure registry of log instances.
        conn: the connector socket replies are sent on.
        metrics: counters and histories for the view.
        nursery: where commit tasks run.
        protocol_mode: ``"auto"``, ``"ulog"`` or ``"take5"``.
        private_dir: where private device nodes are created (``semantics.md`` §3).
        group_factory: builds the ordered group given the delivery callback; default: a
            group of one.
        on_logs_changed: called when a log is created or destroyed (the view).
        cluster: the cluster backend (``--cluster corosync``); None: single node.
    """

    def __init__(
        self,
        registry: LogRegistry,
        conn: ConnectorSocket,
        metrics: Metrics,
        nursery: trio.Nursery,
        *,
        protocol_mode: str = "auto",
        private_dir: Path = Path("/run/clogfsd"),
        group_factory: Callable[[Callable[[Delivery], None]], OrderedGroup] | None = None,
        on_logs_changed: Callable[[], None] | None = None,
        cluster: ClusterPort | None = None,
    ) -> None:
        self.registry = registry
        self.conn = conn
        self.metrics = metrics
        self.nursery = nursery
        self.protocol_mode = protocol_mode
        self.private_dir = private_dir
        factory = group_factory or (lambda deliver: LocalGroup(deliver, node_id=registry.node_id))
        self.group: OrderedGroup = factory(self._deliver)
        self.on_logs_changed = on_logs_changed or (lambda: None)
        self.cluster = cluster
        self.detected_protocol = "auto"
        self._queues: dict[LogKey, InstanceQueue] = {}
        self._devices: dict[tuple[int, int], SharedDevice] = {}
        self._device_of: dict[LogKey, tuple[int, int]] = {}
        self._names: dict[LogKey, str] = {}
        self._warn = RateLimited()

    # ---------------------------------------------------------------- receive path

    def on_rejected(self, item: Rejected) -> None:
        """A part of a datagram that is no usable request: bare ack if its seq is known."""
        if not item.silent and self._warn.allow("rejected:" + item.reason):
            log.warning("malformed netlink message: %s", item.reason)
        if item.cn_seq is not None:
            self._send(encode_bare_ack(item.cn_seq, errno.EINVAL, nlmsg_pid=self.conn.port_id))

    def on_message(self, msg: ConnectorMessage, arrived: float) -> None:
        """Handle one connector message from the kernel (synchronous; never raises)."""
        try:
            self._on_message(msg, arrived)
        except Exception:
            log.exception("bug while handling a netlink message (cn seq %d)", msg.seq)
            self._send(encode_bare_ack(msg.seq, errno.EIO, nlmsg_pid=self.conn.port_id))

    def _on_message(self, msg: ConnectorMessage, arrived: float) -> None:
        payload = msg.payload
        protocol = classify(payload)
        if protocol is None:
            if self._warn.allow("shape"):
                log.warning(
                    "malformed dm-log request (neither ulog nor take-5 shape), cn seq %d: %s",
                    msg.seq,
                    payload[:64].hex(" "),
                )
            self._bare_ack(msg.seq)
            return
        if self.protocol_mode != "auto" and protocol.value != self.protocol_mode:
            if self._warn.allow("mismatch"):
                log.warning(
                    "protocol mismatch: %s request while --protocol %s",
                    "take-5" if protocol is Protocol.TAKE5 else "mainline",
                    self.protocol_mode,
                )
            self._bare_ack(msg.seq)
            return
        try:
            header, data = decode_request(payload, protocol)
        except KernelProtocolError as exc:
            if self._warn.allow("decode"):
                log.warning("malformed dm-log request, cn seq %d: %s", msg.seq, exc)
            self._bare_ack(msg.seq)
            return
        self._note_protocol(header)
        rtype = request_type_of(header.request_type)
        if rtype is None:
            log.warning(
                "[%s] unknown request type %d (seq %d)",
                uuid_text(header.uuid)[-8:],
                header.request_type,
                header.seq,
            )
            self._send(encode_reply(header, error=-errno.EINVAL, nlmsg_pid=self.conn.port_id))
            return
        ticket = Ticket(header, rtype, arrived, time.time(), ())
        try:
            args = decode_payload(rtype, data, protocol)
        except KernelProtocolError as exc:
            log_for(header.uuid).warning("bad %s payload (seq %d): %s", rtype.name, header.seq, exc)
            self._finish(ticket, Reply(error=-exc.errno))
            return
        ticket.regions = _regions_of(args)
        if rtype is RequestType.CTR:
            assert isinstance(args, CtrPayload)
            self._start_ctr(ticket, args)
            return
        try:
            instance = self.registry.route(header, rtype)
        except ClogfsError as exc:
            log_for(header.uuid).debug("%s for an unknown log: %s", rtype.name, exc)
            self._finish(ticket, Reply(error=negative_errno(exc)))
            return
        if instance is None:
            self._finish(ticket, Reply())
            return
        ticket.log_name = self._names.get(instance.key)
        request = LogRequest(rtype, args, self.registry.node_id, header.version)
        queue = self._queues.setdefault(instance.key, InstanceQueue())
        if queue.busy:
            queue.pending.append((ticket, request))
            return
        outcome = self._apply(instance, ticket, request)
        if isinstance(outcome, Reply):
            self._finish(ticket, outcome)
            self._after(instance)
            return
        queue.busy = True
        if isinstance(outcome, AwaitCluster):
            wait = outcome
            wait.then(lambda reply: self._cluster_answered(instance, ticket, wait, reply))
        else:
            self.nursery.start_soon(self._drain, instance, (ticket, outcome))

    def _note_protocol(self, header: RequestHeader) -> None:
        name = "take5" if header.protocol is Protocol.TAKE5 else f"ulog-v{max(header.version, 1)}"
        if name != self.detected_protocol:
            if self.detected_protocol == "auto":
                log.info("kernel speaks the %s wire format", name)
            elif self._warn.allow("protocol-switch"):
                log.warning(
                    "kernel wire format changed from %s to %s (module swapped?)",
                    self.detected_protocol,
                    name,
                )
            self.detected_protocol = name

    # ---------------------------------------------------------------- applying

    def _apply(self, instance: LogInstance, ticket: Ticket, request: LogRequest) -> Outcome:
        """Apply one request, through the ordered group if it changes state."""
        if self.cluster is not None and request.request_type in ORDERED_REQUESTS:
            routed = self._to_cluster(self.cluster, instance, request)
            if routed is not None:
                return routed
        if REQUESTS[request.request_type].ordered:
            ticket.outcome = None
            self.group.multicast(instance.key, request, ticket)
            if ticket.outcome is None:  # a real cluster delivers later; TODO(#7)
                raise RuntimeError("ordered group did not deliver synchronously")
            return ticket.outcome
        return self._handle(instance, request)

    def _to_cluster(
        self, cluster: ClusterPort, instance: LogInstance, request: LogRequest
    ) -> Outcome | None:
        """Hand an ordered request to the cluster backend; None: it takes the local path."""
        if cluster.is_member(instance.key):
            wait = AwaitCluster()
            cluster.request(instance.key, wait, request)
            return wait
        if (
            request.request_type is not RequestType.RESUME
            or instance.resumed
            or instance.lifecycle in (Lifecycle.FAILED, Lifecycle.DESTROYED)
        ):
            return None
        if any(
            other is not instance
            and other.config.protocol is instance.config.protocol
            and other.config.uuid == instance.config.uuid
            and (other.resumed or other.loading)
            for other in self.registry.instances()
        ):  # the registry's rule (semantics.md §2.1), checked before joining
            log_for(instance.config.uuid).warning("RESUME refused: another instance of this "
                                                  "log is resumed")  # fmt: skip
            return Reply(error=-errno.EBUSY)
        wait = AwaitCluster()
        cluster.start_member(instance, wait, self)
        return wait

    # -- the cluster backend's I/O (``clogfs.cluster.backend.ClusterIO``)

    def answer(self, token: object, reply: Reply) -> None:
        """The backend's answer to a request handed to it."""
        if isinstance(token, AwaitCluster):
            token.resolve(reply)

    async def write_log(self, instance: LogInstance, write: WriteLog) -> tuple[bool, bool]:
        """A replica's ``Write`` on the instance's shared device: ``(ok, flush_ok)``."""
        ok, flush_ok = True, True
        started = trio.current_time()
        nbytes = sum(len(data) for _off, data in write.extents)
        try:
            shared = self._shared(instance)
            await shared.device.write(write.extents, cache_flush=write.cache_flush)
        except LogWriteError as exc:
            ok, flush_ok = False, not exc.flush_failed
        except LogDeviceError as exc:
            log_for(instance.config.uuid).error("cannot write the log device: %s", exc)
            ok = False
        self.metrics.observe_write(
            self._name(instance), nbytes=nbytes, latency_s=trio.current_time() - started, ok=ok
        )
        return ok, flush_ok

    async def read_log(self, instance: LogInstance, nbytes: int) -> bytes | None:
        """A replica's ``ReadDevice`` (first member's load); None if it failed."""
        try:
            return await self._shared(instance).device.read(nbytes)
        except LogDeviceError as exc:
            dev = instance.device.dev_number if instance.device else "?"
            log_for(instance.config.uuid).error(
                "%s: Failed to read header on dirty region log device (%s)", dev, exc
            )
            return None

    def _deliver(self, delivery: Delivery) -> None:
        instance = self.registry.get(delivery.key)
        if instance is None:
            outcome: Outcome = Reply(error=-errno.ESRCH)
        else:
            outcome = self._handle(instance, delivery.request)
        if isinstance(delivery.ticket, Ticket):
            delivery.ticket.outcome = outcome

    def _handle(self, instance: LogInstance, request: LogRequest) -> Outcome:
        try:
            return self.registry.handle(instance, request)
        except ClogfsError as exc:
            log_for(instance.config.uuid).warning("%s refused: %s", request.request_type.name, exc)
            return Reply(error=negative_errno(exc))
        except Exception:
            log_for(instance.config.uuid).exception(
                "bug while handling %s; this log is marked failed", request.request_type.name
            )
            mark_failed = getattr(instance, "mark_failed", None)
            if callable(mark_failed):
                mark_failed()
            return Reply(error=-errno.EIO)

    def _cluster_answered(
        self, instance: LogInstance, ticket: Ticket, wait: AwaitCluster, reply: Reply
    ) -> None:
        """The backend answered a busy instance's request (called inside its answer).

        With nothing queued behind it the reply goes out at once and the instance is idle
        again. Otherwise, and after a DTR that destroyed the instance, ``_drain`` sends it and
        goes on, in a task of its own (the backend is mid-way through its actions here).
        """
        queue = self._queues[instance.key]
        if queue.pending or instance.lifecycle is Lifecycle.DESTROYED:
            self.nursery.start_soon(self._drain, instance, (ticket, wait))
            return
        self._finish(ticket, reply)
        queue.busy = False
        self._after(instance)

    async def _drain(self, instance: LogInstance, first: tuple[Ticket, Outcome]) -> None:
        """Serve a busy instance until its queue is empty (group commit lives here)."""
        queue = self._queues[instance.key]
        waiters: list[tuple[Ticket, Reply]] = []
        current: tuple[Ticket, Outcome] | None = first
        try:
            while True:
                if current is not None:
                    t, out = current
                    current = None
                    if isinstance(out, AwaitLoad | AwaitCluster) and waiters:
                        await self._commit(instance, waiters)
                        waiters = []
                    if isinstance(out, AwaitLoad):
                        out = await self._load(instance)
                    elif isinstance(out, AwaitCluster):
                        out = await out.wait()
                        self._unregister_destroyed(instance)
                    if isinstance(out, AwaitCommit):
                        waiters.append((t, out.reply))
                    else:
                        self._finish(t, out)
                if queue.pending:
                    t, request = queue.pending.popleft()
                    current = (t, self._apply(instance, t, request))
                    continue
                if waiters:
                    await self._commit(instance, waiters)
                    waiters = []
                    continue
                break
        finally:
            queue.busy = False
            for t, _reply in waiters:  # cancelled mid-commit (shutdown): never a silent success
                self._finish(t, Reply(error=-errno.EIO))
        self._after(instance)

    async def _load(self, instance: LogInstance) -> AwaitCommit:
        """RESUME of a disk log as first member: read the whole buffer, then let the core load."""
        shared = self._shared(instance)
        assert instance.device is not None
        nbytes = buffer_bytes(instance.config.region_count, instance.device.logical_block_size)
        data: bytes | None
        try:
            data = await shared.device.read(nbytes)
        except LogDeviceError as exc:
            log_for(instance.config.uuid).error(
                "%s: Failed to read header on dirty region log device (%s)",
                instance.device.dev_number,
                exc,
            )
            data = None
        before = instance.state.device_state
        outcome = instance.load(data)
        after = instance.state.device_state
        if data is not None and after != before:  # read fine, header refused (format.md §3)
            log_for(instance.config.uuid).error(
                "%s: incompatible disk log version %d; log device state %s",
                instance.device.dev_number,
                decode_header(data).version,
                after,
            )
            self.metrics.observe_device_failure(self._name(instance), after)
        return outcome

    async def _commit(self, instance: LogInstance, waiters: list[tuple[Ticket, Reply]]) -> None:
        """Make everything pending durable with one write, then answer every waiter."""
        ok = True
        write = instance.begin_write()
        if write is not None:
            shared = self._shared(instance)
            before = instance.state.device_state
            started = trio.current_time()
            nbytes = sum(len(data) for _off, data in write.extents)
            try:
                await shared.device.write(write.extents, cache_flush=write.cache_flush)
            except LogWriteError as exc:
                ok = False
                instance.end_write(write, ok=False, flush_ok=not exc.flush_failed)
                after = instance.state.device_state
                if after != before:
                    assert instance.device is not None
                    verb = "flush" if exc.flush_failed else "write"
                    log_for(instance.config.uuid).error(
                        "%s: Failed to %s header on dirty region log device (%s); log device "
                        "state %s",
                        instance.device.dev_number,
                        verb,
                        exc,
                        after,
                    )
                    self.metrics.observe_device_failure(self._name(instance), after)
            else:
                instance.end_write(write, ok=True)
            self.metrics.observe_write(
                self._name(instance), nbytes=nbytes, latency_s=trio.current_time() - started, ok=ok
            )
        for t, reply in waiters:
            if t.request_type is RequestType.FLUSH:
                self.metrics.observe_flush(self._name(instance))
            self._finish(t, reply if ok else Reply(error=-errno.EIO))

    def _unregister_destroyed(self, instance: LogInstance) -> None:
        """A DTR applied by the replica destroyed the instance: drop it from the registry."""
        if instance.lifecycle is Lifecycle.DESTROYED:
            self.registry.forget(instance)

    def _after(self, instance: LogInstance) -> None:
        """Clean up after a request that destroyed its instance."""
        if self.registry.get(instance.key) is not None:
            return
        self._queues.pop(instance.key, None)
        name = self._names.pop(instance.key, None)
        if name is not None:
            self.metrics.forget_log(name)
        ident = self._device_of.pop(instance.key, None)
        if ident is not None:
            shared = self._devices.get(ident)
            if shared is not None:
                shared.users.discard(instance.key)
                if not shared.users:
                    del self._devices[ident]
                    self.nursery.start_soon(shared.device.aclose)
        log_for(instance.config.uuid).info("log destroyed")
        self.on_logs_changed()

    # ---------------------------------------------------------------- CTR

    def _start_ctr(self, ticket: Ticket, payload: CtrPayload) -> None:
        header = ticket.header
        try:
            plan = self.registry.plan_ctr(header, payload)
        except ClogfsError as exc:
            log_for(header.uuid).error("CTR refused: %s", exc)
            self._finish(ticket, Reply(error=negative_errno(exc)))
            return
        if plan.existing is not None or plan.config.device_word is None:
            self._construct(ticket, plan, None)
            return
        self.nursery.start_soon(self._ctr_with_device, ticket, plan)

    async def _ctr_with_device(self, ticket: Ticket, plan: Any) -> None:
        word = plan.config.device_word
        try:
            self.private_dir.mkdir(parents=True, exist_ok=True)
            device = await trio.to_thread.run_sync(
                lambda: LogDevice.open(word, private_dir=self.private_dir)
            )
        except (LogDeviceError, OSError) as exc:
            log_for(ticket.header.uuid).error("CTR: cannot open log device %s: %s", word, exc)
            self._finish(ticket, Reply(error=negative_errno(exc)))
            return
        info = device.info
        shared = self._devices.get(info.identity)
        if shared is not None:
            await device.aclose()
        else:
            shared = SharedDevice(device)
        dev_info = DeviceInfo(
            info.name, info.dev_number, info.identity, info.logical_block_size, info.size_bytes
        )
        instance = self._construct(ticket, plan, dev_info)
        if instance is None:
            if not shared.users:
                await shared.device.aclose()
            return
        self._devices[info.identity] = shared
        shared.users.add(instance.key)
        self._device_of[instance.key] = info.identity

    def _construct(
        self, ticket: Ticket, plan: Any, device: DeviceInfo | None
    ) -> LogInstance | None:
        """Create (or find, for a repeated CTR) the instance and answer the CTR."""
        header = ticket.header
        try:
            instance, reply = self.registry.construct(plan, device, header=header)
        except ClogfsError as exc:
            log_for(header.uuid).error("CTR refused: %s", exc)
            self._finish(ticket, Reply(error=negative_errno(exc)))
            return None
        self._queues.setdefault(instance.key, InstanceQueue())
        is_new = instance.key not in self._names
        if is_new:
            self._names[instance.key] = instance_name(
                instance.config.uuid, instance.key[2], shared=True
            )
            log_for(instance.config.uuid).info(
                "constructed %s log (%s, luid %d): %d regions of %d sectors",
                instance.config.log_type.value,
                instance.config.protocol.value,
                instance.key[2],
                instance.config.region_count,
                instance.config.region_size,
            )
            self.on_logs_changed()
        ticket.log_name = self._names[instance.key]
        self._finish(ticket, Reply(result=reply))
        return instance

    # ---------------------------------------------------------------- replies

    def _bare_ack(self, cn_seq: int) -> None:
        self._send(encode_bare_ack(cn_seq, errno.EINVAL, nlmsg_pid=self.conn.port_id))

    def _finish(self, ticket: Ticket, reply: Reply) -> None:
        header = ticket.header
        error = reply.error
        data = b""
        if error == 0:
            try:
                data = encode_result(ticket.request_type, reply.result, header.protocol)
            except ClogfsError as exc:
                log_for(header.uuid).error(
                    "cannot encode %s reply: %s", ticket.request_type.name, exc
                )
                error = -errno.EIO
        self._send(encode_reply(header, error=error, data=data, nlmsg_pid=self.conn.port_id))
        self.metrics.observe_request(
            ticket.log_name,
            ticket.request_type.name,
            seq=header.seq,
            regions=ticket.regions,
            result=error,
            arrived=ticket.wall,
            latency_s=trio.current_time() - ticket.arrived,
        )

    def _send(self, datagram: bytes) -> None:
        self.conn.send(datagram)

    # ---------------------------------------------------------------- helpers

    def _shared(self, instance: LogInstance) -> SharedDevice:
        ident = self._device_of.get(instance.key)
        if ident is None or ident not in self._devices:
            raise LogDeviceError("no open log device for this log")
        return self._devices[ident]

    def _name(self, instance: LogInstance) -> str:
        return self._names.get(instance.key, uuid_text(instance.config.uuid))

    # ---------------------------------------------------------------- for the view

    def snapshots(self) -> Sequence[LogSnapshot]:
        """One snapshot per live instance, with history and stats from the metrics."""
        out = []
        for instance in self.registry.instances():
            snap = instance.snapshot()
            name = self._names.get(instance.key)
            if name is not None:
                members = self.cluster.members(instance.key) if self.cluster else None
                snap = replace(
                    snap,
                    history=self.metrics.history(name),
                    stats=self.metrics.stats(name),
                    members=members or self.group.members(instance.key),
                )
            out.append(snap)
        return out

    def describe_names(self) -> list[str]:
        """The instance names of the live logs (for log lines)."""
        return list(self._names.values())

    def describe(self) -> list[str]:
        """Lines for the SIGUSR1 state dump."""
        lines = []
        for instance in self.registry.instances():
            q = self._queues.get(instance.key)
            lines.append(
                f"[{uuid_text(instance.config.uuid)[-8:]}] luid {instance.key[2]} "
                f"{instance.config.protocol.value} {instance.lifecycle.name.lower()} "
                f"{instance.status_info()!r} sync {instance.state.sync_count}/"
                f"{instance.config.region_count} queued {len(q.pending) if q else 0}"
            )
        c = self.conn.counters
        lines.append(
            f"endpoint: {c.datagrams} datagrams, {c.foreign_sender} from other ports, "
            f"{c.rejected} rejected, {c.overflows} overflows, {c.send_errors} send errors"
        )
        return lines
