"""CPG and quorum across three real corosync nodes (one rig for the module, ~30 s)."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import trio

from clogfs.cluster.cpg import (
    ConfChange,
    CorosyncGoneError,
    CpgAddress,
    CpgGroup,
    CpgReason,
    Deliver,
    open_cpg_group,
)
from clogfs.cluster.quorum import open_quorum_tracker
from tests.cluster.rig import CorosyncRig

pytestmark = [pytest.mark.corosync, pytest.mark.root, pytest.mark.slow]

DEADLINE = 30.0


async def wait_members(group: CpgGroup, count: int) -> ConfChange:
    """Skip events until a ConfChange with ``count`` members that include this one."""
    with trio.fail_after(DEADLINE):
        while True:
            event = await group.receive()
            if (
                isinstance(event, ConfChange)
                and len(event.members) == count
                and group.member in event.members
            ):
                return event


async def next_confchange(group: CpgGroup) -> ConfChange:
    with trio.fail_after(DEADLINE):
        while not isinstance(event := await group.receive(), ConfChange):
            pass
        return event


async def wait_thread_event(event: threading.Event) -> None:
    if not await trio.to_thread.run_sync(event.wait, DEADLINE):
        raise TimeoutError("the other side never got there")


def test_total_order_is_identical_on_all_nodes(rig3: CorosyncRig) -> None:
    """Three concurrent senders: every node delivers the same sequence, each sender FIFO."""
    per_node = 300

    async def member() -> list[tuple[int, int]]:
        async with open_cpg_group(b"order") as group:
            await wait_members(group, 3)
            delivered: list[tuple[int, int]] = []

            async def send_all() -> None:
                for i in range(per_node):
                    await group.send(group.node_id.to_bytes(4, "little") + i.to_bytes(4, "little"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                with trio.fail_after(DEADLINE):
                    while len(delivered) < 3 * per_node:
                        event = await group.receive()
                        if isinstance(event, Deliver):
                            assert event.node_id == int.from_bytes(event.payload[:4], "little")
                            delivered.append(
                                (event.node_id, int.from_bytes(event.payload[4:], "little"))
                            )
            return delivered

    sequences = rig3.run_trio_in_nodes({n: (member, ()) for n in (1, 2, 3)})
    assert sequences[1] == sequences[2] == sequences[3]
    for sender in (1, 2, 3):
        assert [i for n, i in sequences[1] if n == sender] == list(range(per_node))


def test_join_and_leave_are_seen_by_all(rig3: CorosyncRig) -> None:
    barrier = threading.Barrier(3, timeout=DEADLINE)

    async def watcher() -> list[ConfChange]:
        async with open_cpg_group(b"watch") as group:
            await wait_members(group, 2)
            await trio.to_thread.run_sync(barrier.wait)
            return [await next_confchange(group), await next_confchange(group)]

    async def visitor() -> int:
        await trio.to_thread.run_sync(barrier.wait)
        async with open_cpg_group(b"watch") as group:
            await wait_members(group, 3)
            return group.pid

    calls = {1: (watcher, ()), 2: (watcher, ()), 3: (visitor, ())}
    results = rig3.run_trio_in_nodes(calls)  # type: ignore[arg-type]
    pid = results[3]
    for node in (1, 2):
        arrival, departure = results[node]
        assert arrival.joined == (CpgAddress(3, pid, CpgReason.JOIN),)
        assert len(arrival.members) == 3
        assert departure.left == (CpgAddress(3, pid, CpgReason.LEAVE),)
        assert len(departure.members) == 2


def test_killed_client_process_is_seen_as_procdown(rig3: CorosyncRig) -> None:
    ready = [threading.Event(), threading.Event()]

    async def watcher(ready: threading.Event) -> tuple[ConfChange, ConfChange]:
        async with open_cpg_group(b"procdown") as group:
            await wait_members(group, 2)
            ready.set()
            return await next_confchange(group), await next_confchange(group)

    watchers = [
        rig3.start_trio_in_node(node, watcher, event)
        for node, event in zip((1, 3), ready, strict=True)
    ]
    for event in ready:
        assert event.wait(DEADLINE)
    client = rig3.spawn_in_node(2, "tests.cluster.client", "procdown")
    try:
        assert client.stdout is not None
        reported = json.loads(client.stdout.readline())
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=DEADLINE)
        assert client.stdin is not None
        client.stdin.close()
        assert client.stdout is not None
        client.stdout.close()
        assert client.stderr is not None
        client.stderr.close()
    assert reported["node_id"] == 2
    for call in watchers:
        arrival, departure = call.result()
        assert arrival.joined == (CpgAddress(2, reported["pid"], CpgReason.JOIN),)
        assert departure.left == (CpgAddress(2, reported["pid"], CpgReason.PROCDOWN),)


def test_isolated_node_loses_quorum_and_regains_it(rig3: CorosyncRig) -> None:
    ready, lost, healed = threading.Event(), threading.Event(), threading.Event()

    async def isolated() -> list[bool]:
        async with open_quorum_tracker() as tracker:
            seen = [tracker.quorate]
            ready.set()
            with trio.fail_after(DEADLINE):
                await tracker.wait_for(False)
            seen.append(tracker.quorate)
            lost.set()
            await wait_thread_event(healed)
            with trio.fail_after(DEADLINE):
                await tracker.wait_for(True)
            seen.append(tracker.quorate)
            return seen

    call = rig3.start_trio_in_node(3, isolated)
    try:
        assert ready.wait(DEADLINE)
        rig3.set_link(3, up=False)
        assert lost.wait(DEADLINE)
        majority = rig3.quorum_status(1)
        rig3.set_link(3, up=True)
        healed.set()
        assert call.result() == [True, False, True]
        assert majority is not None
        assert majority["Quorate"] == "Yes"
    finally:
        healed.set()
        rig3.set_link(3, up=True)
        rig3.wait_formed()


def test_node_crash_is_seen_as_nodedown(rig3: CorosyncRig) -> None:
    """SIGKILL node 3's corosync: the others see its member leave with NODEDOWN."""
    ready = [threading.Event(), threading.Event()]

    async def member(ready: threading.Event) -> ConfChange:
        async with open_cpg_group(b"crash") as group:
            await wait_members(group, 3)
            ready.set()
            return await next_confchange(group)

    survivors = [rig3.start_trio_in_node(n, member, ready[i]) for i, n in enumerate((1, 2))]
    victim = rig3.start_trio_in_node(3, member, threading.Event())
    try:
        for event in ready:
            assert event.wait(DEADLINE)
        rig3.kill_corosync(3)
        changes = [call.result() for call in survivors]
    finally:
        rig3.start_corosync(3)
        rig3.wait_formed()
    with pytest.raises(CorosyncGoneError):
        victim.result()
    for change in changes:
        assert [(a.node_id, a.reason) for a in change.left] == [(3, CpgReason.NODEDOWN)]
        assert sorted(m.node_id for m in change.members) == [1, 2]
