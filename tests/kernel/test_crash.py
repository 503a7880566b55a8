"""A hard stop of the VM in the middle of writes to a disk-log mirror, and the next boot.

The first boot (``crash_writes``, last scenario of the main boot) keeps the legs and the log
device in the share, writes continuously and stops the machine with sysrq while regions are
dirty. The second boot (``crash_recover``) decodes the log, overwrites leg 1 in one dirty and
one clean region, activates the mirror again and lets it resync.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.kernel.conftest import Boot

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.mark.kernel_scenario("crash_writes")
def test_crash_writes_stopped_the_machine_mid_script(main_boot: Boot) -> None:
    result = main_boot.scenario("crash_writes")
    assert result["resynced"]
    assert result["dirty_seen_before_stop"]
    assert main_boot.result is not None
    assert main_boot.result.returncode is None


def _recovered(recovery_boot: Boot) -> dict[str, Any]:
    return recovery_boot.scenario("crash_recover")


@pytest.mark.kernel_scenario("crash_recover")
def test_crash_log_shows_the_dirty_regions(recovery_boot: Boot) -> None:
    log = _recovered(recovery_boot)["log_before"]
    assert (log["magic_ok"], log["version"], log["nr_regions"]) == (True, 2, 32)
    assert log["dirty"] != []


@pytest.mark.kernel_scenario("crash_recover")
def test_crash_recovery_reaches_in_sync(recovery_boot: Boot) -> None:
    result = _recovered(recovery_boot)
    assert result["create"]["rc"] == 0
    assert result["in_sync_reached"]
    words = result["status_final"].split()
    # "... 32/32 1 AA 3 clustered-disk <maj:min> A"
    assert words[-7:-4] == ["32/32", "1", "AA"]
    assert words[-4:-2] == ["3", "clustered-disk"]
    assert words[-1] == "A"


@pytest.mark.kernel_scenario("crash_recover")
def test_crash_recovery_resyncs_a_dirty_region(recovery_boot: Boot) -> None:
    result = _recovered(recovery_boot)
    assert result["corrupted_dirty"] is not None
    assert result["legs_equal"][str(result["corrupted_dirty"])] is True


@pytest.mark.kernel_scenario("crash_recover")
def test_crash_recovery_trusts_a_clean_region(recovery_boot: Boot) -> None:
    result = _recovered(recovery_boot)
    assert result["corrupted_clean"] is not None
    assert result["legs_equal"][str(result["corrupted_clean"])] is False


@pytest.mark.kernel_scenario("crash_recover")
def test_crash_recovery_log_is_clean_after_remove(recovery_boot: Boot) -> None:
    result = _recovered(recovery_boot)
    assert result["remove"]["rc"] == 0
    assert result["log_after_remove"]["dirty"] == []
