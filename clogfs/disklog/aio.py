"""Linux native AIO through raw system calls: the ``iocb``/``io_event`` layouts and a context.

The log device writer (``clogfs.disklog.device``) submits its O_DIRECT writes through this
module instead of handing them to a thread. There is no library: ``ctypes`` calls
``syscall(2)`` with the x86_64 numbers below, and the two kernel structures are declared
field by field after ``include/uapi/linux/aio_abi.h`` (little-endian layout, 64 and 32
bytes, no implicit padding).

``AioContext`` owns one kernel AIO context (``io_setup``) and one eventfd that every
request it submits signals on completion (``IOCB_FLAG_RESFD``), so a trio task can wait for
completions with ``trio.lowlevel.wait_readable`` and reap them with ``io_getevents`` and a
zero timeout. It knows nothing of trio: it submits, reaps and closes; the caller decides
when to wait. None of its calls blocks except ``close`` (``io_destroy`` waits for requests
still in flight).

Ownership rule: a request's ``Iocb`` and the memory its ``aio_buf`` points to must stay
alive, untouched, until its completion was reaped (or ``close`` returned). The callers keep
them referenced in their in-flight table.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from collections.abc import Sequence

__all__ = [
    "IOCB_CMD_FDSYNC",
    "IOCB_CMD_PREAD",
    "IOCB_CMD_PWRITE",
    "IOCB_FLAG_RESFD",
    "AioContext",
    "AioUnavailable",
    "IoEvent",
    "Iocb",
]

# arch/x86/entry/syscalls/syscall_64.tbl (x86_64 only; other architectures: AioUnavailable)
SYS_io_setup = 206
SYS_io_destroy = 207
SYS_io_getevents = 208
SYS_io_submit = 209

# include/uapi/linux/aio_abi.h: enum { IOCB_CMD_PREAD = 0, IOCB_CMD_PWRITE = 1,
# IOCB_CMD_FSYNC = 2, IOCB_CMD_FDSYNC = 3, ... }
IOCB_CMD_PREAD = 0
IOCB_CMD_PWRITE = 1
IOCB_CMD_FSYNC = 2
IOCB_CMD_FDSYNC = 3
# include/uapi/linux/aio_abi.h: #define IOCB_FLAG_RESFD (1 << 0)
IOCB_FLAG_RESFD = 1 << 0


class Iocb(ctypes.Structure):
    """``struct iocb``, ``include/uapi/linux/aio_abi.h`` (little-endian field order, 64 bytes).

    ``__u64 aio_data; __u32 aio_key; __kernel_rwf_t aio_rw_flags; __u16 aio_lio_opcode;
    __s16 aio_reqprio; __u32 aio_fildes; __u64 aio_buf; __u64 aio_nbytes; __s64 aio_offset;
    __u64 aio_reserved2; __u32 aio_flags; __u32 aio_resfd;``
    """

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),  # __kernel_rwf_t is int
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class IoEvent(ctypes.Structure):
    """``struct io_event``, ``include/uapi/linux/aio_abi.h`` (32 bytes).

    ``__u64 data; __u64 obj; __s64 res; __s64 res2;``: ``data`` is the request's
    ``aio_data``, ``obj`` the address of its ``iocb``, ``res`` the byte count or a negative
    errno.
    """

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


assert ctypes.sizeof(Iocb) == 64, "struct iocb is 64 bytes"
assert ctypes.sizeof(IoEvent) == 32, "struct io_event is 32 bytes"

# include/uapi/linux/aio_abi.h: typedef __kernel_ulong_t aio_context_t;
_aio_context_t = ctypes.c_ulong


class _Timespec(ctypes.Structure):
    """``struct __kernel_timespec``, ``include/uapi/linux/time_types.h``."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class AioUnavailable(OSError):
    """Native AIO cannot be used here (architecture, ``io_setup`` or eventfd failed)."""


_libc: ctypes.CDLL | None = None


def _syscall() -> ctypes._FuncPointer:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn: ctypes._FuncPointer = _libc.syscall
    fn.restype = ctypes.c_long
    return fn


_ZERO_TIMEOUT = _Timespec(0, 0)


class AioContext:
    """One kernel AIO context whose requests signal one eventfd when they complete.

    Args:
        nr_events: how many requests may be in flight at once (``io_setup``'s argument);
            ``submit`` submits fewer when the ring is full.

    Raises:
        AioUnavailable: not x86_64, or ``io_setup`` or ``eventfd`` failed (the errno is
            kept); nothing is left open.

    Resource handling:
        ``close`` destroys the context (waiting for requests in flight, ``io_destroy``) and
        closes the eventfd; idempotent. The caller must not release a request's memory
        before its event was reaped or ``close`` returned.
    """

    def __init__(self, nr_events: int) -> None:
        if platform.machine() != "x86_64":
            arch = platform.machine()
            raise AioUnavailable(errno.ENOSYS, f"native AIO numbers unknown on {arch}")
        self._syscall = _syscall()
        self._ctx = _aio_context_t(0)
        if self._syscall(SYS_io_setup, ctypes.c_uint(nr_events), ctypes.byref(self._ctx)) < 0:
            code = ctypes.get_errno()
            raise AioUnavailable(code, f"io_setup({nr_events}): {os.strerror(code)}")
        try:
            self.eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError as exc:
            self._syscall(SYS_io_destroy, self._ctx)
            raise AioUnavailable(exc.errno or errno.EIO, f"eventfd: {exc.strerror}") from exc
        self.nr_events = nr_events
        self._events = (IoEvent * nr_events)()
        self.closed = False

    def prepare(
        self,
        iocb: Iocb,
        *,
        opcode: int,
        fd: int,
        buf: int,
        nbytes: int,
        offset: int,
        rw_flags: int,
        data: int,
    ) -> None:
        """Fill every field of ``iocb`` for one request that signals this context's eventfd."""
        iocb.aio_data = data
        iocb.aio_key = 0
        iocb.aio_rw_flags = rw_flags
        iocb.aio_lio_opcode = opcode
        iocb.aio_reqprio = 0
        iocb.aio_fildes = fd
        iocb.aio_buf = buf
        iocb.aio_nbytes = nbytes
        iocb.aio_offset = offset
        iocb.aio_reserved2 = 0
        iocb.aio_flags = IOCB_FLAG_RESFD
        iocb.aio_resfd = self.eventfd

    def submit(self, iocbs: Sequence[Iocb]) -> int:
        """``io_submit`` the requests; how many the kernel took (a prefix of ``iocbs``).

        Returns:
            The number submitted; 0 when the ring is full (``EAGAIN``) before the first.

        Raises:
            OSError: the first request was refused (``EINVAL``, ``EBADF``, ``EOPNOTSUPP``
                for an unsupported ``aio_rw_flags``...); the requests after it were not
                submitted either.
        """
        n = len(iocbs)
        if n == 0:
            return 0
        pointers = (ctypes.c_void_p * n)(*map(ctypes.addressof, iocbs))  # struct iocb **
        got = self._syscall(SYS_io_submit, self._ctx, ctypes.c_long(n), pointers)
        if got < 0:
            code = ctypes.get_errno()
            if code == errno.EAGAIN:
                return 0
            raise OSError(code, f"io_submit: {os.strerror(code)}")
        return int(got)

    def reap(self) -> list[tuple[int, int]]:
        """Completed requests as ``(aio_data, res)``, without waiting; clears the eventfd.

        ``res`` is the transferred byte count, or a negative errno.
        """
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.eventfd)
        done: list[tuple[int, int]] = []
        events = self._events
        while True:
            got = self._syscall(
                SYS_io_getevents,
                self._ctx,
                ctypes.c_long(0),
                ctypes.c_long(self.nr_events),
                events,
                ctypes.byref(_ZERO_TIMEOUT),
            )
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                raise OSError(code, f"io_getevents: {os.strerror(code)}")
            done.extend((events[i].data, events[i].res) for i in range(got))
            if got < self.nr_events:
                return done

    def close(self) -> None:
        """Destroy the context (waits for requests in flight) and close the eventfd."""
        if self.closed:
            return
        self.closed = True
        self._syscall(SYS_io_destroy, self._ctx)
        os.close(self.eventfd)
