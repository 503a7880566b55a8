"""The one exception hierarchy of clogfs, and the one negative-errno translation.

Handlers raise; they never return error codes. Errors are translated only at the
boundaries: the netlink endpoint turns them into ``dm_ulog_request.error`` (a negative
errno), the FUSE view into ``FUSEError``, the command-line tools into exit statuses.

Core module: imports nothing but the standard library's ``errno``.
"""

from __future__ import annotations

import errno as _errno


class ClogfsError(Exception):
    """Base of every error clogfs raises on purpose."""

    #: positive errno this error maps to at the kernel boundary
    errno: int = _errno.EIO

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class KernelProtocolError(ClogfsError):
    """The kernel (or an emulator) sent something we refuse: bad lengths, bad arguments."""

    errno = _errno.EINVAL


class LocalProtocolError(ClogfsError):
    """We were about to produce something illegal: a bug in clogfs."""

    errno = _errno.EIO


class ClusterProtocolError(ClogfsError):
    """A malformed or unexpected message on the cluster wire."""

    errno = _errno.EPROTO


class FormatError(ClogfsError):
    """Bad on-disk bytes (shared by RESUME and clog-fsck)."""

    errno = _errno.EINVAL


class LogDeviceError(ClogfsError):
    """A log device could not be resolved, opened, read or written."""

    errno = _errno.EIO


class UnknownLogError(ClogfsError):
    """A request named a log instance this daemon does not know."""

    errno = _errno.ESRCH


class UsageError(ClogfsError):
    """A command-line usage error: printed without a traceback, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message, errno=_errno.EINVAL)
        self.exit_code = exit_code


def negative_errno(exc: BaseException) -> int:
    """Return the negative errno the kernel must see for ``exc``.

    A ``ClogfsError`` carries its own errno; an ``OSError`` its ``errno``; anything else is
    a bug and maps to ``-EIO``. The result is always < 0.
    """
    if isinstance(exc, ClogfsError) or (isinstance(exc, OSError) and exc.errno):
        code = exc.errno
    else:
        code = _errno.EIO
    return -abs(code) if code else -_errno.EIO
