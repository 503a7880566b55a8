"""failfs: a tiny FUSE filesystem serving one image file whose writes and fsyncs fail on demand.

An open loop device keeps working after it is detached and tmpfs never fails a write to
allocated blocks, so neither can make a log device fail. failfs can: it serves one file,
``log.img``, backed by a regular file outside the mount, and answers ``write`` and/or
``fsync`` with ``EIO`` while a control file says so. Files are opened with FUSE
``direct_io``, so ``O_DIRECT`` opens work and every write reaches failfs.

Use it through ``failing_image``::

    with failing_image(tmp_path, size_bytes=1 << 20) as (image, set_fail):
        set_fail(write=True, fsync=False)   # next writes to ``image`` fail with EIO

The filesystem runs in a child process (``python failfs.py MOUNTPOINT BACKING CONTROL``).
The control file holds ``write=<0|1> fsync=<0|1>``; failfs reads it at every write and
fsync, and ``set_fail`` replaces it atomically, so a switch applies to the very next
operation. Needs root (or fusermount) and ``/dev/fuse``; tests using it carry the ``fuse``
and ``root`` markers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

IMAGE_NAME = "log.img"
_ROOT_INODE = 1  # pyfuse3.ROOT_INODE
_IMAGE_INODE = 2
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0

SetFail = Callable[..., None]


def _read_control(control: Path) -> tuple[bool, bool]:
    """``(fail_write, fail_fsync)`` from the control file; missing means no failure."""
    try:
        words = control.read_text().split()
    except FileNotFoundError:
        return False, False
    flags = dict(word.split("=", 1) for word in words)
    return flags.get("write") == "1", flags.get("fsync") == "1"


def _write_control(control: Path, *, write: bool, fsync: bool) -> None:
    tmp = control.with_name(control.name + ".tmp")
    tmp.write_text(f"write={int(write)} fsync={int(fsync)}\n")
    os.replace(tmp, control)


def _serve(mountpoint: str, backing: str, control: str) -> None:
    """The child process: mount failfs at ``mountpoint`` and serve until unmounted."""
    import pyfuse3
    import trio

    control_path = Path(control)
    fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)

    def attributes(inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        now = time.time_ns()
        attr.st_ino = inode
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = now
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        if inode == _ROOT_INODE:
            attr.st_mode = 0o040755
            attr.st_nlink = 2
            attr.st_size = 0
        else:
            attr.st_mode = 0o100600
            attr.st_nlink = 1
            attr.st_size = os.fstat(fd).st_size
        attr.st_blksize = 4096
        attr.st_blocks = -(-attr.st_size // 512)
        return attr

    class FailFs(pyfuse3.Operations):
        async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
            if inode not in (_ROOT_INODE, _IMAGE_INODE):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attributes(inode)

        async def lookup(
            self, parent_inode: int, name: bytes, ctx: Any = None
        ) -> pyfuse3.EntryAttributes:
            if parent_inode != _ROOT_INODE or name != IMAGE_NAME.encode():
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attributes(_IMAGE_INODE)

        async def opendir(self, inode: int, ctx: Any) -> int:
            if inode != _ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            if start_id == 0:
                pyfuse3.readdir_reply(token, IMAGE_NAME.encode(), attributes(_IMAGE_INODE), 1)

        async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
            if inode != _IMAGE_INODE:
                raise pyfuse3.FUSEError(errno.EISDIR)
            return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return os.pread(fd, size, off)

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            if _read_control(control_path)[0]:
                raise pyfuse3.FUSEError(errno.EIO)
            return os.pwrite(fd, buf, off)

        async def fsync(self, fh: int, datasync: bool) -> None:
            if _read_control(control_path)[1]:
                raise pyfuse3.FUSEError(errno.EIO)
            os.fsync(fd)

        async def flush(self, fh: int) -> None:
            return None

        async def release(self, fh: int) -> None:
            return None

    options = set(pyfuse3.default_options)
    options.add("fsname=failfs")
    options.discard("default_permissions")
    pyfuse3.init(FailFs(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
        os.close(fd)


def _unmount(mountpoint: Path) -> None:
    for argv in (["umount", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not os.path.ismount(mountpoint):
            return
        subprocess.run(argv, check=False, capture_output=True)


@contextlib.contextmanager
def failing_image(workdir: Path, *, size_bytes: int = 1 << 20) -> Iterator[tuple[Path, SetFail]]:
    """Mount failfs under ``workdir`` and yield its image and the failure switch.

    Args:
        workdir: an empty-enough directory (``tmp_path``); failfs creates ``mnt/``,
            ``backing.img`` and ``control`` in it.
        size_bytes: size of the image file (zero-filled).

    Yields:
        ``(image_path, set_fail)``: the image inside the mount, and
        ``set_fail(write: bool, fsync: bool)`` which switches failures for the next
        operations. Nothing fails at first.

    Resource handling:
        The child process and the mount are gone when the block exits; close every
        descriptor on the image before that (an open one forces a lazy unmount).
    """
    mountpoint = workdir / "mnt"
    backing = workdir / "backing.img"
    control = workdir / "control"
    mountpoint.mkdir(parents=True)
    with backing.open("wb") as f:
        f.truncate(size_bytes)
    _write_control(control, write=False, fsync=False)
    child = subprocess.Popen(
        [sys.executable, __file__, str(mountpoint), str(backing), str(control)],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if child.poll() is not None:
                raise RuntimeError(f"failfs exited with status {child.returncode} at start")
            if time.monotonic() > deadline:
                raise TimeoutError("failfs did not mount in time")
            time.sleep(0.01)

        def set_fail(*, write: bool, fsync: bool) -> None:
            _write_control(control, write=write, fsync=fsync)

        yield mountpoint / IMAGE_NAME, set_fail
    finally:
        _unmount(mountpoint)
        try:
            child.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        _unmount(mountpoint)


def fuse_available() -> bool:
    """Whether failfs can run here: root, ``/dev/fuse``, and ``umount``."""
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("umount") is not None


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
