"""Compaction killed by SIGKILL at random points (FlatFileDb.compact's crash promise).

A child process compacts the same sealed segments in a loop (phase one only: it never calls
finish_compaction); the parent kills it at a random moment (mid put_many, mid put_stream of a
blob over 8 MiB, mid rotation or re-framing), reopens the store and checks that every old
location still reads byte-identical and that verify() finds nothing. At the end the parent
compacts and finishes itself: every mapped location reads the old bytes and the old segments
are gone.

The child is forked (GUARANTEES.md: a FlatFileDb survives fork(); the child opens its own
instance anyway): spawning a fresh interpreter per round would cost more than the round.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.naming import parse_segment_name

pytestmark = pytest.mark.crash

StoreFactory = Callable[..., FlatFileDb]

ROUNDS = 5
MAX_KILL_DELAY_SECONDS = 0.8
START_SECONDS = 30.0
BIG_BLOB = 9 * 2**20  # copied by compaction as a stream (over 8 MiB)
FRAME_BYTES = 16 * 1024
WORDS = [b"red", b"green", b"blue", b"cyan", b"magenta", b"yellow", b"black", b"white", b"\n"]


def text(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of compressible text."""
    return b" ".join(rng.choices(WORDS, k=size // 4 + 1))[:size]


def open_store(datadir: str, lock_path: str, use_compression: bool) -> FlatFileDb:
    """Every process opens the store with the same options."""
    return FlatFileDb(datadir, lock_path, use_compression=use_compression, frame_bytes=FRAME_BYTES)


def compact_forever(
    datadir: str,
    lock_path: str,
    use_compression: bool,
    old_segments: list[int],
    live: list[tuple[str, int, int]],
    progress: str,
) -> None:
    """Compact ``old_segments`` over and over (never finishing) until killed."""
    db = open_store(datadir, lock_path, use_compression)
    live_set = {DataLocation(*loc) for loc in live}
    with open(progress, "a", encoding="ascii") as out:
        out.write("open\n")
        out.flush()
        while True:
            compaction = db.compact(old_segments, lambda loc: loc in live_set)
            out.write(f"done {len(compaction.mapping)}\n")
            out.flush()


def segment_of(location: DataLocation) -> int:
    """The segment number a location's file name carries."""
    number = parse_segment_name(os.path.basename(location.file_path))
    assert number is not None, location
    return number


def wait_for_line(path: Path, line: str, seconds: float) -> None:
    """Wait until ``path`` holds ``line``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text(encoding="ascii").splitlines():
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} never got the line {line!r}")


def check_old_locations(datadir: Path, lock_path: Path, use_compression: bool, blobs: dict[DataLocation, bytes]) -> int:
    """Reopen the store: every old location reads its bytes and verify() is clean. Returns blobs verified."""
    db = open_store(str(datadir), str(lock_path), use_compression)
    try:
        for loc, data in blobs.items():
            assert db.get(loc) == data, loc
        report = db.verify()
        assert report.ok, str(report)
        return report.blobs
    finally:
        db.close()


class OldStore:
    """Three sealed segments of blobs, and one holding a blob over 8 MiB; 70 % of them live."""

    def __init__(self, db: FlatFileDb, rng: random.Random) -> None:
        self.blobs: dict[DataLocation, bytes] = {}
        for _segment in range(3):
            data = [text(rng, rng.choice([1, 500, 20_000, 60_000])) for _ in range(30)]
            self.blobs.update(zip(db.put_many(data), data))
            db.rotate()
        big = text(rng, BIG_BLOB)
        big_loc = db.put(big)
        self.blobs[big_loc] = big
        db.rotate()
        self.segments = sorted({segment_of(loc) for loc in self.blobs})
        self.live = {loc for loc in self.blobs if rng.random() < 0.7} | {big_loc}


def kill_one_compaction(tmp_path: Path, use_compression: bool, old: OldStore, delay: float, round_no: int) -> int:
    """Fork a child that compacts ``old`` in a loop, SIGKILL it after ``delay`` s; returns its finished loops."""
    progress = tmp_path / f"progress-{round_no}"
    child = multiprocessing.get_context("fork").Process(
        target=compact_forever,
        args=(
            str(tmp_path / "store"),
            str(tmp_path / "store.lock"),
            use_compression,
            old.segments,
            [tuple(loc) for loc in old.live],
            str(progress),
        ),
    )
    child.start()
    try:
        wait_for_line(progress, "open", START_SECONDS)
        time.sleep(delay)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(START_SECONDS)
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == -signal.SIGKILL, f"the child ended by itself (exit code {child.exitcode})"
    lines = progress.read_text(encoding="ascii").splitlines()
    assert all(line in ("open", f"done {len(old.live)}") for line in lines), lines
    return len(lines) - 1


@pytest.mark.parametrize("use_compression", [False, True], ids=["raw", "zstd"])
def test_compaction_killed_at_random_points(make_store: StoreFactory, tmp_path: Path, use_compression: bool) -> None:
    """After each kill every old location reads and verify() is clean; then a compaction and
    finish_compaction in the parent map every live blob to a copy that reads its bytes."""
    seed = int(os.environ.get("FFDB_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FFDB_CRASH_SEED={seed}")
    rng = random.Random(seed)
    db = make_store(use_compression=use_compression, frame_bytes=FRAME_BYTES)
    old = OldStore(db, rng)
    segments_before = len(db.segments())
    finished_loops = 0
    for round_no in range(ROUNDS):
        delay = rng.uniform(0.0, MAX_KILL_DELAY_SECONDS)
        finished_loops += kill_one_compaction(tmp_path, use_compression, old, delay, round_no)
        check_old_locations(tmp_path / "store", tmp_path / "store.lock", use_compression, old.blobs)
    assert finished_loops >= 1, "no compaction ever finished: the kills never landed after a copy"
    assert len(db.segments()) > segments_before  # the children's copies (nobody maps to them)

    compaction = db.compact(old.segments, lambda loc: loc in old.live)
    assert set(compaction.mapping) == old.live
    assert compaction.dropped == len(old.blobs) - len(old.live)
    for loc, new in compaction.mapping.items():
        assert segment_of(new) not in old.segments
        assert db.get(new) == old.blobs[loc]
        assert db.get(loc) == old.blobs[loc]
    assert sorted(db.finish_compaction(compaction)) == old.segments
    for loc in old.blobs:
        with pytest.raises(FileNotFoundError):
            db.get(loc)
    for loc, new in compaction.mapping.items():
        assert db.get(new) == old.blobs[loc]
    report = db.verify()
    assert report.ok, str(report)
