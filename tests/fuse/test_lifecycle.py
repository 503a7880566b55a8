"""Mounting and unmounting: started() only when mounted, cancellation, stale and busy mounts."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from clogfs.errors import ClogfsError
from clogfs.fusefs import ViewHandle, serve_view

from .helpers import (
    FakeSource,
    force_unmount,
    fuse_available,
    make_snapshot,
    mounted_options,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not fuse_available(), reason="needs root and /dev/fuse"),
]

VIEWPROC = Path(__file__).with_name("viewproc.py")


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run" / "clogfs"  # parents created by serve_view
    yield path
    force_unmount(path)


async def read(path: Path) -> bytes:
    """Read ``path`` from a worker thread: the FUSE loop runs in this trio loop."""
    return await trio.to_thread.run_sync(path.read_bytes)


def start_view_process(mountpoint: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(VIEWPROC), str(mountpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("mounted"), (line, process.stderr.read() if process.stderr else "")
    return process


def stat_errno(path: Path) -> int:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno or 0
    return 0


async def test_started_only_once_mounted(mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        handle: ViewHandle = await nursery.start(serve_view, FakeSource(), mountpoint)
        assert handle.mountpoint == mountpoint
        assert mounted_options(mountpoint) is not None
        assert await read(mountpoint / "version") == b"0.1.0\n"
        nursery.cancel_scope.cancel()


async def test_the_mount_is_gone_after_cancellation(mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_view, FakeSource(), mountpoint)
        nursery.cancel_scope.cancel()
    assert mounted_options(mountpoint) is None
    assert not await trio.to_thread.run_sync(os.path.ismount, mountpoint)


async def test_allow_other_is_a_mount_option(mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_view(
                FakeSource(), mountpoint, allow_other=True, task_status=task_status
            )
        )
        options = mounted_options(mountpoint)
        assert options is not None
        assert "allow_other" in options
        nursery.cancel_scope.cancel()


async def test_a_stale_mount_is_cleaned_at_start(
    mountpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process = start_view_process(mountpoint)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert stat_errno(mountpoint) == errno.ENOTCONN
    with caplog.at_level(logging.WARNING, logger="clogfs.fusefs.mount"):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_view, FakeSource([make_snapshot()]), mountpoint)
            assert await read(mountpoint / "protocol") == b"ulog-v3\n"
            nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{mountpoint}: removing a stale mount (its server died)"
    ]


async def test_a_live_mount_at_the_mountpoint_is_refused(mountpoint: Path) -> None:
    process = start_view_process(mountpoint)
    try:
        with pytest.raises(ClogfsError, match="already a mount point") as caught:
            await serve_view(FakeSource(), mountpoint)
        assert caught.value.errno == errno.EBUSY
    finally:
        process.terminate()
        process.communicate()


async def test_an_unmount_from_outside_ends_the_view(
    mountpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="clogfs.fusefs.mount"), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_view, FakeSource(), mountpoint)
            await trio.run_process(["fusermount3", "-u", str(mountpoint)])
    assert mounted_options(mountpoint) is None
    assert "unmounted from outside" in caplog.text


@pytest.mark.slow
async def test_rendering_a_2_24_region_log_does_not_stall_the_loop(mountpoint: Path) -> None:
    count = 2**24
    clean = bytearray(b"\xff" * (count // 8))
    clean[:: count // 8 // 20000] = b"\x00" * len(clean[:: count // 8 // 20000])  # ~20k ranges
    patterned = count // 64  # bytes whose bits alternate irregularly: ~700k ranges
    in_sync = b"\xff" * (count // 8 - patterned) + bytes(range(256)) * (patterned // 256)
    snap = make_snapshot(
        region_count=count, clean_bits=bytes(clean), sync_bits=in_sync, marks=(), recovering=None
    )
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await trio.sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_view, FakeSource([snap]), mountpoint)
        nursery.start_soon(tick)
        directory = mountpoint / snap.uuid.decode()
        started = time.monotonic()
        for name in ("dirty", "out_of_sync", "map.txt", "map.png", "clean_bits", "sync_bits"):
            assert await read(directory / name)
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    # Rendered in the loop, out_of_sync alone would stall it for seconds. From a thread the
    # loop still waits for the GIL now and then: tens of ms idle, a few hundred on a loaded box.
    assert len(gaps) > 10
    assert max(gaps) < 1.0, f"the loop stalled {max(gaps):.3f} s (renderings {elapsed:.2f} s)"
