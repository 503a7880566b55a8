"""The content of every file of the view, rendered in process from snapshots."""

from __future__ import annotations

import ast
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.fusefs import render
from clogfs.fusefs.render import DAEMON_FILES, LOG_FILES
from clogfs.snapshot import LogSnapshot, RequestStats

from .helpers import NODE_ID, STARTED_AT, FakeSource, bitmap, core_snapshot, make_snapshot

LOG_RENDER = {row.name: row.render for row in LOG_FILES}
DAEMON_RENDER = {row.name: row.render for row in DAEMON_FILES}


def naive_zero_ranges(region_count: int, zeros: set[int]) -> str:
    lines = []
    region = 0
    while region < region_count:
        if region in zeros:
            first = region
            while region + 1 < region_count and region + 1 in zeros:
                region += 1
            lines.append(f"{first}-{region}\n")
        region += 1
    return "".join(lines)


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]], list[bytes]]:
    """Width, height, palette and the rows of palette indexes of an 8-bit palette PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset = 8
    chunks: dict[bytes, bytes] = {}
    idat = b""
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack_from(">I", data, offset + 8 + length)
        assert crc == zlib.crc32(kind + body)
        if kind == b"IDAT":
            idat += body
        chunks[kind] = body
        offset += 12 + length
    assert list(chunks)[-1] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (8, 3, 0)
    plte = chunks[b"PLTE"]
    palette = [tuple(plte[i : i + 3]) for i in range(0, len(plte), 3)]
    raw = zlib.decompress(idat)
    assert len(raw) == height * (width + 1)
    rows = [raw[y * (width + 1) : (y + 1) * (width + 1)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)  # filter type None
    return width, height, palette, [row[1:] for row in rows]  # type: ignore[return-value]


# ---------------------------------------------------------------- the file tables


def test_log_file_names_are_the_pinned_ones() -> None:
    assert [row.name for row in LOG_FILES] == [
        "type", "state", "region_size", "region_count", "sync_count", "in_sync", "device",
        "device_state", "status", "table", "dirty", "out_of_sync", "recovering", "marks",
        "members", "clean_bits", "sync_bits", "history", "stats", "map.txt", "map.png",
    ]  # fmt: skip


def test_daemon_file_names_include_the_pinned_ones() -> None:
    names = [row.name for row in DAEMON_FILES]
    assert {"version", "protocol", "node", "metrics"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("type", b"clustered-disk\n"),
        ("state", b"resumed\n"),
        ("region_size", b"1024\n"),
        ("region_count", b"100\n"),
        ("sync_count", b"90\n"),
        ("in_sync", b"0\n"),
        ("device", b"253:4\n"),
        ("device_state", b"A\n"),
        ("status", b"3 clustered-disk 253:4 A\n"),
        ("table", b"clustered-disk 4 253:4 1024 LVM-abc block_on_error\n"),
        ("dirty", b"5-7\n"),
        ("out_of_sync", b"40-49\n"),
        ("recovering", b"40 3\n"),
        ("marks", b"5 3\n6 1 3\n7 3\n"),
        ("members", b"1\n3\n"),
    ],
)
def test_small_log_file_content(name: str, expected: bytes) -> None:
    assert LOG_RENDER[name](make_snapshot()) == expected


def test_in_sync_is_one_when_in_sync() -> None:
    assert LOG_RENDER["in_sync"](core_snapshot()) == b"1\n"


def test_recovering_is_empty_without_recovery() -> None:
    assert LOG_RENDER["recovering"](core_snapshot()) == b""


def test_marks_are_sorted_by_region() -> None:
    snap = make_snapshot(marks=((9, (2,)), (3, (1, 2))))
    assert LOG_RENDER["marks"](snap) == b"3 1 2\n9 2\n"


def test_bitmaps_are_the_snapshot_bytes() -> None:
    snap = make_snapshot()
    assert LOG_RENDER["clean_bits"](snap) == snap.clean_bits
    assert LOG_RENDER["sync_bits"](snap) == snap.sync_bits


def test_device_is_present_only_for_disk_logs() -> None:
    device = next(row for row in LOG_FILES if row.name == "device")
    assert device.present(make_snapshot())
    assert not device.present(core_snapshot())


def test_history_lines() -> None:
    assert LOG_RENDER["history"](make_snapshot()).decode().splitlines() == [
        "# time seq type regions result latency_us",
        "2023-11-14T22:15:00.250000Z 41 MARK_REGION 5,6 0 12.5",
        "2023-11-14T22:15:00.500000Z 42 FLUSH - -5 1500.0",
    ]


def test_stats_lines() -> None:
    snap = make_snapshot(
        stats=RequestStats(
            counts=(("FLUSH", 3), ("IN_SYNC", 2)),
            latency_p50_us=(("FLUSH", 100.0),),
            latency_p99_us=(("FLUSH", 250.25),),
        )
    )
    assert LOG_RENDER["stats"](snap).decode().splitlines() == [
        "# type count p50_us p99_us",
        "FLUSH 3 100.0 250.2",
        "IN_SYNC 2 - -",
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("version", b"0.1.0\n"),
        ("protocol", b"ulog-v3\n"),
        ("node", f"{NODE_ID} single\n".encode()),
        ("uptime", b"12.50\n"),
    ],
)
def test_daemon_file_content(name: str, expected: bytes) -> None:
    info = FakeSource().daemon_info()
    assert DAEMON_RENDER[name](info, STARTED_AT + 12.5) == expected


def test_metrics_file_is_metrics_text() -> None:
    source = FakeSource()
    assert DAEMON_RENDER["metrics"](source.daemon_info(), STARTED_AT) == source.metrics.encode()


# ---------------------------------------------------------------- ranges and bits


@pytest.mark.parametrize(
    ("bits", "region_count", "expected"),
    [
        (b"\xff", 8, ""),
        (b"\x00", 8, "0-7\n"),
        (b"\xfe", 8, "0-0\n"),
        (b"\x7f", 8, "7-7\n"),
        (b"\xf0\x0f", 16, "0-3\n12-15\n"),
        (b"\x0f", 4, ""),  # bits past the last region are ignored
        (b"\xff", 12, "8-11\n"),  # a short bitmap counts as zeros
        (b"\xff\x00\xff", 24, "8-15\n"),
        (b"", 0, ""),
    ],
)
def test_zero_ranges_table(bits: bytes, region_count: int, expected: str) -> None:
    assert render.zero_ranges(bits, region_count) == expected


@given(
    region_count=st.integers(0, 300),
    data=st.data(),
    padding=st.booleans(),
)
def test_zero_ranges_match_a_naive_scan(
    region_count: int, data: st.DataObject, padding: bool
) -> None:
    zeros = data.draw(st.sets(st.integers(0, max(0, region_count - 1))))
    zeros = {region for region in zeros if region < region_count}
    bits = bitmap(region_count, sorted(zeros))
    if padding:  # set the unused bits of the last word: they must not matter
        value = int.from_bytes(bits, "little") | ~((1 << region_count) - 1)
        bits = (value & ((1 << len(bits) * 8) - 1)).to_bytes(len(bits), "little")
    assert render.zero_ranges(bits, region_count) == naive_zero_ranges(region_count, zeros)


@pytest.mark.parametrize(
    ("zeros", "expected"),
    [
        (range(65530, 65545), "65530-65544\n"),  # a run across two pieces
        (range(65536, 65540), "65536-65539\n"),  # a run starting a piece
        ([65535, 65536], "65535-65536\n"),
        ([65534, 65537], "65534-65534\n65537-65537\n"),
    ],
)
def test_zero_ranges_across_pieces(zeros: Sequence[int], expected: str) -> None:
    assert render.RANGE_PIECE_BYTES * 8 == 65536
    assert render.zero_ranges(bitmap(3 * 65536, zeros), 3 * 65536) == expected


@given(region_count=st.integers(0, 100), data=st.data())
def test_zero_ranges_in_tiny_pieces_match_a_naive_scan(
    region_count: int, data: st.DataObject
) -> None:
    zeros = set(data.draw(st.lists(st.integers(0, max(0, region_count - 1)), max_size=60)))
    zeros = {region for region in zeros if region < region_count}
    with mock.patch.object(render, "RANGE_PIECE_BYTES", 1):
        ranges = render.zero_ranges(bitmap(region_count, sorted(zeros)), region_count)
    assert ranges == naive_zero_ranges(region_count, zeros)


@given(
    bits=st.binary(max_size=40),
    start=st.integers(0, 330),
    length=st.integers(1, 40),
)
def test_has_zero_matches_a_naive_scan(bits: bytes, start: int, length: int) -> None:
    end = start + length
    value = int.from_bytes(bits, "little")
    expected = any(not value >> region & 1 for region in range(start, end))
    assert render.has_zero(bits, start, end) == expected


@given(region_count=st.integers(0, 200), bits=st.binary(max_size=32))
def test_region_string_reads_bit_r_of_byte_r_div_8(region_count: int, bits: bytes) -> None:
    text = render.region_string(bits, region_count)
    assert len(text) == region_count
    for region, char in enumerate(text):
        byte = bits[region // 8] if region // 8 < len(bits) else 0
        assert char == str(byte >> region % 8 & 1)


# ---------------------------------------------------------------- the map


def test_map_cells_of_a_small_log() -> None:
    picture = render.region_map(make_snapshot())
    assert picture.bucket_regions == 1
    assert picture.columns == 64
    assert picture.cells == "." * 5 + "ddd" + "." * 32 + "R" + "o" * 9 + "." * 50


def test_map_cell_shows_the_most_urgent_state() -> None:
    # 2 ** 16 regions: 16 per cell. Cell 0 dirty and out of sync, cell 1 dirty, cell 2 both
    # and recovering.
    count = 2**16
    snap = make_snapshot(
        region_count=count,
        clean_bits=bitmap(count, [3, 17, 33]),
        sync_bits=bitmap(count, [4, 40]),
        recovering=(47, 1),
    )
    picture = render.region_map(snap)
    assert picture.bucket_regions == 16
    assert picture.cells[:4] == "odR."
    assert len(picture.cells) == 4096


def test_map_of_an_empty_log_has_no_cells() -> None:
    picture = render.region_map(make_snapshot(region_count=0, recovering=None, marks=()))
    assert picture.cells == ""
    assert picture.rows == 1


def test_map_text_lines() -> None:
    text = LOG_RENDER["map.txt"](make_snapshot()).decode()
    assert text.splitlines() == [
        "# 100 regions, 1 per character, 64 characters per line",
        "# R recovering  o out of sync  d dirty  . clean and in sync",
        " 0 " + "." * 5 + "ddd" + "." * 32 + "R" + "o" * 9 + "." * 14,
        "64 " + "." * 36,
    ]


def test_map_text_rows_start_with_their_first_region() -> None:
    count = 2**20  # 256 regions per cell, 16384 per line
    lines = LOG_RENDER["map.txt"](make_snapshot(region_count=count)).decode().splitlines()
    assert lines[0] == f"# {count} regions, 256 per character, 64 characters per line"
    assert [line.split()[0] for line in lines[2:5]] == ["0", "16384", "32768"]
    assert len(lines) == 2 + 64


def test_map_png_pixels_are_the_map_cells() -> None:
    snap = make_snapshot()
    width, height, palette, rows = decode_png(LOG_RENDER["map.png"](snap))
    cell = render.PNG_CELL_PIXELS
    assert (width, height) == (64 * cell, 2 * cell)
    colours = {
        ".": (0xC8, 0xE6, 0xC9),
        "d": (0xFF, 0xC1, 0x07),
        "o": (0xD3, 0x2F, 0x2F),
        "R": (0x19, 0x76, 0xD2),
        " ": (0xFF, 0xFF, 0xFF),
    }
    expected = ("." * 5 + "ddd" + "." * 32 + "R" + "o" * 9 + "." * 50).ljust(128)
    for index, state in enumerate(expected):
        x, y = index % 64 * cell, index // 64 * cell
        for dy in range(cell):
            for dx in range(cell):
                assert palette[rows[y + dy][x + dx]] == colours[state], (index, dx, dy)


def test_map_png_of_an_empty_log_is_one_white_cell() -> None:
    snap = make_snapshot(region_count=0, recovering=None)
    width, height, palette, rows = decode_png(LOG_RENDER["map.png"](snap))
    assert (width, height) == (render.PNG_CELL_PIXELS, render.PNG_CELL_PIXELS)
    assert {palette[index] for row in rows for index in row} == {(0xFF, 0xFF, 0xFF)}


# ---------------------------------------------------------------- large logs


def large_snapshot() -> LogSnapshot:
    count = 2**24
    clean = bytearray(b"\xff" * (count // 8))
    clean[1000:1010] = b"\x00" * 10
    return make_snapshot(
        region_count=count,
        sync_count=count // 2,
        clean_bits=bytes(clean),
        sync_bits=b"\xff" * (count // 16) + b"\x00" * (count // 16),
        recovering=(count // 2, 1),
        marks=(),
    )


@pytest.mark.parametrize("name", [row.name for row in LOG_FILES if row.heavy])
def test_heavy_files_of_a_2_24_region_log_render_quickly(name: str) -> None:
    snap = large_snapshot()
    start = time.perf_counter()
    content = LOG_RENDER[name](snap)
    elapsed = time.perf_counter() - start
    assert content
    assert elapsed < 2.0, f"{name} took {elapsed:.2f} s"


def test_ranges_of_a_2_24_region_log() -> None:
    snap = large_snapshot()
    assert LOG_RENDER["dirty"](snap) == b"8000-8079\n"
    assert LOG_RENDER["out_of_sync"](snap) == f"{2**23}-{2**24 - 1}\n".encode()


# ---------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["render.py", "inodes.py", "source.py"])
def test_pure_modules_import_no_io(module: str) -> None:
    path = Path(render.__file__).with_name(module)
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "pyfuse3", "socket", "cffi", "os", "subprocess"}
