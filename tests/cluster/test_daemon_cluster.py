"""clogfsd --cluster corosync on three real corosync nodes, each driven by its kernel emulator.

Every node runs, inside its own network namespace, one clogfsd (``--cluster corosync``) and one
kernel emulator that talks to it over netlink in that namespace. The three emulators drive one
shared log (same uuid) the way three hosts' kernels would; threads of the test meet at
barriers between phases. A read-only answer on one node reflects another node's request once
an ordered request of its own has been answered after it (total order), so every check is
preceded by such a request.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from clogfs.daemon import ExitCode
from clogfs.netlink.emulator import (
    AUTO_PORT_ID,
    RECEIVE_BUFFER_BYTES,
    EmulatedMirror,
    KernelEmulator,
)
from clogfs.netlink.requests import CtrPayload
from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import NETLINK_CONNECTOR, Protocol
from tests.cluster.rig import REPO_ROOT, CorosyncRig
from tests.integration.harness import CLOGFSD, Daemon
from tests.integration.test_disk import BLOCK, KERNEL_MAGIC, decode_disk, make_image

pytestmark = [pytest.mark.corosync, pytest.mark.root, pytest.mark.slow]

DEADLINE = 60.0
REGION_SECTORS = 1024
REGIONS = 64
TARGET = REGIONS * REGION_SECTORS
NODES = (1, 2, 3)

NodeBody = Callable[[int, EmulatedMirror, Daemon], Awaitable[Any]]


def phases(count: int) -> list[threading.Barrier]:
    """``count`` barriers for every node's thread, one per phase of a scenario."""
    return [threading.Barrier(len(NODES)) for _ in range(count)]


async def meet(barrier: threading.Barrier) -> None:
    """Wait (in a worker thread) until every node's thread reached ``barrier``."""
    await trio.to_thread.run_sync(barrier.wait, DEADLINE)


async def depart_in_turn(
    node_id: int,
    mirror: EmulatedMirror,
    order: Sequence[int],
    barriers: Sequence[threading.Barrier],
) -> None:
    """The nodes of ``order`` suspend and remove the log one at a time, in that order; each
    turn ends at its barrier, which every node's thread meets."""
    for departing, barrier in zip(order, barriers, strict=True):
        if node_id == departing:
            await mirror.suspend()
            await mirror.remove()
        await meet(barrier)


@asynccontextmanager
async def run_clogfsd_in(
    netns: str, tmp: Path, kernel_port: int, mount: Path | None = None
) -> AsyncIterator[Daemon]:
    """``run_clogfsd``'s contract, but started under ``ip netns exec netns``.

    trio starts processes from its worker threads, which are shared by every ``trio.run`` of
    the test process and so may sit in another node's namespace: the namespace is named
    explicitly instead of inherited. ``ip netns exec`` also gives the daemon a mount namespace
    of its own: a view mounted at ``mount`` is seen through ``/proc/<pid>/root`` and goes away
    with the daemon.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    notify_path = tmp / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    stderr_path = tmp / "clogfsd.stderr"
    argv = ["ip", "netns", "exec", netns, *CLOGFSD, "--kernel-port", str(kernel_port),
            "--lock-file", str(tmp / "clogfsd.lock"), "--runtime-dir", str(tmp / "run"),
            "--cluster", "corosync", "--log-level", "DEBUG"]  # fmt: skip
    argv += ["--mount", str(mount)] if mount is not None else ["--no-mount"]
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO_ROOT))  # fmt: skip
    with open(stderr_path, "wb") as err:
        process = await trio.lowlevel.open_process(
            argv, stdin=None, stdout=err, stderr=err, env=env, cwd=REPO_ROOT
        )
    daemon = Daemon(process, stderr_path, notify)
    try:
        await daemon.wait_ready(DEADLINE)
        yield daemon
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()
        notify.close()


async def run_node(
    rig: CorosyncRig,
    node_id: int,
    tmp: Path,
    uuid: bytes,
    ctr_args: str,
    body: NodeBody,
    mount: bool = False,
) -> Any:
    """One node: an emulator and a clustered clogfsd in its namespace, then ``body``.

    With ``mount`` the daemon mounts its view at ``tmp/n<node_id>/view``.

    The emulator unicasts to the daemon's port: outside the initial network namespace no
    kernel connector socket exists, so a multicast to group 7 (which also goes to port 0)
    is refused.
    """
    with trio.fail_after(DEADLINE * 2):
        sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            await sock.bind((AUTO_PORT_ID, 0))
            port_id = sock.getsockname()[0]
            netns = rig.nodes[node_id].netns
            root = tmp / f"n{node_id}"
            view = root / "view" if mount else None
            async with run_clogfsd_in(netns, root, port_id, view) as daemon:
                found = re.search(r"netlink port (\d+),", daemon.stderr())
                assert found is not None, daemon.stderr()
                emu = KernelEmulator(sock, Protocol.ULOG, daemon_port=int(found[1]),
                                     timeout=DEADLINE)  # fmt: skip
                async with trio.open_nursery() as nursery:
                    await nursery.start(emu.serve_replies)
                    mirror = EmulatedMirror(emu, uuid, 1, ctr_args, TARGET)
                    try:
                        result = await body(node_id, mirror, daemon)
                    except BaseException:
                        print(f"--- clogfsd node {node_id} ---\n{daemon.stderr()}")
                        raise
                    nursery.cancel_scope.cancel()
                    return result


def on_all_nodes(rig: CorosyncRig, tmp: Path, uuid: bytes, ctr_args: str, body: NodeBody,
                 *, mount: bool = False) -> dict[int, Any]:  # fmt: skip
    """Run ``body`` on every node of the rig at once; returns ``{node_id: result}``."""
    return rig.run_trio_in_nodes(
        {n: (run_node, (rig, n, tmp, uuid, ctr_args, body, mount)) for n in rig.nodes}
    )


async def create_with_node_1_first(
    node_id: int, mirror: EmulatedMirror, first: threading.Barrier
) -> None:
    """Node 1 creates the log (so it loads it and leads) before the others create theirs."""
    if node_id == 1:
        await mirror.create()
    await meet(first)
    if node_id != 1:
        await mirror.create()


async def clean_map(mirror: EmulatedMirror) -> list[bool]:
    """IS_CLEAN of every region, from this node's replica."""
    return [bool(await mirror.call(T.IS_CLEAN, r)) for r in range(REGIONS)]


def own_regions(node_id: int) -> list[int]:
    """Five regions per node, disjoint."""
    return [node_id * 10 + i for i in range(5)]


def test_state_is_identical_on_all_nodes(rig3: CorosyncRig, tmp_path: Path) -> None:
    """MARK/FLUSH/CLEAR from all three nodes: every node answers IS_CLEAN and
    GET_SYNC_COUNT alike, and every node's marks are seen on the others."""
    created, written, checked = phases(3)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await mirror.create()
        await meet(created)
        regions = own_regions(node_id)
        await mirror.call(T.MARK_REGION, tuple(regions))
        await mirror.call(T.FLUSH, ())
        await mirror.call(T.CLEAR_REGION, tuple(regions[:2]))
        await mirror.call(T.FLUSH, ())
        await meet(written)
        await mirror.call(T.FLUSH, ())  # ordered after every node's writes
        state = (await clean_map(mirror), await mirror.call(T.GET_SYNC_COUNT))
        await meet(checked)
        await mirror.suspend()
        await mirror.remove()
        return state

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-SAME-1", f"clustered-core {REGION_SECTORS} "
                           "nosync", body)  # fmt: skip
    assert results[1] == results[2] == results[3]
    clean, sync_count = results[1]
    dirty = {r for r in range(REGIONS) if not clean[r]}
    assert dirty == {r for n in NODES for r in own_regions(n)[2:]}
    assert sync_count == REGIONS


def test_region_marked_by_two_nodes_stays_dirty_until_both_clear(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """Nodes 1 and 2 mark region 7: it is dirty everywhere until the second CLEAR."""
    created, marked, first_cleared, seen_first, both_cleared, seen_both = phases(6)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> list[bool]:
        await mirror.create()
        await meet(created)
        if node_id in (1, 2):
            await mirror.call(T.MARK_REGION, (7,))
        await mirror.call(T.FLUSH, ())
        await meet(marked)
        if node_id == 1:
            await mirror.call(T.CLEAR_REGION, (7,))
        await mirror.call(T.FLUSH, ())
        await meet(first_cleared)
        await mirror.call(T.FLUSH, ())
        after_first = bool(await mirror.call(T.IS_CLEAN, 7))
        await meet(seen_first)
        if node_id == 2:
            await mirror.call(T.CLEAR_REGION, (7,))
        await mirror.call(T.FLUSH, ())
        await meet(both_cleared)
        await mirror.call(T.FLUSH, ())
        after_both = bool(await mirror.call(T.IS_CLEAN, 7))
        await meet(seen_both)
        await mirror.suspend()
        await mirror.remove()
        return [after_first, after_both]

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-TWO-MARKS", f"clustered-core "
                           f"{REGION_SECTORS} nosync", body)  # fmt: skip
    assert results == {n: [False, True] for n in NODES}


def test_late_joiner_gets_the_state(rig3: CorosyncRig, tmp_path: Path) -> None:
    """Node 3 resumes after nodes 1 and 2 marked regions: it sees their marks at once."""
    early = threading.Barrier(2)
    joined, done = phases(2)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> list[bool]:
        if node_id != 3:
            await mirror.create()
            await mirror.call(T.MARK_REGION, tuple(own_regions(node_id)))
            await mirror.call(T.FLUSH, ())
            await meet(early)
        await meet(joined)  # node 3 creates (CTR + RESUME) only now
        if node_id == 3:
            await mirror.create()
            await mirror.call(T.FLUSH, ())
        clean = await clean_map(mirror)
        await meet(done)
        await mirror.suspend()
        await mirror.remove()
        return clean

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-LATE-1", f"clustered-core "
                           f"{REGION_SECTORS} nosync", body)  # fmt: skip
    expected = [r not in set(own_regions(1) + own_regions(2)) for r in range(REGIONS)]
    assert results[3] == expected
    assert results[1] == results[2] == expected


def test_killed_member_leaves_its_marked_regions_out_of_sync(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """Node 3's clogfsd is SIGKILLed while it has regions marked (a write in flight): on
    nodes 1 and 2 those regions answer IN_SYNC 0; the others stay in sync."""
    created, marked, killed = phases(3)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> list[bool] | None:
        await mirror.create()
        await meet(created)
        if node_id == 3:
            await mirror.call(T.MARK_REGION, (30, 31))
            await mirror.call(T.FLUSH, ())
        await meet(marked)
        if node_id == 3:
            daemon.process.kill()
            await daemon.wait(DEADLINE)
            await meet(killed)
            return None
        await meet(killed)
        in_sync = [bool(await mirror.call(T.IN_SYNC, r)) for r in range(REGIONS)]
        with trio.fail_after(DEADLINE):
            while in_sync[30] or in_sync[31]:  # the departure arrives within ms (PROCDOWN)
                await mirror.call(T.FLUSH, ())
                in_sync = [bool(await mirror.call(T.IN_SYNC, r)) for r in range(REGIONS)]
        await mirror.suspend()
        await mirror.remove()
        return in_sync

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-KILL-1", f"clustered-core "
                           f"{REGION_SECTORS} nosync", body)  # fmt: skip
    expected = [r not in (30, 31) for r in range(REGIONS)]
    assert results[1] == results[2] == expected


def test_disk_log_on_shared_image_holds_every_nodes_marks(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """A clustered-disk log on one image file shared by the three nodes: after every node's
    MARK + FLUSH the image shows each node's regions dirty; after the CLEARs + FLUSHes, none."""
    image = make_image(tmp_path / "shared-log.img")
    created, flushed, looked, cleared, looked_again = phases(5)
    # one node suspends at a time, so each departure is seen on its own; all members
    # suspending at once: test_all_members_suspend_at_once_and_the_last_write_keeps_the_marks
    departed = phases(len(NODES))

    def dirty_on_disk() -> set[int]:
        return decode_disk(image.read_bytes()[:BLOCK], REGIONS).dirty_regions(REGIONS)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await mirror.create()
        await meet(created)
        await mirror.call(T.MARK_REGION, (node_id * 10,))
        await mirror.call(T.FLUSH, ())
        await meet(flushed)
        marked = dirty_on_disk()
        await meet(looked)
        await mirror.call(T.CLEAR_REGION, (node_id * 10,))
        await mirror.call(T.FLUSH, ())
        await meet(cleared)
        await mirror.call(T.FLUSH, ())
        unmarked = dirty_on_disk()
        await meet(looked_again)
        await depart_in_turn(node_id, mirror, (3, 2, 1), departed)  # the leader last
        return marked, unmarked

    ctr = f"clustered-disk {image} {REGION_SECTORS} nosync"
    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-DISK-1", ctr, body)
    assert results == {n: ({10, 20, 30}, set()) for n in NODES}
    header = decode_disk(image.read_bytes()[:BLOCK], REGIONS)
    assert (header.magic, header.nr_regions) == (KERNEL_MAGIC, REGIONS)


@pytest.mark.fuse
def test_view_shows_the_leader_and_the_members(rig3: CorosyncRig, tmp_path: Path) -> None:
    """Each node's view: ``node`` says ``<id> leader`` on exactly one node and ``<id> member``
    on the others; the log's ``members`` file lists the same nodes, leader first, everywhere."""
    created, synced, looked = phases(3)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> tuple[str, str]:
        await mirror.create()
        await meet(created)
        await mirror.call(T.FLUSH, ())  # after every node's join
        await meet(synced)
        await mirror.call(T.FLUSH, ())
        view = Path(f"/proc/{daemon.process.pid}/root") / tmp_path.relative_to("/") / f"n{node_id}"
        view = view / "view"
        node = (view / "node").read_text()
        members = (view / "CLUSTER-VIEW-1" / "members").read_text()
        await meet(looked)
        await mirror.suspend()
        await mirror.remove()
        daemon.signal(signal.SIGTERM)  # no live log: exits and unmounts
        assert await daemon.wait(DEADLINE) == 0
        return node, members

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-VIEW-1", f"clustered-core "
                           f"{REGION_SECTORS} nosync", body, mount=True)  # fmt: skip
    states = {n: node.split() for n, (node, _members) in results.items()}
    assert all(words[0] == str(n) for n, words in states.items())
    leaders = [n for n, words in states.items() if words[1] == "leader"]
    assert len(leaders) == 1
    assert all(words[1] == "member" for n, words in states.items() if n not in leaders)
    members = {m for _node, m in results.values()}
    assert len(members) == 1
    listed = [int(line) for line in members.pop().split()]
    assert listed[0] == leaders[0]
    assert sorted(listed) == list(NODES)


def test_partition_without_quorum_holds_flush(rig3: CorosyncRig, tmp_path: Path) -> None:
    """Node 3 is cut off: it loses quorum and its FLUSH is not answered (writes wait), while
    the quorate majority (nodes 1, 2) keeps confirming FLUSH."""
    held_for = 3.0  # seconds the isolated node's FLUSH must stay unanswered
    created, isolated, checked = phases(3)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> bool:
        await mirror.create()
        await meet(created)
        if node_id == 3:
            await trio.to_thread.run_sync(lambda: rig3.set_link(3, up=False))
            await daemon.wait_for_log("no longer quorate", timeout=DEADLINE)
        await meet(isolated)
        await mirror.call(T.MARK_REGION, (40 + node_id,))
        answered = False
        with trio.move_on_after(held_for if node_id == 3 else DEADLINE):
            await mirror.call(T.FLUSH, ())
            answered = True
        await meet(checked)
        if node_id == 3:  # the heal is test_daemon_partition's: here it just goes
            daemon.process.kill()
            await daemon.wait(DEADLINE)
            return answered
        await mirror.call(T.CLEAR_REGION, (40 + node_id,))
        await mirror.suspend()
        await mirror.remove()
        return answered

    try:
        results = on_all_nodes(rig3, tmp_path, b"CLUSTER-QUORUM-1", f"clustered-core "
                               f"{REGION_SECTORS} nosync", body)  # fmt: skip
    finally:
        rig3.set_link(3, up=True)
        rig3.wait_formed()
        rig3.wait_quorate(3, True)
    assert results == {1: True, 2: True, 3: False}


def test_table_reload_rejoins_with_the_group_state(rig3: CorosyncRig, tmp_path: Path) -> None:
    """Node 2 reloads its table (CTR of a new instance, suspend of the old, RESUME of the new,
    DTR of the old): the new instance joins the group again and sees node 1's mark."""
    created, marked, reloaded = phases(3)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> list[bool]:
        await mirror.create()
        await meet(created)
        if node_id == 1:
            await mirror.call(T.MARK_REGION, (50,))
            await mirror.call(T.FLUSH, ())
        await meet(marked)
        live = mirror
        if node_id == 2:
            new = EmulatedMirror(mirror.emu, mirror.uuid, 2, "", TARGET)
            new.ctr_string = mirror.ctr_string
            await new.call(T.CTR, CtrPayload(new.ctr_string, reconnect=False))
            await mirror.suspend()
            await new.resume()
            await mirror.call(T.DTR)
            live = new
        await live.call(T.FLUSH, ())
        seen = [bool(await live.call(T.IS_CLEAN, r)) for r in (49, 50)]
        await meet(reloaded)
        await live.suspend()
        await live.remove()
        return seen

    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-RELOAD-1", f"clustered-core "
                           f"{REGION_SECTORS} nosync", body)  # fmt: skip
    assert results == {n: [True, False] for n in NODES}


def test_leader_killed_new_leader_confirms_flush_and_keeps_crash_marks_on_disk(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """Disk log, node 1 the leader (first member): after its clogfsd is SIGKILLed with region
    11 marked, node 2's MARK + FLUSH is confirmed (by the new leader's writes), and the image
    shows both 11 (a torn write may lie there) and 22 dirty; 11 answers IN_SYNC 0."""
    image = make_image(tmp_path / "shared-log.img")
    first, created, marked, killed, flushed, looked = phases(6)
    departed = phases(2)  # nodes 3, then 2

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await create_with_node_1_first(node_id, mirror, first)
        await meet(created)
        if node_id == 1:
            await mirror.call(T.MARK_REGION, (11,))
            await mirror.call(T.FLUSH, ())
        await meet(marked)
        if node_id == 1:
            daemon.process.kill()
            await daemon.wait(DEADLINE)
        await meet(killed)
        if node_id == 2:
            await mirror.call(T.MARK_REGION, (22,))
            await mirror.call(T.FLUSH, ())
        await meet(flushed)
        dirty = None
        if node_id != 1:
            with trio.fail_after(DEADLINE):
                while await mirror.call(T.IN_SYNC, 11):  # the crash arrives in ms (PROCDOWN)
                    await mirror.call(T.FLUSH, ())
            dirty = decode_disk(image.read_bytes()[:BLOCK], REGIONS).dirty_regions(REGIONS)
        await meet(looked)
        await depart_in_turn(node_id, mirror, (3, 2), departed)  # the leader last
        return dirty

    ctr = f"clustered-disk {image} {REGION_SECTORS} nosync"
    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-LEADER-1", ctr, body)
    assert results[2] == results[3] == {11, 22}


class ImageWatch:
    """A thread that reads the shared image every few ms while the nodes run.

    ``require`` adds regions the log has confirmed dirty (a FLUSH answered after their MARK)
    and that no node clears afterwards: every read that starts after that must show them
    dirty. The set is copied before each read starts, so a read racing with the answer never
    counts against the daemons; a read torn by a concurrent write still shows them dirty,
    since every write after the answer has them dirty.
    """

    def __init__(self, image: Path) -> None:
        self.image = image
        self.reads = 0
        self.violations: list[tuple[int, set[int], set[int]]] = []
        self._required: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-watch", daemon=True)

    def require(self, regions: set[int]) -> None:
        with self._lock:
            self._required |= regions

    def dirty(self) -> set[int]:
        with self.image.open("rb") as f:
            return decode_disk(f.read(BLOCK), REGIONS).dirty_regions(REGIONS)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                required = set(self._required)
            dirty = self.dirty()
            self.reads += 1
            if not required <= dirty:
                self.violations.append((self.reads, required, dirty))
            self._stop.wait(0.005)

    def __enter__(self) -> ImageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_leader_frozen_mid_flush_new_leader_confirms_it_after_its_full_write(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """Disk log, node 1 the leader (first member) with 11 and 12 marked, node 3 with 33
    marked, all confirmed. Node 1's clogfsd is stopped (SIGSTOP): it stays a member but can
    neither write nor announce DURABLE. Node 2's MARK(22) + FLUSH and node 3's MARK(32) +
    FLUSH are then in flight: for 1.5 s neither FLUSH is answered and the image does not show
    22 or 32 (no other node writes). Node 1's clogfsd is SIGKILLed: node 2 takes over, writes
    the whole state, and both FLUSHes are answered 0; right after each answer the image shows
    22, 32 and node 1's 11 and 12 dirty, and 11 and 12 answer IN_SYNC 0 on nodes 2 and 3.
    No read of the image, from node 1's FLUSH to the end, shows a confirmed mark clean."""
    held_for = 1.5  # seconds the FLUSHes must stay unanswered while the leader is frozen
    image = make_image(tmp_path / "shared-log.img")
    first, created, marked, frozen, held, killed, looked = phases(7)
    departed = phases(2)  # nodes 3, then 2
    early = {1: {11, 12}, 3: {33}}  # marked and flushed before the freeze
    late = {2: 22, 3: 32}  # marked and flushed while the leader is frozen

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await create_with_node_1_first(node_id, mirror, first)
        await meet(created)
        if node_id in early:
            await mirror.call(T.MARK_REGION, tuple(sorted(early[node_id])))
            await mirror.call(T.FLUSH, ())
            watch.require(early[node_id])
        await meet(marked)
        if node_id == 1:
            daemon.process.send_signal(signal.SIGSTOP)
        await meet(frozen)
        if node_id == 1:
            await meet(held)
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.wait(DEADLINE)
            await meet(killed)
            await meet(looked)
            for barrier in departed:
                await meet(barrier)
            return None
        region = late[node_id]
        await mirror.call(T.MARK_REGION, (region,))  # answered at its delivery: no leader
        answered = trio.Event()

        async def flush() -> None:
            await mirror.call(T.FLUSH, ())  # raises unless answered 0
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            await trio.sleep(held_for)
            unanswered = not answered.is_set()
            dirty_while_frozen = watch.dirty()
            await meet(held)
            await meet(killed)
            with trio.fail_after(DEADLINE):
                await answered.wait()
        dirty_after = watch.dirty()
        watch.require({region})
        in_sync = {r: bool(await mirror.call(T.IN_SYNC, r)) for r in (11, 12, region)}
        await meet(looked)
        await depart_in_turn(node_id, mirror, (3, 2), departed)  # the leader last
        return unanswered, dirty_while_frozen, dirty_after, in_sync

    ctr = f"clustered-disk {image} {REGION_SECTORS} nosync"
    with ImageWatch(image) as watch:
        results = on_all_nodes(rig3, tmp_path, b"CLUSTER-FROZEN-1", ctr, body)
    for node_id in (2, 3):
        unanswered, dirty_while_frozen, dirty_after, in_sync = results[node_id]
        assert unanswered, f"node {node_id}'s FLUSH was answered while the leader was frozen"
        assert dirty_while_frozen == {11, 12, 33}
        assert {11, 12, 33, late[node_id]} <= dirty_after
        assert in_sync == {11: False, 12: False, late[node_id]: True}
    assert watch.violations == []
    assert watch.reads > 50  # one every 5 ms, for more than the 1.5 s hold alone
    assert watch.dirty() == {11, 12, 22, 32, 33}  # the orderly departures keep their marks


def test_all_members_suspend_at_once_and_the_last_write_keeps_the_marks(
    rig3: CorosyncRig, tmp_path: Path
) -> None:
    """Disk log: each node n marks n*10 and n*10+1 (FLUSH), then clears n*10 (no FLUSH: the
    image still shows it dirty). Then all three send PRESUSPEND, and once all are halted,
    POSTSUSPEND and DTR at the same time: the leader's departure may be delivered before the
    others', so the lowest departing member still in the group takes over (replica rule 8).
    Every PRESUSPEND, POSTSUSPEND and DTR is answered 0 on every node, and the image shows
    the final state: the parked marks 11, 21, 31 dirty, the cleared 10, 20, 30 clean."""
    image = make_image(tmp_path / "shared-log.img")
    first, created, flushed, looked, cleared, looked_again, presuspended = phases(7)

    def dirty_on_disk() -> set[int]:
        return decode_disk(image.read_bytes()[:BLOCK], REGIONS).dirty_regions(REGIONS)

    async def body(node_id: int, mirror: EmulatedMirror, daemon: Daemon) -> object:
        await create_with_node_1_first(node_id, mirror, first)
        await meet(created)
        await mirror.call(T.MARK_REGION, (node_id * 10, node_id * 10 + 1))
        await mirror.call(T.FLUSH, ())
        await meet(flushed)
        marked = dirty_on_disk()
        await meet(looked)
        # every FLUSH is answered, so no log write is running or due: a CLEAR alone starts none
        await mirror.call(T.CLEAR_REGION, (node_id * 10,))
        await meet(cleared)
        unwritten = dirty_on_disk()
        await meet(looked_again)
        await mirror.call(T.PRESUSPEND)
        await meet(presuspended)
        await mirror.call(T.POSTSUSPEND)  # all three departures at once
        await mirror.call(T.DTR)
        return marked, unwritten

    ctr = f"clustered-disk {image} {REGION_SECTORS} nosync"
    results = on_all_nodes(rig3, tmp_path, b"CLUSTER-ALL-DEPART-1", ctr, body)
    every_mark = {10, 11, 20, 21, 30, 31}
    assert results == {n: (every_mark, every_mark) for n in NODES}
    header = decode_disk(image.read_bytes()[:BLOCK], REGIONS)
    assert (header.magic, header.nr_regions) == (KERNEL_MAGIC, REGIONS)
    assert header.dirty_regions(REGIONS) == {11, 21, 31}


def test_no_corosync_exits_with_cluster_code(tmp_path: Path) -> None:
    """Without corosync (the host's namespace runs none), --cluster corosync exits 7."""
    result = subprocess.run(
        [*CLOGFSD, "--cluster", "corosync", "--no-mount", "--lock-file", str(tmp_path / "l")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == ExitCode.CLUSTER
    assert "corosync is not available" in result.stderr
