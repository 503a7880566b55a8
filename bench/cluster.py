"""Cluster benchmark: the replicated log's request latency against the raw CPG round trip.

Floor: a member on node 1 multicasts 200-byte messages with AGREED order through
``clogfs.cluster.cpg`` and times each one from ``send`` to its own delivery, with one message
in flight (latency: p50, p99, messages/s) and with a window of messages in flight
(throughput). Measured on a one-node and on a three-node corosync rig (tests/cluster/rig.py:
one network namespace per node, knet over veth, token 1000 ms, sched_rr off); on three nodes
nodes 2 and 3 run a member that only receives, so every message is ordered by all three.

Replicated log (issue #7), on the same three-node rig right after its floor: one clogfsd
``--cluster corosync`` and one kernel emulator per node (the helpers of
tests/cluster/test_daemon_cluster.py), one ``clustered-core`` log of 64 regions resumed on
all three (node 1 first, so it is the leader; nodes 2 and 3 join and get its checkpoint).
Node 1 then times, one request in flight, the per-write sequence dm-raid1 sends for a write
to a clean region (IN_SYNC, IN_SYNC, MARK_REGION, FLUSH, CLEAR_REGION, FLUSH; a different
region each time), and then FLUSH alone (nothing pending). Printed: p50/p99 of each request
and of the whole sequence, and each state-changing request's p50 over the three-node CPG
round trip p50 of the same run (target <= 1.3: the replica answers a state-changing request
after one multicast, cmirrord pays two). IN_SYNC is answered from the local replica: its
p50 is the netlink + daemon part every request pays.

spec/cluster.md reports, on this kind of machine: 3 nodes p50 0.37-0.47 ms, p99 0.7-0.8 ms,
2.3 k msg/s with one in flight, 25-33 k/s with 32; 1 node p50 0.09-0.14 ms, 108-118 k/s with 32.

Run: ``python -m bench.cluster [--samples N] [--window W] [--sequences S] [--flushes F]`` as
root with corosync installed, from the repository root (the log part imports the test
helpers). About 40 s with the defaults; every wait is bounded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from clogfs.cluster.cpg import ConfChange, CpgGroup, Deliver, open_cpg_group
from clogfs.netlink.emulator import EmulatedMirror
from clogfs.netlink.requests import RequestType as T
from tests.cluster.rig import CorosyncRig, open_rig
from tests.cluster.test_daemon_cluster import REGION_SECTORS, REGIONS, meet, on_all_nodes
from tests.integration.harness import Daemon

GROUP = b"clogfs-bench"
MESSAGE_BYTES = 200
DEADLINE = 60.0
LOG_UUID = b"CLOGFS-BENCH-CLUSTER-1"
LOG_CTR = f"clustered-core {REGION_SECTORS} nosync"
TARGET_RATIO = 1.3
# the per-write sequence: (label, request type, whether the payload is the region list)
SEQUENCE = (
    ("IN_SYNC", T.IN_SYNC, False),
    ("IN_SYNC (again)", T.IN_SYNC, False),
    ("MARK_REGION", T.MARK_REGION, True),
    ("FLUSH (marks)", T.FLUSH, None),
    ("CLEAR_REGION", T.CLEAR_REGION, True),
    ("FLUSH (clears)", T.FLUSH, None),
)
FLUSH_ALONE = "FLUSH alone"
TOTAL = "per-write sequence"
LOCAL = "IN_SYNC"
STATE_CHANGING = frozenset(
    {"MARK_REGION", "FLUSH (marks)", "CLEAR_REGION", "FLUSH (clears)", FLUSH_ALONE}
)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    nodes: int
    p50_ms: float
    p99_ms: float
    serial_per_s: float
    window: int
    window_per_s: float


async def wait_members(group: CpgGroup, count: int) -> None:
    """Receive until a membership of ``count`` members that includes this one."""
    with trio.fail_after(DEADLINE):
        while True:
            event = await group.receive()
            if (
                isinstance(event, ConfChange)
                and len(event.members) == count
                and group.member in event.members
            ):
                return


async def own_delivery(group: CpgGroup) -> None:
    """Receive until this member's next message is delivered."""
    while True:
        event = await group.receive()
        if isinstance(event, Deliver) and event.pid == group.pid and event.node_id == 1:
            return


async def measure(nodes: int, samples: int, window: int) -> tuple[list[float], float]:
    """On node 1: round-trip times of ``samples`` serial sends, then windowed messages/s."""
    payload = bytes(MESSAGE_BYTES)
    async with open_cpg_group(GROUP) as group:
        await wait_members(group, nodes)
        times: list[float] = []
        with trio.fail_after(DEADLINE):
            for i in range(samples + samples // 10):
                start = time.perf_counter()
                await group.send(payload)
                await own_delivery(group)
                if i >= samples // 10:  # the first tenth warms up
                    times.append(time.perf_counter() - start)
            # windowed: keep `window` messages in flight for as many messages again
            total = max(samples, 10 * window)
            in_flight = 0
            sent = done = 0
            start = time.perf_counter()
            while done < total:
                while in_flight < window and sent < total:
                    await group.send(payload)
                    sent += 1
                    in_flight += 1
                await own_delivery(group)
                in_flight -= 1
                done += 1
            window_rate = total / (time.perf_counter() - start)
    return times, window_rate


async def listener(stop: threading.Event) -> None:
    """A member that only receives, until ``stop`` is set."""
    async with open_cpg_group(GROUP) as group, trio.open_nursery() as nursery:

        async def drain() -> None:
            async for _ in group:
                pass

        nursery.start_soon(drain)
        await trio.to_thread.run_sync(stop.wait)
        nursery.cancel_scope.cancel()


def run(rig: CorosyncRig, samples: int, window: int) -> Row:
    """Measure on a started rig (node 1 sends, the others listen)."""
    stop = threading.Event()
    listeners = [rig.start_trio_in_node(n, listener, stop) for n in rig.nodes if n != 1]
    try:
        times, window_rate = rig.run_trio_in_node(1, measure, len(rig.nodes), samples, window)
    finally:
        stop.set()
        for call in listeners:
            call.result()
    quantiles = statistics.quantiles(times, n=100)
    return Row(
        nodes=len(rig.nodes),
        p50_ms=quantiles[49] * 1e3,
        p99_ms=quantiles[98] * 1e3,
        serial_per_s=len(times) / sum(times),
        window=window,
        window_per_s=window_rate,
    )


@dataclass(frozen=True)
class LogRow:
    """One request (or the whole sequence) of the replicated log, timed on node 1."""

    label: str
    p50_ms: float
    p99_ms: float
    samples: int


def payload(region: int, kind: bool | None) -> object:
    """The request value: the region, a one-region list, or an empty FLUSH."""
    if kind is None:
        return ()
    return (region,) if kind else region


async def time_log_requests(
    mirror: EmulatedMirror, sequences: int, flushes: int
) -> dict[str, list[float]]:
    """On node 1's log: seconds per request of ``sequences`` per-write sequences (each to the
    next region, so always a clean one) and of ``flushes`` lone FLUSHes; a tenth more of each
    runs first untimed, as warm-up."""
    times: dict[str, list[float]] = {label: [] for label, _, _ in SEQUENCE}
    times[TOTAL] = []
    times[FLUSH_ALONE] = []
    with trio.fail_after(DEADLINE):
        warm = sequences // 10
        for i in range(warm + sequences):
            region = i % REGIONS
            started = time.perf_counter()
            step_times = []
            for _label, rtype, kind in SEQUENCE:
                t0 = time.perf_counter()
                result = await mirror.call(rtype, payload(region, kind))
                step_times.append(time.perf_counter() - t0)
                if rtype is T.IN_SYNC and result is not True:  # nosync: always in sync
                    raise RuntimeError(f"IN_SYNC of region {region} answered {result!r}")
            if i >= warm:
                times[TOTAL].append(time.perf_counter() - started)
                for (label, _, _), seconds in zip(SEQUENCE, step_times, strict=True):
                    times[label].append(seconds)
        warm = flushes // 10
        for i in range(warm + flushes):
            t0 = time.perf_counter()
            await mirror.call(T.FLUSH, ())
            if i >= warm:
                times[FLUSH_ALONE].append(time.perf_counter() - t0)
    return times


def run_log(rig: CorosyncRig, sequences: int, flushes: int) -> list[LogRow]:
    """One clogfsd + emulator per node of the rig, one clustered-core log; node 1 measures.

    Node 1 resumes the log first (the leader), then the other nodes join; all are members
    while node 1 measures. Afterwards the nodes suspend and remove the log one at a time,
    node 1 last.

    Returns:
        The table rows: each request of the sequence, the sequence, FLUSH alone.
    """
    nodes = sorted(rig.nodes)
    first = threading.Barrier(len(nodes))
    joined = threading.Barrier(len(nodes))
    measured = threading.Barrier(len(nodes))
    departed = [threading.Barrier(len(nodes)) for _ in nodes]

    async def body(
        node_id: int, mirror: EmulatedMirror, daemon: Daemon
    ) -> dict[str, list[float]] | None:
        if node_id == 1:
            await mirror.create()
        await meet(first)
        if node_id != 1:
            await mirror.create()
        await mirror.call(T.FLUSH, ())  # answered after this node's join
        await meet(joined)
        times = None
        if node_id == 1:
            await mirror.call(T.FLUSH, ())  # ordered after every join
            times = await time_log_requests(mirror, sequences, flushes)
        await meet(measured)
        for departing, barrier in zip(reversed(nodes), departed, strict=True):
            if node_id == departing:
                await mirror.suspend()
                await mirror.remove()
            await meet(barrier)
        return times

    with tempfile.TemporaryDirectory(prefix="clogfs-bench-cluster-") as tmp:
        results = on_all_nodes(rig, Path(tmp), LOG_UUID, LOG_CTR, body)
    times = results[1]
    assert times is not None
    rows = []
    for label in [*(label for label, _, _ in SEQUENCE), TOTAL, FLUSH_ALONE]:
        quantiles = statistics.quantiles(times[label], n=100)
        rows.append(LogRow(label, quantiles[49] * 1e3, quantiles[98] * 1e3, len(times[label])))
    return rows


def print_log_rows(rows: Sequence[LogRow], cpg: Row) -> None:
    """The replicated log's table with the ratios to the CPG round trip of the same rig.

    ``p50 / CPG`` is the issue's figure; ``(p50 - local) / CPG`` takes off the IN_SYNC p50
    (netlink, emulator and daemon, no multicast), leaving what the cluster path adds.
    """
    local = next(row.p50_ms for row in rows if row.label == LOCAL)
    print()
    print(
        f"clogfsd --cluster corosync, {LOG_CTR!r} log on {cpg.nodes} node(s), timed on node 1 "
        "(leader), one request in flight"
    )
    print(
        f"{'request':<20} {'p50 ms':>8} {'p99 ms':>8} {'p50 / CPG':>10} "
        f"{'(p50 - local) / CPG':>20} {'samples':>8}"
    )
    for row in rows:
        if row.label in STATE_CHANGING:
            ratios = f"{row.p50_ms / cpg.p50_ms:>10.2f} {(row.p50_ms - local) / cpg.p50_ms:>20.2f}"
        elif row.label == TOTAL:
            ratios = f"{row.p50_ms / cpg.p50_ms:>10.2f} {'':>20}"
        else:
            ratios = f"{'(local)':>10} {'':>20}"
        print(f"{row.label:<20} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f} {ratios} {row.samples:>8}")
    print(f"{'CPG round trip':<20} {cpg.p50_ms:>8.3f} {cpg.p99_ms:>8.3f} {1.0:>10.2f}")
    missed = [
        f"{row.label} {row.p50_ms / cpg.p50_ms:.2f}"
        for row in rows
        if row.label in STATE_CHANGING and row.p50_ms > TARGET_RATIO * cpg.p50_ms
    ]
    verdict = "met" if not missed else "missed by " + ", ".join(missed)
    print(
        f"target: every state-changing request's p50 <= {TARGET_RATIO} x the CPG round trip "
        f"p50 ({TARGET_RATIO * cpg.p50_ms:.3f} ms): {verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on one and on three nodes and print the table; always 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="timed round trips per row")
    parser.add_argument("--window", type=int, default=32, help="messages in flight")
    parser.add_argument(
        "--sequences", type=int, default=1000, help="timed per-write sequences of the log"
    )
    parser.add_argument("--flushes", type=int, default=2000, help="timed lone FLUSHes")
    args = parser.parse_args(argv)
    rows = []
    log_rows = []
    for nodes in (1, 3):
        with open_rig(nodes) as rig:
            rows.append(run(rig, args.samples, args.window))
            log_rows.append(run_log(rig, args.sequences, args.flushes))
    print(f"CPG round trip, {MESSAGE_BYTES}-byte AGREED messages, send -> own delivery")
    header = (
        f"{'nodes':>5} {'p50 ms':>8} {'p99 ms':>8} {'msg/s (1 in flight)':>20} "
        f"{'msg/s (' + str(args.window) + ' in flight)':>21}"
    )
    print(header)
    for row in rows:
        print(
            f"{row.nodes:>5} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f} {row.serial_per_s:>20.0f} "
            f"{row.window_per_s:>21.0f}"
        )
    for row, log_table in zip(rows, log_rows, strict=True):
        print_log_rows(log_table, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
