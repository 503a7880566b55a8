"""The guest half of ``bench.kernel``: O_DIRECT write throughput through four mirror tables.

Runs inside the QEMU VM (``python -m bench._kernel_guest OUTDIR [options]``, as root, from
the repository directory). It builds two mirror legs and two log devices (loop devices on
files in the guest's tmpfs ``/tmp``), then, round after round, creates each mirror in turn on
the same legs, times O_DIRECT writes through it at each block size, checks the mirror's
health, and removes it:

- ``kernel-core``: ``mirror core 2 <region_size> nosync``, the kernel's in-memory log;
- ``kernel-disk``: ``mirror disk 3 <logdev> <region_size> nosync``, the kernel's disk log;
- ``clogfsd-core``: ``mirror userspace ... clustered-core <region_size> nosync``;
- ``clogfsd-disk``: ``mirror userspace ... clustered-disk <logdev> <region_size> nosync``.

The userspace tables are served by one ``clogfsd`` started before the first round (with its
view mounted unless ``--no-view``, falling back to ``--no-mount`` if the mount fails; the
result says which). Every timed write goes to a different region from the write before it
(region ``i mod regions``, advancing within the region on each pass), so each one finds its
region clean and the kernel runs the whole mark → flush → write → clear → flush cycle. Each
measurement writes its own fresh random buffer, so the legs compare equal at the end only if
every write reached both. Results go to ``OUTDIR/kernel-bench.json``; progress to stdout.

Benchmark tooling, run only in the guest; not a core module.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clogfs.vm.guest import (
    Daemon,
    detach_loop,
    make_loop,
    mirror_status,
    sh,
    sync_counts,
    userspace_table,
)

MIB = 1 << 20
SECTOR_BYTES = 512
REGION_SECTORS = 1024  # 512 KiB regions
LEG_BYTES = 64 * MIB  # 128 regions per leg
LOG_DEVICE_BYTES = MIB
BLOCK_SIZES = (4096, 65536)
KINDS = ("kernel-core", "kernel-disk", "clogfsd-core", "clogfsd-disk")
MIRROR_NAME = "benchmirror"
RESULT_FILE = "kernel-bench.json"
VIEW = Path("/run/clogfs")
WORK = Path("/tmp/kbench")
WARMUP_SECONDS = 0.3


@dataclass(frozen=True)
class Sample:
    """One timed run of the writer: ``writes`` O_DIRECT writes of ``block_bytes`` in ``seconds``."""

    kind: str
    block_bytes: int
    round: int
    writes: int
    seconds: float


def say(text: str) -> None:
    """One progress line, at once (the host streams stdout)."""
    print(text, flush=True)


def mirror_table(
    kind: str, *, legs: Sequence[str], log_device: str, uuid: str, region_sectors: int
) -> str:
    """The dm-mirror table line for one of :data:`KINDS`, over the whole of ``legs``.

    Args:
        kind: one of :data:`KINDS`.
        legs: the two leg devices (offset 0 on each).
        log_device: the log device (used by the ``*-disk`` kinds only).
        uuid: the userspace log's uuid (``clogfsd-*`` kinds only).
        region_sectors: the region size in sectors.
    """
    sectors = LEG_BYTES // SECTOR_BYTES
    leg_words = " ".join(f"{leg} 0" for leg in legs)
    if kind == "kernel-core":
        return f"0 {sectors} mirror core 2 {region_sectors} nosync {len(legs)} {leg_words}"
    if kind == "kernel-disk":
        return (
            f"0 {sectors} mirror disk 3 {log_device} {region_sectors} nosync "
            f"{len(legs)} {leg_words}"
        )
    if kind in ("clogfsd-core", "clogfsd-disk"):
        return userspace_table(
            sectors=sectors,
            uuid=uuid,
            legs=legs,
            region_size_sectors=region_sectors,
            log_device=log_device if kind == "clogfsd-disk" else None,
            sync="nosync",
        )
    raise ValueError(f"unknown mirror kind {kind!r}")


def fresh_region_offsets(device_bytes: int, region_bytes: int, block_bytes: int) -> Iterator[int]:
    """Byte offsets, forever, each in a different region from the one before.

    Write ``i`` goes to region ``i mod regions`` at slot ``(i div regions) mod slots`` of that
    region, so the whole device is covered once before any block is written again.
    """
    regions = device_bytes // region_bytes
    slots = region_bytes // block_bytes
    i = 0
    while True:
        region, turn = i % regions, i // regions
        yield region * region_bytes + (turn % slots) * block_bytes
        i += 1


def timed_writes(device: str, block_bytes: int, seconds: float) -> tuple[int, float]:
    """O_DIRECT ``pwrite`` of one fresh random buffer at :func:`fresh_region_offsets`.

    Writes one at a time until ``seconds`` have passed (the last write is finished and
    counted).

    Returns:
        ``(writes, elapsed seconds)``.

    Raises:
        OSError: a write failed or was short.

    Resource handling:
        The descriptor and the page-aligned buffer are released on every path.
    """
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, block_bytes)
    try:
        buf.write(os.urandom(block_bytes))
        offsets = fresh_region_offsets(LEG_BYTES, REGION_SECTORS * SECTOR_BYTES, block_bytes)
        with memoryview(buf) as view:
            writes = 0
            start = time.perf_counter()
            deadline = start + seconds
            while True:
                done = os.pwrite(fd, view, next(offsets))
                if done != block_bytes:
                    raise OSError(f"short write to {device}: {done} of {block_bytes} bytes")
                writes += 1
                now = time.perf_counter()
                if now >= deadline:
                    return writes, now - start
    finally:
        buf.close()
        os.close(fd)


def health(status: str) -> str | None:
    """The legs' health letters (``AA``) from a ``dmsetup status`` mirror line, or None."""
    words = status.split()
    for i, word in enumerate(words):
        if sync_counts(word) is not None and i + 2 < len(words):
            return words[i + 2]
    return None


def filled_loop(path: Path, size_bytes: int) -> str:
    """A loop device over a file of ``size_bytes`` zeros (allocated now, not on first write)."""
    chunk = bytes(MIB)
    with path.open("wb") as f:
        for _ in range(size_bytes // MIB):
            f.write(chunk)
    return make_loop(path, size_bytes)


def start_daemon(log_path: Path, view: bool) -> tuple[Daemon, str]:
    """clogfsd with its view at :data:`VIEW` (if ``view`` and it mounts), else ``--no-mount``.

    Returns:
        The daemon and how it runs: ``"view"`` or ``"no-mount"``.
    """
    if view:
        try:
            daemon = Daemon(log_path, mount=str(VIEW))
        except RuntimeError as exc:
            say(f"clogfsd did not start with its view ({exc}); using --no-mount")
        else:
            if os.path.ismount(VIEW):
                return daemon, "view"
            daemon.close()
            say("clogfsd started but its view is not mounted; using --no-mount")
    return Daemon(log_path), "no-mount"


def daemon_stats(uuid: str) -> dict[str, tuple[int, float | None]] | None:
    """The log's ``stats`` file in clogfsd's view: request type → (count, p50 µs), or None.

    None when the view is not mounted or has no such log. The counts are those of the live
    instance since its CTR; the p50 is clogfsd's own time from arrival to reply.
    """
    try:
        text = (VIEW / uuid / "stats").read_text()
    except OSError:
        return None
    stats: dict[str, tuple[int, float | None]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 4 and not line.startswith("#"):
            stats[words[0]] = (int(words[1]), None if words[2] == "-" else float(words[2]))
    return stats


def measure_mirror(
    kind: str, table: str, uuid: str, round_: int, seconds: float, record: dict[str, Any]
) -> list[Sample]:
    """Create the mirror, time each block size, record what clogfsd and the kernel say, remove it.

    Recorded: the status line and leg health, and for the userspace tables clogfsd's request
    counts and latencies (when its view is mounted) against the writes made.
    """
    create = sh("dmsetup", "create", MIRROR_NAME, "--table", table, timeout=60)
    if create.rc != 0:
        raise RuntimeError(f"dmsetup create ({kind}) failed: {create.stderr.strip()}")
    device = f"/dev/mapper/{MIRROR_NAME}"
    samples = []
    try:
        total_writes, _ = timed_writes(device, BLOCK_SIZES[0], WARMUP_SECONDS)
        for block_bytes in BLOCK_SIZES:
            writes, elapsed = timed_writes(device, block_bytes, seconds)
            total_writes += writes
            samples.append(Sample(kind, block_bytes, round_, writes, elapsed))
            say(
                f"round {round_} {kind:<12} {block_bytes // 1024:>3} KiB: {writes:>6} writes "
                f"in {elapsed:.2f} s = {writes / elapsed:8.1f}/s"
            )
        if kind.startswith("clogfsd"):
            stats = daemon_stats(uuid)
            if stats is not None:
                entry = {"writes": total_writes, "stats": stats}
                record.setdefault("daemon_stats", {}).setdefault(kind, []).append(entry)
        status = mirror_status(MIRROR_NAME)
        record.setdefault("status", {})[kind] = status
        record.setdefault("health", {}).setdefault(kind, []).append(health(status))
    finally:
        remove = sh("dmsetup", "remove", MIRROR_NAME, timeout=60)
        if remove.rc != 0:
            record.setdefault("remove_failures", []).append(remove.as_dict())
    return samples


def run(out: Path, *, rounds: int, seconds: float, view: bool) -> dict[str, Any]:
    """Every round: each kind in :data:`KINDS` order; then the legs are compared."""
    WORK.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "kinds": list(KINDS),
        "block_sizes": list(BLOCK_SIZES),
        "region_sectors": REGION_SECTORS,
        "leg_bytes": LEG_BYTES,
        "rounds": rounds,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "samples": [],
    }
    devices: list[str] = []
    daemon: Daemon | None = None
    try:
        for name, size in (("leg0", LEG_BYTES), ("leg1", LEG_BYTES),
                           ("klog", LOG_DEVICE_BYTES), ("clog", LOG_DEVICE_BYTES)):  # fmt: skip
            devices.append(filled_loop(WORK / name, size))
        legs, kernel_log, clogfsd_log = devices[:2], devices[2], devices[3]
        daemon, record["daemon_mode"] = start_daemon(out / "clogfsd.log", view)
        record["daemon_ready_seconds"] = daemon.ready_seconds
        say(f"clogfsd ready after {daemon.ready_seconds} s ({record['daemon_mode']})")
        for round_ in range(rounds):
            for kind in KINDS:
                uuid = f"BENCH-{kind.upper()}"
                table = mirror_table(
                    kind,
                    legs=legs,
                    log_device=clogfsd_log if kind.startswith("clogfsd") else kernel_log,
                    uuid=uuid,
                    region_sectors=REGION_SECTORS,
                )
                record.setdefault("tables", {})[kind] = table
                samples = measure_mirror(kind, table, uuid, round_, seconds, record)
                record["samples"] += [asdict(s) for s in samples]
                if not daemon.alive():
                    raise RuntimeError(f"clogfsd exited ({daemon.process.returncode})")
        record["legs_equal"] = sh("cmp", *legs, timeout=120).rc == 0
    finally:
        if daemon is not None:
            daemon.close()
        for dev in devices:
            detach_loop(dev)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point in the guest: measure, write ``OUTDIR/kernel-bench.json``; 1 on error."""
    parser = argparse.ArgumentParser(prog="python -m bench._kernel_guest")
    parser.add_argument("out", type=Path, help="the writable share")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-view", action="store_true")
    args = parser.parse_args(argv)
    try:
        record = run(args.out, rounds=args.rounds, seconds=args.seconds, view=not args.no_view)
        status = 0
    except Exception:
        record = {"error": traceback.format_exc()}
        status = 1
    (args.out / RESULT_FILE).write_text(json.dumps(record, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
