"""One segment: its layout, creating it, and its committed extent (``Tail``).

A raw segment ``data_{n:08d}.dat`` is the plain concatenation of its blobs. A
compressed one ``data_{n:08d}.dat.zst`` is a seekable Zstandard file; while it is
mutable its committed frames are followed by a padding frame and the seek table
(FORMAT.md "Compressed segment"), so appending a frame rewrites a few bytes of the
table instead of all of it. The record index ``data_{n:08d}.idx`` says which bytes
are committed. Bringing a segment back to its last commit is recovery.py's job;
sealing it, seal.py's; opening its files, segment_files.py's.

Three kinds of space past a segment's committed bytes, one word each in this package:

- *padding*: the skippable padding frame between the frames and the seek table of the
  mutable compressed segment (its payload bytes; seekable.py packs it, :func:`padding_for`
  sizes it);
- *room*: zero bytes a writer allocates past the committed end of the raw mutable
  segment's data and index files (the file size grows) to store small puts through
  shared maps (``ROOM_*``, :func:`is_zero_room`);
- *reserve*: disk blocks preallocated past the end of a file without changing its size,
  so that ``pwrite`` appends skip block allocation (blocks.preallocate).

(The seekable format's "reserved" descriptor bits and the index's "reserved" fields are
the format documents' own term: bits and bytes that must be zero.)
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple, Sequence

from .fileio import pwrite_all
from .index import HEADER_BYTES, INDEX_VERSION, KIND_ZSTD, Record, encode_header, frame_sizes
from .naming import index_name, segment_name
from .seekable import MAX_FRAMES, FrameTable, write_padding_and_table
from .segment_files import OPEN_WRITE, fsync_dir
from .state import MutableView

PADDING_MIN_BYTES = 64 * 2**10  # smallest padding left after the frames of a compressed segment
# Largest padding: its frame's size field is a u32, and past 1 GiB of padding a table
# rewrite per GiB of frames costs nothing worth keeping more padding for.
PADDING_MAX_BYTES = 2**30
# Frames of a compressed mutable segment past which the next put that prepares the segment seals
# it first: its seek table lists its frames and the padding frame, at most MAX_FRAMES entries (the
# seekable format's limit; past it the seal's table cannot be written, and every put would fail).
# Below the limit by 2**20: small puts through the maps check nothing per put, but fall back to the
# path that prepares the segment at least once per ROOM_MAX_BYTES of frames (fewer than 2**19 frames
# of at least 9 bytes), and a put_many run adds its frames after one check.
MUTABLE_FRAMES_MAX = MAX_FRAMES - 2**20
# Room (FORMAT.md "Raw segment"): it grows by the size already used, between these bounds;
# sealing cuts it off.
ROOM_MIN_BYTES = 64 * 2**10
ROOM_MAX_BYTES = 4 * 2**20
ROOM_CHECK_MAX_BYTES = 2 * ROOM_MAX_BYTES  # a zero tail longer than this is no writer's room


def frame_table_of(records: Sequence[Record]) -> FrameTable:
    """The frame table of a compressed segment from its FRAME records."""
    return FrameTable.from_sizes(frame_sizes(records))


class Tail(NamedTuple):
    """The committed extent of a segment: what creating it, recovering it or sealing it leaves.

    The state page publishes the mutable segment's extent in the other shape,
    :class:`~conduit_flat_file_db.state.MutableView` (which segment, no blob count, never
    sealed): :meth:`view` derives it, so the two cannot drift apart.
    """

    kind: int
    end: int  # committed uncompressed bytes
    index_bytes: int  # committed bytes of the index file
    disk_bytes: int  # raw: == end; compressed: bytes of the committed frames
    blobs: int
    sealed: bool
    padding: int = 0  # compressed mutable segment: payload bytes of its padding frame
    frames: int = 0  # compressed: committed frames

    def view(self, segment: int) -> MutableView:
        """This extent as the state page publishes it, for mutable segment ``segment``."""
        return MutableView(segment, self.end, self.index_bytes, self.disk_bytes, self.kind, self.padding, self.frames)


def create_segment(dir_fd: int, number: int, kind: int, version: int = INDEX_VERSION) -> Tail:
    """Create an empty segment (index header, then data file) and make it durable.

    On failure (a full disk, mostly) the files it made are removed: an index without its
    header would stop every reader of indexes (stats, retention) until a writer's recovery.
    """
    made: list[str] = []
    try:
        fd = _create(dir_fd, index_name(number), made)
        try:
            pwrite_all(fd, encode_header(number, kind, time.time_ns(), version), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = _create(dir_fd, segment_name(number, kind == KIND_ZSTD), made)
        try:
            padding = 0
            if kind == KIND_ZSTD:
                padding = PADDING_MIN_BYTES
                write_padding_and_table(fd, 0, [], padding)
                os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(dir_fd)
    except BaseException:
        for name in reversed(made):  # data first: a lone index is cleaned up on open
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        raise
    return Tail(kind, 0, HEADER_BYTES, 0, 0, False, padding, 0)


def _create(dir_fd: int, name: str, made: list[str]) -> int:
    """Create file ``name`` (it must not exist) and note it in ``made``; returns its descriptor."""
    fd = os.open(name, OPEN_WRITE | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    made.append(name)
    return fd


def padding_for(frames_end: int, needed: int) -> int:
    """Padding to leave after a table rewrite: space for ``needed`` bytes and then some, so
    rewrites of the whole table get rarer as the segment grows (amortised O(1) per frame)."""
    return max(PADDING_MIN_BYTES, needed + min(frames_end // 16, PADDING_MAX_BYTES))


def is_zero_room(fd: int, start: int, size: int) -> bool:
    """True when bytes [start, size) of a file are all zeros and few enough to be the room
    a writer allocated ahead of its appends (FORMAT.md "Raw segment"), not a torn tail."""
    return size - start <= ROOM_CHECK_MAX_BYTES and is_room(os.pread(fd, size - start, start))


def is_room(tail: bytes) -> bool:
    """True when ``tail``, the bytes after a file's committed end, can be a writer's room."""
    return len(tail) <= ROOM_CHECK_MAX_BYTES and not tail.strip(b"\0")
