"""man/clog-fsck.8: lints clean, and names every option, problem code and exit bit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clogfs.fsck.cli import build_parser
from clogfs.fsck.context import FsckExit
from clogfs.fsck.problems import ProblemCode

PAGE = Path(__file__).resolve().parents[2] / "man" / "clog-fsck.8"


def _text() -> str:
    """The page source with roff's escaped hyphens made plain."""
    return PAGE.read_text().replace("\\-", "-")


def _section(name: str) -> str:
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH |\Z)", _text(), re.MULTILINE | re.DOTALL)
    assert match is not None, name
    return match.group(1)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_page_lints_clean() -> None:
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    "section",
    ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "PROBLEM CODES", "FILES"],
)
def test_page_has_section(section: str) -> None:
    assert _section(section).strip()


def test_page_has_see_also() -> None:
    assert "fsck (8)" in _section("SEE ALSO")


@pytest.mark.parametrize(
    "option",
    sorted({opt for action in build_parser()._actions for opt in action.option_strings}),
)
def test_every_option_is_documented(option: str) -> None:
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", _section("OPTIONS"))


@pytest.mark.parametrize("code", list(ProblemCode))
def test_every_problem_code_is_documented(code: ProblemCode) -> None:
    pattern = rf'^\.BR 0x{int(code):06x} "? ?{code.name}"?$'
    assert re.search(pattern, _section("PROBLEM CODES"), re.MULTILINE)


@pytest.mark.parametrize("bit", list(FsckExit.__members__.values()))
def test_every_exit_bit_is_documented(bit: FsckExit) -> None:
    assert f".B {int(bit)}\n" in _section("EXIT STATUS")
