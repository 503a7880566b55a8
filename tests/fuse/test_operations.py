"""The view's pyfuse3 operations, called in process (no mount)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import cast

import pyfuse3
import pytest

from clogfs.fusefs import view as view_module
from clogfs.fusefs.render import LOG_FILES, LogFile
from clogfs.fusefs.view import ViewOperations, fuse_handler
from clogfs.snapshot import LogSnapshot

from .helpers import STARTED_AT, FakeSource, core_snapshot, make_snapshot

CTX = cast(pyfuse3.RequestContext, None)  # the handlers never look at the context
LOG = make_snapshot().uuid.decode()


def ops_with(*snapshots: LogSnapshot, **info: object) -> tuple[ViewOperations, FakeSource]:
    source = FakeSource(snapshots or [make_snapshot(), core_snapshot()], **info)
    return ViewOperations(source, clock=lambda: STARTED_AT + 1), source


async def lookup_path(ops: ViewOperations, *names: str) -> pyfuse3.EntryAttributes:
    inode = pyfuse3.ROOT_INODE
    attr = await ops.getattr(inode, CTX)
    for name in names:
        attr = await ops.lookup(inode, os.fsencode(name), CTX)
        inode = attr.st_ino
    return attr


async def read_all(ops: ViewOperations, inode: int, flags: int = os.O_RDONLY) -> bytes:
    info = await ops.open(inode, flags, CTX)
    try:
        return await ops.read(info.fh, 0, 1 << 30)
    finally:
        await ops.release(info.fh)


async def expect_errno(code: int, awaitable: object) -> None:
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await awaitable  # type: ignore[misc]
    assert caught.value.errno == code


async def test_lookup_of_a_daemon_file_gives_its_exact_size() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, "version")
    assert attr.st_size == len(b"0.1.0\n")
    assert attr.st_mode == 0o100444


async def test_lookup_of_a_log_directory() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, LOG)
    assert attr.st_mode == 0o040555
    assert attr.entry_timeout == attr.attr_timeout == 1.0


async def test_lookup_of_an_unknown_name_is_enoent() -> None:
    ops, _ = ops_with()
    await expect_errno(errno.ENOENT, lookup_path(ops, "nope"))
    await expect_errno(errno.ENOENT, lookup_path(ops, LOG, "nope"))


async def test_core_logs_have_no_device_file() -> None:
    ops, _ = ops_with()
    await expect_errno(errno.ENOENT, lookup_path(ops, "core-log", "device"))


async def test_lookup_in_a_file_is_enotdir() -> None:
    ops, _ = ops_with()
    await expect_errno(errno.ENOTDIR, lookup_path(ops, "version", "x"))


async def test_dot_and_dotdot_lookups() -> None:
    ops, _ = ops_with()
    directory = await lookup_path(ops, LOG)
    assert (await ops.lookup(directory.st_ino, b".", CTX)).st_ino == directory.st_ino
    assert (await ops.lookup(directory.st_ino, b"..", CTX)).st_ino == pyfuse3.ROOT_INODE


@pytest.mark.parametrize("row", LOG_FILES, ids=lambda row: row.name)
async def test_every_log_file_reads_its_rendering(row: LogFile) -> None:
    ops, source = ops_with()
    attr = await lookup_path(ops, LOG, row.name)
    assert await read_all(ops, attr.st_ino) == row.render(source.snapshots()[0])


async def test_reads_at_an_offset() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, LOG, "table")
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 10, 5) == b"disk "
    assert await ops.read(info.fh, 1000, 5) == b""


async def test_open_uses_direct_io_and_no_cache() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, "node")
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    assert info.direct_io
    assert not info.keep_cache


@pytest.mark.parametrize(
    "flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND]
)
async def test_open_for_writing_is_eacces(flags: int) -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, LOG, "state")
    await expect_errno(errno.EACCES, ops.open(attr.st_ino, flags, CTX))


async def test_open_of_a_directory_is_eisdir() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, LOG)
    await expect_errno(errno.EISDIR, ops.open(attr.st_ino, os.O_RDONLY, CTX))


async def test_heavy_files_report_size_zero_until_opened_then_the_last_size() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, LOG, "dirty")
    assert attr.st_size == 0
    content = await read_all(ops, attr.st_ino)
    assert (await ops.getattr(attr.st_ino, CTX)).st_size == len(content) == len(b"5-7\n")


async def test_an_open_file_outlives_its_log() -> None:
    ops, source = ops_with()
    attr = await lookup_path(ops, LOG, "state")
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    source.set_snapshots([core_snapshot()])
    assert await ops.read(info.fh, 0, 100) == b"resumed\n"
    assert (await ops.getattr(attr.st_ino, CTX)).st_size == len(b"resumed\n")
    await expect_errno(errno.ENOENT, lookup_path(ops, LOG))
    await ops.release(info.fh)
    await expect_errno(errno.ENOENT, ops.getattr(attr.st_ino, CTX))


async def test_a_file_is_rendered_once_at_open() -> None:
    ops, source = ops_with()
    attr = await lookup_path(ops, LOG, "sync_count")
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    source.set_snapshots([make_snapshot(sync_count=99)])
    assert await ops.read(info.fh, 0, 100) == b"90\n"
    assert await read_all(ops, attr.st_ino) == b"99\n"


async def test_unknown_inodes_and_handles() -> None:
    ops, _ = ops_with()
    await expect_errno(errno.ENOENT, ops.getattr(12345, CTX))
    await expect_errno(errno.EBADF, ops.read(99, 0, 10))


async def test_statfs_counts_numbered_inodes() -> None:
    ops, _ = ops_with()
    await lookup_path(ops, LOG)
    data = await ops.statfs(CTX)
    assert data.f_files == len(ops.inodes)
    assert data.f_namemax == 255


async def test_uptime_uses_the_clock() -> None:
    ops, _ = ops_with()
    attr = await lookup_path(ops, "uptime")
    assert await read_all(ops, attr.st_ino) == b"1.00\n"


async def test_a_failing_handler_gives_eio_and_one_log_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> str:
        raise RuntimeError("metrics exploded")

    ops, _ = ops_with(metrics_text=broken)
    attr = await lookup_path(ops, "version")  # a healthy file: served
    metrics_inode = attr.st_ino + 4
    with caplog.at_level(logging.ERROR, logger="clogfs.fusefs.view"):
        await expect_errno(errno.EIO, ops.open(metrics_inode, os.O_RDONLY, CTX))
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "metrics exploded" in str(record.exc_info[1])
    assert await read_all(ops, attr.st_ino) == b"0.1.0\n"


async def test_fuse_errors_pass_the_decorator_unlogged(caplog: pytest.LogCaptureFixture) -> None:
    @fuse_handler
    async def refuse() -> None:
        raise pyfuse3.FUSEError(errno.ENOENT)

    with caplog.at_level(logging.DEBUG):
        await expect_errno(errno.ENOENT, refuse())
    assert caplog.records == []


async def test_heavy_files_render_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def recording(snapshot: LogSnapshot) -> bytes:
        threads.append(threading.get_ident())
        return b"x"

    monkeypatch.setitem(view_module._LOG_BY_NAME, "dirty", LogFile("dirty", recording, heavy=True))
    monkeypatch.setitem(view_module._LOG_BY_NAME, "state", LogFile("state", recording))
    ops, _ = ops_with()
    for name in ("dirty", "state"):
        attr = await lookup_path(ops, LOG, name)
        assert await read_all(ops, attr.st_ino) == b"x"
    loop_thread = threading.get_ident()
    dirty_thread, *state_threads = threads  # state renders at lookup (for its size) and open
    assert dirty_thread != loop_thread
    assert state_threads == [loop_thread, loop_thread]
