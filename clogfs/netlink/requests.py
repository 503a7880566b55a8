"""The request types of the dirty-log wire: one table row per type, with its payload codecs.

Every type has one row in :data:`REQUESTS` (protocol.md §5.1): how its request payload is
decoded (daemon side) and encoded (kernel side, for the emulator), how its result is
encoded into the reply (daemon side) and decoded (kernel side), the reply capacity the
waiting kernel offers in each wire format, and whether it changes log state (and so goes
through the ordered group). The row's ``doc`` summarises both payloads of both formats,
as the kernel header does for each ``DM_ULOG_*`` constant. A new request type is a new row.

Decoded request payloads:

==============================  ==============================================================
CTR                             :class:`CtrPayload`
IS_CLEAN, IN_SYNC,              ``int`` region
IS_REMOTE_RECOVERING
FLUSH                           ``tuple[int, ...]`` regions to mark, maybe empty (ulog only)
MARK_REGION, CLEAR_REGION       non-empty ``tuple[int, ...]``
SET_REGION_SYNC                 :class:`SetRegionSync`
all others                      ``None`` (the payload must be empty)
==============================  ==============================================================

Results handed to :func:`encode_result`:

==============================  ==============================================================
CTR                             ``bytes`` device name (without NUL) or ``None``
IS_CLEAN, IN_SYNC               ``bool``
GET_REGION_SIZE, GET_SYNC_COUNT ``int``
GET_RESYNC_WORK                 :class:`ResyncWork`
IS_REMOTE_RECOVERING            :class:`RemoteRecovering`
STATUS_INFO, STATUS_TABLE       ``str`` (UTF-8, ``surrogateescape`` for raw uuid bytes)
all others                      ``None``
==============================  ==============================================================

Regions are ``region_t``/``uint64_t`` in host byte order; clogfs supports only 8-byte regions.

Core module: no trio, no sockets, no ``os``; standard library only.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from clogfs.errors import KernelProtocolError, LocalProtocolError
from clogfs.netlink.wire import (
    DM_NAME_LEN,
    DM_ULOG_REQUEST_MASK,
    Protocol,
    max_reply_payload,
    max_request_payload,
)

# region_t / uint64_t, include/uapi/linux/dm-log-userspace.h ("uint64_t region")
REGION = struct.Struct("=Q")
# GET_REGION_SIZE, GET_SYNC_COUNT replies: uint64_t
U64 = struct.Struct("=Q")
# IS_CLEAN, IN_SYNC replies, mainline: int64_t is_clean / in_sync
ULOG_BOOL = struct.Struct("=q")
# IS_CLEAN, IN_SYNC replies, take 5 (seed cluster_is_clean()): int
TAKE5_BOOL = struct.Struct("=i")
# GET_RESYNC_WORK reply: struct { int64_t i; region_t r; }
RESYNC_WORK = struct.Struct("=qQ")
# SET_REGION_SYNC request: struct { region_t r; int64_t i; } (order differs from the above)
SET_REGION_SYNC = struct.Struct("=Qq")
# IS_REMOTE_RECOVERING reply: struct { int64_t is_recovering; uint64_t in_sync_hint; }
REMOTE_RECOVERING = struct.Struct("=qQ")

_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class RequestType(enum.IntEnum):
    """Request types; the numbers are the kernel's and identical in both wire formats."""

    CTR = 1  # DM_ULOG_CTR (seed DM_CLOG_CTR)
    DTR = 2  # DM_ULOG_DTR
    PRESUSPEND = 3  # DM_ULOG_PRESUSPEND
    POSTSUSPEND = 4  # DM_ULOG_POSTSUSPEND
    RESUME = 5  # DM_ULOG_RESUME
    GET_REGION_SIZE = 6  # DM_ULOG_GET_REGION_SIZE
    IS_CLEAN = 7  # DM_ULOG_IS_CLEAN
    IN_SYNC = 8  # DM_ULOG_IN_SYNC
    FLUSH = 9  # DM_ULOG_FLUSH
    MARK_REGION = 10  # DM_ULOG_MARK_REGION
    CLEAR_REGION = 11  # DM_ULOG_CLEAR_REGION
    GET_RESYNC_WORK = 12  # DM_ULOG_GET_RESYNC_WORK
    SET_REGION_SYNC = 13  # DM_ULOG_SET_REGION_SYNC
    GET_SYNC_COUNT = 14  # DM_ULOG_GET_SYNC_COUNT
    STATUS_INFO = 15  # DM_ULOG_STATUS_INFO
    STATUS_TABLE = 16  # DM_ULOG_STATUS_TABLE
    IS_REMOTE_RECOVERING = 17  # DM_ULOG_IS_REMOTE_RECOVERING


def request_type_of(raw: int) -> RequestType | None:
    """Return the type in a raw ``request_type`` word (masked), or None if it is not 1-17."""
    try:
        return RequestType(raw & DM_ULOG_REQUEST_MASK)
    except ValueError:
        return None


# --- value types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrPayload:
    """A CTR string; ``reconnect`` when its last counted byte was NUL (mainline only, §7.4)."""

    text: bytes
    reconnect: bool


@dataclass(frozen=True)
class SetRegionSync:
    """SET_REGION_SYNC: ``in_sync`` is the wire ``s64`` read as non-zero."""

    region: int
    in_sync: bool


@dataclass(frozen=True)
class ResyncWork:
    """GET_RESYNC_WORK result: ``i`` = 1 recover ``region``; ``i`` = 0 no work, ``region`` 0."""

    i: int
    region: int


@dataclass(frozen=True)
class RemoteRecovering:
    """IS_REMOTE_RECOVERING result: ``is_recovering`` 0/1 and the kernel's new in-sync hint."""

    is_recovering: int
    hint: int


# --- payload codecs (request side) -----------------------------------------------------------


def _refuse(what: str) -> KernelProtocolError:
    return KernelProtocolError(what)


def _decode_empty(payload: bytes, protocol: Protocol) -> None:
    if payload:
        raise _refuse(f"{len(payload)} payload bytes where none are expected")


def _encode_empty(value: object, protocol: Protocol) -> bytes:
    if value is not None:
        raise LocalProtocolError(f"no payload expected, got {value!r}")
    return b""


def _decode_region(payload: bytes, protocol: Protocol) -> int:
    if len(payload) != REGION.size:
        raise _refuse(f"region payload of {len(payload)} bytes, expected {REGION.size}")
    (region,) = REGION.unpack(payload)
    return int(region)


def _check_region(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise LocalProtocolError(f"region {value!r} is not a u64")
    return value


def _encode_region(value: object, protocol: Protocol) -> bytes:
    return REGION.pack(_check_region(value))


def _decode_regions(payload: bytes) -> tuple[int, ...]:
    if len(payload) % REGION.size:
        raise _refuse(f"region list of {len(payload)} bytes is not a multiple of 8")
    return tuple(r for (r,) in REGION.iter_unpack(payload))


def _encode_regions(value: object) -> bytes:
    if not isinstance(value, Sequence):
        raise LocalProtocolError(f"region list expected, got {value!r}")
    return b"".join(REGION.pack(_check_region(r)) for r in value)


def _decode_flush(payload: bytes, protocol: Protocol) -> tuple[int, ...]:
    if payload and protocol is Protocol.TAKE5:
        raise _refuse("take-5 FLUSH carries no payload")
    return _decode_regions(payload)


def _encode_flush(value: object, protocol: Protocol) -> bytes:
    data = _encode_regions(value)
    if data and protocol is Protocol.TAKE5:
        raise LocalProtocolError("take-5 FLUSH carries no payload")
    return data


def _decode_mark_clear(payload: bytes, protocol: Protocol) -> tuple[int, ...]:
    if not payload:
        raise _refuse("region list is empty")
    return _decode_regions(payload)


def _encode_mark_clear(value: object, protocol: Protocol) -> bytes:
    data = _encode_regions(value)
    if not data:
        raise LocalProtocolError("MARK/CLEAR need at least one region")
    return data


def _decode_ctr(payload: bytes, protocol: Protocol) -> CtrPayload:
    reconnect = protocol is Protocol.ULOG and payload.endswith(b"\0")
    text = payload[:-1] if reconnect else payload
    if not text:
        raise _refuse("CTR string is empty")
    if b"\0" in text:
        raise _refuse("CTR string contains a NUL")
    return CtrPayload(text=text, reconnect=reconnect)


def _encode_ctr(value: object, protocol: Protocol) -> bytes:
    if not isinstance(value, CtrPayload) or not value.text or b"\0" in value.text:
        raise LocalProtocolError(f"CtrPayload with a non-empty NUL-free text expected: {value!r}")
    if value.reconnect and protocol is Protocol.TAKE5:
        raise LocalProtocolError("take-5 reconnect CTR sends the string unchanged")
    return value.text + (b"\0" if value.reconnect else b"")


def _decode_set_region_sync(payload: bytes, protocol: Protocol) -> SetRegionSync:
    if len(payload) != SET_REGION_SYNC.size:
        raise _refuse(f"SET_REGION_SYNC payload of {len(payload)} bytes, expected 16")
    region, in_sync = SET_REGION_SYNC.unpack(payload)
    return SetRegionSync(region=region, in_sync=in_sync != 0)


def _encode_set_region_sync(value: object, protocol: Protocol) -> bytes:
    if not isinstance(value, SetRegionSync):
        raise LocalProtocolError(f"SetRegionSync expected, got {value!r}")
    return SET_REGION_SYNC.pack(_check_region(value.region), int(value.in_sync))


# --- result codecs (reply side) --------------------------------------------------------------


def _encode_no_result(result: object, protocol: Protocol) -> bytes:
    if result is not None:
        raise LocalProtocolError(f"no reply payload expected, got {result!r}")
    return b""


def _decode_no_result(data: bytes, protocol: Protocol) -> None:
    if data:
        raise LocalProtocolError(f"{len(data)} reply bytes where none are expected")


def _encode_ctr_result(result: object, protocol: Protocol) -> bytes:
    if result is None:
        return b""
    if not isinstance(result, bytes) or not result or b"\0" in result:
        raise LocalProtocolError(f"CTR device name must be non-empty bytes: {result!r}")
    return result + b"\0"


def _decode_ctr_result(data: bytes, protocol: Protocol) -> bytes | None:
    if not data:
        return None
    if not data.endswith(b"\0") or b"\0" in data[:-1] or len(data) == 1:
        raise LocalProtocolError(f"CTR device return string not properly terminated: {data!r}")
    return data[:-1]


def _bool_struct(protocol: Protocol) -> struct.Struct:
    return ULOG_BOOL if protocol is Protocol.ULOG else TAKE5_BOOL


def _encode_bool(result: object, protocol: Protocol) -> bytes:
    if not isinstance(result, bool):
        raise LocalProtocolError(f"bool result expected, got {result!r}")
    return _bool_struct(protocol).pack(int(result))


def _check_01(name: str, value: int) -> int:
    if value not in (0, 1):
        raise LocalProtocolError(f"{name} {value} is not exactly 0 or 1")
    return value


def _decode_bool(data: bytes, protocol: Protocol) -> bool:
    layout = _bool_struct(protocol)
    if len(data) != layout.size:
        raise LocalProtocolError(f"boolean reply of {len(data)} bytes, expected {layout.size}")
    (value,) = layout.unpack(data)
    return bool(_check_01("boolean reply", value))


def _encode_u64(result: object, protocol: Protocol) -> bytes:
    if type(result) is not int or not 0 <= result <= _U64_MAX:
        raise LocalProtocolError(f"u64 result expected, got {result!r}")
    return U64.pack(result)


def _decode_u64(data: bytes, protocol: Protocol) -> int:
    if len(data) != U64.size:
        raise LocalProtocolError(f"u64 reply of {len(data)} bytes")
    (value,) = U64.unpack(data)
    return int(value)


def _encode_resync_work(result: object, protocol: Protocol) -> bytes:
    if not isinstance(result, ResyncWork):
        raise LocalProtocolError(f"ResyncWork expected, got {result!r}")
    _check_01("GET_RESYNC_WORK i", result.i)
    if result.i == 0 and result.region != 0:
        raise LocalProtocolError("GET_RESYNC_WORK without work must send region 0")
    return RESYNC_WORK.pack(result.i, _check_region(result.region))


def _decode_resync_work(data: bytes, protocol: Protocol) -> ResyncWork:
    if len(data) != RESYNC_WORK.size:
        raise LocalProtocolError(f"GET_RESYNC_WORK reply of {len(data)} bytes")
    i, region = RESYNC_WORK.unpack(data)
    return ResyncWork(i=_check_01("GET_RESYNC_WORK i", i), region=region)


def _encode_remote_recovering(result: object, protocol: Protocol) -> bytes:
    if not isinstance(result, RemoteRecovering):
        raise LocalProtocolError(f"RemoteRecovering expected, got {result!r}")
    _check_01("is_recovering", result.is_recovering)
    return REMOTE_RECOVERING.pack(result.is_recovering, _check_region(result.hint))


def _decode_remote_recovering(data: bytes, protocol: Protocol) -> RemoteRecovering:
    if len(data) != REMOTE_RECOVERING.size:
        raise LocalProtocolError(f"IS_REMOTE_RECOVERING reply of {len(data)} bytes")
    is_recovering, hint = REMOTE_RECOVERING.unpack(data)
    return RemoteRecovering(is_recovering=_check_01("is_recovering", is_recovering), hint=hint)


def _status_bytes(result: object) -> bytes:
    if not isinstance(result, str):
        raise LocalProtocolError(f"status string expected, got {result!r}")
    data = result.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise LocalProtocolError("status string contains a NUL")
    return data


def _encode_status_info(result: object, protocol: Protocol) -> bytes:
    return _status_bytes(result) + b"\0"


def _decode_status_info(data: bytes, protocol: Protocol) -> str:
    if not data.endswith(b"\0") or b"\0" in data[:-1]:
        raise LocalProtocolError("STATUS_INFO reply is not one counted NUL-terminated string")
    return data[:-1].decode("utf-8", "surrogateescape")


def _encode_status_table(result: object, protocol: Protocol) -> bytes:
    return _status_bytes(result)


def _decode_status_table(data: bytes, protocol: Protocol) -> str:
    if b"\0" in data:
        raise LocalProtocolError("STATUS_TABLE reply must not count a NUL")
    return data.decode("utf-8", "surrogateescape")


# --- the table ------------------------------------------------------------------------------

PayloadDecoder = Callable[[bytes, Protocol], object]
PayloadEncoder = Callable[[object, Protocol], bytes]


@dataclass(frozen=True)
class RequestSpec:
    """One row of :data:`REQUESTS`: everything the wire says about one request type.

    Attributes:
        request_type: the type this row describes.
        doc: both payloads of both formats, in the words of the kernel header.
        decode_payload: request payload → value (daemon side); raises KernelProtocolError.
        encode_payload: value → request payload (kernel side; the emulator).
        encode_result: result → reply payload (daemon side); raises LocalProtocolError.
        decode_result: reply payload → result (kernel side); raises LocalProtocolError.
        capacity: the reply buffer the waiting kernel offers per format, in bytes; None
            means "the caller's buffer" (status strings), bounded only by the connector.
        ordered: the type changes log state and goes through the ordered group.
    """

    request_type: RequestType
    doc: str
    decode_payload: PayloadDecoder
    encode_payload: PayloadEncoder
    encode_result: PayloadEncoder
    decode_result: PayloadDecoder
    capacity: Mapping[Protocol, int | None]
    ordered: bool


def _cap(ulog: int | None, take5: int | None) -> Mapping[Protocol, int | None]:
    return MappingProxyType({Protocol.ULOG: ulog, Protocol.TAKE5: take5})


_NO_REPLY = _cap(0, 0)


def _row(
    rtype: RequestType,
    doc: str,
    *,
    payload: tuple[PayloadDecoder, PayloadEncoder] = (_decode_empty, _encode_empty),
    result: tuple[PayloadEncoder, PayloadDecoder] = (_encode_no_result, _decode_no_result),
    capacity: Mapping[Protocol, int | None] = _NO_REPLY,
    ordered: bool = False,
) -> tuple[RequestType, RequestSpec]:
    spec = RequestSpec(rtype, doc, payload[0], payload[1], result[0], result[1], capacity, ordered)
    return rtype, spec


_REGION_PAYLOAD = (_decode_region, _encode_region)
_BOOL_RESULT = (_encode_bool, _decode_bool)
_U64_RESULT = (_encode_u64, _decode_u64)

REQUESTS: Mapping[RequestType, RequestSpec] = MappingProxyType(
    dict(
        [
            _row(
                RequestType.CTR,
                """Create a log instance.

                Request: the CTR string (protocol.md §5.2). Mainline "<target_len> <log_type>
                <args>", data_size = strlen; the reconnect CTR counts a trailing NUL. Take 5
                "<args> <target_len>", never a NUL.
                Reply: mainline version >= 2 clustered-disk: the log device name + NUL
                (<= 128 bytes incl. the NUL); otherwise, and always on take 5, nothing.
                """,
                payload=(_decode_ctr, _encode_ctr),
                result=(_encode_ctr_result, _decode_ctr_result),
                capacity=_cap(DM_NAME_LEN, 0),
            ),
            _row(
                RequestType.DTR,
                """Destroy a log instance. Request: nothing. Reply: nothing.""",
            ),
            _row(
                RequestType.PRESUSPEND,
                """The device is about to suspend. Request: nothing. Reply: nothing.""",
                ordered=True,
            ),
            _row(
                RequestType.POSTSUSPEND,
                """The device has suspended. Request: nothing. Reply: nothing.""",
                ordered=True,
            ),
            _row(
                RequestType.RESUME,
                """Load (disk) or initialise the log and start serving it.

                Request: nothing. Reply: nothing.
                """,
            ),
            _row(
                RequestType.GET_REGION_SIZE,
                """Request: nothing. Reply: u64 region size in sectors.

                Mainline asks once, right after CTR; take 5 never asks.
                """,
                result=_U64_RESULT,
                capacity=_cap(8, 8),
            ),
            _row(
                RequestType.IS_CLEAN,
                """Is the region clean? Request: u64 region.

                Reply: mainline s64, take 5 int (s32); exactly 0 or 1.
                """,
                payload=_REGION_PAYLOAD,
                result=_BOOL_RESULT,
                capacity=_cap(8, 4),
            ),
            _row(
                RequestType.IN_SYNC,
                """Is the region in sync? Request: u64 region.

                Reply: mainline s64, take 5 int (s32); exactly 0 or 1.
                """,
                payload=_REGION_PAYLOAD,
                result=_BOOL_RESULT,
                capacity=_cap(8, 4),
            ),
            _row(
                RequestType.FLUSH,
                """Make every mark received so far durable.

                Request: mainline nothing, or u64[n] regions to mark first (integrated flush,
                version 3); take 5 nothing. Reply: nothing (data_size 0, also after marks).
                """,
                payload=(_decode_flush, _encode_flush),
                ordered=True,
            ),
            _row(
                RequestType.MARK_REGION,
                """Mark regions dirty.

                Request: u64[n], n >= 1 (the kernel sends <= 32 mainline, exactly 1 take 5).
                Reply: nothing.
                """,
                payload=(_decode_mark_clear, _encode_mark_clear),
                ordered=True,
            ),
            _row(
                RequestType.CLEAR_REGION,
                """Clear regions' marks.

                Request: u64[n], n >= 1 (the kernel sends <= 32 mainline, exactly 1 take 5).
                Reply: nothing.
                """,
                payload=(_decode_mark_clear, _encode_mark_clear),
                ordered=True,
            ),
            _row(
                RequestType.GET_RESYNC_WORK,
                """Which region should this node recover next?

                Request: nothing. Reply: {s64 i; u64 r}: i = 1 recover r; i = 0 none, r = 0.
                """,
                result=(_encode_resync_work, _decode_resync_work),
                capacity=_cap(16, 16),
                ordered=True,
            ),
            _row(
                RequestType.SET_REGION_SYNC,
                """Recovery of a region ended.

                Request: {u64 region; s64 in_sync} (order differs from GET_RESYNC_WORK).
                Reply: nothing.
                """,
                payload=(_decode_set_region_sync, _encode_set_region_sync),
                ordered=True,
            ),
            _row(
                RequestType.GET_SYNC_COUNT,
                """Request: nothing. Reply: u64 number of in-sync regions.""",
                result=_U64_RESULT,
                capacity=_cap(8, 8),
            ),
            _row(
                RequestType.STATUS_INFO,
                """Request: nothing. Reply: the INFO status string, its NUL counted.""",
                result=(_encode_status_info, _decode_status_info),
                capacity=_cap(None, None),
            ),
            _row(
                RequestType.STATUS_TABLE,
                """Request: nothing (mainline never sends it; take 5 does).

                Reply: the TABLE status string ending in one space, NUL not counted.
                """,
                result=(_encode_status_table, _decode_status_table),
                capacity=_cap(None, None),
            ),
            _row(
                RequestType.IS_REMOTE_RECOVERING,
                """Is another node recovering the region? Request: u64 region.

                Reply: {s64 is_recovering (0/1); u64 in_sync_hint}.
                """,
                payload=_REGION_PAYLOAD,
                result=(_encode_remote_recovering, _decode_remote_recovering),
                capacity=_cap(16, 16),
                ordered=True,
            ),
        ]
    )
)


def capacity_of(request_type: RequestType, protocol: Protocol) -> int:
    """The reply payload bytes the kernel accepts for ``request_type`` in ``protocol``."""
    cap = REQUESTS[request_type].capacity[protocol]
    return max_reply_payload(protocol) if cap is None else cap


def decode_payload(request_type: RequestType, payload: bytes, protocol: Protocol) -> object:
    """Decode the request payload of ``request_type`` (see the module docstring for values).

    Raises:
        KernelProtocolError: the payload has the wrong size or content for the type, or is
            larger than any kernel request can be (§9).
    """
    if len(payload) > max_request_payload(protocol):
        raise KernelProtocolError(
            f"{request_type.name} payload of {len(payload)} bytes exceeds "
            f"{max_request_payload(protocol)}"
        )
    try:
        return REQUESTS[request_type].decode_payload(payload, protocol)
    except KernelProtocolError as exc:
        raise KernelProtocolError(f"{request_type.name}: {exc}") from exc


def encode_payload(request_type: RequestType, value: object, protocol: Protocol) -> bytes:
    """Encode a request payload as the kernel would (emulator side).

    Raises:
        LocalProtocolError: the value does not fit the type or the request buffer.
    """
    data = REQUESTS[request_type].encode_payload(value, protocol)
    if len(data) > max_request_payload(protocol):
        raise LocalProtocolError(f"{request_type.name} payload of {len(data)} bytes is too large")
    return data


def encode_result(request_type: RequestType, result: object, protocol: Protocol) -> bytes:
    """Encode a handler's result as the reply payload of ``request_type``.

    Raises:
        LocalProtocolError: the result has the wrong type or value, or does not fit the
            kernel's capacity for this type (it would fail the call with -ENOSPC).
    """
    data = REQUESTS[request_type].encode_result(result, protocol)
    capacity = capacity_of(request_type, protocol)
    if len(data) > capacity:
        raise LocalProtocolError(
            f"{request_type.name} reply of {len(data)} bytes exceeds the kernel's capacity "
            f"{capacity} ({protocol.value})"
        )
    return data


def decode_result(request_type: RequestType, data: bytes, protocol: Protocol) -> object:
    """Decode a reply payload as the kernel would, strictly (emulator side).

    Raises:
        LocalProtocolError: the reply exceeds the capacity or is not a valid result.
    """
    capacity = capacity_of(request_type, protocol)
    if len(data) > capacity:
        raise LocalProtocolError(
            f"Insufficient space to receive package [{request_type.name}] "
            f"({len(data)} vs {capacity})"
        )
    return REQUESTS[request_type].decode_result(data, protocol)
