"""Glue between the daemon and the FUSE view: the daemon's side of ``ViewSource``.

Imported only when the view is mounted, so ``--no-mount`` never loads pyfuse3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from clogfs import __version__
from clogfs.fusefs import DaemonInfo, ViewHandle, serve_view
from clogfs.metrics import Metrics
from clogfs.service import LogService
from clogfs.snapshot import LogSnapshot

if TYPE_CHECKING:
    from clogfs.daemon import DaemonConfig


class ServiceViewSource:
    """Implements ``clogfs.fusefs.ViewSource`` over the live service (snapshots only)."""

    def __init__(self, service: LogService, metrics: Metrics, started_at: float) -> None:
        self.service = service
        self.metrics = metrics
        self.started_at = started_at

    def snapshots(self) -> Sequence[LogSnapshot]:
        return self.service.snapshots()

    def daemon_info(self) -> DaemonInfo:
        group = self.service.group
        return DaemonInfo(
            version=__version__,
            protocol=self.service.detected_protocol,
            node_id=self.service.registry.node_id,
            cluster_state=(
                self.service.cluster.cluster_state
                if self.service.cluster is not None
                else getattr(group, "cluster_state", "single")
            ),
            started_at=self.started_at,
            metrics_text=lambda: self.metrics.render_prometheus(self.service.snapshots()),
        )


async def start_view(
    nursery: trio.Nursery,
    service: LogService,
    metrics: Metrics,
    config: DaemonConfig,
    started_at: float,
) -> ViewHandle:
    """Mount the view at ``config.mount`` in ``nursery``; returns once it is mounted."""
    mountpoint = config.mount
    assert mountpoint is not None
    source = ServiceViewSource(service, metrics, started_at)
    handle: ViewHandle = await nursery.start(
        lambda task_status: serve_view(
            source, mountpoint, allow_other=config.mount_allow_other, task_status=task_status
        )
    )
    return handle
