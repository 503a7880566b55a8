"""clogfsd as a process: readiness, the lock, signals, exit codes, the man page."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clogfs.cli import build_parser
from clogfs.daemon import ExitCode
from clogfs.netlink.requests import RequestType as T
from tests.integration.harness import CLOGFSD, open_rig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.root
async def test_second_instance_refused(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        emu = rig.emu
        result = subprocess.run(
            [
                *CLOGFSD,
                "--kernel-port",
                str(emu.port_id),
                "--no-mount",
                "--lock-file",
                str(tmp_path / "clogfsd.lock"),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == ExitCode.LOCKED
        assert "holds" in result.stderr


@pytest.mark.root
async def test_sigterm_refused_while_logs_live_then_exits(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        emu, daemon = rig.emu, rig.daemon
        reply = await emu.request(
            T.CTR, b"SIG-1", luid=5, data=b"131072 clustered-core 1024 nosync"
        )
        assert reply.error == 0
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_log("SIGTERM refused")
        assert "SIG-1" in daemon.stderr()
        assert daemon.process.poll() is None
        reply = await emu.request(T.IN_SYNC, b"SIG-1", luid=5, data=bytes(8))
        assert reply.error == 0
        assert (await emu.request(T.DTR, b"SIG-1", luid=5)).error == 0
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == ExitCode.OK


@pytest.mark.root
async def test_sigint_exits_when_idle(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        daemon = rig.daemon
        daemon.signal(signal.SIGINT)
        assert await daemon.wait() == ExitCode.OK


@pytest.mark.root
async def test_sigusr1_dumps_state(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        emu, daemon = rig.emu, rig.daemon
        reply = await emu.request(
            T.CTR, b"DUMP-ME-1", luid=5, data=b"131072 clustered-core 1024 nosync"
        )
        assert reply.error == 0
        daemon.signal(signal.SIGUSR1)
        text = await daemon.wait_for_log("endpoint:")
        assert "[DUMP-ME-1" in text or "[UMP-ME-1]" in text
        assert "1 clustered-core" in text


@pytest.mark.root
async def test_log_lines_carry_uuid_prefix(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        emu, daemon = rig.emu, rig.daemon
        await emu.request(
            T.CTR, b"PREFIX-ABCDEFGH", luid=5, data=b"131072 clustered-core 1000 nosync"
        )
        text = await daemon.wait_for_log("invalid region size")
        line = next(x for x in text.splitlines() if "invalid region size" in x)
        assert "[ABCDEFGH]" in line


def test_usage_error_exit_code() -> None:
    result = subprocess.run(
        [*CLOGFSD, "--protocol", "nonsense"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == ExitCode.USAGE


def test_cluster_mode_reports_unavailable(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLOGFSD, "--cluster", "corosync", "--no-mount", "--lock-file", str(tmp_path / "l")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == ExitCode.CLUSTER
    assert "not available" in result.stderr


def test_version() -> None:
    result = subprocess.run([*CLOGFSD, "--version"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert result.stdout.startswith("clogfsd ")


def test_man_page_lists_every_option_and_exit_code() -> None:
    page = (ROOT / "man" / "clogfsd.8").read_text()
    text = page.replace("\\-", "-")
    for action in build_parser()._actions:
        for opt in action.option_strings:
            assert opt in text, f"{opt} missing from clogfsd.8"
    exit_section = text.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    for code in ExitCode:
        assert re.search(rf"^\.B {int(code)}$", exit_section, re.M), code


def test_man_page_lints() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(ROOT / "man" / "clogfsd.8")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_help_runs_without_root() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clogfs.cli", "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert "--kernel-port" in result.stdout
