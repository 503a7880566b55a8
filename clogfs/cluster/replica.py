"""The replicated log of one (log uuid, node): the cluster state machine, without I/O.

One :class:`Replica` per resumed log instance and node in cluster mode (spec/cluster.md,
semantics.md §6). The trio shell feeds it events and carries out the actions it returns, in
order; it never waits, opens anything, reads the clock or draws random numbers.

Events in: :class:`LocalRequest` (an ordered request from this node's kernel),
:class:`Delivered` (a decoded cluster message, in CPG's total order), :class:`Membership`
(a CPG configuration change, in the same order), :class:`WriteDone`, :class:`LoadDone`,
:class:`QuorumChanged`. Actions out: :class:`Multicast`, :class:`Answer`, :class:`Write`
(leader only), :class:`ReadDevice` (first member only), :class:`Warn`, :class:`Leave` (the
shell leaves the CPG group; the replica is done).

Rules
-----

1. **Delivery index.** Every delivery and every configuration change is one step of the
   group's history; ``index`` counts them. Members that hold the state agree on it: the
   first member starts at 0 at its own join, a joiner takes it from its checkpoint.
2. **Ordered requests.** A :class:`LocalRequest` is multicast as a ``REQUEST`` carrying the
   originator and a token number; every member applies every ``REQUEST`` in delivery order
   (lifecycle requests of other nodes act on the shared state only: PRESUSPEND halts the
   originator, RESUME unhalts it, POSTSUSPEND and DTR are its orderly departure). The
   originator answers its kernel when its own ``REQUEST`` has been applied: one multicast per
   request. Refusals (a region out of range) are the same on every member and answered with
   their errno; nothing changes. A request delivered after its originator's own departure
   changes nothing on any member; the originator answers it from its own copy (§2.3).
3. **Leader.** The leader writes the log device and sends checkpoints. The first member is
   the leader; when the leader leaves the group, the member holding the state with the lowest
   node id becomes leader, or if none is left the lowest departing member still in the group
   (rule 8). A node that joins later with a lower id does not take over while
   the leader lives: a live hand-over would let the old leader's write in flight land after
   the new leader's (decision; the spec's "lowest node id" holds whenever a leader is chosen).
4. **Durability (disk logs).** After applying a FLUSH, POSTSUSPEND or DTR (anyone's), the
   leader commits: it writes the pending clean-bit changes (``LogInstance.begin_write``; one
   write at a time, FLUSHes delivered meanwhile share the next one, R6) and then multicasts
   ``DURABLE(covers, ok, device_state)``, ``covers`` being the index the written state was
   taken at; nothing pending: ``DURABLE`` at once (R3). Every member applies the device state
   of a ``DURABLE`` (so every node's STATUS_INFO shows D/F) and its originator's waiting
   requests with index <= ``covers`` are durable (``ok``) or answered ``-EIO`` (not ok). A new
   leader marks the whole buffer pending, writes it with a cache flush and announces
   ``DURABLE`` up to the configuration change that made it leader: that confirms every FLUSH
   still waiting. Core logs have nothing to persist: a FLUSH is durable at its delivery and
   no ``DURABLE`` is sent.
5. **FLUSH confirmation.** A durable FLUSH of node N is answered 0 only while (a) N holds no
   mark on a region assigned for recovery to another node (semantics.md §6.4) and (b) this
   node is quorate, unless quorum enforcement is off. Both are re-checked after every applied
   step and at :class:`QuorumChanged`. POSTSUSPEND and DTR wait for durability only.
6. **First member.** At its own join, a node that finds no previous member is the first
   member (of several joining at once, the lowest id; the others are joiners). A disk log is
   loaded (``ReadDevice`` of ``buffer_bytes`` -> :class:`LoadDone` -> ``LogInstance.load`` ->
   the whole-buffer write with cache flush); RESUME is answered when that write ends (0 or
   ``-EIO``, the log resumed either way). A core log keeps its bits if the instance was the
   only member when it last left, else starts from the CTR state (semantics.md §2.2). Steps
   delivered while loading are buffered and applied afterwards.
7. **Join.** Every other node is a joiner: it multicasts ``JOIN(node, session)`` at its join
   (``session`` is unique per membership of this node, from the shell), never reads or
   writes the device, and buffers every step after its own ``JOIN`` is delivered. The leader,
   at the delivery of the ``JOIN``, takes a checkpoint (every replicated field, the group
   bookkeeping, the index, the buffer bytes outside the bitmap) and multicasts it in
   ``CHECKPOINT`` pieces below ``message_limit`` bytes, each naming the join (node, session,
   index of the JOIN), so a checkpoint meant for an earlier session is discarded. When the
   last piece is delivered, the joiner installs the state, answers its RESUME, and replays
   the buffered steps after the checkpoint's index; every member then counts it as holding
   the state. If the leader leaves before that, the next leader re-sends a checkpoint for
   every join still open, taken at that configuration change. Several joiners are served one
   checkpoint each. If every member that could hold the state leaves while a node waits for
   its checkpoint, the joiner answers RESUME ``-EIO`` and leaves (open point: the next RESUME
   then finds a first member again).
8. **Departure.** Own POSTSUSPEND or DTR delivered: the departure is applied, the replica
   waits for its answers, then emits :class:`Leave`. A departing leader stops applying steps
   and writes the state up to its departure (a departure delivered after that is covered by
   the next leader's take-over). A departing non-leader keeps applying every step to the
   replicated state (not through its no longer resumed instance), so when the leader leaves
   and no member holding the state is left (all members suspending at once), the lowest
   departing member takes over, writes the whole state and answers the departures still
   waiting; it sends no checkpoints (a joiner then fails, rule 7). Another node's
   POSTSUSPEND/DTR: its marks stay parked, its assignment goes to the front of ``priority``,
   its halt is removed. A node that leaves the group without one (any CPG reason) crashed:
   its marked regions go out of sync, the sticky flag is cleared, its assignment is released;
   several in one change are handled in node order. Requests the kernel sends after its
   POSTSUSPEND go to the local copy only (semantics.md §2.3), with a warning.
9. **Failure.** A bug while applying a step, or an unusable checkpoint, answers every open
   request ``-EIO`` (RESUME: ``-EINVAL`` for a checkpoint of another geometry), warns and
   leaves; the others then see a crash, which is the conservative outcome.
10. **Partitions.** CPG keeps delivering inside a partition, and each side sees the others
   crash (rule 8), so the sides' states diverge. With quorum enforced, a member holding the
   state that loses quorum is *stale*: it starts no log write (not even the take-over write
   of a leader it lost: the shared device belongs to the quorate side), hands out no new
   recovery (its own GET_RESYNC_WORK is answered locally: its own assignment again, else
   ``{0, 0}``, so its cursor stays)
   and confirms no FLUSH (rule 5). The shell gives every :class:`Membership` this node's
   quorum at that change, so a cut-off node is stale before it applies the change. When
   quorum returns:

   - through a merge (members came back with ``CPG_REASON_NODEUP`` while stale): the
     replica *yields*: it drops its partition's state, rejoins under a new session (JOIN,
     checkpoint, replay: rule 7) and, once installed, multicasts ``REASSERT`` with what its
     kernel relies on: its own marks, its halt, every region its copy had out of sync (the
     others' crash regions included: conservative) and its resync cursor as a floor for
     the group's (its kernel may hold hints up to it, I5). Every member applies it
     (``RegionState.reassert``: only ever more conservative); the waits held across the
     yield are covered by it, so a held FLUSH is confirmed after the leader's next write.
     A recovery assigned to this node before the yield that the installed state no longer
     assigns to it proves nothing (the group may have written the region meanwhile): its
     SET_REGION_SYNC(r, 1) is answered 0 locally and dropped. A departing member (rule 8)
     that yields writes nothing and answers its departure.
   - without a merge (e.g. expected votes lowered): the replica goes on and starts the
     writes it deferred.

   - when no side kept quorum, every side yields and no checkpoint would come: a yielder
     that sees a JOIN of every other member that could hold the state (or none left), and
     has the lowest id of them, takes its own copy back, applies the steps since its yield
     as the holder (serving each JOIN a checkpoint at its point), writes the whole state
     and leads; the others install that and re-assert on top of it.

   Limits (decisions): the quorate side never yields. With ``enforce_quorum`` off nobody is
   ever stale, so a healed group keeps two state holders (two leaders) and is not merged.
   A write the cut-off node had already started when it lost quorum may still land.

Phases (``Phase``), and the steps that move between them::

    WAITING  --own join, no previous member, lowest id--> LOADING (disk) / SYNCED (core)
    WAITING  --own join otherwise--------------------------> JOINING
    LOADING  --LoadDone---------------------------------> SYNCED
    JOINING  --last checkpoint piece--------------------> SYNCED
    SYNCED   --own POSTSUSPEND/DTR delivered------------> DEPARTING
    SYNCED   --stale, quorum back through a merge-------> JOINING (rule 10)
    DEPARTING --every answer given----------------------> DONE (Leave)
    any      --bug, bad checkpoint, state lost----------> DONE (Leave)

Core module: no trio, no sockets, no cffi, no I/O, no clock.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field

from clogfs.cluster.messages import (
    DEFAULT_MESSAGE_LIMIT,
    ORDERED_REQUESTS,
    CheckpointChunk,
    CheckpointState,
    ClusterMessage,
    Durable,
    Join,
    PendingJoin,
    Reassert,
    Request,
    decode_checkpoint_state,
    encode_checkpoint_state,
    split_checkpoint,
    split_reassert,
)
from clogfs.errors import ClogfsError, ClusterProtocolError, KernelProtocolError, LocalProtocolError
from clogfs.errors import negative_errno as _negative_errno
from clogfs.log.ctr import LogType, SyncMode
from clogfs.log.instance import AwaitLoad, LogInstance, LogRequest, Reply, WriteLog
from clogfs.log.regions import DEVICE_ALIVE
from clogfs.netlink.requests import RemoteRecovering, RequestType, ResyncWork, SetRegionSync


class LeftReason(enum.IntEnum):
    """Why a member left (``cpg_reason_t``, corosync/cpg.h; same values as ``cpg.CpgReason``)."""

    JOIN = 1  # CPG_REASON_JOIN
    LEAVE = 2  # CPG_REASON_LEAVE
    NODEDOWN = 3  # CPG_REASON_NODEDOWN
    NODEUP = 4  # CPG_REASON_NODEUP
    PROCDOWN = 5  # CPG_REASON_PROCDOWN


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRequest:
    """An ordered request from this node's kernel; answered with ``Answer(token, ...)``."""

    token: object
    request: LogRequest


@dataclass(frozen=True)
class Delivered:
    """A cluster message multicast by ``sender``, delivered in total order (own ones too)."""

    sender: int
    message: ClusterMessage


@dataclass(frozen=True)
class Membership:
    """A CPG configuration change: the members after it, who joined, who left and why.

    ``merged``: the joined members that came back with their node (``CPG_REASON_NODEUP``: a
    healed partition), not by joining. ``quorate``: whether this node is quorate at this
    change (the shell asks corosync synchronously when it receives the change; None: not
    known, the last :class:`QuorumChanged` stands).
    """

    members: tuple[int, ...]
    joined: tuple[int, ...] = ()
    left: tuple[tuple[int, int], ...] = ()
    merged: tuple[int, ...] = ()
    quorate: bool | None = None


@dataclass(frozen=True)
class WriteDone:
    """The outcome of ``Write``: ``ok`` false if the write failed (D), ``flush_ok`` false if
    its cache flush failed (F)."""

    write_id: int
    ok: bool
    flush_ok: bool = True


@dataclass(frozen=True)
class LoadDone:
    """The bytes ``ReadDevice`` read, or None if the read failed or was short."""

    data: bytes | None


@dataclass(frozen=True)
class QuorumChanged:
    """This node gained or lost quorum (corosync votequorum)."""

    quorate: bool


ReplicaEvent = LocalRequest | Delivered | Membership | WriteDone | LoadDone | QuorumChanged


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Multicast:
    """Send ``message`` to the group (AGREED order)."""

    message: ClusterMessage


@dataclass(frozen=True)
class Answer:
    """Answer the kernel request ``token`` (a ``LocalRequest``'s, or the RESUME's)."""

    token: object
    reply: Reply


@dataclass(frozen=True)
class Write:
    """Perform ``write`` on the log device, then report ``WriteDone``."""

    write: WriteLog


@dataclass(frozen=True)
class ReadDevice:
    """Read ``nbytes`` from offset 0 of the log device, then report ``LoadDone``."""

    nbytes: int


@dataclass(frozen=True)
class Warn:
    """Log ``text`` at WARNING for this log."""

    text: str


@dataclass(frozen=True)
class Leave:
    """Leave the CPG group; the replica is done."""


ReplicaAction = Multicast | Answer | Write | ReadDevice | Warn | Leave


def _reason_name(reason: int) -> str:
    try:
        return LeftReason(reason).name
    except ValueError:
        return f"reason {reason}"


class Phase(enum.Enum):
    """Where the replica is in its membership (see the module docstring)."""

    WAITING = "waiting"  # constructed, own join not seen yet
    LOADING = "loading"  # first member, disk log being read
    JOINING = "joining"  # waiting for the checkpoint
    SYNCED = "synced"  # holds the state, applies every step
    DEPARTING = "departing"  # own POSTSUSPEND/DTR applied, answers outstanding
    DONE = "done"  # left (or failed)


_P = Phase
PHASE_TRANSITIONS: frozenset[tuple[Phase, Phase]] = frozenset(
    {
        (_P.WAITING, _P.LOADING),
        (_P.WAITING, _P.SYNCED),
        (_P.WAITING, _P.JOINING),
        (_P.LOADING, _P.SYNCED),
        (_P.JOINING, _P.SYNCED),
        (_P.SYNCED, _P.DEPARTING),
        (_P.SYNCED, _P.JOINING),  # a stale partition's state yields at a merge (rule 10)
        *((phase, _P.DONE) for phase in Phase if phase is not _P.DONE),
    }
)

_DURABLE_KINDS = frozenset({RequestType.FLUSH, RequestType.POSTSUSPEND, RequestType.DTR})
_DEPARTURES = frozenset({RequestType.POSTSUSPEND, RequestType.DTR})
#: the index of a wait whose covering step is not known yet (a yield's re-assertion pending)
_UNCOVERED = 1 << 64


@dataclass
class _Wait:
    """One of this node's requests waiting for durability (and, for FLUSH, confirmation)."""

    token: int  # the wire token (its kernel token is in ``Replica._tokens``)
    index: int
    request_type: RequestType
    durable: bool = False


@dataclass
class _Transfer:
    """The checkpoint pieces received so far for this node's join."""

    taken_at: int
    join_index: int
    total: int
    pieces: list[bytes] = field(default_factory=list)


class Replica:
    """The replicated log of one instance on one node (see the module docstring).

    Args:
        instance: the local log instance (CONSTRUCTED or SUSPENDED: the RESUME being served).
        resume_token: the token of that RESUME; answered once the state is loaded or installed.
        session: a number this node never reuses for another membership of this log's group
            (e.g. a per-daemon counter combined with the daemon's start time).
        message_limit: the largest cluster message to produce (checkpoint pieces).
        enforce_quorum: hold FLUSH answers while this node is not quorate.
        quorate: whether this node is quorate now.
    """

    def __init__(
        self,
        instance: LogInstance,
        resume_token: object,
        *,
        session: int,
        message_limit: int = DEFAULT_MESSAGE_LIMIT,
        enforce_quorum: bool = True,
        quorate: bool = True,
    ) -> None:
        if instance.resumed:
            raise LocalProtocolError("a replica starts at the RESUME of a non-resumed instance")
        self.instance = instance
        self.node_id = instance.node_id
        self.session = session
        self.message_limit = message_limit
        self.enforce_quorum = enforce_quorum
        self.quorate = quorate
        self.phase = Phase.WAITING
        self.index = 0
        self.members: tuple[int, ...] = ()
        self.synced: set[int] = set()
        self.departed: set[int] = set()
        self.leader: int | None = None
        self.joins: dict[int, PendingJoin] = {}
        self._resume_token: object | None = resume_token
        self._resume_write: int | None = None  # the load write whose end answers RESUME
        self._tokens: dict[int, object] = {}
        self._next_token = 1
        self._outbox: list[Request] = []
        self._waits: list[_Wait] = []
        self._buffer: list[Delivered | Membership] = []
        self._join_delivered = False
        self._maybe_synced: set[int] = set()
        self._transfer: _Transfer | None = None
        self._write: tuple[WriteLog, int] | None = None
        self._commit_wanted = False
        self.stale = False  # lost quorum while holding the state (rule 10)
        self._merged: set[int] = set()  # members that came back by a merge while stale
        self._reassert: list[Reassert] = []  # sent once a yield's checkpoint is installed
        self._lost_recovery: int | None = None  # region assigned to us before a yield
        # since a yield until the checkpoint: every step, and whether it is ours already
        # applied (our JOIN, our requests sent before it); the JOINs of the others
        self._since_yield: list[tuple[Delivered | Membership, bool]] | None = None
        self._joins_seen: set[int] = set()
        self._out: list[ReplicaAction] = []
        instance.cluster_writer = False

    # -- public --------------------------------------------------------------------------------

    @property
    def is_disk(self) -> bool:
        """Whether the log persists its clean bits (clustered-disk)."""
        return self.instance.config.log_type is LogType.DISK

    @property
    def is_leader(self) -> bool:
        """Whether this node is the group's leader."""
        return self.leader == self.node_id

    @property
    def outstanding(self) -> int:
        """Kernel requests not answered yet (the RESUME included)."""
        return len(self._tokens) + (self._resume_token is not None)

    def handle(self, event: ReplicaEvent) -> list[ReplicaAction]:
        """Take one event; return the actions to carry out, in order.

        Raises:
            LocalProtocolError: the event is illegal here (a bug in the shell); nothing changed.
        """
        self._out = []
        if isinstance(event, LocalRequest):
            self._local_request(event)
        elif isinstance(event, QuorumChanged):
            self.quorate = event.quorate
            if self.phase is not Phase.DONE:
                self._quorum_step()
                self._confirm()
        elif isinstance(event, WriteDone):
            self._write_done(event)
        elif isinstance(event, LoadDone):
            self._load_done(event)
        elif self.phase is not Phase.DONE:
            self._step(event)
        out, self._out = self._out, []
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _emit(self, action: ReplicaAction) -> None:
        self._out.append(action)

    def _enter(self, phase: Phase) -> None:
        if (self.phase, phase) not in PHASE_TRANSITIONS:
            raise LocalProtocolError(f"replica phase {self.phase.value} -> {phase.value}")
        self.phase = phase

    def _synced(self) -> bool:
        return self.phase is Phase.SYNCED

    def _answer(self, wire_token: int, reply: Reply) -> None:
        token = self._tokens.pop(wire_token, None)
        if token is not None:
            self._emit(Answer(token, reply))

    def _answer_resume(self, reply: Reply) -> None:
        if self._resume_token is not None:
            self._emit(Answer(self._resume_token, reply))
            self._resume_token = None

    def _fail(self, text: str, *, resume_error: int = -errno.EIO) -> None:
        """Give up: answer everything, warn, leave (rule 9)."""
        self._emit(Warn(text))
        self._answer_resume(Reply(error=resume_error))
        for wire_token in list(self._tokens):
            self._answer(wire_token, Reply(error=-errno.EIO))
        self._waits.clear()
        self._outbox.clear()
        self._finish()

    def _finish(self) -> None:
        self.instance.cluster_writer = False
        self._enter(Phase.DONE)
        self._emit(Leave())

    # -- local requests ------------------------------------------------------------------------

    def _local_request(self, event: LocalRequest) -> None:
        request = event.request
        if request.request_type not in ORDERED_REQUESTS:
            raise LocalProtocolError(f"{request.request_type.name} is not an ordered request")
        if request.originator != self.node_id:
            raise LocalProtocolError(f"request from node {request.originator} on {self.node_id}")
        if self.phase in (Phase.DEPARTING, Phase.DONE):
            self._late_request(event)
            return
        kind = request.request_type
        if kind is RequestType.GET_RESYNC_WORK and self.stale:
            # rule 10: a partition without quorum hands out no new recovery (its cursor
            # stays); a region already ours is ours again, as for a resent request
            recovering = self.instance.state.recovering
            mine = recovering is not None and recovering[1] == self.node_id
            work = ResyncWork(1, recovering[0]) if recovering and mine else ResyncWork(0, 0)
            self._emit(Answer(event.token, Reply(work)))
            return
        args = request.args
        if (
            kind is RequestType.SET_REGION_SYNC
            and isinstance(args, SetRegionSync)
            and args.in_sync
            and args.region == self._lost_recovery
        ):
            # rule 10: assigned in a partition that yielded; the group may have written the
            # region meanwhile, so this copy proves nothing and the region stays out of sync
            self._lost_recovery = None
            self._emit(Warn(f"recovery of region {args.region} was assigned before this "
                            "node's partition yielded: its result is discarded"))  # fmt: skip
            self._emit(Answer(event.token, Reply()))
            return
        wire_token = self._next_token
        self._next_token += 1
        self._tokens[wire_token] = event.token
        message = Request(self.node_id, wire_token, request.request_type, request.args)
        if self.phase is Phase.WAITING:
            self._outbox.append(message)  # sent after our JOIN, so the checkpoint precedes it
        else:
            self._emit(Multicast(message))

    def _late_request(self, event: LocalRequest) -> None:
        """A request after this node's departure: local copy only (semantics.md §2.3)."""
        self._emit(Answer(event.token, self._local_only(event.request)))

    def _local_only(self, request: LogRequest, *, warn: bool = True) -> Reply:
        """Apply this node's request to its own copy only, with a warning (§2.3)."""
        if warn:
            name = request.request_type.name
            self._emit(Warn(f"{name} after this node left the group: applied locally only"))
        try:
            outcome = self.instance.handle(request)
        except ClogfsError as exc:
            return Reply(error=_negative_errno(exc))
        return outcome if isinstance(outcome, Reply) else Reply()

    # -- ordered steps ---------------------------------------------------------------------

    def _step(self, event: Delivered | Membership) -> None:
        try:
            if isinstance(event, Membership) and event.quorate is not None:
                self.quorate = event.quorate
                if not event.quorate:
                    self._quorum_step()  # stale before the change is applied (no take-over write)
            if self.phase is Phase.WAITING:
                if isinstance(event, Membership) and self.node_id in event.joined:
                    self._own_join(event)
            elif self.phase is Phase.LOADING:
                self._buffer.append(event)
            elif self.phase is Phase.JOINING:
                self._joining_step(event)
            elif self.phase is Phase.SYNCED:
                self._apply(event)
            else:
                self._departing_step(event)
            if isinstance(event, Membership):
                if self.stale:
                    self._merged |= set(event.merged) & set(event.members)
                self._quorum_step()
                self._confirm()
        except ClusterProtocolError as exc:
            self._fail(f"cluster state unusable: {exc}")
        except LocalProtocolError:
            raise
        except Exception as exc:  # a bug while applying: leave rather than diverge (rule 9)
            self._fail(f"bug while applying a cluster step: {exc!r}")

    def _own_join(self, event: Membership) -> None:
        self.members = event.members
        previous = set(event.members) - set(event.joined)
        if not previous and self.node_id == min(event.members):
            self._become_first_member()
            return
        self._enter(Phase.JOINING)
        self._maybe_synced = previous or {min(event.members)}
        self._emit(Multicast(Join(self.node_id, self.session)))
        for message in self._outbox:
            self._emit(Multicast(message))
        self._outbox.clear()

    def _become_first_member(self) -> None:
        """Rule 6: load a disk log, reset a core log."""
        instance = self.instance
        self.synced = {self.node_id}
        self.leader = self.node_id
        instance.state.members = frozenset(self.synced)
        instance.cluster_writer = True
        if not self.is_disk and not instance.copy_current:
            instance.state.reset_to_ctr(nosync=instance.config.sync_mode is SyncMode.NOSYNC)
        outcome = instance.handle(LogRequest(RequestType.RESUME, None, self.node_id))
        for message in self._outbox:
            self._emit(Multicast(message))
        self._outbox.clear()
        if isinstance(outcome, AwaitLoad):
            self._enter(Phase.LOADING)
            self._emit(ReadDevice(instance.buffer_bytes))
            return
        self._enter(Phase.SYNCED)
        self._answer_resume(Reply())

    def _load_done(self, event: LoadDone) -> None:
        if self.phase is not Phase.LOADING:
            raise LocalProtocolError(f"LoadDone in phase {self.phase.value}")
        before = self.instance.state.device_state
        self.instance.load(event.data)
        if self.instance.state.device_state != before:
            self._emit(Warn("log device unreadable or of an incompatible version: state D"))
        self._enter(Phase.SYNCED)
        self.index = 0
        write = self.instance.begin_write()
        if write is None:  # cannot happen: a load makes the whole buffer pending
            raise LocalProtocolError("load left nothing to write")
        self._write = (write, self.index)
        self._resume_write = write.write_id
        self._emit(Write(write))
        buffered, self._buffer = self._buffer, []
        for step in buffered:
            if not self._synced():
                break
            self._step(step)

    # -- joining (rule 7) ------------------------------------------------------------------

    def _joining_step(self, event: Delivered | Membership) -> None:
        if self._since_yield is not None:
            self._track_yield(event)
        if isinstance(event, Membership):
            self.members = event.members
            self._maybe_synced -= {node for node, _reason in event.left}
            if self._join_delivered:
                self._buffer.append(event)
            if self._nobody_holds_the_state():
                self._restore()
            elif not self._maybe_synced:
                self._fail("every member holding the log state left before the checkpoint")
            return
        message = event.message
        if isinstance(message, CheckpointChunk) and message.seq == message.total - 1:
            self._maybe_synced.add(message.target)
        if not self._join_delivered:
            if message == Join(self.node_id, self.session) and event.sender == self.node_id:
                self._join_delivered = True
            elif (
                isinstance(message, Request) and event.sender == message.originator == self.node_id
            ):
                self._early_own_request(message)
            return
        self._buffer.append(event)
        if (
            isinstance(message, CheckpointChunk)
            and message.target == self.node_id
            and message.session == self.session
        ):
            self._checkpoint_piece(message)
        elif self._nobody_holds_the_state():
            self._restore()

    def _track_yield(self, event: Delivered | Membership) -> None:
        """Record a step after our yield, for :meth:`_restore` (rule 10)."""
        ours = False
        if isinstance(event, Membership):
            self._joins_seen -= {node for node, _reason in event.left}
        elif isinstance(event.message, Join) and event.sender == event.message.node:
            if event.sender == self.node_id:
                ours = event.message.session == self.session
            else:
                self._joins_seen.add(event.sender)
        elif isinstance(event.message, Request) and not self._join_delivered:
            ours = event.sender == event.message.originator == self.node_id
        assert self._since_yield is not None
        self._since_yield.append((event, ours))

    def _nobody_holds_the_state(self) -> bool:
        """After our yield: every member that could hold the state asks for it too, and we
        have the lowest id of them (rule 10): no checkpoint will come, ours is the copy."""
        if self._since_yield is None or self.phase is not Phase.JOINING:
            return False
        if not self._maybe_synced:
            return True
        return self._maybe_synced <= self._joins_seen and self.node_id < min(self._maybe_synced)

    def _restore(self) -> None:
        """No side kept the state through a partition: take our own copy back and lead.

        The steps since the yield are applied as if we had held the state all along (ours,
        applied already, only counted), so every JOIN among them is served a checkpoint at
        its own point; the yielders then re-assert their views on top (rule 10).
        """
        steps, self._since_yield = self._since_yield or [], None
        self._joins_seen = set()
        self._buffer, self._transfer, self._reassert = [], None, []
        self._lost_recovery = None  # our assignment is in the state again: its end counts
        self.index = 0
        self.synced, self.departed, self.joins = {self.node_id}, set(), {}
        self.leader = self.node_id
        self.instance.state.members = frozenset(self.synced)
        self._enter(Phase.SYNCED)
        for wait in self._waits:
            if wait.index == _UNCOVERED:
                wait.index = self.index
                wait.durable = not self.is_disk
        self._emit(Warn("no member kept the log state through the partition: this node's "
                        "copy is taken (the lowest id of those that yielded)"))  # fmt: skip
        self._take_over()
        for step, ours in steps:
            if self.phase is not Phase.SYNCED:
                break
            if ours:
                self.index += 1
            else:
                self._step(step)
        self._confirm()

    def _early_own_request(self, message: Request) -> None:
        """Our request sent before a yield, delivered before our JOIN (rule 10).

        The others applied it, so the checkpoint we get includes it. A FLUSH (or departure)
        waits like the held ones, covered by our re-assertion; the rest is answered from our
        own copy, as it would have been.
        """
        kind = message.request_type
        if kind in _DURABLE_KINDS:
            self._waits.append(_Wait(message.token, _UNCOVERED, kind))
            return
        self._answer(message.token, self._local_only(self._log_request(message), warn=False))

    def _checkpoint_piece(self, chunk: CheckpointChunk) -> None:
        transfer = self._transfer
        if chunk.seq == 0:
            transfer = self._transfer = _Transfer(chunk.taken_at, chunk.join_index, chunk.total)
        elif (
            transfer is None
            or chunk.taken_at != transfer.taken_at
            or chunk.total != transfer.total
            or chunk.seq != len(transfer.pieces)
        ):
            self._emit(Warn(f"checkpoint piece {chunk.seq}/{chunk.total} out of sequence"))
            return
        transfer.pieces.append(chunk.data)
        if len(transfer.pieces) == transfer.total:
            self._install(transfer)

    def _install(self, transfer: _Transfer) -> None:
        checkpoint = decode_checkpoint_state(b"".join(transfer.pieces))
        instance = self.instance
        if checkpoint.region_count != instance.config.region_count:
            self._fail(
                f"the group's log has {checkpoint.region_count} regions, this table "
                f"{instance.config.region_count}",
                resume_error=-errno.EINVAL,
            )
            return
        if checkpoint.index != transfer.taken_at:
            raise ClusterProtocolError(
                f"checkpoint index {checkpoint.index}, announced {transfer.taken_at}"
            )
        try:
            instance.install(
                checkpoint.fields, checkpoint.prefix, checkpoint.tail, rejoin=instance.resumed
            )
        except ValueError as exc:
            raise ClusterProtocolError(f"checkpoint refused: {exc}") from None
        self.index = checkpoint.index
        self.synced = set(checkpoint.synced)
        self.departed = set(checkpoint.departed)
        self.leader = checkpoint.leader
        self.joins = {join.node: join for join in checkpoint.joins}
        instance.state.members = frozenset(self.synced)
        instance.cluster_writer = False
        self._enter(Phase.SYNCED)
        self._answer_resume(Reply())
        for message in self._reassert:  # a yield (rule 10): what our kernel relies on
            self._emit(Multicast(message))
        self._reassert = []
        self._since_yield, self._joins_seen = None, set()
        if instance.state.recovering == (self._lost_recovery, self.node_id):
            self._lost_recovery = None  # the group's state still assigns it to us
        buffered, self._buffer = self._buffer, []
        for position, step in enumerate(buffered):
            if transfer.join_index + 1 + position > transfer.taken_at:
                if not self._synced():
                    break
                self._step(step)

    # -- applying (rules 2-5, 7, 8) ------------------------------------------------------------

    def _apply(self, event: Delivered | Membership) -> None:
        self.index += 1
        if isinstance(event, Membership):
            self._configuration_change(event)
        else:
            message = event.message
            if isinstance(message, Request):
                self._apply_request(event.sender, message)
            elif isinstance(message, Join):
                self._apply_join(event.sender, message)
            elif isinstance(message, CheckpointChunk):
                self._apply_checkpoint_piece(message)
            elif isinstance(message, Reassert):
                self._apply_reassert(event.sender, message)
            else:
                self._apply_durable(event.sender, message)
        if not self.is_leader and self.instance.state.has_pending():
            self.instance.state.take_pending()  # only the leader's changes reach the disk
        self._confirm()

    def _apply_request(self, sender: int, message: Request) -> None:
        if sender != message.originator:
            self._emit(Warn(f"REQUEST from node {sender} claims originator {message.originator}"))
            return
        mine = message.originator == self.node_id
        request = self._log_request(message)
        if message.originator in self.departed:
            # sent before its sender's departure was delivered: that instance is no longer
            # resumed, so the request acts on the sender's own copy only (semantics.md §2.3)
            if mine:
                self._answer(message.token, self._local_only(request))
            return
        kind = message.request_type
        state = self.instance.state
        try:
            if mine:
                outcome = self.instance.handle(request)
            elif kind is RequestType.PRESUSPEND:
                state.halt(message.originator)
                outcome = Reply()
            elif kind is RequestType.RESUME:
                state.unhalt(message.originator)
                outcome = Reply()
            elif kind in _DEPARTURES:
                state.depart_orderly(message.originator)
                self.synced.discard(message.originator)
                self.departed.add(message.originator)
                state.members = frozenset(self.synced)
                outcome = Reply()
            elif self.phase is Phase.SYNCED:
                outcome = self.instance.handle(request)
            else:
                outcome = self._apply_to_state(request)
        except KernelProtocolError as exc:
            if mine:
                self._answer(message.token, Reply(error=_negative_errno(exc)))
            return
        if kind in _DURABLE_KINDS and self.is_disk and self.is_leader:
            self._commit_wanted = True
        if mine and kind is RequestType.GET_RESYNC_WORK:
            self._lost_recovery = None  # the kernel is done with it: it asks for more
        if mine:
            if kind in _DEPARTURES:
                self.synced.discard(self.node_id)
                self.departed.add(self.node_id)
                state.members = frozenset(self.synced)
                self.instance.copy_current = not self.synced
            if kind in _DURABLE_KINDS:
                self._waits.append(_Wait(message.token, self.index, kind, durable=not self.is_disk))
            else:
                self._answer(message.token, outcome if isinstance(outcome, Reply) else Reply())
        self._kick()
        if mine and kind in _DEPARTURES:
            self._enter(Phase.DEPARTING)
            self._confirm()

    @staticmethod
    def _log_request(message: Request) -> LogRequest:
        return LogRequest(message.request_type, message.args, message.originator)

    def _apply_to_state(self, request: LogRequest) -> Reply:
        """A data-path request applied to the replicated state by a departing member.

        Its instance is no longer resumed (semantics.md §2.3 would answer GET_RESYNC_WORK
        ``{0, 0}`` without assigning), but the member keeps applying the group's steps exactly
        as the members holding the state do, so it can take over as leader (rule 8).

        Raises:
            KernelProtocolError: refused (a region out of range); nothing changed.
            ClusterProtocolError: arguments of the wrong shape.
        """
        state = self.instance.state
        kind = request.request_type
        args = request.args
        node = request.originator
        if kind in (RequestType.MARK_REGION, RequestType.CLEAR_REGION, RequestType.FLUSH):
            regions = () if args is None else args
            if not isinstance(regions, tuple):
                raise ClusterProtocolError(f"{kind.name} with arguments {args!r}")
            if not regions and kind is not RequestType.FLUSH:
                raise KernelProtocolError(f"{kind.name} without regions")
            if kind is RequestType.CLEAR_REGION:
                state.clear(regions, node)
            elif regions:
                state.mark(regions, node)
            return Reply()
        if kind is RequestType.SET_REGION_SYNC and isinstance(args, SetRegionSync):
            state.set_region_sync(args.region, args.in_sync, node)
            return Reply()
        if kind is RequestType.GET_RESYNC_WORK:
            assign, region = state.get_resync_work(node)
            return Reply(ResyncWork(int(assign), region))
        if kind is RequestType.IS_REMOTE_RECOVERING and isinstance(args, int):
            recovering, hint = state.is_remote_recovering(args, node)
            return Reply(RemoteRecovering(int(recovering), hint))
        raise ClusterProtocolError(f"{kind.name} with arguments {args!r}")

    def _apply_join(self, sender: int, message: Join) -> None:
        if sender != message.node or message.node in self.synced:
            self._emit(Warn(f"JOIN of node {message.node} from node {sender} ignored"))
            return
        join = PendingJoin(message.node, message.session, self.index)
        self.joins[message.node] = join
        if self.is_leader:
            self._send_checkpoint(join)

    def _apply_checkpoint_piece(self, chunk: CheckpointChunk) -> None:
        join = self.joins.get(chunk.target)
        if (
            chunk.seq == chunk.total - 1
            and join is not None
            and join.session == chunk.session
            and join.join_index == chunk.join_index
        ):
            del self.joins[chunk.target]
            self.synced.add(chunk.target)
            self.instance.state.members = frozenset(self.synced)

    def _apply_reassert(self, sender: int, message: Reassert) -> None:
        if sender != message.node or message.node not in self.synced:
            self._emit(Warn(f"REASSERT of node {message.node} from node {sender} ignored"))
            return
        try:
            self.instance.state.reassert(
                message.node,
                floor=message.floor,
                halted=message.halted,
                marks=message.marks,
                out_of_sync=message.out_of_sync,
            )
        except KernelProtocolError as exc:
            raise ClusterProtocolError(f"REASSERT of node {message.node}: {exc}") from None
        if message.node == self.node_id and message.last:
            for wait in self._waits:  # held across the yield: covered from here on
                if wait.index == _UNCOVERED:
                    wait.index = self.index
                    wait.durable = not self.is_disk
        if self.is_disk and self.is_leader:
            self._commit_wanted = True
            self._kick()

    def _apply_durable(self, sender: int, message: Durable) -> None:
        if sender != self.leader:
            self._emit(Warn(f"DURABLE from node {sender}, not the leader {self.leader}: ignored"))
            return
        self._durable(message)

    def _durable(self, message: Durable) -> None:
        if message.device_state != DEVICE_ALIVE:
            self.instance.state.fail_device(message.device_state)
        for wait in list(self._waits):
            if wait.index <= message.covers and not wait.durable:
                if message.ok:
                    wait.durable = True
                else:
                    self._waits.remove(wait)
                    self._answer(wait.token, Reply(error=-errno.EIO))

    def _configuration_change(self, event: Membership) -> None:
        self.members = event.members
        state = self.instance.state
        gone = sorted(node for node, _reason in event.left)
        for node, reason in sorted(event.left):
            self.joins.pop(node, None)
            if node in self.departed:
                self.departed.discard(node)
            elif node in self.synced:
                self.synced.discard(node)
                state.depart_crash(node)
                self._emit(
                    Warn(
                        f"node {node} left without suspending ({_reason_name(reason)}): its "
                        "marked regions are out of sync"
                    )
                )
        state.members = frozenset(self.synced)
        if self.leader in gone:
            # departed members still in the group hold the state too (rule 8)
            holders = self.synced or self.departed
            self.leader = min(holders) if holders else None
            if self.is_leader:
                self._take_over()

    def _take_over(self) -> None:
        """This node became leader: write the whole state, re-send open checkpoints."""
        self.instance.cluster_writer = True
        if self.is_disk:
            self.instance.state.mark_all_pending()
            self._commit_wanted = True
            self._kick()
        if self.phase is not Phase.SYNCED:
            return  # a departing leader stops applying steps: it serves no join
        for join in sorted(self.joins.values(), key=lambda j: j.join_index):
            self._send_checkpoint(join)

    def _send_checkpoint(self, join: PendingJoin) -> None:
        prefix, tail = self.instance.buffer_parts()
        checkpoint = CheckpointState(
            region_count=self.instance.config.region_count,
            index=self.index,
            fields=self.instance.state.export_fields(),
            leader=self.leader,
            synced=tuple(sorted(self.synced)),
            departed=tuple(sorted(self.departed)),
            joins=tuple(sorted(self.joins.values(), key=lambda j: j.node)),
            prefix=prefix,
            tail=tail,
        )
        pieces = split_checkpoint(encode_checkpoint_state(checkpoint), self.message_limit)
        for seq, piece in enumerate(pieces):
            chunk = CheckpointChunk(
                join.node, join.session, join.join_index, self.index, seq, len(pieces), piece
            )
            self._emit(Multicast(chunk))

    # -- departing (rule 8) ------------------------------------------------------------------

    def _departing_step(self, event: Delivered | Membership) -> None:
        if not self.is_leader:
            self._apply(event)  # may have to take over from a leader that leaves (rule 8)
            return
        if isinstance(event, Membership):
            self.members = event.members
            gone = {node for node, _reason in event.left}
            self.synced -= gone
            if self.leader in gone:
                self.leader = min(self.synced) if self.synced else None
            if self.leader is None and self._waits:
                for wait in self._waits:
                    self._answer(wait.token, Reply(error=-errno.EIO))
                self._waits.clear()
                self._emit(Warn("every member holding the log state left before our answers"))
        elif isinstance(event.message, Durable):
            self._durable(event.message)
        elif isinstance(event.message, Request) and event.sender == self.node_id:
            # sent before our departure was delivered: our own copy only (rule 2, §2.3)
            request = event.message
            if request.originator == self.node_id:
                self._answer(request.token, self._local_only(self._log_request(request)))
        self._confirm()

    # -- durability (rules 4, 5) ---------------------------------------------------------------

    def _kick(self) -> None:
        """Begin the next write if one is wanted and none is in flight (leader only)."""
        if self._write is not None or not self._commit_wanted or self.stale:
            return
        self._commit_wanted = False
        write = self.instance.begin_write()
        if write is None:
            state = self.instance.state.device_state
            self._emit(Multicast(Durable(self.index, True, state)))
            return
        self._write = (write, self.index)
        self._emit(Write(write))

    def _write_done(self, event: WriteDone) -> None:
        if self._write is None or self._write[0].write_id != event.write_id:
            raise LocalProtocolError(f"WriteDone for write {event.write_id}, not in flight")
        write, covers = self._write
        self._write = None
        ok = event.ok and event.flush_ok
        self.instance.end_write(write, ok=ok, flush_ok=event.flush_ok)
        state = self.instance.state.device_state
        if not ok:
            verb = "flush" if not event.flush_ok else "write"
            self._emit(Warn(f"Failed to {verb} header on dirty region log device; state {state}"))
        if self.phase is Phase.DONE:
            return
        self._emit(Multicast(Durable(covers, ok, state)))
        if write.write_id == self._resume_write:
            self._resume_write = None
            self._answer_resume(Reply() if ok else Reply(error=-errno.EIO))
        self._kick()

    # -- quorum and partitions (rule 10) -----------------------------------------------------

    def _quorum_step(self) -> None:
        """Become stale on losing quorum; on regaining it, yield after a merge or go on."""
        holding = self.phase in (Phase.SYNCED, Phase.DEPARTING)
        if not self.enforce_quorum or not holding:
            return
        if not self.quorate and not self.stale:
            self.stale = True
            self._merged.clear()
            self._emit(Warn("this node lost quorum: no log writes, no recovery and no FLUSH "
                            "confirmation until it returns"))  # fmt: skip
        elif self.quorate and self.stale:
            if self._merged:
                self._yield()
            else:
                self.stale = False
                self._kick()

    def _yield(self) -> None:
        """Quorum came back by a merge: drop this partition's state, rejoin, re-assert."""
        state = self.instance.state
        me = self.node_id
        merged = sorted(self._merged)
        self.stale = False
        self._merged.clear()
        self._commit_wanted = False
        self.instance.cluster_writer = False
        if self.phase is Phase.DEPARTING:
            # the others saw this node crash (its marks went out of sync there): nothing of
            # this copy may reach the device; the departure is answered as it is
            self._emit(Warn(f"partition merged with nodes {merged}: this departing node's "
                            "state is dropped, not written"))  # fmt: skip
            self.leader = None
            for wait in self._waits:
                wait.durable = True
            return
        marks = sorted(region for region, holders in state.marks.items() if me in holders)
        out_of_sync = [(first, last - first + 1) for first, last in state.sync.runs(False)]
        recovering = state.recovering
        self._lost_recovery = recovering[0] if recovering and recovering[1] == me else None
        self.session += 1  # a new membership of this node (the shell's next one is later)
        self._reassert = split_reassert(
            me, self.session, state.sync_search, me in state.halted, marks, out_of_sync,
            self.message_limit,
        )  # fmt: skip
        for wait in self._waits:
            wait.durable = False
            wait.index = _UNCOVERED
        self.synced, self.departed, self.joins, self.leader = set(), set(), {}, None
        state.members = frozenset()
        self._buffer, self._transfer, self._join_delivered = [], None, False
        self._since_yield, self._joins_seen = [], set()
        self._maybe_synced = set(self.members) - {me}
        self._enter(Phase.JOINING)
        self._emit(Warn(f"partition merged with nodes {merged}: this node's state yields to "
                        "the group's (it had no quorum); rejoining"))  # fmt: skip
        self._emit(Multicast(Join(me, self.session)))
        if not self._maybe_synced:
            self._restore()

    def _gated(self) -> bool:
        """Semantics §6.4: this node marks a region assigned for recovery to another node."""
        state = self.instance.state
        if self.phase is not Phase.SYNCED or state.recovering is None:
            return False
        region, node = state.recovering
        return node != self.node_id and self.node_id in state.marks.get(region, ())

    def _confirm(self) -> None:
        """Answer every durable wait that may be answered now (rule 5)."""
        if self._waits:
            quorum_ok = self.quorate or not self.enforce_quorum
            gated = self._gated()
            for wait in list(self._waits):
                if not wait.durable:
                    continue
                if wait.request_type is RequestType.FLUSH and (gated or not quorum_ok):
                    continue
                self._waits.remove(wait)
                self._answer(wait.token, Reply())
        if (
            self.phase is Phase.DEPARTING
            and not self._waits
            and not self._tokens  # our requests still on their way back to us (rule 8)
            and self._write is None
            and not self._commit_wanted
        ):
            self._finish()
