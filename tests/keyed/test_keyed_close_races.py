"""A store closed by one thread while its other threads read: each of them stops with the
store's typed error, the process goes on, and the store's files are released."""

from __future__ import annotations

from pathlib import Path

import pytest
from keyed_support import INDEXES, run_in_child
from keyed_workers import close_under_threads

pytestmark = pytest.mark.concurrency


@INDEXES
def test_closing_a_store_while_other_threads_use_it_is_a_typed_error_in_them(tmp_path: Path, index: str) -> None:
    """close() from one thread while others call get, get_many, len and keys(prefix=): the
    SQLite index closed every thread's connection, under the calls running on them, which
    crashed the process (SIGSEGV), and a thread opening its connection as the store closed
    kept using it after close(). Run in a child process, which must survive: the other threads
    stop with a FlatFileDbError and no file of the store stays open."""
    stopped = run_in_child(close_under_threads, str(tmp_path), index, 25)
    assert set(stopped) <= {"FlatFileDbError"}, stopped
    assert stopped["FlatFileDbError"] == 25 * 6
