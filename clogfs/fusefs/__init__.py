"""The read-only FUSE view at /run/clogfs: what the daemon imports to mount it.

``ViewSource`` and ``DaemonInfo`` (what the view asks of the daemon) import nothing heavy;
``serve_view`` and ``ViewHandle`` load pyfuse3 and trio on first use, so the pure parts of
the package (``inodes``, ``render``, ``source``) stay importable from core modules and from a
daemon started with ``--no-mount``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clogfs.fusefs.source import DaemonInfo, ViewSource

if TYPE_CHECKING:
    from clogfs.fusefs.mount import ViewHandle, serve_view

__all__ = ["DaemonInfo", "ViewHandle", "ViewSource", "serve_view"]


def __getattr__(name: str) -> Any:
    if name in ("ViewHandle", "serve_view"):
        from clogfs.fusefs import mount

        return getattr(mount, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
