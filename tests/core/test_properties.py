"""Random request sequences: invariants I1-I7, and no marked region is ever clean.

Two hypothesis state machines: one single-node disk-log instance driven like the shell drives
it (with writes that fail or tear), and one multi-node region state with departures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from clogfs.log.ctr import SyncMode
from clogfs.log.instance import (
    AwaitCommit,
    AwaitLoad,
    DeviceInfo,
    Lifecycle,
    LogInstance,
    Reply,
    WriteLog,
)
from clogfs.log.regions import RegionState
from clogfs.netlink.requests import RemoteRecovering, RequestType, ResyncWork, SetRegionSync

from .support import check_invariants, instance, req

RT = RequestType
N = 4500  # regions: the bitmap spans two 512-byte blocks (regions >= 4096 in the second)
DEVICE = DeviceInfo("7:2", "7:2", (1, 0), 512, 1 << 20)
regions = st.one_of(st.integers(0, 24), st.integers(4090, N - 1))
batches = st.lists(regions, min_size=1, max_size=4).map(tuple)


def disk_clean(image: bytearray, region: int) -> bool:
    return bool(image[1024 + region // 8] >> (region % 8) & 1)


@dataclass
class Waiter:
    """A FLUSH (or POSTSUSPEND, RESUME) waiting for a commit, with the marks it covers."""

    covered: set[tuple[int, int]]  # (region, mark epoch)
    write_id: int | None = None


@dataclass
class Model:
    marks: dict[int, int] = field(default_factory=dict)  # region -> epoch of its mark
    epoch: int = 0
    max_hint: int = 0


class DiskLogMachine(RuleBasedStateMachine):
    """One disk-log instance, one node, a simulated log device."""

    @initialize(sync_mode=st.sampled_from(list(SyncMode)), dirty=st.sets(regions, max_size=5))
    def start(self, sync_mode: SyncMode, dirty: set[int]) -> None:
        self.log: LogInstance = instance(N, sync_mode=sync_mode, device=DEVICE)
        self.image = bytearray(b"\x5a" * self.log.buffer_bytes)
        self.image[0:16] = (
            (0x4D695272).to_bytes(4, "little")
            + (2).to_bytes(4, "little")
            + (N).to_bytes(8, "little")
        )
        bitmap = bytearray(b"\xff" * (N // 8) + bytes(-(-N // 64) * 8 - N // 8))
        bitmap[N // 8] = (1 << (N % 8)) - 1
        for r in dirty:
            bitmap[r // 8] &= ~(1 << (r % 8)) & 0xFF
        self.image[1024 : 1024 + len(bitmap)] = bitmap
        self.model = Model()
        self.waiters: list[Waiter] = []
        self.in_flight: WriteLog | None = None
        self.resumed_once = False

    # -- helpers ------------------------------------------------------------------------

    def covered(self) -> set[tuple[int, int]]:
        return set(self.model.marks.items())

    def settle(self, outcome: object, *, claims_durable: bool) -> None:
        """Record a commit to wait for; or check a reply that claims the marks are durable."""
        if isinstance(outcome, AwaitCommit):
            self.waiters.append(Waiter(self.covered()))
        elif claims_durable and self.log.lifecycle is not Lifecycle.CONSTRUCTED:
            self.check_durable(self.covered())

    def check_durable(self, covered: set[tuple[int, int]]) -> None:
        if not self.resumed_once:
            return
        for region, epoch in covered:
            if self.model.marks.get(region) == epoch:
                assert not disk_clean(self.image, region), f"region {region} clean on disk"

    def mark_model(self, batch: tuple[int, ...]) -> None:
        for r in batch:
            if r not in self.model.marks:
                self.model.epoch += 1
                self.model.marks[r] = self.model.epoch

    def idle(self) -> bool:
        return self.in_flight is None and not self.waiters

    # -- data path ----------------------------------------------------------------------

    @rule(batch=batches)
    def mark(self, batch: tuple[int, ...]) -> None:
        assert self.log.handle(req(RT.MARK_REGION, batch)) == Reply()
        self.mark_model(batch)

    @rule(batch=batches)
    def clear(self, batch: tuple[int, ...]) -> None:
        assert self.log.handle(req(RT.CLEAR_REGION, batch)) == Reply()
        for r in batch:
            self.model.marks.pop(r, None)

    @rule(batch=st.one_of(st.just(()), batches))
    def flush(self, batch: tuple[int, ...]) -> None:
        outcome = self.log.handle(req(RT.FLUSH, batch))
        self.mark_model(batch)
        self.settle(outcome, claims_durable=True)

    @rule(region=regions, value=st.booleans())
    def set_region_sync(self, region: int, value: bool) -> None:
        self.log.handle(req(RT.SET_REGION_SYNC, SetRegionSync(region, value)))

    @rule()
    def get_resync_work(self) -> None:
        result = self.log.handle(req(RT.GET_RESYNC_WORK))
        assert isinstance(result, Reply)
        assert isinstance(result.result, ResyncWork)
        work = result.result
        assert work.i in (0, 1)
        if work.i:
            assert work.region >= self.model.max_hint, "I5: region below a hint assigned"

    @rule(region=regions)
    def is_remote_recovering(self, region: int) -> None:
        result = self.log.handle(req(RT.IS_REMOTE_RECOVERING, region))
        assert isinstance(result, Reply)
        assert isinstance(result.result, RemoteRecovering)
        assert result.result.is_recovering in (0, 1)
        if self.log.resumed:
            self.model.max_hint = max(self.model.max_hint, result.result.hint)

    @rule()
    def get_sync_count(self) -> None:
        result = self.log.handle(req(RT.GET_SYNC_COUNT))
        if self.log.resumed and result == Reply(N):
            self.model.max_hint = N

    # -- writes -------------------------------------------------------------------------

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def begin_write(self) -> None:
        write = self.log.begin_write()
        if write is None:
            for waiter in self.waiters:
                if waiter.write_id is None:
                    self.check_durable(waiter.covered)
            self.waiters = [w for w in self.waiters if w.write_id is not None]
            return
        for offset, data in write.extents:
            assert offset % 512 == 0
            assert len(data) % 512 == 0
        for region in self.model.marks:
            for offset, data in write.extents:
                index = 1024 + region // 8 - offset
                if 0 <= index < len(data):
                    assert not data[index] >> (region % 8) & 1, f"marked {region} written clean"
        for waiter in self.waiters:
            if waiter.write_id is None:
                waiter.write_id = write.write_id
        self.in_flight = write

    @precondition(lambda self: self.in_flight is not None)
    @rule(ok=st.booleans(), flush_ok=st.booleans(), torn=st.integers(0, 3))
    def end_write(self, ok: bool, flush_ok: bool, torn: int) -> None:
        write = self.in_flight
        assert write is not None
        success = ok and flush_ok
        for index, (offset, data) in enumerate(write.extents):
            if success or index < torn:
                self.image[offset : offset + len(data)] = data
        self.log.end_write(write, ok=ok, flush_ok=flush_ok)
        self.in_flight = None
        done = [w for w in self.waiters if w.write_id == write.write_id]
        self.waiters = [w for w in self.waiters if w.write_id != write.write_id]
        if success:
            for waiter in done:
                self.check_durable(waiter.covered)
        else:
            assert self.log.state.device_state in ("D", "F")

    # -- lifecycle (the shell serves these only when the log is idle) -------------------

    @precondition(lambda self: self.idle())
    @rule(read_ok=st.booleans())
    def resume(self, read_ok: bool) -> None:
        outcome = self.log.handle(req(RT.RESUME))
        if isinstance(outcome, AwaitLoad):
            outcome = self.log.load(bytes(self.image) if read_ok else None)
            self.model.marks.clear()
            self.model.max_hint = 0
            self.resumed_once = True
        self.settle(outcome, claims_durable=False)

    @precondition(lambda self: self.idle())
    @rule()
    def presuspend(self) -> None:
        self.settle(self.log.handle(req(RT.PRESUSPEND)), claims_durable=False)

    @precondition(lambda self: self.idle())
    @rule()
    def postsuspend(self) -> None:
        was_resumed = self.log.resumed
        self.settle(self.log.handle(req(RT.POSTSUSPEND)), claims_durable=was_resumed)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def region_invariants(self) -> None:
        check_invariants(self.log.state)

    @invariant()
    def marks_match_the_model(self) -> None:
        assert set(self.log.state.marks) == set(self.model.marks)
        for region in self.model.marks:
            assert not self.log.state.clean.get(region)


DiskLogMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_disk_log_machine = DiskLogMachine.TestCase


NODES = (1, 2, 3)
nodes = st.sampled_from(NODES)
small_regions = st.integers(0, 11)
small_batches = st.lists(small_regions, min_size=1, max_size=3).map(tuple)


class ClusterStateMachine(RuleBasedStateMachine):
    """The replicated region state with three nodes, departures and crashes."""

    @initialize(nosync=st.booleans())
    def start(self, nosync: bool) -> None:
        self.state = RegionState(12, nosync=nosync, members=NODES)
        self.marks: dict[int, set[int]] = {}
        self.max_hint = 0

    @rule(batch=small_batches, node=nodes)
    def mark(self, batch: tuple[int, ...], node: int) -> None:
        self.state.mark(batch, node)
        for r in batch:
            self.marks.setdefault(r, set()).add(node)

    @rule(batch=small_batches, node=nodes)
    def clear(self, batch: tuple[int, ...], node: int) -> None:
        self.state.clear(batch, node)
        for r in batch:
            self.marks.get(r, set()).discard(node)
            if not self.marks.get(r):
                self.marks.pop(r, None)

    @rule(region=small_regions, value=st.booleans(), node=nodes)
    def set_region_sync(self, region: int, value: bool, node: int) -> None:
        self.state.set_region_sync(region, value, node)

    @rule(node=nodes)
    def get_resync_work(self, node: int) -> None:
        before = self.state.recovering
        assign, region = self.state.get_resync_work(node)
        if assign and before != (region, node):  # a new assignment, not a re-request
            assert region >= self.max_hint, "I5"
            assert not self.state.sync.get(region), "I4: assigned an in-sync region"
            assert not self.state.marked_by_other(region, node)

    @rule(region=small_regions, node=nodes)
    def is_remote_recovering(self, region: int, node: int) -> None:
        _, hint = self.state.is_remote_recovering(region, node)
        self.max_hint = max(self.max_hint, hint)

    @rule(node=nodes)
    def halt(self, node: int) -> None:
        self.state.halt(node)

    @rule(node=nodes)
    def unhalt(self, node: int) -> None:
        self.state.unhalt(node)

    @rule(node=nodes)
    def depart_orderly(self, node: int) -> None:
        self.state.depart_orderly(node)

    @rule(node=nodes)
    def depart_crash(self, node: int) -> None:
        crashed = [r for r, holders in self.marks.items() if node in holders]
        self.state.depart_crash(node)
        for r in crashed:
            assert not self.state.sync.get(r)
            self.marks[r].discard(node)
            if not self.marks[r]:
                del self.marks[r]

    @rule()
    def reset(self) -> None:
        self.state.reset()
        self.marks.clear()
        self.max_hint = 0

    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.state)
        assert self.state.marks == self.marks
        recovering = self.state.recovering
        if recovering is not None:
            assert recovering[0] not in self.state.priority


ClusterStateMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
test_cluster_state_machine = ClusterStateMachine.TestCase
