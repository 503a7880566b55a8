"""CTR grammar (protocol.md §5.2), value checks (semantics.md §3), STATUS_TABLE (§7.2)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.errors import KernelProtocolError
from clogfs.log.ctr import CtrConfig, LogType, SyncMode, parse_ctr, status_table
from clogfs.netlink.requests import CtrPayload
from clogfs.netlink.wire import Protocol

UUID = b"KVT-UUID-A"


def ulog(text: bytes, *, reconnect: bool = False, uuid: bytes = UUID) -> CtrConfig:
    return parse_ctr(Protocol.ULOG, CtrPayload(text, reconnect), uuid)


def take5(text: bytes, *, uuid: bytes = UUID) -> CtrConfig:
    return parse_ctr(Protocol.TAKE5, CtrPayload(text, False), uuid)


# (string, log type, target_len, region_size, region_count, mode, device, flags)
ULOG_VALID = [
    (
        b"131072 clustered-core 1024 nosync",
        LogType.CORE,
        131072,
        1024,
        128,
        SyncMode.NOSYNC,
        None,
        ("nosync",),
    ),
    (
        b"32768 clustered-disk /dev/loop2 1024 nosync",
        LogType.DISK,
        32768,
        1024,
        32,
        SyncMode.NOSYNC,
        "/dev/loop2",
        ("nosync",),
    ),
    (b"1000 clustered-core 8", LogType.CORE, 1000, 8, 125, SyncMode.DEFAULT, None, ()),
    (b"1001 clustered-core 8", LogType.CORE, 1001, 8, 126, SyncMode.DEFAULT, None, ()),
    (b"2 clustered-core 2", LogType.CORE, 2, 2, 1, SyncMode.DEFAULT, None, ()),
    (
        b"4096 clustered-core 0001024 sync",
        LogType.CORE,
        4096,
        1024,
        4,
        SyncMode.FORCESYNC,
        None,
        ("sync",),
    ),
    (
        b"4096 clustered-disk 253:2 1024 block_on_error nosync",
        LogType.DISK,
        4096,
        1024,
        4,
        SyncMode.NOSYNC,
        "253:2",
        ("block_on_error", "nosync"),
    ),
    (
        b"9223372034707292160 clustered-core 2147483648",
        LogType.CORE,
        (2**32 - 1) * 2**31,
        2**31,
        2**32 - 1,
        SyncMode.DEFAULT,
        None,
        (),
    ),
    (b"4 clustered-core 4", LogType.CORE, 4, 4, 1, SyncMode.DEFAULT, None, ()),
]


@pytest.mark.parametrize("row", ULOG_VALID, ids=lambda r: r[0].decode())
def test_ulog_valid(row: tuple) -> None:  # type: ignore[type-arg]
    text, log_type, target, size, count, mode, device, flags = row
    config = ulog(text)
    assert (config.log_type, config.target_len, config.region_size, config.region_count) == (
        log_type,
        target,
        size,
        count,
    )
    assert (config.sync_mode, config.device_word, config.flags) == (mode, device, flags)
    assert config.ctr_string == text
    assert config.uuid == UUID
    assert config.protocol is Protocol.ULOG


def test_ulog_block_on_error_flag() -> None:
    assert ulog(b"4096 clustered-core 1024 block_on_error").block_on_error is True
    assert ulog(b"4096 clustered-core 1024").block_on_error is False


def test_ulog_reconnect_string_drops_the_counted_nul() -> None:
    config = ulog(b"131072 clustered-core 1024 nosync\x00", reconnect=True)
    assert config.ctr_string == b"131072 clustered-core 1024 nosync"


ULOG_INVALID = [
    (b"", "empty"),
    (b"131072", "few"),
    (b"131072 clustered-core", "few"),
    (b"131072  clustered-core 1024", "empty token"),
    (b" 131072 clustered-core 1024", "empty token"),
    (b"131072 clustered-core 1024 ", "empty token"),
    (b"131072 core 1024", "unknown log type"),
    (b"131072 userspace 1024", "unknown log type"),
    (b"0 clustered-core 2", "target length"),
    (b"18446744073709551616 clustered-core 1024", "target length"),
    (b"+131072 clustered-core 1024", "target length"),
    (b"131072 clustered-core 1000", "region size 1000"),
    (b"131072 clustered-core 1", "region size 1"),
    (b"131072 clustered-core 0", "region size 0"),
    (b"131072 clustered-core 0x400", "region size 0x400"),
    (b"131072 clustered-core -1024", "region size -1024"),
    (b"131072 clustered-core +1024", "region size \\+1024"),
    (b"131072 clustered-core 1_024", "region size 1_024"),
    (b"131072 clustered-core 4294967296", "region size 4294967296"),
    (b"1024 clustered-core 2048", "region size 2048"),
    (b"131072 clustered-core 1024 nosync sync", "both"),
    (b"131072 clustered-core 1024 nosync nosync", "repeated"),
    (b"131072 clustered-core 1024 fast", "unrecognised"),
    (b"131072 clustered-core 1024 nosync block_on_error sync", "too many"),
    (b"131072 clustered-disk 1024", "device"),
    (b"131072 clustered-disk loop2 1024", "invalid log device"),
    (b"131072 clustered-disk 7: 1024", "invalid log device"),
    (b"131072 clustered-disk / 1024", "invalid log device"),
    (b"131072 clustered-disk 7:2 1024 integrated_flush", "unrecognised"),
    (b"1024 KVT-UUID-A nosync 131072", "unknown log type"),  # take-5 shape
    (b"18446744073709551615 clustered-core 2", "regions exceed"),
    (b"9223372034707292161 clustered-core 2147483648", "regions exceed"),
]


@pytest.mark.parametrize(("text", "why"), ULOG_INVALID, ids=lambda v: repr(v)[:40])
def test_ulog_invalid(text: bytes, why: str) -> None:
    with pytest.raises(KernelProtocolError, match=why) as info:
        ulog(text)
    assert info.value.errno == errno.EINVAL


def test_refusal_quotes_the_string() -> None:
    with pytest.raises(KernelProtocolError, match="131072 clustered-core 1000"):
        ulog(b"131072 clustered-core 1000")


@pytest.mark.parametrize("uuid", [b"", b"a" * 129, b"has space", b"ctl\x01"])
def test_invalid_header_uuid(uuid: bytes) -> None:
    with pytest.raises(KernelProtocolError, match="uuid"):
        ulog(b"4096 clustered-core 1024", uuid=uuid)


def test_uuid_of_128_bytes_is_accepted() -> None:
    assert ulog(b"4096 clustered-core 1024", uuid=b"u" * 128).uuid == b"u" * 128


TAKE5_VALID = [
    (b"1024 KVT-UUID-A nosync 131072", LogType.CORE, 131072, 1024, None, SyncMode.NOSYNC),
    (b"1024 KVT-UUID-A 131072", LogType.CORE, 131072, 1024, None, SyncMode.DEFAULT),
    (b"253:2 1024 KVT-UUID-A 2097152", LogType.DISK, 2097152, 1024, "253:2", SyncMode.DEFAULT),
    (
        b"/dev/loop2 1024 KVT-UUID-A sync 32768",
        LogType.DISK,
        32768,
        1024,
        "/dev/loop2",
        SyncMode.FORCESYNC,
    ),
]


@pytest.mark.parametrize("row", TAKE5_VALID, ids=lambda r: r[0].decode())
def test_take5_valid(row: tuple) -> None:  # type: ignore[type-arg]
    text, log_type, target, size, device, mode = row
    config = take5(text)
    assert (config.log_type, config.target_len, config.region_size) == (log_type, target, size)
    assert (config.device_word, config.sync_mode) == (device, mode)
    assert config.protocol is Protocol.TAKE5
    assert config.region_count == -(-target // size)


TAKE5_INVALID = [
    (b"1024 KVT-UUID-B nosync 131072", "differs from the header uuid"),
    (b"1024 KVT-UUID-A nosync block_on_error 131072", "3 or 4 words"),
    (b"1024 131072", "3 or 4 words"),
    (b"253:2 1024 KVT-UUID-A nosync sync 131072", "4 or 5 words"),
    (b"clustered-core 1024 KVT-UUID-A 131072", "2.6.31-rc"),
    (b"131072 clustered-core 1024 nosync", "target length"),  # mainline shape
    (b"1000 KVT-UUID-A 131072", "region size 1000"),
    (b"1024 KVT-UUID-A fast 131072", "unrecognised"),
    (b"loop2 1024 KVT-UUID-A 131072", "invalid log device"),
    (b"1024 KVT-UUID-A nosync 131072\x00", "NUL"),
    (b"1024 KVT-UUID-A  131072", "empty token"),
]


@pytest.mark.parametrize(("text", "why"), TAKE5_INVALID, ids=lambda v: repr(v)[:40])
def test_take5_invalid(text: bytes, why: str) -> None:
    with pytest.raises(KernelProtocolError, match=why):
        take5(text)


@given(st.binary(max_size=80))
def test_parser_never_raises_anything_but_einval(text: bytes) -> None:
    for protocol in Protocol:
        try:
            config = parse_ctr(protocol, CtrPayload(text, False), UUID)
        except KernelProtocolError as exc:
            code = exc.errno
        else:
            code = errno.EINVAL
            assert 2 <= config.region_size <= config.target_len
            assert config.region_size & (config.region_size - 1) == 0
        assert code == errno.EINVAL


@given(st.integers(1, 2**64 - 1), st.integers(1, 31), st.sampled_from(["", " nosync", " sync"]))
def test_region_count_is_ceil(target: int, shift: int, flag: str) -> None:
    size = 1 << shift
    text = f"{target} clustered-core {size}{flag}".encode()
    if size > target or -(-target // size) > 2**32 - 1:
        with pytest.raises(KernelProtocolError):
            ulog(text)
    else:
        assert ulog(text).region_count == -(-target // size)


STATUS_TABLE = [
    (
        Protocol.ULOG,
        b"32768 clustered-disk /dev/loop2 1024 nosync",
        "7:2",
        "clustered-disk /dev/loop2 1024 nosync ",
    ),
    (Protocol.ULOG, b"131072 clustered-core 1024", None, "clustered-core 1024 "),
    (
        Protocol.TAKE5,
        b"1024 KVT-UUID-A nosync 131072",
        None,
        "clustered-core 3 1024 KVT-UUID-A nosync ",
    ),
    (Protocol.TAKE5, b"1024 KVT-UUID-A 131072", None, "clustered-core 2 1024 KVT-UUID-A "),
    (
        Protocol.TAKE5,
        b"/dev/loop2 1024 KVT-UUID-A 131072",
        "253:2",
        "clustered-disk 3 253:2 1024 KVT-UUID-A ",
    ),
    (
        Protocol.TAKE5,
        b"253:2 1024 KVT-UUID-A block_on_error 131072",
        None,
        "clustered-disk 4 253:2 1024 KVT-UUID-A block_on_error ",
    ),
]


@pytest.mark.parametrize(("protocol", "text", "device", "expected"), STATUS_TABLE)
def test_status_table(protocol: Protocol, text: bytes, device: str | None, expected: str) -> None:
    config = parse_ctr(protocol, CtrPayload(text, False), UUID)
    assert status_table(config, device) == expected
