"""Forged power losses of the mutable segment, in both modes: every location a caller could
hold reads its own bytes or fails with a typed error, for ever after, new puts included.

A power loss leaves a prefix of each file that was not fsynced (or zeros where its blocks
never reached the disk), and a state page from before the reboot. The tests below make
exactly that from a store closed cleanly: they cut the mutable segment's data and index at
every commit boundary and inside records and blobs, zero a range, stamp another boot id into
the state page (or remove it), reopen, and put more.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
from crash_support import cut_file, index_records_of, set_state_word, zero_bytes

from conduit_flat_file_db import (
    DataLocation,
    FlatFileDb,
    FlatFileDbError,
    FlatFileDbUnsafeAccessError,
    InvalidLocationError,
    Slice,
)
from conduit_flat_file_db.index import HEADER_BYTES, REC_FRAME, RECORD_BYTES
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, segment_name
from conduit_flat_file_db.state import W_BOOT_HI, W_BOOT_LO

pytestmark = pytest.mark.crash


class Held(NamedTuple):
    """A location a caller was given, and the bytes it was given for."""

    location: DataLocation
    data: bytes


def open_store(datadir: Path, compressed: bool) -> FlatFileDb:
    """The store under test: no re-framing, so a compressed segment keeps its put frames."""
    return FlatFileDb(
        datadir, str(datadir) + ".lock", use_compression=compressed, reframe_on_seal=False, frame_bytes=4096
    )


def forge_reboot(datadir: Path, state: str) -> None:
    """Make the state page look written before a reboot ("boot"), or lose it ("lost")."""
    if state == "lost":
        (datadir / STATE_FILE_NAME).unlink()
        return
    set_state_word(datadir, W_BOOT_LO, 0x1234)
    set_state_word(datadir, W_BOOT_HI, 0x5678)


def check_held(db: FlatFileDb, held: list[Held], durable: int) -> int:
    """Every held location reads its own bytes (whole and sliced) or raises a FlatFileDbError;
    the first ``durable`` must read. Returns how many still read."""
    reading = 0
    for position, (location, data) in enumerate(held):
        try:
            got = db.get(location)
        except FlatFileDbError:
            assert position >= durable, f"durable blob {location} lost"
            continue
        assert got == data, f"{location} returned other bytes"
        if data:
            assert db.get(location, Slice(len(data) // 2, 0)) == data[len(data) // 2 :]
            assert db.get_many([location]) == [data]
        reading += 1
    return reading


def write_history(datadir: Path, compressed: bool, seed: int) -> tuple[list[Held], int, tuple[int, int]]:
    """Blobs made durable by sync(), then unsynced ones (empty blobs and batches among them),
    in a store closed cleanly; returns them all, how many are durable, and the sizes of the
    mutable segment's data and index files at the sync."""
    rng = random.Random(seed)
    db = open_store(datadir, compressed)
    held = [Held(db.put(d), d) for d in (b"durable", rng.randbytes(3000), b"")]
    db.sync()
    durable = len(held)
    mutable = db.mutable_segment()
    records = index_records_of(datadir, mutable)
    frames_end = max((r.extra + (r.size >> 32) for r in records if r.rtype == REC_FRAME), default=0)
    synced = (frames_end if compressed else held[-1].location.end_offset, HEADER_BYTES + RECORD_BYTES * len(records))
    for size in (100, 0, 5000, 1, 20000):
        data = bytes([rng.randrange(256)]) * size if size % 2 else rng.randbytes(size)
        held.append(Held(db.put(data), data))
    batch = [rng.randbytes(rng.randrange(1, 700)) for _ in range(3)] + [b""]
    held.extend(Held(loc, data) for loc, data in zip(db.put_many(batch), batch))
    db.close()
    return held, durable, synced


def data_cuts(synced: int, size: int, held: list[Held], compressed: bool) -> Iterator[int]:
    """Where a power loss may leave the data file (never short of its ``synced`` bytes): at blob
    (or, compressed, arbitrary) boundaries and inside blobs."""
    if compressed:
        points = {synced, synced + 1, (synced + size) // 2, size - 9, size - 1, size}
    else:
        points = {synced, size}
        for location, data in held:
            points.update((location.start_offset, location.start_offset + len(data) // 2))
    yield from sorted(p for p in points if synced <= p <= size)


def index_cuts(synced: int, committed: int, size: int) -> Iterator[int]:
    """Every record boundary from ``synced`` to ``committed``, a point inside each record, and
    the whole file (with a writer's zero room past its records)."""
    for at in range(synced, committed + 1, RECORD_BYTES):
        yield at
        if at + RECORD_BYTES <= committed:
            yield at + RECORD_BYTES // 2
    if size > committed:
        yield size


def reopen_and_use(datadir: Path, compressed: bool, held: list[Held], durable: int, seed: int) -> None:
    """Reopen after the forged loss, put blobs that would land on lost offsets, and check every
    location handed out, before and after, across one more reopen."""
    rng = random.Random(seed)
    held = [Held(loc._replace(file_path=str(datadir / Path(loc.file_path).name)), data) for loc, data in held]
    db = open_store(datadir, compressed)
    try:
        check_held(db, held, durable)
        fresh = [rng.randbytes(size) for size in (200, 0, 7000, 3)]
        after = [Held(db.put(d), d) for d in fresh[:2]] + [
            Held(loc, d) for loc, d in zip(db.put_many(fresh[2:]), fresh[2:])
        ]
        assert check_held(db, after, len(after)) == len(after)
        check_held(db, held, durable)
        report = db.verify()
        assert report.ok, str(report)
    finally:
        db.close()
    db = open_store(datadir, compressed)
    try:
        more = [Held(db.put(d), d) for d in (b"later", rng.randbytes(900))]
        assert check_held(db, held + after + more, durable) >= len(after + more)
        assert check_held(db, after + more, len(after + more)) == len(after + more)
    finally:
        db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_lost_blob_location_fails_instead_of_reading_a_later_blob(tmp_path: Path, compressed: bool) -> None:
    """put, sync, put A, power loss takes A, reopen, put B: A's location must not read B."""
    datadir = tmp_path / "store"
    db = open_store(datadir, compressed)
    db.put(b"durable")
    db.sync()
    lost = db.put(b"A" * 100)
    mutable = db.mutable_segment()
    db.close()
    data = datadir / segment_name(mutable, compressed)
    if not compressed:
        cut_file(data, 7)
    cut_file(datadir / index_name(mutable), HEADER_BYTES + RECORD_BYTES * (2 if compressed else 1))
    forge_reboot(datadir, "boot")
    db = open_store(datadir, compressed)
    try:
        new = db.put(b"B" * 200)
        assert db.get(new) == b"B" * 200
        with pytest.raises(InvalidLocationError, match="past"):
            db.get(lost)
        assert new.file_path != lost.file_path
    finally:
        db.close()


@pytest.mark.parametrize("state", ["boot", "lost"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_every_cut_of_the_mutable_segment_keeps_locations_true(tmp_path: Path, compressed: bool, state: str) -> None:
    """Data and index cut at every commit boundary and inside records and blobs."""
    pristine = tmp_path / "pristine"
    held, durable, synced = write_history(pristine, compressed, seed=7)
    mutable = max(int(p.name[5:13]) for p in pristine.glob("data_*.idx"))
    data_name, idx_name = segment_name(mutable, compressed), index_name(mutable)
    data_size = (pristine / data_name).stat().st_size
    idx_size = (pristine / idx_name).stat().st_size
    committed = HEADER_BYTES + RECORD_BYTES * len(index_records_of(pristine, mutable))
    cases = [
        (d, i)
        for d in data_cuts(synced[0], data_size, held, compressed)
        for i in index_cuts(synced[1], committed, idx_size)
    ]
    for number, (data_at, index_at) in enumerate(cases):
        datadir = tmp_path / f"case{number}"
        shutil.copytree(pristine, datadir)
        cut_file(datadir / data_name, data_at)
        cut_file(datadir / idx_name, index_at)
        forge_reboot(datadir, state)
        reopen_and_use(datadir, compressed, held, durable, seed=number)
        shutil.rmtree(datadir)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_zeroed_blocks_of_unsynced_blobs_are_cut_not_served(tmp_path: Path, compressed: bool) -> None:
    """Index records reached the disk but some data blocks did not: zeros where the blobs were."""
    pristine = tmp_path / "pristine"
    held, durable, _synced = write_history(pristine, compressed, seed=3)
    mutable = max(int(p.name[5:13]) for p in pristine.glob("data_*.idx"))
    data_name = segment_name(mutable, compressed)
    size = (pristine / data_name).stat().st_size
    starts = sorted({held[durable].location.start_offset if not compressed else size // 2, size // 3, size - 40})
    for number, start in enumerate(starts):
        datadir = tmp_path / f"case{number}"
        shutil.copytree(pristine, datadir)
        zero_bytes(datadir / data_name, start, min(4096, size - start))
        forge_reboot(datadir, "boot")
        reopen_and_use(datadir, compressed, held, durable, seed=100 + number)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_fsync_store_loses_nothing_acknowledged_across_a_reboot(tmp_path: Path, compressed: bool) -> None:
    """With fsync=True every acknowledged blob is on disk: a reboot costs nothing."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", fsync=True, use_compression=compressed)
    held = [Held(db.put(d), d) for d in (b"one", b"", b"three" * 1000)]
    db.close()
    forge_reboot(datadir, "boot")
    reopen_and_use(datadir, compressed, held, len(held), seed=1)


def test_a_new_store_is_not_sealed_by_its_first_open(tmp_path: Path) -> None:
    """A new store has a new state page too; its segment 0 takes the puts."""
    db = open_store(tmp_path / "store", False)
    try:
        db.put(b"x")
        assert db.segments() == [0]
    finally:
        db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_reopen_in_the_same_boot_continues_the_mutable_segment(tmp_path: Path, compressed: bool) -> None:
    """No power loss, no seal: a process crash or a close keeps the mutable segment going."""
    datadir = tmp_path / "store"
    db = open_store(datadir, compressed)
    first = db.put(b"x")
    db.close()
    db = open_store(datadir, compressed)
    try:
        second = db.put(b"y")
        assert second.file_path == first.file_path and second.start_offset == 1
    finally:
        db.close()


def test_power_loss_at_the_last_segment_number_seals_it_for_good(tmp_path: Path) -> None:
    """Segment 4294967295 sealed after a power loss cannot be followed: puts are refused, typed,
    and never land behind its SEAL on the lost blob's offsets."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    last = 2**32 - 1
    (datadir / segment_name(last, False)).write_bytes(b"")
    db = open_store(datadir, False)
    kept = db.put(b"kept")
    db.sync()
    lost = db.put(b"lost after the sync")
    db.close()
    cut_file(datadir / segment_name(last, False), 4)
    cut_file(datadir / index_name(last), HEADER_BYTES + RECORD_BYTES)
    forge_reboot(datadir, "boot")
    db = open_store(datadir, False)
    try:
        with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
            db.put(b"would reuse the lost offsets")
        assert db.get(kept) == b"kept"
        with pytest.raises(InvalidLocationError):
            db.get(lost)
    finally:
        db.close()


_SPARSE_TAIL_CHILD = """
import resource, sys
from conduit_flat_file_db import DataLocation, FlatFileDb
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # far less than the index file's size
db = FlatFileDb(sys.argv[1], sys.argv[1] + ".lock", use_compression=sys.argv[2] == "1")
assert db.get(DataLocation(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))) == b"durable blob"
more = db.put(b"more")
assert db.get(more) == b"more"
db.close()
print("ok")
"""


@pytest.mark.parametrize("state", ["boot", "lost"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_an_index_with_gigabytes_of_zeros_after_its_records_is_cut_without_reading_them(
    tmp_path: Path, compressed: bool, state: str
) -> None:
    """A mutable segment's index made 40 GiB long (a sparse file: zeros after its records, as a
    damaged or forged file may be) is cut back to its records by the recovery after a reboot,
    in a process that may map only 2 GiB: recovery reads the valid records and a bounded tail,
    never the whole file (it raised MemoryError)."""
    datadir = tmp_path / "store"
    db = open_store(datadir, compressed)
    held = db.put(b"durable blob")
    db.close()
    index = datadir / index_name(0)
    os.truncate(index, 40 << 30)
    forge_reboot(datadir, state)
    child = subprocess.run(
        [sys.executable, "-c", _SPARSE_TAIL_CHILD, str(datadir), "1" if compressed else "0", *map(str, held)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0 and child.stdout == "ok\n", child.stderr[-3000:]
    assert HEADER_BYTES + 2 * RECORD_BYTES <= index.stat().st_size < 1 << 20  # its records, the new put's, a room
