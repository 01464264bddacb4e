"""Maintenance calls that look at a segment in several steps without a lock (stats,
enforce_retention, recompress) while another store deletes that segment between two of them.

The delete is made at a chosen step: an audit hook runs the other store's delete_file just
before this thread opens a given file of the segment, so the race is hit every time.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.maintenance import CompressMode
from conduit_flat_file_db.naming import index_name, segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]


class DeleteBeforeOpen:
    """Delete a segment (through ``deleter``, another store on the same datadir) just before the
    arming thread opens the file ``name``: once."""

    def __init__(self, deleter: FlatFileDb, number: int, name: str) -> None:
        self.deleter = deleter
        self.number = number
        self.name = name
        self.thread = threading.current_thread()
        self.armed = True
        self.fired = False
        sys.addaudithook(self._hook)

    def __enter__(self) -> DeleteBeforeOpen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False  # audit hooks cannot be removed: this one must not fire in a later test

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if (
            self.armed
            and event == "open"
            and args
            and args[0] == self.name
            and threading.current_thread() is self.thread
        ):
            self.armed = False  # first: the delete opens files too
            self.deleter.delete_file(self.deleter.segment_path(self.number))
            self.fired = True


def sealed_store(make_store: StoreFactory, **options: object) -> tuple[FlatFileDb, FlatFileDb]:
    """A store with sealed segments 0, 1, 2 (compressible text) and a mutable one, and a second
    store on the same datadir to delete with."""
    db = make_store(**options)
    for segment in range(3):
        for i in range(5):
            db.put(f"segment {segment} blob {i} ".encode() * 200)
        db.rotate()
    db.put(b"mutable")
    return db, FlatFileDb(db.datadir, db.mutable_file_lock_path)


@pytest.mark.parametrize("call", ["stats", "enforce_retention"])
def test_stats_and_retention_skip_a_segment_deleted_while_they_read_it(make_store: StoreFactory, call: str) -> None:
    """Segment 1's data file was opened and sized; it is deleted before its index is read. It was
    taken for a segment written without an index and reopened: FileNotFoundError out of stats()."""
    db, other = sealed_store(make_store)
    with DeleteBeforeOpen(other, 1, index_name(1)) as hook:
        if call == "stats":
            assert [s.number for s in db.stats().segments] == [0, 2, 3]
        else:
            assert db.enforce_retention(max_bytes=2**40) == []
    assert hook.fired
    other.close()


@pytest.mark.parametrize("mode", [CompressMode.AUTO, CompressMode.YES])
def test_recompress_of_a_segment_deleted_meanwhile_says_vanished(make_store: StoreFactory, mode: CompressMode) -> None:
    """Segment 1 is deleted after recompress found its file and before it opened it: the result
    says "vanished", as for a segment deleted before; nothing is raised."""
    db, other = sealed_store(make_store)
    with DeleteBeforeOpen(other, 1, segment_name(1, False)) as hook:
        results = db.recompress([1], mode=mode)
    assert hook.fired
    assert [(r.number, r.action) for r in results] == [(1, "vanished")], results
    assert db.segments() == [0, 2, 3]
    other.close()
