"""Booting the prepared kernel under QEMU and running one guest script: ``run_in_vm``.

One call is one boot: QEMU (TCG, ``-cpu max``, 1 GiB) boots the cached kernel with the
initramfs of ``initramfs.py``; the guest sees the host ``/`` read-only and the caller's
share read-write at its host path, runs the script there (``$CLOGVM_SHARE`` names it) and
powers off. The whole run is under a hard timeout: QEMU is killed when it expires.

Test and demo tooling: it runs QEMU, so it is not a core module.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clogfs.vm.initramfs import (
    CONTROL_DIR,
    HOST_ROOT_TAG,
    MARK_INIT_FAILED,
    MARK_SCRIPT_STARTED,
    SCRIPT_NAME,
    SHARE_TAG,
    build_initramfs,
)
from clogfs.vm.kernel import KernelTree, prepare_kernel

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 1024
DEFAULT_CPUS = 2
_CONSOLE_TAIL_LINES = 60


class VmError(RuntimeError):
    """The VM did not run the script to a verdict; the message ends with the console tail."""

    def __init__(self, message: str, console: str) -> None:
        tail = "\n".join(console.splitlines()[-_CONSOLE_TAIL_LINES:])
        super().__init__(f"{message}\n--- console (last lines) ---\n{tail}")
        self.console = console


class VmTimeoutError(VmError):
    """The hard timeout expired and QEMU was killed."""


class VmBootError(VmError):
    """QEMU failed, or the guest never got as far as starting the script."""


@dataclass(frozen=True)
class VmResult:
    """What one boot produced.

    Attributes:
        returncode: the script's exit status, or None if the guest stopped before the
            script returned (e.g. the script stopped the machine itself with sysrq).
        console: the serial console: kernel messages and the init's marker lines.
        stdout: the script's standard output.
        stderr: the script's standard error.
        files: every file the guest left in the share (outside the control directory),
            by path relative to the share.
    """

    returncode: int | None
    console: str
    stdout: str
    stderr: str
    files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedVm:
    """A kernel and initramfs ready to boot."""

    kernel: KernelTree
    initramfs: Path


def qemu_missing_reason() -> str | None:
    """Why QEMU cannot run here at all, or None. The only reason tests may skip."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    if shutil.which("busybox") is None and not Path("/bin/busybox").is_file():
        return "busybox is not installed (Debian package busybox-static)"
    return None


def prepare(cache: Path | None = None) -> PreparedVm:
    """Download and unpack the kernel and build the initramfs, all cached; idempotent.

    Raises:
        KernelPrepareError: a download or build step failed.
    """
    kernel = prepare_kernel(cache)
    return PreparedVm(kernel, build_initramfs(kernel))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _collect(share: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(share.rglob("*")):
        rel = path.relative_to(share)
        if rel.parts[0] == CONTROL_DIR or not path.is_file():
            continue
        files[str(rel)] = path.read_bytes()
    return files


#: the checkout the guest runs clogfs and its .venv from (bound back in the guest when it lies
#: under /tmp or /run, which the guest covers with tmpfs)
CHECKOUT = Path(__file__).resolve().parents[2]


def qemu_argv(vm: PreparedVm, share: Path, console: Path, *, cpus: int) -> list[str]:
    """The QEMU command line for one boot."""
    return [
        QEMU,
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", str(cpus),
        "-m", str(MEMORY_MIB),
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(vm.kernel.vmlinuz),
        "-initrd", str(vm.initramfs),
        "-append",
        f"console=ttyS0 panic=-1 rdinit=/init clogvm.share={share} clogvm.keep={CHECKOUT}",
        "-virtfs",
        f"local,path=/,mount_tag={HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={share},mount_tag={SHARE_TAG},security_model=none,multidevs=remap",
    ]  # fmt: skip


def run_in_vm(
    script: str,
    *,
    timeout: float,
    share: Path,
    vm: PreparedVm | None = None,
    cpus: int = DEFAULT_CPUS,
) -> VmResult:
    """Boot the VM, run ``script`` as root in the guest, power off, and collect the results.

    Args:
        script: the guest script, with its ``#!`` line; it starts in the share directory,
            which it finds in ``$CLOGVM_SHARE`` (the same path as on the host).
        timeout: seconds for the whole boot, script and power-off.
        share: a host directory the guest can write; results are read back from it. Its
            path must not contain whitespace. Earlier contents stay visible to the guest.
        vm: a prepared kernel; default :func:`prepare` (cached).
        cpus: virtual CPUs.

    Returns:
        The script's exit status and output, the console, and the files left in the share.

    Raises:
        VmTimeoutError: the hard timeout expired; QEMU was killed.
        VmBootError: QEMU exited with an error or the guest failed before the script ran.
        KernelPrepareError: preparing the kernel failed (see :func:`prepare`).

    Resource handling:
        QEMU is always reaped: on timeout or on any exception it is killed and waited for.
        The share's control directory is replaced on every call.
    """
    share = share.resolve()
    for what, path in (("share", share), ("checkout", CHECKOUT)):
        if any(ch.isspace() for ch in str(path)):
            raise ValueError(f"{what} path must not contain whitespace: {path!r}")
    vm = vm or prepare()
    control = share / CONTROL_DIR
    shutil.rmtree(control, ignore_errors=True)
    control.mkdir(parents=True)
    script_path = control / SCRIPT_NAME
    script_path.write_text(script)
    script_path.chmod(0o755)
    console_path = control / "console.log"
    argv = qemu_argv(vm, share, console_path, cpus=cpus)
    log.info("booting %s (timeout %.0f s)", vm.kernel.version, timeout)
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as qemu:
        try:
            qemu_output, _ = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.communicate()
            raise VmTimeoutError(
                f"QEMU killed after the hard timeout of {timeout:.0f} s", _read(console_path)
            ) from None
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
    log.info("VM stopped after %.1f s", time.monotonic() - started)
    console = _read(console_path)
    if qemu.returncode != 0:
        raise VmBootError(
            f"QEMU exited {qemu.returncode}: {qemu_output.decode(errors='replace').strip()}",
            console,
        )
    for line in console.splitlines():
        if line.startswith(MARK_INIT_FAILED):
            raise VmBootError(f"guest {line.strip()}", console)
    if MARK_SCRIPT_STARTED not in console:
        raise VmBootError("the guest never started the script", console)
    rc_text = _read(control / "rc").strip()
    return VmResult(
        returncode=int(rc_text) if rc_text else None,
        console=console,
        stdout=_read(control / "stdout"),
        stderr=_read(control / "stderr"),
        files=_collect(share),
    )


def follow_file(
    path: Path, stop: threading.Event, emit: Callable[[str], None], *, interval: float = 0.2
) -> None:
    """Pass what is appended to ``path`` (the guest's stdout in the share) to ``emit``.

    Runs until ``stop`` is set, then passes what is left and returns; a missing file counts
    as empty. Meant for a thread beside :func:`run_in_vm`.
    """
    offset = 0
    while True:
        finished = stop.is_set()
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            emit(chunk.decode(errors="replace"))
        if finished:
            return
        stop.wait(interval)
