"""Names and inode numbers of the FUSE view: log directory names and the one inode table.

Directory names. A log instance's directory is its uuid, escaped: printable ASCII stays as
it is, except ``\\``, ``/`` and ``@``, which like every other byte become ``\\xHH`` (two
lower-case hex digits). ``.`` and ``..`` are escaped entirely, and the empty uuid is written
``\\x00`` (a uuid is NUL-terminated on the wire, so it never contains that byte). While two
live instances share a uuid (a table reload), each of them is named ``<uuid>@<luid>`` with
the luid in lower-case hex with a ``0x`` prefix, the way the kernel prints pointers:
``LVM-abc@0xffff8881a2b3c400``. The name is a pure function of the set of live snapshots.

Inode numbers. The root is ``FUSE_ROOT_ID``; the daemon-wide files follow it in the order
of their table. Every log directory name gets an index the first time it is seen, and keeps
it for the lifetime of the mount (an index is never reused for another name, so an inode
number never changes its meaning). A directory's inode is ``index * INODES_PER_DIR`` and its
files follow it in the order of the per-log file table. Table rows are never freed: a name
that comes back gets its old numbers again, and a few dozen bytes per name ever seen is a
price worth an inode table that cannot go stale.

Core module: no trio, no pyfuse3, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clogfs.snapshot import LogSnapshot

FUSE_ROOT_ID = 1  # include/uapi/linux/fuse.h
INODES_PER_DIR = 32  # a log directory's inode and up to 31 files
FIRST_DAEMON_FILE_INODE = FUSE_ROOT_ID + 1
LUID_SEPARATOR = "@"
_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("\\"), ord("/"), ord(LUID_SEPARATOR)}


def escape_uuid(uuid: bytes) -> str:
    """Return the directory-name form of ``uuid`` (see the module docstring)."""
    if not uuid:
        return "\\x00"
    if uuid in (b".", b".."):
        return "".join(f"\\x{byte:02x}" for byte in uuid)
    return "".join(chr(byte) if byte in _PLAIN else f"\\x{byte:02x}" for byte in uuid)


def instance_name(uuid: bytes, luid: int, *, shared: bool) -> str:
    """Return the directory name of one log instance.

    Args:
        uuid: the log's uuid as the kernel sent it (without the terminating NUL).
        luid: the kernel's id of this instance.
        shared: whether another live instance has the same uuid.
    """
    name = escape_uuid(uuid)
    return f"{name}{LUID_SEPARATOR}{luid:#x}" if shared else name


def directory_names(snapshots: Iterable[LogSnapshot]) -> dict[str, LogSnapshot]:
    """Map each live instance's directory name to its snapshot, in name order."""
    snaps = list(snapshots)
    per_uuid: dict[bytes, int] = {}
    for snap in snaps:
        per_uuid[snap.uuid] = per_uuid.get(snap.uuid, 0) + 1
    named = {
        instance_name(snap.uuid, snap.luid, shared=per_uuid[snap.uuid] > 1): snap for snap in snaps
    }
    return dict(sorted(named.items()))


class Kind(enum.Enum):
    """What an inode number stands for."""

    ROOT = enum.auto()
    DAEMON_FILE = enum.auto()
    LOG_DIR = enum.auto()
    LOG_FILE = enum.auto()


@dataclass(frozen=True)
class InodeRef:
    """The meaning of one inode number: a kind, and the names that locate it."""

    kind: Kind
    dir_name: str | None = None  # LOG_DIR, LOG_FILE
    file_name: str | None = None  # DAEMON_FILE, LOG_FILE


class InodeTable:
    """Inode numbers for (directory name, file name), both ways.

    Args:
        daemon_files: names of the files in the root, in table order.
        log_files: names of the files in every log directory, in table order.

    Raises:
        ValueError: the file tables do not fit the numbering.
    """

    def __init__(self, daemon_files: Sequence[str], log_files: Sequence[str]) -> None:
        if len(log_files) >= INODES_PER_DIR:
            raise ValueError(f"{len(log_files)} log files do not fit {INODES_PER_DIR} inodes")
        self._daemon_files = tuple(daemon_files)
        self._log_files = tuple(log_files)
        # Directory indexes start after the block the root and the daemon files occupy.
        self._first_dir_index = -(-(FIRST_DAEMON_FILE_INODE + len(daemon_files)) // INODES_PER_DIR)
        self._dir_index: dict[str, int] = {}
        self._dir_names: list[str] = []

    def dir_inode(self, dir_name: str) -> int:
        """Return the inode of the log directory ``dir_name``, numbering it on first sight."""
        index = self._dir_index.get(dir_name)
        if index is None:
            index = self._first_dir_index + len(self._dir_names)
            self._dir_index[dir_name] = index
            self._dir_names.append(dir_name)
        return index * INODES_PER_DIR

    def daemon_file_inode(self, file_name: str) -> int:
        """Return the inode of a root file.

        Raises:
            KeyError: no such daemon file.
        """
        try:
            return FIRST_DAEMON_FILE_INODE + self._daemon_files.index(file_name)
        except ValueError:
            raise KeyError(file_name) from None

    def log_file_inode(self, dir_name: str, file_name: str) -> int:
        """Return the inode of ``file_name`` in the log directory ``dir_name``.

        Raises:
            KeyError: no such log file.
        """
        try:
            position = self._log_files.index(file_name)
        except ValueError:
            raise KeyError(file_name) from None
        return self.dir_inode(dir_name) + 1 + position

    def resolve(self, inode: int) -> InodeRef:
        """Return what ``inode`` stands for.

        Raises:
            KeyError: the number was never handed out.
        """
        if inode == FUSE_ROOT_ID:
            return InodeRef(Kind.ROOT)
        daemon_index = inode - FIRST_DAEMON_FILE_INODE
        if 0 <= daemon_index < len(self._daemon_files):
            return InodeRef(Kind.DAEMON_FILE, file_name=self._daemon_files[daemon_index])
        index, offset = divmod(inode, INODES_PER_DIR)
        position = index - self._first_dir_index
        if not 0 <= position < len(self._dir_names) or offset > len(self._log_files):
            raise KeyError(inode)
        dir_name = self._dir_names[position]
        if offset == 0:
            return InodeRef(Kind.LOG_DIR, dir_name=dir_name)
        return InodeRef(Kind.LOG_FILE, dir_name=dir_name, file_name=self._log_files[offset - 1])

    def __len__(self) -> int:
        """Inode numbers handed out so far (for ``statfs``)."""
        return 1 + len(self._daemon_files) + len(self._dir_names) * (1 + len(self._log_files))
