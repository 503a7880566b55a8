"""Suite-wide test configuration: skips for missing facilities, with reasons."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests whose facility is truly missing here, saying why."""
    is_root = os.geteuid() == 0
    has_fuse = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
    has_qemu = shutil.which("qemu-system-x86_64") is not None
    has_corosync = shutil.which("corosync") is not None
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (netlink, loop devices)"))
        if "fuse" in item.keywords and not (is_root and has_fuse):
            item.add_marker(pytest.mark.skip(reason="needs root, /dev/fuse and fusermount3"))
        if "qemu" in item.keywords and not has_qemu:
            item.add_marker(pytest.mark.skip(reason="qemu-system-x86_64 is not installed"))
        if "corosync" in item.keywords and not (is_root and has_corosync):
            item.add_marker(pytest.mark.skip(reason="needs root and corosync"))
        mainline = item.get_closest_marker("mainline_only")
        params = getattr(item, "callspec", None)
        protocol = params.params.get("protocol") if params is not None else None
        if mainline is not None and getattr(protocol, "value", protocol) == "take5":
            item.add_marker(pytest.mark.skip(reason=str(mainline.args[0])))
