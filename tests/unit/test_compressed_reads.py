"""Reads from a compressed store decompress only the frames a slice overlaps (counted by
frame_cache_info()["misses"]), the frame cache serves repeated reads, and cached frames
never outlive the segment file they came from."""

from __future__ import annotations

import os
import random
import time
from typing import Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice

StoreFactory = Callable[..., FlatFileDb]
FRAME = 4096
MIB = 2**20


def blob(size: int, seed: int) -> bytes:
    """Half random, half repetitive bytes: frames of both kinds."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + (rng.randbytes(50) * (size // 50 + 1))[: size - half]


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
            f"round {seen.get(inode)}, whose segment was deleted")
        seen[inode] = round_
        db.delete_file(location.file_path)
        if reused >= 3:
            break
        time.sleep(0.02)
