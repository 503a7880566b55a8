"""The registry of log instances: keys, CTR planning, routing, and the cross-instance rules.

Keys (protocol.md §10): ``(protocol, uuid, luid)``. Mainline requests carry the luid (the
kernel's address of the log context, so the live and the inactive table of one device are two
instances). Take-5 requests carry no luid: every CTR creates a new instance numbered per uuid
in CTR order (1, 2, ...), and requests are routed by lifecycle state (C = constructed, R =
resumed, S = suspended):

==========================  ===================================================
request                     goes to
==========================  ===================================================
RESUME                      the newest C; else the newest S; else the R (no-op)
PRESUSPEND, POSTSUSPEND     the R; if none, reply 0
DTR                         the oldest C; else the oldest S; else the R
every other type            the R; else the newest S; else the newest C
==========================  ===================================================

Rules across instances:

- CTR for an existing mainline key: the same string (without a counted NUL) succeeds and
  answers as a first CTR would (no payload for the reconnect form); another string is
  refused with ``EEXIST``.
- A log device smaller than ``buf_size`` is refused (``EINVAL``, the kernel's wording); a log
  device in use by a live instance of another uuid is refused (``EBUSY``); the instances of one
  uuid (a table reload) share it.
- RESUME is refused with ``EBUSY`` while another instance of the uuid is resumed on this node
  (semantics.md §2.1).
- DTR removes the instance from the registry.
- Unknown logs (§8.3): DTR, PRESUSPEND and POSTSUSPEND answer 0; everything else ``ESRCH``
  (which makes the kernel re-create the log with CTR + RESUME).

Core module: no trio, no sockets, no I/O.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from clogfs.disklog.format import buffer_bytes
from clogfs.errors import KernelProtocolError, LocalProtocolError, UnknownLogError
from clogfs.log.ctr import CtrConfig, LogType, parse_ctr
from clogfs.log.instance import (
    AwaitCommit,
    AwaitLoad,
    DeviceInfo,
    Lifecycle,
    LogInstance,
    LogRequest,
    Reply,
)
from clogfs.netlink.requests import CtrPayload, RequestType
from clogfs.netlink.wire import DM_NAME_LEN, Protocol, RequestHeader

LogKey = tuple[Protocol, bytes, int]  # (protocol, uuid, luid); take 5: luid = instance number

_UNKNOWN_IS_NOOP = frozenset({RequestType.DTR, RequestType.PRESUSPEND, RequestType.POSTSUSPEND})


@dataclass(frozen=True)
class CtrPlan:
    """A parsed CTR: its configuration and, for a repeated mainline CTR, the instance."""

    config: CtrConfig
    existing: LogInstance | None
    reconnect: bool = False


def _routing_class(instance: LogInstance) -> str:
    """C, R or S for the take-5 routing table (a failed instance is nowhere)."""
    lifecycle = instance.lifecycle
    if lifecycle is Lifecycle.CONSTRUCTED:
        return "C"
    if lifecycle in (Lifecycle.RESUMED, Lifecycle.SUSPENDING):
        return "R"
    if lifecycle is Lifecycle.SUSPENDED:
        return "S"
    return "-"


class LogRegistry:
    """Every live log instance of this daemon, keyed ``(protocol, uuid, luid)``.

    Args:
        node_id: this node's id (1 in single-node mode).
    """

    def __init__(self, *, node_id: int = 1) -> None:
        self.node_id = node_id
        self._instances: dict[LogKey, LogInstance] = {}
        self._take5_numbers: dict[bytes, int] = {}

    # -- lookup ------------------------------------------------------------------------------

    def get(self, key: LogKey) -> LogInstance | None:
        """The live instance with ``key``, or None."""
        return self._instances.get(key)

    def instances(self) -> list[LogInstance]:
        """Every live instance, in CTR order."""
        return list(self._instances.values())

    def live(self) -> bool:
        """Whether any log instance exists (the daemon must not exit then)."""
        return bool(self._instances)

    def _siblings(self, protocol: Protocol, uuid: bytes) -> list[LogInstance]:
        """The live instances of one uuid, in CTR order."""
        return [i for (p, u, _), i in self._instances.items() if p is protocol and u == uuid]

    def _peer_resumed(self, instance: LogInstance) -> bool:
        return any(
            other is not instance and (other.resumed or other.loading)
            for other in self._siblings(instance.config.protocol, instance.config.uuid)
        )

    # -- CTR ---------------------------------------------------------------------------------

    def plan_ctr(self, header: RequestHeader, payload: CtrPayload) -> CtrPlan:
        """Parse a CTR and find a repeated one (protocol.md §10).

        Raises:
            KernelProtocolError: the string is invalid (``EINVAL``), or the mainline key exists
                with another string (``EEXIST``).
        """
        config = parse_ctr(header.protocol, payload, header.uuid)
        existing = None
        if header.protocol is Protocol.ULOG:
            existing = self._existing(config, (Protocol.ULOG, header.uuid, header.luid))
        return CtrPlan(config, existing, payload.reconnect)

    def _existing(self, config: CtrConfig, key: LogKey) -> LogInstance | None:
        instance = self._instances.get(key)
        if instance is not None and instance.config.ctr_string != config.ctr_string:
            raise KernelProtocolError(
                f"log exists with CTR string {instance.config.ctr_string!r}, "
                f"not {config.ctr_string!r}",
                errno=errno.EEXIST,
            )
        return instance

    def construct(
        self, plan: CtrPlan, device: DeviceInfo | None, *, header: RequestHeader
    ) -> tuple[LogInstance, bytes | None]:
        """Create the instance of ``plan`` (or reuse the existing one) and answer the CTR.

        Args:
            plan: from :meth:`plan_ctr`.
            device: the opened log device (clustered-disk, new instance), else None.
            header: the CTR request header.

        Returns:
            The instance and the CTR reply payload without its NUL (protocol.md §5.3): the
            device name for a mainline, version >= 2, clustered-disk, non-reconnect CTR;
            else None.

        Raises:
            KernelProtocolError: the device is too small (``EINVAL``) or in use by another
                uuid (``EBUSY``); the key appeared meanwhile with another string (``EEXIST``).
            LocalProtocolError: a device is missing for a disk log (a bug in the caller).
        """
        config = plan.config
        instance = plan.existing
        if instance is None and config.protocol is Protocol.ULOG:
            instance = self._existing(config, (Protocol.ULOG, header.uuid, header.luid))
        if instance is None:
            instance = self._create(config, device, header)
        return instance, self._ctr_reply(instance, header, plan.reconnect)

    def _create(
        self, config: CtrConfig, device: DeviceInfo | None, header: RequestHeader
    ) -> LogInstance:
        if (config.log_type is LogType.DISK) != (device is not None):
            raise LocalProtocolError("a device is required for clustered-disk logs only")
        if device is not None:
            need = buffer_bytes(config.region_count, device.logical_block_size)
            if need > device.size_bytes:
                raise KernelProtocolError(
                    f"log device {device.dev_number} too small: need {need} bytes"
                )
            for other in self._instances.values():
                if (
                    other.device is not None
                    and other.device.identity == device.identity
                    and other.config.uuid != config.uuid
                ):
                    raise KernelProtocolError(
                        f"log device {device.dev_number} is in use by log {other.config.uuid!r}",
                        errno=errno.EBUSY,
                    )
            if len(device.name.encode("utf-8", "surrogateescape")) + 1 > DM_NAME_LEN:
                raise KernelProtocolError(f"log device name {device.name!r} is too long")
        if config.protocol is Protocol.ULOG:
            key: LogKey = (Protocol.ULOG, config.uuid, header.luid)
        else:
            number = self._take5_numbers.get(config.uuid, 0) + 1
            self._take5_numbers[config.uuid] = number
            key = (Protocol.TAKE5, config.uuid, number)
        instance = LogInstance(
            key, config, device, node_id=self.node_id, peer_resumed=self._peer_resumed
        )
        self._instances[key] = instance
        return instance

    @staticmethod
    def _ctr_reply(instance: LogInstance, header: RequestHeader, reconnect: bool) -> bytes | None:
        if (
            header.protocol is not Protocol.ULOG
            or max(header.version, 1) < 2
            or reconnect
            or instance.device is None
        ):
            return None
        return instance.device.name.encode("utf-8", "surrogateescape")

    # -- routing -----------------------------------------------------------------------------

    def route(self, header: RequestHeader, request_type: RequestType) -> LogInstance | None:
        """The instance a request goes to (protocol.md §10).

        Returns:
            The instance, or None for DTR, PRESUSPEND and POSTSUSPEND of an unknown log
            (answered 0).

        Raises:
            UnknownLogError: an unknown log (``ESRCH``).
            LocalProtocolError: CTR is planned with :meth:`plan_ctr`, not routed.
        """
        if request_type is RequestType.CTR:
            raise LocalProtocolError("CTR is not routed; use plan_ctr()")
        if header.protocol is Protocol.ULOG:
            instance = self._instances.get((Protocol.ULOG, header.uuid, header.luid))
        else:
            instance = self._route_take5(header.uuid, request_type)
        if instance is None and request_type not in _UNKNOWN_IS_NOOP:
            raise UnknownLogError(f"no log {header.uuid!r} (luid {header.luid})")
        return instance

    def _route_take5(self, uuid: bytes, request_type: RequestType) -> LogInstance | None:
        siblings = self._siblings(Protocol.TAKE5, uuid)

        def pick(cls: str, *, newest: bool) -> LogInstance | None:
            matching = [i for i in siblings if _routing_class(i) == cls]
            if not matching:
                return None
            return matching[-1] if newest else matching[0]

        order: tuple[tuple[str, bool], ...]
        if request_type is RequestType.RESUME:
            order = (("C", True), ("S", True), ("R", True))
        elif request_type in (RequestType.PRESUSPEND, RequestType.POSTSUSPEND):
            order = (("R", True),)
        elif request_type is RequestType.DTR:
            order = (("C", False), ("S", False), ("R", False))
        else:
            order = (("R", True), ("S", True), ("C", True))
        for cls, newest in order:
            instance = pick(cls, newest=newest)
            if instance is not None:
                return instance
        failed = [i for i in siblings if i.lifecycle is Lifecycle.FAILED]
        return failed[0] if failed else None

    # -- handling ----------------------------------------------------------------------------

    def forget(self, instance: LogInstance) -> None:
        """Unregister ``instance`` once something other than :meth:`handle` destroyed it.

        The cluster replica applies a member's DTR to the instance itself; this is how the
        registry learns of it.

        Raises:
            LocalProtocolError: the instance is not destroyed (it would still be live).
        """
        if instance.lifecycle is not Lifecycle.DESTROYED:
            raise LocalProtocolError(f"forget() of a live log {instance.config.uuid!r}")
        if self._instances.get(instance.key) is instance:
            del self._instances[instance.key]

    def handle(self, instance: LogInstance, request: LogRequest) -> Reply | AwaitCommit | AwaitLoad:
        """Apply the cross-instance rules, then ``instance.handle``.

        Raises:
            UnknownLogError: ``instance`` is no longer registered (``ESRCH``).
            KernelProtocolError: RESUME while another instance of the uuid is resumed
                (``EBUSY``), or the instance refused the request.
            Exception: as :meth:`LogInstance.handle`; a bug leaves the instance FAILED.
        """
        if self._instances.get(instance.key) is not instance:
            raise UnknownLogError(f"log {instance.config.uuid!r} is not registered")
        if (
            request.request_type is RequestType.RESUME
            and not instance.resumed
            and instance.lifecycle is not Lifecycle.FAILED
            and self._peer_resumed(instance)
        ):
            raise KernelProtocolError(
                f"another instance of log {instance.config.uuid!r} is resumed",
                errno=errno.EBUSY,
            )
        try:
            return instance.handle(request)
        finally:
            if instance.lifecycle is Lifecycle.DESTROYED:
                del self._instances[instance.key]
