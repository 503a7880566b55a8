"""Kernel benchmark: mirror write throughput with clogfsd's logs against the kernel's own.

One QEMU boot of the stock Debian kernel (``clogfs.vm``; TCG, 2 vCPUs). Inside it
(``bench/_kernel_guest.py``) the same two legs (loop devices on tmpfs files) carry, one
after another and round after round, four nosync dm-mirror tables with 512 KiB regions:
the kernel's ``core`` log, its ``disk`` log on a loop log device, and clogfsd's
``clustered-core`` and ``clustered-disk`` logs through ``dm-log-userspace``. Through each,
one Python writer issues O_DIRECT ``pwrite`` calls of 4 KiB and of 64 KiB, one at a time,
for a fixed time, every write in a different region from the one before, so each write
pays the kernel's mark → flush → clear → flush cycle (six daemon round trips for a
userspace log, kernel-vm.md). Printed: the median over the rounds of MiB/s and writes/s per
table and block size with their spread, the ratios clogfsd-core / kernel-core and
clogfsd-disk / kernel-disk (of the medians, and paired round by round) with the time clogfsd
adds per write, and, when clogfsd's view is mounted, its requests per write by type with its
own p50 handling time for each. The figures are from an emulated CPU: absolute numbers say
little about real hardware, the ratios more; both are noisy on a shared host.

Run: ``python -m bench.kernel [--rounds N] [--seconds S] [--no-view]``; needs
``qemu-system-x86`` and ``busybox-static`` (and network access the first time, to fetch the
kernel). About three minutes with the defaults, always under a hard timeout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._kernel_guest import BLOCK_SIZES, KINDS, RESULT_FILE
from clogfs.vm import KernelPrepareError, VmError, prepare, qemu_missing_reason, run_in_vm
from clogfs.vm.machine import follow_file

REPO = Path(__file__).resolve().parents[1]
GUEST_PYTHON = REPO / ".venv" / "bin" / "python"
MIB = 1 << 20
BOOT_SECONDS = 90.0  # boot, Python and clogfsd start, loop devices, final cmp; generous
PER_MIRROR_SECONDS = 15.0  # create, warm-up, status, remove; generous under TCG
RATIOS = (("clogfsd-core", "kernel-core"), ("clogfsd-disk", "kernel-disk"))
PER_WRITE_TYPES = ("IN_SYNC", "MARK_REGION", "CLEAR_REGION", "FLUSH")


@dataclass(frozen=True)
class Cell:
    """The median over the rounds for one table and block size."""

    mib_per_s: float
    writes_per_s: float
    lowest_writes_per_s: float
    highest_writes_per_s: float
    rounds: int

    @property
    def ms_per_write(self) -> float:
        """Milliseconds per write at the median rate (one write in flight: its latency)."""
        return 1e3 / self.writes_per_s


def hard_timeout(rounds: int, seconds: float) -> float:
    """Seconds allowed for the whole boot: generous, but finite whatever the guest does."""
    per_mirror = PER_MIRROR_SECONDS + len(BLOCK_SIZES) * seconds * 1.5
    return BOOT_SECONDS + rounds * len(KINDS) * per_mirror


def medians(samples: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Cell]:
    """Median writes/s (and so MiB/s) per ``(kind, block_bytes)`` over the rounds."""
    rates: dict[tuple[str, int], list[float]] = {}
    for s in samples:
        key = (str(s["kind"]), int(s["block_bytes"]))
        rates.setdefault(key, []).append(int(s["writes"]) / float(s["seconds"]))
    cells = {}
    for (kind, block_bytes), values in rates.items():
        rate = statistics.median(values)
        cells[kind, block_bytes] = Cell(
            rate * block_bytes / MIB, rate, min(values), max(values), len(values)
        )
    return cells


def paired_ratio(
    samples: Sequence[Mapping[str, Any]], mine: str, theirs: str, block_bytes: int
) -> float | None:
    """Median over the rounds of ``mine``'s writes/s over ``theirs``' in the same round.

    Both ran seconds apart in each round, so a busy spell on the host that slows a whole
    round cancels out better than in the ratio of the medians. None without a common round.
    """
    rates: dict[tuple[str, int], float] = {}
    for s in samples:
        if int(s["block_bytes"]) == block_bytes and s["kind"] in (mine, theirs):
            rates[str(s["kind"]), int(s["round"])] = int(s["writes"]) / float(s["seconds"])
    ratios = [
        rate / rates[theirs, round_]
        for (kind, round_), rate in rates.items()
        if kind == mine and (theirs, round_) in rates
    ]
    return statistics.median(ratios) if ratios else None


def problems(record: Mapping[str, Any]) -> list[str]:
    """What went wrong in the guest beyond the figures: unhealthy legs, failed removes, cmp."""
    found = []
    for kind, letters in sorted(record.get("health", {}).items()):
        bad = [h for h in letters if h is None or set(h) != {"A"}]
        if bad:
            found.append(f"{kind}: leg health {bad} (status: {record['status'][kind]})")
    for remove in record.get("remove_failures", []):
        found.append(f"dmsetup remove failed: {remove['stderr'].strip()}")
    if record.get("legs_equal") is False:
        found.append("the two legs differ after the last round")
    return found


def render(record: Mapping[str, Any]) -> str:
    """The report: the table of medians, the ratios, the conditions, any problems."""
    cells = medians(record["samples"])
    lines = [
        f"dm-mirror O_DIRECT write throughput, Linux {record['kernel']} under QEMU TCG "
        f"({record['cpus']} vCPUs): EMULATED-CPU FIGURES, slow and noisy; compare the ratios",
        f"nosync mirrors on the same 2 x {record['leg_bytes'] // MIB} MiB legs (loop on tmpfs), "
        f"regions of {record['region_sectors'] // 2} KiB; one writer, one write in flight, "
        "each in a fresh region",
        f"median of {record['rounds']} rounds x {record['seconds']:g} s per row; clogfsd "
        f"{'with its FUSE view mounted' if record['daemon_mode'] == 'view' else '--no-mount'}",
        f"{'table':<14} {'block':>6} {'MiB/s':>9} {'writes/s':>10} {'ms/write':>9}"
        f"  {'writes/s range':>17}",
    ]
    for kind in KINDS:
        for block_bytes in BLOCK_SIZES:
            cell = cells.get((kind, block_bytes))
            if cell is None:
                lines.append(f"{kind:<14} {block_bytes // 1024:>4} K {'-':>9} {'-':>10}")
                continue
            spread = f"{cell.lowest_writes_per_s:.1f}-{cell.highest_writes_per_s:.1f}"
            lines.append(
                f"{kind:<14} {block_bytes // 1024:>4} K {cell.mib_per_s:>9.2f} "
                f"{cell.writes_per_s:>10.1f} {cell.ms_per_write:>9.2f}  {spread:>17}"
            )
    for mine, theirs in RATIOS:
        for block_bytes in BLOCK_SIZES:
            a, b = cells.get((mine, block_bytes)), cells.get((theirs, block_bytes))
            paired = paired_ratio(record["samples"], mine, theirs, block_bytes)
            if a is None or b is None or paired is None:
                lines.append(f"ratio {mine} / {theirs} at {block_bytes // 1024:>2} KiB: -")
                continue
            lines.append(
                f"ratio {mine} / {theirs} at {block_bytes // 1024:>2} KiB: "
                f"{a.writes_per_s / b.writes_per_s:.3f} of the medians, {paired:.3f} "
                f"paired by round; +{a.ms_per_write - b.ms_per_write:.2f} ms per write"
            )
    lines += daemon_lines(record)
    lines += [f"PROBLEM: {p}" for p in problems(record)]
    return "\n".join(lines)


def daemon_lines(record: Mapping[str, Any]) -> list[str]:
    """Per userspace table: requests per write by type and clogfsd's own p50 for each.

    Counts are summed over the rounds (warm-up writes included, the few CTR-time requests
    excluded by type); the p50s are the last round's. Their sum over a write says how much of
    the added time is clogfsd's handling; the rest is the kernel, the connector and scheduling.
    """
    lines = []
    for kind, entries in sorted(record.get("daemon_stats", {}).items()):
        writes = sum(int(e["writes"]) for e in entries)
        last = entries[-1]["stats"]
        parts, handling_us = [], 0.0
        for name in PER_WRITE_TYPES:
            count = sum(int(e["stats"].get(name, (0, None))[0]) for e in entries)
            p50 = last.get(name, (0, None))[1]
            per_write = count / writes if writes else 0.0
            handling_us += per_write * (p50 or 0.0)
            parts.append(f"{name} {per_write:.2f} (p50 {'-' if p50 is None else f'{p50:.0f}'} us)")
        lines.append(f"{kind} requests per write: {', '.join(parts)}")
        lines.append(f"{kind} clogfsd handling per write: {handling_us / 1e3:.2f} ms at the p50s")
    return lines


def _echo_guest(text: str) -> None:
    for line in text.splitlines():
        print(f"  guest: {line}", flush=True)


def run_boot(rounds: int, seconds: float, view: bool, share: Path) -> tuple[dict[str, Any], str]:
    """Boot once and run the guest half; returns its result record and the guest stderr.

    Raises:
        VmError: the VM failed or timed out.
        KernelPrepareError: the kernel could not be prepared.
        RuntimeError: the guest wrote no result.
    """
    vm = prepare()
    args = f'"$CLOGVM_SHARE" --rounds {rounds} --seconds {seconds}'
    args += "" if view else " --no-view"
    script = f"#!/bin/sh\ncd {REPO}\nexec {GUEST_PYTHON} -m bench._kernel_guest {args}\n"
    stop = threading.Event()
    tail = threading.Thread(
        target=follow_file, args=(share / ".clogvm" / "stdout", stop, _echo_guest)
    )
    tail.start()
    try:
        result = run_in_vm(script, timeout=hard_timeout(rounds, seconds), share=share, vm=vm)
    finally:
        stop.set()
        tail.join()
    raw = result.files.get(RESULT_FILE)
    if raw is None:
        raise RuntimeError(
            f"the guest wrote no {RESULT_FILE} (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    record: dict[str, Any] = json.loads(raw)
    return record, result.stderr


def main(argv: Sequence[str] | None = None) -> int:
    """Boot, measure, print the table; 0 when QEMU is missing (nothing to measure), 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m bench.kernel", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="measurements per table and size")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--no-view", action="store_true", help="run clogfsd with --no-mount")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    reason = qemu_missing_reason()
    if reason is not None:
        print(f"kernel: skipped, cannot run QEMU here: {reason}")
        return 0
    started = time.monotonic()
    print(f"kernel: booting the VM (hard timeout {hard_timeout(args.rounds, args.seconds):.0f} s)")
    with tempfile.TemporaryDirectory(prefix="clogfs-bench-kernel-", dir="/var/tmp") as tmp:
        share = Path(tmp)
        try:
            record, stderr = run_boot(args.rounds, args.seconds, not args.no_view, share)
        except (VmError, KernelPrepareError, RuntimeError) as exc:
            print(f"kernel: FAILED: {exc}", file=sys.stderr)
            daemon_log = share / "clogfsd.log"
            if daemon_log.exists():
                print(daemon_log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        if "error" in record:
            print(f"kernel: the guest failed:\n{record['error']}{stderr[-2000:]}", file=sys.stderr)
            daemon_log = share / "clogfsd.log"
            if daemon_log.exists():
                print(daemon_log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
    print(render(record))
    print(f"kernel: {time.monotonic() - started:.0f} s including the boot")
    return 1 if problems(record) else 0


if __name__ == "__main__":
    sys.exit(main())
