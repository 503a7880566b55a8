"""The disk format codec against an independent decoder written here from dm-log.c's layout."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import clogfs.disklog.format as fmt
from clogfs.disklog.format import (
    HeaderFinding,
    LogHeader,
    bitset_bytes,
    buffer_bytes,
    clear_tail_bits,
    count_clean,
    decode_bitmap,
    decode_header,
    dirty_ranges,
    encode_buffer,
    encode_header,
    fits_device,
    header_findings,
    tail_bits_clear,
)
from clogfs.errors import FormatError, LocalProtocolError

# struct log_header_disk, drivers/md/dm-log.c: __le32 magic, __le32 version, __le64 nr_regions
KERNEL_HEADER = struct.Struct("<IIQ")

HEADER_TABLE = [
    (
        LogHeader(0x4D695272, 2, 32),
        bytes.fromhex("72 52 69 4d 02 00 00 00 20 00 00 00 00 00 00 00"),
    ),
    (
        LogHeader(0x4D695272, 1, 4_194_304),
        bytes.fromhex("72 52 69 4d 01 00 00 00 00 00 40 00 00 00 00 00"),
    ),
    (
        LogHeader(0xFFFFFFFF, 0xFFFFFFFF, 2**64 - 1),
        bytes([0xFF] * 16),
    ),
    (LogHeader(0, 0, 0), bytes(16)),
]


def independent_clean(bitmap: bytes, region_count: int) -> list[bool]:
    """Region r is bit r % 8 of byte r // 8 (test_bit_le)."""
    return [bool(bitmap[r // 8] >> (r % 8) & 1) for r in range(region_count)]


def independent_ranges(clean: list[bool]) -> list[range]:
    ranges: list[range] = []
    for region, is_clean in enumerate(clean):
        if is_clean:
            continue
        if ranges and ranges[-1].stop == region:
            ranges[-1] = range(ranges[-1].start, region + 1)
        else:
            ranges.append(range(region, region + 1))
    return ranges


@st.composite
def bitmaps(draw: st.DrawFn) -> tuple[bytes, int]:
    region_count = draw(st.integers(1, 700))
    size = (region_count + 63) // 64 * 8
    return draw(st.binary(min_size=size, max_size=size)), region_count


@pytest.mark.parametrize(("header", "data"), HEADER_TABLE)
def test_header_decodes(header: LogHeader, data: bytes) -> None:
    assert decode_header(data) == header


@pytest.mark.parametrize(("header", "data"), HEADER_TABLE)
def test_header_encodes(header: LogHeader, data: bytes) -> None:
    assert encode_header(header) == data


@pytest.mark.parametrize(("header", "data"), HEADER_TABLE)
def test_header_prefixes_rejected(header: LogHeader, data: bytes) -> None:
    for length in range(len(data)):
        with pytest.raises(FormatError):
            decode_header(data[:length])


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_header_matches_kernel_struct(magic: int, version: int, nr_regions: int) -> None:
    data = KERNEL_HEADER.pack(magic, version, nr_regions)
    assert decode_header(data) == LogHeader(magic, version, nr_regions)
    assert encode_header(LogHeader(magic, version, nr_regions)) == data


def test_spec_example_32_clean_regions() -> None:
    bitmap = bytes.fromhex("ff ff ff ff 00 00 00 00")
    buffer = encode_buffer(LogHeader(0x4D695272, 2, 32), bitmap, logical_block_size=4096)
    assert buffer[:16] == bytes.fromhex("72 52 69 4d 02 00 00 00 20 00 00 00 00 00 00 00")
    assert buffer[0x400:0x408] == bitmap
    assert len(buffer) == 4096


@pytest.mark.parametrize(
    ("region_count", "bitset", "buf_512", "buf_4096"),
    [
        (32, 8, 1536, 4096),
        (128, 16, 1536, 4096),
        (1000, 128, 1536, 4096),
        (4_194_304, 524_288, 525_312, 528_384),
    ],
)
def test_buffer_sizes_from_spec(
    region_count: int, bitset: int, buf_512: int, buf_4096: int
) -> None:
    assert bitset_bytes(region_count) == bitset
    assert buffer_bytes(region_count, 512) == buf_512
    assert buffer_bytes(region_count, 4096) == buf_4096


def test_fits_device_boundary() -> None:
    assert fits_device(32, 512, 1536)
    assert not fits_device(32, 512, 1535)


@pytest.mark.parametrize(
    ("header", "byteorder", "findings"),
    [
        (LogHeader(0x4D695272, 2, 32), "little", ()),
        (LogHeader(0x72524D69, 2, 32), "little", (HeaderFinding.BAD_MAGIC,)),
        (LogHeader(0, 0, 0), "little", (HeaderFinding.BAD_MAGIC,)),
        (LogHeader(0x4D695272, 1, 32), "little", (HeaderFinding.OLD_VERSION,)),
        (LogHeader(0x4D695272, 1, 32), "big", (HeaderFinding.UNKNOWN_VERSION,)),
        (LogHeader(0x4D695272, 3, 32), "little", (HeaderFinding.UNKNOWN_VERSION,)),
        (LogHeader(0x4D695272, 2, 0), "little", (HeaderFinding.NO_REGIONS,)),
        (
            LogHeader(0x4D695272, 7, 0),
            "little",
            (HeaderFinding.UNKNOWN_VERSION, HeaderFinding.NO_REGIONS),
        ),
    ],
)
def test_header_findings(
    header: LogHeader, byteorder: str, findings: tuple[HeaderFinding, ...]
) -> None:
    assert header_findings(header, host_byteorder=byteorder) == findings


@pytest.mark.parametrize("version", [1, 2])
def test_kernel_format_image_decodes(version: int) -> None:
    # A 100-region log as dm-log.c lays it out on a 512-byte-sector device: regions 3 and
    # 64-99 clean; version 1 is the same bytes on a little-endian host.
    image = bytearray(1536)
    KERNEL_HEADER.pack_into(image, 0, 0x4D695272, version, 100)
    for region in (3, *range(64, 100)):
        image[1024 + region // 8] |= 1 << (region % 8)
    header = decode_header(bytes(image))
    assert header == LogHeader(0x4D695272, version, 100)
    bitmap = decode_bitmap(bytes(image), 100)
    assert dirty_ranges(bitmap, 100) == [range(0, 3), range(4, 64)]
    assert count_clean(bitmap, 100) == 37
    assert tail_bits_clear(bitmap, 100)


def test_decode_bitmap_rejects_short_buffer() -> None:
    with pytest.raises(FormatError):
        decode_bitmap(bytes(1024 + 7), 64)


def test_encode_buffer_keeps_filler_and_tail() -> None:
    previous = bytes(range(256)) * 16
    buffer = encode_buffer(
        LogHeader(0x4D695272, 2, 64), bytes(8), logical_block_size=4096, previous=previous
    )
    assert buffer[16:1024] == previous[16:1024]
    assert buffer[1032:] == previous[1032:]
    assert buffer[1024:1032] == bytes(8)


def test_encode_buffer_zero_fills_beyond_previous() -> None:
    buffer = encode_buffer(LogHeader(0x4D695272, 2, 64), bytes(8), logical_block_size=512)
    assert buffer[16:1024] == bytes(1008)
    assert len(buffer) == 1536


def test_encode_buffer_refuses_wrong_bitmap_length() -> None:
    with pytest.raises(LocalProtocolError):
        encode_buffer(LogHeader(0x4D695272, 2, 65), bytes(8), logical_block_size=512)


@given(bitmaps())
def test_clean_count_matches_independent_decoder(case: tuple[bytes, int]) -> None:
    bitmap, region_count = case
    assert count_clean(bitmap, region_count) == sum(independent_clean(bitmap, region_count))


@given(bitmaps())
def test_dirty_ranges_match_independent_decoder(case: tuple[bytes, int]) -> None:
    bitmap, region_count = case
    expected = independent_ranges(independent_clean(bitmap, region_count))
    assert dirty_ranges(bitmap, region_count) == expected


@given(bitmaps())
def test_tail_bits_clear_matches_independent_decoder(case: tuple[bytes, int]) -> None:
    bitmap, region_count = case
    tail = [bitmap[b // 8] >> (b % 8) & 1 for b in range(region_count, len(bitmap) * 8)]
    assert tail_bits_clear(bitmap, region_count) == (not any(tail))


@given(bitmaps())
def test_clear_tail_bits_keeps_regions(case: tuple[bytes, int]) -> None:
    bitmap, region_count = case
    cleared = clear_tail_bits(bitmap, region_count)
    assert independent_clean(cleared, region_count) == independent_clean(bitmap, region_count)
    assert tail_bits_clear(cleared, region_count)


def test_dirty_ranges_large_log() -> None:
    region_count = 2**24
    bitmap = bytearray([0xFF]) * bitset_bytes(region_count)
    bitmap[1000] = 0x0F  # regions 8004-8007 dirty
    bitmap[-1] = 0  # the last 8 regions dirty
    assert dirty_ranges(bytes(bitmap), region_count) == [
        range(8004, 8008),
        range(region_count - 8, region_count),
    ]


@pytest.mark.parametrize("function", [tail_bits_clear, clear_tail_bits, count_clean, dirty_ranges])
def test_bitmap_helpers_refuse_wrong_length(function: object) -> None:
    assert callable(function)
    with pytest.raises(FormatError):
        function(bytes(7), 32)


def test_format_module_is_pure() -> None:
    tree = ast.parse(Path(fmt.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "pyfuse3", "cffi", "os", "mmap", "fcntl"}
