"""The harness's pure parts, without booting: table lines, status parsing, module order."""

from __future__ import annotations

from pathlib import Path

import pytest

from clogfs.vm.guest import sync_counts, userspace_table
from clogfs.vm.initramfs import init_script
from clogfs.vm.kernel import KernelPrepareError, KernelTree, load_order, parse_modules_dep
from clogfs.vm.machine import PreparedVm, qemu_argv

# (keyword arguments, the table line of spec/kernel-vm.md)
TABLES = [
    (
        dict(sectors=131072, uuid="UUID-A", legs=["/dev/loop0", "/dev/loop1"], sync="nosync"),
        "0 131072 mirror userspace 4 UUID-A clustered-core 1024 nosync 2 /dev/loop0 0 /dev/loop1 0",
    ),
    (
        dict(sectors=131072, uuid="UUID-B", legs=["/dev/loop0", "/dev/loop1"]),
        "0 131072 mirror userspace 3 UUID-B clustered-core 1024 2 /dev/loop0 0 /dev/loop1 0",
    ),
    (
        dict(sectors=32768, uuid="UUID-C", legs=["/dev/loop0", "/dev/loop1"],
             log_device="/dev/loop2", sync="nosync"),
        "0 32768 mirror userspace 5 UUID-C clustered-disk /dev/loop2 1024 nosync "
        "2 /dev/loop0 0 /dev/loop1 0",
    ),
    (
        dict(sectors=32768, uuid="UUID-D", legs=["/dev/loop0", "/dev/loop1"], sync="nosync",
             integrated_flush=True),
        "0 32768 mirror userspace 5 UUID-D integrated_flush clustered-core 1024 nosync "
        "2 /dev/loop0 0 /dev/loop1 0",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "line"), TABLES)
def test_userspace_table_matches_the_verified_lines(kwargs: dict[str, object], line: str) -> None:
    assert userspace_table(**kwargs) == line  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        ("0 131072 mirror 2 7:0 7:1 128/128 1 AA 1 clustered-core", (128, 128)),
        ("0 32768 mirror 2 7:0 7:1 8/32 1 AA 3 clustered-disk 7:2 A", (8, 32)),
        ("ERROR rc=1: device not found", None),
    ],
)
def test_sync_counts(status: str, counts: tuple[int, int] | None) -> None:
    assert sync_counts(status) == counts


MODULES_DEP = """\
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-log.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mirror.ko: kernel/drivers/md/dm-region-hash.ko kernel/drivers/md/dm-log.ko \
kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-region-hash.ko: kernel/drivers/md/dm-log.ko kernel/drivers/md/dm-mod.ko
"""


def test_load_order_puts_dependencies_first() -> None:
    table = parse_modules_dep(MODULES_DEP.replace("\\\n", ""))
    assert load_order(table, ["dm-mirror"]) == [
        "kernel/drivers/md/dm-mod.ko",
        "kernel/drivers/md/dm-log.ko",
        "kernel/drivers/md/dm-region-hash.ko",
        "kernel/drivers/md/dm-mirror.ko",
    ]


def test_load_order_loads_each_module_once() -> None:
    table = parse_modules_dep(MODULES_DEP.replace("\\\n", ""))
    assert load_order(table, ["dm-mod", "dm_log", "dm-log"]) == [
        "kernel/drivers/md/dm-mod.ko",
        "kernel/drivers/md/dm-log.ko",
    ]


def test_load_order_skips_a_missing_optional_module() -> None:
    table = parse_modules_dep(MODULES_DEP.replace("\\\n", ""))
    assert load_order(table, ["dm-mod"], ["dm-flakey"]) == ["kernel/drivers/md/dm-mod.ko"]


def test_load_order_refuses_a_missing_required_module() -> None:
    table = parse_modules_dep(MODULES_DEP.replace("\\\n", ""))
    with pytest.raises(KernelPrepareError, match="dm-log-userspace"):
        load_order(table, ["dm-log-userspace"])


def test_init_script_disables_udev_and_mounts_both_shares() -> None:
    init = init_script()
    assert "export DM_DISABLE_UDEV=1" in init
    assert "version=9p2000.L,ro,msize=512000,cache=loose" in init
    assert "hostroot $R ||" in init
    assert 'results "$R$share"' in init
    assert "ln -sf /proc/self/fd $R/dev/fd" in init
    assert "@" not in init  # every placeholder filled


def test_qemu_argv_uses_tcg_and_one_gib() -> None:
    kernel = KernelTree("6.1.0-0-amd64", Path("/k"), Path("/k/vmlinuz"), ())
    argv = qemu_argv(PreparedVm(kernel, Path("/k/initrd")), Path("/s"), Path("/c"), cpus=1)
    joined = " ".join(argv)
    assert "-accel tcg -cpu max" in joined
    assert "-m 1024" in joined
    assert "path=/,mount_tag=hostroot,security_model=none,readonly=on" in joined
    assert "clogvm.share=/s" in joined
