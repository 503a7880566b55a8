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

Through the daemon (``daemon_main``; root: netlink). A real ``clogfsd`` serves
clustered-disk logs to the kernel emulator. FLUSH latency: MARK a region, then FLUSH (only
the FLUSH timed), then CLEAR it (so every FLUSH makes one durable write of one logical
block), on a loop device and on an image file, each against the floor on a twin target of
the same kind, measured in alternating rounds with the same write size (the device's
logical block); targets as above. Throughput: 1, 16 and 64 logs on their own image files
flushing at once, aggregate FLUSH/s against ``raw_throughput`` on as many files (target >=
0.8); each FLUSH costs three requests through the emulator, a Python process sharing the
machine, so on a small host this row measures the emulator as much as the daemon. Scale:
logs of 2**24 regions (a 2 MiB bitmap each): CTR + RESUME time of each (target <= 0.5 s)
and the daemon's RSS growth per log against its bitmap bytes (target <= 3x).

Run: ``python -m bench.disk [--samples N] [--seconds S] [--buffer-bytes B]``; the loop
device rows need root (``losetup``) and are skipped otherwise, as is the daemon part.
Bounded: about a minute with the defaults. Every figure is a ratio against a floor
measured in the same run.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import math
import mmap
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from clogfs.disklog.device import BLKSSZGET, OPEN_FLAGS, LogDevice
from clogfs.disklog.format import IMAGE_FILE_BLOCK_SIZE, bitset_bytes, buffer_bytes
from clogfs.netlink.emulator import KernelEmulator, open_kernel_emulator
from clogfs.netlink.requests import RequestType
from clogfs.netlink.wire import Protocol

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


# --- through the daemon ----------------------------------------------------------------------

REGION_SECTORS = 1024
LOG_REGIONS = 128  # regions of the latency and throughput logs: one logical block of bitmap
BIG_REGIONS = 1 << 24
BIG_LOGS = 4
TARGET_CTR_RESUME_S = 0.5
TARGET_RSS_PER_BITMAP = 3.0
REQUESTS_PER_FLUSH = 3  # MARK_REGION, FLUSH, CLEAR_REGION
_READY_TIMEOUT_S = 30.0
_U64 = struct.Struct("=Q")  # a region number in MARK/CLEAR payloads (u64, host order)
_BLKSSZGET_ARG = struct.Struct("=i")  # ioctl argument of BLKSSZGET: int


def logical_block_bytes(path: Path) -> int:
    """What one changed-block write of a log on ``path`` writes: its logical block size."""
    if not stat.S_ISBLK(path.stat().st_mode):
        return IMAGE_FILE_BLOCK_SIZE
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        arg = fcntl.ioctl(fd, BLKSSZGET, bytes(_BLKSSZGET_ARG.size))
    finally:
        os.close(fd)
    size: int = _BLKSSZGET_ARG.unpack(arg)[0]
    return size


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@asynccontextmanager
async def open_clogfsd(work: Path, kernel_port: int) -> AsyncIterator[trio.Process]:
    """Run ``clogfsd`` for the emulator at ``kernel_port``; ready (``READY=1``) on entry.

    Resource handling: the daemon's lock file, runtime directory, notify socket and stderr
    live in ``work``; the daemon is killed (SIGKILL) on exit.
    Error handling: a daemon that exits before ``READY=1`` raises ``RuntimeError`` with its
    stderr.
    """
    work.mkdir(parents=True, exist_ok=True)
    notify_path = work / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    argv = [
        sys.executable,
        "-m",
        "clogfs.cli",
        "--kernel-port",
        str(kernel_port),
        "--no-mount",
        "--lock-file",
        str(work / "lock"),
        "--runtime-dir",
        str(work / "run"),
        "--log-level",
        "WARNING",
    ]
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    with notify, (work / "clogfsd.stderr").open("wb") as err:
        process = await trio.lowlevel.open_process(
            argv, stdin=None, stdout=err, stderr=err, env=env
        )
        try:
            with trio.fail_after(_READY_TIMEOUT_S):
                while True:
                    with trio.move_on_after(0.1):
                        await trio.lowlevel.wait_readable(notify)
                        if b"READY=1" in notify.recv(4096).split(b"\n"):
                            break
                    if process.poll() is not None:
                        raise RuntimeError(
                            "clogfsd exited before READY=1:\n"
                            + (work / "clogfsd.stderr").read_text()
                        )
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()


class BenchLog:
    """One clustered-disk log driven through the emulator (mainline wire format)."""

    def __init__(self, emu: KernelEmulator, index: int, word: str, regions: int) -> None:
        self.emu = emu
        self.uuid = f"BENCH-DISK-{index}".encode()
        self.luid = 1000 + index
        self.ctr = f"{regions * REGION_SECTORS} clustered-disk {word} {REGION_SECTORS} nosync"

    async def call(self, rtype: RequestType, data: bytes = b"") -> None:
        reply = await self.emu.request(rtype, self.uuid, luid=self.luid, data=data, timeout=30)
        if reply.error:
            raise RuntimeError(f"{rtype.name} of {self.uuid!r} failed: {reply.error}")

    async def create(self) -> None:
        await self.call(RequestType.CTR, self.ctr.encode())
        await self.call(RequestType.RESUME)

    async def remove(self) -> None:
        for rtype in (RequestType.PRESUSPEND, RequestType.POSTSUSPEND, RequestType.DTR):
            await self.call(rtype)

    async def timed_flush(self, region: int) -> tuple[float, float]:
        """MARK ``region``, FLUSH (one durable write), CLEAR it.

        Returns:
            The seconds of the FLUSH round trip and of the MARK round trip (no I/O).
        """
        payload = _U64.pack(region)
        start = time.perf_counter()
        await self.call(RequestType.MARK_REGION, payload)
        mark_s = time.perf_counter() - start
        start = time.perf_counter()
        await self.call(RequestType.FLUSH)
        flush_s = time.perf_counter() - start
        await self.call(RequestType.CLEAR_REGION, payload)
        return flush_s, mark_s


@dataclass(frozen=True)
class DaemonLatency:
    """FLUSH latency through clogfsd against the floor, and the MARK round trip (no I/O)."""

    row: LatencyRow
    mark: tuple[float, float]


async def _daemon_latency(
    target: str, log_path: Path, floor_path: Path, n: int, work: Path
) -> DaemonLatency:
    write_bytes = logical_block_bytes(log_path)
    floor: list[float] = []
    ours: list[float] = []
    marks: list[float] = []
    per_round = max(1, n // LATENCY_ROUNDS)
    async with open_kernel_emulator(Protocol.ULOG) as emu, open_clogfsd(work, emu.port_id):
        log = BenchLog(emu, 0, str(log_path), LOG_REGIONS)
        await log.create()
        for _ in range(LATENCY_ROUNDS):
            floor += await trio.to_thread.run_sync(
                _floor_samples, floor_path, write_bytes, per_round
            )
            for i in range(per_round):
                flush_s, mark_s = await log.timed_flush(i % LOG_REGIONS)
                ours.append(flush_s)
                marks.append(mark_s)
        await log.remove()
    row = LatencyRow(f"{target} {write_bytes}B", percentiles(floor), percentiles(ours))
    return DaemonLatency(row, percentiles(marks))


def daemon_latency(
    target: str, log_path: Path, floor_path: Path, n: int, work: Path
) -> DaemonLatency:
    """FLUSH latency through clogfsd on ``log_path`` and the floor on its twin ``floor_path``."""
    return trio.run(_daemon_latency, target, log_path, floor_path, n, work)


async def _daemon_throughput(paths: Sequence[Path], seconds: float, work: Path) -> float:
    async with open_kernel_emulator(Protocol.ULOG) as emu, open_clogfsd(work, emu.port_id):
        logs = [BenchLog(emu, i, str(p), LOG_REGIONS) for i, p in enumerate(paths)]
        for log in logs:
            await log.create()
        counts = [0] * len(logs)

        async def flusher(i: int, stop_at: float) -> None:
            while time.monotonic() < stop_at:
                await logs[i].timed_flush(counts[i] % LOG_REGIONS)
                counts[i] += 1

        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(len(logs)):
                nursery.start_soon(flusher, i, began + seconds)
        elapsed = time.monotonic() - began
        for log in logs:
            await log.remove()
    return sum(counts) / elapsed


def daemon_throughput(paths: Sequence[Path], seconds: float, work: Path) -> float:
    """Aggregate FLUSH/s of one log per path through one clogfsd, all flushing at once."""
    return trio.run(_daemon_throughput, paths, seconds, work)


@dataclass(frozen=True)
class ScaleResult:
    ctr_resume_s: list[float]
    rss_per_log: float
    bitmap_bytes: int


async def _daemon_scale(work: Path, n_logs: int) -> ScaleResult:
    size = buffer_bytes(BIG_REGIONS, IMAGE_FILE_BLOCK_SIZE)
    images = [make_image(work / f"big{i}.img", size) for i in range(n_logs)]
    async with (
        open_kernel_emulator(Protocol.ULOG) as emu,
        open_clogfsd(work / "scale", emu.port_id) as process,
    ):
        logs = [BenchLog(emu, 100 + i, str(p), BIG_REGIONS) for i, p in enumerate(images)]
        warm = BenchLog(emu, 99, str(make_image(work / "warm.img")), LOG_REGIONS)
        await warm.create()  # the first disk log pays for imports and threads: not counted
        base = rss_bytes(process.pid)
        times = []
        for log in logs:
            start = time.perf_counter()
            await log.create()
            times.append(time.perf_counter() - start)
        grown = rss_bytes(process.pid) - base
        for log in [warm, *logs]:
            await log.remove()
    return ScaleResult(times, grown / n_logs, bitset_bytes(BIG_REGIONS))


def daemon_scale(work: Path, n_logs: int = BIG_LOGS) -> ScaleResult:
    """CTR + RESUME seconds of ``n_logs`` logs of 2**24 regions and the RSS growth per log."""
    return trio.run(_daemon_scale, work, n_logs)


def daemon_main(args: argparse.Namespace, work: Path) -> None:
    """The daemon part: FLUSH latency, FLUSH throughput and scale through a real clogfsd."""
    if os.geteuid() != 0:
        print("\nthrough clogfsd: skipped (needs root for netlink)")
        return
    print(f"\nthrough clogfsd: FLUSH latency, {args.samples} MARK + FLUSH (timed) + CLEAR")
    rows = []
    with (
        loop_device(make_image(work / "d-loop-log.img")) as log_loop,
        loop_device(make_image(work / "d-loop-floor.img")) as floor_loop,
    ):
        if log_loop is not None and floor_loop is not None:
            rows.append(daemon_latency("loop", log_loop, floor_loop, args.samples, work / "dl"))
    rows.append(
        daemon_latency(
            "file",
            make_image(work / "d-log.img"),
            make_image(work / "d-floor.img"),
            args.samples,
            work / "df",
        )
    )
    print_latency([r.row for r in rows])
    for r in rows:
        print(
            f"  {r.row.target}: MARK round trip (no I/O) p50 {r.mark[0]:.1f} p99 {r.mark[1]:.1f}"
            " (the emulator's and the daemon's share of every FLUSH)"
        )

    print(f"\nthrough clogfsd: N logs flushing at once for {args.seconds:g} s each")
    print(f"  {'logs':>7}{'raw writes/s':>14}{'FLUSH/s':>17}{'ratio':>8}{'requests/s':>12}")
    images = [make_image(work / f"dlog{i}.img", 64 * 1024) for i in range(max(DEVICE_COUNTS))]
    floors = [make_image(work / f"dfloor{i}.img", 64 * 1024) for i in range(max(DEVICE_COUNTS))]
    for count in DEVICE_COUNTS:
        raw = raw_throughput(floors[:count], IMAGE_FILE_BLOCK_SIZE, args.seconds)
        ours = daemon_throughput(images[:count], args.seconds, work / f"dt{count}")
        ratio = ours / raw
        print(
            f"  {count:>7}{raw:>14.0f}{ours:>17.0f}{ratio:>8.2f}"
            f"{ours * REQUESTS_PER_FLUSH:>12.0f}  {_verdict(ratio >= TARGET_THROUGHPUT)}"
        )
    print(
        f"  (target ratio >= {TARGET_THROUGHPUT}; requests/s counts MARK, FLUSH and CLEAR: "
        "compare it with bench.protocol's echo floor, the emulator's own ceiling)"
    )

    scale = daemon_scale(work)
    worst = max(scale.ctr_resume_s)
    per_bitmap = scale.rss_per_log / scale.bitmap_bytes
    print(
        f"\nthrough clogfsd: {len(scale.ctr_resume_s)} logs of 2**24 regions "
        f"({scale.bitmap_bytes} bitmap bytes each)"
    )
    print(
        "  CTR + RESUME: "
        + " ".join(f"{t:.3f}" for t in scale.ctr_resume_s)
        + f" s; worst {worst:.3f} s  {_verdict(worst <= TARGET_CTR_RESUME_S)} "
        f"(target <= {TARGET_CTR_RESUME_S} s)"
    )
    print(
        f"  RSS growth per log: {scale.rss_per_log / 2**20:.2f} MiB = {per_bitmap:.2f}x its "
        f"bitmap  {_verdict(per_bitmap <= TARGET_RSS_PER_BITMAP)} "
        f"(target <= {TARGET_RSS_PER_BITMAP}x)"
    )


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
        daemon_main(args, work)
        with suppress(OSError):
            private_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
