"""Attacks on the mapped commit of small puts into a compressed mutable segment.

Small puts (< 8 KiB) into a compressed mutable segment are stored as stored frames through
shared maps of the padding frame (FORMAT.md "Compressed segment: The mutable layout", "Commit"). These
tests feed that path what a damaged or forged datadir holds (a padding frame header or a
state page that disagrees with the file) and check that the file stays a seekable file
that plain Zstandard decoders read, with every blob reading back.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from crash_support import assert_tails_clean, data_path, set_state_word, state_word

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.blocks import maps_supported
from conduit_flat_file_db.state import W_DIRTY, W_DISK_BYTES, W_PADDING

pytestmark = [
    pytest.mark.crash,
    pytest.mark.skipif(not maps_supported(), reason="mapped writes need Linux on x86 (FORMAT.md 'Commit')"),
]


def _small_blobs(count: int) -> list[bytes]:
    return [bytes([i % 251]) * (i * 37 % 3000) + b"%06d" % i for i in range(count)]


def _store_of_small_puts(datadir: Path) -> dict[DataLocation, bytes]:
    """A compressed store whose mutable segment holds small puts; closed."""
    db = FlatFileDb(datadir, use_compression=True)
    try:
        return {db.put(data): data for data in _small_blobs(40)}
    finally:
        db.close()


def _check_puts_and_files(datadir: Path, written: dict[DataLocation, bytes], where: str) -> None:
    """A writer's small puts land, everything reads back, and every segment file is a seekable
    file holding exactly its committed bytes (zstd -t and pyzstd read it)."""
    db = FlatFileDb(datadir, use_compression=True)
    try:
        for data in _small_blobs(5):
            written[db.put(data)] = data
        for location, data in written.items():
            assert db.get(location) == data, f"{where}: {location}"
        assert_tails_clean(db, where)
        assert db.verify().ok
    finally:
        db.close()


@pytest.mark.parametrize("payload", [0xFFFFFFFF, 70_000, 1000, 0], ids=["u32-max", "past-table", "short", "zero"])
def test_a_padding_header_that_disagrees_with_the_seek_table_is_repaired(tmp_path: Path, payload: int) -> None:
    """The padding frame's size field forged (the seek table left as it was), the state page
    dirty so that the next writer recovers the segment from its files: recovery lays the padding
    and table out afresh instead of taking the header's size, so small puts keep the file a
    seekable file (a header trusted sent the table's entries into the padding, or 4 GiB past
    the file's end)."""
    datadir = tmp_path / "store"
    written = _store_of_small_puts(datadir)
    disk = state_word(datadir, W_DISK_BYTES)
    with open(data_path(datadir, 0), "r+b") as handle:
        handle.seek(disk + 4)
        handle.write(struct.pack("<I", payload))
    set_state_word(datadir, W_DIRTY, 1)
    _check_puts_and_files(datadir, written, f"padding header {payload}")
    assert data_path(datadir, 0).stat().st_size < 2**20


@pytest.mark.parametrize("delta", [-1000, -8, 8])
def test_a_state_page_whose_padding_disagrees_with_the_file_is_not_trusted(tmp_path: Path, delta: int) -> None:
    """The state page's padding word off by ``delta`` bytes (page otherwise clean, same boot):
    a writer's open recovers the segment from its files instead of taking the page as the
    committed extent, so its small puts patch the real seek table, not bytes of the padding."""
    datadir = tmp_path / "store"
    written = _store_of_small_puts(datadir)
    set_state_word(datadir, W_PADDING, state_word(datadir, W_PADDING) + delta)
    _check_puts_and_files(datadir, written, f"padding word {delta:+d}")
