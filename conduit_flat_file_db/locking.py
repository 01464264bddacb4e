"""The store's reader/writer lock: a thread lock in each process around one fasteners lock.

fasteners' ``InterProcessReaderWriterLock`` takes POSIX ``lockf`` locks, which belong
to a *process*: two threads of one process both "hold" it, and closing any handle on
the lock file drops every lock the process has on it. So each process keeps exactly
one fasteners lock object per lock file (a registry keyed by the file's identity),
and threads reach it only through :class:`ProcessLock`, which orders them first.

Speed: fasteners opens the lock file on every acquire and closes it on every
release, and waits for a contended lock by sleeping 10-100 ms between tries. Here the
fasteners handle is opened once and kept for the life of the process, the
uncontended path is one ``lockf`` call on it (the very call fasteners makes), and a
contended writer waits in the kernel (``F_SETLKW``) instead of sleeping, so it is
woken the moment the holder releases. The lock stays compatible with any other
fasteners user of the same file. This module is the only importer of fasteners.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator

import fasteners

from .blocks import allocate_for_map
from .errors import FlatFileDbError, FlatFileDbLockTimeoutError, FlatFileDbReadOnlyError, FlatFileDbUnsafeAccessError

logger = logging.getLogger("conduit_flat_file_db")

if os.name == "posix":
    import fcntl
else:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]  # pylint: disable=invalid-name  # stands for the module


class _KeptOpenLock(fasteners.InterProcessReaderWriterLock):  # type: ignore[misc]
    """fasteners' lock whose lock-file handle stays open between acquisitions."""

    def open_handle(self) -> Any:
        """Open the lock file through fasteners (creating its directory) and keep it."""
        try:
            self._do_open()
        except OSError as exc:
            if isinstance(exc.filename, bytes):  # fasteners opens the bytes form of the path
                raise type(exc)(exc.errno, exc.strerror, os.fsdecode(exc.filename)) from None
            raise
        return self.lockfile

    def _do_close(self) -> None:
        # Closing would drop the process's POSIX locks and cost an open per acquire;
        # the handle lives until the last store using it closes (see close_handle).
        return None

    def close_handle(self) -> None:
        """Really close the handle (fasteners' own close)."""
        super()._do_close()


_monotonic = time.monotonic
_POLL_SECONDS = 0.0005
_WANT_BYTES = 4096
LEASE_SECONDS = float(os.environ.get("FFDB_LEASE_SECONDS", "0.001"))
"""How long a process may keep the inter-process write lock after its writer thread is done.

A put takes the lock (``lockf``), writes (a small raw put copies into shared maps, no
syscall; others ``pwrite`` the data and the index record) and releases it (``lockf``);
keeping the lock between back-to-back puts of one process saves the two ``lockf`` calls,
all the syscalls of a small mapped put. Another process waits at most about this long
for a lease to end (and a process that stops writing hands the lock back after at most
about twice this long): GUARANTEES.md "Locks". 0 turns leases off.
"""
DEADLOCK_SECONDS = 30.0  # a lock cycle lasting this long is not leases ending: it is raised
_POLITE_SECONDS = 0.002  # after handing over to a waiter, let it in before taking the lock again


class ProcessLock:  # pylint: disable=too-many-instance-attributes  # thread and lease state
    """Reader/writer lock for one lock file, shared by every thread of this process.

    Thread-safe. Not reentrant: a thread holding it must not acquire it again.
    Obtain instances with :func:`process_lock_for`.

    The first word of the lock file (mapped shared) is a "someone waits" flag: a
    process that finds the lock taken raises it before it sleeps, so the holder knows
    to hand over instead of keeping its lease.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._ipc = _KeptOpenLock(path)
        self._handle = self._ipc.open_handle()
        self._fd: int = self._handle.fileno()
        self._map: mmap.mmap | None = None
        self._want: Any = [0]  # stands in where the lock file cannot be mapped: no leases then
        if fcntl is not None and LEASE_SECONDS > 0:
            try:
                # Blocks first: a waiter stores its flag through the map, and a store into a hole of a
                # full disk is a SIGBUS. When they cannot be had the lock works unmapped (no leases).
                allocate_for_map(self._fd, _WANT_BYTES, path)
                # mmap keeps its own duplicate of the descriptor: it is closed only by close(),
                # never while this process holds the lock (closing it would release it).
                self._map = mmap.mmap(self._fd, _WANT_BYTES)
                self._want = memoryview(self._map).cast("Q")
            except (OSError, ValueError):
                self._map = None
        self.leases = True  # False: every release gives the POSIX lock back (see Store's lock_leases)
        self._closed = False  # close() ran: a thread reaching the lock after raises, never uses the descriptor
        self._reset_threads()

    def fileno(self) -> int:
        """The descriptor this process keeps on the lock file (never close it)."""
        return self._fd

    def close(self) -> None:
        """Close the lock-file handle (no thread of this process may hold the lock)."""
        with self._room:
            self._closed = True
            self._drop_lease()
            self._stop.set()
            self._leased_event.set()
        if self._map is not None:
            self._want.release()
            self._map.close()
        self._ipc.close_handle()

    def _reset_threads(self) -> None:
        # ``_room`` is held by the one writing thread, or by the group of reading
        # threads (taken by the first reader, released by the last: a "light switch").
        # A plain Lock, not a Condition: the write path is the hot path of every put.
        self._room = threading.Lock()
        self._readers_guard = threading.Lock()
        self._readers = 0
        self._reader_threads: dict[int, int] = {}  # thread ident -> read acquisitions it holds
        self._leased = False  # this process holds the exclusive POSIX lock with no thread in it
        self._lease_since = 0.0
        self._last_release = 0.0
        self._leased_event = threading.Event()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._reaper_ready = threading.Event()  # set by the reaper when it runs

    # -- inter-process part -------------------------------------------------------

    def _ipc_acquire(self, exclusive: bool, timeout: float | None) -> None:
        if fcntl is None:  # pragma: no cover - Windows: fasteners' own polling acquire
            acquire = self._ipc.acquire_write_lock if exclusive else self._ipc.acquire_read_lock
            if not acquire(blocking=True, delay=_POLL_SECONDS, max_delay=0.01, timeout=timeout):
                raise FlatFileDbLockTimeoutError(f"lock {self.path} not acquired within {timeout} s")
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.lockf(self._fd, mode | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        self._want[0] = 1  # ask the holder to hand over at the end of its lease
        if timeout is None:
            self._wait(mode)
        else:
            self._poll(mode, timeout)
        self._want[0] = 0

    def _wait(self, mode: int) -> None:
        """Wait in the kernel (woken on release). The kernel answers EDEADLK instead of waiting
        when the holder waits for a lock this process keeps on lease (two locks taken in opposite
        orders, as a keyed store's write and its engine's put do): a lease ends by itself, so
        wait again a moment later. Only a cycle that lasts DEADLOCK_SECONDS, which no lease
        does, is raised."""
        deadline = time.monotonic() + DEADLOCK_SECONDS
        while True:
            try:
                fcntl.lockf(self._fd, mode)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK or time.monotonic() > deadline:
                    raise
            self._want[0] = 1
            time.sleep(_POLL_SECONDS)

    def _poll(self, mode: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = _POLL_SECONDS
        while True:
            try:
                fcntl.lockf(self._fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FlatFileDbLockTimeoutError(
                    f"lock {self.path} not acquired within {timeout} s; another process holds it"
                )
            self._want[0] = 1
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)

    def _ipc_release(self) -> None:
        if fcntl is None:  # pragma: no cover
            self._ipc.release_write_lock()
            return
        fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _drop_lease(self) -> None:
        """Give the POSIX lock back if this process keeps it on lease (``_room`` held)."""
        if self._leased:
            self._leased = False
            self._ipc_release()

    def _reap(self) -> None:
        """Background: end a lease its process no longer uses. A lease is granted only while
        this thread runs (release_write checks): if anything stops it, it hands the lock back
        first, else an idle process would keep every other process waiting for ever."""
        self._reaper_ready.set()
        try:
            while not self._stop.is_set():
                self._leased_event.wait()
                time.sleep(LEASE_SECONDS)
                if self._room.acquire(False):  # pylint: disable=consider-using-with  # released just below
                    try:
                        if self._leased and time.monotonic() - self._last_release >= LEASE_SECONDS:
                            self._drop_lease()
                        if not self._leased:
                            self._leased_event.clear()
                    finally:
                        self._room.release()
        except BaseException:  # pylint: disable=broad-exception-caught  # logged; the lock handed back
            logger.exception("%s: the thread ending this process's lock leases stopped; no more leases", self.path)
            with self._room:  # a writer in the room releases soon: it finds the lease off
                self._reaper = None
                self._drop_lease()

    # -- writer ----------------------------------------------------------------------

    def acquire_write(self, timeout: float | None = None) -> None:
        """Exclusive across threads and processes."""
        # Released by release_write (a with-block cannot span the caller's critical section).
        # acquire() without arguments: about 90 ns faster than acquire(True, -1), on every put.
        room = self._room
        if self._readers and self.read_held_here():
            raise FlatFileDbUnsafeAccessError(
                f"a write in a thread that holds the read lock {self.path} (read_lock()) would wait for "
                "that thread for ever; write after the read_lock() block"
            )
        if not (room.acquire() if timeout is None else room.acquire(True, timeout)):  # pylint: disable=consider-using-with
            raise FlatFileDbLockTimeoutError(
                f"lock {self.path} not acquired within {timeout} s; another thread of this process holds it"
            )
        if self._leased:
            return  # the lease kept the POSIX lock: no syscall
        try:
            if self._closed:
                raise self._closed_error()
            if self._want[0] and time.monotonic() - self._last_release < _POLITE_SECONDS:
                self._let_waiter_in()
            self._ipc_acquire(True, timeout)
            self._lease_since = time.monotonic()
        except BaseException:
            self._room.release()
            raise

    def _closed_error(self) -> FlatFileDbError:
        """A thread that reached the lock after its last store closed it: its descriptor is gone
        (its number may name another file by now)."""
        return FlatFileDbError(f"lock {self.path} is closed: the store using it was closed")

    def _let_waiter_in(self) -> None:
        """We just handed the lock to a waiting process: give it the time to take it."""
        deadline = self._last_release + _POLITE_SECONDS
        while self._want[0]:
            if time.monotonic() >= deadline:
                self._want[0] = 0  # stale (its waiter died, or took the lock and was killed)
                return
            time.sleep(0.0001)

    def release_write(self) -> None:
        """Release what :meth:`acquire_write` took (or keep the POSIX lock on lease)."""
        try:  # the room is released whatever is raised, even by a signal's handler at the first call
            now = _monotonic()
            self._last_release = now
            if self._leased and now - self._lease_since < LEASE_SECONDS:
                return  # the lease goes on (the common case of back-to-back puts)
            if self._map is not None and self.leases and now - self._lease_since < LEASE_SECONDS:
                if not self._leased:
                    reaper = self._reaper
                    if (reaper is None or not reaper.is_alive()) and not self._start_reaper():
                        self._ipc_release()  # no thread to end a lease: no lease
                        return
                    self._leased = True
                    self._leased_event.set()
            else:
                self._leased = False
                self._ipc_release()
        finally:
            self._room.release()

    def _start_reaper(self) -> bool:
        """Start the thread that ends unused leases; False when no thread can start now, or
        when it ended before it ran (a thread can die in its start-up, e.g. refused a trace
        function by CPython 3.11: a lease would then never end)."""
        self._reaper_ready.clear()
        reaper = threading.Thread(target=self._reap, name=f"ffdb-lease {self.path}", daemon=True)
        try:
            reaper.start()
        except RuntimeError:  # a thread limit, or an exiting interpreter
            return False
        self._reaper = reaper
        while not self._reaper_ready.wait(0.01):
            if not reaper.is_alive():
                self._reaper = None
                return False
        return True

    # -- reader ----------------------------------------------------------------------

    def acquire_read(self, timeout: float | None = None) -> None:
        """Shared with other readers, exclusive of writers, across threads and processes."""
        if not self._readers_guard.acquire(True, -1 if timeout is None else timeout):  # pylint: disable=consider-using-with
            raise FlatFileDbLockTimeoutError(f"lock {self.path} not acquired within {timeout} s")
        try:
            if self._readers == 0:
                # Released by the last release_read, possibly on another thread.
                if not self._room.acquire(True, -1 if timeout is None else timeout):  # pylint: disable=consider-using-with
                    raise FlatFileDbLockTimeoutError(
                        f"lock {self.path} not acquired within {timeout} s; a writer of this process holds it"
                    )
                try:
                    if self._closed:
                        raise self._closed_error()
                    self._leased = False  # a shared lock request converts a leased exclusive one
                    self._ipc_acquire(False, timeout)
                except BaseException:
                    self._room.release()
                    raise
            self._readers += 1
            ident = threading.get_ident()
            self._reader_threads[ident] = self._reader_threads.get(ident, 0) + 1
        finally:
            self._readers_guard.release()

    def read_held_here(self) -> bool:
        """Whether the calling thread holds the read lock (it would wait for itself to write)."""
        return threading.get_ident() in self._reader_threads

    def release_read(self) -> None:
        """Release what :meth:`acquire_read` took."""
        with self._readers_guard:
            if self._readers <= 0:
                return  # a forked child leaving a block its parent entered: the child holds nothing
            ident = threading.get_ident()
            held = self._reader_threads.get(ident, 0)
            if held > 1:
                self._reader_threads[ident] = held - 1
            else:
                self._reader_threads.pop(ident, None)
            self._readers -= 1
            if self._readers == 0:
                # Released in another thread than the acquire (the room allows it), the count above
                # was the releasing thread's, not the holder's: with no reader left, no thread holds it.
                self._reader_threads.clear()
                try:
                    self._ipc_release()
                finally:
                    self._room.release()

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[None]:
        """Context manager form of acquire_write/release_write."""
        self.acquire_write(timeout)
        try:
            yield
        finally:
            self.release_write()

    @contextmanager
    def read(self, timeout: float | None = None) -> Iterator[None]:
        """Context manager form of acquire_read/release_read."""
        self.acquire_read(timeout)
        try:
            yield
        finally:
            self.release_read()


# Reentrant: a garbage collection inside the guarded code (any allocation can start one) may
# finalize an unclosed store, whose close releases its lock through this same guard.
_registry_guard = threading.RLock()
_registry: dict[tuple[int, int], ProcessLock] = {}
_users: dict[int, int] = {}
_all_locks: weakref.WeakSet[ProcessLock] = weakref.WeakSet()


class ReadOnlyLock:
    """The lock of a read-only instance: every acquisition is refused.

    put() reaches it with no check of its own (the hot path stays as it is); other
    writes are refused earlier, by Store._refuse_write.
    """

    def __init__(self, dir_str: str) -> None:
        self.dir_str = dir_str

    def acquire_write(self, timeout: float | None = None) -> None:  # pylint: disable=unused-argument  # ProcessLock's
        """Refuse (typed ``-> None``, not NoReturn, so that callers' code after it is not "unreachable")."""
        raise FlatFileDbReadOnlyError(f"put(): {self.dir_str} was opened with readonly=True (no writes, no lock)")

    def release_write(self) -> None:
        """Never reached: nothing was acquired."""

    def write(self, timeout: float | None = None) -> ContextManager[None]:
        """Refuse."""
        self.acquire_write(timeout)
        raise AssertionError("unreachable: acquire_write raised")

    def read(self, timeout: float | None = None) -> ContextManager[None]:
        """Refuse."""
        self.acquire_write(timeout)
        raise AssertionError("unreachable: acquire_write raised")


def exclusive_file_lock(path: str) -> Any:
    """A plain exclusive inter-process lock on ``path`` (``acquire(blocking=, timeout=)``,
    ``release()``, a context manager): the tier's turn to upload, one process at a time."""
    return fasteners.InterProcessLock(path)


def process_lock_for(path: str) -> ProcessLock:
    """The one ProcessLock of this process for the lock file at ``path`` (created if needed).

    Never opens a second handle on a lock file this process already uses: closing it
    would release the locks the process holds on that file. Pair every call with
    :func:`release_process_lock`; the handle closes when the last user releases it.
    """
    with _registry_guard:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            existing = _registry.get((st.st_dev, st.st_ino))
            if existing is not None:
                _users[id(existing)] += 1
                return existing
        lock = ProcessLock(path)
        st = os.fstat(lock._fd)  # pylint: disable=protected-access  # same module
        _users[id(lock)] = 1  # first: a lock in the registry without users could never be opened again
        _registry[(st.st_dev, st.st_ino)] = lock
        _all_locks.add(lock)
        return lock


def release_process_lock(lock: ProcessLock) -> None:
    """One user of ``lock`` is done; the last one closes its lock-file handle."""
    with _registry_guard:
        _users[id(lock)] -= 1
        if _users[id(lock)] > 0:
            return
        for key, value in list(_registry.items()):
            if value is lock:
                del _registry[key]
        del _users[id(lock)]  # last: a lock left in the registry without users could never be opened again
        lock.close()


def _after_fork_in_child() -> None:
    # The child holds none of the parent's POSIX locks, and a thread that held one of
    # our thread locks in the parent does not exist in the child: start clean.
    for lock in list(_all_locks):
        lock._reset_threads()  # pylint: disable=protected-access  # same module
    global _registry_guard  # pylint: disable=global-statement
    _registry_guard = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
