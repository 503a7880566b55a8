"""Immutable snapshots of one log instance, published by the core for the FUSE view.

The view never reads live state: it asks the registry for a ``LogSnapshot`` when a file is
opened and renders from it. Bitmaps are ``bytes`` in the on-disk encoding (bit ``r % 8`` of
byte ``r // 8``, 1 = set), so ``clean_bits`` is byte-identical to the disk log's bitmap.

Core module: no I/O, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestRecord:
    """One entry of a log's recent request history (kept by the shell)."""

    time: float  # seconds since the epoch, when the request arrived
    seq: int
    request_type: str  # RequestType name, e.g. "MARK_REGION"
    regions: tuple[int, ...]
    result: int  # 0 or a negative errno
    latency_us: float


@dataclass(frozen=True)
class RequestStats:
    """Per-type request counters and latency quantiles (kept by the shell)."""

    counts: tuple[tuple[str, int], ...] = ()  # (type name, count)
    latency_p50_us: tuple[tuple[str, float], ...] = ()
    latency_p99_us: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class LogSnapshot:
    """Everything the view shows about one log instance, frozen at one instant."""

    uuid: bytes
    luid: int
    protocol: str  # "ulog" or "take5"
    log_type: str  # "clustered-core" | "clustered-disk"
    state: str  # "constructed" | "resumed" | "suspended" | "failed"
    region_size: int  # sectors
    region_count: int
    sync_count: int
    in_sync: bool  # sync_count == region_count (or the sticky flag)
    device: str | None  # "major:minor" of the log device, None for core logs
    device_state: str  # "A" | "D" | "F"
    status: str  # the STATUS_INFO string exactly as sent (without the NUL)
    table: str  # the CTR table arguments as constructed
    clean_bits: bytes
    sync_bits: bytes
    recovering: tuple[int, int] | None  # (region, node)
    marks: tuple[tuple[int, tuple[int, ...]], ...]  # (region, nodes) for every marked region
    members: tuple[int, ...]  # node ids of the log's group, leader first
    node_id: int
    history: tuple[RequestRecord, ...] = ()
    stats: RequestStats = field(default_factory=RequestStats)
