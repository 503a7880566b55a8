"""The region rules of semantics.md §4-§6 on RegionState, one behaviour per test."""

from __future__ import annotations

import errno
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.errors import KernelProtocolError
from clogfs.log.bitmap import Bitmap
from clogfs.log.regions import RegionState

from .support import check_invariants

A, B = 1, 2  # node ids


def resynced(n: int = 16, *, members: tuple[int, ...] = (A,)) -> RegionState:
    """A state with every region out of sync and dirty (a default-sync CTR)."""
    return RegionState(n, nosync=False, members=members)


def in_sync(n: int = 16, *, members: tuple[int, ...] = (A,)) -> RegionState:
    return RegionState(n, nosync=True, members=members)


# -- CTR state --------------------------------------------------------------------------


def test_nosync_ctr_state_is_in_sync_and_clean() -> None:
    state = in_sync()
    assert (state.sync_count, state.in_sync_sticky, state.sync_search) == (16, True, 16)
    assert state.clean.count() == 16
    check_invariants(state)


def test_default_ctr_state_is_out_of_sync_and_dirty() -> None:
    state = resynced()
    assert (state.sync_count, state.in_sync_sticky, state.clean.count()) == (0, False, 0)
    check_invariants(state)


# -- MARK §4.1 ------------------------------------------------------------------------------


def test_mark_dirties_and_records_the_node() -> None:
    state = in_sync()
    state.mark([3, 5], A)
    assert not state.clean.get(3)
    assert not state.clean.get(5)
    assert state.marks == {3: {A}, 5: {A}}


def test_mark_pending_change_needs_a_cache_flush() -> None:
    state = in_sync()
    state.take_pending()
    state.mark([9], A)
    pending = state.take_pending()
    assert pending.byte_indices == {1}
    assert pending.dirtied


def test_duplicate_mark_changes_nothing() -> None:
    state = in_sync()
    state.mark([3], A)
    state.take_pending()
    state.mark([3], A)
    assert state.marks == {3: {A}}
    assert not state.has_pending()


@pytest.mark.parametrize("regions", [[3, 16], [16], [-1]])
def test_mark_batch_with_a_bad_region_applies_nothing(regions: list[int]) -> None:
    state = in_sync()
    with pytest.raises(KernelProtocolError) as info:
        state.mark(regions, A)
    assert info.value.errno == errno.EINVAL
    assert state.marks == {}
    assert state.clean.count() == 16


# -- CLEAR §4.2 -----------------------------------------------------------------------------


def test_clear_cleans_a_marked_in_sync_region() -> None:
    state = in_sync()
    state.mark([3], A)
    state.take_pending()
    state.clear([3], A)
    assert state.clean.get(3)
    assert state.marks == {}
    pending = state.take_pending()
    assert pending.byte_indices == {0}
    assert not pending.dirtied


def test_clear_without_mark_cleans_an_in_sync_region() -> None:
    state = in_sync()
    state.clean.clear(4)
    state.clear([4], A)
    assert state.clean.get(4)


def test_clear_keeps_dirty_while_another_node_holds_a_mark() -> None:
    state = in_sync(members=(A, B))
    state.mark([3], A)
    state.mark([3], B)
    state.clear([3], A)
    assert not state.clean.get(3)
    assert state.marks == {3: {B}}


def test_clear_keeps_an_out_of_sync_region_dirty() -> None:
    state = resynced()
    state.mark([3], A)
    state.clear([3], A)
    assert not state.clean.get(3)
    assert state.marks == {}


def test_clear_batch_with_a_bad_region_applies_nothing() -> None:
    state = in_sync()
    state.mark([3], A)
    with pytest.raises(KernelProtocolError):
        state.clear([3, 99], A)
    assert state.marks == {3: {A}}


# -- SET_REGION_SYNC §4.3 ------------------------------------------------------------------


def test_set_region_sync_counts_changes_only() -> None:
    state = resynced()
    state.set_region_sync(2, True, A)
    state.set_region_sync(2, True, A)
    assert state.sync_count == 1
    assert state.sync.get(2)


def test_set_region_out_of_sync_dirties_the_region() -> None:
    state = in_sync()
    state.take_pending()
    state.set_region_sync(2, False, A)
    assert state.sync_count == 15
    assert not state.clean.get(2)
    assert state.take_pending().dirtied


def test_set_region_out_of_sync_keeps_the_sticky_flag() -> None:
    state = in_sync()
    state.set_region_sync(2, False, A)
    assert state.in_sync_sticky
    assert state.in_sync(2)


def test_set_region_sync_ends_the_recoverers_assignment() -> None:
    state = resynced()
    assert state.get_resync_work(A) == (True, 0)
    state.set_region_sync(0, True, A)
    assert state.recovering is None


def test_set_region_sync_from_another_node_keeps_the_assignment() -> None:
    state = resynced(members=(A, B))
    state.get_resync_work(A)
    state.set_region_sync(0, True, B)
    assert state.recovering == (0, A)


def test_set_region_sync_for_another_region_keeps_the_assignment() -> None:
    state = resynced()
    state.get_resync_work(A)
    state.set_region_sync(5, True, A)
    assert state.recovering == (0, A)


def test_region_out_of_sync_after_full_sync_waits_for_the_next_reset() -> None:
    state = in_sync()
    state.set_region_sync(5, False, A)
    assert state.get_resync_work(A) == (False, 0)
    state.reset()
    assert state.get_resync_work(A) == (True, 5)


def test_full_sync_sets_sticky_and_moves_the_cursor() -> None:
    state = resynced(4)
    for r in range(4):
        state.set_region_sync(r, True, A)
    assert state.in_sync_sticky
    assert state.sync_search == 4


def test_recovered_region_is_cleaned_by_the_following_clear() -> None:
    state = resynced()
    state.get_resync_work(A)
    state.set_region_sync(0, True, A)
    state.clear([0], A)
    assert state.clean.get(0)


# -- GET_RESYNC_WORK §5.3 -------------------------------------------------------------------


def test_resync_work_scans_in_order() -> None:
    state = resynced()
    state.set_region_sync(0, True, A)
    assert state.get_resync_work(A) == (True, 1)
    assert state.sync_search == 2


def test_resync_work_repeats_the_assignment_to_its_node() -> None:
    state = resynced()
    state.get_resync_work(A)
    assert state.get_resync_work(A) == (True, 0)


def test_resync_work_refuses_while_another_node_recovers() -> None:
    state = resynced(members=(A, B))
    state.get_resync_work(A)
    assert state.get_resync_work(B) == (False, 0)


def test_resync_work_refuses_a_halted_node() -> None:
    state = resynced()
    state.halt(A)
    assert state.get_resync_work(A) == (False, 0)


def test_resync_work_ends_and_parks_the_cursor() -> None:
    state = resynced(2)
    state.set_region_sync(0, True, A)
    state.sync_search = 1
    state.set_region_sync(1, True, A)
    assert state.get_resync_work(A) == (False, 0)
    assert state.sync_search == 2


def test_resync_work_serves_priority_first() -> None:
    state = resynced()
    state.sync_search = 0
    state.is_remote_recovering(9, A)
    assert state.get_resync_work(A) == (True, 9)


def test_resync_work_drops_priority_entries_in_sync() -> None:
    state = resynced()
    state.is_remote_recovering(9, A)
    state.set_region_sync(9, True, A)
    assert state.get_resync_work(A) == (True, 0)
    assert state.priority == {}


def test_resync_work_moves_regions_marked_elsewhere_to_the_back() -> None:
    state = resynced(members=(A, B))
    state.is_remote_recovering(9, A)
    state.is_remote_recovering(7, A)
    state.mark([9], B)
    assert state.get_resync_work(A) == (True, 7)
    assert list(state.priority) == [9]


def test_resync_scan_skips_regions_marked_elsewhere_into_priority() -> None:
    state = resynced(members=(A, B))
    state.mark([0], B)
    assert state.get_resync_work(A) == (True, 1)
    assert list(state.priority) == [0]
    assert state.sync_search == 2


def test_single_node_never_skips_its_own_marks() -> None:
    state = resynced()
    state.mark([0], A)
    assert state.get_resync_work(A) == (True, 0)


# -- IS_REMOTE_RECOVERING §5.4 --------------------------------------------------------------


def test_remote_recovering_advances_the_cursor_over_in_sync_regions() -> None:
    state = in_sync()
    state.set_region_sync(10, False, A)
    state.in_sync_sticky = False
    state.sync_search = 0
    assert state.is_remote_recovering(3, A) == (False, 10)
    assert state.sync_search == 10


def test_remote_recovering_pending_region_is_queued() -> None:
    state = resynced()
    assert state.is_remote_recovering(5, A) == (True, 0)
    assert list(state.priority) == [5]


def test_remote_recovering_is_deduplicated() -> None:
    state = resynced()
    state.is_remote_recovering(5, A)
    state.is_remote_recovering(5, A)
    assert list(state.priority) == [5]


def test_remote_recovering_assigned_region() -> None:
    state = resynced()
    state.get_resync_work(A)
    assert state.is_remote_recovering(0, A) == (True, 0)
    assert state.priority == {}


def test_remote_recovering_region_below_the_cursor_is_not_recovering() -> None:
    state = resynced()
    state.sync_search = 8
    assert state.is_remote_recovering(3, A) == (False, 8)
    assert state.priority == {}


def test_remote_recovering_while_every_member_is_halted() -> None:
    state = resynced()
    state.halt(A)
    assert state.is_remote_recovering(5, A) == (False, 0)
    assert state.priority == {}


def test_remote_recovering_hint_is_at_most_the_recovering_region() -> None:
    state = resynced()
    state.get_resync_work(A)  # 0 assigned, cursor 1
    assert state.is_remote_recovering(5, A)[1] == 0


def test_remote_recovering_hint_is_region_count_when_in_sync() -> None:
    assert in_sync().is_remote_recovering(3, A) == (False, 16)


def test_remote_recovering_bad_region() -> None:
    with pytest.raises(KernelProtocolError):
        resynced().is_remote_recovering(16, A)


# -- IN_SYNC, IS_CLEAN ----------------------------------------------------------------------


def test_is_clean_is_false_while_the_device_failed() -> None:
    state = in_sync()
    state.fail_device("D")
    assert state.is_clean(0) is False


def test_device_state_only_rises() -> None:
    state = in_sync()
    state.fail_device("F")
    state.fail_device("D")
    assert state.device_state == "F"


# -- departures §6.3 ------------------------------------------------------------------------


def test_orderly_departure_parks_marks_and_releases_the_assignment() -> None:
    state = resynced(members=(A, B))
    state.sync_search = 4
    state.mark([7], A)
    state.get_resync_work(A)  # region 4
    state.is_remote_recovering(9, B)
    state.halt(A)
    state.depart_orderly(A)
    assert state.marks == {7: {A}}
    assert state.recovering is None
    assert list(state.priority) == [4, 9]
    assert A not in state.halted


def test_crash_makes_marked_regions_out_of_sync_and_clears_sticky() -> None:
    state = in_sync(members=(A, B))
    state.mark([3, 4], A)
    state.mark([4], B)
    state.depart_crash(A)
    assert state.marks == {4: {B}}
    assert not state.sync.get(3)
    assert not state.sync.get(4)
    assert state.sync_count == 14
    assert not state.in_sync_sticky
    assert state.priority == {}
    check_invariants(state)


# -- reset and load -------------------------------------------------------------------------


def test_reset_empties_the_volatile_state() -> None:
    state = resynced()
    state.mark([1], A)
    state.get_resync_work(A)
    state.halt(A)
    state.is_remote_recovering(9, A)
    state.reset()
    assert (state.marks, state.recovering, state.priority, state.halted) == ({}, None, {}, set())
    assert state.sync_search == 0


def test_load_derives_sync_from_clean() -> None:
    state = resynced(8)
    clean = Bitmap(8)
    clean.fill_range(0, 8, True)
    clean.clear(2)
    state.load_clean(clean)
    assert state.sync_count == 7
    assert not state.sync.get(2)
    assert state.sync.get(3)
    assert not state.in_sync_sticky
    check_invariants(state)


def test_2_24_regions_are_cheap() -> None:
    started = time.perf_counter()
    state = RegionState(2**24, nosync=False)
    state.reset()
    clean = Bitmap(2**24, fill=True)
    clean.clear(2**24 - 2)
    state.load_clean(clean)
    state.mark([2**24 - 1], A)
    state.set_region_sync(5, False, A)
    assert state.get_resync_work(A) == (True, 5)
    state.set_region_sync(5, True, A)
    assert state.get_resync_work(A) == (True, 2**24 - 2)
    assert state.is_remote_recovering(2**24 - 2, A) == (True, 2**24 - 2)
    assert time.perf_counter() - started < 1.0


@given(
    st.lists(st.booleans(), min_size=1, max_size=70),
    st.lists(st.tuples(st.integers(0, 69), st.integers(1, 70)), max_size=4),
)
def test_reassert_out_of_sync_equals_setting_each_region_out_of_sync(
    sync: list[bool], spans: list[tuple[int, int]]
) -> None:
    n = len(sync)
    ranges = [(start, min(length, n - start)) for start, length in spans if start < n]
    fast, slow = RegionState(n, nosync=False), RegionState(n, nosync=False)
    for state in (fast, slow):
        for region, bit in enumerate(sync):
            state.set_region_sync(region, bit, 1)
            if bit:
                state.clear((region,), 1)
        state.take_pending()
    fast.reassert(2, floor=0, halted=False, marks=(), out_of_sync=ranges)
    for start, length in ranges:
        for region in range(start, start + length):
            slow.set_region_sync(region, False, 2)
        slow.in_sync_sticky = False
    assert fast.export_fields() == slow.export_fields()
    assert fast.take_pending() == slow.take_pending()
    check_invariants(fast)
