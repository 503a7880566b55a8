"""One log instance (what one CTR creates): its lifecycle, its requests, and its disk commits.

Lifecycle (semantics.md §2.1), an enum plus the transition table ``TRANSITIONS``:

==============  ===============  ============  ==============  =============  =========
state           RESUME           PRESUSPEND    POSTSUSPEND     DTR            (bug)
==============  ===============  ============  ==============  =============  =========
CONSTRUCTED     load -> RESUMED  0             0               -> DESTROYED   -> FAILED
RESUMED         no-op            -> SUSPENDING -> SUSPENDED    -> DESTROYED   -> FAILED
SUSPENDING      -> RESUMED       0             -> SUSPENDED    -> DESTROYED   -> FAILED
SUSPENDED       load -> RESUMED  0             0               -> DESTROYED   -> FAILED
FAILED          (-EIO)           (-EIO)        (-EIO)          -> DESTROYED
DESTROYED       illegal          illegal       illegal         illegal
==============  ===============  ============  ==============  =============  =========

SUSPENDING is RESUMED with this node in ``halted``. An illegal transition raises
``IllegalTransitionError`` and changes nothing. Any other unexpected exception while handling
a request is a bug: the instance goes to FAILED and every later request but DTR is refused
with ``EIO``. Refused requests (a region out of range: ``KernelProtocolError``) change nothing
and leave the lifecycle alone.

Requests to an instance that is not resumed are answered from its own copy (§2.3):
GET_RESYNC_WORK answers ``{0, 0}``, IS_REMOTE_RECOVERING ``{0, region_count}``.

Disk logs and durability (disk-format.md §3, §5). The instance keeps the log buffer
(``buf_size`` bytes: header, bytes 16-1023 and the tail as read) and asks the shell for I/O
with outcome values:

- RESUME as first member answers ``AwaitLoad``: the shell reads ``buffer_bytes`` from offset
  0 and calls :meth:`LogInstance.load`, which performs steps 1-6 and answers ``AwaitCommit``
  for the whole-buffer write with cache flush (R4); RESUME gets 0, or ``-EIO`` if that write
  fails (step 8), and the log is resumed either way.
- FLUSH, POSTSUSPEND and DTR answer ``AwaitCommit`` when this instance is the writer and has
  something to make durable (changes pending, or a write in flight); otherwise they answer
  ``Reply`` at once (R3). The shell then calls :meth:`LogInstance.begin_write` when no write of
  this instance is in flight; ``None`` means the state the reply depends on is already durable.
  A write carries the changed logical blocks only (block 0 holds the header), with a cache
  flush if any clean bit went 1 -> 0 (R1), without one if bits were only cleaned (R2).
- :meth:`LogInstance.end_write` reports the outcome: a failed write sets device state D, a
  failed cache flush F (sticky, §6); the changes stay pending so a later FLUSH retries (R8).
- The writer is a disk instance that has been loaded and is RESUMED or SUSPENDING, or
  SUSPENDED while no other instance of the uuid is resumed on this node (§2.3), or was the
  writer when DTR destroyed it (its final commit, R5). A never-resumed instance never writes.

Cluster mode (``clogfs.cluster.replica``): the replica sets :attr:`LogInstance.cluster_writer`
(this node is, or is not, the group's leader), which then alone decides, for a disk instance
whose buffer is known (loaded, or installed from a checkpoint) and that has not failed. A joiner
installs the group's state with :meth:`LogInstance.install`; :meth:`LogInstance.buffer_parts`
gives the bytes outside the bitmap for the checkpoint. :attr:`LogInstance.copy_current` says
whether the instance's own core-log bits may be kept at its next first-member RESUME.

Core module: no trio, no sockets, no I/O, no clock.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from clogfs.disklog.format import (
    BITMAP_OFFSET,
    LOG_HEADER,
    MIRROR_DISK_VERSION,
    MIRROR_MAGIC,
    OLD_DISK_VERSION,
    LogHeader,
    bitset_bytes,
    buffer_bytes,
    decode_header,
    encode_header,
)
from clogfs.errors import KernelProtocolError, LocalProtocolError
from clogfs.log.bitmap import Bitmap
from clogfs.log.ctr import CtrConfig, LogType, SyncMode, status_table
from clogfs.log.regions import (
    DEVICE_FAILED,
    DEVICE_FLUSH_FAILED,
    PendingChanges,
    RegionState,
    ReplicatedFields,
)
from clogfs.netlink.requests import RemoteRecovering, RequestType, ResyncWork, SetRegionSync
from clogfs.snapshot import LogSnapshot

if TYPE_CHECKING:
    from clogfs.registry import LogKey


class IllegalTransitionError(LocalProtocolError):
    """A lifecycle event that the transition table does not allow; nothing changed."""


class InstanceFailedError(LocalProtocolError):
    """A request to an instance that failed earlier (a bug); answered ``-EIO``."""


class Lifecycle(enum.Enum):
    """The lifecycle state of one instance (semantics.md §2.1)."""

    CONSTRUCTED = "constructed"  # never resumed
    RESUMED = "resumed"
    SUSPENDING = "suspending"  # resumed, this node halted (PRESUSPEND seen)
    SUSPENDED = "suspended"
    DESTROYED = "destroyed"
    FAILED = "failed"  # a bug while handling a request


class Event(enum.Enum):
    """What moves an instance through its lifecycle."""

    RESUME = "resume"
    PRESUSPEND = "presuspend"
    POSTSUSPEND = "postsuspend"
    DTR = "dtr"
    FAIL = "fail"


_L, _E = Lifecycle, Event
TRANSITIONS: dict[tuple[Lifecycle, Event], Lifecycle] = {
    (_L.CONSTRUCTED, _E.RESUME): _L.RESUMED,
    (_L.CONSTRUCTED, _E.PRESUSPEND): _L.CONSTRUCTED,
    (_L.CONSTRUCTED, _E.POSTSUSPEND): _L.CONSTRUCTED,
    (_L.CONSTRUCTED, _E.DTR): _L.DESTROYED,
    (_L.CONSTRUCTED, _E.FAIL): _L.FAILED,
    (_L.RESUMED, _E.RESUME): _L.RESUMED,
    (_L.RESUMED, _E.PRESUSPEND): _L.SUSPENDING,
    (_L.RESUMED, _E.POSTSUSPEND): _L.SUSPENDED,
    (_L.RESUMED, _E.DTR): _L.DESTROYED,
    (_L.RESUMED, _E.FAIL): _L.FAILED,
    (_L.SUSPENDING, _E.RESUME): _L.RESUMED,
    (_L.SUSPENDING, _E.PRESUSPEND): _L.SUSPENDING,
    (_L.SUSPENDING, _E.POSTSUSPEND): _L.SUSPENDED,
    (_L.SUSPENDING, _E.DTR): _L.DESTROYED,
    (_L.SUSPENDING, _E.FAIL): _L.FAILED,
    (_L.SUSPENDED, _E.RESUME): _L.RESUMED,
    (_L.SUSPENDED, _E.PRESUSPEND): _L.SUSPENDED,
    (_L.SUSPENDED, _E.POSTSUSPEND): _L.SUSPENDED,
    (_L.SUSPENDED, _E.DTR): _L.DESTROYED,
    (_L.SUSPENDED, _E.FAIL): _L.FAILED,
    (_L.FAILED, _E.DTR): _L.DESTROYED,
    (_L.FAILED, _E.FAIL): _L.FAILED,
}
_RESUMED_STATES = frozenset({Lifecycle.RESUMED, Lifecycle.SUSPENDING})


def next_lifecycle(state: Lifecycle, event: Event) -> Lifecycle:
    """The state ``event`` leads to from ``state``.

    Raises:
        IllegalTransitionError: the table has no such transition.
    """
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransitionError(
            f"{event.value} is not allowed in state {state.value}"
        ) from None


@dataclass(frozen=True)
class DeviceInfo:
    """What the shell learned when it opened the log device at CTR."""

    name: str  # reply name: "maj:min" for a block device, the path for an image file
    dev_number: str  # "maj:min" for STATUS_INFO (image files: st_dev's "maj:min")
    identity: tuple[int, int]  # (st_rdev, 0) for block devices, (st_dev, st_ino) for files
    logical_block_size: int
    size_bytes: int


@dataclass(frozen=True)
class LogRequest:
    """One decoded kernel request for one instance, with the node it came from."""

    request_type: RequestType
    args: object
    originator: int
    version: int = 3


@dataclass(frozen=True)
class Reply:
    """Answer now. ``error`` is 0 or a negative errno (the core itself raises instead)."""

    result: object = None
    error: int = 0


@dataclass(frozen=True)
class AwaitCommit:
    """Answer ``reply`` after the next durable commit of this log; ``-EIO`` if it fails."""

    reply: Reply


@dataclass(frozen=True)
class AwaitLoad:
    """RESUME of a disk log as first member: read ``buffer_bytes`` at 0, then ``load()``."""


@dataclass(frozen=True)
class WriteLog:
    """One write the shell must perform, in order, then report with ``end_write``."""

    write_id: int
    extents: tuple[tuple[int, bytes], ...]  # (byte offset, data), whole logical blocks
    cache_flush: bool  # fdatasync after the write (R1); False if only bits were cleaned (R2)


Outcome = Reply | AwaitCommit | AwaitLoad


class LogInstance:
    """One log instance: lifecycle, region state, status, and the disk-log commits.

    Args:
        key: the registry key ``(protocol, uuid, luid)``.
        config: the parsed CTR.
        device: the opened log device (clustered-disk), else None.
        node_id: this node's id (the single node, or the corosync node id).
        peer_resumed: tells whether another instance of the same uuid is resumed on this node
            (the registry supplies it); decides whether a SUSPENDED instance may write.
    """

    def __init__(
        self,
        key: LogKey,
        config: CtrConfig,
        device: DeviceInfo | None,
        *,
        node_id: int = 1,
        peer_resumed: Callable[[LogInstance], bool] | None = None,
    ) -> None:
        if (config.log_type is LogType.DISK) != (device is not None):
            raise LocalProtocolError("a device is required for clustered-disk logs only")
        self.key = key
        self.config = config
        self.device = device
        self.node_id = node_id
        self.lifecycle = Lifecycle.CONSTRUCTED
        self.state = RegionState(
            config.region_count,
            nosync=config.sync_mode is SyncMode.NOSYNC,
            members=(node_id,),
        )
        self.loading = False  # AwaitLoad returned, load() not yet called
        self._peer_resumed = peer_resumed or (lambda _instance: False)
        self._loaded = False  # the disk log was loaded at least once (may write, R8)
        self._final_writer = False  # destroyed while the writer: its last commit may run
        # The bytes of the on-disk buffer outside the clean bitmap, kept as read (disk-format.md
        # §1): the header and bytes 16-1023, and the tail after the bitmap. The bitmap itself is
        # ``state.clean``; blocks are composed from the three at write time, so a disk log holds
        # its bitmap once, not twice.
        self._prefix = bytearray()
        self._tail = bytearray()
        self._next_write_id = 1
        self._in_flight: tuple[WriteLog, PendingChanges] | None = None
        # cluster mode: True/False when the replica decides who writes (the leader); None in
        # single-node mode
        self.cluster_writer: bool | None = None
        # False when this node left a group whose other members stayed: its own copy may be
        # stale, so a later first-member RESUME of a core log starts from the CTR state (§2.2)
        self.copy_current = True

    # -- lifecycle ---------------------------------------------------------------------------

    def _transition(self, event: Event) -> None:
        self.lifecycle = next_lifecycle(self.lifecycle, event)

    @property
    def resumed(self) -> bool:
        """RESUMED or SUSPENDING."""
        return self.lifecycle in _RESUMED_STATES

    def mark_failed(self) -> None:
        """Record a bug while handling a request: the instance goes to FAILED."""
        if self.lifecycle is not Lifecycle.DESTROYED:
            self._transition(Event.FAIL)
        self.loading = False

    @property
    def is_writer(self) -> bool:
        """Whether this instance may write its log device now (see the module docstring)."""
        if self.config.log_type is not LogType.DISK or not self._loaded:
            return False
        if self.cluster_writer is not None:
            return self.cluster_writer and self.lifecycle is not Lifecycle.FAILED
        if self.lifecycle in _RESUMED_STATES:
            return True
        if self.lifecycle is Lifecycle.SUSPENDED:
            return not self._peer_resumed(self)
        if self.lifecycle is Lifecycle.DESTROYED:
            return self._final_writer
        return False

    def _commit_or_reply(self) -> Outcome:
        if self.is_writer and (self.state.has_pending() or self._in_flight is not None):
            return AwaitCommit(Reply())
        return Reply()

    # -- requests ----------------------------------------------------------------------------

    def handle(self, request: LogRequest) -> Outcome:
        """Apply one request and say how to answer it.

        Raises:
            KernelProtocolError: the request is refused (e.g. a region out of range); nothing
                changed.
            IllegalTransitionError: the instance is destroyed; nothing changed.
            InstanceFailedError: the instance failed earlier (``-EIO``).
            LocalProtocolError: a bug (the instance is now FAILED); so is any other exception.
        """
        if self.lifecycle is Lifecycle.DESTROYED:
            raise IllegalTransitionError(f"{request.request_type.name} for a destroyed log")
        if self.lifecycle is Lifecycle.FAILED and request.request_type is not RequestType.DTR:
            raise InstanceFailedError("this log instance failed earlier")
        handler = self._HANDLERS.get(request.request_type)
        if handler is None:
            raise KernelProtocolError(f"{request.request_type.name} is not a log request")
        try:
            return handler(self, request)
        except (KernelProtocolError, IllegalTransitionError):
            raise
        except Exception:
            self.mark_failed()
            raise

    def _resume(self, request: LogRequest) -> Outcome:
        if self.lifecycle is Lifecycle.RESUMED:
            return Reply()
        if self.lifecycle is Lifecycle.SUSPENDING:
            self.state.unhalt(request.originator)
            self._transition(Event.RESUME)
            return Reply()
        next_lifecycle(self.lifecycle, Event.RESUME)  # check before acting
        if self.config.log_type is LogType.DISK:
            self.loading = True
            return AwaitLoad()
        # clustered-core, single node: a new instance uses its CTR state, a suspended one
        # keeps its bits (semantics.md §2.2 step 3); the log is reset either way
        self.state.reset()
        self._transition(Event.RESUME)
        return Reply()

    def _presuspend(self, request: LogRequest) -> Outcome:
        if self.lifecycle is Lifecycle.RESUMED:
            self.state.halt(request.originator)
        self._transition(Event.PRESUSPEND)
        return Reply()

    def _postsuspend(self, request: LogRequest) -> Outcome:
        if not self.resumed:
            self._transition(Event.POSTSUSPEND)
            return Reply()
        self.state.depart_orderly(request.originator)
        self._transition(Event.POSTSUSPEND)
        return self._commit_or_reply()

    def _dtr(self, request: LogRequest) -> Outcome:
        if self.resumed:
            self.state.depart_orderly(request.originator)
        writer = self.is_writer
        self._transition(Event.DTR)
        self._final_writer = writer
        return self._commit_or_reply()

    def _get_region_size(self, request: LogRequest) -> Outcome:
        return Reply(self.config.region_size)

    def _is_clean(self, request: LogRequest) -> Outcome:
        return Reply(self.state.is_clean(_region_arg(request)))

    def _in_sync(self, request: LogRequest) -> Outcome:
        return Reply(self.state.in_sync(_region_arg(request)))

    def _flush(self, request: LogRequest) -> Outcome:
        regions = _regions_arg(request, allow_empty=True)
        if regions:
            self.state.mark(regions, request.originator)
        return self._commit_or_reply()

    def _mark(self, request: LogRequest) -> Outcome:
        self.state.mark(_regions_arg(request, allow_empty=False), request.originator)
        return Reply()

    def _clear(self, request: LogRequest) -> Outcome:
        self.state.clear(_regions_arg(request, allow_empty=False), request.originator)
        return Reply()

    def _get_resync_work(self, request: LogRequest) -> Outcome:
        if not self.resumed:
            return Reply(ResyncWork(0, 0))
        assign, region = self.state.get_resync_work(request.originator)
        return Reply(ResyncWork(int(assign), region))

    def _set_region_sync(self, request: LogRequest) -> Outcome:
        args = request.args
        if not isinstance(args, SetRegionSync):
            raise LocalProtocolError(f"SET_REGION_SYNC with arguments {args!r}")
        self.state.set_region_sync(args.region, args.in_sync, request.originator)
        return Reply()

    def _get_sync_count(self, request: LogRequest) -> Outcome:
        return Reply(self.state.sync_count)

    def _status_info(self, request: LogRequest) -> Outcome:
        return Reply(self.status_info())

    def _status_table(self, request: LogRequest) -> Outcome:
        return Reply(self.status_table())

    def _is_remote_recovering(self, request: LogRequest) -> Outcome:
        region = _region_arg(request)
        self.state.check_region(region)
        if not self.resumed:
            return Reply(RemoteRecovering(0, self.config.region_count))
        recovering, hint = self.state.is_remote_recovering(region, request.originator)
        return Reply(RemoteRecovering(int(recovering), hint))

    _HANDLERS: ClassVar[dict[RequestType, Callable[[LogInstance, LogRequest], Outcome]]] = {
        RequestType.DTR: _dtr,
        RequestType.PRESUSPEND: _presuspend,
        RequestType.POSTSUSPEND: _postsuspend,
        RequestType.RESUME: _resume,
        RequestType.GET_REGION_SIZE: _get_region_size,
        RequestType.IS_CLEAN: _is_clean,
        RequestType.IN_SYNC: _in_sync,
        RequestType.FLUSH: _flush,
        RequestType.MARK_REGION: _mark,
        RequestType.CLEAR_REGION: _clear,
        RequestType.GET_RESYNC_WORK: _get_resync_work,
        RequestType.SET_REGION_SYNC: _set_region_sync,
        RequestType.GET_SYNC_COUNT: _get_sync_count,
        RequestType.STATUS_INFO: _status_info,
        RequestType.STATUS_TABLE: _status_table,
        RequestType.IS_REMOTE_RECOVERING: _is_remote_recovering,
    }

    # -- disk load (disk-format.md §3) -------------------------------------------------------

    @property
    def buffer_bytes(self) -> int:
        """``buf_size`` of this disk log; 0 for a core log."""
        if self.device is None:
            return 0
        return buffer_bytes(self.config.region_count, self.device.logical_block_size)

    def load(self, data: bytes | None) -> AwaitCommit:
        """Load the log from the bytes read at offset 0 (steps 1-6); the log is resumed.

        Args:
            data: ``buffer_bytes`` bytes read from the device, or None if the read failed
                (a short read counts as failed).

        Returns:
            ``AwaitCommit`` of the RESUME reply: the whole buffer is pending, with a cache
            flush (step 7, R4).

        Raises:
            LocalProtocolError: no RESUME is waiting for a load (a bug in the caller).
        """
        if not self.loading or self.device is None:
            raise LocalProtocolError("load() without a RESUME waiting for it")
        try:
            return self._load(data)
        except Exception:
            self.mark_failed()
            raise

    def _load(self, data: bytes | None) -> AwaitCommit:
        config, size = self.config, self.buffer_bytes
        count = config.region_count
        disk_nr_regions = 0
        if data is None or len(data) < size:  # step 1: read failed
            self.state.fail_device(DEVICE_FAILED)
            buffer = bytearray(size)
        else:
            buffer = bytearray(data[:size])
            header = decode_header(bytes(buffer[: LOG_HEADER.size]))
            if config.sync_mode is not SyncMode.DEFAULT or header.magic != MIRROR_MAGIC:
                disk_nr_regions = 0  # a new log
            elif header.version == MIRROR_DISK_VERSION or (
                header.version == OLD_DISK_VERSION and sys.byteorder == "little"
            ):
                disk_nr_regions = header.nr_regions
            else:  # incompatible disk log version
                self.state.fail_device(DEVICE_FAILED)
        start, stop = BITMAP_OFFSET, BITMAP_OFFSET + bitset_bytes(count)
        clean = Bitmap.from_bytes(count, buffer[start:stop])  # step 4 clears the tail
        clean.fill_range(disk_nr_regions, count, config.sync_mode is SyncMode.NOSYNC)  # step 2
        self.state.load_clean(clean)  # step 5
        buffer[: LOG_HEADER.size] = encode_header(  # step 6
            LogHeader(MIRROR_MAGIC, MIRROR_DISK_VERSION, count)
        )
        self._prefix = buffer[:BITMAP_OFFSET]
        self._tail = buffer[stop:]
        del buffer
        self._loaded = True
        self.loading = False
        self._transition(Event.RESUME)
        return AwaitCommit(Reply())

    # -- cluster checkpoint (semantics.md §6.2) ----------------------------------------------

    def buffer_parts(self) -> tuple[bytes, bytes]:
        """The on-disk bytes outside the clean bitmap: (header and bytes 16-1023, tail).

        Empty for a core log or a disk log whose buffer is not known yet.
        """
        return bytes(self._prefix), bytes(self._tail)

    def install(
        self,
        fields: ReplicatedFields,
        prefix: bytes = b"",
        tail: bytes = b"",
        *,
        rejoin: bool = False,
    ) -> None:
        """A joiner's RESUME: take the group's state instead of loading (semantics.md §2.2).

        The device is never read. For a disk log ``prefix`` and ``tail`` (from
        :meth:`buffer_parts` of the member that sent the state) become this instance's bytes
        outside the bitmap; if they do not fit this node's geometry, zeros are used, and the
        header is always a valid version-2 header for this log. The instance is RESUMED.
        With ``rejoin`` the instance is resumed already (its partition's state yielded at a
        merge, ``cluster/replica.py`` rule 10) and stays so; only the state is replaced.

        Raises:
            IllegalTransitionError: the instance is resumed already, destroyed or failed.
            ValueError: ``fields`` does not fit this log (nothing changed).
        """
        if self.resumed != rejoin:
            state = "a resumed" if self.resumed else "a non-resumed"
            raise IllegalTransitionError(f"install(rejoin={rejoin}) on {state} instance")
        if not rejoin:
            next_lifecycle(self.lifecycle, Event.RESUME)  # check before acting
        self.state.install_fields(fields)
        if self.device is not None:
            end = BITMAP_OFFSET + bitset_bytes(self.config.region_count)
            tail_bytes = self.buffer_bytes - end
            head = bytearray(prefix) if len(prefix) == BITMAP_OFFSET else bytearray(BITMAP_OFFSET)
            head[: LOG_HEADER.size] = encode_header(
                LogHeader(MIRROR_MAGIC, MIRROR_DISK_VERSION, self.config.region_count)
            )
            self._prefix = head
            self._tail = bytearray(tail) if len(tail) == tail_bytes else bytearray(tail_bytes)
            self._loaded = True
        self.loading = False
        if not rejoin:
            self._transition(Event.RESUME)

    # -- writes (disk-format.md §4, §5) ------------------------------------------------------

    def begin_write(self) -> WriteLog | None:
        """The next write of pending changes, or None if there is nothing to write (R3).

        Only the writer writes; a write must end (``end_write``) before the next begins.

        Raises:
            LocalProtocolError: a write is already in flight.
        """
        if self._in_flight is not None:
            raise LocalProtocolError("begin_write() while a write is in flight")
        if not self.is_writer or not self.state.has_pending():
            return None
        assert self.device is not None
        pending = self.state.take_pending()
        lbs = self.device.logical_block_size
        if pending.whole:
            extents: tuple[tuple[int, bytes], ...] = ((0, self._compose(0, self.buffer_bytes)),)
        else:
            blocks = sorted({(BITMAP_OFFSET + index) // lbs for index in pending.byte_indices})
            runs: list[list[int]] = []
            for block in blocks:
                if runs and runs[-1][1] == block:
                    runs[-1][1] = block + 1
                else:
                    runs.append([block, block + 1])
            built = []
            for first, stop in runs:
                lo, hi = first * lbs, stop * lbs
                built.append((lo, self._compose(lo, hi)))
            extents = tuple(built)
        write = WriteLog(self._next_write_id, extents, cache_flush=pending.dirtied)
        self._next_write_id += 1
        self._in_flight = (write, pending)
        return write

    def _compose(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of the on-disk buffer: prefix, clean bitmap and tail as they are."""
        bitmap = self.state.clean
        end = BITMAP_OFFSET + bitmap.nbytes
        parts = []
        if lo < BITMAP_OFFSET:
            parts.append(bytes(self._prefix[lo : min(hi, BITMAP_OFFSET)]))
        if max(lo, BITMAP_OFFSET) < min(hi, end):
            parts.append(
                bitmap.byte_slice(
                    max(lo, BITMAP_OFFSET) - BITMAP_OFFSET, min(hi, end) - BITMAP_OFFSET
                )
            )
        if hi > end:
            parts.append(bytes(self._tail[max(lo, end) - end : hi - end]))
        return b"".join(parts)

    def end_write(self, write: WriteLog, *, ok: bool, flush_ok: bool = True) -> None:
        """Report the outcome of ``write``.

        Args:
            write: the write ``begin_write`` returned.
            ok: the write (and its cache flush) succeeded.
            flush_ok: false if the cache flush failed (state F rather than D).

        Raises:
            LocalProtocolError: ``write`` is not the write in flight.
        """
        if self._in_flight is None or self._in_flight[0].write_id != write.write_id:
            raise LocalProtocolError(f"end_write() for write {write.write_id}, not in flight")
        _, pending = self._in_flight
        self._in_flight = None
        if ok and flush_ok:
            return
        self.state.fail_device(DEVICE_FLUSH_FAILED if not flush_ok else DEVICE_FAILED)
        self.state.restore_pending(pending)

    # -- status and view ---------------------------------------------------------------------

    def status_info(self) -> str:
        """STATUS_INFO (disk-format.md §7.1), without the NUL."""
        if self.device is None:
            return f"1 {LogType.CORE.value}"
        return f"3 {LogType.DISK.value} {self.device.dev_number} {self.state.device_state}"

    def status_table(self) -> str:
        """STATUS_TABLE (disk-format.md §7.2), without a NUL."""
        return status_table(self.config, self.device.dev_number if self.device else None)

    def snapshot(self) -> LogSnapshot:
        """A frozen picture of this instance for the FUSE view (history and stats left empty)."""
        state = self.state
        lifecycle = self.lifecycle
        shown = "resumed" if lifecycle is Lifecycle.SUSPENDING else lifecycle.value
        return LogSnapshot(
            uuid=self.config.uuid,
            luid=self.key[2],
            protocol=self.config.protocol.value,
            log_type=self.config.log_type.value,
            state=shown,
            region_size=self.config.region_size,
            region_count=self.config.region_count,
            sync_count=state.sync_count,
            in_sync=state.in_sync_sticky or state.sync_count == self.config.region_count,
            device=self.device.dev_number if self.device else None,
            device_state=state.device_state,
            status=self.status_info(),
            table=self.config.ctr_string.decode("utf-8", "backslashreplace"),
            clean_bits=state.clean.to_bytes(),
            sync_bits=state.sync.to_bytes(),
            recovering=state.recovering,
            marks=tuple(
                (region, tuple(sorted(nodes))) for region, nodes in sorted(state.marks.items())
            ),
            members=(self.node_id,),
            node_id=self.node_id,
        )

    def __repr__(self) -> str:
        return (
            f"LogInstance({self.config.uuid!r}, luid={self.key[2]}, "
            f"{self.config.log_type.value}, {self.lifecycle.value})"
        )


def _region_arg(request: LogRequest) -> int:
    args = request.args
    if not isinstance(args, int) or isinstance(args, bool):
        raise LocalProtocolError(f"{request.request_type.name} with arguments {args!r}")
    return args


def _regions_arg(request: LogRequest, *, allow_empty: bool) -> tuple[int, ...]:
    args = request.args
    if args is None and allow_empty:
        return ()
    if not isinstance(args, tuple) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in args
    ):
        raise LocalProtocolError(f"{request.request_type.name} with arguments {args!r}")
    if not args and not allow_empty:
        raise KernelProtocolError(f"{request.request_type.name} without regions")
    return args
