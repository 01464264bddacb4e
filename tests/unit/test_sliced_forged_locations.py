"""A slice is taken of a location the store has checked first.

A slice inside a location that starts before 0 or ends past the segment's committed end is
refused with InvalidLocationError by every read that takes a slice, on sealed and mutable,
raw and compressed segments, after a first read has cached the segment's reader (the fast
path): the sliced bytes were served before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import InvalidLocationError

READS: dict[str, Callable[[FlatFileDb, DataLocation, Slice], object]] = {
    "get": lambda db, loc, part: db.get(loc, part),
    "get_many": lambda db, loc, part: db.get_many([loc], [part]),
    "open_blob": lambda db, loc, part: db.open_blob(loc, part).read(),
    "get_view": lambda db, loc, part: bytes(db.get_view(loc, part)),
}


CASES = [
    (read, compressed)
    for read in sorted(READS)
    for compressed in (False, True)
    if not (read == "get_view" and compressed)  # a compressed segment has no bytes to map: always refused
]


@pytest.mark.parametrize(("read", "compressed"), CASES, ids=[f"{r}-{'zstd' if c else 'raw'}" for r, c in CASES])
@pytest.mark.parametrize("segment", ["sealed", "mutable"])
def test_a_slice_of_a_location_outside_its_segment_is_refused(
    tmp_path: Path, read: str, compressed: bool, segment: str
) -> None:
    """Before the check, get(DataLocation(path, -1, 5), Slice(1, 2)) returned the segment's byte 0,
    and a location ending a megabyte past the segment served the slice inside it."""
    with FlatFileDb(tmp_path / "db", use_compression=compressed, max_file_size=100_000) as db:
        sealed = db.put(b"abcdefghij" * 10)
        db.put(b"x" * 50)
        db.rotate()
        mutable = db.put(b"mutable!" * 4)
        location = sealed if segment == "sealed" else mutable
        assert db.get(location) and db.get(location, Slice(1, 3)) == db.get(location)[1:3]  # readers cached
        for forged in (
            DataLocation(location.file_path, -1, 5),
            DataLocation(location.file_path, 5, 10**6),
            DataLocation(location.file_path, 5, 2**64),
        ):
            with pytest.raises(InvalidLocationError):
                READS[read](db, forged, Slice(1, 2))
        assert READS[read](db, location, Slice(2, 4)) in (db.get(location)[2:4], [db.get(location)[2:4]])
