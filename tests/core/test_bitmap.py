"""The on-disk-ordered bitset: bit order, counts, searches, runs, and its speed on 2**24 bits."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clogfs.log.bitmap import Bitmap

# (nbits, bits set, bytes) -- bit r is bit r % 8 of byte r // 8, whole 64-bit words
BYTE_TABLE = [
    (1, [0], b"\x01" + bytes(7)),
    (8, [7], b"\x80" + bytes(7)),
    (9, [8], b"\x00\x01" + bytes(6)),
    (32, range(32), b"\xff\xff\xff\xff" + bytes(4)),
    (65, [64], bytes(8) + b"\x01" + bytes(7)),
    (0, [], b""),
]


@pytest.mark.parametrize(("nbits", "bits", "data"), BYTE_TABLE)
def test_bits_encode_in_disk_order(nbits: int, bits: list[int], data: bytes) -> None:
    bitmap = Bitmap(nbits)
    for bit in bits:
        bitmap.set(bit)
    assert bitmap.to_bytes() == data


@pytest.mark.parametrize(("nbits", "bits", "data"), BYTE_TABLE)
def test_bytes_decode_in_disk_order(nbits: int, bits: list[int], data: bytes) -> None:
    bitmap = Bitmap.from_bytes(nbits, data)
    assert [b for b in range(nbits) if bitmap.get(b)] == list(bits)


def test_from_bytes_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="needs 8 bytes"):
        Bitmap.from_bytes(10, bytes(7))


def test_from_bytes_clears_bits_beyond_nbits() -> None:
    assert Bitmap.from_bytes(3, b"\xff" * 8).to_bytes() == b"\x07" + bytes(7)


def test_fill_leaves_tail_clear() -> None:
    assert Bitmap(70, fill=True).to_bytes() == b"\xff" * 8 + b"\x3f" + bytes(7)


def test_set_and_clear_report_changes() -> None:
    bitmap = Bitmap(16)
    assert bitmap.set(3) is True
    assert bitmap.set(3) is False
    assert bitmap.clear(3) is True
    assert bitmap.clear(3) is False


@pytest.mark.parametrize("bit", [-1, 16])
def test_out_of_range_bit_raises(bit: int) -> None:
    with pytest.raises(IndexError):
        Bitmap(16).get(bit)


def test_count() -> None:
    bitmap = Bitmap(100)
    for bit in (0, 50, 99):
        bitmap.set(bit)
    assert bitmap.count() == 3


@pytest.mark.parametrize(("start", "stop", "value"), [(3, 70, True), (0, 8, True), (5, 6, True)])
def test_fill_range(start: int, stop: int, value: bool) -> None:
    bitmap = Bitmap(80, fill=not value)
    bitmap.fill_range(start, stop, value)
    assert [bitmap.get(b) for b in range(80)] == [(start <= b < stop) == value for b in range(80)]


def test_first_zero_and_first_set() -> None:
    bitmap = Bitmap(200, fill=True)
    bitmap.clear(130)
    assert bitmap.first_zero(0) == 130
    assert bitmap.first_zero(131) is None
    assert bitmap.first_set(130) == 131
    assert Bitmap(200).first_set(0) is None


def test_search_never_reports_tail_bits() -> None:
    assert Bitmap(3, fill=True).first_zero(0) is None


def test_runs() -> None:
    bitmap = Bitmap(20)
    for bit in (*range(2, 5), 9, *range(15, 20)):
        bitmap.set(bit)
    assert list(bitmap.runs(True)) == [(2, 4), (9, 9), (15, 19)]
    assert list(bitmap.runs(False)) == [(0, 1), (5, 8), (10, 14)]


@given(
    st.integers(1, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)), st.integers(0, n + 5))
    )
)
def test_searches_agree_with_a_plain_scan(case: tuple[int, set[int], int]) -> None:
    nbits, bits, start = case
    bitmap = Bitmap(nbits)
    for bit in bits:
        bitmap.set(bit)
    zeros = [b for b in range(start, nbits) if b not in bits]
    ones = [b for b in range(start, nbits) if b in bits]
    assert bitmap.first_zero(start) == (zeros[0] if zeros else None)
    assert bitmap.first_set(start) == (ones[0] if ones else None)
    assert bitmap.count() == len(bits)
    expanded = [b for first, last in bitmap.runs(True) for b in range(first, last + 1)]
    assert expanded == sorted(bits)


def test_search_on_2_24_bits_is_fast() -> None:
    bitmap = Bitmap(2**24, fill=True)
    bitmap.clear(2**24 - 1)
    started = time.perf_counter()
    assert bitmap.first_zero(0) == 2**24 - 1
    assert bitmap.count() == 2**24 - 1
    assert time.perf_counter() - started < 0.5
