"""Protocol benchmark: clogfsd against a bare echo over the same netlink connector sockets.

Workload: the per-write sequence dm-raid1 sends for each write to a clean region (IN_SYNC,
IN_SYNC, MARK_REGION, FLUSH, CLEAR_REGION, FLUSH) on clustered-core logs, from 1 and 64
logs at once, for a fixed time each. The floor is a plain Python responder that answers
every request at once with a correctly sized zero reply, driven by the same kernel emulator
over the same kind of sockets. Reported: requests/s, p50/p99 round-trip latency, and the
ratio of clogfsd's requests/s to the floor's (target: at least 0.5).

Run: ``python -m bench.protocol [--seconds S]`` as root.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from clogfs.netlink.emulator import KernelEmulator, open_kernel_emulator
from clogfs.netlink.requests import RequestType
from clogfs.netlink.wire import Protocol

SEQUENCE = (
    (RequestType.IN_SYNC, True),
    (RequestType.IN_SYNC, True),
    (RequestType.MARK_REGION, False),
    (RequestType.FLUSH, False),
    (RequestType.CLEAR_REGION, False),
    (RequestType.FLUSH, False),
)

ECHO_SERVER = r"""
import socket, struct, sys
from clogfs.netlink.wire import (CN_IDX_DM, NETLINK_ADD_MEMBERSHIP, NETLINK_CONNECTOR, SOL_NETLINK,
    ConnectorMessage, classify, decode_request, encode_reply, split_datagram)
from clogfs.netlink.requests import REQUESTS, request_type_of
kernel_port = int(sys.argv[1])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((0, 0))
s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, CN_IDX_DM)
SIZES = {6: 8, 7: 8, 8: 8, 12: 16, 14: 8, 17: 16}
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    data, (port, _g) = s.recvfrom(65536)
    if port != kernel_port:
        continue
    for m in split_datagram(data):
        if not isinstance(m, ConnectorMessage):
            continue
        proto = classify(m.payload)
        header, _payload = decode_request(m.payload, proto)
        size = SIZES.get(header.request_type & 0xFF, 0)
        s.sendto(encode_reply(header, error=0, data=bytes(size)), (kernel_port, 0))
"""


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _drive(
    emu: KernelEmulator, n_logs: int, seconds: float, setup: bool
) -> tuple[float, list[float]]:
    """Run the per-write sequence on ``n_logs`` logs for ``seconds``; (req/s, latencies)."""
    latencies: list[float] = []
    uuids = [f"BENCH-{n_logs}-{i}-{os.getpid()}".encode() for i in range(n_logs)]
    luid_base = 0x1000 * n_logs
    if setup:
        for i, uuid in enumerate(uuids):
            ctr = f"{1 << 21} clustered-core 1024 nosync".encode()
            for rtype, data in ((RequestType.CTR, ctr), (RequestType.RESUME, b"")):
                reply = await emu.request(rtype, uuid, luid=luid_base + i, data=data)
                if reply.error:
                    raise RuntimeError(f"{rtype.name} failed: {reply.error}")
    count = 0
    deadline = trio.current_time() + seconds

    async def one_log(i: int, uuid: bytes) -> None:
        nonlocal count
        region = 0
        while trio.current_time() < deadline:
            region = (region + 1) % 2048
            reg = region.to_bytes(8, "little")
            for rtype, _ in SEQUENCE:
                data = b"" if rtype is RequestType.FLUSH else reg
                t0 = time.perf_counter()
                reply = await emu.request(rtype, uuid, luid=luid_base + i, data=data)
                latencies.append(time.perf_counter() - t0)
                if reply.error:
                    raise RuntimeError(f"{rtype.name} failed: {reply.error}")
                count += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i, uuid in enumerate(uuids):
            nursery.start_soon(one_log, i, uuid)
    elapsed = trio.current_time() - start
    if setup:
        for i, uuid in enumerate(uuids):
            for rtype in (RequestType.PRESUSPEND, RequestType.POSTSUSPEND, RequestType.DTR):
                await emu.request(rtype, uuid, luid=luid_base + i)
    return count / elapsed, latencies


async def _measure(kind: str, n_logs: int, seconds: float) -> tuple[float, float, float]:
    async with open_kernel_emulator(Protocol.ULOG) as emu:
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "echo":
                proc = subprocess.Popen(
                    [sys.executable, "-c", ECHO_SERVER, str(emu.port_id)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert proc.stdout is not None
                proc.stdout.readline()
            else:
                notify = Path(tmp) / "notify"
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(str(notify))
                env = dict(os.environ, NOTIFY_SOCKET=str(notify))
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "clogfs.cli",
                        "--kernel-port",
                        str(emu.port_id),
                        "--no-mount",
                        "--lock-file",
                        f"{tmp}/lock",
                        "--runtime-dir",
                        f"{tmp}/run",
                        "--log-level",
                        "WARNING",
                    ],
                    env=env,
                    text=True,
                )
                sock.settimeout(15)
                sock.recv(100)
                sock.close()
            try:
                rate, lat = await _drive(emu, n_logs, seconds, setup=(kind == "clogfsd"))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    return rate, _quantile(lat, 0.5) * 1e6, _quantile(lat, 0.99) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocol", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    args = parser.parse_args(argv)
    print(f"{'logs':>5} {'side':>8} {'req/s':>9} {'p50 us':>8} {'p99 us':>8}")
    worst = float("inf")
    for n in (1, 64):
        results = {}
        for kind in ("echo", "clogfsd"):
            rate, p50, p99 = trio.run(_measure, kind, n, args.seconds)
            results[kind] = rate
            print(f"{n:>5} {kind:>8} {rate:>9.0f} {p50:>8.0f} {p99:>8.0f}")
        ratio = results["clogfsd"] / results["echo"]
        worst = min(worst, ratio)
        print(f"{n:>5} {'ratio':>8} {ratio:>9.2f}   (target >= 0.5)")
    print(f"protocol: worst ratio {worst:.2f} -> {'PASS' if worst >= 0.5 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
