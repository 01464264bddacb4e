"""An open in the same boot, after writers that all finished their operations, takes the state
page as the committed state instead of recovering the newest segment (FORMAT.md "Recovery", step 2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import conduit_flat_file_db.writer_recovery as writer_recovery_module
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import IndexVersionError
from conduit_flat_file_db.index import HEADER_BYTES, encode_header
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, segment_name
from conduit_flat_file_db.recovery import recover_segment
from conduit_flat_file_db.state import W_BOOT_LO, W_DIRTY


def _spy_recoveries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Numbers of the segments recover_segment is called for from now on."""
    calls: list[int] = []
    real = recover_segment  # what writer_recovery imports

    def spy(dir_fd: int, number: int, *args: Any) -> Any:
        calls.append(number)
        return real(dir_fd, number, *args)

    monkeypatch.setattr(writer_recovery_module, "recover_segment", spy)
    return calls


def _set_word(datadir: Path, word: int, value: int) -> None:
    with open(datadir / STATE_FILE_NAME, "r+b") as handle:
        handle.seek(8 * word)
        handle.write(value.to_bytes(8, "little"))


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_open_trusts_a_clean_page_of_this_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    """No segment is decoded by a clean reopen; blobs read back and puts go on after them."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir, use_compression=compressed) as db:
        locations = [db.put(bytes([i % 251]) * (100 + i)) for i in range(500)]
    recovered = _spy_recoveries(monkeypatch)
    with FlatFileDb(datadir, use_compression=compressed) as db:
        assert not recovered
        assert [db.get(location) for location in locations] == [bytes([i % 251]) * (100 + i) for i in range(500)]
        after = db.put(b"after")
        assert after.start_offset == locations[-1].end_offset
        assert db.get(after) == b"after"
        db.rotate()
        assert db.verify().ok


@pytest.mark.parametrize(
    "why",
    ["dirty", "other boot", "page publishes an older segment", "data file shorter than the page says"],
)
def test_open_recovers_when_the_page_is_not_the_committed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """Each of these sends the open through the full recovery of the newest segment."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        locations = [db.put(b"v" * 1000) for _ in range(10)]
        if why == "page publishes an older segment":
            db.rotate()
            kept = db.put(b"new")
    if why == "dirty":
        _set_word(datadir, W_DIRTY, 1)
    elif why == "other boot":
        _set_word(datadir, W_BOOT_LO, 12345)
    elif why == "page publishes an older segment":
        # as if a rotation had created segment 2 and died before its publish (dirty aside)
        (datadir / index_name(2)).write_bytes(encode_header(2, 0, 0))
        (datadir / segment_name(2, False)).write_bytes(b"")
    else:
        os.truncate(datadir / segment_name(0, False), locations[5].end_offset)
    recovered = _spy_recoveries(monkeypatch)
    with FlatFileDb(datadir) as db:
        assert recovered
        if why == "data file shorter than the page says":
            assert [db.get(location) for location in locations[:6]] == [b"v" * 1000] * 6
        elif why == "page publishes an older segment":
            assert db.get(kept) == b"new"
        else:
            assert [db.get(location) for location in locations] == [b"v" * 1000] * 10
        assert db.get(db.put(b"next")) == b"next"


def test_bytes_changed_past_the_committed_end_of_a_clean_store_are_overwritten(tmp_path: Path) -> None:
    """Bytes past the committed end that no crash left (a clean page) are never read as a blob:
    the next puts write over them, and the sealed segment verifies."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        first = db.put(b"first" * 100)
    data = datadir / segment_name(0, False)
    with open(data, "r+b") as handle:
        handle.seek(first.end_offset)
        handle.write(b"\xff" * 5000)
    with open(datadir / index_name(0), "r+b") as handle:
        handle.seek(HEADER_BYTES + 32)
        handle.write(b"\xee" * 96)
    with FlatFileDb(datadir) as db:
        second = db.put(b"second")
        assert (db.get(first), db.get(second)) == (b"first" * 100, b"second")
        db.rotate()
        assert db.verify().ok
        assert os.path.getsize(data) == second.end_offset


def test_clean_open_still_refuses_a_newer_index_version(tmp_path: Path) -> None:
    """The header of the newest segment is read by every open, clean or not."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        db.put(b"x")
    index = datadir / index_name(0)
    index.write_bytes(encode_header(0, 0, 0, version=99) + index.read_bytes()[HEADER_BYTES:])
    with pytest.raises(IndexVersionError):
        FlatFileDb(datadir)
