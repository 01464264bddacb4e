"""log_record_at: the log record a position ends at, found with one read of its record, or None."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, KeyedStore
from conduit_flat_file_db.log_records import LogPosition
from conduit_flat_file_db.naming import index_name


def _log(locations: list[DataLocation]) -> bytes:
    return b"log:%d" % len(locations)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_log_record_at_finds_the_record_a_put_logged_ended_at(tmp_path: Path, compressed: bool) -> None:
    """After put_logged, its ``after`` position names its log record, in the mutable segment and
    once sealed; a position one record short, or past the committed end, names none."""
    with FlatFileDb(tmp_path / "d", use_compression=compressed, log_records=True) as db:
        db.put(b"plain")
        first = db.put_logged([b"a" * 100], _log)
        second = db.put_logged([b"b" * 100, b"c"], _log)
        found = db.log_record_at(second.after)
        assert found is not None
        assert (found.start_offset, found.end_offset) == (second.log.start_offset, second.log.end_offset)
        assert db.get(DataLocation(second.log.file_path, found.start_offset, found.end_offset)) == b"log:2"
        at_first = db.log_record_at(first.after)
        assert at_first is not None and at_first.end_offset == first.log.end_offset
        segment, end, index_bytes = second.after
        assert db.log_record_at(LogPosition(segment, end, index_bytes - 32)) is None  # a data BLOB record there
        assert db.log_record_at(LogPosition(segment, end + 1, index_bytes)) is None  # past the committed end
        assert db.log_record_at(LogPosition(segment, end, index_bytes + 32)) is None
        assert db.log_record_at(LogPosition(segment + 1, end, index_bytes)) is None
        assert db.log_record_at(LogPosition(segment, end, 0)) is None  # index offset unknown
        db.rotate()
        assert db.log_record_at(second.after) == found


def test_log_record_at_a_deleted_segment_is_none(tmp_path: Path) -> None:
    """The segment is gone: None, not an error."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        put = db.put_logged([b"x"], _log)
        db.rotate()
        db.delete_file(put.log.file_path)
        assert db.log_record_at(put.after) is None


def test_keyed_open_checks_its_checkpoint_without_scanning_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean reopen reads the checkpoint's own record instead of every key log of its segment;
    a checkpoint whose record is gone (here: its segment's record index cut) still rebuilds."""
    path = tmp_path / "kv"
    with KeyedStore(path) as store:
        store.put_many([(f"k{i}", b"v%d" % i) for i in range(3000)])
    scans: list[tuple[int, int]] = []
    real = FlatFileDb.iter_log

    def spy(self: FlatFileDb, after: tuple[int, int] = (0, 0)) -> object:
        scans.append(after)
        return real(self, after)

    monkeypatch.setattr(FlatFileDb, "iter_log", spy)
    with KeyedStore(path) as store:
        assert not scans
        assert store["k2999"] == b"v2999" and len(store) == 3000
    segments = path / "segments"
    index = segments / index_name(0)
    os.truncate(index, os.path.getsize(index) - 32 * 5)  # the last records (checkpoint's among them) lost
    with KeyedStore(path) as store:
        assert scans  # looked for it the long way, and did not find it
        assert all(store.get(f"k{i}") in (None, b"v%d" % i) for i in range(3000))
