"""A bitset over a ``bytearray`` in the kernel's on-disk bit order (the clean and sync bits).

Bit ``r`` lives in bit ``r % 8`` (least significant first) of byte ``r // 8``: the kernel's
``test_bit_le``/``__set_bit_le`` order (``drivers/md/dm-log.c``), so the bytes of a clean
bitmap are exactly the bytes of the disk log's bitmap. The byte array always covers whole
64-bit words (``bitset_bytes``); bits at and beyond ``nbits`` are kept 0 (invariant I6).

Searches ("the first zero at or after i") compare whole chunks against an all-ones or
all-zero chunk before looking inside one, so they stay fast on 2**24 bits.

Core module: no trio, no sockets, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

from clogfs.disklog.format import bitset_bytes

_CHUNK = 4096  # bytes compared at once by the searches
_ONES = b"\xff" * _CHUNK
_ZEROS = bytes(_CHUNK)


class Bitmap:
    """A fixed-size bitset of ``nbits`` bits stored in on-disk order.

    Args:
        nbits: number of meaningful bits (the region count).
        fill: initial value of bits ``[0, nbits)``.
    """

    __slots__ = ("_data", "nbits")

    def __init__(self, nbits: int, *, fill: bool = False) -> None:
        if nbits < 0:
            raise ValueError(f"negative bit count {nbits}")
        self.nbits = nbits
        size = bitset_bytes(nbits)
        self._data = bytearray(b"\xff") * size if fill else bytearray(size)
        if fill:
            self._clear_tail()

    @classmethod
    def from_bytes(cls, nbits: int, data: bytes | bytearray | memoryview) -> Bitmap:
        """Build a bitmap from ``bitset_bytes(nbits)`` bytes; bits beyond ``nbits`` are cleared.

        Raises:
            ValueError: ``data`` has the wrong length.
        """
        bitmap = cls(nbits)
        if len(data) != len(bitmap._data):
            raise ValueError(f"bitmap of {nbits} bits needs {len(bitmap._data)} bytes")
        bitmap._data[:] = data
        bitmap._clear_tail()
        return bitmap

    def copy(self) -> Bitmap:
        """An independent copy."""
        other = Bitmap(0)
        other.nbits = self.nbits
        other._data = bytearray(self._data)
        return other

    def to_bytes(self) -> bytes:
        """The bitmap bytes (whole 64-bit words), exactly as on disk."""
        return bytes(self._data)

    @property
    def nbytes(self) -> int:
        """Length of the byte array: ``bitset_bytes(nbits)``."""
        return len(self._data)

    def byte(self, index: int) -> int:
        """Byte ``index`` of the array."""
        return self._data[index]

    def byte_slice(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the array."""
        return bytes(self._data[start:stop])

    def _check(self, bit: int) -> None:
        if not 0 <= bit < self.nbits:
            raise IndexError(f"bit {bit} outside [0, {self.nbits})")

    def get(self, bit: int) -> bool:
        """Value of ``bit``."""
        self._check(bit)
        return bool(self._data[bit >> 3] >> (bit & 7) & 1)

    def set(self, bit: int) -> bool:
        """Set ``bit``; return whether it changed (was 0)."""
        self._check(bit)
        index, mask = bit >> 3, 1 << (bit & 7)
        old = self._data[index]
        self._data[index] = old | mask
        return not old & mask

    def clear(self, bit: int) -> bool:
        """Clear ``bit``; return whether it changed (was 1)."""
        self._check(bit)
        index, mask = bit >> 3, 1 << (bit & 7)
        old = self._data[index]
        self._data[index] = old & ~mask
        return bool(old & mask)

    def count(self) -> int:
        """Number of set bits (bits beyond ``nbits`` are always 0)."""
        return int.from_bytes(self._data, "little").bit_count()

    def fill_range(self, start: int, stop: int, value: bool) -> None:
        """Set bits ``[start, stop)`` (clipped to ``[0, nbits)``) to ``value``."""
        start = max(start, 0)
        stop = min(stop, self.nbits)
        if start >= stop:
            return
        first_full = -(-start // 8)
        last_full = stop // 8
        if first_full >= last_full:
            for bit in range(start, stop):
                self._put(bit, value)
            return
        for bit in range(start, first_full * 8):
            self._put(bit, value)
        fill_byte = b"\xff" if value else b"\x00"
        self._data[first_full:last_full] = fill_byte * (last_full - first_full)
        for bit in range(last_full * 8, stop):
            self._put(bit, value)

    def _put(self, bit: int, value: bool) -> None:
        if value:
            self._data[bit >> 3] |= 1 << (bit & 7)
        else:
            self._data[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF

    def _clear_tail(self) -> None:
        """Clear every bit from ``nbits`` to the end of the array (I6)."""
        if self.nbits & 7:
            self._data[self.nbits >> 3] &= (1 << (self.nbits & 7)) - 1
        whole = -(-self.nbits // 8)
        self._data[whole:] = bytes(len(self._data) - whole)

    def _find(self, start: int, want: bool) -> int | None:
        """First bit ``>= start`` (and ``< nbits``) whose value is ``want``, or None."""
        start = max(start, 0)
        if start >= self.nbits:
            return None
        data = self._data
        skip = 0xFF if not want else 0x00  # a byte holding no wanted bit
        skip_chunk = _ONES if not want else _ZEROS
        index = start >> 3
        # the first, partial byte
        byte = data[index] if want else ~data[index] & 0xFF
        byte &= (0xFF << (start & 7)) & 0xFF
        if byte:
            return self._bounded((index << 3) + (byte & -byte).bit_length() - 1)
        index += 1
        size = len(data)
        # whole chunks
        while index < size:
            stop = min(index + _CHUNK, size)
            if data[index:stop] == skip_chunk[: stop - index]:
                index = stop
                continue
            while data[index] == skip:
                index += 1
            byte = data[index] if want else ~data[index] & 0xFF
            return self._bounded((index << 3) + (byte & -byte).bit_length() - 1)
        return None

    def _bounded(self, bit: int) -> int | None:
        return bit if bit < self.nbits else None

    def first_zero(self, start: int = 0) -> int | None:
        """The first clear bit at or after ``start`` and below ``nbits``, or None."""
        return self._find(start, False)

    def first_set(self, start: int = 0) -> int | None:
        """The first set bit at or after ``start`` and below ``nbits``, or None."""
        return self._find(start, True)

    def runs(self, value: bool) -> Iterator[tuple[int, int]]:
        """Yield the inclusive ranges ``(first, last)`` of bits equal to ``value``, ascending."""
        find_start = self.first_set if value else self.first_zero
        find_end = self.first_zero if value else self.first_set
        bit = find_start(0)
        while bit is not None:
            end = find_end(bit)
            last = (end if end is not None else self.nbits) - 1
            yield bit, last
            if end is None:
                return
            bit = find_start(end)

    def __len__(self) -> int:
        return self.nbits

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitmap):
            return NotImplemented
        return self.nbits == other.nbits and self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bitmap(nbits={self.nbits}, set={self.count()})"
