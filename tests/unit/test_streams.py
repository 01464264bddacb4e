"""Streams and bulk reads: ``put_stream`` from every kind of readable, the segment layout it
leaves (its own sealed segment), ``open_blob`` frame costs, ``get_many`` / ``iter_many``
order and errors, and zero-copy ``get_view`` (numpy, delete while held).

Segment files are inspected with the byte layout of FORMAT.md (sections 2 and 4), not with
engine internals, so these tests keep the format honest too.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import FlatFileDbNotFoundError, InvalidLocationError

StoreFactory = Callable[..., FlatFileDb]
FRAME = 4096
REC_BLOB, REC_FRAME, REC_SEAL = 1, 2, 3  # FORMAT.md "Record index: records"
_RECORD = struct.Struct("<BBHIQQQ")


# -- readables of every shape --------------------------------------------------------


class ReadOnly:
    """Has only ``read(n)``; gives at most ``chunk`` bytes per call."""

    def __init__(self, data: bytes, chunk: int = 1 << 30) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        """Up to min(size, chunk) bytes; b"" at the end."""
        self.calls += 1
        count = self._chunk if size < 0 else min(size, self._chunk)
        out = self._data[self._pos : self._pos + count]
        self._pos += len(out)
        return out


class ReadIntoOnly:
    """Has only ``readinto(buffer)``; fills at most ``chunk`` bytes per call."""

    def __init__(self, data: bytes, chunk: int = 1 << 30) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk
        self.calls = 0

    def readinto(self, buffer: Any) -> int:
        """Copy up to min(len(buffer), chunk) bytes into ``buffer``; 0 at the end."""
        self.calls += 1
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._chunk, len(self._data) - self._pos)
        view[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


class Both(ReadIntoOnly):
    """Has ``read`` and ``readinto``, both giving short reads."""

    def read(self, size: int = -1) -> bytes:
        """Up to min(size, chunk) bytes."""
        buffer = bytearray(self._chunk if size < 0 else min(size, self._chunk))
        return bytes(buffer[: self.readinto(buffer)])


def payload(size: int, seed: int) -> bytes:
    """Half random, half repetitive bytes (compressible, and not uniform)."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + (rng.randbytes(37) * (size // 37 + 1))[: size - half]


def letters(size: int, seed: int) -> bytes:
    """Random letters of a 16-letter alphabet: every frame compresses (about 2x), none is stored."""
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(size))


# -- FORMAT.md helpers ------------------------------------------------------------------


def number_of(location: DataLocation) -> int:
    """Segment number named by a location's file name (FORMAT.md section 2)."""
    return int(os.path.basename(location.file_path).split(".")[0][len("data_") :])


def records_of(datadir: Path, number: int) -> list[tuple[int, int, int, int]]:
    """(type, a, b, c) of every record of segment ``number``'s index, decoded by FORMAT.md section 4."""
    raw = (datadir / f"data_{number:08d}.idx").read_bytes()
    assert raw[:8] == b"FFDB-IDX"
    out = []
    for at in range(32, len(raw) - len(raw) % 32, 32):
        rtype, _flags, _res, _crc, a, b, c = _RECORD.unpack_from(raw, at)
        out.append((rtype, a, b, c))
    return out


def store_files(datadir: Path) -> list[str]:
    """Every file of the datadir but the state page."""
    return sorted(name for name in os.listdir(datadir) if name != "ffdb.state")


def segment_data_files(datadir: Path) -> dict[int, str]:
    """{segment number: data file name}."""
    out = {}
    for name in os.listdir(datadir):
        if name.startswith("data_") and not name.endswith(".idx"):
            out[int(name[5:13])] = name
    return out


# -- put_stream -----------------------------------------------------------------------------


@pytest.fixture(name="compressed", params=[False, True], ids=["raw", "zstd"])
def compressed_fixture(request: pytest.FixtureRequest) -> bool:
    """Run a test on raw and on compressed stores."""
    return bool(request.param)


READERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("read-only", ReadOnly),
    ("readinto-only", ReadIntoOnly),
    ("both", Both),
    ("bytesio", io.BytesIO),
    ("read-1-byte", lambda data: ReadOnly(data, 1)),
    ("readinto-1-byte", lambda data: ReadIntoOnly(data, 1)),
    ("both-odd-chunks", lambda data: Both(data, 4097)),
]


@pytest.mark.parametrize("maker", [m for _, m in READERS], ids=[n for n, _ in READERS])
@pytest.mark.parametrize("size", [0, 1, FRAME - 1, 3 * FRAME + 5, 300_000])
def test_put_stream_round_trip(
    make_store: StoreFactory, compressed: bool, maker: Callable[[bytes], Any], size: int
) -> None:
    """Every readable shape, short reads included, stores exactly its bytes; reopen keeps them."""
    if size > 20_000 and maker in (READERS[4][1], READERS[5][1]):
        size = 20_000  # one Python call per byte: keep it quick
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    data = payload(size, size)
    location = db.put_stream(maker(data))
    assert location.start_offset == 0 and location.end_offset == size
    assert location.file_path.endswith(".dat.zst" if compressed else ".dat")
    assert db.get(location) == data
    with db.open_blob(location) as blob:
        assert blob.read() == data
    db.close()
    again = make_store(use_compression=compressed, frame_bytes=FRAME)
    assert again.get(location) == data


def test_put_stream_single_byte_reads_are_all_consumed(store: FlatFileDb) -> None:
    """A stream giving one byte per call is read to its end, not stopped at the first short read."""
    data = payload(5000, 1)
    source = ReadIntoOnly(data, 1)
    location = store.put_stream(source)
    assert store.get(location) == data
    assert source.calls >= len(data)


@pytest.mark.parametrize(
    "bad", [42, b"bytes are not a stream", None, [b"a list"], "a str"], ids=["int", "bytes", "None", "list", "str"]
)
def test_put_stream_refuses_non_readables(make_store: StoreFactory, compressed: bool, bad: Any, tmp_path: Path) -> None:
    """TypeError, and not a single file changes in the datadir."""
    db = make_store(use_compression=compressed)
    first = db.put(b"before")
    before = store_files(tmp_path / "store")
    sizes = {name: os.path.getsize(tmp_path / "store" / name) for name in before}
    with pytest.raises(TypeError):
        db.put_stream(bad)
    assert store_files(tmp_path / "store") == before
    assert {name: os.path.getsize(tmp_path / "store" / name) for name in before} == sizes
    assert db.get(first) == b"before"
    assert db.get(db.put(b"after")) == b"after"


class StrReader:
    """A text stream: read() gives str."""

    def read(self, size: int = -1) -> str:
        """Text, which a blob store cannot take."""
        return "text" if size else ""


def test_put_stream_refuses_text_and_leaves_no_scratch(
    make_store: StoreFactory, compressed: bool, tmp_path: Path
) -> None:
    """A read() returning str is a TypeError; the scratch file is removed, no segment appears."""
    db = make_store(use_compression=compressed)
    db.put(b"x")
    before = store_files(tmp_path / "store")
    with pytest.raises(TypeError):
        db.put_stream(StrReader())
    assert store_files(tmp_path / "store") == before


class NonBlockingReadInto:
    """A non-blocking raw stream (io.RawIOBase contract): readinto gives None when no byte is
    ready *yet*; more data follows."""

    def __init__(self, parts: list[bytes | None]) -> None:
        self._parts = parts

    def readinto(self, buffer: Any) -> int | None:
        """Next part (None: would block)."""
        if not self._parts:
            return 0
        part = self._parts.pop(0)
        if part is None:
            return None
        memoryview(buffer)[: len(part)] = part
        return len(part)


def test_put_stream_does_not_silently_truncate_on_readinto_none(store: FlatFileDb, tmp_path: Path) -> None:
    """readinto() returning None means "no data yet", not end of stream (io.RawIOBase). Storing
    the bytes read so far as if that were the whole blob loses the rest silently; read()
    returning None is already refused with TypeError, readinto() must not be laxer."""
    store.put(b"x")
    before = store_files(tmp_path / "store")
    source = NonBlockingReadInto([b"first part ", None, b"second part"])
    try:
        location = store.put_stream(source)
    except (TypeError, ValueError, OSError):
        assert store_files(tmp_path / "store") == before  # refused, nothing committed: fine
        return
    assert store.get(location) == b"first part second part", "put_stream stored a truncated blob without error"


def test_put_stream_seals_a_non_empty_mutable_segment(
    make_store: StoreFactory, compressed: bool, tmp_path: Path
) -> None:
    """Segment n (non-empty) is sealed, the stream is n+1 (one blob, sealed), n+2 is mutable."""
    datadir = tmp_path / "store"
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    small = [db.put(payload(100 + i, i)) for i in range(3)]
    n = db.mutable_segment()
    data = payload(50_000, 7)
    location = db.put_stream(io.BytesIO(data))
    assert number_of(location) == n + 1
    assert db.mutable_segment() == n + 2
    assert db.segments() == [n, n + 1, n + 2]
    old = [r for r in records_of(datadir, n) if r[0] != REC_FRAME]
    assert [r[0] for r in old] == [REC_BLOB] * 3 + [REC_SEAL], "the previous mutable segment is sealed"
    assert old[-1][1] == small[-1].end_offset
    streamed = [r for r in records_of(datadir, n + 1) if r[0] != REC_FRAME]
    assert [r[0] for r in streamed] == [REC_BLOB, REC_SEAL]
    assert streamed[0][1:3] == (0, len(data)) and streamed[1][1] == len(data)
    if not compressed:
        assert os.path.getsize(datadir / f"data_{n + 1:08d}.dat") == len(data)
    later = [db.put(b"later %d" % i) for i in range(3)]
    assert all(number_of(loc) == n + 2 for loc in later)
    assert db.get_many(small + [location] + later) == [payload(100 + i, i) for i in range(3)] + [data] + [
        b"later %d" % i for i in range(3)
    ]


def test_put_stream_removes_an_empty_mutable_segment(
    make_store: StoreFactory, compressed: bool, tmp_path: Path
) -> None:
    """An empty mutable segment n is not kept as an empty sealed segment: it is removed."""
    datadir = tmp_path / "store"
    db = make_store(use_compression=compressed)
    first = db.put(b"one")
    db.rotate()
    n = db.mutable_segment()
    location = db.put_stream(io.BytesIO(b"streamed"))
    assert number_of(location) == n + 1
    assert n not in segment_data_files(datadir)
    assert not (datadir / f"data_{n:08d}.idx").exists()
    assert db.segments() == [n - 1, n + 1, n + 2]
    second = db.put_stream(io.BytesIO(b"again"))  # the mutable n+2 is empty again
    assert number_of(second) == n + 3
    assert db.segments() == [n - 1, n + 1, n + 3, n + 4]
    assert db.get_many([first, location, second]) == [b"one", b"streamed", b"again"]
    db.close()
    reopened = make_store(use_compression=compressed)
    assert reopened.get_many([first, location, second]) == [b"one", b"streamed", b"again"]
    assert reopened.get(reopened.put(b"after reopen")) == b"after reopen"


def test_put_stream_location_survives_reopen_with_other_compression(make_store: StoreFactory, compressed: bool) -> None:
    """A reopen (even with the other use_compression) serves streamed locations; puts go on."""
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    data = payload(123_456, 3)
    locations = [db.put_stream(ReadIntoOnly(data, 10_000)), db.put(b"small"), db.put_stream(ReadOnly(b""))]
    db.close()
    other = make_store(use_compression=not compressed, frame_bytes=FRAME)
    assert other.get_many(locations) == [data, b"small", b""]
    assert other.get(locations[0], Slice(1000, 2000)) == data[1000:2000]
    assert other.get(other.put_stream(io.BytesIO(data))) == data
    assert other.verify().ok


# -- BlobFile -----------------------------------------------------------------------------


def test_open_blob_of_a_slice_reads_only_that_slice(make_store: StoreFactory, compressed: bool) -> None:
    """open_blob(location, slice) is a file over the slice alone, checked as get() checks slices."""
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    data = random.Random(7).randbytes(5 * FRAME + 123)
    location = db.put(data)
    for part in (Slice(0, len(data)), Slice(FRAME - 3, 3 * FRAME + 5), Slice(len(data) - 1, len(data)), Slice(7, 7)):
        with db.open_blob(location, part) as blob:
            assert blob.size == part.end_offset - part.start_offset
            assert blob.read() == data[part.start_offset : part.end_offset] == db.get(location, part)
            blob.seek(0)
            assert blob.read(2) == data[part.start_offset : min(part.start_offset + 2, part.end_offset)]
    for bad in (Slice(0, len(data) + 1), Slice(5, 4), Slice(-1, 3)):
        with pytest.raises(InvalidLocationError):
            db.get(location, bad)
        with pytest.raises(InvalidLocationError):
            db.open_blob(location, bad)
    with pytest.raises(TypeError):
        db.open_blob(location, (1, 2, 3))  # type: ignore[arg-type]


def test_open_blob_is_a_regular_raw_file(make_store: StoreFactory, compressed: bool) -> None:
    """io.BufferedReader and readline work on it; closed files refuse reads; size is the blob's."""
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    data = b"".join(b"line %d\n" % i for i in range(3000))
    location = db.put_stream(io.BytesIO(data))
    with db.open_blob(location) as raw:
        assert raw.readable() and raw.seekable() and not raw.writable()
        assert raw.size == len(data)
        buffered = io.BufferedReader(raw, buffer_size=1000)
        assert buffered.readline() == b"line 0\n"
        assert buffered.read(7) == b"line 1\n"
        buffered.seek(-8, io.SEEK_END)
        assert buffered.read() == data[-8:]
        buffered.seek(0)
        assert list(buffered) == data.splitlines(keepends=True)
    with pytest.raises(ValueError):
        raw.read(1)
    with db.open_blob(location) as blob:
        blob.seek(10**9)
        assert blob.read(5) == b"" and blob.read() == b""
        with pytest.raises(ValueError):
            blob.seek(-1)
        with pytest.raises(ValueError):
            blob.seek(0, 7)


def test_open_blob_reads_stored_frames_in_place(make_store: StoreFactory) -> None:
    """Random bytes are kept in stored frames: reading them through open_blob decompresses nothing."""
    db = make_store(use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0)
    data = random.Random(12).randbytes(20 * FRAME)
    location = db.put_stream(io.BytesIO(data))
    with db.open_blob(location) as blob:
        blob.seek(7 * FRAME - 20)
        assert blob.read(FRAME + 40) == data[7 * FRAME - 20 : 8 * FRAME + 20]
        blob.seek(0)
        assert blob.read() == data
    assert db.frame_cache_info()["misses"] == 0


def test_open_blob_seek_back_decompresses_only_the_landing_frame(make_store: StoreFactory) -> None:
    """frame_cache_bytes=0: a seek costs nothing; a small read after a seek back costs one frame."""
    db = make_store(use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0)
    data = letters(40 * FRAME, 11)
    location = db.put_stream(io.BytesIO(data))

    def misses() -> int:
        return db.frame_cache_info()["misses"]

    with db.open_blob(location) as blob:
        blob.seek(35 * FRAME + 10)
        before = misses()
        assert blob.read(100) == data[35 * FRAME + 10 : 35 * FRAME + 110]
        assert misses() - before == 1
        before = misses()
        assert blob.seek(5 * FRAME + 123) == 5 * FRAME + 123
        assert blob.seek(-3, io.SEEK_CUR) == 5 * FRAME + 120
        assert misses() == before, "seeking alone decompresses nothing"
        assert blob.read(50) == data[5 * FRAME + 120 : 5 * FRAME + 170]
        assert misses() - before == 1, "only the frame the seek landed in"
        before = misses()
        assert blob.read(50) == data[5 * FRAME + 170 : 5 * FRAME + 220]
        assert misses() == before, "a read in the same frame reuses it"
        before = misses()
        blob.seek(12 * FRAME - 10)
        assert blob.read(20) == data[12 * FRAME - 10 : 12 * FRAME + 10]
        assert misses() - before == 2, "a read across one boundary costs two frames"
        before = misses()
        blob.seek(-FRAME // 2, io.SEEK_END)
        assert blob.read() == data[-FRAME // 2 :]
        assert misses() - before == 1


def test_open_blob_keeps_reading_through_seal_reframe_and_delete(make_store: StoreFactory, compressed: bool) -> None:
    """GUARANTEES.md: a BlobFile keeps reading the bytes it was opened on, even if its segment is
    sealed (a compressed one is then re-framed: a new file renamed over it) or deleted meanwhile."""
    db = make_store(use_compression=compressed, frame_bytes=FRAME)
    data = payload(30 * FRAME + 17, 21)
    db.put(b"head")
    location = db.put(data)  # in the mutable segment
    with db.open_blob(location) as blob:
        assert blob.read(10 * FRAME) == data[: 10 * FRAME]
        db.rotate()  # sealed (and, compressed, re-framed) under the open file
        assert blob.read(10 * FRAME) == data[10 * FRAME : 20 * FRAME]
        db.delete_file(location.file_path)
        with pytest.raises(FileNotFoundError):
            db.get(location)
        assert blob.read() == data[20 * FRAME :]
        blob.seek(5)
        assert blob.read(FRAME) == data[5 : 5 + FRAME]


# -- get_many / iter_many -------------------------------------------------------------------


def mixed_store(make_store: StoreFactory, rng: random.Random) -> tuple[FlatFileDb, list[DataLocation], list[bytes]]:
    """Raw and compressed sealed segments (tiny MAX_DAT_FILE_SIZE), streamed segments and a
    non-empty mutable segment."""
    locations: list[DataLocation] = []
    datas: list[bytes] = []

    def add(db: FlatFileDb, count: int) -> None:
        for _ in range(count):
            data = rng.randbytes(rng.randrange(0, 700))
            if rng.random() < 0.1:
                locations.append(db.put_stream(io.BytesIO(data)))
                datas.append(data)
            elif rng.random() < 0.3:
                batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 5))]
                locations.extend(db.put_many(batch))
                datas.extend(batch)
            else:
                locations.append(db.put(data))
                datas.append(data)

    raw = make_store(frame_bytes=FRAME)
    raw.MAX_DAT_FILE_SIZE = 2000
    add(raw, 60)
    raw.close()
    zstd = make_store(use_compression=True, frame_bytes=FRAME)
    zstd.MAX_DAT_FILE_SIZE = 2000
    add(zstd, 60)
    zstd.close()
    db = make_store(frame_bytes=FRAME)
    db.MAX_DAT_FILE_SIZE = 2000
    add(db, 30)
    assert db.get(locations[-1]) == datas[-1]
    return db, locations, datas


def test_get_many_and_iter_many_order(make_store: StoreFactory, tmp_path: Path) -> None:
    """get_many: the caller's order; iter_many: disk order (segment, offset), each index once."""
    rng = random.Random(5)
    db, locations, datas = mixed_store(make_store, rng)
    files = segment_data_files(tmp_path / "store")
    assert any(name.endswith(".zst") for name in files.values()), "some compressed segments"
    assert any(name.endswith(".dat") for name in files.values()), "some raw segments"
    assert len({number_of(loc) for loc in locations}) > 20
    assert number_of(locations[-1]) == db.mutable_segment()
    order = list(range(len(locations))) + [rng.randrange(len(locations)) for _ in range(40)]  # duplicates
    rng.shuffle(order)
    asked = [locations[i] for i in order]
    assert db.get_many(asked) == [datas[i] for i in order]
    yielded = list(db.iter_many(asked))
    indexes = [index for index, _ in yielded]
    assert sorted(indexes) == list(range(len(asked)))
    keys = [(number_of(asked[i]), asked[i].start_offset) for i in indexes]
    assert keys == sorted(keys), "iter_many yields in (segment, offset) order"
    assert indexes == sorted(range(len(asked)), key=lambda i: (number_of(asked[i]), asked[i].start_offset))
    for index, data in yielded:
        assert type(data) is bytes and data == datas[order[index]]  # pylint: disable=unidiomatic-typecheck
    assert all(type(data) is bytes for data in db.get_many(asked))  # pylint: disable=unidiomatic-typecheck
    assert db.get_many([]) == [] and not list(db.iter_many([]))
    assert db.get_many(iter(asked[:5])) == [datas[i] for i in order[:5]]


def test_get_many_with_slices_equals_get(make_store: StoreFactory) -> None:
    """get_many(locations, slices) returns what get(location, slice) returns, item by item."""
    rng = random.Random(11)
    db, locations, _datas = mixed_store(make_store, rng)
    asked = [rng.choice(locations) for _ in range(300)]
    parts: list[Slice | None] = []
    for location in asked:
        length = location.end_offset - location.start_offset
        start = rng.randrange(length + 1)
        parts.append(rng.choice([None, Slice(start, rng.randrange(start, length + 1)), Slice(start, 0)]))
    expected = [db.get(location, part) for location, part in zip(asked, parts)]
    assert db.get_many(asked, parts) == expected
    assert db.get_many(asked, iter(parts)) == expected
    assert db.get_many(asked, [None] * len(asked)) == db.get_many(asked) == [db.get(loc) for loc in asked]


def test_get_many_bad_slices_raise_typed_errors(make_store: StoreFactory) -> None:
    """A slice outside its blob, a non-slice, or a count mismatch: a typed error, nothing read."""
    db = make_store()
    good = [db.put(b"blob %d" % i) for i in range(10)]
    fine: list[Any] = [None] * len(good)
    for bad, error in (
        (Slice(0, 100), InvalidLocationError),
        (Slice(4, 2), InvalidLocationError),
        (Slice(-1, 2), InvalidLocationError),
        ("0:2", TypeError),
        (Slice(True, 2), TypeError),
    ):
        with pytest.raises(error):
            db.get_many(good, fine[:5] + [bad] + fine[6:])
    with pytest.raises(ValueError, match="10 locations but 9 slices"):
        db.get_many(good, fine[:9])
    assert db.get_many(good, [Slice(0, 4)] * len(good)) == [b"blob"] * len(good)


def test_get_many_unusual_but_valid_input(make_store: StoreFactory) -> None:
    """Plain tuples, Path-typed paths and empty blobs mixed with locations still read right."""
    db = make_store()
    locations = [db.put(b"one"), db.put(b""), db.put(b"three")]
    db.rotate()
    locations.append(db.put(b"four"))
    plain = tuple(locations[0])
    as_path = DataLocation._make([Path(locations[2].file_path), locations[2].start_offset, locations[2].end_offset])
    assert db.get_many([locations[3], plain, locations[1], as_path]) == [b"four", b"one", b"", b"three"]  # type: ignore[list-item]
    assert db.get_many(locations[::-1]) == [b"four", b"three", b"", b"one"]


def test_get_many_sees_puts_of_another_instance(make_store: StoreFactory) -> None:
    """Locations in the mutable segment written by another instance after this one opened it."""
    reader = make_store()
    reader.put(b"seed")
    assert reader.get_many([reader.put(b"x")]) == [b"x"]
    writer = make_store()
    fresh = [writer.put(b"fresh %d" % i) for i in range(50)]
    assert reader.get_many(fresh[::-1]) == [b"fresh %d" % i for i in range(49, -1, -1)]
    assert [i for i, _ in reader.iter_many(fresh[::-1])] == list(range(49, -1, -1))


def bad_locations(db: FlatFileDb, tmp_path: Path, good: DataLocation) -> Iterator[tuple[Any, type[Exception]]]:
    """(bad location, error it must raise)."""
    seg = good.file_path
    yield DataLocation(seg, 0, 10**9), InvalidLocationError  # past the committed end
    yield DataLocation(seg, 5, 3), InvalidLocationError  # inverted
    yield DataLocation(seg, -1, 3), InvalidLocationError  # negative
    yield DataLocation(str(tmp_path / "elsewhere" / "data_00000000.dat"), 0, 1), InvalidLocationError
    yield DataLocation(os.path.join(os.path.dirname(seg), "ffdb.state"), 0, 1), InvalidLocationError
    yield DataLocation(db.segment_path(99_999), 0, 1), FlatFileDbNotFoundError
    yield ("not", "a location"), TypeError
    yield itertools.count(), TypeError  # endless: must not be read to its end
    yield 12345, TypeError  # not a sequence at all
    yield (seg, 0, 1, "extra"), TypeError
    yield DataLocation._make([seg, "0", 1]), TypeError


def test_get_many_bad_location_raises_typed_error(make_store: StoreFactory, tmp_path: Path) -> None:
    """One bad location anywhere in the list: the typed error, from both get_many and iter_many."""
    db = make_store()
    good = [db.put(b"blob %d" % i) for i in range(20)]
    db.rotate()
    good += [db.put(b"blob %d" % i) for i in range(20, 30)]
    (tmp_path / "elsewhere").mkdir()
    for bad, error in bad_locations(db, tmp_path, good[3]):
        for position in (0, 15, 30):
            asked: list[Any] = good[:position] + [bad] + good[position:]
            with pytest.raises(error):
                db.get_many(asked)
            with pytest.raises(error):
                list(db.iter_many(asked))
    assert db.get_many(good) == [b"blob %d" % i for i in range(30)]


def test_get_many_deleted_segment(make_store: StoreFactory) -> None:
    """A location in a deleted segment raises FileNotFoundError (FlatFileDbNotFoundError)."""
    db = make_store()
    gone = db.put(b"gone")
    db.rotate()
    kept = db.put(b"kept")
    db.delete_file(gone.file_path)
    with pytest.raises(FileNotFoundError):
        db.get_many([kept, gone])
    assert db.get_many([kept]) == [b"kept"]


# -- get_view -----------------------------------------------------------------------------------


def base_chain(obj: Any) -> list[Any]:
    """obj, obj.base, obj.base.base, ... (numpy arrays and memoryviews)."""
    chain = [obj]
    while True:
        nxt = getattr(chain[-1], "base", None)
        if nxt is None:
            nxt = getattr(chain[-1], "obj", None)
        if nxt is None or any(nxt is seen for seen in chain):
            return chain
        chain.append(nxt)


def test_get_view_sealed_and_mutable(store: FlatFileDb) -> None:
    """Bytes equal, read-only, and numpy arrays over it share its memory (no copy)."""
    sealed_data = np.arange(10_000, dtype=np.float64).tobytes()
    sealed = store.put(sealed_data)
    store.rotate()
    mutable_data = payload(50_000, 2)
    store.put(b"before")
    mutable = store.put(mutable_data)
    for location, data in ((sealed, sealed_data), (mutable, mutable_data)):
        view = store.get_view(location)
        assert isinstance(view, memoryview)
        assert view.readonly
        assert bytes(view) == data and len(view) == len(data)
        with pytest.raises(TypeError):
            view[0] = 1
        array = np.frombuffer(view, dtype=np.uint8)
        assert not array.flags.writeable
        chain = base_chain(array)
        assert any(link is view or link is view.obj for link in chain), "the array's base chain reaches the map"
        other = np.frombuffer(store.get_view(location), dtype=np.uint8)
        assert np.shares_memory(array, other), "two views of one blob are the same mapped bytes"
        assert bytes(store.get_view(location, Slice(3, 17))) == data[3:17]
        assert bytes(store.get_view(location, Slice(len(data) - 5, 0))) == data[-5:]
    floats = np.frombuffer(store.get_view(sealed), dtype=np.float64)
    assert floats[1234] == 1234.0 and floats.sum() == sum(range(10_000))


def test_get_view_of_growing_mutable_segment(store: FlatFileDb) -> None:
    """Blobs appended after a view was taken are viewable too (the map follows the segment)."""
    locations = []
    for i in range(200):
        locations.append(store.put(payload(40_000, i)))
        view = store.get_view(locations[i // 2])
        assert bytes(view) == payload(40_000, i // 2)


def test_get_view_survives_delete(store: FlatFileDb) -> None:
    """A view taken before delete_file still reads the old bytes afterwards; new reads fail."""
    data = payload(300_000, 9)
    location = store.put(data)
    store.rotate()
    view = store.get_view(location)
    array = np.frombuffer(view, dtype=np.uint8)
    store.delete_file(location.file_path)
    assert not os.path.exists(location.file_path)
    assert bytes(view) == data
    assert array[-1] == data[-1] and bytes(array[1000:2000]) == data[1000:2000]
    with pytest.raises(FileNotFoundError):
        store.get_view(location)
    with pytest.raises(FileNotFoundError):
        store.get(location)


def test_get_view_refuses_compressed_segments(make_store: StoreFactory) -> None:
    """A compressed segment (sealed, streamed or mutable) has no bytes to map."""
    db = make_store(use_compression=True)
    locations = [db.put(payload(20_000, 1)), db.put_stream(io.BytesIO(payload(20_000, 2)))]
    locations.append(db.put(b"in the mutable compressed segment"))
    for location in locations:
        with pytest.raises(InvalidLocationError):
            db.get_view(location)
        assert db.get(location)


def test_get_view_bad_locations(store: FlatFileDb, tmp_path: Path) -> None:
    """Past the end, bad slices: InvalidLocationError, as get() does."""
    location = store.put(b"0123456789")
    with pytest.raises(InvalidLocationError):
        store.get_view(DataLocation(location.file_path, 0, 11))
    with pytest.raises(InvalidLocationError):
        store.get_view(location, Slice(5, 11))
    with pytest.raises(InvalidLocationError):
        store.get_view(DataLocation(str(tmp_path / "data_00000000.dat"), 0, 1))


def test_get_view_of_empty_blob(store: FlatFileDb) -> None:
    """An empty blob (put(b""), an empty stream) is a blob: get() gives b"", so get_view gives an
    empty view, wherever it lies (an empty mutable segment, an empty streamed segment)."""
    empty_in_mutable = store.put(b"")
    assert store.get(empty_in_mutable) == b""
    assert bytes(store.get_view(empty_in_mutable)) == b""
    empty_stream = store.put_stream(io.BytesIO(b""))
    assert store.get(empty_stream) == b""
    assert bytes(store.get_view(empty_stream)) == b""
