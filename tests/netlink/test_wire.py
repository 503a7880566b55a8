"""Byte tables and properties of clogfs.netlink.wire (protocol.md §2-§4, §8, §12)."""

from __future__ import annotations

import ast
import contextlib
import errno
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import clogfs.netlink.wire as wire_module
from clogfs.errors import KernelProtocolError, LocalProtocolError
from clogfs.netlink.wire import (
    CN_IDX_DM,
    CN_MSG,
    CONNECTOR_MAX_MSG_SIZE,
    DM_CLOG_REQUEST_SIZE,
    DM_ULOG_REQUEST_SIZE,
    NLMSGHDR,
    ConnectorMessage,
    Protocol,
    Rejected,
    Reply,
    RequestHeader,
    classify,
    decode_reply,
    decode_request,
    encode_bare_ack,
    encode_reply,
    encode_request,
    split_datagram,
)

DATA = Path(__file__).parent.parent / "data"


def load_hex(name: str) -> bytes:
    """Read a ``tests/data`` hex dump: ``#`` comments, then ``offset  hex bytes`` lines."""
    out = bytearray()
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        offset, _, hexbytes = line.partition("  ")
        assert int(offset, 16) == len(out)
        out += bytes.fromhex(hexbytes)
    return bytes(out)


# --- §12 worked examples ------------------------------------------------------------------

CTR_6_1 = load_hex("ulog-ctr-linux-6.1.hex")
CTR_6_1_TEXT = b"131072 clustered-core 1024 nosync"
CTR_6_1_LUID = 0xFF21A7AC41958800

# §12.2: mainline CTR reply for a clustered-disk log, 200 bytes
CTR_REPLY_ULOG = bytes.fromhex(
    "c800000003000000bc1e000092100000"
    "0700000001000000bc1e000000000000"
    "a400000000969541aca721ff4b56542d"
    "555549442d4300000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "0300000000000000bc1e000001000000"
    "04000000373a3200"
)

# §12.3: take-5 CTR request, nlmsg_len rounded up to 220 by a seed-era connector
CTR_TAKE5 = bytes.fromhex(
    "dc000000030000000000000000000000"
    "07000000010000000000000000000000"
    "b50000004b56542d555549442d410000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000010000001d00000031303234"
    "204b56542d555549442d41206e6f7379"
    "6e6320313331303732000000"
)

# §12.4: mainline FLUSH reply, 196 bytes
FLUSH_REPLY_ULOG = bytes.fromhex(
    "c4000000030000002f1f000092100000"
    "07000000010000002f1f000000000000"
    "a0000000008a9541aca721ff4b56542d"
    "555549442d4400000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "03000000000000002f1f000009000000"
    "00000000"
)

# §12.5: take-5 FLUSH reply, 188 bytes
FLUSH_REPLY_TAKE5 = bytes.fromhex(
    "bc000000030000000a00000092100000"
    "07000000010000000a00000000000000"
    "980000004b56542d555549442d410000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "0a0000000900000000000000"
)

# §12.6: bare ack EINVAL for cn seq 10, 36 bytes
BARE_ACK = bytes.fromhex("24000000030000000a0000009210000007000000010000000a0000001600000000000000")


def test_worked_examples_have_the_documented_lengths() -> None:
    lengths = [len(b) for b in (CTR_6_1, CTR_REPLY_ULOG, CTR_TAKE5)]
    lengths += [len(b) for b in (FLUSH_REPLY_ULOG, FLUSH_REPLY_TAKE5, BARE_ACK)]
    assert lengths == [229, 200, 220, 196, 188, 36]


def ulog_header(seq: int, rtype: int, uuid: bytes, luid: int, data: bytes = b"") -> RequestHeader:
    datagram = encode_request(
        Protocol.ULOG, seq=seq, request_type=rtype, uuid=uuid, luid=luid, data=data
    )
    (msg,) = split_datagram(datagram)
    assert isinstance(msg, ConnectorMessage)
    return decode_request(msg.payload, Protocol.ULOG)[0]


def take5_header(seq: int, rtype: int, uuid: bytes, data: bytes = b"") -> RequestHeader:
    datagram = encode_request(Protocol.TAKE5, seq=seq, request_type=rtype, uuid=uuid, data=data)
    (msg,) = split_datagram(datagram)
    assert isinstance(msg, ConnectorMessage)
    return decode_request(msg.payload, Protocol.TAKE5)[0]


def test_captured_ctr_splits_into_one_message() -> None:
    (msg,) = split_datagram(CTR_6_1)
    assert msg == ConnectorMessage(
        nlmsg_seq=0, nlmsg_pid=0, idx=7, val=1, seq=0, ack=0, flags=0, payload=CTR_6_1[36:]
    )


def test_captured_ctr_classifies_as_ulog() -> None:
    assert classify(CTR_6_1[36:]) is Protocol.ULOG


def test_captured_ctr_decodes() -> None:
    header, payload = decode_request(CTR_6_1[36:], Protocol.ULOG)
    assert (header.protocol, header.luid, header.uuid) == (
        Protocol.ULOG,
        CTR_6_1_LUID,
        b"KVT-UUID-A",
    )
    assert (header.version, header.error, header.seq) == (3, 0, 0)
    assert (header.request_type, header.data_size) == (1, 33)
    assert header.raw == CTR_6_1[36:196]
    assert payload == CTR_6_1_TEXT


def test_captured_ctr_encodes() -> None:
    built = encode_request(
        Protocol.ULOG,
        seq=0,
        request_type=1,
        uuid=b"KVT-UUID-A",
        luid=CTR_6_1_LUID,
        data=CTR_6_1_TEXT,
    )
    assert built == CTR_6_1


def test_captured_ctr_with_alignment_padding_is_one_message() -> None:
    # A kernel skb holds NLMSG_ALIGN(229) = 232 bytes; the pad is not a message.
    assert split_datagram(CTR_6_1 + bytes(3)) == split_datagram(CTR_6_1)


@pytest.mark.parametrize("cut", range(len(CTR_6_1)))
def test_captured_ctr_prefix_is_rejected(cut: int) -> None:
    assert all(isinstance(m, Rejected) for m in split_datagram(CTR_6_1[:cut]))


@pytest.mark.parametrize("cut", range(36, len(CTR_6_1)))
def test_captured_ctr_payload_prefix_is_refused(cut: int) -> None:
    with pytest.raises(KernelProtocolError):
        decode_request(CTR_6_1[36:cut], Protocol.ULOG)


def test_take5_ctr_decodes() -> None:
    (msg,) = split_datagram(CTR_TAKE5)
    assert isinstance(msg, ConnectorMessage)
    assert len(msg.payload) == 181  # cn_msg.len, never nlmsg_len: the pad is not payload
    assert classify(msg.payload) is Protocol.TAKE5
    header, payload = decode_request(msg.payload, Protocol.TAKE5)
    assert (header.luid, header.uuid, header.version, header.error) == (0, b"KVT-UUID-A", 0, 0)
    assert (header.seq, header.request_type, header.data_size) == (0, 1, 29)
    assert payload == b"1024 KVT-UUID-A nosync 131072"


def test_take5_ctr_encodes_with_seed_padding() -> None:
    built = encode_request(
        Protocol.TAKE5,
        seq=0,
        request_type=1,
        uuid=b"KVT-UUID-A",
        data=b"1024 KVT-UUID-A nosync 131072",
        pad_to_4=True,
    )
    assert built == CTR_TAKE5


@pytest.mark.parametrize("cut", range(36, 36 + 181))
def test_take5_ctr_payload_prefix_is_refused(cut: int) -> None:
    with pytest.raises(KernelProtocolError):
        decode_request(CTR_TAKE5[36:cut], Protocol.TAKE5)


# --- replies ----------------------------------------------------------------------------------

CTR_REPLY_HEADER_ARGS = (7868, 1, b"KVT-UUID-C", 0xFF21A7AC41959600)
FLUSH_ULOG_HEADER_ARGS = (7983, 9, b"KVT-UUID-D", 0xFF21A7AC41958A00)


def test_ulog_ctr_reply_encodes() -> None:
    header = ulog_header(*CTR_REPLY_HEADER_ARGS, data=b"32768 clustered-disk 7:2 1024 nosync")
    assert encode_reply(header, error=0, data=b"7:2\0", nlmsg_pid=4242) == CTR_REPLY_ULOG


def test_ulog_ctr_reply_decodes() -> None:
    assert decode_reply(CTR_REPLY_ULOG, Protocol.ULOG) == Reply(
        bare=False,
        cn_seq=7868,
        seq=7868,
        error=0,
        data=b"7:2\0",
        request_type=1,
        uuid=b"KVT-UUID-C",
        luid=0xFF21A7AC41959600,
    )


def test_ulog_flush_reply_with_marks_has_no_data() -> None:
    header = ulog_header(*FLUSH_ULOG_HEADER_ARGS, data=struct.pack("=Q", 5))
    assert encode_reply(header, error=0, nlmsg_pid=4242) == FLUSH_REPLY_ULOG


def test_ulog_flush_error_reply_sets_only_the_error() -> None:
    header = ulog_header(*FLUSH_ULOG_HEADER_ARGS)
    expected = FLUSH_REPLY_ULOG[:0xB4] + bytes.fromhex("fbffffff") + FLUSH_REPLY_ULOG[0xB8:]
    assert encode_reply(header, error=-errno.EIO, nlmsg_pid=4242) == expected


def test_ulog_flush_error_reply_decodes() -> None:
    datagram = FLUSH_REPLY_ULOG[:0xB4] + bytes.fromhex("fbffffff") + FLUSH_REPLY_ULOG[0xB8:]
    reply = decode_reply(datagram, Protocol.ULOG)
    assert (reply.bare, reply.seq, reply.error, reply.data) == (False, 7983, -errno.EIO, b"")


def test_take5_flush_reply_encodes() -> None:
    header = take5_header(10, 9, b"KVT-UUID-A")
    assert encode_reply(header, error=0, nlmsg_pid=4242) == FLUSH_REPLY_TAKE5


def test_take5_flush_reply_decodes() -> None:
    assert decode_reply(FLUSH_REPLY_TAKE5, Protocol.TAKE5) == Reply(
        bare=False,
        cn_seq=10,
        seq=10,
        error=0,
        data=b"",
        request_type=9,
        uuid=b"KVT-UUID-A",
        luid=0,
    )


def test_bare_ack_encodes() -> None:
    assert encode_bare_ack(10, errno.EINVAL, nlmsg_pid=4242) == BARE_ACK


@pytest.mark.parametrize("protocol", list(Protocol))
def test_bare_ack_decodes(protocol: Protocol) -> None:
    assert decode_reply(BARE_ACK, protocol) == Reply(
        bare=True,
        cn_seq=10,
        seq=10,
        error=-errno.EINVAL,
        data=b"",
        request_type=0,
        uuid=b"",
        luid=0,
    )


@pytest.mark.parametrize(
    ("datagram", "protocol"),
    [
        (CTR_REPLY_ULOG, Protocol.ULOG),
        (FLUSH_REPLY_ULOG, Protocol.ULOG),
        (FLUSH_REPLY_TAKE5, Protocol.TAKE5),
        (BARE_ACK, Protocol.ULOG),
    ],
)
def test_reply_prefixes_are_refused(datagram: bytes, protocol: Protocol) -> None:
    for cut in range(len(datagram)):
        with pytest.raises(LocalProtocolError):
            decode_reply(datagram[:cut], protocol)


def test_reply_echoes_the_whole_header() -> None:
    datagram = encode_request(
        Protocol.ULOG, seq=77, request_type=0x1234_5608, uuid=b"U", luid=9, version=0
    )
    request_payload = datagram[36:]
    header, _ = decode_request(request_payload, Protocol.ULOG)
    reply = encode_reply(header, error=-errno.EINVAL)
    assert reply[36:180] == request_payload[:144]  # luid, uuid, padding, version
    assert reply[184:192] == request_payload[148:156]  # seq, the whole request_type word


def test_reply_carries_the_header_seq_in_both_netlink_seqs() -> None:
    header = ulog_header(0xFFFF_FFFE, 8, b"U", 1)
    nlmsg_seq = NLMSGHDR.unpack_from(encode_reply(header, error=0, data=bytes(8)))[3]
    cn_seq = CN_MSG.unpack_from(encode_reply(header, error=0, data=bytes(8)), 16)[2]
    assert (nlmsg_seq, cn_seq) == (0xFFFF_FFFE, 0xFFFF_FFFE)


def test_reply_refuses_a_positive_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(ulog_header(1, 8, b"U", 1), error=errno.EINVAL)


def test_reply_refuses_data_with_an_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(ulog_header(1, 8, b"U", 1), error=-errno.EIO, data=b"x")


@pytest.mark.parametrize(
    ("protocol", "header_size"),
    [(Protocol.ULOG, DM_ULOG_REQUEST_SIZE), (Protocol.TAKE5, DM_CLOG_REQUEST_SIZE)],
)
def test_reply_size_limit_is_the_connector_maximum(protocol: Protocol, header_size: int) -> None:
    header = ulog_header(1, 15, b"U", 1) if protocol is Protocol.ULOG else take5_header(1, 15, b"U")
    largest = CONNECTOR_MAX_MSG_SIZE - 20 - header_size
    assert len(encode_reply(header, error=0, data=bytes(largest))) == 36 + header_size + largest
    with pytest.raises(LocalProtocolError):
        encode_reply(header, error=0, data=bytes(largest + 1))


@pytest.mark.parametrize("bad", [0, -errno.EINVAL, errno.EAGAIN])
def test_bare_ack_refuses_bad_errnos(bad: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_bare_ack(1, bad)


# --- split_datagram: §2.4 checks 2-5 ----------------------------------------------------------


def frame(
    body: bytes,
    *,
    nlmsg_type: int = 3,
    idx: int = CN_IDX_DM,
    val: int = 1,
    cn_len: int | None = None,
) -> bytes:
    length = len(body) if cn_len is None else cn_len
    cn = CN_MSG.pack(idx, val, 42, 0, length, 0)
    return NLMSGHDR.pack(36 + len(body), nlmsg_type, 0, 42, 0) + cn + body


@pytest.mark.parametrize("size", range(16))
def test_split_rejects_a_datagram_shorter_than_a_header(size: int) -> None:
    (rejected,) = split_datagram(bytes(size))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, False)


def test_split_rejects_nlmsg_len_beyond_the_datagram() -> None:
    (rejected,) = split_datagram(frame(b"x")[:-1])
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, False)


def test_split_rejects_nlmsg_len_below_a_header() -> None:
    datagram = NLMSGHDR.pack(15, 3, 0, 0, 0) + bytes(40)
    (rejected,) = split_datagram(datagram)
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, False)


def test_split_rejects_other_netlink_types_with_a_warning() -> None:
    (rejected,) = split_datagram(frame(b"x", nlmsg_type=2))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, False)


def test_split_drops_other_connector_ids_silently() -> None:
    (rejected,) = split_datagram(frame(b"proc event", idx=1, val=1))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, True)


def test_split_drops_a_message_without_cn_msg_silently() -> None:
    (rejected,) = split_datagram(NLMSGHDR.pack(20, 3, 0, 0, 0) + bytes(4))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (None, True)


def test_split_rejects_an_empty_connector_payload_with_its_seq() -> None:
    (rejected,) = split_datagram(frame(b""))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (42, False)


def test_split_rejects_cn_len_beyond_nlmsg_len_with_its_seq() -> None:
    (rejected,) = split_datagram(frame(b"abcd", cn_len=5))
    assert isinstance(rejected, Rejected)
    assert (rejected.cn_seq, rejected.silent) == (42, False)


def test_split_uses_cn_len_not_nlmsg_len_for_the_payload() -> None:
    (msg,) = split_datagram(frame(b"abcdefgh", cn_len=5))
    assert isinstance(msg, ConnectorMessage)
    assert msg.payload == b"abcde"


def test_split_walks_several_aligned_messages() -> None:
    first = frame(b"abc") + b"\0"  # 39 bytes, aligned to 40
    second = frame(b"wxyz")
    messages = split_datagram(first + second)
    assert [m.payload for m in messages if isinstance(m, ConnectorMessage)] == [b"abc", b"wxyz"]


def test_split_keeps_good_messages_before_a_bad_one() -> None:
    messages = split_datagram(frame(b"abcd") + bytes(7))
    assert isinstance(messages[0], ConnectorMessage)
    assert isinstance(messages[1], Rejected)
    assert len(messages) == 2


# --- classify: the rows of §4.1 ------------------------------------------------------------


def ulog_payload(rtype: int = 8, data: bytes = bytes(8), uuid: bytes = b"LOG-1") -> bytes:
    datagram = encode_request(
        Protocol.ULOG, seq=5, request_type=rtype, uuid=uuid, luid=0x1000, data=data
    )
    return datagram[36:]


def take5_payload(rtype: int = 8, data: bytes = bytes(8), uuid: bytes = b"LOG-1") -> bytes:
    datagram = encode_request(Protocol.TAKE5, seq=5, request_type=rtype, uuid=uuid, data=data)
    return datagram[36:]


def patched(payload: bytes, offset: int, value: bytes) -> bytes:
    return payload[:offset] + value + payload[offset + len(value) :]


def test_classify_ulog() -> None:
    assert classify(ulog_payload()) is Protocol.ULOG


def test_classify_take5() -> None:
    assert classify(take5_payload()) is Protocol.TAKE5


def test_classify_take5_in_sync_that_is_length_consistent_as_ulog() -> None:
    # 152 + 8 = 160 bytes; the ulog data_size word at 156 is the region (0), yet
    # the discriminator at 144 (request_type 8) makes it take 5.
    assert classify(take5_payload(8, bytes(8))) is Protocol.TAKE5


def test_classify_ulog_with_eight_payload_bytes_is_not_take5() -> None:
    assert classify(ulog_payload(8, bytes(8))) is Protocol.ULOG


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("ulog error not 0 (and above 255)", patched(ulog_payload(), 144, b"\0\1\0\0")),
        ("take5 request_type 0", patched(take5_payload(), 144, bytes(4))),
        ("take5 request_type 256", patched(take5_payload(), 144, b"\0\1\0\0")),
        ("take5 error not 0", patched(take5_payload(), 136, b"\xea\xff\xff\xff")),
        ("ulog data_size too big", patched(ulog_payload(), 156, b"\x09\0\0\0")),
        ("take5 data_size too small", patched(take5_payload(), 148, b"\x07\0\0\0")),
        ("ulog empty uuid", patched(ulog_payload(), 8, b"\0")),
        ("take5 empty uuid", patched(take5_payload(), 0, b"\0")),
        ("ulog uuid without NUL", patched(ulog_payload(), 8, b"u" * 129)),
        ("take5 uuid without NUL", patched(take5_payload(), 0, b"u" * 129)),
        ("ulog padding", patched(ulog_payload(), 139, b"\1")),
        ("take5 padding", patched(take5_payload(), 129, b"\1")),
        ("shorter than take5", take5_payload(data=b"")[:151]),
        ("one byte", b"\1"),
        ("empty", b""),
    ],
)
def test_classify_neither(name: str, payload: bytes) -> None:
    assert classify(payload) is None


@pytest.mark.parametrize("protocol", list(Protocol))
def test_decode_request_refuses_the_other_shape(protocol: Protocol) -> None:
    other = take5_payload() if protocol is Protocol.ULOG else ulog_payload()
    with pytest.raises(KernelProtocolError):
        decode_request(other, protocol)


def test_encode_request_ignores_luid_and_version_for_take5() -> None:
    plain = encode_request(Protocol.TAKE5, seq=1, request_type=1, uuid=b"U")
    assert (
        encode_request(Protocol.TAKE5, seq=1, request_type=1, uuid=b"U", luid=9, version=1) == plain
    )


@pytest.mark.parametrize("uuid", [b"a\0b", b"u" * 129])
def test_encode_request_refuses_a_bad_uuid(uuid: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(Protocol.ULOG, seq=1, request_type=1, uuid=uuid)


# --- properties -------------------------------------------------------------------------------

uuids = st.binary(min_size=1, max_size=128).filter(lambda b: b"\0" not in b)
u32s = st.integers(0, 0xFFFF_FFFF)


@st.composite
def request_datagrams(draw: st.DrawFn) -> tuple[Protocol, dict[str, object], bytes]:
    protocol = draw(st.sampled_from(list(Protocol)))
    fields: dict[str, object] = {
        "seq": draw(u32s),
        "uuid": draw(uuids),
        "data": draw(st.binary(max_size=400)),
    }
    if protocol is Protocol.ULOG:
        fields["request_type"] = draw(u32s)
        fields["luid"] = draw(st.integers(0, 2**64 - 1))
        fields["version"] = draw(u32s)
    else:
        fields["request_type"] = draw(st.integers(1, 255))
    pad = draw(st.booleans())
    return protocol, fields, encode_request(protocol, pad_to_4=pad, **fields)  # type: ignore[arg-type]


@given(request_datagrams())
def test_request_round_trips(case: tuple[Protocol, dict[str, object], bytes]) -> None:
    protocol, fields, datagram = case
    (msg,) = split_datagram(datagram)
    assert isinstance(msg, ConnectorMessage)
    assert classify(msg.payload) is protocol
    header, payload = decode_request(msg.payload, protocol)
    assert (header.seq, header.uuid, header.request_type) == (
        fields["seq"],
        fields["uuid"],
        fields["request_type"],
    )
    assert (header.luid, header.version) == (fields.get("luid", 0), fields.get("version", 0))
    assert payload == fields["data"]
    assert msg.seq == header.seq


@given(request_datagrams(), st.binary(max_size=300), st.integers(-4095, 0))
def test_reply_round_trips(
    case: tuple[Protocol, dict[str, object], bytes], data: bytes, error: int
) -> None:
    protocol, _fields, datagram = case
    header, _ = decode_request(datagram[36 : 36 + CN_MSG.unpack_from(datagram, 16)[4]], protocol)
    data = data if error == 0 else b""
    reply = decode_reply(encode_reply(header, error=error, data=data), protocol)
    assert (reply.bare, reply.seq, reply.cn_seq, reply.error) == (
        False,
        header.seq,
        header.seq,
        error,
    )
    assert (reply.data, reply.uuid, reply.request_type) == (data, header.uuid, header.request_type)


@given(st.binary(max_size=600))
def test_split_datagram_never_raises(data: bytes) -> None:
    for item in split_datagram(data):
        assert isinstance(item, ConnectorMessage | Rejected)


def mutated(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid-looking payloads with a few bytes overwritten or cut off."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        payload = bytearray(draw(base))
        for _ in range(draw(st.integers(0, 3))):
            if payload:
                payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
        return bytes(payload[: draw(st.integers(0, len(payload)))])

    return build()


payloads = st.one_of(
    st.binary(max_size=600),
    mutated(request_datagrams().map(lambda case: case[2][36:])),
)


@given(payloads)
def test_classify_never_raises(payload: bytes) -> None:
    assert classify(payload) in (Protocol.ULOG, Protocol.TAKE5, None)


@given(payloads)
def test_at_most_one_protocol_decodes(payload: bytes) -> None:
    decoded = []
    for protocol in Protocol:
        try:
            decode_request(payload, protocol)
        except KernelProtocolError:
            continue
        decoded.append(protocol)
    assert len(decoded) <= 1
    assert classify(payload) == (decoded[0] if decoded else None)


@given(payloads, st.sampled_from(list(Protocol)))
def test_decode_request_raises_only_kernel_protocol_error(
    payload: bytes, protocol: Protocol
) -> None:
    with contextlib.suppress(KernelProtocolError):
        decode_request(payload, protocol)


@given(st.binary(max_size=400), st.sampled_from(list(Protocol)))
def test_decode_reply_raises_only_local_protocol_error(data: bytes, protocol: Protocol) -> None:
    with contextlib.suppress(LocalProtocolError):
        decode_reply(data, protocol)


def imported_top_levels(path: str) -> set[str]:
    """Top-level names of every module the source file at ``path`` imports."""
    tree = ast.parse(Path(path).read_text())
    return {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }


NETLINK_CORE_FORBIDDEN = {"trio", "socket", "os", "pyfuse3", "cffi"}


def test_wire_is_a_pure_core_module() -> None:
    assert not imported_top_levels(wire_module.__file__) & NETLINK_CORE_FORBIDDEN
