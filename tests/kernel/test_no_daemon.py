"""The kernel's behaviour with no log server listening (documents it; needs no clogfsd)."""

from __future__ import annotations

import pytest

from tests.kernel.conftest import Boot

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.kernel_scenario("no_daemon")]


def test_no_daemon_create_fails(main_boot: Boot) -> None:
    result = main_boot.scenario("no_daemon")
    assert result["daemon_running"] is False
    assert result["create"]["rc"] not in (0, None)


def test_no_daemon_create_fails_at_once(main_boot: Boot) -> None:
    result = main_boot.scenario("no_daemon")
    assert result["create"]["seconds"] < 5.0


def test_no_daemon_dmesg_names_the_missing_server(main_boot: Boot) -> None:
    result = main_boot.scenario("no_daemon")
    assert "Userspace log server not found" in result["dmesg"]


def test_no_daemon_leaves_no_device(main_boot: Boot) -> None:
    result = main_boot.scenario("no_daemon")
    assert "kvt-nodaemon" not in result["ls"]["stdout"]
