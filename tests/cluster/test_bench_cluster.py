"""bench/cluster end to end with tiny counts: on real corosync rigs of one and three nodes it
prints the floor and, per rig, every request's p50 and its ratio to the CPG round trip, the
relay's, and the verdict (``make bench`` is not part of ``make test``; this keeps it working).

The figures themselves are not checked: they belong to ``make bench`` on a quiet host.
"""

from __future__ import annotations

import re

import pytest

from bench import cluster

# a table row: label, p50 ms, p99 ms, then "(local)" or the ratio to the CPG round trip
ROW = re.compile(r"^(?P<label>\S.*?)\s+(?P<p50>\d+\.\d{3})\s+(?P<p99>\d+\.\d{3})\s+"
                 r"(?P<ratio>\(local\)|\d+\.\d{2})", re.MULTILINE)  # fmt: skip


def test_the_cluster_benchmark_prints_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--samples", "100", "--window", "4", "--rounds", "1", "--sequences", "10",
            "--flushes", "10"]  # fmt: skip
    assert cluster.main(argv) == 0
    out = capsys.readouterr().out
    floor = re.findall(r"^\s+([13])\s+(\d+\.\d{3})\s+\d+\.\d{3}\s+\d+\s+\d+$", out, re.MULTILINE)
    assert [nodes for nodes, _ in floor] == ["1", "3"]
    assert all(float(p50) > 0 for _, p50 in floor)
    tables = out.split("clogfsd --cluster corosync")[1:]
    assert [re.search(r"log on (\d) node", t)[1] for t in tables] == ["1", "3"]  # type: ignore[index]
    labels = [
        *(label for steps in cluster.SEQUENCES.values() for label, _, _ in steps if label),
        *cluster.SEQUENCES,
        cluster.FLUSH_ALONE,
        cluster.RELAY,
        "CPG round trip",
    ]
    for table in tables:
        rows = {m["label"]: m for m in ROW.finditer(table)}
        assert sorted(rows) == sorted(labels)
        for label, row in rows.items():
            assert 0 < float(row["p50"]) <= float(row["p99"]), label
            local = label in ("IN_SYNC", "IN_SYNC (again)")
            assert (row["ratio"] == "(local)") is local, label
        assert rows["CPG round trip"]["ratio"] == "1.00"
        verdict = re.search(r"^target: .*p50: (met|missed by .+)$", table, re.MULTILINE)
        assert verdict is not None
        assert re.search(r"the design's shape alone, .* p50 / CPG = \d+\.\d{2}; .* at most "
                         r"\d+\.\d{2} x the relay$", table, re.MULTILINE)  # fmt: skip
