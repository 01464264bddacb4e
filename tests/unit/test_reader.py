"""Reads from a compressed store decompress only the frames a slice overlaps (counted by
frame_cache_info()["misses"]), the frame cache serves repeated reads, and cached frames
never outlive the segment file they came from."""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import CorruptionError, DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import FormatError
from conduit_flat_file_db.seekable import SeekableReader

StoreFactory = Callable[..., FlatFileDb]
FRAME = 4096
MIB = 2**20


def blob(size: int, seed: int) -> bytes:
    """Half random letters (they compress about 2x), half repetitive bytes: every frame is
    compressed, none is stored (tests of stored frames are at the end)."""
    rng = random.Random(seed)
    half = size // 2
    letters = bytes(rng.choice(b"abcdefghijklmnop") for _ in range(half))
    return letters + (rng.randbytes(50) * (size // 50 + 1))[: size - half]


def misses(db: FlatFileDb) -> int:
    """Frames decompressed so far (every cache miss decompresses one frame)."""
    return db.frame_cache_info()["misses"]


def check_frame_counts(db: FlatFileDb, location: DataLocation, data: bytes, cached: bool) -> None:
    """A slice inside one frame costs 1 frame, across three frames 3, the whole blob all of them;
    with a cache, repeating a read costs nothing."""
    base = location.start_offset
    assert base % FRAME == 0, "the blob starts a frame in these tests"
    cases = [
        (Slice(10 * FRAME + 100, 10 * FRAME + 200), 1),  # 100 bytes inside frame 10
        (Slice(20 * FRAME, 21 * FRAME), 1),  # exactly frame 20
        (Slice(30 * FRAME - 50, 31 * FRAME + 50), 3),  # the end of 29, all of 30, the start of 31
        (Slice(40 * FRAME - 1, 40 * FRAME + 1), 2),  # two bytes across a boundary
        (Slice(len(data) - 100, 0), 1),  # the last 100 bytes, to the end of the blob
    ]
    for slice_, frames in cases:
        start, end = slice_.start_offset, slice_.end_offset or len(data)
        before = misses(db)
        assert db.get(location, slice_) == data[start:end]
        assert misses(db) - before == frames, (slice_, frames)
        before = misses(db)
        assert db.get(location, slice_) == data[start:end]
        assert misses(db) - before == (0 if cached else frames), ("repeated", slice_)
    before = misses(db)
    assert db.get(location) == data
    whole = len(data) // FRAME
    if cached:
        assert misses(db) - before == whole - sum(frames for _, frames in cases)
        before = misses(db)
        assert db.get(location) == data
        assert misses(db) == before
    else:
        assert misses(db) - before == whole


@pytest.mark.parametrize("sealed", [False, True])
def test_slice_decompresses_only_the_frames_it_overlaps(make_store: StoreFactory, sealed: bool) -> None:
    """frame_bytes=4096, no cache, a 1 MiB blob: misses grow by exactly the frames touched,
    in the mutable segment and in the sealed (re-framed) one."""
    db = make_store("nocache", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0)
    data = blob(MIB, 1)
    location = db.put(data)
    if sealed:
        db.rotate()
    assert db.frame_cache_info()["bytes"] == 0
    check_frame_counts(db, location, data, cached=False)
    assert db.frame_cache_info()["hits"] == 0
    assert db.frame_cache_info()["bytes"] == 0


@pytest.mark.parametrize("sealed", [False, True])
def test_repeated_reads_come_from_the_frame_cache(make_store: StoreFactory, sealed: bool) -> None:
    """With a cache big enough for the blob, a repeated read decompresses nothing."""
    db = make_store("cache", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=4 * MIB)
    data = blob(MIB, 2)
    location = db.put(data)
    if sealed:
        db.rotate()
    check_frame_counts(db, location, data, cached=True)
    info = db.frame_cache_info()
    assert info["bytes"] == MIB
    assert info["max_bytes"] == 4 * MIB
    assert info["hits"] > 0


def test_blob_after_others_reads_only_its_frames(make_store: StoreFactory) -> None:
    """Blobs of one batch share frames: a small blob between big ones costs the one or two
    frames it lies in, not the batch's."""
    db = make_store("batch", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0)
    parts = [blob(100_000, 3), blob(1000, 4), blob(100_000, 5)]
    locations = db.put_many(parts)
    small = locations[1]
    first = small.start_offset // FRAME
    last = (small.end_offset - 1) // FRAME
    before = misses(db)
    assert db.get(small) == parts[1]
    assert misses(db) - before == last - first + 1
    before = misses(db)
    assert db.get(small, Slice(0, 1)) == parts[1][:1]
    assert misses(db) - before == 1


def test_cached_frames_never_outlive_their_segment(make_store: StoreFactory) -> None:
    """A deleted segment's frames must not be served for a newer segment.

    The frame cache is keyed by the file's (device, inode); file systems reuse a deleted
    file's inode number for new files (ext4 does so at once), and the store's new segments
    are new files: a get of a blob in the new segment then returns the deleted segment's bytes.
    """
    db = make_store("reuse", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=64 * MIB)
    seen: dict[int, int] = {}  # inode -> round whose frames were cached under it
    reused = 0
    for round_ in range(30):
        data = blob(20_000, 100 + round_)
        location = db.put(data)
        db.rotate()
        inode = os.stat(location.file_path).st_ino
        if inode in seen:
            reused += 1
        right = db.get(location) == data  # not in the assert: pytest's diff of bytes is slow
        assert right, (
            f"round {round_}: segment {location.file_path} (inode {inode}) served the cached frames of "
            f"round {seen.get(inode)}, whose segment was deleted"
        )
        seen[inode] = round_
        db.delete_file(location.file_path)
        if reused >= 3:
            break
        time.sleep(0.02)


# -- stored frames: slices read in place ---------------------------------------------------------


def test_incompressible_frames_are_stored_and_sliced_without_decompression(make_store: StoreFactory) -> None:
    """Random bytes compress by less than 1/8: their frames are stored, and a slice of one is
    read straight from the file (no frame decompressed), in the mutable and in the sealed
    segment; compressible frames next to them still decompress (no cache: each read counts)."""
    db = make_store("stored", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0)
    noise = random.Random(7).randbytes(64 * FRAME)
    text = blob(64 * FRAME, 8)
    locations = [db.put(noise), db.put(text)]
    for sealed in (False, True):
        if sealed:
            db.rotate()
        before = misses(db)
        for at in range(0, len(noise) - 300, 997):  # some inside one frame, some across two
            assert db.get(locations[0], Slice(at, at + 300)) == noise[at : at + 300]
        assert db.get(locations[0]) == noise
        assert misses(db) == before, "reads of stored frames decompress nothing"
        assert db.get(locations[1], Slice(5000, 5100)) == text[5000:5100]
        assert misses(db) == before + 1, "a compressed frame still decompresses"
        assert db.get(locations[1]) == text
        assert misses(db) == before + 1 + 64
    size = os.path.getsize(os.path.join(db.datadir, "data_00000000.dat.zst"))
    assert len(noise) < size < len(noise) + len(text) // 2, "noise stored (a little over its size), text compressed"


def test_min_frame_saving_zero_keeps_compressible_frames_compressed(make_store: StoreFactory) -> None:
    """Data that compresses by about 1/10: stored under the default rule (1/8), compressed with
    min_frame_saving=0.05; both read back the same bytes."""
    rng = random.Random(9)
    data = bytes(rng.randrange(150) for _ in range(32 * FRAME))  # 150 symbols: about 0.91 of its size
    sizes = {}
    for label, saving in (("default", None), ("low", 0.05)):
        kwargs = {} if saving is None else {"min_frame_saving": saving}
        db = make_store(label, use_compression=True, frame_bytes=FRAME, **kwargs)
        location = db.put(data)
        db.rotate()
        assert db.get(location) == data and db.get(location, Slice(100, 200)) == data[100:200]
        sizes[label] = os.path.getsize(os.path.join(db.datadir, "data_00000000.dat.zst"))
        db.close()
    assert sizes["low"] < len(data) * 0.95 < len(data) < sizes["default"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_min_frame_saving_out_of_range_is_refused(make_store: StoreFactory, bad: float) -> None:
    """min_frame_saving outside [0, 1): ValueError before anything is created."""
    with pytest.raises(ValueError, match="min_frame_saving"):
        make_store("bad", use_compression=True, min_frame_saving=bad)


def test_min_frame_saving_wrong_type_is_refused(make_store: StoreFactory) -> None:
    """A non-number: TypeError."""
    with pytest.raises(TypeError, match="min_frame_saving"):
        make_store("bad", use_compression=True, min_frame_saving="0.1")


def test_a_frame_cut_short_is_corruption_for_every_reader(tmp_path: Path) -> None:
    """A compressed segment cut after a reader opened it: a compressed frame, a stored frame read
    in place, and the standalone SeekableReader all raise CorruptionError naming the file: one
    reader of frames, one error for the same short read."""
    db = FlatFileDb(
        tmp_path / "store", tmp_path / "store.lock", use_compression=True, frame_bytes=FRAME, frame_cache_bytes=0
    )
    try:
        noise = random.Random(9).randbytes(16 * FRAME)
        text = blob(16 * FRAME, 10)
        locations = [db.put(noise), db.put(text)]
        db.rotate()
        path = locations[0].file_path
        assert db.get(locations[0], Slice(0, 10)) == noise[:10]  # the segment is open now
        standalone = SeekableReader(path)
        os.truncate(path, 100)
        for location in locations:
            with pytest.raises(CorruptionError) as caught:
                db.get(location, Slice(8 * FRAME, 8 * FRAME + 10))
            assert caught.value.path == path
        with pytest.raises(CorruptionError) as caught:
            standalone.frame(len(standalone.table) - 2)
        assert caught.value.path == path
        standalone.close()
    finally:
        db.close()


def test_a_segment_that_fails_to_open_closes_its_descriptor_once(tmp_path: Path) -> None:
    """A sealed compressed segment whose seek table is damaged fails to open for reading, with a
    FormatError; the descriptor opened for it is closed once, then. Closed a second time when the
    half-made reader is dropped, its number would close whatever file this process opened next
    under that number (the lowest free one): here, any of the files opened just after."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=True, frame_bytes=FRAME)
    try:
        location = db.put(blob(4 * FRAME, 11))
        db.rotate()
        path = Path(location.file_path)
        with open(path, "r+b") as damaged:  # the footer's magic, in place: the seek table no longer parses
            damaged.seek(-4, os.SEEK_END)
            damaged.write(b"\0\0\0\0")
        reader = FlatFileDb(tmp_path / "store", tmp_path / "store.lock")  # nothing cached yet
        opened: list[int] = []
        try:
            try:
                reader.get(location)
            except FormatError:
                opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
            assert opened, "a damaged seek table did not raise FormatError"
            # The FormatError and its traceback (which held the half-made reader) are gone now.
            closed = [fd for fd in opened if not _is_open(fd)]
            assert not closed, f"descriptors {closed} of other files were closed by the failed open"
        finally:
            for fd in opened:
                if _is_open(fd):
                    os.close(fd)
            reader.close()
    finally:
        db.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("use_compression", [False, True])
def test_a_blob_file_refuses_a_size_that_is_not_an_int_and_any_write(tmp_path: Path, use_compression: bool) -> None:
    """BlobFile.read took a float size: read(nan) of a compressed blob reported a
    CorruptionError ("short read") for a blob that is whole, read(inf) and read(-1.5) read it
    all, read(2.0) raised an obscure slice TypeError. As FileIO.read, a size is an int or None
    (a TypeError otherwise); write() is io.UnsupportedOperation, not NotImplementedError."""
    with FlatFileDb(tmp_path / "db", use_compression=use_compression) as db:
        location = db.put(b"0123456789" * 5000)
        with db.open_blob(location) as blob_file:
            for size in (float("nan"), float("inf"), -1.5, 2.0, "3"):
                with pytest.raises(TypeError, match="int size or None"):
                    blob_file.read(size)  # type: ignore[arg-type]
            assert blob_file.tell() == 0
            assert blob_file.read(True) == b"0" and blob_file.read(None) == (b"0123456789" * 5000)[1:]
            with pytest.raises(io.UnsupportedOperation):
                blob_file.write(b"x")
