"""Empty blobs are blobs: acknowledged, listed, kept by every step that seals or replaces the
mutable segment, in both modes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb

StoreFactory = Callable[..., FlatFileDb]
Writer = Callable[[FlatFileDb], list[DataLocation]]

WRITES_OF_EMPTY: dict[str, Writer] = {
    "put": lambda db: [db.put(b"")],
    "put_many_one": lambda db: db.put_many([b""]),
    "put_many_two": lambda db: db.put_many([b"", bytearray()]),
    "put_memoryview": lambda db: [db.put(memoryview(b""))],
}


def _commit_by_stream(db: FlatFileDb, tmp: Path) -> DataLocation:  # pylint: disable=unused-argument  # one signature
    return db.put_stream(io.BytesIO(b"x"))


def _commit_by_adoption(db: FlatFileDb, tmp: Path) -> DataLocation:
    source = tmp / "adopted.bin"
    source.write_bytes(b"adopted")
    return db.adopt_file(source)


def _commit_by_put_streams(db: FlatFileDb, tmp: Path) -> DataLocation:  # pylint: disable=unused-argument
    return db.put_streams([io.BytesIO(b"s" * 5000)], small_bytes=16)[0]


COMMITS_BY_FILE = {
    "put_stream": _commit_by_stream,
    "adopt_file": _commit_by_adoption,
    "put_streams": _commit_by_put_streams,
}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("commit", sorted(COMMITS_BY_FILE))
@pytest.mark.parametrize("write", sorted(WRITES_OF_EMPTY))
def test_empty_blob_survives_a_whole_file_commit_after_it(
    make_store: StoreFactory, tmp_path: Path, compressed: bool, commit: str, write: str
) -> None:
    """put_stream, put_streams and adopt_file seal the mutable segment first; its empty blobs stay."""
    db = make_store(use_compression=compressed)
    empties = WRITES_OF_EMPTY[write](db)
    committed = COMMITS_BY_FILE[commit](db, tmp_path)
    for location in empties:
        assert db.get(location) == b""
    assert db.get(committed)
    db.close()
    reopened = make_store(use_compression=compressed)
    for location in empties:
        assert reopened.get(location) == b""
    listed = list(reopened.iter_locations())
    assert all(location in listed for location in empties)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_segment_of_only_empty_blobs_is_never_removed(make_store: StoreFactory, compressed: bool) -> None:
    """Zero bytes but a committed record: a segment that must stay, sealed, listed and readable."""
    db = make_store(use_compression=compressed)
    empty = db.put(b"")
    segment = db.mutable_segment()
    db.put_stream(io.BytesIO(b"x" * 10))
    assert segment in db.segments()
    db.rotate()
    assert db.get(empty) == b""
    assert any(record.segment == segment for record in db.iter_records())
