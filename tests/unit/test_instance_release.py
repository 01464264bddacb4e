"""An instance dropped without close() releases what it holds and warns, as an unclosed file does."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from crash_support import forked_child_exit_code

from conduit_flat_file_db import FlatFileDb, KeyedStore, locking, syncer
from conduit_flat_file_db import store as store_module
from conduit_flat_file_db.keyed import core as keyed_core
from conduit_flat_file_db.seekable import FrameTable

DROP_MANY = """
    import resource, sys
    from conduit_flat_file_db import FlatFileDb
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    locations = {}
    for readonly in (False, True):
        for compressed in (False, True):
            datadir = f"{sys.argv[1]}/store-{int(compressed)}"
            for index in range(2000):
                options = {"readonly": True} if readonly else {"use_compression": compressed}
                db = FlatFileDb(datadir, f"{datadir}.lock", **options)
                if compressed not in locations:
                    locations[compressed] = db.put(b"one blob")
                assert db.get(locations[compressed]) == b"one blob"
                del db  # no close(): the instance's descriptors must go with it
    print("ok")
"""


def test_two_thousand_dropped_instances_do_not_run_out_of_descriptors(tmp_path: Path) -> None:
    """Raw, compressed and read-only instances, never closed, under a limit of 256 descriptors."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", textwrap.dedent(DROP_MANY), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-3000:]


DROP_ONE = """
    import gc, json, os, sys, warnings, weakref
    from conduit_flat_file_db import FlatFileDb
    FlatFileDb(sys.argv[1], sys.argv[2]).close()
    options = {"readonly": True} if sys.argv[3] == "1" else {}
    gc.collect()
    gc.disable()  # freed by reference counting alone: no cycle holds it
    descriptors = len(os.listdir("/proc/self/fd"))
    db = FlatFileDb(sys.argv[1], sys.argv[2], **options)
    db.segments()
    ref = weakref.ref(db)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del db
    released = len(os.listdir("/proc/self/fd")) == descriptors
    shown = [(w.category.__name__, str(w.message)) for w in caught]
    del caught  # a warning holds its source
    print(json.dumps([released and ref() is None, shown]))
"""


@pytest.mark.parametrize("readonly", [False, True])
def test_dropping_an_open_instance_warns_resource_warning_and_frees_it_at_once(tmp_path: Path, readonly: bool) -> None:
    """The warning names the instance; a weak reference dies with ``del``, with the collector off.

    In a child process: a ResourceWarning emitted in pytest's own process makes it report, at
    its exit, the lock-file handles other tests keep open on purpose."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(DROP_ONE),
            str(tmp_path / "store"),
            str(tmp_path / "store.lock"),
            "1" if readonly else "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    freed, shown = json.loads(done.stdout)
    assert freed, "the descriptors and the instance outlived the last reference"
    assert [category for category, _message in shown] == ["ResourceWarning"]
    assert shown[0][1].startswith(f"unclosed FlatFileDb({str(tmp_path / 'store')!r}")
    assert shown[0][1].endswith(", readonly=True)") == readonly


def test_dropping_a_closed_instance_warns_nothing(tmp_path: Path) -> None:
    """close() is the normal way out: dropping the instance afterwards is silent."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock")
    db.put(b"abc")
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del db
        gc.collect()


# A store left in a reference cycle is finalized by whichever thread's allocation starts the
# next collection, inside whatever that thread holds at that moment.
COLLECTED_INSIDE_THE_LOCK_REGISTRY = """
    import gc, sys, weakref
    from conduit_flat_file_db import FlatFileDb, locking
    leaked = FlatFileDb(sys.argv[1] + "/leaked", sys.argv[1] + "/leaked.lock")
    leaked.put(b"x")
    leaked.cycle = leaked
    ref = weakref.ref(leaked)
    del leaked
    opening = locking.ProcessLock.__init__
    def collecting_first(self, path):
        gc.collect()  # as an allocation here may: the registry's guard is held
        opening(self, path)
    locking.ProcessLock.__init__ = collecting_first
    other = FlatFileDb(sys.argv[1] + "/other", sys.argv[1] + "/other.lock")
    other.put(b"y")
    other.close()
    print("ok" if ref() is None else "not collected")
"""

COLLECTED_IN_ITS_OWN_SYNC_THREAD = """
    import gc, os, sys, threading, weakref
    from conduit_flat_file_db import FlatFileDb, syncer
    dropped = threading.Event()
    syncing = syncer.sync_segment
    def collecting_first(dir_fd, number):
        dropped.wait()
        for _ in range(100):  # the seal hook's thread holds it until its job ends
            gc.collect()  # in the sync thread of the very store collected
            if ref() is None:
                break
            threading.Event().wait(0.02)
        return syncing(dir_fd, number)
    syncer.sync_segment = collecting_first
    gc.disable()  # no collection but the one above
    before = sorted(os.listdir("/proc/self/fd"))
    leaked = FlatFileDb(sys.argv[1] + "/leaked", sys.argv[1] + "/leaked.lock", fsync=True)  # close() waits
    leaked.put(b"x")
    leaked.rotate()  # the sync thread starts on the sealed segment
    leaked.cycle = leaked
    ref = weakref.ref(leaked)
    del leaked
    dropped.set()
    for name in ("ffdb-seal-sync", "ffdb-finalize"):  # the close runs in a thread of its own
        for thread in threading.enumerate():
            if thread.name == name:
                thread.join(60)
    after = sorted(os.listdir("/proc/self/fd"))
    print("ok" if ref() is None and after == before else f"collected: {ref() is None}; {before} -> {after}")
"""

COLLECTED_IN_THE_LEASE_REAPER = """
    import gc, os, sys, threading, weakref
    from conduit_flat_file_db import FlatFileDb, locking
    gc.disable()  # no collection but the one below
    before = sorted(os.listdir("/proc/self/fd"))
    leaked = FlatFileDb(sys.argv[1] + "/leaked", sys.argv[1] + "/leaked.lock")
    leaked.put(b"x")  # the lock stays on lease: the reaper thread ends the lease soon
    leaked.cycle = leaked
    ref = weakref.ref(leaked)
    del leaked
    dropping = locking.ProcessLock._drop_lease
    def collecting_first(self):
        gc.collect()  # as an allocation here may: the reaper holds the lock's room
        dropping(self)
    locking.ProcessLock._drop_lease = collecting_first
    for name in ("ffdb-lease", "ffdb-finalize"):
        for thread in threading.enumerate():
            if thread.name.startswith(name):
                thread.join(10)
    alive = [thread.name for thread in threading.enumerate() if thread.name.startswith(("ffdb-lease", "ffdb-fin"))]
    after = sorted(os.listdir("/proc/self/fd"))
    done = ref() is None and not alive and after == before
    print("ok" if done else f"collected: {ref() is None}; alive: {alive}; {before} -> {after}")
"""

DROPPED_INSIDE_A_READ_LOCK = """
    import os, sys, threading, weakref
    from conduit_flat_file_db import FlatFileDb
    reader = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock")
    reader.put(b"x")
    before = sorted(os.listdir("/proc/self/fd"))
    leaked = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock")
    ref = weakref.ref(leaked)
    with reader.read_lock():
        del leaked  # this thread holds the read lock of the same lock file: its close() is refused here
    for thread in threading.enumerate():
        if thread.name == "ffdb-finalize":
            thread.join(10)
    after = sorted(os.listdir("/proc/self/fd"))
    print("ok" if ref() is None and after == before else f"collected: {ref() is None}; {before} -> {after}")
    reader.close()
"""

KEYED_COLLECTED_INSIDE_THE_LMDB_GUARD = """
    import gc, sys, threading, weakref
    from conduit_flat_file_db import KeyedStore
    from conduit_flat_file_db.keyed import index_lmdb
    gc.disable()  # no collection but the one below
    leaked = KeyedStore(sys.argv[1] + "/leaked", index="lmdb")
    leaked["a"] = b"x"
    leaked.cycle = leaked
    ref = weakref.ref(leaked)
    del leaked
    opening = index_lmdb._open_env
    def collecting_first(*args):
        gc.collect()  # as an allocation here may: the guard of the LMDB environments is held
        return opening(*args)
    index_lmdb._open_env = collecting_first
    other = KeyedStore(sys.argv[1] + "/other", index="lmdb")
    other["b"] = b"y"
    other.close()
    for thread in threading.enumerate():
        if thread.name == "ffdb-finalize":
            thread.join(10)
    again = KeyedStore(sys.argv[1] + "/leaked", index="lmdb")
    print("ok" if ref() is None and again["a"] == b"x" else "not collected")
    again.close()
"""


@pytest.mark.parametrize(
    "script",
    [
        COLLECTED_INSIDE_THE_LOCK_REGISTRY,
        COLLECTED_IN_ITS_OWN_SYNC_THREAD,
        COLLECTED_IN_THE_LEASE_REAPER,
        KEYED_COLLECTED_INSIDE_THE_LMDB_GUARD,
        DROPPED_INSIDE_A_READ_LOCK,
    ],
    ids=[
        "inside-the-lock-registry",
        "in-its-own-sync-thread",
        "in-the-lease-reaper",
        "keyed-inside-the-lmdb-guard",
        "dropped-inside-a-read-lock",
    ],
)
def test_an_unclosed_store_collected_at_an_awkward_moment_is_released_without_a_hang(
    tmp_path: Path, script: str
) -> None:
    """The collection that finalizes a store may run while its thread holds the lock registry's
    guard, in the store's own sync thread, or in the lease reaper while it holds the room of the
    store's lock; a store may be dropped inside its thread's read_lock() of the same lock file
    (where close() is refused, and its descriptors were left open): the close it runs neither
    waits for the thread it runs in (or for what that thread holds) nor leaves descriptors behind.
    In a child process, with a timeout: a hang is a failure."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", textwrap.dedent(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-3000:]


def test_a_writer_close_cut_short_and_called_again_closes_no_descriptor_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close of the mutable segment's descriptors cut short after the first (as a signal's
    exception may) and called again does not close that number again: by then the process may
    have given it to another file, whose writes would go nowhere or elsewhere."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock")
    db.put(b"blob")
    writer = db._writer  # pylint: disable=protected-access  # the part under test
    closed: list[int] = []
    real_close = os.close

    def cut_short(fd: int) -> None:
        closed.append(fd)
        real_close(fd)
        if len(closed) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "close", cut_short)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    reused = os.open(tmp_path / "another-file", os.O_CREAT | os.O_RDWR)  # takes the lowest free number
    writer.close()
    monkeypatch.undo()
    try:
        assert closed[0] not in closed[1:], closed
        os.fstat(reused)  # still open
    finally:
        os.close(reused)
        db.close()


@pytest.mark.parametrize("held", ["frame-cache", "segment-readers"])
def test_a_child_forked_while_a_reader_thread_holds_a_cache_lock_reads(tmp_path: Path, held: str) -> None:
    """A thread of the parent inside the frame cache or a refresh of the segment readers holds
    their lock at the fork; the child (which has no such thread) reads every blob all the same."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=True)
    locations = [db.put(bytes([i]) * 40_000) for i in range(4)]
    db.get(locations[0])  # a reader of the mutable segment, which the next puts leave behind
    locations += [db.put(bytes([i]) * 40_000) for i in range(4, 8)]
    cache_lock = db._frame_cache._lock  # pylint: disable=protected-access  # the parts under test
    refresh_lock = db._readers._refresh_lock  # pylint: disable=protected-access
    lock = cache_lock if held == "frame-cache" else refresh_lock
    with lock:  # as a reading thread of the parent holds it at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                if all(db.get(location) == bytes([i]) * 40_000 for i, location in enumerate(locations)):
                    code = 0
            finally:
                os._exit(code)  # pylint: disable=protected-access
    assert forked_child_exit_code(pid, 30, f"the forked child hung on the {held} lock the parent held at the fork") == 0
    db.close()


def test_a_child_forked_while_another_thread_opens_a_store_renews_every_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that opens a store holds its guard before the store has its segment readers; a
    fork then renews the guards of every store in the child all the same, without an error. (The
    error used to end the renewal at that store, leaving the stores after it with the guards the
    parent's threads held.)"""
    opened = FlatFileDb(tmp_path / "open", tmp_path / "open.lock")
    opening = threading.Event()
    go_on = threading.Event()
    real_process_lock_for = locking.process_lock_for

    def slow_process_lock_for(path: str) -> Any:
        opening.set()
        go_on.wait(30)
        return real_process_lock_for(path)

    monkeypatch.setattr(store_module, "process_lock_for", slow_process_lock_for)
    opener = threading.Thread(target=lambda: FlatFileDb(tmp_path / "opening", tmp_path / "opening.lock").close())
    opener.start()
    opening.wait(30)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with opened._guard:  # pylint: disable=protected-access  # as a thread of the parent closing it holds it
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                # pylint: disable-next=protected-access,consider-using-with  # the child ends here
                if not unraisable and opened._guard.acquire(timeout=5):
                    code = 0
            finally:
                os._exit(code)  # pylint: disable=protected-access
    go_on.set()
    opener.join(30)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    opened.close()


def test_a_keyed_store_dropped_while_another_thread_collects_is_closed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the thread that runs a collection hands the close of a keyed store it finalizes to a
    thread of its own: a keyed store dropped meanwhile in another thread by its last reference is
    closed there, at once, as outside collections (a reopen right after finds it closed)."""
    closed_in: list[str] = []
    real_close = keyed_core.KeyedCore.close

    def close(self: Any) -> None:
        closed_in.append(threading.current_thread().name)
        real_close(self)

    monkeypatch.setattr(keyed_core.KeyedCore, "close", close)
    keyed = KeyedStore(tmp_path / "keyed")
    keyed["a"] = b"x"
    collector = threading.Thread(target=syncer._note_collection, args=("start", {}))  # pylint: disable=protected-access
    collector.start()  # as a collection's start in another thread
    collector.join(30)
    try:
        del keyed
        assert closed_in == [threading.current_thread().name]
    finally:
        syncer._note_collection("stop", {})  # pylint: disable=protected-access
        for thread in threading.enumerate():
            if thread.name == "ffdb-finalize":
                thread.join(30)


def test_a_child_forked_while_a_reader_thread_is_mid_refresh_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread of the parent refreshing the reader of the compressed mutable segment has added
    the new frames to its table, not yet counted the records they came from, when another thread
    forks: the child (which has no such thread) reads every blob all the same, through readers
    it opens afresh (the half-refreshed one would take those frames a second time)."""
    db = FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=True)
    locations = [db.put(bytes([i]) * 40_000) for i in range(4)]
    db.get(locations[0])  # a reader of the mutable segment, which the next puts leave behind
    locations += [db.put(bytes([i]) * 40_000) for i in range(4, 8)]
    mid_refresh = threading.Event()
    forked = threading.Event()
    real_extend = FrameTable.extend

    def extend_then_wait(self: FrameTable, size_words: list[int]) -> None:
        real_extend(self, size_words)
        mid_refresh.set()
        forked.wait(30)

    monkeypatch.setattr(FrameTable, "extend", extend_then_wait)
    refresher = threading.Thread(target=db.get, args=(locations[-1],))
    refresher.start()
    assert mid_refresh.wait(30)
    monkeypatch.setattr(FrameTable, "extend", real_extend)
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through its exit code
        code = 1
        try:
            later = [os.urandom(1000 * i) for i in range(1, 5)]  # frames of other sizes after those
            at = [db.put(blob) for blob in later]
            if all(db.get(location) == bytes([i]) * 40_000 for i, location in enumerate(locations)) and all(
                db.get(location) == blob for location, blob in zip(at, later)
            ):
                code = 0
        finally:
            os._exit(code)  # pylint: disable=protected-access
    forked.set()
    refresher.join(30)
    assert forked_child_exit_code(pid, 30, "the forked child hung") == 0
    db.close()


def test_a_subclass_without_a_hash_opens_and_its_forked_child_reads(tmp_path: Path) -> None:
    """A subclass that defines ``__eq__`` (so Python gives it no hash) opens, as it did before
    stores were kept for the reset in a forked child, and that reset covers it."""

    class Compared(FlatFileDb):
        """Equal when they name the same datadir (and so unhashable)."""

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Compared) and other.datadir == self.datadir

    db = Compared(tmp_path / "store", tmp_path / "store.lock")
    location = db.put(b"blob")
    with db._guard:  # pylint: disable=protected-access  # as a thread of the parent closing it holds it
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                # pylint: disable-next=protected-access,consider-using-with  # the child ends here
                if db._guard.acquire(timeout=5) and db.get(location) == b"blob":
                    code = 0
            finally:
                os._exit(code)  # pylint: disable=protected-access
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    db.close()
