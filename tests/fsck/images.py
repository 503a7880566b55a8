"""Log images for the clog-fsck tests, built without the codec under test.

The encoder here packs the kernel's layout straight from ``drivers/md/dm-log.c``: ``struct
log_header_disk`` (``__le32 magic, __le32 version, __le64 nr_regions``) at byte 0, the clean
bitmap from byte 1024 (``LOG_OFFSET`` = 2 sectors) with region ``r`` at bit ``r % 8`` of byte
``1024 + r / 8``, ``ceil(n / 64) * 8`` bytes long, the buffer rounded up to the logical block
size. Corruptions are raw byte edits.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path

# struct log_header_disk, drivers/md/dm-log.c: __le32 magic, __le32 version, __le64 nr_regions
KERNEL_HEADER = struct.Struct("<IIQ")
KERNEL_MAGIC = 0x4D695272  # MIRROR_MAGIC
KERNEL_BITMAP_START = 1024  # LOG_OFFSET (2) sectors of 512 bytes


def kernel_bitset_size(nr_regions: int) -> int:
    """``dm_round_up(region_count, BITS_PER_LONG) >> BYTE_SHIFT`` with 64-bit longs."""
    return (nr_regions + 63) // 64 * 8


def kernel_buf_size(nr_regions: int, block_bytes: int) -> int:
    """``dm_round_up(LOG_OFFSET << SECTOR_SHIFT + bitset_size, bdev_logical_block_size)``."""
    raw = KERNEL_BITMAP_START + kernel_bitset_size(nr_regions)
    return (raw + block_bytes - 1) // block_bytes * block_bytes


def kernel_image(
    nr_regions: int,
    clean: Iterable[int] = (),
    *,
    magic: int = KERNEL_MAGIC,
    version: int = 2,
    block_bytes: int = 4096,
    device_bytes: int | None = None,
    filler: int = 0,
) -> bytes:
    """A log device as the kernel writes it, ``clean`` regions clean, the rest dirty.

    Args:
        nr_regions: the header's region count (also sizes the buffer).
        clean: regions whose clean bit is set.
        magic: the header magic.
        version: the header version.
        block_bytes: the logical block size the buffer is rounded to.
        device_bytes: the image size; default the buffer size.
        filler: the value of every byte outside the header and bitmap.
    """
    size = kernel_buf_size(nr_regions, block_bytes) if device_bytes is None else device_bytes
    image = bytearray([filler]) * size
    KERNEL_HEADER.pack_into(image, 0, magic, version, nr_regions)
    end = min(size, KERNEL_BITMAP_START + kernel_bitset_size(nr_regions))
    image[KERNEL_BITMAP_START:end] = bytes(max(0, end - KERNEL_BITMAP_START))
    for region in clean:
        image[KERNEL_BITMAP_START + region // 8] |= 1 << (region % 8)
    return bytes(image)


def kernel_clean_regions(image: bytes) -> set[int]:
    """The clean regions of an image, decoded bit by bit (for checking repairs)."""
    _, _, nr_regions = KERNEL_HEADER.unpack_from(image, 0)
    return {
        region
        for region in range(nr_regions)
        if image[KERNEL_BITMAP_START + region // 8] >> (region % 8) & 1
    }


def kernel_header(image: bytes) -> tuple[int, int, int]:
    """``(magic, version, nr_regions)`` unpacked from the first 16 bytes."""
    magic, version, nr_regions = KERNEL_HEADER.unpack_from(image, 0)
    return magic, version, nr_regions


def poke(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place."""
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
