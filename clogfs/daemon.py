"""The composition root of clogfsd: one nursery, every service, signals, exit codes.

Start order: the single-instance lock, the netlink connector socket (bound and joined), the
check that no other listener is joined to the connector group, the request service, the
FUSE view (unless ``--no-mount``), then systemd's ``READY=1``. With ``--cluster corosync`` the
daemon first joins corosync's ``clogfsd`` presence group (which gives this node's id; corosync
not running is ``ExitCode.CLUSTER``), and starts the quorum tracker (unless ``--no-quorum``)
before serving; ``clogfs.cluster`` (and cffi) is imported only then. Each resource's teardown is
registered right after it is made. Stopping is cancelling the root scope: SIGTERM/SIGINT do
that only while no log is live (like cmirrord; exiting would leave the kernel waiting).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from clogfs import __version__
from clogfs.errors import ClogfsError
from clogfs.metrics import Metrics
from clogfs.netlink.endpoint import open_connector_socket, other_group_listeners, serve_endpoint
from clogfs.registry import LogRegistry
from clogfs.service import LogService

log = logging.getLogger(__name__)


class ExitCode(enum.IntEnum):
    """clogfsd's exit statuses (listed in clogfsd(8))."""

    OK = 0  # clean exit: asked to stop with no live log
    ERROR = 1  # unexpected error (a bug, or the netlink socket failed while serving)
    USAGE = 2  # bad command line
    LOCKED = 3  # another clogfsd holds the lock file
    NETLINK = 4  # cannot create, bind or join the netlink connector socket
    LISTENER = 5  # another process listens on the dm-log connector group
    MOUNT = 6  # cannot mount the FUSE view
    CLUSTER = 7  # cluster mode unavailable (corosync)


class StartupError(ClogfsError):
    """A startup step failed; carries the exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the command line decides."""

    protocol: str = "auto"
    kernel_port: int = 0
    mount: Path | None = Path("/run/clogfs")
    mount_allow_other: bool = False
    cluster: str = "none"
    enforce_quorum: bool = True
    lock_file: Path = Path("/run/clogfsd.lock")
    runtime_dir: Path = Path("/run/clogfsd")
    debug: tuple[str, ...] = field(default_factory=tuple)


@contextmanager
def single_instance_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the daemon's life.

    Raises:
        StartupError: the lock is held by another process (``ExitCode.LOCKED``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise StartupError(
                    f"another clogfsd (pid {holder}) holds {path}", ExitCode.LOCKED
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


#: glibc mallopt(3) parameter number (malloc.h)
M_MMAP_THRESHOLD = -3
#: allocations at least this large are mmap'ed and returned to the kernel when freed
MMAP_THRESHOLD_BYTES = 256 * 1024


def pin_mmap_threshold() -> None:
    """Keep glibc from growing its mmap threshold after large frees.

    Loading a 2**24-region disk log handles several 2 MiB temporaries (the read buffer, the
    whole-buffer write). glibc's dynamic threshold would move such blocks to the heap after
    the first free, where they stay resident; a fixed threshold returns them at once, so a
    log costs its bitmaps and little more (bench/disk: memory per log).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        log.debug("mallopt unavailable; memory of large logs may stay resident after load")


def sd_notify(state: str) -> None:
    """Send ``state`` to systemd's ``NOTIFY_SOCKET`` if there is one (Type=notify)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(addr)
            s.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", addr, exc)


async def watch_signals(
    service: LogService,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The one signal task: SIGTERM/SIGINT stop only while no log is live; SIGUSR1 dumps.

    Reports ``started()`` once the handlers are installed, so READY=1 is never sent while
    a SIGTERM could still kill the process the default way.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                for line in service.describe():
                    log.info("state: %s", line)
                continue
            live = service.registry.instances()
            if live:
                names = ", ".join(sorted(service.describe_names()))
                log.warning(
                    "%s refused: %d log(s) still live (%s); remove the mirrors first "
                    "(dmsetup remove), or the kernel would wait for answers forever",
                    signal.Signals(signum).name,
                    len(live),
                    names,
                )
                continue
            log.info("%s: no live log, exiting", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            cancel_scope.cancel()
            return


async def start_cluster(nursery: trio.Nursery, presence: Any, config: DaemonConfig) -> Any:
    """Build the cluster backend in ``nursery``: quorum tracker, presence watch.

    Raises:
        StartupError: corosync has no quorum provider or went away (``ExitCode.CLUSTER``).
    """
    from clogfs.cluster.backend import ClusterBackend
    from clogfs.cluster.cpg import CorosyncError

    backend = ClusterBackend(nursery, presence.node_id, enforce_quorum=config.enforce_quorum)
    if config.enforce_quorum:
        try:
            await nursery.start(backend.track_quorum)
        except (CorosyncError, ClogfsError) as exc:
            raise StartupError(
                f"--cluster corosync: cannot track quorum ({exc}); use "
                "--no-quorum to run without it",
                ExitCode.CLUSTER,
            ) from exc
    nursery.start_soon(backend.watch_presence, presence)
    return backend


async def run_daemon(config: DaemonConfig) -> ExitCode:
    """Run clogfsd until it is told to stop; returns the exit code.

    Raises:
        StartupError: a startup step failed (carries its exit code).
    """
    if config.cluster not in ("none", "corosync"):
        raise StartupError(f"unknown cluster mode {config.cluster!r}", ExitCode.USAGE)
    started_at = time.time()
    pin_mmap_threshold()
    async with AsyncExitStack() as stack:
        stack.enter_context(single_instance_lock(config.lock_file))
        presence = None
        node_id = 1
        if config.cluster == "corosync":
            from clogfs.cluster.backend import PRESENCE_GROUP
            from clogfs.cluster.cpg import CorosyncError, open_cpg_group

            try:
                presence = await stack.enter_async_context(open_cpg_group(PRESENCE_GROUP))
            except CorosyncError as exc:
                raise StartupError(
                    f"--cluster corosync: corosync is not available ({exc}); "
                    "is corosync running on this host?",
                    ExitCode.CLUSTER,
                ) from exc
            node_id = presence.node_id
            log.info(
                "cluster mode: corosync node id %d, quorum %s",
                node_id,
                "enforced" if config.enforce_quorum else "not enforced (--no-quorum)",
            )
        try:
            conn = await stack.enter_async_context(open_connector_socket(config.kernel_port))
        except OSError as exc:
            raise StartupError(
                f"cannot open the netlink connector socket: {exc}", ExitCode.NETLINK
            ) from exc
        if config.kernel_port == 0:
            others = other_group_listeners(conn.port_id)
            if others:
                raise StartupError(
                    "another process listens on the dm-log connector group (netlink port "
                    f"{', '.join(map(str, others))}); two daemons would both answer the kernel",
                    ExitCode.LISTENER,
                )
        log.info(
            "clogfsd %s: netlink port %d, connector group 7, requests accepted from port %d "
            "(%s), protocol %s",
            __version__,
            conn.port_id,
            config.kernel_port,
            "the kernel" if config.kernel_port == 0 else "emulator",
            config.protocol,
        )
        async with trio.open_nursery() as nursery:
            registry = LogRegistry(node_id=node_id)
            metrics = Metrics()
            cluster = None
            if presence is not None:
                cluster = await start_cluster(nursery, presence, config)
            view_handle: list[object] = []

            def logs_changed() -> None:
                for handle in view_handle:
                    handle.logs_changed()  # type: ignore[attr-defined]

            service = LogService(
                registry,
                conn,
                metrics,
                nursery,
                protocol_mode=config.protocol,
                private_dir=config.runtime_dir,
                on_logs_changed=logs_changed,
                cluster=cluster,
            )
            await nursery.start(serve_endpoint, conn, service.on_message, service.on_rejected)
            if config.mount is not None:
                from clogfs.daemon_view import start_view

                try:
                    view_handle.append(
                        await start_view(nursery, service, metrics, config, started_at)
                    )
                except OSError as exc:
                    raise StartupError(
                        f"cannot mount the view at {config.mount}: {exc}", ExitCode.MOUNT
                    ) from exc
            await nursery.start(watch_signals, service, nursery.cancel_scope)
            sd_notify("READY=1")
            log.info("ready")
    return ExitCode.OK
