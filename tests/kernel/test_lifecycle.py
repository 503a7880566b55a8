"""Table reloads, suspend/resume, a daemon crash and a failing log device, on a real kernel."""

from __future__ import annotations

import pytest

from tests.kernel.conftest import Boot

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


# --- table reload -----------------------------------------------------------------------------


@pytest.mark.kernel_scenario("reload")
def test_reload_succeeds(main_boot: Boot) -> None:
    result = main_boot.scenario("reload")
    assert [result[step]["rc"] for step in ("reload", "suspend", "resume")] == [0, 0, 0]


@pytest.mark.kernel_scenario("reload")
def test_reload_shows_two_instances_of_one_uuid_with_different_luids(main_boot: Boot) -> None:
    view = main_boot.scenario("reload")["view_both"]
    directories = {path.split("/")[0] for path in view}
    assert len(directories) == 2
    assert all(name.startswith("KVT-RELOAD@") for name in directories)
    states = sorted(view[f"{name}/state"].strip() for name in directories)
    assert states == ["constructed", "resumed"]


@pytest.mark.kernel_scenario("reload")
def test_reload_swap_leaves_one_resumed_instance(main_boot: Boot) -> None:
    view = main_boot.scenario("reload")["view_after"]
    assert {path.split("/")[0] for path in view} == {"KVT-RELOAD"}
    assert view["KVT-RELOAD/state"] == "resumed\n"


@pytest.mark.kernel_scenario("reload")
def test_reload_io_continues_on_the_new_table(main_boot: Boot) -> None:
    result = main_boot.scenario("reload")
    assert result["write_after"]["rc"] == 0
    assert result["status"].endswith(" 32/32 1 AA 1 clustered-core")
    assert result["cmp"]["rc"] == 0


# --- suspend / resume -------------------------------------------------------------------------


@pytest.mark.kernel_scenario("suspend_resume")
def test_suspend_resume_cycles_succeed(main_boot: Boot) -> None:
    cycles = main_boot.scenario("suspend_resume")["cycles"]
    assert len(cycles) == 5
    for cycle in cycles:
        assert [cycle[step]["rc"] for step in ("suspend", "resume", "write")] == [0, 0, 0]


@pytest.mark.kernel_scenario("suspend_resume")
def test_suspend_resume_device_was_suspended(main_boot: Boot) -> None:
    cycles = main_boot.scenario("suspend_resume")["cycles"]
    # dmsetup attr: L(ive table) -, s(uspended), w(ritable)
    assert all(cycle["info"]["stdout"].strip()[2] == "s" for cycle in cycles)


@pytest.mark.kernel_scenario("suspend_resume")
def test_suspend_resume_ends_clean_and_equal(main_boot: Boot) -> None:
    result = main_boot.scenario("suspend_resume")
    assert result["status"].endswith(" A")
    assert result["log_after_remove"]["dirty"] == []
    assert result["cmp"]["rc"] == 0


# --- daemon SIGKILLed and restarted -----------------------------------------------------------


@pytest.mark.kernel_scenario("daemon_restart")
def test_daemon_restart_kernel_reconnects(main_boot: Boot) -> None:
    result = main_boot.scenario("daemon_restart")
    assert result["kill_status"] == -9
    assert "Reconnected to userspace log server" in result["dmesg_after_kill"]


@pytest.mark.kernel_scenario("daemon_restart")
def test_daemon_restart_io_continues_on_core_and_disk_logs(main_boot: Boot) -> None:
    result = main_boot.scenario("daemon_restart")
    assert [cmd["rc"] for cmd in result["write_after"]] == [0, 0]
    core, disk = result["status_after"]
    assert core.endswith(" 32/32 1 AA 1 clustered-core")
    assert disk.endswith(" A")
    assert " 3 clustered-disk " in disk


@pytest.mark.kernel_scenario("daemon_restart")
def test_daemon_restart_mirrors_remove_and_legs_agree(main_boot: Boot) -> None:
    result = main_boot.scenario("daemon_restart")
    assert result["core"]["remove"]["rc"] == 0
    assert result["disk"]["remove"]["rc"] == 0
    assert [cmd["rc"] for cmd in result["cmp"]] == [0, 0]


# --- log device failure -----------------------------------------------------------------------


@pytest.mark.kernel_scenario("log_failure")
def test_log_failure_status_shows_alive_then_d(main_boot: Boot) -> None:
    result = main_boot.scenario("log_failure")
    assert result["status_healthy"].endswith(" A")
    assert [cmd["rc"] for cmd in result["swap_log"]] == [0, 0, 0]
    assert result["status_failed"].endswith(" D")


@pytest.mark.kernel_scenario("log_failure")
def test_log_failure_view_shows_device_state_d(main_boot: Boot) -> None:
    assert main_boot.scenario("log_failure")["view"]["KVT-FAIL/device_state"] == "D\n"


@pytest.mark.kernel_scenario("log_failure")
def test_log_failure_other_mirror_keeps_being_served(main_boot: Boot) -> None:
    result = main_boot.scenario("log_failure")
    assert result["write_other"]["rc"] == 0
    assert result["status_other"].endswith(" 32/32 1 AA 1 clustered-core")
    assert result["cmp_other"]["rc"] == 0


@pytest.mark.kernel_scenario("log_failure")
def test_log_failure_mirrors_can_be_removed(main_boot: Boot) -> None:
    result = main_boot.scenario("log_failure")
    assert result["failing"]["remove"]["rc"] == 0
    assert result["other"]["remove"]["rc"] == 0
