"""The replicated log through ClusterHarness: agreement, joins, departures, durability, quorum."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clogfs.cluster import messages
from clogfs.cluster.messages import CheckpointChunk, Join
from clogfs.cluster.replica import (
    PHASE_TRANSITIONS,
    Answer,
    Delivered,
    Leave,
    LocalRequest,
    Membership,
    Multicast,
    Phase,
    Replica,
)
from clogfs.disklog.format import buffer_bytes, decode_header
from clogfs.errors import LocalProtocolError
from clogfs.log.ctr import LogType, SyncMode
from clogfs.log.instance import Lifecycle, LogRequest, Reply
from clogfs.log.regions import ReplicatedFields
from clogfs.netlink.requests import RemoteRecovering, RequestType, ResyncWork, SetRegionSync
from tests.core.support import check_invariants, instance

from .harness import ClusterHarness

RT = RequestType
OK = Reply()
EIO = Reply(error=-errno.EIO)


def flushed_mark(h: ClusterHarness, node: int, region: int) -> object:
    """MARK then FLUSH on ``node``, run to quiet; returns the FLUSH token."""
    h.request(node, RT.MARK_REGION, (region,))
    token = h.request(node, RT.FLUSH, ())
    h.run()
    return token


# --- start, agreement -------------------------------------------------------------------------


def test_three_nodes_join_and_agree() -> None:
    h = ClusterHarness(3)
    assert [node.replica.phase for node in h.nodes.values() if node.replica] == [Phase.SYNCED] * 3
    assert h.leader() == 1
    h.check_agreement()


def test_first_member_loads_and_writes_a_version_2_header() -> None:
    h = ClusterHarness(3)
    assert decode_header(bytes(h.disk[:16])).nr_regions == 64
    assert h.nodes[1].reads_issued == 1


def test_joiners_never_touch_the_device() -> None:
    h = ClusterHarness(3)
    for node_id in (2, 3):
        assert h.nodes[node_id].reads_issued == 0
        assert h.nodes[node_id].writes_issued == []


def test_ordered_requests_cost_one_multicast() -> None:
    h = ClusterHarness(2)
    before = len(h.bus)
    h.request(2, RT.MARK_REGION, (3,))
    assert len(h.bus) == before + 1


def test_mark_is_answered_once_delivered() -> None:
    h = ClusterHarness(2)
    token = h.request(2, RT.MARK_REGION, (3,))
    assert h.answer(2, token) is None
    h.deliver()
    assert h.answer(2, token) == OK


def test_refused_request_is_answered_einval_everywhere_unchanged() -> None:
    h = ClusterHarness(2)
    token = h.request(2, RT.MARK_REGION, (64,))
    h.run()
    assert h.answer(2, token) == Reply(error=-errno.EINVAL)
    assert h.nodes[1].instance.state.marks == {}
    h.check_agreement()


def test_read_only_request_is_refused_by_the_replica() -> None:
    h = ClusterHarness(1)
    replica = h.nodes[1].replica
    assert replica is not None
    with pytest.raises(LocalProtocolError):
        replica.handle(LocalRequest("t", LogRequest(RT.IN_SYNC, 1, 1)))


def test_resync_work_is_answered_from_the_replicated_state() -> None:
    h = ClusterHarness(2)
    first = h.request(1, RT.GET_RESYNC_WORK)
    second = h.request(2, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(1, first) == Reply(ResyncWork(1, 0))
    assert h.answer(2, second) == Reply(ResyncWork(0, 0))  # one recovering region (I4)


# --- marks, clears, crashes -------------------------------------------------------------------


def test_marks_of_two_nodes_keep_a_region_dirty_until_both_clear() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    flushed_mark(h, 1, 7)
    flushed_mark(h, 2, 7)
    h.request(1, RT.CLEAR_REGION, (7,))
    h.request(1, RT.FLUSH, ())
    h.run()
    assert not h.nodes[3].instance.state.clean.get(7)
    assert not h.disk_clean(7)
    h.request(2, RT.CLEAR_REGION, (7,))
    h.request(2, RT.FLUSH, ())
    h.run()
    assert h.nodes[3].instance.state.clean.get(7)


def test_a_crashed_members_marked_regions_go_out_of_sync_everywhere() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    flushed_mark(h, 3, 9)
    h.crash(3)
    h.run()
    for node_id in (1, 2):
        state = h.nodes[node_id].instance.state
        assert not state.sync.get(9)
        assert not state.in_sync(9)
    h.check_agreement()


def test_a_crashed_members_region_is_never_clean_on_disk() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    flushed_mark(h, 3, 9)
    flushed_mark(h, 2, 9)
    h.crash(3)
    h.run()
    h.request(2, RT.CLEAR_REGION, (9,))
    h.request(2, RT.FLUSH, ())
    h.run()
    assert not h.disk_clean(9)
    assert not h.nodes[1].instance.state.clean.get(9)


def test_crash_is_warned_with_its_reason() -> None:
    h = ClusterHarness(2)
    h.crash(2)
    h.run()
    assert any("PROCDOWN" in text for text in h.nodes[1].warnings)


def test_orderly_departure_parks_marks() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    flushed_mark(h, 3, 4)
    _presuspend, postsuspend = h.suspend(3)
    h.run()
    assert h.answer(3, postsuspend) == OK
    assert h.nodes[3].replica is None
    state = h.nodes[1].instance.state
    assert state.marks == {4: {3}}
    assert state.sync.get(4)
    assert 3 not in state.halted
    h.check_agreement()


def test_orderly_departure_releases_the_assignment_to_the_front_of_priority() -> None:
    h = ClusterHarness(2)
    work = h.request(2, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(2, work) == Reply(ResyncWork(1, 0))
    h.suspend(2)
    h.run()
    state = h.nodes[1].instance.state
    assert state.recovering is None
    assert next(iter(state.priority)) == 0


def test_departing_node_keeps_a_stale_copy_flag_when_others_stay() -> None:
    h = ClusterHarness(2, log_type=LogType.CORE)
    h.suspend(2)
    h.run()
    assert h.nodes[2].instance.copy_current is False
    assert h.nodes[2].instance.lifecycle is Lifecycle.SUSPENDED


def test_request_after_departure_is_local_only_and_warned() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    h.suspend(2)
    h.deliver()
    h.deliver()  # POSTSUSPEND applied, answers outstanding
    node = h.nodes[2]
    assert node.replica is not None
    token = h.request(2, RT.CLEAR_REGION, (1,))
    assert h.answer(2, token) == OK
    assert any("locally only" in text for text in node.warnings)


# --- durability ---------------------------------------------------------------------------


def test_flush_waits_for_the_leaders_write() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    h.request(2, RT.MARK_REGION, (5,))
    token = h.request(2, RT.FLUSH, ())
    while h.deliver():
        pass
    assert h.answer(2, token) is None
    assert h.complete_write(1)
    h.run()
    assert h.answer(2, token) == OK


def test_flushes_share_one_write() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    writes_before = len(h.nodes[1].writes_issued)
    tokens = [h.request(n, RT.FLUSH, (n,)) for n in (1, 2, 3)]
    while h.deliver():  # all three FLUSHes arrive while the first write is in flight
        pass
    h.run()
    assert all(h.answer(n, t) == OK for n, t in zip((1, 2, 3), tokens, strict=True))
    assert len(h.nodes[1].writes_issued) - writes_before <= 2


def test_flush_with_nothing_pending_needs_no_write() -> None:
    h = ClusterHarness(2)
    writes_before = len(h.nodes[1].writes_issued)
    token = h.request(2, RT.FLUSH, ())
    h.run()
    assert h.answer(2, token) == OK
    assert len(h.nodes[1].writes_issued) == writes_before


def test_core_flush_is_confirmed_at_delivery() -> None:
    h = ClusterHarness(2, log_type=LogType.CORE)
    token = h.request(2, RT.FLUSH, (3,))
    h.deliver()
    assert h.answer(2, token) == OK


def test_failed_write_is_announced_and_fails_the_waiting_flushes() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    token = h.request(3, RT.FLUSH, (2,))
    while h.deliver():
        pass
    h.complete_write(1, ok=False)
    h.run()
    assert h.answer(3, token) == EIO
    for node in h.nodes.values():
        assert node.instance.status_info().endswith(" D")


def test_failed_cache_flush_shows_f_everywhere() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    token = h.request(2, RT.FLUSH, (2,))
    while h.deliver():
        pass
    h.complete_write(1, flush_ok=False)
    h.run()
    assert h.answer(2, token) == EIO
    assert h.nodes[2].instance.state.device_state == "F"


def test_flush_after_a_failed_write_retries_and_succeeds() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    h.request(2, RT.FLUSH, (2,))
    while h.deliver():
        pass
    h.complete_write(1, ok=False)
    h.run()
    token = h.request(2, RT.FLUSH, ())
    h.run()
    assert h.answer(2, token) == OK
    assert not h.disk_clean(2)


def test_leader_crash_mid_flush_new_leader_writes_all_then_confirms() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    h.request(3, RT.MARK_REGION, (6,))
    token = h.request(3, RT.FLUSH, ())
    while h.deliver():
        pass
    assert h.nodes[1].writes  # the leader's write is in flight
    h.crash(1)  # and never lands
    while h.deliver():
        pass
    assert h.leader() == 2
    assert h.answer(3, token) is None
    write = h.nodes[2].writes[0]
    assert write.extents[0][0] == 0
    assert len(write.extents[0][1]) == buffer_bytes(64, 512)
    assert write.cache_flush
    h.run()
    assert h.answer(3, token) == OK
    assert not h.disk_clean(6)


def test_leader_suspending_writes_its_state_before_answering() -> None:
    h = ClusterHarness(2, sync_mode=SyncMode.NOSYNC)
    flushed_mark(h, 1, 3)
    h.request(1, RT.CLEAR_REGION, (3,))
    _pre, post = h.suspend(1)
    while h.deliver():
        pass
    assert h.answer(1, post) is None
    h.run()
    assert h.answer(1, post) == OK
    assert h.disk_clean(3)  # the lazy clear reached the disk before the leader left
    assert h.leader() == 2


@pytest.mark.parametrize("departure", [RT.POSTSUSPEND, RT.DTR])
def test_all_members_departing_at_once_are_answered_after_a_durable_final_state(
    departure: RequestType,
) -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    for node_id, region in ((1, 3), (2, 4), (3, 5)):
        flushed_mark(h, node_id, region)
        h.request(node_id, RT.CLEAR_REGION, (region,))  # lazy: reaches the disk at a suspend
    posts = {node_id: h.request(node_id, departure) for node_id in (1, 2, 3)}
    h.run()
    assert {n: h.answer(n, t) for n, t in posts.items()} == {1: OK, 2: OK, 3: OK}
    assert all(h.disk_clean(region) for region in (3, 4, 5))  # the last clear is durable
    assert all(node.replica is None for node in h.nodes.values())


def test_departing_member_takes_over_from_a_leader_that_left_before_its_departure() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    _pre, first = h.suspend(1)
    h.run()  # the leader has left; node 2 leads
    flushed_mark(h, 3, 6)
    h.request(3, RT.CLEAR_REGION, (6,))
    posts = {node_id: h.suspend(node_id)[1] for node_id in (2, 3)}
    while h.deliver():  # both departures applied while node 2's own write is in flight
        pass
    h.run()
    assert h.answer(1, first) == OK
    assert {n: h.answer(n, t) for n, t in posts.items()} == {2: OK, 3: OK}
    assert h.disk_clean(6)


def test_departing_member_keeps_applying_the_groups_steps() -> None:
    h = ClusterHarness(3)
    h.suspend(2)
    h.request(3, RT.GET_RESYNC_WORK)
    h.request(3, RT.MARK_REGION, (9,))
    for _ in range(4):  # node 2 departs first; the leader's DURABLE follows node 3's requests
        h.deliver()
    node2 = h.nodes[2]
    assert node2.replica is not None
    assert node2.replica.phase is Phase.DEPARTING
    state = h.nodes[1].instance.state
    assert state.recovering == (0, 3)
    assert state.marks == {9: {3}}
    assert node2.instance.state.export_fields() == state.export_fields()
    assert node2.replica.index == h.nodes[1].replica.index  # type: ignore[union-attr]


def test_request_delivered_after_its_senders_departure_assigns_no_work() -> None:
    h = ClusterHarness(3)
    h.suspend(2)
    work = h.request(2, RT.GET_RESYNC_WORK)  # multicast before the POSTSUSPEND is delivered
    flush = h.request(1, RT.FLUSH, (0,))
    h.run()
    assert h.answer(2, work) == Reply(ResyncWork(0, 0))
    assert h.nodes[1].instance.state.recovering is None
    assert h.answer(1, flush) == OK  # not gated by an assignment to a departed node


# --- quorum and gating --------------------------------------------------------------------


def test_no_flush_is_confirmed_without_quorum() -> None:
    h = ClusterHarness(3, sync_mode=SyncMode.NOSYNC)
    h.set_quorum(False, 2)
    token = h.request(2, RT.FLUSH, (1,))
    h.run()
    assert h.answer(2, token) is None
    h.set_quorum(True, 2)
    assert h.answer(2, token) == OK


def test_quorum_enforcement_can_be_turned_off() -> None:
    h = ClusterHarness(2, enforce_quorum=False)
    h.set_quorum(False)
    token = h.request(2, RT.FLUSH, (1,))
    h.run()
    assert h.answer(2, token) == OK


def test_flush_is_gated_while_its_mark_is_recovered_by_another_node() -> None:
    h = ClusterHarness(2)
    work = h.request(1, RT.GET_RESYNC_WORK)
    h.run()
    assert h.answer(1, work) == Reply(ResyncWork(1, 0))
    flush = flushed_mark(h, 2, 0)
    assert h.answer(2, flush) is None
    h.request(1, RT.SET_REGION_SYNC, SetRegionSync(0, True))
    h.run()
    assert h.answer(2, flush) == OK


def test_gate_opens_when_the_recoverer_departs() -> None:
    h = ClusterHarness(2)
    h.request(1, RT.GET_RESYNC_WORK)
    h.run()
    flush = flushed_mark(h, 2, 0)
    h.crash(1)
    h.run()
    assert h.answer(2, flush) == OK


def test_is_remote_recovering_sees_a_remote_halt() -> None:
    h = ClusterHarness(2)
    h.request(1, RT.PRESUSPEND)
    h.request(2, RT.PRESUSPEND)
    token = h.request(2, RT.IS_REMOTE_RECOVERING, 5)
    h.run()
    assert h.answer(2, token) == Reply(RemoteRecovering(0, 0))  # every member halted (§5.4)


# --- joins ----------------------------------------------------------------------------------


def test_late_joiner_gets_the_exact_state() -> None:
    h = ClusterHarness(2, start=False)
    h.add_node(3)
    h.resume(1)
    h.run()
    h.resume(2)
    h.run()
    flushed_mark(h, 1, 2)
    h.request(2, RT.GET_RESYNC_WORK)
    h.request(2, RT.PRESUSPEND)
    h.run()
    h.resume(3)
    h.run()
    assert h.nodes[3].synced
    assert h.nodes[3].instance.state.export_fields() == h.nodes[1].instance.state.export_fields()
    h.check_agreement()


def test_joiner_replays_what_was_delivered_during_its_transfer() -> None:
    h = ClusterHarness(2, message_limit=600)
    h.add_node(3)
    h.resume(3)
    for _ in range(3):  # the join, its JOIN, and a piece of the checkpoint
        h.deliver()
    token = h.request(1, RT.MARK_REGION, (8,))
    h.run()
    assert h.answer(1, token) == OK
    assert h.nodes[3].instance.state.marks == {8: {1}}
    h.check_agreement()


def test_several_joiners_in_one_change() -> None:
    h = ClusterHarness(1)
    h.add_node(2)
    h.add_node(3)
    h.resume(2, 3)
    h.run()
    assert all(node.synced for node in h.nodes.values())
    h.check_agreement()


def test_members_starting_together_elect_one_loader() -> None:
    h = ClusterHarness(3, start=False)
    h.resume(1, 2, 3)
    h.run()
    assert [node.reads_issued for node in h.nodes.values()] == [1, 0, 0]
    h.check_agreement()


def test_leader_dying_mid_checkpoint_next_leader_resends() -> None:
    h = ClusterHarness(3, message_limit=600)
    h.add_node(4)
    h.resume(4)
    h.deliver()  # the join
    h.deliver()  # its JOIN: the leader multicasts the pieces
    assert sum(1 for item in h.bus if item[1] == 1) > 1
    h.deliver()  # one piece only
    h.crash(1)
    h.run()
    assert h.nodes[4].synced
    assert h.leader() == 2
    h.check_agreement()


def test_stale_checkpoint_of_an_earlier_session_is_discarded() -> None:
    h = ClusterHarness(2, message_limit=600)
    h.add_node(3)
    h.resume(3)
    h.deliver()
    h.deliver()  # JOIN of session 1: pieces on the bus
    stale = [item for item in h.bus if item[1] == 1]
    h.crash(3)
    h.run()
    flushed_mark(h, 1, 11)  # the state moves on
    h.resume(3)
    h.deliver()  # the new join
    h.bus.extendleft(reversed(stale))  # the old pieces arrive late, after the new join
    h.run()
    assert h.nodes[3].synced
    assert h.nodes[3].instance.state.marks == {11: {1}}
    h.check_agreement()


def test_joiner_with_another_geometry_fails_its_resume() -> None:
    h = ClusterHarness(1)
    h.add_node(2, region_count=32)
    (token,) = h.resume(2)
    h.run()
    assert h.answer(2, token) == Reply(error=-errno.EINVAL)
    assert h.nodes[2].replica is None


def test_joiner_whose_state_holders_all_left_fails_its_resume() -> None:
    h = ClusterHarness(1)
    h.add_node(2)
    (token,) = h.resume(2)
    h.deliver()  # node 2's join
    h.crash(1)
    h.run()
    assert h.answer(2, token) == EIO


def test_checkpoint_of_2_24_regions_installs_in_pieces() -> None:
    h = ClusterHarness(1, region_count=2**24, log_type=LogType.CORE)
    flushed_mark(h, 1, 2**24 - 1)
    h.add_node(2)
    h.resume(2)
    h.run()
    assert h.nodes[2].synced
    assert h.largest_message > messages.DEFAULT_MESSAGE_LIMIT // 2
    assert h.nodes[2].instance.state.marks == {2**24 - 1: {1}}
    h.check_agreement()


# --- first member: core logs --------------------------------------------------------------


def test_core_log_sole_member_keeps_its_bits_across_suspend() -> None:
    h = ClusterHarness(1, log_type=LogType.CORE, sync_mode=SyncMode.NOSYNC)
    h.request(1, RT.SET_REGION_SYNC, SetRegionSync(5, False))
    h.suspend(1)
    h.run()
    h.resume(1)
    h.run()
    assert not h.nodes[1].instance.state.sync.get(5)


def test_core_log_copy_left_behind_restarts_from_the_ctr_state() -> None:
    h = ClusterHarness(2, log_type=LogType.CORE, sync_mode=SyncMode.NOSYNC)
    h.suspend(1)
    h.run()
    h.request(2, RT.SET_REGION_SYNC, SetRegionSync(5, False))
    h.suspend(2)
    h.run()
    h.resume(1)
    h.run()
    assert h.nodes[1].instance.state.sync.get(5)  # stale copy dropped: CTR state (nosync)


# --- replica unit rules -------------------------------------------------------------------


def test_phase_table_allows_failure_from_every_phase() -> None:
    for phase in Phase:
        if phase is not Phase.DONE:
            assert (phase, Phase.DONE) in PHASE_TRANSITIONS


def test_replica_refuses_a_resumed_instance() -> None:
    inst = instance(log_type=LogType.CORE)
    inst.handle(LogRequest(RT.RESUME, None, 1))
    with pytest.raises(LocalProtocolError):
        Replica(inst, "resume", session=1)


def test_requests_before_the_join_follow_the_join_message() -> None:
    inst = instance(log_type=LogType.CORE)
    replica = Replica(inst, "resume", session=5)
    assert replica.handle(LocalRequest("m", LogRequest(RT.MARK_REGION, (1,), 1))) == []
    actions = replica.handle(Membership((1, 2), (1,)))
    assert [a.message for a in actions if isinstance(a, Multicast)][:1] == [Join(1, 5)]
    assert len(actions) == 2


def test_a_lone_first_member_answers_resume_at_once() -> None:
    inst = instance(log_type=LogType.CORE)
    replica = Replica(inst, "resume", session=1)
    assert replica.handle(Membership((1,), (1,))) == [Answer("resume", OK)]
    assert replica.is_leader


def test_bad_checkpoint_fails_the_joiner() -> None:
    inst = instance(log_type=LogType.CORE)
    replica = Replica(inst, "resume", session=1)
    replica.handle(Membership((1, 2), (1,)))
    replica.handle(Delivered(1, Join(1, 1)))
    actions = replica.handle(Delivered(2, CheckpointChunk(1, 1, 0, 0, 0, 1, b"junk")))
    assert Answer("resume", EIO) in actions
    assert isinstance(actions[-1], Leave)


# --- core additions: export and install ---------------------------------------------------


def test_install_takes_the_fields_and_resumes() -> None:
    donor = instance(log_type=LogType.CORE, sync_mode=SyncMode.NOSYNC)
    donor.state.mark((3,), 2)
    target = instance(log_type=LogType.CORE)
    target.install(donor.state.export_fields())
    assert target.lifecycle is Lifecycle.RESUMED
    assert target.state.export_fields() == donor.state.export_fields()


def test_install_on_a_disk_log_knows_its_buffer_and_never_writes_before_told() -> None:
    target = instance()
    target.install(instance().state.export_fields(), bytes(1024), bytes(512 - 8))
    assert target.buffer_parts()[0][:4] == b"rRiM"
    assert target.begin_write() is None  # not the writer (no override): single mode rules
    target.cluster_writer = True
    target.state.mark_all_pending()
    write = target.begin_write()
    assert write is not None
    assert write.cache_flush


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sync_count": 1}, "I1"),
        ({"clean": b"\x01" + bytes(7)}, "I2"),
        (
            {
                "marks": ((0, (1,)),),
                "clean": b"\x01" + bytes(7),
                "sync": b"\x01" + bytes(7),
                "sync_count": 1,
            },
            "I3",
        ),
        ({"sync": b"\x00" * 4 + b"\x01" + bytes(3)}, "I6"),
        ({"recovering": (32, 1)}, "recovering"),
        ({"priority": (1, 1)}, "duplicates"),
        ({"clean": bytes(16)}, "bitmaps"),
    ],
)
def test_install_refuses_inconsistent_fields_and_changes_nothing(
    change: dict[str, object], reason: str
) -> None:
    good = instance(log_type=LogType.CORE).state.export_fields()
    bad = ReplicatedFields(**{**good.__dict__, **change})
    target = instance(log_type=LogType.CORE)
    before = target.state.export_fields()
    with pytest.raises(ValueError, match=reason):
        target.install(bad)
    assert target.state.export_fields() == before
    assert target.lifecycle is Lifecycle.CONSTRUCTED


# --- random interleavings -----------------------------------------------------------------

# a kernel's requests, deliveries and device completions on four nodes (no membership change)
WORK_OPS = (
    st.tuples(st.just("mark"), st.integers(1, 4), st.integers(0, 15)),
    st.tuples(st.just("clear"), st.integers(1, 4), st.integers(0, 15)),
    st.tuples(st.just("flush"), st.integers(1, 4), st.integers(0, 15)),
    st.tuples(st.just("work"), st.integers(1, 4), st.just(0)),
    st.tuples(st.just("recovered"), st.integers(1, 4), st.just(0)),
    st.tuples(st.just("remote"), st.integers(1, 4), st.integers(0, 15)),
    st.tuples(st.just("deliver"), st.integers(1, 4), st.integers(1, 6)),
)
OPS = st.lists(
    st.one_of(
        *WORK_OPS,
        st.tuples(st.just("write"), st.integers(1, 4), st.integers(0, 9)),
        st.tuples(st.just("join"), st.integers(1, 4), st.just(0)),
        st.tuples(st.just("suspend"), st.integers(1, 4), st.just(0)),
        st.tuples(st.just("crash"), st.integers(1, 4), st.integers(0, 1)),
    ),
    max_size=60,
)


def _step(h: ClusterHarness, op: str, node_id: int, arg: int, parked: set[int]) -> None:
    node = h.nodes[node_id]
    busy = node.replica is not None and node.replica.phase is Phase.DEPARTING
    if op == "deliver":
        for _ in range(arg):
            h.deliver()
    elif op == "write":
        if node.writes:
            h.complete_write(node_id, ok=arg != 0)
        else:
            h.complete_read(node_id)
    elif op == "join":
        if node.replica is None:
            h.resume(node_id)
    elif op == "crash":
        if node.replica is not None:
            if busy:  # its departure was delivered to every member: its marks stay parked
                parked.add(node_id)
            else:
                parked.discard(node_id)
            h.crash(node_id, land_writes=bool(arg))
    elif not node.synced or busy:
        return
    elif op == "mark":
        h.request(node_id, RT.MARK_REGION, (arg,))
    elif op == "clear":
        h.request(node_id, RT.CLEAR_REGION, (arg,))
    elif op == "flush":
        h.request(node_id, RT.FLUSH, (arg,))
    elif op == "work":
        h.request(node_id, RT.GET_RESYNC_WORK)
    elif op == "recovered":
        if node.assigned is not None:
            h.request(node_id, RT.SET_REGION_SYNC, SetRegionSync(node.assigned, True))
            node.assigned = None
    elif op == "remote":
        h.request(node_id, RT.IS_REMOTE_RECOVERING, arg)
    elif op == "suspend":
        h.suspend(node_id)


def _check_no_crashed_marks(h: ClusterHarness, parked: set[int]) -> None:
    """``check_no_crashed_marks``, except for nodes whose departure preceded their crash."""
    crashed = h.crashed - parked
    for node in h.synced_nodes():
        for region, holders in node.instance.state.marks.items():
            assert not holders & crashed, f"region {region} marked by crashed {holders}"


@settings(
    max_examples=int(os.environ.get("CLOGFS_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(OPS, st.sampled_from([LogType.DISK, LogType.CORE]))
def test_random_interleavings_keep_members_identical_and_the_disk_safe(
    ops: list[tuple[str, int, int]], log_type: LogType
) -> None:
    h = ClusterHarness(4, region_count=16, log_type=log_type, message_limit=300)
    parked: set[int] = set()  # crashed after an orderly departure (semantics.md §6.3)
    for op, node_id, arg in ops:
        _step(h, op, node_id, arg, parked)
        h.check_disk()
        _check_no_crashed_marks(h, parked)
    h.run()
    for node in h.synced_nodes():  # recoveries finish, so gated FLUSHes (§6.4) can be answered
        if node.assigned is not None and node.replica and node.replica.phase is Phase.SYNCED:
            h.request(node.node_id, RT.SET_REGION_SYNC, SetRegionSync(node.assigned, True))
            node.assigned = None
    h.run()
    h.check_agreement()
    _check_no_crashed_marks(h, parked)
    for node in h.synced_nodes():
        check_invariants(node.instance.state)
    for node in h.nodes.values():
        if node.replica is not None:
            assert node.replica.outstanding == 0, f"node {node.node_id} has unanswered requests"


@pytest.mark.parametrize("node", [1, 2])  # the leader, a member
def test_request_sent_just_before_own_departure_is_answered_from_the_own_copy(node: int) -> None:
    h = ClusterHarness(2)
    _pre, post = h.suspend(node)
    mark = h.request(node, RT.MARK_REGION, (3,))  # multicast before POSTSUSPEND is delivered
    h.run()
    assert h.answer(node, post) == OK
    assert h.answer(node, mark) == OK
    assert h.nodes[node].replica is None  # left only after that answer
    assert any("MARK_REGION after this node left" in w for w in h.nodes[node].warnings)
