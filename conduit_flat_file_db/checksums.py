"""XXH3-64 checksums of blob bytes in a segment, read in bounded pieces (FORMAT.md "Checksums").

Recovery, the power-loss check of sealed segments and the rewrites all checksum
byte ranges of a segment file: here, with memory bounded by CHECK_CHUNK_BYTES
whatever the size of the blob.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import xxhash

from .index import FLAG_LEGACY_EXTENT, FLAG_UNCHECKED, Record
from .seekable import SeekableReader

CHECK_CHUNK_BYTES = 8 * 2**20  # read size when checksumming a blob: bounds memory


def checksum_range(fd: int, start: int, end: int) -> int:
    """XXH3-64 of bytes [start, end) of a raw file, read in bounded chunks."""
    if end - start <= CHECK_CHUNK_BYTES:
        return xxhash.xxh3_64_intdigest(os.pread(fd, end - start, start))
    hasher = xxhash.xxh3_64()
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(CHECK_CHUNK_BYTES, end - pos), pos)
        if not chunk:
            break
        hasher.update(chunk)
        pos += len(chunk)
    return hasher.intdigest()


def checksum_frames(reader: SeekableReader, start: int, end: int) -> int:
    """XXH3-64 of uncompressed bytes [start, end) of a compressed segment, in bounded chunks."""
    hasher = xxhash.xxh3_64()
    pos = start
    while pos < end:
        step = min(CHECK_CHUNK_BYTES, end - pos)
        hasher.update(reader.read_range(pos, pos + step))
        pos += step
    return hasher.intdigest()


def first_bad_blob(read: Callable[[int, int], bytes], blobs: Sequence[Record], limit: int) -> Record | None:
    """The first blob whose bytes fail their XXH3-64, reading [0, limit) once in chunks."""
    window, window_at = b"", 0
    for record in blobs:
        if record.flags & (FLAG_LEGACY_EXTENT | FLAG_UNCHECKED):
            continue
        start, stop = record.offset, record.end
        if record.size > CHECK_CHUNK_BYTES:
            hasher = xxhash.xxh3_64()
            for pos in range(start, stop, CHECK_CHUNK_BYTES):
                hasher.update(read(pos, min(stop, pos + CHECK_CHUNK_BYTES)))
            digest = hasher.intdigest()
        else:
            if start < window_at or stop > window_at + len(window):
                window_at, window = start, read(start, min(limit, max(stop, start + CHECK_CHUNK_BYTES)))
            digest = xxhash.xxh3_64_intdigest(memoryview(window)[start - window_at : stop - window_at])
        if digest != record.checksum:
            return record
    return None
