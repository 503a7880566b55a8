"""Metrics: histories, stats and the Prometheus text exposition."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clogfs import metrics as metrics_module
from clogfs.metrics import LATENCY_WINDOW, Metrics, quantile, result_label
from clogfs.snapshot import RequestRecord, RequestStats

from .helpers import core_snapshot, make_snapshot

T0 = 1_700_000_000.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``text``, by name and sorted labels, via prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def request(m: Metrics, log: str | None, kind: str, *, result: int = 0, latency_s: float = 0.001,
            seq: int = 1, regions: tuple[int, ...] = ()) -> None:  # fmt: skip
    m.observe_request(
        log, kind, seq=seq, regions=regions, result=result, arrived=T0 + seq, latency_s=latency_s
    )


def test_history_keeps_the_last_requests_oldest_first() -> None:
    m = Metrics(history_len=2)
    for seq in range(1, 4):
        request(m, "a", "MARK_REGION", seq=seq, regions=(seq,), latency_s=0.000002)
    assert m.history("a") == (
        RequestRecord(T0 + 2, 2, "MARK_REGION", (2,), 0, 2.0),
        RequestRecord(T0 + 3, 3, "MARK_REGION", (3,), 0, 2.0),
    )


def test_history_is_per_log() -> None:
    m = Metrics()
    request(m, "a", "FLUSH")
    assert m.history("b") == ()
    assert len(m.history("a")) == 1


def test_stats_count_and_quantiles_per_type() -> None:
    m = Metrics()
    for i in range(1, 101):
        request(m, "a", "IN_SYNC", seq=i, latency_s=i / 1e6)
    request(m, "a", "FLUSH", latency_s=0.005)
    assert m.stats("a") == RequestStats(
        counts=(("FLUSH", 1), ("IN_SYNC", 100)),
        latency_p50_us=(("FLUSH", 5000.0), ("IN_SYNC", 50.0)),
        latency_p99_us=(("FLUSH", 5000.0), ("IN_SYNC", 99.0)),
    )


def test_stats_quantiles_cover_a_bounded_window() -> None:
    m = Metrics()
    for i in range(LATENCY_WINDOW):
        request(m, "a", "FLUSH", seq=i, latency_s=1.0)
    for i in range(LATENCY_WINDOW):
        request(m, "a", "FLUSH", seq=i, latency_s=0.000001)
    stats = m.stats("a")
    assert stats.counts == (("FLUSH", 2 * LATENCY_WINDOW),)
    ((name, p99_us),) = stats.latency_p99_us
    assert name == "FLUSH"
    assert p99_us == pytest.approx(1.0)


def test_stats_of_an_unknown_log_are_empty() -> None:
    assert Metrics().stats("nope") == RequestStats()


def test_forget_log_drops_its_history_and_series() -> None:
    m = Metrics()
    request(m, "a", "FLUSH")
    m.observe_flush("a")
    m.forget_log("a")
    m.forget_log("never-seen")
    assert m.history("a") == ()
    text = m.render_prometheus([])
    assert not [key for key in samples(text) if ("log", "a") in key[1]]
    assert samples(text)[("clogfs_requests_total", (("result", "ok"), ("type", "FLUSH")))] == 1


def test_requests_without_a_log_count_daemon_wide_only() -> None:
    m = Metrics()
    request(m, None, "CTR", result=-22)
    parsed = samples(m.render_prometheus([]))
    assert parsed[("clogfs_requests_total", (("result", "EINVAL"), ("type", "CTR")))] == 1
    assert ("clogfs_log_requests_total", (("log", ""), ("type", "CTR"))) not in parsed


@pytest.mark.parametrize(
    ("result", "label"), [(0, "ok"), (-22, "EINVAL"), (-5, "EIO"), (-3, "ESRCH"), (-9999, "E9999")]
)
def test_result_label(result: int, label: str) -> None:
    assert result_label(result) == label


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([1.0], 0.5, 1.0), ([1.0, 2.0], 0.5, 1.0), ([1, 2, 3, 4], 0.99, 4)],
)
def test_quantile_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == expected


def test_device_failure_state_must_be_d_or_f() -> None:
    with pytest.raises(ValueError, match="D or F"):
        Metrics().observe_device_failure("a", "A")


def test_history_len_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Metrics(history_len=0)


def test_prometheus_families_and_types() -> None:
    m = Metrics()
    request(m, "a", "FLUSH")
    m.observe_write("a", nbytes=4096, latency_s=0.002, ok=True)
    m.observe_flush("a")
    m.observe_device_failure("a", "D")
    assert families(m.render_prometheus([make_snapshot()])) == {
        "clogfs_requests": "counter",
        "clogfs_request_duration_seconds": "histogram",
        "clogfs_log_requests": "counter",
        "clogfs_flushes": "counter",
        "clogfs_log_writes": "counter",
        "clogfs_log_written_bytes": "counter",
        "clogfs_log_write_duration_seconds": "histogram",
        "clogfs_log_device_failures": "counter",
        "clogfs_logs": "gauge",
        "clogfs_log_regions": "gauge",
        "clogfs_log_regions_in_sync": "gauge",
    }


def test_prometheus_counter_values() -> None:
    m = Metrics()
    request(m, "a", "FLUSH")
    request(m, "a", "FLUSH", result=-5)
    m.observe_write("a", nbytes=4096, latency_s=0.002, ok=True)
    m.observe_write("a", nbytes=4096, latency_s=0.002, ok=False)
    m.observe_flush("a")
    m.observe_device_failure("a", "F")
    parsed = samples(m.render_prometheus([]))
    assert parsed[("clogfs_requests_total", (("result", "EIO"), ("type", "FLUSH")))] == 1
    assert parsed[("clogfs_log_requests_total", (("log", "a"), ("type", "FLUSH")))] == 2
    assert parsed[("clogfs_flushes_total", (("log", "a"),))] == 1
    assert parsed[("clogfs_log_writes_total", (("log", "a"), ("result", "error")))] == 1
    assert parsed[("clogfs_log_written_bytes_total", (("log", "a"),))] == 4096
    assert parsed[("clogfs_log_device_failures_total", (("log", "a"), ("state", "F")))] == 1


def test_prometheus_request_histogram_is_cumulative() -> None:
    m = Metrics()
    for latency in (0.00003, 0.0003, 0.0003, 7.0):
        request(m, None, "IN_SYNC", latency_s=latency)
    parsed = samples(m.render_prometheus([]))

    def bucket(le: str) -> float:
        return parsed[("clogfs_request_duration_seconds_bucket", (("le", le), ("type", "IN_SYNC")))]

    assert bucket("5e-05") == 1
    assert bucket("0.0005") == 3
    assert bucket("2.5") == 3
    assert bucket("+Inf") == 4
    assert parsed[("clogfs_request_duration_seconds_count", (("type", "IN_SYNC"),))] == 4
    total = parsed[("clogfs_request_duration_seconds_sum", (("type", "IN_SYNC"),))]
    assert total == pytest.approx(7.00063)


def test_prometheus_logs_per_state_from_snapshots() -> None:
    snaps = [make_snapshot(), core_snapshot(), core_snapshot(uuid=b"c2", state="suspended")]
    parsed = samples(Metrics().render_prometheus(snaps))
    assert {key[1][0][1]: value for key, value in parsed.items() if key[0] == "clogfs_logs"} == {
        "constructed": 0,
        "resumed": 2,
        "suspended": 1,
        "failed": 0,
    }
    core, c2 = snaps[1], snaps[2]
    assert parsed[("clogfs_log_regions", (("log", f"core-log@{core.luid:#x}"),))] == 16
    assert parsed[("clogfs_log_regions_in_sync", (("log", f"c2@{c2.luid:#x}"),))] == 16


def test_prometheus_label_values_are_escaped() -> None:
    m = Metrics()
    name = 'we"ird\\na\nme'
    m.observe_flush(name)
    parsed = samples(m.render_prometheus([]))
    assert parsed[("clogfs_flushes_total", (("log", name),))] == 1


def test_metrics_module_is_pure() -> None:
    tree = ast.parse(Path(metrics_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "pyfuse3", "socket", "os", "time", "cffi"}


def test_importing_metrics_loads_neither_trio_nor_pyfuse3() -> None:
    code = "import sys, clogfs.metrics; print(sorted({'trio', 'pyfuse3'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
