"""A CPG client process for rig tests: joins a group, reports, and waits to be killed.

Usage: ``python -m tests.cluster.client GROUP [--drain]``. It prints one JSON line
``{"node_id": N, "pid": P}`` once its own join is delivered, then blocks reading stdin;
it leaves the group and exits when stdin closes. A test kills it to provoke PROCDOWN. With
``--drain`` it receives (and drops) every later event meanwhile, as a receive-only member
(bench/cluster's floor); without, corosync keeps them queued for it.
"""

from __future__ import annotations

import json
import sys

import trio

from clogfs.cluster.cpg import ConfChange, CpgGroup, open_cpg_group


async def main(group_name: bytes, drain: bool) -> None:
    """Join ``group_name``, report the own join, then wait for stdin to close (receiving
    meanwhile with ``drain``)."""
    async with open_cpg_group(group_name) as group:
        async for event in group:
            if isinstance(event, ConfChange) and group.member in event.members:
                break
        print(json.dumps({"node_id": group.node_id, "pid": group.pid}), flush=True)
        async with trio.open_nursery() as nursery:
            if drain:
                nursery.start_soon(receive_all, group)
            await trio.to_thread.run_sync(sys.stdin.read)
            nursery.cancel_scope.cancel()


async def receive_all(group: CpgGroup) -> None:
    """Receive and drop every event of ``group``."""
    async for _ in group:
        pass


if __name__ == "__main__":
    trio.run(main, sys.argv[1].encode(), sys.argv[2:] == ["--drain"])
