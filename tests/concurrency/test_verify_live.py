"""verify() of a store in use reports only what is true: segments sealed, re-framed, compressed
or deleted while verify runs are never reported as damaged.

The deterministic tests change the store from verify's own ``progress`` callback, which runs
between two segments: the next segment is changed after verify started and before it reads
it. The last test races a verifier loop against a writer process that rotates all the time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.maintenance import CompressMode
from conduit_flat_file_db.naming import index_name, segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
WRITER_SCRIPT = Path(__file__).parents[1] / "crash" / "crash_writer.py"
RACE_SECONDS = 3.0
MIN_RACE_VERIFIES = 20
MIN_RACE_ROTATIONS = 20
RACE_MAX_SECONDS = 120.0  # a loaded machine gets this long to reach the minimums before the test fails
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"\n"]


def text(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of compressible text."""
    return b" ".join(rng.choices(WORDS, k=size // 4 + 1))[:size]


def fill(db: FlatFileDb, rng: random.Random, puts: int, seal: bool) -> None:
    """``puts`` small puts (each a stored frame in a compressed store); sealed when ``seal``."""
    for _ in range(puts):
        db.put(text(rng, rng.randint(0, 600)))
    if seal:
        db.rotate()


def rotate_after_first_segment(db: FlatFileDb) -> Callable[[int, int], None]:
    """A progress callback that seals the mutable segment once verify has checked segment 0."""

    def progress(done: int, _total: int) -> None:
        if done == 1:
            db.rotate()
            db._wait_seal_hooks()  # pylint: disable=protected-access  # re-framed before verify reaches it

    return progress


def test_verify_of_a_mutable_segment_sealed_and_reframed_meanwhile_reports_nothing(make_store: StoreFactory) -> None:
    """Segment 1 is mutable when verify starts; it is sealed and re-framed (a new file with other
    frames renamed over it) before verify reaches it. Its index was read for the mutable view's
    frames against the new file's bytes: 'truncated' and 'bad-frame' that were not there."""
    db = make_store(use_compression=True, frame_bytes=1024)
    rng = random.Random(1)
    fill(db, rng, 5, seal=True)
    fill(db, rng, 40, seal=False)
    assert db.mutable_segment() == 1
    report = db.verify(progress=rotate_after_first_segment(db))
    assert report.ok, str(report)
    assert report.blobs == 45, str(report)
    assert db.mutable_segment() == 2


def test_verify_of_a_raw_mutable_segment_sealed_and_compressed_meanwhile_reports_nothing(
    make_store: StoreFactory,
) -> None:
    """With use_compression=AUTO a raw mutable segment is compressed when sealed: a '.dat.zst'
    file under an index that says raw must not be taken for a mutable segment's bad header."""
    db = make_store(use_compression=CompressMode.AUTO)
    rng = random.Random(2)
    fill(db, rng, 5, seal=True)
    fill(db, rng, 40, seal=False)
    report = db.verify(progress=rotate_after_first_segment(db))
    assert report.ok, str(report)
    assert report.blobs == 45, str(report)
    assert (db.datadir / segment_name(1, True)).exists(), "the sealed segment was not compressed"


class SlowDelete:
    """delete_file run in a thread that pauses between removing the data file and the index
    (an audit hook, so the engine's own delete runs): verify meets the index alone."""

    # Ten times verify's grace period for a delete: verify must wait for the delete itself (it
    # holds the write lock through both unlinks), not for a time a loaded machine may overrun.
    PAUSE_SECONDS = 0.5

    def __init__(self, db: FlatFileDb, number: int) -> None:
        self.db = db
        self.index = index_name(number)
        self.data_gone = threading.Event()
        self.thread = threading.Thread(target=db.delete_file, args=(db.segment_path(number),))
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if (
            event == "os.remove"
            and args
            and args[0] == self.index
            and not self.data_gone.is_set()
            and threading.current_thread() is self.thread
        ):
            self.data_gone.set()
            time.sleep(self.PAUSE_SECONDS)

    def start(self) -> None:
        """Start the delete and return once its data file is gone (its index still there)."""
        self.thread.start()
        assert self.data_gone.wait(10), "delete_file did not reach its index"


def test_verify_of_a_segment_deleted_meanwhile_reports_nothing(make_store: StoreFactory) -> None:
    """Segment 1 is being deleted when verify reaches it: its data file is gone, its index not
    yet. That is a delete in progress, not a lost data file."""
    db = make_store()
    rng = random.Random(3)
    for _ in range(3):
        fill(db, rng, 5, seal=True)
    delete = SlowDelete(db, 1)

    def progress(done: int, _total: int) -> None:
        if done == 1:
            delete.start()

    report = db.verify(progress=progress)
    delete.thread.join()
    assert report.ok, str(report)
    assert report.segments == 3, str(report)  # 0, 2 and the mutable 3: segment 1 went meanwhile
    assert not (db.datadir / index_name(1)).exists()


def test_verify_still_reports_an_index_whose_data_file_is_gone(make_store: StoreFactory) -> None:
    """The wait for a delete in progress does not hide a data file that is really missing."""
    db = make_store()
    rng = random.Random(4)
    fill(db, rng, 5, seal=True)
    fill(db, rng, 5, seal=True)
    path = db.datadir / segment_name(0, False)
    saved = path.read_bytes()
    path.unlink()
    try:
        report = db.verify()
        assert [(p.kind, p.path) for p in report.problems] == [("missing-data", str(path))], str(report)
    finally:
        path.write_bytes(saved)


def test_live_verify_against_a_rotating_compressed_writer_reports_nothing(tmp_path: Path) -> None:
    """A writer process puts small blobs into a compressed store with 8 KiB segments, so it seals
    and re-frames a segment every few puts, while this process verifies in a loop."""
    datadir = tmp_path / "store"
    stop = tmp_path / "stop"
    config = {
        "datadir": str(datadir),
        "lock_path": str(datadir) + ".lock",
        "report": str(tmp_path / "acks"),
        "seed": 5,
        "big_fraction": 0.0,
        "fsync": False,
        "use_compression": True,
        "frame_bytes": 1024,
        "max_size": 8192,
        "stop_file": str(stop),
    }
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True, frame_bytes=1024)
    with open(tmp_path / "writer.stderr", "wb") as stderr:
        command = [sys.executable, str(WRITER_SCRIPT), json.dumps(config)]
        writer = subprocess.Popen(command, stderr=stderr)  # pylint: disable=consider-using-with  # stopped below
    try:
        verifies = 0
        started = time.monotonic()
        # Verify for RACE_SECONDS and until the writer has rotated MIN_RACE_ROTATIONS times: a writer
        # that starts late on a loaded machine still gets raced, however long its start took.
        while (
            time.monotonic() - started < RACE_SECONDS
            or verifies < MIN_RACE_VERIFIES
            or db.mutable_segment() < MIN_RACE_ROTATIONS
        ):
            assert writer.poll() is None, (tmp_path / "writer.stderr").read_text()
            assert time.monotonic() - started < RACE_MAX_SECONDS, "the writer hardly rotated: the race was not run"
            report = db.verify(full=True)
            assert report.ok, f"live verify number {verifies}: {report}"
            verifies += 1
    finally:
        stop.touch()
        try:
            writer.wait(30)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    report = db.verify()
    db.close()
    assert report.ok, str(report)
    assert writer.returncode == 0, (tmp_path / "writer.stderr").read_text()


def test_verify_counts_every_segment_of_a_quiet_store(make_store: StoreFactory) -> None:
    """No change meanwhile: each segment is checked once and counted once."""
    db = make_store(use_compression=True, frame_bytes=1024)
    rng = random.Random(6)
    for _ in range(3):
        fill(db, rng, 8, seal=True)
    fill(db, rng, 8, seal=False)
    calls: list[tuple[int, int]] = []
    report = db.verify(progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.segments == 4 and report.blobs == 32, str(report)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert os.path.exists(db.datadir / segment_name(3, True))
