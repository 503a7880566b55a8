"""The on-disk layout of a dirty log: the one and only codec (clogfsd and clog-fsck share it).

This is the layout of the kernel's own ``disk`` dirty log (``drivers/md/dm-log.c``); a log
written by the kernel can be read here and the reverse. All multi-byte fields are
little-endian regardless of the host.

TODO(#3): the canonical, field-by-field description of the format lives here (offsets,
sizes, sentinels, and the clog-fsck problem code that checks each invariant).

Core module: no trio, no I/O; ``os`` only for constants.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from clogfs.errors import FormatError

# struct log_header_disk, drivers/md/dm-log.c: __le32 magic, __le32 version, __le64 nr_regions
LOG_HEADER = struct.Struct("<IIQ")
MIRROR_MAGIC = 0x4D695272  # "MiRr", drivers/md/dm-log.c
MIRROR_DISK_VERSION = 2  # drivers/md/dm-log.c; version 1 is the same bytes on little-endian hosts
LOG_OFFSET = 2  # sectors, drivers/md/dm-log.c: the clean bitmap starts at byte 1024
SECTOR_SIZE = 512
BITMAP_OFFSET = LOG_OFFSET * SECTOR_SIZE  # 1024
BITS_PER_LONG = 64  # the kernel's bitmap word on 64-bit hosts
IMAGE_FILE_BLOCK_SIZE = 4096  # logical block size assumed for regular image files


@dataclass(frozen=True)
class LogHeader:
    """``struct log_header_disk``: the first 16 bytes of a log device."""

    magic: int
    version: int
    nr_regions: int


def bitset_bytes(region_count: int) -> int:
    """Bytes of the clean bitmap for ``region_count`` regions: whole 64-bit words."""
    words = -(-region_count // BITS_PER_LONG)
    return words * (BITS_PER_LONG // 8)


def buffer_bytes(region_count: int, logical_block_size: int) -> int:
    """The kernel's ``buf_size``: header area + bitmap, rounded up to the logical block size."""
    raw = BITMAP_OFFSET + bitset_bytes(region_count)
    return -(-raw // logical_block_size) * logical_block_size


def encode_header(header: LogHeader) -> bytes:
    """Encode ``header`` as its 16 on-disk bytes."""
    return LOG_HEADER.pack(header.magic, header.version, header.nr_regions)


def decode_header(data: bytes) -> LogHeader:
    """Decode the first 16 bytes of ``data``; validation of the values is the caller's.

    Raises:
        FormatError: fewer than 16 bytes.
    """
    if len(data) < LOG_HEADER.size:
        raise FormatError(f"log header needs {LOG_HEADER.size} bytes, got {len(data)}")
    magic, version, nr_regions = LOG_HEADER.unpack_from(data, 0)
    return LogHeader(magic, version, nr_regions)
