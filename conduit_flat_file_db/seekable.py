"""The Zstandard seekable format (contrib/seekable_format v0.1.0): reader, writer, seek table.

Usable on its own, with no store logic: ``SeekableReader`` opens any conformant
seekable file (seek table with or without per-frame checksums, skippable frames
inside) and reads any uncompressed range by decompressing only the frames it
overlaps; ``SeekableWriter`` writes a new file or appends to an existing one.

A seekable file is Zstandard frames followed by one skippable frame holding the
seek table (FORMAT.md "Compressed segment"; ../shared/SEEKABLE_FORMAT.md):

    magic 0x184D2A5E u32 | size u32 | N x (csize u32, dsize u32[, xxh64_lo u32]) |
    N u32 | descriptor u8 | magic 0x8F92EAB1 u32
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
import struct
import threading
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Hashable, Iterable, NamedTuple, Sequence

import xxhash
import zstandard

from .errors import CorruptionError, FormatError
from .fileio import pread_at, pread_full, pwrite_all, pwritev_all

SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
ZSTD_FRAME_MAGIC = 0xFD2FB528
PADDING_MAGIC = 0x184D2A50  # skippable frame we use for reserved space (FORMAT.md)
SKIPPABLE_HEADER_BYTES = 8
FOOTER_BYTES = 9
MAX_FRAMES = 0x8000000
MAX_FRAME_DECOMPRESSED_BYTES = 2**30
DESCRIPTOR_CHECKSUM_FLAG = 0x80
DESCRIPTOR_RESERVED_MASK = 0x7C
DEFAULT_LEVEL = 3
WINDOW_LOG_MAX = 27  # plain ``zstd -d`` refuses larger windows by default

_FOOTER = struct.Struct("<IBI")
_SKIP_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> bytes


class Framing(NamedTuple):
    """How a file is written: raw, or compressed in frames of ``frame_bytes`` at ``level``."""

    compressed: bool
    level: int = 3
    frame_bytes: int = 2**20
    threads: int = 1
    min_saving: float = 0.125


class FrameTable:
    """Cumulative compressed and decompressed offsets of a seekable file's frames.

    ``c_offsets[i]`` / ``d_offsets[i]`` are where frame i starts; index N holds the
    totals. Frames with decompressed size 0 (skippable frames) are kept so that
    compressed offsets stay right; lookups never land on them.
    """

    __slots__ = ("c_offsets", "d_offsets", "checksums")

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


def encode_seek_table(sizes: Sequence[tuple[int, int]], checksums: Sequence[int] | None = None) -> bytes:
    """The skippable frame holding a seek table for frames of the given sizes."""
    if len(sizes) > MAX_FRAMES:
        raise ValueError(f"{len(sizes)} frames is more than the format allows ({MAX_FRAMES})")
    if checksums is None:
        body = b"".join(struct.pack("<II", c, d) for c, d in sizes)
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
        raise FormatError(f"{path}: no seekable footer at offset {footer_at + 5} (magic {magic:#010x}); "
                          "not a seekable Zstandard file")
    if descriptor & DESCRIPTOR_RESERVED_MASK:
        raise FormatError(f"{path}: reserved descriptor bits set ({descriptor:#04x}) at offset {footer_at + 4}")
    if count > MAX_FRAMES:
        raise FormatError(f"{path}: seek table claims {count} frames (limit {MAX_FRAMES})")
    entry = 12 if descriptor & DESCRIPTOR_CHECKSUM_FLAG else 8
    table_bytes = SKIPPABLE_HEADER_BYTES + count * entry + FOOTER_BYTES
    if table_bytes > file_size:
        raise FormatError(f"{path}: seek table of {count} frames ({table_bytes} bytes) "
                          f"does not fit the {file_size}-byte file")
    table_at = file_size - table_bytes
    raw = _exact(read_at, table_at, table_bytes - FOOTER_BYTES, path)
    skip_magic, frame_size = _SKIP_HEADER.unpack_from(raw, 0)
    if skip_magic != SEEK_TABLE_MAGIC:
        raise FormatError(f"{path}: seek table frame magic {skip_magic:#010x} at offset {table_at}")
    if frame_size != table_bytes - SKIPPABLE_HEADER_BYTES:
        raise FormatError(f"{path}: seek table frame size {frame_size} at offset {table_at + 4} "
                          f"does not match {count} entries")
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


def scan_frames(read_at: ReadAt, size: int) -> list[tuple[int, int]]:
    """(compressed, decompressed) sizes of the complete frames at the start of a file, found
    by walking frame and block headers: no seek table needed. Stops at the first frame
    that is cut short or is not a frame; skippable frames count with decompressed size 0.
    """
    sizes: list[tuple[int, int]] = []
    pos = 0
    while pos + SKIPPABLE_HEADER_BYTES <= size:
        head = read_at(pos, 18)  # the longest frame header
        magic = _U32.unpack_from(head, 0)[0]
        if magic & 0xFFFFFFF0 == 0x184D2A50:
            end = pos + SKIPPABLE_HEADER_BYTES + _U32.unpack_from(head, 4)[0]
            if end > size:
                break
            sizes.append((end - pos, 0))
            pos = end
            continue
        if magic != ZSTD_FRAME_MAGIC:
            break
        try:
            at = pos + zstandard.frame_header_size(head)
            params = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError:
            break
        complete = False
        while at + 3 <= size:
            block = int.from_bytes(read_at(at, 3), "little")
            kind, block_size = (block >> 1) & 3, block >> 3
            if kind == 3:
                break
            at += 3 + (1 if kind == 1 else block_size)
            if block & 1:
                complete = True
                break
        at += 4 if params.has_checksum else 0
        if not complete or at > size:
            break
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN:
            dsize = params.content_size
        else:
            try:
                dsize = len(decompressor().decompressobj().decompress(read_at(pos, at - pos)))
            except zstandard.ZstdError:
                break
        sizes.append((at - pos, dsize))
        pos = at
    return sizes


class FrameCache:
    """A thread-safe LRU of decompressed frames, bounded in bytes (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> bytes | None:
        """The cached frame, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: bytes) -> None:
        """Cache a frame, evicting the least recently used ones beyond the limit."""
        if not value or len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _key, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes


_local = threading.local()
_reader_tokens = itertools.count()


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (zstandard objects are not thread-safe)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` (content size and checksum in every frame)."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=True, write_content_size=True)
        if params.window_log > WINDOW_LOG_MAX:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, write_checksum=True, write_content_size=True, window_log=WINDOW_LOG_MAX)
        cctx = cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return cctx


# A Zstandard block of 4 bytes (3-byte header, 1-byte RLE payload) can stand for 128 KiB:
# no frame decompresses to more than this many times its compressed size.
MAX_EXPANSION = 2**15


def decompress_frame(frame: bytes, dsize: int, path: str, offset: int, checksum: int | None = None) -> bytes:
    """Decompress one whole frame that must yield exactly ``dsize`` bytes.

    Sizes claimed by the seek table or the frame header are checked before any
    memory is allocated for them, so a forged file cannot make us allocate more
    than its own size allows.
    """
    if dsize > MAX_FRAME_DECOMPRESSED_BYTES or dsize > (len(frame) + 1) * MAX_EXPANSION:
        raise CorruptionError(f"{path} at offset {offset}: a {len(frame)}-byte frame cannot hold {dsize} bytes",
                              path, offset)
    try:
        claimed = zstandard.frame_content_size(frame)
        if claimed not in (-1, dsize):
            raise CorruptionError(f"{path} at offset {offset}: frame header says {claimed} bytes, "
                                  f"the seek table says {dsize}", path, offset)
        if claimed == -1:  # no size in the header: stream, so memory follows real output only
            dobj = decompressor().decompressobj()
            out = dobj.decompress(frame)
        else:
            out = decompressor().decompress(frame, max_output_size=dsize)
    except zstandard.ZstdError as exc:
        raise CorruptionError(f"{path} at offset {offset}: bad Zstandard frame ({exc})", path, offset) from None
    if len(out) != dsize:
        raise CorruptionError(f"{path} at offset {offset}: frame decompressed to {len(out)} bytes, "
                              f"the seek table says {dsize}", path, offset)
    if checksum is not None and xxhash.xxh64_intdigest(out) & 0xFFFFFFFF != checksum:
        raise CorruptionError(f"{path} at offset {offset}: frame fails its seek-table checksum", path, offset)
    return out


_MAX_BLOCK_BYTES = 128 * 2**10


def stored_frame(data: bytes | bytearray | memoryview) -> bytes:
    """A Zstandard frame that stores ``data`` uncompressed (raw blocks), with its content size
    and checksum: any decoder reads it, and making it costs a copy and an XXH64.

    Small puts are written this way: compressing a few KiB alone costs far more CPU than
    writing it and gains little; the segment is compressed for real when it is sealed.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < 256:
        header = struct.pack("<IBB", ZSTD_FRAME_MAGIC, 0x24, size)  # single segment, checksum, 1-byte size
    elif size < 65536 + 256:
        header = struct.pack("<IBH", ZSTD_FRAME_MAGIC, 0x64, size - 256)
    elif size < 2**32:
        header = struct.pack("<IBI", ZSTD_FRAME_MAGIC, 0xA4, size)
    else:
        header = struct.pack("<IBQ", ZSTD_FRAME_MAGIC, 0xE4, size)
    parts: list[bytes | memoryview] = [header]
    for start in range(0, max(size, 1), _MAX_BLOCK_BYTES):
        chunk = view[start : start + _MAX_BLOCK_BYTES]
        last = 1 if start + _MAX_BLOCK_BYTES >= size else 0
        parts.append((len(chunk) << 3 | last).to_bytes(3, "little"))
        parts.append(chunk)
    parts.append(_U32.pack(xxhash.xxh64_intdigest(view) & 0xFFFFFFFF))
    return b"".join(parts)


# By default a frame that compression shrinks by less than 1/8 is written stored instead
# (raw blocks): reading it back costs a copy, not a decompression, and a slice of it is one
# pread. LevelDB and RocksDB apply the same rule to their blocks. It costs at most 1/7 more
# disk on data that compresses by just under 1/8; 0 stores only what compression enlarges.
DEFAULT_MIN_SAVING = 0.125


def check_min_saving(min_saving: float) -> float:
    """``min_saving`` as a float in [0, 1), or ValueError/TypeError."""
    if isinstance(min_saving, bool) or not isinstance(min_saving, (int, float)):
        raise TypeError(f"min_frame_saving must be a number, got {type(min_saving).__name__}")
    if not 0 <= min_saving < 1:
        raise ValueError(f"min_frame_saving must be in [0, 1), got {min_saving}")
    return float(min_saving)


def compress_frames(data: bytes | memoryview, frame_bytes: int, level: int, threads: int = 1,
                    min_saving: float = DEFAULT_MIN_SAVING) -> list[bytes]:
    """Cut ``data`` into frames of at most ``frame_bytes`` and compress them.

    With ``threads > 1`` and more than one frame, frames are compressed in parallel
    (zstandard's C workers, the GIL released), and returned in order. A frame that
    compression shrinks by less than the fraction ``min_saving`` is returned stored.
    """
    view = memoryview(data).cast("B")
    if len(view) <= frame_bytes:
        frames = [compressor(level).compress(view)]
    elif threads > 1:
        # One buffer with segment offsets: zstandard's C workers read it in place.
        segments = struct.pack(f"<{2 * ((len(view) + frame_bytes - 1) // frame_bytes)}Q",
                               *(v for i in range(0, len(view), frame_bytes)
                                 for v in (i, min(frame_bytes, len(view) - i))))
        # The workers read any contiguous buffer in place: no copy of a bytearray or a view.
        result = compressor(level).multi_compress_to_buffer(zstandard.BufferWithSegments(view, segments),
                                                            threads=threads)
        frames = [result[i].tobytes() for i in range(len(result))]
    else:
        cctx = compressor(level)
        frames = [cctx.compress(view[i : i + frame_bytes]) for i in range(0, len(view), frame_bytes)]
    for number, frame in enumerate(frames):
        size = min(frame_bytes, len(view) - number * frame_bytes)
        if len(frame) > size * (1 - min_saving):
            frames[number] = stored_frame(view[number * frame_bytes : number * frame_bytes + size])
    return frames


_FCS_BYTES = (0, 2, 4, 8)
_DICT_ID_BYTES = (0, 1, 2, 4)
STORED_PROBE_BYTES = 4 + 1 + 1 + 4 + 8 + 3  # the longest frame header, then one block header


def stored_payload(head: bytes, csize: int, dsize: int) -> int:
    """Where the bytes of a one-block stored frame start within it, or -1 if it is not one.

    ``head``: the frame's first bytes (up to STORED_PROBE_BYTES); ``csize``/``dsize``: its
    sizes from the frame table. A frame of one raw block holds its content verbatim, so a
    slice of it can be read from the file with no decompression, whoever wrote it.
    """
    if len(head) < 5 or _U32.unpack_from(head)[0] != ZSTD_FRAME_MAGIC or not 0 < dsize <= _MAX_BLOCK_BYTES:
        return -1
    descriptor = head[4]
    if descriptor & 0x08:  # reserved bit
        return -1
    single = descriptor >> 5 & 1
    fcs = _FCS_BYTES[descriptor >> 6] or single
    at = 5 + (0 if single else 1) + _DICT_ID_BYTES[descriptor & 3] + fcs
    if at + 3 > len(head):
        return -1
    block = int.from_bytes(head[at : at + 3], "little")
    checksum = 4 if descriptor & 0x04 else 0
    if block != (dsize << 3 | 1) or csize != at + 3 + dsize + checksum:  # last block, raw, all of it
        return -1
    return at + 3


class SeekableReader(io.RawIOBase):
    """A read-only, seekable file object over the uncompressed bytes of a seekable file.

    ``read_range(start, end)`` reads any uncompressed range directly. Only frames the
    read overlaps are decompressed; a FrameCache may be shared between readers, which
    share cached frames only when given the same ``cache_key``.
    Not thread-safe for ``read``/``seek`` (a file position); ``read_range`` is.
    """

    def __init__(self, file: str | os.PathLike[str] | int | BinaryIO, *, cache: FrameCache | None = None,
                 table: FrameTable | None = None, verify_checksums: bool = True,
                 cache_key: Hashable | None = None) -> None:
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
        table = self.table
        c_start, c_end = table.c_offsets[index], table.c_offsets[index + 1]
        dsize = table.d_offsets[index + 1] - table.d_offsets[index]
        raw = pread_full(self._fd, c_end - c_start, c_start)
        if len(raw) != c_end - c_start:
            raise CorruptionError(f"{self.name} at offset {c_start}: frame is cut short", self.name, c_start)
        checksum = table.checksums[index] if self._verify and table.checksums is not None else None
        out = decompress_frame(raw, dsize, self.name, c_start, checksum)
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

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", *, level: int = DEFAULT_LEVEL,
                 frame_bytes: int = 2**20, threads: int = 1, min_saving: float = DEFAULT_MIN_SAVING) -> None:
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
