"""Files of sealed segments moved, copied or forged over one another's: a location reads its own
blob's bytes or raises a typed error (FlatFileDbError), never another blob's bytes, never an
untyped error, never a hang. The checks run once per open of a segment (sealed_check)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import (
    CorruptionError,
    FlatFileDbNotFoundError,
    FormatError,
    InvalidLocationError,
)
from conduit_flat_file_db.index import KIND_RAW, encode_header, encode_seal
from conduit_flat_file_db.types import DataLocation, Slice

BLOB = 100


def _data(datadir: Path, number: int) -> Path:
    """The data file of segment ``number``, whichever suffix it has."""
    raw = datadir / f"data_{number:08d}.dat"
    return raw if raw.exists() else datadir / f"data_{number:08d}.dat.zst"


def _index(datadir: Path, number: int) -> Path:
    """The record index of segment ``number``."""
    return datadir / f"data_{number:08d}.idx"


def _swap(first: Path, second: Path) -> None:
    """Exchange two files by renames, as ``mv a t; mv b a; mv t b`` does."""
    aside = first.with_name(first.name + ".aside")
    first.rename(aside)
    second.rename(first)
    aside.rename(second)


def _store(
    tmp_path: Path, compressed: bool, sizes: tuple[int, ...] = (3, 3), name: str = "store", fill: int = 65
) -> tuple[Path, list[list[tuple[DataLocation, bytes]]]]:
    """A store whose segment i holds ``sizes[i]`` blobs of BLOB bytes (distinct contents), then an
    empty mutable segment; closed (background re-framing done). Returns the datadir and, per
    sealed segment, its (location, bytes)."""
    datadir = tmp_path / name
    segments = []
    with FlatFileDb(datadir, tmp_path / f"{name}.lock", use_compression=compressed) as db:
        for number, count in enumerate(sizes):
            blobs = [bytes([fill + number]) * BLOB + i.to_bytes(4, "little") for i in range(count)]
            segments.append([(db.put(blob), blob) for blob in blobs])
            db.rotate()
    return datadir, segments


def _open(datadir: Path, readonly: bool) -> FlatFileDb:
    """A writer's or a read-only instance of the store at ``datadir``."""
    return FlatFileDb(datadir, datadir.parent / f"{datadir.name}.lock", readonly=readonly)


READS: dict[str, Callable[[FlatFileDb, DataLocation], bytes]] = {
    "get": lambda db, location: db.get(location),
    "get_slice": lambda db, location: db.get(location, Slice(1, 5)),
    "get_many": lambda db, location: db.get_many([location])[0],
    "open_blob": lambda db, location: db.open_blob(location).read(),
    "get_view": lambda db, location: bytes(db.get_view(location)),
}


def _reads(db: FlatFileDb, location: DataLocation, compressed: bool) -> Iterator[Callable[[], bytes]]:
    """Every way of reading ``location`` (get_view maps raw segments only)."""
    for name, read in READS.items():
        if name != "get_view" or not compressed:
            yield lambda read=read: read(db, location)  # type: ignore[misc]


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "readonly"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_data_files_of_equal_size_swapped_are_refused(tmp_path: Path, compressed: bool, readonly: bool) -> None:
    """``mv data_0 data_1`` and back: two sealed data files of the same size exchanged. Their sizes
    match each other's SEAL records, so the last blob's checksum tells them apart: every read path
    raises CorruptionError naming the file, instead of serving the other segment's blob."""
    datadir, segments = _store(tmp_path, compressed)
    _swap(_data(datadir, 0), _data(datadir, 1))
    with _open(datadir, readonly) as db:
        for location, _blob in segments[0] + segments[1]:
            for read in _reads(db, location, compressed):
                with pytest.raises(CorruptionError) as caught:
                    read()
                assert caught.value.path.endswith(os.path.basename(location.file_path))


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "readonly"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_data_file_replaced_by_a_larger_or_smaller_segment_is_refused(
    tmp_path: Path, compressed: bool, readonly: bool
) -> None:
    """A sealed data file replaced by a copy of another sealed segment's, larger and smaller: its
    (uncompressed) size is not the one its SEAL record closes the segment at, so CorruptionError,
    never the other segment's bytes (before, a larger raw file served them for every location)."""
    datadir, segments = _store(tmp_path, compressed, sizes=(3, 5, 2))
    shutil.copyfile(_data(datadir, 1), tmp_path / "one")
    shutil.copyfile(_data(datadir, 1), _data(datadir, 0))  # larger than segment 0's
    shutil.copyfile(_data(datadir, 2), _data(datadir, 1))  # smaller than segment 1's
    with _open(datadir, readonly) as db:
        for location, _blob in segments[0] + segments[1]:
            with pytest.raises(CorruptionError, match="SEAL record"):
                db.get(location)
        assert [db.get(location) for location, _ in segments[2]] == [blob for _, blob in segments[2]]


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_data_file_of_another_store_with_the_same_number_is_refused(tmp_path: Path, compressed: bool) -> None:
    """Segment 0 of another store (same blob sizes, other bytes) copied over this store's segment 0:
    the sizes agree, the blob checksums do not: CorruptionError."""
    datadir, segments = _store(tmp_path, compressed)
    other, _ = _store(tmp_path, compressed, name="other", fill=97)
    shutil.copyfile(_data(other, 0), _data(datadir, 0))
    with _open(datadir, False) as db:
        with pytest.raises(CorruptionError):
            db.get(segments[0][0][0])


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "readonly"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_index_copied_over_another_segments_index_is_refused(tmp_path: Path, compressed: bool, readonly: bool) -> None:
    """``cp data_1.idx data_0.idx``: the header names segment 1. Reads of segment 0 and the listing
    of its records raise FormatError (before, iter_locations listed segment 1's blobs under segment
    0's name, which read other bytes)."""
    datadir, segments = _store(tmp_path, compressed, sizes=(3, 5))
    shutil.copyfile(_index(datadir, 1), _index(datadir, 0))
    with _open(datadir, readonly) as db:
        with pytest.raises(FormatError, match="names segment 1, not 0"):
            db.get(segments[0][0][0])
        with pytest.raises(FormatError, match="names segment 1, not 0"):
            list(db.iter_locations())
        assert db.get(segments[1][0][0]) == segments[1][0][1]
        assert not db.verify().ok


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_whole_segments_swapped_are_refused(tmp_path: Path, compressed: bool) -> None:
    """Both files of segments 0 and 1 exchanged (data and index): each index names the other
    segment, so FormatError."""
    datadir, segments = _store(tmp_path, compressed)
    _swap(_data(datadir, 0), _data(datadir, 1))
    _swap(_index(datadir, 0), _index(datadir, 1))
    with _open(datadir, False) as db:
        for location, _blob in segments[0] + segments[1]:
            with pytest.raises(FormatError):
                db.get(location)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_mutable_segments_index_replaced_by_a_sealed_ones_is_refused(tmp_path: Path, compressed: bool) -> None:
    """The mutable segment's index replaced by a sealed segment's under a running store: a new
    reader of it (a read-only open) raises FormatError (its header names the other segment)."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, tmp_path / "store.lock", use_compression=compressed) as db:
        db.put(b"s" * BLOB)
        db.rotate()
        location = db.put(b"m" * BLOB)
        shutil.copyfile(_index(datadir, 0), _index(datadir, 1))
        with _open(datadir, True) as reader:
            with pytest.raises(FormatError, match="names segment 0, not 1"):
                reader.get(location)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_sealed_data_file_cut_or_extended_is_refused(tmp_path: Path, compressed: bool) -> None:
    """A sealed data file cut by one byte, or extended with garbage: CorruptionError (raw: its size
    is not the SEAL's) or FormatError (compressed: its seek table no longer ends the file), for
    every location, never bytes of another offset."""
    for change in ("cut", "extend"):
        datadir, segments = _store(tmp_path / change, compressed)
        path = _data(datadir, 0)
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            if change == "cut":
                handle.truncate(size - 1)
            else:
                handle.seek(size)
                handle.write(os.urandom(100))
        with _open(datadir, False) as db:
            for location, _blob in segments[0]:
                with pytest.raises((CorruptionError, FormatError)):
                    db.get(location)


def test_last_blob_damaged_keeps_the_rest_of_its_segment_readable(tmp_path: Path) -> None:
    """One damaged blob (the last one, which the open checks first) does not refuse its whole
    segment: the first blob still checks, so the file is the segment's own; the other blobs read
    back, and verify() reports the damage. (Reads do not check checksums.)"""
    datadir, segments = _store(tmp_path, False)
    path = _data(datadir, 0)
    with open(path, "r+b") as handle:
        handle.seek(segments[0][-1][0].start_offset)
        handle.write(b"X")
    with _open(datadir, False) as db:
        assert [db.get(location) for location, _ in segments[0][:-1]] == [blob for _, blob in segments[0][:-1]]
        assert not db.verify().ok


def test_recompressed_segments_still_read(tmp_path: Path) -> None:
    """Legitimate differences from the SEAL record's disk size: a raw segment compressed, then
    made raw again, and re-framed compressed segments (another file size than the SEAL records):
    every location reads back."""
    datadir, segments = _store(tmp_path, False, sizes=(3, 4))
    with _open(datadir, False) as db:
        db.recompress([0, 1], mode=True, frame_bytes=64)
        assert all(db.get(location) == blob for segment in segments for location, blob in segment)
        db.recompress([0], mode=False)
        assert all(db.get(location) == blob for segment in segments for location, blob in segment)
    with _open(datadir, True) as db:
        assert all(db.get(location) == blob for segment in segments for location, blob in segment)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_symlink_or_directory_in_a_segments_place_is_refused(tmp_path: Path, compressed: bool) -> None:
    """Held before: a symlink to another segment's data file, or a directory, in a sealed data
    file's place is InvalidLocationError (opened with O_NOFOLLOW, regular files only)."""
    datadir, segments = _store(tmp_path, compressed)
    path = _data(datadir, 0)
    path.unlink()
    path.symlink_to(_data(datadir, 1).name)
    with _open(datadir, False) as db:
        with pytest.raises(InvalidLocationError):
            db.get(segments[0][0][0])
    path.unlink()
    path.mkdir()
    with _open(datadir, True) as db:
        with pytest.raises(InvalidLocationError):
            db.get(segments[0][0][0])


def test_index_symlink_or_directory_is_refused(tmp_path: Path) -> None:
    """An index replaced by a symlink to another segment's, or by a directory: InvalidLocationError
    at the segment's open, never the other index's records."""
    datadir, segments = _store(tmp_path, False)
    index = _index(datadir, 0)
    index.unlink()
    index.symlink_to(_index(datadir, 1).name)
    with _open(datadir, True) as db:
        with pytest.raises(InvalidLocationError):
            db.get(segments[0][0][0])
    index.unlink()
    index.mkdir()
    with _open(datadir, True) as db:
        with pytest.raises(InvalidLocationError):
            db.get(segments[0][0][0])


def test_segment_numbers_past_the_largest(tmp_path: Path) -> None:
    """Held before: a location naming a segment past the mutable one raises FlatFileDbNotFoundError
    when no file has that number, and InvalidLocationError (nothing committed there) when a stray
    file of that number was dropped into the datadir."""
    datadir, segments = _store(tmp_path, False)
    path = segments[0][0][0].file_path
    with _open(datadir, False) as db:
        with pytest.raises(FlatFileDbNotFoundError):
            db.get(DataLocation(path.replace("data_00000000", "data_00000099"), 0, 10))
        shutil.copyfile(_data(datadir, 0), datadir / "data_00000050.dat")
        with pytest.raises(InvalidLocationError):
            db.get(DataLocation(path.replace("data_00000000", "data_00000050"), 0, 10))
        with pytest.raises(FlatFileDbNotFoundError):
            db.get(DataLocation(path.replace("data_00000000", "data_4294967295"), 0, 10))


def test_index_header_damaged_is_served_by_its_own_data_file(tmp_path: Path) -> None:
    """An index whose header no longer decodes (not another segment's): the check cannot tell what
    the data file should be, so the data file (the segment's own) is served as before; verify()
    reports the index."""
    datadir, segments = _store(tmp_path, False)
    with open(_index(datadir, 0), "r+b") as handle:
        handle.write(b"garbage!")
    with _open(datadir, True) as db:
        assert db.get(segments[0][0][0]) == segments[0][0][1]
        assert not db.verify().ok


def test_empty_data_file_in_a_sealed_segments_place_is_refused(tmp_path: Path) -> None:
    """A sealed data file emptied (``: > data_0.dat``): CorruptionError, where a location used to be
    InvalidLocationError (past the end); either way no bytes."""
    datadir, segments = _store(tmp_path, False)
    _data(datadir, 0).write_bytes(b"")
    with _open(datadir, True) as db:
        with pytest.raises(CorruptionError):
            db.get(segments[0][0][0])


def test_empty_sealed_segment_and_its_replacement(tmp_path: Path) -> None:
    """A sealed segment without blobs (its index: the header and a SEAL at 0) opens, and a
    non-empty data file put in its place is refused (CorruptionError): the SEAL closes it at 0."""
    datadir, segments = _store(tmp_path, False, sizes=(2, 2))
    _data(datadir, 0).write_bytes(b"")
    _index(datadir, 0).write_bytes(encode_header(0, KIND_RAW, 0) + encode_seal(0, 0, 0))
    empty = DataLocation(str(_data(datadir, 0)), 0, 0)
    with _open(datadir, False) as db:
        with pytest.raises(InvalidLocationError):
            db.get(DataLocation(empty.file_path, 0, 1))
        assert db.get(empty) == b""
    shutil.copyfile(_data(datadir, 1), _data(datadir, 0))
    with _open(datadir, True) as db:
        with pytest.raises(CorruptionError):
            db.get(empty)
        assert db.get(segments[1][0][0]) == segments[1][0][1]


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "readonly"])
@pytest.mark.parametrize("how", ["swapped", "copied"])
def test_mutable_data_file_replaced_by_a_sealed_one_is_refused(tmp_path: Path, how: str, readonly: bool) -> None:
    """The mutable segment's raw data file exchanged with (or replaced by a copy of) a larger sealed
    one between two opens: the state page's committed end lies inside it, so its bytes used to be
    served for the mutable segment's locations. Its last (then first) committed blob fails its
    checksum at the reader's open: CorruptionError."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, tmp_path / "store.lock") as db:
        sealed = [db.put(b"A" * BLOB + bytes([i])) for i in range(5)]
        db.rotate()
        mutable = [db.put(b"B" * BLOB + bytes([i])) for i in range(3)]
    if how == "swapped":
        _swap(_data(datadir, 0), _data(datadir, 1))
    else:
        shutil.copyfile(_data(datadir, 0), _data(datadir, 1))
    with _open(datadir, readonly) as db:
        for location in mutable + (sealed if how == "swapped" else []):
            with pytest.raises(CorruptionError):
                db.get(location)


def test_mutable_segment_reads_while_puts_go_on(tmp_path: Path) -> None:
    """The mutable segment's check at its reader's open does not refuse a segment that grows:
    readers opened after each put (a read-only instance per put) read every blob back."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, tmp_path / "store.lock") as db:
        written = []
        for i in range(20):
            written.append((db.put(bytes([i]) * (i * 7000)), bytes([i]) * (i * 7000)))
            with _open(datadir, True) as reader:
                assert all(reader.get(location) == blob for location, blob in written)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("number", [0, 1], ids=["sealed", "mutable"])
def test_fifo_in_an_index_files_place_is_refused(tmp_path: Path, compressed: bool, number: int) -> None:
    """A FIFO where a sealed or the mutable segment's index should be: InvalidLocationError for a
    writer's and a read-only open, never a hang nor an untyped OSError (a read-only open used to
    fail with ESPIPE, "Illegal seek", when it walked the mutable segment's index)."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, tmp_path / "store.lock", use_compression=compressed) as db:
        locations = [db.put(b"a" * BLOB)]
        db.rotate()
        locations.append(db.put(b"b" * BLOB))
    _index(datadir, number).unlink()
    os.mkfifo(_index(datadir, number))
    for readonly in (True, False):
        try:
            with _open(datadir, readonly) as db:
                assert db.get(locations[1 - number]) == [b"a" * BLOB, b"b" * BLOB][1 - number]
                with pytest.raises(InvalidLocationError):
                    db.get(locations[number])
        except InvalidLocationError as exc:  # the mutable segment's: refused at the open
            assert number == 1 and "not a regular file" in str(exc)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_fifo_in_a_sealed_data_files_place_is_refused(tmp_path: Path, compressed: bool) -> None:
    """Held before: a FIFO where a sealed data file should be is InvalidLocationError."""
    datadir, segments = _store(tmp_path, compressed)
    _data(datadir, 0).unlink()
    os.mkfifo(datadir / f"data_00000000{'.dat.zst' if compressed else '.dat'}")
    with _open(datadir, True) as db:
        with pytest.raises(InvalidLocationError):
            db.get(segments[0][0][0])


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_index_extended_by_gigabytes_is_not_read_whole(tmp_path: Path, compressed: bool) -> None:
    """The mutable segment's index extended to 16 GiB (sparse zeros) and no state page: a read-only
    open walks the index up to its first record that is not valid and one chunk more, not the
    whole file (it used to read all of it into memory: 1 GB took 15 s and 1 GB of memory)."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, tmp_path / "store.lock", use_compression=compressed) as db:
        first = db.put(b"a" * BLOB)
        db.rotate()
        second = db.put(b"b" * BLOB)
    (datadir / "ffdb.state").unlink()
    os.truncate(_index(datadir, 1), 16 * 2**30)
    with _open(datadir, True) as db:
        assert db.get(second) == b"b" * BLOB
        assert db.get(first) == b"a" * BLOB
