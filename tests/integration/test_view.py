"""The view of a real clogfsd, mounted, while the kernel emulator drives traffic."""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from clogfs.netlink.requests import RequestType as T
from tests.integration.conftest import Rig
from tests.integration.harness import open_rig

pytestmark = [pytest.mark.root, pytest.mark.fuse]

CTR = b"131072 clustered-core 1024 nosync"


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


@pytest.fixture
async def viewrig(tmp_path: Path) -> AsyncIterator[tuple[Rig, Path]]:
    mount = tmp_path / "view"
    async with open_rig(tmp_path / "d", mount=mount) as rig:
        yield rig, mount


def read(path: Path) -> str:
    return path.read_text()


async def wait_until(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` with a deadline (the kernel drops a dentry asynchronously)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_log_directory_follows_lifecycle(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    assert (await rig.emu.request(T.CTR, b"VIEW-1", luid=1, data=CTR)).error == 0
    d = view / "VIEW-1"
    assert read(d / "type").strip() == "clustered-core"
    assert read(d / "state").strip() == "constructed"
    assert read(d / "region_size").strip() == "1024"
    assert read(d / "region_count").strip() == "128"
    assert (await rig.emu.request(T.RESUME, b"VIEW-1", luid=1)).error == 0
    assert read(d / "state").strip() == "resumed"
    assert read(d / "sync_count").strip() == "128"
    assert read(d / "in_sync").strip() == "1"
    status = await rig.emu.request(T.STATUS_INFO, b"VIEW-1", luid=1)
    assert read(d / "status").strip() == status.data.rstrip(b"\0").decode()
    for rtype in (T.PRESUSPEND, T.POSTSUSPEND):
        await rig.emu.request(rtype, b"VIEW-1", luid=1)
    assert read(d / "state").strip() == "suspended"
    await rig.emu.request(T.DTR, b"VIEW-1", luid=1)
    await wait_until(lambda: not d.exists())
    assert "VIEW-1" not in os.listdir(view)


async def test_dirty_ranges_follow_marks(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-2", luid=1, data=CTR)
    await rig.emu.request(T.RESUME, b"VIEW-2", luid=1)
    d = view / "VIEW-2"
    assert read(d / "dirty").strip() == ""
    data = b"".join(u64(r) for r in (5, 6, 7, 40))
    await rig.emu.request(T.MARK_REGION, b"VIEW-2", luid=1, data=data)
    await rig.emu.request(T.FLUSH, b"VIEW-2", luid=1)
    assert read(d / "dirty").split() == ["5-7", "40-40"]
    clean = (d / "clean_bits").read_bytes()
    assert len(clean) == 16
    assert clean[0] == 0x1F
    assert clean[5] == 0xFE
    await rig.emu.request(T.CLEAR_REGION, b"VIEW-2", luid=1, data=data)
    await rig.emu.request(T.FLUSH, b"VIEW-2", luid=1)
    assert read(d / "dirty").strip() == ""
    history = read(d / "history")
    assert "MARK_REGION" in history
    assert "CLEAR_REGION" in history
    assert "FLUSH" in read(d / "stats")


async def test_recovering_and_out_of_sync_during_resync(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-3", luid=1, data=b"131072 clustered-core 1024")
    await rig.emu.request(T.RESUME, b"VIEW-3", luid=1)
    d = view / "VIEW-3"
    assert read(d / "out_of_sync").split() == ["0-127"]
    assert read(d / "sync_count").strip() == "0"
    reply = await rig.emu.request(T.GET_RESYNC_WORK, b"VIEW-3", luid=1)
    assert reply.data == struct.pack("=qQ", 1, 0)
    assert read(d / "recovering").split() == ["0", "1"]
    await rig.emu.request(T.SET_REGION_SYNC, b"VIEW-3", luid=1, data=u64(0) + struct.pack("=q", 1))
    assert read(d / "recovering").strip() == ""
    assert read(d / "out_of_sync").split() == ["1-127"]
    assert read(d / "sync_count").strip() == "1"
    picture = read(d / "map.txt")
    assert picture  # one character per bucket, with a legend
    png = (d / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    idat = b""
    pos = 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    assert zlib.decompress(idat)


async def test_view_refuses_writes(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-4", luid=1, data=CTR)
    for path in (view / "VIEW-4" / "state", view / "version", view / "newfile"):
        with pytest.raises(OSError, match=r"Permission denied|Read-only") as info:
            path.write_text("x")
        assert info.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM), path


async def test_reload_shows_two_instances(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-5", luid=1, data=CTR)
    await rig.emu.request(T.RESUME, b"VIEW-5", luid=1)
    await rig.emu.request(T.CTR, b"VIEW-5", luid=2, data=CTR)
    names = sorted(os.listdir(view))
    assert "VIEW-5@0x1" in names
    assert "VIEW-5@0x2" in names
    await rig.emu.request(T.PRESUSPEND, b"VIEW-5", luid=1)
    await rig.emu.request(T.POSTSUSPEND, b"VIEW-5", luid=1)
    await rig.emu.request(T.RESUME, b"VIEW-5", luid=2)
    await rig.emu.request(T.DTR, b"VIEW-5", luid=1)
    assert "VIEW-5" in os.listdir(view)
    assert read(view / "VIEW-5" / "state").strip() == "resumed"


async def test_protocol_and_metrics(viewrig: tuple[Rig, Path]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-6", luid=1, data=CTR)
    await rig.emu.request(T.RESUME, b"VIEW-6", luid=1)
    await rig.emu.request(T.IN_SYNC, b"VIEW-6", luid=1, data=u64(1))
    assert read(view / "protocol").strip() == "ulog-v3"
    families = {f.name: f for f in text_string_to_metric_families(read(view / "metrics"))}
    requests = families["clogfs_requests"]
    in_sync = [
        s
        for s in requests.samples
        if s.labels.get("type") == "IN_SYNC" and s.name.endswith("_total")
    ]
    assert in_sync
    assert sum(s.value for s in in_sync) >= 1


async def test_mount_gone_after_exit(tmp_path: Path) -> None:
    mount = tmp_path / "view"
    async with open_rig(tmp_path / "d", mount=mount) as rig:
        assert os.path.ismount(mount)
        rig.daemon.signal(signal.SIGTERM)
        assert await rig.daemon.wait() == 0
    assert not os.path.ismount(mount)


async def test_protocol_keeps_answering_while_view_reader_loops(viewrig: tuple[Rig, Path]) -> None:
    rig, view = viewrig
    await rig.emu.request(T.CTR, b"VIEW-7", luid=1, data=b"17179869184 clustered-core 1024")
    await rig.emu.request(T.RESUME, b"VIEW-7", luid=1)
    d = view / "VIEW-7"
    stop = trio.Event()

    def reader() -> int:
        n = 0
        while not stop.is_set():
            for name in ("clean_bits", "sync_bits", "out_of_sync", "map.txt", "map.png"):
                (d / name).read_bytes()
                n += 1
        return n

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, reader)
        worst = 0.0
        for i in range(200):
            t0 = trio.current_time()
            reply = await rig.emu.request(T.IN_SYNC, b"VIEW-7", luid=1, data=u64(i))
            assert reply.error == 0
            worst = max(worst, trio.current_time() - t0)
        stop.set()
    print(
        f"worst IN_SYNC latency while a reader loops over a 2**24-region log: {worst * 1e3:.1f} ms"
    )
    assert worst < 1.0


async def test_a_failing_view_handler_never_reaches_the_protocol(tmp_path: Path) -> None:
    from clogfs.netlink.emulator import open_kernel_emulator
    from tests.integration import broken_view_clogfsd
    from tests.integration.harness import run_clogfsd

    mount = tmp_path / "view"
    command = [sys.executable, broken_view_clogfsd.__file__]
    async with (
        open_kernel_emulator() as emu,
        run_clogfsd(tmp_path / "d", kernel_port=emu.port_id, mount=mount, command=command) as d,
    ):
        assert (await emu.request(T.CTR, b"VIEW-BROKEN", luid=1, data=CTR)).error == 0
        assert (await emu.request(T.RESUME, b"VIEW-BROKEN", luid=1)).error == 0
        stats = mount / "VIEW-BROKEN" / "stats"
        for region in range(5):
            with pytest.raises(OSError, match="Input/output error") as info:
                await trio.to_thread.run_sync(stats.read_bytes)
            assert info.value.errno == errno.EIO
            reply = await emu.request(T.MARK_REGION, b"VIEW-BROKEN", luid=1, data=u64(region))
            assert reply.error == 0
            assert (await emu.request(T.FLUSH, b"VIEW-BROKEN", luid=1)).error == 0
        assert read(mount / "VIEW-BROKEN" / "dirty").split() == ["0-4"]
        assert d.process.poll() is None
        text = d.stderr()
        assert "broken on purpose" in text
        assert text.count("Traceback") == 5  # one log record per failed read, nothing more
        await emu.request(T.DTR, b"VIEW-BROKEN", luid=1)
