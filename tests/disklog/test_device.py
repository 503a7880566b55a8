"""The log device shell: resolution, O_DIRECT I/O, ordering, cancellation, failures.

Every test runs twice: with native AIO writes (the default where ``RWF_DSYNC`` is trusted)
and with the writer thread doing every job (``_native_aio = False``), see ``writer_path``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from clogfs.disklog.aio import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_PWRITE,
    AioContext,
    AioUnavailable,
    Iocb,
)
from clogfs.disklog.device import (
    _AIO_MAX_RUNS,
    LogDevice,
    LogWriteError,
    _parse_major_minor,
    dsync_flushes_cache,
    filesystem_type,
    resolve_log_device,
)
from clogfs.disklog.format import IMAGE_FILE_BLOCK_SIZE
from clogfs.errors import LocalProtocolError, LogDeviceError
from tests.disklog.failfs import SetFail

BLOCK = IMAGE_FILE_BLOCK_SIZE
NATIVE_AIO = [True]  # set per test by ``writer_path``


@pytest.fixture(autouse=True, params=["aio", "thread"])
def writer_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with devices opened by ``open_device`` using AIO, then threads only."""
    NATIVE_AIO[0] = request.param == "aio"
    yield request.param
    NATIVE_AIO[0] = True


async def open_device(word: str | Path, private_dir: Path, **kwargs: Path) -> LogDevice:
    dev = await trio.to_thread.run_sync(
        lambda: LogDevice.open(str(word), private_dir=private_dir, **kwargs)
    )
    dev._native_aio = NATIVE_AIO[0]
    return dev


def read_plain(path: Path, offset: int, length: int) -> bytes:
    """Read through the page cache with a separate descriptor, as an outside observer."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def major_minor(path: Path) -> str:
    rdev = path.stat().st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def stat_of(path: Path) -> os.stat_result:
    return os.stat(path)


def listing(path: Path) -> list[Path]:
    return list(path.iterdir())


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# ------------------------------------------------------------------ resolution


async def test_regular_file_facts(image_file: Path, private_dir: Path) -> None:
    st_ = stat_of(image_file)
    async with await open_device(image_file, private_dir) as dev:
        assert dev.info.name == str(image_file)
        assert dev.info.dev_number == f"{os.major(st_.st_dev)}:{os.minor(st_.st_dev)}"
        assert dev.info.identity == (st_.st_dev, st_.st_ino)
        assert dev.info.logical_block_size == IMAGE_FILE_BLOCK_SIZE
        assert dev.info.size_bytes == st_.st_size
        assert dev.info.path == str(image_file)


@pytest.mark.root
async def test_block_device_by_path_facts(loop_device: Path, private_dir: Path) -> None:
    rdev = stat_of(loop_device).st_rdev
    async with await open_device(loop_device, private_dir) as dev:
        assert dev.info.name == major_minor(loop_device)
        assert dev.info.dev_number == major_minor(loop_device)
        assert dev.info.identity == (rdev, 0)
        assert dev.info.logical_block_size == 512  # a loop device's default
        assert dev.info.size_bytes == 1 << 20
        assert dev.info.path == str(loop_device)


@pytest.mark.root
def test_major_minor_via_dev_block(loop_device: Path, tmp_path: Path, private_dir: Path) -> None:
    dev_dir = tmp_path / "dev"
    (dev_dir / "block").mkdir(parents=True)
    word = major_minor(loop_device)
    (dev_dir / "block" / word).symlink_to(loop_device)
    path, private = resolve_log_device(
        word, private_dir=private_dir, dev_dir=dev_dir, sysfs_dir=tmp_path / "nosys"
    )
    assert (path, private) == (dev_dir / "block" / word, False)


@pytest.mark.root
def test_major_minor_via_sysfs_devname(loop_device: Path, private_dir: Path) -> None:
    # /dev has no block/ directory on this kind of machine; the real sysfs names the node.
    dev_dir = loop_device.parent
    path, private = resolve_log_device(
        major_minor(loop_device), private_dir=private_dir, dev_dir=dev_dir
    )
    assert (path, private) == (loop_device, False)


@pytest.mark.root
def test_major_minor_skips_a_dev_block_link_to_another_device(
    loop_device: Path, tmp_path: Path, private_dir: Path
) -> None:
    dev_dir = tmp_path / "dev"
    (dev_dir / "block").mkdir(parents=True)
    word = major_minor(loop_device)
    (dev_dir / "block" / word).symlink_to("/dev/null")  # wrong st_rdev
    (dev_dir / loop_device.name).symlink_to(loop_device)
    path, private = resolve_log_device(word, private_dir=private_dir, dev_dir=dev_dir)
    assert (path, private) == (dev_dir / loop_device.name, False)


@pytest.mark.root
async def test_major_minor_via_private_node(
    loop_device: Path, tmp_path: Path, private_dir: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    word = major_minor(loop_device)
    dev = await open_device(word, private_dir, dev_dir=empty, sysfs_dir=empty)
    node = Path(dev.info.path)
    assert node.parent == private_dir
    assert stat.S_ISBLK(stat_of(node).st_mode)
    assert stat_of(node).st_rdev == stat_of(loop_device).st_rdev
    assert dev.info.name == word
    await dev.aclose()
    assert listing(private_dir) == []


@pytest.mark.root
async def test_major_minor_of_no_device_is_the_open_errno(
    tmp_path: Path, private_dir: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LogDeviceError) as caught:
        await open_device("4095:7", private_dir, dev_dir=empty, sysfs_dir=empty)
    assert caught.value.errno == errno.ENXIO
    assert "4095:7" in str(caught.value)
    assert listing(private_dir) == []  # the private node is gone again


async def test_missing_path_is_enoent(tmp_path: Path, private_dir: Path) -> None:
    word = str(tmp_path / "absent")
    with pytest.raises(LogDeviceError) as caught:
        await open_device(word, private_dir)
    assert caught.value.errno == errno.ENOENT
    assert word in str(caught.value)


async def test_directory_is_enotblk(tmp_path: Path, private_dir: Path) -> None:
    with pytest.raises(LogDeviceError) as caught:
        await open_device(tmp_path, private_dir)
    assert caught.value.errno == errno.ENOTBLK


async def test_char_device_is_enotblk(private_dir: Path) -> None:
    with pytest.raises(LogDeviceError) as caught:
        await open_device("/dev/null", private_dir)
    assert caught.value.errno == errno.ENOTBLK
    assert "/dev/null" in str(caught.value)


@pytest.mark.parametrize("word", ["relative/log.img", "7:", ":3", "7:x", "-7:3", "", "7:3:1"])
def test_malformed_word_is_einval(word: str, private_dir: Path) -> None:
    with pytest.raises(LogDeviceError) as caught:
        resolve_log_device(word, private_dir=private_dir)
    assert caught.value.errno == errno.EINVAL


@given(st.integers(0, 4095), st.integers(0, (1 << 20) - 1))
def test_major_minor_parses_every_valid_number(major: int, minor: int) -> None:
    assert _parse_major_minor(f"{major}:{minor}") == os.makedev(major, minor)


@given(st.text())
def test_major_minor_parser_never_raises_anything_else(word: str) -> None:
    try:
        result: int | str | None = _parse_major_minor(word)
    except LogDeviceError as exc:
        result = f"errno {exc.errno}"
    assert result is None or isinstance(result, int) or result == f"errno {errno.EINVAL}"


@pytest.mark.parametrize("word", ["4096:0", "0:1048576"])
def test_major_minor_out_of_range_is_einval(word: str) -> None:
    with pytest.raises(LogDeviceError) as caught:
        _parse_major_minor(word)
    assert caught.value.errno == errno.EINVAL


# ------------------------------------------------------------------------- I/O


async def test_write_lands_at_offsets_on_a_file(image_file: Path, private_dir: Path) -> None:
    a, b, c = b"A" * BLOCK, b"B" * BLOCK, b"C" * 2 * BLOCK
    async with await open_device(image_file, private_dir) as dev:
        await dev.write([(0, a), (BLOCK, b), (4 * BLOCK, c)], cache_flush=True)
    assert read_plain(image_file, 0, 7 * BLOCK) == a + b + bytes(2 * BLOCK) + c + bytes(BLOCK)


@pytest.mark.root
async def test_write_lands_at_offsets_on_a_block_device(
    loop_device: Path, private_dir: Path
) -> None:
    async with await open_device(loop_device, private_dir) as dev:
        lbs = dev.info.logical_block_size
        await dev.write([(lbs, b"x" * lbs), (3 * lbs, b"y" * lbs)], cache_flush=True)
    expected = bytes(lbs) + b"x" * lbs + bytes(lbs) + b"y" * lbs
    assert read_plain(loop_device, 0, 4 * lbs) == expected


async def test_read_returns_the_whole_buffer(image_file: Path, private_dir: Path) -> None:
    data = os.urandom(2 * BLOCK)
    fd = os.open(image_file, os.O_WRONLY)
    os.pwrite(fd, data, 0)
    os.close(fd)
    async with await open_device(image_file, private_dir) as dev:
        assert await dev.read(2 * BLOCK) == data


async def test_read_past_the_end_is_a_short_read(tmp_path: Path, private_dir: Path) -> None:
    small = tmp_path / "small.img"
    small.write_bytes(bytes(BLOCK))
    async with await open_device(small, private_dir) as dev:
        with pytest.raises(LogDeviceError) as caught:
            await dev.read(2 * BLOCK)
    assert caught.value.errno == errno.EIO
    assert "short read" in str(caught.value)


@pytest.mark.parametrize(
    "extents",
    [
        [(100, b"a" * BLOCK)],  # misaligned offset
        [(0, b"a" * 100)],  # misaligned length
        [(0, b"")],  # empty
        [(BLOCK, b"a" * BLOCK), (0, b"b" * BLOCK)],  # out of order
        [(0, b"a" * 2 * BLOCK), (BLOCK, b"b" * BLOCK)],  # overlapping
        [((1 << 20) - BLOCK, b"a" * 2 * BLOCK)],  # beyond the end
    ],
)
async def test_bad_extents_are_refused_before_any_io(
    extents: list[tuple[int, bytes]], image_file: Path, private_dir: Path
) -> None:
    async with await open_device(image_file, private_dir) as dev:
        with pytest.raises(LocalProtocolError):
            await dev.write(extents, cache_flush=False)
    assert read_plain(image_file, 0, 1 << 20) == bytes(1 << 20)


async def test_bad_read_size_is_refused(image_file: Path, private_dir: Path) -> None:
    async with await open_device(image_file, private_dir) as dev:
        with pytest.raises(LocalProtocolError):
            await dev.read(BLOCK + 1)


async def test_concurrent_writes_reach_the_device_in_call_order(
    image_file: Path, private_dir: Path
) -> None:
    order: list[int] = []

    async with await open_device(image_file, private_dir) as dev:

        async def write(i: int) -> None:
            order.append(i)  # the same scheduling step as the hand-over to the writer
            await dev.write([(0, i.to_bytes(4, "little") * (BLOCK // 4))], cache_flush=False)

        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(write, i)
    assert sorted(order) == list(range(64))
    assert read_plain(image_file, 0, 4) == order[-1].to_bytes(4, "little")


async def test_a_cancelled_write_still_completes_in_order(
    image_file: Path, private_dir: Path
) -> None:
    async with await open_device(image_file, private_dir) as dev:
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before the caller ever waits
            await dev.write([(0, b"1" * BLOCK)], cache_flush=True)
        assert scope.cancelled_caught
        await dev.write([(BLOCK, b"2" * BLOCK)], cache_flush=True)
        # The second write ran after the first: both are on disk now.
        assert read_plain(image_file, 0, 2 * BLOCK) == b"1" * BLOCK + b"2" * BLOCK


async def test_cancellation_mid_wait_leaks_no_descriptor(
    image_file: Path, private_dir: Path
) -> None:
    before = open_fds()
    dev = await open_device(image_file, private_dir)
    for i in range(20):
        with trio.move_on_after(0.00001 * i):
            await dev.write([(0, bytes([i]) * BLOCK)], cache_flush=True)
    await dev.aclose()
    assert read_plain(image_file, 0, 1) == bytes([19])
    assert open_fds() == before


async def test_aclose_is_idempotent_and_refuses_later_io(
    image_file: Path, private_dir: Path
) -> None:
    dev = await open_device(image_file, private_dir)
    await dev.aclose()
    await dev.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await dev.write([(0, bytes(BLOCK))], cache_flush=False)
    with pytest.raises(trio.ClosedResourceError):
        await dev.read(BLOCK)


async def test_aclose_waits_for_queued_writes(image_file: Path, private_dir: Path) -> None:
    dev = await open_device(image_file, private_dir)

    async def write(i: int) -> None:
        await dev.write([(i * BLOCK, b"w" * BLOCK)], cache_flush=False)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(write, i)
        await trio.testing.wait_all_tasks_blocked()  # every write is submitted
        await dev.aclose()
    assert read_plain(image_file, 0, 8 * BLOCK) == b"w" * 8 * BLOCK


# ------------------------------------------------------------------- failures


@pytest.mark.root
@pytest.mark.fuse
async def test_failed_write_is_a_write_error(
    failfs_image: tuple[Path, SetFail], private_dir: Path
) -> None:
    image, set_fail = failfs_image
    async with await open_device(image, private_dir) as dev:
        set_fail(write=True, fsync=False)
        with pytest.raises(LogWriteError) as caught:
            await dev.write([(0, b"x" * BLOCK)], cache_flush=True)
    assert caught.value.flush_failed is False
    assert caught.value.errno == errno.EIO


@pytest.mark.root
@pytest.mark.fuse
async def test_failed_cache_flush_is_a_flush_error(
    failfs_image: tuple[Path, SetFail], private_dir: Path
) -> None:
    image, set_fail = failfs_image
    async with await open_device(image, private_dir) as dev:
        set_fail(write=False, fsync=True)
        with pytest.raises(LogWriteError) as caught:
            await dev.write([(0, b"x" * BLOCK)], cache_flush=True)
    assert caught.value.flush_failed is True
    assert caught.value.errno == errno.EIO


@pytest.mark.root
@pytest.mark.fuse
async def test_write_without_cache_flush_does_not_flush(
    failfs_image: tuple[Path, SetFail], private_dir: Path
) -> None:
    image, set_fail = failfs_image
    async with await open_device(image, private_dir) as dev:
        set_fail(write=False, fsync=True)
        await dev.write([(0, b"x" * BLOCK)], cache_flush=False)


@pytest.mark.root
@pytest.mark.fuse
async def test_writes_work_again_after_failures(
    failfs_image: tuple[Path, SetFail], private_dir: Path
) -> None:
    image, set_fail = failfs_image
    async with await open_device(image, private_dir) as dev:
        set_fail(write=True, fsync=True)
        with pytest.raises(LogWriteError):
            await dev.write([(0, b"x" * BLOCK)], cache_flush=True)
        set_fail(write=False, fsync=False)
        await dev.write([(0, b"y" * BLOCK), (BLOCK, b"z" * BLOCK)], cache_flush=True)
        assert await dev.read(2 * BLOCK) == b"y" * BLOCK + b"z" * BLOCK


# ------------------------------------------------------------ completion channel


async def test_writes_to_many_devices_keep_each_devices_order(
    tmp_path: Path, private_dir: Path
) -> None:
    images = []
    for i in range(8):
        images.append(tmp_path / f"log{i}.img")
        images[-1].write_bytes(bytes(4 * BLOCK))
    devices = [await open_device(image, private_dir) for image in images]
    orders: list[list[int]] = [[] for _ in devices]

    async def write(d: int, i: int) -> None:
        orders[d].append(i)  # the same scheduling step as the hand-over to the writer
        block = (d * 1000 + i).to_bytes(4, "little") * (BLOCK // 4)
        await devices[d].write([(0, block), (BLOCK * (1 + i % 3), block)], cache_flush=i % 2 == 0)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            for d in range(len(devices)):
                nursery.start_soon(write, d, i)
    for device in devices:
        await device.aclose()
    for d, image in enumerate(images):
        assert sorted(orders[d]) == list(range(32))
        assert read_plain(image, 0, 4) == (d * 1000 + orders[d][-1]).to_bytes(4, "little")


async def test_a_cancelled_leader_hands_the_wait_to_the_others(
    image_file: Path, private_dir: Path
) -> None:
    gate = threading.Event()
    results: list[str] = []
    async with await open_device(image_file, private_dir) as dev:
        with trio.fail_after(10):  # a lost hand-over would leave the followers parked
            await run_leader_and_followers(dev, gate, results)
    assert sorted(results) == ["follower 1", "follower 2"]
    assert read_plain(image_file, BLOCK, 2 * BLOCK) == b"\x01" * BLOCK + b"\x02" * BLOCK


async def run_leader_and_followers(
    dev: LogDevice, gate: threading.Event, results: list[str]
) -> None:
    """A leader waits on a blocked job, two writers park behind it, the leader is cancelled."""
    async with trio.open_nursery() as nursery:
        leader_scope = trio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await dev._submit(gate.wait, "gate")  # the writer blocks here

        async def follower(i: int) -> None:
            await dev.write([(i * BLOCK, bytes([i]) * BLOCK)], cache_flush=True)
            results.append(f"follower {i}")

        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2):
            nursery.start_soon(follower, i)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert leader_scope.cancelled_caught


async def test_a_cancelled_parked_caller_leaves_the_leader_waiting(
    image_file: Path, private_dir: Path
) -> None:
    gate = threading.Event()
    async with await open_device(image_file, private_dir) as dev:
        async with trio.open_nursery() as nursery:
            parked_scope = trio.CancelScope()
            leader_done = trio.Event()

            async def leader() -> None:
                assert await dev._submit(gate.wait, "gate") is True
                leader_done.set()

            async def parked() -> None:
                with parked_scope:
                    await dev.write([(0, b"p" * BLOCK)], cache_flush=True)

            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
            parked_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert parked_scope.cancelled_caught
            gate.set()
            with trio.fail_after(10):
                await leader_done.wait()
        # The abandoned write still ran, in order, before this read.
        assert await dev.read(BLOCK) == b"p" * BLOCK


async def test_a_failure_nobody_waits_for_is_logged(
    image_file: Path, private_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()

    def fail() -> None:
        gate.wait()
        raise LogDeviceError("injected", errno=errno.EIO)

    async with await open_device(image_file, private_dir) as dev:
        with trio.CancelScope() as scope:
            scope.cancel()
            await dev._submit(fail, "injected job")
        gate.set()
        await dev.write([(0, bytes(BLOCK))], cache_flush=False)  # drains the failed job
    assert any(
        r.levelname == "WARNING" and "injected job abandoned" in r.getMessage()
        for r in caplog.records
    )


def test_a_device_serves_one_trio_run_after_another(image_file: Path, private_dir: Path) -> None:
    dev = LogDevice.open(str(image_file), private_dir=private_dir)

    async def write(byte: bytes, *, close: bool) -> None:
        await dev.write([(0, byte * BLOCK)], cache_flush=True)
        if close:
            await dev.aclose()

    trio.run(functools.partial(write, b"1", close=False))
    trio.run(functools.partial(write, b"2", close=True))
    assert read_plain(image_file, 0, BLOCK) == b"2" * BLOCK


async def test_closing_every_device_releases_the_channel(
    image_file: Path, tmp_path: Path, private_dir: Path
) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(bytes(BLOCK))
    before = open_fds()
    first = await open_device(image_file, private_dir)
    await first.write([(0, b"a" * BLOCK)], cache_flush=True)
    await first.aclose()
    assert open_fds() == before
    second = await open_device(other, private_dir)  # a new channel
    await second.write([(0, b"b" * BLOCK)], cache_flush=True)
    await second.aclose()
    assert open_fds() == before
    assert read_plain(other, 0, BLOCK) == b"b" * BLOCK


# ------------------------------------------------------- write and flush in one call

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683656k\n"
    "41 27 0:52 / /mnt/fuse rw,nosuid,nodev,relatime shared:7 master:2 - fuse.failfs failfs rw\n"
    "garbage\n"
)


@pytest.mark.parametrize(
    ("dev", "fstype"),
    [
        (os.makedev(254, 0), "ext4"),
        (os.makedev(0, 27), "tmpfs"),
        (os.makedev(0, 52), "fuse.failfs"),  # optional fields before the separator
        (os.makedev(0, 21), "proc"),
        (os.makedev(8, 1), None),
    ],
)
def test_filesystem_type_from_mountinfo(dev: int, fstype: str | None) -> None:
    assert filesystem_type(MOUNTINFO, dev) == fstype


@given(st.text())
def test_filesystem_type_never_raises(text: str) -> None:
    assert filesystem_type(text, os.makedev(254, 0)) is None or "254:0" in text


@pytest.mark.parametrize(("fstype", "expected"), [("ext4", True), ("fuse.failfs", False)])
def test_dsync_depends_on_the_files_filesystem(
    fstype: str, expected: bool, image_file: Path, tmp_path: Path
) -> None:
    dev = stat_of(image_file).st_dev
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"27 1 {os.major(dev)}:{os.minor(dev)} / / rw - {fstype} /dev/x rw\n")
    fd = os.open(image_file, os.O_RDONLY)
    try:
        assert dsync_flushes_cache(fd, mountinfo=mountinfo) is expected
        assert dsync_flushes_cache(fd, mountinfo=tmp_path / "absent") is False
    finally:
        os.close(fd)


@pytest.mark.root
def test_dsync_on_a_block_device(loop_device: Path, tmp_path: Path) -> None:
    fd = os.open(loop_device, os.O_RDONLY)
    try:
        assert dsync_flushes_cache(fd, mountinfo=tmp_path / "absent") is True
    finally:
        os.close(fd)


@pytest.mark.root
@pytest.mark.fuse
async def test_a_fuse_image_writes_and_flushes_separately(
    failfs_image: tuple[Path, SetFail], private_dir: Path
) -> None:
    # FUSE direct_io never sends FSYNC for an RWF_DSYNC write: it would not be durable.
    image, _ = failfs_image
    async with await open_device(image, private_dir) as dev:
        assert dev._dsync_writes is False


def spy_on_writes(dev: LogDevice) -> list[int | str]:
    """Record the ``pwritev2`` flags of every write ``dev``'s writer thread makes."""
    flags_seen: list[int | str] = []
    real = dev._pwrite

    def spy(offset: int, length: int, flags: int) -> int:
        flags_seen.append(flags)
        return real(offset, length, flags)

    dev._pwrite = spy  # type: ignore[method-assign]
    return flags_seen


FDSYNC = "fdsync"


def spy_on_aio(monkeypatch: pytest.MonkeyPatch) -> list[int | str]:
    """Record every request the AIO engine submits: a write's ``aio_rw_flags`` or FDSYNC."""
    seen: list[int | str] = []
    real = AioContext.submit

    def spy(self: AioContext, iocbs: list[Iocb]) -> int:
        taken = real(self, iocbs)
        for iocb in iocbs[:taken]:
            assert iocb.aio_lio_opcode in (IOCB_CMD_PWRITE, IOCB_CMD_FDSYNC)
            seen.append(iocb.aio_rw_flags if iocb.aio_lio_opcode == IOCB_CMD_PWRITE else FDSYNC)
        return taken

    monkeypatch.setattr(AioContext, "submit", spy)
    return seen


async def write_sequence(dev: LogDevice) -> None:
    one = [(0, b"1" * BLOCK)]
    await dev.write(one, cache_flush=True)  # what was there before we opened: fdatasync
    await dev.write(one, cache_flush=True)  # nothing unflushed: one RWF_DSYNC write
    await dev.write(one, cache_flush=False)
    await dev.write(one, cache_flush=True)  # after an unflushed write: fdatasync
    await dev.write([(0, b"2" * BLOCK), (2 * BLOCK, b"3" * BLOCK)], cache_flush=True)
    await dev.write(one, cache_flush=True)


async def test_thread_write_path_follows_what_is_unflushed(
    image_file: Path, private_dir: Path
) -> None:
    async with await open_device(image_file, private_dir) as dev:
        dev._dsync_writes = True
        dev._native_aio = False
        flags = spy_on_writes(dev)
        await write_sequence(dev)
    assert flags == [0, os.RWF_DSYNC, 0, 0, 0, 0, os.RWF_DSYNC]
    assert read_plain(image_file, 0, 3 * BLOCK) == b"1" * BLOCK + bytes(BLOCK) + b"3" * BLOCK


async def test_aio_write_path_follows_what_is_unflushed(
    image_file: Path, private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_on_aio(monkeypatch)
    async with await open_device(image_file, private_dir) as dev:
        dev._native_aio = True
        threads = spy_on_writes(dev)
        await write_sequence(dev)
    dsync = os.RWF_DSYNC
    # Two runs flushed with nothing unflushed before: both RWF_DSYNC (FUA covers only its own).
    assert seen == [0, FDSYNC, dsync, 0, 0, FDSYNC, dsync, dsync, dsync]
    assert threads == []
    assert read_plain(image_file, 0, 3 * BLOCK) == b"1" * BLOCK + bytes(BLOCK) + b"3" * BLOCK


@pytest.fixture
def failfs_loop(failfs_image: tuple[Path, SetFail]) -> Iterator[tuple[Path, SetFail]]:
    """A loop device over a failfs image: its cache flushes reach failfs as fsync."""
    image, set_fail = failfs_image
    result = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot set up a loop device: {result.stderr.strip()}")
    device = Path(result.stdout.strip())
    try:
        deadline = time.monotonic() + 10
        while not device.exists():  # devtmpfs creates a new node asynchronously
            assert time.monotonic() < deadline, f"{device} did not appear"
            time.sleep(0.01)
        yield device, set_fail
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


async def flushed_once(dev: LogDevice, monkeypatch: pytest.MonkeyPatch) -> list[int | str]:
    """One successful flushed write, so the next one may use RWF_DSYNC; then spy."""
    await dev.write([(0, bytes(BLOCK))], cache_flush=True)
    if dev._native_aio:
        return spy_on_aio(monkeypatch)
    return spy_on_writes(dev)


@pytest.mark.root
@pytest.mark.fuse
async def test_failed_dsync_write_is_a_write_error(
    failfs_loop: tuple[Path, SetFail], private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, set_fail = failfs_loop
    async with await open_device(device, private_dir) as dev:
        flags = await flushed_once(dev, monkeypatch)
        set_fail(write=True, fsync=False)
        with pytest.raises(LogWriteError) as caught:
            await dev.write([(0, b"x" * BLOCK)], cache_flush=True)
    assert flags == [os.RWF_DSYNC, 0]  # the retry without RWF_DSYNC failed too
    assert caught.value.flush_failed is False
    assert caught.value.errno == errno.EIO


@pytest.mark.root
@pytest.mark.fuse
async def test_failed_flush_of_a_dsync_write_is_a_flush_error(
    failfs_loop: tuple[Path, SetFail], private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, set_fail = failfs_loop
    async with await open_device(device, private_dir) as dev:
        flags = await flushed_once(dev, monkeypatch)
        # How a plain write is made durable: fdatasync on the thread, FDSYNC through AIO
        flush = [FDSYNC] if dev._native_aio else []
        set_fail(write=False, fsync=True)
        with pytest.raises(LogWriteError) as caught:
            await dev.write([(0, b"x" * BLOCK)], cache_flush=True)
        assert flags == [os.RWF_DSYNC, 0, *flush]  # the plain retry worked, its flush failed
        assert caught.value.flush_failed is True
        assert caught.value.errno == errno.EIO
        set_fail(write=False, fsync=False)
        await dev.write([(0, b"y" * BLOCK)], cache_flush=True)  # after a failure: fdatasync
        await dev.write([(0, b"z" * BLOCK)], cache_flush=True)
    assert flags == [os.RWF_DSYNC, 0, *flush, 0, *flush, os.RWF_DSYNC]
    assert read_plain(device, 0, BLOCK) == b"z" * BLOCK


# ------------------------------------------------------------------ the AIO engine


async def test_an_aio_capable_device_writes_through_the_engine(
    image_file: Path, private_dir: Path, writer_path: str
) -> None:
    async with await open_device(image_file, private_dir) as dev:
        await dev.write([(0, b"e" * BLOCK)], cache_flush=True)
        assert (dev._engine is not None) is (writer_path == "aio")
        assert (dev._hub is not None) is (writer_path == "thread")


async def test_without_native_aio_the_writer_thread_does_everything(
    image_file: Path,
    private_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(self: AioContext, nr_events: int) -> None:
        raise AioUnavailable(errno.EAGAIN, "io_setup: resource temporarily unavailable")

    monkeypatch.setattr(AioContext, "__init__", refuse)
    caplog.set_level(logging.INFO, logger="clogfs.disklog.device")
    async with await open_device(image_file, private_dir) as dev:
        dev._native_aio = True
        await dev.write([(0, b"t" * BLOCK)], cache_flush=True)
        assert dev._engine is None
        assert dev._hub is not None
    assert read_plain(image_file, 0, BLOCK) == b"t" * BLOCK
    assert any("native AIO unavailable" in r.getMessage() for r in caplog.records)


class TinyRing:
    """Make every ``AioContext`` take at most ``capacity`` requests in flight (EAGAIN)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.refused = 0
        real_submit, real_reap = AioContext.submit, AioContext.reap

        def submit(ctx: AioContext, iocbs: list[Iocb]) -> int:
            room = self.capacity - self.in_flight
            if room <= 0:
                self.refused += 1
                return 0
            taken = real_submit(ctx, iocbs[:room])
            self.in_flight += taken
            return taken

        def reap(ctx: AioContext) -> list[tuple[int, int]]:
            done = real_reap(ctx)
            self.in_flight -= len(done)
            return done

        monkeypatch.setattr(AioContext, "submit", submit)
        monkeypatch.setattr(AioContext, "reap", reap)


async def test_a_full_ring_holds_requests_back_until_completions(
    tmp_path: Path, private_dir: Path, monkeypatch: pytest.MonkeyPatch, writer_path: str
) -> None:
    if writer_path != "aio":
        pytest.skip("AIO only")
    ring = TinyRing(monkeypatch, capacity=2)
    images = [tmp_path / f"ring{d}.img" for d in range(4)]
    for image in images:
        image.write_bytes(bytes(8 * BLOCK))
    devices = [await open_device(image, private_dir) for image in images]

    async def write(d: int, i: int) -> None:
        block = bytes([d * 16 + i]) * BLOCK  # three runs per write
        extents = [(0, block), (2 * BLOCK, block), (4 * BLOCK, block)]
        await devices[d].write(extents, cache_flush=i % 2 == 1)

    for i in range(6):
        async with trio.open_nursery() as nursery:
            for d in range(len(devices)):
                nursery.start_soon(write, d, i)
    for device in devices:
        await device.aclose()
    assert ring.refused > 0
    for d, image in enumerate(images):
        data = image.read_bytes()
        for at in (0, 2 * BLOCK, 4 * BLOCK):
            assert data[at : at + BLOCK] == bytes([d * 16 + 5]) * BLOCK


async def test_a_write_of_very_many_runs_goes_to_the_writer_in_order(
    tmp_path: Path, private_dir: Path, monkeypatch: pytest.MonkeyPatch, writer_path: str
) -> None:
    image = tmp_path / "runs.img"
    image.write_bytes(bytes(200 * BLOCK))
    aio = spy_on_aio(monkeypatch)
    async with await open_device(image, private_dir) as dev:
        threads = spy_on_writes(dev)
        many = [(2 * i * BLOCK, b"m" * BLOCK) for i in range(_AIO_MAX_RUNS + 1)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(dev.write, [(0, b"a" * BLOCK)], cache_flush=True))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(functools.partial(dev.write, many, cache_flush=True))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(functools.partial(dev.write, [(0, b"z" * BLOCK)], cache_flush=True))
    assert len(threads) == _AIO_MAX_RUNS + 1 + (2 if writer_path == "thread" else 0)
    assert len(aio) == (3 if writer_path == "aio" else 0)  # 0 + FDSYNC first, then RWF_DSYNC
    data = image.read_bytes()
    assert data[:BLOCK] == b"z" * BLOCK
    assert data[2 * BLOCK : 3 * BLOCK] == b"m" * BLOCK


async def test_unsupported_rwf_dsync_turns_to_fdatasync(
    image_file: Path,
    private_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    writer_path: str,
) -> None:
    if writer_path != "aio":
        pytest.skip("AIO only")
    real = AioContext.submit

    def submit(ctx: AioContext, iocbs: list[Iocb]) -> int:
        if iocbs[0].aio_rw_flags & os.RWF_DSYNC:
            raise OSError(errno.EOPNOTSUPP, "io_submit: Operation not supported")
        return real(ctx, iocbs)

    monkeypatch.setattr(AioContext, "submit", submit)
    async with await open_device(image_file, private_dir) as dev:
        await dev.write([(0, b"1" * BLOCK)], cache_flush=True)  # plain + FDSYNC
        threads = spy_on_writes(dev)
        await dev.write([(0, b"2" * BLOCK)], cache_flush=True)  # RWF_DSYNC refused
        assert dev._dsync_writes is False
        await dev.write([(0, b"3" * BLOCK)], cache_flush=True)  # now on the writer thread
    assert threads == [0]
    assert read_plain(image_file, 0, BLOCK) == b"3" * BLOCK


def test_ops_unfinished_at_the_end_of_a_run_are_left_to_the_writer(
    image_file: Path, private_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dev = LogDevice.open(str(image_file), private_dir=private_dir)
    dev._native_aio = NATIVE_AIO[0]

    async def abandon_writes() -> None:
        for i in range(1, 9):
            # Each waits for its write until the end of the run cancels it.
            trio.lowlevel.spawn_system_task(
                functools.partial(dev.write, [(i * BLOCK, bytes([i]) * BLOCK)], cache_flush=True)
            )
        await trio.testing.wait_all_tasks_blocked()  # every write submitted or queued

    async def write_after() -> None:
        await dev.write([(BLOCK, b"after" * (BLOCK // 5) + bytes(BLOCK % 5))], cache_flush=True)
        await dev.aclose()

    trio.run(abandon_writes)
    trio.run(write_after)  # ordered after whatever the first run left to the writer
    data = read_plain(image_file, 0, 9 * BLOCK)
    assert data[BLOCK : BLOCK + 5] == b"after"
    for i in range(2, 9):
        assert data[i * BLOCK : (i + 1) * BLOCK] == bytes([i]) * BLOCK
    assert dev._closing
    left = [r for r in caplog.records if "unfinished at the end of the run" in r.getMessage()]
    assert bool(left) is NATIVE_AIO[0]
