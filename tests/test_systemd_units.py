"""The systemd units in systemd/: their dependencies, their command lines, systemd's verdict.

``clogfsd.service`` is the single-host unit, ordered for early boot; ``clogfsd-cluster.service``
is the cluster-mode unit, which needs corosync. Each unit is read with a small parser that
keeps every assignment (list settings such as ``After=`` may be given several times), and
``ExecStart`` is expanded the way systemd expands ``$VAR`` (split at whitespace) and parsed
with clogfsd's own argument parser.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from clogfs.cli import build_parser

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
MAIN = SYSTEMD / "clogfsd.service"
CLUSTER = SYSTEMD / "clogfsd-cluster.service"
INSTALLED_BINARY = "/usr/local/bin/clogfsd"
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"),
             Path("/usr/lib/systemd/system"))  # fmt: skip

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """``{section: [(key, value), ...]}`` in file order; comments and blank lines dropped."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a unit file line: {raw!r}"
        assert section is not None, f"{path}: a setting before any section: {raw!r}"
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every assignment of ``key`` in ``section``, in order (empty list: never set)."""
    return [v for k, v in unit.get(section, []) if k == key]


def words(unit: Unit, section: str, key: str) -> list[str]:
    """A list setting: the words of every assignment; an empty assignment resets the list."""
    result: list[str] = []
    for value in values(unit, section, key):
        result = result + value.split() if value else []
    return result


def single(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= in [{section}]: {found}"
    return found[0]


def exec_argv(command: str, environment: dict[str, str]) -> list[str]:
    """An ``ExecStart=`` line as systemd runs it: a leading ``-`` dropped, ``$VAR`` split at
    whitespace into words, ``${VAR}`` kept as one word (every variable here is ``$VAR``)."""
    argv: list[str] = []
    for word in shlex.split(command.lstrip("-@:+!")):
        if word.startswith("$") and not word.startswith("${"):
            argv += environment.get(word[1:], "").split()
        else:
            argv.append(word)
    return argv


@pytest.fixture(scope="module")
def main_unit() -> Unit:
    return parse_unit(MAIN)


@pytest.fixture(scope="module")
def cluster_unit() -> Unit:
    return parse_unit(CLUSTER)


def test_cluster_unit_needs_and_follows_corosync(cluster_unit: Unit) -> None:
    """Starting the cluster unit starts corosync first (clogfsd takes its node id from it),
    and after the network is up; a corosync that dies does not take clogfsd down with it
    (it keeps answering from its local copy: no BindsTo=)."""
    assert "corosync.service" in words(cluster_unit, "Unit", "Requires")
    after = words(cluster_unit, "Unit", "After")
    assert {"corosync.service", "network-online.target"} <= set(after)
    assert "network-online.target" in words(cluster_unit, "Unit", "Wants")
    assert "corosync.service" not in words(cluster_unit, "Unit", "BindsTo")
    assert "corosync.service" not in words(cluster_unit, "Unit", "Before")
    assert values(cluster_unit, "Unit", "DefaultDependencies") in ([], ["yes"])
    assert words(cluster_unit, "Install", "WantedBy") == ["multi-user.target"]


def test_the_two_units_conflict(main_unit: Unit, cluster_unit: Unit) -> None:
    """One clogfsd per host: starting either unit stops the other."""
    assert "clogfsd.service" in words(cluster_unit, "Unit", "Conflicts")
    assert "clogfsd-cluster.service" in words(main_unit, "Unit", "Conflicts")


def test_main_unit_stays_ordered_for_early_boot(main_unit: Unit) -> None:
    assert single(main_unit, "Unit", "DefaultDependencies") == "no"
    assert "local-fs-pre.target" in words(main_unit, "Unit", "Before")
    assert "corosync.service" not in words(main_unit, "Unit", "After")
    assert words(main_unit, "Install", "WantedBy") == ["sysinit.target"]


def test_cluster_unit_runs_the_daemon_like_the_main_unit(
    main_unit: Unit, cluster_unit: Unit
) -> None:
    """Same readiness protocol, capabilities, options file, runtime directory, stop timeout
    and restart policy as clogfsd.service."""
    for key in ("Type", "EnvironmentFile", "CapabilityBoundingSet", "RuntimeDirectory",
                "RuntimeDirectoryPreserve", "TimeoutStopSec", "Restart", "RestartSec",
                "ExecStartPre"):  # fmt: skip
        assert values(cluster_unit, "Service", key) == values(main_unit, "Service", key), key
    assert single(cluster_unit, "Service", "Type") == "notify"


@pytest.mark.parametrize(
    "opts",
    ["", "--log-level DEBUG", "--no-quorum --mount-allow-other", "--cluster none",
     "--cluster corosync --debug service"],
)  # fmt: skip
def test_exec_start_lines_parse_with_clogfsd_parser(
    main_unit: Unit, cluster_unit: Unit, opts: str
) -> None:
    """Both ExecStart lines run the installed clogfsd with options its parser accepts, for
    any CLOGFSD_OPTS; the cluster unit's --cluster corosync comes last and always holds."""
    parser = build_parser()
    environment = {"CLOGFSD_OPTS": opts}
    main = exec_argv(single(main_unit, "Service", "ExecStart"), environment)
    cluster = exec_argv(single(cluster_unit, "Service", "ExecStart"), environment)
    assert main[0] == cluster[0] == INSTALLED_BINARY
    main_args = parser.parse_args(main[1:])
    cluster_args = parser.parse_args(cluster[1:])
    assert cluster_args.cluster == "corosync"
    assert main_args.cluster == ("corosync" if "--cluster corosync" in opts else "none")
    assert main_args.log_level == cluster_args.log_level


def test_installed_binary_is_the_project_entry_point() -> None:
    pyproject = (SYSTEMD.parent / "pyproject.toml").read_text()
    assert 'clogfsd = "clogfs.cli:main"' in pyproject
    assert Path(INSTALLED_BINARY).name == "clogfsd"


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` loads both units and their dependencies without a complaint.

    It checks that ExecStart names an executable, so the copies verified here name a stub in
    place of /usr/local/bin/clogfsd; the Documentation= man pages are not installed, so
    ``--man=no``. Without a corosync.service on the host a stub unit stands in for it (a
    Requires= on a missing unit is an error).
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    stub = tmp_path / "clogfsd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = []
    for unit in (MAIN, CLUSTER):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_BINARY, str(stub)))
        units.append(str(copy))
    if not any((d / "corosync.service").exists() for d in UNIT_DIRS):
        (tmp_path / "corosync.service").write_text("[Service]\nType=notify\nExecStart=/bin/true\n")
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    ours = [line for line in result.stderr.splitlines() if "clogfsd" in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr
