"""The seal sync thread (syncer.SealSyncer): whatever ends it, no sync() or close() waits for ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SYNC_THREAD_DIES), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "sync: the seal sync thread failed: ValueError('not an OSError')",
        "closed",
    ], done.stderr[-3000:]
