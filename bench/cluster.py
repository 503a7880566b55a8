"""Cluster benchmark: the replicated log's request latency against the raw CPG round trip.

Floor: a member on node 1 multicasts 200-byte messages with AGREED order through
``clogfs.cluster.cpg`` and times each one from ``send`` to its own delivery, with one message
in flight (latency: p50, p99, messages/s) and with a window of messages in flight
(throughput). Measured on a one-node and on a three-node corosync rig (tests/cluster/rig.py:
one network namespace per node, knet over veth, token 1000 ms, sched_rr off); on three nodes
nodes 2 and 3 run a member that only receives, so every message is ordered by all three, each
in a process of its own as the daemons are (as threads of one process sharing the GIL they
measured a 7-26 % lower floor here).

Replicated log (issue #7), on each rig right after its floor: one clogfsd ``--cluster
corosync`` and one kernel emulator per node (the helpers of
tests/cluster/test_daemon_cluster.py), one ``clustered-core`` log of 64 regions resumed on
every node (node 1 first, so it is the leader; the others join and get its checkpoint). Node
1 then runs rounds; each times the raw CPG round trip again (node 1's bench thread and the
receive-only member processes, the daemons idle) and then, one request in flight, the
per-write sequence dm-raid1 sends for a write to a clean region (IN_SYNC, IN_SYNC, MARK_REGION,
FLUSH, CLEAR_REGION, FLUSH; a different region each time), the same write with integrated flush
(mainline version 3: IN_SYNC, IN_SYNC, a FLUSH carrying the mark, CLEAR_REGION; the clears'
FLUSH is left to the kernel's 3 s timer) and FLUSH alone (nothing pending).
The requests are timed as the kernel's caller waits for them: node 1's thread blocks in
recv(2) on the emulator's socket (``KernelEmulator.blocking``), so the emulator's own trio
task switches (20-80 us a reply here, which the kernel's connector does not pay) are not
counted; every netlink hop, the daemon and corosync are. Printed: p50/p99 of each request
and of each whole sequence, pooled over the rounds, and, as the median over the rounds, each
state-changing request's p50 over the same round's CPG p50 (target <= 1.3: the replica
answers a state-changing request after one multicast, cmirrord pays two), also after taking
off the round's IN_SYNC p50 (answered from the local replica: the netlink, emulator and
daemon part every request pays). Pairing by round keeps a busy spell of the shared host from
landing on one side of a ratio only.

Relay (the design's shape without the log): each round, after the log's requests, node 1 also
times MARK_REGION requests through ``bench._relay``, a Python trio process on node 1 built from
clogfsd's own socket and CPG pieces that answers each request after one multicast of a fixed
message comes back in its own delivery, keeping no state (its group's other members are
receive-only processes on nodes 2 and 3). Its p50 over the CPG p50 is what the netlink hop and
one multicast cost before any log work, so the target can be read against it; printed too: the
state-changing requests' p50 over the relay's p50 (the cost of the log's own work).

spec/cluster.md reports, on this kind of machine: 3 nodes p50 0.37-0.47 ms, p99 0.7-0.8 ms,
2.3 k msg/s with one in flight, 25-33 k/s with 32; 1 node p50 0.09-0.14 ms, 108-118 k/s with 32.

Run: ``python -m bench.cluster [--samples N] [--window W] [--rounds R] [--sequences S]
[--flushes F]`` from the repository root (the log part imports the test helpers), as root
with corosync installed. About 25 s with the defaults; every wait is bounded.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from clogfs.cluster.cpg import ConfChange, CpgGroup, Deliver, open_cpg_group
from clogfs.netlink.emulator import AUTO_PORT_ID, EmulatedMirror, KernelEmulator
from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.requests import encode_payload
from clogfs.netlink.wire import NETLINK_CONNECTOR, Protocol
from tests.cluster.rig import CorosyncRig, open_rig
from tests.cluster.test_daemon_cluster import (
    REGION_SECTORS,
    REGIONS,
    depart_in_turn,
    meet,
    on_all_nodes,
)
from tests.integration.harness import Daemon

GROUP = b"clogfs-bench"
RELAY_GROUP = b"clogfs-bench-relay"  # bench._relay on node 1, receive-only members elsewhere
MESSAGE_BYTES = 200
DEADLINE = 60.0
LOG_UUID = b"CLOGFS-BENCH-CLUSTER-1"
LOG_CTR = f"clustered-core {REGION_SECTORS} nosync"
TARGET_RATIO = 1.3
# the per-write sequence: (label, request type, whether the payload is the region list)
SEQUENCE: tuple[tuple[str | None, T, bool | None], ...] = (
    ("IN_SYNC", T.IN_SYNC, False),
    ("IN_SYNC (again)", T.IN_SYNC, False),
    ("MARK_REGION", T.MARK_REGION, True),
    ("FLUSH (marks)", T.FLUSH, None),
    ("CLEAR_REGION", T.CLEAR_REGION, True),
    ("FLUSH (clears)", T.FLUSH, None),
)
# the same write with integrated flush (mainline version 3, EmulatedMirror.write): the mark
# rides in the FLUSH and the clears' FLUSH waits for the kernel's 3 s timer, so a write costs
# four requests; its IN_SYNCs have no rows of their own (None), only its ordered requests
INTEGRATED: tuple[tuple[str | None, T, bool | None], ...] = (
    (None, T.IN_SYNC, False),
    (None, T.IN_SYNC, False),
    ("FLUSH (with the mark)", T.FLUSH, True),
    ("CLEAR (integrated)", T.CLEAR_REGION, True),
)
FLUSH_ALONE = "FLUSH alone"
TOTAL = "per-write sequence"
TOTAL_INTEGRATED = "per-write, integrated"
SEQUENCES = {TOTAL: SEQUENCE, TOTAL_INTEGRATED: INTEGRATED}
RELAY = "relay (no log)"
LOCAL = "IN_SYNC"
STATE_CHANGING = frozenset(
    {"MARK_REGION", "FLUSH (marks)", "CLEAR_REGION", "FLUSH (clears)", FLUSH_ALONE,
     "FLUSH (with the mark)", "CLEAR (integrated)"}
)  # fmt: skip


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


async def round_trips(group: CpgGroup, samples: int) -> list[float]:
    """Seconds from send to own delivery of ``samples`` serial messages, after a tenth more
    untimed as warm-up."""
    payload = bytes(MESSAGE_BYTES)
    times: list[float] = []
    with trio.fail_after(DEADLINE):
        for i in range(samples + samples // 10):
            start = time.perf_counter()
            await group.send(payload)
            await own_delivery(group)
            if i >= samples // 10:
                times.append(time.perf_counter() - start)
    return times


async def measure(nodes: int, samples: int, window: int) -> tuple[list[float], float]:
    """On node 1: round-trip times of ``samples`` serial sends, then windowed messages/s."""
    payload = bytes(MESSAGE_BYTES)
    async with open_cpg_group(GROUP) as group:
        await wait_members(group, nodes)
        times = await round_trips(group, samples)
        with trio.fail_after(DEADLINE):
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


@contextmanager
def receiving_members(rig: CorosyncRig, group: bytes = GROUP) -> Iterator[None]:
    """A receive-only member of ``group`` on every node but node 1, each in a process of its
    own (``tests.cluster.client --drain``), as the daemons are, until exit.

    Raises:
        RuntimeError: a member did not report its join within ``DEADLINE``.
    """
    members = [
        rig.spawn_in_node(n, "tests.cluster.client", group.decode(), "--drain")
        for n in sorted(rig.nodes)
        if n != 1
    ]
    try:
        for member in members:
            first_line(member, "a receive-only CPG member did not join")
        yield
    finally:
        stop(members)


def first_line(process: subprocess.Popen[str], failure: str) -> str:
    """The first line ``process`` prints (its report of being ready), within ``DEADLINE``.

    Raises:
        RuntimeError: ``failure`` and the process's stderr, if none came (it is killed).
    """
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], DEADLINE)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"{failure}: {err.strip()}")
    return line


def stop(processes: Sequence[subprocess.Popen[str]]) -> None:
    """Close each one's stdin (it leaves its CPG group and exits), wait for it (killed after
    10 s) and close its pipes."""
    for process in processes:
        if process.stdin is not None:
            process.stdin.close()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def run(rig: CorosyncRig, samples: int, window: int) -> Row:
    """Measure on a started rig (node 1 sends, the others listen)."""
    with receiving_members(rig):
        times, window_rate = rig.run_trio_in_node(1, measure, len(rig.nodes), samples, window)
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
    """One request (or the whole sequence) of the replicated log, timed on node 1.

    ``p50_ms``/``p99_ms`` pool every round; ``ratio`` is the median over the rounds of this
    row's p50 over the CPG round trip p50 of the same round (None for IN_SYNC, answered
    locally), ``over_local`` the same after taking off the round's IN_SYNC p50.
    """

    label: str
    p50_ms: float
    p99_ms: float
    samples: int
    ratio: float | None
    over_local: float | None


@dataclass(frozen=True)
class LogRun:
    """The replicated log's rows and the CPG round trip measured between its rounds."""

    nodes: int
    rounds: int
    cpg_p50_ms: float
    cpg_p99_ms: float
    cpg_samples: int
    rows: list[LogRow]
    local_ratio: float  # median over the rounds of the IN_SYNC p50 over the CPG p50
    over_relay: float  # the largest, over the state-changing rows, of p50 / the relay's p50


def payload(region: int, kind: bool | None) -> object:
    """The request value: the region, a one-region list (also a FLUSH carrying the mark), or
    an empty FLUSH."""
    if kind is None:
        return ()
    return (region,) if kind else region


def time_log_requests(
    mirror: EmulatedMirror, sequences: int, flushes: int
) -> dict[str, list[float]]:
    """On node 1's log: seconds per request of ``sequences`` per-write sequences of each kind
    (``SEQUENCES``; each to the next region, so always a clean one) and of ``flushes`` lone
    FLUSHes; a tenth more of each runs first untimed, as warm-up. After the integrated
    sequences one FLUSH sends what the kernel's timer would (the last clears).

    Called inside ``mirror.emu.blocking()``: each request blocks this thread in recv(2) until
    its reply, as the kernel's caller waits, so no trio task switch of the stand-in kernel is
    timed (the emulator's ``request`` adds two per reply, 20-80 us here, which the real
    kernel's connector does not pay). Each wait is bounded by the emulator's timeout.
    """
    times: dict[str, list[float]] = {FLUSH_ALONE: []}
    warm = sequences // 10
    for total, steps in SEQUENCES.items():
        times[total] = []
        for label, _, _ in steps:
            if label is not None:
                times[label] = []
        for i in range(warm + sequences):
            region = i % REGIONS
            started = time.perf_counter()
            step_times = []
            for _label, rtype, kind in steps:
                t0 = time.perf_counter()
                result = mirror.call_blocking(rtype, payload(region, kind))
                step_times.append(time.perf_counter() - t0)
                if rtype is T.IN_SYNC and result is not True:  # nosync: always in sync
                    raise RuntimeError(f"IN_SYNC of region {region} answered {result!r}")
            if i >= warm:
                times[total].append(time.perf_counter() - started)
                for (label, _, _), seconds in zip(steps, step_times, strict=True):
                    if label is not None:
                        times[label].append(seconds)
        if total == TOTAL_INTEGRATED:
            mirror.call_blocking(T.FLUSH, ())
    warm = flushes // 10
    for i in range(warm + flushes):
        t0 = time.perf_counter()
        mirror.call_blocking(T.FLUSH, ())
        if i >= warm:
            times[FLUSH_ALONE].append(time.perf_counter() - t0)
    return times


@asynccontextmanager
async def open_relay(rig: CorosyncRig) -> AsyncIterator[KernelEmulator]:
    """``bench._relay`` on node 1 (in a process of its own) and an emulator that sends to it.

    Called in node 1's namespace (its trio thread). The relay joins ``RELAY_GROUP``, whose
    other members are ``receiving_members(rig, RELAY_GROUP)``; it exits when its standard
    input closes, on exit.

    Raises:
        RuntimeError: the relay did not report its port within ``DEADLINE``.
        ValueError: it printed something else.
    """
    sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    with sock:
        await sock.bind((AUTO_PORT_ID, 0))
        relay = rig.spawn_in_node(1, "bench._relay", str(sock.getsockname()[0]),
                                  RELAY_GROUP.decode())  # fmt: skip
        try:
            port = int(first_line(relay, "the relay did not start"))
            yield KernelEmulator(sock, Protocol.ULOG, daemon_port=port, timeout=DEADLINE)
        finally:
            stop([relay])


def time_relay(emu: KernelEmulator, requests: int) -> list[float]:
    """Seconds per MARK_REGION through the relay, one in flight, waited for in recv(2) as in
    :func:`time_log_requests` (inside ``emu.blocking()``), after a tenth more untimed."""
    times = []
    warm = requests // 10
    for i in range(warm + requests):
        data = encode_payload(T.MARK_REGION, (i % REGIONS,), Protocol.ULOG)
        t0 = time.perf_counter()
        reply = emu.request_blocking(T.MARK_REGION, LOG_UUID, luid=1, data=data)
        if i >= warm:
            times.append(time.perf_counter() - t0)
        if reply.error:
            raise RuntimeError(f"the relay answered {reply.error}")
    return times


def p50(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (``statistics.quantiles`` exclusive method)."""
    return statistics.quantiles(values, n=100)[98]


def run_log(rig: CorosyncRig, rounds: int, samples: int, sequences: int, flushes: int) -> LogRun:
    """One clogfsd + emulator per node of the rig, one clustered-core log; node 1 measures.

    Node 1 resumes the log first (the leader), then the other nodes join; all are members
    while node 1 measures. Each of ``rounds`` rounds times ``samples`` raw CPG round trips
    (node 1's thread and the other nodes' receive-only member processes in the bench's CPG
    group), then
    ``sequences`` per-write sequences and ``flushes`` lone FLUSHes of the log, so a busy
    spell of the shared host slows a round's floor and its requests alike. Afterwards the
    nodes suspend and remove the log one at a time, node 1 last.
    """
    nodes = sorted(rig.nodes)
    first = threading.Barrier(len(nodes))
    joined = threading.Barrier(len(nodes))
    measured = threading.Barrier(len(nodes))
    departed = [threading.Barrier(len(nodes)) for _ in nodes]
    Times = list[tuple[list[float], dict[str, list[float]]]]

    async def measure_rounds(mirror: EmulatedMirror) -> Times:
        per_round: Times = []
        async with open_cpg_group(GROUP) as group, open_relay(rig) as relay:
            await wait_members(group, len(nodes))
            for _ in range(rounds):
                cpg = await round_trips(group, samples)
                with mirror.emu.blocking():
                    times = time_log_requests(mirror, sequences, flushes)
                with relay.blocking():
                    times[RELAY] = time_relay(relay, sequences)
                per_round.append((cpg, times))
        return per_round

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> Times | None:
        if node_id == 1:
            await mirror.create()
        await meet(first)
        if node_id != 1:
            await mirror.create()
        await mirror.call(T.FLUSH, ())  # answered after this node's join
        await meet(joined)
        per_round = None
        if node_id == 1:
            await mirror.call(T.FLUSH, ())  # ordered after every join
            per_round = await measure_rounds(mirror)
        await meet(measured)
        await depart_in_turn(node_id, mirror, nodes[::-1], departed)
        return per_round

    with (
        tempfile.TemporaryDirectory(prefix="clogfs-bench-cluster-") as tmp,
        receiving_members(rig),
        receiving_members(rig, RELAY_GROUP),
    ):
        results = on_all_nodes(rig, Path(tmp), LOG_UUID, LOG_CTR, body)
    per_round: Times = results[1]
    cpg_all = [t for cpg, _ in per_round for t in cpg]
    rows = []
    labels = [
        *(label for total, steps in SEQUENCES.items() for label in (*(s[0] for s in steps), total)),
        FLUSH_ALONE,
        RELAY,
    ]
    for label in (label for label in labels if label is not None):
        pooled = [t for _, times in per_round for t in times[label]]
        ratio = over_local = None
        if label != LOCAL and label != "IN_SYNC (again)":
            ratio = p50([p50(times[label]) / p50(c) for c, times in per_round])
            if label not in (*SEQUENCES, RELAY):
                over_local = p50(
                    [(p50(times[label]) - p50(times[LOCAL])) / p50(c) for c, times in per_round]
                )
        rows.append(LogRow(label, p50(pooled) * 1e3, p99(pooled) * 1e3, len(pooled), ratio,
                           over_local))  # fmt: skip
    local_ratio = p50([p50(times[LOCAL]) / p50(c) for c, times in per_round])
    over_relay = max(
        p50([p50(times[label]) / p50(times[RELAY]) for _, times in per_round])
        for label in STATE_CHANGING
    )
    return LogRun(len(nodes), rounds, p50(cpg_all) * 1e3, p99(cpg_all) * 1e3, len(cpg_all), rows,
                  local_ratio, over_relay)  # fmt: skip


def print_log_run(run: LogRun) -> None:
    """The replicated log's table with the ratios to the CPG round trip of the same rounds.

    ``p50 / CPG`` is the issue's figure; ``(p50 - local) / CPG`` takes off the IN_SYNC p50
    (netlink, emulator and daemon, no multicast), leaving what the cluster path adds.
    """
    print()
    print(
        f"clogfsd --cluster corosync, {LOG_CTR!r} log on {run.nodes} node(s), timed on node 1 "
        f"(leader), one request in flight, waited for as the kernel does (blocking recv), "
        f"{run.rounds} rounds; ratios: median over the rounds "
        "of p50 / the round's CPG p50"
    )
    print(
        f"{'request':<22} {'p50 ms':>8} {'p99 ms':>8} {'p50 / CPG':>10} "
        f"{'(p50 - local) / CPG':>20} {'samples':>8}"
    )
    for row in run.rows:
        ratio = f"{row.ratio:>10.2f}" if row.ratio is not None else f"{'(local)':>10}"
        over = f"{row.over_local:>20.2f}" if row.over_local is not None else f"{'':>20}"
        print(f"{row.label:<22} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f} {ratio} {over} "
              f"{row.samples:>8}")  # fmt: skip
    print(f"{'CPG round trip':<22} {run.cpg_p50_ms:>8.3f} {run.cpg_p99_ms:>8.3f} {1.0:>10.2f} "
          f"{'':>20} {run.cpg_samples:>8}")  # fmt: skip
    missed = [
        f"{row.label} {row.ratio:.2f}"
        for row in run.rows
        if row.label in STATE_CHANGING and row.ratio is not None and row.ratio > TARGET_RATIO
    ]
    verdict = "met" if not missed else "missed by " + ", ".join(missed)
    print(f"target: every state-changing request's p50 <= {TARGET_RATIO} x the CPG round trip "
          f"p50: {verdict}")  # fmt: skip
    over_local = [row.over_local for row in run.rows if row.label in STATE_CHANGING]
    worst = max((o for o in over_local if o is not None), default=None)
    if worst is not None:  # what the cluster path adds to a local answer, in round trips
        print(
            f"cluster path alone (p50 - local) / CPG: at most {worst:.2f} (the local part, "
            f"IN_SYNC p50 / CPG p50 = {run.local_ratio:.2f}, is paid by every request)"
        )
    relay = next(row for row in run.rows if row.label == RELAY)
    print(
        f"the design's shape alone, {RELAY!r} (netlink hop, one multicast, own delivery, reply; "
        f"no log work): p50 / CPG = {relay.ratio:.2f}; the log's state-changing requests take "
        f"at most {run.over_relay:.2f} x the relay"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on one and on three nodes and print the table; always 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="timed round trips per row")
    parser.add_argument("--window", type=int, default=32, help="messages in flight")
    parser.add_argument("--rounds", type=int, default=5, help="log rounds (CPG, then the log)")
    parser.add_argument(
        "--sequences", type=int, default=200, help="timed per-write sequences per round"
    )
    parser.add_argument("--flushes", type=int, default=400, help="timed lone FLUSHes per round")
    args = parser.parse_args(argv)
    rows = []
    log_runs = []
    for nodes in (1, 3):
        with open_rig(nodes) as rig:
            rows.append(run(rig, args.samples, args.window))
            samples = max(100, args.samples // args.rounds)
            log_runs.append(run_log(rig, args.rounds, samples, args.sequences, args.flushes))
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
    for log_run in log_runs:
        print_log_run(log_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
