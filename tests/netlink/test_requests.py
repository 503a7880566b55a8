"""Byte tables and properties of clogfs.netlink.requests (protocol.md §5, §6, §8.1, §9)."""

from __future__ import annotations

import contextlib
import string
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import clogfs.netlink.requests as requests_module
from clogfs.errors import KernelProtocolError, LocalProtocolError
from clogfs.netlink.requests import (
    REQUESTS,
    CtrPayload,
    RemoteRecovering,
    RequestType,
    ResyncWork,
    SetRegionSync,
    capacity_of,
    decode_payload,
    decode_result,
    encode_payload,
    encode_result,
    request_type_of,
)
from clogfs.netlink.wire import Protocol
from tests.netlink.test_wire import NETLINK_CORE_FORBIDDEN, imported_top_levels

ULOG, TAKE5 = Protocol.ULOG, Protocol.TAKE5
T = RequestType


def u64(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)  # x86-64 host order


# (type, protocol, decoded value, payload bytes, fixed size: every strict prefix is refused)
PAYLOADS: Sequence[tuple[RequestType, Protocol, object, bytes, bool]] = [
    (T.CTR, ULOG, CtrPayload(b"131072 clustered-core 1024 nosync", False),
     b"131072 clustered-core 1024 nosync", False),
    (T.CTR, ULOG, CtrPayload(b"131072 clustered-core 1024 nosync", True),
     b"131072 clustered-core 1024 nosync\0", False),
    (T.CTR, TAKE5, CtrPayload(b"1024 KVT-UUID-A nosync 131072", False),
     b"1024 KVT-UUID-A nosync 131072", False),
    (T.IS_CLEAN, ULOG, 7, u64(7), True),
    (T.IS_CLEAN, TAKE5, 7, u64(7), True),
    (T.IN_SYNC, ULOG, 2**64 - 1, b"\xff" * 8, True),
    (T.IN_SYNC, TAKE5, 0x0102030405060708, bytes.fromhex("0807060504030201"), True),
    (T.IS_REMOTE_RECOVERING, ULOG, 28, u64(28), True),
    (T.IS_REMOTE_RECOVERING, TAKE5, 28, u64(28), True),
    (T.FLUSH, ULOG, (), b"", False),
    (T.FLUSH, ULOG, (5, 3), u64(5, 3), False),
    (T.FLUSH, TAKE5, (), b"", False),
    (T.MARK_REGION, ULOG, (9, 1, 4), u64(9, 1, 4), False),
    (T.MARK_REGION, TAKE5, (9,), u64(9), False),
    (T.CLEAR_REGION, ULOG, (0,), u64(0), False),
    (T.CLEAR_REGION, TAKE5, (9,), u64(9), False),
    (T.SET_REGION_SYNC, ULOG, SetRegionSync(12, True), u64(12, 1), True),
    (T.SET_REGION_SYNC, TAKE5, SetRegionSync(12, False), u64(12, 0), True),
] + [
    (rtype, protocol, None, b"", False)
    for rtype in (
        T.DTR, T.PRESUSPEND, T.POSTSUSPEND, T.RESUME, T.GET_REGION_SIZE, T.GET_RESYNC_WORK,
        T.GET_SYNC_COUNT, T.STATUS_INFO, T.STATUS_TABLE,
    )
    for protocol in Protocol
]  # fmt: skip

# (type, protocol, result, reply bytes, fixed size)
RESULTS: Sequence[tuple[RequestType, Protocol, object, bytes, bool]] = [
    (T.CTR, ULOG, b"7:2", b"7:2\0", False),
    (T.CTR, ULOG, None, b"", False),
    (T.CTR, TAKE5, None, b"", False),
    (T.GET_REGION_SIZE, ULOG, 1024, u64(1024), True),
    (T.GET_REGION_SIZE, TAKE5, 1024, u64(1024), True),
    (T.IS_CLEAN, ULOG, True, u64(1), True),
    (T.IS_CLEAN, TAKE5, False, bytes(4), True),
    (T.IN_SYNC, ULOG, False, bytes(8), True),
    (T.IN_SYNC, TAKE5, True, b"\1\0\0\0", True),
    (T.GET_RESYNC_WORK, ULOG, ResyncWork(1, 17), u64(1, 17), True),
    (T.GET_RESYNC_WORK, TAKE5, ResyncWork(0, 0), bytes(16), True),
    (T.GET_SYNC_COUNT, ULOG, 128, u64(128), True),
    (T.GET_SYNC_COUNT, TAKE5, 0, bytes(8), True),
    (T.IS_REMOTE_RECOVERING, ULOG, RemoteRecovering(1, 28), u64(1, 28), True),
    (T.IS_REMOTE_RECOVERING, TAKE5, RemoteRecovering(0, 128), u64(0, 128), True),
    (T.STATUS_INFO, ULOG, "3 clustered-disk 7:2 A", b"3 clustered-disk 7:2 A\0", False),
    (T.STATUS_INFO, TAKE5, "1 clustered-core", b"1 clustered-core\0", False),
    (T.STATUS_TABLE, TAKE5, "clustered-core 3 1024 KVT-UUID-A nosync ",
     b"clustered-core 3 1024 KVT-UUID-A nosync ", False),
    (T.STATUS_TABLE, ULOG, "clustered-disk /dev/loop2 1024 nosync ",
     b"clustered-disk /dev/loop2 1024 nosync ", False),
] + [
    (rtype, protocol, None, b"", False)
    for rtype in (
        T.DTR, T.PRESUSPEND, T.POSTSUSPEND, T.RESUME, T.FLUSH, T.MARK_REGION, T.CLEAR_REGION,
        T.SET_REGION_SYNC,
    )
    for protocol in Protocol
]  # fmt: skip


def row_id(row: tuple[RequestType, Protocol, object, bytes, bool]) -> str:
    return f"{row[0].name}-{row[1].value}-{row[3].hex()[:16]}"


@pytest.mark.parametrize("row", PAYLOADS, ids=row_id)
def test_payload_decodes(row: tuple[RequestType, Protocol, object, bytes, bool]) -> None:
    rtype, protocol, value, data, _ = row
    assert decode_payload(rtype, data, protocol) == value


@pytest.mark.parametrize("row", PAYLOADS, ids=row_id)
def test_payload_encodes(row: tuple[RequestType, Protocol, object, bytes, bool]) -> None:
    rtype, protocol, value, data, _ = row
    assert encode_payload(rtype, value, protocol) == data


@pytest.mark.parametrize("row", [r for r in PAYLOADS if r[4]], ids=row_id)
def test_fixed_payload_prefixes_are_refused(
    row: tuple[RequestType, Protocol, object, bytes, bool],
) -> None:
    rtype, protocol, _, data, _ = row
    for cut in range(len(data)):
        with pytest.raises(KernelProtocolError):
            decode_payload(rtype, data[:cut], protocol)


@pytest.mark.parametrize("row", [r for r in PAYLOADS if r[0] in (T.MARK_REGION, T.CLEAR_REGION)])
def test_region_list_prefixes_are_refused_unless_whole_regions(
    row: tuple[RequestType, Protocol, object, bytes, bool],
) -> None:
    rtype, protocol, _, data, _ = row
    for cut in range(len(data)):
        if cut and cut % 8 == 0:
            assert decode_payload(rtype, data[:cut], protocol) == tuple(
                struct.unpack(f"<{cut // 8}Q", data[:cut])
            )
        else:
            with pytest.raises(KernelProtocolError):
                decode_payload(rtype, data[:cut], protocol)


@pytest.mark.parametrize("row", RESULTS, ids=row_id)
def test_result_encodes(row: tuple[RequestType, Protocol, object, bytes, bool]) -> None:
    rtype, protocol, value, data, _ = row
    assert encode_result(rtype, value, protocol) == data


@pytest.mark.parametrize("row", RESULTS, ids=row_id)
def test_result_decodes(row: tuple[RequestType, Protocol, object, bytes, bool]) -> None:
    rtype, protocol, value, data, _ = row
    assert decode_result(rtype, data, protocol) == value


@pytest.mark.parametrize("row", [r for r in RESULTS if r[4]], ids=row_id)
def test_fixed_result_prefixes_are_refused(
    row: tuple[RequestType, Protocol, object, bytes, bool],
) -> None:
    rtype, protocol, _, data, _ = row
    for cut in range(len(data)):
        with pytest.raises(LocalProtocolError):
            decode_result(rtype, data[:cut], protocol)


@pytest.mark.parametrize(
    ("rtype", "data"),
    [(T.CTR, b"7:2"), (T.STATUS_INFO, b"1 clustered-core")],
)
def test_unterminated_string_results_are_refused(rtype: RequestType, data: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        decode_result(rtype, data, ULOG)


# --- the table ------------------------------------------------------------------------------


def test_every_type_has_one_row() -> None:
    assert list(REQUESTS) == list(RequestType)
    assert all(spec.request_type is rtype for rtype, spec in REQUESTS.items())


def test_every_row_documents_its_payloads() -> None:
    for spec in REQUESTS.values():
        assert "Request:" in spec.doc
        assert "Reply:" in spec.doc


def test_ordered_types_are_the_state_changing_ones() -> None:
    ordered = {rtype for rtype, spec in REQUESTS.items() if spec.ordered}
    assert ordered == {
        T.PRESUSPEND,
        T.POSTSUSPEND,
        T.FLUSH,
        T.MARK_REGION,
        T.CLEAR_REGION,
        T.GET_RESYNC_WORK,
        T.SET_REGION_SYNC,
        T.IS_REMOTE_RECOVERING,
    }


@pytest.mark.parametrize(
    ("rtype", "ulog", "take5"),
    [
        (T.CTR, 128, 0),
        (T.DTR, 0, 0),
        (T.GET_REGION_SIZE, 8, 8),
        (T.IS_CLEAN, 8, 4),
        (T.IN_SYNC, 8, 4),
        (T.FLUSH, 0, 0),
        (T.GET_RESYNC_WORK, 16, 16),
        (T.GET_SYNC_COUNT, 8, 8),
        (T.STATUS_INFO, 16384 - 20 - 160, 16384 - 20 - 152),
        (T.IS_REMOTE_RECOVERING, 16, 16),
    ],
)
def test_capacity(rtype: RequestType, ulog: int, take5: int) -> None:
    assert (capacity_of(rtype, ULOG), capacity_of(rtype, TAKE5)) == (ulog, take5)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1, T.CTR), (17, T.IS_REMOTE_RECOVERING), (0x0000_0108, T.IN_SYNC), (0, None), (18, None),
     (0xFF, None), (0xFFFF_FF00, None)],
)  # fmt: skip
def test_request_type_of(raw: int, expected: RequestType | None) -> None:
    assert request_type_of(raw) is expected


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtype", "protocol", "data"),
    [
        (T.CTR, ULOG, b""),
        (T.CTR, ULOG, b"\0"),
        (T.CTR, ULOG, b"1024 a\0b"),
        (T.CTR, TAKE5, b"1024 KVT-UUID-A 131072\0"),
        (T.DTR, ULOG, b"argv"),
        (T.GET_RESYNC_WORK, TAKE5, bytes(8)),
        (T.IN_SYNC, ULOG, bytes(4)),
        (T.IN_SYNC, TAKE5, bytes(16)),
        (T.FLUSH, ULOG, bytes(12)),
        (T.FLUSH, TAKE5, u64(3)),
        (T.MARK_REGION, ULOG, b""),
        (T.CLEAR_REGION, TAKE5, bytes(9)),
        (T.SET_REGION_SYNC, ULOG, bytes(24)),
        (T.MARK_REGION, ULOG, bytes(8 * 42)),  # 336 > 332, more than a kernel request holds
        (T.CTR, TAKE5, b"x" * 341),
    ],
)
def test_bad_payload_is_refused(rtype: RequestType, protocol: Protocol, data: bytes) -> None:
    with pytest.raises(KernelProtocolError):
        decode_payload(rtype, data, protocol)


def test_region_lists_longer_than_the_kernel_sends_are_accepted() -> None:
    regions = tuple(range(41))  # 328 bytes; the kernel sends at most 32
    assert decode_payload(T.CLEAR_REGION, u64(*regions), ULOG) == regions


@pytest.mark.parametrize("in_sync", [2, -1, 1 << 40])
def test_set_region_sync_reads_any_non_zero_as_true(in_sync: int) -> None:
    payload = struct.pack("<Qq", 3, in_sync)
    assert decode_payload(T.SET_REGION_SYNC, payload, ULOG) == SetRegionSync(3, True)


@pytest.mark.parametrize(
    ("rtype", "protocol", "result"),
    [
        (T.CTR, ULOG, b"x" * 128),  # 129 bytes with the NUL > DM_NAME_LEN
        (T.CTR, ULOG, b""),
        (T.CTR, ULOG, b"7:\0002"),
        (T.CTR, TAKE5, b"7:2"),  # take 5 never takes a CTR reply payload
        (T.IN_SYNC, ULOG, 1),  # exactly a bool, never an int that might be 2
        (T.IS_CLEAN, TAKE5, None),
        (T.GET_SYNC_COUNT, ULOG, -1),
        (T.GET_SYNC_COUNT, ULOG, 2**64),
        (T.GET_SYNC_COUNT, ULOG, True),
        (T.GET_RESYNC_WORK, ULOG, ResyncWork(0, 5)),
        (T.GET_RESYNC_WORK, ULOG, ResyncWork(2, 5)),
        (T.IS_REMOTE_RECOVERING, ULOG, RemoteRecovering(2, 0)),
        (T.IS_REMOTE_RECOVERING, ULOG, RemoteRecovering(0, -1)),
        (T.STATUS_INFO, ULOG, "a\0b"),
        (T.STATUS_INFO, ULOG, "x" * (16384 - 20 - 160)),  # + NUL exceeds the connector
        (T.STATUS_TABLE, TAKE5, b"clustered-core "),
        (T.FLUSH, ULOG, 0),
    ],
)
def test_bad_result_is_refused(rtype: RequestType, protocol: Protocol, result: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_result(rtype, result, protocol)


def test_longest_ctr_device_name_fits() -> None:
    assert len(encode_result(T.CTR, b"x" * 127, ULOG)) == 128


def test_status_strings_keep_raw_uuid_bytes() -> None:
    text = b"clustered-core 2 1024 \xfe\xff ".decode("utf-8", "surrogateescape")
    assert encode_result(T.STATUS_TABLE, text, TAKE5) == b"clustered-core 2 1024 \xfe\xff "


@pytest.mark.parametrize(
    ("rtype", "value"),
    [(T.MARK_REGION, ()), (T.FLUSH, (-1,)), (T.IN_SYNC, 2**64), (T.CTR, CtrPayload(b"", False))],
)
def test_bad_payload_value_is_refused(rtype: RequestType, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_payload(rtype, value, ULOG)


def test_take5_reconnect_ctr_has_no_nul_form() -> None:
    with pytest.raises(LocalProtocolError):
        encode_payload(T.CTR, CtrPayload(b"1024 U 8", True), TAKE5)


def test_reply_over_capacity_is_refused_on_the_kernel_side() -> None:
    with pytest.raises(LocalProtocolError):
        decode_result(T.IN_SYNC, u64(1), TAKE5)


# --- properties -----------------------------------------------------------------------------


@given(st.sampled_from(list(RequestType)), st.binary(max_size=400), st.sampled_from(list(Protocol)))
def test_decode_payload_raises_only_kernel_protocol_error(
    rtype: RequestType, data: bytes, protocol: Protocol
) -> None:
    with contextlib.suppress(KernelProtocolError):
        decode_payload(rtype, data, protocol)


@given(st.sampled_from(list(RequestType)), st.binary(max_size=400), st.sampled_from(list(Protocol)))
def test_decode_result_raises_only_local_protocol_error(
    rtype: RequestType, data: bytes, protocol: Protocol
) -> None:
    with contextlib.suppress(LocalProtocolError):
        decode_result(rtype, data, protocol)


regions = st.integers(0, 2**64 - 1)
# explicit characters: no unicode charmap to build, so the first run is not slow
STATUS_ALPHABET = string.printable + "\u00e9\u20ac\udcfe"
texts = st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b)


@st.composite
def payload_values(draw: st.DrawFn) -> tuple[RequestType, Protocol, object]:
    protocol = draw(st.sampled_from(list(Protocol)))
    rtype = draw(st.sampled_from(list(RequestType)))
    value: object = None
    if rtype is T.CTR:
        value = CtrPayload(draw(texts), protocol is ULOG and draw(st.booleans()))
    elif rtype in (T.IS_CLEAN, T.IN_SYNC, T.IS_REMOTE_RECOVERING):
        value = draw(regions)
    elif rtype is T.FLUSH:
        value = tuple(draw(st.lists(regions, max_size=32 if protocol is ULOG else 0)))
    elif rtype in (T.MARK_REGION, T.CLEAR_REGION):
        value = tuple(draw(st.lists(regions, min_size=1, max_size=32)))
    elif rtype is T.SET_REGION_SYNC:
        value = SetRegionSync(draw(regions), draw(st.booleans()))
    return rtype, protocol, value


@given(payload_values())
def test_payload_round_trips(case: tuple[RequestType, Protocol, object]) -> None:
    rtype, protocol, value = case
    assert decode_payload(rtype, encode_payload(rtype, value, protocol), protocol) == value


@st.composite
def result_values(draw: st.DrawFn) -> tuple[RequestType, Protocol, object]:
    protocol = draw(st.sampled_from(list(Protocol)))
    rtype = draw(st.sampled_from(list(RequestType)))
    value: object = None
    if rtype is T.CTR and protocol is ULOG:
        value = draw(st.none() | st.binary(min_size=1, max_size=127).filter(lambda b: 0 not in b))
    elif rtype in (T.IS_CLEAN, T.IN_SYNC):
        value = draw(st.booleans())
    elif rtype in (T.GET_REGION_SIZE, T.GET_SYNC_COUNT):
        value = draw(regions)
    elif rtype is T.GET_RESYNC_WORK:
        value = draw(st.just(ResyncWork(0, 0)) | st.builds(ResyncWork, st.just(1), regions))
    elif rtype is T.IS_REMOTE_RECOVERING:
        value = RemoteRecovering(draw(st.integers(0, 1)), draw(regions))
    elif rtype in (T.STATUS_INFO, T.STATUS_TABLE):
        value = draw(st.text(alphabet=STATUS_ALPHABET, max_size=200))
    return rtype, protocol, value


@given(result_values())
def test_result_round_trips(case: tuple[RequestType, Protocol, object]) -> None:
    rtype, protocol, value = case
    data = encode_result(rtype, value, protocol)
    assert len(data) <= capacity_of(rtype, protocol)
    assert decode_result(rtype, data, protocol) == value


def test_requests_is_a_pure_core_module() -> None:
    assert not imported_top_levels(requests_module.__file__) & NETLINK_CORE_FORBIDDEN
