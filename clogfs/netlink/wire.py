"""Byte layouts of the kernel ⇄ daemon wire: nlmsghdr, cn_msg and both request headers.

This module owns every byte offset of a connector datagram (``spec/protocol.md`` §2-§4, §8):

- ``struct nlmsghdr`` (16 bytes) and ``struct cn_msg`` (20 bytes), shared by both formats;
- the mainline header ``struct dm_ulog_request`` (H = 160, :attr:`Protocol.ULOG`) and the
  take-5 header ``struct dm_clog_request`` (H = 152, :attr:`Protocol.TAKE5`);
- the rules that split a datagram into connector messages (§2.4 checks 2-5), tell the two
  header formats apart (§4.1), and build full replies (§8.1) and bare acks (§8.2);
- the kernel's side of the same bytes (:func:`encode_request`, :func:`decode_reply`) for the
  kernel emulator and the tests.

All integers are in host byte order (the kernel and the daemon share the machine), so every
``struct`` format here starts with ``=``. The request header starts at byte 36, which is only
4-byte aligned: fields are read at explicit offsets, never through alignment.

What each request type carries in its payload is ``clogfs.netlink.requests``' business.

Core module: no trio, no sockets, no ``os``; standard library only.
"""

from __future__ import annotations

import enum
import errno as _errno
import struct
from dataclasses import dataclass

from clogfs.errors import KernelProtocolError, LocalProtocolError

# --- include/uapi/linux/netlink.h ---------------------------------------------------------
NETLINK_CONNECTOR = 11
SOL_NETLINK = 270  # include/linux/socket.h
NETLINK_ADD_MEMBERSHIP = 1
NLMSG_DONE = 3
NLMSG_ALIGNTO = 4
NLMSG_HDRLEN = 16
# struct nlmsghdr: __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq;
# __u32 nlmsg_pid
NLMSGHDR = struct.Struct("=IHHII")

# --- include/uapi/linux/connector.h -------------------------------------------------------
CN_IDX_DM = 7  # device mapper; also the multicast group number the requests go to
CN_VAL_DM_USERSPACE_LOG = 1  # seed: CN_VAL_DM_CLUSTER_LOG, the same value
CN_MSG_HDRLEN = 20
CONNECTOR_MAX_MSG_SIZE = 16384
# struct cn_msg: struct cb_id { __u32 idx; __u32 val; } id; __u32 seq; __u32 ack; __u16 len;
# __u16 flags; __u8 data[]
CN_MSG = struct.Struct("=IIIIHH")
CN_MSG_OFFSET = NLMSG_HDRLEN  # 16
PAYLOAD_OFFSET = NLMSG_HDRLEN + CN_MSG_HDRLEN  # 36: where the request header starts

# --- include/uapi/linux/dm-ioctl.h --------------------------------------------------------
DM_UUID_LEN = 129
DM_NAME_LEN = 128

# --- include/uapi/linux/dm-log-userspace.h ------------------------------------------------
DM_ULOG_REQUEST_MASK = 0xFF
# Version history of struct dm_ulog_request (spec/protocol.md §4.3):
#   0: 2.6.31-2.6.37, the bytes were padding (treated as 1)
#   1: 2.6.38 (86a54a4802df), the field exists; CTR reply must be empty
#   2: about 3.1, CTR may return the log device
#   3: 3.14 (5066a4df1f42) on, FLUSH may carry marks (integrated flush)
DM_ULOG_REQUEST_VERSION = 3
DM_ULOG_REQUEST_SIZE = 160
# struct dm_ulog_request: __u64 luid; char uuid[DM_UUID_LEN]; char padding[3]; __u32 version;
# __s32 error; __u32 seq; __u32 request_type; __u32 data_size; char data[]
ULOG_HEADER = struct.Struct("=Q129s3sIiIII")
DM_ULOG_PREALLOCED_SIZE = 512  # drivers/md/dm-log-userspace-transfer.c: the request buffer

# --- seed include/linux/dm-log-cluster.h (take 5) ----------------------------------------
DM_CLOG_REQUEST_SIZE = 152
# struct dm_clog_request: char uuid[DM_UUID_LEN]; char padding[7]; int error; uint32_t seq;
# uint32_t request_type; uint32_t data_size; char data[]
TAKE5_HEADER = struct.Struct("=129s7siIII")

assert NLMSGHDR.size == NLMSG_HDRLEN
assert CN_MSG.size == CN_MSG_HDRLEN
assert ULOG_HEADER.size == DM_ULOG_REQUEST_SIZE
assert TAKE5_HEADER.size == DM_CLOG_REQUEST_SIZE

_U32 = struct.Struct("=I")  # one u32/s32 field read at an explicit offset
_S32 = struct.Struct("=i")
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_S32_MIN = -(2**31)


class Protocol(enum.Enum):
    """The two wire formats; they share the socket, the connector id and the group."""

    ULOG = "ulog"  # mainline struct dm_ulog_request, 160 bytes
    TAKE5 = "take5"  # seed struct dm_clog_request, 152 bytes

    # Members are singletons compared by identity, so the identity hash is consistent with
    # equality; Enum's own __hash__ (of the name) is a Python call on every dict lookup of a
    # log key, several per request.
    __hash__ = object.__hash__


@dataclass(frozen=True)
class _Layout:
    """Where the fields of one request header sit, relative to the connector payload."""

    size: int  # H
    uuid: int
    padding: slice
    error: int
    seq: int
    request_type: int
    data_size: int


_LAYOUTS = {
    Protocol.ULOG: _Layout(
        size=DM_ULOG_REQUEST_SIZE,
        uuid=8,
        padding=slice(137, 140),
        error=144,
        seq=148,
        request_type=152,
        data_size=156,
    ),
    Protocol.TAKE5: _Layout(
        size=DM_CLOG_REQUEST_SIZE,
        uuid=0,
        padding=slice(129, 136),
        error=136,
        seq=140,
        request_type=144,
        data_size=148,
    ),
}


def header_size(protocol: Protocol) -> int:
    """Return H, the request header size of ``protocol`` (160 or 152)."""
    return _LAYOUTS[protocol].size


def max_request_payload(protocol: Protocol) -> int:
    """The most payload bytes a kernel request of ``protocol`` can carry (§9).

    Both kernels build requests in one ``DM_ULOG_PREALLOCED_SIZE`` (512-byte) buffer holding
    the ``cn_msg``, the header and the payload: 332 bytes mainline, 340 take 5.
    """
    return DM_ULOG_PREALLOCED_SIZE - CN_MSG_HDRLEN - header_size(protocol)


def max_reply_payload(protocol: Protocol) -> int:
    """The most reply payload bytes the connector accepts: 16384 - 20 - H (§9)."""
    return CONNECTOR_MAX_MSG_SIZE - CN_MSG_HDRLEN - header_size(protocol)


def nlmsg_align(length: int) -> int:
    """``NLMSG_ALIGN``: round ``length`` up to a multiple of 4."""
    return (length + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


# --- datagrams -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorMessage:
    """One ``nlmsghdr`` + ``cn_msg`` that passed checks 2-5 of protocol.md §2.4."""

    nlmsg_seq: int
    nlmsg_pid: int
    idx: int
    val: int
    seq: int
    ack: int
    flags: int
    payload: bytes  # exactly cn_msg.len bytes from offset 36


@dataclass(frozen=True)
class Rejected:
    """Something in a datagram that is not a usable request."""

    reason: str  # one line for the log
    cn_seq: int | None  # known cn_msg.seq: the endpoint sends a bare ack EINVAL; None: drop
    silent: bool  # other connector ids (§2.4 check 4): drop without a warning


def split_datagram(data: bytes) -> list[ConnectorMessage | Rejected]:
    """Walk the netlink messages of one received datagram (protocol.md §2.4, checks 2-5).

    The messages are visited in ``NLMSG_ALIGN(nlmsg_len)`` steps; the last one may lack its
    alignment padding. A message whose ``nlmsg_len`` does not fit ends the walk (check 2).
    Check 1 (the sender's port id) needs the socket address and is the endpoint's; check 6
    (the header shape) is :func:`classify`'s.

    Args:
        data: the datagram exactly as ``recvfrom()`` returned it.

    Returns:
        One entry per netlink message, in order: a :class:`ConnectorMessage` whose
        ``payload`` is exactly ``cn_msg.len`` bytes, or a :class:`Rejected`.
    """
    out: list[ConnectorMessage | Rejected] = []
    offset = 0
    if len(data) < NLMSG_HDRLEN:
        return [Rejected(f"datagram of {len(data)} bytes is shorter than a nlmsghdr", None, False)]
    while offset < len(data):
        remaining = len(data) - offset
        if remaining < NLMSG_HDRLEN:
            out.append(Rejected(f"{remaining} trailing bytes after message", None, False))
            break
        nlmsg_len, nlmsg_type, _flags, nlmsg_seq, nlmsg_pid = NLMSGHDR.unpack_from(data, offset)
        if not NLMSG_HDRLEN <= nlmsg_len <= remaining:
            reason = f"nlmsg_len {nlmsg_len} at offset {offset} outside 16..{remaining}"
            out.append(Rejected(reason, None, False))
            break
        out.append(_check_message(data, offset, nlmsg_len, nlmsg_type, nlmsg_seq, nlmsg_pid))
        offset += nlmsg_align(nlmsg_len)
    return out


def _check_message(
    data: bytes, offset: int, nlmsg_len: int, nlmsg_type: int, nlmsg_seq: int, nlmsg_pid: int
) -> ConnectorMessage | Rejected:
    """Apply checks 3-5 of §2.4 to the message at ``offset`` whose length is in bounds."""
    if nlmsg_type != NLMSG_DONE:
        return Rejected(f"nlmsg_type {nlmsg_type} is not NLMSG_DONE", None, False)
    if nlmsg_len < PAYLOAD_OFFSET:
        return Rejected(f"nlmsg_len {nlmsg_len} holds no cn_msg", None, True)
    idx, val, seq, ack, length, flags = CN_MSG.unpack_from(data, offset + CN_MSG_OFFSET)
    if (idx, val) != (CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG):
        return Rejected(f"connector id {{{idx},{val}}} is not ours", None, True)
    if length < 1 or PAYLOAD_OFFSET + length > nlmsg_len:
        return Rejected(f"cn_msg.len {length} does not fit nlmsg_len {nlmsg_len}", seq, False)
    start = offset + PAYLOAD_OFFSET
    return ConnectorMessage(
        nlmsg_seq=nlmsg_seq,
        nlmsg_pid=nlmsg_pid,
        idx=idx,
        val=val,
        seq=seq,
        ack=ack,
        flags=flags,
        payload=bytes(data[start : start + length]),
    )


# --- request headers -----------------------------------------------------------------------


@dataclass(frozen=True)
class RequestHeader:
    """One decoded request header, either format."""

    protocol: Protocol
    luid: int  # 0 for take 5
    uuid: bytes  # the bytes before the first NUL of the 129-byte field
    version: int  # 0 for take 5
    error: int  # s32
    seq: int  # header seq (u32)
    request_type: int  # the whole u32 as received; the type is & DM_ULOG_REQUEST_MASK
    data_size: int
    raw: bytes  # the H header bytes exactly as received (echoed in replies)


def _shape_problem(payload: bytes, protocol: Protocol) -> str | None:
    """Say why ``payload`` is not a request header of ``protocol`` (§4.1), or None if it is."""
    lay = _LAYOUTS[protocol]
    length = len(payload)
    if length < lay.size:
        return f"{length} bytes are shorter than the {protocol.value} header ({lay.size})"
    (word,) = _U32.unpack_from(payload, 144)  # ulog error, take5 request_type
    if protocol is Protocol.ULOG:
        if word != 0:
            return f"error field {word:#x} is not 0"
    else:
        if not 1 <= word <= DM_ULOG_REQUEST_MASK:
            return f"request_type {word:#x} outside 1..255"
        (error,) = _U32.unpack_from(payload, lay.error)
        if error != 0:
            return f"error field {error:#x} is not 0"
    (data_size,) = _U32.unpack_from(payload, lay.data_size)
    if data_size != length - lay.size:
        return f"data_size {data_size} but {length - lay.size} payload bytes"
    uuid_field = payload[lay.uuid : lay.uuid + DM_UUID_LEN]
    if uuid_field[0] == 0:
        return "uuid is empty"
    if 0 not in uuid_field:
        return "uuid is not NUL-terminated"
    if any(payload[lay.padding]):
        return "header padding is not zero"
    return None


def classify(payload: bytes) -> Protocol | None:
    """Tell which wire format a connector payload is in (protocol.md §4.1).

    The u32 at payload offset 144 is ``error`` (always 0) in a mainline request and
    ``request_type`` (1..255) in a take-5 request; lengths, the uuid field and the padding
    confirm it.

    Args:
        payload: the ``cn_msg.len`` bytes from datagram offset 36.

    Returns:
        The format whose shape the payload has, or None if it has neither (or, impossibly,
        both: the message is then malformed rather than guessed at).
    """
    if len(payload) < DM_CLOG_REQUEST_SIZE:
        return None
    (word,) = _U32.unpack_from(payload, 144)
    # The word alone picks the only candidate (0: mainline error; 1..255: take-5 type), so
    # "both shapes" cannot happen and only one shape is checked.
    candidate = Protocol.ULOG if word == 0 else Protocol.TAKE5
    return candidate if _shape_problem(payload, candidate) is None else None


def decode_request(payload: bytes, protocol: Protocol) -> tuple[RequestHeader, bytes]:
    """Decode the request header of ``protocol`` and split off its payload.

    Args:
        payload: the ``cn_msg.len`` bytes from datagram offset 36.
        protocol: the format to decode; the payload must have exactly its shape (§4.1).

    Returns:
        The header and the ``data_size`` payload bytes after it.

    Raises:
        KernelProtocolError: the payload does not have the shape of ``protocol``.
    """
    problem = _shape_problem(payload, protocol)
    if problem is not None:
        raise KernelProtocolError(f"malformed {protocol.value} request: {problem}")
    size = _LAYOUTS[protocol].size
    if protocol is Protocol.ULOG:
        luid, uuid, _pad, version, error, seq, rtype, data_size = ULOG_HEADER.unpack_from(payload)
    else:
        uuid, _pad, error, seq, rtype, data_size = TAKE5_HEADER.unpack_from(payload)
        luid = version = 0
    header = RequestHeader(
        protocol=protocol,
        luid=luid,
        uuid=uuid.split(b"\0", 1)[0],
        version=version,
        error=error,
        seq=seq,
        request_type=rtype,
        data_size=data_size,
        raw=bytes(payload[:size]),
    )
    return header, bytes(payload[size:])


# --- replies (daemon → kernel) -------------------------------------------------------------


def _datagram(
    *, nlmsg_seq: int, nlmsg_pid: int, cn_seq: int, ack: int, body: bytes, pad_to_4: bool = False
) -> bytes:
    """Frame ``body`` (the connector payload) as one NLMSG_DONE message for connector {7,1}."""
    nlmsg_len = PAYLOAD_OFFSET + len(body)
    pad = nlmsg_align(nlmsg_len) - nlmsg_len if pad_to_4 else 0
    return (
        NLMSGHDR.pack(nlmsg_len + pad, NLMSG_DONE, 0, nlmsg_seq, nlmsg_pid)
        + CN_MSG.pack(CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG, cn_seq, ack, len(body), 0)
        + body
        + bytes(pad)
    )


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise LocalProtocolError(f"{name} {value} does not fit a u32")


def encode_reply(
    header: RequestHeader, *, error: int, data: bytes = b"", nlmsg_pid: int = 0
) -> bytes:
    """Build the full reply datagram for a request (protocol.md §8.1).

    The request header is echoed byte for byte with only ``error`` and ``data_size`` set;
    ``cn_msg.seq`` and ``nlmsg_seq`` carry the header ``seq``.

    Args:
        header: the decoded request being answered.
        error: 0 or a negative errno.
        data: the reply payload (empty whenever ``error`` is not 0).
        nlmsg_pid: the daemon's own port id (ignored by the kernel).

    Returns:
        The datagram to send, ``nlmsg_len`` = 36 + H + len(data) exactly.

    Raises:
        LocalProtocolError: a positive or out-of-range error, data with an error, or a
            datagram larger than the connector accepts.
    """
    if error > 0 or error < _S32_MIN:
        raise LocalProtocolError(f"reply error {error} is not 0 or a negative errno")
    if error != 0 and data:
        raise LocalProtocolError(f"reply with error {error} carries {len(data)} data bytes")
    if len(data) > max_reply_payload(header.protocol):
        raise LocalProtocolError(
            f"reply payload of {len(data)} bytes exceeds the connector maximum "
            f"{max_reply_payload(header.protocol)}"
        )
    _check_u32("nlmsg_pid", nlmsg_pid)
    lay = _LAYOUTS[header.protocol]
    if len(header.raw) != lay.size:
        raise LocalProtocolError(f"header.raw has {len(header.raw)} bytes, not {lay.size}")
    raw = bytearray(header.raw)
    _S32.pack_into(raw, lay.error, error)
    _U32.pack_into(raw, lay.data_size, len(data))
    return _datagram(
        nlmsg_seq=header.seq, nlmsg_pid=nlmsg_pid, cn_seq=header.seq, ack=0, body=bytes(raw) + data
    )


def encode_bare_ack(cn_seq: int, errno: int, *, nlmsg_pid: int = 0) -> bytes:
    """Build a bare ack (protocol.md §8.2): no header, ``cn_msg.ack`` = positive errno.

    Sent only when no header can be echoed (a malformed or mismatched message).

    Args:
        cn_seq: the request's ``cn_msg.seq``, which the kernel matches bare acks on.
        errno: the positive errno, never ``EAGAIN`` (the kernel would resend at once).
        nlmsg_pid: the daemon's own port id (ignored by the kernel).

    Raises:
        LocalProtocolError: ``errno`` is not positive, or is ``EAGAIN``.
    """
    if errno <= 0 or errno == _errno.EAGAIN:
        raise LocalProtocolError(f"bare ack errno {errno} must be positive and not EAGAIN")
    _check_u32("cn_seq", cn_seq)
    _check_u32("errno", errno)
    _check_u32("nlmsg_pid", nlmsg_pid)
    return _datagram(nlmsg_seq=cn_seq, nlmsg_pid=nlmsg_pid, cn_seq=cn_seq, ack=errno, body=b"")


# --- the kernel's side: requests out, replies in (emulator and tests) ---------------------


def encode_request(
    protocol: Protocol,
    *,
    seq: int,
    request_type: int,
    uuid: bytes,
    luid: int = 0,
    version: int = DM_ULOG_REQUEST_VERSION,
    data: bytes = b"",
    cn_seq: int | None = None,
    pad_to_4: bool = False,
) -> bytes:
    """Build a request datagram as the kernel sends it (protocol.md §3).

    Args:
        protocol: the header format.
        seq: the header ``seq``.
        request_type: the whole u32 ``request_type`` field.
        uuid: 0-128 bytes without NUL (empty only to build malformed requests).
        luid: mainline only; ignored for take 5, whose header has no such field (callers
            drive both formats with one set of arguments).
        version: mainline only; ignored for take 5, which has no such field.
        data: the payload.
        cn_seq: ``cn_msg.seq`` and ``nlmsg_seq``; defaults to ``seq`` as the kernel does.
        pad_to_4: round ``nlmsg_len`` up to a multiple of 4 and append zero pad bytes, as
            seed-era connectors did.

    Raises:
        LocalProtocolError: a value that does not fit its field.
    """
    if len(uuid) >= DM_UUID_LEN or b"\0" in uuid:
        raise LocalProtocolError(f"uuid {uuid!r} is not 0-128 bytes without NUL")
    for name, value in (("seq", seq), ("request_type", request_type), ("version", version)):
        _check_u32(name, value)
    cn_seq = seq if cn_seq is None else cn_seq
    _check_u32("cn_seq", cn_seq)
    if not 0 <= luid <= _U64_MAX:
        raise LocalProtocolError(f"luid {luid} does not fit a u64")
    if protocol is Protocol.ULOG:
        header = ULOG_HEADER.pack(luid, uuid, b"", version, 0, seq, request_type, len(data))
    else:
        header = TAKE5_HEADER.pack(uuid, b"", 0, seq, request_type, len(data))
    if CN_MSG_HDRLEN + len(header) + len(data) > CONNECTOR_MAX_MSG_SIZE:
        raise LocalProtocolError(f"request payload of {len(data)} bytes is too large")
    return _datagram(
        nlmsg_seq=cn_seq, nlmsg_pid=0, cn_seq=cn_seq, ack=0, body=header + data, pad_to_4=pad_to_4
    )


@dataclass(frozen=True)
class Reply:
    """A reply as the kernel sees it; a bare ack has ``error`` = -ack and ``seq`` = cn_seq."""

    bare: bool
    cn_seq: int
    seq: int
    error: int
    data: bytes
    request_type: int  # echoed; 0 for a bare ack
    uuid: bytes  # echoed; b"" for a bare ack
    luid: int  # echoed; 0 for a bare ack and for take 5


def decode_reply(datagram: bytes, protocol: Protocol) -> Reply:
    """Decode a reply datagram the way the kernel would accept it (protocol.md §2.3, §7.1).

    Stricter than the kernel: besides its acceptance rules this requires exactly one
    message, ``data_size`` equal to the payload after the header, and
    ``nlmsg_len`` = 36 + ``cn_msg.len`` exactly (§3.1).

    Args:
        datagram: the bytes received from the daemon.
        protocol: the header format the daemon should have echoed.

    Raises:
        LocalProtocolError: the daemon (clogfs) produced a reply the kernel would refuse or
            misread.
    """
    if len(datagram) < PAYLOAD_OFFSET:
        raise LocalProtocolError(f"reply of {len(datagram)} bytes holds no cn_msg")
    nlmsg_len, nlmsg_type, _flags, _nlseq, _pid = NLMSGHDR.unpack_from(datagram)
    if nlmsg_len != len(datagram):
        raise LocalProtocolError(f"nlmsg_len {nlmsg_len} but the datagram has {len(datagram)}")
    if nlmsg_type != NLMSG_DONE:
        raise LocalProtocolError(f"reply nlmsg_type {nlmsg_type} is not NLMSG_DONE")
    if nlmsg_len - NLMSG_HDRLEN > CONNECTOR_MAX_MSG_SIZE:
        raise LocalProtocolError(f"reply nlmsg_len {nlmsg_len} exceeds the connector maximum")
    idx, val, cn_seq, ack, length, _cn_flags = CN_MSG.unpack_from(datagram, CN_MSG_OFFSET)
    if (idx, val) != (CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG):
        raise LocalProtocolError(f"reply connector id {{{idx},{val}}} is not {{7,1}}")
    if PAYLOAD_OFFSET + length != nlmsg_len:
        raise LocalProtocolError(f"cn_msg.len {length} does not match nlmsg_len {nlmsg_len}")
    if length == 0:
        return Reply(True, cn_seq, cn_seq, -ack, b"", 0, b"", 0)
    lay = _LAYOUTS[protocol]
    if length < lay.size:
        raise LocalProtocolError(
            f"Incomplete message received (expected {lay.size}, got {length}): [{cn_seq}]"
        )
    body = datagram[PAYLOAD_OFFSET:]
    if protocol is Protocol.ULOG:
        luid, uuid, _pad, _version, error, seq, rtype, data_size = ULOG_HEADER.unpack_from(body)
    else:
        uuid, _pad, error, seq, rtype, data_size = TAKE5_HEADER.unpack_from(body)
        luid = 0
    if data_size != length - lay.size:
        raise LocalProtocolError(f"reply data_size {data_size} but {length - lay.size} bytes")
    if error > 0:
        raise LocalProtocolError(f"reply error {error} is positive")
    if error != 0 and data_size != 0:
        raise LocalProtocolError(f"reply with error {error} carries {data_size} data bytes")
    return Reply(
        bare=False,
        cn_seq=cn_seq,
        seq=seq,
        error=error,
        data=bytes(body[lay.size :]),
        request_type=rtype,
        uuid=uuid.split(b"\0", 1)[0],
        luid=luid,
    )
