"""A 2**24-region log is checked well within a second."""

from __future__ import annotations

import time
from pathlib import Path

from .images import KERNEL_BITMAP_START, kernel_image
from .runner import run_fsck

REGIONS = 2**24


def test_large_log_checked_in_under_a_second(tmp_path: Path) -> None:
    path = tmp_path / "large.img"
    image = bytearray(kernel_image(REGIONS))
    clean_bytes = (REGIONS - 64) // 8  # every region clean but the last 64
    image[KERNEL_BITMAP_START : KERNEL_BITMAP_START + clean_bytes] = b"\xff" * clean_bytes
    path.write_bytes(image)
    started = time.perf_counter()
    outcome = run_fsck(path, "-fn", "--regions", str(REGIONS))
    elapsed = time.perf_counter() - started
    assert (outcome.status, outcome.codes) == (0, [])
    assert elapsed < 1.0
