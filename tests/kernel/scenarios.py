"""The kernel scenarios, guest side: run inside the QEMU VM, one result file per scenario.

Run as ``python tests/kernel/scenarios.py OUTDIR NAME...``. Each scenario drives real
dm-mirror tables with the ``userspace`` log and records what it observed (command exit
codes, outputs, status lines, decoded log devices) in ``OUTDIR/<NAME>.json``; the host-side
tests (``test_*.py`` here) assert on those files. A scenario that raises records its
traceback instead. Scenarios clean up after themselves so later ones start from nothing.
Names starting with ``crash_`` stop the machine and must come last.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from clogfs.disklog.format import (
    MIRROR_MAGIC,
    buffer_bytes,
    decode_bitmap,
    decode_header,
    dirty_ranges,
)
from clogfs.vm.guest import (
    Daemon,
    detach_loop,
    dev_number,
    dmesg,
    make_loop,
    mirror_status,
    sh,
    sync_counts,
    userspace_table,
    wait_until,
)

MIB = 1 << 20
REGION_SECTORS = 1024  # 512 KiB regions
REGION_BYTES = REGION_SECTORS * 512
SYNC_REGION_SECTORS = 128  # default_sync: 64 KiB regions, 1024 of them on 64 MiB
VIEW = Path("/run/clogfs")
Result = dict[str, Any]


class Context:
    """What scenarios share in one boot: the output directory and the running daemon."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.work = Path("/tmp/kvt")
        self.work.mkdir(parents=True, exist_ok=True)
        self.daemon: Daemon | None = None
        self.view = False

    def start_daemon(self) -> Daemon:
        """Start clogfsd (view at /run/clogfs when it can mount, else --no-mount)."""
        log_path = self.out / "clogfsd.log"
        try:
            self.daemon = Daemon(log_path, "--debug", "service", mount=str(VIEW))
            self.view = os.path.ismount(VIEW)
        except RuntimeError:
            self.daemon = Daemon(log_path, "--debug", "service")
            self.view = False
        return self.daemon

    def ensure_daemon(self) -> Daemon:
        """The running daemon, started (or restarted) when needed."""
        if self.daemon is None or not self.daemon.alive():
            return self.start_daemon()
        return self.daemon


@contextmanager
def loops(
    ctx: Context, tag: str, sizes: list[int], where: Path | None = None
) -> Iterator[list[str]]:
    """Loop devices over fresh files ``<where>/<tag>.<i>``; detached afterwards."""
    base = where or ctx.work
    devices: list[str] = []
    try:
        for i, size in enumerate(sizes):
            backing = base / f"{tag}.{i}"
            backing.unlink(missing_ok=True)
            devices.append(make_loop(backing, size))
        yield devices
    finally:
        for dev in devices:
            detach_loop(dev)


@contextmanager
def mirror(name: str, table: str, record: Result) -> Iterator[str]:
    """``dmsetup create``; on exit ``dmsetup remove`` (recorded as ``remove``)."""
    create = sh("dmsetup", "create", name, "--table", table, timeout=60)
    record["create"] = create.as_dict()
    if create.rc != 0:
        raise RuntimeError(f"dmsetup create {name} failed: {create.stderr.strip()}")
    try:
        yield f"/dev/mapper/{name}"
    finally:
        record["remove"] = sh("dmsetup", "remove", name, timeout=60).as_dict()


def dd_write(device: str, *, src: str, bs: int, count: int, seek: int) -> dict[str, Any]:
    """An O_DIRECT write of ``count`` blocks of ``bs`` bytes at block ``seek``."""
    return sh(
        "dd", f"if={src}", f"of={device}", f"bs={bs}", f"count={count}", f"seek={seek}",
        "skip=0", "oflag=direct", "conv=notrunc", "status=none", timeout=60,
    ).as_dict()  # fmt: skip


def read_bytes(path: str, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset``; block devices with O_DIRECT (no stale cache).

    Offsets and lengths are multiples of 512 here.
    """
    if not path.startswith("/dev/"):
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            return f.read(length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, max(length, mmap.PAGESIZE)) as buf:
            got = os.preadv(fd, [buf], offset)
            return bytes(buf[: min(got, length)])
    finally:
        os.close(fd)


def view_files(uuid: str) -> dict[str, str]:
    """Every small file of the log's view directories (``<uuid>`` and ``<uuid>@<luid>``)."""
    found: dict[str, str] = {}
    if not os.path.ismount(VIEW):
        return found
    for entry in sorted(VIEW.iterdir()):
        if entry.name == uuid or entry.name.startswith(f"{uuid}@"):
            for name in ("state", "status", "stats", "history", "dirty", "device_state"):
                try:
                    found[f"{entry.name}/{name}"] = (entry / name).read_text(errors="replace")
                except OSError as exc:
                    found[f"{entry.name}/{name}"] = f"ERROR {exc}"
    return found


def pattern(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes."""
    path.write_bytes(os.urandom(size))
    return path


def cmp_legs(a: str, b: str, length: int) -> dict[str, Any]:
    """``cmp`` the first ``length`` bytes of two legs."""
    return sh("cmp", "-n", str(length), a, b, timeout=60).as_dict()


# --- scenarios -------------------------------------------------------------------------------


def no_daemon(ctx: Context) -> Result:
    """No daemon listening: ``dmsetup create`` fails at once, dmesg says why."""
    r: Result = {"daemon_running": ctx.daemon is not None}
    with loops(ctx, "nodaemon", [16 * MIB, 16 * MIB]) as (a, b):
        table = userspace_table(
            sectors=16 * MIB // 512, uuid="KVT-NODAEMON", legs=[a, b], sync="nosync"
        )
        r["create"] = sh("dmsetup", "create", "kvt-nodaemon", "--table", table).as_dict()
        r["dmesg"] = dmesg()
        r["ls"] = sh("dmsetup", "ls").as_dict()
        if "kvt-nodaemon" in r["ls"]["stdout"]:
            sh("dmsetup", "remove", "kvt-nodaemon")
    return r


def core_nosync(ctx: Context) -> Result:
    """A nosync clustered-core mirror: O_DIRECT writes of several sizes, reads, status."""
    ctx.ensure_daemon()
    size = 64 * MIB
    r: Result = {"writes": [], "reads_match": []}
    src = pattern(ctx.work / "core.pattern", 4 * MIB)
    with loops(ctx, "core", [size, size]) as (a, b):
        table = userspace_table(sectors=size // 512, uuid="KVT-CORE", legs=[a, b], sync="nosync")
        r["table"] = table
        with mirror("kvt-core", table, r) as dev:
            # (block size, count, seek in blocks): one sector, a page, one region, across regions
            for bs, count, seek in ((512, 1, 7), (4096, 1, 1000), (REGION_BYTES, 1, 5),
                                    (MIB, 3, 20), (65536, 16, 700)):  # fmt: skip
                r["writes"].append(dd_write(dev, src=str(src), bs=bs, count=count, seek=seek))
                got = sh("dd", f"if={dev}", f"bs={bs}", f"count={count}", f"skip={seek}",
                         "iflag=direct", "status=none", f"of={ctx.work}/core.read",
                         timeout=60)  # fmt: skip
                expected = src.read_bytes()[: bs * count]
                r["reads_match"].append(
                    got.rc == 0 and (ctx.work / "core.read").read_bytes() == expected
                )
            r["status"] = mirror_status("kvt-core")
            r["view"] = view_files("KVT-CORE")
        r["cmp"] = cmp_legs(a, b, size)
    return r


def default_sync(ctx: Context) -> Result:
    """A default-sync mirror resyncs fully; a write ahead of the resync waits and lands."""
    ctx.ensure_daemon()
    size = 64 * MIB
    # Small regions (1024 of them) make the resync take many seconds under TCG, so the write
    # to the last region is certain to happen while the resync is still far from it.
    region_sectors = SYNC_REGION_SECTORS
    region_bytes = region_sectors * 512
    r: Result = {}
    src = pattern(ctx.work / "sync.pattern", region_bytes)
    with loops(ctx, "sync", [size, size]) as (a, b):
        sh("dd", "if=/dev/urandom", f"of={a}", "bs=1M", f"count={size // MIB}", "status=none",
           check=True, timeout=120)  # fmt: skip
        table = userspace_table(
            sectors=size // 512, uuid="KVT-SYNC", legs=[a, b], region_size_sectors=region_sectors
        )
        with mirror("kvt-sync", table, r) as dev:
            r["status_at_start"] = mirror_status("kvt-sync")
            last = size // region_bytes - 1  # resync runs upwards: the last region is last
            r["late_write"] = dd_write(dev, src=str(src), bs=region_bytes, count=1, seek=last)
            # Before the resync reaches it, the secondary already holds the write only if the
            # write waited for that region's recovery (else it went to the primary alone).
            r["late_write_on_secondary_at_once"] = (
                read_bytes(b, last * region_bytes, region_bytes) == src.read_bytes()
            )
            r["status_after_write"] = mirror_status("kvt-sync")
            r["view"] = view_files("KVT-SYNC")
            r["in_sync_reached"] = wait_until(
                lambda: (
                    (sync_counts(mirror_status("kvt-sync")) or (0, 1))[0] == size // region_bytes
                ),
                timeout=120,
                interval=0.5,
            )
            r["status_final"] = mirror_status("kvt-sync")
        r["cmp"] = cmp_legs(a, b, size)
        r["late_write_on_both_legs"] = [
            read_bytes(leg, last * region_bytes, region_bytes) == src.read_bytes() for leg in (a, b)
        ]
    return r


def decode_log(path: str, region_count: int) -> dict[str, Any]:
    """Read a log device and decode it with clogfs.disklog.format."""
    data = read_bytes(path, 0, buffer_bytes(region_count, 4096))
    header = decode_header(data)
    out: dict[str, Any] = {
        "magic_ok": header.magic == MIRROR_MAGIC,
        "version": header.version,
        "nr_regions": header.nr_regions,
    }
    if header.magic == MIRROR_MAGIC and header.nr_regions == region_count:
        out["dirty"] = [[rg.start, rg.stop] for rg in dirty_ranges(
            decode_bitmap(data, region_count), region_count)]  # fmt: skip
    return out


def disk_log(ctx: Context) -> Result:
    """A clustered-disk mirror on a loop log device; after removal the log is all clean."""
    ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {"writes": []}
    src = pattern(ctx.work / "disk.pattern", 2 * MIB)
    with loops(ctx, "disk", [size, size, MIB]) as (a, b, logdev):
        r["log_dev_number"] = dev_number(logdev)
        table = userspace_table(
            sectors=size // 512, uuid="KVT-DISK", legs=[a, b], log_device=logdev, sync="nosync"
        )
        with mirror("kvt-disk", table, r) as dev:
            for bs, count, seek in ((4096, 1, 3), (MIB, 2, 4)):
                r["writes"].append(dd_write(dev, src=str(src), bs=bs, count=count, seek=seek))
            r["status"] = mirror_status("kvt-disk")
            r["log_while_active"] = decode_log(logdev, size // REGION_BYTES)
            r["view"] = view_files("KVT-DISK")
        r["log_after_remove"] = decode_log(logdev, size // REGION_BYTES)
        r["cmp"] = cmp_legs(a, b, size)
    return r


def integrated_flush(ctx: Context) -> Result:
    """An integrated_flush table: writes work; the marks ride in FLUSH, no MARK_REGION."""
    daemon = ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {"writes": []}
    src = pattern(ctx.work / "iflush.pattern", MIB)
    log_start = len(daemon.log_text())
    with loops(ctx, "iflush", [size, size]) as (a, b):
        table = userspace_table(sectors=size // 512, uuid="KVT-IFLUSH", legs=[a, b],
                                sync="nosync", integrated_flush=True)  # fmt: skip
        r["table"] = table
        with mirror("kvt-iflush", table, r) as dev:
            for seek in (0, 3, 9):
                r["writes"].append(dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=seek))
            r["status"] = mirror_status("kvt-iflush")
            r["view"] = view_files("KVT-IFLUSH")
        r["cmp"] = cmp_legs(a, b, size)
    r["daemon_log"] = daemon.log_text()[log_start:]
    return r


def reload(ctx: Context) -> Result:
    """``dmsetup reload`` + suspend/resume: a second instance of the uuid, then a swap."""
    daemon = ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {}
    src = pattern(ctx.work / "reload.pattern", REGION_BYTES)
    log_start = len(daemon.log_text())
    with loops(ctx, "reload", [size, size]) as (a, b):
        table = userspace_table(sectors=size // 512, uuid="KVT-RELOAD", legs=[a, b], sync="nosync")
        with mirror("kvt-reload", table, r) as dev:
            r["write_before"] = dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=1)
            r["reload"] = sh("dmsetup", "reload", "kvt-reload", "--table", table).as_dict()
            r["view_both"] = view_files("KVT-RELOAD")
            r["suspend"] = sh("dmsetup", "suspend", "kvt-reload").as_dict()
            r["resume"] = sh("dmsetup", "resume", "kvt-reload").as_dict()
            r["view_after"] = view_files("KVT-RELOAD")
            r["write_after"] = dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=2)
            r["status"] = mirror_status("kvt-reload")
        r["cmp"] = cmp_legs(a, b, size)
    r["daemon_log"] = daemon.log_text()[log_start:]
    return r


def suspend_resume(ctx: Context) -> Result:
    """Suspend/resume cycles with writes in between."""
    ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {"cycles": []}
    src = pattern(ctx.work / "susp.pattern", REGION_BYTES)
    with loops(ctx, "susp", [size, size, MIB]) as (a, b, logdev):
        table = userspace_table(sectors=size // 512, uuid="KVT-SUSP", legs=[a, b],
                                log_device=logdev, sync="nosync")  # fmt: skip
        with mirror("kvt-susp", table, r) as dev:
            for i in range(5):
                r["cycles"].append({
                    "suspend": sh("dmsetup", "suspend", "kvt-susp").as_dict(),
                    "info": sh("dmsetup", "info", "-c", "--noheadings", "-o", "attr",
                               "kvt-susp").as_dict(),
                    "resume": sh("dmsetup", "resume", "kvt-susp").as_dict(),
                    "write": dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=i),
                })  # fmt: skip
            r["status"] = mirror_status("kvt-susp")
        r["log_after_remove"] = decode_log(logdev, size // REGION_BYTES)
        r["cmp"] = cmp_legs(a, b, size)
    return r


def daemon_restart(ctx: Context) -> Result:
    """clogfsd SIGKILLed under active core and disk mirrors, restarted: I/O continues."""
    daemon = ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {}
    src = pattern(ctx.work / "restart.pattern", REGION_BYTES)
    with ExitStack() as stack:
        a, b, c, d, logdev = stack.enter_context(
            loops(ctx, "restart", [size, size, size, size, MIB]))  # fmt: skip
        core = userspace_table(sectors=size // 512, uuid="KVT-RST-CORE", legs=[a, b],
                               sync="nosync")  # fmt: skip
        disk = userspace_table(sectors=size // 512, uuid="KVT-RST-DISK", legs=[c, d],
                               log_device=logdev, sync="nosync")  # fmt: skip
        r["core"], r["disk"] = {}, {}
        core_dev = stack.enter_context(mirror("kvt-rst-core", core, r["core"]))
        disk_dev = stack.enter_context(mirror("kvt-rst-disk", disk, r["disk"]))
        r["write_before"] = [
            dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=0)
            for dev in (core_dev, disk_dev)
        ]
        r["kill_status"] = daemon.kill()
        dmesg_before = len(dmesg())
        started = time.monotonic()
        daemon = ctx.start_daemon()
        r["restart_seconds"] = round(time.monotonic() - started, 3)
        r["write_after"] = [
            dd_write(dev, src=str(src), bs=REGION_BYTES, count=1, seek=seek)
            for dev, seek in ((core_dev, 3), (disk_dev, 5))
        ]
        r["status_after"] = [mirror_status("kvt-rst-core"), mirror_status("kvt-rst-disk")]
        r["dmesg_after_kill"] = dmesg()[dmesg_before:]
    r["cmp"] = [cmp_legs(a, b, size), cmp_legs(c, d, size)]
    return r


def log_failure(ctx: Context) -> Result:
    """The log device fails (dm-flakey, else the error target): status D; others still served."""
    ctx.ensure_daemon()
    size = 16 * MIB
    r: Result = {}
    src = pattern(ctx.work / "fail.pattern", REGION_BYTES)
    with loops(ctx, "fail", [size, size, MIB, size, size]) as (a, b, raw, c, d):
        log_sectors = MIB // 512
        r["log_table_ok"] = f"0 {log_sectors} linear {raw} 0"
        sh("dmsetup", "create", "kvt-faillog", "--table", r["log_table_ok"], check=True)
        logdev = "/dev/mapper/kvt-faillog"
        try:
            failing = userspace_table(sectors=size // 512, uuid="KVT-FAIL", legs=[a, b],
                                      log_device=logdev, sync="nosync")  # fmt: skip
            other = userspace_table(sectors=size // 512, uuid="KVT-OTHER", legs=[c, d],
                                    sync="nosync")  # fmt: skip
            r["failing"], r["other"] = {}, {}
            with mirror("kvt-fail", failing, r["failing"]) as fdev, \
                 mirror("kvt-other", other, r["other"]) as odev:  # fmt: skip
                r["write_healthy"] = dd_write(fdev, src=str(src), bs=REGION_BYTES, count=1, seek=0)
                r["status_healthy"] = mirror_status("kvt-fail")
                targets = sh("dmsetup", "targets").stdout
                r["log_table_bad"] = (
                    f"0 {log_sectors} flakey {raw} 0 0 1 1 error_writes"
                    if "flakey" in targets
                    else f"0 {log_sectors} error"
                )
                r["swap_log"] = [
                    sh("dmsetup", "reload", "kvt-faillog", "--table", r["log_table_bad"]).as_dict(),
                    sh("dmsetup", "suspend", "--nolockfs", "--noflush", "kvt-faillog").as_dict(),
                    sh("dmsetup", "resume", "kvt-faillog").as_dict(),
                ]
                r["write_failing"] = dd_write(fdev, src=str(src), bs=REGION_BYTES, count=1, seek=4)
                r["status_failed"] = mirror_status("kvt-fail")
                r["write_other"] = dd_write(odev, src=str(src), bs=REGION_BYTES, count=1, seek=2)
                r["status_other"] = mirror_status("kvt-other")
                r["view"] = view_files("KVT-FAIL")
            r["cmp_other"] = cmp_legs(c, d, size)
        finally:
            r["remove_log"] = sh("dmsetup", "remove", "kvt-faillog").as_dict()
    return r


CRASH_SIZE = 16 * MIB


def crash_writes(ctx: Context) -> Result:
    """A disk mirror whose legs and log live in the share; the VM stops hard mid-writes.

    Writes its result file first: the machine is gone when this "returns".
    """
    daemon = ctx.ensure_daemon()
    r: Result = {}
    where = ctx.out / "crash"
    where.mkdir(exist_ok=True)
    a = make_loop(where / "leg.0", CRASH_SIZE)
    b = make_loop(where / "leg.1", CRASH_SIZE)
    logdev = make_loop(where / "log", MIB)
    regions = CRASH_SIZE // REGION_BYTES
    table = userspace_table(sectors=CRASH_SIZE // 512, uuid="KVT-CRASH", legs=[a, b],
                            log_device=logdev)  # fmt: skip
    create = sh("dmsetup", "create", "kvt-crash", "--table", table, timeout=60)
    r["create"] = create.as_dict()
    if create.rc != 0:
        raise RuntimeError(f"dmsetup create kvt-crash failed: {create.stderr.strip()}")
    r["resynced"] = wait_until(
        lambda: sync_counts(mirror_status("kvt-crash")) == (regions, regions),
        timeout=120, interval=0.5,
    )  # fmt: skip
    writer = (
        f"while :; do for i in $(seq 0 {regions - 1}); do "
        f"dd if=/dev/urandom of=/dev/mapper/kvt-crash bs={REGION_BYTES} count=1 seek=$i "
        "oflag=direct status=none; done; done"
    )
    subprocess.Popen(["sh", "-c", writer])
    seen: list[list[int]] = []

    def dirty_on_disk() -> bool:
        found = decode_log(str(where / "log"), regions).get("dirty", [])
        seen[:] = found
        return bool(found)

    def frozen_dirty() -> bool:
        # Between two writes the kernel clears the region and clogfsd writes the clean bit
        # (lazily, R2), so the on-disk log is briefly all clean. Stop the daemon (the log's only
        # writer) once a dirty region is on disk, let a write already submitted land, and stop
        # the machine only if the frozen log still shows a dirty region.
        if not dirty_on_disk():
            return False
        daemon.process.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        if dirty_on_disk():
            return True
        daemon.process.send_signal(signal.SIGCONT)
        return False

    r["dirty_seen_before_stop"] = wait_until(frozen_dirty, timeout=60, interval=0.05)
    r["dirty_regions_seen"] = seen
    (ctx.out / "crash_writes.json").write_text(json.dumps(r, indent=1))
    os.sync()
    Path("/proc/sysrq-trigger").write_text("b")  # reboot now, no sync: QEMU exits (-no-reboot)
    time.sleep(60)
    raise RuntimeError("the machine did not stop")


def crash_recover(ctx: Context) -> Result:
    """Second boot on the crashed images: dirty regions resync, clean ones are trusted.

    Before activation, leg 1 is overwritten in one dirty and one clean region; after the
    resync the dirty one matches leg 0 again and the clean one still differs.
    """
    ctx.ensure_daemon()
    r: Result = {}
    where = ctx.out / "crash"
    regions = CRASH_SIZE // REGION_BYTES
    r["log_before"] = decode_log(str(where / "log"), regions)
    dirty = [i for lo, hi in r["log_before"].get("dirty", []) for i in range(lo, hi)]
    clean = [i for i in range(regions) if i not in dirty]
    r["corrupted_dirty"] = dirty[0] if dirty else None
    r["corrupted_clean"] = clean[-1] if clean else None
    junk = b"\xa5" * REGION_BYTES
    with open(where / "leg.1", "r+b") as f:
        for region in (r["corrupted_dirty"], r["corrupted_clean"]):
            if region is not None:
                f.seek(region * REGION_BYTES)
                f.write(junk)
    a = make_loop(where / "leg.0", CRASH_SIZE)
    b = make_loop(where / "leg.1", CRASH_SIZE)
    logdev = make_loop(where / "log", MIB)
    try:
        table = userspace_table(sectors=CRASH_SIZE // 512, uuid="KVT-CRASH", legs=[a, b],
                                log_device=logdev)  # fmt: skip
        with mirror("kvt-crash", table, r):
            r["status_at_start"] = mirror_status("kvt-crash")
            r["in_sync_reached"] = wait_until(
                lambda: sync_counts(mirror_status("kvt-crash")) == (regions, regions),
                timeout=120, interval=0.5,
            )  # fmt: skip
            r["status_final"] = mirror_status("kvt-crash")
        r["log_after_remove"] = decode_log(logdev, regions)
        r["legs_equal"] = {
            str(region): read_bytes(a, region * REGION_BYTES, REGION_BYTES)
            == read_bytes(b, region * REGION_BYTES, REGION_BYTES)
            for region in (r["corrupted_dirty"], r["corrupted_clean"])
            if region is not None
        }
    finally:
        for dev in (a, b, logdev):
            detach_loop(dev)
    return r


SCENARIOS: dict[str, Callable[[Context], Result]] = {
    fn.__name__: fn
    for fn in (no_daemon, core_nosync, default_sync, disk_log, integrated_flush, reload,
               suspend_resume, daemon_restart, log_failure, crash_writes, crash_recover)
}  # fmt: skip


def main(argv: list[str]) -> int:
    """Run the named scenarios in order; write ``<name>.json`` for each."""
    out = Path(argv[0])
    ctx = Context(out)
    failed = 0
    try:
        for name in argv[1:]:
            started = time.monotonic()
            try:
                result = SCENARIOS[name](ctx)
            except Exception:
                result = {"error": traceback.format_exc()}
                failed += 1
            result["seconds"] = round(time.monotonic() - started, 3)
            (out / f"{name}.json").write_text(json.dumps(result, indent=1))
            print(f"scenario {name}: {'error' if 'error' in result else 'done'}", flush=True)
    finally:
        if ctx.daemon is not None:
            ctx.daemon.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
