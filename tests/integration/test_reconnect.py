"""The kernel's reconnect loop after a daemon restart, and take-5 table reloads."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from clogfs.netlink.emulator import open_kernel_emulator
from clogfs.netlink.requests import RequestType as T
from clogfs.netlink.wire import Protocol
from tests.integration.conftest import Rig
from tests.integration.harness import open_rig, run_clogfsd
from tests.integration.test_requests import bool_of, create, ctr_text, u64

pytestmark = pytest.mark.root


async def test_restart_then_reconnect_ctr(tmp_path: Path) -> None:
    ctr = b"131072 clustered-core 1024 nosync"
    async with open_kernel_emulator(Protocol.ULOG) as emu:
        async with run_clogfsd(tmp_path / "a", kernel_port=emu.port_id) as daemon:
            assert (await emu.request(T.CTR, b"RECON-1", luid=3, data=ctr)).error == 0
            assert (await emu.request(T.RESUME, b"RECON-1", luid=3)).error == 0
            daemon.signal(9)
            await daemon.wait()
        async with run_clogfsd(tmp_path / "b", kernel_port=emu.port_id):
            # the data path finds no log: -ESRCH makes the kernel reconnect
            reply = await emu.request(T.IN_SYNC, b"RECON-1", luid=3, data=u64(0))
            assert reply.error == -errno.ESRCH
            # reconnect CTR: the saved string with its NUL counted; no room for a reply
            reply = await emu.request(T.CTR, b"RECON-1", luid=3, data=ctr + b"\0")
            assert (reply.error, reply.data) == (0, b"")
            assert (await emu.request(T.RESUME, b"RECON-1", luid=3)).error == 0
            reply = await emu.request(T.IN_SYNC, b"RECON-1", luid=3, data=u64(0))
            assert (reply.error, reply.data) == (0, struct.pack("=q", 1))
            # a second reconnect of a log that exists also succeeds (protocol.md §7.4 trap 3)
            reply = await emu.request(T.CTR, b"RECON-1", luid=3, data=ctr + b"\0")
            assert (reply.error, reply.data) == (0, b"")


async def test_take5_reload_routes_by_lifecycle(tmp_path: Path) -> None:
    async with open_rig(tmp_path, Protocol.TAKE5) as rig:
        emu = rig.emu
        uuid = b"T5-RELOAD"
        assert (await emu.request(T.CTR, uuid, data=ctr_text(rig, uuid, "1024"))).error == 0
        assert (await emu.request(T.RESUME, uuid)).error == 0
        # the live table recovers region 0
        reply = await emu.request(T.GET_RESYNC_WORK, uuid)
        assert reply.data == struct.pack("=qQ", 1, 0)
        await emu.request(T.SET_REGION_SYNC, uuid, data=u64(0) + struct.pack("=q", 1))
        # reload: CTR(new, nosync) while the old one is live
        reply = await emu.request(T.CTR, uuid, data=ctr_text(rig, uuid, "1024 nosync"))
        assert reply.error == 0
        # data-path requests still go to the resumed (old) instance: region 1 out of sync
        reply = await emu.request(T.IN_SYNC, uuid, data=u64(1))
        assert bool_of(rig, reply.data) == 0
        for rtype in (T.PRESUSPEND, T.POSTSUSPEND, T.RESUME, T.DTR):
            assert (rtype, (await emu.request(rtype, uuid)).error) == (rtype, 0)
        # now the new, nosync instance answers
        reply = await emu.request(T.IN_SYNC, uuid, data=u64(1))
        assert bool_of(rig, reply.data) == 1
        reply = await emu.request(T.STATUS_TABLE, uuid)
        assert reply.data == b"clustered-core 3 1024 T5-RELOAD nosync "


@pytest.mark.mainline_only("covered by test_take5_reload_routes_by_lifecycle")
async def test_ulog_reload_two_instances(rig: Rig) -> None:
    await create(rig, b"RELOAD-1", luid=1, args="1024")
    reply = await rig.emu.request(
        T.CTR, b"RELOAD-1", luid=2, data=ctr_text(rig, b"RELOAD-1", "1024 nosync")
    )
    assert reply.error == 0
    # RESUME of the new instance while the old is live is refused
    assert (await rig.emu.request(T.RESUME, b"RELOAD-1", luid=2)).error == -errno.EBUSY
    for rtype, luid in ((T.PRESUSPEND, 1), (T.POSTSUSPEND, 1), (T.RESUME, 2), (T.DTR, 1)):
        assert (rtype, (await rig.emu.request(rtype, b"RELOAD-1", luid=luid)).error) == (rtype, 0)
    reply = await rig.emu.request(T.GET_SYNC_COUNT, b"RELOAD-1", luid=2)
    assert reply.data == u64(128)
    reply = await rig.emu.request(T.GET_SYNC_COUNT, b"RELOAD-1", luid=1)
    assert reply.error == -errno.ESRCH
