"""The cluster wire format: byte tables both ways, prefixes, refusals, hypothesis round trips."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.cluster import messages
from clogfs.cluster.messages import (
    CLUSTER_WIRE_VERSION,
    ORDERED_REQUESTS,
    ArgsShape,
    CheckpointChunk,
    CheckpointState,
    ClusterMessage,
    ClusterMessageType,
    Durable,
    Join,
    PendingJoin,
    Reassert,
    Request,
    decode,
    decode_checkpoint_state,
    encode,
    encode_checkpoint_state,
    split_checkpoint,
    split_reassert,
)
from clogfs.cluster.replica import LeftReason
from clogfs.disklog.format import bitset_bytes
from clogfs.errors import ClusterProtocolError, LocalProtocolError
from clogfs.log.regions import ReplicatedFields
from clogfs.netlink.requests import RequestType, SetRegionSync
from tests.core.test_purity import forbidden_imports

RT = RequestType
ROOT = Path(__file__).resolve().parents[2]

TABLE: list[tuple[ClusterMessage, str]] = [
    (
        Request(2, 7, RT.MARK_REGION, (5, 9)),
        "01 01 02000000 0700000000000000 0a 02000000 0500000000000000 0900000000000000",
    ),
    (Request(1, 1, RT.FLUSH, ()), "01 01 01000000 0100000000000000 09 00000000"),
    (
        Request(3, 0x0102030405060708, RT.CLEAR_REGION, (1,)),
        "01 01 03000000 0807060504030201 0b 01000000 0100000000000000",
    ),
    (
        Request(1, 2, RT.SET_REGION_SYNC, SetRegionSync(3, True)),
        "01 01 01000000 0200000000000000 0d 0300000000000000 01",
    ),
    (
        Request(1, 3, RT.IS_REMOTE_RECOVERING, 0x1000000),
        "01 01 01000000 0300000000000000 11 0000000100000000",
    ),
    (Request(4, 9, RT.POSTSUSPEND), "01 01 04000000 0900000000000000 04"),
    (Request(4, 10, RT.GET_RESYNC_WORK), "01 01 04000000 0a00000000000000 0c"),
    (Join(3, 42), "01 02 03000000 2a00000000000000"),
    (
        CheckpointChunk(3, 42, 10, 12, 1, 2, b"\xaa\xbb"),
        "01 03 03000000 2a00000000000000 0a00000000000000 0c00000000000000 01000000 02000000 aabb",
    ),
    (Durable(17, True, "A"), "01 04 1100000000000000 01 41"),
    (Durable(18, False, "F"), "01 04 1200000000000000 00 46"),
    (
        Reassert(3, 43, 0x20, True, True, (5,), ((8, 2),)),
        "01 05 03000000 2b00000000000000 2000000000000000 01 01"
        " 01000000 0500000000000000 01000000 0800000000000000 0200000000000000",
    ),
    (
        Reassert(2, 1, 0, False, False),
        "01 05 02000000 0100000000000000 0000000000000000 00 00 00000000 00000000",
    ),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(("msg", "wire"), TABLE)
def test_encode_matches_table(msg: ClusterMessage, wire: str) -> None:
    assert encode(msg) == _hex(wire)


@pytest.mark.parametrize(("msg", "wire"), TABLE)
def test_decode_matches_table(msg: ClusterMessage, wire: str) -> None:
    assert decode(_hex(wire)) == msg


@pytest.mark.parametrize(("msg", "wire"), TABLE)
def test_every_strict_prefix_is_rejected(msg: ClusterMessage, wire: str) -> None:
    data = _hex(wire)
    # a CHECKPOINT piece's data is the rest of the message: only its header can be cut short
    shortest = len(data) - len(msg.data) if isinstance(msg, CheckpointChunk) else len(data)
    for end in range(shortest):
        with pytest.raises(ClusterProtocolError):
            decode(data[:end])


@pytest.mark.parametrize(
    ("msg", "wire"), [row for row in TABLE if row[0].__class__ is not CheckpointChunk]
)
def test_trailing_byte_is_rejected(msg: ClusterMessage, wire: str) -> None:
    with pytest.raises(ClusterProtocolError, match="trailing"):
        decode(_hex(wire) + b"\x00")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("02 04 1100000000000000 01 41", "version"),
        ("00 04 1100000000000000 01 41", "version"),
        ("01 06 03000000", "type 6"),
        ("01 05 00000000 0100000000000000 0000000000000000 00 00 00000000 00000000", "node id 0"),
        ("01 05 01000000 0100000000000000 0000000000000000 02 00 00000000 00000000", "halted"),
        ("01 05 01000000 0100000000000000 0000000000000000 00 02 00000000 00000000", "last"),
        (
            "01 05 01000000 0100000000000000 0000000000000000 00 01 00000000"
            " 01000000 0800000000000000 0000000000000000",
            "empty out-of-sync range",
        ),
        ("01 05 01000000 0100000000000000 0000000000000000 00 01 00000000 05000000", "count"),
        ("01 00", "type 0"),
        ("01 01 01000000 0100000000000000 08 0500000000000000", "not an ordered"),
        ("01 01 01000000 0100000000000000 63", "unknown"),
        ("01 01 00000000 0100000000000000 04", "node id 0"),
        ("01 01 01000000 0100000000000000 0a 00000000", "without regions"),
        ("01 01 01000000 0100000000000000 0a ffffffff 0100000000000000", "count"),
        ("01 01 01000000 0200000000000000 0d 0300000000000000 02", "in_sync"),
        ("01 02 00000000 2a00000000000000", "node id 0"),
        (
            "01 03 03000000 2a00000000000000 0a00000000000000 0c00000000000000 02000000 02000000",
            "piece 2 of 2",
        ),
        (
            "01 03 03000000 2a00000000000000 0a00000000000000 0c00000000000000 00000000 00000000",
            "piece 0 of 0",
        ),
        (
            "01 03 03000000 2a00000000000000 0c00000000000000 0a00000000000000 00000000 01000000",
            "before its join",
        ),
        ("01 04 1100000000000000 02 41", "ok"),
        ("01 04 1100000000000000 01 58", "device state"),
    ],
)
def test_malformed_message_is_rejected(wire: str, reason: str) -> None:
    with pytest.raises(ClusterProtocolError, match=reason):
        decode(_hex(wire))


def test_header_carries_the_version_constant() -> None:
    assert encode(Join(1, 1))[0] == CLUSTER_WIRE_VERSION == 1


def test_message_types_are_not_request_types() -> None:
    assert not issubclass(ClusterMessageType, RequestType)
    assert {t.name for t in ClusterMessageType} == {
        "REQUEST",
        "JOIN",
        "CHECKPOINT",
        "DURABLE",
        "REASSERT",
    }


@pytest.mark.parametrize(
    "msg",
    [
        Request(1, 1, RT.IN_SYNC, 3),
        Request(1, 1, RT.MARK_REGION, ()),
        Request(1, 1, RT.MARK_REGION, (True,)),
        Request(1, 1, RT.POSTSUSPEND, 5),
        Request(1, 1, RT.SET_REGION_SYNC, (3, 1)),
        Request(0, 1, RT.FLUSH, ()),
        Request(1, -1, RT.FLUSH, ()),
        Request(1, 1, RT.IS_REMOTE_RECOVERING, 1 << 64),
        Durable(1, True, "Z"),
        CheckpointChunk(1, 1, 0, 0, 2, 2, b""),
        Join(1 << 32, 1),
    ],
)
def test_unencodable_value_is_a_local_error(msg: ClusterMessage) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


# --- hypothesis ---------------------------------------------------------------------------------

U32 = st.integers(1, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
REGIONS = st.lists(U64, max_size=40).map(tuple)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    request_type = draw(st.sampled_from(sorted(ORDERED_REQUESTS)))
    shape = ORDERED_REQUESTS[request_type]
    args: object = None
    if shape is ArgsShape.REGIONS:
        args = draw(REGIONS)
    elif shape is ArgsShape.REGIONS_NONEMPTY:
        args = draw(st.lists(U64, min_size=1, max_size=40).map(tuple))
    elif shape is ArgsShape.SET_SYNC:
        args = SetRegionSync(draw(U64), draw(st.booleans()))
    elif shape is ArgsShape.REGION:
        args = draw(U64)
    return Request(draw(U32), draw(U64), request_type, args)


@st.composite
def chunks(draw: st.DrawFn) -> CheckpointChunk:
    total = draw(st.integers(1, 2**32 - 1))
    join_index = draw(U64)
    return CheckpointChunk(
        draw(U32),
        draw(U64),
        join_index,
        draw(st.integers(join_index, 2**64 - 1)),
        draw(st.integers(0, total - 1)),
        total,
        draw(st.binary(max_size=64)),
    )


MESSAGES = st.one_of(
    requests(),
    st.builds(Join, U32, U64),
    chunks(),
    st.builds(Durable, U64, st.booleans(), st.sampled_from("ADF")),
    st.builds(
        Reassert,
        U32.filter(bool),
        U64,
        U64,
        st.booleans(),
        st.booleans(),
        st.lists(U64, max_size=4).map(tuple),
        st.lists(st.tuples(U64, U64.filter(bool)), max_size=4).map(tuple),
    ),
)


@given(MESSAGES)
def test_round_trip(msg: ClusterMessage) -> None:
    assert decode(encode(msg)) == msg


@given(st.binary(max_size=80))
def test_decode_of_random_bytes_raises_only_cluster_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ClusterProtocolError):
        decode(data)


@given(MESSAGES, st.data())
def test_decode_of_a_damaged_message_raises_only_cluster_protocol_error(
    msg: ClusterMessage, data: st.DataObject
) -> None:
    wire = bytearray(encode(msg))
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ClusterProtocolError):
        decode(bytes(wire))


# --- checkpoint state ---------------------------------------------------------------------------


def small_state() -> CheckpointState:
    fields = ReplicatedFields(
        clean=bytes([0b0000_0001]) + bytes(7),
        sync=bytes([0b0000_0011]) + bytes(7),
        sync_count=2,
        sync_search=4,
        recovering=(2, 3),
        priority=(5,),
        marks=((1, (1, 2)),),
        in_sync_sticky=False,
        halted=(2,),
        device_state="D",
    )
    return CheckpointState(
        region_count=10,
        index=9,
        fields=fields,
        leader=1,
        synced=(1, 2),
        departed=(3,),
        joins=(PendingJoin(4, 77, 8),),
        prefix=b"",
        tail=b"",
    )


SMALL_STATE_WIRE = (
    "0a00000000000000 0900000000000000 0200000000000000 0400000000000000 00 44 01000000"  # head
    " 01 0200000000000000 03000000"  # recovering (2, node 3)
    " 01000000 0500000000000000"  # priority [5]
    " 01000000 0100000000000000 0200 01000000 02000000"  # marks {1: (1, 2)}
    " 01000000 02000000"  # halted
    " 02000000 01000000 02000000"  # synced
    " 01000000 03000000"  # departed
    " 01000000 04000000 4d00000000000000 0800000000000000"  # joins
    " 08000000 0100000000000000"  # clean
    " 08000000 0300000000000000"  # sync
    " 00000000 00000000"  # prefix, tail
)


def test_checkpoint_state_encodes_as_table() -> None:
    assert encode_checkpoint_state(small_state()) == _hex(SMALL_STATE_WIRE)


def test_checkpoint_state_decodes_from_table() -> None:
    assert decode_checkpoint_state(_hex(SMALL_STATE_WIRE)) == small_state()


def test_checkpoint_state_prefixes_are_rejected() -> None:
    data = _hex(SMALL_STATE_WIRE)
    for end in range(len(data)):
        with pytest.raises(ClusterProtocolError):
            decode_checkpoint_state(data[:end])


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (32, 0x02, "sticky"),
        (33, ord("Q"), "device state"),
        (38, 0x02, "recovering present"),
        (47, 0x00, "node id 0"),
    ],
)
def test_checkpoint_state_bad_field_is_rejected(offset: int, value: int, reason: str) -> None:
    data = bytearray(_hex(SMALL_STATE_WIRE))
    data[offset : offset + 1 if reason != "node id 0" else offset + 4] = (
        bytes([value]) if reason != "node id 0" else bytes(4)
    )
    with pytest.raises(ClusterProtocolError, match=reason):
        decode_checkpoint_state(bytes(data))


def test_checkpoint_state_with_wrong_bitmap_size_is_rejected() -> None:
    data = _hex(SMALL_STATE_WIRE.replace("0a00000000000000 0900", "4100000000000000 0900"))
    with pytest.raises(ClusterProtocolError, match="bitmaps"):
        decode_checkpoint_state(data)


FIELDS = st.builds(
    ReplicatedFields,
    clean=st.just(bytes(8)),
    sync=st.binary(min_size=8, max_size=8),
    sync_count=U64,
    sync_search=U64,
    recovering=st.none() | st.tuples(U64, U32),
    priority=st.lists(U64, max_size=5).map(tuple),
    marks=st.lists(
        st.tuples(U64, st.lists(U32, min_size=1, max_size=4).map(tuple)), max_size=5
    ).map(tuple),
    in_sync_sticky=st.booleans(),
    halted=st.lists(U32, max_size=4).map(tuple),
    device_state=st.sampled_from("ADF"),
)
STATES = st.builds(
    CheckpointState,
    region_count=st.integers(1, 64),
    index=U64,
    fields=FIELDS,
    leader=st.none() | U32,
    synced=st.lists(U32, max_size=4).map(tuple),
    departed=st.lists(U32, max_size=4).map(tuple),
    joins=st.lists(st.builds(PendingJoin, U32, U64, U64), max_size=3).map(tuple),
    prefix=st.sampled_from([b"", bytes(range(256)) * 4]),
    tail=st.binary(max_size=600),
)


@given(STATES)
def test_checkpoint_state_round_trip(state: CheckpointState) -> None:
    assert decode_checkpoint_state(encode_checkpoint_state(state)) == state


@given(st.binary(max_size=200))
def test_checkpoint_decoder_raises_only_cluster_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ClusterProtocolError):
        decode_checkpoint_state(data)


@given(st.binary(max_size=5000), st.integers(messages.HEADER.size + 45, 3000))
def test_split_checkpoint_pieces_fit_and_rejoin(data: bytes, limit: int) -> None:
    pieces = split_checkpoint(data, limit)
    assert b"".join(pieces) == data
    for seq, piece in enumerate(pieces):
        chunk = CheckpointChunk(1, 1, 0, 0, seq, len(pieces), piece)
        assert len(encode(chunk)) <= limit


def test_split_checkpoint_refuses_a_limit_without_room() -> None:
    with pytest.raises(LocalProtocolError):
        split_checkpoint(b"x", messages.HEADER.size + messages.CHECKPOINT_HEAD.size)


def test_checkpoint_of_2_24_regions_fits_in_pieces_below_the_cpg_limit() -> None:
    n = 2**24
    size = bitset_bytes(n)
    fields = ReplicatedFields(b"\x00" * size, b"\x00" * size, 0, 0, None, (), (), False, (), "A")
    state = CheckpointState(n, 5, fields, 1, (1,), (), (PendingJoin(2, 1, 5),))
    pieces = split_checkpoint(encode_checkpoint_state(state))
    wires = [encode(CheckpointChunk(2, 1, 5, 5, i, len(pieces), p)) for i, p in enumerate(pieces)]
    assert len(pieces) == 5
    assert max(len(w) for w in wires) <= messages.CPG_MAX_ATOMIC_MSG_BYTES
    rejoined = b"".join(decode(w).data for w in wires)  # type: ignore[union-attr]
    assert decode_checkpoint_state(rejoined) == state


# --- constants and purity -----------------------------------------------------------------------


def test_left_reasons_match_cpg_reason_t() -> None:
    cpg = pytest.importorskip("clogfs.cluster.cpg")
    assert {r.name: int(r) for r in LeftReason} == {r.name: int(r) for r in cpg.CpgReason}


def test_struct_formats_are_little_endian() -> None:
    formats = [v.format for v in vars(messages).values() if isinstance(v, struct.Struct)]
    assert formats
    assert all(f.startswith("<") for f in formats)


@pytest.mark.parametrize("name", ["clogfs/cluster/messages.py", "clogfs/cluster/replica.py"])
def test_cluster_core_module_is_pure(name: str) -> None:
    assert forbidden_imports((ROOT / name).read_text()) == []


@given(
    st.lists(st.integers(0, 2**32), max_size=300),
    st.lists(st.tuples(st.integers(0, 2**32), st.integers(1, 2**32)), max_size=300),
    st.integers(80, 3000),
)
def test_split_reassert_fits_the_limit_and_keeps_everything_in_order(
    marks: list[int], ranges: list[tuple[int, int]], limit: int
) -> None:
    pieces = split_reassert(7, 9, 100, True, marks, ranges, limit)
    assert all(len(encode(piece)) <= limit for piece in pieces)
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all((p.node, p.session, p.floor, p.halted) == (7, 9, 100, True) for p in pieces)
    assert [m for p in pieces for m in p.marks] == marks
    assert [r for p in pieces for r in p.out_of_sync] == ranges


def test_split_reassert_of_nothing_is_one_last_message() -> None:
    assert split_reassert(1, 2, 3, False, [], []) == [Reassert(1, 2, 3, False, True)]
