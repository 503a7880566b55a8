"""A node cut off and healed, on three real corosync nodes (replica.py rule 10).

Node 3's link to the bridge goes down: it loses quorum, its FLUSH is held (its writes wait)
and it never writes the shared log image, while nodes 1 and 2 keep confirming. The link comes
back: node 3's state yields to the quorate side's, it rejoins, re-asserts its marks, and the
held FLUSH is confirmed. Every node then answers alike and the image shows every mark.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from clogfs.netlink.emulator import EmulatedMirror
from clogfs.netlink.requests import RequestType as T
from tests.cluster.rig import CorosyncRig
from tests.cluster.test_daemon_cluster import (
    DEADLINE,
    NODES,
    REGION_SECTORS,
    REGIONS,
    clean_map,
    create_with_node_1_first,
    depart_in_turn,
    meet,
    on_all_nodes,
    phases,
)
from tests.integration.harness import Daemon
from tests.integration.test_disk import BLOCK, decode_disk, make_image

pytestmark = [pytest.mark.corosync, pytest.mark.root, pytest.mark.slow]

_WRITES = re.compile(r'^clogfs_log_writes_total\{[^}]*result="ok"[^}]*\} (\d+)', re.MULTILINE)


def log_writes(daemon: Daemon, tmp: Path, node_id: int) -> int:
    """This node's log device writes so far, from its mounted view's metrics."""
    view = Path(f"/proc/{daemon.process.pid}/root") / tmp.relative_to("/") / f"n{node_id}"
    text = (view / "view" / "metrics").read_text()
    return sum(int(count) for count in _WRITES.findall(text))


def test_isolated_node_holds_flush_and_resumes_when_the_link_returns(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "shared-log.img")
    first, created, isolated, majority_done, healed, checked = phases(6)
    departed = phases(3)  # nodes 3, 2, then 1
    during: dict[str, object] = {}

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await create_with_node_1_first(node_id, mirror, first)
        await mirror.call(T.MARK_REGION, (node_id * 10,))  # before the cut: 10, 20, 30
        await mirror.call(T.FLUSH, ())
        await meet(created)
        if node_id == 3:
            during["writes before the cut"] = log_writes(daemon, tmp_path, 3)
            await trio.to_thread.run_sync(lambda: rig3.set_link(3, up=False))
            await daemon.wait_for_log("no longer quorate", timeout=DEADLINE)
        await meet(isolated)
        held = None
        if node_id == 3:
            await mirror.call(T.MARK_REGION, (31,))
            held = trio.Event()

            async def flush() -> None:
                await mirror.call(T.FLUSH, ())
                held.set()

            nursery_holder[node_id].start_soon(flush)
            with trio.move_on_after(3.0):
                await held.wait()
            during["answered while cut off"] = held.is_set()
            during["writes while cut off"] = log_writes(daemon, tmp_path, 3)
        else:
            await mirror.call(T.MARK_REGION, (node_id * 10 + 1,))  # 11, 21
            await mirror.call(T.FLUSH, ())
            if node_id == 1:
                await mirror.call(T.CLEAR_REGION, (10,))
                await mirror.call(T.FLUSH, ())
        await meet(majority_done)
        if node_id == 3:
            await trio.to_thread.run_sync(lambda: rig3.set_link(3, up=True))
            assert held is not None
            with trio.fail_after(DEADLINE):
                await held.wait()  # the held FLUSH is confirmed after the merge
            await daemon.wait_for_log("yields", timeout=DEADLINE)
        await meet(healed)
        await mirror.call(T.FLUSH, ())  # an ordered request after the merge on every node
        seen = await clean_map(mirror)
        dirty = decode_disk(image.read_bytes()[:BLOCK], REGIONS).dirty_regions(REGIONS)
        writes = log_writes(daemon, tmp_path, node_id)
        await meet(checked)
        await depart_in_turn(node_id, mirror, (3, 2, 1), departed)
        return seen, dirty, writes

    nursery_holder: dict[int, trio.Nursery] = {}

    async def node_body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        async with trio.open_nursery() as nursery:
            nursery_holder[node_id] = nursery
            return await body(node_id, mirror, daemon)

    ctr = f"clustered-disk {image} {REGION_SECTORS} nosync"
    try:
        results = on_all_nodes(rig3, tmp_path, b"CLUSTER-HEAL-1", ctr, node_body, mount=True)
    finally:
        rig3.set_link(3, up=True)
        rig3.wait_formed()
        rig3.wait_quorate(3, True)
    assert during["answered while cut off"] is False
    # node 3 lost its leader too, but without quorum it never took over the shared image
    assert during["writes while cut off"] == during["writes before the cut"]
    maps = {n: seen for n, (seen, _dirty, _writes) in results.items()}
    assert results[1][2] > 0  # the leader's writes are counted (the metric is read right)
    assert maps[1] == maps[2] == maps[3]
    expected_marked = {11, 20, 21, 30, 31}  # 10 was cleared by node 1 during the cut
    assert all(not maps[1][r] for r in expected_marked)
    for _n, (_seen, dirty, _writes) in results.items():
        assert expected_marked <= dirty


def test_every_node_cut_off_then_healed_merges_on_one_copy(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """All three links down: no node is quorate and every FLUSH is held. The links come back:
    no side kept the state, so the lowest node's copy is taken, the others re-assert their
    marks on it, and every held FLUSH is confirmed; all nodes then answer alike."""
    created, cut, flushing, healed, checked = phases(5)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await mirror.create()
        await meet(created)
        await trio.to_thread.run_sync(lambda: rig3.set_link(node_id, up=False))
        await daemon.wait_for_log("no longer quorate", timeout=DEADLINE)
        await meet(cut)
        await mirror.call(T.MARK_REGION, (40 + node_id,))
        answered = trio.Event()

        async def flush() -> None:
            await mirror.call(T.FLUSH, ())
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            with trio.move_on_after(2.0):
                await answered.wait()
            held = not answered.is_set()
            await meet(flushing)
            await trio.to_thread.run_sync(lambda: rig3.set_link(node_id, up=True))
            with trio.fail_after(DEADLINE):
                await answered.wait()
        await meet(healed)
        await mirror.call(T.FLUSH, ())
        seen = await clean_map(mirror)
        await meet(checked)
        await mirror.suspend()
        await mirror.remove()
        return held, seen

    ctr = f"clustered-core {REGION_SECTORS} nosync"
    try:
        results = on_all_nodes(rig3, tmp_path, b"CLUSTER-HEAL-2", ctr, body)
    finally:
        for node_id in NODES:
            rig3.set_link(node_id, up=True)
        rig3.wait_formed()
        rig3.wait_quorate(3, True)
    assert all(held for held, _seen in results.values())
    maps = [seen for _held, seen in results.values()]
    assert maps[0] == maps[1] == maps[2]
    assert [r for r in range(REGIONS) if not maps[0][r]] == [41, 42, 43]
