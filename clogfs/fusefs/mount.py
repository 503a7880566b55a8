"""Mounting the view: ``serve_view``, the long-lived task, and ``ViewHandle``, its remote control.

pyfuse3 keeps its session in process-global state, so a process serves at most one view at a
time.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import subprocess
from pathlib import Path

import pyfuse3
import trio

from clogfs.errors import ClogfsError
from clogfs.fusefs.source import ViewSource
from clogfs.fusefs.view import ViewOperations

log = logging.getLogger(__name__)

FSNAME = "clogfs"
STALE_CHECK_TIMEOUT_S = 5.0  # a mount point whose server hangs never answers stat
FUSERMOUNT = "fusermount3"

Invalidation = str  # the name of a root entry the kernel must look up again


class ViewHandle:
    """What the daemon holds of a mounted view.

    Args:
        ops: the mounted operations.
        invalidations: where entry invalidations go (``serve_view`` carries them out).
        mountpoint: where the view is mounted.
    """

    def __init__(
        self,
        ops: ViewOperations,
        invalidations: trio.MemorySendChannel[Invalidation],
        mountpoint: Path,
    ) -> None:
        self.mountpoint = mountpoint
        self._ops = ops
        self._invalidations = invalidations
        self._visible = frozenset(ops.live_logs())

    def logs_changed(self) -> None:
        """Tell the view that log instances came or went (after CTR and DTR).

        Invalidates the root entries of the directories that appeared (a cached negative
        lookup) or disappeared, and of those renamed by a shared uuid. Never raises; after the
        view has stopped it does nothing. Call it from the trio thread that runs the view.
        """
        names = frozenset(self._ops.live_logs())
        changed = sorted(names ^ self._visible)
        self._visible = names
        for name in changed:
            try:
                self._invalidations.send_nowait(name)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return


async def _carry_out_invalidations(receive: trio.MemoryReceiveChannel[Invalidation]) -> None:
    # pyfuse3.invalidate_entry blocks until the kernel has dropped the dentry, and the kernel
    # may need an answer from this very loop first: call it from a thread. (pyfuse3's own
    # invalidate_entry_async thread does not survive the end of one main() loop.)
    async with receive:
        async for name in receive:
            try:
                await trio.to_thread.run_sync(
                    pyfuse3.invalidate_entry, pyfuse3.ROOT_INODE, os.fsencode(name)
                )
            except FileNotFoundError:
                pass  # the kernel had no such entry cached
            except OSError as exc:
                log.warning("could not invalidate the view entry %r: %s", name, exc)


def _invalidate_attributes(inode: int) -> None:
    # attr_only: no page cache to drop (direct_io), and the kernel answers at once.
    try:
        pyfuse3.invalidate_inode(inode, attr_only=True)
    except OSError as exc:
        log.debug("could not invalidate the attributes of inode %d: %s", inode, exc)


async def clean_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount a mount left at ``mountpoint`` by a server that died.

    Args:
        mountpoint: the view's mount point.

    Raises:
        ClogfsError: the mount point is a live mount (``EBUSY``), does not answer, or the
            stale mount could not be removed.

    Resource handling:
        ``stat`` runs in a thread abandoned after ``STALE_CHECK_TIMEOUT_S``; the unmount
        runs ``fusermount3 -u -z``.
    """
    try:
        with trio.fail_after(STALE_CHECK_TIMEOUT_S):
            mounted = await trio.to_thread.run_sync(_is_mount, mountpoint, abandon_on_cancel=True)
    except FileNotFoundError:
        return
    except trio.TooSlowError:
        raise ClogfsError(f"{mountpoint} does not answer stat", errno=errno.EBUSY) from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise ClogfsError(f"cannot stat {mountpoint}: {exc}", errno=exc.errno) from exc
        log.warning("%s: removing a stale mount (its server died)", mountpoint)
        await _lazy_unmount(mountpoint)
        return
    if mounted:
        raise ClogfsError(f"{mountpoint} is already a mount point", errno=errno.EBUSY)


def _is_mount(mountpoint: Path) -> bool:
    os.stat(mountpoint)  # ENOTCONN when the server of a mount there died
    return os.path.ismount(mountpoint)


async def _lazy_unmount(mountpoint: Path) -> None:
    command = [FUSERMOUNT, "-u", "-z", "--", str(mountpoint)]
    try:
        await trio.run_process(command, capture_stderr=True)
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode(errors="replace").strip()
        raise ClogfsError(f"cannot unmount the stale mount {mountpoint}: {message}") from exc
    except OSError as exc:
        raise ClogfsError(f"cannot run {FUSERMOUNT}: {exc}", errno=exc.errno) from exc


def mount_options(*, allow_other: bool) -> set[str]:
    """The options of the view's mount."""
    options = set(pyfuse3.default_options) | {"ro", "default_permissions", f"fsname={FSNAME}"}
    if allow_other:
        options.add("allow_other")
    return options


async def serve_view(
    source: ViewSource,
    mountpoint: Path,
    *,
    allow_other: bool = False,
    task_status: trio.TaskStatus[ViewHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount the read-only view of ``source`` at ``mountpoint`` and serve it until cancelled.

    Args:
        source: the daemon's snapshots and facts.
        mountpoint: created if missing (with its parents); a stale mount there is removed.
        allow_other: let users other than root see the view (``--mount-allow-other``).
        task_status: ``started(handle)`` once the view is mounted.

    Raises:
        ClogfsError: the mount point is busy, or the mount failed.

    Resource handling:
        The mount lives exactly as long as this task: on cancellation (or any error) the
        session is closed and the view unmounted. If an admin unmounts the view from outside,
        this logs a warning and returns, and the daemon serves on without a view.

    Error handling:
        No exception from a FUSE handler escapes: each becomes ``EIO`` and one log line.
    """
    mountpoint = Path(mountpoint)
    await clean_stale_mount(mountpoint)
    mountpoint.mkdir(mode=0o755, parents=True, exist_ok=True)
    ops = ViewOperations(source, invalidate_attributes=_invalidate_attributes)
    try:
        pyfuse3.init(ops, str(mountpoint), mount_options(allow_other=allow_other))
    except RuntimeError as exc:
        # Not pyfuse3.close(): the session may be NULL, and the process is giving up anyway.
        raise ClogfsError(f"cannot mount the view at {mountpoint}: {exc}") from exc
    try:
        send, receive = trio.open_memory_channel[Invalidation](math.inf)
        handle = ViewHandle(ops, send, mountpoint)
        async with send, trio.open_nursery() as nursery:
            nursery.start_soon(_carry_out_invalidations, receive)
            log.info("view mounted at %s", mountpoint)
            task_status.started(handle)
            await pyfuse3.main()
            log.warning(
                "the view at %s was unmounted from outside; serving on without it", mountpoint
            )
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        log.info("view at %s unmounted", mountpoint)
