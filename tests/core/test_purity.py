"""Core modules import no trio, sockets, pyfuse3 or cffi, and use ``os`` only for constants."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_FILES = (
    "clogfs/log/__init__.py",
    "clogfs/log/ctr.py",
    "clogfs/log/bitmap.py",
    "clogfs/log/regions.py",
    "clogfs/log/instance.py",
    "clogfs/registry.py",
    "clogfs/netlink/wire.py",
    "clogfs/netlink/requests.py",
    "clogfs/disklog/format.py",
    "clogfs/snapshot.py",
    "clogfs/errors.py",
    "clogfs/cluster/group.py",
    "clogfs/cluster/messages.py",
    "clogfs/cluster/replica.py",
    "clogfs/fsck/problems.py",
)
FORBIDDEN = {
    "trio",
    "socket",
    "pyfuse3",
    "cffi",
    "select",
    "selectors",
    "asyncio",
    "threading",
    "subprocess",
    "mmap",
    "fcntl",
    "time",
    "pathlib",
    "shutil",
    "io",
    "tempfile",
}
# os attributes that are constants, not calls
OS_CONSTANTS = {
    "O_RDONLY",
    "O_WRONLY",
    "O_RDWR",
    "O_DIRECT",
    "O_EXCL",
    "O_CREAT",
    "O_DSYNC",
    "SEEK_SET",
    "SEEK_END",
    "sep",
    "linesep",
    "F_OK",
    "R_OK",
    "W_OK",
    "X_OK",
}


def _core_paths() -> list[Path]:
    found = [ROOT / name for name in CORE_FILES]
    found += sorted((ROOT / "clogfs/log").glob("*.py"))
    return sorted({path for path in found if path.exists()})


def forbidden_imports(source: str) -> list[str]:
    """Names of forbidden modules imported by ``source``, and non-constant uses of ``os``."""
    tree = ast.parse(source)
    bad: list[str] = []
    os_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN:
                    bad.append(alias.name)
                if top == "os":
                    os_names.add(alias.asname or "os")
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN:
                bad.append(node.module)
            if top == "os":
                bad += [f"os.{a.name}" for a in node.names if a.name not in OS_CONSTANTS]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
            and node.attr not in OS_CONSTANTS
        ):
            bad.append(f"os.{node.attr}")
    return bad


@pytest.mark.parametrize("path", _core_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_is_pure(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import trio",
        "import socket as s",
        "from pyfuse3 import Operations",
        "import cffi.api",
        "import os\nos.open('x', os.O_RDONLY)",
        "from os import fsync",
    ],
)
def test_checker_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source) != []


def test_checker_allows_os_constants() -> None:
    assert forbidden_imports("import os\nflags = os.O_RDWR | os.O_DIRECT") == []
