"""The ``clog-fsck`` command: options, modes, output, and the fsck(8) exit status.

Parses the pinned command line (``spec/fsck.md``), opens the device (``device.py``), builds
the image (``image.py``), runs the passes (``passes.py``) and writes the staged repair once.
Exit status: :class:`~clogfs.fsck.context.FsckExit` bits; usage errors exit 16, not
argparse's 2.

Without ``-n``/``-y``/``-p`` the checker asks before each fix; when standard input is not
a terminal there is nobody to ask, so it checks read-only, as with ``-n`` (and says so).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from clogfs.disklog.format import LOG_HEADER, buffer_bytes, decode_header
from clogfs.errors import LogDeviceError
from clogfs.fsck.context import Answer, CheckCancelled, FsckContext, FsckExit, Mode
from clogfs.fsck.device import LogDevice
from clogfs.fsck.image import LogImage
from clogfs.fsck.passes import run_passes

PROG = "clog-fsck"


class _Parser(argparse.ArgumentParser):
    """argparse with fsck(8)'s usage-error status (16) instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(FsckExit.USAGE), f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The clog-fsck argument parser (every option's help is written here, once)."""
    parser = _Parser(
        prog=PROG,
        description="Check and repair a dm dirty log (clustered-disk or disk) offline.",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "-n",
        dest="mode",
        action="store_const",
        const=Mode.NO,
        help="open the device read-only and answer no to every fix",
    )
    modes.add_argument(
        "-y", dest="mode", action="store_const", const=Mode.YES, help="answer yes to every fix"
    )
    modes.add_argument(
        "-p",
        dest="mode",
        action="store_const",
        const=Mode.PREEN,
        help="preen: make only the always-safe fixes; stop with status 4 on anything else",
    )
    modes.add_argument(
        "-a", dest="mode", action="store_const", const=Mode.PREEN, help="the same as -p"
    )
    parser.add_argument(
        "-f", dest="force", action="store_true", help="check the bitmap even if the log looks clean"
    )
    parser.add_argument(
        "-v", dest="verbose", action="store_true", help="more detail: the dirty regions as ranges"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (text to stderr)"
    )
    parser.add_argument(
        "--problem-log",
        metavar="FILE",
        help="write one JSON object per problem to FILE (code, name, answer, fixed, fields)",
    )
    parser.add_argument(
        "--regions",
        type=_positive,
        metavar="N",
        help="the region count the mirror expects, checked against the header",
    )
    parser.add_argument(
        "--mirror-size",
        type=_positive,
        metavar="SECTORS",
        help="the mirror's size; with --region-size, gives the expected region count",
    )
    parser.add_argument(
        "--region-size",
        type=_positive,
        metavar="SECTORS",
        help="the mirror's region size (a power of two); use with --mirror-size",
    )
    parser.add_argument(
        "--mark-all-dirty",
        action="store_true",
        help="clear every clean bit: a full resync at the next activation",
    )
    parser.add_argument(
        "--dump", action="store_true", help="print the dirty regions as ranges and exit (read-only)"
    )
    parser.add_argument("device", metavar="DEVICE", help="the log device or image file")
    return parser


@dataclass(frozen=True)
class Options:
    """The validated command line."""

    device: str
    mode: Mode | None
    force: bool
    verbose: bool
    json: bool
    problem_log: str | None
    expected_regions: int | None
    mark_all_dirty: bool
    dump: bool


def parse_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Options:
    """Parse and cross-check the options; a bad combination is a usage error (exit 16)."""
    args = parser.parse_args(argv)
    if args.regions is not None and (args.mirror_size is not None or args.region_size is not None):
        parser.error("--regions excludes --mirror-size and --region-size")
    if (args.mirror_size is None) != (args.region_size is None):
        parser.error("--mirror-size and --region-size go together")
    expected = args.regions
    if args.region_size is not None:
        if args.region_size & (args.region_size - 1):
            parser.error(f"--region-size {args.region_size} is not a power of two")
        expected = -(-args.mirror_size // args.region_size)
    if args.dump and args.mode in (Mode.YES, Mode.PREEN):
        parser.error("--dump is read-only: it excludes -y, -p and -a")
    if args.dump and args.mark_all_dirty:
        parser.error("--dump is read-only: it excludes --mark-all-dirty")
    return Options(
        device=args.device,
        mode=Mode.NO if args.dump else args.mode,
        force=args.force,
        verbose=args.verbose,
        json=args.json,
        problem_log=args.problem_log,
        expected_regions=expected,
        mark_all_dirty=args.mark_all_dirty,
        dump=args.dump,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run clog-fsck; returns the fsck(8) exit status.

    Args:
        argv: the arguments after the program name (``sys.argv[1:]`` when ``None``).
    """
    try:
        options = parse_options(build_parser(), argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(FsckExit.USAGE)
    return int(run(options, stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr))


def run(options: Options, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> FsckExit:
    """Check (and repair) ``options.device``; print the report; return the exit status."""
    out = stderr if options.json or options.dump else stdout
    mode = options.mode
    if mode is None:
        if stdin.isatty():
            mode = Mode.ASK
        else:
            stderr.write(f"{PROG}: standard input is not a terminal: checking read-only (-n)\n")
            mode = Mode.NO
    report = _Report(options, mode)
    try:
        with LogDevice.open(options.device, writable=mode is not Mode.NO) as device:
            geometry = device.geometry
            report.geometry = dict(vars(geometry))
            if options.verbose:
                out.write(
                    f"{options.device}: {geometry.kind}, {geometry.device_bytes} bytes, "
                    f"logical block {geometry.logical_block_size} bytes\n"
                )
            image = _load_image(device, options.expected_regions)
            ctx = FsckContext(
                image=image,
                device_name=options.device,
                mode=mode,
                out=out,
                ask=stdin.readline if mode is Mode.ASK else None,
                expected_regions=options.expected_regions,
                force=options.force,
                mark_all_dirty=options.mark_all_dirty,
                dirty_ranges=[] if (options.verbose or options.dump) else None,
            )
            report.ctx = ctx
            _check(ctx, report)
            if ctx.aborted is None and not report.cancelled and image.changed:
                device.write(image.encode())
                report.written = True
    except LogDeviceError as exc:
        report.error = str(exc)
        stderr.write(f"{PROG}: {exc}\n")
    except KeyboardInterrupt:
        report.cancelled = True
    report.emit(out=out, stdout=stdout, stderr=stderr)
    return report.status


def _check(ctx: FsckContext, report: _Report) -> None:
    try:
        run_passes(ctx)
    except CheckCancelled:
        report.cancelled = True


def _load_image(device: LogDevice, expected_regions: int | None) -> LogImage:
    """Read the header block, then every byte a check or a new header may need."""
    geometry = device.geometry
    lbs = geometry.logical_block_size
    data = device.read(lbs) if geometry.device_bytes >= buffer_bytes(1, lbs) else b""
    want = len(data)
    if len(data) >= LOG_HEADER.size:
        for count in (decode_header(data).nr_regions, expected_regions):
            if count and buffer_bytes(count, lbs) <= geometry.device_bytes:
                want = max(want, buffer_bytes(count, lbs))
    if want > len(data):
        data = device.read(want)
    return LogImage(data, logical_block_size=lbs, device_bytes=geometry.device_bytes)


class _Report:
    """Collects the outcome and renders the human summary, the JSON and the problem log."""

    def __init__(self, options: Options, mode: Mode) -> None:
        self.options = options
        self.mode = mode
        self.geometry: dict[str, Any] | None = None
        self.ctx: FsckContext | None = None
        self.written = False
        self.cancelled = False
        self.error: str | None = None

    @property
    def status(self) -> FsckExit:
        status = FsckExit.OK
        if self.ctx is not None:
            status |= self.ctx.exit_status(written=self.written)
        if self.error is not None:
            status |= FsckExit.OPERATIONAL
        if self.cancelled:
            status |= FsckExit.CANCELLED
        return status

    def problems(self) -> list[dict[str, Any]]:
        if self.ctx is None:
            return []
        return [
            {
                "code": int(finding.code),
                "name": finding.code.name,
                "answer": finding.answer.value,
                "fixed": finding.answer is Answer.YES and self.written,
                "fields": finding.fields,
                "message": finding.message,
            }
            for finding in self.ctx.findings
        ]

    def emit(self, *, out: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        problems = self.problems()
        if self.options.problem_log is not None:
            self._write_problem_log(problems, stderr)
        if self.options.json:
            json.dump(self._document(problems), stdout, indent=2)
            stdout.write("\n")
        elif self.options.dump:
            self._dump(stdout)
        else:
            self._summary(out)

    def _write_problem_log(self, problems: list[dict[str, Any]], stderr: TextIO) -> None:
        assert self.options.problem_log is not None
        try:
            with open(self.options.problem_log, "w", encoding="utf-8") as log_file:
                for problem in problems:
                    entry = {key: problem[key] for key in ("code", "name", "answer", "fixed")}
                    entry["fields"] = problem["fields"]
                    log_file.write(json.dumps(entry) + "\n")
        except OSError as exc:
            stderr.write(f"{PROG}: cannot write {self.options.problem_log}: {exc.strerror}\n")
            self.error = self.error or str(exc)

    def _document(self, problems: list[dict[str, Any]]) -> dict[str, Any]:
        ctx = self.ctx
        header = None
        counts = None
        if ctx is not None and ctx.image.original_header is not None:
            original = ctx.image.original_header
            header = {
                "magic": original.magic,
                "version": original.version,
                "nr_regions": original.nr_regions,
            }
        if ctx is not None and ctx.dirty_count is not None:
            nr_regions = ctx.image.header.nr_regions
            counts = {
                "regions": nr_regions,
                "dirty": ctx.dirty_count,
                "clean": nr_regions - ctx.dirty_count,
            }
        document: dict[str, Any] = {
            "device": self.options.device,
            "mode": self.mode.value,
            "geometry": None
            if self.geometry is None
            else {**self.geometry, "expected_regions": self.options.expected_regions},
            "header": header,
            "counts": counts,
            "problems": problems,
            "fixes": [p["name"] for p in problems if p["fixed"]],
            "written": self.written,
            "aborted": None if ctx is None or ctx.aborted is None else ctx.aborted.code.name,
            "cancelled": self.cancelled,
            "error": self.error,
            "exit": int(self.status),
        }
        if ctx is not None and ctx.dirty_ranges is not None and ctx.dirty_count is not None:
            document["dirty_ranges"] = [[r.start, r.stop - 1] for r in ctx.dirty_ranges]
        return document

    def _dump(self, stdout: TextIO) -> None:
        ctx = self.ctx
        if ctx is None or ctx.dirty_ranges is None or ctx.dirty_count is None:
            return
        for dirty in ctx.dirty_ranges:
            last = dirty.stop - 1
            stdout.write(f"{dirty.start}\n" if last == dirty.start else f"{dirty.start}-{last}\n")

    def _summary(self, out: TextIO) -> None:
        ctx = self.ctx
        name = self.options.device
        if self.cancelled:
            out.write(f"{name}: check cancelled; nothing was written\n")
        if ctx is None:
            return
        if ctx.aborted is not None and not ctx.aborted.preen_halt:
            out.write(f"{name}: check stopped at {ctx.aborted.code.name}; nothing was written\n")
        if ctx.dirty_count is not None:
            nr_regions = ctx.image.header.nr_regions
            state = "clean, " if not ctx.findings else ""
            out.write(
                f"{name}: {state}{ctx.dirty_count} of {nr_regions} regions will resync "
                "at next activation\n"
            )
            if ctx.dirty_ranges is not None and self.options.verbose:
                ranges = ",".join(
                    str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}"
                    for r in ctx.dirty_ranges
                )
                out.write(f"{name}: dirty regions: {ranges or 'none'}\n")
        if self.written:
            out.write(f"\n{name}: ***** LOG DEVICE WAS MODIFIED *****\n")
