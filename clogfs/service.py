"""The request service: from an accepted connector message to the reply, for every log.

Owns the per-instance FIFOs (requests of one log instance are processed in arrival order,
``protocol.md`` §7.3; replies across logs go out in any order), the hand-off of
state-changing requests to the ordered group, the durable commit of disk logs with group
commit (FLUSHes arriving while a write is in flight share the next write), the log devices
(one open device and one writer per device, shared by the instances of a table reload), and
the translation of errors into negative errnos at the kernel boundary.

Fast path: a request for an idle instance whose answer needs no I/O is applied and answered
synchronously in the receive loop, with no task switch. Only a request that waits for the
log device (FLUSH, POSTSUSPEND, RESUME and DTR of a disk log with something to write) makes
the instance *busy*; requests arriving meanwhile queue behind it in order.

Error handling: a malformed message gets a bare ``EINVAL`` ack (or a full ``-EINVAL`` reply
when its header decoded); a ``ClogfsError`` raised by the core becomes its negative errno; any
other exception while handling one log's request is a bug: it is logged with its traceback,
that instance is marked failed and the request is answered ``-EIO``; serving goes on.
"""

from __future__ import annotations

import collections
import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from clogfs.cluster.group import Delivery, LocalGroup, OrderedGroup
from clogfs.disklog.device import LogDevice, LogWriteError
from clogfs.disklog.format import buffer_bytes, decode_header
from clogfs.errors import ClogfsError, KernelProtocolError, LogDeviceError, negative_errno
from clogfs.fusefs.inodes import instance_name
from clogfs.log.instance import (
    AwaitCommit,
    AwaitLoad,
    DeviceInfo,
    LogInstance,
    LogRequest,
    Reply,
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

Outcome = Reply | AwaitCommit | AwaitLoad


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
    pending: collections.deque[tuple[Ticket, LogRequest]] = field(
        default_factory=collections.deque
    )


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
                log.warning("malformed dm-log request (neither ulog nor take-5 shape), cn seq %d: "
                            "%s", msg.seq, payload[:64].hex(" "))
            self._bare_ack(msg.seq)
            return
        if self.protocol_mode != "auto" and protocol.value != self.protocol_mode:
            if self._warn.allow("mismatch"):
                log.warning("protocol mismatch: %s request while --protocol %s",
                            "take-5" if protocol is Protocol.TAKE5 else "mainline",
                            self.protocol_mode)
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
            log.warning("[%s] unknown request type %d (seq %d)", uuid_text(header.uuid)[-8:],
                        header.request_type, header.seq)
            self._send(encode_reply(header, error=-errno.EINVAL, nlmsg_pid=self.conn.port_id))
            return
        ticket = Ticket(header, rtype, arrived, time.time(), ())
        try:
            args = decode_payload(rtype, data, protocol)
        except KernelProtocolError as exc:
            log_for(header.uuid).warning("bad %s payload (seq %d): %s", rtype.name, header.seq,
                                         exc)
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
        self.nursery.start_soon(self._drain, instance, ticket, outcome)

    def _note_protocol(self, header: RequestHeader) -> None:
        name = "take5" if header.protocol is Protocol.TAKE5 else f"ulog-v{max(header.version, 1)}"
        if name != self.detected_protocol:
            if self.detected_protocol == "auto":
                log.info("kernel speaks the %s wire format", name)
            elif self._warn.allow("protocol-switch"):
                log.warning("kernel wire format changed from %s to %s (module swapped?)",
                            self.detected_protocol, name)
            self.detected_protocol = name

    # ---------------------------------------------------------------- applying

    def _apply(self, instance: LogInstance, ticket: Ticket, request: LogRequest) -> Outcome:
        """Apply one request, through the ordered group if it changes state."""
        if REQUESTS[request.request_type].ordered:
            ticket.outcome = None
            self.group.multicast(instance.key, request, ticket)
            if ticket.outcome is None:  # a real cluster delivers later; TODO(#7)
                raise RuntimeError("ordered group did not deliver synchronously")
            return ticket.outcome
        return self._handle(instance, request)

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
                "bug while handling %s; this log is marked failed", request.request_type.name)
            mark_failed = getattr(instance, "mark_failed", None)
            if callable(mark_failed):
                mark_failed()
            return Reply(error=-errno.EIO)

    async def _drain(self, instance: LogInstance, ticket: Ticket, outcome: Outcome) -> None:
        """Serve a busy instance until its queue is empty (group commit lives here)."""
        queue = self._queues[instance.key]
        waiters: list[tuple[Ticket, Reply]] = []
        current: tuple[Ticket, Outcome] | None = (ticket, outcome)
        try:
            while True:
                if current is not None:
                    t, out = current
                    current = None
                    if isinstance(out, AwaitLoad):
                        if waiters:
                            await self._commit(instance, waiters)
                            waiters = []
                        out = await self._load(instance)
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
                instance.device.dev_number, exc)
            data = None
        before = instance.state.device_state
        outcome = instance.load(data)
        after = instance.state.device_state
        if data is not None and after != before:  # read fine, header refused (format.md §3)
            log_for(instance.config.uuid).error(
                "%s: incompatible disk log version %d; log device state %s",
                instance.device.dev_number, decode_header(data).version, after)
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
                        "state %s", instance.device.dev_number, verb, exc, after)
                    self.metrics.observe_device_failure(self._name(instance), after)
            else:
                instance.end_write(write, ok=True)
            self.metrics.observe_write(self._name(instance), nbytes=nbytes,
                                       latency_s=trio.current_time() - started, ok=ok)
        for t, reply in waiters:
            if t.request_type is RequestType.FLUSH:
                self.metrics.observe_flush(self._name(instance))
            self._finish(t, reply if ok else Reply(error=-errno.EIO))

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
                lambda: LogDevice.open(word, private_dir=self.private_dir))
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
        dev_info = DeviceInfo(info.name, info.dev_number, info.identity,
                              info.logical_block_size, info.size_bytes)
        instance = self._construct(ticket, plan, dev_info)
        if instance is None:
            if not shared.users:
                await shared.device.aclose()
            return
        self._devices[info.identity] = shared
        shared.users.add(instance.key)
        self._device_of[instance.key] = info.identity

    def _construct(self, ticket: Ticket, plan: Any, device: DeviceInfo | None
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
            self._names[instance.key] = instance_name(instance.config.uuid, instance.key[2],
                                                      shared=True)
            log_for(instance.config.uuid).info(
                "constructed %s log (%s, luid %d): %d regions of %d sectors",
                instance.config.log_type.value, instance.config.protocol.value, instance.key[2],
                instance.config.region_count, instance.config.region_size)
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
                log_for(header.uuid).error("cannot encode %s reply: %s",
                                           ticket.request_type.name, exc)
                error = -errno.EIO
        self._send(encode_reply(header, error=error, data=data, nlmsg_pid=self.conn.port_id))
        self.metrics.observe_request(
            ticket.log_name, ticket.request_type.name, seq=header.seq, regions=ticket.regions,
            result=error, arrived=ticket.wall, latency_s=trio.current_time() - ticket.arrived)

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
                snap = replace(snap, history=self.metrics.history(name),
                               stats=self.metrics.stats(name),
                               members=self.group.members(instance.key))
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
                f"{instance.config.region_count} queued {len(q.pending) if q else 0}")
        c = self.conn.counters
        lines.append(f"endpoint: {c.datagrams} datagrams, {c.foreign_sender} from other ports, "
                     f"{c.rejected} rejected, {c.overflows} overflows, {c.send_errors} send errors")
        return lines
