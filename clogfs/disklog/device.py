"""The log device shell: resolving a log device word, O_DIRECT I/O, one writer thread per device.

A ``clustered-disk`` log keeps its clean bitmap on a log device (``disk-format.md``). This
module owns everything that touches that device and nothing else: it resolves the CTR word
(``major:minor`` or an absolute path, ``semantics.md`` §3), opens the device
``O_RDWR | O_DIRECT`` without ``O_EXCL`` (``disk-format.md`` §4), and carries out reads and
writes the region state machine decided on. It knows nothing of regions or bitmaps: a write
is a list of ``(byte offset, bytes)`` extents, a read is the whole buffer at offset 0.

Threading model. Every blocking call (``pread``, ``pwrite``, ``fdatasync``, ``close``) runs
on one long-lived thread per device, the device's *writer*. The trio side hands a job over
through a ``queue.SimpleQueue`` (a futex wake) and waits with ``trio.lowlevel.wait_readable``
on an eventfd of its own, taken from a small per-device pool, that the writer signals when
the job is done. One thread per device keeps a device's I/O in submission order and lets a
slow device stall only its own logs; the trio thread (the netlink socket, the other logs)
never blocks. Measured on a 2-core VM, the bare hand-off round trip is about 25 us this way,
about 70 us with ``TrioToken.run_sync_soon`` (trio runs those callbacks from a system task,
so the waiter wakes one scheduler batch later) and about 115 us with
``trio.to_thread.run_sync``; ``bench/disk.py`` measures the whole write path.

Buffers are page-aligned ``mmap`` areas owned by the writer, reused between jobs and grown
in whole pages when a larger job arrives; extents are copied into them on the writer, so the
trio thread only validates and enqueues.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import queue
import secrets
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import outcome
import trio

from clogfs.disklog.format import IMAGE_FILE_BLOCK_SIZE
from clogfs.errors import LocalProtocolError, LogDeviceError

__all__ = [
    "BLKGETSIZE64",
    "BLKSSZGET",
    "LogDevice",
    "LogWriteError",
    "OpenedDevice",
    "resolve_log_device",
]

log = logging.getLogger(__name__)

# include/uapi/linux/fs.h: #define BLKSSZGET _IO(0x12,104)  /* get block device sector size */
BLKSSZGET = 0x1268
# include/uapi/linux/fs.h: #define BLKGETSIZE64 _IOR(0x12,114,size_t)  /* device size in bytes */
BLKGETSIZE64 = 0x80081272
# ioctl argument of BLKSSZGET: int
_BLKSSZGET_ARG = struct.Struct("=i")
# ioctl argument of BLKGETSIZE64: u64 (size_t on 64-bit hosts)
_BLKGETSIZE64_ARG = struct.Struct("=Q")

OPEN_FLAGS = os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC  # never O_EXCL (disk-format.md §4)
_PAGE_SIZE = mmap.PAGESIZE
_MAX_MAJOR = (1 << 12) - 1  # include/linux/kdev_t.h: MINORBITS 20 in a 32-bit dev_t
_MAX_MINOR = (1 << 20) - 1


class LogWriteError(LogDeviceError):
    """A write to the log device failed.

    Attributes:
        flush_failed: ``False`` when a write failed (the log's device state becomes ``D``),
            ``True`` when every write succeeded and only the cache flush after them failed
            (state ``F``), as ``disk-format.md`` §6.
    """

    def __init__(self, message: str, *, errno: int, flush_failed: bool) -> None:
        super().__init__(message, errno=errno)
        self.flush_failed = flush_failed


@dataclass(frozen=True)
class OpenedDevice:
    """Plain facts about an opened log device, copied by the daemon into the core's DeviceInfo.

    Attributes:
        name: the name in the CTR reply: ``"maj:min"`` for a block device, the path for a
            regular file.
        dev_number: ``"maj:min"`` shown in STATUS_INFO (``st_rdev`` of a block device,
            ``st_dev`` of a regular file).
        identity: ``(st_rdev, 0)`` for a block device, ``(st_dev, st_ino)`` for a regular
            file; two opens of the same device compare equal.
        logical_block_size: ``BLKSSZGET`` of a block device, ``IMAGE_FILE_BLOCK_SIZE`` for a
            regular file; every I/O offset and length is a multiple of it.
        size_bytes: ``BLKGETSIZE64`` of a block device, ``st_size`` of a regular file.
        path: the path that was opened (a private node for an unlinked ``major:minor``).
    """

    name: str
    dev_number: str
    identity: tuple[int, int]
    logical_block_size: int
    size_bytes: int
    path: str


@dataclass(frozen=True)
class _Resolved:
    """Where a log device word led: the path to open and whether we created it."""

    path: Path
    private_node: bool


def _dev_str(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _parse_major_minor(word: str) -> int | None:
    """The ``dev_t`` of a ``major:minor`` word, or ``None`` if ``word`` has another shape.

    Raises:
        LogDeviceError: (``EINVAL``) decimal numbers out of the kernel's ``dev_t`` range.
    """
    major_s, sep, minor_s = word.partition(":")
    if not sep or not (major_s.isascii() and major_s.isdigit()):
        return None
    if not (minor_s.isascii() and minor_s.isdigit()):
        return None
    major, minor = int(major_s), int(minor_s)
    if major > _MAX_MAJOR or minor > _MAX_MINOR:
        raise LogDeviceError(f"log device {word}: device number out of range", errno=errno.EINVAL)
    return os.makedev(major, minor)


def _is_block_device(path: Path, rdev: int) -> bool:
    """Whether ``path`` (followed) is the block device ``rdev``; any error means no."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev


def _sysfs_devname(sysfs_dir: Path, word: str) -> str | None:
    """``DEVNAME=`` from ``<sysfs>/dev/block/<word>/uevent``, or ``None``."""
    try:
        text = (sysfs_dir / "dev" / "block" / word / "uevent").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == "DEVNAME" and value and ".." not in value.split("/"):
            return value
    return None


def _make_private_node(private_dir: Path, rdev: int) -> Path:
    """Create a block device node for ``rdev`` under ``private_dir`` with a fresh name."""
    private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        path = private_dir / f"logdev-{os.major(rdev)}-{os.minor(rdev)}-{secrets.token_hex(4)}"
        try:
            os.mknod(path, stat.S_IFBLK | 0o600, rdev)
        except FileExistsError:
            continue
        return path


def resolve_log_device(
    word: str,
    *,
    private_dir: Path,
    dev_dir: Path = Path("/dev"),
    sysfs_dir: Path = Path("/sys"),
) -> tuple[Path, bool]:
    """Resolve a log device word to a path, exactly as ``semantics.md`` §3.

    BLOCKING: stats paths, reads sysfs, may ``mknod``.

    An absolute path must name a block device or a regular file. ``major:minor`` (decimal)
    uses ``<dev_dir>/block/<major>:<minor>`` if its ``st_rdev`` matches; else ``DEVNAME=``
    from ``<sysfs_dir>/dev/block/<major>:<minor>/uevent`` as ``<dev_dir>/<DEVNAME>`` if its
    ``st_rdev`` matches; else a new private node under ``private_dir``.

    Args:
        word: the log device word of the CTR string.
        private_dir: where a private node may be created (the daemon's runtime directory).
        dev_dir: the device directory (``/dev``); tests point it elsewhere.
        sysfs_dir: where sysfs is mounted (``/sys``); tests point it elsewhere.

    Returns:
        The path to open and whether it is a private node the caller must remove.

    Raises:
        LogDeviceError: ``ENOENT`` (the path does not exist), ``ENOTBLK`` (neither a block
            device nor a regular file), ``EINVAL`` (neither ``major:minor`` nor an absolute
            path), the ``stat()`` or ``mknod()`` errno otherwise.
    """
    if word.startswith("/"):
        path = Path(word)
        try:
            st = path.stat()
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise LogDeviceError(f"log device {word}: {os.strerror(code)}", errno=code) from exc
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise LogDeviceError(
                f"log device {word}: neither a block device nor a regular file",
                errno=errno.ENOTBLK,
            )
        return path, False
    rdev = _parse_major_minor(word)
    if rdev is None:
        raise LogDeviceError(
            f"log device {word}: neither major:minor nor an absolute path", errno=errno.EINVAL
        )
    canonical = _dev_str(rdev)
    by_number = dev_dir / "block" / canonical
    if _is_block_device(by_number, rdev):
        return by_number, False
    devname = _sysfs_devname(sysfs_dir, canonical)
    if devname is not None and _is_block_device(dev_dir / devname, rdev):
        return dev_dir / devname, False
    try:
        return _make_private_node(private_dir, rdev), True
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise LogDeviceError(
            f"log device {word}: cannot create a node in {private_dir}: {os.strerror(code)}",
            errno=code,
        ) from exc


def _describe(fd: int, path: Path, *, private_node: bool) -> OpenedDevice:
    """The facts of the opened ``fd``, taken from the descriptor itself (no path race)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        arg = fcntl.ioctl(fd, BLKSSZGET, bytes(_BLKSSZGET_ARG.size))
        (logical_block_size,) = _BLKSSZGET_ARG.unpack(arg)
        arg = fcntl.ioctl(fd, BLKGETSIZE64, bytes(_BLKGETSIZE64_ARG.size))
        (size_bytes,) = _BLKGETSIZE64_ARG.unpack(arg)
        number = _dev_str(st.st_rdev)
        return OpenedDevice(
            name=number,
            dev_number=number,
            identity=(st.st_rdev, 0),
            logical_block_size=logical_block_size,
            size_bytes=size_bytes,
            path=str(path),
        )
    if stat.S_ISREG(st.st_mode) and not private_node:
        return OpenedDevice(
            name=str(path),
            dev_number=_dev_str(st.st_dev),
            identity=(st.st_dev, st.st_ino),
            logical_block_size=IMAGE_FILE_BLOCK_SIZE,
            size_bytes=st.st_size,
            path=str(path),
        )
    raise LogDeviceError(
        f"log device {path}: neither a block device nor a regular file", errno=errno.ENOTBLK
    )


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class _Job:
    """One unit of work for the writer, and how its outcome reaches the waiting trio task.

    The writer stores ``result`` and signals the job's eventfd; both happen under ``lock``,
    which also guards ``abandoned``: a waiter that is cancelled before ``done`` hands the
    eventfd to the writer (which closes it), so a signal can never reach a recycled
    eventfd.
    """

    __slots__ = ("abandoned", "done", "efd", "lock", "result", "run", "stop", "what")

    def __init__(self, run: Callable[[], Any], what: str, efd: int, *, stop: bool = False) -> None:
        self.run = run
        self.what = what
        self.efd = efd
        self.stop = stop
        self.lock = threading.Lock()
        self.done = False
        self.abandoned = False
        self.result: outcome.Outcome[Any] | None = None


class LogDevice:
    """An open log device with its own writer thread.

    Create with ``LogDevice.open`` (blocking, run it in a thread), use ``read`` and ``write``
    from trio, finish with ``aclose``. Reads and writes run in the order they were called.

    Resource handling:
        ``open`` starts the writer thread. The descriptor, the ``mmap`` buffer and a private
        device node belong to the writer, which releases all three when ``aclose`` asks,
        after every job queued before. Each waiting call holds one eventfd from a small
        per-device pool, returned when the outcome is collected.

    Error handling:
        I/O errors become ``LogDeviceError`` (reads) or ``LogWriteError`` (writes) carrying
        the ``OSError``'s errno; a short transfer is ``EIO``. Misaligned or out-of-range
        extents are a caller bug: ``LocalProtocolError``, raised before anything is queued.
        A cancelled caller leaves its job queued: it completes in order, and a failure of
        a job nobody waits for any more is logged at WARNING.
    """

    info: OpenedDevice

    def __init__(self, fd: int, info: OpenedDevice, *, private_node: Path | None) -> None:
        """Wrap an open descriptor and start its writer; use ``LogDevice.open`` instead."""
        self.info = info
        self._fd = fd
        self._private_node = private_node
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._buffer: mmap.mmap | None = None
        self._efd_pool: list[int] = []
        self._closing = False
        self._pool_closed = False
        self._thread = threading.Thread(
            target=self._serve,
            name=f"clogfs-logdev {info.name}",
            # A hung device must not keep the process from exiting.
            daemon=True,
        )
        self._thread.start()

    @classmethod
    def open(
        cls,
        word: str,
        *,
        private_dir: Path,
        dev_dir: Path = Path("/dev"),
        sysfs_dir: Path = Path("/sys"),
    ) -> LogDevice:
        """Resolve ``word`` and open the log device.

        BLOCKING: the daemon calls it in a thread at CTR.

        Args:
            word: ``major:minor`` (decimal) or an absolute path to a block device or a
                regular file.
            private_dir: where a private node is created when ``major:minor`` has no node
                under ``dev_dir``; the node is removed at ``aclose``.
            dev_dir: the device directory (tests only).
            sysfs_dir: the sysfs mount point (tests only).

        Returns:
            The open device, its writer thread running.

        Raises:
            LogDeviceError: ``ENOENT``, ``ENOTBLK``, ``EINVAL`` (see
                ``resolve_log_device``) or the ``open()`` errno; the message names the word.
        """
        path, private = resolve_log_device(
            word, private_dir=private_dir, dev_dir=dev_dir, sysfs_dir=sysfs_dir
        )
        try:
            try:
                fd = os.open(path, OPEN_FLAGS)
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise LogDeviceError(
                    f"log device {word}: cannot open {path}: {os.strerror(code)}", errno=code
                ) from exc
            try:
                info = _describe(fd, path, private_node=private)
            except OSError as exc:
                os.close(fd)
                code = exc.errno or errno.EIO
                raise LogDeviceError(
                    f"log device {word}: cannot query {path}: {os.strerror(code)}", errno=code
                ) from exc
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            if private:
                path.unlink(missing_ok=True)
            raise
        log.debug("opened log device %s as %s (%s)", word, path, info)
        return cls(fd, info, private_node=path if private else None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- trio side

    async def read(self, nbytes: int) -> bytes:
        """Read ``nbytes`` from offset 0 with one aligned O_DIRECT read.

        Args:
            nbytes: the buffer size, a positive multiple of the logical block size.

        Returns:
            Exactly ``nbytes`` bytes.

        Raises:
            LogDeviceError: the read failed or returned fewer bytes (``EIO``).
            LocalProtocolError: ``nbytes`` is not a positive multiple of the block size.
            trio.ClosedResourceError: the device was closed.
        """
        lbs = self.info.logical_block_size
        if nbytes <= 0 or nbytes % lbs:
            raise LocalProtocolError(
                f"log device {self.info.name}: read of {nbytes} bytes is not a positive "
                f"multiple of the logical block size {lbs}"
            )
        result: bytes = await self._submit(lambda: self._do_read(nbytes), "read")
        return result

    async def write(self, extents: Sequence[tuple[int, bytes]], *, cache_flush: bool) -> None:
        """Write ``extents`` with aligned O_DIRECT writes, then flush the cache if asked.

        Adjacent extents are written with one ``pwrite``. The writes of one call, and the
        calls on one device, reach the device in order.

        Args:
            extents: ``(byte offset, data)`` pairs in increasing, non-overlapping order;
                offsets and lengths are multiples of the logical block size and lie inside
                the device.
            cache_flush: ``fdatasync`` the device after the writes (``disk-format.md`` §4).

        Raises:
            LogWriteError: a write failed or was short (``flush_failed=False``), or only
                the cache flush failed (``flush_failed=True``).
            LocalProtocolError: the extents break the rules above; nothing was written.
            trio.ClosedResourceError: the device was closed.
        """
        runs = self._coalesce(extents)
        await self._submit(lambda: self._do_write(runs, cache_flush), "write")

    async def aclose(self) -> None:
        """Stop the writer after the jobs queued before, close the device, remove a node.

        Idempotent: a second call returns at once. If the caller is cancelled, the writer
        still closes everything once its queue is done.

        Raises:
            LogDeviceError: closing the descriptor failed (it is closed anyway).
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        try:
            await self._run_job(lambda: None, "close", stop=True)
        finally:
            self._pool_closed = True
            while self._efd_pool:
                os.close(self._efd_pool.pop())

    async def _submit(self, run: Callable[[], Any], what: str) -> Any:
        if self._closing:
            raise trio.ClosedResourceError(f"log device {self.info.name} is closed")
        return await self._run_job(run, what)

    async def _run_job(self, run: Callable[[], Any], what: str, *, stop: bool = False) -> Any:
        """Queue a job for the writer and wait for its outcome.

        Error handling:
            If the wait is cancelled before the job is done, the job is abandoned to the
            writer (it still runs, in order); if it is done already, its outcome is
            dropped (a failure is logged). Either way the cancellation propagates.
        """
        efd = (
            self._efd_pool.pop()
            if self._efd_pool
            else os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        )
        job = _Job(run, what, efd, stop=stop)
        self._queue.put(job)
        try:
            while True:
                # Wait first: the job is never done this soon, and a failed read would cost
                # a system call (and a GIL hand-over) per job.
                await trio.lowlevel.wait_readable(efd)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(efd)
                    break
        except BaseException:
            with job.lock:
                if not job.done:
                    job.abandoned = True  # the writer closes the eventfd
                    raise
            # done: the signal may have arrived while we were being cancelled
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(efd)
            self._recycle(efd)
            if isinstance(job.result, outcome.Error):
                self._log_dropped(job, job.result.error)
            raise
        self._recycle(efd)
        assert job.result is not None
        return job.result.unwrap()

    def _recycle(self, efd: int) -> None:
        if self._pool_closed:
            os.close(efd)
        else:
            self._efd_pool.append(efd)

    def _log_dropped(self, job: _Job, error: BaseException) -> None:
        log.warning(
            "log device %s: %s abandoned by a cancelled caller failed: %s",
            self.info.name,
            job.what,
            error,
        )

    def _coalesce(self, extents: Sequence[tuple[int, bytes]]) -> list[tuple[int, list[bytes]]]:
        """Check ``extents`` and group adjacent ones into runs ``(offset, [data, ...])``."""
        lbs = self.info.logical_block_size
        runs: list[tuple[int, list[bytes]]] = []
        end = 0
        for offset, data in extents:
            length = len(data)
            if offset % lbs or length % lbs or length == 0 or offset < end:
                raise LocalProtocolError(
                    f"log device {self.info.name}: extent ({offset}, {length} bytes) is "
                    f"misaligned to {lbs}, empty or out of order"
                )
            if offset + length > self.info.size_bytes:
                raise LocalProtocolError(
                    f"log device {self.info.name}: extent ({offset}, {length} bytes) ends "
                    f"beyond the device ({self.info.size_bytes} bytes)"
                )
            if runs and offset == end:
                runs[-1][1].append(data)
            else:
                runs.append((offset, [data]))
            end = offset + length
        return runs

    # --------------------------------------------------------------- writer side

    def _serve(self) -> None:
        """The writer thread: run jobs in order until the stop job."""
        while True:
            job = self._queue.get()
            result = outcome.capture(self._release if job.stop else job.run)
            with job.lock:
                job.result = result
                job.done = True
                abandoned = job.abandoned
                if not abandoned:
                    os.eventfd_write(job.efd, 1)
            if abandoned:  # nobody will read the eventfd
                os.close(job.efd)
                if isinstance(result, outcome.Error):
                    self._log_dropped(job, result.error)
            if job.stop:
                return

    def _release(self) -> None:
        """Close the descriptor and the buffer, remove a private node (blocking)."""
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        try:
            os.close(self._fd)
        finally:
            if self._private_node is not None:
                self._private_node.unlink(missing_ok=True)
        log.debug("closed log device %s", self.info.name)

    def _buffer_for(self, nbytes: int) -> mmap.mmap:
        """The writer's page-aligned buffer, grown to at least ``nbytes``."""
        buf = self._buffer
        if buf is None or len(buf) < nbytes:
            if buf is not None:
                buf.close()
            buf = mmap.mmap(-1, _round_up(nbytes, _PAGE_SIZE))
            self._buffer = buf
        return buf

    def _do_read(self, nbytes: int) -> bytes:
        buf = self._buffer_for(nbytes)
        try:
            with memoryview(buf) as view, view[:nbytes] as target:
                got = os.preadv(self._fd, [target], 0)
                data = bytes(target[:got])
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise LogDeviceError(
                f"log device {self.info.name}: read failed: {os.strerror(code)}", errno=code
            ) from exc
        if got != nbytes:
            raise LogDeviceError(
                f"log device {self.info.name}: short read: {got} of {nbytes} bytes",
                errno=errno.EIO,
            )
        return data

    def _do_write(self, runs: list[tuple[int, list[bytes]]], cache_flush: bool) -> None:
        name = self.info.name
        largest = max(sum(len(d) for d in datas) for _, datas in runs) if runs else 0
        buf = self._buffer_for(largest) if runs else None
        for offset, datas in runs:
            assert buf is not None
            length = 0
            for data in datas:
                buf[length : length + len(data)] = data
                length += len(data)
            try:
                with memoryview(buf) as view, view[:length] as source:
                    done = os.pwrite(self._fd, source, offset)
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise LogWriteError(
                    f"log device {name}: write of {length} bytes at {offset} failed: "
                    f"{os.strerror(code)}",
                    errno=code,
                    flush_failed=False,
                ) from exc
            if done != length:
                raise LogWriteError(
                    f"log device {name}: short write: {done} of {length} bytes at {offset}",
                    errno=errno.EIO,
                    flush_failed=False,
                )
        if cache_flush:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise LogWriteError(
                    f"log device {name}: cache flush failed: {os.strerror(code)}",
                    errno=code,
                    flush_failed=True,
                ) from exc
