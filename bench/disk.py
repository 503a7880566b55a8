"""Log device benchmark: ``LogDevice.write`` from trio against raw O_DIRECT writes from Python.

Latency. The floor is the cheapest durable log write plain Python can do: an aligned
O_DIRECT ``pwrite`` of the same buffer at offset 0, then ``fdatasync``, in a loop on one
thread (``measure_floor``). clogfs is ``await LogDevice.write([(0, buffer)],
cache_flush=True)`` in a loop from a trio task, which adds the hand-off to the device's
writer thread and back. Both run alternately in rounds on the same target (a loop device,
a file on the temporary directory's filesystem, a file on ``/dev/shm``) and report
p50/p99; targets: p50 <= 1.3x and p99 <= 1.6x the floor.

Throughput. 1, 16 and 64 image files written at once for a fixed time: raw, one plain
thread per file doing the floor's loop; clogfs, one ``LogDevice`` and one trio task per
file. Reported: aggregate writes/s and clogfs / raw (target >= 0.8).

Run: ``python -m bench.disk [--samples N] [--seconds S] [--buffer-bytes B]``; the loop
device row needs root (``losetup``) and is skipped otherwise. Bounded: well under 60 s with
the defaults. Every figure is a ratio against a floor measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import math
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from clogfs.disklog.device import OPEN_FLAGS, LogDevice

IMAGE_BYTES = 1 << 20
LATENCY_ROUNDS = 4
DEVICE_COUNTS = (1, 16, 64)
TARGET_P50 = 1.3
TARGET_P99 = 1.6
TARGET_THROUGHPUT = 0.8


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    """``(p50, p99)`` of ``samples_s`` (seconds), in microseconds (nearest rank)."""
    ordered = sorted(samples_s)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * n) - 1)] * 1e6

    return rank(0.50), rank(0.99)


def _floor_samples(path: Path, buffer_bytes: int, n: int) -> list[float]:
    fd = os.open(path, OPEN_FLAGS)
    buf = mmap.mmap(-1, buffer_bytes)
    buf[:8] = b"clogfs-b"
    samples = []
    try:
        with memoryview(buf) as view:
            for _ in range(n):
                start = time.perf_counter()
                os.pwrite(fd, view, 0)
                os.fdatasync(fd)
                samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        buf.close()
    return samples


def measure_floor(path: Path, buffer_bytes: int, n: int) -> tuple[float, float]:
    """The floor on ``path``: ``n`` raw O_DIRECT writes + ``fdatasync`` of one buffer.

    Args:
        path: a block device or a preallocated regular file (written at offset 0).
        buffer_bytes: the write size, a multiple of the logical block size.
        n: number of timed writes.

    Returns:
        ``(p50_us, p99_us)``.
    """
    return percentiles(_floor_samples(path, buffer_bytes, n))


async def _clogfs_samples(path: Path, buffer_bytes: int, n: int, private_dir: Path) -> list[float]:
    device = await trio.to_thread.run_sync(
        lambda: LogDevice.open(str(path), private_dir=private_dir)
    )
    data = b"clogfs-b" + bytes(buffer_bytes - 8)
    samples = []
    async with device:
        for _ in range(n):
            start = time.perf_counter()
            await device.write([(0, data)], cache_flush=True)
            samples.append(time.perf_counter() - start)
    return samples


def measure_clogfs(path: Path, buffer_bytes: int, n: int, private_dir: Path) -> tuple[float, float]:
    """``LogDevice.write`` latency on ``path``, like ``measure_floor``; ``(p50_us, p99_us)``."""
    return percentiles(trio.run(_clogfs_samples, path, buffer_bytes, n, private_dir))


@dataclass(frozen=True)
class LatencyRow:
    target: str
    floor: tuple[float, float]
    clogfs: tuple[float, float]


def compare_latency(
    target: str, path: Path, buffer_bytes: int, n: int, private_dir: Path
) -> LatencyRow:
    """Floor and clogfs on ``path``, alternating in rounds so drift hits both alike."""
    floor: list[float] = []
    ours: list[float] = []
    per_round = max(1, n // LATENCY_ROUNDS)
    for _ in range(LATENCY_ROUNDS):
        floor += _floor_samples(path, buffer_bytes, per_round)
        ours += trio.run(_clogfs_samples, path, buffer_bytes, per_round, private_dir)
    return LatencyRow(target, percentiles(floor), percentiles(ours))


def raw_throughput(paths: Sequence[Path], buffer_bytes: int, seconds: float) -> float:
    """Aggregate writes/s of one plain thread per path doing the floor's loop."""
    counts = [0] * len(paths)
    start_barrier = threading.Barrier(len(paths) + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        fd = os.open(paths[i], OPEN_FLAGS)
        buf = mmap.mmap(-1, buffer_bytes)
        try:
            with memoryview(buf) as view:
                start_barrier.wait()
                while time.monotonic() < stop_at[0]:
                    os.pwrite(fd, view, 0)
                    os.fdatasync(fd)
                    counts[i] += 1
        finally:
            os.close(fd)
            buf.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    start_barrier.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - began)


async def _clogfs_throughput(
    paths: Sequence[Path], buffer_bytes: int, seconds: float, private_dir: Path
) -> float:
    devices = [
        await trio.to_thread.run_sync(
            functools.partial(LogDevice.open, str(p), private_dir=private_dir)
        )
        for p in paths
    ]
    data = b"clogfs-b" + bytes(buffer_bytes - 8)
    counts = [0] * len(devices)

    async def writer(i: int, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await devices[i].write([(0, data)], cache_flush=True)
            counts[i] += 1

    try:
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(len(devices)):
                nursery.start_soon(writer, i, began + seconds)
        elapsed = time.monotonic() - began
    finally:
        for device in devices:
            await device.aclose()
    return sum(counts) / elapsed


def clogfs_throughput(
    paths: Sequence[Path], buffer_bytes: int, seconds: float, private_dir: Path
) -> float:
    """Aggregate writes/s of one ``LogDevice`` and one trio task per path."""
    return trio.run(_clogfs_throughput, paths, buffer_bytes, seconds, private_dir)


def make_image(path: Path, size_bytes: int = IMAGE_BYTES) -> Path:
    """A fully allocated, zero-filled image file (so writes are overwrites, not allocations)."""
    with path.open("wb") as f:
        f.write(bytes(size_bytes))
        f.flush()
        os.fsync(f.fileno())
    return path


@contextmanager
def loop_device(backing: Path) -> Iterator[Path | None]:
    """A loop device over ``backing``, or ``None`` when not root or losetup fails."""
    if os.geteuid() != 0:
        yield None
        return
    result = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(f"  (no loop device: {result.stderr.strip()})")
        yield None
        return
    device = Path(result.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_latency(rows: Sequence[LatencyRow]) -> bool:
    print(
        f"  {'target':<14}{'floor p50':>10}{'p99':>9}{'clogfs p50':>12}{'p99':>9}"
        f"{'x p50':>8}{'x p99':>8}"
    )
    all_ok = True
    for row in rows:
        r50 = row.clogfs[0] / row.floor[0]
        r99 = row.clogfs[1] / row.floor[1]
        ok = r50 <= TARGET_P50 and r99 <= TARGET_P99
        all_ok &= ok
        print(
            f"  {row.target:<14}{row.floor[0]:>10.1f}{row.floor[1]:>9.1f}"
            f"{row.clogfs[0]:>12.1f}{row.clogfs[1]:>9.1f}{r50:>8.2f}{r99:>8.2f}  {_verdict(ok)}"
        )
    print(f"  (microseconds; targets x p50 <= {TARGET_P50}, x p99 <= {TARGET_P99})")
    return all_ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; 0 whether or not a target was met."""
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="timed writes per latency row")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput run")
    parser.add_argument("--buffer-bytes", type=int, default=4096, help="write size")
    args = parser.parse_args(argv)
    buffer_bytes: int = args.buffer_bytes

    with tempfile.TemporaryDirectory(prefix="clogfs-bench-disk-") as tmp:
        work = Path(tmp)
        private_dir = work / "private"
        rows = []
        print(f"latency: {args.samples} writes of {buffer_bytes} bytes + fdatasync each")
        with loop_device(make_image(work / "loop-backing.img")) as loop:
            if loop is not None:
                rows.append(
                    compare_latency("loop device", loop, buffer_bytes, args.samples, private_dir)
                )
        rows.append(
            compare_latency(
                "file (tmpdir)",
                make_image(work / "file.img"),
                buffer_bytes,
                args.samples,
                private_dir,
            )
        )
        shm = Path("/dev/shm")
        if shm.is_dir():
            with tempfile.TemporaryDirectory(prefix="clogfs-bench-", dir=shm) as shm_tmp:
                try:
                    rows.append(
                        compare_latency(
                            "file (tmpfs)",
                            make_image(Path(shm_tmp) / "file.img"),
                            buffer_bytes,
                            args.samples,
                            private_dir,
                        )
                    )
                except OSError as exc:  # O_DIRECT on tmpfs needs Linux >= 6.6
                    print(f"  (tmpfs skipped: {exc})")
        print_latency(rows)

        print(f"\nthroughput: N image files written at once for {args.seconds:g} s each")
        print(f"  {'devices':>7}{'raw writes/s':>14}{'clogfs writes/s':>17}{'ratio':>8}")
        images = [make_image(work / f"dev{i}.img", 64 * 1024) for i in range(max(DEVICE_COUNTS))]
        for count in DEVICE_COUNTS:
            paths = images[:count]
            raw = raw_throughput(paths, buffer_bytes, args.seconds)
            ours = clogfs_throughput(paths, buffer_bytes, args.seconds, private_dir)
            ratio = ours / raw
            print(
                f"  {count:>7}{raw:>14.0f}{ours:>17.0f}{ratio:>8.2f}  "
                f"{_verdict(ratio >= TARGET_THROUGHPUT)}"
            )
        print(f"  (target ratio >= {TARGET_THROUGHPUT})")
        with suppress(OSError):
            private_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
