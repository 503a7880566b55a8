"""The image corpus under -n, -p and -y: exit status, problem codes, byte-identical -n."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .images import digest, kernel_clean_regions, kernel_header, kernel_image
from .runner import run_fsck

MAGIC = 0x4D695272


@dataclass(frozen=True)
class Case:
    """One corrupt (or sound) image and what each mode must make of it."""

    build: Callable[[Path], None]
    args: tuple[str, ...]  # extra arguments for every run (e.g. -f, --regions)
    no: tuple[int, list[str]]  # -n: status, codes
    preen: tuple[int, list[str]]  # -p
    yes: tuple[int, list[str]]  # -y (the second -y must exit 0 with no problem)


def _write(image: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(image)

    return build


def _truncated_bitmap(path: Path) -> None:
    # 40000 regions need 1024 + 5000 bytes, two 4096-byte blocks; keep only the first block.
    path.write_bytes(kernel_image(40000, range(0, 40000, 2))[:4096])


CASES: dict[str, Case] = {
    "valid": Case(
        _write(kernel_image(32, range(0, 20))),
        (),
        (0, []),
        (0, []),
        (0, []),
    ),
    "bad-magic": Case(
        _write(kernel_image(32, range(32), magic=0x12345678)),
        (),
        (4, ["HEADER_BAD_MAGIC"]),
        (4, ["HEADER_BAD_MAGIC"]),
        (1, ["HEADER_BAD_MAGIC"]),
    ),
    "unknown-version": Case(
        _write(kernel_image(32, range(32), version=3)),
        (),
        (4, ["HEADER_UNKNOWN_VERSION"]),
        (4, ["HEADER_UNKNOWN_VERSION"]),
        (1, ["HEADER_UNKNOWN_VERSION"]),
    ),
    "version-1": Case(
        _write(kernel_image(32, range(32), version=1)),
        (),
        (0, ["HEADER_OLD_VERSION"]),
        (0, ["HEADER_OLD_VERSION"]),
        (0, ["HEADER_OLD_VERSION"]),
    ),
    "zero-regions": Case(
        _write(kernel_image(0, device_bytes=4096)),
        ("--regions", "32"),
        (4, ["HEADER_NO_REGIONS"]),
        (4, ["HEADER_NO_REGIONS"]),
        (1, ["HEADER_NO_REGIONS"]),
    ),
    "regions-exceed-device": Case(
        _write(kernel_image(100_000, device_bytes=4096)),
        ("--regions", "32"),
        (4, ["HEADER_REGIONS_EXCEED_DEVICE"]),
        (4, ["HEADER_REGIONS_EXCEED_DEVICE"]),
        (1, ["HEADER_REGIONS_EXCEED_DEVICE"]),
    ),
    "truncated-bitmap": Case(
        _truncated_bitmap,
        ("--regions", "20000"),
        (4, ["HEADER_REGIONS_EXCEED_DEVICE"]),
        (4, ["HEADER_REGIONS_EXCEED_DEVICE"]),
        (1, ["HEADER_REGIONS_EXCEED_DEVICE"]),
    ),
    "tail-bits": Case(
        _write(kernel_image(30, [*range(30), 30, 63])),
        ("-f",),
        (4, ["BITMAP_TAIL_BITS_SET"]),
        (1, ["BITMAP_TAIL_BITS_SET"]),
        (1, ["BITMAP_TAIL_BITS_SET"]),
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Case, Path]:
    chosen = CASES[request.param]
    path = tmp_path / f"{request.param}.img"
    chosen.build(path)
    return chosen, path


def test_no_reports_and_leaves_image_identical(case: tuple[Case, Path]) -> None:
    chosen, path = case
    before = digest(path)
    outcome = run_fsck(path, "-n", *chosen.args)
    assert (outcome.status, outcome.codes) == chosen.no
    assert digest(path) == before


def test_preen_status_and_codes(case: tuple[Case, Path]) -> None:
    chosen, path = case
    outcome = run_fsck(path, "-p", *chosen.args)
    assert (outcome.status, outcome.codes) == chosen.preen


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.preen[0] & 4))
def test_preen_halt_writes_nothing(name: str, tmp_path: Path) -> None:
    path = tmp_path / "image"
    CASES[name].build(path)
    before = digest(path)
    run_fsck(path, "-p", *CASES[name].args)
    assert digest(path) == before


def test_yes_status_and_codes(case: tuple[Case, Path]) -> None:
    chosen, path = case
    outcome = run_fsck(path, "-y", *chosen.args)
    assert (outcome.status, outcome.codes) == chosen.yes


def test_second_yes_finds_nothing(case: tuple[Case, Path]) -> None:
    chosen, path = case
    run_fsck(path, "-y", *chosen.args)
    outcome = run_fsck(path, "-y", *chosen.args)
    assert (outcome.status, outcome.codes) == (0, [])


def test_valid_image_is_not_written_by_yes(tmp_path: Path) -> None:
    path = tmp_path / "valid.img"
    path.write_bytes(kernel_image(32, range(0, 20)))
    before = digest(path)
    run_fsck(path, "-fy")
    assert digest(path) == before


def test_bad_magic_repair_makes_every_region_dirty(tmp_path: Path) -> None:
    path = tmp_path / "magic.img"
    path.write_bytes(kernel_image(32, range(32), magic=0x12345678))
    run_fsck(path, "-y")
    image = path.read_bytes()
    assert kernel_header(image) == (MAGIC, 2, 32)
    assert kernel_clean_regions(image) == set()


def test_version_1_rewrite_keeps_bitmap(tmp_path: Path) -> None:
    path = tmp_path / "v1.img"
    path.write_bytes(kernel_image(32, range(5, 9), version=1))
    run_fsck(path, "-p")
    image = path.read_bytes()
    assert kernel_header(image) == (MAGIC, 2, 32)
    assert kernel_clean_regions(image) == set(range(5, 9))


def test_tail_repair_keeps_every_region_bit(tmp_path: Path) -> None:
    path = tmp_path / "tail.img"
    original = kernel_image(30, [*range(0, 30, 3), 30, 63], filler=0xA5)
    path.write_bytes(original)
    run_fsck(path, "-fy")
    image = path.read_bytes()
    assert kernel_clean_regions(image) == set(range(0, 30, 3))
    assert image[1024 + 3] == original[1024 + 3] & 0x3F
    assert image[1024 + 7] == 0


def test_repair_preserves_filler_and_tail_bytes(tmp_path: Path) -> None:
    path = tmp_path / "filler.img"
    original = kernel_image(30, [*range(30), 40], filler=0x5A)
    path.write_bytes(original)
    run_fsck(path, "-fy")
    image = path.read_bytes()
    assert image[16:1024] == original[16:1024]
    assert image[1024 + 8 :] == original[1024 + 8 :]


def test_zero_regions_without_geometry_cannot_be_fixed(tmp_path: Path) -> None:
    path = tmp_path / "zero.img"
    path.write_bytes(kernel_image(0, device_bytes=4096))
    before = digest(path)
    outcome = run_fsck(path, "-y")
    assert outcome.status == 4
    assert outcome.codes == ["HEADER_NO_REGIONS", "HEADER_NEEDS_REGION_COUNT"]
    assert digest(path) == before


def test_regions_exceeding_device_without_geometry_cannot_be_fixed(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    path.write_bytes(kernel_image(100_000, device_bytes=4096))
    outcome = run_fsck(path, "-y")
    assert outcome.status == 4
    assert outcome.codes == ["HEADER_REGIONS_EXCEED_DEVICE", "HEADER_NEEDS_REGION_COUNT"]


def test_truncated_below_one_block_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(kernel_image(32, range(32))[:2048])
    for mode in ("-n", "-p", "-y"):
        outcome = run_fsck(path, mode)
        assert (outcome.status, outcome.codes) == (4, ["DEVICE_TOO_SMALL"])


def test_empty_file_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    assert run_fsck(path, "-n").codes == ["DEVICE_TOO_SMALL"]


def test_tail_bits_unchecked_without_force_when_header_is_sound(tmp_path: Path) -> None:
    path = tmp_path / "tail.img"
    path.write_bytes(kernel_image(30, [*range(30), 63]))
    assert (run_fsck(path, "-n").status, run_fsck(path, "-n").codes) == (0, [])


def test_missing_device_is_operational_error(tmp_path: Path) -> None:
    outcome = run_fsck(tmp_path / "absent.img", "-n")
    assert (outcome.status, outcome.codes) == (8, [])


def test_directory_is_operational_error(tmp_path: Path) -> None:
    outcome = run_fsck(tmp_path, "-y")
    assert (outcome.status, outcome.codes) == (8, [])


def test_unreadable_device_is_operational_error() -> None:
    # A write-only sysfs attribute refuses open for reading with EACCES, even to root: a real
    # device path without read permission.
    paths = sorted(glob.glob("/sys/bus/*/uevent"))
    if not paths or _opens(paths[0]):
        pytest.skip("no write-only sysfs attribute to stand for an unreadable device")
    outcome = run_fsck(paths[0], "-n")
    assert (outcome.status, outcome.codes) == (8, [])


def _opens(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        return False
    return True
