"""The cluster wire format: what replicas of one log multicast to each other through CPG.

Our own format (spec/cluster.md), separate from the kernel's: ``ClusterMessageType`` never
shares a number space with ``RequestType``. Every integer is little-endian (``<`` structs) so
mixed architectures agree (cmirrord bug #17 of semantics.md §8). Every message starts with
:data:`HEADER`: the wire version (:data:`CLUSTER_WIRE_VERSION`) and the message type.

==========  ==================================================================================
type        body after the header
==========  ==================================================================================
REQUEST     :data:`REQUEST_HEAD` originator u32, token u64, request_type u8 (the kernel's
            number of an ordered request), then the arguments: none (PRESUSPEND, POSTSUSPEND,
            RESUME, DTR, GET_RESYNC_WORK); count u32 + count x region u64 (FLUSH: count may be
            0; MARK_REGION, CLEAR_REGION: count >= 1); region u64 + in_sync u8 0/1
            (SET_REGION_SYNC); region u64 (IS_REMOTE_RECOVERING)
JOIN        :data:`JOIN_BODY` node u32, session u64: a joiner asks for the state
CHECKPOINT  :data:`CHECKPOINT_HEAD` target u32, session u64, join_index u64, taken_at u64,
            seq u32, total u32, then one piece of an encoded
            :class:`CheckpointState` (seq < total; the pieces concatenated in seq order)
DURABLE     :data:`DURABLE_BODY` covers u64, ok u8 0/1, device_state u8 (``A``/``D``/``F``):
            the leader's write of the state up to delivery ``covers`` ended
REASSERT    :data:`REASSERT_HEAD` node u32, session u64, floor u64, halted u8 0/1, last u8
            0/1, then count u32 + count x region u64 (the node's own marks), then count u32 +
            count x (start u64, length u64 >= 1) ranges of out-of-sync regions: what a node
            whose partition yielded at a merge re-asserts of its kernel's view (``replica.py``
            rule 10); one re-assertion may span several messages, the last with ``last`` 1
==========  ==================================================================================

A :class:`CheckpointState` (the checkpoint's payload, :func:`encode_checkpoint_state`) is
:data:`STATE_HEAD` (region_count u64, index u64, sync_count u64, sync_search u64, sticky u8
0/1, device_state u8, leader u32 with 0 for none), :data:`RECOVERING` (present u8 0/1, region
u64, node u32; zeros when absent), then counted lists, each a u32 count: priority (region
u64), marks (region u64, node count u16 >= 1, node u32 each), halted, synced and departed
(node u32), joins (:data:`PENDING_JOIN`: node u32, session u64, join_index u64),
then four counted byte strings (u32 length): the clean bitmap, the sync bitmap (both exactly
``bitset_bytes(region_count)``), the buffer prefix (0 or 1024 bytes) and the buffer tail.

Node ids are corosync's (u32, never 0). :func:`decode` and :func:`decode_checkpoint_state`
raise :class:`ClusterProtocolError` on anything malformed (truncated, trailing bytes, unknown
version or type, a value out of its range) and nothing else; :func:`encode` raises
``LocalProtocolError`` for a value that cannot be encoded (a bug in the sender).

Core module: no trio, no sockets, no cffi, no I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from clogfs.disklog.format import BITMAP_OFFSET, bitset_bytes
from clogfs.errors import ClusterProtocolError, LocalProtocolError
from clogfs.log.regions import (
    DEVICE_ALIVE,
    DEVICE_FAILED,
    DEVICE_FLUSH_FAILED,
    ReplicatedFields,
)
from clogfs.netlink.requests import RequestType, SetRegionSync

# Version history of the cluster wire format (bump on any change of any layout below):
#   1 - first version (issue #7): REQUEST, JOIN, CHECKPOINT, DURABLE; REASSERT (type 5) was
#       added before any release, no earlier layout changed.
CLUSTER_WIRE_VERSION = 1

# message header: u8 version, u8 ClusterMessageType
HEADER = struct.Struct("<BB")
# REQUEST: u32 originator, u64 token, u8 request_type (then the arguments)
REQUEST_HEAD = struct.Struct("<IQB")
# HEADER and REQUEST_HEAD together: a REQUEST's fixed part, packed and read in one go
REQUEST_FIXED = struct.Struct("<" + HEADER.format[1:] + REQUEST_HEAD.format[1:])
REGION_COUNT = struct.Struct("<I")  # u32 number of regions that follow
REGION = struct.Struct("<Q")  # u64 region
SET_SYNC_ARGS = struct.Struct("<QB")  # u64 region, u8 in_sync 0/1
# JOIN: u32 node, u64 session
JOIN_BODY = struct.Struct("<IQ")
# CHECKPOINT: u32 target, u64 session, u64 join_index, u64 taken_at, u32 seq, u32 total (then
# a piece of the encoded CheckpointState)
CHECKPOINT_HEAD = struct.Struct("<IQQQII")
# DURABLE: u64 covers, u8 ok, u8 device_state
DURABLE_BODY = struct.Struct("<QBB")
# REASSERT: u32 node, u64 session, u64 floor, u8 halted, u8 last (then the marks and the ranges)
REASSERT_HEAD = struct.Struct("<IQQBB")
RANGE = struct.Struct("<QQ")  # u64 start, u64 length

# CheckpointState: u64 region_count, u64 index, u64 sync_count, u64 sync_search, u8 sticky,
# u8 device_state, u32 leader (0: none)
STATE_HEAD = struct.Struct("<QQQQBBI")
RECOVERING = struct.Struct("<BQI")  # u8 present, u64 region, u32 node
COUNT = struct.Struct("<I")  # u32 list count or byte-string length
NODE = struct.Struct("<I")  # u32 node id
MARK_HEAD = struct.Struct("<QH")  # u64 region, u16 node count
PENDING_JOIN = struct.Struct("<IQQ")  # u32 node, u64 session, u64 join_index

CPG_MAX_ATOMIC_MSG_BYTES = 1_047_552  # cpg_max_atomic_msgsize_get() on corosync 3.1
DEFAULT_MESSAGE_LIMIT = 1_048_576 - 65_536  # 1 MiB minus headroom, below the CPG limit

_U16, _U32, _U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
_DEVICE_STATES = frozenset({DEVICE_ALIVE, DEVICE_FAILED, DEVICE_FLUSH_FAILED})


class ClusterMessageType(enum.IntEnum):
    """Cluster message types: our own number space, never the kernel's ``RequestType``."""

    REQUEST = 1  # an ordered kernel request, applied by every member
    JOIN = 2  # a joiner asks the leader for a checkpoint
    CHECKPOINT = 3  # one piece of a checkpoint for one join
    DURABLE = 4  # the leader's write up to a delivery ended (ok or failed)
    REASSERT = 5  # a node that yielded at a partition merge re-asserts its kernel's view


class ArgsShape(enum.Enum):
    """How the arguments of an ordered request are laid out on the cluster wire."""

    NONE = "none"
    REGIONS = "regions"  # count u32 + regions, count may be 0
    REGIONS_NONEMPTY = "regions_nonempty"  # count u32 >= 1 + regions
    SET_SYNC = "set_sync"
    REGION = "region"


# the requests that travel through the group, and their argument layout
ORDERED_REQUESTS: dict[RequestType, ArgsShape] = {
    RequestType.DTR: ArgsShape.NONE,
    RequestType.PRESUSPEND: ArgsShape.NONE,
    RequestType.POSTSUSPEND: ArgsShape.NONE,
    RequestType.RESUME: ArgsShape.NONE,
    RequestType.FLUSH: ArgsShape.REGIONS,
    RequestType.MARK_REGION: ArgsShape.REGIONS_NONEMPTY,
    RequestType.CLEAR_REGION: ArgsShape.REGIONS_NONEMPTY,
    RequestType.GET_RESYNC_WORK: ArgsShape.NONE,
    RequestType.SET_REGION_SYNC: ArgsShape.SET_SYNC,
    RequestType.IS_REMOTE_RECOVERING: ArgsShape.REGION,
}
# the same by the kernel's request number (REQUEST decoding)
_ORDERED_BY_NUMBER: dict[int, tuple[RequestType, ArgsShape]] = {
    int(kind): (kind, shape) for kind, shape in ORDERED_REQUESTS.items()
}


@dataclass(frozen=True)
class Request:
    """An ordered kernel request entering the cluster at ``originator``.

    ``args`` has the shape the instance expects (``netlink.requests``): None, a tuple of
    regions, a region, or :class:`SetRegionSync`. ``token`` is the originator's own number
    for the request (it answers its kernel when this message is delivered).
    """

    originator: int
    token: int
    request_type: RequestType
    args: object = None


@dataclass(frozen=True)
class Join:
    """A joiner (``node``) asks for the state; ``session`` names this membership of it."""

    node: int
    session: int


@dataclass(frozen=True)
class CheckpointChunk:
    """Piece ``seq`` of ``total`` of the checkpoint for one join.

    The state is the one after delivery ``taken_at``; the join's JOIN was delivery
    ``join_index``. Indices are the group's delivery count (semantics of ``replica.py``).
    """

    target: int
    session: int
    join_index: int
    taken_at: int
    seq: int
    total: int
    data: bytes


@dataclass(frozen=True)
class Durable:
    """The leader's write of the state up to delivery ``covers`` ended (``ok`` or not);
    ``device_state`` is the leader's device state after it."""

    covers: int
    ok: bool
    device_state: str


@dataclass(frozen=True)
class Reassert:
    """Node ``node``, after yielding its partition's state at a merge and installing the
    group's checkpoint (join ``session``), re-asserts what its kernel relies on.

    ``floor``: the resync cursor its kernel may hold hints up to; ``halted``: its recovery is
    stopped (PRESUSPEND seen); ``marks``: regions it holds marked; ``out_of_sync``: ``(start,
    length)`` ranges of regions its copy had out of sync. ``last`` ends one re-assertion
    (several messages when it is larger than the message limit).
    """

    node: int
    session: int
    floor: int
    halted: bool
    last: bool
    marks: tuple[int, ...] = ()
    out_of_sync: tuple[tuple[int, int], ...] = ()


ClusterMessage = Request | Join | CheckpointChunk | Durable | Reassert


@dataclass(frozen=True)
class PendingJoin:
    """A JOIN delivered and not yet answered by a complete checkpoint."""

    node: int
    session: int
    join_index: int


@dataclass(frozen=True)
class CheckpointState:
    """Everything a joiner installs (semantics.md §6.2), plus the group's bookkeeping.

    Attributes:
        region_count: the log's region count (must equal the joiner's).
        index: the delivery index the state is taken after.
        fields: the replicated region state.
        leader: the writer, or None.
        synced: members that hold the state and apply deliveries.
        departed: members that departed in order (POSTSUSPEND/DTR delivered) but have not
            left the group yet.
        joins: JOINs not yet answered by a complete checkpoint.
        prefix: the log buffer's bytes 0-1023 (disk logs), else empty.
        tail: the log buffer's bytes after the bitmap (disk logs), else empty.
    """

    region_count: int
    index: int
    fields: ReplicatedFields
    leader: int | None
    synced: tuple[int, ...]
    departed: tuple[int, ...]
    joins: tuple[PendingJoin, ...]
    prefix: bytes = b""
    tail: bytes = b""


# --- encoding ---------------------------------------------------------------------------------


def _pack(fmt: struct.Struct, *values: int) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode {values!r}: {exc}") from None


def _node(node: int) -> int:
    if not 0 < node <= _U32:
        raise LocalProtocolError(f"node id {node} out of range")
    return node


def _regions(values: Sequence[int]) -> bytes:
    """The count and the regions, in one pack (REGION_COUNT then REGION each)."""
    try:
        return struct.pack(f"<I{len(values)}Q", len(values), *values)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode regions {values!r}: {exc}") from None


def _encode_args(request_type: RequestType, args: object) -> bytes:
    shape = ORDERED_REQUESTS.get(request_type)
    if shape is None:
        raise LocalProtocolError(f"{request_type.name} is not an ordered request")
    if shape is ArgsShape.NONE:
        if args is not None:
            raise LocalProtocolError(f"{request_type.name} takes no arguments, got {args!r}")
        return b""
    if shape in (ArgsShape.REGIONS, ArgsShape.REGIONS_NONEMPTY):
        if args is None and shape is ArgsShape.REGIONS:
            args = ()
        if not isinstance(args, tuple) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in args
        ):
            raise LocalProtocolError(f"{request_type.name} with arguments {args!r}")
        if not args and shape is ArgsShape.REGIONS_NONEMPTY:
            raise LocalProtocolError(f"{request_type.name} without regions")
        return _regions(args)
    if shape is ArgsShape.SET_SYNC:
        if not isinstance(args, SetRegionSync):
            raise LocalProtocolError(f"SET_REGION_SYNC with arguments {args!r}")
        return _pack(SET_SYNC_ARGS, args.region, int(bool(args.in_sync)))
    if not isinstance(args, int) or isinstance(args, bool):
        raise LocalProtocolError(f"{request_type.name} with arguments {args!r}")
    return _pack(REGION, args)


def _body(msg: ClusterMessage) -> tuple[ClusterMessageType, bytes]:
    if isinstance(msg, Join):
        return ClusterMessageType.JOIN, _pack(JOIN_BODY, _node(msg.node), msg.session)
    if isinstance(msg, CheckpointChunk):
        if not 0 <= msg.seq < msg.total:
            raise LocalProtocolError(f"checkpoint piece {msg.seq} of {msg.total}")
        head = _pack(
            CHECKPOINT_HEAD,
            _node(msg.target),
            msg.session,
            msg.join_index,
            msg.taken_at,
            msg.seq,
            msg.total,
        )
        return ClusterMessageType.CHECKPOINT, head + msg.data
    if isinstance(msg, Durable):
        if msg.device_state not in _DEVICE_STATES:
            raise LocalProtocolError(f"device state {msg.device_state!r}")
        body = _pack(DURABLE_BODY, msg.covers, int(msg.ok), ord(msg.device_state))
        return ClusterMessageType.DURABLE, body
    if isinstance(msg, Reassert):
        if any(length < 1 for _start, length in msg.out_of_sync):
            raise LocalProtocolError(f"empty out-of-sync range in {msg.out_of_sync!r}")
        head = _pack(
            REASSERT_HEAD, _node(msg.node), msg.session, msg.floor, int(msg.halted), int(msg.last)
        )
        ranges = b"".join(_pack(RANGE, start, length) for start, length in msg.out_of_sync)
        body = head + _regions(msg.marks) + _pack(COUNT, len(msg.out_of_sync)) + ranges
        return ClusterMessageType.REASSERT, body
    raise LocalProtocolError(f"not a cluster message: {msg!r}")


def encode(msg: ClusterMessage) -> bytes:
    """The wire bytes of ``msg``.

    Raises:
        LocalProtocolError: a value does not fit its field (a bug in the sender).
    """
    if isinstance(msg, Request):  # the common message: header and fixed part in one pack
        head = _pack(REQUEST_FIXED, CLUSTER_WIRE_VERSION, ClusterMessageType.REQUEST,
                     _node(msg.originator), msg.token, int(msg.request_type))  # fmt: skip
        return head + _encode_args(msg.request_type, msg.args)
    kind, body = _body(msg)
    return HEADER.pack(CLUSTER_WIRE_VERSION, kind) + body


# --- decoding ---------------------------------------------------------------------------------


class _Reader:
    """Reads a byte string front to back; every shortfall is a ``ClusterProtocolError``."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise ClusterProtocolError(f"{self._what} truncated at byte {self._pos}")
        piece = bytes(self._data[self._pos : end])
        self._pos = end
        return piece

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return tuple(fmt.unpack(self.take(fmt.size)))

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def count(self, item_size: int) -> int:
        """A u32 count whose items (``item_size`` bytes each, at least) must fit the rest."""
        (n,) = self.unpack(COUNT)
        if n * item_size > len(self._data) - self._pos:
            raise ClusterProtocolError(f"{self._what}: count {n} exceeds the message")
        return n

    def end(self) -> None:
        if self._pos != len(self._data):
            extra = len(self._data) - self._pos
            raise ClusterProtocolError(f"{self._what}: {extra} trailing bytes")


def _flag(value: int, what: str) -> bool:
    if value not in (0, 1):
        raise ClusterProtocolError(f"{what} is {value}, not 0 or 1")
    return bool(value)


def _checked_node(value: int, what: str) -> int:
    if value == 0:
        raise ClusterProtocolError(f"{what}: node id 0")
    return value


def _device_state(value: int) -> str:
    letter = chr(value)
    if letter not in _DEVICE_STATES:
        raise ClusterProtocolError(f"device state byte {value:#x}")
    return letter


def _decode_request(data: bytes) -> Request:
    """A REQUEST (version and type already checked), read in place with ``unpack_from``:
    every ordered kernel request costs one of these on every member, so it skips the
    ``_Reader`` copies; the checks are the same."""
    size = len(data)
    if size < REQUEST_FIXED.size:
        raise _request_truncated(size)
    _version, _kind, originator, token, raw_type = REQUEST_FIXED.unpack_from(data)
    entry = _ORDERED_BY_NUMBER.get(raw_type)
    if entry is None:
        try:
            name = RequestType(raw_type).name
        except ValueError:
            raise ClusterProtocolError(f"request type {raw_type} unknown") from None
        raise ClusterProtocolError(f"{name} is not an ordered request")
    request_type, shape = entry
    at = REQUEST_FIXED.size
    args: object = None
    if shape is ArgsShape.REGIONS or shape is ArgsShape.REGIONS_NONEMPTY:
        if size < at + COUNT.size:
            raise _request_truncated(size)
        (n,) = COUNT.unpack_from(data, at)
        at += COUNT.size
        if n * REGION.size > size - at:
            raise ClusterProtocolError(f"REQUEST: count {n} exceeds the message")
        if n == 0 and shape is ArgsShape.REGIONS_NONEMPTY:
            raise ClusterProtocolError(f"{request_type.name} without regions")
        args = struct.unpack_from(f"<{n}Q", data, at)
        at += n * REGION.size
    elif shape is ArgsShape.SET_SYNC:
        if size < at + SET_SYNC_ARGS.size:
            raise _request_truncated(size)
        region, in_sync = SET_SYNC_ARGS.unpack_from(data, at)
        args = SetRegionSync(region, _flag(in_sync, "in_sync"))
        at += SET_SYNC_ARGS.size
    elif shape is ArgsShape.REGION:
        if size < at + REGION.size:
            raise _request_truncated(size)
        (args,) = REGION.unpack_from(data, at)
        at += REGION.size
    if at != size:
        raise ClusterProtocolError(f"REQUEST: {size - at} trailing bytes")
    return Request(_checked_node(originator, "REQUEST"), token, request_type, args)


def _request_truncated(size: int) -> ClusterProtocolError:
    return ClusterProtocolError(f"REQUEST truncated: {size} bytes")


def _decode_checkpoint(reader: _Reader) -> CheckpointChunk:
    target, session, join_index, taken_at, seq, total = reader.unpack(CHECKPOINT_HEAD)
    if not seq < total:
        raise ClusterProtocolError(f"checkpoint piece {seq} of {total}")
    if taken_at < join_index:
        raise ClusterProtocolError(f"checkpoint taken at {taken_at} before its join {join_index}")
    data = reader.rest()
    return CheckpointChunk(
        _checked_node(target, "CHECKPOINT"),
        session,
        join_index,
        taken_at,
        seq,
        total,
        data,
    )


def _decode_reassert(reader: _Reader) -> Reassert:
    node, session, floor, halted, last = reader.unpack(REASSERT_HEAD)
    n = reader.count(REGION.size)
    marks = struct.unpack(f"<{n}Q", reader.take(n * REGION.size))
    n = reader.count(RANGE.size)
    flat = struct.unpack(f"<{2 * n}Q", reader.take(n * RANGE.size))
    ranges = tuple(zip(flat[0::2], flat[1::2], strict=True))
    if any(length == 0 for _start, length in ranges):
        raise ClusterProtocolError("REASSERT: empty out-of-sync range")
    return Reassert(
        _checked_node(node, "REASSERT"),
        session,
        floor,
        _flag(halted, "REASSERT halted"),
        _flag(last, "REASSERT last"),
        marks,
        ranges,
    )


def decode(data: bytes) -> ClusterMessage:
    """The message in ``data``.

    Raises:
        ClusterProtocolError: ``data`` is not exactly one well-formed message of this version.
    """
    if len(data) < HEADER.size:
        raise ClusterProtocolError(f"cluster message truncated at byte {len(data)}")
    version, raw_kind = HEADER.unpack_from(data)
    if version != CLUSTER_WIRE_VERSION:
        raise ClusterProtocolError(
            f"cluster wire version {version}, expected {CLUSTER_WIRE_VERSION}"
        )
    if raw_kind == ClusterMessageType.REQUEST:
        return _decode_request(data)
    try:
        kind = ClusterMessageType(raw_kind)
    except ValueError:
        raise ClusterProtocolError(f"cluster message type {raw_kind} unknown") from None
    reader = _Reader(data, "cluster message")
    reader.take(HEADER.size)
    msg: ClusterMessage
    if kind is ClusterMessageType.JOIN:
        node, session = reader.unpack(JOIN_BODY)
        msg = Join(_checked_node(node, "JOIN"), session)
    elif kind is ClusterMessageType.CHECKPOINT:
        msg = _decode_checkpoint(reader)
    elif kind is ClusterMessageType.REASSERT:
        msg = _decode_reassert(reader)
    else:
        covers, ok, state = reader.unpack(DURABLE_BODY)
        msg = Durable(covers, _flag(ok, "DURABLE ok"), _device_state(state))
    reader.end()
    return msg


# --- checkpoint state -------------------------------------------------------------------------


def _nodes(values: Sequence[int]) -> bytes:
    return _pack(COUNT, len(values)) + b"".join(_pack(NODE, _node(v)) for v in values)


def _blob(value: bytes) -> bytes:
    return _pack(COUNT, len(value)) + value


def encode_checkpoint_state(cp: CheckpointState) -> bytes:
    """The bytes of ``cp`` (sent in :class:`CheckpointChunk` pieces).

    Raises:
        LocalProtocolError: a value does not fit its field.
    """
    f = cp.fields
    if f.device_state not in _DEVICE_STATES:
        raise LocalProtocolError(f"device state {f.device_state!r}")
    parts = [
        _pack(
            STATE_HEAD,
            cp.region_count,
            cp.index,
            f.sync_count,
            f.sync_search,
            int(f.in_sync_sticky),
            ord(f.device_state),
            0 if cp.leader is None else _node(cp.leader),
        ),
        _pack(RECOVERING, 0, 0, 0)
        if f.recovering is None
        else _pack(RECOVERING, 1, f.recovering[0], _node(f.recovering[1])),
        _pack(COUNT, len(f.priority)),
        *(_pack(REGION, r) for r in f.priority),
        _pack(COUNT, len(f.marks)),
    ]
    for region, holders in f.marks:
        if not holders:
            raise LocalProtocolError(f"mark on region {region} without a node")
        parts.append(_pack(MARK_HEAD, region, len(holders)))
        parts.extend(_pack(NODE, _node(n)) for n in holders)
    parts += [_nodes(f.halted), _nodes(cp.synced), _nodes(cp.departed), _pack(COUNT, len(cp.joins))]
    parts.extend(_pack(PENDING_JOIN, _node(j.node), j.session, j.join_index) for j in cp.joins)
    parts += [_blob(f.clean), _blob(f.sync), _blob(cp.prefix), _blob(cp.tail)]
    return b"".join(parts)


def _read_nodes(reader: _Reader, what: str) -> tuple[int, ...]:
    n = reader.count(NODE.size)
    nodes = struct.unpack(f"<{n}I", reader.take(n * NODE.size))
    for node in nodes:
        _checked_node(node, what)
    return nodes


def decode_checkpoint_state(data: bytes) -> CheckpointState:
    """The checkpoint state in ``data`` (the pieces of one checkpoint, concatenated).

    Structure only: lengths, ranges, flags. Whether the fields are consistent (I1-I4) is
    checked when they are installed.

    Raises:
        ClusterProtocolError: ``data`` is not exactly one well-formed checkpoint state.
    """
    reader = _Reader(data, "checkpoint")
    region_count, index, sync_count, sync_search, sticky, state, leader = reader.unpack(STATE_HEAD)
    present, rec_region, rec_node = reader.unpack(RECOVERING)
    recovering: tuple[int, int] | None = None
    if _flag(present, "recovering present"):
        recovering = (rec_region, _checked_node(rec_node, "recovering"))
    elif rec_region or rec_node:
        raise ClusterProtocolError("absent recovering assignment with a value")
    n = reader.count(REGION.size)
    priority = struct.unpack(f"<{n}Q", reader.take(n * REGION.size))
    marks = []
    for _ in range(reader.count(MARK_HEAD.size)):
        region, holders = reader.unpack(MARK_HEAD)
        if holders == 0:
            raise ClusterProtocolError(f"mark on region {region} without a node")
        nodes = struct.unpack(f"<{holders}I", reader.take(holders * NODE.size))
        for node in nodes:
            _checked_node(node, "mark")
        marks.append((region, nodes))
    halted = _read_nodes(reader, "halted")
    synced = _read_nodes(reader, "synced")
    departed = _read_nodes(reader, "departed")
    joins = []
    for _ in range(reader.count(PENDING_JOIN.size)):
        node, session, join_index = reader.unpack(PENDING_JOIN)
        joins.append(PendingJoin(_checked_node(node, "join"), session, join_index))
    blobs = []
    for _ in range(4):
        blobs.append(reader.take(reader.count(1)))
    reader.end()
    clean, sync, prefix, tail = blobs
    size = bitset_bytes(region_count)
    if len(clean) != size or len(sync) != size:
        raise ClusterProtocolError(
            f"checkpoint bitmaps of {len(clean)}/{len(sync)} bytes for {region_count} regions"
        )
    if len(prefix) not in (0, BITMAP_OFFSET):
        raise ClusterProtocolError(f"checkpoint buffer prefix of {len(prefix)} bytes")
    fields = ReplicatedFields(
        clean=clean,
        sync=sync,
        sync_count=sync_count,
        sync_search=sync_search,
        recovering=recovering,
        priority=priority,
        marks=tuple(marks),
        in_sync_sticky=_flag(sticky, "sticky"),
        halted=halted,
        device_state=_device_state(state),
    )
    return CheckpointState(
        region_count=region_count,
        index=index,
        fields=fields,
        leader=leader or None,
        synced=synced,
        departed=departed,
        joins=tuple(joins),
        prefix=prefix,
        tail=tail,
    )


def split_checkpoint(data: bytes, message_limit: int = DEFAULT_MESSAGE_LIMIT) -> list[bytes]:
    """Cut an encoded checkpoint state into pieces whose messages fit ``message_limit`` bytes.

    Raises:
        LocalProtocolError: the limit leaves no room for data.
    """
    room = message_limit - HEADER.size - CHECKPOINT_HEAD.size
    if room <= 0:
        raise LocalProtocolError(f"message limit {message_limit} leaves no room for data")
    return [data[i : i + room] for i in range(0, len(data), room)] or [b""]


def split_reassert(
    node: int,
    session: int,
    floor: int,
    halted: bool,
    marks: Sequence[int],
    out_of_sync: Sequence[tuple[int, int]],
    message_limit: int = DEFAULT_MESSAGE_LIMIT,
) -> list[Reassert]:
    """One re-assertion as :class:`Reassert` messages of at most ``message_limit`` bytes.

    Every message carries ``floor`` and ``halted``; the marks and ranges are spread over them
    in order; only the last has ``last`` set. There is always at least one message.
    """
    room = message_limit - HEADER.size - REASSERT_HEAD.size - 2 * COUNT.size
    if room < RANGE.size:
        raise LocalProtocolError(f"message limit {message_limit} too small for REASSERT")
    pieces: list[tuple[list[int], list[tuple[int, int]]]] = [([], [])]
    used = 0
    for mark in marks:
        if used + REGION.size > room:
            pieces.append(([], []))
            used = 0
        pieces[-1][0].append(mark)
        used += REGION.size
    for span in out_of_sync:
        if used + RANGE.size > room:
            pieces.append(([], []))
            used = 0
        pieces[-1][1].append(span)
        used += RANGE.size
    last = len(pieces) - 1
    return [
        Reassert(node, session, floor, halted, i == last, tuple(piece_marks), tuple(piece_ranges))
        for i, (piece_marks, piece_ranges) in enumerate(pieces)
    ]
