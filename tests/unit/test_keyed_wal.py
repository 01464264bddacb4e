"""The SQLite index's WAL checkpoints: made by tidy() after the keyed store's write lock is
released (so no other writer's apply waits for one), once the WAL holds enough; a commit makes
one itself only past four times that, so the WAL stays bounded whoever writes the index."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conduit_flat_file_db import KeyedStore
from conduit_flat_file_db.keyed import index_sqlite
from conduit_flat_file_db.keyed.index_base import Checkpoint
from conduit_flat_file_db.keyed.keylog import Row


def rows_in_main_file(path: Path) -> int:
    """Rows of the keys table as the database file holds them, without its WAL (what only a
    checkpoint puts there)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        (count,) = conn.execute("SELECT count(*) FROM keys").fetchone()
    except sqlite3.OperationalError:  # "no such table": its schema too is still in the WAL
        return 0
    finally:
        conn.close()
    return int(count)


def test_tidy_checkpoints_the_wal_once_it_holds_enough_and_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applies leave their pages in the WAL (no checkpoint inside a commit); the store's apply
    calls tidy() after it, which copies them into the database file once the WAL holds
    _CHECKPOINT_BYTES."""
    monkeypatch.setattr(index_sqlite, "_CHECKPOINT_BYTES", 1 << 40)
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many((f"k{i}", b"v" * 100) for i in range(2000))
        store._apply()  # pylint: disable=protected-access
        db = tmp_path / "kv" / "index.sqlite3"
        assert os.stat(f"{db}-wal").st_size > 64 * 1024
        assert rows_in_main_file(db) == 0  # every page still in the WAL
        monkeypatch.setattr(index_sqlite, "_CHECKPOINT_BYTES", 64 * 1024)
        store.put_many((f"j{i}", b"w" * 100) for i in range(10))
        store._apply()  # pylint: disable=protected-access
        assert rows_in_main_file(db) == 2010
        assert len(store) == 2010


def test_a_commit_checkpoints_itself_past_four_times_the_tidy_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index written by a caller that never tidies (any path but the store's apply) still
    checkpoints, in the commit, once the WAL holds four times _CHECKPOINT_BYTES."""
    monkeypatch.setattr(index_sqlite, "_CHECKPOINT_BYTES", 32 * 1024)
    index = index_sqlite.SqliteIndex(str(tmp_path / "index.sqlite3"), False)
    try:
        row = Row(0, 0, 10, 1, 2, 0, b"")
        for batch in range(30):
            index.apply_rows(((b"\x00k%d-%d" % (batch, i), row, 0) for i in range(100)), Checkpoint(0, batch, 0, 0))
        assert rows_in_main_file(tmp_path / "index.sqlite3") > 0
        assert os.stat(tmp_path / "index.sqlite3-wal").st_size < 8 * 2**20
        assert index.count() == 3000
    finally:
        index.close()


def test_the_store_tidies_its_index_after_it_lets_the_write_lock_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tidy() runs once the keyed store's write lock (index.lock) is released: another
    process's apply never waits for a checkpoint."""
    held: list[bool] = []
    with KeyedStore(tmp_path / "kv") as store:
        real = store.index.tidy

        def spy() -> None:
            held.append(store._lock._room.locked())  # type: ignore[union-attr]  # pylint: disable=protected-access
            real()

        monkeypatch.setattr(store.index, "tidy", spy)
        store["k"] = b"v"
        store._apply()  # pylint: disable=protected-access
    assert held and not any(held)
