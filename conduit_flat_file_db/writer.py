"""The write side of a store: the mutable segment's descriptors and the commit protocol.

Every method of :class:`SegmentWriter` but ``close`` runs with the store's write
lock held; the store takes it. The protocol is FORMAT.md "Protocols", "Commit": dirty flag up,
data (frames), [fdatasync], index records, [fdatasync], publish, dirty flag down.
The state page is the source of "where does the mutable segment end" for every
process; this object only caches descriptors for it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .fileio import pread_full, pwrite_all, pwritev_all
from .frames import SKIPPABLE_HEADER_BYTES
from .index import (
    FLAG_STORED,
    HEADER_BYTES,
    INDEX_VERSION,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    decode_header,
    decode_records,
    encode_frame,
    encode_header,
    encode_record,
    encode_seal,
)
from .naming import MAX_SEGMENT_NUMBER, index_name, segment_name, temp_name
from .seal import write_seal
from .seekable import (
    ENTRY_BYTES,
    append_table_entries,
    listed_frames,
    pack_entries,
    padding_header,
    unpack_entries,
    write_padding_and_entries,
)
from .segment import MUTABLE_FRAMES_MAX, Tail, frame_table_of, padding_for
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
    SharedState,
)
from .write_maps import MappedWrites
from .writer_recovery import WriterRecovery, last_segment_error

logger = logging.getLogger("conduit_flat_file_db")


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


class SegmentWriter(MappedWrites, WriterRecovery):  # pylint: disable=too-many-instance-attributes  # descriptors, frame-size cache
    """Appends to the mutable segment for one FlatFileDb instance (write lock held by the caller)."""

    def __init__(
        self,
        dir_fd: int,
        datadir: Path,
        state: SharedState,
        *,
        fsync: bool,
        new_kind: int,
        new_version: int = INDEX_VERSION,
    ) -> None:
        self.dir_fd = dir_fd
        self.datadir = datadir
        self.state = state
        self.words = state.words
        self.fsync = fsync
        self.new_kind = new_kind  # kind of segments this instance creates
        self.new_version = new_version  # index version of the segments this instance creates
        self.version = INDEX_VERSION  # index version of the mutable segment
        self.segment = -1
        self.kind = KIND_RAW
        self.path = ""
        self.data_fd = -1
        self.index_fd = -1
        self.sealed: list[int] = []  # sealed by this writer, not yet handed to take_sealed()
        self.lost: list[int] = []
        self.max_size = 0  # the store's MAX_DAT_FILE_SIZE at the last prepare()
        self._rotated_full = False  # this writer created the mutable segment because the last one was full
        super().__init__(dir_fd, fsync)

    def _frame_entries(self, index_bytes: int) -> bytearray:
        """Packed seek-table entries of the committed frames of the mutable segment (its index's
        first ``index_bytes``)."""
        seq = self.words[W_SEQ]
        if self._entries_upto > index_bytes or self._entries_upto < HEADER_BYTES or self._entries_seq != seq:
            # (a recovery or a cut changes the seq word: records it cut may have been written again)
            self._entries, self._entries_upto, self._entries_seq = bytearray(), HEADER_BYTES, seq
        if self._entries_upto < index_bytes:
            raw = pread_full(self.index_fd, index_bytes - self._entries_upto, self._entries_upto)
            self._entries += pack_entries(frame_table_of(decode_records(raw).records).sizes())
            self._entries_upto = index_bytes
        return self._entries

    def _frame_sizes(self, index_bytes: int) -> list[tuple[int, int]]:
        """Sizes of the committed frames of the mutable segment (its index's first ``index_bytes``)."""
        return unpack_entries(self._frame_entries(index_bytes))

    def take_sealed(self) -> list[int]:
        """Segments this writer sealed since the last call (for re-framing after the lock)."""
        sealed, self.sealed = self.sealed, []
        return sealed

    # -- the mutable segment --------------------------------------------------------------

    def prepare(self, max_size: int) -> int:
        """Sync with the mutable segment, rotate it when full (``max_size`` bytes, or compressed and
        MUTABLE_FRAMES_MAX frames: empty or tiny blobs); returns where the next blob starts."""
        words = self.words
        self.max_size = max_size
        if words[W_DIRTY] or words[W_SEGMENT] != self.segment:
            self.resync()
        end: int = words[W_END]
        if (end >= max_size and end) or words[W_FRAMES] >= MUTABLE_FRAMES_MAX:  # (a raw segment has no frames)
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
                raise last_segment_error(number)  # segment stays -1: every write comes back here
            self.data_fd, self.kind = open_data_file(self.dir_fd, number, OPEN_WRITE)
            self.index_fd = os.open(index_name(number), OPEN_WRITE, dir_fd=self.dir_fd)
            self.version = decode_header(pread_full(self.index_fd, HEADER_BYTES, 0), index_name(number)).version
            self.segment = number
            self.path = str(self.datadir / segment_name(number, self.kind == KIND_ZSTD))
            # Empty, for the index up to its header: the puts of a new segment keep them whole.
            self._entries, self._entries_upto, self._entries_seq = bytearray(), HEADER_BYTES, words[W_SEQ]
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
            raise last_segment_error(old)
        words[W_DIRTY] = 1
        self._seal_locked()
        new, tail = self._create_next(old)
        words[W_DURABLE_END] = 0
        self.state.publish(tail.view(new))
        words[W_DIRTY] = 0
        self.resync()
        self.sealed.append(old)
        logger.debug("%s: sealed segment %d, mutable segment is now %d", self.datadir, old, new)
        return old

    def ensure_version(self, version: int) -> None:
        """Make the mutable segment's index at least ``version`` (after prepare): the header of an
        empty segment is written again; a segment with records is sealed and the next one, made
        with ``new_version``, takes its place. Records are never written under an older header."""
        if self.version >= version:
            return
        if self.words[W_INDEX_BYTES] <= HEADER_BYTES:
            pwrite_all(self.index_fd, encode_header(self.segment, self.kind, time.time_ns(), version), 0)
            os.fsync(self.index_fd)
            self.version = version
        else:
            self.rotate()

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
        write_seal(
            self.data_fd,
            self.index_fd,
            self.kind,
            tail,
            self._frame_sizes(index_bytes) if self.kind == KIND_ZSTD else [],
        )

    def commit_sealed_file(
        self,
        source: str,
        kind: int,
        size: int,
        checksum: int,  # pylint: disable=too-many-arguments
        flags: int,
        disk_size: int,
    ) -> int:
        """Make the file ``source`` (a name in the datadir, or an absolute path on its
        filesystem) a new sealed segment holding one blob of ``size`` uncompressed bytes;
        returns its number. Write lock held.

        The mutable segment n is sealed first (one without any record is removed at the end), the
        file becomes n+1 by rename, with its index (one BLOB and a SEAL record) written
        before the rename, and n+2 becomes the mutable segment. A crash at any step
        leaves either the file where it was or a whole sealed segment (FORMAT.md "Commit of a whole file").
        """
        words = self.words
        old = self.segment
        if old + 2 > MAX_SEGMENT_NUMBER:  # the file becomes old+1, and old+2 the mutable segment
            raise last_segment_error(old, whole_file=True)
        # Empty by its records, not by its bytes: a segment of empty blobs has zero bytes and
        # acknowledged locations, so it must be sealed and kept like any other.
        was_empty = words[W_INDEX_BYTES] <= HEADER_BYTES
        words[W_DIRTY] = 1
        self._seal_locked()
        new = old + 1
        index = (
            encode_header(new, kind, time.time_ns())
            + encode_record(REC_BLOB, flags, 0, size, checksum)
            + encode_seal(size, 1, disk_size)
        )
        os.rename(
            self._write_aside(index_name(new), index), index_name(new), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd
        )
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
        self.state.publish(tail.view(mutable))
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
        """fdatasync the mutable segment (its seek table brought up to date first); record the durable end.
        A table that cannot be brought up to date (a full disk) raises its error, after the fsyncs:
        the blobs do not need it (recovery lays it out from the index)."""
        try:
            self.list_frames()
        finally:
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
                self._put_padding_back(disk, padding, index_bytes)
            else:
                os.ftruncate(self.data_fd, start)
            os.ftruncate(self.index_fd, index_bytes)
        except OSError:
            logger.exception(
                "%s: could not undo a failed append; the next writer will recover the segment", self.datadir
            )
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

    def append_zstd(
        self,
        frames: Sequence[bytes],
        dsizes: Sequence[int],
        start: int,
        end: int,  # pylint: disable=too-many-arguments
        blob_records: bytes,
        *,
        stored: bool = False,
    ) -> None:
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
            records.append(encode_frame(FLAG_STORED if stored else 0, u_at, csize, dsize, c_at))
            u_at += dsize
            c_at += csize
        records.append(blob_records)
        payload = b"".join(records)
        words[W_DIRTY] = 1
        try:
            if used <= padding:
                new_padding = padding - used
                pwritev_all(self.data_fd, list(frames) + [padding_header(new_padding)], disk)
                self._update_table(disk + used, new_padding, count, index_bytes, pack_entries(sizes))
            else:
                # Out of padding: the seek table moves; rewrite it whole, with a new padding frame.
                # The table where it is lists every frame first: should the move fail, it is written
                # there again whole (the frames may have overwritten it) in the bytes it had.
                if listed_frames(self.data_fd, disk + SKIPPABLE_HEADER_BYTES + padding, count) != count:
                    self._update_table(disk, padding, count, index_bytes, b"")
                all_entries = self._frame_entries(index_bytes) + pack_entries(sizes)
                new_padding = padding_for(disk + used, 0)
                pwritev_all(self.data_fd, frames, disk)
                write_padding_and_entries(self.data_fd, disk + used, all_entries, new_padding)
            self._write_records(payload, index_bytes, end)
        except BaseException:
            self._fail(start, disk, index_bytes, padding)
            raise
        if self._entries_upto == index_bytes:
            self._entries += pack_entries(sizes)
            self._entries_upto = index_bytes + len(payload)
        words[W_INDEX_BYTES] = index_bytes + len(payload)
        words[W_DISK_BYTES] = disk + used
        words[W_PADDING] = new_padding
        words[W_FRAMES] = count + len(frames)
        words[W_END] = end
        words[W_DIRTY] = 0

    def _put_padding_back(self, disk: int, padding: int, index_bytes: int) -> None:
        """(_fail, compressed) The padding frame of ``padding`` payload bytes at ``disk`` again, and
        the seek table after it: the table is left as it is when it is still there (it may lag:
        written again whole it would be longer, and a full disk may have no block for that),
        else written again whole, where it was."""
        if listed_frames(self.data_fd, disk + SKIPPABLE_HEADER_BYTES + padding, self.words[W_FRAMES]) is not None:
            pwrite_all(self.data_fd, padding_header(padding), disk)
        else:
            write_padding_and_entries(self.data_fd, disk, self._frame_entries(index_bytes), padding)

    def _update_table(self, frames_end: int, padding: int, count: int, index_bytes: int, new: bytes) -> None:
        """Make the seek table (where it is, before a padding frame of ``padding`` payload bytes at
        ``frames_end``) list every frame: the ``count`` frames the index's first ``index_bytes``
        commit, then those of the entries ``new`` (dirty flag up). A table that is not one the
        store wrote is laid out again whole."""
        table_at = frames_end + SKIPPABLE_HEADER_BYTES + padding
        listed = listed_frames(self.data_fd, table_at, count)
        entries = self._frame_entries(index_bytes)
        if listed is None:
            write_padding_and_entries(self.data_fd, frames_end, entries + new, padding)
        else:
            append_table_entries(self.data_fd, frames_end, padding, listed, entries[listed * ENTRY_BYTES :] + new)
        self.unlisted = 0

    def list_frames(self, raise_errors: bool = True) -> None:
        """Bring the compressed mutable segment's seek table up to date with its committed frames
        (write lock held): puts through maps leave it behind (put_mapped_zstd). With
        ``raise_errors=False`` an error (a full disk) is logged, and the table stays as it was,
        a valid table of fewer frames (or, when even that could not be put back, the dirty flag
        stays up for the next writer's recovery)."""
        words = self.words
        if self.kind != KIND_ZSTD or words[W_DIRTY] or words[W_SEGMENT] != self.segment or self.data_fd < 0:
            return
        disk, padding, count = words[W_DISK_BYTES], words[W_PADDING], words[W_FRAMES]
        if listed_frames(self.data_fd, disk + SKIPPABLE_HEADER_BYTES + padding, count) == count:
            self.unlisted = 0
            return
        words[W_DIRTY] = 1
        try:
            self._update_table(disk, padding, count, words[W_INDEX_BYTES], b"")
        except OSError as exc:
            self.unlisted = 0  # tried again after as many puts
            if listed_frames(self.data_fd, disk + SKIPPABLE_HEADER_BYTES + padding, count) is not None:
                words[W_DIRTY] = 0  # the old table was put back
            if raise_errors:
                raise
            logger.warning("%s: the seek table of the mutable segment stays behind its frames: %s", self.datadir, exc)
            return
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
        # Forgotten before they are closed: a close cut short (an exception from a signal's
        # handler) and called again must not close a number the process has reused since.
        fds = (self.data_fd, self.index_fd)
        self.data_fd = self.index_fd = -1
        self.segment = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
