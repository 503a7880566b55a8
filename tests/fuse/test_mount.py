"""The view on a real FUSE mount, served from a thread (see ``helpers.ViewMount``)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clogfs.fusefs.render import DAEMON_FILES, LOG_FILES, DaemonFile, LogFile
from clogfs.fusefs.view import ENTRY_TIMEOUT_S
from clogfs.metrics import Metrics

from .helpers import (
    STARTED_AT,
    FakeSource,
    ViewMount,
    core_snapshot,
    fuse_available,
    listing,
    make_snapshot,
    mounted_options,
    replace,
    wait_until,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not fuse_available(), reason="needs root and /dev/fuse"),
]

DISK = make_snapshot()
CORE = core_snapshot()
DISK_DIR = DISK.uuid.decode()
CORE_DIR = CORE.uuid.decode()


@pytest.fixture(scope="module")
def source() -> FakeSource:
    return FakeSource([DISK, CORE])


@pytest.fixture(scope="module")
def view(source: FakeSource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewMount]:
    with ViewMount(source, tmp_path_factory.mktemp("view") / "clogfs") as mount:
        yield mount


@pytest.fixture
def fresh(view: ViewMount, source: FakeSource) -> Iterator[ViewMount]:
    """The module's view, put back to the two standard logs afterwards."""
    yield view
    source.set_snapshots([DISK, CORE])
    source.metrics_error = None
    view.logs_changed()
    wait_until(lambda: listing(view.mountpoint) >= {DISK_DIR, CORE_DIR})


def errno_of(action: Callable[[], object]) -> int:
    """The errno of the OSError ``action`` raises (failing the test if it raises none)."""
    try:
        action()
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("no error")


def read(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def test_mount_options(view: ViewMount) -> None:
    options = mounted_options(view.mountpoint)
    assert options is not None
    assert options[0] == "clogfs"
    assert {"ro", "default_permissions"} <= set(options)
    assert "allow_other" not in options


def test_root_listing(view: ViewMount) -> None:
    names = {row.name for row in DAEMON_FILES}
    assert listing(view.mountpoint) == names | {DISK_DIR, CORE_DIR}


def test_log_directory_listing(view: ViewMount) -> None:
    assert listing(view.mountpoint / DISK_DIR) == {row.name for row in LOG_FILES}
    assert listing(view.mountpoint / CORE_DIR) == {row.name for row in LOG_FILES} - {"device"}


def test_modes(view: ViewMount) -> None:
    assert stat.S_IMODE(os.stat(view.mountpoint).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(view.mountpoint / DISK_DIR).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(view.mountpoint / DISK_DIR / "state").st_mode) == 0o444


@pytest.mark.parametrize("row", DAEMON_FILES, ids=lambda row: row.name)
def test_every_daemon_file_reads(view: ViewMount, source: FakeSource, row: DaemonFile) -> None:
    content = read(view.mountpoint / row.name)
    if row.name == "uptime":
        assert float(content) > 0
    else:
        assert content == row.render(source.daemon_info(), STARTED_AT)


@pytest.mark.parametrize("row", LOG_FILES, ids=lambda row: row.name)
def test_every_log_file_reads(view: ViewMount, row: LogFile) -> None:
    assert read(view.mountpoint / DISK_DIR / row.name) == row.render(DISK)


def test_small_files_stat_their_exact_size(view: ViewMount) -> None:
    path = view.mountpoint / DISK_DIR / "status"
    assert os.stat(path).st_size == len(read(path)) == len(DISK.status) + 1


def test_an_open_file_stats_its_content_size(view: ViewMount) -> None:
    with open(view.mountpoint / DISK_DIR / "map.txt", "rb") as file:
        assert os.fstat(file.fileno()).st_size == len(file.read())


def test_metrics_file_parses(view: ViewMount, source: FakeSource, fresh: ViewMount) -> None:
    metrics = Metrics()
    metrics.observe_flush(DISK_DIR)
    source.metrics = metrics.render_prometheus([DISK, CORE])
    text = read(view.mountpoint / "metrics").decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"clogfs_flushes", "clogfs_logs"} <= names


@pytest.mark.parametrize("mode", ["wb", "r+b", "ab"])
def test_writing_a_file_is_refused(view: ViewMount, mode: str) -> None:
    path = view.mountpoint / DISK_DIR / "state"
    assert errno_of(lambda: open(path, mode).close()) in (errno.EACCES, errno.EROFS)


@pytest.mark.parametrize(
    "change",
    [
        lambda root: open(root / "new", "wb").close(),
        lambda root: os.mkdir(root / "new"),
        lambda root: os.unlink(root / "version"),
        lambda root: os.rename(root / "version", root / "v"),
        lambda root: os.chmod(root / "version", 0o666),
        lambda root: os.setxattr(root / "version", "user.x", b"1"),
        lambda root: os.setxattr(root, "fuse_stacktrace", b"1"),
    ],
    ids=["create", "mkdir", "unlink", "rename", "chmod", "setxattr", "stacktrace"],
)
def test_changes_are_refused(view: ViewMount, change: Callable[[Path], object]) -> None:
    assert errno_of(lambda: change(view.mountpoint)) in (errno.EACCES, errno.EROFS)


def test_no_xattrs(view: ViewMount) -> None:
    action = lambda: os.getxattr(view.mountpoint / "version", "user.x")  # noqa: E731
    assert errno_of(action) in (errno.ENOTSUP, errno.ENOSYS, errno.ENODATA)


def test_a_log_directory_appears_and_disappears(
    view: ViewMount, source: FakeSource, fresh: ViewMount
) -> None:
    new = core_snapshot(uuid=b"LVM-new", luid=11)
    source.set_snapshots([DISK, new])
    view.logs_changed()
    wait_until(lambda: "LVM-new" in listing(view.mountpoint))
    assert read(view.mountpoint / "LVM-new" / "region_count") == b"16\n"
    wait_until(lambda: not (view.mountpoint / CORE_DIR).exists())  # invalidated asynchronously


def test_a_vanished_directory_is_invalidated_before_its_entry_times_out(
    view: ViewMount, source: FakeSource, fresh: ViewMount
) -> None:
    os.stat(view.mountpoint / CORE_DIR / "state")  # the kernel caches both entries now
    start = time.monotonic()
    source.set_snapshots([DISK])
    view.logs_changed()
    wait_until(lambda: not (view.mountpoint / CORE_DIR).exists(), timeout=ENTRY_TIMEOUT_S)
    assert time.monotonic() - start < ENTRY_TIMEOUT_S


def test_instances_sharing_a_uuid_carry_their_luid(
    view: ViewMount, source: FakeSource, fresh: ViewMount
) -> None:
    reloaded = replace(DISK, luid=0x1234ABCD, state="constructed")
    source.set_snapshots([DISK, reloaded, CORE])
    view.logs_changed()
    old, new = f"{DISK_DIR}@{DISK.luid:#x}", f"{DISK_DIR}@0x1234abcd"
    wait_until(lambda: {old, new} <= listing(view.mountpoint))
    assert DISK_DIR not in listing(view.mountpoint)
    assert read(view.mountpoint / new / "state") == b"constructed\n"
    assert read(view.mountpoint / old / "state") == b"resumed\n"


def test_an_open_file_reads_its_snapshot_after_the_log_is_gone(
    view: ViewMount, source: FakeSource, fresh: ViewMount
) -> None:
    with open(view.mountpoint / DISK_DIR / "history", "rb") as file:
        source.set_snapshots([CORE])
        view.logs_changed()
        wait_until(lambda: DISK_DIR not in listing(view.mountpoint))
        assert file.read() == next(r for r in LOG_FILES if r.name == "history").render(DISK)


def test_a_broken_handler_gives_eio_and_the_view_serves_on(
    view: ViewMount, source: FakeSource, fresh: ViewMount
) -> None:
    source.metrics_error = RuntimeError("deliberate failure in a test")
    assert errno_of(lambda: read(view.mountpoint / "metrics")) == errno.EIO
    assert read(view.mountpoint / "version") == b"0.1.0\n"
