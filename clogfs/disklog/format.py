"""The on-disk layout of a dirty log: the one and only codec (clogfsd and clog-fsck share it).

This is the layout of the kernel's own ``disk`` dirty log (``drivers/md/dm-log.c``); a log
written by the kernel can be read here and the reverse. All multi-byte fields are
little-endian regardless of the host. Where another writer (LVM2's cmirrord) disagrees, the
kernel is right.

Layout of a log device (byte offsets from the start of the device)::

    0            16                 1024                1024 + bitset_bytes     buf_size
    | header     | filler           | clean bitmap      | tail                  |
    | (16 bytes) | (kept as read)   | (whole 64-bit     | (kept as read)        | not part
    |            |                  |  words)           |                       | of the log

Header, ``struct log_header_disk`` (packed, 16 bytes, :data:`LOG_HEADER`):

=====  ====  ===========  ======  ===========================================================
off    size  field        order   meaning, sentinels, and the clog-fsck code checking it
=====  ====  ===========  ======  ===========================================================
0      4     magic        le32    :data:`MIRROR_MAGIC` ``0x4D695272`` ("MiRr", bytes
                                  ``72 52 69 4d``). Anything else: not a log, and the kernel
                                  starts a new one at load (every region dirty).
                                  ``HEADER_BAD_MAGIC`` (0x010001).
4      4     version      le32    :data:`MIRROR_DISK_VERSION` (2). 1 (:data:`OLD_DISK_VERSION`)
                                  is the older host-endian format, byte-identical on little-
                                  endian hosts, where it is accepted and rewritten as 2
                                  (``HEADER_OLD_VERSION``, 0x010003); any other value is
                                  refused by the kernel (``HEADER_UNKNOWN_VERSION``, 0x010002).
8      8     nr_regions   le64    the region count the bitmap was last written for. Never 0
                                  from a real writer (``HEADER_NO_REGIONS``, 0x010004); its
                                  ``buf_size`` must fit the device
                                  (``HEADER_REGIONS_EXCEED_DEVICE``, 0x010005); it should
                                  equal the mirror's region count when that is known
                                  (``GEOMETRY_MISMATCH``, 0x020002).
=====  ====  ===========  ======  ===========================================================

Clean bitmap, from :data:`BITMAP_OFFSET` (byte 1024, ``LOG_OFFSET`` = 2 sectors):

- region ``r`` is bit ``r % 8`` (least significant first) of byte ``1024 + r // 8``: the
  kernel's ``test_bit_le``/``__set_bit_le``, whatever the host's byte order;
- 1 = clean (no write in flight, the legs agree as far as the log knows); 0 = dirty (the
  region is resynchronised at the next activation);
- length :func:`bitset_bytes` = ``ceil(nr_regions / 64) * 8`` (:data:`BITS_PER_LONG` = 64);
- bits from ``nr_regions`` to the end of the last 64-bit word are 0: every load clears them
  (``BITMAP_TAIL_BITS_SET``, 0x030001; a 32-bit kernel only clears to its 32-bit word);
- sync bits are never stored: a load derives them from the clean bits.

The buffer (:func:`buffer_bytes`): ``buf_size = round_up(1024 + bitset_bytes, logical block
size)``, read and written whole at offset 0. The logical block size is the device's
(``BLKSSZGET``), or :data:`IMAGE_FILE_BLOCK_SIZE` (4096) for a regular image file. A device
smaller than ``buf_size`` cannot hold the log (the kernel's "log device %s too small: need
%llu bytes"); one smaller than a single block holds no log at all (``DEVICE_TOO_SMALL``,
0x000001).

Bytes 16-1023 and the tail after the bitmap carry no invariant: the kernel writes back
whatever it read there, so :func:`encode_buffer` keeps them and clog-fsck never checks them.

Core module: no trio, no sockets, no I/O.
"""

from __future__ import annotations

import enum
import re
import struct
import sys
from dataclasses import dataclass

from clogfs.errors import FormatError, LocalProtocolError

# struct log_header_disk, drivers/md/dm-log.c: __le32 magic, __le32 version, __le64 nr_regions
LOG_HEADER = struct.Struct("<IIQ")
MIRROR_MAGIC = 0x4D695272  # "MiRr", drivers/md/dm-log.c
# Version history (drivers/md/dm-log.c):
#   1: header and bitmap in host byte order (identical to 2 on little-endian hosts);
#   2: little-endian header, little-endian bit numbering (test_bit_le) on every host.
MIRROR_DISK_VERSION = 2  # drivers/md/dm-log.c; version 1 is the same bytes on little-endian hosts
OLD_DISK_VERSION = 1  # the pre-2 host-endian format; dm-log.c accepts it on little-endian hosts
LOG_OFFSET = 2  # sectors, drivers/md/dm-log.c: the clean bitmap starts at byte 1024
SECTOR_SIZE = 512
BITMAP_OFFSET = LOG_OFFSET * SECTOR_SIZE  # 1024
BITS_PER_LONG = 64  # the kernel's bitmap word on 64-bit hosts
IMAGE_FILE_BLOCK_SIZE = 4096  # logical block size assumed for regular image files

_WORD_BYTES = BITS_PER_LONG // 8


@dataclass(frozen=True)
class LogHeader:
    """``struct log_header_disk``: the first 16 bytes of a log device."""

    magic: int
    version: int
    nr_regions: int


class HeaderFinding(enum.Enum):
    """What :func:`header_findings` can report about a decoded header."""

    BAD_MAGIC = "bad magic"  # not MIRROR_MAGIC: the other fields mean nothing
    UNKNOWN_VERSION = "unknown version"  # the kernel refuses it ("incompatible disk log version")
    OLD_VERSION = "old version"  # version 1 on a little-endian host: accepted, rewritten as 2
    NO_REGIONS = "no regions"  # nr_regions == 0: never written by the kernel or clogfs


def bitset_bytes(region_count: int) -> int:
    """Bytes of the clean bitmap for ``region_count`` regions: whole 64-bit words."""
    words = -(-region_count // BITS_PER_LONG)
    return words * _WORD_BYTES


def buffer_bytes(region_count: int, logical_block_size: int) -> int:
    """The kernel's ``buf_size``: header area + bitmap, rounded up to the logical block size."""
    raw = BITMAP_OFFSET + bitset_bytes(region_count)
    return -(-raw // logical_block_size) * logical_block_size


def fits_device(region_count: int, logical_block_size: int, device_bytes: int) -> bool:
    """Whether a log of ``region_count`` regions fits a device of ``device_bytes`` bytes."""
    return buffer_bytes(region_count, logical_block_size) <= device_bytes


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


def header_findings(
    header: LogHeader, *, host_byteorder: str = sys.byteorder
) -> tuple[HeaderFinding, ...]:
    """Return what is wrong (or old) in ``header``, without raising.

    A bad magic is reported alone: the other fields of a non-log mean nothing. The size check
    against a device is :func:`fits_device`.

    Args:
        header: a decoded header.
        host_byteorder: ``"little"`` or ``"big"``; version 1 is acceptable only on little-endian
            hosts, as in the kernel.

    Returns:
        The findings in field order; empty for a sound version-2 header.
    """
    if header.magic != MIRROR_MAGIC:
        return (HeaderFinding.BAD_MAGIC,)
    findings: list[HeaderFinding] = []
    if header.version == OLD_DISK_VERSION and host_byteorder == "little":
        findings.append(HeaderFinding.OLD_VERSION)
    elif header.version != MIRROR_DISK_VERSION:
        findings.append(HeaderFinding.UNKNOWN_VERSION)
    if header.nr_regions == 0:
        findings.append(HeaderFinding.NO_REGIONS)
    return tuple(findings)


def decode_bitmap(buffer: bytes, region_count: int) -> bytes:
    """Return the clean bitmap of ``region_count`` regions from a log buffer.

    Args:
        buffer: the log's bytes from device offset 0.
        region_count: regions the bitmap covers.

    Returns:
        :func:`bitset_bytes` ``(region_count)`` bytes from :data:`BITMAP_OFFSET`, tail included.

    Raises:
        FormatError: ``buffer`` ends before the bitmap does.
    """
    end = BITMAP_OFFSET + bitset_bytes(region_count)
    if len(buffer) < end:
        raise FormatError(
            f"a bitmap of {region_count} regions needs {end} bytes, got {len(buffer)}"
        )
    return bytes(buffer[BITMAP_OFFSET:end])


def encode_buffer(
    header: LogHeader, bitmap: bytes, *, logical_block_size: int, previous: bytes = b""
) -> bytes:
    """Build the whole on-disk buffer for ``header`` and ``bitmap``.

    The filler (bytes 16-1023) and the tail after the bitmap are taken from ``previous`` (the
    buffer as read), zero where ``previous`` is shorter, as the kernel writes back what it read.

    Args:
        header: the header to write.
        bitmap: the clean bitmap, exactly :func:`bitset_bytes` ``(header.nr_regions)`` bytes.
        logical_block_size: the device's logical block size.
        previous: the bytes read from the device at offset 0, if any.

    Returns:
        :func:`buffer_bytes` ``(header.nr_regions, logical_block_size)`` bytes.

    Raises:
        LocalProtocolError: ``bitmap`` has the wrong length for ``header.nr_regions`` (a bug).
    """
    if len(bitmap) != bitset_bytes(header.nr_regions):
        raise LocalProtocolError(
            f"bitmap of {len(bitmap)} bytes for {header.nr_regions} regions "
            f"(needs {bitset_bytes(header.nr_regions)})"
        )
    size = buffer_bytes(header.nr_regions, logical_block_size)
    out = bytearray(previous[:size])
    out.extend(bytes(size - len(out)))
    out[: LOG_HEADER.size] = encode_header(header)
    out[BITMAP_OFFSET : BITMAP_OFFSET + len(bitmap)] = bitmap
    return bytes(out)


def _check_bitmap(bitmap: bytes, region_count: int) -> None:
    if len(bitmap) != bitset_bytes(region_count):
        raise FormatError(
            f"bitmap of {len(bitmap)} bytes for {region_count} regions "
            f"(needs {bitset_bytes(region_count)})"
        )


def tail_bits_clear(bitmap: bytes, region_count: int) -> bool:
    """Whether every bit from ``region_count`` to the end of the last 64-bit word is 0.

    Raises:
        FormatError: ``bitmap`` is not :func:`bitset_bytes` ``(region_count)`` bytes long.
    """
    _check_bitmap(bitmap, region_count)
    first, bit = divmod(region_count, 8)
    if bit and bitmap[first] >> bit:
        return False
    rest = first + 1 if bit else first
    return not any(bitmap[rest:])


def clear_tail_bits(bitmap: bytes, region_count: int) -> bytes:
    """Return ``bitmap`` with every bit from ``region_count`` on cleared (load step 4).

    Raises:
        FormatError: ``bitmap`` is not :func:`bitset_bytes` ``(region_count)`` bytes long.
    """
    _check_bitmap(bitmap, region_count)
    first, bit = divmod(region_count, 8)
    out = bytearray(bitmap)
    if bit:
        out[first] &= (1 << bit) - 1
        first += 1
    out[first:] = bytes(len(out) - first)
    return bytes(out)


def count_clean(bitmap: bytes, region_count: int) -> int:
    """Number of clean regions (set bits below ``region_count``; tail bits do not count).

    Raises:
        FormatError: ``bitmap`` is not :func:`bitset_bytes` ``(region_count)`` bytes long.
    """
    _check_bitmap(bitmap, region_count)
    value = int.from_bytes(bitmap, "little") & ((1 << region_count) - 1)
    return value.bit_count()


def _zero_runs(value: int) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    start = -1
    for bit in range(9):
        dirty = bit < 8 and not (value >> bit) & 1
        if dirty and start < 0:
            start = bit
        elif not dirty and start >= 0:
            runs.append((start, bit))
            start = -1
    return tuple(runs)


# For each byte value, the half-open runs of dirty (0) bits inside it, lowest region first.
_BYTE_DIRTY_RUNS = tuple(_zero_runs(value) for value in range(256))
# A run of all-dirty bytes, or one byte holding both clean and dirty regions.
_DIRTY_BYTES = re.compile(rb"\x00+|[^\x00\xff]")


def dirty_ranges(bitmap: bytes, region_count: int) -> list[range]:
    """The dirty regions of ``bitmap`` as maximal half-open ranges, in ascending order.

    Runs in time proportional to the number of bytes that hold a dirty region, with all-clean
    and all-dirty stretches handled by the regular-expression engine, so a 2**24-region
    bitmap takes milliseconds.

    Raises:
        FormatError: ``bitmap`` is not :func:`bitset_bytes` ``(region_count)`` bytes long.
    """
    _check_bitmap(bitmap, region_count)
    ranges: list[range] = []
    start = stop = 0
    for match in _DIRTY_BYTES.finditer(bitmap, 0, -(-region_count // 8)):
        first, last = match.span()
        if bitmap[first] == 0:
            runs: tuple[tuple[int, int], ...] = ((0, (last - first) * 8),)
        else:
            runs = _BYTE_DIRTY_RUNS[bitmap[first]]
        for low, high in runs:
            low, high = first * 8 + low, min(first * 8 + high, region_count)
            if low >= high:
                continue
            if low == stop and stop > start:
                stop = high
                continue
            if stop > start:
                ranges.append(range(start, stop))
            start, stop = low, high
    if stop > start:
        ranges.append(range(start, stop))
    return ranges
