"""The in-memory log image clog-fsck checks and repairs: bytes as read, plus staged changes.

Passes read the header and bitmap from here and stage their fixes here; nothing reaches the
device until the checker has run every pass, and then in one write (``device.py``). The
image is built from :mod:`clogfs.disklog.format`, the one codec.

Core module: no I/O.
"""

from __future__ import annotations

from clogfs.disklog.format import (
    LOG_HEADER,
    LogHeader,
    decode_bitmap,
    decode_header,
    encode_buffer,
    fits_device,
)


class LogImage:
    """The first bytes of a log device as read, and the header and bitmap staged over them.

    Args:
        data: the bytes read from device offset 0 (possibly fewer than a header).
        logical_block_size: the device's logical block size.
        device_bytes: the device's size.
    """

    def __init__(self, data: bytes, *, logical_block_size: int, device_bytes: int) -> None:
        self.data = bytes(data)
        self.logical_block_size = logical_block_size
        self.device_bytes = device_bytes
        self.original_header = decode_header(data) if len(data) >= LOG_HEADER.size else None
        self._header = self.original_header
        self._bitmap: bytes | None = None
        self._staged = False

    @property
    def header(self) -> LogHeader:
        """The current header (as read, or as staged).

        Raises:
            LookupError: the device is too small to hold a header (pass 0 stops before this).
        """
        if self._header is None:
            raise LookupError("no header was read")
        return self._header

    @property
    def bitmap(self) -> bytes:
        """The current clean bitmap for ``header.nr_regions`` (as read, or as staged).

        Raises:
            FormatError: the bytes read end before the bitmap does (pass 1 stops before this).
        """
        if self._bitmap is None:
            self._bitmap = decode_bitmap(self.data, self.header.nr_regions)
        return self._bitmap

    @property
    def changed(self) -> bool:
        """Whether a fix was staged (the image must be written)."""
        return self._staged

    def fits(self, region_count: int) -> bool:
        """Whether a log of ``region_count`` regions fits this device."""
        return fits_device(region_count, self.logical_block_size, self.device_bytes)

    def stage_header(self, header: LogHeader) -> None:
        """Replace the header, keeping the bitmap (the region count must not change).

        Raises:
            ValueError: ``header`` has another region count (use :meth:`stage_log`).
        """
        if header.nr_regions != self.header.nr_regions:
            raise ValueError("stage_header cannot change the region count; use stage_log")
        bitmap = self.bitmap
        self._header = header
        self._bitmap = bitmap
        self._staged = True

    def stage_bitmap(self, bitmap: bytes) -> None:
        """Replace the clean bitmap (same length as the current one).

        Raises:
            ValueError: ``bitmap`` has another length.
        """
        if len(bitmap) != len(self.bitmap):
            raise ValueError(f"bitmap of {len(bitmap)} bytes replaces {len(self.bitmap)}")
        self._bitmap = bytes(bitmap)
        self._staged = True

    def stage_log(self, header: LogHeader, bitmap: bytes) -> None:
        """Replace header and bitmap together (a new header, a new region count)."""
        self._header = header
        self._bitmap = bytes(bitmap)
        self._staged = True

    def encode(self) -> bytes:
        """The whole buffer to write: staged header and bitmap over the bytes as read."""
        return encode_buffer(
            self.header,
            self.bitmap,
            logical_block_size=self.logical_block_size,
            previous=self.data,
        )
