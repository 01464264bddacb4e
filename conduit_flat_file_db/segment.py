"""One segment on disk: open, create, recover its tail; the compressed segment's layout.

A raw segment ``data_{n:08d}.dat`` is the plain concatenation of its blobs. A
compressed one ``data_{n:08d}.dat.zst`` is a seekable Zstandard file; while it is
mutable its committed frames are followed by a padding frame and the seek table
(FORMAT.md "Compressed segment"), so appending a frame rewrites a few bytes of the
table instead of all of it. The record index ``data_{n:08d}.idx`` says which bytes
are committed. Everything here works on descriptors relative to the datadir's
descriptor and opens with ``O_NOFOLLOW``, so a name never leads outside the datadir.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import stat
import struct
import sys
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import xxhash

from .errors import CorruptionError, FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .fileio import pread_at, pread_full, pwrite_all
from .index import (
    FLAG_LEGACY_EXTENT,
    FLAG_UNCHECKED,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_FRAME,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    decode_header,
    decode_records,
    encode_header,
    encode_record,
    encode_seal,
)
from .naming import index_name, segment_name, temp_name
from .seekable import (
    PADDING_MAGIC,
    SKIPPABLE_HEADER_BYTES,
    FrameTable,
    SeekableReader,
    encode_seek_table,
    parse_seek_table,
    scan_frames,
)

logger = logging.getLogger("conduit_flat_file_db")

OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us
OPEN_WRITE = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
CHECK_CHUNK_BYTES = 8 * 2**20  # read size when checksumming a blob: bounds memory
RESERVE_MIN_BYTES = 64 * 2**10  # smallest padding left after the frames of a compressed segment
# Largest padding: its frame's size field is a u32, and past 1 GiB of padding a table
# rewrite per GiB of frames costs nothing worth reserving more for.
RESERVE_MAX_BYTES = 2**30
# Room: zero bytes a writer allocates past the committed end of the raw mutable segment's
# files to write small puts through shared maps (FORMAT.md "Raw segment"). It grows by
# the size already used, between these bounds; sealing cuts it off.
ROOM_MIN_BYTES = 64 * 2**10
ROOM_MAX_BYTES = 4 * 2**20
ROOM_CHECK_MAX_BYTES = 2 * ROOM_MAX_BYTES  # a zero tail longer than this is no writer's room
_SKIP_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")


def open_regular(dir_fd: int, name: str, flags: int = OPEN_READ) -> int:
    """Open ``name`` in the datadir, refusing anything but a regular file of that name.

    Raises FileNotFoundError when it is missing and InvalidLocationError (a ValueError)
    for a symlink, directory, FIFO, socket or device: none of these is a file the store
    wrote, and reading one would fail later with an untyped error (EISDIR, ESPIPE).
    """
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidLocationError(f"{name} is a symlink; refused") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory, or a FIFO without a reader, opened to write
            raise InvalidLocationError(f"{name} is not a regular file (a directory or FIFO?); refused: "
                                       "move it out of the datadir") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidLocationError(f"{name} is not a regular file; refused: move it out of the datadir")
    return fd


def open_data_file(dir_fd: int, number: int, flags: int = OPEN_READ) -> tuple[int, int]:
    """Open segment ``number``'s data file, whichever suffix it has: (fd, kind).

    Raises FlatFileDbNotFoundError (a FileNotFoundError) when neither exists and
    InvalidLocationError when the name is a symlink or not a regular file.
    """
    # A rewrite that changes the kind renames the new file in, then unlinks the old one: a
    # look-up that missed the new name before the rename and the old one after the unlink
    # finds the new name on a second pass.
    for kind in (KIND_RAW, KIND_ZSTD, KIND_RAW, KIND_ZSTD):
        try:
            return open_regular(dir_fd, segment_name(number, kind == KIND_ZSTD), flags), kind
        except FileNotFoundError:
            continue
    # Both names: a segment may have had either suffix (a deleted data_N.dat.zst is not "data_N.dat missing").
    raise FlatFileDbNotFoundError(errno.ENOENT, f"segment {number} does not exist (deleted, or never written)",
                                  f"{segment_name(number, False)} or {segment_name(number, True)}")


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    """A function of the C library (Linux only; None where it is missing), errno kept."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_FALLOCATE: Callable[[int, int, int, int], int] | None = _libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
_FSTATFS: Callable[[int, ctypes.Array[ctypes.c_char]], int] | None = _libc_function(
    "fstatfs", [ctypes.c_int, ctypes.c_char_p])
_FALLOC_FL_KEEP_SIZE = 1


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve disk blocks for bytes [offset, offset + length) of a file without changing its
    size (``fallocate`` with FALLOC_FL_KEEP_SIZE, Linux; RocksDB preallocates its files the
    same way). Writes there then skip block allocation: on ext4 a 1 MiB ``pwrite`` into
    reserved blocks is about 1.5 times as fast as an append. Readers see nothing: the size
    is unchanged, and cutting the file (sealing does) frees what is beyond it. Returns False
    where it is not supported or failed (then writes allocate as usual; a full disk is
    still reported by the write itself)."""
    if _FALLOCATE is None:
        return False
    return _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def allocate(fd: int, offset: int, length: int) -> int:
    """Allocate disk blocks for bytes [offset, offset + length) of a file, growing its size to
    cover them (``fallocate`` mode 0, Linux): the new bytes read as zeros, and writes there
    through a shared map can no longer meet a full disk (which a map reports with SIGBUS).
    Returns 0, or the errno (ENOSPC, EOPNOTSUPP where the filesystem cannot; ENOSYS where
    this platform has no ``fallocate``)."""
    if _FALLOCATE is None:
        return errno.ENOSYS
    if _FALLOCATE(fd, 0, offset, length) == 0:
        return 0
    return ctypes.get_errno() or errno.EIO


def maps_supported(dir_fd: int | None = None) -> bool:
    """True where writers may commit small puts through shared maps of files in the directory
    ``dir_fd`` (None: the filesystem is not checked). That takes Linux (for :func:`allocate`)
    on x86, whose stores become visible to other cores in program order, so a reader that
    sees the new committed end in the state page also sees the bytes stored before it; and a
    filesystem that overwrites in place, so that blocks allocated up front are all a store
    needs. On a copy-on-write filesystem (btrfs, bcachefs, ZFS) an overwrite takes new
    blocks, and a store through a map that finds the disk full kills the process. Elsewhere
    every put is written with ``pwrite``."""
    if _FALLOCATE is None or platform.machine().lower() not in _STORES_IN_ORDER:
        return False
    return dir_fd is None or filesystem_type(dir_fd) not in COPY_ON_WRITE_FILESYSTEMS


_STORES_IN_ORDER = frozenset({"x86_64", "amd64", "i386", "i686"})
# statfs magic numbers of btrfs, bcachefs, ZFS
COPY_ON_WRITE_FILESYSTEMS = frozenset({0x9123683E, 0xCA451A4E, 0x2FC12FC1})


def filesystem_type(fd: int) -> int | None:
    """The ``f_type`` magic number of the filesystem holding ``fd`` (Linux ``fstatfs``), or None."""
    if _FSTATFS is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on x86-64
    if _FSTATFS(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF  # f_type is the first field


def is_zero_room(fd: int, start: int, size: int) -> bool:
    """True when bytes [start, size) of a file are all zeros and few enough to be the room
    a writer allocated ahead of its appends (FORMAT.md "Raw segment"), not a torn tail."""
    if size - start > ROOM_CHECK_MAX_BYTES:
        return False
    return not os.pread(fd, size - start, start).strip(b"\0")


def fsync_dir(dir_fd: int) -> None:
    """Make created, renamed or removed directory entries durable."""
    os.fsync(dir_fd)


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


def read_index(dir_fd: int, number: int, limit: int | None = None) -> bytes | None:
    """The index file of segment ``number`` (its first ``limit`` bytes), or None when missing."""
    try:
        fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size if limit is None else limit
        return pread_full(fd, size, 0)
    finally:
        os.close(fd)


def index_records(dir_fd: int, number: int, limit: int | None = None) -> list[Record]:
    """The records of a segment's index that decode (the valid prefix); [] without an index."""
    raw = read_index(dir_fd, number, limit)
    if raw is None:
        return []
    decode_header(raw, index_name(number))
    return decode_records(memoryview(raw)[HEADER_BYTES:]).records


def written_kind(dir_fd: int, number: int) -> int | None:
    """The kind a segment was first written as (its index header), None without a readable index.

    Locations handed out by put name the segment with this kind's suffix, so the store
    names it that way too when it lists locations, even after a rewrite changed the suffix.
    """
    raw = read_index(dir_fd, number, HEADER_BYTES)
    if raw is None:
        return None
    try:
        return decode_header(raw, index_name(number)).kind
    except FormatError:
        return None


def frame_table_of(records: Sequence[Record]) -> FrameTable:
    """The frame table of a compressed segment from its FRAME records."""
    return FrameTable.from_sizes((r.b >> 32, r.b & 0xFFFFFFFF) for r in records if r.rtype == REC_FRAME)


class Tail(NamedTuple):
    """The committed extent of a segment after recovery."""

    kind: int
    end: int  # committed uncompressed bytes
    index_bytes: int  # committed bytes of the index file
    disk_bytes: int  # raw: == end; compressed: bytes of the committed frames
    blobs: int
    sealed: bool
    padding: int = 0
    frames: int = 0


def create_segment(dir_fd: int, number: int, kind: int) -> Tail:
    """Create an empty segment (index header, then data file) and make it durable.

    On failure (a full disk, mostly) the files it made are removed: an index without its
    header would stop every reader of indexes (stats, retention) until a writer's recovery.
    """
    made: list[str] = []
    try:
        fd = _create(dir_fd, index_name(number), made)
        try:
            pwrite_all(fd, encode_header(number, kind, time.time_ns()), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = _create(dir_fd, segment_name(number, kind == KIND_ZSTD), made)
        try:
            padding = 0
            if kind == KIND_ZSTD:
                padding = RESERVE_MIN_BYTES
                write_reserve_and_table(fd, 0, [], padding)
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


# -- compressed segment layout --------------------------------------------------------


def padding_header(payload: int) -> bytes:
    """Header of the skippable padding frame of ``payload`` bytes."""
    return _SKIP_HEADER.pack(PADDING_MAGIC, payload)


def write_reserve_and_table(fd: int, frames_end: int, sizes: Sequence[tuple[int, int]], padding: int) -> None:
    """After the committed frames: a padding frame, then the whole seek table; cut what follows."""
    table = encode_seek_table(list(sizes) + [(SKIPPABLE_HEADER_BYTES + padding, 0)])
    pwrite_all(fd, padding_header(padding), frames_end)
    table_at = frames_end + SKIPPABLE_HEADER_BYTES + padding
    pwrite_all(fd, table, table_at)
    os.ftruncate(fd, table_at + len(table))


def append_table_entries(fd: int, frames_end: int, padding: int, frames: int,
                         new_sizes: Sequence[tuple[int, int]]) -> int:
    """Rewrite the seek table's tail after ``new_sizes`` frames took the padding's place.

    The table itself does not move: the new frames were written where the padding
    was and a smaller padding frame follows them. Returns the new padding payload.
    Caller checked that the new frames fit the padding.
    """
    used = sum(c for c, _ in new_sizes)
    new_padding = padding - used
    table_at = frames_end + SKIPPABLE_HEADER_BYTES + padding
    entries = frames + len(new_sizes) + 1
    entry_bytes = b"".join(struct.pack("<II", c, d) for c, d in new_sizes)
    entry_bytes += struct.pack("<II", SKIPPABLE_HEADER_BYTES + new_padding, 0)
    footer = struct.pack("<IBI", entries, 0, 0x8F92EAB1)
    pwrite_all(fd, _U32.pack(entries * 8 + 9), table_at + 4)
    pwrite_all(fd, entry_bytes + footer, table_at + SKIPPABLE_HEADER_BYTES + frames * 8)
    return new_padding


def reserve_for(frames_end: int, needed: int) -> int:
    """Padding to leave after a table rewrite: room for ``needed`` bytes and then some, so
    rewrites of the whole table get rarer as the segment grows (amortised O(1) per frame)."""
    return max(RESERVE_MIN_BYTES, needed + min(frames_end // 16, RESERVE_MAX_BYTES))


# -- recovery ---------------------------------------------------------------------------


def recover_segment(dir_fd: int, number: int, default_kind: int, check_from: int | None) -> Tail:
    """Bring the newest segment to its last committed record; call under the write lock.

    Steps (FORMAT.md "Recovery"): make sure both files exist; decode the index up to
    its first torn or bad record; keep records while they describe contiguous blobs
    (and, compressed, contiguous frames) inside the data file; when ``check_from`` is
    not None also check the XXH3 of every blob ending past it (after a power loss);
    cut the index and the data file after the last commit; for a compressed segment
    write a fresh padding frame and seek table.
    """
    try:  # refused before the data file is created: a directory or FIFO in the index's place is not ours
        os.close(open_regular(dir_fd, index_name(number)))
    except FileNotFoundError:
        pass
    try:
        data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    except FlatFileDbNotFoundError:
        kind = default_kind
        data_fd = os.open(segment_name(number, kind == KIND_ZSTD), OPEN_WRITE | os.O_CREAT, 0o644, dir_fd=dir_fd)
        fsync_dir(dir_fd)
    try:
        return _recover(dir_fd, number, data_fd, kind, check_from)
    finally:
        os.close(data_fd)


class Walk:  # pylint: disable=too-many-instance-attributes  # running totals of one walk
    """The record walk of recovery: running totals and the last commit point seen.

    A commit point is where every frame written so far is covered by blob records
    (raw segments: after every blob record); recovery cuts back to the last one.
    """

    def __init__(self, data_fd: int, kind: int, data_size: int, check_from: int | None) -> None:
        self.data_fd = data_fd
        self.kind = kind
        self.data_size = data_size
        self.check_from = check_from
        self.end = 0  # uncompressed end of blobs
        self.frames_end_u = 0  # uncompressed end of frames
        self.frames_end_c = 0  # compressed end of frames
        self.frames: list[tuple[int, int]] = []
        self.blobs = 0
        self.sealed = False
        self.commit = (0, 0, 0, 0, 0, False)  # (records, end, frames_end_c, frames, blobs, sealed)

    def resume(self, data_size: int) -> int:
        """Go back to the last commit point, to walk on from there once the data file has grown
        to ``data_size`` (a read-only opener following a writer); returns the records walked."""
        records, self.end, self.frames_end_c, frame_count, self.blobs, self.sealed = self.commit
        self.frames_end_u = self.end
        del self.frames[frame_count:]
        self.data_size = data_size
        return records

    def run(self, records: list[Record], first: int = 0) -> str | None:
        """Walk records (``first``: how many were walked before them) up to the first one that does
        not fit; returns why it stopped (None: all fit)."""
        for position, record in enumerate(records, first):
            if self.sealed:
                return f"record after the SEAL record at record {position}"
            if record.rtype == REC_SEAL:
                problem = self._seal(record)
            elif record.rtype == REC_FRAME and self.kind == KIND_ZSTD:
                problem = self._frame(record)
            elif record.rtype == REC_BLOB:
                problem = self._blob(record)
            else:
                problem = f"unexpected record type {record.rtype} in a segment of kind {self.kind}"
            if problem is not None:
                return problem
            if self.kind == KIND_RAW or self.end == self.frames_end_u:
                self.commit = (position + 1, self.end, self.frames_end_c, len(self.frames), self.blobs,
                               self.sealed)
        return None if self.commit[0] == first + len(records) else "frames written without the blobs that commit them"

    def _seal(self, record: Record) -> str | None:
        if record.a != self.end:
            return f"SEAL says {record.a} bytes but the blobs end at {self.end}"
        self.sealed = True
        return None

    def _frame(self, record: Record) -> str | None:
        csize, dsize = record.b >> 32, record.b & 0xFFFFFFFF
        if record.a != self.frames_end_u or record.c != self.frames_end_c or record.c + csize > self.data_size:
            return f"frame record at {record.c} does not continue the frames or is past the data"
        self.frames.append((csize, dsize))
        self.frames_end_u += dsize
        self.frames_end_c += csize
        return None

    def _blob(self, record: Record) -> str | None:
        blob_end = record.a + record.b
        limit = self.data_size if self.kind == KIND_RAW else self.frames_end_u
        if record.a != self.end or blob_end > limit:
            return f"blob record at offset {record.a}..{blob_end} does not fit the data ({limit} bytes)"
        if self.check_from is not None and blob_end > self.check_from \
                and not record.flags & (FLAG_LEGACY_EXTENT | FLAG_UNCHECKED):
            if self._digest(record.a, blob_end) != record.c:
                return f"blob at offset {record.a} fails its checksum after a power loss"
        self.end = blob_end
        self.blobs += 1
        return None

    def _digest(self, start: int, end: int) -> int:
        if self.kind == KIND_RAW:
            return checksum_range(self.data_fd, start, end)
        reader = SeekableReader(self.data_fd, table=FrameTable.from_sizes(self.frames), verify_checksums=False)
        try:
            return checksum_frames(reader, start, end)
        except CorruptionError:
            return -1


def _recover(dir_fd: int, number: int, data_fd: int, kind: int, check_from: int | None) -> Tail:
    name = segment_name(number, kind == KIND_ZSTD)
    data_size = os.fstat(data_fd).st_size
    raw_index = read_index(dir_fd, number)
    try:
        if raw_index is None:
            raise FormatError(f"{index_name(number)} is missing")
        header = decode_header(raw_index, index_name(number))
        if header.segment != number or header.kind != kind:
            raise FormatError(f"{index_name(number)} belongs to segment {header.segment} of kind {header.kind}")
    except FormatError as exc:
        return _rebuild_index(dir_fd, number, data_fd, kind, data_size, str(exc))

    scan = decode_records(memoryview(raw_index)[HEADER_BYTES:])
    sealed_tail = _sealed_compressed(kind, scan.records, data_size)
    if sealed_tail is not None:
        return sealed_tail
    walk = Walk(data_fd, kind, data_size, check_from)
    problem = walk.run(scan.records) or scan.problem
    good, end, frames_c, frame_count, blobs, sealed = walk.commit
    index_bytes = HEADER_BYTES + good * RECORD_BYTES
    _cut_index_tail(dir_fd, number, raw_index, index_bytes, sealed, problem)
    if kind == KIND_RAW:
        if data_size > end and (sealed or not is_zero_room(data_fd, end, data_size)):
            logger.warning("%s: recovery cut %d uncommitted bytes after offset %d", name, data_size - end, end)
            os.ftruncate(data_fd, end)
            os.fsync(data_fd)
        return Tail(KIND_RAW, end, index_bytes, end, blobs, sealed)
    if sealed:
        return Tail(KIND_ZSTD, end, index_bytes, frames_c, blobs, True, 0, frame_count)
    padding = _existing_padding(data_fd, frames_c, frame_count, data_size)
    if padding is None:
        padding = reserve_for(frames_c, 0)
        logger.warning("%s: recovery rewrote the seek table after %d committed frames", name, frame_count)
        write_reserve_and_table(data_fd, frames_c, walk.frames[:frame_count], padding)
        os.fsync(data_fd)
    return Tail(KIND_ZSTD, end, index_bytes, frames_c, blobs, False, padding, frame_count)


def _cut_index_tail(dir_fd: int, number: int, raw_index: bytes, index_bytes: int, sealed: bool,  # pylint: disable=too-many-arguments
                    problem: str | None) -> None:
    """Cut the index after its last commit. Zero bytes there are a writer's room, kept while the
    segment is mutable; anything else is a torn tail, cut and logged."""
    if index_bytes >= len(raw_index):
        return
    room = _zero_bytes(raw_index, index_bytes)
    if not room:
        logger.warning("%s: recovery cut the record index from %d to %d bytes (%s)",
                       index_name(number), len(raw_index), index_bytes, problem)
    if sealed or not room:
        _truncate(dir_fd, index_name(number), index_bytes)


def _zero_bytes(buf: bytes, start: int) -> bool:
    """True when ``buf[start:]`` is a writer's zero room (see is_zero_room)."""
    return len(buf) - start <= ROOM_CHECK_MAX_BYTES and not buf[start:].strip(b"\0")


def _sealed_compressed(kind: int, records: list[Record], data_size: int) -> Tail | None:
    """A sealed compressed segment needs no walk here: its seek table, not FRAME records,
    describes it (it may have been re-framed or adopted), and after a power loss the
    sealed-segment check on open (seal_problem) covers it until its fsync was confirmed."""
    if kind != KIND_ZSTD or not records or records[-1].rtype != REC_SEAL:
        return None
    if data_size == 0 and records[-1].a > 0:
        return None  # the index of a whole-file commit whose rename never happened: cut it
    end = 0
    blobs = 0
    for record in records[:-1]:
        if record.rtype == REC_BLOB:
            if record.a != end:
                return None
            end += record.b
            blobs += 1
    if end != records[-1].a:
        return None
    return Tail(KIND_ZSTD, end, HEADER_BYTES + len(records) * RECORD_BYTES, data_size, blobs, True)


def _existing_padding(fd: int, frames_end: int, frames: int, size: int) -> int | None:
    """The padding payload when the file already ends in a valid padding frame and table for
    exactly ``frames`` committed frames (nothing to repair), else None."""
    head = os.pread(fd, SKIPPABLE_HEADER_BYTES, frames_end)
    if len(head) != SKIPPABLE_HEADER_BYTES:
        return None
    magic, padding = _SKIP_HEADER.unpack(head)
    if magic != PADDING_MAGIC:
        return None
    try:
        table = parse_seek_table(pread_at(fd), size)
    except FormatError:
        return None
    if len(table) != frames + 1 or table.c_offsets[frames] != frames_end:
        return None
    return int(padding)


def _truncate(dir_fd: int, name: str, size: int) -> None:
    fd = os.open(name, OPEN_WRITE, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _legacy_frame_table(data_fd: int, number: int, data_size: int) -> tuple[FrameTable, int]:
    """The frame table of a compressed file written without an index, and its size.

    A writer that appends by cutting the seek table off and writing a new one on close
    (the original engine's) leaves bare frames when it crashes: walk them, cut a torn
    last frame, and write the seek table they should have had.
    """
    try:
        return parse_seek_table(pread_at(data_fd), data_size, segment_name(number, True)), data_size
    except FormatError as exc:
        sizes = scan_frames(pread_at(data_fd), data_size)
        frames_end = sum(c for c, _ in sizes)
        logger.warning("%s: %s; found %d complete frames (%d bytes) by walking them, cut %d bytes after them "
                       "and wrote their seek table", segment_name(number, True), exc, len(sizes), frames_end,
                       data_size - frames_end)
        table_bytes = encode_seek_table(sizes)
        os.ftruncate(data_fd, frames_end)
        pwrite_all(data_fd, table_bytes, frames_end)
        os.fsync(data_fd)
        return FrameTable.from_sizes(sizes), frames_end + len(table_bytes)


def _rebuild_index(dir_fd: int, number: int, data_fd: int, kind: int, data_size: int, why: str) -> Tail:
    """Write a fresh index for a segment whose index is missing or unreadable.

    An empty data file gets an empty index (a crash while creating the segment). A
    non-empty one was written by an engine without an index (or lost its index): its
    bytes become one LEGACY_EXTENT record, so every old location inside still reads,
    and the segment is sealed: new blobs go to a new segment, never after bytes whose
    blob boundaries are unknown.
    """
    parts = [encode_header(number, kind, time.time_ns())]
    end = 0
    if data_size:
        if kind == KIND_ZSTD:
            table, data_size = _legacy_frame_table(data_fd, number, data_size)
            end = table.decompressed_size
            digest = checksum_frames(SeekableReader(data_fd, table=table, verify_checksums=False), 0, end)
        else:
            end = data_size
            digest = checksum_range(data_fd, 0, data_size)
        logger.warning("segment %d: %s; indexing its %d bytes as one sealed legacy extent", number, why, end)
        parts.append(encode_record(REC_BLOB, FLAG_LEGACY_EXTENT, 0, end, digest))
        parts.append(encode_record(REC_SEAL, 0, end, 1, data_size))
    elif kind == KIND_ZSTD:
        write_reserve_and_table(data_fd, 0, [], RESERVE_MIN_BYTES)
        os.fsync(data_fd)
    payload = b"".join(parts)
    tmp = temp_name(index_name(number))
    fd = os.open(tmp, OPEN_WRITE | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        pwrite_all(fd, payload, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, index_name(number), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    fsync_dir(dir_fd)
    if data_size:
        return Tail(kind, end, len(payload), data_size, 1, True)
    return Tail(kind, 0, len(payload), 0, 0, False, RESERVE_MIN_BYTES if kind == KIND_ZSTD else 0, 0)


# -- sealing, and sealed segments after a power loss -----------------------------------


def write_seal(data_fd: int, index_fd: int, kind: int, tail: Tail, sizes: Sequence[tuple[int, int]]) -> int:
    """Seal a segment whose committed extent is ``tail``: end its data file (a compressed one
    with a plain seek table of the frame ``sizes``) and append the SEAL record. No fsync:
    the caller decides when the segment must be durable. Returns the data file's size."""
    if kind == KIND_RAW:
        os.ftruncate(data_fd, tail.end)  # even at the same size: frees blocks preallocated beyond it
        disk = tail.end
    else:
        table = encode_seek_table(sizes)
        pwrite_all(data_fd, table, tail.disk_bytes)
        disk = tail.disk_bytes + len(table)
        os.ftruncate(data_fd, disk)
    pwrite_all(index_fd, encode_seal(tail.end, tail.blobs, disk), tail.index_bytes)
    os.ftruncate(index_fd, tail.index_bytes + RECORD_BYTES)
    return disk


def sync_segment(dir_fd: int, number: int) -> int:
    """fsync the files of segment ``number`` that exist; returns how many (2 for a whole segment)."""
    synced = 0
    for name in (segment_name(number, False), segment_name(number, True), index_name(number)):
        try:
            fd = os.open(name, OPEN_READ, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            synced += 1
        finally:
            os.close(fd)
    return synced


def seal_problem(dir_fd: int, number: int, *, full: bool) -> str | None:
    """Why sealed segment ``number`` is not whole, or None when it is (or is gone).

    After a power loss, a segment sealed shortly before it may have lost the tail of
    its data or index: its fsync runs in the background after the seal. The quick
    form (``full=False``) reads two records and the file size: the index ends in a
    SEAL record, and the data file holds exactly the bytes it names (compressed: it
    ends in a seek table of that many uncompressed bytes). The full form also needs
    contiguous BLOB records up to the SEAL and checks the XXH3-64 of every blob,
    reading the segment once, in order.
    """
    try:
        data_fd, kind = open_data_file(dir_fd, number)
    except FlatFileDbNotFoundError:
        return None
    try:
        return _seal_problem(dir_fd, number, data_fd, kind, full)
    finally:
        os.close(data_fd)


def _seal_problem(dir_fd: int, number: int, data_fd: int, kind: int, full: bool) -> str | None:
    scan = _sealed_index(dir_fd, number, full)
    if scan is None or isinstance(scan, str):
        return scan
    end = scan[-1].a
    read = _sealed_reader(data_fd, kind, end)
    if isinstance(read, str):
        return read
    if not full:
        return None
    blobs = [r for r in scan if r.rtype == REC_BLOB]
    if sum(r.b for r in blobs) != end or any(r.a != s for r, s in zip(blobs, _starts(blobs))):
        return "its BLOB records do not cover the segment contiguously"
    try:
        bad = _first_bad_blob(read, blobs, end)
    except CorruptionError as exc:
        return f"a frame does not decode ({exc})"
    return None if bad is None else f"the blob at offset {bad.a} fails its checksum"


def _sealed_reader(data_fd: int, kind: int, end: int) -> Callable[[int, int], bytes] | str:
    """read(start, stop) of a sealed segment's uncompressed bytes when its data file holds exactly
    ``end`` of them (compressed: ends in a seek table for them), else a string saying why not."""
    data_size = os.fstat(data_fd).st_size
    if kind == KIND_RAW:
        if data_size != end:
            return f"the SEAL record says {end} bytes but the data file has {data_size}"
        return lambda start, stop: pread_full(data_fd, stop - start, start)
    try:
        reader = SeekableReader(data_fd, table=parse_seek_table(pread_at(data_fd), data_size),
                                verify_checksums=False)
    except FormatError as exc:
        return f"the data file does not end in a seek table ({exc})"
    if reader.size != end:
        return f"the SEAL record says {end} bytes but the seek table holds {reader.size}"
    return reader.read_range


def _sealed_index(dir_fd: int, number: int, full: bool) -> list[Record] | str | None:
    """The records of a sealed segment's index ending in its SEAL (only the SEAL unless ``full``),
    a string saying why they do not, or None for an index this check does not judge."""
    try:
        index_fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None  # written without an index (the original engine): nothing of ours to check
    try:
        index_size = os.fstat(index_fd).st_size
        try:
            decode_header(os.pread(index_fd, HEADER_BYTES, 0), index_name(number))
        except FormatError:
            return None  # the header was fsynced when the segment was created: not a power-loss tail
        if index_size < HEADER_BYTES + RECORD_BYTES or (index_size - HEADER_BYTES) % RECORD_BYTES:
            return f"its record index is {index_size} bytes, not whole records ending in a SEAL"
        body = pread_full(index_fd, index_size - HEADER_BYTES if full else RECORD_BYTES,
                        HEADER_BYTES if full else index_size - RECORD_BYTES)
    finally:
        os.close(index_fd)
    scan = decode_records(body)
    if scan.problem is not None or not scan.records or scan.records[-1].rtype != REC_SEAL:
        return scan.problem or "its record index does not end in a SEAL record"
    return scan.records


def _starts(blobs: Sequence[Record]) -> Iterator[int]:
    at = 0
    for record in blobs:
        yield at
        at += record.b


def _first_bad_blob(read: Callable[[int, int], bytes], blobs: Sequence[Record], limit: int) -> Record | None:
    """The first blob whose bytes fail their XXH3-64, reading [0, limit) once in chunks."""
    window, window_at = b"", 0
    for record in blobs:
        if record.flags & (FLAG_LEGACY_EXTENT | FLAG_UNCHECKED):
            continue
        start, stop = record.a, record.a + record.b
        if record.b > CHECK_CHUNK_BYTES:
            hasher = xxhash.xxh3_64()
            for pos in range(start, stop, CHECK_CHUNK_BYTES):
                hasher.update(read(pos, min(stop, pos + CHECK_CHUNK_BYTES)))
            digest = hasher.intdigest()
        else:
            if start < window_at or stop > window_at + len(window):
                window_at, window = start, read(start, min(limit, max(stop, start + CHECK_CHUNK_BYTES)))
            digest = xxhash.xxh3_64_intdigest(memoryview(window)[start - window_at : stop - window_at])
        if digest != record.c:
            return record
    return None


def reseal_segment(dir_fd: int, number: int, why: str) -> None:
    """Cut a damaged sealed segment back to its last blob that checks, and seal it again.

    For a segment sealed shortly before a power loss (see :func:`seal_problem`): its
    records are walked as recovery walks the mutable segment's, checking every blob,
    then the index and data are cut after the last good blob, the SEAL record (and,
    compressed, the seek table) written again, and both files fsynced. A segment that
    a rewrite replaced (fsynced before its switch, so not damaged by a power loss) is
    not cut: it is logged for ``verify()``.
    """
    data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    try:
        raw_index = read_index(dir_fd, number) or b""
        try:
            header = decode_header(raw_index, index_name(number))
        except FormatError:
            return  # seal_problem reports no problem for these
        records = decode_records(memoryview(raw_index)[HEADER_BYTES:]).records
        if header.kind != kind or (kind == KIND_ZSTD and _rewritten(data_fd, records)):
            logger.error("%s: sealed segment is damaged (%s) but was rewritten, so it is not cut; "
                         "run verify()", segment_name(number, kind == KIND_ZSTD), why)
            return
        tail, found = _cut_and_seal(dir_fd, number, data_fd, kind, records, check=True)
    finally:
        os.close(data_fd)
    logger.warning("%s: sealed segment damaged by a power loss (%s); kept its first %d of %d blobs "
                   "(%d bytes) and sealed it again", segment_name(number, kind == KIND_ZSTD), why, tail.blobs,
                   found, tail.end)


def _rewritten(data_fd: int, records: Sequence[Record]) -> bool:
    """Whether a compressed segment's file was replaced by a rewrite (re-framing): recovery
    never cuts those by their FRAME records.

    A rewrite starts by fsyncing the segment, so its index ends in a durable SEAL; it
    writes a plain seek table (no padding frame: only the mutable layout has one);
    and its frames differ from the FRAME records. A file whose table lists the FRAME
    records' frames (plus, mutable layout, a padding frame) was never rewritten: its
    seal, or part of it, is what the power loss took.
    """
    if not records or records[-1].rtype != REC_SEAL:
        return False
    frames = frame_table_of(records).sizes()
    if not frames:
        return False  # a whole file committed by rename (put_stream, adopt_file): its one blob is checked as any
    try:
        table = parse_seek_table(pread_at(data_fd), os.fstat(data_fd).st_size)
    except FormatError:
        return False  # no table: never rewritten (a rewrite is fsynced before its switch)
    sizes = table.sizes()
    if sizes and sizes[-1][1] == 0:
        head = os.pread(data_fd, SKIPPABLE_HEADER_BYTES, table.c_offsets[-2])
        if len(head) == SKIPPABLE_HEADER_BYTES and _SKIP_HEADER.unpack(head)[0] == PADDING_MAGIC:
            return False  # a padding frame: the mutable layout, so the seal's table never landed
    return sizes != frames


def seal_recovered(dir_fd: int, number: int) -> Tail:
    """Seal the newest segment right after recovery brought it to its last commit (after a
    power loss), so that no later put reuses its offsets.

    A power loss can take blobs whose locations were already handed out: recovery cuts
    them, and a put into the same segment would then hand out the same offsets for other
    bytes, which a caller's saved location would read. Sealing the segment makes every such
    location past its end, refused with a typed error, for ever. The rejected alternative,
    continuing in the segment after the highest offset ever handed out, needs that offset,
    which only the state page knows, and the state page is not fsynced either.
    """
    data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    try:
        records = decode_records(memoryview(read_index(dir_fd, number) or b"")[HEADER_BYTES:]).records
        tail, _found = _cut_and_seal(dir_fd, number, data_fd, kind, records, check=False)
    finally:
        os.close(data_fd)
    logger.warning("%s: sealed after a power loss with %d blobs (%d bytes); blobs written after them, "
                   "if any, were lost and their locations now fail", segment_name(number, kind == KIND_ZSTD),
                   tail.blobs, tail.end)
    return tail


def _cut_and_seal(dir_fd: int, number: int, data_fd: int, kind: int,  # pylint: disable=too-many-arguments
                  records: list[Record], *, check: bool) -> tuple[Tail, int]:
    """Cut a segment after the last commit its records reach (checking each blob's XXH3-64 when
    ``check``), seal it, fsync both files; returns its sealed extent (SEAL record included) and
    how many blob records the index held before the cut."""
    walk = Walk(data_fd, kind, os.fstat(data_fd).st_size, 0 if check else None)
    walk.run(records)
    good, end, frames_c, frame_count, blobs, sealed = walk.commit
    good -= sealed  # the SEAL is written again, after the cut
    tail = Tail(kind, end, HEADER_BYTES + good * RECORD_BYTES, frames_c, blobs, True, 0, frame_count)
    index_fd = os.open(index_name(number), OPEN_WRITE, dir_fd=dir_fd)
    try:
        os.ftruncate(index_fd, tail.index_bytes)
        disk = write_seal(data_fd, index_fd, kind, tail, walk.frames[:frame_count])
        os.fsync(data_fd)
        os.fsync(index_fd)
    finally:
        os.close(index_fd)
    sealed_tail = tail._replace(index_bytes=tail.index_bytes + RECORD_BYTES, disk_bytes=disk)
    return sealed_tail, sum(1 for r in records if r.rtype == REC_BLOB)
