"""The ordered-group interface: every state change of a log passes through one.

A log's state-changing requests are *multicast* to the log's group and *delivered* to every
member in one total order; each member applies each delivery to its replica. Only the
originating member answers its kernel. In single-node mode the group is a "group of one"
(``LocalGroup``): a multicast is delivered at once, in-process, before ``multicast``
returns. The corosync backend (``clogfs.cluster.cpg``, issue #7) implements the same
interface; the service never asks which one it has.

Core module: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from clogfs.log.instance import LogRequest
from clogfs.registry import LogKey


@dataclass(frozen=True)
class Delivery:
    """One request delivered by the group, in total order.

    ``ticket`` is the originating node's handle for answering its kernel; it is ``None`` on
    every other member.
    """

    key: LogKey
    originator: int
    request: LogRequest
    ticket: object | None


class OrderedGroup(Protocol):
    """What the service needs from a group backend."""

    node_id: int

    def multicast(self, key: LogKey, request: LogRequest, ticket: object) -> None:
        """Deliver ``request`` to every member of ``key``'s group (this node included)."""

    def members(self, key: LogKey) -> tuple[int, ...]:
        """Node ids of ``key``'s group, leader first."""


class LocalGroup:
    """The group of one: delivers each multicast at once, synchronously, in call order."""

    cluster_state = "single"

    def __init__(self, deliver: Callable[[Delivery], None], *, node_id: int = 1) -> None:
        self.node_id = node_id
        self._deliver = deliver

    def multicast(self, key: LogKey, request: LogRequest, ticket: object) -> None:
        """Deliver at once; ``request.originator`` must be this node."""
        self._deliver(Delivery(key, self.node_id, request, ticket))

    def members(self, key: LogKey) -> tuple[int, ...]:
        """Just this node."""
        return (self.node_id,)
