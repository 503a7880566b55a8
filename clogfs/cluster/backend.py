"""The cluster trio shell: one CPG group and one ``Replica`` per resumed log instance.

``ClusterBackend`` is what ``--cluster corosync`` adds to clogfsd (spec/cluster.md). For every
log instance the kernel resumes it starts a *member* task that joins the log's CPG group (named
by :func:`group_name` from the log uuid), builds the instance's :class:`Replica`, feeds it every
CPG event in corosync's total order and carries out its actions, in order:

- ``Multicast``: encoded and multicast at once (``CpgGroup.try_send``, a short IPC call to the
  local corosync) when nothing is queued; otherwise, or when corosync answers
  ``CS_ERR_TRY_AGAIN`` or the call fails, queued for the member's one sender task
  (``CpgGroup.send`` waits out ``CS_ERR_TRY_AGAIN``; a failure is raised there, in the member
  task). Either way messages leave in the order the replica produced them;
- ``Answer``: the waiting kernel request is answered through ``ClusterIO.answer``;
- ``Write`` / ``ReadDevice``: the service's device I/O for the instance (``ClusterIO.write_log`` /
  ``ClusterIO.read_log``) in a task of the member; the outcome goes back as ``WriteDone`` /
  ``LoadDone``;
- ``Warn``: logged at WARNING with the log's tag;
- ``Leave``: the queued messages are sent, then the group is left and the task ends. After
  an orderly departure (own POSTSUSPEND or DTR) the instance takes the service's local path
  again; a replica that gave up while the instance is still resumed leaves it *detached*
  (below), never served by the single-node path.

One quorum tracker per daemon (:meth:`ClusterBackend.track_quorum`) feeds ``QuorumChanged`` to
every replica; ``enforce_quorum=False`` (``--no-quorum``) skips it (always quorate). A presence
group (:meth:`ClusterBackend.watch_presence`, group ``clogfsd``) gives the node id and notices
corosync going away even while no log is resumed.

Corosync going away (decision): it is logged once, at ERROR, naming what it means. Every kernel
request of a member still waiting for the cluster is answered ``-EIO`` at once (never left to
hang). The member is then *detached*: read-only requests keep being answered from the local
copy by the service (they never reach the backend); PRESUSPEND, POSTSUSPEND and DTR are applied
to the local copy only (so the kernel can tear the mirror down), with the instance no longer the
writer of its log device (without the group, writing this node's view of the clean bits could
clear a region another node is writing); every other ordered request is answered ``-EIO``. A
later RESUME tries to join again and gets ``-EIO`` while corosync is down.

Error handling: a malformed cluster message is logged with its sender and dropped (every member
decodes alike, so every member drops it); a bug in a member task is logged with its traceback,
its waiting requests are answered ``-EIO`` and the member is detached; the daemon serves on.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from clogfs.cluster import messages
from clogfs.cluster.cpg import (
    ConfChange,
    CorosyncError,
    CorosyncGoneError,
    CpgGroup,
    CpgReason,
    Deliver,
    open_cpg_group,
)
from clogfs.cluster.quorum import QuorumTracker, open_quorum_tracker
from clogfs.cluster.replica import (
    Answer,
    Delivered,
    Leave,
    LoadDone,
    LocalRequest,
    Membership,
    Multicast,
    QuorumChanged,
    ReadDevice,
    Replica,
    ReplicaAction,
    ReplicaEvent,
    Warn,
    Write,
    WriteDone,
)
from clogfs.errors import ClogfsError, ClusterProtocolError, negative_errno
from clogfs.log.instance import LogInstance, LogRequest, Reply, WriteLog
from clogfs.netlink.requests import RequestType
from clogfs.registry import LogKey

log = logging.getLogger(__name__)

#: CPG group names have at most this many bytes (``struct cpg_name``, corosync/cpg.h)
CPG_MAX_NAME_LENGTH = 128
#: prefix of every log's group name
GROUP_PREFIX = b"clogfs-"
#: prefix of a hashed group name (a uuid too long to be used as is)
HASHED_PREFIX = b"clogfs#"
#: the presence group every cluster-mode clogfsd joins
PRESENCE_GROUP = b"clogfsd"
#: requests still applied to the local copy after the member lost its group
_LOCAL_AFTER_DETACH = frozenset({RequestType.PRESUSPEND, RequestType.POSTSUSPEND, RequestType.DTR})


def group_name(uuid: bytes) -> bytes:
    """The CPG group name of the log ``uuid``: stable, distinct per uuid, <= 128 bytes.

    ``clogfs-<uuid>`` when that fits; otherwise ``clogfs#`` and the SHA-256 of the uuid in hex.
    """
    name = GROUP_PREFIX + uuid
    if len(name) <= CPG_MAX_NAME_LENGTH and b"\0" not in uuid:
        return name
    return HASHED_PREFIX + hashlib.sha256(uuid).hexdigest().encode()


class ClusterIO(Protocol):
    """What the backend needs from the request service."""

    def answer(self, token: object, reply: Reply) -> None:
        """Answer the kernel request ``token`` (given to ``start_member``/``request``)."""

    async def write_log(self, instance: LogInstance, write: WriteLog) -> tuple[bool, bool]:
        """Perform ``write`` on the instance's log device; returns ``(ok, flush_ok)``."""

    async def read_log(self, instance: LogInstance, nbytes: int) -> bytes | None:
        """Read ``nbytes`` from offset 0 of the instance's log device; None on failure."""


class _Session:
    """Session numbers never reused by this daemon (wall-clock nanoseconds, increasing)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last


@dataclass
class _Member:
    """One resumed instance's membership of its log's group."""

    instance: LogInstance
    name: bytes
    io: ClusterIO
    resume_token: object
    replica: Replica | None = None
    detached: bool = False
    waiting: set[int] = field(default_factory=set)  # ids of tokens not answered yet
    tokens: dict[int, object] = field(default_factory=dict)
    outbox: trio.MemorySendChannel[bytes] | None = None
    outbox_closed: bool = False  # closed by Leave or detach: the sender drains, then leaves
    group: CpgGroup | None = None  # set while the sender task runs: direct multicasts allowed
    queued: int = 0  # messages handed to the sender task and not yet accepted by corosync
    nursery: trio.Nursery | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def tag(self) -> str:
        uuid = self.instance.config.uuid
        text = "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in uuid)
        return text[-8:]


class ClusterBackend:
    """The replicated logs of this daemon over corosync CPG (see the module docstring).

    Args:
        nursery: where member tasks run (the daemon's).
        node_id: this node's corosync node id (``CpgGroup.node_id`` of the presence group).
        enforce_quorum: hold FLUSH answers while this node is not quorate.
        message_limit: the largest cluster message (checkpoint pieces).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        node_id: int,
        *,
        enforce_quorum: bool = True,
        message_limit: int = messages.DEFAULT_MESSAGE_LIMIT,
    ) -> None:
        self.nursery = nursery
        self.node_id = node_id
        self.enforce_quorum = enforce_quorum
        self.message_limit = message_limit
        self.quorate = True
        self.corosync_gone = False
        self._quorum: QuorumTracker | None = None
        self._members: dict[LogKey, _Member] = {}
        self._by_name: dict[bytes, _Member] = {}
        self._sessions = _Session()

    # -- for the service --------------------------------------------------------------------

    @property
    def cluster_state(self) -> str:
        """``leader`` if this node leads any log's group, else ``member`` (FUSE ``node``)."""
        for member in self._members.values():
            if member.replica is not None and member.replica.is_leader:
                return "leader"
        return "member"

    def is_member(self, key: LogKey) -> bool:
        """Whether ordered requests of ``key`` go to the backend."""
        return key in self._members

    def members(self, key: LogKey) -> tuple[int, ...] | None:
        """Node ids of ``key``'s group, leader first; None if not a member."""
        member = self._members.get(key)
        if member is None:
            return None
        replica = member.replica
        if replica is None or member.detached:
            return (self.node_id,)
        nodes = sorted(replica.synced or {self.node_id})
        if replica.leader in nodes:
            nodes.remove(replica.leader)
            nodes.insert(0, replica.leader)
        return tuple(nodes)

    def start_member(self, instance: LogInstance, resume_token: object, io: ClusterIO) -> None:
        """The kernel resumes ``instance``: join its group; the RESUME is answered via ``io``.

        Raises:
            ValueError: the instance is already a member.
        """
        if instance.key in self._members:
            raise ValueError("instance is already a cluster member")
        member = _Member(instance, group_name(instance.config.uuid), io, resume_token)
        self._members[instance.key] = member
        member.tokens[id(resume_token)] = resume_token
        member.waiting.add(id(resume_token))
        self.nursery.start_soon(self._run_member, member)

    def request(self, key: LogKey, token: object, request: LogRequest) -> None:
        """An ordered request of a member's kernel; answered later through ``io.answer``."""
        member = self._members[key]
        member.tokens[id(token)] = token
        member.waiting.add(id(token))
        if member.detached or member.replica is None:
            self._detached_request(member, token, request)
            return
        self._feed(member, LocalRequest(token, request))

    # -- the member task --------------------------------------------------------------------

    async def _run_member(self, member: _Member) -> None:
        previous = self._by_name.get(member.name)
        if previous is not None:  # a table reload: the old instance's task must be gone first
            await previous.done.wait()
        self._by_name[member.name] = member
        try:
            async with open_cpg_group(member.name) as group:
                replica = Replica(
                    member.instance,
                    member.resume_token,
                    session=self._sessions.next(),
                    message_limit=min(self.message_limit, group.max_message_bytes),
                    enforce_quorum=self.enforce_quorum,
                    quorate=self.quorate,
                )
                send, receive = trio.open_memory_channel[bytes](math.inf)
                member.outbox = send
                member.replica = replica
                log.info("[%s] joined CPG group %r as node %d", member.tag, member.name,
                         group.node_id)  # fmt: skip
                async with trio.open_nursery() as nursery:
                    member.nursery = nursery
                    nursery.start_soon(self._sender, member, group, receive, nursery.cancel_scope)
                    await self._receiver(member, group)
        except* CorosyncGoneError as group:
            self._note_gone(group.exceptions[0])
            self._detach(member, "corosync went away")
        except* CorosyncError as group:
            log.error("[%s] cannot use CPG group %r: %s", member.tag, member.name,
                      group.exceptions[0])  # fmt: skip
            self._detach(member, "CPG failed")
        except* Exception as group:
            log.error("[%s] bug in the cluster member task; this log leaves its group",
                      member.tag, exc_info=group)  # fmt: skip
            self._detach(member, "bug")
        finally:
            if self._members.get(member.instance.key) is member:  # ended without Leave
                self._detach(member, "the member task ended")
            if self._by_name.get(member.name) is member:
                del self._by_name[member.name]
            member.done.set()

    async def _receiver(self, member: _Member, group: CpgGroup) -> None:
        while True:
            event = await group.receive()
            if isinstance(event, Deliver):
                try:
                    message = messages.decode(event.payload)
                except ClusterProtocolError as exc:
                    log.warning("[%s] malformed cluster message from node %d pid %d dropped: "
                                "%s", member.tag, event.node_id, event.pid, exc)  # fmt: skip
                    continue
                self._feed(member, Delivered(event.node_id, message))
            elif isinstance(event, ConfChange):
                self._feed(member, Membership(
                    tuple(sorted({m.node_id for m in event.members})),
                    tuple(sorted({a.node_id for a in event.joined})),
                    tuple(sorted((a.node_id, int(a.reason)) for a in event.left)),
                    merged=tuple(sorted({a.node_id for a in event.joined
                                         if a.reason == CpgReason.NODEUP})),
                    quorate=self._quorum_now(),
                ))  # fmt: skip

    async def _sender(
        self,
        member: _Member,
        group: CpgGroup,
        receive: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        member.group = group
        try:
            async for payload in receive:
                await group.send(payload)
                member.queued -= 1
        finally:
            member.group = None
        scope.cancel()  # Leave: everything sent, now leave the group

    def _feed(self, member: _Member, event: ReplicaEvent) -> None:
        replica = member.replica
        if replica is None or member.detached:
            return
        try:
            actions = replica.handle(event)
        except Exception:  # a bug: this log leaves its group, the daemon serves on
            log.exception("[%s] bug while handling %s; this log leaves its group", member.tag,
                          type(event).__name__)  # fmt: skip
            self._detach(member, "bug")
            if member.nursery is not None:
                member.nursery.cancel_scope.cancel()
            return
        self._carry_out(member, actions)

    def _carry_out(self, member: _Member, actions: list[ReplicaAction]) -> None:
        for action in actions:
            if isinstance(action, Multicast):
                self._multicast(member, messages.encode(action.message))
            elif isinstance(action, Answer):
                self._answer(member, action.token, action.reply)
            elif isinstance(action, Write):
                assert member.nursery is not None
                member.nursery.start_soon(self._write, member, action.write)
            elif isinstance(action, ReadDevice):
                assert member.nursery is not None
                member.nursery.start_soon(self._read, member, action.nbytes)
            elif isinstance(action, Warn):
                log.warning("[%s] %s", member.tag, action.text)
            else:
                assert isinstance(action, Leave)
                log.info("[%s] leaving CPG group %r", member.tag, member.name)
                if member.instance.resumed:  # the replica gave up (rule 9): no local path
                    member.detached = True
                    member.instance.cluster_writer = False
                else:  # departed (POSTSUSPEND, DTR) or never joined: the local path
                    self._forget(member)
                self._close_outbox(member)

    def _multicast(self, member: _Member, payload: bytes) -> None:
        """Multicast ``payload`` now if nothing is queued before it, else queue it (in order).

        A direct attempt that corosync answers ``CS_ERR_TRY_AGAIN``, or that fails, queues the
        message too: the sender task waits out ``CS_ERR_TRY_AGAIN``, and redoes a failed call
        so its error ends the member task exactly as it did before direct multicasts.
        """
        outbox = member.outbox
        assert outbox is not None
        group = member.group
        if group is not None and member.queued == 0 and not member.outbox_closed:
            try:
                if group.try_send(payload):
                    return
            except Exception:  # raised again by the sender task's send, in the member task
                pass
        outbox.send_nowait(payload)
        member.queued += 1

    @staticmethod
    def _close_outbox(member: _Member) -> None:
        """No more messages for the group (Leave, detach); those queued still go out."""
        if member.outbox is not None:
            member.outbox.close()
            member.outbox_closed = True

    async def _write(self, member: _Member, write: WriteLog) -> None:
        ok, flush_ok = await member.io.write_log(member.instance, write)
        self._feed(member, WriteDone(write.write_id, ok, flush_ok))

    async def _read(self, member: _Member, nbytes: int) -> None:
        data = await member.io.read_log(member.instance, nbytes)
        self._feed(member, LoadDone(data))

    def _answer(self, member: _Member, token: object, reply: Reply) -> None:
        member.waiting.discard(id(token))
        member.tokens.pop(id(token), None)
        member.io.answer(token, reply)

    # -- corosync gone, detached members ----------------------------------------------------

    def _note_gone(self, exc: BaseException) -> None:
        if not self.corosync_gone:
            self.corosync_gone = True
            log.error("corosync went away (%s): cluster logs can no longer be coordinated; "
                      "waiting ordered requests fail with EIO, reads are answered from the "
                      "local copy, suspend and remove apply locally", exc)  # fmt: skip

    def _detach(self, member: _Member, why: str) -> None:
        """The member lost its group: fail what waits, keep only local answers (docstring)."""
        if member.detached:
            return
        member.detached = True
        member.instance.cluster_writer = False
        self._close_outbox(member)
        waiting = [member.tokens[i] for i in list(member.waiting)]
        if waiting:
            log.error("[%s] %s: %d waiting request(s) answered EIO", member.tag, why,
                      len(waiting))  # fmt: skip
        for token in waiting:
            self._answer(member, token, Reply(error=-errno.EIO))
        if not member.instance.resumed:  # never got the state: a new RESUME tries again
            self._forget(member)

    def _forget(self, member: _Member) -> None:
        if self._members.get(member.instance.key) is member:
            del self._members[member.instance.key]

    def _detached_request(self, member: _Member, token: object, request: LogRequest) -> None:
        if request.request_type not in _LOCAL_AFTER_DETACH:
            self._answer(member, token, Reply(error=-errno.EIO))
            return
        try:
            outcome = member.instance.handle(request)
        except ClogfsError as exc:
            self._answer(member, token, Reply(error=negative_errno(exc)))
            return
        reply = outcome if isinstance(outcome, Reply) else Reply()
        if not member.instance.resumed:
            self._forget(member)  # suspended or removed: a later RESUME joins again
        self._answer(member, token, reply)

    # -- daemon-wide tasks ------------------------------------------------------------------

    def _quorum_now(self) -> bool | None:
        """This node's quorum at a configuration change, asked synchronously (None: unknown).

        The replica must know it before it applies the change: a node cut off from the
        others must not take over as leader and write the shared log device (replica rule
        10), and corosync's quorum notification arrives only after the CPG change.
        """
        if not self.enforce_quorum or self._quorum is None:
            return None
        try:
            return self._quorum.poll()
        except CorosyncError:
            return None  # corosync going away is reported by the groups and the tracker

    def _quorum_changed(self, quorate: bool) -> None:
        self.quorate = quorate
        for member in list(self._members.values()):
            self._feed(member, QuorumChanged(quorate))

    async def track_quorum(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed quorum changes to every replica; ``started()`` once the state is known.

        Raises:
            CorosyncGoneError: corosync is not running (before ``started()``).
            NoQuorumProviderError: corosync has no quorum provider (before ``started()``).
        """
        async with open_quorum_tracker() as tracker:
            self._quorum = tracker
            self._quorum_changed(tracker.quorate)
            task_status.started()
            try:
                while True:
                    state = await tracker.receive()
                    if state.quorate != self.quorate:
                        self._quorum_changed(state.quorate)
            except CorosyncGoneError as exc:
                self._note_gone(exc)
            finally:
                self._quorum = None

    async def watch_presence(self, group: CpgGroup) -> None:
        """Drain the presence group's events; notice corosync going away."""
        try:
            while True:
                await group.receive()
        except CorosyncGoneError as exc:
            self._note_gone(exc)  # each member's own group reports it too, and detaches
