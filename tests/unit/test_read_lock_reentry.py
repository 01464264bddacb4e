"""A thread that holds the store's read lock (``read_lock()``) and calls what waits for the write
lock, or for the seal hook that takes it, gets FlatFileDbUnsafeAccessError at once, with nothing
changed: it used to wait for itself for ever (and ``close()`` there, with a segment left to
re-frame, hung as soon as the seal hook ran in its own thread)."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from crash_support import forked_child_exit_code

from conduit_flat_file_db import FlatFileDb, FlatFileDbUnsafeAccessError

TEXT = (b"a line of text that compresses well, " * 30)[:1000]

CALLS: dict[str, Callable[[FlatFileDb, Path], Any]] = {
    "close": lambda db, _: db.close(),
    "sync": lambda db, _: db.sync(),
    "recompress": lambda db, _: db.recompress(),
    "put": lambda db, _: db.put(b"x"),
    "put_many": lambda db, _: db.put_many([b"x", b"y"]),
    "put_stream": lambda db, _: db.put_stream(io.BytesIO(b"streamed")),
    "rotate": lambda db, _: db.rotate(),
    "delete_file": lambda db, _: db.delete_file(db.segment_path(0)),
    "compact": lambda db, _: db.compact([0], lambda _location: True),
    "enforce_retention": lambda db, _: db.enforce_retention(max_bytes=1),
    "adopt_file": lambda db, root: db.adopt_file(root / "outside.bin"),
}


def _filled(root: Path, compressed: bool) -> FlatFileDb:
    """Two sealed segments of small puts (the seal hook has work) and a mutable one."""
    db = FlatFileDb(root / "store", root / "store.lock", use_compression=compressed, max_file_size=2**20)
    for _ in range(3000):
        db.put(TEXT)
    (root / "outside.bin").write_bytes(b"a file to adopt")
    return db


def _files(root: Path) -> dict[str, bytes]:
    """The segment files (the state page and the seal hook's scratch file change in the background)."""
    return {p.name: p.read_bytes() for p in sorted((root / "store").glob("data_*"))}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_write_inside_the_same_threads_read_lock_is_refused_at_once(
    tmp_path: Path, name: str, compressed: bool
) -> None:
    """Every call that would wait for the write lock raises, naming read_lock(); nothing changed;
    after the block the same call works."""
    db = _filled(tmp_path, compressed)
    try:
        db.rotate()  # its seal hook runs in the background now
        with db.read_lock():
            before = _files(tmp_path)
            with pytest.raises(FlatFileDbUnsafeAccessError, match=r"read_lock\(\)"):
                CALLS[name](db, tmp_path)
            assert _files(tmp_path) == before
        CALLS[name](db, tmp_path)
        assert db.verify().ok
    finally:
        db.close()


def test_another_threads_read_lock_is_waited_for_not_refused(tmp_path: Path) -> None:
    """The refusal is for the thread that holds the read lock: another thread's put waits for the
    lock's release and then succeeds."""
    db = _filled(tmp_path, compressed=False)
    try:
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with db.read_lock():
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(30)
        result: list[Any] = []
        writer = threading.Thread(target=lambda: result.append(db.put(b"after the reader")))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the put did not wait for the other thread's read lock"
        release.set()
        holder.join(30)
        writer.join(30)
        assert db.get(result[0]) == b"after the reader"
    finally:
        db.close()


def test_nested_read_locks_of_one_thread_are_all_counted(tmp_path: Path) -> None:
    """Two read_lock() blocks nested in one thread: the refusal holds until the outer one ends."""
    db = _filled(tmp_path, compressed=False)
    try:
        with db.read_lock():
            with db.read_lock():
                pass
            with pytest.raises(FlatFileDbUnsafeAccessError):
                db.put(b"still inside")
        assert db.get(db.put(b"outside")) == b"outside"
        assert os.path.exists(db.segment_path(0))
    finally:
        db.close()


def test_a_read_lock_left_in_another_thread_leaves_no_thread_holding_it(tmp_path: Path) -> None:
    """A read_lock() block entered in one thread and left in another (a context handed over, as
    the threads of an executor do; the lock allows it): once it is left no thread holds the read
    lock, so the thread that entered it may close the store, and sync. It used to be counted as
    a holder for ever, and every close() in it was refused."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock")
    try:
        block = db.read_lock()
        block.__enter__()  # pylint: disable=unnecessary-dunder-call  # left in another thread below
        leaver = threading.Thread(target=block.__exit__, args=(None, None, None))
        leaver.start()
        leaver.join(30)
        db.put(b"after the block")
        db.sync()
    finally:
        db.close()


def test_read_lock_of_an_instance_nobody_keeps_holds_until_the_block_ends(tmp_path: Path) -> None:
    """``with FlatFileDb(...).read_lock():`` keeps that instance (and its lock) alive for the block:
    another process's write waits meanwhile. (The dropped instance's finalizer closed the lock
    before it was taken: EBADF.)"""
    FlatFileDb(tmp_path / "store", tmp_path / "store.lock").close()
    with FlatFileDb(tmp_path / "store", tmp_path / "store.lock").read_lock():
        gc.collect()
        child = subprocess.run(
            [sys.executable, "-c", _WRITER, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
        )
    assert child.stdout == "waited\n", child.stderr[-2000:]
    with FlatFileDb(tmp_path / "store", tmp_path / "store.lock") as db:
        assert db.get(db.put(b"after")) == b"after"


_WRITER = """
import sys
from conduit_flat_file_db import FlatFileDb, FlatFileDbLockTimeoutError
try:  # a writer's open takes the write lock too
    FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock", lock_timeout=0.3).put(b"while read-locked")
except FlatFileDbLockTimeoutError:
    print("waited")
"""


def test_a_child_forked_inside_a_read_lock_block_leaves_it_holding_nothing(tmp_path: Path) -> None:
    """The child of a fork inside ``read_lock()`` holds none of the parent's locks; leaving the
    block there releases nothing, and the child's next ``read_lock()`` takes the lock for real.
    (The count of readers went to -1, and the next block took no lock.)"""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock")
    lock = db._lock  # pylint: disable=protected-access  # the part under test
    with db.read_lock():
        pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through its exit code
        code = 1
        try:
            with db.read_lock():
                taken = lock._room.locked()  # type: ignore[union-attr]  # pylint: disable=protected-access
            if taken and lock._readers == 0 and db.get(db.put(b"child")) == b"child":  # type: ignore[union-attr]  # pylint: disable=protected-access
                code = 0
        finally:
            os._exit(code)  # pylint: disable=protected-access
    try:
        assert forked_child_exit_code(pid, 30, "the forked child hung") == 0
    finally:
        db.close()
