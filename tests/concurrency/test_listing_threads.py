"""Threads of one instance list its datadir at once, and each listing is whole.

``os.listdir(fd)`` reads through a duplicate of the descriptor, which shares the directory's
read position with every other duplicate: two threads listing through the store's one
directory descriptor each got part of the names (segments() missed segments in about a third
of 6,000 calls from three threads). Every listing now opens the directory for itself.
"""

from __future__ import annotations

import threading
from pathlib import Path

from conduit_flat_file_db import FlatFileDb


def test_segments_listed_by_many_threads_at_once_are_all_there(tmp_path: Path) -> None:
    """Three threads call segments() 500 times each on a store of 30 segments, while a fourth
    verifies it: every listing names every segment."""
    with FlatFileDb(tmp_path / "db", max_file_size=10_000) as db:
        for _ in range(60):
            db.put(b"x" * 9000)
        want = db.segments()
        assert len(want) >= 30
        short: list[int] = []
        reports: list[bool] = []

        def lister() -> None:
            for _ in range(500):
                got = db.segments()
                if got != want:
                    short.append(len(got))

        def verifier() -> None:
            for _ in range(4):
                reports.append(db.verify().ok)

        threads = [threading.Thread(target=lister) for _ in range(3)] + [threading.Thread(target=verifier)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not short
        assert reports and all(reports)
