"""FlatFileDb behaviour through its public API: round trips, slices, batches, rotation,
reopening, paths, iteration, compact locations, verification and legacy datadirs."""

from __future__ import annotations

import os
import random
import shutil
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import xxhash

import conduit_flat_file_db.write_maps as write_maps_module
from conduit_flat_file_db import (
    PACKED_LOCATION_BYTES,
    BlobRecord,
    DataLocation,
    FlatFileDb,
    FlatFileDbError,
    Slice,
)
from conduit_flat_file_db.blocks import maps_supported, preallocate
from conduit_flat_file_db.index import HEADER_BYTES, REC_BLOB, REC_SEAL, decode_records, encode_seal
from conduit_flat_file_db.segment import ROOM_CHECK_MAX_BYTES
from conduit_flat_file_db.store import Store
from conduit_flat_file_db.write_maps import MAPPED_PUT_MAX_BYTES

StoreFactory = Callable[..., FlatFileDb]
MIB = 2**20


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def data_file(store: FlatFileDb, number: int) -> Path:
    """Path of a raw segment's data file."""
    return store.datadir / f"data_{number:08d}.dat"


def committed_bytes(path: Path, end: int, *, sealed: bool = False) -> bytes:
    """The first ``end`` bytes of a raw data file (its committed blobs), after checking what follows:
    nothing in a sealed segment; in the mutable one, at most the zero room that writers through
    maps allocate ahead of their puts (none where maps are not used)."""
    data = path.read_bytes()
    room = 0 if sealed or not maps_supported() else ROOM_CHECK_MAX_BYTES
    assert end <= len(data) <= end + room, f"{path.name}: {len(data)} bytes, committed {end}, room at most {room}"
    assert not data[end:].strip(b"\0"), f"{path.name}: bytes past the committed {end} are not all zeros"
    return data[:end]


def index_records(store: FlatFileDb, number: int) -> list[int]:
    """Record types in a segment's index file, in order."""
    raw = (store.datadir / f"data_{number:08d}.idx").read_bytes()
    scan = decode_records(raw[HEADER_BYTES:])
    assert scan.problem is None, scan.problem
    return [r.rtype for r in scan.records]


@contextmanager
def opened(datadir: Path | str, lock: Path | str, **kwargs: Any) -> Iterator[FlatFileDb]:
    """A store opened outside the fixtures; must verify clean when the block ends."""
    db = FlatFileDb(datadir, lock, **kwargs)
    try:
        yield db
        report = db.verify()
        assert report.ok, str(report)
    finally:
        db.close()


# -- put / get --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MIB], ids=["empty", "one-byte", "one-MiB"])
def test_put_get_round_trip(store: FlatFileDb, size: int) -> None:
    """Whatever is put reads back byte-identical, including the empty blob."""
    data = blob(size)
    location = store.put(data)
    assert isinstance(location, DataLocation)
    assert location.end_offset - location.start_offset == size
    got = store.get(location)
    assert type(got) is bytes  # pylint: disable=unidiomatic-typecheck
    assert got == data


def test_puts_are_appended_back_to_back(store: FlatFileDb) -> None:
    """Each blob starts where the previous one ended, in the one mutable segment."""
    sizes = [5, 0, 17, 1, 300]
    locations = [store.put(blob(n, i)) for i, n in enumerate(sizes)]
    assert {loc.file_path for loc in locations} == {str(data_file(store, 0))}
    ends = 0
    for loc, size in zip(locations, sizes):
        assert (loc.start_offset, loc.end_offset) == (ends, ends + size)
        ends += size
    committed_bytes(data_file(store, 0), sum(sizes))  # nothing but zero room after them
    for i, (loc, size) in enumerate(zip(locations, sizes)):
        assert store.get(loc) == blob(size, i)


def test_raw_segment_is_plain_concatenation(store: FlatFileDb) -> None:
    """No headers inside a raw segment: ``dd`` can cut a blob out. Once sealed, the file is
    exactly the blobs (the mutable one may end in zero room)."""
    parts = [b"alpha", b"", b"beta", b"gamma" * 100]
    for part in parts:
        store.put(part)
    joined = b"".join(parts)
    assert committed_bytes(data_file(store, 0), len(joined)) == joined
    store.rotate()
    assert committed_bytes(data_file(store, 0), len(joined), sealed=True) == joined


def test_put_accepts_bytearray_and_memoryview(store: FlatFileDb) -> None:
    """bytes-like inputs are stored as their bytes."""
    words = array("I", [1, 2, 0xFFFFFFFF])
    inputs: list[Any] = [
        bytearray(b"from a bytearray"),
        memoryview(b"from a memoryview"),
        memoryview(words),
        memoryview(b"0123456789")[2:6],
    ]
    expected = [b"from a bytearray", b"from a memoryview", words.tobytes(), b"2345"]
    for data, want in zip(inputs, expected):
        assert store.get(store.put(data)) == want


# -- slices ----------------------------------------------------------------------------


@pytest.fixture(name="sliced")
def fixture_sliced(store: FlatFileDb) -> tuple[FlatFileDb, DataLocation, bytes]:
    """A store holding a 1000-byte blob that does not start at offset 0."""
    store.put(b"x" * 37)
    data = bytes(range(256)) * 3 + bytes(range(232))
    return store, store.put(data), data


def test_slice_zero_zero_is_whole_blob(sliced: tuple[FlatFileDb, DataLocation, bytes]) -> None:
    """Slice(0, 0) reads the whole blob."""
    store, location, data = sliced
    assert store.get(location, Slice(0, 0)) == data


@pytest.mark.parametrize("start", [0, 1, 255, 999, 1000])
def test_slice_with_end_zero_reads_to_end(sliced: tuple[FlatFileDb, DataLocation, bytes], start: int) -> None:
    """Slice(s, 0) means "from s to the end of the blob"."""
    store, location, data = sliced
    assert store.get(location, Slice(start, 0)) == data[start:]


@pytest.mark.parametrize(("start", "end"), [(0, 1), (0, 1000), (10, 20), (255, 257), (999, 1000), (500, 500)])
def test_slice_range(sliced: tuple[FlatFileDb, DataLocation, bytes], start: int, end: int) -> None:
    """Slice(s, e) reads bytes [s, e) of the blob, never the neighbours."""
    store, location, data = sliced
    assert store.get(location, Slice(start, end)) == data[start:end]


def test_slice_of_empty_blob(store: FlatFileDb) -> None:
    """The whole of an empty blob is empty."""
    location = store.put(b"")
    assert store.get(location, Slice(0, 0)) == b""


# -- put_many -------------------------------------------------------------------------


def test_put_many_keeps_order(store: FlatFileDb) -> None:
    """Locations come back in input order and each reads its own blob."""
    datas = [blob(n, n) for n in (3, 0, 1000, 1, 64)]
    locations = store.put_many(datas)
    assert len(locations) == len(datas)
    assert [loc.start_offset for loc in locations] == sorted(loc.start_offset for loc in locations)
    assert [store.get(loc) for loc in locations] == datas


def test_put_many_accepts_any_iterable_and_bytes_likes(store: FlatFileDb) -> None:
    """A generator of bytes, bytearray and memoryview works like a list of bytes."""

    def gen() -> Iterator[Any]:
        yield b"one"
        yield bytearray(b"two")
        yield memoryview(b"three")
        yield memoryview(array("H", [1, 2]))

    locations = store.put_many(gen())
    assert [store.get(loc) for loc in locations] == [b"one", b"two", b"three", array("H", [1, 2]).tobytes()]


def test_put_many_empty_list_writes_nothing(store: FlatFileDb) -> None:
    """An empty batch returns [] and leaves the store as it was."""
    store.put(b"before")
    before = sorted((p.name, p.stat().st_size) for p in store.datadir.iterdir())
    assert not store.put_many([])
    assert sorted((p.name, p.stat().st_size) for p in store.datadir.iterdir()) == before
    assert store.put(b"after").start_offset == len(b"before")


def test_put_many_rotates_inside_a_batch(store: FlatFileDb) -> None:
    """A batch crossing MAX_DAT_FILE_SIZE continues in a new segment."""
    store.MAX_DAT_FILE_SIZE = 10
    datas = [blob(4, i) for i in range(5)]
    locations = store.put_many(datas)
    segments = [Path(loc.file_path).name for loc in locations]
    # 0..4, 4..8, 8..12 (8 < 10 so it still fits), then a new segment.
    assert segments == ["data_00000000.dat"] * 3 + ["data_00000001.dat"] * 2
    assert [(loc.start_offset, loc.end_offset) for loc in locations] == [(0, 4), (4, 8), (8, 12), (0, 4), (4, 8)]
    assert [store.get(loc) for loc in locations] == datas
    assert store.segments() == [0, 1]
    assert store.mutable_segment() == 1
    assert index_records(store, 0)[-1] == REC_SEAL


def test_put_many_lays_out_like_single_puts(make_store: StoreFactory) -> None:
    """A batch and the same puts one by one produce the same locations and files (the same
    committed bytes: the mutable segment of either may end in zero room)."""
    sizes = [7, 0, 3, 12, 1, 1, 9, 30, 2, 0, 5]
    one, many = make_store("one"), make_store("many")
    one.MAX_DAT_FILE_SIZE = many.MAX_DAT_FILE_SIZE = 16
    singles = [one.put(blob(n, i)) for i, n in enumerate(sizes)]
    batch = many.put_many([blob(n, i) for i, n in enumerate(sizes)])
    assert [(Path(l.file_path).name, l.start_offset, l.end_offset) for l in singles] == [
        (Path(l.file_path).name, l.start_offset, l.end_offset) for l in batch
    ]
    ends = {Path(l.file_path).name: l.end_offset for l in singles}
    assert one.segments() == many.segments()
    for number in one.segments():
        end, sealed = ends[data_file(one, number).name], number < one.mutable_segment()
        assert committed_bytes(data_file(one, number), end, sealed=sealed) == committed_bytes(
            data_file(many, number), end, sealed=sealed
        )


# -- rotation ----------------------------------------------------------------------------


def test_segment_is_sealed_once_full_before_next_put(store: FlatFileDb) -> None:
    """A segment that reached MAX_DAT_FILE_SIZE stays mutable until the next put seals it."""
    store.MAX_DAT_FILE_SIZE = 100
    first = store.put(blob(60))
    second = store.put(blob(40, 1))  # 60 < 100: still fits, ends exactly at 100
    assert Path(second.file_path).name == "data_00000000.dat"
    assert (second.start_offset, second.end_offset) == (60, 100)
    assert store.mutable_segment() == 0
    assert store.segments() == [0]
    third = store.put(b"z")
    assert Path(third.file_path).name == "data_00000001.dat"
    assert (third.start_offset, third.end_offset) == (0, 1)
    assert store.segments() == [0, 1]
    assert store.mutable_segment() == 1
    assert index_records(store, 0) == [REC_BLOB, REC_BLOB, REC_SEAL]
    assert data_file(store, 0).stat().st_size == 100
    assert [store.get(loc) for loc in (first, second, third)] == [blob(60), blob(40, 1), b"z"]


def test_blob_larger_than_max_goes_whole_into_one_segment(store: FlatFileDb) -> None:
    """A blob is never split; an oversized one fills its own segment."""
    store.MAX_DAT_FILE_SIZE = 16
    store.put(b"a")
    big = store.put(blob(100))
    assert Path(big.file_path).name == "data_00000000.dat"
    assert (big.start_offset, big.end_offset) == (1, 101)
    after = store.put(b"b")
    assert Path(after.file_path).name == "data_00000001.dat"
    assert store.get(big) == blob(100)


def test_rotate_seals_and_starts_next_segment(store: FlatFileDb) -> None:
    """rotate() seals the mutable segment and returns the new one."""
    loc = store.put(b"sealed soon")
    path, number = store.rotate()
    assert number == 1
    assert path == data_file(store, 1)
    assert store.segments() == [0, 1]
    assert store.mutable_segment() == 1
    assert index_records(store, 0) == [REC_BLOB, REC_SEAL]
    nxt = store.put(b"next")
    assert Path(nxt.file_path) == path
    assert nxt.start_offset == 0
    assert store.get(loc) == b"sealed soon"


def test_rotate_of_empty_mutable_segment_is_a_no_op(store: FlatFileDb) -> None:
    """An empty mutable segment stays mutable; no file is created."""
    names = sorted(os.listdir(store.datadir))
    assert store.rotate() == (data_file(store, 0), 0)
    assert store.rotate() == (data_file(store, 0), 0)
    assert sorted(os.listdir(store.datadir)) == names
    store.put(b"x")
    assert store.rotate() == (data_file(store, 1), 1)
    assert store.rotate() == (data_file(store, 1), 1)
    assert store.segments() == [0, 1]


def test_maybe_get_new_mutable_file_forced(store: FlatFileDb) -> None:
    """The reference name rotates when forced, and is a no-op on an empty segment."""
    # pylint: disable=protected-access  # the reference README calls it
    assert store._maybe_get_new_mutable_file(force_new_file=True) == (data_file(store, 0), 0)
    store.put(b"x")
    assert store._maybe_get_new_mutable_file(force_new_file=True) == (data_file(store, 1), 1)
    assert store._maybe_get_new_mutable_file(force_new_file=True) == (data_file(store, 1), 1)
    assert store.segments() == [0, 1]


def test_maybe_get_new_mutable_file_unforced(store: FlatFileDb) -> None:
    """Without force it rotates only a full segment."""
    # pylint: disable=protected-access  # the reference README calls it
    store.MAX_DAT_FILE_SIZE = 10
    store.put(b"12345")
    assert store._maybe_get_new_mutable_file() == (data_file(store, 0), 0)
    store.put(b"67890")
    assert store._maybe_get_new_mutable_file() == (data_file(store, 1), 1)
    assert store.segments() == [0, 1]
    assert index_records(store, 0)[-1] == REC_SEAL


# -- lifecycle ---------------------------------------------------------------------------


def test_reopen_reads_everything(tmp_path: Path) -> None:
    """A new instance on the same datadir serves every location and appends after them."""
    datas = [blob(n, n) for n in (10, 0, 5000, 3)]
    with opened(tmp_path / "s", tmp_path / "s.lock") as first:
        first.MAX_DAT_FILE_SIZE = 4000
        locations = [first.put(d) for d in datas]
    with opened(tmp_path / "s", tmp_path / "s.lock") as second:
        assert [second.get(loc) for loc in locations] == datas
        new = second.put(b"new")
        assert Path(new.file_path).name == Path(locations[-1].file_path).name
        assert new.start_offset == locations[-1].end_offset


def test_two_open_instances_see_each_others_puts(make_store: StoreFactory) -> None:
    """Two instances of one store in one process: each reads what the other wrote and rotated."""
    one, two = make_store(), make_store()
    a = one.put(b"from one")
    assert one.get(a) == b"from one"  # one now has segment 0 open with a committed end of 8
    b = two.put(b"from two")
    assert b.start_offset == a.end_offset
    assert two.get(a) == b"from one"
    assert one.get(b) == b"from two"  # past one's cached end: it must look again
    c = two.put(b"sealed by two")
    two.rotate()
    assert one.get(c) == b"sealed by two"
    d = one.put(b"after two rotated")
    assert Path(d.file_path).name == "data_00000001.dat"
    assert d.start_offset == 0
    assert two.get(d) == b"after two rotated"
    assert one.segments() == two.segments() == [0, 1]


def test_use_compression_then_raw_reopen(make_store: StoreFactory, tmp_path: Path) -> None:
    """Asking for compression never leaves a datadir that a raw store cannot open.

    Whether this version supports compressed segments or refuses them, a store opened
    afterwards with use_compression=False works (switching is allowed, DESIGN.md).
    """
    try:
        compressed = FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=True)
    except FlatFileDbError:
        pass  # refused: fine, if nothing was left behind
    else:
        compressed.close()
    store = make_store()
    loc = store.put(b"raw after compressed")
    assert store.get(loc) == b"raw after compressed"


def test_relative_and_absolute_datadir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Locations from a relatively opened store read through an absolutely opened one, and back."""
    monkeypatch.chdir(tmp_path)
    with (
        opened("rel_store", "rel_store.lock") as rel,
        opened(tmp_path / "rel_store", tmp_path / "rel_store.lock") as absolute,
    ):
        from_rel = rel.put(b"written via a relative path")
        from_abs = absolute.put(b"written via an absolute path")
        assert from_rel.file_path == os.path.join("rel_store", "data_00000000.dat")
        assert from_abs.file_path == str(tmp_path / "rel_store" / "data_00000000.dat")
        assert absolute.get(from_rel) == b"written via a relative path"
        assert rel.get(from_abs) == b"written via an absolute path"
        assert rel.get(from_rel) == b"written via a relative path"
        assert absolute.get(from_abs) == b"written via an absolute path"
        dotted = DataLocation(os.path.join(".", "rel_store", "data_00000000.dat"), *from_rel[1:])
        assert absolute.get(dotted) == b"written via a relative path"


def test_relative_datadir_stays_put_across_chdir_and_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store opened by a relative path keeps using that directory after a chdir and a reopen.

    It must not silently start (and serve) a second datadir under the new working directory.
    """
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = FlatFileDb("s", "s.lock")
    try:
        store.put(b"abc")
        monkeypatch.chdir(tmp_path / "b")
        store.close()
        second = store.put(b"def")  # reopens
        assert not (tmp_path / "b" / "s").exists()
        assert committed_bytes(tmp_path / "a" / "s" / "data_00000000.dat", 6) == b"abcdef"
        assert (second.start_offset, second.end_offset) == (3, 6)
    finally:
        store.close()


def test_close_then_use_again(store: FlatFileDb) -> None:
    """close() releases everything; the next call reopens the store."""
    loc = store.put(b"before close")
    store.close()
    store.close()  # idempotent
    assert store.get(loc) == b"before close"
    store.close()
    after = store.put(b"after close")
    assert after.start_offset == loc.end_offset
    store.close()
    assert store.put_many([b"m"])[0].start_offset == after.end_offset
    store.close()
    assert store.segments() == [0]
    store.close()
    assert store.rotate()[1] == 1
    assert store.get(after) == b"after close"


def test_context_manager(store: FlatFileDb) -> None:
    """``with store:`` yields the store and closes it at the end; it reopens on use."""
    with store as entered:
        assert entered is store
        loc = entered.put(b"inside")
    assert store.get(loc) == b"inside"
    with store:
        assert store.get(loc) == b"inside"


def test_context_manager_closes_on_exception(store: FlatFileDb) -> None:
    """An exception in the block still closes the store and propagates."""
    loc = store.put(b"kept")
    with pytest.raises(RuntimeError, match="boom"):
        with store:
            raise RuntimeError("boom")
    assert store.get(loc) == b"kept"


# -- iteration ---------------------------------------------------------------------------


def test_iter_locations_and_records_complete_in_disk_order(store: FlatFileDb) -> None:
    """Every committed blob, oldest segment first, in offset order; checksums are XXH3-64."""
    store.MAX_DAT_FILE_SIZE = 50
    datas = [blob(n, i) for i, n in enumerate([20, 0, 31, 7, 50, 1, 49, 3])]
    locations = [store.put(d) for d in datas[:3]] + store.put_many(datas[3:6])
    store.rotate()
    locations += [store.put(d) for d in datas[6:]]
    assert len(set(Path(loc.file_path).name for loc in locations)) >= 3
    assert list(store.iter_locations()) == locations
    records = list(store.iter_records())
    assert records == [
        BlobRecord(int(Path(loc.file_path).name[5:13]), loc.start_offset, loc.end_offset, xxhash.xxh3_64_intdigest(d))
        for loc, d in zip(locations, datas)
    ]


def test_iter_on_fresh_store_is_empty(store: FlatFileDb) -> None:
    """No blobs, nothing to iterate."""
    assert not list(store.iter_locations())
    assert not list(store.iter_records())


# -- compact locations -------------------------------------------------------------------


def test_pack_unpack_round_trip(store: FlatFileDb) -> None:
    """20 bytes, whatever the location; unpacking gives the location back."""
    store.MAX_DAT_FILE_SIZE = 300
    locations = [store.put(blob(n, n)) for n in (0, 1, 200, 255, 256, 70000)]
    for loc in locations:
        packed = store.pack_location(loc)
        assert isinstance(packed, bytes)
        assert len(packed) == PACKED_LOCATION_BYTES == 20
        assert store.unpack_location(packed) == loc
    assert len({store.pack_location(loc) for loc in locations}) == len(locations)


def test_packed_locations_sort_in_disk_order(store: FlatFileDb) -> None:
    """Byte order of packed locations is (segment, start, end) order."""
    store.MAX_DAT_FILE_SIZE = 1000
    # 200-byte blobs: starts 0, 200, 400, ... cross byte boundaries (200 = 0xc8, 400 = 0x190).
    locations = [store.put(blob(200, i)) for i in range(12)]
    locations.append(store.put(b""))
    packed = [store.pack_location(loc) for loc in locations]
    assert sorted(packed) == packed
    assert len({Path(loc.file_path).name for loc in locations}) == 3


def test_packed_location_survives_moving_the_datadir(tmp_path: Path) -> None:
    """Packed locations do not contain the datadir's path."""
    with opened(tmp_path / "old", tmp_path / "old.lock") as db:
        db.MAX_DAT_FILE_SIZE = 10
        datas = [blob(n, n) for n in (8, 8, 8, 0, 4)]
        packed = [db.pack_location(db.put(d)) for d in datas]
    shutil.move(str(tmp_path / "old"), str(tmp_path / "moved" / "new"))
    with opened(tmp_path / "moved" / "new", tmp_path / "new.lock") as db:
        locations = [db.unpack_location(p) for p in packed]
        assert all(Path(loc.file_path).parent == tmp_path / "moved" / "new" for loc in locations)
        assert [db.get(loc) for loc in locations] == datas
        assert [db.pack_location(loc) for loc in locations] == packed


# -- segments / verify -------------------------------------------------------------------


def test_segments_and_mutable_segment(store: FlatFileDb) -> None:
    """Segment numbers present, oldest first; the last is mutable."""
    assert store.segments() == [0]
    assert store.mutable_segment() == 0
    for _ in range(2):
        store.put(b"x")
        store.rotate()
    assert store.segments() == [0, 1, 2]
    assert store.mutable_segment() == 2
    store.delete_file(data_file(store, 0))
    assert store.segments() == [1, 2]
    assert store.mutable_segment() == 2


def test_verify_clean_on_fresh_and_used_store(store: FlatFileDb) -> None:
    """A fresh store and a used one verify clean and count what they checked."""
    report = store.verify()
    assert report.ok, str(report)
    assert (report.segments, report.blobs, report.bytes_checked) == (1, 0, 0)
    store.put(b"abc")
    store.rotate()
    store.put_many([b"de", b""])
    report = store.verify()
    assert report.ok, str(report)
    assert (report.segments, report.blobs, report.bytes_checked) == (2, 3, 5)


@pytest.mark.parametrize("compressed", [False, True])
def test_seal_record_counts_the_blobs(make_store: StoreFactory, tmp_path: Path, compressed: bool) -> None:
    """The SEAL record of every sealed segment holds its number of BLOB records (computed at
    seal time from the index size, not by decoding the index); verify() checks it."""
    db = make_store(use_compression=compressed, frame_bytes=4096)
    rng = random.Random(3)
    expected = []
    for _round in range(4):
        count = 0
        for _ in range(rng.randrange(1, 30)):
            if rng.random() < 0.5:
                db.put(rng.randbytes(rng.randrange(0, 20_000)))
                count += 1
            else:
                batch = [rng.randbytes(rng.randrange(0, 9000)) for _ in range(rng.randrange(1, 6))]
                db.put_many(batch)
                count += len(batch)
        db.rotate()
        expected.append(count)
    for number, count in enumerate(expected):
        index = (tmp_path / "store" / f"data_{number:08d}.idx").read_bytes()
        records = decode_records(index[HEADER_BYTES:]).records
        assert sum(1 for r in records if r.rtype == REC_BLOB) == count
        assert [r.size for r in records if r.rtype == REC_SEAL] == [count], number
    assert db.verify().ok
    seal_at = len(index) - 32  # forge a wrong count in the last sealed segment: verify names it
    forged = bytearray(index)
    forged[seal_at:] = encode_seal(records[-1].offset, count + 1, records[-1].extra)
    last = tmp_path / "store" / f"data_{len(expected) - 1:08d}.idx"
    last.write_bytes(forged)
    report = db.verify()
    assert [p.kind for p in report.problems] == ["bad-seal"], str(report)
    last.write_bytes(index)  # the fixture verifies the store at the end


def test_verify_reports_flipped_byte_in_sealed_segment(store: FlatFileDb) -> None:
    """A flipped byte is a "checksum" problem naming the file and the blob's offset; no raise."""
    store.put(b"first blob")
    target = store.put(b"second blob")
    store.rotate()
    path = data_file(store, 0)
    raw = bytearray(path.read_bytes())
    raw[target.start_offset + 3] ^= 0x01
    path.write_bytes(raw)
    report = store.verify()
    assert not report.ok
    assert [(p.kind, p.path, p.offset) for p in report.problems] == [("checksum", str(path), target.start_offset)]
    raw[target.start_offset + 3] ^= 0x01  # restore, so the fixture's final verify is clean
    path.write_bytes(raw)
    assert store.verify().ok


# -- datadirs of the original engine -----------------------------------------------------


def _legacy_datadir(datadir: Path) -> dict[str, list[tuple[int, int, bytes]]]:
    """Write two plain .dat files as the original engine did: no index, no state page."""
    datadir.mkdir()
    layout = {
        "data_00000000.dat": [b"old blob A", b"", b"old blob B" * 7],
        "data_00000001.dat": [b"old blob C", b"old blob D!"],
    }
    result: dict[str, list[tuple[int, int, bytes]]] = {}
    for name, parts in layout.items():
        (datadir / name).write_bytes(b"".join(parts))
        pos, extents = 0, []
        for part in parts:
            extents.append((pos, pos + len(part), part))
            pos += len(part)
        result[name] = extents
    return result


def test_legacy_datadir_serves_old_locations(make_store: StoreFactory, tmp_path: Path) -> None:
    """Every location the original engine handed out still reads, whole and sliced."""
    layout = _legacy_datadir(tmp_path / "store")
    store = make_store()
    for name, extents in layout.items():
        for start, end, part in extents:
            loc = DataLocation(str(tmp_path / "store" / name), start, end)
            assert store.get(loc) == part
            if part:
                assert store.get(loc, Slice(1, 0)) == part[1:]
    # The newest legacy file is sealed (its blob boundaries are unknown); new blobs start segment 2.
    assert store.segments() == [0, 1, 2]
    assert store.mutable_segment() == 2


def test_legacy_datadir_new_puts_go_to_a_new_segment(make_store: StoreFactory, tmp_path: Path) -> None:
    """The highest-numbered legacy .dat is sealed as one legacy extent; new blobs go to the next segment,
    never after bytes whose blob boundaries are unknown."""
    layout = _legacy_datadir(tmp_path / "store")
    old_bytes = (tmp_path / "store" / "data_00000001.dat").read_bytes()
    store = make_store()
    loc = store.put(b"new blob")
    assert loc == DataLocation(str(tmp_path / "store" / "data_00000002.dat"), 0, 8)
    assert (tmp_path / "store" / "data_00000001.dat").read_bytes() == old_bytes
    assert store.get(loc) == b"new blob"
    assert (tmp_path / "store" / "data_00000000.dat").read_bytes() == b"old blob A" + b"old blob B" * 7
    store.close()
    store = make_store()  # and again after a reopen
    for name, extents in layout.items():
        for start, end, part in extents:
            assert store.get(DataLocation(str(tmp_path / "store" / name), start, end)) == part
    assert store.get(loc) == b"new blob"


def test_legacy_full_segment_rotates_on_next_put(make_store: StoreFactory, tmp_path: Path) -> None:
    """A legacy mutable file at or over MAX_DAT_FILE_SIZE is sealed by the next put."""
    layout = _legacy_datadir(tmp_path / "store")
    store = make_store()
    store.MAX_DAT_FILE_SIZE = 8
    loc = store.put(b"new")
    assert loc == DataLocation(str(tmp_path / "store" / "data_00000002.dat"), 0, 3)
    for start, end, part in layout["data_00000001.dat"]:
        assert store.get(DataLocation(str(tmp_path / "store" / "data_00000001.dat"), start, end)) == part


# -- disk reservation of the raw mutable segment ---------------------------------------------


def fallocate_works(directory: Path) -> bool:
    """Whether this filesystem reserves blocks beyond a file's end (fallocate KEEP_SIZE)."""
    probe = directory / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return preallocate(fd, 0, 2**20) and os.fstat(fd).st_blocks * 512 >= 2**20
    finally:
        os.close(fd)
        probe.unlink()


def test_reservation_only_where_segments_fill_and_sealing_frees_it(make_store: StoreFactory, tmp_path: Path) -> None:
    """A store that fills its segments reserves the next one whole at its first put, without
    changing the file's size; the seal cuts the file at its end, freeing what was not used.
    A small store (mutable segment under a quarter full) reserves nothing. Every put here is
    larger than MAPPED_PUT_MAX_BYTES: written with pwrite, so no room is allocated."""
    small = make_store("small")
    small_blob = b"r" * (MAPPED_PUT_MAX_BYTES + 5000)
    small_path = Path(small.put(small_blob).file_path)
    assert small_path.stat().st_size == len(small_blob)
    assert small_path.stat().st_blocks * 512 < len(small_blob) + 64 * 1024
    db = make_store()
    db.MAX_DAT_FILE_SIZE = 2**20
    for _ in range(11):
        db.put(b"x" * 100_000)  # the segment ends past 1 MiB: the next put rotates
    location = db.put(b"y" * 100_000)
    path = Path(location.file_path)
    assert db.mutable_segment() == 1 and location.start_offset == 0
    assert path.stat().st_size == 100_000  # readers, dd and recovery see exactly the committed bytes
    if fallocate_works(tmp_path):
        assert path.stat().st_blocks * 512 >= 2**20
    db.rotate()
    assert path.stat().st_size == 100_000
    assert path.stat().st_blocks * 512 < 200_000  # only what holds the 100,000 bytes
    assert db.get(location) == b"y" * 100_000


def test_reservation_is_made_once_per_segment(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One fallocate per segment, by the first writer past a quarter of it; another instance
    (as another process would) sees the reserved blocks and makes none; a filesystem without
    fallocate gets one try per segment and writer, and plain writes. The blobs are larger than
    MAPPED_PUT_MAX_BYTES: written with pwrite, as puts that reserve blocks ahead."""
    size = MAPPED_PUT_MAX_BYTES + 1000
    calls: list[tuple[int, int]] = []
    real = preallocate

    def counting(fd: int, offset: int, length: int) -> bool:
        calls.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(write_maps_module, "preallocate", counting)
    first, second = make_store(), make_store()
    first.MAX_DAT_FILE_SIZE = second.MAX_DAT_FILE_SIZE = 64 * size
    for i in range(50):  # past a quarter of the segment, in one segment: one reservation
        (first if i % 2 else second).put(b"t" * size)
    assert first.segments() == [0]
    assert len(calls) == (1 if fallocate_works(tmp_path) else 2)

    def unsupported(_fd: int, offset: int, length: int) -> bool:
        calls.append((offset, length))
        return False

    monkeypatch.setattr(write_maps_module, "preallocate", unsupported)
    calls.clear()
    first.rotate()
    locations = [first.put(b"u" * size) for _ in range(20)]  # past a quarter of segment 1
    assert first.segments() == [0, 1]
    assert len(calls) == 1
    assert first.get_many(locations) == [b"u" * size] * 20


@pytest.mark.parametrize("compressed", [False, True])
def test_a_failing_seal_hook_is_logged_and_every_put_still_returns_its_location(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, compressed: bool
) -> None:
    """The seal hook runs after blobs are committed and their segment sealed: whatever it raises
    is logged, and the put or rotate that sealed the segment still returns normally, so no
    caller loses the location of a blob that was stored."""
    calls: list[list[int]] = []

    def failing_hook(_store: Store, sealed: list[int]) -> None:
        calls.append(sealed)
        raise RuntimeError("hook failed on purpose")

    blobs = [bytes([i]) * 8 for i in range(12)]
    with Store(tmp_path / "db", use_compression=compressed, max_file_size=10, seal_hook=failing_hook) as store:
        locations = [store.put(blob) for blob in blobs]
        store.rotate()
        assert [store.get(location) for location in locations] == blobs
        assert len({location.file_path for location in locations}) > 1
    assert calls, "the hook never ran: no segment was sealed"
    failures = [r for r in caplog.records if "seal hook failed" in r.getMessage()]
    assert len(failures) == len(calls) and all(r.exc_info for r in failures)
