"""Blobs larger than RAM: writing a stream aside in constant memory, and lazy openers.

A streamed blob is written to a private scratch file in the datadir (raw, or seekable
Zstandard), then committed as a sealed segment of its own by rename (writer.py
``commit_sealed_file``): other writers are held back only for that rename, never for
the copy.
"""

from __future__ import annotations

import os
import uuid
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple

import xxhash

from .checksums import CHECK_CHUNK_BYTES, checksum_range
from .fileio import pread_at, pwrite_all
from .frames import ZSTD_FRAME_MAGIC
from .index import KIND_RAW, KIND_ZSTD
from .naming import temp_name
from .seekable import Framing, SeekableReader, parse_seek_table
from .segment_files import OPEN_WRITE

STREAM_CHUNK_BYTES = 4 * 2**20


class LazyOpener:
    """A file that is opened only when it is read, and closed right after.

    ``put_streams`` enters it as a context manager, reads it and exits it, so storing
    100,000 files holds at most one of them open at a time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._handle: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self._handle = open(self.path, "rb")  # pylint: disable=consider-using-with  # closed in __exit__
        return self._handle

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __repr__(self) -> str:
        return f"LazyOpener({self.path!r})"


class Written(NamedTuple):
    """A stream written aside: scratch file name (in the datadir), sizes, checksum."""

    name: str
    size: int  # uncompressed bytes
    disk_size: int
    checksum: int


def read_chunk(source: Any, buffer: bytearray | memoryview) -> memoryview:
    """Fill as much of ``buffer`` as one call gives; an empty view at end of stream."""
    view = memoryview(buffer)
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        count = readinto(view)
        if count is None:
            raise ValueError(
                "the stream has no data ready (non-blocking?); a blob must come from a blocking "
                "stream, or it would be stored cut short"
            )
        if type(count) is not int or not 0 <= count <= len(view):  # pylint: disable=unidiomatic-typecheck
            # Taken as it is, a negative count would store the buffer's stale bytes (view[:-1]),
            # and a stream that keeps returning one would be copied until the disk is full.
            raise ValueError(f"readinto() of the stream returned {count!r}, not a byte count in 0..{len(view)}")
        return view[:count]
    data = source.read(len(buffer))
    if data is None:
        raise ValueError(
            "the stream has no data ready (non-blocking?); a blob must come from a blocking "
            "stream, or it would be stored cut short"
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read() of the stream returned {type(data).__name__}, not bytes")
    if len(data) > len(view):
        raise ValueError(f"read({len(view)}) of the stream returned {len(data)} bytes, more than asked for")
    view[: len(data)] = data
    return view[: len(data)]


def write_aside(
    dir_fd: int,
    datadir: str,
    source: Any,
    prefix: bytes,
    *,
    framing: Framing,  # pylint: disable=too-many-arguments
    fsync: bool,
) -> Written:
    """Copy ``prefix`` then everything ``source`` yields into a scratch file, in constant memory.

    ``fsync``: make the file durable before returning (``fsync=True`` stores). Otherwise
    it becomes a sealed segment that the store's sync thread fsyncs after the commit, as
    it does every sealed segment.
    """
    if not (hasattr(source, "readinto") or hasattr(source, "read")):
        raise TypeError(f"put_stream() needs an object with read() or readinto(), not {type(source).__name__}")
    name = temp_name(f"stream-{uuid.uuid4().hex}")
    hasher = xxhash.xxh3_64()
    size = 0
    buffer = bytearray(STREAM_CHUNK_BYTES)
    try:
        if framing.compressed:
            with framing.writer(os.path.join(datadir, name)) as out:
                chunk: memoryview | bytes = prefix or read_chunk(source, buffer)
                while chunk:
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    chunk = read_chunk(source, buffer)
            fd = os.open(name, OPEN_WRITE, dir_fd=dir_fd)
        else:
            fd = os.open(name, OPEN_WRITE | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            chunk = prefix or read_chunk(source, buffer)
            while chunk:
                hasher.update(chunk)
                pwrite_all(fd, chunk, size)
                size += len(chunk)
                chunk = read_chunk(source, buffer)
        try:
            if fsync:
                os.fsync(fd)
            disk_size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    return Written(name, size, disk_size, hasher.intdigest())


HEAD_FIRST_BYTES = 64 * 2**10  # read_head's first buffer; it doubles up to the limit as the stream goes on


def read_head(source: Any, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes from the start of a stream, and whether the stream ended within them.

    The buffer starts at HEAD_FIRST_BYTES and doubles while the stream goes on (rejected: one
    buffer of ``limit`` bytes, zeroed for every input, which made a put_streams of many small
    files several times slower than their reads)."""
    buffer = bytearray(min(limit, HEAD_FIRST_BYTES))
    got = 0
    while got < limit:
        if got == len(buffer):
            buffer.extend(bytes(min(len(buffer), limit - len(buffer))))
        with memoryview(buffer) as view:
            count = len(read_chunk(source, view[got:]))
        if not count:
            del buffer[got:]
            return bytes(buffer), True
        got += count
    return bytes(buffer), False


def examine_for_adoption(fd: int, source: str, size: int, verify: bool) -> tuple[int, int, int]:
    """(kind, uncompressed size, checksum or 0) of a file about to be adopted."""
    head = os.pread(fd, 4, 0)
    magic = int.from_bytes(head, "little") if len(head) == 4 else 0
    if magic == ZSTD_FRAME_MAGIC or magic & 0xFFFFFFF0 == 0x184D2A50:
        table = parse_seek_table(pread_at(fd), size, source)
        if not verify:
            return KIND_ZSTD, table.decompressed_size, 0
        reader = SeekableReader(fd, table=table)
        hasher = xxhash.xxh3_64()
        for pos in range(0, table.decompressed_size, CHECK_CHUNK_BYTES):
            hasher.update(reader.read_range(pos, min(table.decompressed_size, pos + CHECK_CHUNK_BYTES)))
        return KIND_ZSTD, table.decompressed_size, hasher.intdigest()
    return KIND_RAW, size, checksum_range(fd, 0, size) if verify else 0
