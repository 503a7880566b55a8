"""The clog-fsck passes: what is checked, in which order, and how each problem is repaired.

Each pass is a function ``(ctx) -> None`` that reads the image, asks ``ctx.fix(code,
**fields)`` about each problem, and stages the repair on ``ctx.image`` when told to. Passes
never look at the mode. Repairs only ever make regions dirty, never clean: a dirty region
costs a resync, a wrongly clean one hides legs that differ. A header that cannot be trusted
is replaced by a fresh one with every region dirty.

Core module: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from clogfs.disklog.format import (
    MIRROR_DISK_VERSION,
    MIRROR_MAGIC,
    HeaderFinding,
    LogHeader,
    bitset_bytes,
    buffer_bytes,
    clear_tail_bits,
    count_clean,
    dirty_ranges,
    header_findings,
    tail_bits_clear,
)
from clogfs.fsck.context import CheckAborted, FsckContext
from clogfs.fsck.problems import ProblemCode


def check_device(ctx: FsckContext) -> None:
    """Pass 0: the device can hold a log at all (one region's buffer).

    Checks: ``DEVICE_TOO_SMALL`` (fatal). Produces: nothing. Requires: nothing.
    """
    image = ctx.image
    smallest = buffer_bytes(1, image.logical_block_size)
    if image.device_bytes < smallest:
        ctx.fix(
            ProblemCode.DEVICE_TOO_SMALL,
            device=ctx.device_name,
            device_bytes=image.device_bytes,
            block_bytes=smallest,
        )


def check_header(ctx: FsckContext) -> None:
    """Pass 1: magic, version, and a region count that is not 0 and fits the device.

    Checks: ``HEADER_BAD_MAGIC``, ``HEADER_UNKNOWN_VERSION``, ``HEADER_OLD_VERSION``,
    ``HEADER_NO_REGIONS``, ``HEADER_REGIONS_EXCEED_DEVICE`` (all but the old version fatal
    when not fixed), and ``HEADER_NEEDS_REGION_COUNT`` when a new header has no known size.
    Produces: a header whose bitmap lies inside the bytes read. Requires: pass 0.
    """
    header = ctx.image.header
    findings = header_findings(header)
    if HeaderFinding.BAD_MAGIC in findings:
        _renew_header(ctx, ProblemCode.HEADER_BAD_MAGIC, magic=header.magic)
        return
    if HeaderFinding.UNKNOWN_VERSION in findings:
        _renew_header(ctx, ProblemCode.HEADER_UNKNOWN_VERSION, version=header.version)
        return
    if HeaderFinding.OLD_VERSION in findings and ctx.fix(
        ProblemCode.HEADER_OLD_VERSION, version=header.version
    ):
        ctx.image.stage_header(LogHeader(MIRROR_MAGIC, MIRROR_DISK_VERSION, header.nr_regions))
    if HeaderFinding.NO_REGIONS in findings:
        _renew_header(ctx, ProblemCode.HEADER_NO_REGIONS)
        return
    if not ctx.image.fits(header.nr_regions):
        _renew_header(
            ctx,
            ProblemCode.HEADER_REGIONS_EXCEED_DEVICE,
            nr_regions=header.nr_regions,
            needed_bytes=buffer_bytes(header.nr_regions, ctx.image.logical_block_size),
            device_bytes=ctx.image.device_bytes,
        )


def check_geometry(ctx: FsckContext) -> None:
    """Pass 2: the header's region count against the mirror's, when one was given.

    Checks: ``GEOMETRY_EXCEEDS_DEVICE`` (no fix: the device is too small for the mirror),
    ``GEOMETRY_MISMATCH`` (fix: a new header for the expected count, every region dirty).
    Produces: nothing new. Requires: pass 1 (a usable header).
    """
    expected = ctx.expected_regions
    if expected is None:
        return
    image = ctx.image
    if not image.fits(expected):
        ctx.fix(
            ProblemCode.GEOMETRY_EXCEEDS_DEVICE,
            expected_regions=expected,
            needed_bytes=buffer_bytes(expected, image.logical_block_size),
            device_bytes=image.device_bytes,
        )
        return
    found = image.header.nr_regions
    if found != expected and ctx.fix(
        ProblemCode.GEOMETRY_MISMATCH, nr_regions=found, expected_regions=expected
    ):
        _stage_all_dirty(ctx, expected)


def check_bitmap(ctx: FsckContext) -> None:
    """Pass 3: bits after the last region, up to the end of the last 64-bit word, are 0.

    Skipped when the log looks clean (no problem so far) unless ``-f`` was given: the kernel
    clears these bits at every load, so they matter only in a log already found damaged.
    Checks: ``BITMAP_TAIL_BITS_SET`` (fix: clear them). Requires: pass 1.
    """
    if ctx.looks_clean and not ctx.force:
        return
    nr_regions = ctx.image.header.nr_regions
    bitmap = ctx.image.bitmap
    if tail_bits_clear(bitmap, nr_regions):
        return
    tail = int.from_bytes(bitmap, "little") >> nr_regions
    if ctx.fix(
        ProblemCode.BITMAP_TAIL_BITS_SET,
        count=tail.bit_count(),
        nr_regions=nr_regions,
        tail_end=len(bitmap) * 8 - 1,
    ):
        ctx.image.stage_bitmap(clear_tail_bits(bitmap, nr_regions))


def mark_all_dirty(ctx: FsckContext) -> None:
    """Pass 4: ``--mark-all-dirty`` clears every clean bit, forcing a full resync.

    Asks ``MARK_ALL_DIRTY`` only when a region is clean; bits after the last region are left
    to pass 3. Requires: pass 1.
    """
    if not ctx.mark_all_dirty:
        return
    nr_regions = ctx.image.header.nr_regions
    bitmap = ctx.image.bitmap
    clean = count_clean(bitmap, nr_regions)
    if clean and ctx.fix(ProblemCode.MARK_ALL_DIRTY, clean=clean, nr_regions=nr_regions):
        tail = int.from_bytes(bitmap, "little") >> nr_regions << nr_regions
        ctx.image.stage_bitmap(tail.to_bytes(len(bitmap), "little"))


def summarize(ctx: FsckContext) -> None:
    """Pass 5: count the dirty regions (what will resync at the next activation).

    Produces: ``ctx.dirty_count``, and ``ctx.dirty_ranges`` when ranges were asked for
    (``ctx.dirty_ranges`` set to an empty list beforehand). Requires: pass 1.
    """
    nr_regions = ctx.image.header.nr_regions
    bitmap = ctx.image.bitmap
    ctx.dirty_count = nr_regions - count_clean(bitmap, nr_regions)
    if ctx.dirty_ranges is not None:
        ctx.dirty_ranges = dirty_ranges(bitmap, nr_regions)


PASSES: tuple[Callable[[FsckContext], None], ...] = (
    check_device,
    check_header,
    check_geometry,
    check_bitmap,
    mark_all_dirty,
    summarize,
)


def run_passes(ctx: FsckContext) -> None:
    """Run :data:`PASSES` in order; a :class:`CheckAborted` stops them and is kept on ``ctx``."""
    try:
        for check in PASSES:
            check(ctx)
    except CheckAborted as exc:
        ctx.aborted = exc


def _new_region_count(ctx: FsckContext) -> int | None:
    """The region count for a fresh header: the expected one, else the header's if plausible."""
    image = ctx.image
    if ctx.expected_regions is not None and image.fits(ctx.expected_regions):
        return ctx.expected_regions
    nr_regions = image.header.nr_regions
    if nr_regions > 0 and image.fits(nr_regions):
        return nr_regions
    return None


def _renew_header(ctx: FsckContext, code: ProblemCode, **fields: object) -> None:
    """Ask ``code``; on yes, stage a fresh version-2 header with every region dirty."""
    if not ctx.fix(code, **fields):
        return
    nr_regions = _new_region_count(ctx)
    if nr_regions is None:
        ctx.fix(ProblemCode.HEADER_NEEDS_REGION_COUNT)
        return
    _stage_all_dirty(ctx, nr_regions)


def _stage_all_dirty(ctx: FsckContext, nr_regions: int) -> None:
    header = LogHeader(MIRROR_MAGIC, MIRROR_DISK_VERSION, nr_regions)
    ctx.image.stage_log(header, bytes(bitset_bytes(nr_regions)))
