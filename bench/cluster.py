"""Cluster benchmark: the raw CPG round trip, the floor the cluster log is measured against.

Workload: a member on node 1 multicasts 200-byte messages with AGREED order through
``clogfs.cluster.cpg`` and times each one from ``send`` to its own delivery, with one message
in flight (latency: p50, p99, messages/s) and with a window of messages in flight
(throughput). Measured on a one-node and on a three-node corosync rig (tests/cluster/rig.py:
one network namespace per node, knet over veth, token 1000 ms, sched_rr off); on three nodes
nodes 2 and 3 run a member that only receives, so every message is ordered by all three.

spec/cluster.md reports, on this kind of machine: 3 nodes p50 0.37-0.47 ms, p99 0.7-0.8 ms,
2.3 k msg/s with one in flight, 25-33 k/s with 32; 1 node p50 0.09-0.14 ms, 108-118 k/s with 32.

Run: ``python -m bench.cluster [--samples N] [--window W]`` as root with corosync installed.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from clogfs.cluster.cpg import ConfChange, CpgGroup, Deliver, open_cpg_group
from tests.cluster.rig import CorosyncRig, open_rig

GROUP = b"clogfs-bench"
MESSAGE_BYTES = 200
DEADLINE = 60.0


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on one and on three nodes and print the table; always 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="timed round trips per row")
    parser.add_argument("--window", type=int, default=32, help="messages in flight")
    args = parser.parse_args(argv)
    rows = []
    for nodes in (1, 3):
        with open_rig(nodes) as rig:
            rows.append(run(rig, args.samples, args.window))
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
