"""The checker's state and its one decision point, ``FsckContext.fix``.

Passes never look at the mode (``-n``, ``-y``, ``-p``, interactive): they describe a problem
by its code and fields and ask :meth:`FsckContext.fix` whether to repair it. ``fix`` prints
the finding, decides (or asks), records it, and stops the check where the problem table says
so. The exit status is derived from the records (:meth:`FsckContext.exit_status`).

Core module: no I/O of its own; the human output goes to the text stream it is given and the
question to the ``ask`` callable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from clogfs.errors import LocalProtocolError
from clogfs.fsck.image import LogImage
from clogfs.fsck.problems import PROBLEMS, Problem, ProblemCode, ProblemFlag, Prompt


class Mode(enum.Enum):
    """How fixes are decided."""

    NO = "no"  # -n: answer no to everything; the device is opened read-only
    YES = "yes"  # -y: answer yes to everything
    PREEN = "preen"  # -p/-a: fix PREEN_OK problems, halt on anything else
    ASK = "ask"  # no mode: ask on the terminal (y/n/a)


class FsckExit(enum.IntFlag):
    """fsck(8) exit status bits, ORed together."""

    OK = 0
    CORRECTED = 1
    REBOOT = 2  # unused: a log is never in use while it is checked
    UNCORRECTED = 4
    OPERATIONAL = 8
    USAGE = 16
    CANCELLED = 32
    LIBRARY = 128  # unused


class Answer(enum.Enum):
    """The answer recorded for a problem."""

    YES = "yes"
    NO = "no"
    NONE = "none"  # nothing could be done: the problem has no fix


class CheckAborted(Exception):
    """The check stops: a fatal problem was not fixed, or preen mode met an unexpected one."""

    def __init__(self, code: ProblemCode, *, preen_halt: bool) -> None:
        super().__init__(code.name)
        self.code = code
        self.preen_halt = preen_halt


class CheckCancelled(Exception):
    """The administrator cancelled at a question (end of input or interrupt)."""


@dataclass(frozen=True)
class Finding:
    """One problem met during the check, and the answer it got."""

    code: ProblemCode
    fields: dict[str, Any]
    answer: Answer

    @property
    def problem(self) -> Problem:
        """The problem table row."""
        return PROBLEMS[self.code]

    @property
    def message(self) -> str:
        """The worded finding."""
        return self.problem.message.format(**self.fields)


@dataclass
class FsckContext:
    """Everything the passes share: the image, the request, and what was found so far.

    Args:
        image: the log image the passes read and stage fixes on.
        device_name: the path shown in messages.
        mode: how fixes are decided.
        out: where findings and questions are printed.
        ask: reads one answer line after a question is printed (``ASK`` mode only); returns
            ``""`` (as ``readline``) or raises ``EOFError`` at the end of input.
        expected_regions: the mirror's region count, when given on the command line.
        force: check the bitmap even if the header looks clean (``-f``).
        mark_all_dirty: ``--mark-all-dirty`` was given.
    """

    image: LogImage
    device_name: str
    mode: Mode
    out: TextIO
    ask: Callable[[], str] | None = None
    expected_regions: int | None = None
    force: bool = False
    mark_all_dirty: bool = False
    findings: list[Finding] = field(default_factory=list)
    aborted: CheckAborted | None = None
    dirty_count: int | None = None
    dirty_ranges: list[range] | None = None
    _yes_to_all: bool = False

    def fix(self, code: ProblemCode, **fields: Any) -> bool:
        """Report problem ``code`` and decide whether to fix it: the only code that knows the mode.

        Args:
            code: the problem.
            **fields: every field the problem's message names.

        Returns:
            Whether the caller must make the fix (stage it on the image).

        Raises:
            CheckAborted: a ``FATAL`` problem was not fixed, or preen mode met a problem that is
                not ``PREEN_OK`` (after printing the preen halt message).
            CheckCancelled: the administrator ended the input or interrupted a question.
            LocalProtocolError: ``fields`` do not match the message (a bug in a pass).
        """
        problem = PROBLEMS[code]
        if set(fields) != problem.fields:
            raise LocalProtocolError(
                f"{code.name} needs fields {sorted(problem.fields)}, got {sorted(fields)}"
            )
        message = problem.message.format(**fields)
        answer = self._decide(problem, message)
        recorded = answer or (Answer.NONE if problem.prompt is Prompt.NONE else Answer.NO)
        self.findings.append(Finding(code, dict(fields), recorded))
        if answer is None:
            raise CheckAborted(code, preen_halt=True)
        if answer is not Answer.YES and ProblemFlag.FATAL in problem.flags:
            raise CheckAborted(code, preen_halt=False)
        return answer is Answer.YES

    def _decide(self, problem: Problem, message: str) -> Answer | None:
        """The answer, or None when preen mode must halt."""
        prompt = problem.prompt
        if self.mode is Mode.PREEN:
            if ProblemFlag.PREEN_OK in problem.flags and prompt is not Prompt.NONE:
                self._print(f"{self.device_name}: {message}.  {prompt.preen_message}.")
                return Answer.YES
            if ProblemFlag.NO_OK in problem.flags:
                self._print(f"{self.device_name}: {message}.")
                return Answer.NONE if prompt is Prompt.NONE else Answer.NO
            self._print(f"{self.device_name}: {message}.")
            self._print(
                f"\n{self.device_name}: UNEXPECTED INCONSISTENCY; RUN clog-fsck MANUALLY.\n"
                "\t(i.e., without -a or -p options)"
            )
            return None
        if prompt is Prompt.NONE:
            self._print(f"{message}.")
            return Answer.NONE
        if self.mode is Mode.NO:
            self._print(f"{message}.\n{prompt.question}? no\n")
            return Answer.NO
        if self.mode is Mode.YES or self._yes_to_all:
            self._print(f"{message}.\n{prompt.question}? yes\n")
            return Answer.YES
        return self._ask(message, prompt)

    def _ask(self, message: str, prompt: Prompt) -> Answer:
        if self.ask is None:
            raise LocalProtocolError("ASK mode without an ask callable")
        self._print(f"{message}.")
        while True:
            self.out.write(f"{prompt.question}? [y/n/a] ")
            self.out.flush()
            try:
                line = self.ask()
            except (EOFError, KeyboardInterrupt) as exc:
                self._print("")
                raise CheckCancelled from exc
            if not line:
                self._print("")
                raise CheckCancelled("end of input")
            reply = line.strip().lower()
            if reply in ("y", "yes"):
                return Answer.YES
            if reply in ("n", "no"):
                return Answer.NO
            if reply in ("a", "all"):
                self._yes_to_all = True
                return Answer.YES

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")

    @property
    def looks_clean(self) -> bool:
        """No problem found so far: the header is sound (``-f`` checks the bitmap anyway)."""
        return not self.findings

    def exit_status(self, *, written: bool) -> FsckExit:
        """The fsck(8) bits for the findings, given whether the staged image was written."""
        status = FsckExit.OK
        for finding in self.findings:
            flags = finding.problem.flags
            if finding.answer is Answer.YES and written:
                if ProblemFlag.NOT_A_FIX not in flags:
                    status |= FsckExit.CORRECTED
            elif ProblemFlag.NO_OK not in flags:
                status |= FsckExit.UNCORRECTED
        if self.aborted is not None and self.aborted.preen_halt:
            status |= FsckExit.UNCORRECTED
        return status
