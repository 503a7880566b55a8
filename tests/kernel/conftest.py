"""Boots for the kernel scenarios: as few VMs as possible, each under a hard timeout.

Every test here names the guest scenario it checks with ``@pytest.mark.kernel_scenario(NAME)``.
The ``main_boot`` fixture runs, in one VM, every scenario the selected tests need (in the
order of ``scenarios.SCENARIOS``); ``recovery_boot`` is a second VM on the images the
``crash_writes`` scenario left behind. A boot that fails or times out is a test failure with
the console attached, never a skip; only a missing QEMU skips (``tests/conftest.py`` and
:func:`clogfs.vm.qemu_missing_reason`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clogfs.vm import PreparedVm, VmError, VmResult, prepare, qemu_missing_reason, run_in_vm
from tests.kernel.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]
GUEST_PYTHON = REPO / ".venv" / "bin" / "python"
GUEST_PROGRAM = REPO / "tests" / "kernel" / "scenarios.py"
MAIN_BOOT_TIMEOUT = 720.0  # seconds, all scenarios: about 100 s on an idle 2-core host
RECOVERY_BOOT_TIMEOUT = 300.0
RECOVERY_SCENARIOS = ("crash_recover",)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that ties a test to its guest scenario."""
    config.addinivalue_line(
        "markers", "kernel_scenario(name): the guest scenario (tests/kernel/scenarios.py) checked"
    )


@dataclass(frozen=True)
class Boot:
    """One VM run of some scenarios: its share, and the result or why there is none."""

    share: Path
    result: VmResult | None
    error: str | None

    def scenario(self, name: str) -> dict[str, Any]:
        """The scenario's result file, or fail the test saying why it is missing or broken."""
        path = self.share / f"{name}.json"
        if not path.exists():
            why = self.error or "the guest script ended without writing it"
            detail = ""
            if self.result is not None:
                detail = f"\n--- guest stdout ---\n{self.result.stdout}\n--- guest stderr ---\n"
                detail += self.result.stderr[-4000:]
            pytest.fail(f"scenario {name} has no result: {why}{detail}", pytrace=False)
        data: dict[str, Any] = json.loads(path.read_text())
        if "error" in data:
            pytest.fail(f"scenario {name} raised in the guest:\n{data['error']}", pytrace=False)
        return data

    def daemon_log(self) -> str:
        """clogfsd's log from this boot (empty if it never started)."""
        path = self.share / "clogfsd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wanted(items: Iterable[pytest.Item], names: Iterable[str]) -> list[str]:
    marked = {
        str(marker.args[0]) for item in items for marker in item.iter_markers("kernel_scenario")
    }
    return [name for name in names if name in marked]


def _boot(vm: PreparedVm, share: Path, names: list[str], timeout: float) -> Boot:
    script = f'#!/bin/sh\nexec {GUEST_PYTHON} {GUEST_PROGRAM} "$CLOGVM_SHARE" {" ".join(names)}\n'
    try:
        return Boot(share, run_in_vm(script, timeout=timeout, share=share, vm=vm), None)
    except VmError as exc:
        return Boot(share, None, str(exc))


@pytest.fixture(scope="session")
def prepared_vm() -> PreparedVm:
    """The cached kernel and initramfs (downloaded on first use; a failure fails the tests)."""
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return prepare()


@pytest.fixture(scope="session")
def main_boot(
    request: pytest.FixtureRequest,
    prepared_vm: PreparedVm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Boot:
    """One VM running every selected scenario except the recovery boot's."""
    order = [name for name in SCENARIOS if name not in RECOVERY_SCENARIOS]
    names = _wanted(request.session.items, order)
    recovery = _wanted(request.session.items, RECOVERY_SCENARIOS)
    if recovery and "crash_writes" not in names:
        names.append("crash_writes")
    share = tmp_path_factory.mktemp("kernel-main")
    return _boot(prepared_vm, share, names, MAIN_BOOT_TIMEOUT)


@pytest.fixture(scope="session")
def recovery_boot(prepared_vm: PreparedVm, main_boot: Boot) -> Boot:
    """A second VM on the images ``crash_writes`` left in the main boot's share."""
    if not (main_boot.share / "crash").is_dir():
        return Boot(main_boot.share, None, "crash_writes left no images behind")
    return _boot(prepared_vm, main_boot.share, list(RECOVERY_SCENARIOS), RECOVERY_BOOT_TIMEOUT)
