"""clustered-disk logs through a real clogfsd: the bytes on the log device, load, failures.

Every disk check reads the log device back with an O_DIRECT read and decodes it with the
small decoder below, written from the kernel's layout (``drivers/md/dm-log.c``) and not from
``clogfs.disklog.format``: ``struct log_header_disk`` (``<IIQ`` magic, version, nr_regions) at
byte 0, the clean bitmap at byte 1024 with region ``r`` at bit ``r % 8`` of byte ``r // 8``
(1 = clean). Images for the load tests are built with the matching encoder.

Log devices are image files under ``tmp_path`` and loop devices over such files (always
detached). failfs (``tests/disklog/failfs.py``) makes writes or cache flushes fail.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from clogfs.netlink.emulator import KernelEmulator, open_kernel_emulator
from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import Protocol, Reply
from tests.disklog.failfs import SetFail, failing_image, fuse_available
from tests.integration.harness import Daemon, run_clogfsd

pytestmark = pytest.mark.root

REGION_SECTORS = 1024
COUNT = 128  # regions of the default test mirror
TARGET = COUNT * REGION_SECTORS  # sectors
IMAGE_BYTES = 1 << 20
BLOCK = 4096  # every read and crafted write: a multiple of any logical block size here

# --- an independent decoder and encoder of the kernel's disk log layout ----------------------

# struct log_header_disk, drivers/md/dm-log.c: __le32 magic, __le32 version, __le64 nr_regions
KERNEL_HEADER = struct.Struct("<IIQ")
KERNEL_MAGIC = 0x4D695272  # MIRROR_MAGIC, "MiRr"
KERNEL_BITMAP_AT = 1024  # LOG_OFFSET: 2 sectors


def bitset_len(nr_regions: int) -> int:
    """The bitmap's length in bytes: whole 64-bit words (BITS_PER_LONG on 64-bit kernels)."""
    return (nr_regions + 63) // 64 * 8


@dataclass(frozen=True)
class OnDisk:
    """A decoded log device: the header and the clean bitmap bytes (``bitset_len`` of a count)."""

    magic: int
    version: int
    nr_regions: int
    bitmap: bytes
    raw: bytes

    def clean(self, region: int) -> bool:
        return bool(self.bitmap[region // 8] >> (region % 8) & 1)

    def dirty_regions(self, count: int) -> set[int]:
        return {r for r in range(count) if not self.clean(r)}


def decode_disk(raw: bytes, count: int) -> OnDisk:
    magic, version, nr_regions = KERNEL_HEADER.unpack_from(raw, 0)
    bitmap = raw[KERNEL_BITMAP_AT : KERNEL_BITMAP_AT + bitset_len(count)]
    return OnDisk(magic, version, nr_regions, bitmap, raw)


def encode_disk(
    nr_regions: int,
    clean: Iterable[int],
    *,
    magic: int = KERNEL_MAGIC,
    version: int = 2,
    bitmap_bytes: int | None = None,
    filler: int = 0,
) -> bytes:
    """A whole 4 KiB-rounded log buffer; bytes 16-1023 and the tail filled with ``filler``."""
    nbytes = bitmap_bytes if bitmap_bytes is not None else bitset_len(nr_regions)
    size = -(-(KERNEL_BITMAP_AT + nbytes) // BLOCK) * BLOCK
    buf = bytearray([filler]) * size
    KERNEL_HEADER.pack_into(buf, 0, magic, version, nr_regions)
    buf[KERNEL_BITMAP_AT : KERNEL_BITMAP_AT + nbytes] = bytes(nbytes)
    for r in clean:
        buf[KERNEL_BITMAP_AT + r // 8] |= 1 << (r % 8)
    return bytes(buf)


def read_direct(path: Path, nbytes: int = BLOCK) -> bytes:
    """``nbytes`` from offset 0 with one aligned O_DIRECT read (what the device holds)."""
    nbytes = -(-nbytes // BLOCK) * BLOCK
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    buf = mmap.mmap(-1, nbytes)
    try:
        got = os.preadv(fd, [buf], 0)
        assert got == nbytes
        return bytes(buf)
    finally:
        buf.close()
        os.close(fd)


def write_direct(path: Path, data: bytes) -> None:
    """Write ``data`` (a multiple of 4096 bytes) at offset 0 with O_DIRECT, then fdatasync."""
    assert len(data) % BLOCK == 0
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    buf = mmap.mmap(-1, len(data))
    try:
        buf[:] = data
        assert os.pwritev(fd, [buf], 0) == len(data)
        os.fdatasync(fd)
    finally:
        buf.close()
        os.close(fd)


def dev_str(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


# --- log devices -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogDev:
    """A log device for one test.

    Attributes:
        word: the CTR word naming it (a path for an image file, ``maj:min`` for a loop device).
        path: where the test reads and writes it.
        reply_name: the expected CTR reply name (without NUL).
        dev_number: the ``maj:min`` expected in STATUS_INFO.
    """

    word: str
    path: Path
    reply_name: str
    dev_number: str


def make_image(path: Path, size_bytes: int = IMAGE_BYTES) -> Path:
    with path.open("wb") as f:
        f.truncate(size_bytes)
    return path


def image_dev(path: Path) -> LogDev:
    return LogDev(str(path), path, str(path), dev_str(path.stat().st_dev))


def attach_loop(backing: Path) -> Path:
    """``losetup -f --show backing`` (retried: another process may take the free device)."""
    if shutil.which("losetup") is None:
        pytest.skip("needs losetup (util-linux)")
    result = None
    for _ in range(5):
        result = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            device = Path(result.stdout.strip())
            deadline = time.monotonic() + 10
            while not device.exists():  # devtmpfs makes a new node asynchronously
                assert time.monotonic() < deadline, f"{device} did not appear"
                time.sleep(0.01)
            return device
    assert result is not None
    pytest.skip(f"cannot set up a loop device: {result.stderr.strip()}")


def detach_loop(device: Path) -> None:
    subprocess.run(["losetup", "-d", str(device)], check=True)


@pytest.fixture
def loop_dev(tmp_path: Path) -> Iterator[LogDev]:
    device = attach_loop(make_image(tmp_path / "loop-backing.img"))
    try:
        number = dev_str(device.stat().st_rdev)
        yield LogDev(number, device, number, number)
    finally:
        detach_loop(device)


@pytest.fixture(params=["image", "loop"])
def logdev(request: pytest.FixtureRequest, tmp_path: Path) -> LogDev:
    """An image file or a loop device, 1 MiB, zero-filled."""
    if request.param == "loop":
        return request.getfixturevalue("loop_dev")  # type: ignore[no-any-return]
    return image_dev(make_image(tmp_path / "log.img"))


# --- the daemon, restartable -----------------------------------------------------------------


class DiskRig:
    """A kernel emulator and a clogfsd that a test may SIGKILL and start again."""

    def __init__(self, emu: KernelEmulator, tmp: Path) -> None:
        self.emu = emu
        self.tmp = tmp
        self.starts = 0
        self._cm: AbstractAsyncContextManager[Daemon] | None = None
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None
        return self._daemon

    @property
    def protocol(self) -> Protocol:
        return self.emu.protocol

    async def start(self) -> Daemon:
        assert self._cm is None
        self._cm = run_clogfsd(self.tmp / f"d{self.starts}", kernel_port=self.emu.port_id)
        self.starts += 1
        self._daemon = await self._cm.__aenter__()
        return self._daemon

    async def kill(self) -> None:
        """SIGKILL the daemon and wait until it is gone."""
        assert self._cm is not None
        self.daemon.signal(signal.SIGKILL)
        await self.daemon.wait()
        cm, self._cm = self._cm, None
        await cm.__aexit__(None, None, None)

    async def stop(self) -> None:
        if self._cm is not None:
            await self.kill()


@pytest.fixture
async def disk_rig(tmp_path: Path, protocol: Protocol) -> AsyncIterator[DiskRig]:
    async with open_kernel_emulator(protocol) as emu:
        rig = DiskRig(emu, tmp_path)
        await rig.start()
        try:
            yield rig
        finally:
            await rig.stop()


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


class Log:
    """One clustered-disk log as the kernel would drive it."""

    def __init__(
        self,
        rig: DiskRig,
        uuid: bytes,
        dev: LogDev,
        *,
        flag: str | None = "nosync",
        luid: int = 1,
        target: int = TARGET,
    ) -> None:
        self.rig = rig
        self.uuid = uuid
        self.dev = dev
        self.flag = flag
        self.luid = luid
        self.target = target
        self.count = -(-target // REGION_SECTORS)

    def ctr_string(self) -> bytes:
        flags = [self.flag] if self.flag else []
        if self.rig.protocol is Protocol.ULOG:
            words = [str(self.target), "clustered-disk", self.dev.word, str(REGION_SECTORS)]
            return " ".join([*words, *flags]).encode()
        words = [self.dev.word, str(REGION_SECTORS), self.uuid.decode(), *flags, str(self.target)]
        return " ".join(words).encode()

    async def request(self, rtype: T, data: bytes = b"", **kwargs: int) -> Reply:
        return await self.rig.emu.request(rtype, self.uuid, luid=self.luid, data=data, **kwargs)

    async def ok(self, rtype: T, data: bytes = b"") -> bytes:
        reply = await self.request(rtype, data)
        assert reply.error == 0, (rtype.name, reply.error, self.rig.daemon.stderr())
        return reply.data

    async def ctr(self, **kwargs: int) -> Reply:
        return await self.request(T.CTR, self.ctr_string(), **kwargs)

    async def create(self) -> None:
        reply = await self.ctr()
        assert reply.error == 0, self.rig.daemon.stderr()
        await self.ok(T.RESUME)

    async def mark(self, *regions: int) -> None:
        for r in regions:  # take 5 carries exactly one region per MARK
            await self.ok(T.MARK_REGION, u64(r))

    async def clear(self, *regions: int) -> None:
        for r in regions:
            await self.ok(T.CLEAR_REGION, u64(r))

    async def flush(self) -> int:
        return (await self.request(T.FLUSH)).error

    def _bool(self, data: bytes) -> bool:
        fmt = "=q" if self.rig.protocol is Protocol.ULOG else "=i"
        assert len(data) == struct.calcsize(fmt)
        value: int = struct.unpack(fmt, data)[0]
        assert value in (0, 1)
        return bool(value)

    async def in_sync(self, region: int) -> bool:
        return self._bool(await self.ok(T.IN_SYNC, u64(region)))

    async def is_clean(self, region: int) -> bool:
        return self._bool(await self.ok(T.IS_CLEAN, u64(region)))

    async def sync_count(self) -> int:
        value: int = struct.unpack("=Q", await self.ok(T.GET_SYNC_COUNT))[0]
        return value

    async def status(self) -> bytes:
        return await self.ok(T.STATUS_INFO)

    async def resync_work(self) -> list[int]:
        """Every region GET_RESYNC_WORK hands out, each then reported in sync."""
        handed: list[int] = []
        for _ in range(self.count + 1):
            i, region = struct.unpack("=qQ", await self.ok(T.GET_RESYNC_WORK))
            if not i:
                return handed
            handed.append(region)
            await self.ok(T.SET_REGION_SYNC, u64(region) + struct.pack("=q", 1))
        raise AssertionError(f"more resync work than regions: {handed}")

    async def suspend(self) -> None:
        await self.ok(T.PRESUSPEND)
        await self.ok(T.POSTSUSPEND)

    def on_disk(self) -> OnDisk:
        return decode_disk(
            read_direct(self.dev.path, KERNEL_BITMAP_AT + bitset_len(self.count)), self.count
        )


def all_clean(count: int) -> bytes:
    bits = bytearray(bitset_len(count))
    for r in range(count):
        bits[r // 8] |= 1 << (r % 8)
    return bytes(bits)


# --- CTR, RESUME, MARK/CLEAR/FLUSH, STATUS ---------------------------------------------------


async def test_resume_writes_header_and_clean_bitmap(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-HDR-1", logdev)
    await log.create()
    disk = log.on_disk()
    assert (disk.magic, disk.version, disk.nr_regions) == (KERNEL_MAGIC, 2, COUNT)
    assert disk.bitmap == all_clean(COUNT)
    assert disk.raw[KERNEL_BITMAP_AT + bitset_len(COUNT) :] == bytes(
        len(disk.raw) - KERNEL_BITMAP_AT - bitset_len(COUNT)
    )


async def test_resume_of_a_blank_device_without_flag_is_all_dirty(
    disk_rig: DiskRig, tmp_path: Path
) -> None:
    log = Log(disk_rig, b"DISK-BLANK-1", image_dev(make_image(tmp_path / "log.img")), flag=None)
    await log.create()
    disk = log.on_disk()
    assert (disk.magic, disk.nr_regions) == (KERNEL_MAGIC, COUNT)
    assert disk.dirty_regions(COUNT) == set(range(COUNT))
    assert await log.sync_count() == 0


async def test_mark_flush_makes_region_dirty_on_disk(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-MARK-1", logdev)
    await log.create()
    await log.mark(9, 100)
    assert log.on_disk().dirty_regions(COUNT) == set()  # MARK alone needs no I/O (R1)
    assert await log.flush() == 0
    assert log.on_disk().dirty_regions(COUNT) == {9, 100}


@pytest.mark.mainline_only("take 5 has no integrated flush")
async def test_integrated_flush_payload_is_dirty_on_disk(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-IFL-1", logdev)
    await log.create()
    assert (await log.request(T.FLUSH, u64(3) + u64(77))).error == 0
    assert log.on_disk().dirty_regions(COUNT) == {3, 77}


async def test_clear_flush_clean_on_disk_by_postsuspend(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-CLR-1", logdev)
    await log.create()
    await log.mark(4, 5)
    assert await log.flush() == 0
    await log.clear(4)
    assert await log.flush() == 0
    await log.suspend()
    assert log.on_disk().dirty_regions(COUNT) == {5}


async def test_clear_without_flush_is_written_at_postsuspend(
    logdev: LogDev, disk_rig: DiskRig
) -> None:
    log = Log(disk_rig, b"DISK-CLR-2", logdev)
    await log.create()
    await log.mark(12)
    assert await log.flush() == 0
    await log.clear(12)
    await log.suspend()  # R5: POSTSUSPEND writes what is pending
    assert log.on_disk().dirty_regions(COUNT) == set()


async def test_clear_without_flush_is_written_at_dtr(disk_rig: DiskRig, tmp_path: Path) -> None:
    log = Log(disk_rig, b"DISK-CLR-3", image_dev(make_image(tmp_path / "log.img")))
    await log.create()
    await log.mark(1)
    assert await log.flush() == 0
    await log.clear(1)
    await log.ok(T.DTR)  # a still-resumed writer commits before the DTR reply
    assert log.on_disk().dirty_regions(COUNT) == set()


async def test_status_info(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-STAT-1", logdev)
    await log.create()
    assert await log.status() == f"3 clustered-disk {logdev.dev_number} A\0".encode()


async def test_status_info_before_resume(disk_rig: DiskRig, tmp_path: Path) -> None:
    dev = image_dev(make_image(tmp_path / "log.img"))
    log = Log(disk_rig, b"DISK-STAT-2", dev)
    assert (await log.ctr()).error == 0
    assert await log.status() == f"3 clustered-disk {dev.dev_number} A\0".encode()
    assert read_direct(dev.path) == bytes(BLOCK)  # a never-resumed instance never writes (R8)


# --- CTR reply (protocol.md §5.3) ------------------------------------------------------------


async def test_ctr_reply_names_the_device(logdev: LogDev, disk_rig: DiskRig) -> None:
    reply = await Log(disk_rig, b"DISK-CTR-1", logdev).ctr()
    assert reply.error == 0
    if disk_rig.protocol is Protocol.TAKE5:
        assert reply.data == b""
    else:
        assert reply.data == logdev.reply_name.encode() + b"\0"


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.mainline_only("the version field is mainline only")
async def test_ctr_reply_empty_for_ulog_version_1(
    disk_rig: DiskRig, tmp_path: Path, version: int
) -> None:
    log = Log(disk_rig, b"DISK-CTR-2", image_dev(make_image(tmp_path / "log.img")))
    reply = await log.ctr(version=version)
    assert (reply.error, reply.data) == (0, b"")


@pytest.mark.mainline_only("take 5 sends the same CTR bytes on reconnect")
async def test_ctr_reply_empty_for_reconnect_ctr(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-CTR-3", logdev)
    reply = await log.request(T.CTR, log.ctr_string() + b"\0")  # NUL counted: reconnect
    assert (reply.error, reply.data) == (0, b"")
    await log.ok(T.RESUME)
    assert log.on_disk().nr_regions == COUNT


@pytest.mark.mainline_only("take 5 cannot tell a reconnect from a reload")
async def test_reconnect_ctr_of_a_live_log_succeeds_without_payload(
    disk_rig: DiskRig, tmp_path: Path
) -> None:
    log = Log(disk_rig, b"DISK-CTR-4", image_dev(make_image(tmp_path / "log.img")))
    await log.create()
    reply = await log.request(T.CTR, log.ctr_string() + b"\0")
    assert (reply.error, reply.data) == (0, b"")


async def test_ctr_device_too_small_image(disk_rig: DiskRig, tmp_path: Path) -> None:
    log = Log(disk_rig, b"DISK-SMALL-1", image_dev(make_image(tmp_path / "small.img", 2048)))
    reply = await log.ctr()
    assert (reply.error, reply.data) == (-errno.EINVAL, b"")
    await disk_rig.daemon.wait_for_log("too small: need 4096 bytes")


async def test_ctr_device_too_small_loop(loop_dev: LogDev, disk_rig: DiskRig) -> None:
    target = (1 << 24) * REGION_SECTORS  # 2**24 regions: a 2 MiB bitmap on a 1 MiB device
    log = Log(disk_rig, b"DISK-SMALL-2", loop_dev, target=target)
    reply = await log.ctr()
    assert reply.error == -errno.EINVAL
    need = KERNEL_BITMAP_AT + bitset_len(1 << 24)  # 512-byte blocks: no rounding here
    await disk_rig.daemon.wait_for_log(f"log device {loop_dev.dev_number} too small: need {need}")


async def test_ctr_missing_device_fails(disk_rig: DiskRig, tmp_path: Path) -> None:
    log = Log(disk_rig, b"DISK-MISS-1", image_dev(make_image(tmp_path / "x.img")))
    log.dev = LogDev(str(tmp_path / "absent.img"), tmp_path / "absent.img", "", "")
    reply = await log.ctr()
    assert reply.error == -errno.ENOENT
    assert (await log.request(T.IN_SYNC, u64(0))).error == -errno.ESRCH


# --- load semantics (disk-format.md §3) ------------------------------------------------------


async def test_dirty_regions_come_back_out_of_sync_after_restart(
    logdev: LogDev, disk_rig: DiskRig
) -> None:
    log = Log(disk_rig, b"DISK-RESTART-1", logdev)
    await log.create()
    await log.mark(2, 50, 127)
    assert await log.flush() == 0
    await disk_rig.kill()
    await disk_rig.start()
    assert (await log.request(T.IN_SYNC, u64(2))).error == -errno.ESRCH  # unknown: reconnect
    log.flag = None  # the table without sync/nosync keeps the disk bitmap
    await log.create()
    assert [await log.in_sync(r) for r in (1, 2, 3, 50, 127)] == [True, False, True, False, False]
    assert await log.sync_count() == COUNT - 3
    assert log.on_disk().dirty_regions(COUNT) == {2, 50, 127}
    assert await log.resync_work() == [2, 50, 127]
    assert await log.sync_count() == COUNT


async def test_crafted_image_loads_its_dirty_regions(logdev: LogDev, disk_rig: DiskRig) -> None:
    dirty = {0, 63, 64, 127}
    write_direct(logdev.path, encode_disk(COUNT, set(range(COUNT)) - dirty))
    log = Log(disk_rig, b"DISK-LOAD-1", logdev, flag=None)
    await log.create()
    assert await log.sync_count() == COUNT - len(dirty)
    assert [await log.in_sync(r) for r in (0, 1, 63, 64, 65, 127)] == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    assert sorted(await log.resync_work()) == sorted(dirty)
    assert log.on_disk().dirty_regions(COUNT) == dirty


async def test_sync_flag_makes_a_new_log(disk_rig: DiskRig, tmp_path: Path) -> None:
    dev = image_dev(make_image(tmp_path / "log.img"))
    write_direct(dev.path, encode_disk(COUNT, range(COUNT)))
    log = Log(disk_rig, b"DISK-SYNC-1", dev, flag="sync")
    await log.create()
    assert await log.sync_count() == 0
    assert log.on_disk().dirty_regions(COUNT) == set(range(COUNT))


async def test_nosync_flag_makes_a_new_log(disk_rig: DiskRig, tmp_path: Path) -> None:
    dev = image_dev(make_image(tmp_path / "log.img"))
    write_direct(dev.path, encode_disk(COUNT, range(0, COUNT, 2)))
    log = Log(disk_rig, b"DISK-NOSYNC-1", dev, flag="nosync")
    await log.create()
    assert await log.sync_count() == COUNT
    assert log.on_disk().bitmap == all_clean(COUNT)


async def test_growth_adds_dirty_regions(logdev: LogDev, disk_rig: DiskRig) -> None:
    write_direct(logdev.path, encode_disk(64, range(64)))
    log = Log(disk_rig, b"DISK-GROW-1", logdev, flag=None)  # 128 regions now
    await log.create()
    assert await log.sync_count() == 64
    assert (await log.in_sync(63), await log.in_sync(64)) == (True, False)
    disk = log.on_disk()
    assert disk.nr_regions == COUNT
    assert disk.dirty_regions(COUNT) == set(range(64, COUNT))


async def test_shrink_keeps_the_prefix_and_clears_the_tail(
    disk_rig: DiskRig, tmp_path: Path
) -> None:
    dev = image_dev(make_image(tmp_path / "log.img"))
    old = encode_disk(256, set(range(256)) - {5, 99, 200}, filler=0xA5)
    write_direct(dev.path, old)
    log = Log(disk_rig, b"DISK-SHRINK-1", dev, flag=None, target=100 * REGION_SECTORS)
    await log.create()
    assert log.count == 100
    assert await log.sync_count() == 98
    disk = log.on_disk()
    assert disk.nr_regions == 100
    assert disk.dirty_regions(100) == {5, 99}
    assert disk.bitmap[12:16] == bytes([0x07, 0, 0, 0])  # regions 96-98 clean, 99-127 cleared
    raw = read_direct(dev.path)
    assert raw[16:KERNEL_BITMAP_AT] == old[16:KERNEL_BITMAP_AT]  # never rewritten
    assert raw[KERNEL_BITMAP_AT + 16 :] == old[KERNEL_BITMAP_AT + 16 :]  # tail as read


async def test_version_1_image_is_read_as_2(logdev: LogDev, disk_rig: DiskRig) -> None:
    write_direct(logdev.path, encode_disk(COUNT, set(range(COUNT)) - {7}, version=1))
    log = Log(disk_rig, b"DISK-V1-1", logdev, flag=None)
    await log.create()
    assert (await log.in_sync(7), await log.in_sync(8)) == (False, True)
    disk = log.on_disk()
    assert (disk.version, disk.dirty_regions(COUNT)) == (2, {7})
    assert (await log.status()).endswith(b" A\0")


async def test_bad_magic_makes_a_new_log(logdev: LogDev, disk_rig: DiskRig) -> None:
    write_direct(logdev.path, encode_disk(COUNT, range(COUNT), magic=0x4D695273))
    log = Log(disk_rig, b"DISK-MAGIC-1", logdev, flag=None)
    await log.create()
    assert await log.sync_count() == 0
    disk = log.on_disk()
    assert (disk.magic, disk.version, disk.nr_regions) == (KERNEL_MAGIC, 2, COUNT)
    assert disk.dirty_regions(COUNT) == set(range(COUNT))


async def test_unknown_version_fails_the_device(disk_rig: DiskRig, tmp_path: Path) -> None:
    dev = image_dev(make_image(tmp_path / "log.img"))
    write_direct(dev.path, encode_disk(COUNT, range(COUNT), version=3))
    log = Log(disk_rig, b"DISK-V3-1", dev, flag=None)
    await log.create()  # the write works: RESUME gets 0
    assert await log.sync_count() == 0
    assert (await log.status()).endswith(b" D\0")
    disk = log.on_disk()
    assert (disk.version, disk.nr_regions) == (2, COUNT)
    await disk_rig.daemon.wait_for_log("incompatible disk log version")


# --- sharing a log device --------------------------------------------------------------------


async def test_second_uuid_on_the_same_device_is_refused(logdev: LogDev, disk_rig: DiskRig) -> None:
    first = Log(disk_rig, b"DISK-SHARE-A", logdev)
    await first.create()
    second = Log(disk_rig, b"DISK-SHARE-B", logdev, luid=2)
    reply = await second.ctr()
    assert reply.error < 0
    assert (await second.request(T.IN_SYNC, u64(0))).error == -errno.ESRCH
    await first.mark(3)
    assert await first.flush() == 0  # the first log keeps its device
    assert first.on_disk().dirty_regions(COUNT) == {3}


async def test_table_reload_shares_the_device_and_its_state(
    logdev: LogDev, disk_rig: DiskRig
) -> None:
    write_direct(logdev.path, encode_disk(COUNT, range(COUNT)))
    old = Log(disk_rig, b"DISK-RELOAD-1", logdev, flag=None, luid=1)
    await old.create()
    await old.mark(5, 6)
    assert await old.flush() == 0
    await old.clear(6)  # pending, written by the old instance's POSTSUSPEND
    new = Log(disk_rig, b"DISK-RELOAD-1", logdev, flag=None, luid=2)
    assert (await new.ctr()).error == 0
    await old.ok(T.PRESUSPEND)
    await old.ok(T.POSTSUSPEND)
    await new.ok(T.RESUME)
    await old.ok(T.DTR)
    assert (await new.in_sync(5), await new.in_sync(6)) == (False, True)
    assert await new.sync_count() == COUNT - 1
    await new.mark(40)
    assert await new.flush() == 0  # the shared device is still open for the new instance
    assert new.on_disk().dirty_regions(COUNT) == {5, 40}


# --- group commit ----------------------------------------------------------------------------


def loop_write_ios(device: Path) -> int:
    """Completed write requests of a block device (field 5 of ``/sys/block/<dev>/stat``)."""
    return int((Path("/sys/block") / device.name / "stat").read_text().split()[4])


async def test_concurrent_flushes_all_durable(logdev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-GROUP-1", logdev)
    await log.create()
    results: dict[int, int] = {}

    async def writer(region: int) -> None:
        await log.mark(region)
        results[region] = await log.flush()

    regions = range(10, 10 + 16 * 7, 7)
    async with trio.open_nursery() as nursery:
        for r in regions:
            nursery.start_soon(writer, r)
    assert results == dict.fromkeys(regions, 0)
    assert log.on_disk().dirty_regions(COUNT) == set(regions)


async def test_flushes_in_flight_share_writes(loop_dev: LogDev, disk_rig: DiskRig) -> None:
    log = Log(disk_rig, b"DISK-GROUP-2", loop_dev)
    await log.create()
    regions = range(32)
    await log.mark(*regions)
    before = loop_write_ios(loop_dev.path)
    results: list[int] = []

    async def flusher() -> None:
        results.append(await log.flush())

    async with trio.open_nursery() as nursery:
        for _ in regions:
            nursery.start_soon(flusher)
    writes = loop_write_ios(loop_dev.path) - before
    assert results == [0] * len(regions)
    assert 1 <= writes < len(regions)  # R6: one write answers many FLUSHes; R3: no-op FLUSHes
    assert log.on_disk().dirty_regions(COUNT) == set(regions)


# --- log device failures (disk-format.md §6) -------------------------------------------------


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[tuple[LogDev, SetFail]]:
    if not fuse_available():
        pytest.skip("needs root and /dev/fuse")
    with failing_image(tmp_path / "failfs", size_bytes=IMAGE_BYTES) as (image, set_fail):
        dev = image_dev(image)
        yield (
            LogDev(dev.word, tmp_path / "failfs" / "backing.img", dev.reply_name, dev.dev_number),
            set_fail,
        )


def count_lines(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


async def _fail_then_recover(
    disk_rig: DiskRig,
    failing: tuple[LogDev, SetFail],
    tmp_path: Path,
    fail: Callable[[SetFail, bool], None],
    letter: bytes,
    message: str,
) -> None:
    dev, set_fail = failing
    log = Log(disk_rig, b"DISK-FAIL-1", dev)
    other = Log(disk_rig, b"DISK-FINE-1", image_dev(make_image(tmp_path / "fine.img")), luid=2)
    await log.create()
    await other.create()
    alive = f"3 clustered-disk {dev.dev_number} A\0".encode()
    assert await log.status() == alive

    fail(set_fail, True)
    await log.mark(8)
    assert await log.flush() == -errno.EIO
    assert (await log.status()).endswith(letter + b"\0")
    await log.mark(9)
    assert await log.flush() == -errno.EIO  # every FLUSH tries again (R8)
    # the log keeps answering; IS_CLEAN says dirty for every region while failed
    assert (await log.in_sync(8), await log.in_sync(100)) == (True, True)
    assert await log.is_clean(100) is False
    assert await log.sync_count() == COUNT
    # another log on another device is unaffected throughout
    await other.mark(8)
    assert await other.flush() == 0
    assert await other.status() == f"3 clustered-disk {other.dev.dev_number} A\0".encode()

    fail(set_fail, False)
    assert await log.flush() == 0  # the failed changes stayed pending
    assert (await log.status()).endswith(letter + b"\0")  # sticky
    assert log.on_disk().dirty_regions(COUNT) == {8, 9}
    assert other.on_disk().dirty_regions(COUNT) == {8}
    assert count_lines(disk_rig.daemon.stderr(), message) == 1  # once, not per request


@pytest.mark.fuse
async def test_failed_write_reports_d(
    failing: tuple[LogDev, SetFail], disk_rig: DiskRig, tmp_path: Path
) -> None:
    def fail(set_fail: SetFail, on: bool) -> None:
        set_fail(write=on, fsync=False)

    await _fail_then_recover(
        disk_rig, failing, tmp_path, fail, b"D", "Failed to write header on dirty region log device"
    )


@pytest.mark.fuse
async def test_failed_cache_flush_reports_f(
    failing: tuple[LogDev, SetFail], disk_rig: DiskRig, tmp_path: Path
) -> None:
    def fail(set_fail: SetFail, on: bool) -> None:
        set_fail(write=False, fsync=on)

    await _fail_then_recover(
        disk_rig, failing, tmp_path, fail, b"F", "Failed to flush header on dirty region log device"
    )


@pytest.mark.fuse
async def test_failed_write_at_resume(failing: tuple[LogDev, SetFail], disk_rig: DiskRig) -> None:
    dev, set_fail = failing
    log = Log(disk_rig, b"DISK-FAIL-2", dev)
    assert (await log.ctr()).error == 0
    set_fail(write=True, fsync=False)
    assert (await log.request(T.RESUME)).error == -errno.EIO  # step 8
    assert (await log.status()).endswith(b" D\0")
    assert await log.in_sync(3) is True  # resumed anyway
    set_fail(write=False, fsync=False)
    await log.mark(3)
    assert await log.flush() == 0  # the whole buffer was still pending
    disk = log.on_disk()
    assert (disk.magic, disk.nr_regions, disk.dirty_regions(COUNT)) == (KERNEL_MAGIC, COUNT, {3})
    await log.suspend()
    await log.ok(T.DTR)
