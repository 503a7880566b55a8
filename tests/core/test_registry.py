"""The registry: CTR planning and replies (protocol.md §5.3, §10), routing, RESUME rules."""

from __future__ import annotations

import errno

import pytest

from clogfs.errors import KernelProtocolError, LocalProtocolError, UnknownLogError
from clogfs.log.instance import AwaitCommit, AwaitLoad, DeviceInfo, Lifecycle, LogInstance, Reply
from clogfs.netlink.requests import CtrPayload, RequestType
from clogfs.netlink.wire import Protocol, RequestHeader
from clogfs.registry import LogRegistry

from .support import DEVICE, req

RT = RequestType
UUID = b"KVT-UUID-C"
CORE = b"131072 clustered-core 1024 nosync"
DISK = b"32768 clustered-disk 7:2 1024"
T5_CORE = b"1024 KVT-UUID-C nosync 131072"


def header(
    protocol: Protocol = Protocol.ULOG,
    *,
    luid: int = 0xFF21A7AC41959600,
    uuid: bytes = UUID,
    version: int = 3,
    request_type: RequestType = RT.CTR,
) -> RequestHeader:
    return RequestHeader(protocol, luid, uuid, version, 0, 7, int(request_type), 0, b"")


def ctr(
    registry: LogRegistry,
    text: bytes,
    *,
    device: DeviceInfo | None = None,
    reconnect: bool = False,
    **kwargs: object,
) -> tuple[LogInstance, bytes | None]:
    head = header(**kwargs)  # type: ignore[arg-type]
    plan = registry.plan_ctr(head, CtrPayload(text, reconnect))
    return registry.construct(plan, device, header=head)


def resume(registry: LogRegistry, instance: LogInstance) -> None:
    outcome = registry.handle(instance, req(RT.RESUME))
    if isinstance(outcome, AwaitLoad):
        outcome = instance.load(None)
    if isinstance(outcome, AwaitCommit):
        write = instance.begin_write()
        if write is not None:
            instance.end_write(write, ok=True)


# -- CTR ------------------------------------------------------------------------------------


def test_ctr_creates_an_instance_keyed_by_uuid_and_luid() -> None:
    registry = LogRegistry()
    instance, reply = ctr(registry, CORE)
    assert instance.key == (Protocol.ULOG, UUID, 0xFF21A7AC41959600)
    assert reply is None
    assert registry.instances() == [instance]
    assert registry.live()


@pytest.mark.parametrize(
    ("text", "version", "reconnect", "expected"),
    [
        (DISK, 3, False, b"7:2"),
        (DISK, 2, False, b"7:2"),
        (DISK, 1, False, None),
        (DISK, 0, False, None),
        (DISK, 3, True, None),
        (CORE, 3, False, None),
    ],
)
def test_ctr_reply_payload(
    text: bytes, version: int, reconnect: bool, expected: bytes | None
) -> None:
    device = DEVICE if b"disk" in text else None
    _, reply = ctr(LogRegistry(), text, device=device, version=version, reconnect=reconnect)
    assert reply == expected


def test_take5_ctr_never_replies_with_a_device() -> None:
    _, reply = ctr(
        LogRegistry(), b"7:2 1024 KVT-UUID-C 32768", device=DEVICE, protocol=Protocol.TAKE5
    )
    assert reply is None


def test_duplicate_ctr_returns_the_same_instance_and_reply() -> None:
    registry = LogRegistry()
    first, _ = ctr(registry, DISK, device=DEVICE)
    plan = registry.plan_ctr(header(), CtrPayload(DISK, False))
    assert plan.existing is first
    again, reply = registry.construct(plan, None, header=header())
    assert again is first
    assert reply == b"7:2"
    assert len(registry.instances()) == 1


def test_reconnect_ctr_of_an_existing_log_succeeds_without_payload() -> None:
    registry = LogRegistry()
    first, _ = ctr(registry, DISK, device=DEVICE)
    again, reply = ctr(registry, DISK, reconnect=True)
    assert again is first
    assert reply is None


def test_ctr_with_another_string_for_an_existing_key_is_eexist() -> None:
    registry = LogRegistry()
    ctr(registry, CORE)
    with pytest.raises(KernelProtocolError) as info:
        registry.plan_ctr(header(), CtrPayload(b"131072 clustered-core 2048", False))
    assert info.value.errno == errno.EEXIST


def test_too_small_device_is_refused_with_the_kernel_wording() -> None:
    small = DeviceInfo("7:2", "7:2", (0x702, 0), 512, 1024)
    with pytest.raises(KernelProtocolError, match="log device 7:2 too small: need 1536 bytes"):
        ctr(LogRegistry(), DISK, device=small)


def test_device_in_use_by_another_uuid_is_ebusy() -> None:
    registry = LogRegistry()
    ctr(registry, DISK, device=DEVICE)
    with pytest.raises(KernelProtocolError) as info:
        ctr(registry, DISK, device=DEVICE, uuid=b"OTHER", luid=2)
    assert info.value.errno == errno.EBUSY
    assert len(registry.instances()) == 1


def test_reload_shares_the_device() -> None:
    registry = LogRegistry()
    ctr(registry, DISK, device=DEVICE)
    ctr(registry, DISK, device=DEVICE, luid=2)
    assert len(registry.instances()) == 2


# -- routing, mainline ----------------------------------------------------------------------


def test_route_by_key() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    assert registry.route(header(request_type=RT.IN_SYNC), RT.IN_SYNC) is instance


@pytest.mark.parametrize("request_type", [RT.DTR, RT.PRESUSPEND, RT.POSTSUSPEND])
def test_unknown_log_suspend_and_dtr_route_to_nothing(request_type: RequestType) -> None:
    assert LogRegistry().route(header(request_type=request_type), request_type) is None


@pytest.mark.parametrize(
    "request_type", [RT.RESUME, RT.GET_REGION_SIZE, RT.IN_SYNC, RT.FLUSH, RT.STATUS_INFO]
)
def test_unknown_log_other_requests_are_esrch(request_type: RequestType) -> None:
    with pytest.raises(UnknownLogError) as info:
        LogRegistry().route(header(request_type=request_type), request_type)
    assert info.value.errno == errno.ESRCH


def test_other_luid_is_another_log() -> None:
    registry = LogRegistry()
    ctr(registry, CORE)
    with pytest.raises(UnknownLogError):
        registry.route(header(luid=5), RT.IN_SYNC)


# -- cross-instance rules -------------------------------------------------------------------


def test_dtr_removes_the_instance() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    assert registry.handle(instance, req(RT.DTR)) == Reply()
    assert registry.instances() == []
    assert not registry.live()
    assert registry.get(instance.key) is None


def test_forget_unregisters_an_instance_destroyed_elsewhere() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    instance.handle(req(RT.DTR))  # as the cluster replica applies a member's DTR
    assert registry.get(instance.key) is instance
    registry.forget(instance)
    assert registry.get(instance.key) is None


def test_forget_refuses_a_live_instance() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    with pytest.raises(LocalProtocolError):
        registry.forget(instance)
    assert registry.get(instance.key) is instance


def test_resume_while_another_instance_is_resumed_is_ebusy() -> None:
    registry = LogRegistry()
    old, _ = ctr(registry, CORE, luid=1)
    new, _ = ctr(registry, CORE, luid=2)
    resume(registry, old)
    with pytest.raises(KernelProtocolError) as info:
        registry.handle(new, req(RT.RESUME))
    assert info.value.errno == errno.EBUSY
    assert new.lifecycle is Lifecycle.CONSTRUCTED


def test_reload_resumes_the_new_instance_after_the_old_suspends() -> None:
    registry = LogRegistry()
    old, _ = ctr(registry, DISK, device=DEVICE, luid=1)
    resume(registry, old)
    new, _ = ctr(registry, DISK, device=DEVICE, luid=2)
    registry.handle(old, req(RT.PRESUSPEND))
    registry.handle(old, req(RT.POSTSUSPEND))
    resume(registry, new)
    assert new.lifecycle is Lifecycle.RESUMED
    old.handle(req(RT.MARK_REGION, (3,)))
    assert registry.handle(old, req(RT.FLUSH, ())) == Reply()  # the new one owns the device
    assert old.begin_write() is None
    registry.handle(old, req(RT.DTR))
    assert registry.instances() == [new]


def test_handle_of_an_unregistered_instance_is_esrch() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    registry.handle(instance, req(RT.DTR))
    with pytest.raises(UnknownLogError):
        registry.handle(instance, req(RT.IN_SYNC, 0))


def test_a_bug_in_handle_leaves_the_instance_failed() -> None:
    registry = LogRegistry()
    instance, _ = ctr(registry, CORE)
    with pytest.raises(Exception, match="arguments"):
        registry.handle(instance, req(RT.IN_SYNC, "zero"))
    assert instance.lifecycle is Lifecycle.FAILED
    assert registry.handle(instance, req(RT.DTR)) == Reply()
    assert registry.instances() == []


# -- take-5 routing (protocol.md §10) -------------------------------------------------------


def t5_header(request_type: RequestType) -> RequestHeader:
    return header(Protocol.TAKE5, luid=0, version=0, request_type=request_type)


def t5_ctr(registry: LogRegistry) -> LogInstance:
    return ctr(registry, T5_CORE, protocol=Protocol.TAKE5, luid=0, version=0)[0]


def t5(registry: LogRegistry, request_type: RequestType) -> LogInstance | None:
    instance = registry.route(t5_header(request_type), request_type)
    if instance is not None:
        outcome = registry.handle(instance, req(request_type))
        assert outcome == Reply()
    return instance


def test_take5_ctr_numbers_instances_per_uuid() -> None:
    registry = LogRegistry()
    first, second = t5_ctr(registry), t5_ctr(registry)
    assert (first.key[2], second.key[2]) == (1, 2)


def test_take5_reload() -> None:
    registry = LogRegistry()
    old = t5_ctr(registry)
    assert t5(registry, RT.RESUME) is old
    new = t5_ctr(registry)
    assert registry.route(t5_header(RT.IN_SYNC), RT.IN_SYNC) is old
    assert t5(registry, RT.PRESUSPEND) is old
    assert t5(registry, RT.POSTSUSPEND) is old
    assert t5(registry, RT.RESUME) is new
    assert t5(registry, RT.DTR) is old
    assert registry.instances() == [new]


def test_take5_clearing_an_inactive_table_removes_the_constructed_one() -> None:
    registry = LogRegistry()
    live = t5_ctr(registry)
    t5(registry, RT.RESUME)
    inactive = t5_ctr(registry)
    assert t5(registry, RT.DTR) is inactive
    assert registry.instances() == [live]


def test_take5_replacing_an_inactive_table_removes_the_oldest_constructed() -> None:
    registry = LogRegistry()
    live = t5_ctr(registry)
    t5(registry, RT.RESUME)
    t5(registry, RT.PRESUSPEND)
    t5(registry, RT.POSTSUSPEND)
    first, second = t5_ctr(registry), t5_ctr(registry)
    assert t5(registry, RT.DTR) is first
    assert registry.instances() == [live, second]


def test_take5_removing_a_device_with_an_inactive_table() -> None:
    registry = LogRegistry()
    live = t5_ctr(registry)
    t5(registry, RT.RESUME)
    inactive = t5_ctr(registry)
    assert t5(registry, RT.DTR) is inactive
    assert t5(registry, RT.PRESUSPEND) is live
    assert t5(registry, RT.POSTSUSPEND) is live
    assert t5(registry, RT.DTR) is live
    assert not registry.live()


def test_take5_suspend_without_a_resumed_instance_answers_zero() -> None:
    registry = LogRegistry()
    t5_ctr(registry)
    assert registry.route(t5_header(RT.PRESUSPEND), RT.PRESUSPEND) is None


def test_take5_data_requests_prefer_resumed_then_newest_suspended_then_newest_constructed() -> None:
    registry = LogRegistry()
    first = t5_ctr(registry)
    second = t5_ctr(registry)
    assert registry.route(t5_header(RT.IN_SYNC), RT.IN_SYNC) is second
    t5(registry, RT.RESUME)  # the newest C: second
    assert registry.route(t5_header(RT.IN_SYNC), RT.IN_SYNC) is second
    t5(registry, RT.PRESUSPEND)
    t5(registry, RT.POSTSUSPEND)
    assert registry.route(t5_header(RT.IN_SYNC), RT.IN_SYNC) is second
    assert registry.route(t5_header(RT.RESUME), RT.RESUME) is first


def test_take5_unknown_uuid_is_esrch() -> None:
    with pytest.raises(UnknownLogError):
        LogRegistry().route(t5_header(RT.IN_SYNC), RT.IN_SYNC)
