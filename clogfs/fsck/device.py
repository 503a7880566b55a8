"""clog-fsck's device I/O: open a log device or image file, read it, write one repair.

The shell around the checker: geometry from ``BLKSSZGET``/``BLKGETSIZE64`` (block devices)
or ``st_size`` with a 4096-byte block (image files), aligned ``O_DIRECT`` reads and one
aligned ``O_DIRECT`` write followed by ``fdatasync``. A block device opened for repair is
opened ``O_EXCL``, so a device held by a mirror (or anyone) is refused with ``EBUSY``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from types import TracebackType

from clogfs.disklog.format import IMAGE_FILE_BLOCK_SIZE
from clogfs.errors import LogDeviceError

log = logging.getLogger(__name__)

BLKSSZGET = 0x1268  # _IO(0x12, 104), include/uapi/linux/fs.h: int logical block size
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t), include/uapi/linux/fs.h: u64 bytes
_BLKSSZGET_ARG = struct.Struct("=i")  # int, native
_BLKGETSIZE64_ARG = struct.Struct("=Q")  # u64, native


class DeviceBusyError(LogDeviceError):
    """The block device is open exclusively elsewhere (a mirror holds it)."""

    errno = errno.EBUSY


@dataclass(frozen=True)
class DeviceGeometry:
    """What clog-fsck needs to know about a log device."""

    kind: str  # "block" or "file"
    logical_block_size: int
    device_bytes: int


class LogDevice:
    """An open log device or image file.

    Resource handling:
        Owns one file descriptor, closed by :meth:`close` or on leaving the ``with`` block.

    Error handling:
        Every ``OSError`` becomes a :class:`LogDeviceError` naming the path (an operational
        error, exit 8); ``EBUSY`` at open becomes :class:`DeviceBusyError`.
    """

    def __init__(self, path: str, fd: int, geometry: DeviceGeometry, *, direct: bool) -> None:
        self.path = path
        self.fd = fd
        self.geometry = geometry
        self.direct = direct

    @classmethod
    def open(cls, path: str, *, writable: bool) -> LogDevice:
        """Open ``path`` read-only, or for repair.

        Args:
            path: a block device or a regular image file.
            writable: open ``O_RDWR`` (and ``O_EXCL`` for a block device) instead of
                ``O_RDONLY``.

        Returns:
            The open device. ``O_DIRECT`` is used unless the file system refuses it
            (``EINVAL``, e.g. tmpfs), in which case reads and the write go through the page
            cache and the write is still followed by ``fdatasync``.

        Raises:
            DeviceBusyError: a block device opened for repair is in use.
            LogDeviceError: the path is missing, unreadable, or neither kind of file.
        """
        try:
            st = os.stat(path)
        except OSError as exc:
            raise LogDeviceError(f"cannot open {path}: {exc.strerror}", errno=exc.errno) from exc
        if stat.S_ISBLK(st.st_mode):
            kind = "block"
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
        else:
            raise LogDeviceError(f"{path} is neither a block device nor a regular file")
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        if writable and kind == "block":
            flags |= os.O_EXCL
        fd, direct = _open_direct(path, flags, kind)
        try:
            geometry = _geometry(fd, kind)
        except OSError as exc:
            os.close(fd)
            raise LogDeviceError(f"{path}: cannot get its size: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, geometry, direct=direct)

    def read(self, nbytes: int) -> bytes:
        """Read the first ``nbytes`` bytes (fewer where the device ends), aligned.

        Raises:
            LogDeviceError: the read failed or came back short of the device's end.
        """
        lbs = self.geometry.logical_block_size
        length = -(-max(nbytes, 1) // lbs) * lbs
        wanted = min(nbytes, self.geometry.device_bytes)
        with mmap.mmap(-1, length) as buf:
            try:
                got = os.preadv(self.fd, [buf], 0)
            except OSError as exc:
                raise LogDeviceError(
                    f"{self.path}: read failed: {exc.strerror}", errno=exc.errno
                ) from exc
            if got < wanted:
                raise LogDeviceError(f"{self.path}: short read: {got} of {wanted} bytes")
            return bytes(buf[:wanted])

    def write(self, data: bytes) -> None:
        """Write ``data`` at offset 0 in one aligned write, then flush the device cache.

        Raises:
            LogDeviceError: ``data`` is not whole logical blocks, or the write or the cache
                flush failed or was short.
        """
        lbs = self.geometry.logical_block_size
        if not data or len(data) % lbs:
            raise LogDeviceError(f"{self.path}: write of {len(data)} bytes is not whole blocks")
        with mmap.mmap(-1, len(data)) as buf:
            buf[:] = data
            try:
                done = os.pwritev(self.fd, [buf], 0)
            except OSError as exc:
                raise LogDeviceError(
                    f"{self.path}: write failed: {exc.strerror}", errno=exc.errno
                ) from exc
        if done != len(data):
            raise LogDeviceError(f"{self.path}: short write: {done} of {len(data)} bytes")
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise LogDeviceError(
                f"{self.path}: cache flush failed: {exc.strerror}", errno=exc.errno
            ) from exc

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> LogDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_direct(path: str, flags: int, kind: str) -> tuple[int, bool]:
    try:
        return os.open(path, flags | os.O_DIRECT), True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DeviceBusyError(
                f"{path}: device is in use (held by a mirror?)", errno=exc.errno
            ) from exc
        if exc.errno != errno.EINVAL or kind != "file":
            raise LogDeviceError(f"cannot open {path}: {exc.strerror}", errno=exc.errno) from exc
    log.debug("%s: the file system refuses O_DIRECT; using the page cache", path)
    try:
        return os.open(path, flags), False
    except OSError as exc:
        raise LogDeviceError(f"cannot open {path}: {exc.strerror}", errno=exc.errno) from exc


def _geometry(fd: int, kind: str) -> DeviceGeometry:
    if kind == "file":
        return DeviceGeometry(kind, IMAGE_FILE_BLOCK_SIZE, os.fstat(fd).st_size)
    lbs_arg = bytearray(_BLKSSZGET_ARG.size)
    fcntl.ioctl(fd, BLKSSZGET, lbs_arg)
    size_arg = bytearray(_BLKGETSIZE64_ARG.size)
    fcntl.ioctl(fd, BLKGETSIZE64, size_arg)
    (lbs,) = _BLKSSZGET_ARG.unpack(lbs_arg)
    (size,) = _BLKGETSIZE64_ARG.unpack(size_arg)
    return DeviceGeometry(kind, lbs, size)
