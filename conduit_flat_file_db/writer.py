"""The write side of a store: the mutable segment's descriptors and the commit protocol.

Every method of :class:`SegmentWriter` but ``close`` runs with the store's write
lock held; the store takes it. The protocol is FORMAT.md section 6: dirty flag up,
data (frames), [fdatasync], index records, [fdatasync], publish, dirty flag down.
The state page is the source of "where does the mutable segment end" for every
process; this object only caches descriptors for it.
"""

from __future__ import annotations

import atexit
import errno
import logging
import mmap
import os
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

from .fileio import pread_full, pwrite_all, pwritev_all
from .index import (
    FLAG_STORED,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    RECORD_BYTES,
    REC_BLOB,
    REC_FRAME,
    REC_SEAL,
    decode_records,
    encode_blob,
    encode_header,
    encode_record,
    encode_seal,
)
from .errors import FlatFileDbUnsafeAccessError
from .naming import INDEX_SUFFIX, MAX_SEGMENT_NUMBER, index_name, parse_name, segment_name, temp_name, temp_owner
from .blocks import allocate, maps_supported, preallocate
from .recovery import recover_segment
from .seal import reseal_segment, seal_problem, seal_recovered, sync_segment, write_seal
from .seekable import append_table_entries, padding_header, write_padding_and_table
from .segment import ROOM_MAX_BYTES, ROOM_MIN_BYTES, Tail, create_segment, frame_table_of, padding_for
from .segment_files import OPEN_WRITE, fsync_dir, open_data_file, open_regular
from .state import (
    W_DIRTY,
    W_DISK_BYTES,
    W_DURABLE_END,
    W_END,
    W_FRAMES,
    W_INDEX_BYTES,
    W_PADDING,
    W_SEGMENT,
    W_SEQ,
    W_SYNCED_BELOW,
    MutableView,
    SharedState,
)

logger = logging.getLogger("conduit_flat_file_db")
_NO_MAP = mmap.mmap(-1, mmap.PAGESIZE)  # stands in for a write map not made yet (its length counts as 0)

RESERVE_STEP_BYTES = 2**30  # segments larger than this reserve their disk blocks in steps this large
MAPPED_PUT_MAX_BYTES = 64 * 2**10
"""A put of at most this many bytes into a raw mutable segment, without fsync, is copied into
shared maps of its data and index files instead of being written with two ``pwrite`` calls
(FORMAT.md "Commit"). Larger blobs go through ``pwrite``: room for them would be written
twice (zeros, then the blob), and the two syscalls are a small part of their cost."""


def _view_of(number: int, tail: Tail) -> MutableView:
    return MutableView(number, tail.end, tail.index_bytes, tail.disk_bytes, tail.kind, tail.padding, tail.frames)


def _last_segment_error(number: int, whole_file: bool = False) -> FlatFileDbUnsafeAccessError:
    why = " (committing a whole file takes two more)" if whole_file else ""
    return FlatFileDbUnsafeAccessError(
        f"the store is at segment {number} and {MAX_SEGMENT_NUMBER} is the last segment number the format can "
        f"name (FORMAT.md \"Files\": n < 2**32): it cannot start another segment{why}. Every committed blob "
        "stays readable; copy the live ones into a new store to go on writing")


def _ends_in_seal(dir_fd: int, number: int, index_bytes: int) -> bool:
    """Whether the committed part (``index_bytes``) of segment ``number``'s index ends in a SEAL."""
    if index_bytes < HEADER_BYTES + RECORD_BYTES:
        return False
    fd = open_regular(dir_fd, index_name(number))
    try:
        records = decode_records(os.pread(fd, RECORD_BYTES, index_bytes - RECORD_BYTES)).records
    finally:
        os.close(fd)
    return bool(records) and records[-1].rtype == REC_SEAL


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SegmentWriter:  # pylint: disable=too-many-instance-attributes  # descriptors, frame-size cache, reservation
    """Appends to the mutable segment for one FlatFileDb instance (write lock held by the caller)."""

    def __init__(self, dir_fd: int, datadir: Path, state: SharedState, *, fsync: bool, new_kind: int) -> None:
        self.dir_fd = dir_fd
        self.datadir = datadir
        self.state = state
        self.words = state.words
        self.fsync = fsync
        self.new_kind = new_kind  # kind of segments this instance creates
        self.segment = -1
        self.kind = KIND_RAW
        self.path = ""
        self.data_fd = -1
        self.index_fd = -1
        self.sealed: list[int] = []  # sealed by this writer, not yet handed to take_sealed()
        # Frame sizes of the compressed mutable segment as far as its index's first
        # ``_sizes_upto`` bytes say, kept so a seek-table rewrite need not reread it all.
        self._sizes: list[tuple[int, int]] = []
        self._sizes_upto = 0
        self.max_size = 0  # the store's MAX_DAT_FILE_SIZE at the last prepare()
        self.reserved = 0  # the raw mutable data file needs no reservation below this (see _reserve)
        self._rotated_full = False  # this writer created the mutable segment because the last one was full
        # Shared writable maps of the raw mutable segment's data and index files, over their
        # allocated room (see append_mapped); valid while the state page's seq word equals ``_seq``:
        # every publish (rotation, recovery) and every cut of a file (mark_cut) changes it.
        self.map_limit = -1 if fsync or not maps_supported(dir_fd) else MAPPED_PUT_MAX_BYTES
        self._data_map = self._index_map = _NO_MAP
        self._data_base = self._index_base = 0  # file offset of each map's first byte
        self._data_mapped = self._index_mapped = 0  # file offset of each map's end
        self._seq = -1

    def _frame_sizes(self, index_bytes: int) -> list[tuple[int, int]]:
        """Sizes of the committed frames of the mutable segment (its index's first ``index_bytes``)."""
        if self._sizes_upto > index_bytes or self._sizes_upto < HEADER_BYTES:
            self._sizes, self._sizes_upto = [], HEADER_BYTES
        if self._sizes_upto < index_bytes:
            raw = pread_full(self.index_fd, index_bytes - self._sizes_upto, self._sizes_upto)
            self._sizes += frame_table_of(decode_records(raw).records).sizes()
            self._sizes_upto = index_bytes
        return self._sizes

    def take_sealed(self) -> list[int]:
        """Segments this writer sealed since the last call (for re-framing after the lock)."""
        sealed, self.sealed = self.sealed, []
        return sealed

    # -- recovery ---------------------------------------------------------------------

    def recover(self, power_loss_check: bool, may_defer: bool = False) -> None:
        """Full recovery of the store's newest segment (FORMAT.md "Recovery"); publishes the state.

        ``may_defer`` (on open): when the newest segment is sealed and the disk has no room for
        the next one, publish the sealed one and leave the dirty flag up instead of failing, so
        that a store on a full disk still opens to be read and to have segments deleted; the
        next writer creates the segment (or gets the ENOSPC).
        """
        state = self.state
        words = self.words
        data_numbers, index_numbers = self._list_segments()
        numbers = data_numbers | index_numbers
        created = not numbers
        if created:
            create_segment(self.dir_fd, 0, self.new_kind)
            numbers.add(0)
        newest = max(numbers)
        for orphan in sorted(index_numbers - data_numbers - {newest}):
            # A delete removes the data file first: an index alone is the rest of it.
            self._remove_regular(index_name(orphan), "record index", "left by an interrupted delete")
        check_from: int | None = None
        if power_loss_check and (state.fresh or not state.same_boot()):
            same_segment = not state.fresh and words[W_SEGMENT] == newest
            check_from = words[W_DURABLE_END] if same_segment else 0
        tail = recover_segment(self.dir_fd, newest, self.new_kind, check_from)
        if check_from is not None and not tail.sealed and not created and newest in index_numbers:
            # After a power loss (or with the state page lost) nothing tells how far puts got
            # before it: continue in a new segment, so a lost blob's offsets are never reused.
            # (A segment without an index never had a record: recovery gave it one just now.)
            tail = seal_recovered(self.dir_fd, newest)  # its SEAL counted: a last segment stays sealed
            data_numbers.discard(newest)  # just checked, sealed and fsynced
        deferred = False
        if tail.sealed and newest < MAX_SEGMENT_NUMBER:
            try:
                newest, tail = self._create_next(newest)
            except OSError as exc:
                if not may_defer or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                logger.warning("%s: no room to create the segment after sealed segment %d (%s); the next writer "
                               "creates it", self.datadir, newest, exc)
                deferred = True
        elif tail.sealed:  # nothing can follow it: published as it is, readable, refused to writers (resync)
            logger.warning("%s: %s", self.datadir, _last_segment_error(newest))
        if power_loss_check:
            self._settle_sealed(sorted(n for n in data_numbers if n < newest), newest)
        if check_from is not None or state.fresh:
            words[W_DURABLE_END] = tail.end if check_from is not None else 0
        was_fresh = state.fresh
        state.initialise()
        if was_fresh:
            state.persist(self.dir_fd)
        state.publish(_view_of(newest, tail))
        words[W_DIRTY] = int(deferred)  # deferred: every segment below the sealed one is sealed too

    def _list_segments(self) -> tuple[set[int], set[int]]:
        """Numbers of the segments with a data file, and with an index; removes the scratch files
        of processes that are gone (recovery step 1)."""
        data_numbers: set[int] = set()
        index_numbers: set[int] = set()
        for name in os.listdir(self.dir_fd):
            owner = temp_owner(name)
            if owner is not None:
                if owner != os.getpid() and not _pid_alive(owner):
                    self._remove_regular(name, "scratch file", "left by an interrupted operation")
                continue
            parsed = parse_name(name)
            if parsed is not None:
                (index_numbers if parsed[1] == INDEX_SUFFIX else data_numbers).add(parsed[0])
        return data_numbers, index_numbers

    def _remove_regular(self, name: str, what: str, why: str) -> None:
        """Remove a leftover of ours, but only a regular file: a directory, FIFO or symlink of
        that name is not something the store wrote, so it is left alone (and verify notes it)
        rather than failing the open with an IsADirectoryError."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("%s: %s is named like a %s but is not a regular file; left alone",
                               self.datadir, name, what)
                return
            logger.warning("%s: removing %s %s %s", self.datadir, what, name, why)
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass  # removed meanwhile (another opener of the store)

    def _settle_sealed(self, sealed: list[int], mutable: int) -> None:
        """On open: make whole and durable every sealed segment not known to be fsynced.

        Those are the segments from word W_SYNCED_BELOW on (all of them when the state
        page is new): their fsync runs in the background after the seal, and a process
        may have died before it. After a power loss they are checked (in full, or by
        size only when the page is new) and a damaged one is cut back to its last good
        blob and sealed again; then each is fsynced (cheap when already on disk).
        """
        state = self.state
        after_power_loss = state.fresh or not state.same_boot()
        below = 0 if state.fresh else self.words[W_SYNCED_BELOW]
        for number in sealed:
            if number < below:
                continue
            if after_power_loss:
                why = seal_problem(self.dir_fd, number, full=not state.fresh)
                if why is not None:
                    reseal_segment(self.dir_fd, number, why)
            sync_segment(self.dir_fd, number)
        self.words[W_SYNCED_BELOW] = mutable

    def _create_next(self, sealed: int) -> tuple[int, Tail]:
        """Create segment sealed+1, removing leftovers of a rotation that died half-way."""
        new = sealed + 1
        for name in (index_name(new), segment_name(new, False), segment_name(new, True)):
            try:
                os.unlink(name, dir_fd=self.dir_fd)  # nothing committed can be in them: no SEAL
            except FileNotFoundError:
                pass
        return new, create_segment(self.dir_fd, new, self.new_kind)

    # -- the mutable segment --------------------------------------------------------------

    def prepare(self, max_size: int) -> int:
        """Sync with the mutable segment, rotate it when full; returns where the next blob starts."""
        words = self.words
        self.max_size = max_size
        if words[W_DIRTY] or words[W_SEGMENT] != self.segment:
            self.resync()
        end: int = words[W_END]
        if end >= max_size and end:
            self.rotate()
            self._rotated_full, self.reserved = True, 0  # a store that fills segments: reserve the next whole
            end = 0
        return end

    def resync(self) -> None:
        """Repair what a dead writer left (dirty flag) and (re)open the mutable segment."""
        words = self.words
        if words[W_DIRTY]:
            logger.warning("%s: a writer stopped mid-operation; recovering the mutable segment", self.datadir)
            self.recover(power_loss_check=False)
        number = words[W_SEGMENT]
        if number != self.segment or self.data_fd < 0:
            self.close()
            if number == MAX_SEGMENT_NUMBER and _ends_in_seal(self.dir_fd, number, words[W_INDEX_BYTES]):
                raise _last_segment_error(number)  # segment stays -1: every write comes back here
            self.data_fd, self.kind = open_data_file(self.dir_fd, number, OPEN_WRITE)
            self.index_fd = os.open(index_name(number), OPEN_WRITE, dir_fd=self.dir_fd)
            self.segment = number
            self.path = str(self.datadir / segment_name(number, self.kind == KIND_ZSTD))
            self._sizes, self._sizes_upto = [], 0
            # Another process may have reserved the segment already: its blocks say so.
            self.reserved = os.fstat(self.data_fd).st_blocks * 512 if self.kind == KIND_RAW else 0
            self._rotated_full = False

    def rotate(self) -> int:
        """Seal the mutable segment and start the next one; returns the sealed segment's number.

        The dirty flag stays up for the whole rotation, so a writer that dies in it
        is repaired by the next one (recovery finds the SEAL and creates the next
        segment afresh).
        """
        words = self.words
        old = self.segment
        if old >= MAX_SEGMENT_NUMBER:  # refused before the seal: the segment stays mutable and readable
            raise _last_segment_error(old)
        words[W_DIRTY] = 1
        self._seal_locked()
        new, tail = self._create_next(old)
        words[W_DURABLE_END] = 0
        self.state.publish(_view_of(new, tail))
        words[W_DIRTY] = 0
        self.resync()
        self.sealed.append(old)
        logger.debug("%s: sealed segment %d, mutable segment is now %d", self.datadir, old, new)
        return old

    def _seal_locked(self) -> None:
        """Append the SEAL record to the mutable segment (dirty flag already up).

        No fsync here: the segment becomes durable in the background (SealSyncer) and
        recovery after a power loss checks segments not yet recorded as durable.
        """
        words = self.words
        index_bytes = words[W_INDEX_BYTES]
        frames = words[W_FRAMES] if self.kind == KIND_ZSTD else 0
        # The mutable index holds BLOB records and, compressed, one FRAME record per frame:
        # count them from sizes, not by decoding the whole index under the lock.
        blobs = (index_bytes - HEADER_BYTES) // RECORD_BYTES - frames
        tail = Tail(self.kind, words[W_END], index_bytes, words[W_DISK_BYTES], blobs, False, 0, frames)
        write_seal(self.data_fd, self.index_fd, self.kind, tail,
                   self._frame_sizes(index_bytes) if self.kind == KIND_ZSTD else [])

    def commit_sealed_file(self, source: str, kind: int, size: int, checksum: int,  # pylint: disable=too-many-arguments
                           flags: int, disk_size: int) -> int:
        """Make the file ``source`` (a name in the datadir, or an absolute path on its
        filesystem) a new sealed segment holding one blob of ``size`` uncompressed bytes;
        returns its number. Write lock held.

        The mutable segment n is sealed first (one without any record is removed at the end), the
        file becomes n+1 by rename, with its index (one BLOB and a SEAL record) written
        before the rename, and n+2 becomes the mutable segment. A crash at any step
        leaves either the file where it was or a whole sealed segment (FORMAT.md 6).
        """
        words = self.words
        old = self.segment
        if old + 2 > MAX_SEGMENT_NUMBER:  # the file becomes old+1, and old+2 the mutable segment
            raise _last_segment_error(old, whole_file=True)
        # Empty by its records, not by its bytes: a segment of empty blobs has zero bytes and
        # acknowledged locations, so it must be sealed and kept like any other.
        was_empty = words[W_INDEX_BYTES] <= HEADER_BYTES
        words[W_DIRTY] = 1
        self._seal_locked()
        new = old + 1
        index = encode_header(new, kind, time.time_ns()) + encode_record(REC_BLOB, flags, 0, size, checksum) \
            + encode_seal(size, 1, disk_size)
        os.rename(self._write_aside(index_name(new), index), index_name(new), src_dir_fd=self.dir_fd,
                  dst_dir_fd=self.dir_fd)
        # Segment n+2 before the rename, not after: creating it is the step a full disk refuses, and
        # an error must leave the caller's file where it was. Once renamed, the blob is committed and
        # the call must not fail. (A crash in between leaves a lone index of n+1: recovery removes it.)
        try:
            mutable, tail = self._create_next(new)
        except BaseException:
            os.unlink(index_name(new), dir_fd=self.dir_fd)
            raise
        os.rename(source, segment_name(new, kind == KIND_ZSTD), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        fsync_dir(self.dir_fd)
        words[W_DURABLE_END] = 0
        self.state.publish(_view_of(mutable, tail))
        words[W_DIRTY] = 0
        if was_empty:
            for name in (segment_name(old, False), segment_name(old, True), index_name(old)):
                try:
                    os.unlink(name, dir_fd=self.dir_fd)  # data first: a lone index is cleaned up on open
                except FileNotFoundError:
                    pass
            self.state.bump_epoch()
        else:
            self.sealed.append(old)
        self.sealed.append(new)
        self.resync()
        return new

    def _write_aside(self, name: str, payload: bytes) -> str:
        """Write ``payload`` to a new scratch file for ``name`` and fsync it; returns the scratch name.
        On failure (a full disk) the scratch file is removed."""
        tmp = temp_name(name)
        fd = os.open(tmp, OPEN_WRITE | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.dir_fd)
        try:
            try:
                pwrite_all(fd, payload, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(tmp, dir_fd=self.dir_fd)
            raise
        return tmp

    def sync(self) -> None:
        """fdatasync the mutable segment; record the durable end."""
        os.fdatasync(self.data_fd)
        os.fdatasync(self.index_fd)
        self.words[W_DURABLE_END] = self.words[W_END]

    def _fail(self, start: int, disk: int, index_bytes: int, padding: int = 0) -> None:
        """Undo a failed append (a full disk, mostly); leave the dirty flag up when even that fails.

        A raw segment is cut back. A compressed one gets back the padding frame and seek table
        it had before (``padding`` bytes after its ``disk`` bytes of frames), written where they
        were, so no new disk block is needed: cutting them off instead would leave the segment
        for recovery to lay out again, which needs blocks that a full disk does not have (and
        every writer, delete and open would run that recovery first, and fail).
        """
        try:
            if self.kind == KIND_ZSTD:
                write_padding_and_table(self.data_fd, disk, self._frame_sizes(index_bytes), padding)
            else:
                os.ftruncate(self.data_fd, start)
            os.ftruncate(self.index_fd, index_bytes)
        except OSError:
            logger.exception("%s: could not undo a failed append; the next writer will recover the segment",
                             self.datadir)
            return
        self.state.mark_cut()  # the files shrank: every writer maps them afresh
        self.words[W_DIRTY] = 0

    def append_raw(self, data: Any, buffers: Sequence[Any] | None, start: int, end: int, records: bytes) -> None:
        """Commit blob bytes (``data``, or the concatenation of ``buffers``) at ``start`` in a raw segment."""
        words = self.words
        index_bytes = words[W_INDEX_BYTES]
        if end > self.reserved:
            self._reserve(start, end)
        words[W_DIRTY] = 1
        try:
            if buffers is None:
                written = os.pwrite(self.data_fd, data, start)
                if written != end - start:  # short write: finish it
                    pwrite_all(self.data_fd, memoryview(data).cast("B")[written:], start + written)
            else:
                pwritev_all(self.data_fd, buffers, start)
            if self.fsync:
                self._write_records(records, index_bytes, end)
            elif os.pwrite(self.index_fd, records, index_bytes) != len(records):
                pwrite_all(self.index_fd, records, index_bytes)  # short write: write it whole again
        except BaseException:
            self._fail(start, start, index_bytes)
            raise
        words[W_INDEX_BYTES] = index_bytes + len(records)
        words[W_DISK_BYTES] = end
        words[W_END] = end  # last: readers take W_END as "committed"
        words[W_DIRTY] = 0

    def put_mapped(self, data: Any, checksum: int, max_size: int) -> int:
        """The whole commit of a small blob when nothing needs preparing and the maps have room:
        returns where it starts, or -1 (nothing written) for the general path to take over."""
        words = self.words
        start = words[W_END]
        end = start + len(data)
        index_bytes = words[W_INDEX_BYTES]
        index_end = index_bytes + RECORD_BYTES
        data_base, index_base = self._data_base, self._index_base
        # One test for everything that sends a put to the general path (this is the hot path).
        # pylint: disable-next=too-many-boolean-expressions
        if end > self._data_mapped or index_end > self._index_mapped or start >= max_size or start < data_base \
                or index_bytes < index_base or words[W_DIRTY] or words[W_SEGMENT] != self.segment \
                or words[W_SEQ] != self._seq:
            return -1
        words[W_DIRTY] = 1
        self._data_map[start - data_base:end - data_base] = data
        self._index_map[index_bytes - index_base:index_end - index_base] = encode_blob(start, end - start, checksum)
        words[W_INDEX_BYTES] = index_end
        words[W_DISK_BYTES] = end
        words[W_END] = end  # last: readers take W_END as "committed"
        words[W_DIRTY] = 0
        return start

    def append_mapped(self, data: Any, checksum: int, start: int, end: int) -> bool:
        """Commit one small blob at ``start`` (the committed end) of a raw mutable segment through
        the maps, making room first when needed. False (nothing written) when maps cannot be
        used here: the caller then appends with ``append_raw``, which reports a full disk."""
        if self.words[W_END] != start:  # not the committed end: put_mapped would commit elsewhere
            return False
        index_bytes = self.words[W_INDEX_BYTES]
        if end > self._data_mapped or index_bytes + RECORD_BYTES > self._index_mapped or start < self._data_base \
                or index_bytes < self._index_base or self.words[W_SEQ] != self._seq:
            if not self._make_room(start, end, index_bytes, index_bytes + RECORD_BYTES):
                return False
        return self.put_mapped(data, checksum, 1 << 62) >= 0

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
                    self.data_fd, self._data_map, start, end, max(self.max_size, end))
            if index_end > self._index_mapped or index_bytes < self._index_base:
                self._index_map, self._index_base, self._index_mapped = _grow(
                    self.index_fd, self._index_map, index_bytes, index_end, 1 << 62)
        except (OSError, ValueError) as exc:
            if not isinstance(exc, OSError) or exc.errno not in _PASSING_ERRORS:
                logger.info("%s: writing through maps is not possible here (%s); using pwrite", self.datadir, exc)
                self.map_limit = -1
            self._drop_maps()
            return False
        return True

    def _drop_maps(self) -> None:
        for mapped in (self._data_map, self._index_map):
            if mapped is not _NO_MAP:
                mapped.close()
        self._data_map = self._index_map = _NO_MAP
        self._data_base = self._index_base = self._data_mapped = self._index_mapped = 0

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

    def append_zstd(self, frames: Sequence[bytes], dsizes: Sequence[int], start: int, end: int,  # pylint: disable=too-many-arguments
                    blob_records: bytes, *, stored: bool = False) -> None:
        """Commit frames holding uncompressed bytes [start, end) and their blob records."""
        words = self.words
        index_bytes = words[W_INDEX_BYTES]
        disk = words[W_DISK_BYTES]
        padding = words[W_PADDING]
        count = words[W_FRAMES]
        sizes = [(len(f), d) for f, d in zip(frames, dsizes)]
        used = sum(c for c, _ in sizes)
        records = []
        u_at, c_at = start, disk
        for csize, dsize in sizes:
            records.append(encode_record(REC_FRAME, FLAG_STORED if stored else 0, u_at, (csize << 32) | dsize, c_at))
            u_at += dsize
            c_at += csize
        records.append(blob_records)
        payload = b"".join(records)
        words[W_DIRTY] = 1
        try:
            if used <= padding:
                pwritev_all(self.data_fd, list(frames) + [padding_header(padding - used)], disk)
                new_padding = append_table_entries(self.data_fd, disk, padding, count, sizes)
            else:
                # Out of reserved room: the seek table moves; rewrite it whole, with more room.
                all_sizes = self._frame_sizes(index_bytes) + sizes
                new_padding = padding_for(disk + used, 0)
                pwritev_all(self.data_fd, frames, disk)
                write_padding_and_table(self.data_fd, disk + used, all_sizes, new_padding)
            self._write_records(payload, index_bytes, end)
        except BaseException:
            self._fail(start, disk, index_bytes, padding)
            raise
        if self._sizes_upto == index_bytes:
            self._sizes += sizes
            self._sizes_upto = index_bytes + len(payload)
        words[W_INDEX_BYTES] = index_bytes + len(payload)
        words[W_DISK_BYTES] = disk + used
        words[W_PADDING] = new_padding
        words[W_FRAMES] = count + len(frames)
        words[W_END] = end
        words[W_DIRTY] = 0

    def _write_records(self, records: bytes, index_bytes: int, end: int) -> None:
        if self.fsync:
            os.fdatasync(self.data_fd)  # data first: a durable record never points at lost bytes
        written = os.pwrite(self.index_fd, records, index_bytes)
        if written != len(records):
            pwrite_all(self.index_fd, memoryview(records)[written:], index_bytes + written)
        if self.fsync:
            os.fdatasync(self.index_fd)
            self.words[W_DURABLE_END] = end

    def close(self) -> None:
        """Close the mutable segment's descriptors and maps."""
        self._drop_maps()
        for fd in (self.data_fd, self.index_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.index_fd = -1
        self.segment = -1


def _has_hole(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of ``fd`` may hold a hole (room found on disk is one after a
    sparse copy of the datadir). One ``lseek``: cheaper than a ``fallocate``, which on ext4
    writes the inode through the journal even when every block is there already."""
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < end
    except (OSError, AttributeError):
        return True


_ZEROS = bytes(256 * 2**10)  # written (repeated) into new room
_PASSING_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EINTR, errno.EAGAIN})  # the next put tries again


def _grow(fd: int, old: mmap.mmap, start: int, need: int, limit: int) -> tuple[mmap.mmap, int, int]:
    """Make room in ``fd`` from ``start`` (its committed end) to past ``need``, and map the file
    from ``start`` (rounded down to the map granularity) up to the room's end. Returns the map
    and the file offsets of its first byte and of its end. A map this short is cheap to drop
    (a map from offset 0 of a large file cost each writer up to 0.4 ms per new room).

    Bytes of the file past its committed end are room made by an earlier call (maybe in
    another process): they are mapped as they are, after a ``fallocate`` over them if they
    hold a hole (a sparse copy of the datadir makes one). New room's blocks are allocated first
    (``fallocate``: a full disk is an error here, never a SIGBUS later), then it is written
    with zeros: stores through the map then land in pages already in the page cache, about
    four times as fast as stores that fault each page in (0.3 us per KiB here against 1.3 us,
    both including the preparation).
    """
    need = max(need, start + 1)  # a map is never empty (an empty put at a page boundary)
    size = os.fstat(fd).st_size
    if size >= need:  # another writer made room already: map it
        at = size
        failed = allocate(fd, start, size - start) if _has_hole(fd, start, size) else 0
    else:
        at = max(start, size)
        size = max(need, min(need + min(max(need, ROOM_MIN_BYTES), ROOM_MAX_BYTES), limit))
        failed = allocate(fd, start, size - start)
    if failed:
        raise OSError(failed, f"fallocate: {os.strerror(failed)}")
    while at < size:
        chunk = min(size - at, len(_ZEROS) * 16)
        whole, part = divmod(chunk, len(_ZEROS))
        at += os.pwritev(fd, [_ZEROS] * whole + [memoryview(_ZEROS)[:part]], at)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    new = mmap.mmap(fd, size - base, offset=base)
    if old is not _NO_MAP:
        old.close()
    return new, base, size


_IDLE_SECONDS = 1.0  # a sync thread with nothing to do for this long ends; the next seal starts another


class SealSyncer:
    """Makes sealed segments durable in a background thread, then records that in the state page.

    A seal writes the SEAL record and nothing more; fsyncing the segment (about 0.1 s
    for 128 MiB on this project's test machine) would stall every writer if done
    under the write lock, and the sealing writer if done in its thread. This thread
    fsyncs each sealed segment, then raises word W_SYNCED_BELOW; after a power loss,
    recovery checks the segments at or above it (GUARANTEES.md, "Durability").

    One per store instance. The thread starts on a request and ends after a second
    with nothing to do; ``close()`` (and interpreter exit) waits for pending work.
    A failed fsync is sticky: the word is never raised again by this instance and
    every ``wait`` returns the error. A forked child starts its own thread.
    """

    def __init__(self, dir_fd: int, words: Any) -> None:
        self._dir_fd = dir_fd
        self._words = words
        self._reset()
        _LIVE_SYNCERS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._target = self._words[W_SYNCED_BELOW]  # sync every segment below this
        self._done = self._target  # requests up to here are finished
        self._failed: OSError | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    def request(self, below: int) -> None:
        """Make every segment numbered below ``below`` (all sealed) durable soon."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            if below <= self._target or self._closing:
                return
            self._target = below
            if self._thread is not None:
                self._cond.notify_all()
                return
            thread = threading.Thread(target=self._run, name="ffdb-seal-sync", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no new thread now (interpreter exiting, thread limit): sync here
                pass
            else:
                self._thread = thread
                return
        self._finish(below, self._sync(below))

    def wait(self, below: int) -> OSError | None:
        """Wait until what was requested below ``below`` is done; returns the error of a failed fsync, if any."""
        if self._pid != os.getpid():
            return None
        with self._cond:
            while self._done < min(below, self._target) and self._thread is not None:
                self._cond.wait()
            return self._failed

    def close(self) -> None:
        """Finish every request, then stop the thread."""
        if self._pid != os.getpid():
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._done >= self._target and not self._closing:
                    self._cond.wait(_IDLE_SECONDS)
                if self._done >= self._target:
                    self._thread = None
                    self._cond.notify_all()
                    return
                target = self._target
            self._finish(target, self._sync(target))

    def _finish(self, target: int, error: OSError | None) -> None:
        with self._cond:
            self._done = max(self._done, target)
            self._failed = self._failed or error
            self._cond.notify_all()

    def _sync(self, below: int) -> OSError | None:
        """fsync segments from the confirmed mark up to ``below``, confirming each as it goes, so a
        writer waiting for an early one is not held up by a large one after it."""
        words = self._words
        try:
            for number in range(words[W_SYNCED_BELOW], below):
                if sync_segment(self._dir_fd, number) < 2:
                    fsync_dir(self._dir_fd)  # a deleted segment must stay deleted before it counts as done
                with self._cond:
                    if self._failed is None and words[W_SYNCED_BELOW] < number + 1:
                        words[W_SYNCED_BELOW] = number + 1  # no lock: a racing lower value only means more checks
                    self._done = max(self._done, number + 1)
                    self._cond.notify_all()
        except OSError as exc:
            logger.error("fsync of a sealed segment failed; this store no longer confirms sealed segments as "
                         "durable (they are checked after a power loss): %s", exc)
            return exc
        return None


_LIVE_SYNCERS: "weakref.WeakSet[SealSyncer]" = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """A process that exits with stores open still gets their sealed segments fsynced."""
    for syncer in list(_LIVE_SYNCERS):
        syncer.close()
