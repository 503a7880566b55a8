"""ClusterHarness: replicas joined through an in-memory, totally ordered broadcast.

The harness plays CPG, the shells and the kernels of ``n`` nodes sharing one log:

- one ordered *bus* holds encoded cluster messages and configuration changes in their total
  order; :meth:`ClusterHarness.deliver` hands the next item to every member at that point of
  the order (messages go through ``messages.encode``/``decode`` on the way);
- each node's ``Write`` and ``ReadDevice`` actions queue against one shared in-memory disk
  (``bytearray``) and complete only when the test says so, ok or failing;
- nodes join (``resume``), depart in order (``suspend``), crash (``crash``: its undelivered
  messages are lost, its pending writes land or not), and lose quorum (``set_quorum``);
- the network splits (``partition``: each side sees the others leave with NODEDOWN and goes
  on with its own order) and heals (``heal``: each side sees the others come back with
  NODEUP, as corosync reports a merge); every change carries each node's quorum.

It also keeps the ground truth a kernel would have: the regions each node may be writing
(marks confirmed by a FLUSH answered 0 and not yet cleared) and the regions a crashed node may
have left half-written; :meth:`ClusterHarness.check_disk` asserts none of them is clean on the
disk image.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from clogfs.cluster import messages
from clogfs.cluster.replica import (
    Answer,
    Delivered,
    Leave,
    LeftReason,
    LoadDone,
    LocalRequest,
    Membership,
    Multicast,
    Phase,
    QuorumChanged,
    ReadDevice,
    Replica,
    ReplicaAction,
    ReplicaEvent,
    Warn,
    Write,
    WriteDone,
)
from clogfs.disklog.format import BITMAP_OFFSET, buffer_bytes
from clogfs.log.ctr import LogType, SyncMode
from clogfs.log.instance import DeviceInfo, LogInstance, LogRequest, Reply, WriteLog
from clogfs.netlink.requests import RequestType, ResyncWork, SetRegionSync
from clogfs.netlink.wire import Protocol
from tests.core.support import UUID, config

RT = RequestType


@dataclass
class Node:
    """One node: its instance, its replica while it is a member, and what its kernel saw."""

    node_id: int
    instance: LogInstance
    replica: Replica | None = None
    resume_token: object | None = None
    answers: dict[object, Reply] = field(default_factory=dict)
    sent: dict[object, LogRequest] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    writes: deque[WriteLog] = field(default_factory=deque)
    read_bytes: int | None = None
    reads_issued: int = 0
    writes_issued: list[WriteLog] = field(default_factory=list)
    quorate: bool = True
    requested: set[int] = field(default_factory=set)  # marked since the last FLUSH was sent
    flush_marks: dict[object, frozenset[int]] = field(default_factory=dict)
    confirmed: set[int] = field(default_factory=set)  # the kernel may be writing these
    assigned: int | None = None  # region handed out by GET_RESYNC_WORK

    @property
    def synced(self) -> bool:
        """A member holding the state whose RESUME was answered."""
        return (
            self.replica is not None
            and self.replica.phase is Phase.SYNCED
            and self.resume_token is not None
            and self.resume_token in self.answers
        )


Item = tuple[str, int | tuple[int, ...], bytes | Membership]  # ("msg", sender, bytes),
# ("conf", 0, change) for every member, ("side", nodes, change) for those nodes only


class ClusterHarness:
    """``n`` nodes (ids 1..n) sharing one log through an in-memory ordered group.

    Args:
        n: number of nodes created; ``start`` resumes them all (each joins in turn).
        region_count: regions of the log.
        log_type: clustered-disk or clustered-core.
        sync_mode: the table's sync word (the same on every node).
        message_limit: the largest cluster message (checkpoint pieces).
        enforce_quorum: hold FLUSH answers without quorum.
        disk: the initial log device bytes (default: zeros, a new log).
        start: resume every node and run until quiet.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        region_count: int = 64,
        log_type: LogType = LogType.DISK,
        sync_mode: SyncMode = SyncMode.DEFAULT,
        message_limit: int = messages.DEFAULT_MESSAGE_LIMIT,
        enforce_quorum: bool = True,
        disk: bytes | None = None,
        start: bool = True,
    ) -> None:
        self.region_count = region_count
        self.log_type = log_type
        self.sync_mode = sync_mode
        self.message_limit = message_limit
        self.enforce_quorum = enforce_quorum
        self.lbs = 512
        size = buffer_bytes(region_count, self.lbs)
        self.disk = bytearray(disk if disk is not None else bytes(size))
        self.bus: deque[Item] = deque()
        self.cpg_members: list[int] = []  # membership after everything on the bus
        self.delivered_members: tuple[int, ...] = ()  # membership at the delivery point
        self.views: dict[int, tuple[int, ...]] = {}  # per node, while partitioned
        self.nodes: dict[int, Node] = {}
        self.crash_marks: set[int] = set()
        self.crashed: set[int] = set()  # crash delivered, its next join not yet
        self.largest_message = 0
        self._tokens = itertools.count(1)
        self._sessions = itertools.count(1)
        for node_id in range(1, n + 1):
            self.add_node(node_id)
        if start:
            for node_id in range(1, n + 1):
                self.resume(node_id)
                self.run()

    # -- nodes ---------------------------------------------------------------------------------

    def add_node(self, node_id: int, *, region_count: int | None = None) -> Node:
        """Create (or re-create, after a crash) the node's CONSTRUCTED instance."""
        count = region_count or self.region_count
        cfg = config(count, log_type=self.log_type, sync_mode=self.sync_mode)
        device = None
        if self.log_type is LogType.DISK:
            device = DeviceInfo("7:2", "7:2", (0x702, 0), self.lbs, len(self.disk))
        instance = LogInstance((Protocol.ULOG, UUID, node_id), cfg, device, node_id=node_id)
        node = Node(node_id, instance)
        self.nodes[node_id] = node
        return node

    def resume(self, *node_ids: int) -> list[object]:
        """The nodes' kernels send RESUME: new replicas join the group in one change."""
        tokens: list[object] = []
        for node_id in node_ids:
            node = self.nodes[node_id]
            assert node.replica is None, "already a member"
            token = ("resume", node_id, next(self._tokens))
            node.resume_token = token
            node.replica = Replica(
                node.instance,
                token,
                session=next(self._sessions),
                message_limit=self.message_limit,
                enforce_quorum=self.enforce_quorum,
                quorate=node.quorate,
            )
            self.cpg_members.append(node_id)
            tokens.append(token)
        members = tuple(sorted(self.cpg_members))
        self.bus.append(("conf", 0, Membership(members, tuple(sorted(node_ids)))))
        return tokens

    def crash(self, node_id: int, *, land_writes: bool = False) -> None:
        """The node's daemon dies: undelivered messages lost, writes land or not."""
        node = self.nodes[node_id]
        assert node.replica is not None
        for write in node.writes:
            if land_writes:
                self._apply_write(write)
        node.writes.clear()
        node.read_bytes = None
        node.replica = None
        self.crash_marks |= node.confirmed
        node.confirmed.clear()
        self.bus = deque(item for item in self.bus if not (item[0] == "msg" and item[1] == node_id))
        self._leave(node_id, LeftReason.PROCDOWN)
        self.add_node(node_id)  # a restarted daemon starts from a new CTR

    def _leave(self, node_id: int, reason: LeftReason) -> None:
        self.cpg_members.remove(node_id)
        members = tuple(sorted(self.cpg_members))
        self.bus.append(("conf", 0, Membership(members, (), ((node_id, int(reason)),))))

    def partition(self, *sides: set[int], quorate: set[int] | frozenset[int] = frozenset()) -> None:
        """Split the group into ``sides``; nodes in ``quorate`` keep quorum, the rest lose it.

        Each side's change reaches only its members, at the same point of the bus; messages
        sent from then on reach only the sender's side.
        """
        members = set(self.cpg_members)
        for side in sides:
            mine = tuple(sorted(side & members))
            left = tuple((n, int(LeftReason.NODEDOWN)) for n in sorted(members - side))
            for node_id in mine:
                self.nodes[node_id].quorate = node_id in quorate
            change = Membership(mine, (), left, quorate=bool(set(mine) & quorate))
            self.bus.append(("side", mine, change))

    def heal(self) -> None:
        """The sides merge again; every node is quorate."""
        members = tuple(sorted(self.cpg_members))
        sides = {self.views.get(n, members) for n in members}
        for side in sides:
            others = tuple(n for n in members if n not in side)
            for node_id in side:
                self.nodes[node_id].quorate = True
            change = Membership(members, others, (), merged=others, quorate=True)
            self.bus.append(("side", side, change))

    def set_quorum(self, quorate: bool, *node_ids: int) -> None:
        """Tell the nodes (default: all) they gained or lost quorum."""
        for node_id in node_ids or tuple(self.nodes):
            node = self.nodes[node_id]
            node.quorate = quorate
            if node.replica is not None:
                self._feed(node, QuorumChanged(quorate))

    # -- the kernel ----------------------------------------------------------------------------

    def request(self, node_id: int, request_type: RequestType, args: object = None) -> object:
        """The node's kernel sends an ordered request; returns its token."""
        node = self.nodes[node_id]
        assert node.replica is not None
        token = (request_type.name, node_id, next(self._tokens))
        request = LogRequest(request_type, args, node_id)
        node.sent[token] = request
        if request_type is RT.MARK_REGION:
            node.requested |= set(args)  # type: ignore[call-overload]
        elif request_type is RT.FLUSH:
            node.requested |= set(args or ())  # type: ignore[call-overload]
            node.flush_marks[token] = frozenset(node.requested)
            node.requested = set()
        elif request_type is RT.CLEAR_REGION:
            node.requested -= set(args)  # type: ignore[call-overload]
            node.confirmed -= set(args)  # type: ignore[call-overload]
        elif request_type is RT.SET_REGION_SYNC:
            assert isinstance(args, SetRegionSync)
            if args.in_sync:
                self.crash_marks.discard(args.region)
        self._feed(node, LocalRequest(token, request))
        return token

    def suspend(self, node_id: int) -> tuple[object, object]:
        """PRESUSPEND then POSTSUSPEND (answered later, like every ordered request)."""
        return self.request(node_id, RT.PRESUSPEND), self.request(node_id, RT.POSTSUSPEND)

    def answer(self, node_id: int, token: object) -> Reply | None:
        """The reply the node's kernel got for ``token`` so far."""
        return self.nodes[node_id].answers.get(token)

    # -- the group and the devices -------------------------------------------------------------

    def deliver(self) -> bool:
        """Deliver the next bus item; False if the bus is empty."""
        if not self.bus:
            return False
        item = self.bus.popleft()
        kind, sender, payload = item
        if kind == "side":
            assert isinstance(payload, Membership)
            assert isinstance(sender, tuple)
            for node_id in sender:
                self.views[node_id] = payload.members
            everyone = tuple(sorted(self.cpg_members))
            if all(self.views.get(n) == everyone for n in everyone):
                self.views = {}  # healed: one view again
                self.delivered_members = payload.members
            for node_id in sender:
                self._deliver_to(node_id, payload)
            return True
        if kind == "conf":
            membership = payload
            assert isinstance(membership, Membership)
            self.delivered_members = membership.members
            self.crashed -= set(membership.joined)
            self.crashed |= {n for n, why in membership.left if why == LeftReason.PROCDOWN}
            for node_id in membership.members:
                self._deliver_to(node_id, membership)
            return True
        assert isinstance(payload, bytes)
        message = messages.decode(payload)
        assert isinstance(sender, int)
        receivers = self.views.get(sender, self.delivered_members)
        for node_id in receivers:
            self._deliver_to(node_id, Delivered(sender, message))
        return True

    def _deliver_to(self, node_id: int, event: ReplicaEvent) -> None:
        node = self.nodes[node_id]
        if node.replica is not None:
            self._feed(node, event)

    def complete_write(self, node_id: int, *, ok: bool = True, flush_ok: bool = True) -> bool:
        """End the node's oldest write; a failed write does not reach the disk."""
        node = self.nodes[node_id]
        if not node.writes:
            return False
        write = node.writes.popleft()
        if ok:
            self._apply_write(write)
        self._feed(node, WriteDone(write.write_id, ok, flush_ok))
        return True

    def complete_read(self, node_id: int, *, ok: bool = True) -> bool:
        """End the node's device read."""
        node = self.nodes[node_id]
        if node.read_bytes is None:
            return False
        data = bytes(self.disk[: node.read_bytes]) if ok else None
        node.read_bytes = None
        self._feed(node, LoadDone(data))
        return True

    def _apply_write(self, write: WriteLog) -> None:
        for offset, data in write.extents:
            self.disk[offset : offset + len(data)] = data

    def run(self, *, max_steps: int = 100_000) -> None:
        """Deliver and complete I/O (all ok) until nothing is left to do."""
        for _ in range(max_steps):
            progressed = self.deliver()
            for node_id in list(self.nodes):
                progressed |= self.complete_read(node_id)
                progressed |= self.complete_write(node_id)
            self.check_disk()
            if not progressed:
                return
        raise AssertionError("the cluster did not settle")

    # -- actions -------------------------------------------------------------------------------

    def _feed(self, node: Node, event: ReplicaEvent) -> None:
        assert node.replica is not None
        self._carry_out(node, node.replica.handle(event))

    def _carry_out(self, node: Node, actions: list[ReplicaAction]) -> None:
        for action in actions:
            if isinstance(action, Multicast):
                data = messages.encode(action.message)
                assert len(data) <= self.message_limit
                self.largest_message = max(self.largest_message, len(data))
                self.bus.append(("msg", node.node_id, data))
            elif isinstance(action, Answer):
                assert action.token not in node.answers, "answered twice"
                node.answers[action.token] = action.reply
                self._kernel_saw(node, action.token, action.reply)
            elif isinstance(action, Write):
                node.writes.append(action.write)
                node.writes_issued.append(action.write)
            elif isinstance(action, ReadDevice):
                assert node.read_bytes is None
                node.read_bytes = action.nbytes
                node.reads_issued += 1
            elif isinstance(action, Warn):
                node.warnings.append(action.text)
            else:
                assert isinstance(action, Leave)
                node.replica = None
                self._leave(node.node_id, LeftReason.LEAVE)

    def _kernel_saw(self, node: Node, token: object, reply: Reply) -> None:
        request = node.sent.get(token)
        if request is None or reply.error:
            return
        if request.request_type is RT.FLUSH:
            node.confirmed |= node.flush_marks.pop(token)
        elif request.request_type is RT.GET_RESYNC_WORK:
            assert isinstance(reply.result, ResyncWork)
            node.assigned = reply.result.region if reply.result.i else None

    # -- checks --------------------------------------------------------------------------------

    def disk_clean(self, region: int) -> bool:
        """The region's clean bit on the disk image."""
        return bool(self.disk[BITMAP_OFFSET + region // 8] >> (region % 8) & 1)

    def check_disk(self) -> None:
        """No region a kernel may be writing, or a crash may have torn, is clean on disk."""
        must_be_dirty = set(self.crash_marks)
        for node in self.nodes.values():
            must_be_dirty |= node.confirmed
        for region in must_be_dirty:
            assert not self.disk_clean(region), f"region {region} clean on disk while marked"

    def check_no_crashed_marks(self) -> None:
        """No member still holds a mark of a node that crashed (semantics.md §6.3)."""
        for node in self.synced_nodes():
            for region, holders in node.instance.state.marks.items():
                assert not holders & self.crashed, f"region {region} marked by crashed {holders}"

    def synced_nodes(self) -> list[Node]:
        """Members holding the state."""
        return [node for node in self.nodes.values() if node.synced]

    def leader(self) -> int | None:
        """The leader as the synced members see it (they must agree)."""
        leaders = {node.replica.leader for node in self.synced_nodes() if node.replica}
        assert len(leaders) <= 1, f"members disagree on the leader: {leaders}"
        return leaders.pop() if leaders else None

    def check_agreement(self) -> None:
        """Every member holding the state has the same replicated state and bookkeeping."""
        views = []
        for node in self.synced_nodes():
            replica = node.replica
            assert replica is not None
            views.append(
                (
                    node.instance.state.export_fields(),
                    replica.index,
                    replica.leader,
                    frozenset(replica.synced),
                    frozenset(replica.departed),
                    tuple(sorted(replica.joins.items())),
                    node.instance.state.members,
                )
            )
        for view in views[1:]:
            assert view == views[0]
