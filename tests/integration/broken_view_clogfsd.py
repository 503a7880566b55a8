"""clogfsd with the view's ``stats`` renderer broken on purpose.

Used by ``test_view.py`` to show that a failing view handler never reaches the protocol: the
file reads fail with EIO while the kernel keeps getting answers. Run as a script; the
arguments are clogfsd's.
"""

from __future__ import annotations

import dataclasses
import sys

from clogfs.fusefs import render

BROKEN_FILE = "stats"


def _broken(_snapshot: object) -> bytes:
    raise RuntimeError("the stats renderer is broken on purpose by the test")


# Patched before the view module (which reads the table) is imported by the mount.
render.LOG_FILES = tuple(
    dataclasses.replace(row, render=_broken) if row.name == BROKEN_FILE else row
    for row in render.LOG_FILES
)

if __name__ == "__main__":
    from clogfs.cli import main

    sys.exit(main())
