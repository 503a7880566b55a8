"""Fixtures for the log device tests: image files, loop devices, failfs mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.disklog.failfs import SetFail, failing_image, fuse_available

IMAGE_BYTES = 1 << 20
_LOSETUP_ATTEMPTS = 5


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """The directory where the device shell may create private device nodes."""
    return tmp_path / "private"


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """A zero-filled 1 MiB regular file on the temporary directory's filesystem."""
    path = tmp_path / "log.img"
    with path.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    return path


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A loop device over a zero-filled 1 MiB file in ``tmp_path``; detached afterwards."""
    _require_root()
    if shutil.which("losetup") is None:
        pytest.skip("needs losetup (util-linux)")
    backing = tmp_path / "loop-backing.img"
    with backing.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    device = None
    for _ in range(_LOSETUP_ATTEMPTS):  # another process may take the free device first
        result = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            device = Path(result.stdout.strip())
            break
    if device is None:
        pytest.skip(f"cannot set up a loop device: {result.stderr.strip()}")
    try:
        deadline = time.monotonic() + 10
        while not device.exists():  # devtmpfs creates a new node asynchronously
            if time.monotonic() > deadline:
                raise TimeoutError(f"{device} did not appear")
            time.sleep(0.01)
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


@pytest.fixture
def failfs_image(tmp_path: Path) -> Iterator[tuple[Path, SetFail]]:
    """A failfs mount: ``(image path, set_fail(write=..., fsync=...))``."""
    if not fuse_available():
        pytest.skip("needs root and /dev/fuse")
    with failing_image(tmp_path / "failfs", size_bytes=IMAGE_BYTES) as (image, set_fail):
        yield image, set_fail
