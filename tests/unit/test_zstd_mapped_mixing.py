"""Small compressed puts through the maps (FORMAT.md "Commit") mixed with every other way of
writing, by instances that compress and instances that do not, on one store: each acknowledged
blob reads back its own bytes through every kind of reader, and the files stay seekable files."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from crash_support import assert_tails_clean, assert_zstd_cli_accepts, seekable_contents

import conduit_flat_file_db.seekable as seekable_module
import conduit_flat_file_db.store as store_module
import conduit_flat_file_db.writer as writer_module
from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.fileio import pread_at
from conduit_flat_file_db.seekable import parse_seek_table


def _blob(rng: random.Random) -> bytes:
    size = rng.choice([0, rng.randrange(1, 300), rng.randrange(300, 8192), 8191, 8192, rng.randrange(8193, 70_000)])
    return rng.randbytes(size // 2) + bytes(size - size // 2)


@pytest.mark.parametrize("compressed_first", [True, False], ids=["compressed-first", "raw-first"])
def test_log_records_of_an_instance_that_does_not_compress_keep_a_compressed_segment_whole(
    tmp_path: Path, compressed_first: bool
) -> None:
    """An instance opened without compression on a store whose mutable segment is compressed (and
    the other way round) appends log records: they go the way of the segment's kind. (A log record
    copied as raw bytes through the maps into a compressed segment overwrote committed frames, and
    its location lay past the segment's end.)"""
    datadir = tmp_path / "store"
    written: dict[DataLocation, bytes] = {}
    first = FlatFileDb(datadir, use_compression=compressed_first, log_records=True)
    for i in range(20):
        data = b"A%d" % i * 50
        written[first.put(data)] = data
    first.close()
    db = FlatFileDb(datadir, use_compression=not compressed_first, log_records=True)
    try:
        written[db.put(b"a small put")] = b"a small put"
        written[db.put_log(b"a log record")] = b"a log record"
        logged = db.put_logged([b"a blob"], lambda locations: b"its log record")
        written[logged.locations[0]] = b"a blob"
        written[logged.log] = b"its log record"
        written[db.put_log(b"another log record")] = b"another log record"
        for location, data in written.items():
            assert db.get(location) == data, location
        assert_tails_clean(db, "after log records")
        assert db.verify().ok
    finally:
        db.close()


_CHILD_READS = """
import json, sys
from conduit_flat_file_db import DataLocation, FlatFileDb
db = FlatFileDb(sys.argv[1], readonly=True)
for path, start, end, hexed in json.loads(sys.stdin.read()):
    assert db.get(DataLocation(path, start, end)) == bytes.fromhex(hexed), (path, start, end)
print("ok")
"""


@pytest.mark.parametrize("seed", range(3))
def test_mapped_small_puts_mixed_with_every_write_read_back_everywhere(tmp_path: Path, seed: int) -> None:
    """Random puts of every size around the stored-frame bound (empty, < 8 KiB through the maps,
    8 KiB and more through pwrite), put_many, put_stream, rotations, segments of 200 KiB (the
    padding runs out, the table moves, seals re-frame), and reopens that switch compression:
    every location reads back in the writing instance, a second instance, a read-only one and a
    child process; verify() is clean and every segment is a seekable file that zstd reads."""
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    written: dict[DataLocation, bytes] = {}
    db = FlatFileDb(datadir, use_compression=True, max_file_size=200 * 2**10)
    try:
        for _ in range(150):
            roll = rng.random()
            if roll < 0.7:
                data = _blob(rng)
                written[db.put(data)] = data
            elif roll < 0.8:
                datas = [_blob(rng) for _ in range(rng.randrange(1, 5))]
                written.update(zip(db.put_many(datas), datas))
            elif roll < 0.85:
                data = _blob(rng)
                written[db.put_stream(io.BytesIO(data))] = data
            elif roll < 0.9:
                db.rotate()
            else:
                db.close()
                db = FlatFileDb(datadir, use_compression=rng.random() < 0.7, max_file_size=200 * 2**10)
        for reader in (db, FlatFileDb(datadir), FlatFileDb(datadir, readonly=True)):
            with reader:
                assert [reader.get(location) for location in written] == list(written.values())
        assert db.verify().ok
        compressed = sorted(datadir.glob("*.zst"))
        for path in compressed:  # the mutable one too: its padding frame is a skippable frame
            seekable_contents(path, f"seed {seed}")
        assert_zstd_cli_accepts(compressed, f"seed {seed}")
    finally:
        db.close()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_READS, str(datadir)],
        input=repr_locations(written),
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-2000:]


def repr_locations(written: dict[DataLocation, bytes]) -> str:
    """The locations and their bytes as JSON, for the child process."""
    import json  # pylint: disable=import-outside-toplevel

    return json.dumps([[loc.file_path, loc.start_offset, loc.end_offset, data.hex()] for loc, data in written.items()])


def test_a_compressed_segment_of_empty_blobs_is_sealed_before_its_seek_table_outgrows_the_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty blobs (one stored frame each, no bytes) never bring a segment to MAX_DAT_FILE_SIZE: the
    segment is sealed once its frames near the seekable format's limit of seek-table entries
    (scaled down here: 20000 entries, a seal from 2000 frames), so every put keeps working and every
    file keeps a table that seekable readers accept. (Sealing only by size, a segment of 2**27
    empty or 1-byte blobs got a table no reader takes, and its seal then failed on every put.)"""
    monkeypatch.setattr(seekable_module, "MAX_FRAMES", 20_000)
    monkeypatch.setattr(store_module, "MUTABLE_FRAMES_MAX", 2000, raising=False)
    monkeypatch.setattr(writer_module, "MUTABLE_FRAMES_MAX", 2000, raising=False)
    db = FlatFileDb(tmp_path / "store", use_compression=True, max_file_size=2**40)
    try:
        locations = [db.put(b"" if i % 3 else b"x") for i in range(25_000)]
        assert len(db.segments()) > 5
        for number in db.segments():
            path = Path(db.segment_path(number))
            with open(path, "rb") as handle:
                table = parse_seek_table(pread_at(handle.fileno()), os.fstat(handle.fileno()).st_size)
            assert len(table) <= 20_000, path
        assert [db.get(location) for location in locations[::1000]] == [
            b"x" if i % 3 == 0 else b"" for i in range(0, 25_000, 1000)
        ]
        assert db.verify().ok
    finally:
        db.close()
