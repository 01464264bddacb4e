"""The seal hook (re-framing or compressing a segment just sealed) runs in a thread of the store:
the put that sealed returns at once, close() and sync() wait for it, its errors are logged."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from crash_support import forked_child_exit_code

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db import flat_file_db as flat_file_db_module
from conduit_flat_file_db.maintenance import reframe_sealed
from conduit_flat_file_db.naming import segment_name
from conduit_flat_file_db.seekable import parse_seek_table
from conduit_flat_file_db.store import DEFAULT_FRAME_BYTES, Store
from conduit_flat_file_db.syncer import SealHookRunner
from conduit_flat_file_db.types import DataLocation

SEGMENT_BYTES = 64 * 1024
BLOB_BYTES = 1024  # under 8 KiB: written as a stored frame, re-framed when its segment is sealed
PUT_SECONDS = 5.0  # a put that seals takes milliseconds; one that waits for the hook never returns
HOOK_SECONDS = 30.0  # how long a blocked hook waits for its release (a failing test does not hang)
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta"]


def text(rng: random.Random) -> bytes:
    """A compressible blob of BLOB_BYTES."""
    return b" ".join(rng.choices(WORDS, k=BLOB_BYTES // 4))[:BLOB_BYTES]


class BlockingHook:
    """Stands in for a seal hook: records each call and its thread, blocks until released (only
    in the process that made it), then runs the real hook."""

    def __init__(self, real: Callable[[Any, list[int]], None]) -> None:
        self.real = real
        self.pid = os.getpid()
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls: list[list[int]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, store: Any, sealed: list[int]) -> None:
        self.calls.append(list(sealed))
        self.threads.append(threading.current_thread())
        self.started.set()
        if os.getpid() == self.pid:
            self.release.wait(HOOK_SECONDS)
        try:
            self.real(store, sealed)
        finally:
            self.finished.set()


@pytest.fixture(name="hook")
def fixture_hook(monkeypatch: pytest.MonkeyPatch) -> BlockingHook:
    """The seal hook of every FlatFileDb opened in the test (use_compression=True's), blocked until released."""
    hook = BlockingHook(reframe_sealed)
    monkeypatch.setattr(flat_file_db_module, "reframe_sealed", hook)
    return hook


def fill_to_the_brim(db: FlatFileDb, rng: random.Random) -> dict[DataLocation, bytes]:
    """Puts that fill the mutable segment to its size limit without sealing it; their locations."""
    blobs = [text(rng) for _ in range(SEGMENT_BYTES // BLOB_BYTES)]
    stored = {db.put(blob): blob for blob in blobs}
    assert db.mutable_segment() == 0
    return stored


def sealing_put_returns(db: FlatFileDb, blob: bytes) -> bool:
    """Run the put that seals the full mutable segment in a thread; True when it returned
    within PUT_SECONDS (the seal hook, blocked, has not finished)."""
    putter = threading.Thread(target=db.put, args=(blob,), daemon=True)
    putter.start()
    putter.join(PUT_SECONDS)
    return not putter.is_alive()


def reframed(datadir: Path, number: int, frame_bytes: int) -> bool:
    """Whether compressed segment ``number``'s data file (its seek table) holds compressed frames
    of ``frame_bytes``, no longer the one stored frame per put it was written with."""
    path = datadir / segment_name(number, True)
    with open(path, "rb") as file:
        sizes = parse_seek_table(
            lambda offset, size: os.pread(file.fileno(), size, offset), path.stat().st_size
        ).sizes()
    total = sum(dsize for _csize, dsize in sizes)
    return len(sizes) == -(-total // frame_bytes) and all(csize < dsize for csize, dsize in sizes)


def in_thread(target: Callable[[], Any]) -> threading.Thread:
    """``target`` started in a daemon thread (joined with a timeout by the test)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_put_that_seals_returns_while_the_seal_hook_still_runs(tmp_path: Path, hook: BlockingHook) -> None:
    """The hook re-frames a whole segment (seconds at 128 MiB): the put that sealed must not wait
    for it, or one put in a segment's worth stands out."""
    db = FlatFileDb(tmp_path / "db", use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        fill_to_the_brim(db, random.Random(1))
        returned = sealing_put_returns(db, b"seals segment 0")
        assert hook.started.wait(HOOK_SECONDS)
        assert returned, "the put that sealed waited for the seal hook"
        assert not hook.finished.is_set()
        assert db.mutable_segment() == 1
        assert hook.threads[0].name == "ffdb-seal-hook" and hook.threads[0].daemon
    finally:
        hook.release.set()
        db.close()
    assert hook.calls == [[0]]
    assert reframed(tmp_path / "db", 0, db.frame_bytes)


def test_close_waits_for_the_running_seal_hook_and_leaves_the_segment_reframed(
    tmp_path: Path, hook: BlockingHook
) -> None:
    """A user who closes gets the re-framed segments the puts asked for, and no hook thread
    touches the closed store's descriptors."""
    datadir = tmp_path / "db"
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        blobs = fill_to_the_brim(db, random.Random(2))
        assert sealing_put_returns(db, b"seals segment 0"), "the put that sealed waited for the seal hook"
        assert hook.started.wait(HOOK_SECONDS)
        closer = in_thread(db.close)
        closer.join(0.3)
        assert closer.is_alive(), "close() returned while the seal hook was still running"
    finally:
        hook.release.set()
    closer.join(HOOK_SECONDS)
    assert not closer.is_alive()
    assert hook.finished.is_set()
    assert reframed(datadir, 0, db.frame_bytes)
    with db:  # reopened
        assert {location: db.get(location) for location in blobs} == blobs


def test_close_in_another_thread_while_the_hook_waits_for_the_write_lock_does_not_deadlock(
    tmp_path: Path, hook: BlockingHook
) -> None:
    """The hook takes the write lock to switch files; close() waits for the hook without holding
    that lock (or anything the hook needs), so it returns once the lock's holder lets go."""
    datadir = tmp_path / "db"
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        fill_to_the_brim(db, random.Random(3))
        assert sealing_put_returns(db, b"seals segment 0"), "the put that sealed waited for the seal hook"
        assert hook.started.wait(HOOK_SECONDS)
        with db._write_lock():  # pylint: disable=protected-access  # a writer in the middle of a put
            hook.release.set()  # the hook copies the segment, then waits for this lock to switch it in
            closer = in_thread(db.close)
            closer.join(0.3)
            assert closer.is_alive() and not hook.finished.is_set()
        closer.join(HOOK_SECONDS)
        assert not closer.is_alive(), "close() deadlocked with the seal hook"
    finally:
        hook.release.set()
        db.close()
    assert reframed(datadir, 0, db.frame_bytes)


def test_puts_go_on_while_the_seal_hook_runs(tmp_path: Path, hook: BlockingHook) -> None:
    """Puts, and a second seal, complete while the hook works on the first sealed segment; the
    second seal's hook runs after it, and both segments end re-framed."""
    datadir = tmp_path / "db"
    rng = random.Random(4)
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        fill_to_the_brim(db, rng)
        assert sealing_put_returns(db, text(rng)), "the put that sealed waited for the seal hook"
        assert hook.started.wait(HOOK_SECONDS)
        more = [text(rng) for _ in range(SEGMENT_BYTES // BLOB_BYTES + 10)]
        putter = in_thread(lambda: [db.put(blob) for blob in more])
        putter.join(PUT_SECONDS)
        assert not putter.is_alive(), "puts waited for the seal hook"
        assert db.mutable_segment() == 2 and not hook.finished.is_set()
    finally:
        hook.release.set()
        db.close()
    assert sorted(n for call in hook.calls for n in call) == [0, 1]
    assert reframed(datadir, 0, db.frame_bytes) and reframed(datadir, 1, db.frame_bytes)


def test_sync_waits_for_the_seal_hook(tmp_path: Path, hook: BlockingHook) -> None:
    """sync() returns once the segments sealed so far are in their final form."""
    datadir = tmp_path / "db"
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        fill_to_the_brim(db, random.Random(5))
        assert sealing_put_returns(db, b"seals segment 0"), "the put that sealed waited for the seal hook"
        syncer = in_thread(db.sync)
        syncer.join(0.3)
        assert syncer.is_alive(), "sync() returned while the seal hook was still running"
        hook.release.set()
        syncer.join(HOOK_SECONDS)
        assert not syncer.is_alive()
        assert reframed(datadir, 0, db.frame_bytes)
    finally:
        hook.release.set()
        db.close()


def test_a_seal_hook_that_raises_fails_neither_the_put_nor_close_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook's error, raised after the put that sealed returned, is logged with its traceback;
    the put's location reads back and close() returns normally."""
    release = threading.Event()

    def failing_hook(_store: Store, sealed: list[int]) -> None:
        release.wait(HOOK_SECONDS)
        raise RuntimeError(f"hook failed on purpose on {sealed}")

    db = Store(tmp_path / "db", use_compression=True, max_file_size=SEGMENT_BYTES, seal_hook=failing_hook)
    try:
        rng = random.Random(6)
        for _ in range(SEGMENT_BYTES // BLOB_BYTES):
            db.put(text(rng))
        locations: list[Any] = []
        putter = in_thread(lambda: locations.append(db.put(b"seals segment 0")))
        putter.join(PUT_SECONDS)
        assert not putter.is_alive(), "the put that sealed waited for the seal hook"
        assert db.get(locations[0]) == b"seals segment 0"
    finally:
        release.set()
        with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
            db.close()
    failures = [r for r in caplog.records if "seal hook failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "on purpose on [0]" in str(failures[0].exc_info[1])


def test_a_forked_child_runs_its_own_seal_hooks_while_the_parents_is_blocked(
    tmp_path: Path, hook: BlockingHook
) -> None:
    """A child forked while the parent's hook runs inherits no hook state: its seal is re-framed
    by its own thread and its close() does not wait for the parent's hook."""
    datadir = tmp_path / "db"
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        rng = random.Random(7)
        fill_to_the_brim(db, rng)
        assert sealing_put_returns(db, text(rng)), "the put that sealed waited for the seal hook"
        assert hook.started.wait(HOOK_SECONDS)
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                for _ in range(SEGMENT_BYTES // BLOB_BYTES + 1):
                    db.put(text(rng))
                db.close()
                code = 0 if reframed(datadir, 1, db.frame_bytes) else 2
            finally:
                os._exit(code)  # pylint: disable=protected-access
        assert (
            forked_child_exit_code(pid, HOOK_SECONDS, "the forked child hung (waiting for the parent's seal hook?)")
            == 0
        )
        assert not hook.finished.is_set()
    finally:
        hook.release.set()
        db.close()
    assert reframed(datadir, 0, db.frame_bytes)


def test_a_child_forked_while_another_thread_closes_the_store_can_close_it(tmp_path: Path, hook: BlockingHook) -> None:
    """A child forked while a thread of the parent is in close() (waiting for the seal hook, under
    the store's guard) does not inherit that guard held: it puts and closes the store itself."""
    datadir = tmp_path / "db"
    db = FlatFileDb(datadir, use_compression=True, max_file_size=SEGMENT_BYTES)
    try:
        rng = random.Random(8)
        fill_to_the_brim(db, rng)
        assert sealing_put_returns(db, text(rng)), "the put that sealed waited for the seal hook"
        assert hook.started.wait(HOOK_SECONDS)
        closer = in_thread(db.close)
        while not db._guard.locked():  # pylint: disable=protected-access  # the close waits under it
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                db.put(text(rng))
                db.close()
                code = 0
            finally:
                os._exit(code)  # pylint: disable=protected-access
        assert (
            forked_child_exit_code(
                pid, HOOK_SECONDS, "the forked child hung (on the store's guard, held by the parent's closing thread?)"
            )
            == 0
        )
    finally:
        hook.release.set()
    closer.join(HOOK_SECONDS)
    assert not closer.is_alive()


def test_a_process_that_exits_with_the_store_open_reframes_its_sealed_segment_first(tmp_path: Path) -> None:
    """Interpreter exit waits for the hook (as for seal fsyncs) and does not hang."""
    datadir = tmp_path / "db"
    script = (
        "import sys\n"
        "from conduit_flat_file_db import FlatFileDb\n"
        f"db = FlatFileDb(sys.argv[1], use_compression=True, max_file_size={SEGMENT_BYTES})\n"
        f"for i in range({SEGMENT_BYTES // BLOB_BYTES + 1}):\n"
        f"    db.put((b'word %4d ' % i) * {BLOB_BYTES // 10} + b'....')\n"
        "assert db.mutable_segment() == 1\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(datadir)], timeout=60, check=False, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert reframed(datadir, 0, DEFAULT_FRAME_BYTES)


def test_a_read_only_instance_has_no_seal_hook_runner(tmp_path: Path) -> None:
    """A read-only instance never seals: nothing of the hook's is set up there."""
    FlatFileDb(tmp_path / "db", use_compression=True).close()
    with FlatFileDb(tmp_path / "db", readonly=True) as reader:
        assert reader._hooks is None  # pylint: disable=protected-access


def test_a_wait_for_a_hook_thread_that_ended_without_its_bookkeeping_ends(caplog: pytest.LogCaptureFixture) -> None:
    """A hook thread that ends without its bookkeeping (not by the runner's own paths: here a
    thread that never runs the runner's loop) must not make wait() (sync, recompress) wait for
    ever: the wait notices within a poll, logs it, and runs what is still queued in a new thread."""

    class Owner:  # stands in for the store: the runner holds it by a weak reference
        """The hook's store."""

    done: list[list[int]] = []
    owner = Owner()
    runner = SealHookRunner(owner, lambda store, numbers: done.append(numbers))
    runner._run = lambda: None  # type: ignore[method-assign]  # pylint: disable=protected-access
    runner.submit([3])
    lost = runner._thread  # pylint: disable=protected-access
    assert lost is not None
    lost.join(HOOK_SECONDS)
    del runner._run  # pylint: disable=protected-access  # the next thread runs the real loop
    waiter = threading.Thread(target=runner.wait, daemon=True)
    with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
        waiter.start()
        waiter.join(HOOK_SECONDS)
    assert not waiter.is_alive(), "wait() waits for a hook thread that is gone"
    assert done == [[3]], "the queued job did not run in a new thread"
    assert "ended without finishing" in caplog.text
