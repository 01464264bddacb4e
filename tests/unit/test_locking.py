"""The store's reader/writer lock: threads of one process, other processes, and plain
fasteners users of the same lock file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conduit_flat_file_db import (
    DataLocation,
    FlatFileDb,
    FlatFileDbError,
    FlatFileDbLockTimeoutError,
    FlatFileDbUnsafeAccessError,
    FormatError,
    KeyedStore,
)
from conduit_flat_file_db.locking import ProcessLock, process_lock_for, release_process_lock

StoreFactory = Callable[..., FlatFileDb]
WAIT = 5.0  # upper bound for events that must happen; never reached when the code is right
SHORT = 0.05  # a lock wait that is expected to time out

# A plain fasteners user of a lock file: takes the lock in the given mode, says so, waits
# for a line on stdin, releases, says so. Mode "try-write"/"try-read": a non-blocking attempt,
# prints the result and exits.
CHILD = r"""
import sys
import fasteners

mode, path = sys.argv[1], sys.argv[2]
lock = fasteners.InterProcessReaderWriterLock(path)
if mode.startswith("try-"):
    acquire = lock.acquire_write_lock if mode == "try-write" else lock.acquire_read_lock
    got = acquire(blocking=False)
    print("acquired" if got else "refused", flush=True)
    sys.exit(0)
acquire = lock.acquire_write_lock if mode == "write" else lock.acquire_read_lock
release = lock.release_write_lock if mode == "write" else lock.release_read_lock
assert acquire()
print("locked", flush=True)
sys.stdin.readline()
release()
print("released", flush=True)
"""


class Child:
    """A child process holding the lock file through fasteners until told to let go."""

    def __init__(self, mode: str, path: Path) -> None:
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # closed in release()
            [sys.executable, "-c", CHILD, mode, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        """Let the child release the lock and exit."""
        out, _ = self.proc.communicate("go\n", timeout=WAIT)
        assert out.strip() == "released"
        assert self.proc.returncode == 0


def try_in_child(mode: str, path: Path) -> str:
    """A plain fasteners non-blocking attempt from another process: "acquired" or "refused"."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


@pytest.fixture(name="holding_child")
def fixture_holding_child() -> Iterator[Callable[[str, Path], Child]]:
    """Start children; every one still running at teardown is released."""
    children: list[Child] = []

    def start(mode: str, path: Path) -> Child:
        child = Child(mode, path)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.returncode is None:
            child.release()


@pytest.fixture(name="lock")
def fixture_lock(tmp_path: Path) -> ProcessLock:
    """This process's lock for a fresh lock file."""
    return process_lock_for(str(tmp_path / "x.lock"))


def in_thread(target: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# -- threads of one process ------------------------------------------------------------------


def test_two_threads_cannot_hold_the_write_lock(lock: ProcessLock) -> None:
    """While one thread writes, another's write waits, and gets the lock right after the release."""
    held, let_go, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with lock.write():
            held.set()
            let_go.wait(WAIT)

    def second() -> None:
        with lock.write():
            second_in.set()

    one = in_thread(first)
    assert held.wait(WAIT)
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_write(timeout=SHORT)
    two = in_thread(second)
    assert not second_in.wait(0.2)  # blocked while the first thread holds it
    let_go.set()
    assert second_in.wait(WAIT)
    one.join(WAIT)
    two.join(WAIT)
    with lock.write(timeout=WAIT):  # free again
        pass


def test_write_lock_mutual_exclusion_under_contention(lock: ProcessLock) -> None:
    """Many threads, many rounds: never two inside the write lock."""
    inside = [0]
    worst = [0]
    start = threading.Barrier(6, timeout=WAIT)

    def worker() -> None:
        start.wait(WAIT)
        for _ in range(300):
            with lock.write():
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
                os.sched_yield()
                inside[0] -= 1

    threads = [in_thread(worker) for _ in range(6)]
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert worst[0] == 1


def test_read_locks_share_within_a_process(lock: ProcessLock) -> None:
    """Two threads hold the read lock at the same time (a barrier inside it is reached by both)."""
    both_inside = threading.Barrier(2)
    results: list[bool] = []

    def reader() -> None:
        with lock.read(timeout=WAIT):
            both_inside.wait(WAIT)  # raises BrokenBarrierError if the other cannot get in
            results.append(True)

    threads = [in_thread(reader) for _ in range(2)]
    for thread in threads:
        thread.join(WAIT)
    assert results == [True, True]


def test_write_excludes_read(lock: ProcessLock) -> None:
    """A reader waits for the writer; it gets in after the release."""
    held, let_go, reader_in = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        with lock.write():
            held.set()
            let_go.wait(WAIT)

    def reader() -> None:
        with lock.read():
            reader_in.set()

    one = in_thread(writer)
    assert held.wait(WAIT)
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_read(timeout=SHORT)
    two = in_thread(reader)
    assert not reader_in.wait(0.2)
    let_go.set()
    assert reader_in.wait(WAIT)
    one.join(WAIT)
    two.join(WAIT)


def test_read_excludes_write(lock: ProcessLock) -> None:
    """A writer waits for the reader."""
    held, let_go = threading.Event(), threading.Event()

    def reader() -> None:
        with lock.read():
            held.set()
            let_go.wait(WAIT)

    thread = in_thread(reader)
    assert held.wait(WAIT)
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_write(timeout=SHORT)
    let_go.set()
    thread.join(WAIT)
    with lock.write(timeout=WAIT):
        pass


def test_store_lock_timeout_when_another_thread_writes(make_store: StoreFactory, tmp_path: Path) -> None:
    """lock_timeout applies to a write lock held by another thread of this process."""
    store = make_store(lock_timeout=SHORT)
    lock = process_lock_for(str(tmp_path / "store.lock"))
    held, let_go = threading.Event(), threading.Event()

    def holder() -> None:
        with lock.write():
            held.set()
            let_go.wait(WAIT)

    thread = in_thread(holder)
    assert held.wait(WAIT)
    try:
        with pytest.raises(FlatFileDbLockTimeoutError):
            store.put(b"blocked")
    finally:
        let_go.set()
        thread.join(WAIT)
    assert store.get(store.put(b"free")) == b"free"
    assert store.put(b"x").start_offset == len(b"free")  # the timed-out put wrote nothing


# -- one lock object per lock file -------------------------------------------------------------


def test_process_lock_for_same_file_same_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spelling of one lock file gives the one lock object (a second handle would drop locks)."""
    (tmp_path / "sub").mkdir()
    path = tmp_path / "same.lock"
    lock = process_lock_for(str(path))
    assert process_lock_for(str(path)) is lock
    assert process_lock_for(str(tmp_path / "." / "same.lock")) is lock
    assert process_lock_for(str(tmp_path / "sub" / ".." / "same.lock")) is lock
    assert process_lock_for(str(tmp_path) + "//same.lock") is lock
    link = tmp_path / "sub" / "link.lock"
    link.symlink_to(path)
    assert process_lock_for(str(link)) is lock
    monkeypatch.chdir(tmp_path / "sub")
    assert process_lock_for("../same.lock") is lock
    assert process_lock_for("link.lock") is lock


def test_process_lock_for_other_file_other_object(tmp_path: Path) -> None:
    """Different lock files are different locks."""
    assert process_lock_for(str(tmp_path / "a.lock")) is not process_lock_for(str(tmp_path / "b.lock"))


def test_stores_sharing_a_lock_file_share_the_lock(make_store: StoreFactory, tmp_path: Path) -> None:
    """Two stores with one lock path hold the lock through the same object."""
    one, two = make_store(), make_store()
    # pylint: disable=protected-access  # the registry is the point of this test
    assert one._lock is two._lock is process_lock_for(str(tmp_path / "store.lock"))


# -- other processes -----------------------------------------------------------------------------


def _sizes(store: FlatFileDb) -> list[tuple[str, int]]:
    return sorted((name, os.path.getsize(os.path.join(store.datadir, name))) for name in os.listdir(store.datadir))


def test_lock_timeout_when_another_process_holds_write_lock(
    make_store: StoreFactory, tmp_path: Path, holding_child: Callable[[str, Path], Child]
) -> None:
    """A plain fasteners writer in another process makes every write time out; reads still work."""
    store = make_store(lock_timeout=0.2)
    loc = store.put(b"committed before")
    before = _sizes(store)
    child = holding_child("write", tmp_path / "store.lock")
    with pytest.raises(FlatFileDbLockTimeoutError, match="store.lock"):
        store.put(b"blocked")
    with pytest.raises(FlatFileDbLockTimeoutError):
        store.put_many([b"blocked", b"too"])
    with pytest.raises(FlatFileDbLockTimeoutError):
        store.rotate()
    with pytest.raises(FlatFileDbLockTimeoutError):
        with store.read_lock():
            pass
    # Readers need no lock: committed data reads while another process writes.
    assert store.get(loc) == b"committed before"
    assert _sizes(store) == before  # nothing was written by the refused calls
    child.release()
    after = store.put(b"after")
    assert after == DataLocation(loc.file_path, loc.end_offset, loc.end_offset + 5)


def test_process_lock_times_out_against_other_process(
    lock: ProcessLock, tmp_path: Path, holding_child: Callable[[str, Path], Child]
) -> None:
    """The ProcessLock itself: write and read both time out against another process's writer."""
    child = holding_child("write", tmp_path / "x.lock")
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_write(timeout=SHORT)
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_read(timeout=SHORT)
    child.release()
    with lock.write(timeout=WAIT):
        pass
    with lock.read(timeout=WAIT):
        pass


def test_other_process_reader_blocks_our_writer_not_our_reader(
    lock: ProcessLock, tmp_path: Path, holding_child: Callable[[str, Path], Child]
) -> None:
    """Read locks are shared across processes too."""
    child = holding_child("read", tmp_path / "x.lock")
    with lock.read(timeout=WAIT):
        pass
    with pytest.raises(FlatFileDbLockTimeoutError):
        lock.acquire_write(timeout=SHORT)
    child.release()
    with lock.write(timeout=WAIT):
        pass


def test_our_write_lock_excludes_plain_fasteners_users(lock: ProcessLock, tmp_path: Path) -> None:
    """While we hold the write lock, a fasteners user in another process gets neither lock."""
    with lock.write(timeout=WAIT):
        assert try_in_child("try-write", tmp_path / "x.lock") == "refused"
        assert try_in_child("try-read", tmp_path / "x.lock") == "refused"
    with lock.read(timeout=WAIT):
        assert try_in_child("try-write", tmp_path / "x.lock") == "refused"
        assert try_in_child("try-read", tmp_path / "x.lock") == "acquired"
    assert try_in_child("try-write", tmp_path / "x.lock") == "acquired"


_CYCLE_HOLDER = """
import sys, time
from conduit_flat_file_db.locking import process_lock_for
first, second, ready = process_lock_for(sys.argv[1]), process_lock_for(sys.argv[2]), sys.argv[3]
first.acquire_write()
open(ready, "w").close()
second.acquire_write()  # waits for the other process's lease on it
second.release_write()
first.release_write()
"""

_CYCLE_LEASER = """
import os, sys, time
from conduit_flat_file_db.locking import process_lock_for
first, second, ready = process_lock_for(sys.argv[1]), process_lock_for(sys.argv[2]), sys.argv[3]
second.acquire_write()
second.release_write()  # kept on lease (FFDB_LEASE_SECONDS) with no thread in it
while not os.path.exists(ready):
    time.sleep(0.001)
time.sleep(0.2)  # the holder is now waiting for the leased lock
first.acquire_write()  # the kernel sees a cycle: holder -> our lease, us -> holder
first.release_write()
print("acquired")
"""


def test_a_lock_cycle_through_a_lease_is_waited_out_not_raised(tmp_path: Path) -> None:
    """Locks taken in opposite orders by two processes, one holding the other's lock only on lease
    (a keyed store's write, then its engine's put): the kernel answers EDEADLK to a blocking wait;
    the waiter waits again until the lease ends instead of raising OSError."""
    first, second, ready = (str(tmp_path / name) for name in ("first.lock", "second.lock", "ready"))
    env = dict(os.environ, FFDB_LEASE_SECONDS="1.0")
    with subprocess.Popen([sys.executable, "-c", _CYCLE_HOLDER, first, second, ready], env=env) as holder:
        leaser = subprocess.run(
            [sys.executable, "-c", _CYCLE_LEASER, first, second, ready],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert holder.wait(timeout=60) == 0
    assert leaser.returncode == 0 and leaser.stdout.strip() == "acquired", leaser.stderr


# A signal's handler (KeyboardInterrupt, pytest-timeout's signal method) raises in the main thread
# at the next call that returns there. Each script raises so once, at one such call, then checks
# that the store still opens, puts and closes (a lock left held would make that wait for ever).
INTERRUPTED_AT = {
    "release-write-first-call": """
        real = locking._monotonic
        def interrupted():
            locking._monotonic = real
            raise KeyboardInterrupt
        db.put(b"x")
        locking._monotonic = interrupted  # the first call of release_write
        try:
            db.put(b"y")
        except KeyboardInterrupt:
            pass
    """,
    "registry-add": """
        db.close()
        def interrupted(lock):
            del locking.id
            raise KeyboardInterrupt
        locking.id = interrupted  # called between adding the lock and counting its user
        try:
            db.put(b"y")  # reopens: the lock registry adds the lock
        except KeyboardInterrupt:
            pass
    """,
    "registry-remove": """
        def interrupted(items):
            del locking.list
            raise KeyboardInterrupt
        locking.list = interrupted  # called between forgetting the lock's users and the lock
        try:
            db.close()  # the last user: the lock registry removes the lock
        except KeyboardInterrupt:
            pass
    """,
}
INTERRUPTED = """
import sys
from conduit_flat_file_db import FlatFileDb, locking
db = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock")
{}
db.close()
again = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock", lock_timeout=10)
again.put(b"z")
again.close()
print("ok")
"""


@pytest.mark.parametrize("where", sorted(INTERRUPTED_AT))
def test_an_exception_from_a_signal_handler_leaves_the_lock_usable(tmp_path: Path, where: str) -> None:
    """A KeyboardInterrupt raised at a call inside the write lock's release, or inside the lock
    registry's update, neither leaves the lock held nor the registry broken: the store opens,
    puts and closes again. In a child process, with a timeout: a hang is a failure."""
    script = INTERRUPTED.format(textwrap.dedent(INTERRUPTED_AT[where]))
    done = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-3000:]


class _BrokenEvent(threading.Event):
    """A leased-event whose wait fails once the lease began: the lease reaper's loop raises."""

    def wait(self, timeout: float | None = None) -> bool:
        if super().wait(timeout):
            raise RuntimeError("reaper broken for the test")
        return False


def _lease_then_idle(lock: ProcessLock) -> None:
    """Two back-to-back writes (the second release starts a lease), then nothing."""
    lock.acquire_write()
    lock.release_write()
    lock.acquire_write()
    lock.release_write()


@pytest.mark.parametrize("where", ["at start", "in its loop"])
def test_an_idle_process_never_keeps_the_lock_when_its_lease_reaper_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """A lease is ended by the process's reaper thread. When that thread dies (at start-up, as
    CPython 3.11 can kill a new thread, or later by an error), no lease outlives it: another
    process takes the lock soon after this one stops writing, instead of waiting for ever."""
    if where == "at start":

        def dead(_: ProcessLock) -> None:
            raise RuntimeError("thread killed before it ran")

        monkeypatch.setattr(ProcessLock, "_reap", dead)
    lock = process_lock_for(str(tmp_path / "x.lock"))
    if where == "in its loop":
        lock._leased_event = _BrokenEvent()  # pylint: disable=protected-access  # the reaper's own wait
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the dying reaper's traceback
    _lease_then_idle(lock)
    deadline = time.monotonic() + WAIT
    while try_in_child("try-write", tmp_path / "x.lock") != "acquired":
        assert time.monotonic() < deadline, "the lock stayed held by an idle process"
    lock.acquire_write()  # and this process writes again afterwards
    lock.release_write()
    if where == "in its loop":
        assert "no more leases" in caplog.text


@pytest.mark.parametrize("mode", ["write", "read"])
def test_a_lock_reached_after_its_last_store_closed_it_is_a_typed_error(tmp_path: Path, mode: str) -> None:
    """A thread that passed its store's open check as another thread closed the store reaches a
    closed lock: acquire_write read the released map of the lock file (a bare ValueError) and
    acquire_read called lockf on the closed descriptor, whose number may name another file by
    then. Both raise FlatFileDbError now, and the lock file is left unlocked."""
    path = str(tmp_path / "closed.lock")
    lock = process_lock_for(path)
    release_process_lock(lock)  # its only user: closed
    with pytest.raises(FlatFileDbError, match="closed"):
        if mode == "write":
            lock.acquire_write()
        else:
            lock.acquire_read()
    fresh = process_lock_for(path)
    try:
        with fresh.write(0):
            pass
    finally:
        release_process_lock(fresh)


_STORE_HOLDER = r"""
import sys
from conduit_flat_file_db import FlatFileDb, KeyedStore
kind, path, lock = sys.argv[1], sys.argv[2], sys.argv[3]
store = FlatFileDb(path, lock) if kind == "engine" else KeyedStore(path)
if kind == "engine":
    store.put(b"held")
else:
    store["k"] = b"held"
print("open", flush=True)
sys.stdin.readline()
store.close()
"""


@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.parametrize("kind", ["engine", "keyed"])
def test_a_lock_file_deleted_or_replaced_while_a_process_uses_the_store_is_refused(
    tmp_path: Path, how: str, kind: str
) -> None:
    """Another process has the store open and locks the lock file; it is deleted (or another
    file renamed over it). A writer opening the store now would lock a new file and append
    beside that process (acknowledged blobs lost): its open is refused, and nothing is
    written. Once that process closed, the new lock file is the store's (opens work)."""
    path = tmp_path / "store"
    lock = tmp_path / "store.lock" if kind == "engine" else path / "segments.lock"
    with subprocess.Popen(
        [sys.executable, "-c", _STORE_HOLDER, kind, str(path), str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        if how == "deleted":
            lock.unlink()
        else:
            (tmp_path / "other").write_bytes(b"")
            os.rename(tmp_path / "other", lock)
        segments = path if kind == "engine" else path / "segments"
        before = sorted((p.name, p.stat().st_size) for p in segments.iterdir() if p.name != "ffdb.state")
        with pytest.raises(FlatFileDbUnsafeAccessError, match="deleted or replaced"):
            if kind == "engine":
                FlatFileDb(path, lock).put(b"beside")
            else:
                KeyedStore(path)
        assert sorted((p.name, p.stat().st_size) for p in segments.iterdir() if p.name != "ffdb.state") == before
        holder.communicate("close\n", timeout=60)
        assert holder.returncode == 0
    if kind == "engine":
        with FlatFileDb(path, lock) as db:
            db.put(b"after")
            assert [db.get(loc) for loc in db.iter_locations()] == [b"held", b"after"]
    else:
        with KeyedStore(path) as store:
            store["j"] = b"after"
            assert dict(store.items()) == {"k": b"held", "j": b"after"}


def test_a_lock_file_deleted_while_no_process_uses_the_store_is_made_again(tmp_path: Path) -> None:
    """Deleting the lock file between uses is allowed: the next writer makes a new one."""
    with FlatFileDb(tmp_path / "d", tmp_path / "d.lock") as db:
        db.put(b"one")
    (tmp_path / "d.lock").unlink()
    with FlatFileDb(tmp_path / "d", tmp_path / "d.lock") as db, FlatFileDb(tmp_path / "d", tmp_path / "d.lock") as two:
        db.put(b"two")
        two.put(b"three")
        assert [db.get(loc) for loc in db.iter_locations()] == [b"one", b"two", b"three"]


def test_a_state_page_of_something_else_is_refused_and_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """A full-size ffdb.state whose magic is not a state page's: FormatError at the open, and the
    descriptor the open keeps on the page (for its flock) is closed again."""
    datadir = tmp_path / "d"
    datadir.mkdir()
    (datadir / "ffdb.state").write_bytes(b"NOTSTATE" + bytes(4088))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(FormatError, match="not a state page"):
            FlatFileDb(datadir, tmp_path / "d.lock").put(b"x")
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # the lock file's, kept for the process
