"""Run clog-fsck in process and read back its machine-readable problem log."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clogfs.fsck.cli import main


@dataclass(frozen=True)
class Outcome:
    """Exit status and the problem log of one clog-fsck run."""

    status: int
    problems: list[dict[str, Any]]

    @property
    def codes(self) -> list[str]:
        """Problem names, in the order they were found."""
        return [problem["name"] for problem in self.problems]


def run_fsck(device: Path | str, *args: str) -> Outcome:
    """Run ``clog-fsck *args --problem-log <temporary file> device`` and collect the outcome."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as file:
        log = Path(file.name)
    status = main([*args, "--problem-log", str(log), str(device)])
    problems = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return Outcome(status, problems)
