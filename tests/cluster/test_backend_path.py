"""The backend's multicast path: direct when nothing is queued, else through the sender task,
in the order the replica produced the messages (no corosync needed: a fake group)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from clogfs.cluster.backend import ClusterBackend, _Member
from clogfs.cluster.cpg import CorosyncGoneError, CsError


class FakeGroup:
    """Records what corosync accepted; ``try_again`` answers of ``try_send`` come first."""

    def __init__(self, try_again: int = 0, fail: BaseException | None = None) -> None:
        self.wire: list[bytes] = []
        self.direct: list[bytes] = []
        self.try_again = try_again
        self.fail = fail
        self.release = trio.Event()  # send (the sender task) waits for it
        self.release.set()

    def try_send(self, payload: bytes) -> bool:
        if self.fail is not None:
            raise self.fail
        if self.try_again:
            self.try_again -= 1
            return False
        self.wire.append(payload)
        self.direct.append(payload)
        return True

    async def send(self, payload: bytes) -> None:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.wire.append(payload)


def member_with_outbox() -> tuple[_Member, trio.MemoryReceiveChannel[bytes]]:
    member = _Member(instance=Any, name=b"clogfs-test", io=Any, resume_token=object())  # type: ignore[arg-type]
    send, receive = trio.open_memory_channel[bytes](math.inf)
    member.outbox = send
    return member, receive


def backend(nursery: trio.Nursery) -> ClusterBackend:
    return ClusterBackend(nursery, node_id=1)


async def sending(nursery: trio.Nursery, group: FakeGroup) -> tuple[ClusterBackend, _Member]:
    """A backend and a member whose sender task runs (and waits) on ``group``."""
    cluster = backend(nursery)
    member, receive = member_with_outbox()
    nursery.start_soon(cluster._sender, member, group, receive, nursery.cancel_scope)
    await trio.testing.wait_all_tasks_blocked()
    return cluster, member


async def test_nothing_queued_multicasts_directly() -> None:
    group = FakeGroup()
    async with trio.open_nursery() as nursery:
        cluster, member = await sending(nursery, group)
        for i in range(5):
            cluster._multicast(member, bytes([i]))
        assert group.direct == group.wire == [bytes([i]) for i in range(5)]
        assert member.queued == 0
        assert member.outbox is not None
        member.outbox.close()  # Leave: the sender ends and cancels the scope


async def test_before_the_sender_runs_messages_queue_in_order() -> None:
    group = FakeGroup()
    async with trio.open_nursery() as nursery:
        cluster = backend(nursery)
        member, receive = member_with_outbox()
        cluster._multicast(member, b"a")  # no sender yet: queued
        nursery.start_soon(cluster._sender, member, group, receive, nursery.cancel_scope)
        cluster._multicast(member, b"b")
        await trio.testing.wait_all_tasks_blocked()
        cluster._multicast(member, b"c")  # queue drained: direct
        assert group.wire == [b"a", b"b", b"c"]
        assert group.direct == [b"c"]
        assert member.outbox is not None
        member.outbox.close()


async def test_try_again_queues_and_later_messages_wait_behind_it() -> None:
    group = FakeGroup(try_again=1)
    async with trio.open_nursery() as nursery:
        cluster, member = await sending(nursery, group)
        group.release = trio.Event()  # the sender's send is held (corosync still full)
        cluster._multicast(member, b"1")  # TRY_AGAIN: queued
        cluster._multicast(member, b"2")  # something queued: never direct
        cluster._multicast(member, b"3")
        assert group.wire == []
        assert member.queued == 3
        group.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert member.queued == 0
        cluster._multicast(member, b"4")
        assert group.wire == [b"1", b"2", b"3", b"4"]
        assert group.direct == [b"4"]
        assert member.outbox is not None
        member.outbox.close()


async def test_a_failed_direct_multicast_is_raised_by_the_sender_task() -> None:
    gone = CorosyncGoneError("cpg_mcast_joined", CsError.ERR_LIBRARY)
    group = FakeGroup(fail=gone)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            cluster, member = await sending(nursery, group)
            cluster._multicast(member, b"x")  # never raises into the caller (the service)

    with pytest.raises(ExceptionGroup) as caught:
        await run()
    assert caught.group_contains(CorosyncGoneError)
    assert group.wire == []


async def test_after_leave_a_multicast_fails_as_before() -> None:
    group = FakeGroup()
    async with trio.open_nursery() as nursery:
        cluster, member = await sending(nursery, group)
        assert member.outbox is not None
        cluster._close_outbox(member)  # as Leave and detach do
        with pytest.raises(trio.ClosedResourceError):
            cluster._multicast(member, b"late")
    assert group.wire == []
    assert member.group is None
