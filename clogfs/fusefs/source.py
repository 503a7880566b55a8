"""What the FUSE view asks of the daemon: the ``ViewSource`` protocol and ``DaemonInfo``.

The view reads nothing else. The daemon implements ``ViewSource`` over its registry; tests
implement it with a handful of hand-made snapshots.

Core module: no trio, no pyfuse3, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from clogfs.snapshot import LogSnapshot


@dataclass(frozen=True)
class DaemonInfo:
    """Daemon-wide facts shown at the top of the view, fetched again at every ``open``."""

    version: str
    protocol: str  # "ulog-v3" | "take5" | "auto" (what auto detected so far)
    node_id: int
    cluster_state: str  # "single" | "member" | "leader"
    started_at: float  # seconds since the epoch
    metrics_text: Callable[[], str]  # renders /run/clogfs/metrics (Prometheus text format)


class ViewSource(Protocol):
    """The daemon's side of the view: immutable snapshots, never live state.

    Both methods are called from the daemon's trio thread (at ``lookup``, ``getattr``,
    ``opendir`` and ``open``), must be quick, and must not block.
    """

    def snapshots(self) -> Sequence[LogSnapshot]:
        """One snapshot per live log instance, with ``history`` and ``stats`` filled in."""
        ...

    def daemon_info(self) -> DaemonInfo:
        """The daemon-wide facts as of now."""
        ...
