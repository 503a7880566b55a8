"""The relay of ``bench.cluster``: the least a daemon of clogfsd's shape does per ordered request.

Usage: ``python -m bench._relay KERNEL_PORT GROUP`` in a node's network namespace. It opens a
connector socket (joined to no group) that accepts requests from netlink port ``KERNEL_PORT``
only (the emulator's), joins the CPG group ``GROUP`` and prints its own netlink port id on one
line. Then, for every
request datagram, it decodes the request header, multicasts one fixed 40-byte message with
AGREED order and, when that message comes back in its own delivery, sends the reply (error 0,
no data), in arrival order. It keeps no log state and looks at no payload: what it costs is the
netlink hop to a Python trio process and back plus one CPG round trip, the part of every
state-changing request that no work on the log itself can remove. It leaves the group and
exits when its standard input closes.

Built from the same pieces as clogfsd (``clogfs.netlink.endpoint``, ``clogfs.cluster.cpg``,
``clogfs.netlink.wire``), with trio, one task per socket as clogfsd has. Benchmark tooling; not
a core module.
"""

from __future__ import annotations

import socket
import sys
from collections import deque

import trio

from clogfs.cluster.cpg import CpgGroup, Deliver, open_cpg_group
from clogfs.netlink.endpoint import ConnectorSocket
from clogfs.netlink.wire import (
    NETLINK_CONNECTOR,
    ConnectorMessage,
    RequestHeader,
    classify,
    decode_request,
    encode_reply,
    split_datagram,
)

#: what the relay multicasts per request (about a MARK_REGION's cluster message)
MESSAGE = bytes(40)
DATAGRAM_BYTES = 65536


async def answer_deliveries(
    group: CpgGroup, conn: ConnectorSocket, waiting: deque[RequestHeader]
) -> None:
    """Reply to the oldest waiting request at each own delivery."""
    async for event in group:
        if isinstance(event, Deliver) and (event.node_id, event.pid) == (group.node_id, group.pid):
            header = waiting.popleft()
            conn.send(encode_reply(header, error=0, nlmsg_pid=conn.port_id))


async def relay_requests(
    group: CpgGroup, conn: ConnectorSocket, waiting: deque[RequestHeader]
) -> None:
    """Receive request datagrams; multicast one message for each."""
    sock = conn.sock
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data, (port, _groups) = sock.recvfrom(DATAGRAM_BYTES)
            except BlockingIOError:
                break
            if port != conn.kernel_port:
                continue
            for item in split_datagram(data):
                if not isinstance(item, ConnectorMessage):
                    continue
                protocol = classify(item.payload)
                if protocol is None:
                    continue
                header, _payload = decode_request(item.payload, protocol)
                waiting.append(header)
                if not group.try_send(MESSAGE):
                    await group.send(MESSAGE)
        await trio.lowlevel.checkpoint()


async def main(kernel_port: int, group_name: bytes) -> None:
    """Relay until standard input closes."""
    # a unicast-only connector socket: joining group CN_IDX_DM would make it a second
    # listener beside the node's clogfsd (requests reach it by port id)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as sock:
        sock.bind((0, 0))
        sock.setblocking(False)
        await relay(ConnectorSocket(sock, kernel_port), group_name)


async def relay(conn: ConnectorSocket, group_name: bytes) -> None:
    """Join ``group_name``, report the port id, relay until standard input closes."""
    async with open_cpg_group(group_name) as group:
        print(conn.port_id, flush=True)
        waiting: deque[RequestHeader] = deque()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_deliveries, group, conn, waiting)
            nursery.start_soon(relay_requests, group, conn, waiting)
            await trio.to_thread.run_sync(sys.stdin.read)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2].encode())
