"""The seal sync thread (syncer.SealSyncer): whatever ends it, no sync() or close() waits for ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SYNC_THREAD_VANISHES = """
    import sys
    from conduit_flat_file_db import FlatFileDb, syncer
    from conduit_flat_file_db.state import W_SYNCED_BELOW
    real, threads = syncer.SealSyncer._run, []
    def vanish(self):
        threads.append(1)
        if len(threads) > 1:
            real(self)
        # else: the first thread ends at once, without its bookkeeping
    syncer.SealSyncer._run = vanish
    db = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock")
    db.put(b"x")
    db.rotate()
    db.sync()
    print("threads", len(threads), "synced below", db._state.words[W_SYNCED_BELOW])
    db.close()
    print("closed")
"""

SYNC_THREAD_DIES = """
    import sys
    from conduit_flat_file_db import FlatFileDb, syncer
    def broken(dir_fd, number):
        raise ValueError("not an OSError")  # a bug, a MemoryError: anything but a failed fsync
    syncer.holds_unchecked = broken
    db = FlatFileDb(sys.argv[1] + "/store", sys.argv[1] + "/store.lock")
    db.put(b"x")
    db.rotate()  # the sync thread starts on the sealed segment, and ends on the error
    try:
        db.sync()
    except OSError as exc:
        print("sync:", exc)
    db.put(b"y")
    db.close()
    print("closed")
"""


def test_a_sync_thread_ended_by_an_unexpected_error_fails_sync_instead_of_hanging(tmp_path: Path) -> None:
    """An error other than a failed fsync's ends the sync thread with its requests not done: sync()
    raises it as an OSError (as a failed fsync), and puts and close() go on. In a child process,
    with a timeout: a hang is a failure."""
    done = _run_child(SYNC_THREAD_DIES, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "sync: the seal sync thread failed: ValueError('not an OSError')",
        "closed",
    ], done.stderr[-3000:]


def test_a_sync_thread_that_ended_without_its_bookkeeping_is_replaced(tmp_path: Path) -> None:
    """A sync thread that ends without its bookkeeping (not by the syncer's own paths: here one
    that never runs its loop) must not make sync() wait for ever: the wait notices within a
    poll and starts another thread, which fsyncs the sealed segment. In a child process, with a
    timeout: a hang is a failure."""
    done = _run_child(SYNC_THREAD_VANISHES, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["threads 2 synced below 1", "closed"], done.stderr[-3000:]
    assert "ended without finishing" in done.stderr


def _run_child(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child process on ``tmp_path``, with a timeout (a hang fails)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
