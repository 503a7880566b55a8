"""clog-fsck's command line: usage errors, combined flags, geometry, modes and outputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clogfs.fsck.cli import build_parser, main, parse_options, run
from clogfs.fsck.context import FsckExit

from .images import digest, kernel_clean_regions, kernel_header, kernel_image, poke
from .runner import run_fsck

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A sound 32-region log: regions 0-19 clean, 20-31 dirty."""
    path = tmp_path / "log.img"
    path.write_bytes(kernel_image(32, range(20)))
    return path


@pytest.fixture
def bad_magic(image: Path) -> Path:
    poke(image, 0, b"XXXX")
    return image


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-option", "x"],
        [],
        ["-n", "-y", "x"],
        ["-n", "-p", "x"],
        ["-y", "-a", "x"],
        ["-ny", "x"],
        ["--regions", "32", "--mirror-size", "32768", "--region-size", "1024", "x"],
        ["--mirror-size", "32768", "x"],
        ["--region-size", "1024", "x"],
        ["--mirror-size", "32768", "--region-size", "1000", "x"],
        ["--regions", "0", "x"],
        ["--regions", "many", "x"],
        ["--dump", "-y", "x"],
        ["--dump", "-p", "x"],
        ["--dump", "--mark-all-dirty", "x"],
        ["x", "y"],
    ],
)
def test_usage_errors_exit_16(argv: list[str]) -> None:
    assert main(argv) == 16


def test_help_exits_0() -> None:
    assert main(["--help"]) == 0


@pytest.mark.parametrize("flags", ["-fy", "-yf", "-fvy", "-fn", "-fp", "-fa"])
def test_combined_flags(flags: str) -> None:
    options = parse_options(build_parser(), [flags, "dev"])
    assert options.force
    assert options.mode is not None


def test_combined_flags_repair(bad_magic: Path) -> None:
    outcome = run_fsck(bad_magic, "-fy")
    assert (outcome.status, outcome.codes) == (1, ["HEADER_BAD_MAGIC"])


def test_mirror_size_gives_expected_regions() -> None:
    options = parse_options(
        build_parser(), ["--mirror-size", "32769", "--region-size", "1024", "dev"]
    )
    assert options.expected_regions == 33


def test_matching_geometry_is_clean(image: Path) -> None:
    outcome = run_fsck(image, "-n", "--mirror-size", "32768", "--region-size", "1024")
    assert (outcome.status, outcome.codes) == (0, [])


def test_geometry_mismatch_reported_under_no(image: Path) -> None:
    outcome = run_fsck(image, "-n", "--regions", "64")
    assert (outcome.status, outcome.codes) == (4, ["GEOMETRY_MISMATCH"])
    assert outcome.problems[0]["fields"] == {"nr_regions": 32, "expected_regions": 64}


def test_geometry_mismatch_is_not_preened(image: Path) -> None:
    assert run_fsck(image, "-p", "--regions", "64").status == 4


def test_geometry_mismatch_repair_makes_every_region_dirty(image: Path) -> None:
    outcome = run_fsck(image, "-y", "--regions", "64")
    assert (outcome.status, outcome.codes) == (1, ["GEOMETRY_MISMATCH"])
    data = image.read_bytes()
    assert kernel_header(data)[2] == 64
    assert kernel_clean_regions(data) == set()
    assert run_fsck(image, "-y", "--regions", "64").status == 0


def test_geometry_exceeding_device_is_uncorrectable(image: Path) -> None:
    outcome = run_fsck(image, "-y", "--regions", "1000000")
    assert (outcome.status, outcome.codes) == (4, ["GEOMETRY_EXCEEDS_DEVICE"])


def test_bad_magic_repair_uses_expected_geometry(bad_magic: Path) -> None:
    run_fsck(bad_magic, "-y", "--regions", "100")
    assert kernel_header(bad_magic.read_bytes())[2] == 100


def test_mark_all_dirty_counts_as_corrected(image: Path) -> None:
    outcome = run_fsck(image, "-y", "--mark-all-dirty")
    assert (outcome.status, outcome.codes) == (1, ["MARK_ALL_DIRTY"])
    assert kernel_clean_regions(image.read_bytes()) == set()


def test_mark_all_dirty_twice_finds_nothing(image: Path) -> None:
    run_fsck(image, "-y", "--mark-all-dirty")
    outcome = run_fsck(image, "-y", "--mark-all-dirty")
    assert (outcome.status, outcome.codes) == (0, [])


def test_mark_all_dirty_in_preen(image: Path) -> None:
    assert run_fsck(image, "-p", "--mark-all-dirty").status == 1


def test_mark_all_dirty_declined_under_no(image: Path) -> None:
    before = digest(image)
    outcome = run_fsck(image, "-n", "--mark-all-dirty")
    assert (outcome.status, outcome.codes) == (0, ["MARK_ALL_DIRTY"])
    assert outcome.problems[0]["answer"] == "no"
    assert digest(image) == before


def test_problem_log_entries(bad_magic: Path) -> None:
    outcome = run_fsck(bad_magic, "-y")
    assert outcome.problems == [
        {
            "code": 0x010001,
            "name": "HEADER_BAD_MAGIC",
            "answer": "yes",
            "fixed": True,
            "fields": {"magic": 0x58585858},
        }
    ]


def test_problem_log_not_fixed_under_no(bad_magic: Path) -> None:
    entry = run_fsck(bad_magic, "-n").problems[0]
    assert (entry["answer"], entry["fixed"]) == ("no", False)


def test_json_document(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "-v", "--json", str(image)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["header"] == {"magic": 0x4D695272, "version": 2, "nr_regions": 32}
    assert document["counts"] == {"regions": 32, "dirty": 12, "clean": 20}
    assert document["geometry"]["logical_block_size"] == 4096
    assert document["dirty_ranges"] == [[20, 31]]
    assert (document["problems"], document["exit"], document["written"]) == ([], 0, False)


def test_json_lists_fixes(bad_magic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-y", "--json", str(bad_magic)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["fixes"] == ["HEADER_BAD_MAGIC"]
    assert document["written"] is True


def test_json_on_operational_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "--json", str(tmp_path / "absent")]) == 8
    assert json.loads(capsys.readouterr().out)["exit"] == 8


def test_dump_prints_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.img"
    path.write_bytes(kernel_image(100, [*range(0, 10), *range(11, 50), *range(53, 100)]))
    before = digest(path)
    assert main(["--dump", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["10", "50-52"]
    assert digest(path) == before


def test_dump_of_damaged_log_reports_status(bad_magic: Path) -> None:
    outcome = run_fsck(bad_magic, "--dump")
    assert (outcome.status, outcome.codes) == (4, ["HEADER_BAD_MAGIC"])


def test_no_mode_without_tty_is_read_only(bad_magic: Path) -> None:
    before = digest(bad_magic)
    options = parse_options(build_parser(), [str(bad_magic)])
    status = run(options, stdin=io.StringIO("y\n"), stdout=io.StringIO(), stderr=io.StringIO())
    assert status == FsckExit.UNCORRECTED
    assert digest(bad_magic) == before


class _Terminal(io.StringIO):
    """Typed answers on a terminal: a StringIO that says it is a tty."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("typed", "status"), [("y\n", 1), ("n\n", 4), ("a\n", 1), ("x\ny\n", 1)])
def test_interactive_answers(bad_magic: Path, typed: str, status: int) -> None:
    options = parse_options(build_parser(), [str(bad_magic)])
    stdout = io.StringIO()
    got = run(options, stdin=_Terminal(typed), stdout=stdout, stderr=io.StringIO())
    assert got == status
    assert "? [y/n/a] " in stdout.getvalue()


def test_interactive_all_answers_later_questions(image: Path) -> None:
    poke(image, 4, (1).to_bytes(4, "little"))  # version 1: first question
    options = parse_options(build_parser(), ["--mark-all-dirty", str(image)])
    stdout = io.StringIO()
    got = run(options, stdin=_Terminal("a\n"), stdout=stdout, stderr=io.StringIO())
    assert got == FsckExit.CORRECTED
    assert stdout.getvalue().count("[y/n/a]") == 1
    assert kernel_clean_regions(image.read_bytes()) == set()


def test_interactive_end_of_input_cancels(bad_magic: Path) -> None:
    before = digest(bad_magic)
    options = parse_options(build_parser(), [str(bad_magic)])
    got = run(options, stdin=_Terminal(""), stdout=io.StringIO(), stderr=io.StringIO())
    assert got & FsckExit.CANCELLED
    assert digest(bad_magic) == before


def test_launcher_script_runs(image: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "clog-fsck"), "-n", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_launcher_usage_error_exit_status() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "clog-fsck"), "-n", "-y", "x"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 16
