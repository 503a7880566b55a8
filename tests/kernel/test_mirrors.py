"""clogfsd serving real dm-mirror tables: core and disk logs, resync, integrated flush."""

from __future__ import annotations

from typing import Any

import pytest

from clogfs.vm.guest import sync_counts
from tests.kernel.conftest import Boot

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def request_counts(stats: str) -> dict[str, int]:
    """``TYPE count p50 p99`` lines of a view ``stats`` file → {TYPE: count}."""
    counts: dict[str, int] = {}
    for line in stats.splitlines():
        words = line.split()
        if words and not line.startswith("#"):
            counts[words[0]] = int(words[1])
    return counts


def all_ok(commands: list[dict[str, Any]]) -> list[int | None]:
    """The exit codes of recorded commands that did not succeed."""
    return [cmd["rc"] for cmd in commands if cmd["rc"] != 0]


# --- nosync clustered-core ------------------------------------------------------------------


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_create_succeeds(main_boot: Boot) -> None:
    assert main_boot.scenario("core_nosync")["create"]["rc"] == 0


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_direct_writes_of_every_size_succeed(main_boot: Boot) -> None:
    assert all_ok(main_boot.scenario("core_nosync")["writes"]) == []


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_reads_return_what_was_written(main_boot: Boot) -> None:
    assert all(main_boot.scenario("core_nosync")["reads_match"])


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_status_ends_with_the_daemon_string(main_boot: Boot) -> None:
    status = main_boot.scenario("core_nosync")["status"]
    assert status.endswith(" 128/128 1 AA 1 clustered-core")


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_writes_use_mark_region(main_boot: Boot) -> None:
    stats = main_boot.scenario("core_nosync")["view"]["KVT-CORE/stats"]
    assert request_counts(stats).get("MARK_REGION", 0) > 0


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_remove_succeeds(main_boot: Boot) -> None:
    assert main_boot.scenario("core_nosync")["remove"]["rc"] == 0


@pytest.mark.kernel_scenario("core_nosync")
def test_core_nosync_legs_are_equal(main_boot: Boot) -> None:
    assert main_boot.scenario("core_nosync")["cmp"]["rc"] == 0


# --- default sync: full resync --------------------------------------------------------------


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_starts_out_of_sync(main_boot: Boot) -> None:
    counts = sync_counts(main_boot.scenario("default_sync")["status_at_start"])
    assert counts is not None
    assert counts[0] < counts[1] == 1024


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_reaches_in_sync(main_boot: Boot) -> None:
    result = main_boot.scenario("default_sync")
    assert result["in_sync_reached"]
    assert result["status_final"].endswith(" 1024/1024 1 AA 1 clustered-core")


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_write_ahead_of_resync_succeeds(main_boot: Boot) -> None:
    assert main_boot.scenario("default_sync")["late_write"]["rc"] == 0


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_write_ahead_of_resync_waits_and_lands_on_both_legs(main_boot: Boot) -> None:
    result = main_boot.scenario("default_sync")
    counts = sync_counts(result["status_after_write"])
    assert counts is not None
    assert counts[0] < counts[1], "resync finished before the check: inconclusive"
    assert result["late_write_on_secondary_at_once"]


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_write_ahead_of_resync_asks_is_remote_recovering(main_boot: Boot) -> None:
    stats = main_boot.scenario("default_sync")["view"]["KVT-SYNC/stats"]
    assert request_counts(stats).get("IS_REMOTE_RECOVERING", 0) > 0


@pytest.mark.kernel_scenario("default_sync")
def test_default_sync_legs_are_equal_after_resync(main_boot: Boot) -> None:
    result = main_boot.scenario("default_sync")
    assert result["cmp"]["rc"] == 0
    assert result["late_write_on_both_legs"] == [True, True]


# --- clustered-disk ---------------------------------------------------------------------------


@pytest.mark.kernel_scenario("disk_log")
def test_disk_log_writes_succeed(main_boot: Boot) -> None:
    assert all_ok(main_boot.scenario("disk_log")["writes"]) == []


@pytest.mark.kernel_scenario("disk_log")
def test_disk_log_status_names_the_log_device(main_boot: Boot) -> None:
    result = main_boot.scenario("disk_log")
    assert result["status"].endswith(f" 32/32 1 AA 3 clustered-disk {result['log_dev_number']} A")


@pytest.mark.kernel_scenario("disk_log")
def test_disk_log_device_holds_a_valid_log_while_active(main_boot: Boot) -> None:
    log = main_boot.scenario("disk_log")["log_while_active"]
    assert (log["magic_ok"], log["version"], log["nr_regions"]) == (True, 2, 32)


@pytest.mark.kernel_scenario("disk_log")
def test_disk_log_is_all_clean_after_remove(main_boot: Boot) -> None:
    result = main_boot.scenario("disk_log")
    log = result["log_after_remove"]
    assert result["remove"]["rc"] == 0
    assert (log["magic_ok"], log["version"], log["nr_regions"]) == (True, 2, 32)
    assert log["dirty"] == []


@pytest.mark.kernel_scenario("disk_log")
def test_disk_log_legs_are_equal(main_boot: Boot) -> None:
    assert main_boot.scenario("disk_log")["cmp"]["rc"] == 0


# --- integrated_flush -------------------------------------------------------------------------


@pytest.mark.kernel_scenario("integrated_flush")
def test_integrated_flush_writes_succeed(main_boot: Boot) -> None:
    result = main_boot.scenario("integrated_flush")
    assert all_ok(result["writes"]) == []
    assert result["status"].endswith(" 32/32 1 AA 1 clustered-core")


@pytest.mark.kernel_scenario("integrated_flush")
def test_integrated_flush_sends_no_mark_region(main_boot: Boot) -> None:
    stats = main_boot.scenario("integrated_flush")["view"]["KVT-IFLUSH/stats"]
    counts = request_counts(stats)
    assert counts.get("FLUSH", 0) >= 3
    assert "MARK_REGION" not in counts


@pytest.mark.kernel_scenario("integrated_flush")
def test_integrated_flush_marks_ride_in_flush(main_boot: Boot) -> None:
    history = main_boot.scenario("integrated_flush")["view"]["KVT-IFLUSH/history"]
    # "# time seq type regions result latency_us"
    flushed = {
        words[3]
        for words in (line.split() for line in history.splitlines() if not line.startswith("#"))
        if len(words) > 3 and words[2] == "FLUSH"
    }
    assert {"0", "3", "9"} <= flushed


@pytest.mark.kernel_scenario("integrated_flush")
def test_integrated_flush_legs_are_equal(main_boot: Boot) -> None:
    assert main_boot.scenario("integrated_flush")["cmp"]["rc"] == 0
