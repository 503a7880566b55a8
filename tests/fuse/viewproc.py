"""Serve a view with a ``FakeSource`` in a process of its own: ``python viewproc.py MOUNTPOINT``.

Prints ``mounted`` once the view is up, then serves until killed. Tests kill it with SIGKILL
to leave a stale mount behind, as a crashed clogfsd would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from clogfs.fusefs import ViewHandle, serve_view

if __package__:
    from .helpers import FakeSource, make_snapshot
else:  # run as a script: this directory is sys.path[0]
    from helpers import FakeSource, make_snapshot  # type: ignore[no-redef,import-not-found]


async def main(mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        source = FakeSource([make_snapshot()])
        handle: ViewHandle = await nursery.start(serve_view, source, mountpoint)
        print("mounted", handle.mountpoint, flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), strict_exception_groups=True)
