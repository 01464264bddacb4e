"""Reading a segment that lives in the bucket: ranged GETs, every byte checked, a bounded cache.

A :class:`RemoteSegmentReader` stands in for a local segment's reader (reader.SegmentReader):
the engine's read paths call its ``read``/``frame``/``piece``, and it fetches only what they
need. A raw segment's bytes are fetched in the SUM_BLOCK blocks a read touches (one GET for
a contiguous run) and each block is checked against the sums the manifest vouches for. A
compressed segment's seek table is fetched once and checked against the manifest; then a read
fetches exactly the frames it touches, each checked by its own checksum (the seek table's and
Zstandard's), or by the block sums when the table has none. A failed check fetches once more
(a byte flipped in transit), then raises RemoteCorruptionError: bad bytes never reach a caller.
Verified blocks and decompressed frames are kept in one LRU bounded in bytes.
"""

from __future__ import annotations

import array
import bisect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import xxhash

from ..errors import CorruptionError, FlatFileDbNotFoundError, RemoteCorruptionError
from ..frames import FrameCache, decompress_frame
from ..index import FLAG_LEGACY_EXTENT, FLAG_UNCHECKED, HEADER_BYTES, REC_BLOB, decode_records
from ..reader import SegmentReader
from ..seekable import FrameTable, parse_seek_table, read_frames
from .bucket import RemoteBucket
from .manifest import Manifest, decode_sums, hex64, sums_object

CACHED_READ_BYTES = 256 * 2**10  # larger reads bypass the cache (a big blob would flush it)
FETCH_ATTEMPTS = 2


class RemoteSegmentReader(SegmentReader):
    """One remote segment, read through its manifest. Thread-safe."""

    __slots__ = ("_blobs", "_index", "_meta_lock", "block", "bucket", "manifest", "sums")
    REMOTE = True

    def __init__(
        self,
        bucket: RemoteBucket,
        manifest: Manifest,
        name: str,
        cache: FrameCache | None,
        index: Callable[[], bytes | None] | None = None,
    ) -> None:
        super().__init__(manifest.segment, -1, name, manifest.limit, False)
        # The segment's record index (local on the writer, fetched by a remote opener): a read of a
        # whole blob is fetched exactly and checked by the blob's own checksum, not in blocks.
        self._index = index
        self._blobs: tuple[array.array[int], array.array[int], array.array[int]] | None = None
        self.raw = False  # no file and no map: every read of the engine comes through read()
        self.bucket = bucket
        self.manifest = manifest
        self.cache = cache
        self.block = 0
        self.sums: tuple[int, ...] = ()
        self._meta_lock = threading.Lock()
        if manifest.compressed:
            self.table = self._fetch_table()

    # -- metadata -----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.bucket.url}/{self.manifest.data_name}"

    def _load_sums(self) -> None:
        with self._meta_lock:
            if self.block:
                return
            where = f"{self.bucket.url}/{sums_object(self.number)}"
            for attempt in range(FETCH_ATTEMPTS):
                raw = self.bucket.get("get_sums", sums_object(self.number))
                if raw is None:
                    raise self._gone()
                try:
                    self.block, self.sums = decode_sums(raw, self.manifest, where)
                    return
                except RemoteCorruptionError:
                    if attempt == FETCH_ATTEMPTS - 1:
                        raise

    def blob_checksum(self, start: int, end: int) -> int | None:
        """The XXH3-64 of the blob that is exactly [start, end), or None (not a whole blob, or one
        stored without a checksum, or no index to tell)."""
        blobs = self._blobs
        if blobs is None:
            blobs = self._load_blobs()
        starts, ends, sums = blobs
        at = bisect.bisect_left(starts, start)
        if at < len(starts) and starts[at] == start < end == ends[at]:
            return sums[at]
        return None

    def _load_blobs(self) -> tuple[array.array[int], array.array[int], array.array[int]]:
        starts, ends, sums = array.array("Q"), array.array("Q"), array.array("Q")
        raw = self._index() if self._index is not None else None
        if raw is not None:
            for record in decode_records(memoryview(raw)[HEADER_BYTES:]).records:
                if record.rtype == REC_BLOB and not record.flags & (FLAG_UNCHECKED | FLAG_LEGACY_EXTENT):
                    starts.append(record.offset)
                    ends.append(record.end)
                    sums.append(record.checksum)
        self._blobs = (starts, ends, sums)
        return self._blobs

    def _fetch_table(self) -> FrameTable:
        manifest = self.manifest
        at = manifest.data_size - manifest.table_bytes
        for attempt in range(FETCH_ATTEMPTS):
            tail = self._get("get_table", at, manifest.data_size)
            if hex64(xxhash.xxh3_64_intdigest(tail)) == manifest.table_xxh3:
                table = parse_seek_table(_tail_reader(tail, at), manifest.data_size, self._where())
                if manifest.limit > table.decompressed_size:  # reads past the frames would find none
                    raise RemoteCorruptionError(
                        f"{self._where()}: the manifest's limit {manifest.limit} is past the seek table's "
                        f"{table.decompressed_size} bytes",
                        self._where(),
                    )
                return table
            if attempt == FETCH_ATTEMPTS - 1:
                raise RemoteCorruptionError(f"{self._where()}: the seek table does not match the manifest", "", at)
        raise AssertionError("unreachable")

    def _gone(self) -> FlatFileDbNotFoundError:
        return FlatFileDbNotFoundError(2, f"segment {self.number} was deleted from the bucket", self._where())

    def _get(self, kind: str, start: int, end: int) -> bytes:
        try:
            return self.bucket.get_range(kind, self.manifest.data_name, start, end)
        except FileNotFoundError:
            raise self._gone() from None

    # -- reads --------------------------------------------------------------------------

    def read(self, start: int, end: int) -> bytes:
        """Uncompressed bytes [start, end) (already checked against ``limit``)."""
        if start >= end:
            return b""
        if self.table is not None:
            return read_frames(self.table, self.piece, start, end)
        return self._read_blocks(start, end)

    def read_range(self, start: int, end: int) -> bytes:
        """The same as :meth:`read` (the name checksum walkers call)."""
        return self.read(start, end)

    def piece(self, index: int, low: int, high: int, frame: Callable[[int], bytes] | None = None) -> bytes:
        """Bytes [low, high) of frame ``index``, from its decompressed copy."""
        return (frame or self.frame)(index)[low:high]

    def frame(self, index: int) -> bytes:
        """Decompressed frame ``index``, fetched and checked (cached)."""
        cache = self.cache
        key = (self.cache_key, "f", index)
        if cache is not None and (hit := cache.get(key)) is not None:
            return hit
        table = self.table
        assert table is not None  # only compressed readers call this
        c_start, c_end = table.c_offsets[index], table.c_offsets[index + 1]
        dsize = table.d_offsets[index + 1] - table.d_offsets[index]
        checksum = table.checksums[index] if table.checksums is not None else None
        for attempt in range(FETCH_ATTEMPTS):
            raw = self._get("get_frame", c_start, c_end)
            if checksum is None and not has_content_checksum(raw):
                raw = self._verified(c_start, c_end)  # nothing in the frame vouches for it: its blocks do
            try:
                out = decompress_frame(raw, dsize, self._where(), c_start, checksum)
            except CorruptionError as exc:
                if attempt == FETCH_ATTEMPTS - 1:
                    raise RemoteCorruptionError(str(exc), self._where(), c_start) from None
                continue
            if cache is not None and dsize <= CACHED_READ_BYTES:
                cache.put(key, out)
            return out
        raise AssertionError("unreachable")

    def _read_blocks(self, start: int, end: int) -> bytes:
        checksum = self.blob_checksum(start, end)
        if checksum is not None:
            return self._whole_blob(start, end, checksum)
        return self._verified(start, end)

    def _whole_blob(self, start: int, end: int, checksum: int, first: bytes | None = None) -> bytes:
        """A whole blob of a raw segment, fetched exactly and checked against its own checksum
        (``first``: bytes already fetched for it, checked first)."""
        for attempt in range(FETCH_ATTEMPTS):
            data = first if first is not None and attempt == 0 else self._get("get_data", start, end)
            if xxhash.xxh3_64_intdigest(data) == checksum:
                return data
        raise RemoteCorruptionError(
            f"{self._where()}: the blob at {start}..{end} fails its checksum (twice)", self._where(), start
        )

    def _verified(self, start: int, end: int) -> bytes:
        """Data object bytes [start, end), fetched in whole checked blocks (cached when small)."""
        if not self.block:
            self._load_sums()
        block = self.block
        first, last = start // block, (end - 1) // block
        cache = self.cache if end - start <= CACHED_READ_BYTES else None
        parts: list[bytes] = []
        missing_from = first
        if cache is not None:
            while missing_from <= last and (hit := cache.get((self.cache_key, "b", missing_from))) is not None:
                parts.append(hit)
                missing_from += 1
        if missing_from <= last:
            parts.extend(self._fetch_blocks(missing_from, last, cache))
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        base = first * block
        return joined[start - base : end - base]

    def _fetch_blocks(self, first: int, last: int, cache: FrameCache | None) -> list[bytes]:
        block, size = self.block, self.manifest.data_size
        lo, hi = first * block, min((last + 1) * block, size)
        for attempt in range(FETCH_ATTEMPTS):
            raw = self._get("get_data", lo, hi)
            blocks = [raw[at : at + block] for at in range(0, hi - lo, block)]
            bad = next((i for i, b in enumerate(blocks) if xxhash.xxh3_64_intdigest(b) != self.sums[first + i]), None)
            if bad is None:
                if cache is not None:
                    for i, b in enumerate(blocks):
                        cache.put((self.cache_key, "b", first + i), b)
                return blocks
            if attempt == FETCH_ATTEMPTS - 1:
                at = (first + bad) * block
                raise RemoteCorruptionError(
                    f"{self._where()}: bytes {at}..{at + block} fail their checksum (twice)", self._where(), at
                )
        raise AssertionError("unreachable")


def has_content_checksum(frame: bytes) -> bool:
    """True when a Zstandard frame carries a content checksum (its header descriptor's bit 2),
    which decompression checks: a frame whose bytes were changed fails to decompress."""
    return len(frame) > 4 and frame[:4] == b"\x28\xb5\x2f\xfd" and bool(frame[4] & 0x04)


PARALLEL_SEGMENTS = 8  # segments fetched at once by one get_many


def read_groups(groups: list[tuple[Any, list[int], list[tuple[int, int]]]], out: list[bytes]) -> None:
    """For each (remote reader, indexes, ranges): ``out[index]`` = the range's bytes. Segments are
    fetched in parallel (the client releases the GIL while it waits on the network)."""

    def one(group: tuple[Any, list[int], list[tuple[int, int]]]) -> None:
        reader, indexes, ranges = group
        for index, data in zip(indexes, read_many(reader, ranges)):
            out[index] = data

    if len(groups) == 1:
        one(groups[0])
        return
    with ThreadPoolExecutor(min(PARALLEL_SEGMENTS, len(groups)), thread_name_prefix="ffdb-get-many") as pool:
        for done in [pool.submit(one, group) for group in groups]:
            done.result()  # the first error, as a sequential read would raise it


def read_many(reader: RemoteSegmentReader, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Bytes of many ranges of one remote segment: the blocks (or frames) they need are fetched
    in one call that coalesces neighbouring ranges and runs the requests in parallel."""
    if reader.table is not None:
        return _read_many_frames(reader, reader.table, ranges)
    checksums = [reader.blob_checksum(start, end) for start, end in ranges]
    whole = [i for i, checksum in enumerate(checksums) if checksum is not None]
    out: list[bytes] = [b""] * len(ranges)
    if whole:
        try:
            fetched = reader.bucket.get_ranges(
                "get_data", reader.manifest.data_name, [ranges[i][0] for i in whole], [ranges[i][1] for i in whole]
            )
        except FileNotFoundError:
            raise reader._gone() from None  # pylint: disable=protected-access
        for i, data in zip(whole, fetched):
            out[i] = reader._whole_blob(*ranges[i], checksums[i], data)  # type: ignore[arg-type]  # pylint: disable=protected-access
    rest = [i for i, checksum in enumerate(checksums) if checksum is None]
    if rest:
        for i, data in zip(rest, _read_many_blocks(reader, [ranges[i] for i in rest])):
            out[i] = data
    return out


def _read_many_blocks(reader: RemoteSegmentReader, ranges: list[tuple[int, int]]) -> list[bytes]:
    """read_many of ranges that are not whole blobs: the SUM_BLOCK blocks they touch."""
    if not reader.block:
        reader._load_sums()  # pylint: disable=protected-access  # this module's class
    block, size = reader.block, reader.manifest.data_size
    spans = sorted({(s // block, (e - 1) // block) for s, e in ranges if e > s})
    merged: list[list[int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    starts = [first * block for first, _ in merged]
    ends = [min((last + 1) * block, size) for _, last in merged]
    try:
        fetched = reader.bucket.get_ranges("get_data", reader.manifest.data_name, starts, ends)
    except FileNotFoundError:
        raise reader._gone() from None  # pylint: disable=protected-access
    blocks: dict[int, bytes] = {}
    for (first, last), raw in zip(merged, fetched):
        pieces = [raw[at : at + block] for at in range(0, len(raw), block)]
        if any(xxhash.xxh3_64_intdigest(p) != reader.sums[first + i] for i, p in enumerate(pieces)):
            pieces = reader._fetch_blocks(first, last, None)  # pylint: disable=protected-access  # once more, checked
        blocks.update(zip(range(first, last + 1), pieces))
    out = []
    for start, end in ranges:
        if end <= start:
            out.append(b"")
            continue
        first, last = start // block, (end - 1) // block
        joined = b"".join(blocks[i] for i in range(first, last + 1))
        out.append(joined[start - first * block : end - first * block])
    return out


def _read_many_frames(reader: RemoteSegmentReader, table: FrameTable, ranges: list[tuple[int, int]]) -> list[bytes]:
    d_offsets = table.d_offsets
    needed: set[int] = set()
    for start, end in ranges:
        if end > start:
            first = bisect.bisect_right(d_offsets, start) - 1
            last = bisect.bisect_right(d_offsets, end - 1) - 1
            needed.update(range(first, last + 1))
    frames: dict[int, bytes] = {}
    cache = reader.cache
    todo = []
    for index in sorted(needed):
        hit = cache.get((reader.cache_key, "f", index)) if cache is not None else None
        if hit is not None:
            frames[index] = hit
        else:
            todo.append(index)
    if todo:
        starts = [table.c_offsets[i] for i in todo]
        ends = [table.c_offsets[i + 1] for i in todo]
        try:
            fetched = reader.bucket.get_ranges("get_frame", reader.manifest.data_name, starts, ends)
        except FileNotFoundError:
            raise reader._gone() from None  # pylint: disable=protected-access
        for index, raw in zip(todo, fetched):
            dsize = d_offsets[index + 1] - d_offsets[index]
            checksum = table.checksums[index] if table.checksums is not None else None
            try:
                if checksum is None and not has_content_checksum(raw):
                    raise CorruptionError("no checksum in the frame", reader.name)
                frames[index] = decompress_frame(raw, dsize, reader.name, table.c_offsets[index], checksum)
            except CorruptionError:
                frames[index] = reader.frame(index)  # fetched once more, checked
    return [read_frames(table, lambda i, lo, hi: frames[i][lo:hi], start, end) for start, end in ranges]


def _tail_reader(tail: bytes, at: int) -> Callable[[int, int], bytes]:
    """A read_at(offset, size) over the fetched last bytes of a data object that start at ``at``."""

    def read_at(offset: int, size: int) -> bytes:
        return tail[offset - at : offset - at + size] if offset >= at else b""

    return read_at


def open_remote_reader(bucket: RemoteBucket, manifest: Manifest, name: str, cache: Any) -> RemoteSegmentReader:
    """A reader of a remote segment (its seek table fetched now when compressed)."""
    return RemoteSegmentReader(bucket, manifest, name, cache)


__all__ = ["RemoteSegmentReader", "open_remote_reader", "read_groups", "read_many"]
