"""The seek table of a compressed mutable segment lags behind small puts (FORMAT.md "The mutable
layout"): a put through the writer's maps leaves it, and it is brought up to date every
UNLISTED_FRAMES_MAX such puts of a writer, at every other append, by ``sync()``, by the seal and by
``close()``. At every instant the file is a valid seekable file of the frames its table lists,
with one entry of decompressed size 0 from their end to the table; the store's own reads never
use it. Each test reads the table from the file, independently of the writer's state.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import pyzstd

import conduit_flat_file_db.seekable as seekable_module
import conduit_flat_file_db.write_maps as write_maps_module
import conduit_flat_file_db.writer_recovery as writer_recovery_module
from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.blocks import maps_supported
from conduit_flat_file_db.fileio import pwrite_all as pwrite_all_of_fileio
from conduit_flat_file_db.naming import STATE_FILE_NAME
from conduit_flat_file_db.recovery import recover_segment
from conduit_flat_file_db.seekable import parse_seek_table
from conduit_flat_file_db.state import W_DURABLE_END

pytestmark = pytest.mark.skipif(not maps_supported(), reason="mapped writes need Linux on x86 (FORMAT.md 'Commit')")


def listed_bytes(path: Path | str) -> int:
    """Uncompressed bytes the file's seek table lists (a table that does not parse fails the test)."""
    raw = Path(path).read_bytes()
    return parse_seek_table(lambda offset, size: raw[offset : offset + size], len(raw), str(path)).decompressed_size


def seekable_read(path: Path | str) -> bytes:
    """The file read whole through pyzstd's seekable reader (which takes the size from the table)."""
    with pyzstd.SeekableZstdFile(str(path), "r") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        return handle.read(size)


def blobs(count: int, seed: int = 3) -> list[bytes]:
    """Small blobs (stored frames, put through the maps)."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(1, 2000)) for _ in range(count)]


def open_store(datadir: Path) -> FlatFileDb:
    """A compressed store whose small puts keep their stored frames."""
    return FlatFileDb(datadir, use_compression=True, reframe_on_seal=False)


def test_small_puts_leave_the_table_behind_until_the_bound_and_sync_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Puts through maps do not touch the table; the UNLISTED_FRAMES_MAX-th lists every frame;
    sync() lists the rest. The lagging file reads as the prefix its table lists."""
    monkeypatch.setattr(write_maps_module, "UNLISTED_FRAMES_MAX", 10)
    db = open_store(tmp_path / "s")
    try:
        data = blobs(25)
        locations = [db.put(blob) for blob in data[:5]]
        path = locations[0].file_path
        assert listed_bytes(path) == 0  # the new segment's table, untouched
        assert seekable_read(path) == b""
        locations += [db.put(blob) for blob in data[5:10]]
        assert listed_bytes(path) == locations[9].end_offset  # the tenth put listed all ten
        locations += [db.put(blob) for blob in data[10:25]]
        assert listed_bytes(path) == locations[19].end_offset
        assert seekable_read(path) == b"".join(data[:20])
        db.sync()
        assert listed_bytes(path) == locations[24].end_offset
        assert seekable_read(path) == b"".join(data)
        assert all(db.get(location) == blob for location, blob in zip(locations, data))
    finally:
        db.close()


def test_close_lists_the_frames_its_puts_left_behind(tmp_path: Path) -> None:
    """A closed store's mutable segment is a complete seekable file; reopened, it reads back."""
    data = blobs(50)
    with open_store(tmp_path / "s") as db:
        locations = [db.put(blob) for blob in data]
        path = locations[0].file_path
        assert listed_bytes(path) < locations[-1].end_offset
    assert listed_bytes(path) == locations[-1].end_offset
    assert seekable_read(path) == b"".join(data)
    with open_store(tmp_path / "s") as db:
        assert all(db.get(location) == blob for location, blob in zip(locations, data))
        assert db.verify().ok


def test_an_append_after_puts_of_another_writer_lists_their_frames_too(tmp_path: Path) -> None:
    """Two writers take turns: a put_many of one lists the other's frames, which it learns from
    the index (its own record of the frames has fallen behind)."""
    first, second = open_store(tmp_path / "s"), open_store(tmp_path / "s")
    try:
        data = blobs(40)
        locations: list[DataLocation] = []
        for i, blob in enumerate(data):
            locations.append((first if i % 2 else second).put(blob))
        batch = blobs(3, seed=9)
        locations += first.put_many(batch)
        path = locations[0].file_path
        assert listed_bytes(path) == locations[-1].end_offset
        assert seekable_read(path) == b"".join(data + batch)
        locations.append(second.put(b"after"))
        second.sync()
        assert seekable_read(path) == b"".join([*data, *batch, b"after"])
    finally:
        first.close()
        second.close()


def test_a_full_disk_during_the_table_update_keeps_the_put_and_the_old_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC when the table grows (torn after 12 bytes): the put that brought it up to date
    returns its location, the old table is back (a valid file of fewer frames), sync() raises
    the error, and once there is room again sync() lists every frame."""
    monkeypatch.setattr(write_maps_module, "UNLISTED_FRAMES_MAX", 10)
    real = pwrite_all_of_fileio
    full = [False]

    def pwrite_all(fd: int, data: bytes, offset: int) -> None:
        if full[0] and offset + len(data) > os.fstat(fd).st_size:  # the disk has no block for more
            real(fd, bytes(data)[:12], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(seekable_module, "pwrite_all", pwrite_all)
    db = open_store(tmp_path / "s")
    full[0] = True
    try:
        data = blobs(10)
        locations = [db.put(blob) for blob in data]
        path = locations[0].file_path
        assert listed_bytes(path) == 0 and seekable_read(path) == b""
        raw = Path(path).read_bytes()
        assert struct.unpack_from("<I", raw, len(raw) - 4)[0] == 0x8F92EAB1  # the footer is back at the end
        with pytest.raises(OSError) as raised:
            db.sync()
        assert raised.value.errno == errno.ENOSPC
        assert all(db.get(location) == blob for location, blob in zip(locations, data))
        full[0] = False
        db.sync()
        assert seekable_read(path) == b"".join(data)
        assert db.verify().ok
    finally:
        full[0] = False
        db.close()


def test_an_open_beside_a_writer_whose_table_lags_trusts_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A second instance opening the store while the first's puts left the table behind (it is
    still open, or was killed before its close) takes the clean page as it is: no recovery of the
    newest segment, no table rewritten and logged as a repair; both go on putting."""
    calls: list[int] = []
    real = recover_segment  # what writer_recovery imports

    def spy(dir_fd: int, number: int, *args: Any) -> Any:
        calls.append(number)
        return real(dir_fd, number, *args)

    data = blobs(30)
    first = open_store(tmp_path / "s")
    try:
        locations = [first.put(blob) for blob in data[:20]]
        assert listed_bytes(locations[0].file_path) < locations[-1].end_offset  # the table lags
        monkeypatch.setattr(writer_recovery_module, "recover_segment", spy)
        with caplog.at_level(logging.WARNING, logger="conduit_flat_file_db"):
            with open_store(tmp_path / "s") as second:
                locations += [second.put(blob) for blob in data[20:25]]
        assert not calls
        assert "rewrote the seek table" not in caplog.text
        locations += [first.put(blob) for blob in data[25:]]
        assert all(first.get(location) == blob for location, blob in zip(locations, data))
        assert first.verify().ok
    finally:
        first.close()
    assert seekable_read(locations[0].file_path) == b"".join(data)


def test_a_sync_whose_table_update_meets_a_full_disk_still_makes_the_puts_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seek table is not what makes a blob durable (recovery lays it out from the index):
    when sync() cannot grow the table (ENOSPC), it still fdatasyncs the data and the index and
    records the durable end before it raises the error, as sync() did on a full disk before the
    table could lag."""
    real = pwrite_all_of_fileio

    def pwrite_all(fd: int, data: bytes, offset: int) -> None:
        if offset + len(data) > os.fstat(fd).st_size:  # the disk has no block for more
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    db = open_store(tmp_path / "s")
    try:
        locations = [db.put(blob) for blob in blobs(10)]
        monkeypatch.setattr(seekable_module, "pwrite_all", pwrite_all)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        with pytest.raises(OSError) as raised:
            db.sync()
        assert raised.value.errno == errno.ENOSPC
        assert len(synced) == 2  # the data file and the index
        page = (tmp_path / "s" / STATE_FILE_NAME).read_bytes()
        assert struct.unpack_from("<Q", page, 8 * W_DURABLE_END)[0] == locations[-1].end_offset
    finally:
        monkeypatch.undo()
        db.close()
