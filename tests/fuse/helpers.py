"""Reusable pieces for tests of the FUSE view: snapshots, a fake ViewSource, mounts, polling.

``FakeSource`` implements ``clogfs.fusefs.ViewSource`` like the daemon does. ``ViewMount``
serves a view from a thread with its own trio loop, so plain (synchronous) tests and
module-scoped fixtures can read the mount with ordinary blocking calls.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from clogfs.fusefs import DaemonInfo, ViewHandle, serve_view
from clogfs.snapshot import LogSnapshot, RequestRecord, RequestStats

T = TypeVar("T")

UUID = b"LVM-Zq5Rk7Jc3Wn0aY8Vf1sT2hB6dE9gUiLpXoQrMmNnKkOoPpQqRrSsTtUuVvWw"
NODE_ID = 3
STARTED_AT = 1_700_000_000.0


def fuse_available() -> bool:
    """Whether this process can mount FUSE filesystems (root, /dev/fuse)."""
    return os.geteuid() == 0 and os.path.exists("/dev/fuse")


def bitmap(region_count: int, zeros: Sequence[int] = ()) -> bytes:
    """A bitmap in the on-disk encoding with every bit set except ``zeros``.

    Whole 64-bit words, as ``clogfs.disklog.format.bitset_bytes``; bits past the last region
    are 0. Built with plain integer arithmetic, not the code under test.
    """
    value = (1 << region_count) - 1
    for region in zeros:
        value &= ~(1 << region)
    nbytes = -(-region_count // 64) * 8
    return value.to_bytes(nbytes, "little")


def make_snapshot(**overrides: Any) -> LogSnapshot:
    """A disk log snapshot of 100 regions, regions 5-7 dirty, 40-49 out of sync."""
    region_count = overrides.pop("region_count", 100)
    fields: dict[str, Any] = {
        "uuid": UUID,
        "luid": 0xFFFF8881A2B3C400,
        "protocol": "ulog",
        "log_type": "clustered-disk",
        "state": "resumed",
        "region_size": 1024,
        "region_count": region_count,
        "sync_count": region_count - 10,
        "in_sync": False,
        "device": "253:4",
        "device_state": "A",
        "status": "3 clustered-disk 253:4 A",
        "table": "clustered-disk 4 253:4 1024 LVM-abc block_on_error",
        "clean_bits": bitmap(region_count, range(5, 8)),
        "sync_bits": bitmap(region_count, range(40, 50)),
        "recovering": (40, NODE_ID),
        "marks": ((5, (NODE_ID,)), (6, (1, NODE_ID)), (7, (NODE_ID,))),
        "members": (1, NODE_ID),
        "node_id": NODE_ID,
        "history": (
            RequestRecord(1_700_000_100.25, 41, "MARK_REGION", (5, 6), 0, 12.5),
            RequestRecord(1_700_000_100.5, 42, "FLUSH", (), -5, 1500.0),
        ),
        "stats": RequestStats(
            counts=(("FLUSH", 1), ("MARK_REGION", 1)),
            latency_p50_us=(("FLUSH", 1500.0), ("MARK_REGION", 12.5)),
            latency_p99_us=(("FLUSH", 1500.0), ("MARK_REGION", 12.5)),
        ),
    }
    fields.update(overrides)
    return LogSnapshot(**fields)


def core_snapshot(**overrides: Any) -> LogSnapshot:
    """A core log snapshot (no device), every region clean and in sync."""
    fields: dict[str, Any] = {
        "uuid": b"core-log",
        "luid": 7,
        "log_type": "clustered-core",
        "device": None,
        "status": "1 clustered-core",
        "table": "clustered-core 1 1024",
        "region_count": 16,
        "sync_count": 16,
        "in_sync": True,
        "clean_bits": bitmap(16),
        "sync_bits": bitmap(16),
        "recovering": None,
        "marks": (),
        "members": (NODE_ID,),
        "history": (),
        "stats": RequestStats(),
    }
    fields.update(overrides)
    return make_snapshot(**fields)


class FakeSource:
    """A ``ViewSource`` over a settable tuple of snapshots (thread-safe: swapped whole)."""

    def __init__(self, snapshots: Sequence[LogSnapshot] = (), **info: Any) -> None:
        self._snapshots = tuple(snapshots)
        self.metrics = "# HELP clogfs_up Always 1.\n# TYPE clogfs_up gauge\nclogfs_up 1\n"
        self.metrics_error: Exception | None = None  # raised by metrics_text when set
        fields: dict[str, Any] = {
            "version": "0.1.0",
            "protocol": "ulog-v3",
            "node_id": NODE_ID,
            "cluster_state": "single",
            "started_at": STARTED_AT,
            "metrics_text": self._metrics_text,
        }
        fields.update(info)
        self.info = DaemonInfo(**fields)

    def _metrics_text(self) -> str:
        if self.metrics_error is not None:
            raise self.metrics_error
        return self.metrics

    def set_snapshots(self, snapshots: Sequence[LogSnapshot]) -> None:
        """Replace the live instances."""
        self._snapshots = tuple(snapshots)

    def snapshots(self) -> Sequence[LogSnapshot]:
        """The live instances."""
        return self._snapshots

    def daemon_info(self) -> DaemonInfo:
        """The daemon facts."""
        return self.info


def wait_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def listing(path: Path) -> set[str]:
    """The names in directory ``path``, or an empty set when it does not exist."""
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


class ViewMount:
    """``serve_view`` in a thread running its own trio loop; a context manager.

    Args:
        source: what the view shows.
        mountpoint: where to mount it.
    """

    def __init__(self, source: Any, mountpoint: Path, *, allow_other: bool = False) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.allow_other = allow_other
        self.handle: ViewHandle | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="view-mount", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._serve, strict_exception_groups=True)
        except BaseException as exc:  # reported to the test thread by __enter__/__exit__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self.handle = await nursery.start(self._start)
            self._ready.set()

    async def _start(self, task_status: trio.TaskStatus[ViewHandle]) -> None:
        await serve_view(
            self.source, self.mountpoint, allow_other=self.allow_other, task_status=task_status
        )

    def __enter__(self) -> ViewMount:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        assert self.handle is not None, "serve_view did not start"
        return self

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in the view's trio thread (where the daemon calls the handle)."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def logs_changed(self) -> None:
        """``handle.logs_changed()``, called as the daemon would."""
        assert self.handle is not None
        self.run(self.handle.logs_changed)

    def __exit__(self, *exc_info: object) -> None:
        if self._scope is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the view did not stop"
        if self._error is not None:
            raise self._error


def mounted_options(mountpoint: Path) -> list[str] | None:
    """The fsname and options of the mount at ``mountpoint`` in /proc/self/mounts, or None."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            source, target, _, options, *_ = line.split()
            if target == str(mountpoint):
                return [source, *options.split(",")]
    return None


def force_unmount(mountpoint: Path) -> None:
    """Lazily unmount whatever is at ``mountpoint`` (test clean-up; errors ignored)."""
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


def replace(snapshot: LogSnapshot, **changes: Any) -> LogSnapshot:
    """``dataclasses.replace`` for snapshots (typed)."""
    return dataclasses.replace(snapshot, **changes)
