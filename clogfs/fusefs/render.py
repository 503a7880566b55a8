"""The content of every file in the FUSE view, rendered from immutable values: the file tables.

``DAEMON_FILES`` are the files in the root, ``LOG_FILES`` those in each log directory; one row
per file with its render function. Their names are pinned (``spec/fuse-view.md``) and every
format is documented in ``man/clogfs.5``. Text files end with a newline, except empty ones.

Bitmaps are in the on-disk encoding (bit ``r % 8`` of byte ``r // 8`` is region ``r``), which is
the bit order of a little-endian integer: ``int.from_bytes(bits, "little")`` has bit ``r`` set
for region ``r``. The O(regions) renderings (ranges, the map, the PNG) lean on that to stay in
C loops: a 2**24-region log renders in well under a second (see ``tests/fuse/test_render.py``).
Rows marked ``heavy`` are rendered by the view in a worker thread.

Core module: no trio, no pyfuse3, no I/O.
"""

from __future__ import annotations

import datetime
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from clogfs.fusefs.source import DaemonInfo
from clogfs.snapshot import LogSnapshot

# ---------------------------------------------------------------- the region map

CLEAN = "."  # clean and in-sync
DIRTY = "d"  # a clean bit is 0: a write may be in flight
OUT_OF_SYNC = "o"  # a sync bit is 0: the legs may differ
RECOVERING = "R"  # the region being resynchronised now
MAP_LEGEND = (
    f"{RECOVERING} recovering  {OUT_OF_SYNC} out of sync  {DIRTY} dirty  {CLEAN} clean and in sync"
)
MAP_COLUMNS = 64  # cells per line of map.txt and per row of map.png
MAP_MAX_CELLS = 64 * 64  # at most this many cells: larger logs get larger buckets
RANGE_PIECE_BYTES = 8192  # zero_ranges expands at most this many bytes per C call
PNG_CELL_PIXELS = 8  # a cell of the map is a square of this many pixels

# Palette of map.png: one colour per cell state, and one for the unused cells after the last.
PNG_PALETTE: dict[str, tuple[int, int, int]] = {
    CLEAN: (0xC8, 0xE6, 0xC9),
    DIRTY: (0xFF, 0xC1, 0x07),
    OUT_OF_SYNC: (0xD3, 0x2F, 0x2F),
    RECOVERING: (0x19, 0x76, 0xD2),
    " ": (0xFF, 0xFF, 0xFF),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG (RFC 2083) is big-endian throughout. Chunk header: uint32 length, 4-byte type.
PNG_CHUNK_HEADER = struct.Struct(">I4s")
PNG_CHUNK_CRC = struct.Struct(">I")
# IHDR: uint32 width, uint32 height, bit depth, colour type, compression, filter, interlace
PNG_IHDR = struct.Struct(">IIBBBBB")
PNG_COLOUR_TYPE_PALETTE = 3
PNG_FILTER_NONE = 0


def region_string(bits: bytes, region_count: int) -> str:
    """Return one character per region, ``"1"`` where its bit is set, region 0 first.

    Bits past ``region_count`` are ignored; bytes missing from a short bitmap count as 0.
    """
    if region_count <= 0:
        return ""
    # bin() of a little-endian integer reads the last region first: reverse it.
    text = format(int.from_bytes(bits, "little"), "b")[::-1] if any(bits) else ""
    if len(text) < region_count:
        return text + "0" * (region_count - len(text))
    return text[:region_count]


def zero_ranges(bits: bytes, region_count: int) -> str:
    """Return the regions whose bit is 0 as ranges ``a-b``, one per line (``a-a`` for one).

    Only the stretches of bytes that hold a 0 bit are expanded to one character per region,
    so a mostly-set bitmap costs one C scan of its bytes. Stretches are expanded in pieces of
    ``RANGE_PIECE_BYTES``, so no single C call holds the GIL for long when this runs in a
    worker thread.
    """
    used = -(-region_count // 8)
    data = bits[:used].ljust(used, b"\x00")
    lines = []
    pending: tuple[int, int] | None = None  # a run that may continue into the next piece
    for stretch in re.finditer(rb"[^\xff]+", data):
        for piece in range(stretch.start(), stretch.end(), RANGE_PIECE_BYTES):
            piece_end = min(piece + RANGE_PIECE_BYTES, stretch.end())
            text = region_string(data[piece:piece_end], (piece_end - piece) * 8)
            base = piece * 8
            for zeros in re.finditer("0+", text):
                first = base + zeros.start()
                if first >= region_count:
                    break
                last = min(base + zeros.end(), region_count) - 1
                if pending is not None and pending[1] + 1 == first:
                    pending = (pending[0], last)
                    continue
                if pending is not None:
                    lines.append(f"{pending[0]}-{pending[1]}\n")
                pending = (first, last)
    if pending is not None:
        lines.append(f"{pending[0]}-{pending[1]}\n")
    return "".join(lines)


def _bit(bits: bytes, region: int) -> int:
    byte = region >> 3
    return bits[byte] >> (region & 7) & 1 if byte < len(bits) else 0


def has_zero(bits: bytes, start: int, end: int) -> bool:
    """Whether any region in ``[start, end)`` has its bit 0 (missing bytes count as 0)."""
    first_byte = -(-start // 8)
    end_byte = end // 8
    if first_byte >= end_byte:
        return any(_bit(bits, region) == 0 for region in range(start, end))
    edges = (*range(start, first_byte * 8), *range(end_byte * 8, end))
    if any(_bit(bits, region) == 0 for region in edges):
        return True
    if end_byte > len(bits):
        return True
    return bits.count(b"\xff", first_byte, end_byte) != end_byte - first_byte


@dataclass(frozen=True)
class RegionMap:
    """The picture of a log's regions: one cell per bucket of consecutive regions."""

    region_count: int
    bucket_regions: int  # regions per cell (the last cell may hold fewer)
    columns: int  # cells per line
    cells: str  # one state character per cell

    @property
    def rows(self) -> int:
        """Lines of cells (at least one, even for an empty log)."""
        return max(1, -(-len(self.cells) // self.columns))


def region_map(snapshot: LogSnapshot) -> RegionMap:
    """Return the map of ``snapshot``'s regions.

    A cell shows the most urgent state of any region in its bucket: recovering, then out of
    sync, then dirty, else clean.
    """
    count = snapshot.region_count
    bucket = max(1, -(-count // MAP_MAX_CELLS))
    recovering = snapshot.recovering[0] if snapshot.recovering is not None else -1
    cells = []
    for start in range(0, count, bucket):
        end = min(start + bucket, count)
        if start <= recovering < end:
            cells.append(RECOVERING)
        elif has_zero(snapshot.sync_bits, start, end):
            cells.append(OUT_OF_SYNC)
        elif has_zero(snapshot.clean_bits, start, end):
            cells.append(DIRTY)
        else:
            cells.append(CLEAN)
    columns = max(1, min(MAP_COLUMNS, len(cells)))
    return RegionMap(count, bucket, columns, "".join(cells))


def map_text(picture: RegionMap) -> str:
    """Render ``picture`` as map.txt: two ``#`` comment lines, then lines of cells.

    Each line of cells starts with the number of its first region, right-aligned.
    """
    per_line = picture.bucket_regions * picture.columns
    width = len(str(max(0, picture.region_count - 1)))
    lines = [
        f"# {picture.region_count} regions, {picture.bucket_regions} per character, "
        f"{picture.columns} characters per line",
        f"# {MAP_LEGEND}",
    ]
    for row in range(0, len(picture.cells), picture.columns):
        first_region = row // picture.columns * per_line
        lines.append(f"{first_region:>{width}} {picture.cells[row : row + picture.columns]}")
    return "\n".join(lines) + "\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return PNG_CHUNK_HEADER.pack(len(data), kind) + data + PNG_CHUNK_CRC.pack(crc)


def map_png(picture: RegionMap) -> bytes:
    """Render ``picture`` as an 8-bit palette PNG, one square of ``PNG_CELL_PIXELS`` per cell.

    Palette index ``i`` is the ``i``-th entry of ``PNG_PALETTE``; cells after the last bucket
    are white.
    """
    states = list(PNG_PALETTE)
    to_index = str.maketrans({state: chr(index) for index, state in enumerate(states)})
    width = picture.columns * PNG_CELL_PIXELS
    height = picture.rows * PNG_CELL_PIXELS
    padded = picture.cells.ljust(picture.rows * picture.columns)
    scanlines = []
    for row in range(picture.rows):
        cells = padded[row * picture.columns : (row + 1) * picture.columns]
        pixels = bytes(cells.translate(to_index), "latin-1")
        line = bytes([PNG_FILTER_NONE]) + b"".join(bytes([p]) * PNG_CELL_PIXELS for p in pixels)
        scanlines.append(line * PNG_CELL_PIXELS)
    header = PNG_IHDR.pack(width, height, 8, PNG_COLOUR_TYPE_PALETTE, 0, 0, 0)
    palette = b"".join(bytes(PNG_PALETTE[state]) for state in states)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"PLTE", palette),
            _png_chunk(b"IDAT", zlib.compress(b"".join(scanlines), 9)),
            _png_chunk(b"IEND", b""),
        )
    )


# ---------------------------------------------------------------- per-log files


def _line(value: object) -> bytes:
    return f"{value}\n".encode()


def _utc(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_history(snapshot: LogSnapshot) -> bytes:
    """history: a ``#`` header, then one line per request, oldest first."""
    lines = ["# time seq type regions result latency_us\n"]
    for record in snapshot.history:
        regions = ",".join(map(str, record.regions)) or "-"
        lines.append(
            f"{_utc(record.time)} {record.seq} {record.request_type} {regions} "
            f"{record.result} {record.latency_us:.1f}\n"
        )
    return "".join(lines).encode()


def render_stats(snapshot: LogSnapshot) -> bytes:
    """stats: a ``#`` header, then ``type count p50_us p99_us`` per request type seen."""
    p50 = dict(snapshot.stats.latency_p50_us)
    p99 = dict(snapshot.stats.latency_p99_us)

    def quantile(table: dict[str, float], name: str) -> str:
        return f"{table[name]:.1f}" if name in table else "-"

    lines = ["# type count p50_us p99_us\n"]
    for name, count in snapshot.stats.counts:
        lines.append(f"{name} {count} {quantile(p50, name)} {quantile(p99, name)}\n")
    return "".join(lines).encode()


def render_recovering(snapshot: LogSnapshot) -> bytes:
    """recovering: ``<region> <node>``, or empty when no region is being recovered."""
    if snapshot.recovering is None:
        return b""
    region, node = snapshot.recovering
    return _line(f"{region} {node}")


def render_marks(snapshot: LogSnapshot) -> bytes:
    """marks: ``<region> <node> ...`` per marked region, in region order."""
    return "".join(
        f"{region} {' '.join(map(str, nodes))}\n" for region, nodes in sorted(snapshot.marks)
    ).encode()


@dataclass(frozen=True)
class LogFile:
    """One row of the per-log file table."""

    name: str
    render: Callable[[LogSnapshot], bytes]
    heavy: bool = False  # O(regions): rendered in a worker thread; size 0 until opened
    present: Callable[[LogSnapshot], bool] = lambda snapshot: True


LOG_FILES: tuple[LogFile, ...] = (
    LogFile("type", lambda s: _line(s.log_type)),
    LogFile("state", lambda s: _line(s.state)),
    LogFile("region_size", lambda s: _line(s.region_size)),
    LogFile("region_count", lambda s: _line(s.region_count)),
    LogFile("sync_count", lambda s: _line(s.sync_count)),
    LogFile("in_sync", lambda s: _line(int(s.in_sync))),
    LogFile("device", lambda s: _line(s.device), present=lambda s: s.device is not None),
    LogFile("device_state", lambda s: _line(s.device_state)),
    LogFile("status", lambda s: _line(s.status)),
    LogFile("table", lambda s: _line(s.table)),
    LogFile("dirty", lambda s: zero_ranges(s.clean_bits, s.region_count).encode(), heavy=True),
    LogFile("out_of_sync", lambda s: zero_ranges(s.sync_bits, s.region_count).encode(), heavy=True),
    LogFile("recovering", render_recovering),
    LogFile("marks", render_marks),
    LogFile("members", lambda s: "".join(f"{node}\n" for node in s.members).encode()),
    LogFile("clean_bits", lambda s: s.clean_bits),
    LogFile("sync_bits", lambda s: s.sync_bits),
    LogFile("history", render_history),
    LogFile("stats", render_stats),
    LogFile("map.txt", lambda s: map_text(region_map(s)).encode(), heavy=True),
    LogFile("map.png", lambda s: map_png(region_map(s)), heavy=True),
)

# ---------------------------------------------------------------- daemon-wide files


@dataclass(frozen=True)
class DaemonFile:
    """One row of the root file table. ``render`` takes the info and the time of ``open``."""

    name: str
    render: Callable[[DaemonInfo, float], bytes]


DAEMON_FILES: tuple[DaemonFile, ...] = (
    DaemonFile("version", lambda info, now: _line(info.version)),
    DaemonFile("protocol", lambda info, now: _line(info.protocol)),
    DaemonFile("node", lambda info, now: _line(f"{info.node_id} {info.cluster_state}")),
    DaemonFile("uptime", lambda info, now: _line(f"{max(0.0, now - info.started_at):.2f}")),
    DaemonFile("metrics", lambda info, now: info.metrics_text().encode()),
)
