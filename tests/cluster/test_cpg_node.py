"""The CPG binding against one real corosync (a one-node rig, started once for the module)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from clogfs.cluster.cpg import (
    ConfChange,
    CorosyncError,
    CorosyncGoneError,
    CpgAddress,
    CpgEvent,
    CpgGroup,
    CpgReason,
    CsError,
    Deliver,
    TotemChange,
    open_cpg_group,
)
from clogfs.cluster.quorum import open_quorum_tracker
from clogfs.errors import LocalProtocolError
from tests.cluster.rig import CorosyncRig

pytestmark = [pytest.mark.corosync, pytest.mark.root]

DEADLINE = 10.0


async def next_of(group: CpgGroup, kind: type[CpgEvent]) -> CpgEvent:
    """The next event of ``kind``, skipping others, within the deadline."""
    with trio.fail_after(DEADLINE):
        while not isinstance(event := await group.receive(), kind):
            pass
        return event


async def joined(group: CpgGroup) -> ConfChange:
    """Skip events until the ConfChange that lists this member."""
    with trio.fail_after(DEADLINE):
        while True:
            event = await group.receive()
            if isinstance(event, ConfChange) and group.member in event.members:
                return event


async def receive_forever(group: CpgGroup) -> None:
    """Receive until an error."""
    while True:
        await group.receive()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) - {"."}


def shm_mappings() -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if "/qb-" in line]


def test_join_is_delivered_as_a_confchange(rig1: CorosyncRig) -> None:
    async def scenario() -> tuple[ConfChange, CpgGroup]:
        async with open_cpg_group(b"join") as group:
            return await joined(group), group

    change, group = rig1.run_trio_in_node(1, scenario)
    assert change.members == (group.member,)
    assert change.joined == (CpgAddress(1, group.pid, CpgReason.JOIN),)
    assert change.left == ()


def test_local_node_id_and_message_limit(rig1: CorosyncRig) -> None:
    async def scenario() -> tuple[int, int]:
        async with open_cpg_group(b"local") as group:
            return group.node_id, group.max_message_bytes

    node_id, limit = rig1.run_trio_in_node(1, scenario)
    assert node_id == 1
    assert limit >= 1024 * 1024 - 1024  # spec/cluster.md: 1 047 552 with corosync 3.1


def test_own_message_is_delivered(rig1: CorosyncRig) -> None:
    async def scenario() -> tuple[Deliver, CpgGroup]:
        async with open_cpg_group(b"own") as group:
            await group.send(b"\x00payload\xff")
            event = await next_of(group, Deliver)
            assert isinstance(event, Deliver)
            return event, group

    event, group = rig1.run_trio_in_node(1, scenario)
    assert event == Deliver(1, group.pid, b"\x00payload\xff")


def test_initial_totem_ring_is_reported(rig1: CorosyncRig) -> None:
    async def scenario() -> CpgEvent:
        async with open_cpg_group(b"totem") as group:
            return await next_of(group, TotemChange)

    event = rig1.run_trio_in_node(1, scenario)
    assert isinstance(event, TotemChange)
    assert event.members == (1,)
    assert event.ring_seq > 0


def test_messages_arrive_in_send_order(rig1: CorosyncRig) -> None:
    count = 500

    async def scenario() -> list[bytes]:
        async with open_cpg_group(b"order") as group:
            for i in range(count):
                await group.send(i.to_bytes(4, "little"))
            received: list[bytes] = []
            while len(received) < count:
                event = await next_of(group, Deliver)
                assert isinstance(event, Deliver)
                received.append(event.payload)
            return received

    assert rig1.run_trio_in_node(1, scenario) == [i.to_bytes(4, "little") for i in range(count)]


def test_oversized_message_is_refused_before_corosync(rig1: CorosyncRig) -> None:
    async def scenario() -> None:
        async with open_cpg_group(b"big") as group:
            with pytest.raises(LocalProtocolError):
                await group.send(bytes(group.max_message_bytes + 1))

    rig1.run_trio_in_node(1, scenario)


def test_flood_is_delivered_in_order_through_try_again(rig1: CorosyncRig) -> None:
    """64 KiB messages as fast as corosync takes them: CS_ERR_TRY_AGAIN is retried, none lost.

    Messages this large fill corosync's queue within a few hundred sends (8 KiB ones rarely
    do on one node).
    """
    filler = bytes(65536 - 4)
    limit = 20_000

    async def scenario() -> tuple[int, list[int], int]:
        async with open_cpg_group(b"flood") as group:
            sent = 0
            received: list[int] = []
            done, all_in = trio.Event(), trio.Event()

            async def drain() -> None:
                async for event in group:
                    if isinstance(event, Deliver):
                        assert event.payload[4:] == filler
                        received.append(int.from_bytes(event.payload[:4], "little"))
                        if done.is_set() and len(received) == sent:
                            all_in.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                with trio.fail_after(60):
                    while sent < limit and (sent < 1000 or group.try_again_count == 0):
                        await group.send(sent.to_bytes(4, "little") + filler)
                        sent += 1
                    done.set()
                    if len(received) < sent:
                        await all_in.wait()
                nursery.cancel_scope.cancel()
            return sent, received, group.try_again_count

    sent, received, try_again = rig1.run_trio_in_node(1, scenario)
    assert received == list(range(sent))
    assert try_again > 0


def test_two_receivers_are_refused(rig1: CorosyncRig) -> None:
    async def scenario() -> None:
        async with open_cpg_group(b"busy") as group:
            await joined(group)
            await next_of(group, TotemChange)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(group.receive)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await group.receive()
                nursery.cancel_scope.cancel()

    rig1.run_trio_in_node(1, scenario)


def test_blocked_receiver_is_woken_when_the_group_is_left(rig1: CorosyncRig) -> None:
    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []

        async def receiver(group: CpgGroup) -> None:
            try:
                await group.receive()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery, open_cpg_group(b"wake") as group:
            await joined(group)
            await next_of(group, TotemChange)
            nursery.start_soon(receiver, group)
            await trio.testing.wait_all_tasks_blocked()
        return errors

    errors = rig1.run_trio_in_node(1, scenario)
    assert [type(e) for e in errors] == [trio.ClosedResourceError]


def test_left_group_refuses_use(rig1: CorosyncRig) -> None:
    async def scenario() -> None:
        async with open_cpg_group(b"closed") as group:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await group.send(b"late")
        with pytest.raises(trio.ClosedResourceError):
            await group.receive()

    rig1.run_trio_in_node(1, scenario)


def test_one_node_cluster_is_quorate(rig1: CorosyncRig) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with open_quorum_tracker() as tracker:
            return tracker.quorate, tracker.provider

    assert rig1.run_trio_in_node(1, scenario) == (True, True)


def test_no_corosync_is_a_clear_error(rig1: CorosyncRig) -> None:
    """The bridge namespace runs no corosync: opening fails at once with CorosyncGoneError."""

    async def scenario() -> None:
        with pytest.raises(CorosyncGoneError, match="cpg_model_initialize"):
            async with open_cpg_group(b"nobody"):
                pass  # pragma: no cover
        with pytest.raises(CorosyncGoneError, match="quorum_initialize"):
            async with open_quorum_tracker():
                pass  # pragma: no cover

    rig1.call_in_netns(rig1.bridge_netns, trio.run, scenario)


def test_corosync_killed_is_detected_and_released(rig1: CorosyncRig) -> None:
    """SIGKILL corosync under a joined group: receive and send raise, nothing stays open."""

    async def scenario() -> tuple[set[str], set[str], list[str]]:
        before = open_fds()
        async with open_cpg_group(b"killed") as group:
            await joined(group)
            await trio.to_thread.run_sync(rig1.kill_corosync, 1)
            with trio.fail_after(DEADLINE), pytest.raises(CorosyncGoneError):
                await receive_forever(group)
            with pytest.raises(CorosyncGoneError):
                await group.send(b"too late")
            with pytest.raises(CorosyncGoneError):
                await group.receive()
        return before, open_fds(), shm_mappings()

    try:
        before, after, mappings = rig1.run_trio_in_node(1, scenario)
    finally:
        rig1.start_corosync(1)
        rig1.wait_formed()
    assert after == before
    assert mappings == []


def test_second_join_by_one_process_is_refused_and_released(rig1: CorosyncRig) -> None:
    """CPG names a member by node id and pid: one process cannot join a group twice."""

    async def scenario() -> tuple[int, set[str], set[str]]:
        async with open_cpg_group(b"twice") as group:
            await joined(group)
            before = open_fds()
            with pytest.raises(CorosyncError) as info:
                async with open_cpg_group(b"twice"):
                    pass  # pragma: no cover
            return info.value.cs_error, before, open_fds()

    code, before, after = rig1.run_trio_in_node(1, scenario)
    assert code == CsError.ERR_EXIST
    assert after == before
