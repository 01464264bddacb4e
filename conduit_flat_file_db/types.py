"""Small immutable value types shared by every layer."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

Buffer = Any
"""Data a put takes: bytes, bytearray, or any C-contiguous object of the buffer protocol
(memoryview, numpy array, ``array.array``, ``mmap``). Checked at run time, not by the type
checker: typing has no name for "has the buffer protocol" before Python 3.12's Buffer."""


class DataLocation(NamedTuple):
    """Where one blob lives: a segment file and a byte range in its uncompressed space.

    ``end_offset`` is exclusive. ``file_path`` is the segment path as this process
    named it (datadir joined with the segment file name); the store resolves a
    location by its segment *number*, so the suffix (``.dat`` or ``.dat.zst``) does
    not matter and a recompressed segment keeps serving old locations.
    """

    file_path: str
    start_offset: int
    end_offset: int


class Slice(NamedTuple):
    """A byte range relative to the start of one blob; ``end_offset == 0`` means "to the end"."""

    start_offset: int
    end_offset: int = 0


class BlobRecord(NamedTuple):
    """One committed blob as the record index knows it."""

    segment: int
    start_offset: int
    end_offset: int
    checksum: int


# Compact location: big-endian (segment u32, start u64, end u64). Big-endian so that
# the packed bytes sort in disk order, which keeps a key-value store's scans sequential.
_PACKED_LOCATION = struct.Struct(">IQQ")
PACKED_LOCATION_BYTES = _PACKED_LOCATION.size  # 20


def pack_location_parts(segment: int, start_offset: int, end_offset: int) -> bytes:
    """Pack a location's segment number and offsets into PACKED_LOCATION_BYTES bytes."""
    if not 0 <= segment <= 0xFFFFFFFF or not 0 <= start_offset <= end_offset < 2**64:
        raise ValueError(f"cannot pack location (segment={segment}, start={start_offset}, end={end_offset})")
    return _PACKED_LOCATION.pack(segment, start_offset, end_offset)


def unpack_location_parts(packed: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Inverse of :func:`pack_location_parts`: (segment, start_offset, end_offset)."""
    if not isinstance(packed, (bytes, bytearray, memoryview)):
        raise TypeError(f"a packed location is bytes, not {type(packed).__name__}")
    if isinstance(packed, memoryview):
        # Its bytes in logical order: struct needs a C-contiguous buffer, and len() of a view of
        # wider items or of several dimensions counts items, not bytes.
        packed = packed.tobytes()
    if len(packed) != PACKED_LOCATION_BYTES:
        raise ValueError(f"a packed location is {PACKED_LOCATION_BYTES} bytes, got {len(packed)}")
    segment, start, end = _PACKED_LOCATION.unpack(packed)
    if start > end:
        raise ValueError(f"packed location has start {start} > end {end}")
    return segment, start, end
