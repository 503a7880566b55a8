"""The replicated region state of one log and every rule that changes it (semantics.md §1-§6).

Fields (semantics.md §1.1): ``clean`` and ``sync`` bitmaps, ``sync_count``, the resync cursor
``sync_search``, the ``recovering`` assignment (region, node), the ``priority`` FIFO, the
per-node ``marks``, ``in_sync_sticky``, the ``halted`` nodes and the ``device_state`` letter;
plus, for the writer, the pending changes of the clean bitmap (disk-format.md §5).

Rules, in the order of the spec:

- MARK (§4.1): for each region, by originator N: add (N, r) to ``marks``; ``clean[r] := 0``.
- CLEAR (§4.2): remove (N, r); then if no node holds a mark on r and ``sync[r]`` = 1,
  ``clean[r] := 1``.
- SET_REGION_SYNC (§4.3): count changes only; going out of sync also clears ``clean``
  (I2); only the recoverer's own SET_REGION_SYNC for its region ends the assignment; then the
  full-sync rule (§5.2).
- GET_RESYNC_WORK (§5.3), IS_REMOTE_RECOVERING (§5.4): the cursor only grows between
  resets, only regions at or above it are queued or scanned, and every hint is at most the
  lowest region that could still be handed out (invariant I5).
- reset (§2.2), disk load (disk-format.md §3 step 5), orderly and crash departure (§6.3).

Invariants kept (§1.2): I1 ``sync_count`` is exact, never recounted; I2 ``sync[r]`` = 0 implies
``clean[r]`` = 0; I3 a mark implies ``clean[r]`` = 0; I4 at most one recovering region, which
was out of sync when assigned; I5 hint safety; I6 bits at and beyond ``region_count`` are 0;
I7 every boolean answer is exactly 0 or 1 (``bool``).

I2 is kept from the very start: the CTR state is ``clean := sync`` (all 1 with ``nosync``,
else all 0). The kernel's core log starts with every clean bit set even when out of sync
[code T1]; that state is only visible through IS_CLEAN, which dm-raid1 never sends, and
keeping I2 unconditionally means an out-of-sync region is never reported clean [decision].

Every method validates its regions first and changes nothing when it raises. Per-region
operations are O(1); construction, reset and load are a few whole-bitmap operations, so a
log of 2**24 regions is cheap.

Core module: no trio, no sockets, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clogfs.errors import KernelProtocolError
from clogfs.log.bitmap import Bitmap

DEVICE_ALIVE = "A"  # log_dev_failed = 0, drivers/md/dm-log.c
DEVICE_FAILED = "D"  # fail_log_device(), a read or write failed
DEVICE_FLUSH_FAILED = "F"  # log_dev_flush_failed, the cache flush failed
_DEVICE_STATE_RANK = {DEVICE_ALIVE: 0, DEVICE_FAILED: 1, DEVICE_FLUSH_FAILED: 2}


@dataclass(frozen=True)
class PendingChanges:
    """Clean-bitmap changes not yet made durable (disk-format.md §5).

    Attributes:
        byte_indices: indices of clean-bitmap bytes that changed.
        whole: the whole buffer must be written (a load, disk-format.md §3 step 7).
        dirtied: some clean bit went 1 -> 0: the write needs a cache flush (R1).
    """

    byte_indices: frozenset[int] = frozenset()
    whole: bool = False
    dirtied: bool = False

    def __bool__(self) -> bool:
        return self.whole or bool(self.byte_indices)


@dataclass(frozen=True)
class ReplicatedFields:
    """Every replicated field of a log (semantics.md §1.1, §6.2), as plain values.

    What a cluster checkpoint carries: the leader exports it, a joiner installs it. The
    bitmaps are the ``bitset_bytes(region_count)`` bytes of :class:`Bitmap` (on-disk order).

    Attributes:
        clean: the clean bits.
        sync: the sync bits.
        sync_count: number of set sync bits (I1).
        sync_search: the resync cursor.
        recovering: (region, node) assigned for recovery, or None.
        priority: the priority FIFO, front first.
        marks: ``(region, nodes)`` pairs, regions ascending, nodes ascending and non-empty.
        in_sync_sticky: the sticky in-sync flag.
        halted: halted nodes, ascending.
        device_state: ``A``, ``D`` or ``F``.
    """

    clean: bytes
    sync: bytes
    sync_count: int
    sync_search: int
    recovering: tuple[int, int] | None
    priority: tuple[int, ...]
    marks: tuple[tuple[int, tuple[int, ...]], ...]
    in_sync_sticky: bool
    halted: tuple[int, ...]
    device_state: str


class RegionState:
    """The replicated state of one log (semantics.md §1.1).

    Args:
        region_count: number of regions (``ceil(target_len / region_size)``).
        nosync: the CTR state: every region in sync (and clean) if true, else out of sync.
        members: node ids of the log's group; in single-node mode the one node.
    """

    def __init__(self, region_count: int, *, nosync: bool, members: Iterable[int] = (1,)) -> None:
        self.region_count = region_count
        self.members: frozenset[int] = frozenset(members)
        self.device_state = DEVICE_ALIVE
        self.sync = Bitmap(region_count, fill=nosync)
        self.clean = Bitmap(region_count, fill=nosync)
        self.sync_count = region_count if nosync else 0
        self.sync_search = 0
        self.recovering: tuple[int, int] | None = None
        self.priority: dict[int, None] = {}  # insertion-ordered FIFO, deduplicated
        self.marks: dict[int, set[int]] = {}  # region -> nodes holding a mark
        self.in_sync_sticky = False
        self.halted: set[int] = set()
        self._pending_bytes: set[int] = set()
        self._pending_whole = False
        self._pending_dirtied = False
        self._apply_full_sync()

    # -- validation -------------------------------------------------------------------------

    def check_region(self, region: int) -> None:
        """Raise ``KernelProtocolError`` (EINVAL) unless ``0 <= region < region_count``."""
        if not 0 <= region < self.region_count:
            raise KernelProtocolError(
                f"region {region} out of range (region_count {self.region_count})"
            )

    def check_regions(self, regions: Iterable[int]) -> None:
        """Check a whole batch before anything is applied (semantics.md §3)."""
        for region in regions:
            self.check_region(region)

    # -- pending changes (writer bookkeeping) ------------------------------------------------

    def _clean_changed(self, region: int, *, dirtied: bool) -> None:
        self._pending_bytes.add(region >> 3)
        if dirtied:
            self._pending_dirtied = True

    def _set_clean(self, region: int) -> None:
        if self.clean.set(region):
            self._clean_changed(region, dirtied=False)

    def _clear_clean(self, region: int) -> None:
        if self.clean.clear(region):
            self._clean_changed(region, dirtied=True)

    def has_pending(self) -> bool:
        """Whether any clean-bitmap change is not yet durable."""
        return self._pending_whole or bool(self._pending_bytes)

    def take_pending(self) -> PendingChanges:
        """Hand the pending changes to a write that begins now, and start a new set."""
        pending = PendingChanges(
            frozenset(self._pending_bytes), self._pending_whole, self._pending_dirtied
        )
        self._pending_bytes = set()
        self._pending_whole = False
        self._pending_dirtied = False
        return pending

    def restore_pending(self, pending: PendingChanges) -> None:
        """Put back the changes of a write that failed: they stay pending (R8)."""
        self._pending_bytes |= pending.byte_indices
        self._pending_whole = self._pending_whole or pending.whole
        self._pending_dirtied = self._pending_dirtied or pending.dirtied

    def mark_all_pending(self) -> None:
        """The whole buffer must be written, with a cache flush (a new writer: semantics §6.3)."""
        self._pending_whole = True
        self._pending_dirtied = True

    # -- device state ------------------------------------------------------------------------

    def fail_device(self, letter: str) -> None:
        """Record a device failure; the letter only ever rises A < D < F (disk-format.md §6)."""
        if letter not in _DEVICE_STATE_RANK:
            raise ValueError(f"unknown device state {letter!r}")
        if _DEVICE_STATE_RANK[letter] > _DEVICE_STATE_RANK[self.device_state]:
            self.device_state = letter

    # -- queries (semantics.md §4, §5.5) -----------------------------------------------------

    def is_clean(self, region: int) -> bool:
        """IS_CLEAN: ``clean[r]``, and false for every region while the device is not A."""
        self.check_region(region)
        return self.device_state == DEVICE_ALIVE and self.clean.get(region)

    def in_sync(self, region: int) -> bool:
        """IN_SYNC: true if the sticky flag is set, else ``sync[r]`` (§5.5)."""
        self.check_region(region)
        return self.in_sync_sticky or self.sync.get(region)

    def marked_by_other(self, region: int, node: int) -> bool:
        """Whether a node other than ``node`` holds a mark on ``region``."""
        holders = self.marks.get(region)
        if not holders:
            return False
        return len(holders) > 1 or node not in holders

    # -- MARK, CLEAR, SET_REGION_SYNC (§4) ---------------------------------------------------

    def mark(self, regions: Sequence[int], originator: int) -> None:
        """MARK_REGION (and the marks of an integrated FLUSH), §4.1."""
        self.check_regions(regions)
        for region in regions:
            self.marks.setdefault(region, set()).add(originator)
            self._clear_clean(region)

    def clear(self, regions: Sequence[int], originator: int) -> None:
        """CLEAR_REGION, §4.2."""
        self.check_regions(regions)
        for region in regions:
            holders = self.marks.get(region)
            if holders is not None:
                holders.discard(originator)
                if not holders:
                    del self.marks[region]
                    holders = None
            if holders is None and self.sync.get(region):
                self._set_clean(region)

    def set_region_sync(self, region: int, in_sync: bool, originator: int) -> None:
        """SET_REGION_SYNC(r, v), §4.3, then the full-sync rule of §5.2."""
        self.check_region(region)
        if in_sync:
            if self.sync.set(region):
                self.sync_count += 1
        elif self.sync.clear(region):
            self.sync_count -= 1
            self._clear_clean(region)
        if self.recovering == (region, originator):
            self.recovering = None
        self._apply_full_sync()

    def _apply_full_sync(self) -> None:
        """§5.2: at full sync the cursor moves to the end and the sticky flag is set."""
        if self.sync_count == self.region_count:
            self.sync_search = self.region_count
            self.in_sync_sticky = True

    # -- recovery (§5) -----------------------------------------------------------------------

    def get_resync_work(self, originator: int) -> tuple[bool, int]:
        """GET_RESYNC_WORK for a resumed log, §5.3 steps 1-6; returns ``(i, region)``."""
        if originator in self.halted:
            return False, 0
        if self.recovering is not None:
            region, node = self.recovering
            return (True, region) if node == originator else (False, 0)
        for region in list(self.priority):
            del self.priority[region]
            if self.sync.get(region):
                continue
            if self.marked_by_other(region, originator):
                self.priority[region] = None
                continue
            self.recovering = (region, originator)
            return True, region
        while self.sync_search < self.region_count:
            found = self.sync.first_zero(self.sync_search)
            if found is None:
                self.sync_search = self.region_count
                break
            self.sync_search = found + 1
            if self.marked_by_other(found, originator):
                self.priority[found] = None
                continue
            self.recovering = (found, originator)
            return True, found
        return False, 0

    def advance_cursor(self) -> None:
        """§5.4 step 2: move ``sync_search`` over in-sync regions."""
        found = self.sync.first_zero(self.sync_search)
        self.sync_search = self.region_count if found is None else found

    def is_remote_recovering(self, region: int, originator: int) -> tuple[bool, int]:
        """IS_REMOTE_RECOVERING(r) for a resumed log, §5.4 steps 2-7; ``(is_recovering, hint)``.

        ``originator`` is accepted for symmetry with the other requests; the answer depends
        only on the replicated state.
        """
        self.check_region(region)
        self.advance_cursor()
        assigned = self.recovering is not None and self.recovering[0] == region
        pending = not self.sync.get(region) and (
            region >= self.sync_search or region in self.priority
        )
        all_halted = self.members <= self.halted
        is_recovering = assigned if all_halted else assigned or pending
        if pending and not assigned and region not in self.priority and is_recovering:
            self.priority[region] = None
        hint = min(self.sync_search, self.region_count)
        if self.recovering is not None:
            hint = min(hint, self.recovering[0])
        if self.priority:
            hint = min(hint, min(self.priority))
        return is_recovering, hint

    # -- suspend, departure (§2.1, §6.3) -----------------------------------------------------

    def halt(self, node: int) -> None:
        """PRESUSPEND of a resumed log: ``node`` stops recovery."""
        self.halted.add(node)

    def unhalt(self, node: int) -> None:
        """RESUME after an aborted suspend: ``node`` recovers again."""
        self.halted.discard(node)

    def _release_assignment(self, node: int) -> None:
        if self.recovering is not None and self.recovering[1] == node:
            region = self.recovering[0]
            self.recovering = None
            if not self.sync.get(region):
                self.priority.pop(region, None)
                self.priority = {region: None, **self.priority}

    def depart_orderly(self, node: int) -> None:
        """Orderly departure (POSTSUSPEND, DTR of a resumed instance), §6.3.

        The node's marks stay, parked under its id; its assignment is released to the front
        of ``priority``; it leaves ``halted``.
        """
        self._release_assignment(node)
        self.halted.discard(node)

    def depart_crash(self, node: int) -> None:
        """Crash (membership loss without departure), §6.3.

        Every region the node had marked goes out of sync (it may hold a half-finished write)
        and is not queued; the assignment is released; the sticky flag is cleared.
        """
        for region in sorted(r for r, holders in self.marks.items() if node in holders):
            holders = self.marks[region]
            holders.discard(node)
            if not holders:
                del self.marks[region]
            if self.sync.clear(region):
                self.sync_count -= 1
            self._clear_clean(region)
        self._release_assignment(node)
        self.halted.discard(node)
        self.in_sync_sticky = False

    def reassert(
        self,
        node: int,
        *,
        floor: int,
        halted: bool,
        marks: Sequence[int],
        out_of_sync: Sequence[tuple[int, int]],
    ) -> None:
        """A node whose partition yielded at a merge re-asserts its kernel's view (cluster).

        Only ever makes the state more conservative: the node's marks are added (clean bits
        cleared), the ``(start, length)`` ranges go out of sync (clean cleared, the sticky
        flag with them), ``halted`` halts the node, and the resync cursor rises to ``floor``
        (its kernel may hold hints up to there, I5): priority entries below the new cursor
        are dropped (recovered at the next reset, like a crash's regions, §6.3).

        Raises:
            KernelProtocolError: a region, range or floor out of range; nothing changed.
        """
        self.check_regions(marks)
        if not 0 <= floor <= self.region_count:
            raise KernelProtocolError(f"resync floor {floor} beyond {self.region_count}")
        for start, length in out_of_sync:
            if length < 1 or start + length > self.region_count:
                raise KernelProtocolError(f"out-of-sync range {start}+{length} out of range")
        for start, length in out_of_sync:
            end = start + length
            region = self.sync.first_set(start)  # only regions still in sync change (I2)
            while region is not None and region < end:
                self.sync.clear(region)
                self.sync_count -= 1
                self._clear_clean(region)
                region = self.sync.first_set(region + 1)
            self.in_sync_sticky = False
        self.mark(marks, node)
        if halted:
            self.halted.add(node)
        if floor > self.sync_search:
            self.sync_search = floor
            self.priority = {r: None for r in self.priority if r >= floor}

    # -- reset and load (§2.2, disk-format.md §3) --------------------------------------------

    def reset(self) -> None:
        """A log reset (§2.2 steps 1 and 4); the bits are kept."""
        self.marks.clear()
        self.recovering = None
        self.priority.clear()
        self.halted.clear()
        self.sync_search = 0
        self.in_sync_sticky = False
        self._apply_full_sync()

    def reset_to_ctr(self, *, nosync: bool) -> None:
        """Reset to the CTR state (a core log whose copy may be stale, §2.2 step 3)."""
        self.sync = Bitmap(self.region_count, fill=nosync)
        self.clean = Bitmap(self.region_count, fill=nosync)
        self.sync_count = self.region_count if nosync else 0
        self.reset()

    def load_clean(self, clean: Bitmap) -> None:
        """disk-format.md §3 step 5: ``sync := clean``, counts exact, log reset.

        The whole buffer becomes pending (step 7 writes it and flushes the cache, R4).
        """
        if clean.nbits != self.region_count:
            raise ValueError(f"bitmap of {clean.nbits} bits for {self.region_count} regions")
        self.clean = clean
        self.sync = clean.copy()
        self.sync_count = clean.count()
        self._pending_bytes = set()
        self._pending_whole = True
        self._pending_dirtied = True
        self.reset()

    # -- checkpoint (semantics.md §6.2) ------------------------------------------------------

    def export_fields(self) -> ReplicatedFields:
        """Every replicated field as plain values (a cluster checkpoint)."""
        return ReplicatedFields(
            clean=self.clean.to_bytes(),
            sync=self.sync.to_bytes(),
            sync_count=self.sync_count,
            sync_search=self.sync_search,
            recovering=self.recovering,
            priority=tuple(self.priority),
            marks=tuple(
                (region, tuple(sorted(nodes))) for region, nodes in sorted(self.marks.items())
            ),
            in_sync_sticky=self.in_sync_sticky,
            halted=tuple(sorted(self.halted)),
            device_state=self.device_state,
        )

    def install_fields(self, fields: ReplicatedFields) -> None:
        """Replace every replicated field by ``fields`` (a joiner, semantics.md §6.2).

        Everything is checked first (I1-I4, I6, ranges); on error nothing changes. Pending
        changes are dropped: a joiner does not write, and a joiner that later becomes the
        writer writes the whole buffer (:meth:`mark_all_pending`). ``members`` is left alone.

        Raises:
            ValueError: ``fields`` is inconsistent or does not fit this log.
        """
        n = self.region_count
        try:
            clean = Bitmap.from_bytes(n, fields.clean)
            sync = Bitmap.from_bytes(n, fields.sync)
        except ValueError as exc:
            raise ValueError(f"checkpoint bitmaps do not fit {n} regions: {exc}") from None
        if clean.to_bytes() != fields.clean or sync.to_bytes() != fields.sync:
            raise ValueError("checkpoint bitmap has bits set beyond the region count (I6)")
        clean_int = int.from_bytes(fields.clean, "little")
        sync_int = int.from_bytes(fields.sync, "little")
        if sync_int.bit_count() != fields.sync_count:
            raise ValueError(f"checkpoint sync_count {fields.sync_count} is not exact (I1)")
        if clean_int & ~sync_int:
            raise ValueError("checkpoint has a region clean but out of sync (I2)")
        if not 0 <= fields.sync_search <= n:
            raise ValueError(f"checkpoint cursor {fields.sync_search} out of range")
        for region, nodes in fields.marks:
            if not 0 <= region < n or not nodes:
                raise ValueError(f"checkpoint mark on region {region} by {nodes!r}")
            if clean_int >> region & 1:
                raise ValueError(f"checkpoint region {region} marked but clean (I3)")
        if len({region for region, _ in fields.marks}) != len(fields.marks):
            raise ValueError("checkpoint lists a marked region twice")
        if fields.recovering is not None and not 0 <= fields.recovering[0] < n:
            raise ValueError(f"checkpoint recovering region {fields.recovering[0]} out of range")
        if any(not 0 <= r < n for r in fields.priority):
            raise ValueError("checkpoint priority region out of range")
        if len(set(fields.priority)) != len(fields.priority):
            raise ValueError("checkpoint priority list has duplicates")
        if fields.device_state not in _DEVICE_STATE_RANK:
            raise ValueError(f"checkpoint device state {fields.device_state!r}")
        self.clean = clean
        self.sync = sync
        self.sync_count = fields.sync_count
        self.sync_search = fields.sync_search
        self.recovering = fields.recovering
        self.priority = dict.fromkeys(fields.priority)
        self.marks = {region: set(nodes) for region, nodes in fields.marks}
        self.in_sync_sticky = fields.in_sync_sticky
        self.halted = set(fields.halted)
        self.device_state = fields.device_state
        self._pending_bytes = set()
        self._pending_whole = False
        self._pending_dirtied = False
