"""The read-only FUSE operations of the view: lookup, attributes, directories, open and read.

``ViewOperations`` answers the kernel from what a ``ViewSource`` publishes: it asks for the
snapshots at ``lookup``, ``getattr``, ``opendir`` and ``open``, renders a file once at
``open`` and serves reads from that rendering until ``release``. Directory listings are
fixed at ``opendir``. Every other request stays ``ENOSYS``; the mount is read-only, and an
open for writing gets ``EACCES``. Every handler is wrapped in ``@fuse_handler``, so a bug
here becomes ``EIO`` and one log line, never an exception out of ``pyfuse3.main()``.

Sizes: ``st_size`` of a file is the size of its most recent rendering at ``open`` (and the
kernel's cached attributes are dropped at ``open``, so ``fstat`` of a new handle agrees with
its content). Before its first ``open`` a small file or a bitmap reports its exact current
size (cheap to render at ``getattr``); an O(regions) file (``dirty``, ``out_of_sync``,
``map.txt``, ``map.png``) reports 0. Files are opened with ``direct_io``, so reads never
depend on ``st_size``.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from clogfs.fusefs.inodes import InodeRef, InodeTable, Kind, directory_names
from clogfs.fusefs.render import DAEMON_FILES, LOG_FILES, DaemonFile, LogFile
from clogfs.fusefs.source import ViewSource
from clogfs.snapshot import LogSnapshot

log = logging.getLogger(__name__)

ATTR_TIMEOUT_S = 1.0  # attributes of live files change all the time
ENTRY_TIMEOUT_S = 1.0  # log directories come and go (and are invalidated when they do)
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
BLOCK_SIZE = 4096
NAME_MAX = 255  # include/uapi/linux/limits.h
RENDER_THREADS = 1  # heavy renderings run one at a time, so a burst of opens takes one core

_DAEMON_BY_NAME: dict[str, DaemonFile] = {row.name: row for row in DAEMON_FILES}
_LOG_BY_NAME: dict[str, LogFile] = {row.name: row for row in LOG_FILES}

P = ParamSpec("P")
R = TypeVar("R")


def fuse_handler(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a FUSE handler so that nothing but ``FUSEError`` ever leaves it.

    ``FUSEError`` passes through; any other ``Exception`` is logged with its traceback and
    becomes ``FUSEError(EIO)``. ``trio.Cancelled`` and other ``BaseException``s pass.
    """

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("FUSE %s%r failed; answering EIO", handler.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(frozen=True)
class OpenFile:
    """A file handle: the content rendered at ``open``, and the inode it came from."""

    inode: int
    content: bytes


@dataclass(frozen=True)
class OpenDir:
    """A directory handle: the listing fixed at ``opendir``, as (name, inode) pairs."""

    inode: int
    entries: tuple[tuple[str, int], ...]


class ViewOperations(pyfuse3.Operations):
    """The view's ``pyfuse3.Operations``.

    Args:
        source: the daemon's snapshots and facts.
        inodes: the inode table (shared with ``ViewHandle``, which invalidates entries).
        clock: seconds since the epoch, for ``uptime``.
        invalidate_attributes: drops the kernel's cached attributes of an inode; called at
            ``open`` so that ``fstat`` of the new handle sees the size of its rendering.
            Mounted views pass ``pyfuse3.invalidate_inode``; tests in process pass nothing.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        source: ViewSource,
        inodes: InodeTable | None = None,
        *,
        clock: Callable[[], float] = time.time,
        invalidate_attributes: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.inodes = inodes if inodes is not None else new_inode_table()
        self._clock = clock
        self._invalidate_attributes = invalidate_attributes
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._handles = itertools.count(1)
        self._rendered_size: dict[int, int] = {}
        self._render_limiter = trio.CapacityLimiter(RENDER_THREADS)

    # ------------------------------------------------------------ names and attributes

    def live_logs(self) -> dict[str, LogSnapshot]:
        """The live log directories by name, from a fresh list of snapshots."""
        return directory_names(self.source.snapshots())

    def _snapshot(self, ref: InodeRef) -> LogSnapshot:
        assert ref.dir_name is not None
        snap = self.live_logs().get(ref.dir_name)
        if snap is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if ref.kind is Kind.LOG_FILE:
            assert ref.file_name is not None
            if not _LOG_BY_NAME[ref.file_name].present(snap):
                raise pyfuse3.FUSEError(errno.ENOENT)
        return snap

    def _resolve(self, inode: int) -> InodeRef:
        try:
            return self.inodes.resolve(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attributes(self, inode: int, mode: int, size: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = ENTRY_TIMEOUT_S
        attr.attr_timeout = ATTR_TIMEOUT_S
        attr.st_mode = mode
        attr.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        attr.st_uid = 0
        attr.st_gid = 0
        attr.st_rdev = 0
        attr.st_size = size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = -(-size // 512)
        stamp = int(self.source.daemon_info().started_at * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = stamp
        return attr

    def _file_size(self, inode: int, row: LogFile, snap: LogSnapshot) -> int:
        if row.heavy or inode in self._rendered_size:
            return self._rendered_size.get(inode, 0)
        return len(row.render(snap))

    def _attributes_of(self, inode: int, ref: InodeRef) -> pyfuse3.EntryAttributes:
        if ref.kind is Kind.ROOT:
            return self._attributes(inode, DIR_MODE, 0)
        if ref.kind is Kind.DAEMON_FILE:
            assert ref.file_name is not None
            content = _DAEMON_BY_NAME[ref.file_name].render(
                self.source.daemon_info(), self._clock()
            )
            return self._attributes(inode, FILE_MODE, len(content))
        if ref.kind is Kind.LOG_DIR:
            self._snapshot(ref)
            return self._attributes(inode, DIR_MODE, 0)
        assert ref.file_name is not None
        snap = self._snapshot(ref)
        size = self._file_size(inode, _LOG_BY_NAME[ref.file_name], snap)
        return self._attributes(inode, FILE_MODE, size)

    def _open_size(self, inode: int) -> int | None:
        """The size of an open handle's content for ``inode`` (its log may be gone)."""
        for handle in self._files.values():
            if handle.inode == inode:
                return len(handle.content)
        return None

    # ------------------------------------------------------------ handlers

    @fuse_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Find ``name`` in a directory (``.`` and ``..`` included)."""
        parent = self._resolve(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return await self.getattr(parent_inode, ctx)
        if text == "..":
            return await self.getattr(pyfuse3.ROOT_INODE, ctx)
        if parent.kind is Kind.ROOT:
            if text in _DAEMON_BY_NAME:
                inode = self.inodes.daemon_file_inode(text)
            elif text in self.live_logs():
                inode = self.inodes.dir_inode(text)
            else:
                raise pyfuse3.FUSEError(errno.ENOENT)
        elif parent.kind is Kind.LOG_DIR:
            assert parent.dir_name is not None
            if text not in _LOG_BY_NAME:
                raise pyfuse3.FUSEError(errno.ENOENT)
            inode = self.inodes.log_file_inode(parent.dir_name, text)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._attributes_of(inode, self._resolve(inode))

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of a live inode, or of an open file whose log is gone."""
        ref = self._resolve(inode)
        try:
            return self._attributes_of(inode, ref)
        except pyfuse3.FUSEError:
            size = self._open_size(inode)
            if size is None:
                raise
            return self._attributes(inode, FILE_MODE, size)

    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Fix the listing of a directory for this handle."""
        ref = self._resolve(inode)
        if ref.kind is Kind.ROOT:
            entries = [(row.name, self.inodes.daemon_file_inode(row.name)) for row in DAEMON_FILES]
            entries += [(name, self.inodes.dir_inode(name)) for name in self.live_logs()]
        elif ref.kind is Kind.LOG_DIR:
            assert ref.dir_name is not None
            snap = self._snapshot(ref)
            entries = [
                (row.name, self.inodes.log_file_inode(ref.dir_name, row.name))
                for row in LOG_FILES
                if row.present(snap)
            ]
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._handles)
        self._dirs[fh] = OpenDir(inode, tuple(entries))
        return fh

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """List the entries fixed at ``opendir``; ``next_id`` is the position plus one."""
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for position in range(start_id, len(handle.entries)):
            name, inode = handle.entries[position]
            try:
                attr = self._attributes_of(inode, self._resolve(inode))
            except pyfuse3.FUSEError:
                continue  # gone since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, position + 1):
                break

    @fuse_handler
    async def releasedir(self, fh: int) -> None:
        """Forget a directory handle."""
        self._dirs.pop(fh, None)

    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Render the file once, from one snapshot; refuse writing with ``EACCES``."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EACCES)
        ref = self._resolve(inode)
        if ref.kind in (Kind.ROOT, Kind.LOG_DIR):
            raise pyfuse3.FUSEError(errno.EISDIR)
        assert ref.file_name is not None
        if ref.kind is Kind.DAEMON_FILE:
            row = _DAEMON_BY_NAME[ref.file_name]
            content = row.render(self.source.daemon_info(), self._clock())
        else:
            content = await self._render_log_file(_LOG_BY_NAME[ref.file_name], self._snapshot(ref))
        if self._rendered_size.get(inode) != len(content):
            self._rendered_size[inode] = len(content)
            if self._invalidate_attributes is not None:
                self._invalidate_attributes(inode)
        fh = next(self._handles)
        self._files[fh] = OpenFile(inode, content)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    async def _render_log_file(self, row: LogFile, snap: LogSnapshot) -> bytes:
        if not row.heavy:
            return row.render(snap)
        # The snapshot is immutable, so the thread shares nothing mutable with the loop;
        # on cancellation its result is simply dropped.
        return await trio.to_thread.run_sync(
            row.render, snap, limiter=self._render_limiter, abandon_on_cancel=True
        )

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Return ``size`` bytes at ``off`` of the rendering (short at the end)."""
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle.content[off : off + size]

    @fuse_handler
    async def release(self, fh: int) -> None:
        """Drop the rendering of a closed file."""
        self._files.pop(fh, None)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: inode numbers live as long as the mount (see ``inodes``).

        Not wrapped: pyfuse3 forbids ``forget`` to raise at all, and this one cannot.
        """

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """A filesystem of no blocks, with as many inodes as numbered so far."""
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.inodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    def stacktrace(self) -> None:
        """Ignore pyfuse3's ``fuse_stacktrace`` xattr: the view has no control channel."""


def new_inode_table() -> InodeTable:
    """An inode table for the view's file tables."""
    return InodeTable([row.name for row in DAEMON_FILES], [row.name for row in LOG_FILES])
