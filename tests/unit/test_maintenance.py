"""Maintenance operations of ``FlatFileDb`` (maintenance.py): recompression decisions, verify's
fault reports, retention, compaction and statistics, each against what the files on disk say.

Concurrent recompression is in tests/concurrency/test_maintenance_live.py and compaction
killed by SIGKILL in tests/crash/test_compaction_crash.py.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.errors import FlatFileDbUnsafeAccessError
from conduit_flat_file_db.maintenance import CompressMode
from conduit_flat_file_db.naming import index_name, parse_segment_name, segment_name
from conduit_flat_file_db.seekable import parse_seek_table

StoreFactory = Callable[..., FlatFileDb]

BIG_BLOB = 9 * 2**20  # above the 8 MiB at which compaction copies a blob as a stream
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta", b"\n"]


def compressible(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of text from a small vocabulary (Zstandard saves well over half)."""
    out = b" ".join(rng.choices(WORDS, k=size // 4 + 1))
    return out[:size]


def half_random(rng: random.Random, size: int) -> bytes:
    """Blocks of 2 KiB random bytes then 2 KiB zeros: Zstandard saves about 50 %."""
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(2048) + bytes(2048)
    return bytes(out[:size])


def number_of(location: DataLocation) -> int:
    """The segment number a location's file name carries."""
    number = parse_segment_name(os.path.basename(location.file_path))
    assert number is not None, location
    return number


def data_files(datadir: Path) -> dict[int, str]:
    """Segment number -> its one data file name (fails if a segment has both suffixes)."""
    out: dict[int, str] = {}
    for name in os.listdir(datadir):
        number = parse_segment_name(name)
        if number is not None:
            assert number not in out, f"segment {number} has two data files: {out[number]} and {name}"
            out[number] = name
    return out


def fill_segment(db: FlatFileDb, blobs: list[bytes]) -> list[DataLocation]:
    """Put ``blobs`` and seal them into one segment; returns their locations."""
    locations = [db.put(blob) for blob in blobs]
    db.rotate()
    db._wait_seal_hooks()  # pylint: disable=protected-access  # the hook runs in its own thread
    assert len({number_of(loc) for loc in locations}) == 1
    return locations


# -- recompress AUTO and use_compression=AUTO -------------------------------------------------


def test_recompress_auto_keeps_random_raw_and_compresses_text(store: FlatFileDb) -> None:
    """AUTO samples each sealed segment: random bytes stay raw ("skipped"), text is compressed."""
    rng = random.Random(1)
    random_blobs = [os.urandom(rng.randint(1, 40_000)) for _ in range(20)]
    text_blobs = [compressible(rng, rng.randint(1, 40_000)) for _ in range(20)]
    random_locs = fill_segment(store, random_blobs)
    text_locs = fill_segment(store, text_blobs)
    results = {r.number: r for r in store.recompress(mode=CompressMode.AUTO)}
    random_seg, text_seg = number_of(random_locs[0]), number_of(text_locs[0])
    assert set(results) == {random_seg, text_seg}
    assert results[random_seg].action == "skipped", results[random_seg]
    assert results[random_seg].disk_after == results[random_seg].disk_before
    assert results[text_seg].action == "compressed", results[text_seg]
    assert results[text_seg].disk_after < results[text_seg].disk_before // 2
    files = data_files(store.datadir)
    assert files[random_seg] == segment_name(random_seg, False)
    assert files[text_seg] == segment_name(text_seg, True)
    for loc, blob in zip(random_locs + text_locs, random_blobs + text_blobs):
        assert store.get(loc) == blob


def test_min_segment_saving_decides_auto(make_store: StoreFactory) -> None:
    """A segment that compresses by about 50 % is left raw under a bar of 70 % and compressed under 30 %."""
    rng = random.Random(2)
    with pytest.raises(ValueError):
        make_store("bad", min_segment_saving=1.0)
    db = make_store(min_segment_saving=0.7)
    blobs = [half_random(rng, 64 * 1024) for _ in range(8)]
    locs = fill_segment(db, blobs)
    number = number_of(locs[0])
    [result] = db.recompress([number], mode=CompressMode.AUTO)
    assert result.action == "skipped", result  # saves about 50 %, below the bar of 70 %
    assert data_files(db.datadir)[number] == segment_name(number, False)
    db.min_segment_saving = 0.3
    [result] = db.recompress([locs[0].file_path], mode=CompressMode.AUTO)
    assert result.action == "compressed", result
    assert data_files(db.datadir)[number] == segment_name(number, True)
    assert [db.get(loc) for loc in locs] == blobs


def test_use_compression_auto_compresses_sealed_text_only(make_store: StoreFactory) -> None:
    """use_compression=AUTO writes raw, then compresses each sealed segment that pays; random ones stay raw."""
    rng = random.Random(3)
    db = make_store(use_compression=CompressMode.AUTO)
    db.MAX_DAT_FILE_SIZE = 256 * 1024
    text = [compressible(rng, 60_000) for _ in range(12)]
    text_locs = [db.put(blob) for blob in text]
    db.rotate()
    noise = [os.urandom(60_000) for _ in range(12)]
    noise_locs = [db.put(blob) for blob in noise]
    db.rotate()
    last = db.put(b"still mutable")
    db._wait_seal_hooks()  # pylint: disable=protected-access  # the hook runs in its own thread
    files = data_files(db.datadir)
    text_segs = {number_of(loc) for loc in text_locs}
    noise_segs = {number_of(loc) for loc in noise_locs}
    assert len(text_segs) >= 3 and len(noise_segs) >= 3  # rotations by size, then by rotate()
    for number in text_segs:
        assert files[number] == segment_name(number, True), files
    for number in noise_segs:
        assert files[number] == segment_name(number, False), files
    assert files[number_of(last)] == segment_name(number_of(last), False)  # mutable: raw until sealed
    for loc, blob in zip(text_locs + noise_locs, text + noise):
        assert db.get(loc) == blob
    assert db.get(last) == b"still mutable"


def test_recompress_both_ways_and_reframe(store: FlatFileDb) -> None:
    """raw -> zstd, KEEP with a new level and frame size re-frames, zstd -> raw; every blob reads throughout."""
    rng = random.Random(4)
    blobs = [compressible(rng, rng.randint(0, 30_000)) for _ in range(30)]
    locs = fill_segment(store, blobs)
    number = number_of(locs[0])
    assert [r.action for r in store.recompress(mode=CompressMode.KEEP, level=5)] == ["skipped"]  # raw stays raw
    assert [r.action for r in store.recompress(mode=True)] == ["compressed"]
    assert data_files(store.datadir)[number] == segment_name(number, True)
    frames_before = len(
        parse_seek_table(
            _preader(store.datadir / segment_name(number, True)),
            (store.datadir / segment_name(number, True)).stat().st_size,
            "seg",
        )
    )
    [result] = store.recompress(mode=CompressMode.KEEP, level=1, frame_bytes=4096)
    assert result.action == "reframed", result
    path = store.datadir / segment_name(number, True)
    table = parse_seek_table(_preader(path), path.stat().st_size, str(path))
    assert len(table) > frames_before
    assert max(table.d_offsets[i + 1] - table.d_offsets[i] for i in range(len(table))) <= 4096
    assert [r.action for r in store.recompress(mode=CompressMode.YES)] == ["skipped"]
    assert [r.action for r in store.recompress(mode=CompressMode.NO)] == ["decompressed"]
    assert data_files(store.datadir)[number] == segment_name(number, False)
    assert [store.get(loc) for loc in locs] == blobs


def _preader(path: Path) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    return read


def test_maintenance_refuses_the_mutable_segment(store: FlatFileDb) -> None:
    """recompress and compact work on sealed segments only."""
    loc = store.put(b"mutable")
    with pytest.raises(FlatFileDbUnsafeAccessError, match="mutable"):
        store.recompress([loc.file_path], mode=CompressMode.YES)
    with pytest.raises(FlatFileDbUnsafeAccessError, match="mutable"):
        store.compact([loc.file_path], lambda _loc: True)
    assert store.get(loc) == b"mutable"


# -- verify --------------------------------------------------------------------------------


class FaultyStore:
    """A store with a raw sealed segment, a compressed sealed segment and a mutable one."""

    def __init__(self, db: FlatFileDb) -> None:
        rng = random.Random(5)
        self.db = db
        self.raw_locs = fill_segment(db, [compressible(rng, rng.randint(1000, 20_000)) for _ in range(12)])
        self.zstd_locs = fill_segment(db, [compressible(rng, rng.randint(1000, 20_000)) for _ in range(12)])
        self.raw_seg, self.zstd_seg = number_of(self.raw_locs[0]), number_of(self.zstd_locs[0])
        db.recompress([self.zstd_seg], mode=CompressMode.YES, frame_bytes=16 * 1024)
        db.put(b"mutable tail")
        self.dir = str(db.datadir)

    def data_path(self, number: int, compressed: bool) -> str:
        """Path of a data file as verify names it."""
        return os.path.join(self.dir, segment_name(number, compressed))

    def index_path(self, number: int) -> str:
        """Path of an index file as verify names it."""
        return os.path.join(self.dir, index_name(number))


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _fault_raw_blob(s: FaultyStore) -> tuple[str, set[str]]:
    loc = s.raw_locs[5]
    _flip(s.data_path(s.raw_seg, False), (loc.start_offset + loc.end_offset) // 2)
    return s.data_path(s.raw_seg, False), {"checksum"}


def _fault_zstd_blob(s: FaultyStore) -> tuple[str, set[str]]:
    path = s.data_path(s.zstd_seg, True)
    table = parse_seek_table(_preader(Path(path)), os.path.getsize(path), path)
    sizes = [table.c_offsets[i + 1] - table.c_offsets[i] for i in range(len(table))]
    biggest = max(range(len(table)), key=lambda i: sizes[i])
    _flip(path, table.c_offsets[biggest] + sizes[biggest] // 2)
    return path, {"bad-frame", "checksum"}


def _fault_truncated_index(s: FaultyStore) -> tuple[str, set[str]]:
    path = s.index_path(s.raw_seg)
    os.truncate(path, os.path.getsize(path) - 16)  # half of the SEAL record
    return path, {"not-sealed", "bad-index-record"}


def _fault_seek_table(s: FaultyStore) -> tuple[str, set[str]]:
    path = s.data_path(s.zstd_seg, True)
    _flip(path, os.path.getsize(path) - 1)  # the seekable magic at the very end
    return path, {"bad-seek-table"}


def _fault_missing_data(s: FaultyStore) -> tuple[str, set[str]]:
    path = s.data_path(s.raw_seg, False)
    os.unlink(path)
    return path, {"missing-data"}


FAULTS: dict[str, Callable[[FaultyStore], tuple[str, set[str]]]] = {
    "raw-blob-byte": _fault_raw_blob,
    "zstd-blob-byte": _fault_zstd_blob,
    "truncated-index": _fault_truncated_index,
    "seek-table": _fault_seek_table,
    "missing-data": _fault_missing_data,
}
STRUCTURAL = ["truncated-index", "seek-table", "missing-data"]


def _snapshot(datadir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in datadir.iterdir() if p.name != "ffdb.state"}


def _restore(datadir: Path, snapshot: dict[str, bytes]) -> None:
    for name, data in snapshot.items():
        (datadir / name).write_bytes(data)


def test_verify_clean_store_and_progress(make_store: StoreFactory) -> None:
    """A clean store reports nothing; progress(done, total) is called once per segment, in order."""
    s = FaultyStore(make_store())
    calls: list[tuple[int, int]] = []
    report = s.db.verify(progress=lambda done, total: calls.append((done, total)))
    assert report.ok, str(report)
    assert report.problems == []
    total = len(s.db.segments())
    assert total == 3
    assert calls == [(done, total) for done in range(1, total + 1)]
    assert report.segments == total
    assert report.blobs == len(s.raw_locs) + len(s.zstd_locs) + 1
    calls.clear()
    assert s.db.verify(full=False, progress=lambda done, total: calls.append((done, total))).ok
    assert calls == [(done, total) for done in range(1, total + 1)]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_verify_finds_fault(make_store: StoreFactory, fault: str) -> None:
    """Each injected fault is reported with its kind, naming the damaged file and no other."""
    s = FaultyStore(make_store())
    before = _snapshot(s.db.datadir)
    path, kinds = FAULTS[fault](s)
    try:
        report = s.db.verify()
        assert not report.ok
        assert report.problems[0].kind in kinds, str(report)
        assert report.problems[0].path == path, str(report)
        assert all(p.path == path for p in report.problems), str(report)  # nothing blamed on healthy files
    finally:
        _restore(s.db.datadir, before)
    assert s.db.verify().ok  # and the fixture checks it again at teardown


def test_quick_verify_skips_blob_checksums(make_store: StoreFactory) -> None:
    """verify(full=False) does not read blobs, so a flipped blob byte goes unnoticed; full finds it."""
    s = FaultyStore(make_store())
    before = _snapshot(s.db.datadir)
    _fault_raw_blob(s)
    try:
        assert s.db.verify(full=False).ok  # the flipped blob byte is only found by checksums
        assert not s.db.verify(full=True).ok
    finally:
        _restore(s.db.datadir, before)


@pytest.mark.parametrize("fault", STRUCTURAL)
def test_quick_verify_reports_structural_faults(make_store: StoreFactory, fault: str) -> None:
    """verify(full=False) skips checksums only: a damaged index, seek table or missing file is still reported."""
    s = FaultyStore(make_store())
    before = _snapshot(s.db.datadir)
    path, kinds = FAULTS[fault](s)
    try:
        report = s.db.verify(full=False)
        assert not report.ok, f"verify(full=False) missed the {fault} fault in {path}"
        assert report.problems[0].kind in kinds, str(report)
        assert all(p.path == path for p in report.problems), str(report)
    finally:
        _restore(s.db.datadir, before)


# -- retention ------------------------------------------------------------------------------


class RetentionStore:
    """Five sealed segments of different sizes and a mutable one holding one blob."""

    def __init__(self, db: FlatFileDb, pause: float = 0.0) -> None:
        rng = random.Random(6)
        self.db = db
        self.blobs: dict[DataLocation, bytes] = {}
        self.by_segment: dict[int, list[DataLocation]] = {}
        self.sealed_between: list[float] = []  # a time after each seal (and before the next)
        for size in (20_000, 5_000, 40_000, 10_000, 30_000):
            blobs = [rng.randbytes(rng.randint(0, size // 5)) for _ in range(6)]
            locs = fill_segment(db, blobs)
            self.blobs.update(zip(locs, blobs))
            self.by_segment[number_of(locs[0])] = locs
            if pause:
                time.sleep(pause / 2)
                self.sealed_between.append(time.time())
                time.sleep(pause / 2)
        self.mutable_loc = db.put(b"the mutable segment's blob")
        self.blobs[self.mutable_loc] = b"the mutable segment's blob"
        self.sealed = sorted(self.by_segment)

    def check_present(self, numbers: list[int]) -> None:
        """Exactly ``numbers`` (and the mutable segment) remain; their blobs read, others are gone."""
        files = data_files(self.db.datadir)
        assert sorted(files) == sorted(numbers + [number_of(self.mutable_loc)])
        for loc, blob in self.blobs.items():
            if number_of(loc) in files:
                assert self.db.get(loc) == blob
            else:
                with pytest.raises(FileNotFoundError):
                    self.db.get(loc)
                assert not os.path.exists(self.db.datadir / index_name(number_of(loc)))


def test_retention_by_bytes(store: FlatFileDb) -> None:
    """The oldest sealed segments go until the store fits in max_bytes, and no more."""
    r = RetentionStore(store)
    stats = store.stats()
    disk = {s.number: s.disk_bytes for s in stats.segments}
    max_bytes = stats.disk_bytes - disk[r.sealed[0]] - disk[r.sealed[1]] + 1  # two must go, not three
    assert store.enforce_retention(max_bytes=max_bytes * 10) == []
    assert store.enforce_retention(max_bytes=max_bytes) == r.sealed[:2]
    assert store.stats().disk_bytes <= max_bytes
    r.check_present(r.sealed[2:])


def test_retention_keep_min_and_never_mutable(store: FlatFileDb) -> None:
    """keep_min sealed segments always stay; the mutable segment is never deleted, even with max_bytes=0."""
    r = RetentionStore(store)
    assert store.enforce_retention(max_bytes=0, keep_min=2) == r.sealed[:3]
    r.check_present(r.sealed[3:])
    assert store.enforce_retention(max_bytes=0, keep_min=2) == []
    assert store.enforce_retention(max_bytes=0) == r.sealed[3:]
    r.check_present([])
    assert store.enforce_retention(max_bytes=0, max_age=0) == []  # the mutable segment stays
    assert store.get(r.mutable_loc) == r.blobs[r.mutable_loc]
    with pytest.raises(ValueError):
        store.enforce_retention(max_bytes=-1)


def test_retention_by_age(store: FlatFileDb) -> None:
    """Segments sealed longer than max_age ago (by the injected clock) go, oldest first, keep_min honoured."""
    r = RetentionStore(store, pause=0.1)
    # Pretend it is 1000 s after the moment between the second and the third seal (50 ms from
    # each): with max_age=1000 the first two segments are too old, the others are not.
    now = r.sealed_between[1] + 1000.0
    assert store.enforce_retention(max_age=1010.0, clock=lambda: now) == []
    assert store.enforce_retention(max_age=1000.0, keep_min=4, clock=lambda: now) == r.sealed[:1]
    assert store.enforce_retention(max_age=1000.0, clock=lambda: now) == r.sealed[1:2]
    r.check_present(r.sealed[2:])
    assert store.enforce_retention(max_age=3600.0) == []  # real clock: everything is seconds old
    r.check_present(r.sealed[2:])


def test_retention_on_delete_sees_each_segment_before_it_goes(store: FlatFileDb) -> None:
    """on_delete gets each segment oldest first, with its exact blob locations, while it still reads."""
    r = RetentionStore(store)
    seen: list[tuple[str, list[DataLocation]]] = []

    def on_delete(path: str, locations: list[DataLocation]) -> None:
        assert os.path.exists(path), f"{path} is gone before on_delete ran"
        assert os.path.exists(store.datadir / index_name(number_of(DataLocation(path, 0, 0))))
        for loc in locations:
            assert store.get(loc) == r.blobs[loc]
        seen.append((path, locations))

    assert store.enforce_retention(max_bytes=0, keep_min=1, on_delete=on_delete) == r.sealed[:-1]
    assert [number_of(DataLocation(path, 0, 0)) for path, _locs in seen] == r.sealed[:-1]
    for path, locations in seen:
        assert locations == r.by_segment[number_of(DataLocation(path, 0, 0))]
        assert all(loc.file_path == path for loc in locations)
    r.check_present(r.sealed[-1:])


def test_retention_stops_when_on_delete_raises(store: FlatFileDb) -> None:
    """An error in on_delete stops retention before that segment is deleted, and propagates."""
    r = RetentionStore(store)
    calls: list[str] = []

    class KeyValueStoreDown(RuntimeError):
        """Stands in for the caller's key-value store failing."""

    def on_delete(path: str, _locations: list[DataLocation]) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyValueStoreDown(path)

    with pytest.raises(KeyValueStoreDown):
        store.enforce_retention(max_bytes=0, on_delete=on_delete)
    assert len(calls) == 2
    r.check_present(r.sealed[1:])  # the first went; the one whose callback failed and the rest stay


def test_retention_on_delete_locations_match_what_put_returned(make_store: StoreFactory) -> None:
    """A caller drops the locations on_delete gives from its key-value store, keyed by what put
    returned. In an AUTO store put returns ``.dat`` paths and sealing renames the segment to
    ``.dat.zst``: the locations handed to on_delete must still be the ones the caller holds."""
    rng = random.Random(7)
    db = make_store(use_compression=CompressMode.AUTO)
    locs = fill_segment(db, [compressible(rng, 50_000) for _ in range(4)])
    assert data_files(db.datadir)[number_of(locs[0])].endswith(".dat.zst")  # compressed when sealed
    db.put(b"mutable")
    seen: list[DataLocation] = []
    db.enforce_retention(max_bytes=0, on_delete=lambda _path, locations: seen.extend(locations))
    assert set(seen) == set(locs), f"on_delete gave {seen[:1]}..., put returned {locs[:1]}..."


# -- compaction ------------------------------------------------------------------------------


class CompactionStore:
    """Three sealed segments of blobs of mixed sizes (empty ones too), a sealed segment with two
    blobs over 8 MiB (one live, one dead), and a blob in the mutable segment."""

    def __init__(self, db: FlatFileDb, rng: random.Random) -> None:
        self.db = db
        self.blobs: dict[DataLocation, bytes] = {}
        self.every: list[DataLocation] = []  # empty blobs in a row share one location: this has each
        for _segment in range(3):
            data = [compressible(rng, rng.choice([0, 1, 100, 5000, 70_000])) for _ in range(25)]
            locs = fill_segment(db, data)
            self.blobs.update(zip(locs, data))
            self.every += locs
        big_live, big_dead = rng.randbytes(BIG_BLOB), bytes(range(256)) * (BIG_BLOB // 256) + b"dead"
        self.big_live, big_dead_loc = db.put(big_live), db.put(big_dead)
        db.rotate()
        self.blobs.update({self.big_live: big_live, big_dead_loc: big_dead})
        self.every += [self.big_live, big_dead_loc]
        self.old_segments = sorted({number_of(loc) for loc in self.every})
        self.untouched = db.put(b"mutable before compaction")
        self.live = {loc for loc in self.blobs if rng.random() < 0.6} | {self.big_live}
        self.live.discard(big_dead_loc)


@pytest.mark.parametrize("use_compression", [False, True], ids=["raw", "zstd"])
def test_compaction(make_store: StoreFactory, use_compression: bool) -> None:
    """Live blobs (large ones too) are copied and mapped; old locations read until finish_compaction."""
    db = make_store(use_compression=use_compression, frame_bytes=16 * 1024)
    s = CompactionStore(db, random.Random(8))
    asked: list[DataLocation] = []

    def is_live(loc: DataLocation) -> bool:
        asked.append(loc)
        return loc in s.live

    compaction = db.compact(s.old_segments, is_live)
    assert sorted(asked, key=tuple) == sorted(s.every, key=tuple)  # every old blob asked about once
    assert set(compaction.mapping) == s.live
    assert compaction.dropped == sum(loc not in s.live for loc in s.every)
    assert sorted(compaction.old_segments) == s.old_segments
    mutable = db.mutable_segment()
    new_locs = list(compaction.mapping.values())
    assert len(set(new_locs)) == len(new_locs)
    for old, new in compaction.mapping.items():
        assert number_of(new) not in s.old_segments and number_of(new) < mutable, (old, new)
        assert db.get(new) == s.blobs[old]
        assert db.get(old) == s.blobs[old]  # phase two has not run: old locations still read
    assert db.get(compaction.mapping[s.big_live]) == s.blobs[s.big_live]
    for loc, blob in s.blobs.items():
        assert db.get(loc) == blob
    assert db.get(s.untouched) == b"mutable before compaction"

    assert sorted(db.finish_compaction(compaction)) == s.old_segments
    files = data_files(db.datadir)
    for number in s.old_segments:
        assert number not in files
        assert not os.path.exists(db.datadir / index_name(number))
    for loc in s.blobs:
        with pytest.raises(FileNotFoundError):
            db.get(loc)
    for old, new in compaction.mapping.items():
        assert db.get(new) == s.blobs[old]
    assert db.get(s.untouched) == b"mutable before compaction"
    with pytest.raises(TypeError):
        db.finish_compaction(compaction.mapping)  # type: ignore[arg-type]


def test_compaction_is_live_sees_the_locations_put_returned(make_store: StoreFactory) -> None:
    """A caller's is_live checks its key-value store, which holds the locations put returned.
    In an AUTO store put returns ``.dat`` paths and sealing recompresses the segment to
    ``.dat.zst``: compaction must still recognise those locations, or it drops every live blob
    (and finish_compaction would then delete them)."""
    rng = random.Random(9)
    db = make_store(use_compression=CompressMode.AUTO)
    data = [compressible(rng, 50_000) for _ in range(4)]
    locs = fill_segment(db, data)
    number = number_of(locs[0])
    assert data_files(db.datadir)[number] == segment_name(number, True)  # compressed when sealed
    kv = set(locs)
    compaction = db.compact([number], lambda loc: loc in kv)
    assert compaction.dropped == 0, f"{compaction.dropped} live blobs dropped"
    assert set(compaction.mapping) == kv
    for loc, blob in zip(locs, data):
        assert db.get(compaction.mapping[loc]) == blob


# -- stats -------------------------------------------------------------------------------------


def test_stats(make_store: StoreFactory) -> None:
    """Per segment sizes, counts and flags match the files on disk; totals are the sums."""
    rng = random.Random(10)
    db = make_store()
    sizes: dict[int, list[int]] = {}
    for compress in (False, True, False):
        data = [compressible(rng, rng.randint(0, 30_000)) for _ in range(10)]
        locs = fill_segment(db, data)
        sizes[number_of(locs[0])] = [len(d) for d in data]
        if compress:
            db.recompress([number_of(locs[0])], mode=CompressMode.YES)
    tail = db.put(b"x" * 1234)
    sizes[number_of(tail)] = [1234]
    stats = db.stats()
    assert [s.number for s in stats.segments] == sorted(sizes)
    files = data_files(db.datadir)
    for seg in stats.segments:
        name = files[seg.number]
        assert seg.file_name == name
        assert seg.compressed == name.endswith(".dat.zst")
        assert seg.sealed == (seg.number != number_of(tail))
        assert seg.blobs == len(sizes[seg.number])
        assert seg.logical_bytes == sum(sizes[seg.number])
        disk = os.path.getsize(db.datadir / name) + os.path.getsize(db.datadir / index_name(seg.number))
        assert seg.disk_bytes == disk
        assert seg.ratio == pytest.approx(seg.logical_bytes / seg.disk_bytes)
    assert [s.compressed for s in stats.segments] == [False, True, False, False]
    assert stats.segments[1].ratio > 2.0 > stats.segments[0].ratio
    assert stats.logical_bytes == sum(s.logical_bytes for s in stats.segments) == sum(map(sum, sizes.values()))
    assert stats.disk_bytes == sum(s.disk_bytes for s in stats.segments)
    assert stats.blobs == sum(s.blobs for s in stats.segments) == sum(map(len, sizes.values()))
    assert stats.ratio == pytest.approx(stats.logical_bytes / stats.disk_bytes)


def test_stats_of_an_empty_mutable_segment(store: FlatFileDb) -> None:
    """A freshly rotated (empty) mutable segment holds no blob and no logical byte."""
    fill_segment(store, [b"abc", b"defg"])
    stats = store.stats()
    [sealed, mutable] = stats.segments
    assert (sealed.blobs, sealed.logical_bytes) == (2, 7)
    assert not mutable.sealed
    assert (mutable.blobs, mutable.logical_bytes) == (0, 0), mutable
    assert (stats.blobs, stats.logical_bytes) == (2, 7)
