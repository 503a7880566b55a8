"""The corosync binding without corosync: C layouts, error mapping, retries, callback stash."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable

import pytest
import trio
import trio.testing

from clogfs.cluster import cpg
from clogfs.cluster.cpg import (
    TRY_AGAIN_FIRST_DELAY,
    TRY_AGAIN_MAX_DELAY,
    CorosyncError,
    CorosyncGoneError,
    CsError,
    retry_try_again,
)
from clogfs.errors import negative_errno


@pytest.mark.parametrize(
    ("ctype", "size"),
    [
        # corosync/cpg.h on x86_64: uint32_t fields; cpg_name = length + char[128];
        # cpg_ring_id = uint32_t + pad + uint64_t; the model struct = enum + pad + 3
        # pointers + unsigned int + tail pad.
        ("struct cpg_address", 12),
        ("struct cpg_name", 132),
        ("struct cpg_ring_id", 16),
        ("cpg_model_v1_data_t", 40),
        ("quorum_callbacks_t", 8),
        ("struct iovec", 16),
    ],
)
def test_c_layouts_match_the_headers(ctype: str, size: int) -> None:
    assert cpg.ffi.sizeof(ctype) == size


def test_model_v1_field_offsets() -> None:
    assert [cpg.ffi.offsetof("cpg_model_v1_data_t", f) for f in (
        "model", "cpg_deliver_fn", "cpg_confchg_fn", "cpg_totem_confchg_fn", "flags"
    )] == [0, 8, 16, 24, 32]  # fmt: skip


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (CsError.ERR_TRY_AGAIN, "cpg_join failed: CS_ERR_TRY_AGAIN"),
        (CsError.ERR_EXIST, "cpg_join failed: CS_ERR_EXIST"),
        (99, "cpg_join failed: cs_error_t 99"),
    ],
)
def test_corosync_error_names_the_call_and_code(code: int, text: str) -> None:
    exc = CorosyncError("cpg_join", code)
    assert str(exc) == text
    assert exc.cs_error == code
    assert exc.call == "cpg_join"


def test_library_error_means_corosync_gone() -> None:
    with pytest.raises(CorosyncGoneError) as info:
        cpg._check("cpg_dispatch", CsError.ERR_LIBRARY)
    assert negative_errno(info.value) == -errno.ENOTCONN


def test_other_errors_map_to_eio() -> None:
    with pytest.raises(CorosyncError) as info:
        cpg._check("cpg_join", CsError.ERR_ACCESS)
    assert not isinstance(info.value, CorosyncGoneError)
    assert negative_errno(info.value) == -errno.EIO


def test_ok_is_no_error() -> None:
    cpg._check("cpg_join", CsError.OK)


@pytest.mark.parametrize("name", [b"", b"x" * 129])
def test_group_name_length_is_checked(name: bytes) -> None:
    with pytest.raises(ValueError, match="1 to 128 bytes"):
        cpg._cpg_name(name)


def test_group_name_is_copied_with_its_length() -> None:
    cname = cpg._cpg_name(b"a" * 128)
    assert cname.length == 128
    assert cpg.ffi.buffer(cname.value)[:] == b"a" * 128


def _answers(*codes: int) -> tuple[list[float], Callable[[], int]]:
    calls: list[float] = []
    pending = list(codes)

    def attempt() -> int:
        calls.append(trio.current_time())
        return pending.pop(0)

    return calls, attempt


async def test_try_again_is_retried_with_growing_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, attempt = _answers(*[CsError.ERR_TRY_AGAIN] * 3, CsError.OK)
    retries = await retry_try_again("cpg_mcast_joined", attempt)
    assert retries == 3
    pauses = [b - a for a, b in itertools.pairwise(calls)]
    assert pauses == pytest.approx([TRY_AGAIN_FIRST_DELAY * k for k in (1, 2, 4)])


async def test_try_again_pauses_are_capped(autojump_clock: trio.testing.MockClock) -> None:
    calls, attempt = _answers(*[CsError.ERR_TRY_AGAIN] * 20, CsError.OK)
    assert await retry_try_again("cpg_join", attempt) == 20
    pauses = [b - a for a, b in itertools.pairwise(calls)]
    assert max(pauses) == pytest.approx(TRY_AGAIN_MAX_DELAY)


async def test_other_error_is_not_retried() -> None:
    calls, attempt = _answers(CsError.ERR_BAD_HANDLE, CsError.OK)
    with pytest.raises(CorosyncError) as info:
        await retry_try_again("cpg_join", attempt)
    assert info.value.cs_error == CsError.ERR_BAD_HANDLE
    assert len(calls) == 1


async def test_cancelled_caller_never_calls() -> None:
    calls, attempt = _answers(CsError.OK)
    with trio.CancelScope() as scope:
        scope.cancel()
        await retry_try_again("cpg_mcast_joined", attempt)
    assert scope.cancelled_caught
    assert calls == []


async def test_cancelled_during_try_again_stops_retrying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, attempt = _answers(*[CsError.ERR_TRY_AGAIN] * 100)
    with trio.move_on_after(0.001):
        await retry_try_again("cpg_mcast_joined", attempt)
    assert 0 < len(calls) < 100


def test_callback_exception_is_stashed_and_reraised_once() -> None:
    recorder = cpg._Recorder()
    recorder.record(lambda: "first")

    def broken() -> object:
        raise KeyError("bad event")

    recorder.record(broken)
    recorder.record(lambda: "after the failure")
    with pytest.raises(KeyError, match="bad event"):
        recorder.raise_stashed()
    recorder.raise_stashed()  # only once
    assert list(recorder.events) == ["first"]


def test_unknown_membership_reason_is_refused() -> None:
    entries = cpg.ffi.new("struct cpg_address[1]")
    entries[0].nodeid, entries[0].pid, entries[0].reason = 1, 2, 77
    with pytest.raises(ValueError, match="77"):
        cpg._addresses(entries, 1)


def test_membership_entries_are_decoded() -> None:
    entries = cpg.ffi.new("struct cpg_address[2]")
    entries[0].nodeid, entries[0].pid, entries[0].reason = 1, 100, 1
    entries[1].nodeid, entries[1].pid, entries[1].reason = 3, 300, 5
    assert cpg._addresses(entries, 2) == (
        cpg.CpgAddress(1, 100, cpg.CpgReason.JOIN),
        cpg.CpgAddress(3, 300, cpg.CpgReason.PROCDOWN),
    )
