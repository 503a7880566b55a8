"""Whether this node is quorate: corosync's quorum service (votequorum behind it), on trio.

CPG keeps delivering inside a partition that has lost quorum, so quorum is ours to enforce
(spec/cluster.md): in cluster mode a node does not confirm FLUSH while it is not quorate. This
module only reports the state and its changes; the C binding is in ``clogfs.cluster.cpg``.

Resource handling: ``open_quorum_tracker`` finalizes the quorum handle on every exit path; a
task blocked in ``QuorumTracker.receive`` then gets ``trio.ClosedResourceError``.

Error handling: corosync not running, or going away later, raises ``CorosyncGoneError``; a
corosync without a quorum provider raises ``NoQuorumProviderError`` at open (unless allowed),
because "quorate" would then be true in every partition.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from clogfs.cluster.cpg import QUORUM_FREE, QuorumHandle, retry_try_again
from clogfs.errors import ClogfsError

log = logging.getLogger(__name__)


class NoQuorumProviderError(ClogfsError):
    """Corosync runs without a quorum provider (``quorum { provider: corosync_votequorum }``)."""

    errno = errno.ENOTSUP


@dataclass(frozen=True)
class QuorumState:
    """One quorum notification: this node's quorum and the nodes of its partition."""

    quorate: bool
    ring_seq: int
    members: tuple[int, ...]


class QuorumTracker:
    """This node's quorum, kept current by ``receive`` (made by ``open_quorum_tracker``).

    Attributes:
        quorate: the latest known state: from ``quorum_getquorate`` at open, then from each
            notification ``receive`` returned.
        provider: whether corosync has a quorum provider (False only when allowed at open).
    """

    def __init__(self, handle: QuorumHandle, quorate: bool, provider: bool) -> None:
        self._handle = handle
        self.quorate = quorate
        self.provider = provider

    async def receive(self) -> QuorumState:
        """Wait for the next quorum change notification and return it.

        Raises:
            CorosyncGoneError: corosync went away.
            trio.ClosedResourceError: the tracker was closed.
        """
        quorate, ring_seq, members = await self._handle.next_notification()
        if quorate != self.quorate:
            log.info("node is %s quorate (ring %d, members %s)",
                     "now" if quorate else "no longer", ring_seq, members)  # fmt: skip
        self.quorate = quorate
        return QuorumState(quorate, ring_seq, members)

    def poll(self) -> bool:
        """Whether this node is quorate now, asking corosync (``quorum_getquorate``).

        At a CPG configuration change this already tells the new ring's quorum, while the
        notification ``receive`` returns comes later (measured on a healed and on a split
        three-node rig: ~16 ms). ``quorate`` is left to the notifications.

        Raises:
            CorosyncError: the call failed (``CorosyncGoneError``: corosync went away).
        """
        return self._handle.getquorate()

    async def wait_for(self, quorate: bool) -> None:
        """Return once ``self.quorate == quorate``, reading notifications until then."""
        await trio.lowlevel.checkpoint()
        while self.quorate != quorate:
            await self.receive()


@asynccontextmanager
async def open_quorum_tracker(*, allow_no_provider: bool = False) -> AsyncIterator[QuorumTracker]:
    """Connect to corosync's quorum service and track quorum changes.

    Args:
        allow_no_provider: accept a corosync without a quorum provider (then always quorate).

    Resource handling: the handle is finalized on exit, whatever happens.

    Raises:
        CorosyncGoneError: corosync is not running here.
        NoQuorumProviderError: no quorum provider, and ``allow_no_provider`` is false.
        CorosyncError: another failure of the quorum service.
    """
    handle = QuorumHandle()
    await retry_try_again("quorum_initialize", handle.initialize)
    try:
        provider = handle.quorum_type != QUORUM_FREE
        if not provider and not allow_no_provider:
            raise NoQuorumProviderError("corosync has no quorum provider configured")
        await retry_try_again("quorum_trackstart", handle.trackstart)
        yield QuorumTracker(handle, handle.getquorate(), provider)
    finally:
        handle.finalize()
