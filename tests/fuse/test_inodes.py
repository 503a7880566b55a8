"""Directory names and the inode table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.fusefs.inodes import (
    FUSE_ROOT_ID,
    INODES_PER_DIR,
    InodeRef,
    InodeTable,
    Kind,
    directory_names,
    escape_uuid,
    instance_name,
)

from .helpers import make_snapshot

DAEMON = ("version", "protocol", "node", "uptime", "metrics")
LOG = ("type", "state", "dirty", "map.png")


@pytest.mark.parametrize(
    ("uuid", "name"),
    [
        (b"LVM-abc123", "LVM-abc123"),
        (b"a b", "a\\x20b"),
        (b"a/b", "a\\x2fb"),
        (b"a\\b", "a\\x5cb"),
        (b"a@b", "a\\x40b"),
        (b"\x01\xff", "\\x01\\xff"),
        (b".", "\\x2e"),
        (b"..", "\\x2e\\x2e"),
        (b"...", "..."),
        (b"", "\\x00"),
    ],
)
def test_escape_uuid_table(uuid: bytes, name: str) -> None:
    assert escape_uuid(uuid) == name


def unescape(name: str) -> bytes:
    """The inverse of escape_uuid, written independently."""
    if name == "\\x00":
        return b""
    out = bytearray()
    index = 0
    while index < len(name):
        if name[index] == "\\":
            out.append(int(name[index + 2 : index + 4], 16))
            index += 4
        else:
            out.append(ord(name[index]))
            index += 1
    return bytes(out)


@given(st.binary(min_size=1, max_size=128).filter(lambda b: b"\x00" not in b))
def test_escape_uuid_is_a_safe_injective_file_name(uuid: bytes) -> None:
    name = escape_uuid(uuid)
    assert unescape(name) == uuid
    assert "/" not in name
    assert "@" not in name
    assert name not in (".", "..")
    assert name.isascii()
    assert name.isprintable()
    assert " " not in name


def test_instance_name_of_an_unshared_uuid_is_the_uuid() -> None:
    assert instance_name(b"LVM-x", 0xFFFF8881A2B3C400, shared=False) == "LVM-x"


def test_instance_name_of_a_shared_uuid_carries_the_luid_in_hex() -> None:
    assert instance_name(b"LVM-x", 0xFFFF8881A2B3C400, shared=True) == "LVM-x@0xffff8881a2b3c400"


def test_directory_names_add_the_luid_only_while_shared() -> None:
    old = make_snapshot(uuid=b"LVM-x", luid=1)
    new = make_snapshot(uuid=b"LVM-x", luid=2)
    other = make_snapshot(uuid=b"LVM-y", luid=3)
    assert directory_names([other, old, new]) == {
        "LVM-x@0x1": old,
        "LVM-x@0x2": new,
        "LVM-y": other,
    }
    assert directory_names([new, other]) == {"LVM-x": new, "LVM-y": other}


def test_root_and_daemon_files_have_fixed_inodes() -> None:
    table = InodeTable(DAEMON, LOG)
    assert table.resolve(FUSE_ROOT_ID) == InodeRef(Kind.ROOT)
    assert [table.daemon_file_inode(name) for name in DAEMON] == [2, 3, 4, 5, 6]
    assert table.resolve(4) == InodeRef(Kind.DAEMON_FILE, file_name="node")


def test_log_inodes_resolve_both_ways() -> None:
    table = InodeTable(DAEMON, LOG)
    first = table.dir_inode("a")
    second = table.dir_inode("b")
    assert first % INODES_PER_DIR == 0
    assert second == first + INODES_PER_DIR
    assert table.log_file_inode("b", "dirty") == second + 3
    assert table.resolve(second + 3) == InodeRef(Kind.LOG_FILE, "b", "dirty")
    assert table.resolve(first) == InodeRef(Kind.LOG_DIR, "a")


def test_a_directory_name_keeps_its_inode() -> None:
    table = InodeTable(DAEMON, LOG)
    inode = table.dir_inode("a")
    table.dir_inode("b")
    assert table.dir_inode("a") == inode


def test_the_same_sightings_give_the_same_numbers() -> None:
    one, two = InodeTable(DAEMON, LOG), InodeTable(DAEMON, LOG)
    assert [one.log_file_inode(d, "state") for d in "xyz"] == [
        two.log_file_inode(d, "state") for d in "xyz"
    ]


@pytest.mark.parametrize("inode", [0, 7, 40, 10**6])
def test_unknown_inodes_are_refused(inode: int) -> None:
    table = InodeTable(DAEMON, LOG)
    table.dir_inode("a")
    with pytest.raises(KeyError):
        table.resolve(inode)


def test_unknown_file_names_are_refused() -> None:
    table = InodeTable(DAEMON, LOG)
    with pytest.raises(KeyError):
        table.daemon_file_inode("dirty")
    with pytest.raises(KeyError):
        table.log_file_inode("a", "version")


def test_too_many_log_files_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        InodeTable(DAEMON, [f"f{i}" for i in range(INODES_PER_DIR)])


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=20, unique=True))
def test_inodes_are_unique_and_resolve_back(dirs: list[str]) -> None:
    table = InodeTable(DAEMON, LOG)
    seen = {FUSE_ROOT_ID: InodeRef(Kind.ROOT)}
    for name in DAEMON:
        seen[table.daemon_file_inode(name)] = InodeRef(Kind.DAEMON_FILE, file_name=name)
    for directory in dirs:
        seen[table.dir_inode(directory)] = InodeRef(Kind.LOG_DIR, directory)
        for name in LOG:
            seen[table.log_file_inode(directory, name)] = InodeRef(Kind.LOG_FILE, directory, name)
    assert len(seen) == 1 + len(DAEMON) + len(dirs) * (1 + len(LOG)) == len(table)
    for inode, ref in seen.items():
        assert table.resolve(inode) == ref
