"""clogfsd --cluster corosync when corosync dies under a resumed log (one-node rig).

A module of its own: the rig helpers name namespaces by process id, so a one-node rig cannot
exist while the three-node rig of ``test_daemon_cluster`` does.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from clogfs.netlink.emulator import EmulatedMirror, EmulatorError
from clogfs.netlink.requests import RequestType as T
from tests.cluster.rig import CorosyncRig
from tests.cluster.test_daemon_cluster import DEADLINE, REGION_SECTORS, on_all_nodes
from tests.integration.harness import Daemon

pytestmark = [pytest.mark.corosync, pytest.mark.root, pytest.mark.slow]


def test_corosync_gone_fails_waiting_requests_and_keeps_local_answers(
    rig1: CorosyncRig, tmp_path: Path
) -> None:
    """corosync dies under a resumed log: clogfsd logs it and keeps running; reads are
    answered from the local copy, a state change fails with EIO instead of hanging, and
    suspend and remove still succeed (applied locally)."""

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> dict[str, object]:
        await mirror.create()
        await mirror.call(T.MARK_REGION, (5,))
        await mirror.call(T.FLUSH, ())
        await trio.to_thread.run_sync(rig1.kill_corosync, 1)
        await daemon.wait_for_log("corosync went away", timeout=DEADLINE)
        outcome: dict[str, object] = {
            "in_sync": await mirror.call(T.IN_SYNC, 7),
            "is_clean_5": await mirror.call(T.IS_CLEAN, 5),
        }
        try:
            await mirror.call(T.MARK_REGION, (6,))
        except EmulatorError as exc:
            outcome["mark"] = exc.errno
        await mirror.suspend()
        await mirror.remove()
        outcome["alive"] = daemon.process.poll() is None
        outcome["bug logged"] = "bug in" in daemon.stderr()
        return outcome

    try:
        results = on_all_nodes(rig1, tmp_path, b"CLUSTER-GONE-1", f"clustered-core "
                               f"{REGION_SECTORS} nosync", body)  # fmt: skip
    finally:
        rig1.start_corosync(1)
        rig1.wait_formed()
    assert results[1] == {"in_sync": True, "is_clean_5": False, "mark": errno.EIO,
                          "alive": True, "bug logged": False}  # fmt: skip
