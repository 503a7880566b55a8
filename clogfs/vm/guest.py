"""Guest-side helpers for scripts that run inside the QEMU VM: commands, loop devices, tables,
and a supervised ``clogfsd``.

Used by the kernel scenarios (``tests/kernel/scenarios.py``) and ``make demo``. Everything
here runs in the guest (as root, with the host's tools at the same paths); nothing here boots
a VM. Test and demo tooling, not a core module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from clogfs.disklog.format import SECTOR_SIZE

REPO = Path(__file__).resolve().parents[2]
CLOGFSD = REPO / ".venv" / "bin" / "clogfsd"
READY_TIMEOUT = 30.0  # seconds; Python starts slowly over 9p under TCG
LOCK_FILE = Path("/run/clogfsd.lock")


@dataclass(frozen=True)
class Cmd:
    """One finished command: what ran and what it said."""

    argv: tuple[str, ...]
    rc: int | None  # None: killed by the timeout
    stdout: str
    stderr: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the result files."""
        return asdict(self)


def sh(*argv: str, timeout: float = 60.0, check: bool = False, stdin: str | None = None) -> Cmd:
    """Run a command and capture its output; a timeout gives ``rc=None``, never an exception.

    Raises:
        RuntimeError: ``check`` is set and the command failed or timed out.
    """
    started = time.monotonic()
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        cmd = Cmd(tuple(argv), done.returncode, done.stdout, done.stderr, 0.0)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        cmd = Cmd(tuple(argv), None, out, f"timed out after {timeout} s", 0.0)
    cmd = Cmd(cmd.argv, cmd.rc, cmd.stdout, cmd.stderr, round(time.monotonic() - started, 3))
    if check and cmd.rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({cmd.rc}): {cmd.stderr.strip()}")
    return cmd


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def make_loop(backing: Path, size_bytes: int) -> str:
    """Create (or grow) ``backing`` to ``size_bytes`` and attach a loop device to it.

    Returns:
        The loop device path, e.g. ``/dev/loop0``.
    """
    with backing.open("ab") as f:
        if f.tell() < size_bytes:
            f.truncate(size_bytes)
    return sh("losetup", "-f", "--show", str(backing), check=True).stdout.strip()


def detach_loop(device: str) -> Cmd:
    """``losetup -d``; the result is returned, not checked (cleanup)."""
    return sh("losetup", "-d", device)


def dev_number(device: str) -> str:
    """``major:minor`` of a block device node."""
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def userspace_table(
    *,
    sectors: int,
    uuid: str,
    legs: Sequence[str],
    region_size_sectors: int = 1024,
    log_device: str | None = None,
    sync: str | None = None,
    integrated_flush: bool = False,
) -> str:
    """A dm-mirror table line with the ``userspace`` log (kernel-vm.md, "Table lines").

    Args:
        sectors: the mirror's length in 512-byte sectors.
        uuid: the log uuid.
        legs: the mirror legs (offset 0 on each).
        region_size_sectors: region size.
        log_device: a log device for ``clustered-disk``; None for ``clustered-core``.
        sync: ``"sync"``, ``"nosync"`` or None (the default: resynchronise).
        integrated_flush: add the ``integrated_flush`` word after the uuid.
    """
    log_args = ["clustered-disk", log_device] if log_device else ["clustered-core"]
    log_args.append(str(region_size_sectors))
    if sync:
        log_args.append(sync)
    words = [uuid, *(["integrated_flush"] if integrated_flush else []), *log_args]
    leg_words = " ".join(f"{leg} 0" for leg in legs)
    return f"0 {sectors} mirror userspace {len(words)} {' '.join(words)} {len(legs)} {leg_words}"


def sectors_of(size_bytes: int) -> int:
    """Bytes → 512-byte sectors."""
    return size_bytes // SECTOR_SIZE


def dmesg() -> str:
    """The kernel log so far."""
    return sh("dmesg").stdout


def mirror_status(name: str) -> str:
    """``dmsetup status NAME`` (stripped), or the error text."""
    cmd = sh("dmsetup", "status", name, timeout=60)
    return cmd.stdout.strip() if cmd.rc == 0 else f"ERROR rc={cmd.rc}: {cmd.stderr.strip()}"


def sync_counts(status: str) -> tuple[int, int] | None:
    """``(in_sync, total)`` from a mirror status line (``… 2 7:0 7:1 12/32 …``), or None."""
    for word in status.split():
        head, sep, tail = word.partition("/")
        if sep and head.isdigit() and tail.isdigit():
            return int(head), int(tail)
    return None


class Daemon:
    """``clogfsd`` started in the guest and supervised through ``NOTIFY_SOCKET``.

    Resource handling:
        The notify socket and the log file are closed by :meth:`close`; the process is
        stopped by :meth:`kill` (SIGKILL) or :meth:`terminate` (SIGTERM, then SIGKILL).
    """

    def __init__(self, log_path: Path, *extra_args: str, mount: str | None = None) -> None:
        """Start clogfsd and wait for ``READY=1``.

        Args:
            log_path: its stderr goes here (appended).
            extra_args: more command-line options (e.g. ``--debug service``).
            mount: where to mount the view; None for ``--no-mount``.

        Raises:
            RuntimeError: it exited, or did not send READY=1 within :data:`READY_TIMEOUT`.
        """
        self.log_path = log_path
        notify_path = Path("/run") / f"clogvm-notify-{os.getpid()}-{time.monotonic_ns()}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._log: TextIO = log_path.open("a")
        argv = [str(CLOGFSD), "--lock-file", str(LOCK_FILE), *extra_args]
        argv += ["--mount", mount] if mount else ["--no-mount"]
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        self._log.write(f"### {' '.join(argv)}\n")
        self._log.flush()
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self.ready_seconds = self._wait_ready(time.monotonic())

    def _wait_ready(self, started: float) -> float:
        self._notify.settimeout(0.2)
        while time.monotonic() - started < READY_TIMEOUT:
            try:
                message = self._notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"clogfsd exited {self.process.returncode} before READY=1"
                    ) from None
                continue
            if "READY=1" in message.splitlines():
                return round(time.monotonic() - started, 3)
        self.kill()
        raise RuntimeError(f"clogfsd sent no READY=1 within {READY_TIMEOUT} s")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL it (as a crash would) and reap it; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait()

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM; returns the exit status, or None if it refused to exit in time."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill it if still running; close the notify socket and the log."""
        self.kill()
        path = self._notify.getsockname()
        self._notify.close()
        if isinstance(path, str):
            Path(path).unlink(missing_ok=True)
        self._log.close()

    def log_text(self) -> str:
        """What it has logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")
