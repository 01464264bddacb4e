"""Files of a store damaged or forged by hand: the store refuses or repairs them, and never
serves bytes that are not a blob's, nor loses an acknowledged blob to a later repair."""

from __future__ import annotations

from pathlib import Path

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import InvalidLocationError
from conduit_flat_file_db.naming import STATE_FILE_NAME
from conduit_flat_file_db.state import W_DIRTY, W_DISK_BYTES, W_END, W_EPOCH, W_INDEX_BYTES, W_SEQ
from conduit_flat_file_db.types import DataLocation


def _word(datadir: Path, word: int) -> int:
    """One 8-byte word of the state page."""
    with open(datadir / STATE_FILE_NAME, "rb") as handle:
        handle.seek(8 * word)
        return int.from_bytes(handle.read(8), "little")


def _add_to_word(datadir: Path, word: int, delta: int) -> None:
    """Add ``delta`` to one 8-byte word of the state page, as a flipped bit or a hand edit would."""
    with open(datadir / STATE_FILE_NAME, "r+b") as handle:
        handle.seek(8 * word)
        value = int.from_bytes(handle.read(8), "little") + delta
        handle.seek(8 * word)
        handle.write(value.to_bytes(8, "little"))


@pytest.mark.parametrize(
    ("word", "delta"),
    [(W_END, 1000), (W_END, -1000), (W_INDEX_BYTES, 32), (W_INDEX_BYTES, -32), (W_DISK_BYTES, 1000)],
    ids=["end+1000", "end-1000", "index+32", "index-32", "disk+1000"],
)
def test_damaged_state_page_is_recovered_not_trusted(tmp_path: Path, word: int, delta: int) -> None:
    """A clean page of this boot with one committed-extent word changed is not taken as the
    committed state: uncommitted room is not served, the next put goes right after the last
    blob (never over one), and a later recovery keeps every blob."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        blobs = [bytes([65 + i]) * 1000 for i in range(3)]
        locations = [db.put(blob) for blob in blobs]
    _add_to_word(datadir, word, delta)
    with FlatFileDb(datadir) as db:
        with pytest.raises(InvalidLocationError):
            db.get(DataLocation(locations[0].file_path, 3000, 4000))
        after = db.put(b"X" * 100)
        assert after.start_offset == locations[-1].end_offset
        assert [db.get(location) for location in locations] == blobs
    _add_to_word(datadir, W_DIRTY, 1)  # as a writer killed mid-put leaves it: the next open recovers
    with FlatFileDb(datadir) as db:
        assert db.get(after) == b"X" * 100
        assert [db.get(location) for location in locations] == blobs
        assert db.verify().ok


@pytest.mark.parametrize("word", [W_SEQ, W_EPOCH], ids=["seq", "epoch"])
def test_state_page_counter_at_its_last_value_wraps_instead_of_failing(tmp_path: Path, word: int) -> None:
    """A page whose seq or epoch word was damaged to 2**64 - 1 (it can only be counted up):
    the open, puts, a rotation and a delete go on (the counter wraps to 0), not a ValueError
    of the page's memoryview at every open."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        first = db.put(b"first")
    _add_to_word(datadir, word, 2**64 - 1 - _word(datadir, word))
    with FlatFileDb(datadir) as db:
        assert db.get(first) == b"first"
        db.rotate()
        second = db.put(b"second")
        db.delete_file(Path(first.file_path))
        assert db.get(second) == b"second"
        assert db.verify().ok


@pytest.mark.parametrize(
    ("word", "value"),
    [(W_END, 4000), (W_END, 2**64 - 1), (W_INDEX_BYTES, 2**63), (W_INDEX_BYTES, 160)],
    ids=["end-in-room", "end-huge", "index-huge", "index+32"],
)
def test_read_only_open_does_not_serve_a_damaged_state_page(tmp_path: Path, word: int, value: int) -> None:
    """A read-only open maps the page and trusts it when current; a page damaged after its
    publish is not trusted: a location in the room is refused (not read as zeros), reads and
    verify raise no OverflowError, and every blob reads back."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        blobs = [bytes([65 + i]) * 1000 for i in range(3)]
        locations = [db.put(blob) for blob in blobs]
    _add_to_word(datadir, word, value - _word(datadir, word))
    with FlatFileDb(datadir, readonly=True) as db:
        with pytest.raises(InvalidLocationError):
            db.get(DataLocation(locations[0].file_path, 3000, 4000))
        assert [db.get(location) for location in locations] == blobs
        assert db.verify().ok
