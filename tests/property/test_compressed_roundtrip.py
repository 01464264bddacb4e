"""A compressed store and a raw store fed the same random operations serve the same bytes.

Blob sizes up to 200 KiB (compressible and random content), put vs put_many, small frames,
small MAX_DAT_FILE_SIZE values (so segments rotate and sealed compressed segments are
re-framed), random slices; the same checks after reopening both; and one datadir whose
store switches use_compression between reopenings (raw, compressed, raw).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice

KIB = 1024
Blob = tuple[int, bool]  # (size, compressible)
Op = tuple[str, list[Blob]]  # ("put", [one blob]) | ("many", [blobs]) | ("rotate", [])

SIZES = st.one_of(
    st.integers(0, 300),
    st.builds(lambda kib, extra: min(kib * KIB + extra, 200 * KIB), st.integers(0, 200), st.integers(0, KIB - 1)),
    st.sampled_from([0, 1, 4095, 4096, 4097, 200 * KIB]),
)
BLOBS = st.tuples(SIZES, st.booleans())
OPS: st.SearchStrategy[list[Op]] = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(BLOBS, min_size=1, max_size=1)),
        st.tuples(st.just("many"), st.lists(BLOBS, max_size=5)),
        st.tuples(st.just("rotate"), st.just([])),
    ),
    min_size=1,
    max_size=8,
)
FRAME_BYTES = st.one_of(st.sampled_from([1 * KIB, 4 * KIB, 64 * KIB]), st.integers(1 * KIB, 64 * KIB))
MAX_SIZES = st.integers(16 * KIB, 512 * KIB)
ROUND_TRIP_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(name="workdir", scope="module")
def fixture_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where examples put their datadirs and the module's lock files: in memory (/dev/shm)
    where there is one; these examples test logic, and every rotation costs fsyncs on a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="ffdb-zst-roundtrip-") as tmp:
            yield Path(tmp)
    else:
        yield tmp_path_factory.mktemp("zst-roundtrip")


def blob_bytes(index: int, size: int, compressible: bool) -> bytes:
    """Blob number ``index``: random bytes, or a short random pattern repeated."""
    rng = random.Random(index * 7 + compressible)
    if not compressible:
        return rng.randbytes(size)
    pattern = rng.randbytes(rng.choice([1, 13, 200]))
    return (pattern * (size // len(pattern) + 1))[:size]


def segment_number(location: DataLocation) -> int:
    """The segment a location names (data_NNNNNNNN.dat[.zst])."""
    return int(Path(location.file_path).name[5:].split(".")[0])


def apply(store: FlatFileDb, ops: list[Op], first_index: int) -> tuple[list[DataLocation], list[bytes]]:
    """Run the operations; returns the locations and bytes of every blob put, in order."""
    locations: list[DataLocation] = []
    datas: list[bytes] = []
    for kind, blobs in ops:
        batch = [blob_bytes(first_index + len(datas) + i, size, c) for i, (size, c) in enumerate(blobs)]
        if kind == "put":
            locations.append(store.put(batch[0]))
        elif kind == "many":
            got = store.put_many(batch)
            assert len(got) == len(batch)
            locations.extend(got)
        else:
            store.rotate()
        datas.extend(batch)
    return locations, datas


def draw_slices(data: st.DataObject, datas: list[bytes]) -> list[tuple[int, int]]:
    """Two random slices per blob; an end of 0 means "to the end of the blob"."""
    slices = []
    for blob in datas:
        for _ in range(2):
            start = data.draw(st.integers(0, len(blob)), label="slice start")
            end = data.draw(st.just(0) | st.integers(start, len(blob)), label="slice end")
            slices.append((start, end))
    return slices


def check(
    stores: list[FlatFileDb], locations: list[list[DataLocation]], datas: list[bytes], slices: list[tuple[int, int]]
) -> None:
    """Every store returns every blob whole and through its slices; the stores agree."""
    for number, blob in enumerate(datas):
        for store, locs in zip(stores, locations):
            location = locs[number]
            assert store.get(location) == blob, location
            for start, end in slices[2 * number : 2 * number + 2]:
                want = blob[start:end] if end else blob[start:]
                assert store.get(location, Slice(start, end)) == want, (location, start, end)


def open_pair(
    workdir: Path, tmp: Path, *, frame_bytes: int, cache: int, threads: int, reframe: bool, max_size: int
) -> tuple[FlatFileDb, FlatFileDb]:
    """A raw store and a compressed store in ``tmp``."""
    raw = FlatFileDb(tmp / "raw", workdir / "raw.lock")
    zst = FlatFileDb(
        tmp / "zst",
        workdir / "zst.lock",
        use_compression=True,
        frame_bytes=frame_bytes,
        frame_cache_bytes=cache,
        compression_threads=threads,
        reframe_on_seal=reframe,
    )
    raw.MAX_DAT_FILE_SIZE = zst.MAX_DAT_FILE_SIZE = max_size
    return raw, zst


def verified_close(*stores: FlatFileDb) -> None:
    """verify() is clean for every store; then close them."""
    try:
        for store in stores:
            report = store.verify()
            assert report.ok, str(report)
    finally:
        for store in stores:
            store.close()


@pytest.mark.timeout(120)
@ROUND_TRIP_SETTINGS
@given(
    ops=OPS,
    frame_bytes=FRAME_BYTES,
    max_size=MAX_SIZES,
    cache=st.sampled_from([0, 256 * KIB, 8 * 2**20]),
    threads=st.integers(1, 2),
    reframe=st.booleans(),
    data=st.data(),
)
def test_compressed_store_serves_what_a_raw_store_serves(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    workdir: Path,
    ops: list[Op],
    frame_bytes: int,
    max_size: int,
    cache: int,
    threads: int,
    reframe: bool,
    data: st.DataObject,
) -> None:
    """Same operations, same locations (offsets in uncompressed bytes), same bytes, before and
    after reopening both stores."""
    with tempfile.TemporaryDirectory(dir=workdir) as name:
        tmp = Path(name)
        raw, zst = open_pair(
            workdir, tmp, frame_bytes=frame_bytes, cache=cache, threads=threads, reframe=reframe, max_size=max_size
        )
        try:
            raw_locations, datas = apply(raw, ops, 0)
            zst_locations, zst_datas = apply(zst, ops, 0)
            assert zst_datas == datas
            assert [(segment_number(loc), loc.start_offset, loc.end_offset) for loc in zst_locations] == [
                (segment_number(loc), loc.start_offset, loc.end_offset) for loc in raw_locations
            ]
            assert all(loc.file_path.endswith(".dat.zst") for loc in zst_locations)
            segments = len({segment_number(loc) for loc in zst_locations})
            target(float(segments), label="segments written")
            event(f"segments: {min(segments, 4)}{'+' if segments >= 4 else ''}")
            event(f"blobs over 64 KiB: {min(sum(len(d) > 64 * KIB for d in datas), 3)}")
            event(f"bytes: {'>1 MiB' if sum(map(len, datas)) > 2**20 else '<=1 MiB'}")
            slices = draw_slices(data, datas)
            check([raw, zst], [raw_locations, zst_locations], datas, slices)
        finally:
            verified_close(raw, zst)

        raw, zst = open_pair(
            workdir, tmp, frame_bytes=frame_bytes, cache=cache, threads=threads, reframe=reframe, max_size=max_size
        )
        try:
            check([raw, zst], [raw_locations, zst_locations], datas, slices)
            extra = blob_bytes(10**6, 5000, True)
            raw_more, zst_more = raw.put(extra), zst.put(extra)
            assert (segment_number(raw_more), raw_more.start_offset) == (
                segment_number(zst_more),
                zst_more.start_offset,
            )
            assert raw.get(raw_more) == zst.get(zst_more) == extra
            check([raw, zst], [raw_locations, zst_locations], datas, slices)
            assert list(zst.iter_locations()) == zst_locations + [zst_more]
        finally:
            verified_close(raw, zst)


@pytest.mark.timeout(120)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phases=st.lists(OPS, min_size=3, max_size=3), frame_bytes=FRAME_BYTES, max_size=MAX_SIZES, data=st.data())
def test_switching_use_compression_between_reopenings(
    workdir: Path, phases: list[list[Op]], frame_bytes: int, max_size: int, data: st.DataObject
) -> None:
    """raw -> compressed -> raw on one datadir: every blob of every phase reads back after each
    reopening, whole and in slices; the store verifies clean throughout."""
    with tempfile.TemporaryDirectory(dir=workdir) as name:
        datadir = Path(name) / "store"
        locations: list[DataLocation] = []
        datas: list[bytes] = []
        slices: list[tuple[int, int]] = []
        for phase, (ops, compressed) in enumerate(zip(phases, (False, True, False))):
            store = FlatFileDb(datadir, workdir / "switch.lock", use_compression=compressed, frame_bytes=frame_bytes)
            try:
                store.MAX_DAT_FILE_SIZE = max_size
                check([store], [locations], datas, slices)
                new_locations, new_datas = apply(store, ops, 1000 * phase)
                locations += new_locations
                datas += new_datas
                slices += draw_slices(data, new_datas)
                check([store], [locations], datas, slices)
                store.rotate()
                check([store], [locations], datas, slices)
            finally:
                verified_close(store)
        final = FlatFileDb(datadir, workdir / "switch.lock", use_compression=True, frame_bytes=frame_bytes)
        try:
            check([final], [locations], datas, slices)
            assert list(final.iter_locations()) == [
                DataLocation(final.segment_path(segment_number(loc)), loc.start_offset, loc.end_offset)
                for loc in locations
            ]
        finally:
            verified_close(final)
