"""The problem table: unique codes, every code used, every call site supplies every field."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import clogfs.fsck.passes as passes_module
from clogfs.fsck.context import FsckExit
from clogfs.fsck.passes import PASSES
from clogfs.fsck.problems import PROBLEMS, ProblemCode, ProblemFlag, Prompt

PACKAGE = Path(passes_module.__file__).parent
CORE_MODULES = ["problems.py", "passes.py", "image.py", "context.py"]
FORBIDDEN_IMPORTS = {"trio", "socket", "pyfuse3", "cffi", "os", "mmap", "fcntl"}


def _fix_calls() -> list[tuple[str, ProblemCode, set[str]]]:
    """(enclosing function, code, keyword names) for every call naming a ProblemCode."""
    tree = ast.parse((PACKAGE / "passes.py").read_text())
    calls = []
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            for arg in node.args:
                if (
                    isinstance(arg, ast.Attribute)
                    and isinstance(arg.value, ast.Name)
                    and arg.value.id == "ProblemCode"
                ):
                    keywords = {kw.arg for kw in node.keywords if kw.arg is not None}
                    calls.append((function.name, ProblemCode[arg.attr], keywords))
    return calls


def test_codes_are_unique() -> None:
    assert len({int(code) for code in ProblemCode}) == len(ProblemCode)


def test_every_code_has_a_table_row() -> None:
    assert set(PROBLEMS) == set(ProblemCode)


def test_every_code_is_used_by_a_pass() -> None:
    assert {code for _, code, _ in _fix_calls()} == set(ProblemCode)


@pytest.mark.parametrize(("function", "code", "keywords"), _fix_calls())
def test_call_site_supplies_every_field(
    function: str, code: ProblemCode, keywords: set[str]
) -> None:
    assert keywords == PROBLEMS[code].fields, function


@pytest.mark.parametrize(("function", "code", "keywords"), _fix_calls())
def test_code_high_byte_is_its_pass(function: str, code: ProblemCode, keywords: set[str]) -> None:
    names = [check.__name__ for check in PASSES]
    if function in names:
        assert code >> 16 == names.index(function)


def test_codes_fit_the_pass_number_layout() -> None:
    for code in ProblemCode:
        assert 0 <= code >> 16 < len(PASSES)
        assert code & 0xFFFF != 0


def test_preen_ok_problems_have_a_fix() -> None:
    for problem in PROBLEMS.values():
        if ProblemFlag.PREEN_OK in problem.flags:
            assert problem.prompt is not Prompt.NONE


def test_problems_without_a_fix_count_as_uncorrected_or_stop() -> None:
    for code, problem in PROBLEMS.items():
        if problem.prompt is Prompt.NONE:
            assert ProblemFlag.NO_OK not in problem.flags, code.name


def test_exit_bits_are_fsck_8() -> None:
    assert {name: int(member) for name, member in FsckExit.__members__.items()} == {
        "OK": 0,
        "CORRECTED": 1,
        "REBOOT": 2,
        "UNCORRECTED": 4,
        "OPERATIONAL": 8,
        "USAGE": 16,
        "CANCELLED": 32,
        "LIBRARY": 128,
    }


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_modules_do_no_io(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS


def test_prompt_has_question_and_preen_message() -> None:
    for prompt in Prompt:
        assert bool(prompt.question) == bool(prompt.preen_message) == (prompt is not Prompt.NONE)
