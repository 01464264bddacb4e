"""One store opened at once with index="sqlite" by one process and index="lmdb" by another: both
indexes exist, each a cache of the same key logs, so each kind sees every write of the other,
whatever vacuums and rebuilds either runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from keyed_support import in_children, open_keyed
from keyed_workers import write_rounds

pytestmark = pytest.mark.concurrency


def test_processes_with_different_index_kinds_and_vacuums_see_each_others_writes(tmp_path: Path) -> None:
    """A SQLite-index writer and an LMDB-index writer (LMDB with compression, another
    max_file_size) write, delete and vacuum at once: afterwards, and after a rebuild through
    either kind, both kinds give every key its last value and no deleted key."""
    path = str(tmp_path / "s")
    open_keyed(path, "sqlite").close()
    results = in_children(write_rounds, (path, "sqlite", 0, 6), (path, "lmdb", 1, 6))
    expected = {key: bytes.fromhex(value) for result in results for key, value in result.items() if value}
    for rebuild in (None, "sqlite", "lmdb"):
        if rebuild is not None:
            with open_keyed(path, rebuild) as store:
                store.rebuild_index()
        for index in ("sqlite", "lmdb"):
            with open_keyed(path, index) as store:
                assert dict(store.items()) == expected, (rebuild, index)
                assert len(store) == len(expected)
                assert store.verify().ok
