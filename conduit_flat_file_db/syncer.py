"""The seal syncer: sealed segments made durable in a background thread (FORMAT.md "Commit",
GUARANTEES.md "Durability"); and the seal hook runner, which re-frames or compresses them in another.

A seal writes the SEAL record and nothing more; the fsync of the sealed segment runs here,
outside the write lock, and its end is recorded in the state page (word W_SYNCED_BELOW),
from which recovery after a power loss knows which sealed segments to check (and which files
adopted without a checksum to keep: for those the page itself is fsynced before they count as done).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable

from .errors import FlatFileDbUnsafeAccessError
from .seal import holds_unchecked, sync_segment
from .segment_files import fsync_dir
from .state import W_SYNCED_BELOW, sync_page

logger = logging.getLogger("conduit_flat_file_db")

_POLL_SECONDS = 1.0  # a wait for a sync or hook thread also looks this often whether it still runs
_IDLE_SECONDS = 1.0  # a sync thread with nothing to do for this long ends; the next seal starts another
# A store opened with fsync=False fsyncs a sealed segment this long after its seal (GUARANTEES.md
# "Durability"), not at once: a job shorter than that never waits for the disk, as with a plain
# file, and a longer one has each second's seals fsynced together. The wait is cut short when a
# caller waits for the fsync (sync(), close() with fsync=True, interpreter exit, a confirmed
# adopt), and when URGENT_BACKLOG sealed segments are waiting for it.
SYNC_DELAY_SECONDS = 1.0
URGENT_BACKLOG = 8
# A writer with fsync=False waits at a seal only for segments sealed more than this many segments
# before (the exposure to a power loss stays bounded when the disk is slower than the writer).
WRITER_BACKLOG = 2 * URGENT_BACKLOG


class SealSyncer:
    """Makes sealed segments durable in a background thread, then records that in the state page.

    A seal writes the SEAL record and nothing more; fsyncing the segment (a large
    write to the disk) would stall every writer if done
    under the write lock, and the sealing writer if done in its thread. This thread
    fsyncs each sealed segment, then raises word W_SYNCED_BELOW; after a power loss,
    recovery checks the segments at or above it (GUARANTEES.md, "Durability").

    One per store instance. With ``delay`` (a store with ``fsync=False``), a request is
    fsynced ``delay`` seconds after the first one not yet done, or at once when someone waits for
    it or URGENT_BACKLOG segments wait. The thread starts on a request and ends after a second
    with nothing to do; ``close()`` waits for pending work, or, with ``wait=False`` (a store
    opened with ``fsync=False``), leaves it: the thread stops after the segment it is
    fsyncing, without touching the state page again, and the next open of the store
    fsyncs what is left (in its own sync thread). The thread works on a duplicate of the
    directory's descriptor, which it closes itself when it outlives ``close()``.
    A failed fsync is sticky: the word is never raised again by this instance and
    every ``wait`` returns the error (as does any other error that ends the thread).
    A forked child starts its own thread.
    """

    def __init__(self, dir_fd: int, words: Any, delay: float = 0.0) -> None:
        self._dir_fd = os.dup(dir_fd)  # the thread may outlive the store's descriptor (close(wait=False))
        self._words = words
        self._delay = delay
        self._reset()
        _LIVE_SYNCERS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._target = self._words[W_SYNCED_BELOW]  # sync every segment below this
        self._done = self._target  # requests up to here are finished
        self._urgent = 0  # requests below this are waited for: no delay
        self._since = 0.0  # monotonic time of the first request not done yet
        self._failed: OSError | None = None
        self._closing = False
        self._abandoned = False  # close(wait=False): the state page may be gone; touch it no more
        self._thread: threading.Thread | None = None

    def request(self, below: int) -> None:
        """Make every segment numbered below ``below`` (all sealed) durable soon."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            if below <= self._target or self._closing:
                return
            if self._target <= self._done:
                self._since = time.monotonic()
            self._target = below
            if self._thread is not None:
                self._cond.notify_all()
                return
            if self._start_locked():
                return
        # No new thread now (interpreter exiting, thread limit): sync here.
        self._finish(below, self._sync(below))

    def wait(self, below: int) -> Exception | None:
        """Wait until what was requested below ``below`` is done; returns the error of a failed
        fsync, if any, or FlatFileDbUnsafeAccessError when a close(wait=False) in another thread
        left it undone (the segments are not known durable: sync() opens the store again and
        waits for the new instance's thread)."""
        if self._pid != os.getpid():
            return None
        with self._cond:
            if below > self._urgent:
                self._urgent = below
                self._cond.notify_all()  # a thread in its delay starts now
            while self._done < min(below, self._target) and self._thread is not None:
                if not self._thread.is_alive():
                    self._lost_thread_locked(self._thread)
                    continue
                # Polled as well as notified: a wait must end even if the thread it waits for is gone.
                self._cond.wait(_POLL_SECONDS)
            if self._failed is None and self._abandoned and self._done < min(below, self._target):
                return FlatFileDbUnsafeAccessError(
                    "the store was closed by another thread before the fsync of its sealed segments "
                    "finished: they are not known to be durable (the next open fsyncs them)"
                )
            return self._failed

    def _lost_thread_locked(self, thread: threading.Thread) -> None:
        """(condition held) The sync ``thread`` has ended without its bookkeeping (never by this
        class's own paths): start another for what is left, or, when none can start, fail what
        is left as a failed fsync does (a sealed segment is never confirmed durable unsynced)."""
        logger.error(
            "the seal sync thread %s ended without finishing (segments below %d synced, %d requested)",
            thread.name,
            self._done,
            self._target,
        )
        self._thread = None
        if self._closing or not self._start_locked():
            self._failed = self._failed or OSError("the seal sync thread ended without finishing")
            self._done = max(self._done, self._target)
            self._cond.notify_all()

    def _start_locked(self) -> bool:
        """(condition held, no thread) Start the sync thread; False when no thread can start now."""
        self._thread = _started_thread(self._run, "ffdb-seal-sync")
        return self._thread is not None

    def close(self, wait: bool = True) -> None:
        """Finish every request, then stop the thread; with ``wait=False``, stop it after the
        segment it is fsyncing, without waiting for that (the caller then unmaps the state page)."""
        if self._pid != os.getpid():
            return
        with self._cond:
            if self._closing and self._abandoned:
                return  # already left to finish alone: nothing to wait for
            thread = self._thread
            # A store finalized by a garbage collection that ran in this very thread: it cannot
            # wait for itself, so it leaves the rest as close(wait=False) does.
            wait = wait and thread is not threading.current_thread()
            self._closing = True
            self._abandoned = not wait
            self._cond.notify_all()
            if thread is None:
                self._close_fd()
                return
        if wait:
            thread.join()

    def _close_fd(self) -> None:
        """(condition held) Close the directory descriptor once no thread will use it."""
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._done >= self._target and not self._closing:
                        self._cond.wait(_IDLE_SECONDS)
                    if self._done >= self._target or self._abandoned:
                        self._thread = None
                        if self._closing:
                            self._close_fd()
                        self._cond.notify_all()
                        return
                    left = self._delay_left_locked()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                    target = self._target
                self._finish(target, self._sync(target))
        except BaseException as exc:
            # Not an fsync's OSError (a bug, a MemoryError): the requests it leaves are never done,
            # so it fails them as a failed fsync does, else every wait() would wait for ever.
            with self._cond:
                self._failed = self._failed or OSError(f"the seal sync thread failed: {exc!r}")
                self._done = max(self._done, self._target)
                self._thread = None
                if self._closing:
                    self._close_fd()
                self._cond.notify_all()
            raise

    def _delay_left_locked(self) -> float:
        """(condition held, work pending) Seconds the thread still waits before fsyncing."""
        if self._closing or self._urgent > self._done or self._target - self._done >= URGENT_BACKLOG:
            return 0.0
        return self._since + self._delay - time.monotonic()

    def _finish(self, target: int, error: OSError | None) -> None:
        with self._cond:
            if not self._abandoned:  # (abandoned: _sync stopped short, nothing more is done)
                self._done = max(self._done, target)
            self._failed = self._failed or error
            self._cond.notify_all()

    def _sync(self, below: int) -> OSError | None:
        """fsync segments from the confirmed mark up to ``below``, confirming each as it goes, so a
        writer waiting for an early one is not held up by a large one after it."""
        words = self._words
        try:
            with self._cond:
                if self._abandoned:
                    return None
                first = words[W_SYNCED_BELOW]
            for number in range(first, below):
                if sync_segment(self._dir_fd, number) < 2:
                    fsync_dir(self._dir_fd)  # a deleted segment must stay deleted before it counts as done
                with self._cond:
                    if self._abandoned:  # close(wait=False) returned: the state page may be unmapped
                        return None
                    if self._failed is None and words[W_SYNCED_BELOW] < number + 1:
                        words[W_SYNCED_BELOW] = number + 1  # no lock: a racing lower value only means more checks
                if holds_unchecked(self._dir_fd, number):
                    # The word must reach the disk before this counts as done: after a power loss
                    # a file adopted without a checksum is kept only when the word covers it.
                    sync_page(self._dir_fd)
                with self._cond:
                    self._done = max(self._done, number + 1)
                    self._cond.notify_all()
        except OSError as exc:
            logger.error(
                "fsync of a sealed segment failed; this store no longer confirms sealed segments as "
                "durable (they are checked after a power loss): %s",
                exc,
            )
            return exc
        return None


class SealHookRunner:
    """Runs a store's seal hook (re-framing, compressing: seconds for a 128 MiB segment) in a
    background thread, so that the put that sealed a segment returns at once.

    One per writing store instance, fed the numbers of the segments each seal made. The thread
    starts on the first submit and ends after a second with nothing to do; the next submit starts
    another. It holds its store only through a weak reference, and strongly only while it runs a
    job: a store dropped meanwhile is released when the job ends. ``job(store, numbers)`` must
    not raise (the store logs the hook's errors). ``quiesce()`` (the store's close) waits for
    what was submitted and holds back later jobs until ``resume()`` (the store's reopen); a job
    held back runs then. A forked child forgets the parent's jobs (the parent runs them) and
    starts its own thread.
    """

    def __init__(self, store: Any, job: Callable[[Any, list[int]], None]) -> None:
        self._store = weakref.ref(store)
        self._job = job  # a plain function: a bound method of the store would be a reference cycle
        self._reset()
        _LIVE_RUNNERS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: list[int] = []
        self._submitted = 0  # jobs submitted (a job: the numbers of one submit; queued ones run merged)
        self._finished = 0  # jobs done, in order
        # The thread running a job: the hook's, or a submitter's when no thread could start.
        self._running_in: threading.Thread | None = None
        self._paused = False
        self._thread: threading.Thread | None = None

    def _forked(self) -> None:
        """In a forked child: forget the parent's jobs and thread (their state may be mid-change)."""
        if self._pid != os.getpid():
            self._reset()

    def submit(self, numbers: list[int]) -> None:
        """Run the job on ``numbers`` soon, in the background thread."""
        self._forked()
        with self._cond:
            self._queue += numbers
            self._submitted += 1
            if self._thread is not None or self._paused:
                self._cond.notify_all()
                return
            if self._start_locked():
                return
            # No new thread now (interpreter exiting, thread limit): run it here.
            numbers, self._queue = self._queue, []
            target = self._submitted
            self._running_in = threading.current_thread()
        self._run_job(numbers, target)

    def _start_locked(self) -> bool:
        """(condition held, no thread) Start the hook thread; False when no thread can start now."""
        self._thread = _started_thread(self._run, "ffdb-seal-hook")
        return self._thread is not None

    def wait(self) -> None:
        """Wait until every job submitted before this call has finished and none runs; at once
        when called from the hook's own thread (it would wait for itself) or while jobs are held back."""
        self._forked()
        with self._cond:
            self._wait_locked()

    def _wait_locked(self) -> None:
        target = self._submitted
        while ((self._finished < target and self._thread is not None) or self._running_in) and not self._paused:
            if threading.current_thread() in (self._running_in, self._thread):
                return
            if self._lost_thread_locked():
                continue
            # Polled as well as notified: a wait must end even if the thread it waits for is gone.
            self._cond.wait(_POLL_SECONDS)

    def _lost_thread_locked(self) -> bool:
        """(condition held) Forget a hook thread, or a thread noted as running a job, that has
        ended without its bookkeeping (this never happens by this class's own paths); returns
        whether one was. Its job is lost (the segments stay as written, every blob readable);
        what is still queued gets a new thread."""
        lost = [t for t in (self._thread, self._running_in) if t is not None and not t.is_alive()]
        if not lost:
            return False
        logger.error(
            "seal hook thread %s ended without finishing (jobs %d of %d done, %d segments queued); "
            "its segments stay as written",
            lost[0].name,
            self._finished,
            self._submitted,
            len(self._queue),
        )
        if self._thread in lost:
            self._thread = None
        if self._running_in in lost:
            self._running_in = None
            if not self._queue:  # else the new thread's job covers every submit so far
                self._finished = self._submitted
        if self._queue and self._thread is None and not self._paused:
            self._start_locked()
        return True

    def quiesce(self) -> None:
        """``wait()``, then hold back every later job until ``resume()``: none runs once this returns."""
        self._forked()
        with self._cond:
            self._wait_locked()
            self._paused = True  # under the condition the thread takes a job under: none starts now

    def resume(self) -> None:
        """Let held-back jobs run."""
        self._forked()
        with self._cond:
            self._paused = False
            held = bool(self._queue) and self._thread is None
        if held:
            self.submit([])

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._paused:
                        self._cond.wait(_IDLE_SECONDS)
                    if not self._queue or self._paused:
                        # Ended under the condition that submit() checks: a job it queues now
                        # starts a new thread instead of waiting for this one.
                        self._thread = None
                        self._cond.notify_all()
                        return
                    numbers, self._queue = self._queue, []
                    target = self._submitted
                    self._running_in = threading.current_thread()
                self._run_job(numbers, target)
        except BaseException:  # a job that raised past its own handling: the next submit starts anew
            with self._cond:
                self._thread = None
                self._cond.notify_all()
            raise

    def _run_job(self, numbers: list[int], target: int) -> None:
        try:
            store = self._store()
            if store is not None:
                self._job(store, numbers)
            del store  # a store dropped meanwhile is released (and closed) here, in this thread
        finally:
            with self._cond:
                self._finished = max(self._finished, target)
                self._running_in = None
                self._cond.notify_all()


def _started_thread(run: Callable[[], None], name: str) -> threading.Thread | None:
    """A daemon thread running ``run``, started; None when no thread can start now (interpreter
    exit, the thread limit)."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return None
    return thread


_LIVE_SYNCERS: weakref.WeakSet[SealSyncer] = weakref.WeakSet()
_LIVE_RUNNERS: weakref.WeakSet[SealHookRunner] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """A process that exits with stores open still gets their sealed segments re-framed (as their
    puts asked) and then fsynced."""
    for runner in list(_LIVE_RUNNERS):
        runner.wait()
    for syncer in list(_LIVE_SYNCERS):
        syncer.close()


# Whether a garbage collection runs in this thread now. It finalizes unreachable stores in
# whichever thread allocates, inside whatever that thread holds (the lock registry's guard, a
# lock's room in its lease reaper, an index's guard or transaction): their close, which takes
# those, must not run there. Per thread: gc calls its callbacks in the collecting thread.
_COLLECTING = threading.local()


def _note_collection(phase: str, info: dict[str, Any]) -> None:  # pylint: disable=unused-argument  # gc's signature
    _COLLECTING.active = phase == "start"


gc.callbacks.append(_note_collection)


def finalize(close: Callable[[], None], elsewhere: bool = False) -> None:
    """A finalizer's close of a store: in a thread of its own (``ffdb-finalize``) when a garbage
    collection runs in this thread, or ``elsewhere``; here otherwise (a store dropped by its last
    reference is closed at once). Never raises."""
    if elsewhere or getattr(_COLLECTING, "active", False):
        try:
            threading.Thread(target=_quietly, args=(close,), name="ffdb-finalize", daemon=True).start()
            return
        except RuntimeError:  # no new thread now (interpreter exit): closed here
            pass
    _quietly(close)


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:  # pylint: disable=broad-exception-caught  # a finalizer has no one to tell
        pass


__all__ = ["SealHookRunner", "SealSyncer", "finalize"]
