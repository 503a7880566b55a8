"""clog-fsck on real loop devices: block geometry ioctls, O_DIRECT repair, EBUSY (root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clogfs.fsck.cli import main

from .images import kernel_clean_regions, kernel_header, kernel_image
from .runner import run_fsck

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
    pytest.mark.skipif(shutil.which("losetup") is None, reason="losetup (util-linux) missing"),
]

BACKING_BYTES = 1 << 20


def _attach(backing: Path, sector_size: int) -> str:
    result = subprocess.run(
        ["losetup", "--find", "--show", "--sector-size", str(sector_size), str(backing)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"losetup failed: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.fixture(params=[512, 4096], ids=["lbs512", "lbs4096"])
def loop_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """A loop device over a 1 MiB file holding a 100-region log with a bad magic."""
    sector_size: int = request.param
    backing = tmp_path / "backing.img"
    backing.write_bytes(kernel_image(100, range(100), magic=0x0BADF00D, device_bytes=BACKING_BYTES))
    device = _attach(backing, sector_size)
    try:
        yield device, backing, sector_size
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_geometry_from_ioctls(
    loop_log: tuple[str, Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    device, _, sector_size = loop_log
    main(["-n", "--json", device])
    geometry = json.loads(capsys.readouterr().out)["geometry"]
    assert geometry["kind"] == "block"
    assert geometry["logical_block_size"] == sector_size
    assert geometry["device_bytes"] == BACKING_BYTES


def test_no_on_loop_device_reports_and_keeps_bytes(loop_log: tuple[str, Path, int]) -> None:
    device, backing, _ = loop_log
    before = backing.read_bytes()
    outcome = run_fsck(device, "-n")
    assert (outcome.status, outcome.codes) == (4, ["HEADER_BAD_MAGIC"])
    assert backing.read_bytes() == before


def test_repair_through_o_direct(loop_log: tuple[str, Path, int]) -> None:
    device, backing, _ = loop_log
    outcome = run_fsck(device, "-y")
    assert (outcome.status, outcome.codes) == (1, ["HEADER_BAD_MAGIC"])
    assert run_fsck(device, "-n").status == 0
    written = backing.read_bytes()  # through the loop driver into its backing file
    assert kernel_header(written) == (0x4D695272, 2, 100)
    assert kernel_clean_regions(written) == set()


def test_device_in_use_is_refused(loop_log: tuple[str, Path, int]) -> None:
    device, backing, _ = loop_log
    before = backing.read_bytes()
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)  # stands for a mirror holding the log
    try:
        outcome = run_fsck(device, "-y")
        assert (outcome.status, outcome.codes) == (8, [])
        assert run_fsck(device, "-n").codes == ["HEADER_BAD_MAGIC"]  # reading is allowed
    finally:
        os.close(holder)
    assert backing.read_bytes() == before


def test_device_in_use_message(
    loop_log: tuple[str, Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    device, _, _ = loop_log
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)
    try:
        assert main(["-y", device]) == 8
    finally:
        os.close(holder)
    assert "device is in use (held by a mirror?)" in capsys.readouterr().err
