"""When the background fsync of sealed segments runs (GUARANTEES.md "Durability").

With ``fsync=False`` a sealed segment is fsynced a second (SYNC_DELAY_SECONDS) after the first
seal the sync thread has not done, or at once when URGENT_BACKLOG sealed segments wait or a caller
waits (``sync()``, ``close()`` with ``fsync=True``); the writer that seals segment ``n`` waits
only for the segments below ``n - WRITER_BACKLOG``. With ``fsync=True`` the thread starts at the
seal and the writer waits for every segment sealed before. Each test counts the sealed segments
the thread fsyncs, and reads the confirmation word of the state page.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from crash_support import state_word

import conduit_flat_file_db.store as store_module
import conduit_flat_file_db.syncer as syncer_module
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.seal import sync_segment
from conduit_flat_file_db.state import W_SYNCED_BELOW

pytestmark = pytest.mark.crash


def synced_segments(monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None) -> list[int]:
    """The numbers of the sealed segments the sync thread fsyncs from now on, in order; with
    ``gate``, each fsync first waits until the gate is open."""
    synced: list[int] = []
    real = sync_segment

    def spy(dir_fd: int, number: int) -> int:
        if gate is not None:
            gate.wait(60)
        synced.append(number)
        return real(dir_fd, number)

    monkeypatch.setattr(syncer_module, "sync_segment", spy)
    return synced


def open_store(datadir: Path, fsync: bool = False) -> FlatFileDb:
    """A store whose segments seal every few puts of 1,000 bytes."""
    db = FlatFileDb(datadir, fsync=fsync)
    db.MAX_DAT_FILE_SIZE = 4096
    return db


def seal(db: FlatFileDb, count: int) -> None:
    """Puts until ``count`` more segments are sealed."""
    target = db.mutable_segment() + count
    while db.mutable_segment() < target:
        db.put(b"s" * 1000)


def wait_for_word(datadir: Path, at_least: int, seconds: float = 30.0) -> int:
    """The state page's confirmation word once it reaches ``at_least`` (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while state_word(datadir, W_SYNCED_BELOW) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    return state_word(datadir, W_SYNCED_BELOW)


def test_without_fsync_a_seal_is_not_fsynced_before_the_delay_and_sync_does_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seals fewer than URGENT_BACKLOG: nothing fsynced while the delay runs (a long one here),
    the writer never waits; sync() fsyncs every sealed segment at once and confirms them."""
    monkeypatch.setattr(store_module, "SYNC_DELAY_SECONDS", 3600.0)
    synced = synced_segments(monkeypatch)
    datadir = tmp_path / "store"
    db = open_store(datadir)
    try:
        seal(db, syncer_module.URGENT_BACKLOG - 2)
        time.sleep(0.3)  # the thread, if it meant to fsync now, would have
        assert not synced and state_word(datadir, W_SYNCED_BELOW) == 0
        started = time.monotonic()
        db.sync()
        assert time.monotonic() - started < 60  # not the delay's hour
        mutable = db.mutable_segment()
        assert synced == list(range(mutable)) and state_word(datadir, W_SYNCED_BELOW) == mutable
    finally:
        db.close()


@pytest.mark.parametrize(
    ("delay", "sealed"),
    [(0.2, 3), (3600.0, syncer_module.URGENT_BACKLOG)],
    ids=["the delay ends", "a backlog of seals"],
)
def test_without_fsync_the_thread_confirms_the_seals_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float, sealed: int
) -> None:
    """No call waits: the thread fsyncs the sealed segments once the delay has passed, or at once
    when URGENT_BACKLOG sealed segments wait (whatever the delay)."""
    monkeypatch.setattr(store_module, "SYNC_DELAY_SECONDS", delay)
    synced = synced_segments(monkeypatch)
    datadir = tmp_path / "store"
    db = open_store(datadir)
    try:
        seal(db, sealed)
        assert wait_for_word(datadir, sealed) >= sealed
        assert synced[:sealed] == list(range(sealed))
    finally:
        db.close()


def test_without_fsync_a_writer_waits_only_for_seals_more_than_the_backlog_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk (here: every fsync held back) slower than the writer: the writer goes on until it
    seals segment WRITER_BACKLOG + 1, and waits there for segment 0's fsync; once the fsyncs
    run, it finishes."""
    gate = threading.Event()
    synced = synced_segments(monkeypatch, gate)
    datadir = tmp_path / "store"
    db = open_store(datadir)
    target = syncer_module.WRITER_BACKLOG + 6
    writer = threading.Thread(target=seal, args=(db, target), name="writer")
    try:
        writer.start()
        deadline = time.monotonic() + 30
        while db.mutable_segment() < syncer_module.WRITER_BACKLOG + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # a writer that did not wait would seal on
        assert writer.is_alive() and db.mutable_segment() == syncer_module.WRITER_BACKLOG + 2
        assert not synced
        gate.set()
        writer.join(60)
        assert not writer.is_alive() and db.mutable_segment() == target
    finally:
        gate.set()
        writer.join()
        db.close()


def test_with_fsync_the_seal_is_fsynced_at_once_and_the_writer_waits_for_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync=True: no delay (the delay setting does not apply), and a writer's seal returns only
    once every segment sealed before it is confirmed."""
    monkeypatch.setattr(store_module, "SYNC_DELAY_SECONDS", 3600.0)
    synced = synced_segments(monkeypatch)
    datadir = tmp_path / "store"
    db = open_store(datadir, fsync=True)
    try:
        for count in range(1, 4):
            seal(db, 1)
            assert state_word(datadir, W_SYNCED_BELOW) >= count - 1
        assert wait_for_word(datadir, 3) == 3 and synced == [0, 1, 2]
    finally:
        db.close()


def test_a_sync_whose_seal_fsync_a_close_in_another_thread_abandoned_finishes_it_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() with fsync=False leaves the seal fsync a sync() in another thread waits for: that
    sync() never returns as if the segments were durable; it opens the store again and returns
    once the reopened instance has fsynced and confirmed them."""
    gate = threading.Event()
    entered = threading.Event()
    real = sync_segment
    calls: list[int] = []

    def held(dir_fd: int, number: int) -> int:
        entered.set()
        gate.wait(60)
        calls.append(number)
        return real(dir_fd, number)

    monkeypatch.setattr(syncer_module, "sync_segment", held)
    datadir = tmp_path / "store"
    db = open_store(datadir)
    seal(db, 2)
    outcome: list[BaseException | None] = []

    def syncing() -> None:
        try:
            db.sync()
            outcome.append(None)
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # the outcome is the test
            outcome.append(exc)

    syncer = threading.Thread(target=syncing)
    syncer.start()
    try:
        assert entered.wait(30)  # the sync thread is inside segment 0's fsync, sync() waits for it
        db.close()
        syncer.join(0.5)
        assert syncer.is_alive()  # still waiting: nothing is confirmed yet
    finally:
        gate.set()
        syncer.join(60)
    try:
        assert outcome == [None]
        assert state_word(datadir, W_SYNCED_BELOW) == db.mutable_segment() == 2
        assert calls.count(0) == 2 and calls.count(1) == 1  # segment 0 again by the reopened instance
    finally:
        db.close()
