"""Run a real clogfsd process for integration tests, as users do.

The daemon runs from the project's venv with ``--kernel-port`` pointing at a kernel
emulator's netlink port, a private lock file and runtime directory, and (by default) no
view. Readiness is systemd's protocol: the harness binds a ``NOTIFY_SOCKET`` and waits for
``READY=1`` (never a sleep).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from clogfs.netlink.emulator import KernelEmulator, open_kernel_emulator
from clogfs.netlink.wire import Protocol

CLOGFSD = [sys.executable, "-m", "clogfs.cli"]


@dataclass
class Daemon:
    """A running clogfsd."""

    process: trio.Process
    stderr_path: Path
    notify: socket.socket

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """Poll the daemon's stderr until ``needle`` appears; returns the text."""
        with trio.fail_after(timeout):
            while True:
                text = self.stderr()
                if needle in text:
                    return text
                await trio.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for ``READY=1`` on the notify socket (never a sleep).

        Raises:
            RuntimeError: the daemon exited first (with its stderr).
            trio.TooSlowError: no READY=1 within ``timeout``.
        """
        with trio.fail_after(timeout):
            while True:
                with trio.move_on_after(0.1):
                    await trio.lowlevel.wait_readable(self.notify)
                    if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                        return
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"clogfsd exited with {self.process.returncode} before READY=1:"
                        f"\n{self.stderr()}"
                    )

    async def wait(self, timeout: float = 10.0) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


def unmount_stale(mount: Path) -> None:
    """Lazily unmount a view a killed daemon left behind (ENOTCONN), if any."""
    try:
        os.stat(mount)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return
    else:
        if not os.path.ismount(mount):
            return
    subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


@dataclass
class Rig:
    """A daemon and the kernel emulator that plays its kernel."""

    emu: KernelEmulator
    daemon: Daemon
    tmp: Path


@asynccontextmanager
async def open_rig(
    tmp_path: Path,
    protocol: Protocol = Protocol.ULOG,
    *,
    args: Sequence[str] = (),
    mount: Path | None = None,
) -> AsyncIterator[Rig]:
    """An emulator, then a clogfsd accepting requests only from it."""
    async with (
        open_kernel_emulator(protocol) as emu,
        run_clogfsd(tmp_path, kernel_port=emu.port_id, args=args, mount=mount) as daemon,
    ):
        yield Rig(emu, daemon, tmp_path)


@asynccontextmanager
async def run_clogfsd(
    tmp_path: Path,
    *,
    kernel_port: int,
    args: Sequence[str] = (),
    mount: Path | None = None,
    ready_timeout: float = 15.0,
    command: Sequence[str] = CLOGFSD,
) -> AsyncIterator[Daemon]:
    """Start clogfsd, wait for READY=1, yield it; kill it (SIGKILL) if still running at exit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    notify_path = tmp_path / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    stderr_path = tmp_path / "clogfsd.stderr"
    argv = [
        *command,
        "--kernel-port",
        str(kernel_port),
        "--lock-file",
        str(tmp_path / "clogfsd.lock"),
        "--runtime-dir",
        str(tmp_path / "run"),
    ]
    argv += ["--mount", str(mount)] if mount is not None else ["--no-mount"]
    argv += list(args)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
    with open(stderr_path, "wb") as err:
        process = await trio.lowlevel.open_process(
            argv, stdin=None, stdout=err, stderr=err, env=env
        )
    daemon = Daemon(process, stderr_path, notify)
    try:
        await daemon.wait_ready(ready_timeout)
        yield daemon
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            with trio.move_on_after(5):
                await process.wait()
        if mount is not None:
            unmount_stale(mount)
        notify.close()
