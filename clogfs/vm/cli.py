"""The ``tools/clog-vm`` command line: prepare the cached kernel, or run a script in the VM."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from clogfs.vm.kernel import KernelPrepareError
from clogfs.vm.machine import DEFAULT_CPUS, VmError, prepare, qemu_missing_reason, run_in_vm

EXIT_VM_FAILED = 125  # the VM did not give the script's verdict (timeout, boot failure)
EXIT_NO_VERDICT = 124  # the guest stopped before the script returned


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clog-vm",
        description=(
            "Boot the stock Debian kernel under QEMU (TCG) with the host root shared "
            "read-only, to run dm-mirror tables with the userspace log against clogfsd. "
            "The kernel is cached under <repo>/.cache/kernel."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="download and unpack the kernel, build the initramfs")
    run = sub.add_parser(
        "run",
        help="run SCRIPT as root in a fresh VM; exit with its status",
        description=(
            "Run SCRIPT (with its #! line) in the guest. It starts in the share directory "
            "($CLOGVM_SHARE, writable, the same path as on the host). Exit status: the "
            f"script's; {EXIT_NO_VERDICT} if the guest stopped before it returned; "
            f"{EXIT_VM_FAILED} on a timeout or boot failure."
        ),
    )
    run.add_argument("script", type=Path, help="the guest script")
    run.add_argument("--timeout", type=float, default=300.0, help="hard timeout, seconds")
    run.add_argument("--share", type=Path, help="writable share (default: a temporary dir)")
    run.add_argument("--cpus", type=int, default=DEFAULT_CPUS, help="virtual CPUs")
    run.add_argument("--console", action="store_true", help="print the console log at the end")
    return parser


def _run(args: argparse.Namespace) -> int:
    script = args.script.read_text()
    if args.share is None:
        with tempfile.TemporaryDirectory(prefix="clog-vm-", dir="/var/tmp") as tmp:
            return _run_in(script, Path(tmp), args)
    args.share.mkdir(parents=True, exist_ok=True)
    return _run_in(script, args.share, args)


def _run_in(script: str, share: Path, args: argparse.Namespace) -> int:
    result = run_in_vm(script, timeout=args.timeout, share=share, cpus=args.cpus)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if args.console:
        sys.stdout.write(result.console)
    if result.returncode is None:
        print("clog-vm: the guest stopped before the script returned", file=sys.stderr)
        return EXIT_NO_VERDICT
    return result.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/clog-vm``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="clog-vm: %(message)s",
    )
    reason = qemu_missing_reason()
    if reason is not None:
        print(f"clog-vm: {reason}", file=sys.stderr)
        return EXIT_VM_FAILED
    try:
        if args.command == "prepare":
            vm = prepare()
            print(f"kernel {vm.kernel.version}: {vm.kernel.vmlinuz}")
            print(f"initramfs: {vm.initramfs}")
            return 0
        return _run(args)
    except (KernelPrepareError, VmError) as exc:
        print(f"clog-vm: {exc}", file=sys.stderr)
        return EXIT_VM_FAILED


if __name__ == "__main__":
    sys.exit(main())
