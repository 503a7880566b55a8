"""``make demo``: clogfs serving a real kernel mirror, shown to someone seeing it first.

On the host (``python -m clogfs.demo``) it prepares the cached Debian kernel, boots it under
QEMU and streams what the guest says. In the guest (``python -m clogfs.demo --guest``) it
starts clogfsd, builds a clustered-disk mirror on loop devices, writes data, shows
``dmsetup status``, the daemon's view of the log, and the on-disk log after removal.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from clogfs.vm.guest import (
    Daemon,
    detach_loop,
    dev_number,
    make_loop,
    mirror_status,
    sh,
    userspace_table,
)
from clogfs.vm.kernel import KernelPrepareError
from clogfs.vm.machine import VmError, follow_file, prepare, qemu_missing_reason, run_in_vm

MIB = 1 << 20
LEG_BYTES = 32 * MIB
REGION_SECTORS = 1024
VIEW = Path("/run/clogfs")
UUID = "DEMO-CLOGFS-0001"
BOOT_TIMEOUT = 600.0


def say(text: str = "") -> None:
    """Print one line of the story at once (the host streams it)."""
    print(text, flush=True)


def show(title: str, text: str) -> None:
    """A titled, indented block."""
    say(f"  {title}:")
    for line in text.rstrip("\n").splitlines() or ["(empty)"]:
        say(f"    {line}")


def _view_of_log() -> None:
    directory = VIEW / UUID
    if not directory.is_dir():
        say("  (the daemon's view is not mounted; run clogfsd with --mount to browse it)")
        return
    say(f"  clogfsd publishes each live log as a read-only directory, {directory}:")
    for name in ("type", "state", "region_size", "region_count", "sync_count", "device",
                 "device_state", "status", "dirty", "stats", "map.txt"):  # fmt: skip
        path = directory / name
        if path.exists():
            show(name, path.read_text(errors="replace"))


def _on_disk_log(log_path: Path, region_count: int) -> None:
    from clogfs.disklog.format import (
        MIRROR_MAGIC,
        buffer_bytes,
        count_clean,
        decode_bitmap,
        decode_header,
        dirty_ranges,
    )

    data = log_path.read_bytes()[: buffer_bytes(region_count, 4096)]
    header = decode_header(data)
    say(f"  header: magic {header.magic:#x} ({'ok' if header.magic == MIRROR_MAGIC else 'BAD'}),"
        f" version {header.version}, {header.nr_regions} regions")  # fmt: skip
    bitmap = decode_bitmap(data, region_count)
    clean = count_clean(bitmap, region_count)
    dirty = dirty_ranges(bitmap, region_count)
    say(f"  clean bitmap at byte 1024: {clean} of {region_count} regions clean, "
        f"{'no dirty region' if not dirty else f'dirty: {dirty}'}")  # fmt: skip
    say("  (a dirty region is one a crash could have left different on the two legs;")
    say("   after a clean removal there are none, so the next activation resyncs nothing)")


def guest_main() -> int:
    """The part that runs inside the VM."""
    work = Path("/tmp/demo")
    work.mkdir(parents=True, exist_ok=True)
    say("== 1. Start clogfsd, the userspace dirty-log daemon")
    try:
        daemon = Daemon(work / "clogfsd.log", mount=str(VIEW))
    except RuntimeError as exc:
        say(f"  clogfsd did not start with its view ({exc}); trying --no-mount")
        try:
            daemon = Daemon(work / "clogfsd.log")
        except RuntimeError as exc2:
            say(f"  clogfsd is not working yet: {exc2}")
            show("its log", (work / "clogfsd.log").read_text(errors="replace")[-3000:])
            return 1
    say(f"  ready after {daemon.ready_seconds} s (it told us through NOTIFY_SOCKET)")
    devices: list[str] = []
    try:
        devices = [make_loop(work / "leg0", LEG_BYTES), make_loop(work / "leg1", LEG_BYTES)]
        log_image = work / "log"
        devices.append(make_loop(log_image, MIB))
        leg0, leg1, logdev = devices
        say()
        say("== 2. Create a two-leg mirror whose dirty log lives on a log device")
        say(f"  legs {leg0} and {leg1} ({LEG_BYTES // MIB} MiB each), log device {logdev} "
            f"({dev_number(logdev)})")  # fmt: skip
        table = userspace_table(
            sectors=LEG_BYTES // 512, uuid=UUID, legs=[leg0, leg1], log_device=logdev,
            sync="nosync",
        )  # fmt: skip
        show("table", table)
        create = sh("dmsetup", "create", "demo", "--table", table, timeout=60)
        if create.rc != 0:
            show("dmsetup create failed", create.stderr)
            return 1
        say(f"  created in {create.seconds} s: the kernel's dm-log-userspace asked clogfsd to")
        say("  construct the log (CTR), then GET_REGION_SIZE, GET_SYNC_COUNT, RESUME")
        say()
        say("== 3. Write 4 MiB with O_DIRECT")
        say("  each write: the kernel asks clogfsd to mark its region dirty and flush the log")
        say("  to disk, writes both legs, then asks clogfsd to clear the region")
        write = sh("dd", "if=/dev/urandom", "of=/dev/mapper/demo", "bs=1M", "count=4",
                   "oflag=direct", "status=none", timeout=120)  # fmt: skip
        say(f"  dd exit {write.rc} after {write.seconds} s")
        say()
        say("== 4. What the kernel reports: dmsetup status")
        status = mirror_status("demo")
        show("status", status)
        say("  read it as: 2 legs (maj:min each), in-sync regions/total, events, leg health,")
        say("  then clogfsd's own string: 3 words, clustered-disk, log device, A = alive")
        say()
        say("== 5. What clogfsd reports about the log")
        _view_of_log()
        say()
        say("== 6. Remove the mirror and look at the log device itself")
        remove = sh("dmsetup", "remove", "demo", timeout=60)
        say(f"  dmsetup remove exit {remove.rc}")
        _on_disk_log(log_image, LEG_BYTES // (REGION_SECTORS * 512))
        same = sh("cmp", leg0, leg1).rc == 0
        say(f"  the two legs are {'identical' if same else 'DIFFERENT'}")
        say()
        say("== 7. Stop clogfsd (SIGTERM: no live log, so it exits cleanly)")
        say(f"  exit status {daemon.terminate()}")
        return 0 if write.rc == 0 and remove.rc == 0 and same else 1
    finally:
        daemon.close()
        sh("dmsetup", "remove", "demo")
        for dev in devices:
            detach_loop(dev)


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def host_main() -> int:
    """Boot the VM and run :func:`guest_main` in it, streaming its story."""
    reason = qemu_missing_reason()
    if reason is not None:
        print(f"demo: cannot run QEMU here: {reason}", file=sys.stderr)
        return 1
    say("clogfs demo: a real Linux device-mapper mirror whose dirty log is kept by clogfsd.")
    say("This machine's kernel has no device-mapper, so the demo boots the stock Debian")
    say("kernel under QEMU, sharing this filesystem read-only with it.")
    started = time.monotonic()
    try:
        vm = prepare()
    except KernelPrepareError as exc:
        print(f"demo: preparing the kernel failed: {exc}", file=sys.stderr)
        return 1
    say(f"Booting Linux {vm.kernel.version} (TCG emulation: about 10 s) ...")
    say()
    repo = Path(__file__).resolve().parents[1]
    script = f"#!/bin/sh\ncd /\nexec {repo}/.venv/bin/python -m clogfs.demo --guest\n"
    with tempfile.TemporaryDirectory(prefix="clogfs-demo-", dir="/var/tmp") as tmp:
        stop = threading.Event()
        tail = threading.Thread(
            target=follow_file, args=(Path(tmp) / ".clogvm" / "stdout", stop, _echo), daemon=True
        )
        tail.start()
        try:
            result = run_in_vm(script, timeout=BOOT_TIMEOUT, share=Path(tmp), vm=vm)
        except VmError as exc:
            stop.set()
            tail.join()
            print(f"demo: the VM failed: {exc}", file=sys.stderr)
            return 1
        stop.set()
        tail.join()
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        say(f"demo: the guest part ended with status {result.returncode}")
        return 1
    say()
    say(f"Done in {time.monotonic() - started:.0f} s. Run the kernel tests with:")
    say("  .venv/bin/pytest tests/kernel -q")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clogfs.demo``."""
    parser = argparse.ArgumentParser(prog="python -m clogfs.demo", description=__doc__)
    parser.add_argument("--guest", action="store_true", help="the in-VM part (internal)")
    args = parser.parse_args(argv)
    if args.guest:
        if os.geteuid() != 0:
            print("demo --guest runs inside the VM as root", file=sys.stderr)
            return 1
        return guest_main()
    return host_main()


if __name__ == "__main__":
    sys.exit(main())
