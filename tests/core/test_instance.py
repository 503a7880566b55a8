"""One log instance: lifecycle (semantics.md §2), requests (§4, §2.3), disk load (disk-format.md
§3) and durability bookkeeping (R1-R8)."""

from __future__ import annotations

import struct
import sys
import time

import pytest

from clogfs.disklog.format import buffer_bytes
from clogfs.errors import KernelProtocolError
from clogfs.log.ctr import LogType, SyncMode
from clogfs.log.instance import (
    TRANSITIONS,
    AwaitCommit,
    AwaitLoad,
    DeviceInfo,
    Event,
    IllegalTransitionError,
    InstanceFailedError,
    Lifecycle,
    LogInstance,
    Reply,
    WriteLog,
    next_lifecycle,
)
from clogfs.netlink.requests import RemoteRecovering, RequestType, ResyncWork, SetRegionSync

from .support import DEVICE, check_invariants, instance, req

RT = RequestType
BUF = buffer_bytes(32, 512)  # 1536


def disk_image(
    clean_bits: bytes, *, nr_regions: int = 32, version: int = 2, magic: int = 0x4D695272
) -> bytes:
    """A log buffer built from raw bytes (not with the codec under test)."""
    data = bytearray(b"\xa5" * BUF)
    data[0:16] = struct.pack("<IIQ", magic, version, nr_regions)
    data[1024 : 1024 + len(clean_bits)] = clean_bits
    return bytes(data)


def apply(disk: bytearray, write: WriteLog) -> None:
    for offset, data in write.extents:
        disk[offset : offset + len(data)] = data


def resumed_disk(
    data: bytes | None = None, *, sync_mode: SyncMode = SyncMode.DEFAULT
) -> tuple[LogInstance, bytearray]:
    """A disk instance resumed from ``data`` (default: all 32 regions clean), load written."""
    inst = instance(sync_mode=sync_mode)
    image = bytearray(data if data is not None else disk_image(b"\xff" * 4 + bytes(4)))
    assert isinstance(inst.handle(req(RT.RESUME)), AwaitLoad)
    assert inst.load(bytes(image)) == AwaitCommit(Reply())
    write = inst.begin_write()
    assert write is not None
    apply(image, write)
    inst.end_write(write, ok=True)
    return inst, image


def resumed_core(sync_mode: SyncMode = SyncMode.NOSYNC) -> LogInstance:
    inst = instance(log_type=LogType.CORE, sync_mode=sync_mode)
    assert inst.handle(req(RT.RESUME)) == Reply()
    return inst


def region_clean_on(image: bytes | bytearray, region: int) -> bool:
    return bool(image[1024 + region // 8] >> (region % 8) & 1)


# -- the transition table -------------------------------------------------------------------

TABLE = [
    (Lifecycle.CONSTRUCTED, Event.RESUME, Lifecycle.RESUMED),
    (Lifecycle.CONSTRUCTED, Event.PRESUSPEND, Lifecycle.CONSTRUCTED),
    (Lifecycle.CONSTRUCTED, Event.POSTSUSPEND, Lifecycle.CONSTRUCTED),
    (Lifecycle.CONSTRUCTED, Event.DTR, Lifecycle.DESTROYED),
    (Lifecycle.RESUMED, Event.RESUME, Lifecycle.RESUMED),
    (Lifecycle.RESUMED, Event.PRESUSPEND, Lifecycle.SUSPENDING),
    (Lifecycle.RESUMED, Event.POSTSUSPEND, Lifecycle.SUSPENDED),
    (Lifecycle.RESUMED, Event.DTR, Lifecycle.DESTROYED),
    (Lifecycle.SUSPENDING, Event.RESUME, Lifecycle.RESUMED),
    (Lifecycle.SUSPENDING, Event.PRESUSPEND, Lifecycle.SUSPENDING),
    (Lifecycle.SUSPENDING, Event.POSTSUSPEND, Lifecycle.SUSPENDED),
    (Lifecycle.SUSPENDED, Event.RESUME, Lifecycle.RESUMED),
    (Lifecycle.SUSPENDED, Event.POSTSUSPEND, Lifecycle.SUSPENDED),
    (Lifecycle.SUSPENDED, Event.DTR, Lifecycle.DESTROYED),
    (Lifecycle.FAILED, Event.DTR, Lifecycle.DESTROYED),
    (Lifecycle.RESUMED, Event.FAIL, Lifecycle.FAILED),
]


@pytest.mark.parametrize(("state", "event", "after"), TABLE)
def test_transition_table(state: Lifecycle, event: Event, after: Lifecycle) -> None:
    assert next_lifecycle(state, event) is after


@pytest.mark.parametrize("event", list(Event))
def test_destroyed_is_terminal(event: Event) -> None:
    with pytest.raises(IllegalTransitionError):
        next_lifecycle(Lifecycle.DESTROYED, event)


@pytest.mark.parametrize("event", [Event.RESUME, Event.PRESUSPEND, Event.POSTSUSPEND])
def test_failed_allows_only_dtr(event: Event) -> None:
    assert (Lifecycle.FAILED, event) not in TRANSITIONS


def test_request_to_a_destroyed_instance_changes_nothing() -> None:
    inst = resumed_core()
    inst.handle(req(RT.DTR))
    with pytest.raises(IllegalTransitionError):
        inst.handle(req(RT.MARK_REGION, (1,)))
    assert inst.lifecycle is Lifecycle.DESTROYED
    assert inst.state.marks == {}


# -- lifecycle through requests (§2.1) ------------------------------------------------------


def test_presuspend_halts_this_node() -> None:
    inst = resumed_core()
    assert inst.handle(req(RT.PRESUSPEND)) == Reply()
    assert inst.lifecycle is Lifecycle.SUSPENDING
    assert inst.state.halted == {1}


def test_resume_after_an_aborted_suspend_unhalts() -> None:
    inst = resumed_core()
    inst.handle(req(RT.PRESUSPEND))
    assert inst.handle(req(RT.RESUME)) == Reply()
    assert inst.lifecycle is Lifecycle.RESUMED
    assert inst.state.halted == set()


def test_resume_of_a_resumed_instance_is_a_noop() -> None:
    inst = resumed_core(SyncMode.DEFAULT)
    inst.handle(req(RT.GET_RESYNC_WORK))
    assert inst.handle(req(RT.RESUME)) == Reply()
    assert inst.state.recovering == (0, 1)


def test_postsuspend_of_a_core_log_suspends() -> None:
    inst = resumed_core()
    inst.handle(req(RT.PRESUSPEND))
    assert inst.handle(req(RT.POSTSUSPEND)) == Reply()
    assert inst.lifecycle is Lifecycle.SUSPENDED
    assert inst.state.halted == set()


@pytest.mark.parametrize("request_type", [RT.PRESUSPEND, RT.POSTSUSPEND])
def test_suspend_requests_to_a_constructed_instance_answer_zero(
    request_type: RequestType,
) -> None:
    inst = instance(log_type=LogType.CORE)
    assert inst.handle(req(request_type)) == Reply()
    assert inst.lifecycle is Lifecycle.CONSTRUCTED


def test_duplicate_postsuspend_answers_zero() -> None:
    inst = resumed_core()
    inst.handle(req(RT.POSTSUSPEND))
    assert inst.handle(req(RT.POSTSUSPEND)) == Reply()
    assert inst.lifecycle is Lifecycle.SUSPENDED


def test_core_log_keeps_its_bits_across_suspend_and_resume() -> None:
    inst = resumed_core(SyncMode.DEFAULT)
    inst.handle(req(RT.SET_REGION_SYNC, SetRegionSync(3, True)))
    inst.handle(req(RT.GET_RESYNC_WORK))
    inst.handle(req(RT.POSTSUSPEND))
    inst.handle(req(RT.RESUME))
    assert inst.state.sync_count == 1
    assert inst.state.sync.get(3)
    assert inst.state.recovering is None
    assert inst.state.sync_search == 0


def test_dtr_of_a_resumed_core_log_destroys_it() -> None:
    inst = resumed_core()
    assert inst.handle(req(RT.DTR)) == Reply()
    assert inst.lifecycle is Lifecycle.DESTROYED


def test_a_bug_leaves_the_instance_failed() -> None:
    inst = resumed_core()
    with pytest.raises(Exception, match="arguments"):
        inst.handle(req(RT.MARK_REGION, "not regions"))
    assert inst.lifecycle is Lifecycle.FAILED


def test_a_failed_instance_refuses_requests_but_dtr() -> None:
    inst = resumed_core()
    inst.mark_failed()
    with pytest.raises(InstanceFailedError):
        inst.handle(req(RT.IN_SYNC, 0))
    assert inst.handle(req(RT.DTR)) == Reply()
    assert inst.lifecycle is Lifecycle.DESTROYED


def test_a_refused_request_does_not_fail_the_instance() -> None:
    inst = resumed_core()
    with pytest.raises(KernelProtocolError):
        inst.handle(req(RT.IN_SYNC, 32))
    assert inst.lifecycle is Lifecycle.RESUMED


# -- data-path requests (§4) ----------------------------------------------------------------


def test_get_region_size() -> None:
    assert resumed_core().handle(req(RT.GET_REGION_SIZE)) == Reply(1024)


def test_in_sync_and_is_clean_are_bools() -> None:
    inst = resumed_core()
    assert inst.handle(req(RT.IN_SYNC, 0)) == Reply(True)
    assert inst.handle(req(RT.IS_CLEAN, 0)) == Reply(True)
    inst.handle(req(RT.MARK_REGION, (0,)))
    assert inst.handle(req(RT.IS_CLEAN, 0)) == Reply(False)


def test_get_sync_count() -> None:
    assert resumed_core().handle(req(RT.GET_SYNC_COUNT)) == Reply(32)


def test_get_resync_work_result() -> None:
    inst = resumed_core(SyncMode.DEFAULT)
    assert inst.handle(req(RT.GET_RESYNC_WORK)) == Reply(ResyncWork(1, 0))


def test_is_remote_recovering_result() -> None:
    inst = resumed_core(SyncMode.DEFAULT)
    assert inst.handle(req(RT.IS_REMOTE_RECOVERING, 4)) == Reply(RemoteRecovering(1, 0))


def test_flush_of_a_core_log_applies_its_marks_and_answers_at_once() -> None:
    inst = resumed_core()
    assert inst.handle(req(RT.FLUSH, (4, 5))) == Reply()
    assert inst.state.marks == {4: {1}, 5: {1}}


def test_flush_with_a_bad_region_applies_nothing() -> None:
    inst = resumed_core()
    with pytest.raises(KernelProtocolError):
        inst.handle(req(RT.FLUSH, (4, 32)))
    assert inst.state.marks == {}


def test_empty_mark_is_refused() -> None:
    with pytest.raises(KernelProtocolError):
        resumed_core().handle(req(RT.MARK_REGION, ()))


def test_status_strings() -> None:
    core = resumed_core()
    disk, _ = resumed_disk()
    assert core.status_info() == "1 clustered-core"
    assert disk.handle(req(RT.STATUS_INFO)) == Reply("3 clustered-disk 7:2 A")
    assert disk.handle(req(RT.STATUS_TABLE)) == Reply("clustered-disk 7:2 1024 ")


def test_the_write_sequence_cleans_the_region_again() -> None:
    inst = resumed_core()
    for request in (req(RT.MARK_REGION, (7,)), req(RT.FLUSH, ()), req(RT.CLEAR_REGION, (7,))):
        inst.handle(request)
    assert inst.state.clean.get(7)
    assert inst.state.marks == {}


# -- requests to an instance that is not resumed (§2.3) -------------------------------------


@pytest.mark.parametrize(
    ("request_type", "args", "result"),
    [
        (RT.GET_REGION_SIZE, None, 1024),
        (RT.IN_SYNC, 3, True),
        (RT.IS_CLEAN, 3, True),
        (RT.GET_SYNC_COUNT, None, 32),
        (RT.STATUS_INFO, None, "3 clustered-disk 7:2 A"),
        (RT.GET_RESYNC_WORK, None, ResyncWork(0, 0)),
        (RT.IS_REMOTE_RECOVERING, 3, RemoteRecovering(0, 32)),
        (RT.MARK_REGION, (3,), None),
        (RT.CLEAR_REGION, (3,), None),
        (RT.SET_REGION_SYNC, SetRegionSync(3, True), None),
        (RT.FLUSH, (3,), None),
    ],
)
def test_constructed_instance_answers_from_its_own_copy(
    request_type: RequestType, args: object, result: object
) -> None:
    inst = instance(sync_mode=SyncMode.NOSYNC)
    assert inst.handle(req(request_type, args)) == Reply(result)
    assert inst.lifecycle is Lifecycle.CONSTRUCTED
    assert inst.begin_write() is None  # never written before the first RESUME (R8)


def test_default_sync_count_right_after_ctr_is_zero() -> None:
    assert instance().handle(req(RT.GET_SYNC_COUNT)) == Reply(0)


def test_suspended_instance_gives_no_resync_work() -> None:
    inst = resumed_core(SyncMode.DEFAULT)
    inst.handle(req(RT.POSTSUSPEND))
    assert inst.handle(req(RT.GET_RESYNC_WORK)) == Reply(ResyncWork(0, 0))


def test_suspended_disk_writer_commits_a_late_flush() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.POSTSUSPEND))
    inst.handle(req(RT.MARK_REGION, (3,)))
    assert inst.handle(req(RT.FLUSH, ())) == AwaitCommit(Reply())
    assert inst.begin_write() is not None


def test_suspended_instance_does_not_write_while_a_peer_is_resumed() -> None:
    cfg_inst = instance()
    inst = LogInstance(cfg_inst.key, cfg_inst.config, DEVICE, peer_resumed=lambda _i: True)
    inst.handle(req(RT.RESUME))
    inst.load(None)
    first = inst.begin_write()
    assert first is not None
    inst.end_write(first, ok=True)
    inst.handle(req(RT.POSTSUSPEND))
    inst.handle(req(RT.MARK_REGION, (3,)))
    assert inst.handle(req(RT.FLUSH, ())) == Reply()
    assert inst.begin_write() is None


# -- disk load (disk-format.md §3) ----------------------------------------------------------


def test_resume_of_a_disk_log_asks_for_a_load() -> None:
    inst = instance()
    assert inst.handle(req(RT.RESUME)) == AwaitLoad()
    assert inst.lifecycle is Lifecycle.CONSTRUCTED
    assert inst.loading


def test_load_without_resume_is_a_bug() -> None:
    with pytest.raises(Exception, match="RESUME"):
        instance().load(None)


def test_load_of_an_existing_log_keeps_its_bits() -> None:
    inst, image = resumed_disk(disk_image(b"\xf0\xff\xff\x7f" + bytes(4)))
    assert inst.lifecycle is Lifecycle.RESUMED
    assert inst.state.sync_count == 27
    assert [r for r in range(32) if not inst.state.sync.get(r)] == [0, 1, 2, 3, 31]
    assert image[1024:1032] == b"\xf0\xff\xff\x7f" + bytes(4)
    check_invariants(inst.state)


def test_load_writes_a_version_2_header_and_keeps_the_filler() -> None:
    _, image = resumed_disk(disk_image(b"\xff" * 4 + bytes(4), version=1))
    assert image[0:16] == struct.pack("<IIQ", 0x4D695272, 2, 32)
    assert image[16:1024] == b"\xa5" * 1008
    assert image[1032:] == b"\xa5" * (BUF - 1032)


@pytest.mark.skipif(sys.byteorder != "little", reason="version 1 is accepted on LE hosts only")
def test_version_1_is_accepted_on_little_endian() -> None:
    inst, _ = resumed_disk(disk_image(b"\xff" * 4 + bytes(4), version=1))
    assert inst.state.sync_count == 32
    assert inst.state.device_state == "A"


def test_unknown_version_fails_the_device_and_starts_new() -> None:
    inst, image = resumed_disk(disk_image(b"\xff" * 8, version=3))
    assert inst.state.device_state == "D"
    assert inst.state.sync_count == 0
    assert image[0:16] == struct.pack("<IIQ", 0x4D695272, 2, 32)


def test_bad_magic_starts_a_new_log() -> None:
    inst, image = resumed_disk(disk_image(b"\xff" * 8, magic=0))
    assert inst.state.sync_count == 0
    assert inst.state.device_state == "A"
    assert image[1024:1032] == bytes(8)


def test_nosync_starts_a_new_log_with_every_region_clean() -> None:
    inst, image = resumed_disk(disk_image(bytes(8)), sync_mode=SyncMode.NOSYNC)
    assert inst.state.sync_count == 32
    assert inst.state.in_sync_sticky
    assert image[1024:1032] == b"\xff" * 4 + bytes(4)


def test_sync_ignores_the_disk_bitmap() -> None:
    inst, _ = resumed_disk(disk_image(b"\xff" * 4 + bytes(4)), sync_mode=SyncMode.FORCESYNC)
    assert inst.state.sync_count == 0


def test_growth_makes_new_regions_dirty() -> None:
    inst, image = resumed_disk(disk_image(b"\xff\xff" + bytes(6), nr_regions=16))
    assert inst.state.sync_count == 16
    assert image[1024:1032] == b"\xff\xff" + bytes(6)


def test_shrink_clears_the_tail_of_the_last_word() -> None:
    inst, image = resumed_disk(disk_image(b"\xff" * 8, nr_regions=64))
    assert inst.state.sync_count == 32
    assert image[1024:1032] == b"\xff" * 4 + bytes(4)


def test_failed_read_fails_the_device_and_zeroes_the_buffer() -> None:
    inst = instance()
    inst.handle(req(RT.RESUME))
    assert inst.load(None) == AwaitCommit(Reply())
    write = inst.begin_write()
    assert write is not None
    assert write.extents[0][1][16:1024] == bytes(1008)
    assert inst.state.device_state == "D"
    assert inst.lifecycle is Lifecycle.RESUMED


def test_short_read_counts_as_failed() -> None:
    inst = instance()
    inst.handle(req(RT.RESUME))
    inst.load(disk_image(b"\xff" * 8)[:1024])
    assert inst.state.device_state == "D"


def test_load_write_is_the_whole_buffer_with_a_cache_flush() -> None:
    inst = instance()
    inst.handle(req(RT.RESUME))
    inst.load(disk_image(b"\xff" * 4 + bytes(4)))
    write = inst.begin_write()
    assert write is not None
    assert [(off, len(data)) for off, data in write.extents] == [(0, BUF)]
    assert write.cache_flush


def test_failed_load_write_keeps_the_log_resumed_and_pending() -> None:
    inst = instance()
    inst.handle(req(RT.RESUME))
    inst.load(disk_image(b"\xff" * 8))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=False)
    assert inst.lifecycle is Lifecycle.RESUMED
    assert inst.state.device_state == "D"
    retry = inst.begin_write()
    assert retry is not None
    assert retry.extents == write.extents


# -- durability bookkeeping (disk-format.md §5) ---------------------------------------------


def test_mark_then_flush_writes_its_block_with_a_cache_flush() -> None:  # R1
    inst, image = resumed_disk()
    assert inst.handle(req(RT.MARK_REGION, (9,))) == Reply()
    assert inst.handle(req(RT.FLUSH, ())) == AwaitCommit(Reply())
    write = inst.begin_write()
    assert write is not None
    assert write.cache_flush
    assert [(off, len(data)) for off, data in write.extents] == [(1024, 512)]
    apply(image, write)
    assert not region_clean_on(image, 9)


def test_clear_only_writes_without_a_cache_flush() -> None:  # R2
    inst, _ = resumed_disk(disk_image(b"\xfe\xff\xff\xff" + bytes(4)))
    inst.handle(req(RT.SET_REGION_SYNC, SetRegionSync(0, True)))
    inst.handle(req(RT.CLEAR_REGION, (0,)))
    assert inst.handle(req(RT.FLUSH, ())) == AwaitCommit(Reply())
    write = inst.begin_write()
    assert write is not None
    assert not write.cache_flush


def test_flush_with_nothing_pending_answers_at_once() -> None:  # R3
    inst, _ = resumed_disk()
    assert inst.handle(req(RT.FLUSH, ())) == Reply()
    assert inst.begin_write() is None


def test_duplicate_flush_is_a_commit_of_nothing() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=True)
    assert inst.handle(req(RT.FLUSH, (3,))) == Reply()


def test_postsuspend_commits_pending_changes() -> None:  # R5
    inst, _ = resumed_disk()
    inst.handle(req(RT.MARK_REGION, (3,)))
    assert inst.handle(req(RT.POSTSUSPEND)) == AwaitCommit(Reply())
    assert inst.begin_write() is not None


def test_dtr_of_a_resumed_disk_log_commits_first() -> None:  # R2/R5
    inst, _ = resumed_disk()
    inst.handle(req(RT.MARK_REGION, (3,)))
    inst.handle(req(RT.CLEAR_REGION, (3,)))
    assert inst.handle(req(RT.DTR)) == AwaitCommit(Reply())
    assert inst.lifecycle is Lifecycle.DESTROYED
    assert inst.begin_write() is not None


def test_dtr_of_a_constructed_disk_log_never_writes() -> None:  # R8
    inst = instance()
    inst.handle(req(RT.MARK_REGION, (3,)))
    assert inst.handle(req(RT.DTR)) == Reply()
    assert inst.begin_write() is None


def test_failed_write_sets_d_and_keeps_changes_pending() -> None:  # R8
    inst, image = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=False)
    assert inst.state.device_state == "D"
    assert inst.handle(req(RT.FLUSH, ())) == AwaitCommit(Reply())
    retry = inst.begin_write()
    assert retry is not None
    assert retry.cache_flush
    apply(image, retry)
    inst.end_write(retry, ok=True)
    assert not region_clean_on(image, 3)
    assert inst.state.device_state == "D"  # sticky


def test_failed_cache_flush_sets_f() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=False, flush_ok=False)
    assert inst.state.device_state == "F"
    assert inst.status_info() == "3 clustered-disk 7:2 F"


def test_is_clean_answers_dirty_after_a_device_failure() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=False)
    assert inst.handle(req(RT.IS_CLEAN, 5)) == Reply(False)
    assert inst.handle(req(RT.IN_SYNC, 5)) == Reply(True)


def test_changes_during_a_write_go_to_the_next_write() -> None:  # R6
    inst, image = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    first = inst.begin_write()
    assert first is not None
    inst.handle(req(RT.MARK_REGION, (30,)))
    assert inst.handle(req(RT.FLUSH, ())) == AwaitCommit(Reply())
    inst.end_write(first, ok=True)
    second = inst.begin_write()
    assert second is not None
    apply(image, second)
    assert not region_clean_on(image, 30)


def test_begin_write_twice_is_a_bug() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.FLUSH, (3,)))
    assert inst.begin_write() is not None
    with pytest.raises(Exception, match="in flight"):
        inst.begin_write()


def test_end_write_of_an_unknown_write_is_a_bug() -> None:
    inst, _ = resumed_disk()
    with pytest.raises(Exception, match="not in flight"):
        inst.end_write(WriteLog(99, (), cache_flush=False), ok=True)


def test_writes_cover_only_changed_blocks_of_a_large_log() -> None:
    device = DeviceInfo("7:2", "7:2", (1, 0), 512, 1 << 30)
    inst = instance(100_000, device=device, sync_mode=SyncMode.NOSYNC)
    inst.handle(req(RT.RESUME))
    inst.load(None)
    load = inst.begin_write()
    assert load is not None
    inst.end_write(load, ok=True)
    inst.handle(req(RT.MARK_REGION, (0, 4096, 4097, 99_999)))
    write = inst.begin_write()
    assert write is not None
    blocks = [(off // 512, len(data) // 512) for off, data in write.extents]
    assert blocks == [(2, 2), (26, 1)]


# -- the snapshot ---------------------------------------------------------------------------


def test_snapshot() -> None:
    inst, _ = resumed_disk()
    inst.handle(req(RT.MARK_REGION, (3,)))
    inst.handle(req(RT.PRESUSPEND))
    snap = inst.snapshot()
    assert (snap.state, snap.log_type, snap.device, snap.device_state) == (
        "resumed",
        "clustered-disk",
        "7:2",
        "A",
    )
    assert snap.marks == ((3, (1,)),)
    assert snap.clean_bits == b"\xf7\xff\xff\xff" + bytes(4)
    assert snap.status == "3 clustered-disk 7:2 A"
    assert snap.table == "32768 clustered-disk 7:2 1024"


def test_2_24_regions_construct_load_and_serve_fast() -> None:
    started = time.perf_counter()
    device = DeviceInfo("7:2", "7:2", (1, 0), 4096, 1 << 30)
    inst = instance(2**24, device=device)
    image = bytearray(buffer_bytes(2**24, 4096))
    image[0:16] = struct.pack("<IIQ", 0x4D695272, 2, 2**24)
    image[1024 : 1024 + 2**21] = b"\xff" * 2**21
    image[1024] = 0x7F  # region 7 dirty
    inst.handle(req(RT.RESUME))
    inst.load(bytes(image))
    load = inst.begin_write()
    assert load is not None
    inst.end_write(load, ok=True)
    inst.handle(req(RT.MARK_REGION, (5, 2**24 - 1)))
    inst.handle(req(RT.FLUSH, ()))
    write = inst.begin_write()
    assert write is not None
    inst.end_write(write, ok=True)
    assert write.cache_flush
    assert inst.handle(req(RT.GET_RESYNC_WORK)) == Reply(ResyncWork(1, 7))
    assert inst.handle(req(RT.IS_REMOTE_RECOVERING, 2**24 - 1)) == Reply(RemoteRecovering(0, 7))
    inst.snapshot()
    assert time.perf_counter() - started < 2.0
