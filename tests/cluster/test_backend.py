"""The cluster backend's CPG group names (no corosync needed)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from clogfs.cluster.backend import CPG_MAX_NAME_LENGTH, group_name


def test_short_uuid_is_used_as_is() -> None:
    assert group_name(b"LVM-abc123") == b"clogfs-LVM-abc123"


def test_longest_uuid_used_as_is_fills_the_name() -> None:
    uuid = b"u" * (CPG_MAX_NAME_LENGTH - len(b"clogfs-"))
    assert group_name(uuid) == b"clogfs-" + uuid
    assert len(group_name(uuid)) == CPG_MAX_NAME_LENGTH


def test_one_byte_longer_uuid_is_hashed() -> None:
    uuid = b"u" * (CPG_MAX_NAME_LENGTH - len(b"clogfs-") + 1)
    assert group_name(uuid) == b"clogfs#" + hashlib.sha256(uuid).hexdigest().encode()


def test_uuid_with_nul_is_hashed() -> None:
    assert group_name(b"a\0b").startswith(b"clogfs#")


@given(st.binary(min_size=1, max_size=200))
def test_name_fits_and_is_stable(uuid: bytes) -> None:
    name = group_name(uuid)
    assert 0 < len(name) <= CPG_MAX_NAME_LENGTH
    assert group_name(bytes(uuid)) == name


@given(st.binary(min_size=1, max_size=200), st.binary(min_size=1, max_size=200))
def test_distinct_uuids_get_distinct_names(a: bytes, b: bytes) -> None:
    if a != b:
        assert group_name(a) != group_name(b)


def test_single_node_daemon_does_not_load_the_corosync_binding() -> None:
    """``--cluster none`` must not need cffi or libcpg: the daemon's modules never import them."""
    code = (
        "import sys, clogfs.cli, clogfs.daemon, clogfs.service, clogfs.daemon_view; "
        "print(sorted(m for m in sys.modules if m == 'cffi' or m.startswith('clogfs.cluster.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert result.stdout.split("\n")[0] == "['clogfs.cluster.group', 'clogfs.cluster.messages']"
