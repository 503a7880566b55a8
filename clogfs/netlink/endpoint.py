"""The connector endpoint: the daemon's one netlink socket, on trio.

Owns the socket's life (create, bind, join connector group ``CN_IDX_DM``), the sender checks
of ``protocol.md`` §2.4 check 1 (only the kernel, netlink port 0, or the emulator's
``--kernel-port``), batched receive, and sending replies. It knows nothing of logs: every
accepted connector message goes to a ``handle`` callback, synchronously, in arrival order.

Resource handling: ``open_connector_socket`` closes the socket on exit, whatever happens.
Error handling: ``ENOBUFS`` on receive (the socket overflowed; the kernel resends after 15 s)
is logged and survived; any other socket error ends ``serve_endpoint`` with the exception,
which the daemon treats as fatal (systemd restarts the unit).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from clogfs.netlink.wire import (
    CN_IDX_DM,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CONNECTOR,
    SOL_NETLINK,
    ConnectorMessage,
    Rejected,
    split_datagram,
)

log = logging.getLogger(__name__)

#: netlink port id of the kernel
KERNEL_PORT = 0
#: receive buffer we ask for (SO_RCVBUFFORCE as root, else SO_RCVBUF), protocol.md §2.1
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
#: one read; larger than CONNECTOR_MAX_MSG_SIZE + headers
DATAGRAM_BYTES = 65536
#: datagrams drained per wake-up before yielding to other tasks
BATCH = 64
#: Linux SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module lacks it
SO_RCVBUFFORCE = 33
#: /proc/net/netlink lists a socket's joined groups as a hex mask: group 7 is bit 6
GROUP_CN_IDX_DM_MASK = 1 << (CN_IDX_DM - 1)


@dataclass
class EndpointCounters:
    """What the endpoint saw that never reached a log (for the metrics and SIGUSR1 dump)."""

    datagrams: int = 0
    foreign_sender: int = 0
    rejected: int = 0
    overflows: int = 0
    send_errors: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class ConnectorSocket:
    """A bound, subscribed ``NETLINK_CONNECTOR`` socket (non-blocking stdlib socket).

    Args:
        sock: the socket, already bound and joined.
        kernel_port: the only netlink port id requests are accepted from; replies go there.
    """

    def __init__(self, sock: socket.socket, kernel_port: int) -> None:
        self.sock = sock
        self.kernel_port = kernel_port
        self.port_id: int = sock.getsockname()[0]
        self.counters = EndpointCounters()

    def send(self, datagram: bytes) -> None:
        """Send one reply datagram to the kernel (or the emulator); never blocks.

        Error handling: a send error is counted and logged; the kernel resends the request
        after its 15 s timeout, so a lost reply is recoverable.
        """
        try:
            self.sock.sendto(datagram, (self.kernel_port, 0))
        except OSError as exc:
            self.counters.send_errors += 1
            log.warning("cannot send reply to netlink port %d: %s", self.kernel_port, exc)


def other_group_listeners(own_port: int, proc_path: str = "/proc/net/netlink") -> list[int]:
    """Port ids of other ``NETLINK_CONNECTOR`` sockets joined to group ``CN_IDX_DM``.

    ``protocol.md`` §2.1: two listeners would both answer the kernel and diverge.
    """
    found: list[int] = []
    try:
        with open(proc_path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        cols = line.split()
        if len(cols) < 4:
            continue
        try:
            proto, port, groups = int(cols[1]), int(cols[2]), int(cols[3], 16)
        except ValueError:
            continue
        if proto == NETLINK_CONNECTOR and groups & GROUP_CN_IDX_DM_MASK and port != own_port:
            found.append(port)
    return found


@asynccontextmanager
async def open_connector_socket(kernel_port: int = KERNEL_PORT) -> AsyncIterator[ConnectorSocket]:
    """Create, bind (port chosen by the kernel, no groups) and join group ``CN_IDX_DM``.

    Do not bind with ``nl_groups = CN_IDX_DM`` as cmirrord does: that is a bit mask and
    subscribes to groups 1-3 (protocol.md §2.1). Only the setsockopt joins group 7.

    Raises:
        OSError: socket, bind or membership failed (not root, no connector).
    """
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, CN_IDX_DM)
        sock.setblocking(False)
        yield ConnectorSocket(sock, kernel_port)
    finally:
        sock.close()


async def serve_endpoint(
    conn: ConnectorSocket,
    handle: Callable[[ConnectorMessage, float], None],
    reject: Callable[[Rejected], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive forever; pass each accepted connector message to ``handle(msg, arrived)``.

    Datagrams are drained in batches of up to ``BATCH`` per wake-up. Messages from any port
    other than ``conn.kernel_port`` are dropped silently and counted (answering them could
    complete a real kernel request that happens to have the same seq). ``reject`` receives
    what ``split_datagram`` refused (the service sends bare acks for those it can).

    Error handling: ``ENOBUFS`` is logged and survived; other errors propagate (fatal).
    """
    sock = conn.sock
    counters = conn.counters
    clock = trio.current_time
    task_status.started()
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(BATCH):
            try:
                data, (port, _groups) = sock.recvfrom(DATAGRAM_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    counters.overflows += 1
                    log.warning(
                        "netlink socket overflowed: requests were lost; the kernel "
                        "resends them after 15 s"
                    )
                    continue
                raise
            counters.datagrams += 1
            if port != conn.kernel_port:
                counters.foreign_sender += 1
                if counters.foreign_sender % 1000 == 1:
                    log.debug(
                        "dropped datagram from netlink port %d (expecting %d)",
                        port,
                        conn.kernel_port,
                    )
                continue
            arrived = clock()
            for item in split_datagram(data):
                if isinstance(item, Rejected):
                    counters.rejected += 1
                    counters.by_reason[item.reason] = counters.by_reason.get(item.reason, 0) + 1
                    reject(item)
                else:
                    handle(item, arrived)
        await trio.lowlevel.checkpoint()
