"""Property tests of streams: whatever the chunking of the source, ``put_stream`` stores exactly
its bytes, and any sequence of seeks and reads on ``open_blob`` returns exactly the bytes a
model file position says, in raw and compressed stores (4 KiB frames, so blobs span many
frames), for blobs written by ``put_stream``, ``put`` and ``put_many``, in the mutable
segment and after it is sealed.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conduit_flat_file_db import DataLocation, FlatFileDb

StoreFactory = Callable[..., FlatFileDb]
FRAME = 4096
MIB = 2**20
BIG_CHUNK = 65536


class ChunkedSource:
    """A readable giving chunk sizes from a cycle (at most what was asked for).

    ``shape`` picks the methods it has: "read" (only read), "readinto" (only readinto), "both".
    """

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self._data = memoryview(data)
        self._chunks = chunks
        self._pos = 0
        self._call = 0

    def _next(self, wanted: int) -> memoryview:
        size = self._chunks[self._call % len(self._chunks)]
        self._call += 1
        count = min(size, wanted, len(self._data) - self._pos)
        out = self._data[self._pos : self._pos + count]
        self._pos += count
        return out


class ReadSource(ChunkedSource):
    """read(n) only."""

    def read(self, size: int = -1) -> bytes:
        """Next chunk."""
        return bytes(self._next(size if size >= 0 else 1 << 62))


class ReadIntoSource(ChunkedSource):
    """readinto(buffer) only."""

    def readinto(self, buffer: Any) -> int:
        """Next chunk, copied into ``buffer``."""
        view = memoryview(buffer).cast("B")
        chunk = self._next(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)


class BothSource(ReadIntoSource):
    """read and readinto."""

    def read(self, size: int = -1) -> bytes:
        """Next chunk."""
        return bytes(self._next(size if size >= 0 else 1 << 62))


SOURCES: dict[str, type[ChunkedSource]] = {"read": ReadSource, "readinto": ReadIntoSource, "both": BothSource}


def payload(size: int, seed: int) -> bytes:
    """Half random, half repetitive bytes: some frames compress, some do not."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + (rng.randbytes(53) * (size // 53 + 1))[: size - half]


@dataclass
class Stores:
    """One raw and one compressed store, reused across the examples of a test."""

    raw: FlatFileDb
    zstd: FlatFileDb

    def pick(self, compressed: bool) -> FlatFileDb:
        """The store of that mode."""
        return self.zstd if compressed else self.raw


@pytest.fixture(name="stores")
def stores_fixture(make_store: StoreFactory) -> Iterator[Stores]:
    """Both stores with small frames; verified clean at teardown by make_store."""
    yield Stores(make_store("raw", frame_bytes=FRAME), make_store("zstd", use_compression=True, frame_bytes=FRAME))


sizes = st.one_of(st.integers(0, 3 * FRAME), st.integers(0, 2 * MIB), st.sampled_from([0, 1, FRAME, 2 * MIB]))
chunk_sizes = st.lists(
    st.one_of(st.integers(1, 9), st.integers(1, 70_000), st.sampled_from([FRAME - 1, FRAME, FRAME + 1, 4 * MIB])),
    min_size=1,
    max_size=6,
)
whences = st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])


def bounded_chunks(chunks: list[int], size: int) -> list[int]:
    """Keep tiny chunks for any blob, but bound the number of calls for big blobs."""
    if size > 20_000 and max(chunks) < 16_384:
        return chunks + [BIG_CHUNK]
    return chunks


@st.composite
def operations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A sequence of (op, argument, whence): seeks anywhere (also before 0 and past the end),
    seeks to a point inside the blob (argument: per mille of its size, reached from ``whence``),
    reads of any length (-1 and past the end too), readinto, tell."""
    span = size + 2 * FRAME
    offsets = st.one_of(st.integers(-span, span), st.integers(-size, 0), st.integers(0, size), st.integers(-3, 3))
    ops = st.one_of(
        st.tuples(st.just("seek"), offsets, whences),
        st.tuples(st.just("seek-inside"), st.integers(0, 1000), whences),
        st.tuples(st.just("read"), st.one_of(st.integers(-1, 3 * FRAME), st.integers(0, size + 10)), st.just(0)),
        st.tuples(st.just("readinto"), st.integers(0, 3 * FRAME), st.just(0)),
        st.tuples(st.just("read"), st.just(1), st.just(0)),
        st.tuples(st.just("tell"), st.just(0), st.just(0)),
    )
    return draw(st.lists(ops, max_size=25))


def check_operations(db: FlatFileDb, location: DataLocation, data: bytes, ops: list[tuple[str, int, int]]) -> None:
    """Run ``ops`` on open_blob(location) against a model position over ``data``."""
    pos = 0
    with db.open_blob(location) as blob:
        assert blob.tell() == 0
        for op, arg, whence in ops:
            if op == "seek-inside":
                op, arg = (
                    "seek",
                    len(data) * arg // 1000 - {io.SEEK_SET: 0, io.SEEK_CUR: pos, io.SEEK_END: len(data)}[whence],
                )
            if op == "seek":
                base = {io.SEEK_SET: 0, io.SEEK_CUR: pos, io.SEEK_END: len(data)}[whence]
                if base + arg < 0:
                    with pytest.raises((ValueError, OSError)):
                        blob.seek(arg, whence)
                else:
                    pos = base + arg
                    assert blob.seek(arg, whence) == pos
            elif op == "read":
                want = data[pos:] if arg < 0 else data[pos : pos + arg]
                assert blob.read(arg) == want, (op, arg, pos)
                pos = max(pos, min(len(data), pos + len(want)))
            elif op == "readinto":
                buffer = bytearray(b"\xee" * arg)
                count = blob.readinto(buffer)
                want = data[pos : pos + arg]
                assert count == len(want) and bytes(buffer[:count]) == want, (op, arg, pos)
                assert buffer[count:] == b"\xee" * (arg - count)
                pos += count
            assert blob.tell() == pos
        blob.seek(0)
        assert blob.read() == data
        assert blob.read() == b""


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(compressed=st.booleans(), size=sizes, chunks=chunk_sizes, shape=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_put_stream_then_random_seeks_and_reads(
    stores: Stores, compressed: bool, size: int, chunks: list[int], shape: str, data: st.DataObject
) -> None:
    """put_stream from any chunking; then any seek/read sequence reads the bytes put."""
    db = stores.pick(compressed)
    seed = data.draw(st.integers(0, 2**32), label="seed")
    blob = payload(size, seed)
    chunks = bounded_chunks(chunks, size)
    note(f"chunks={chunks}")
    location = db.put_stream(SOURCES[shape](blob, chunks))
    assert location.start_offset == 0 and location.end_offset == size
    ops = data.draw(operations(size))
    check_operations(db, location, blob, ops)
    assert db.get(location) == blob


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    compressed=st.booleans(), size=sizes, how=st.sampled_from(["put", "put_many"]), seal=st.booleans(), data=st.data()
)
def test_open_blob_of_put_and_put_many(
    stores: Stores, compressed: bool, size: int, how: str, seal: bool, data: st.DataObject
) -> None:
    """open_blob serves blobs of put / put_many too, in the mutable segment or sealed (and, when
    compressed, re-framed); a slice taken with seek/tell is the slice of the blob."""
    db = stores.pick(compressed)
    seed = data.draw(st.integers(0, 2**32), label="seed")
    blob = payload(size, seed)
    before = db.put(payload(seed % 5000, seed + 1))  # the blob does not start the segment
    if how == "put":
        location = db.put(blob)
    else:
        neighbours = [payload(n, seed + n) for n in (1, 4097, 3)]
        location = db.put_many([neighbours[0], neighbours[1], blob, neighbours[2]])[2]
    if seal:
        db.rotate()
    ops = data.draw(operations(size))
    check_operations(db, location, blob, ops)
    start = data.draw(st.integers(0, size))
    stop = data.draw(st.integers(start, size))
    with db.open_blob(location) as handle:
        handle.seek(start)
        assert handle.tell() == start
        assert handle.read(stop - start) == blob[start:stop]
        assert handle.tell() == stop
    assert db.get(before) == payload(seed % 5000, seed + 1)
