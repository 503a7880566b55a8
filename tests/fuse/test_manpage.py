"""man/clogfs.5 documents every file the view renders and every metric family, and lints."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clogfs.fusefs.render import DAEMON_FILES, LOG_FILES
from clogfs.metrics import Metrics

from .helpers import make_snapshot

PAGE = Path(__file__).parents[2] / "man" / "clogfs.5"


def documented_entries(section: str) -> list[str]:
    """The ``.TP`` / ``.B name`` entries of one ``.SH`` section, unescaped."""
    text = PAGE.read_text()
    match = re.search(rf"^\.SH {section}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert match, f"no section {section}"
    return [name.replace("\\-", "-") for name in re.findall(r"^\.TP\n\.B (\S+)", match[1], re.M)]


def test_every_daemon_file_is_documented() -> None:
    assert documented_entries("DAEMON FILES") == [row.name for row in DAEMON_FILES]


def test_every_log_file_is_documented() -> None:
    assert documented_entries("LOG FILES") == [row.name for row in LOG_FILES]


def test_every_metric_family_is_documented() -> None:
    metrics = Metrics()
    metrics.observe_request("a", "FLUSH", seq=1, regions=(), result=0, arrived=0.0, latency_s=0.001)
    text = metrics.render_prometheus([make_snapshot()])
    page = PAGE.read_text().replace("\\-", "-")
    for family in text_string_to_metric_families(text):
        sample_name = f"{family.name}_total" if family.type == "counter" else family.name
        name = re.escape(sample_name.removeprefix("clogfs_"))
        assert re.search(rf"^\.B {name}$", page, re.M), family.name


def test_page_lints_cleanly() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stderr == ""
