"""Crash consistency of clustered-disk logs: SIGKILL a real clogfsd at random points.

Several disk logs on image files take a storm of MARK / FLUSH / CLEAR / FLUSH cycles from
concurrent tasks, as dm-raid1 would send them around its writes. After a random delay the
daemon is killed with SIGKILL; the test then reads each image with O_DIRECT and checks, from
the bytes alone (``tests.integration.test_disk``'s independent decoder):

- the header is valid: magic, version 2, ``nr_regions`` of the log;
- **durability** (``disk-format.md`` R1): every region whose MARK was acknowledged before a
  FLUSH that was then acknowledged is dirty on disk, unless a CLEAR of it was sent after that
  (a CLEAR may reach the disk with any later write, R2, so from the moment it is sent the
  region may legitimately be clean);
- no spurious writes: a region no task ever marks is clean.

Acknowledgements are tracked on the emulator side: a region becomes *required dirty* when
the FLUSH reply arrives and stops being required just before its CLEAR is sent, so every
requirement is one the daemon had promised before it died. The daemon is then started again,
every log re-created with CTR + RESUME from its image (no ``sync``/``nosync``), and each
required-dirty region must come back out of sync. Each task owns its own regions, so no two
tasks' cycles overlap on one region.
"""

from __future__ import annotations

import errno
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from clogfs.netlink.emulator import open_kernel_emulator
from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import Protocol
from tests.integration.test_disk import (
    COUNT,
    KERNEL_MAGIC,
    DiskRig,
    Log,
    decode_disk,
    image_dev,
    make_image,
    read_direct,
    u64,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

LOGS = 4
TASKS_PER_LOG = 4
TOUCHED = 96  # regions 0-95 are churned (task = region % TASKS_PER_LOG); 96-127 never marked
KILLS = {Protocol.ULOG: 16, Protocol.TAKE5: 10}
MIN_KILLS = 6  # reached even on a loaded machine (a daemon start takes up to ~3 s there)
KILL_DELAY_S = (0.01, 0.3)
WRITE_TIME_S = 0.004  # the simulated time a mirror write to the legs takes
TIME_BOX_S = 28.0  # per protocol


@dataclass
class Tracked:
    """One log and what the emulator knows was promised durable."""

    log: Log
    required_dirty: set[int] = field(default_factory=set)
    acked_flushes: int = 0


async def churn(tracked: Tracked, regions: list[int], rng: random.Random) -> None:
    """MARK a few regions, FLUSH, CLEAR them, FLUSH; forever (until cancelled)."""
    log = tracked.log
    ulog = log.rig.protocol is Protocol.ULOG
    while True:
        batch = rng.sample(regions, rng.randint(1, 3))
        if ulog and rng.random() < 0.3:  # integrated flush: the marks ride in the FLUSH
            reply = await log.request(T.FLUSH, b"".join(u64(r) for r in batch))
        else:
            if ulog and rng.random() < 0.5:
                await log.ok(T.MARK_REGION, b"".join(u64(r) for r in batch))
            else:
                await log.mark(*batch)
            reply = await log.request(T.FLUSH)
        assert reply.error == 0, reply
        tracked.required_dirty.update(batch)
        tracked.acked_flushes += 1
        # the mirror write to the legs happens now, while other tasks flush their own marks
        for r in batch:
            assert await log.in_sync(r) in (True, False)
        await trio.sleep(rng.uniform(0, WRITE_TIME_S))
        tracked.required_dirty.difference_update(batch)  # before the CLEAR can be sent
        await log.clear(*batch)
        assert await log.flush() == 0
        tracked.acked_flushes += 1


def check_image(tracked: Tracked, context: str) -> None:
    log = tracked.log
    disk = decode_disk(read_direct(log.dev.path), COUNT)
    assert (disk.magic, disk.version, disk.nr_regions) == (KERNEL_MAGIC, 2, COUNT), context
    dirty = disk.dirty_regions(COUNT)
    lost = tracked.required_dirty - dirty
    assert not lost, f"{context}: acknowledged marks not durable: {sorted(lost)}"
    spurious = {r for r in dirty if r >= TOUCHED}
    assert not spurious, f"{context}: never-marked regions dirty: {sorted(spurious)}"


async def recreate(tracked: Tracked) -> None:
    """After a restart: CTR + RESUME from the image; required-dirty regions are out of sync."""
    log = tracked.log
    assert (await log.request(T.IN_SYNC, u64(0))).error == -errno.ESRCH
    await log.create()
    for region in sorted(tracked.required_dirty):
        assert await log.in_sync(region) is False, region
    tracked.required_dirty.clear()  # nothing is marked in the new daemon


@pytest.mark.parametrize("protocol", [Protocol.ULOG, Protocol.TAKE5], ids=["ulog", "take5"])
async def test_acknowledged_marks_survive_sigkill(tmp_path: Path, protocol: Protocol) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    began = time.monotonic()
    async with open_kernel_emulator(protocol) as emu:
        rig = DiskRig(emu, tmp_path)
        await rig.start()
        try:
            logs = []
            for i in range(LOGS):
                dev = image_dev(make_image(tmp_path / f"log{i}.img"))
                log = Log(rig, f"CRASH-{i}".encode(), dev, luid=10 + i)
                await log.create()  # nosync: every region starts clean
                log.flag = None  # every later load keeps the bitmap
                logs.append(Tracked(log))
            kills = 0
            checked = 0
            while kills < KILLS[protocol] and time.monotonic() - began < TIME_BOX_S:
                delay = rng.uniform(*KILL_DELAY_S)
                async with trio.open_nursery() as storm:
                    for tracked in logs:
                        for t in range(TASKS_PER_LOG):
                            owned = list(range(t, TOUCHED, TASKS_PER_LOG))
                            storm.start_soon(churn, tracked, owned, random.Random(rng.random()))
                    await trio.sleep(delay)
                    await rig.kill()
                    storm.cancel_scope.cancel()
                kills += 1
                for i, tracked in enumerate(logs):
                    context = f"seed {seed}, kill {kills} after {delay:.3f} s, log {i}"
                    check_image(tracked, context)
                    checked += len(tracked.required_dirty)
                await rig.start()
                for tracked in logs:
                    await recreate(tracked)
        finally:
            await rig.stop()
    flushes = sum(t.acked_flushes for t in logs)
    assert kills >= MIN_KILLS, f"only {kills} kills in {TIME_BOX_S} s"
    assert flushes > 10 * kills, f"only {flushes} FLUSHes acknowledged in {kills} rounds"
    assert checked > 0, "no kill ever found a region that had to be dirty"
