"""Round trips under random shapes: blob sizes, put vs put_many batches, manual rotations,
tiny MAX_DAT_FILE_SIZE values, random slices; then the same checks after a reopen."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice

Op = tuple[str, int | list[int] | None]

SIZES = st.integers(min_value=0, max_value=64)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), SIZES),
        st.tuples(st.just("many"), st.lists(SIZES, max_size=8)),
        st.tuples(st.just("rotate"), st.none()),
    ),
    min_size=1,
    max_size=20,
)
# Small enough that most examples rotate, large enough that they do not rotate on every blob.
MAX_SIZES = st.integers(min_value=1, max_value=256)


@pytest.fixture(name="lock_path", scope="module")
def fixture_lock_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One lock file for every example (the lock registry keeps each lock file open).

    Examples run in memory (/dev/shm) where there is one: they test logic, not durability,
    and every rotation costs several fsyncs on a disk.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="ffdb-roundtrip-") as tmp:
            yield Path(tmp) / "roundtrip.lock"
    else:
        yield tmp_path_factory.mktemp("roundtrip") / "roundtrip.lock"


def content(index: int, size: int) -> bytes:
    """Blob number ``index``: deterministic, different for every index."""
    return random.Random(index).randbytes(size)


def run_ops(store: FlatFileDb, ops: list[Op]) -> tuple[list[DataLocation], list[bytes]]:
    """Apply the operations; return every location in put order and the bytes put there."""
    locations: list[DataLocation] = []
    datas: list[bytes] = []
    for op in ops:
        if op[0] == "put":
            assert isinstance(op[1], int)
            data = content(len(datas), op[1])
            datas.append(data)
            locations.append(store.put(data))
        elif op[0] == "many":
            assert isinstance(op[1], list)
            batch = [content(len(datas) + i, size) for i, size in enumerate(op[1])]
            datas.extend(batch)
            got = store.put_many(batch)
            assert len(got) == len(batch)
            locations.extend(got)
        else:
            store.rotate()
    return locations, datas


def check_layout(locations: list[DataLocation], datas: list[bytes], max_size: int) -> None:
    """Blobs are back to back in disk order; a blob starts a new segment only when it must."""
    previous: DataLocation | None = None
    for loc, data in zip(locations, datas):
        assert loc.end_offset - loc.start_offset == len(data)
        assert loc.start_offset == 0 or loc.start_offset < max_size
        if previous is not None:
            if Path(loc.file_path) == Path(previous.file_path):
                assert loc.start_offset == previous.end_offset
            else:
                assert loc.start_offset == 0
                assert Path(loc.file_path).name > Path(previous.file_path).name
        previous = loc


def check_reads(
    store: FlatFileDb, locations: list[DataLocation], datas: list[bytes], slices: list[tuple[int, int]]
) -> None:
    """Every blob reads back whole and through its slice."""
    for loc, data, (start, end) in zip(locations, datas, slices):
        assert store.get(loc) == data
        assert store.get(loc, Slice(0, 0)) == data
        assert store.get(loc, Slice(start, end)) == (data[start:end] if end else data[start:])


def draw_slices(data: st.DataObject, datas: list[bytes]) -> list[tuple[int, int]]:
    """One random Slice per blob: (start, 0) means "to the end"."""
    slices = []
    for blob in datas:
        start = data.draw(st.integers(0, len(blob)), label="slice start")
        end = data.draw(st.just(0) | st.integers(start, len(blob)), label="slice end")
        slices.append((start, end))
    return slices


@given(ops=OPS, max_size=MAX_SIZES, data=st.data())
def test_round_trip(lock_path: Path, ops: list[Op], max_size: int, data: st.DataObject) -> None:
    """Every get returns the bytes put, before and after a reopen; the store verifies clean."""
    with tempfile.TemporaryDirectory(dir=lock_path.parent) as tmp:
        datadir = Path(tmp) / "store"
        store = FlatFileDb(datadir, lock_path)
        try:
            store.MAX_DAT_FILE_SIZE = max_size
            locations, datas = run_ops(store, ops)
            slices = draw_slices(data, datas)
            check_layout(locations, datas, max_size)
            check_reads(store, locations, datas, slices)
            assert list(store.iter_locations()) == locations
            report = store.verify()
            assert report.ok, str(report)
            assert report.blobs == len(datas)
            assert report.bytes_checked == sum(len(d) for d in datas)
        finally:
            store.close()

        reopened = FlatFileDb(datadir, lock_path)
        try:
            reopened.MAX_DAT_FILE_SIZE = max_size
            check_reads(reopened, locations, datas, slices)
            assert list(reopened.iter_locations()) == locations
            more = reopened.put(b"after reopen")
            assert reopened.get(more) == b"after reopen"
            if locations and more.file_path == locations[-1].file_path:
                assert more.start_offset == locations[-1].end_offset
            check_reads(reopened, locations, datas, slices)
            report = reopened.verify()
            assert report.ok, str(report)
        finally:
            reopened.close()


@given(sizes=st.lists(SIZES, max_size=30), max_size=MAX_SIZES)
def test_put_many_matches_single_puts(lock_path: Path, sizes: list[int], max_size: int) -> None:
    """One batch lays blobs out exactly as the same puts one by one."""
    with tempfile.TemporaryDirectory(dir=lock_path.parent) as tmp:
        one = FlatFileDb(Path(tmp) / "one", lock_path)
        many = FlatFileDb(Path(tmp) / "many", lock_path)
        try:
            one.MAX_DAT_FILE_SIZE = many.MAX_DAT_FILE_SIZE = max_size
            datas = [content(i, n) for i, n in enumerate(sizes)]
            singles = [one.put(d) for d in datas]
            batch = many.put_many(datas)
            assert [(Path(l.file_path).name, l.start_offset, l.end_offset) for l in singles] == [
                (Path(l.file_path).name, l.start_offset, l.end_offset) for l in batch
            ]
            assert [many.get(loc) for loc in batch] == datas
            assert one.segments() == many.segments()
            assert one.verify().ok and many.verify().ok
        finally:
            one.close()
            many.close()
