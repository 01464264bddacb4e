"""The Zstandard seekable format: seek table, reader, writer, and the padding frame of a growing file.

Usable on its own, with no store logic: ``SeekableReader`` opens any conformant
seekable file (seek table with or without per-frame checksums, skippable frames
inside) and reads any uncompressed range by decompressing only the frames it
overlaps; ``SeekableWriter`` writes a new file or appends to an existing one.
This is the only module that packs or parses seek-table bytes.

A seekable file is Zstandard frames followed by one skippable frame holding the
seek table (FORMAT.md "Compressed segment" gives every field):

    magic 0x184D2A5E u32 | size u32 | N x (csize u32, dsize u32[, xxh64_lo u32]) |
    N u32 | descriptor u8 | magic 0x8F92EAB1 u32

Padding: a file that keeps growing (the store's mutable compressed segment) has
one skippable *padding frame* (magic PADDING_MAGIC) between its frames and its
seek table, listed in the table with decompressed size 0. New frames are written
over the padding, a shorter padding frame after them, and only the tail of the
table is rewritten (:func:`append_table_entries`), at once or later (the table may
lag: the file then reads as the frames it lists); how large the padding is made
is the store's choice (segment.py).
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
import struct
from typing import Any, BinaryIO, Callable, Hashable, Iterable, NamedTuple, Sequence

import xxhash
import zstandard

from .errors import CorruptionError, FormatError
from .fileio import pread_at, pread_exact, pread_full, pwrite_all, pwritev_all
from .frames import (
    DEFAULT_LEVEL,
    DEFAULT_MIN_SAVING,
    MAX_FRAME_DECOMPRESSED_BYTES,
    SKIPPABLE_HEADER_BYTES,
    SKIPPABLE_MAGIC,
    STORED_MEDIUM_BELOW,
    STORED_PROBE_BYTES,
    FrameCache,
    check_min_saving,
    compress_frames,
    decompress_frame,
    stored_head,
    stored_payload,
)

SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
PADDING_MAGIC = SKIPPABLE_MAGIC  # the padding frame of a growing file is skippable frame 0x184D2A50
FOOTER_BYTES = 9
MAX_FRAMES = 0x8000000
DESCRIPTOR_CHECKSUM_FLAG = 0x80
DESCRIPTOR_RESERVED_MASK = 0x7C

_FOOTER = struct.Struct("<IBI")
_SKIP_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<II")  # a seek-table entry without checksum: compressed size, decompressed size
ENTRY_BYTES = _ENTRY.size
_U32 = struct.Struct("<I")

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> bytes


class Framing(NamedTuple):
    """How a file is written: raw, or compressed in frames of ``frame_bytes`` at ``level``."""

    compressed: bool
    level: int = 3
    frame_bytes: int = 2**20
    threads: int = 1
    min_saving: float = 0.125

    def writer(self, path: str) -> SeekableWriter:
        """A new seekable file at ``path`` written with this framing (only when ``compressed``)."""
        return SeekableWriter(
            path,
            "w",
            level=self.level,
            frame_bytes=self.frame_bytes,
            threads=self.threads,
            min_saving=self.min_saving,
        )


class FrameTable:
    """Cumulative compressed and decompressed offsets of a seekable file's frames.

    ``c_offsets[i]`` / ``d_offsets[i]`` are where frame i starts; index N holds the
    totals. Frames with decompressed size 0 (skippable frames) are kept so that
    compressed offsets stay right; lookups never land on them.
    """

    __slots__ = ("c_offsets", "checksums", "d_offsets")

    def __init__(self, c_offsets: list[int], d_offsets: list[int], checksums: list[int] | None = None) -> None:
        self.c_offsets = c_offsets
        self.d_offsets = d_offsets
        self.checksums = checksums

    @classmethod
    def from_sizes(cls, sizes: Iterable[tuple[int, int]], checksums: list[int] | None = None) -> FrameTable:
        """Build from (compressed size, decompressed size) pairs."""
        c_offsets = [0]
        d_offsets = [0]
        for csize, dsize in sizes:
            c_offsets.append(c_offsets[-1] + csize)
            d_offsets.append(d_offsets[-1] + dsize)
        return cls(c_offsets, d_offsets, checksums)

    def __len__(self) -> int:
        return len(self.c_offsets) - 1

    @property
    def compressed_size(self) -> int:
        """Bytes of all frames (the seek table not included)."""
        return self.c_offsets[-1]

    @property
    def decompressed_size(self) -> int:
        """Uncompressed bytes of the whole file."""
        return self.d_offsets[-1]

    def sizes(self) -> list[tuple[int, int]]:
        """(compressed size, decompressed size) of each frame."""
        c, d = self.c_offsets, self.d_offsets
        return [(c[i + 1] - c[i], d[i + 1] - d[i]) for i in range(len(c) - 1)]

    def frame_at(self, offset: int) -> int:
        """Index of the frame holding uncompressed byte ``offset`` (0 <= offset < size)."""
        # bisect_right lands past every frame starting at or before offset, so frames
        # of decompressed size 0 at the same start are stepped over.
        return bisect.bisect_right(self.d_offsets, offset) - 1

    def append(self, csize: int, dsize: int) -> None:
        """Add one frame at the end."""
        self.c_offsets.append(self.c_offsets[-1] + csize)
        self.d_offsets.append(self.d_offsets[-1] + dsize)

    def extend(self, size_words: list[int]) -> None:
        """Add frames at the end, each given as an index FRAME record's size word (compressed
        size << 32 | uncompressed size): one pass of running sums in C, not a call per frame."""
        sums = itertools.accumulate([word >> 32 for word in size_words], initial=self.c_offsets[-1])
        self.c_offsets += itertools.islice(sums, 1, None)  # past ``initial``: the table's end already
        sums = itertools.accumulate([word & 0xFFFFFFFF for word in size_words], initial=self.d_offsets[-1])
        self.d_offsets += itertools.islice(sums, 1, None)


def encode_seek_table(sizes: Sequence[tuple[int, int]], checksums: Sequence[int] | None = None) -> bytes:
    """The skippable frame holding a seek table for frames of the given sizes."""
    if len(sizes) > MAX_FRAMES:
        raise ValueError(f"{len(sizes)} frames is more than the format allows ({MAX_FRAMES})")
    if checksums is None:
        # One pack of the flattened sizes: a compressed mutable segment rewrites its whole table
        # whenever its padding runs out, and an entry packed at a time cost most of a small put.
        body = struct.pack(f"<{2 * len(sizes)}I", *itertools.chain.from_iterable(sizes))
        descriptor = 0
    else:
        body = b"".join(struct.pack("<III", c, d, x & 0xFFFFFFFF) for (c, d), x in zip(sizes, checksums))
        descriptor = DESCRIPTOR_CHECKSUM_FLAG
    footer = _FOOTER.pack(len(sizes), descriptor, SEEKABLE_MAGIC)
    return _SKIP_HEADER.pack(SEEK_TABLE_MAGIC, len(body) + FOOTER_BYTES) + body + footer


def parse_seek_table(read_at: ReadAt, file_size: int, path: str = "<seekable>") -> FrameTable:
    """Read and check the seek table at the end of a file of ``file_size`` bytes.

    Never allocates more than the file holds, whatever the table claims.
    Raises FormatError naming ``path`` and the offset of the first bad field.
    """
    if file_size < SKIPPABLE_HEADER_BYTES + FOOTER_BYTES:
        raise FormatError(f"{path}: {file_size} bytes is too short for a seekable Zstandard file")
    footer_at = file_size - FOOTER_BYTES
    count, descriptor, magic = _FOOTER.unpack(_exact(read_at, footer_at, FOOTER_BYTES, path))
    if magic != SEEKABLE_MAGIC:
        raise FormatError(
            f"{path}: no seekable footer at offset {footer_at + 5} (magic {magic:#010x}); not a seekable Zstandard file"
        )
    if descriptor & DESCRIPTOR_RESERVED_MASK:
        raise FormatError(f"{path}: reserved descriptor bits set ({descriptor:#04x}) at offset {footer_at + 4}")
    if count > MAX_FRAMES:
        raise FormatError(f"{path}: seek table claims {count} frames (limit {MAX_FRAMES})")
    entry = 12 if descriptor & DESCRIPTOR_CHECKSUM_FLAG else 8
    table_bytes = SKIPPABLE_HEADER_BYTES + count * entry + FOOTER_BYTES
    if table_bytes > file_size:
        raise FormatError(
            f"{path}: seek table of {count} frames ({table_bytes} bytes) does not fit the {file_size}-byte file"
        )
    table_at = file_size - table_bytes
    raw = _exact(read_at, table_at, table_bytes - FOOTER_BYTES, path)
    skip_magic, frame_size = _SKIP_HEADER.unpack_from(raw, 0)
    if skip_magic != SEEK_TABLE_MAGIC:
        raise FormatError(f"{path}: seek table frame magic {skip_magic:#010x} at offset {table_at}")
    if frame_size != table_bytes - SKIPPABLE_HEADER_BYTES:
        raise FormatError(
            f"{path}: seek table frame size {frame_size} at offset {table_at + 4} does not match {count} entries"
        )
    c_offsets = [0]
    d_offsets = [0]
    checksums: list[int] | None = [] if entry == 12 else None
    c_total = d_total = 0
    fmt = struct.Struct("<III" if entry == 12 else "<II")
    for values in fmt.iter_unpack(memoryview(raw)[SKIPPABLE_HEADER_BYTES:]):
        c_total += values[0]
        d_total += values[1]
        c_offsets.append(c_total)
        d_offsets.append(d_total)
        if checksums is not None:
            checksums.append(values[2])
    if c_total != table_at:
        raise FormatError(f"{path}: frames add up to {c_total} bytes but the seek table starts at {table_at}")
    return FrameTable(c_offsets, d_offsets, checksums)


def _exact(read_at: ReadAt, offset: int, size: int, path: str) -> bytes:
    data = read_at(offset, size)
    if len(data) != size:
        raise FormatError(f"{path}: short read of {len(data)}/{size} bytes at offset {offset}")
    return data


# -- the padding frame of a growing file --------------------------------------------------


def padding_header(payload: int) -> bytes:
    """Header of the skippable padding frame of ``payload`` bytes."""
    return _SKIP_HEADER.pack(PADDING_MAGIC, payload)


def growing_table_bytes(frames: int) -> int:
    """Bytes of the seek table of a growing file with ``frames`` frames before its padding frame
    (the padding's own entry included): such a file is its frames, the padding frame, then this."""
    return SKIPPABLE_HEADER_BYTES + (frames + 1) * _ENTRY.size + FOOTER_BYTES


def is_padding_frame(fd: int, offset: int) -> bool:
    """Whether a padding frame starts at ``offset`` of the file."""
    head = os.pread(fd, SKIPPABLE_HEADER_BYTES, offset)
    return len(head) == SKIPPABLE_HEADER_BYTES and _SKIP_HEADER.unpack(head)[0] == PADDING_MAGIC


def pack_entries(sizes: Sequence[tuple[int, int]]) -> bytes:
    """The seek-table entries (without checksums) of frames of the given sizes, as the table holds them."""
    return struct.pack(f"<{2 * len(sizes)}I", *itertools.chain.from_iterable(sizes))


def unpack_entries(entries: bytes | bytearray) -> list[tuple[int, int]]:
    """The (compressed, decompressed) sizes that :func:`pack_entries` packed."""
    return list(_ENTRY.iter_unpack(entries))


def write_padding_and_table(fd: int, frames_end: int, sizes: Sequence[tuple[int, int]], padding: int) -> None:
    """After the frames (of ``sizes``, ending at ``frames_end``): a padding frame of ``padding``
    payload bytes, then the whole seek table; cut what follows."""
    write_padding_and_entries(fd, frames_end, pack_entries(sizes), padding)


def write_padding_and_entries(fd: int, frames_end: int, entries: bytes | bytearray, padding: int) -> None:
    """write_padding_and_table for frames given by their packed seek-table ``entries``
    (:func:`pack_entries`): a growing segment keeps them packed, so that a rewrite of its whole
    table is a copy of them rather than a pack of every entry again."""
    count = len(entries) // _ENTRY.size + 1
    if count > MAX_FRAMES:
        raise ValueError(f"{count} frames is more than the format allows ({MAX_FRAMES})")
    table = b"".join(
        (
            _SKIP_HEADER.pack(SEEK_TABLE_MAGIC, count * _ENTRY.size + FOOTER_BYTES),
            entries,
            _ENTRY.pack(SKIPPABLE_HEADER_BYTES + padding, 0),
            _FOOTER.pack(count, 0, SEEKABLE_MAGIC),
        )
    )
    pwrite_all(fd, padding_header(padding), frames_end)
    table_at = frames_end + SKIPPABLE_HEADER_BYTES + padding
    pwrite_all(fd, table, table_at)
    os.ftruncate(fd, table_at + len(table))


def listed_frames(fd: int, table_at: int, frames: int) -> int | None:
    """How many frames the seek table of a growing file (at ``table_at``) lists before its padding
    entry: at most ``frames``, the frames the file holds (the table may lag behind them, see
    :func:`append_table_entries`); None when what is there is not such a table."""
    head = os.pread(fd, SKIPPABLE_HEADER_BYTES, table_at)
    if len(head) != SKIPPABLE_HEADER_BYTES:
        return None
    magic, size = _SKIP_HEADER.unpack(head)
    entries, rest = divmod(size - FOOTER_BYTES, _ENTRY.size)
    listed: int = entries - 1  # the padding's own entry
    if magic != SEEK_TABLE_MAGIC or rest or not 0 <= listed <= frames:
        return None
    return listed


def append_table_entries(fd: int, frames_end: int, padding: int, listed: int, entries: bytes | bytearray) -> None:
    """Bring the seek table of a growing file up to date after new frames took the padding's place.

    The table lists ``listed`` frames, then one padding entry spanning everything from the end
    of those frames to the table: the frames written since (over the padding) and the padding
    frame after them. Such a table lags, but the file is a valid seekable file of the frames it
    lists, and a decoder walking the frames in order reads them all. ``entries`` (packed,
    :func:`pack_entries`) are the entries of the frames after the ``listed``; they end at
    ``frames_end``, where a padding frame of ``padding`` payload bytes starts. The table does
    not move: its padding entry and footer are overwritten by the new entries, a padding entry
    and a footer, then its size field is patched. On an error (a full disk: the table grows
    past the file's end), the old padding entry and footer are put back and the file is cut
    to its old length, so the file stays the valid seekable file it was, and the error is raised."""
    table_at = frames_end + SKIPPABLE_HEADER_BYTES + padding
    count = listed + len(entries) // _ENTRY.size + 1
    at = table_at + SKIPPABLE_HEADER_BYTES + listed * _ENTRY.size
    tail = b"".join((entries, _ENTRY.pack(SKIPPABLE_HEADER_BYTES + padding, 0), _FOOTER.pack(count, 0, SEEKABLE_MAGIC)))
    old_tail = pread_full(fd, _ENTRY.size + FOOTER_BYTES, at)
    try:
        pwrite_all(fd, tail, at)
    except OSError:
        try:
            pwrite_all(fd, old_tail, at)
            os.ftruncate(fd, at + len(old_tail))
        except OSError:
            pass  # the caller's dirty flag stays up: recovery lays the table out again
        raise
    pwrite_all(fd, _U32.pack(count * _ENTRY.size + FOOTER_BYTES), table_at + 4)


def padding_after(fd: int, frames_end: int, frames: int, size: int) -> int | None:
    """The padding payload when the file of ``size`` bytes ends in a valid padding frame and
    table for exactly ``frames`` frames ending at ``frames_end`` (nothing to repair), else None.

    The padding frame's header must also end where the table starts: a writer takes the table
    to be right after the padding its header gives, so a header that disagrees (a damaged or
    forged file) would send the table's new entries into the padding, or gigabytes past the
    file's end, and leave a file that no Zstandard decoder reads."""
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
    if table.c_offsets[frames + 1] != frames_end + SKIPPABLE_HEADER_BYTES + padding:
        return None
    return int(padding)


# -- reading frames -------------------------------------------------------------------------


def read_frame(fd: int, table: FrameTable, index: int, name: str, verify: bool = True) -> bytes:
    """Frame ``index`` of the seekable file ``fd`` (called ``name`` in errors), decompressed and
    checked, against its seek-table checksum too when ``verify`` and the table has them.

    The one reader of whole frames (the store's segment readers use it too): a file that
    ends before a frame its table lists raises CorruptionError naming file and offset.
    """
    c_start = table.c_offsets[index]
    raw = pread_exact(fd, table.c_offsets[index + 1] - c_start, c_start, name)
    checksum = table.checksums[index] if verify and table.checksums is not None else None
    return decompress_frame(raw, table.d_offsets[index + 1] - table.d_offsets[index], name, c_start, checksum)


_reader_tokens = itertools.count()


class SeekableReader(io.RawIOBase):
    """A read-only, seekable file object over the uncompressed bytes of a seekable file.

    ``read_range(start, end)`` reads any uncompressed range directly. Only frames the
    read overlaps are decompressed; a FrameCache may be shared between readers, which
    share cached frames only when given the same ``cache_key``.
    Not thread-safe for ``read``/``seek`` (a file position); ``read_range`` is.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | int | BinaryIO,
        *,
        cache: FrameCache | None = None,
        table: FrameTable | None = None,
        verify_checksums: bool = True,
        cache_key: Hashable | None = None,
    ) -> None:
        super().__init__()
        self._owns_fd = False
        if isinstance(file, int):
            self._fd = file
            self.name = f"<fd {file}>"
        elif isinstance(file, (str, os.PathLike)):
            self._fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
            self._owns_fd = True
            self.name = os.fspath(file)
        else:
            self._fd = file.fileno()
            self.name = str(getattr(file, "name", "<file>"))
        size = os.fstat(self._fd).st_size
        self.table = table if table is not None else parse_seek_table(self._pread, size, self.name)
        self._cache = cache
        # Frames are cached per reader unless the caller vouches that two readers see the
        # same bytes: (device, inode) would not do, inode numbers are reused at once.
        self._cache_key = cache_key if cache_key is not None else ("reader", next(_reader_tokens))
        self._verify = verify_checksums
        self._pieces = frame_pieces(self.frame)
        self._pos = 0
        self.frames_decompressed = 0

    def _pread(self, offset: int, size: int) -> bytes:
        return pread_full(self._fd, size, offset)

    @property
    def size(self) -> int:
        """Uncompressed size of the file."""
        return self.table.decompressed_size

    def frame(self, index: int) -> bytes:
        """The decompressed bytes of frame ``index`` (from the cache when there)."""
        if self.closed:
            raise ValueError(f"{self.name}: read from a closed SeekableReader")
        cache = self._cache
        if cache is not None:
            hit = cache.get((self._cache_key, index))
            if hit is not None:
                return hit
        out = read_frame(self._fd, self.table, index, self.name, self._verify)
        self.frames_decompressed += 1
        if cache is not None:
            cache.put((self._cache_key, index), out)
        return out

    def read_range(self, start: int, end: int) -> bytes:
        """Uncompressed bytes [start, end); decompresses only the frames they overlap."""
        size = self.table.decompressed_size
        if not 0 <= start <= end <= size:
            raise ValueError(f"{self.name}: range {start}..{end} is outside 0..{size}")
        return read_frames(self.table, self._pieces, start, end)

    def read_span(self, start: int, end: int) -> bytes:
        """read_range for a long range (a rewrite reads a segment in pieces of megabytes): the
        compressed bytes of the frames it overlaps are read with one ``pread``, and each frame
        is decoded from that buffer, a one-block stored frame taken in place once its checksum
        is checked, instead of one ``pread`` and one decompression per frame (a segment of small
        puts has one frame per put). The frame cache is neither read nor filled."""
        table = self.table
        d_offsets, c_offsets = table.d_offsets, table.c_offsets
        if not 0 <= start <= end <= table.decompressed_size:
            raise ValueError(f"{self.name}: range {start}..{end} is outside 0..{table.decompressed_size}")
        if start == end:
            return b""
        first = bisect.bisect_right(d_offsets, start) - 1
        last = bisect.bisect_left(d_offsets, end)  # frames first..last-1 hold the range
        c_first = c_offsets[first]
        data = pread_exact(self._fd, c_offsets[last] - c_first, c_first, self.name)
        checksums = table.checksums if self._verify else None
        parts, decoded = _span_contents(table, first, last, data, checksums, self.name)
        self.frames_decompressed += decoded
        whole = b"".join(parts)
        low = start - d_offsets[first]
        return whole[low : low + end - start]

    # -- io.RawIOBase ------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.table.decompressed_size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self.table.decompressed_size)
        if end <= self._pos:
            return 0
        data = read_frames(self.table, self._pieces, self._pos, end)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed and self._owns_fd:
            os.close(self._fd)
        super().close()


def _span_contents(
    table: FrameTable, first: int, last: int, data: bytes, checksums: list[int] | None, name: str
) -> tuple[list[bytes | memoryview], int]:
    """The contents of frames ``first`` to ``last - 1`` of ``table``, whose compressed bytes
    are ``data``, and how many frames were decoded (skippable frames hold nothing)."""
    c_first = table.c_offsets[first]
    buffer = memoryview(data)
    parts: list[bytes | memoryview] = []
    heads: dict[int, bytes] = {}  # dsize -> the head of the engine's own stored frame of dsize
    decoded = 0
    index = first - 1
    c_end = 0
    d_offsets = table.d_offsets
    for d_low, d_high, c_high in zip(
        d_offsets[first:last], d_offsets[first + 1 : last + 1], table.c_offsets[first + 1 : last + 1]
    ):
        index += 1
        at, c_end = c_end, c_high - c_first
        dsize = d_high - d_low
        if not dsize:
            continue  # frames of decompressed size 0 are skippable frames
        decoded += 1
        # The common frame of a segment of small puts, checked in a few operations: the exact
        # head a writer of this engine gives a one-block stored frame of dsize bytes (magic,
        # descriptor with the checksum flag, content size, raw last block of dsize), then the
        # content and its XXH64 (and the table's, when it has one), as _stored_content checks.
        head = heads.get(dsize)
        if head is None and dsize < STORED_MEDIUM_BELOW:
            head = heads[dsize] = stored_head(dsize)
        if head is not None and c_end - at == len(head) + dsize + 4 and data.startswith(head, at):
            content = buffer[c_end - 4 - dsize : c_end - 4]
            digest = xxhash.xxh64_intdigest(content) & 0xFFFFFFFF
            if digest == _U32.unpack_from(data, c_end - 4)[0] and (checksums is None or checksums[index] == digest):
                parts.append(content)
                continue
        parts.append(
            _stored_content(
                buffer[at:c_end], dsize, None if checksums is None else checksums[index], name, at + c_first
            )
        )
    return parts, decoded


def _stored_content(frame: memoryview, dsize: int, checksum: int | None, name: str, offset: int) -> bytes:
    """The decompressed bytes of ``frame`` (at ``offset`` of file ``name``): a one-block stored
    frame's content, checked against its content checksum (and the table's ``checksum``), as
    decompress_frame would check it; any other frame through decompress_frame."""
    at = stored_payload(frame[:STORED_PROBE_BYTES], len(frame), dsize)
    if at < 0 or not frame[4] & 0x04:  # not stored, or no content checksum: the decoder decides
        return decompress_frame(bytes(frame), dsize, name, offset, checksum)
    content = frame[at : at + dsize]
    digest = xxhash.xxh64_intdigest(content) & 0xFFFFFFFF
    if (
        digest != _U32.unpack_from(frame, at + dsize)[0]
        or checksum not in (None, digest)
        or zstandard.frame_content_size(frame[:at]) not in (-1, dsize)
    ):
        raise CorruptionError(f"{name} at offset {offset}: frame fails its checksum", name, offset)
    return bytes(content)


def read_frames(table: FrameTable, piece: Callable[[int, int, int], bytes], start: int, end: int) -> bytes:
    """Uncompressed [start, end) from the frames of ``table``; ``piece(i, low, high)`` returns
    bytes [low, high) of frame i (from its decompressed copy, or read in place)."""
    if start >= end:
        return b""
    d_offsets = table.d_offsets
    index = bisect.bisect_right(d_offsets, start) - 1
    base = d_offsets[index]
    if end <= d_offsets[index + 1]:  # inside one frame: the common slice
        return piece(index, start - base, end - base)
    parts: list[bytes] = []
    while start < end:
        top = d_offsets[index + 1]
        if top > base:  # frames of decompressed size 0 are skippable frames
            part_end = min(end, top)
            parts.append(piece(index, start - base, part_end - base))
            start = part_end
        index += 1
        base = top
    return b"".join(parts)


def frame_pieces(frame: Callable[[int], bytes]) -> Callable[[int, int, int], bytes]:
    """A ``piece`` function for read_frames from a function returning whole decompressed frames
    (a slice covering a whole frame is the frame itself: no copy)."""
    return lambda index, low, high: frame(index)[low:high]


class SeekableWriter:
    """Writes a seekable Zstandard file: frames of at most ``frame_bytes``, then the seek table.

    ``mode="a"`` appends to an existing seekable file (its seek table is read, cut
    and rewritten after the new frames). ``flush()`` ends the current frame and
    writes the seek table, so the file is valid after every flush. Not thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "w",
        *,
        level: int = DEFAULT_LEVEL,
        frame_bytes: int = 2**20,
        threads: int = 1,
        min_saving: float = DEFAULT_MIN_SAVING,
    ) -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' or 'a', not {mode!r}")
        if not 1 <= frame_bytes <= MAX_FRAME_DECOMPRESSED_BYTES:
            raise ValueError(f"frame_bytes must be in 1..{MAX_FRAME_DECOMPRESSED_BYTES}, got {frame_bytes}")
        self.path = os.fspath(path)
        self.level = level
        self.frame_bytes = frame_bytes
        self.threads = threads
        self.min_saving = check_min_saving(min_saving)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if mode == "w" else 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._sizes: list[tuple[int, int]] = []
        self._end = 0  # where the next frame goes
        size = os.fstat(self._fd).st_size
        if mode == "a" and size:
            try:
                table = parse_seek_table(pread_at(self._fd), size, self.path)
            except BaseException:
                os.close(self._fd)
                raise
            self._sizes = table.sizes()
            self._end = table.compressed_size
        self._pending = bytearray()
        self._dirty = mode == "w" or not size
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data``; full frames are compressed and written as they fill."""
        view = memoryview(data).cast("B")
        self._pending += view
        if len(self._pending) >= self.frame_bytes:
            whole = len(self._pending) - len(self._pending) % self.frame_bytes
            self._emit(memoryview(self._pending)[:whole])
            del self._pending[:whole]
        return len(view)

    def _emit(self, data: memoryview) -> None:
        if not data.nbytes:
            return
        frames = compress_frames(data, self.frame_bytes, self.level, self.threads, self.min_saving)
        offset = 0
        for frame in frames:
            dsize = min(self.frame_bytes, len(data) - offset)
            self._sizes.append((len(frame), dsize))
            offset += dsize
        self._end += pwritev_all(self._fd, frames, self._end)
        self._dirty = True

    def flush(self) -> None:
        """End the current frame and write the seek table: the file is now valid."""
        if self._pending:
            self._emit(memoryview(bytes(self._pending)))
            self._pending.clear()
        if self._dirty:
            table = encode_seek_table(self._sizes)
            pwrite_all(self._fd, table, self._end)
            os.ftruncate(self._fd, self._end + len(table))
            self._dirty = False

    def close(self) -> None:
        """Flush and close."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self.closed = True

    def __enter__(self) -> SeekableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
