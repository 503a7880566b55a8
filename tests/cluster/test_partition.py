"""A network partition and its heal, in memory (replica.py rule 10).

The harness splits the group: each side sees the others leave (NODEDOWN) with its own quorum,
and goes on with its own total order; at the heal each side sees the others come back
(NODEUP). The side that lost quorum is *stale*: it writes nothing and hands out no recovery;
at the merge it yields its state, rejoins through a checkpoint and re-asserts its kernel's
view, after which its held FLUSH is confirmed.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clogfs.cluster.replica import Phase
from clogfs.log.ctr import LogType, SyncMode
from clogfs.log.instance import Reply
from clogfs.netlink.requests import RequestType as RT
from clogfs.netlink.requests import ResyncWork, SetRegionSync
from tests.cluster.harness import ClusterHarness
from tests.cluster.test_replica import OK, WORK_OPS, _step, flushed_mark
from tests.core.support import check_invariants


def split_off_node_3(h: ClusterHarness) -> None:
    h.partition({1, 2}, {3}, quorate={1, 2})
    h.run()


@pytest.mark.parametrize("log_type", [LogType.DISK, LogType.CORE])
def test_isolated_node_holds_flush_and_rejoins_with_everyones_marks(log_type: LogType) -> None:
    h = ClusterHarness(3, log_type=log_type, sync_mode=SyncMode.NOSYNC)
    assert h.answer(1, flushed_mark(h, 1, 10)) == OK
    assert h.answer(3, flushed_mark(h, 3, 30)) == OK
    split_off_node_3(h)
    writes_before = len(h.nodes[3].writes_issued)
    assert h.nodes[3].replica is not None
    assert h.nodes[3].replica.stale
    held = flushed_mark(h, 3, 31)
    assert h.answer(3, held) is None  # no quorum: the write waits
    assert h.answer(1, flushed_mark(h, 1, 11)) == OK  # the majority goes on
    h.request(1, RT.CLEAR_REGION, (10,))
    h.request(1, RT.FLUSH, ())
    h.run()
    assert len(h.nodes[3].writes_issued) == writes_before  # the stale side never writes
    h.heal()
    h.run()
    assert h.answer(3, held) == OK
    assert h.nodes[3].replica is not None
    assert h.nodes[3].replica.phase is Phase.SYNCED
    h.check_agreement()
    state = h.nodes[1].instance.state
    assert {r: state.marks.get(r) for r in (10, 11, 30, 31)} == {
        10: None,
        11: {1},
        30: {3},
        31: {3},
    }
    # node 3's copy had node 1's region 10 out of sync (a crash, from its side): re-asserted
    assert not state.sync.get(10)
    assert not state.sync.get(30)
    assert state.sync.get(11)
    assert state.sync.get(31)
    assert h.nodes[3].replica.leader == 1
    if log_type is LogType.DISK:
        assert not any(h.disk_clean(r) for r in (10, 11, 30, 31))
    h.check_disk()
    # after the heal every node's FLUSH is confirmed again
    assert h.answer(2, flushed_mark(h, 2, 20)) == OK
    assert h.answer(3, flushed_mark(h, 3, 32)) == OK
    h.check_agreement()


def test_stale_node_hands_out_no_recovery_and_its_floor_survives_the_merge() -> None:
    h = ClusterHarness(2, log_type=LogType.CORE, sync_mode=SyncMode.DEFAULT)
    work = h.request(2, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(2, work) == Reply(ResyncWork(1, 0))
    h.request(2, RT.SET_REGION_SYNC, SetRegionSync(0, True))
    h.run()
    h.partition({1}, {2}, quorate={1})
    h.run()
    stale_work = h.request(2, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(2, stale_work) == Reply(ResyncWork(0, 0))
    floor = h.nodes[2].instance.state.sync_search
    h.heal()
    h.run()
    h.check_agreement()
    assert h.nodes[1].instance.state.sync_search >= floor


def test_recovery_assigned_before_a_yield_is_discarded() -> None:
    h = ClusterHarness(2, log_type=LogType.CORE, sync_mode=SyncMode.DEFAULT)
    h.partition({1}, {2}, quorate={1})
    h.run()
    h.set_quorum(True, 2)  # quorum back without a merge (e.g. expected votes lowered)
    work = h.request(2, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(2, work) == Reply(ResyncWork(1, 0))
    h.set_quorum(False, 2)
    h.heal()
    h.run()
    done = h.request(2, RT.SET_REGION_SYNC, SetRegionSync(0, True))
    h.run()
    assert h.answer(2, done) == OK
    assert not h.nodes[1].instance.state.sync.get(0)
    assert any("its result is discarded" in w for w in h.nodes[2].warnings)
    h.check_agreement()


def test_quorum_back_without_a_merge_resumes_writing() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    h.partition({1}, {2}, quorate=set())
    h.run()
    writes = len(h.nodes[2].writes_issued)
    held = flushed_mark(h, 2, 5)
    assert h.answer(2, held) is None
    assert len(h.nodes[2].writes_issued) == writes
    h.set_quorum(True, 2)
    h.run()
    assert h.answer(2, held) == OK
    assert len(h.nodes[2].writes_issued) > writes
    assert not h.disk_clean(5)


def test_quorate_side_does_not_yield() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    split_off_node_3(h)
    index = h.nodes[1].replica.index if h.nodes[1].replica else None
    h.heal()
    h.run()
    for node_id in (1, 2):
        replica = h.nodes[node_id].replica
        assert replica is not None
        assert replica.phase is Phase.SYNCED
        assert not replica.stale
    assert index is not None
    assert not any("yields" in w for w in h.nodes[1].warnings)
    assert any("yields" in w for w in h.nodes[3].warnings)
    h.check_agreement()


def test_node_suspended_while_cut_off_departs_at_the_merge_without_writing() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    assert h.answer(3, flushed_mark(h, 3, 30)) == OK
    split_off_node_3(h)
    writes = len(h.nodes[3].writes_issued)
    _pre, post = h.suspend(3)
    h.run()
    assert h.answer(3, post) is None  # the commit of its departure waits for quorum
    h.heal()
    h.run()
    assert h.answer(3, post) == OK
    assert h.nodes[3].replica is None  # left the group
    assert len(h.nodes[3].writes_issued) == writes  # its stale copy never reached the disk
    assert not h.disk_clean(30)  # the majority saw it crash: 30 stays dirty
    h.check_agreement()


_WORK = st.one_of(
    *WORK_OPS,
    st.tuples(st.just("write"), st.integers(1, 4), st.integers(1, 9)),  # writes succeed
)
_OPS = st.lists(_WORK, max_size=25)
_SPLITS = st.sampled_from(
    [
        (({1, 2, 3}, {4}), {1, 2, 3}),
        (({1, 2}, {3, 4}), {1, 2}),
        (({2, 3, 4}, {1}), {2, 3, 4}),
        (({1, 3, 4}, {2}), {1, 3, 4}),
        (({1, 2}, {3, 4}), set()),  # no side kept quorum
        (({3, 4}, {1}, {2}), set()),
        (({1}, {2}, {3}, {4}), set()),
    ]
)


@settings(
    max_examples=int(os.environ.get("CLOGFS_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_OPS, _SPLITS, _OPS, _OPS, st.sampled_from([LogType.DISK, LogType.CORE]))
def test_random_work_across_a_partition_and_its_heal_ends_in_agreement(
    before: list[tuple[str, int, int]],
    split: tuple[tuple[set[int], set[int]], set[int]],
    during: list[tuple[str, int, int]],
    after: list[tuple[str, int, int]],
    log_type: LogType,
) -> None:
    """Any work before, during and after a split: the disk never shows a confirmed mark
    clean, the cut-off side writes nothing, and after the heal every member agrees, every
    request is answered and the invariants hold."""
    h = ClusterHarness(4, region_count=16, log_type=log_type, message_limit=300)
    parked: set[int] = set()
    for op, node_id, arg in before:
        _step(h, op, node_id, arg, parked)
        h.check_disk()
    sides, quorate = split
    h.partition(*sides, quorate=quorate)
    while any(item[0] == "side" for item in h.bus):  # writes begun before that may land
        h.deliver()
    minority = [n for side in sides if not side & quorate for n in side]
    writes = {n: len(h.nodes[n].writes_issued) for n in minority}
    for op, node_id, arg in during:
        _step(h, op, node_id, arg, parked)
        h.check_disk()
    h.run()
    assert {n: len(h.nodes[n].writes_issued) for n in minority} == writes
    h.heal()
    for op, node_id, arg in after:
        _step(h, op, node_id, arg, parked)
        h.check_disk()
    h.run()
    for node in h.synced_nodes():  # recoveries finish, so gated FLUSHes (§6.4) can be answered
        replica = node.replica
        if node.assigned is not None and replica and replica.phase is Phase.SYNCED:
            h.request(node.node_id, RT.SET_REGION_SYNC, SetRegionSync(node.assigned, True))
            node.assigned = None
    h.run()
    assert len(h.synced_nodes()) == 4
    h.check_agreement()
    for node in h.synced_nodes():
        check_invariants(node.instance.state)
    for node in h.nodes.values():
        assert node.replica is not None
        assert node.replica.outstanding == 0, f"node {node.node_id} has unanswered requests"


@pytest.mark.parametrize("log_type", [LogType.DISK, LogType.CORE])
def test_no_side_kept_quorum_the_lowest_yielder_takes_its_copy_back(log_type: LogType) -> None:
    h = ClusterHarness(3, log_type=log_type, sync_mode=SyncMode.NOSYNC)
    h.partition({1}, {2}, {3})  # nobody is quorate
    h.run()
    held = {n: flushed_mark(h, n, 40 + n) for n in (1, 2, 3)}
    assert all(h.answer(n, token) is None for n, token in held.items())
    h.heal()
    h.run()
    assert {n: h.answer(n, token) for n, token in held.items()} == {1: OK, 2: OK, 3: OK}
    assert any("copy is taken" in w for w in h.nodes[1].warnings)
    h.check_agreement()
    state = h.nodes[2].instance.state
    assert {r: state.marks.get(r) for r in (41, 42, 43)} == {41: {1}, 42: {2}, 43: {3}}
    if log_type is LogType.DISK:
        assert not any(h.disk_clean(r) for r in (41, 42, 43))
    assert h.answer(3, flushed_mark(h, 3, 50)) == OK
