"""Builders and the invariant checker shared by the core tests."""

from __future__ import annotations

from clogfs.log.ctr import CtrConfig, LogType, SyncMode
from clogfs.log.instance import DeviceInfo, LogInstance, LogRequest
from clogfs.log.regions import RegionState
from clogfs.netlink.requests import RequestType
from clogfs.netlink.wire import Protocol

UUID = b"KVT-UUID-C"
DEVICE = DeviceInfo("7:2", "7:2", (0x702, 0), 512, 1 << 20)


def config(
    region_count: int = 32,
    *,
    log_type: LogType = LogType.DISK,
    sync_mode: SyncMode = SyncMode.DEFAULT,
    protocol: Protocol = Protocol.ULOG,
    uuid: bytes = UUID,
) -> CtrConfig:
    """A CtrConfig as the parser would build it for 1024-sector regions."""
    flags = () if sync_mode is SyncMode.DEFAULT else (sync_mode.value,)
    target = region_count * 1024
    device = "7:2" if log_type is LogType.DISK else None
    words = [str(target), log_type.value, *([device] if device else []), "1024", *flags]
    return CtrConfig(
        protocol,
        uuid,
        log_type,
        target,
        1024,
        region_count,
        sync_mode,
        False,
        device,
        " ".join(words).encode(),
        flags,
    )


def instance(
    region_count: int = 32,
    *,
    log_type: LogType = LogType.DISK,
    sync_mode: SyncMode = SyncMode.DEFAULT,
    device: DeviceInfo | None = DEVICE,
) -> LogInstance:
    """A fresh CONSTRUCTED instance."""
    cfg = config(region_count, log_type=log_type, sync_mode=sync_mode)
    dev = device if log_type is LogType.DISK else None
    return LogInstance((Protocol.ULOG, UUID, 1), cfg, dev)


def req(request_type: RequestType, args: object = None, originator: int = 1) -> LogRequest:
    return LogRequest(request_type, args, originator)


def check_invariants(state: RegionState) -> None:
    """Assert I1, I2, I3, I4 (shape), I6 and I7 on ``state`` (whole-bitmap integer checks)."""
    n = state.region_count
    sync = int.from_bytes(state.sync.to_bytes(), "little")
    clean = int.from_bytes(state.clean.to_bytes(), "little")
    assert state.sync_count == sync.bit_count(), "I1"
    assert clean & ~sync == 0, "I2: a region out of sync is clean"
    for r, nodes in state.marks.items():
        assert nodes, "empty mark set kept"
        assert not clean >> r & 1, f"I3: region {r} marked but clean"
    if state.recovering is not None:
        assert 0 <= state.recovering[0] < n, "I4"
    assert sync >> n == 0, "I6"
    assert clean >> n == 0, "I6"
    assert 0 <= state.sync_search <= n
    for r in {0, n // 2, n - 1, *state.marks}:
        assert type(state.in_sync(r)) is bool, "I7"
        assert type(state.is_clean(r)) is bool, "I7"
