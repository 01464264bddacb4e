"""Small puts through shared maps of the raw mutable segment, and the zero room behind them:
no syscall per put, room cut by sealing, kept by recovery only while it is all zeros,
maps dropped when another writer cut a file, and the pwrite path wherever maps cannot work."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

import conduit_flat_file_db.blocks as blocks_module
import conduit_flat_file_db.write_maps as write_maps_module
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.blocks import maps_supported
from conduit_flat_file_db.index import HEADER_BYTES, REC_BLOB, REC_SEAL, RECORD_BYTES, decode_records, encode_seal
from conduit_flat_file_db.naming import STATE_FILE_NAME
from conduit_flat_file_db.segment import ROOM_CHECK_MAX_BYTES
from conduit_flat_file_db.state import W_DIRTY, W_END, W_INDEX_BYTES
from conduit_flat_file_db.write_maps import MAPPED_PUT_MAX_BYTES

StoreFactory = Callable[..., FlatFileDb]


def _maps_in_temp_dir() -> bool:
    fd = os.open(tempfile.gettempdir(), os.O_RDONLY)
    try:
        return maps_supported(fd)
    finally:
        os.close(fd)


needs_maps = pytest.mark.skipif(
    not _maps_in_temp_dir(), reason="write maps need Linux on x86 and a filesystem that overwrites in place"
)
REPO = Path(__file__).resolve().parents[2]


def files(db: FlatFileDb, number: int = 0) -> tuple[bytes, bytes]:
    """The raw data file and index file of a segment."""
    return ((db.datadir / f"data_{number:08d}.dat").read_bytes(), (db.datadir / f"data_{number:08d}.idx").read_bytes())


def blobs_of(count: int, size: int = 1000) -> list[bytes]:
    """Distinct non-zero blobs."""
    return [bytes([1 + i % 250]) * size for i in range(count)]


def count_pwrites(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now until ``monkeypatch.undo()``, the offset of every ``os.pwrite`` goes in the list returned."""
    calls: list[int] = []
    real = os.pwrite

    def counting(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", counting)
    return calls


@needs_maps
def test_small_puts_make_no_write_syscalls_and_leave_a_zero_room(
    store: FlatFileDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first put made room, a small put writes nothing with pwrite: its bytes and its
    record are stored through the maps. The files hold the committed bytes, then zeros."""
    items = blobs_of(200)
    store.put(items[0])
    calls = count_pwrites(monkeypatch)
    locations = [store.put(item) for item in items[1:]]
    monkeypatch.undo()
    assert not calls
    assert [store.get(location) for location in locations] == items[1:]
    data, index = files(store)
    end = store._words[W_END]  # pylint: disable=protected-access  # the committed end, from the state page
    assert end == sum(map(len, items))
    assert data[:end] == b"".join(items)
    assert len(data) > end and not data[end:].strip(b"\0")  # the room: zeros only
    committed = store._words[W_INDEX_BYTES]  # pylint: disable=protected-access
    assert committed == HEADER_BYTES + len(items) * RECORD_BYTES
    scan = decode_records(index[HEADER_BYTES:committed])
    assert scan.problem is None and [r.rtype for r in scan.records] == [REC_BLOB] * len(items)
    assert len(index) > committed and not index[committed:].strip(b"\0")


@needs_maps
def test_seal_cuts_the_room_and_reopen_keeps_it_quietly(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Sealing leaves each file exactly its committed size; reopening a store whose mutable
    segment has room logs nothing and keeps the room (it is not a torn tail)."""
    db = make_store()
    items = blobs_of(50)
    for item in items:
        db.put(item)
    db.rotate()
    data, index = files(db, 0)
    assert data == b"".join(items)
    assert len(index) == HEADER_BYTES + (len(items) + 1) * RECORD_BYTES
    assert decode_records(index[HEADER_BYTES:]).records[-1].rtype == REC_SEAL
    location = db.put(b"room" * 100)
    size_before = len(files(db, 1)[0])
    db.close()
    with caplog.at_level(logging.INFO, logger="conduit_flat_file_db"):
        again = make_store()
        assert again.get(location) == b"room" * 100
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(files(again, 1)[0]) == size_before > 400


@needs_maps
def test_reopen_cuts_a_room_holding_anything_but_zeros(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes a dead writer stored past the committed end are a torn tail: cut and logged."""
    db = make_store()
    location = db.put(b"kept" * 10)
    db.close()
    path = db.datadir / "data_00000000.dat"
    with open(path, "r+b") as handle:
        handle.seek(location.end_offset + 100)
        handle.write(b"torn")
    died_mid_operation(db.datadir)
    with caplog.at_level(logging.WARNING, logger="conduit_flat_file_db"):
        again = make_store()
    assert path.stat().st_size == location.end_offset
    assert any("uncommitted bytes" in r.getMessage() for r in caplog.records)
    assert again.get(location) == b"kept" * 10
    assert again.get(again.put(b"next")) == b"next"


@needs_maps
def test_a_zero_tail_longer_than_any_room_is_cut(make_store: StoreFactory) -> None:
    """Only a tail short enough to be a writer's room is kept."""
    db = make_store()
    location = db.put(b"x" * 10)
    db.close()
    path = db.datadir / "data_00000000.dat"
    os.truncate(path, location.end_offset + ROOM_CHECK_MAX_BYTES + 1)
    died_mid_operation(db.datadir)
    make_store()
    assert path.stat().st_size == location.end_offset


@needs_maps
def test_seal_record_followed_by_room_is_cut_on_recovery(make_store: StoreFactory) -> None:
    """A writer killed between writing the SEAL record and cutting the index leaves the SEAL
    followed by zero room: recovery cuts it, since a sealed index ends with its SEAL."""
    db = make_store()
    items = blobs_of(5)
    for item in items:
        db.put(item)
    words = db._words  # pylint: disable=protected-access
    end, index_bytes = words[W_END], words[W_INDEX_BYTES]
    db.close()
    index_path = db.datadir / "data_00000000.idx"
    assert index_path.stat().st_size > index_bytes  # the room is there
    with open(index_path, "r+b") as handle:
        handle.seek(index_bytes)
        handle.write(encode_seal(end, len(items), end))
    os.truncate(db.datadir / "data_00000000.dat", end)
    died_mid_operation(db.datadir)
    again = make_store()
    assert again.mutable_segment() == 1
    assert index_path.stat().st_size == index_bytes + RECORD_BYTES
    assert [again.get(location) for location in again.iter_locations()] == items


def died_mid_operation(datadir: Path) -> None:
    """Raise the state page's dirty word, as a writer killed inside a put or a rotation leaves it
    (an open that finds it down takes the page of this boot as the committed state)."""
    with open(datadir / STATE_FILE_NAME, "r+b") as handle, mmap.mmap(handle.fileno(), 4096) as page:
        struct.pack_into("<Q", page, 8 * W_DIRTY, 1)


_CUT_UNDER_A_MAP = """
import sys
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.state import W_DIRTY, W_END

datadir, lock = sys.argv[1], sys.argv[2]
first = FlatFileDb(datadir, lock)
second = FlatFileDb(datadir, lock, fsync=True)  # writes with pwrite: makes no room after the cut
kept = [first.put(bytes([65 + i % 26]) * 1000) for i in range(100)]  # first maps its room
end = first._words[W_END]
with open(first.segment_path(0), "r+b") as handle:  # a writer died mid-put: torn bytes, dirty flag
    handle.seek(end)
    handle.write(b"torn" * 10)
first._words[W_DIRTY] = 1
kept.append(second.put(b"s" * 1000))  # recovery cuts the data file back to its committed end
size_after_cut = __import__("os").path.getsize(first.segment_path(0))
more = [first.put(bytes([97 + i % 26]) * 1000) for i in range(3000)]  # past the cut: must map afresh
for i, location in enumerate(kept[:100]):
    assert first.get(location) == bytes([65 + i % 26]) * 1000
assert second.get(kept[100]) == b"s" * 1000
for i, location in enumerate(more):
    assert second.get(location) == bytes([97 + i % 26]) * 1000
assert first.verify().ok
# An earlier release's recovery cuts the room and publishes the state page, and nothing else:
end = first._words[W_END]
__import__("os").truncate(first.segment_path(0), end)
second._state.publish(second._state.read_mutable())
later = [first.put(bytes([48 + i % 10]) * 1000) for i in range(3000)]
for i, location in enumerate(later):
    assert second.get(location) == bytes([48 + i % 10]) * 1000
assert first.verify().ok
print("cut", kept[100].end_offset, size_after_cut)
"""


@needs_maps
def test_writer_maps_afresh_after_another_writer_cut_the_file(tmp_path: Path) -> None:
    """A writer whose maps reach past a file cut by another writer's recovery (of this release,
    or of an earlier one, which publishes the state page and nothing more) must not store
    through them (a store past the end of a file kills the process with SIGBUS): the state
    page's seq word tells it to map afresh. Run in a child so that a SIGBUS fails only this test."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_CUT_UNDER_A_MAP),
            str(tmp_path / "store"),
            str(tmp_path / "store.lock"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    _, committed, size = result.stdout.split()
    assert int(size) == int(committed)  # the recovery really cut the room under the first writer's map


@needs_maps
@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EOPNOTSUPP])
def test_room_that_cannot_be_allocated_falls_back_to_pwrite(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, failure: int
) -> None:
    """No room, no maps: puts are written with pwrite, whole and readable. A full disk is
    retried at the next put (it may have space again); a filesystem that cannot allocate
    turns maps off for that writer."""
    tries: list[int] = []

    def refuse(_fd: int, _offset: int, length: int) -> int:
        tries.append(length)
        return failure

    monkeypatch.setattr(write_maps_module, "allocate", refuse)
    db = make_store()
    items = blobs_of(20)
    locations = [db.put(item) for item in items]
    assert [db.get(location) for location in locations] == items
    data, _ = files(db)
    assert data == b"".join(items)  # no room: nothing past the committed end
    assert len(tries) == (len(items) if failure == errno.ENOSPC else 1)
    assert db._writer.map_limit == (MAPPED_PUT_MAX_BYTES if failure == errno.ENOSPC else -1)  # pylint: disable=protected-access


@pytest.mark.parametrize("how", ["fsync", "big"])
def test_fsync_stores_and_big_blobs_use_pwrite(make_store: StoreFactory, how: str) -> None:
    """fsync=True stores never map (their fdatasync covers what pwrite wrote); blobs larger
    than MAPPED_PUT_MAX_BYTES are written with pwrite, into the room when there is one."""
    db = make_store(fsync=True) if how == "fsync" else make_store()
    if how == "fsync":
        assert db._writer.map_limit == -1  # pylint: disable=protected-access
        items = blobs_of(10)
    else:
        items = [b"a" * 10, b"b" * (MAPPED_PUT_MAX_BYTES + 1), b"c" * 10, b"d" * (MAPPED_PUT_MAX_BYTES + 7)]
    locations = [db.put(item) for item in items]
    assert [db.get(location) for location in locations] == items
    data, _ = files(db)
    end = sum(map(len, items))
    assert data[:end] == b"".join(items)
    if how == "fsync":
        assert len(data) == end
    assert not data[end:].strip(b"\0")


@needs_maps
def test_maps_drop_on_close_and_rotation(make_store: StoreFactory) -> None:
    """A writer maps only the mutable segment, and holds no map once closed."""
    db = make_store()
    db.MAX_DAT_FILE_SIZE = 10_000
    for item in blobs_of(40, 700):
        db.put(item)
    assert db.mutable_segment() == 2
    writer = db._writer  # pylint: disable=protected-access
    assert writer.segment == db.mutable_segment()
    assert writer._data_base <= db._words[W_END] <= writer._data_mapped  # pylint: disable=protected-access
    ends: dict[int, int] = {}
    for record in db.iter_records():
        ends[record.segment] = record.end_offset
    for number in range(db.mutable_segment()):
        data, index = files(db, number)
        assert len(data) == ends[number] >= 10_000  # sealed: exactly the committed bytes, no room
        assert decode_records(index[HEADER_BYTES:]).problem is None
    db.close()
    assert writer._data_mapped == writer._index_mapped == 0  # pylint: disable=protected-access


@needs_maps
def test_room_found_as_a_hole_is_allocated_before_use(make_store: StoreFactory) -> None:
    """Room on disk may be a hole (a sparse copy of the datadir): a writer allocates it before
    mapping it, so that a full disk is an error and not a SIGBUS."""
    db = make_store()
    location = db.put(b"first")
    db.close()
    path = db.datadir / "data_00000000.dat"
    os.truncate(path, location.end_offset)
    os.truncate(path, location.end_offset + 512 * 1024)  # a zero tail that occupies no block
    assert path.stat().st_blocks * 512 < 64 * 1024
    again = make_store()
    assert path.stat().st_size == location.end_offset + 512 * 1024  # kept as room by recovery
    assert again.get(again.put(b"second")) == b"second"
    assert path.stat().st_blocks * 512 >= 512 * 1024  # the room is allocated now


@needs_maps
def test_an_empty_put_at_a_page_boundary_keeps_the_maps(store: FlatFileDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put of zero bytes needing room at a page-aligned end still gets a (non-empty) map."""
    store.put_many([b"p" * 4096])  # pwrite path: no room yet, the end is page aligned
    empty = store.put(b"")
    assert store.get(empty) == b"" and empty.start_offset == 4096
    assert store._writer.map_limit == MAPPED_PUT_MAX_BYTES  # pylint: disable=protected-access
    calls = count_pwrites(monkeypatch)
    locations = [store.put(b"q" * 100) for _ in range(10)]
    monkeypatch.undo()
    assert not calls
    assert [store.get(location) for location in locations] == [b"q" * 100] * 10


@needs_maps
def test_copy_on_write_filesystems_get_no_maps(make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """On btrfs, bcachefs or ZFS an overwrite needs new blocks, so allocating room cannot keep a
    full disk from killing a writer that stores through a map: puts use pwrite there."""
    monkeypatch.setattr(blocks_module, "filesystem_type", lambda _fd: 0x9123683E)  # btrfs
    db = make_store()
    assert db._writer.map_limit == -1  # pylint: disable=protected-access
    items = blobs_of(5)
    locations = [db.put(item) for item in items]
    assert [db.get(location) for location in locations] == items
    assert files(db)[0] == b"".join(items)  # no room
