"""Attacks on the mapped commit of small puts into a compressed mutable segment.

Small puts (< 8 KiB) into a compressed mutable segment are stored as stored frames through
shared maps of the padding frame (FORMAT.md "Compressed segment: The mutable layout", "Commit"). These
tests feed that path what a damaged or forged datadir holds (a padding frame header or a
state page that disagrees with the file) and check that the file stays a seekable file
that plain Zstandard decoders read, with every blob reading back.
"""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import pytest
from crash_support import (
    Ack,
    Checked,
    Writer,
    assert_tails_clean,
    check_reopened,
    crash_seed,
    data_path,
    digest,
    read_acks,
    set_state_word,
    state_word,
)

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


KILLS = int(os.environ.get("FFDB_ATTACK_KILLS", "6"))
"""Writers killed per run of the SIGKILL test below (each round costs about 0.3 s; a long run
sets FFDB_ATTACK_KILLS=40 or more)."""


def test_sigkill_at_random_instants_of_small_compressed_puts_and_rotations(tmp_path: Path) -> None:
    """A writer of small blobs (stored frames through the maps, empty blobs, a few put_many runs)
    into segments of 200 KiB, so that kills land in puts, in the padding running out (the table
    moves), in seals and in re-framings, is SIGKILLed at random instants. After each kill a
    read-only instance opened before it and a reopened writer read every acknowledged blob, the
    files are whole seekable files (zstd -t, pyzstd), and verify() is clean."""
    seed = crash_seed()
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    FlatFileDb(datadir, use_compression=True).close()
    reader = FlatFileDb(datadir, readonly=True)
    acks: list[Ack] = []
    checked: Checked = {}
    try:
        for round_ in range(KILLS):
            config: dict[str, object] = {
                "seed": rng.randrange(2**32),
                "fsync": False,
                "max_size": 200 * 2**10,
                "big_fraction": 0.0,
            }
            config.update(use_compression=True, frame_bytes=rng.choice([0, 16384]))
            where = f"FFDB_CRASH_SEED={seed} round {round_}"
            writer = Writer(tmp_path, f"writer{round_}", datadir, config)
            try:
                writer.wait_ready(where)
                time.sleep(rng.uniform(0.01, 0.25))
            finally:
                writer.sigkill(where)
            acks += read_acks(writer.report)
            for ack in acks:
                assert digest(reader.get(ack.location)) == ack.digest, f"{where}: read-only {ack.location}"
            acks.append(check_reopened(datadir, acks, where, True, checked).ack)
    finally:
        reader.close()
    assert len(acks) > 10 * KILLS, "the writers acknowledged almost nothing: the test tests little"


def test_a_state_page_whose_frames_end_and_padding_both_move_is_not_trusted(tmp_path: Path) -> None:
    """The page's frames end and padding moved together (the file's size still matches): the open
    finds no padding frame where the page puts it and recovers the segment, so the next puts neither
    write frames inside the old padding frame nor leave the seal a table of wrong offsets."""
    datadir = tmp_path / "store"
    written = _store_of_small_puts(datadir)
    set_state_word(datadir, W_DISK_BYTES, state_word(datadir, W_DISK_BYTES) + 100)
    set_state_word(datadir, W_PADDING, state_word(datadir, W_PADDING) - 100)
    _check_puts_and_files(datadir, written, "frames end +100, padding -100")
    db = FlatFileDb(datadir, use_compression=True)
    try:
        db.rotate()
        for location, data in written.items():
            assert db.get(location) == data, location
        assert_tails_clean(db, "sealed after the forged page")
    finally:
        db.close()


@pytest.mark.parametrize(
    ("compressed", "which"),
    [(True, "index"), (False, "index"), (False, "data")],
    ids=["zstd-index", "raw-index", "raw-data"],  # a compressed data file ends in its seek table: no tail
)
def test_a_zero_tail_far_longer_than_a_room_gets_no_disk_blocks(tmp_path: Path, compressed: bool, which: str) -> None:
    """A mutable segment's file with a sparse zero tail of 256 MiB past its committed end (a
    damaged or forged file; no writer makes room of more than a few MiB), opened with a state page
    that is trusted: small puts map room over the first MiBs of that tail only, instead of giving
    disk blocks to all of it, read back, and the seal cuts the tail."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, use_compression=compressed)
    written = {db.put(data): data for data in _small_blobs(10)}
    db.close()
    path = datadir / "data_00000000.idx" if which == "index" else data_path(datadir, 0)
    with open(path, "r+b") as handle:
        handle.truncate(os.fstat(handle.fileno()).st_size + 256 * 2**20)
    db = FlatFileDb(datadir, use_compression=compressed)
    try:
        for data in _small_blobs(20):
            written[db.put(data)] = data
        assert os.stat(path).st_blocks * 512 < 16 * 2**20, f"{path.name}: the tail got disk blocks"
        db.rotate()
        assert os.stat(path).st_size < 2**20
        assert [db.get(location) for location in written] == list(written.values())
        assert db.verify().ok
    finally:
        db.close()
