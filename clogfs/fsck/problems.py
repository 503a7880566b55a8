"""The clog-fsck problem table: every finding, its code, wording, prompt and flags.

This is the only place a finding is worded (modelled on e2fsprogs' ``e2fsck/problem.c``).
A :class:`ProblemCode` is ``0xPPNNNN``: the pass in the high byte, the number within the
pass below it. Codes are stable and never reused; they appear in ``--json``, in
``--problem-log`` and in ``clog-fsck(8)``.

Messages are ``str.format`` templates with named fields; a pass supplies every field to
``ctx.fix(code, **fields)``. ``Prompt`` carries the question asked before a fix and the word
printed when preen mode makes it. ``ProblemFlag`` says how modes treat the problem:

- ``PREEN_OK``: ``-p`` may make the fix. Only dirty-ward repairs carry it.
- ``NO_OK``: declining (or being unable) to fix it is not an error (no exit bit 4).
- ``FATAL``: if it is not fixed, no later check can run; the check stops there.
- ``NOT_A_FIX``: making the change does not count as correcting an error (no exit bit 1).

Core module: no I/O.
"""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass


@enum.unique
class ProblemCode(enum.IntEnum):
    """Stable problem codes, ``0xPPNNNN`` (pass, number)."""

    # pass 0: the device
    DEVICE_TOO_SMALL = 0x000001
    # pass 1: the header
    HEADER_BAD_MAGIC = 0x010001
    HEADER_UNKNOWN_VERSION = 0x010002
    HEADER_OLD_VERSION = 0x010003
    HEADER_NO_REGIONS = 0x010004
    HEADER_REGIONS_EXCEED_DEVICE = 0x010005
    HEADER_NEEDS_REGION_COUNT = 0x010006
    # pass 2: the header against the expected geometry
    GEOMETRY_EXCEEDS_DEVICE = 0x020001
    GEOMETRY_MISMATCH = 0x020002
    # pass 3: the clean bitmap
    BITMAP_TAIL_BITS_SET = 0x030001
    # pass 4: repairs the administrator asked for
    MARK_ALL_DIRTY = 0x040001


class Prompt(enum.Enum):
    """The question asked before a fix, and the word preen mode prints once it is made."""

    NONE = ("", "")
    FIX = ("Fix", "FIXED")
    REWRITE = ("Rewrite", "REWRITTEN")
    NEW_HEADER = ("Write a new header with every region dirty", "NEW HEADER WRITTEN")
    CLEAR = ("Clear", "CLEARED")
    MARK_DIRTY = ("Mark every region dirty", "MARKED DIRTY")

    @property
    def question(self) -> str:
        """The question, without the ``?``; empty when nothing can be done."""
        return self.value[0]

    @property
    def preen_message(self) -> str:
        """What ``-p`` prints after making the fix."""
        return self.value[1]


class ProblemFlag(enum.Flag):
    """How the modes treat a problem (see the module docstring)."""

    NONE = 0
    PREEN_OK = enum.auto()
    NO_OK = enum.auto()
    FATAL = enum.auto()
    NOT_A_FIX = enum.auto()


@dataclass(frozen=True)
class Problem:
    """One row of the problem table."""

    message: str  # str.format template with named fields
    prompt: Prompt
    flags: ProblemFlag = ProblemFlag.NONE

    @property
    def fields(self) -> frozenset[str]:
        """The names the message template needs."""
        return frozenset(
            name for _, name, _, _ in string.Formatter().parse(self.message) if name is not None
        )


PROBLEMS: dict[ProblemCode, Problem] = {
    ProblemCode.DEVICE_TOO_SMALL: Problem(
        "{device} holds {device_bytes} bytes, too small for any log (one block of "
        "{block_bytes} bytes)",
        Prompt.NONE,
        ProblemFlag.FATAL,
    ),
    ProblemCode.HEADER_BAD_MAGIC: Problem(
        "log header magic is 0x{magic:08x}, not 0x4d695272 (MiRr): not a dirty log, or a "
        "damaged one",
        Prompt.NEW_HEADER,
        ProblemFlag.FATAL,
    ),
    ProblemCode.HEADER_UNKNOWN_VERSION: Problem(
        "log header version {version} is unknown (the kernel refuses it)",
        Prompt.NEW_HEADER,
        ProblemFlag.FATAL,
    ),
    ProblemCode.HEADER_OLD_VERSION: Problem(
        "log header has the old version {version} (same bytes as version 2 on this host)",
        Prompt.REWRITE,
        ProblemFlag.PREEN_OK | ProblemFlag.NO_OK | ProblemFlag.NOT_A_FIX,
    ),
    ProblemCode.HEADER_NO_REGIONS: Problem(
        "log header counts 0 regions",
        Prompt.NEW_HEADER,
        ProblemFlag.FATAL,
    ),
    ProblemCode.HEADER_REGIONS_EXCEED_DEVICE: Problem(
        "log header counts {nr_regions} regions, which need {needed_bytes} bytes; the device "
        "holds {device_bytes}",
        Prompt.NEW_HEADER,
        ProblemFlag.FATAL,
    ),
    ProblemCode.HEADER_NEEDS_REGION_COUNT: Problem(
        "cannot write a new header without the region count: give --regions, or "
        "--mirror-size and --region-size",
        Prompt.NONE,
        ProblemFlag.FATAL,
    ),
    ProblemCode.GEOMETRY_EXCEEDS_DEVICE: Problem(
        "the expected {expected_regions} regions need {needed_bytes} bytes; the device holds "
        "{device_bytes} (the mirror cannot use this log device)",
        Prompt.NONE,
    ),
    ProblemCode.GEOMETRY_MISMATCH: Problem(
        "log header counts {nr_regions} regions, the mirror has {expected_regions}",
        Prompt.NEW_HEADER,
    ),
    ProblemCode.BITMAP_TAIL_BITS_SET: Problem(
        "{count} bits are set after the last region (regions {nr_regions} to {tail_end} do "
        "not exist)",
        Prompt.CLEAR,
        ProblemFlag.PREEN_OK,
    ),
    ProblemCode.MARK_ALL_DIRTY: Problem(
        "{clean} of {nr_regions} regions are clean; --mark-all-dirty asks for a full resync",
        Prompt.MARK_DIRTY,
        ProblemFlag.PREEN_OK | ProblemFlag.NO_OK,
    ),
}
