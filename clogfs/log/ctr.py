"""CTR strings: the strict parser for both wire formats, the value checks, and STATUS_TABLE.

Grammars (protocol.md §5.2), tokens separated by exactly one space, nothing else allowed:

- mainline ("ulog"): ``<target_len> <log_type> <type args>``, where the core args are
  ``<region_size> [<flag>]...`` and the disk args ``<log_dev> <region_size> [<flag>]...``
  (at most two flags); the reconnect CTR counts a trailing NUL, which is not part of the string;
- take 5: ``<region_size> <uuid> [<flag>] <target_len>`` (clustered-core: the first token is all
  digits) or ``<log_dev> <region_size> <uuid> [<flag>] <target_len>`` (clustered-disk); the
  uuid word must equal the header uuid byte for byte.

Value checks (semantics.md §3): the target length is decimal, ``1 <= n < 2**64``; the region
size is decimal digits only (leading zeros allowed, no sign, no ``0x``), fits u32, is at
least 2, a power of two and at most the target length (the kernel's ``_check_region_size()``);
``region_count = ceil(target_len / region_size)`` is at most ``2**32 - 1``; flags are
``sync``, ``nosync``, ``block_on_error``, each at most once and never ``sync`` with
``nosync``; the uuid is 1-128 bytes without NUL, space or control bytes; a log device word is
``major:minor`` (decimal) or an absolute path. Every refusal is a ``KernelProtocolError``
(``EINVAL``) whose message quotes the string and names the bad word.

Status (disk-format.md §7.2): mainline answers the CTR string without its first token plus one
trailing space; take 5 answers a loadable table log part ``<type> <n> <args> `` with no NUL.

Core module: no trio, no sockets, no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from clogfs.errors import KernelProtocolError
from clogfs.netlink.requests import CtrPayload
from clogfs.netlink.wire import Protocol

_U32_MAX = 2**32 - 1
_U64_LIMIT = 2**64
MAX_UUID_BYTES = 128  # DM_UUID_LEN - 1, include/uapi/linux/dm-ioctl.h
MAX_REGION_COUNT = _U32_MAX  # the kernel log's unsigned int region_count [decision]
_DIGITS = re.compile(rb"[0-9]+")
_DEV_NUMBER = re.compile(rb"[0-9]+:[0-9]+")
_ABS_PATH = re.compile(rb"/[\x21-\x7e]+")
_UUID = re.compile(rb"[\x21-\x7e\x80-\xff]{1,128}")


class LogType(enum.Enum):
    """The table log type."""

    CORE = "clustered-core"
    DISK = "clustered-disk"


class SyncMode(enum.Enum):
    """The sync word of the table: none, ``nosync`` or ``sync``."""

    DEFAULT = "default"  # DEFAULTSYNC: resync what the log says is dirty
    NOSYNC = "nosync"  # NOSYNC: every region starts in sync
    FORCESYNC = "sync"  # FORCESYNC: every region starts out of sync


_FLAGS = ("sync", "nosync", "block_on_error")


@dataclass(frozen=True)
class CtrConfig:
    """What one CTR string says, validated."""

    protocol: Protocol
    uuid: bytes
    log_type: LogType
    target_len: int  # sectors
    region_size: int  # sectors
    region_count: int
    sync_mode: SyncMode
    block_on_error: bool
    device_word: str | None  # clustered-disk: "maj:min" or an absolute path, as given
    ctr_string: bytes  # as received, without a counted trailing NUL
    flags: tuple[str, ...]  # the flag words as given, in order


def _refuse(text: bytes, why: str) -> KernelProtocolError:
    return KernelProtocolError(f"invalid CTR string {text!r}: {why}")


def _word(token: bytes) -> str:
    return token.decode("utf-8", "surrogateescape")


def _parse_target_len(text: bytes, token: bytes) -> int:
    if not _DIGITS.fullmatch(token):
        raise _refuse(text, f"invalid target length {token!r}")
    value = int(token)
    if not 1 <= value < _U64_LIMIT:
        raise _refuse(text, f"invalid target length {token!r}")
    return value


def _parse_region_size(text: bytes, token: bytes, target_len: int) -> int:
    why = f"invalid region size {_word(token)}"
    if not _DIGITS.fullmatch(token):
        raise _refuse(text, why)
    value = int(token)
    if value > _U32_MAX or value < 2 or value & (value - 1) or value > target_len:
        raise _refuse(text, why)
    return value


def _parse_flags(text: bytes, tokens: list[bytes]) -> tuple[SyncMode, bool, tuple[str, ...]]:
    words: list[str] = []
    for token in tokens:
        word = _word(token)
        if word not in _FLAGS:
            raise _refuse(text, f"unrecognised sync argument to dirty region log: {word!r}")
        if word in words:
            raise _refuse(text, f"repeated flag {word!r}")
        words.append(word)
    if "sync" in words and "nosync" in words:
        raise _refuse(text, "both sync and nosync")
    if "nosync" in words:
        mode = SyncMode.NOSYNC
    elif "sync" in words:
        mode = SyncMode.FORCESYNC
    else:
        mode = SyncMode.DEFAULT
    return mode, "block_on_error" in words, tuple(words)


def _parse_device(text: bytes, token: bytes) -> str:
    if _DEV_NUMBER.fullmatch(token) or _ABS_PATH.fullmatch(token):
        return _word(token)
    raise _refuse(text, f"invalid log device {token!r} (need major:minor or an absolute path)")


def _check_uuid(text: bytes, uuid: bytes) -> None:
    if not _UUID.fullmatch(uuid):
        raise _refuse(text, f"invalid uuid {uuid!r} (1-{MAX_UUID_BYTES} printable bytes)")


def _tokens(text: bytes) -> list[bytes]:
    tokens = text.split(b" ")
    if not text or any(not token for token in tokens):
        raise _refuse(text, "empty token (tokens are separated by exactly one space)")
    return tokens


def _region_count(text: bytes, target_len: int, region_size: int) -> int:
    count = -(-target_len // region_size)  # dm_sector_div_up()
    if count > MAX_REGION_COUNT:
        raise _refuse(text, f"{count} regions exceed {MAX_REGION_COUNT}")
    return count


def _parse_ulog(text: bytes, uuid: bytes) -> CtrConfig:
    tokens = _tokens(text)
    if len(tokens) < 3:
        raise _refuse(text, "too few words")
    target_len = _parse_target_len(text, tokens[0])
    type_word = _word(tokens[1])
    if type_word == LogType.CORE.value:
        log_type, device, rest = LogType.CORE, None, tokens[2:]
    elif type_word == LogType.DISK.value:
        if len(tokens) < 4:
            raise _refuse(text, "clustered-disk needs a log device and a region size")
        log_type, device, rest = LogType.DISK, _parse_device(text, tokens[2]), tokens[3:]
    else:
        raise _refuse(text, f"unknown log type {tokens[1]!r}")
    if len(rest) > 3:
        raise _refuse(text, f"too many words after the region size: {b' '.join(rest[1:])!r}")
    region_size = _parse_region_size(text, rest[0], target_len)
    mode, block_on_error, flags = _parse_flags(text, rest[1:])
    return CtrConfig(
        protocol=Protocol.ULOG,
        uuid=uuid,
        log_type=log_type,
        target_len=target_len,
        region_size=region_size,
        region_count=_region_count(text, target_len, region_size),
        sync_mode=mode,
        block_on_error=block_on_error,
        device_word=device,
        ctr_string=text,
        flags=flags,
    )


def _parse_take5(text: bytes, header_uuid: bytes) -> CtrConfig:
    tokens = _tokens(text)
    if _word(tokens[0]) in (LogType.CORE.value, LogType.DISK.value):
        raise _refuse(text, "unsupported 2.6.31-rc CTR format (starts with a log type)")
    if _DIGITS.fullmatch(tokens[0]):
        log_type, device, args = LogType.CORE, None, tokens
        if len(args) not in (3, 4):
            raise _refuse(text, f"clustered-core takes 3 or 4 words, got {len(args)}")
    else:
        log_type, args = LogType.DISK, tokens[1:]
        if len(args) not in (3, 4):
            raise _refuse(text, f"clustered-disk takes 4 or 5 words, got {len(tokens)}")
        device = _parse_device(text, tokens[0])
    target_len = _parse_target_len(text, args[-1])
    region_size = _parse_region_size(text, args[0], target_len)
    uuid = args[1]
    _check_uuid(text, uuid)
    if uuid != header_uuid:
        raise _refuse(text, f"uuid word {uuid!r} differs from the header uuid {header_uuid!r}")
    mode, block_on_error, flags = _parse_flags(text, args[2:-1])
    return CtrConfig(
        protocol=Protocol.TAKE5,
        uuid=uuid,
        log_type=log_type,
        target_len=target_len,
        region_size=region_size,
        region_count=_region_count(text, target_len, region_size),
        sync_mode=mode,
        block_on_error=block_on_error,
        device_word=device,
        ctr_string=text,
        flags=flags,
    )


def parse_ctr(protocol: Protocol, payload: CtrPayload, header_uuid: bytes) -> CtrConfig:
    """Parse and validate one CTR string (protocol.md §5.2, semantics.md §3).

    Args:
        protocol: the wire format the request came in.
        payload: the decoded CTR payload; a counted trailing NUL (mainline reconnect CTR) is
            not part of the string.
        header_uuid: the uuid of the request header (bytes before its first NUL).

    Returns:
        The validated configuration.

    Raises:
        KernelProtocolError: ``EINVAL``; the message quotes the string and names the bad word.
    """
    text = payload.text
    if text.endswith(b"\x00") and (payload.reconnect or protocol is Protocol.ULOG):
        text = text[:-1]
    _check_uuid(text, header_uuid)
    if b"\x00" in text:
        raise _refuse(text, "NUL inside the string")
    if protocol is Protocol.ULOG:
        return _parse_ulog(text, header_uuid)
    return _parse_take5(text, header_uuid)


def _uuid_text(uuid: bytes) -> str:
    return uuid.decode("utf-8", "surrogateescape")


def status_table(config: CtrConfig, device_number: str | None) -> str:
    """The STATUS_TABLE string (disk-format.md §7.2), without a NUL.

    Args:
        config: the instance's configuration.
        device_number: ``"maj:min"`` of the opened log device (take-5 clustered-disk); if None
            the device word of the table is used.

    Returns:
        Mainline: the CTR string without its first token, plus one space. Take 5:
        ``clustered-core <n> <region_size> <uuid> [<flag> ]`` or
        ``clustered-disk <n> <maj>:<min> <region_size> <uuid> [<flag> ]``.
    """
    if config.protocol is Protocol.ULOG:
        _, _, tail = config.ctr_string.partition(b" ")
        return tail.decode("utf-8", "surrogateescape") + " "
    args: list[str] = []
    if config.log_type is LogType.DISK:
        device = device_number if device_number is not None else config.device_word
        args.append(device or "")
    args += [str(config.region_size), _uuid_text(config.uuid), *config.flags]
    return f"{config.log_type.value} {len(args)} " + "".join(f"{arg} " for arg in args)
