"""``Tiering(upload_bytes_per_second=)``: uploads spread over time, and cut by close().

The bounds asserted are lower bounds on elapsed time (a rate limit must make uploads take at
least so long), which a loaded machine cannot break; how fast uploads go is the benchmark's.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import TieringError
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.tiering.upload import Pacer, UploadStoppedError

pytestmark = pytest.mark.tiering

URL = "s3://bucket/store"
SEGMENT = 2 * 2**20


def test_a_pacer_spreads_takes_at_its_rate_and_earns_no_burst_while_idle() -> None:
    """Each take reserves size / rate seconds after the one before: four takes of 0.1 s worth
    take at least 0.3 s (the first goes at once); after an idle pause, the next goes at once
    but the one after it waits again."""
    pacer = Pacer(10_000_000, threading.Event())
    started = time.monotonic()
    for _ in range(4):
        pacer.take(1_000_000)
    assert time.monotonic() - started >= 0.3 - 0.01
    time.sleep(0.5)
    started = time.monotonic()
    pacer.take(1_000_000)
    pacer.take(1_000_000)
    assert time.monotonic() - started >= 0.1 - 0.01


def test_a_pacer_without_a_rate_never_waits_until_it_is_stopped() -> None:
    """No rate: takes return at once; once stopped, every take raises, so an upload ends within
    one part."""
    stop = threading.Event()
    pacer = Pacer(None, stop)
    for _ in range(1000):
        pacer.take(2**30)
    stop.set()
    with pytest.raises(UploadStoppedError) as caught:
        pacer.take(1)
    assert isinstance(caught.value, TieringError)


def test_a_stop_ends_a_long_wait_at_once() -> None:
    """A take waiting for a slot minutes away returns (raising) as soon as the stop is set."""
    stop = threading.Event()
    pacer = Pacer(1000, stop)
    pacer.take(1000 * 600)  # the next slot is ten minutes away
    failures: list[BaseException] = []

    def waiter() -> None:
        try:
            pacer.take(1)
        except UploadStoppedError as exc:
            failures.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(failures) == 1


def _filled(path: Path, bucket: MemoryStore, rate: int | None) -> FlatFileDb:
    db = FlatFileDb(
        path / "db",
        path / "db.lock",
        max_file_size=SEGMENT,
        tiering=Tiering(URL, object_store=bucket, upload_bytes_per_second=rate),
    )
    for _ in range(2):
        db.put(b"x" * SEGMENT)  # each fills one segment
    db.rotate()
    return db


def test_sync_tiering_at_a_rate_takes_at_least_the_bytes_over_the_rate(tmp_path: Path) -> None:
    """Two sealed segments of 2 MiB at 8 MiB/s: sync_tiering takes at least 0.375 s (the first
    part goes at once), and every segment is uploaded and readable by a remote open."""
    bucket = MemoryStore()
    db = _filled(tmp_path, bucket, 8 * 2**20)
    sealed = db.segments()[:-1]
    started = time.monotonic()
    db.sync_tiering()
    elapsed = time.monotonic() - started
    assert db.tiering_status()["uploaded"] == sealed
    sent = sum(v["bytes"] for k, v in db.tiering_status()["requests"].items() if k.startswith("put"))
    assert sent > 4 * 2**20 and elapsed >= (sent - SEGMENT) / (8 * 2**20) - 0.01
    db.close()
    with FlatFileDb.open_remote(URL, object_store=bucket) as remote:
        assert remote.segments() == sealed


def test_close_cuts_a_paced_upload_at_once_and_the_next_open_redoes_it(tmp_path: Path) -> None:
    """At 100 kB/s the uploads of 4 MiB would take 40 s: close() returns within seconds, no
    manifest names the cut upload, no error is recorded for it, and an open without a rate
    uploads everything."""
    bucket = MemoryStore()
    db = _filled(tmp_path, bucket, 100_000)
    sealed = db.segments()[:-1]
    db.sync()  # durable: the tier's thread starts the upload
    deadline = time.monotonic() + 10
    while not any(n.startswith("store/segments/") for n in _names(bucket)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(n.startswith("store/segments/") for n in _names(bucket))
    status = db.tiering_status()
    started = time.monotonic()
    db.close()
    assert time.monotonic() - started < 5
    assert status["last_error"] is None and status["uploaded"] == []
    assert not [n for n in _names(bucket) if n.startswith("store/manifests/")]
    with FlatFileDb(tmp_path / "db", tmp_path / "db.lock", tiering=Tiering(URL, object_store=bucket)) as again:
        again.sync_tiering()
        assert again.tiering_status()["uploaded"] == sealed
        assert again.tiering_status()["last_error"] is None


def _names(bucket: MemoryStore) -> list[str]:
    return [meta["path"] for batch in obstore.list(bucket) for meta in batch]
