"""Write room and maps: small puts into the mutable segment copied through shared maps.

A put of at most MAPPED_PUT_MAX_BYTES into a raw mutable segment without fsync is copied
into shared writable maps of its data and index files, over room allocated past their
committed ends (FORMAT.md "Commit" and "Raw segment"), instead of two ``pwrite`` calls.
This module owns that room: reserving disk blocks for large segments (``_reserve``),
allocating, zeroing and mapping room (``_make_room``, ``_grow``), and the whole commit of a
small blob through the maps (``put_mapped``, the hot path of ``put``). A put of less than
STORED_BELOW_BYTES into a compressed mutable segment is stored the same way as one stored
frame over the segment's padding frame, its records over room past the index's end
(``put_mapped_zstd``, ``_make_padding_room``, ``_map_padding``).

``MappedWrites`` is a base class of ``writer.SegmentWriter``, not a helper object: the hot
path reads the writer's descriptors, state words and maps as attributes of one object,
and a second object would add an attribute hop to every put.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import xxhash

from .blocks import allocate, maps_supported, preallocate
from .fileio import write_zeros
from .frames import (
    SKIPPABLE_HEADER_BYTES,
    STORED_BELOW_BYTES,
    STORED_DESCRIPTOR_MEDIUM,
    STORED_DESCRIPTOR_SMALL,
    STORED_HEAD_MEDIUM,
    STORED_HEAD_SMALL,
    STORED_SMALL_BELOW,
    STORED_TAIL_BYTES,
    ZSTD_FRAME_MAGIC,
)
from .index import (
    FLAG_LOG,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    RECORD_BYTES,
    encode_blob,
    encode_blob_and_log,
    encode_log_blob,
    encode_record,
    pack_stored_commit_into,
)
from .seekable import PADDING_MAGIC
from .segment import ROOM_MAX_BYTES, ROOM_MIN_BYTES
from .state import W_DIRTY, W_DISK_BYTES, W_END, W_FRAMES, W_INDEX_BYTES, W_PADDING, W_SEGMENT, W_SEQ

logger = logging.getLogger("conduit_flat_file_db")
_NO_MAP = mmap.mmap(-1, mmap.PAGESIZE)  # stands in for a write map not made yet (its length counts as 0)

RESERVE_STEP_BYTES = 2**30  # segments larger than this reserve their disk blocks in steps this large
MAPPED_PUT_MAX_BYTES = 64 * 2**10
# A compressed mutable segment's seek table is brought up to date after this many puts through
# maps by one writer (each put skips it: a table grows past the file's end, which needs a write).
UNLISTED_FRAMES_MAX = 1024
"""A put of at most this many bytes into a raw mutable segment, without fsync, is copied into
shared maps of its data and index files instead of being written with two ``pwrite`` calls
(FORMAT.md "Commit"). Larger blobs go through ``pwrite``: room for them would be written
twice (zeros, then the blob), and the two syscalls are a small part of their cost."""
_ENTRY = struct.Struct("<II")  # a seek-table entry: compressed size, decompressed size
_FRAME_END = struct.Struct("<III")  # a stored frame's content checksum, then the padding frame's header
_STORED_HEAD_BYTES = (STORED_HEAD_SMALL.size, STORED_HEAD_MEDIUM.size)
_TWO_RECORDS = 2 * RECORD_BYTES  # a small compressed put's FRAME and BLOB records


class MappedWrites:  # pylint: disable=too-many-instance-attributes  # two maps, their bounds, the reservation
    """The write room and maps of one writer's raw mutable segment (write lock held by the caller)."""

    # Set by SegmentWriter: the mutable segment this writer appends to.
    datadir: Path
    words: memoryview  # the state page, as words
    segment: int
    kind: int
    data_fd: int
    index_fd: int
    max_size: int  # the store's MAX_DAT_FILE_SIZE at the last prepare()
    _rotated_full: bool  # the writer created the mutable segment because the last one was full

    def __init__(self, dir_fd: int, fsync: bool) -> None:
        self.reserved = 0  # the raw mutable data file needs no reservation below this (see _reserve)
        # Shared writable maps of the raw mutable segment's data and index files, over their
        # allocated room (see append_mapped); valid while the state page's seq word equals ``_seq``:
        # every publish (rotation, recovery) and every cut of a file (mark_cut) changes it.
        self.map_limit = -1 if fsync or not maps_supported(dir_fd) else MAPPED_PUT_MAX_BYTES
        self._data_map = self._index_map = _NO_MAP
        self._data_base = self._index_base = 0  # file offset of each map's first byte
        self._data_mapped = self._index_mapped = 0  # file offset of each map's end
        self._seq = -1
        # A compressed segment's data map covers its padding frame and the seek table's first 8
        # bytes (table at ``_table_at``); ``_data_mapped`` is then where the part of the padding
        # that has disk blocks ends. -1: the maps are not a compressed segment's.
        self._table_at = -1
        # Seek-table entries (packed) of the compressed mutable segment's frames as far as its
        # index's first ``_entries_upto`` bytes say, kept so a seek-table rewrite need neither
        # reread the index nor pack every entry again (writer.py keeps them; put_mapped_zstd adds).
        self._entries = bytearray()
        self._entries_upto = 0
        self._entries_seq = -1  # the state page's seq word when they were read
        # Frames this writer committed through maps since it last brought the compressed mutable
        # segment's seek table up to date (list_frames): the table lags by at most about this many.
        self.unlisted = 0

    def put_mapped(self, data: Any, checksum: int, max_size: int, flags: int = 0) -> int:
        """The whole commit of a small blob when nothing needs preparing and the maps have room:
        returns where it starts, or -1 (nothing written) for the general path to take over.
        ``flags``: of its BLOB record (FLAG_LOG for a log record)."""
        words = self.words
        start = words[W_END]
        end = start + len(data)
        index_bytes = words[W_INDEX_BYTES]
        index_end = index_bytes + RECORD_BYTES
        data_base, index_base = self._data_base, self._index_base
        # One test for everything that sends a put to the general path (this is the hot path).
        if (  # pylint: disable=too-many-boolean-expressions
            end > self._data_mapped
            or index_end > self._index_mapped
            or start >= max_size
            or start < data_base
            or index_bytes < index_base
            or words[W_DIRTY]
            or words[W_SEGMENT] != self.segment
            or words[W_SEQ] != self._seq
        ):
            return -1
        words[W_DIRTY] = 1
        self._data_map[start - data_base : end - data_base] = data
        self._index_map[index_bytes - index_base : index_end - index_base] = (
            encode_blob(start, end - start, checksum)
            if not flags
            else encode_log_blob(start, end - start, checksum)
            if flags == FLAG_LOG
            else encode_record(REC_BLOB, flags, start, end - start, checksum)
        )
        words[W_INDEX_BYTES] = index_end
        words[W_DISK_BYTES] = end
        words[W_END] = end  # last: readers take W_END as "committed"
        words[W_DIRTY] = 0
        return start

    def put_mapped_logged(self, data: Any, checksum: int, log: bytes, log_checksum: int) -> bool:
        """put_mapped of ``data`` and then of the log record ``log`` right after it (its BLOB
        record flagged LOG), committed by one store of the committed end: readers see both or
        neither. The caller built ``log`` for ``data`` at the committed end of this segment.
        False (nothing written) when the maps cannot take both; the segment's size limit is
        the caller's to check, before."""
        words = self.words
        start = words[W_END]
        end = start + len(data)
        log_end = end + len(log)
        index_bytes = words[W_INDEX_BYTES]
        index_end = index_bytes + _TWO_RECORDS
        data_base, index_base = self._data_base, self._index_base
        if (  # pylint: disable=too-many-boolean-expressions  # as in put_mapped
            log_end > self._data_mapped
            or log_end - start > self.map_limit
            or index_end > self._index_mapped
            or start < data_base
            or index_bytes < index_base
            or words[W_DIRTY]
            or words[W_SEGMENT] != self.segment
            or words[W_SEQ] != self._seq
        ):
            return False
        words[W_DIRTY] = 1
        data_map = self._data_map
        data_map[start - data_base : end - data_base] = data
        data_map[end - data_base : log_end - data_base] = log
        self._index_map[index_bytes - index_base : index_end - index_base] = encode_blob_and_log(
            start, end - start, checksum, log_end - end, log_checksum
        )
        words[W_INDEX_BYTES] = index_end
        words[W_DISK_BYTES] = log_end
        words[W_END] = log_end  # last: readers take W_END as "committed"
        words[W_DIRTY] = 0
        return True

    def append_mapped(self, data: Any, checksum: int, start: int, end: int, flags: int = 0) -> bool:
        """Commit one small blob at ``start`` (the committed end) of a raw mutable segment through
        the maps, making room first when needed. False (nothing written) when maps cannot be
        used here: the caller then appends with ``append_raw``, which reports a full disk."""
        if self.words[W_END] != start:  # not the committed end: put_mapped would commit elsewhere
            return False
        index_bytes = self.words[W_INDEX_BYTES]
        if (
            end > self._data_mapped
            or index_bytes + RECORD_BYTES > self._index_mapped
            or start < self._data_base
            or index_bytes < self._index_base
            or self.words[W_SEQ] != self._seq
        ):
            if not self._make_room(start, end, index_bytes, index_bytes + RECORD_BYTES):
                return False
        return self.put_mapped(data, checksum, 1 << 62, flags) >= 0

    def put_mapped_zstd(self, data: Any, checksum: int, max_size: int) -> int:
        """put_mapped for a compressed mutable segment: the blob as one stored frame over the
        padding, the smaller padding frame's header after it, then the FRAME and BLOB records
        (FORMAT.md "Commit"), every store through the maps, no system call. The seek table is
        not touched: it lags, listing the frames up to its last update (list_frames, every
        UNLISTED_FRAMES_MAX such puts of this writer, and at every other append, sync, seal and
        close). Returns where the blob starts, or -1 (nothing written)."""
        words = self.words
        size = len(data)
        disk = words[W_DISK_BYTES]
        padding = words[W_PADDING]
        index_bytes = words[W_INDEX_BYTES]
        head = _STORED_HEAD_BYTES[size >= STORED_SMALL_BELOW]
        csize = head + size + STORED_TAIL_BYTES
        table_at = self._table_at
        # One test for everything that sends a put to the general path (this is the hot path).
        if (  # pylint: disable=too-many-boolean-expressions
            disk + csize + SKIPPABLE_HEADER_BYTES > self._data_mapped
            or disk + SKIPPABLE_HEADER_BYTES + padding != table_at  # the table moved, or no map of it
            or disk < self._data_base
            or index_bytes + _TWO_RECORDS > self._index_mapped
            or index_bytes < self._index_base
            or size >= STORED_BELOW_BYTES
            or words[W_END] >= max_size
            or words[W_DIRTY]
            or words[W_SEGMENT] != self.segment
            or words[W_SEQ] != self._seq
        ):
            return -1
        start = words[W_END]
        frames = words[W_FRAMES]
        words[W_DIRTY] = 1
        try:
            self._store_stored_frame(data, disk, head, padding - csize)
            pack_stored_commit_into(self._index_map, index_bytes - self._index_base, start, csize, disk, size, checksum)
        except BaseException:
            self._fail(start, disk, index_bytes, padding)
            raise
        if self._entries_upto == index_bytes and self._entries_seq == self._seq:
            self._entries += _ENTRY.pack(csize, size)
            self._entries_upto = index_bytes + _TWO_RECORDS
        words[W_INDEX_BYTES] = index_bytes + _TWO_RECORDS
        words[W_DISK_BYTES] = disk + csize
        words[W_PADDING] = padding - csize
        words[W_FRAMES] = frames + 1
        words[W_END] = start + size  # last: readers take W_END as "committed"
        words[W_DIRTY] = 0
        self.unlisted += 1
        if self.unlisted >= UNLISTED_FRAMES_MAX:
            self.list_frames(raise_errors=False)
        return start

    def list_frames(self, raise_errors: bool = True) -> None:
        """Bring the compressed mutable segment's seek table up to date (SegmentWriter's)."""
        raise NotImplementedError

    def _store_stored_frame(self, data: Any, disk: int, head: int, padding: int) -> None:
        """Store ``data`` as a one-block stored frame at file offset ``disk`` (frames.stored_frame's
        bytes, packed in place: no frame object is built), then a padding frame header of
        ``padding`` payload bytes."""
        mapped = self._data_map
        at = disk - self._data_base
        size = len(data)
        block = size << 3 | 1  # last block, raw, all of it
        if head == STORED_HEAD_SMALL.size:
            STORED_HEAD_SMALL.pack_into(
                mapped, at, ZSTD_FRAME_MAGIC, STORED_DESCRIPTOR_SMALL, size, block & 0xFFFF, block >> 16
            )
        else:
            STORED_HEAD_MEDIUM.pack_into(
                mapped, at, ZSTD_FRAME_MAGIC, STORED_DESCRIPTOR_MEDIUM, size - 256, block & 0xFFFF, block >> 16
            )
        at += head
        mapped[at : at + size] = data
        _FRAME_END.pack_into(mapped, at + size, xxhash.xxh64_intdigest(data) & 0xFFFFFFFF, PADDING_MAGIC, padding)

    def _fail(self, start: int, disk: int, index_bytes: int, padding: int = 0) -> None:
        """Undo a failed append (SegmentWriter's)."""
        raise NotImplementedError

    def append_mapped_zstd(self, data: Any, checksum: int, start: int) -> bool:
        """append_mapped for a compressed mutable segment (put_mapped_zstd, making room in its
        padding first when needed). False (nothing written) when maps cannot be used here or the
        frame does not fit the padding: the caller then appends with ``append_zstd``."""
        words = self.words
        size = len(data)
        if words[W_END] != start or size >= STORED_BELOW_BYTES or size > self.map_limit:
            return False
        disk, padding, index_bytes = words[W_DISK_BYTES], words[W_PADDING], words[W_INDEX_BYTES]
        need = disk + _STORED_HEAD_BYTES[size >= STORED_SMALL_BELOW] + size + STORED_TAIL_BYTES
        if need > disk + padding:
            return False  # the frame does not fit the padding: append_zstd moves the seek table
        if (  # pylint: disable=too-many-boolean-expressions
            need + SKIPPABLE_HEADER_BYTES > self._data_mapped
            or disk + SKIPPABLE_HEADER_BYTES + padding != self._table_at
            or disk < self._data_base
            or index_bytes + _TWO_RECORDS > self._index_mapped
            or index_bytes < self._index_base
            or words[W_SEQ] != self._seq
        ):
            if not self._make_padding_room(disk, padding, need + SKIPPABLE_HEADER_BYTES, index_bytes):
                return False
        return self.put_mapped_zstd(data, checksum, 1 << 62) >= 0

    def _make_padding_room(self, disk: int, padding: int, need: int, index_bytes: int) -> bool:
        """Map the padding frame of the compressed mutable segment (its disk blocks allocated up to
        past ``need`` first: see _make_room) and room past the committed end of its index."""
        if self.kind != KIND_ZSTD or self.data_fd < 0:
            return False
        seq = self.words[W_SEQ]
        if seq != self._seq:  # a file may have shrunk under the maps: map afresh
            self._drop_maps()
            self._seq = seq
        table_at = disk + SKIPPABLE_HEADER_BYTES + padding
        try:
            if need > self._data_mapped or table_at != self._table_at or disk < self._data_base:
                self._table_at = -1  # until the new map is made
                self._data_map, self._data_base, self._data_mapped = _map_padding(
                    self.data_fd, self._data_map, disk, need, table_at
                )
                self._table_at = table_at
            index_end = index_bytes + _TWO_RECORDS
            if index_end > self._index_mapped or index_bytes < self._index_base:  # inline: a hot path
                self._index_map, self._index_base, self._index_mapped = _grow(
                    self.index_fd, self._index_map, index_bytes, index_end, 1 << 62
                )
        except (OSError, ValueError) as exc:
            return self._maps_failed(exc)
        return True

    def _maps_failed(self, exc: OSError | ValueError) -> bool:
        """A map could not be made: drop the maps (this put takes ``pwrite``), and for good unless
        the error may pass (a full disk: the next put tries again). Returns False."""
        if not isinstance(exc, OSError) or exc.errno not in _PASSING_ERRORS:
            logger.info("%s: writing through maps is not possible here (%s); using pwrite", self.datadir, exc)
            self.map_limit = -1
        self._drop_maps()
        return False

    def _make_room(self, start: int, end: int, index_bytes: int, index_end: int) -> bool:
        """Allocate room past the committed ends of both files and map it (FORMAT.md "Raw segment").

        The room is allocated with ``fallocate`` before any store: a store through a map
        into a hole would meet a full disk as SIGBUS. It grows when a put needs it, by the
        bytes already used (at least ROOM_MIN_BYTES, at most ROOM_MAX_BYTES, never past
        MAX_DAT_FILE_SIZE).
        """
        if self.kind != KIND_RAW or self.data_fd < 0:
            return False
        seq = self.words[W_SEQ]
        if seq != self._seq:  # a file may have shrunk under the maps: map afresh
            self._drop_maps()
            self._seq = seq
        try:
            if end > self._data_mapped or start < self._data_base:
                if end > self.reserved:  # as append_raw does: then the room is carved from reserved blocks
                    self._reserve(start, end)
                self._data_map, self._data_base, self._data_mapped = _grow(
                    self.data_fd, self._data_map, start, end, max(self.max_size, end)
                )
            if index_end > self._index_mapped or index_bytes < self._index_base:  # inline: a hot path
                self._index_map, self._index_base, self._index_mapped = _grow(
                    self.index_fd, self._index_map, index_bytes, index_end, 1 << 62
                )
        except (OSError, ValueError) as exc:
            return self._maps_failed(exc)
        return True

    def _drop_maps(self) -> None:
        for mapped in (self._data_map, self._index_map):
            if mapped is not _NO_MAP:
                mapped.close()
        self._data_map = self._index_map = _NO_MAP
        self._data_base = self._index_base = self._data_mapped = self._index_mapped = 0
        self._table_at = -1

    def _reserve(self, start: int, end: int) -> None:
        """Reserve disk blocks for the raw mutable segment with ``fallocate`` keeping the file's
        size, so large puts skip block allocation (sealing cuts the file at its end, which frees
        what was not used).

        A segment this writer rotated into because the previous one filled up is reserved
        whole (up to MAX_DAT_FILE_SIZE, per RESERVE_STEP_BYTES) by its first put: before the
        sealed segment's background fsync starts, since an ``fallocate`` issued while that
        fsync commits the filesystem's journal waits for it (tens of ms on ext4), where plain
        writes into reserved blocks do not. Any other segment is reserved only once it holds
        a quarter of MAX_DAT_FILE_SIZE, so a small store never holds disk it does not use.
        """
        limit = max(self.max_size, end)
        if not self._rotated_full and end < limit // 4:
            self.reserved = limit // 4  # nothing to do before this
            return
        want = max(end, min(limit, start + RESERVE_STEP_BYTES))
        if os.fstat(self.data_fd).st_blocks * 512 >= want or preallocate(self.data_fd, start, want - start):
            self.reserved = want  # (a first test: another process may have reserved it already)
        else:
            self.reserved = 1 << 62  # not supported here: stop trying for this segment


def _has_hole(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of ``fd`` may hold a hole (room found on disk is one after a
    sparse copy of the datadir). One ``lseek``: cheaper than a ``fallocate``, which on ext4
    writes the inode through the journal even when every block is there already."""
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < end
    except (OSError, AttributeError):
        return True


_PASSING_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EINTR, errno.EAGAIN})  # the next put tries again


def _grow(fd: int, old: mmap.mmap, start: int, need: int, limit: int) -> tuple[mmap.mmap, int, int]:
    """Make room in ``fd`` from ``start`` (its committed end) to past ``need``, and map the file
    from ``start`` (rounded down to the map granularity) up to the room's end. Returns the map
    and the file offsets of its first byte and of its end. A map this short is cheap to drop
    (a map from offset 0 of a large file made every new room costly to map for each writer).

    Bytes of the file past its committed end are room made by an earlier call (maybe in
    another process): they are mapped as they are, after a ``fallocate`` over them if they
    hold a hole (a sparse copy of the datadir makes one). New room's blocks are allocated first
    (``fallocate``: a full disk is an error here, never a SIGBUS later), then it is written
    with zeros: stores through the map then land in pages already in the page cache,
    several times as fast as stores that fault each page in, preparation included.
    """
    need = max(need, start + 1)  # a map is never empty (an empty put at a page boundary)
    size = os.fstat(fd).st_size
    if size >= need:  # another writer made room already: map it, as much as a writer makes at once
        # A longer tail is no writer's room (a damaged or forged file, a sparse gigabytes): taken
        # whole, its holes would all get disk blocks here. Past this map it stays as it is, and
        # the seal (or recovery) cuts it.
        size = at = min(size, max(need, start + ROOM_MAX_BYTES))
        failed = allocate(fd, start, size - start) if _has_hole(fd, start, size) else 0
    else:
        at = max(start, size)
        size = max(need, min(need + min(max(need, ROOM_MIN_BYTES), ROOM_MAX_BYTES), limit))
        failed = allocate(fd, start, size - start)
    if failed:
        raise OSError(failed, f"fallocate: {os.strerror(failed)}")
    write_zeros(fd, at, size)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    new = mmap.mmap(fd, size - base, offset=base)
    if old is not _NO_MAP:
        old.close()
    return new, base, size


def _map_padding(fd: int, old: mmap.mmap, disk: int, need: int, table_at: int) -> tuple[mmap.mmap, int, int]:
    """Map a compressed segment's file from ``disk`` (its committed frames' end, rounded down to
    the map granularity) through the seek table's first 8 bytes (at ``table_at``), after giving
    the padding disk blocks up to past ``need`` (at least ROOM_MAX_BYTES past ``disk``, at most
    the table): the map, the file offset of its first byte, and where the blocks end.

    The padding frame's payload is a hole when its table was written (seekable.py skips it):
    ``fallocate`` first (a full disk is an error here, never a SIGBUS later), then zeros over
    the payload (its content is unspecified), as _grow does for room, so stores land in pages
    already in the page cache. Padding another writer allocated already is mapped as it is.

    Blocks are given to whole pages: the first store into a page of a shared map makes the
    filesystem give blocks to every hole of that page (a SIGBUS on a full disk), and a block is
    smaller than a page on some filesystems (ext4 of 1 KiB blocks). So the room ends at a page
    boundary (or the table), and the blocks of the padding before the table in the table's own
    page (its frame-size field is stored through the map) are allocated too."""
    ready = min(table_at, -(-max(need, disk + ROOM_MAX_BYTES) // mmap.PAGESIZE) * mmap.PAGESIZE)
    if _has_hole(fd, disk, ready):
        failed = allocate(fd, disk, ready - disk)
        if failed:
            raise OSError(failed, f"fallocate: {os.strerror(failed)}")
        write_zeros(fd, disk + SKIPPABLE_HEADER_BYTES, ready)
    if ready < table_at:  # the padding runs on past the room: its bytes in the table's page get blocks too
        table_page = max(ready, table_at - table_at % mmap.PAGESIZE)
        if table_page < table_at and _has_hole(fd, table_page, table_at):
            _allocate_zeros(fd, table_page, table_at)
    base = disk - disk % mmap.ALLOCATIONGRANULARITY
    new = mmap.mmap(fd, table_at + SKIPPABLE_HEADER_BYTES - base, offset=base)
    if old is not _NO_MAP:
        old.close()
    return new, base, ready


def _allocate_zeros(fd: int, start: int, end: int) -> None:
    """Give bytes [start, end) of ``fd`` disk blocks (a full disk is an OSError here, never a
    SIGBUS later) and write zeros over them (see _map_padding)."""
    failed = allocate(fd, start, end - start)
    if failed:
        raise OSError(failed, f"fallocate: {os.strerror(failed)}")
    write_zeros(fd, start, end)


__all__ = ["MAPPED_PUT_MAX_BYTES", "RESERVE_STEP_BYTES", "MappedWrites"]
