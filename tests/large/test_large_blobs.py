"""Blobs past 2 GiB and 4 GiB through every read and write path, raw and compressed.

Linux moves at most 0x7ffff000 bytes per read or write system call, and 32-bit fields
overflow at 4 GiB: blobs of ``JUST_PAST_2_GIB`` and ``JUST_PAST_4_GIB`` bytes cross
both. Their bytes are a pattern that costs little to make and tells every 4 KiB page
apart (each starts with its own offset), so a byte read from the wrong place shows;
whole blobs are compared chunk by chunk, never copied for the comparison.

Budget (CI: 2 cores, about 6 minutes, at most about 16 GiB of memory): one 4 GiB
source buffer per module, the blob just past 2 GiB being its prefix. One store per
mode holding both blobs in one segment (the 4 GiB one from segment offset 2 GiB to
6 GiB) is shared by the read tests (module fixture: raw first, then compressed, so
only one is on disk at a time). Write paths that take their input in pieces
(streams, adoption, the command line) are run with the 4 GiB blob only: its size and
its offsets cross 2**31 as well. Compressed stores use 1 MiB frames: 4096 frames per
4 GiB still take the many-frame paths, at a quarter of the time of 16 KiB frames.
Everything big lives under tmp_path and is removed as soon as it is not needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pytest
import xxhash

from conduit_flat_file_db import DataLocation, FlatFileDb, InvalidLocationError, KeyedStore, Slice
from conduit_flat_file_db.fileio import pread_at
from conduit_flat_file_db.frames import SKIPPABLE_HEADER_BYTES
from conduit_flat_file_db.index import blob_checksum
from conduit_flat_file_db.seekable import SeekableWriter, padding_header, parse_seek_table, write_padding_and_table
from conduit_flat_file_db.segment import PADDING_MIN_BYTES, padding_for

pytestmark = pytest.mark.large

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

JUST_PAST_2_GIB = 2**31 + 4099
JUST_PAST_4_GIB = 2**32 + 8191
SIZES = {"2gib": JUST_PAST_2_GIB, "4gib": JUST_PAST_4_GIB}
PAGE = 4096
COMPARE_CHUNK = 64 * 2**20
FRAME_BYTES = 2**20
STAMP_MIX = 0x9E3779B97F4A7C15
MODES = ["raw", "zstd"]
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def make_pattern(size: int, base: int = 0) -> bytearray:
    """``size`` bytes of the pattern from offset ``base`` (a multiple of 4 KiB): every 4 KiB page
    starts with its offset (u64) and that offset mixed (u64), the rest is zeros (so Zstandard
    compresses it fast). Any run of it is a prefix of one endless pattern."""
    buffer = bytearray(size)
    words = np.frombuffer(buffer, dtype="<u8", count=size // 8)
    offsets = np.arange(base, base + size - 15, PAGE, dtype="<u8")
    words[0 :: PAGE // 8][: len(offsets)] = offsets
    words[1 :: PAGE // 8][: len(offsets)] = offsets ^ np.uint64(STAMP_MIX)
    return buffer


def pattern_bytes(start: int, end: int) -> bytes:
    """Bytes [start, end) of the pattern, computed on their own (not cut from a buffer): for
    short ranges (long ones are compared with the module's source buffer)."""
    first = start - start % PAGE
    return bytes(make_pattern(end - first + PAGE, first)[start - first : end - first])


def streamed_digest(data: Any, size: int) -> int:
    """XXH3-64 of ``data[:size]`` fed in 64 MiB pieces: independent of one-shot hashing of a buffer past 4 GiB."""
    hasher = xxhash.xxh3_64()
    view = memoryview(data)
    for pos in range(0, size, COMPARE_CHUNK):
        hasher.update(view[pos : min(size, pos + COMPARE_CHUNK)])
    return hasher.intdigest()


def assert_same(got: Any, want: Any, label: str) -> None:
    """Fail naming the first differing offset when ``got`` and ``want`` (bytes-like, maybe GiBs)
    differ. Chunks are compared by digest, so nothing big is copied, and a failure never
    makes pytest print a multi-GiB repr."""
    __tracebackhide__ = True  # pylint: disable=unused-variable  # pytest: report the caller's line
    got_view, want_view = memoryview(got).cast("B"), memoryview(want).cast("B")
    if len(got_view) != len(want_view):
        raise AssertionError(f"{label}: {len(got_view)} bytes, expected {len(want_view)}")
    for pos in range(0, len(want_view), COMPARE_CHUNK):
        a, b = got_view[pos : pos + COMPARE_CHUNK], want_view[pos : pos + COMPARE_CHUNK]
        if xxhash.xxh3_128_intdigest(a) != xxhash.xxh3_128_intdigest(b):
            diff = np.flatnonzero(np.frombuffer(a, dtype=np.uint8) != np.frombuffer(b, dtype=np.uint8))
            raise AssertionError(f"{label}: first difference at offset {pos + int(diff[0])}")


def boundary_slices(size: int) -> list[tuple[int, int]]:
    """Blob-relative ranges at the start, across 2**31 and 2**32, and at the very end."""
    ranges = [(0, PAGE + 3), (2**31 - 9, 2**31 + 9), (size - 1, size), (size - PAGE - 17, size), (size, size)]
    if size > 2**32:
        ranges.append((2**32 - 9, 2**32 + 9))
    return ranges


class Blob(NamedTuple):
    """A blob of the shared store: its location, size and digest."""

    location: DataLocation
    size: int
    digest: int


class Filled(NamedTuple):
    """The shared store of one mode: both big blobs between two small ones, sealed."""

    db: FlatFileDb
    mode: str
    blobs: dict[str, Blob]
    small: list[tuple[DataLocation, bytes]]
    lock: Path
    put_peak: int  # most memory Python allocated at once while the big blobs were put


class ViewReader(io.RawIOBase):
    """A readable over a buffer (``io.BytesIO`` would copy it first)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._view))
        target[:count] = self._view[:count]
        self._view = self._view[count:]
        return count


@pytest.fixture(scope="module", autouse=True)
def short_failure_reports(request: pytest.FixtureRequest) -> None:
    """Report failures of this module in the short style (source lines, no values), whatever ``--tb`` says.

    Long tracebacks print the repr of every argument of the test function and of the frame
    that raised: that of a 4 GiB bytes object is a 16 GiB string, and one failure would
    exhaust the machine's memory instead of naming the problem. (Asserts here never name a
    big object either: their explanations print values too.) Autouse and module-scoped, so
    it runs before the fixtures that make big objects; it covers setup failures as well.
    """
    for item in request.session.items:
        repr_failure_py = getattr(item, "_repr_failure_py", None)
        if getattr(item, "module", None) is sys.modules[__name__] and repr_failure_py is not None:
            setattr(item, "_repr_failure_py", _short(repr_failure_py))


def _short(repr_failure_py: Any) -> Any:
    return lambda excinfo, style=None: repr_failure_py(excinfo, style="short")


@pytest.fixture(scope="module")
def source() -> bytearray:
    """The pattern up to just past 4 GiB; the 2 GiB blob is its prefix."""
    return make_pattern(JUST_PAST_4_GIB)


@pytest.fixture(scope="module")
def digests(source: bytearray) -> dict[int, int]:
    """Streamed XXH3-64 of each blob size's prefix of ``source``."""
    return {size: streamed_digest(source, size) for size in SIZES.values()}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied after the test (pytest keeps old tmp_paths: not GiBs of them)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def open_store(where: Path, mode: str) -> FlatFileDb:
    """A store of ``mode`` whose mutable segment never fills (big blobs share one segment)."""
    db = FlatFileDb(where / "store", where / "store.lock", use_compression=mode == "zstd", frame_bytes=FRAME_BYTES)
    db.MAX_DAT_FILE_SIZE = 2**40
    return db


@pytest.fixture(scope="module", params=MODES)
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, source: bytearray, digests: dict[int, int]
) -> Iterator[Filled]:
    """A store of each mode: small, 2 GiB+, small, 4 GiB+, small, put one by one, then sealed:
    the 4 GiB blob lies at segment offsets from past 2 GiB to past 6 GiB."""
    mode: str = request.param
    where = tmp_path_factory.mktemp(f"filled-{mode}")
    db = open_store(where, mode)
    small = [(db.put(data), data) for data in (b"first", b"")]
    blobs = {}
    tracemalloc.start()
    try:
        for name, size in SIZES.items():
            blobs[name] = Blob(db.put(memoryview(source)[:size]), size, digests[size])
            small.append((db.put(name.encode()), name.encode()))
        put_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    db.rotate()
    yield Filled(db, mode, blobs, small, where / "store.lock", put_peak)
    db.close()
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory, source: bytearray) -> Iterator[Path]:
    """``source`` (just past 4 GiB) as a file, for streams, adoption and the command line."""
    where = tmp_path_factory.mktemp("source")
    path = where / "source.bin"
    with open(path, "wb") as out:
        out.write(source)
    yield path
    shutil.rmtree(where, ignore_errors=True)


def check_blob(db: FlatFileDb, location: DataLocation, size: int, digest: int) -> None:
    """What every write test checks: the length, the checksum the index recorded (computed
    over the whole buffer at once) against the streamed one, and bytes at every boundary."""
    assert location.end_offset - location.start_offset == size
    records = [
        r for r in db.iter_records() if r.end_offset == location.end_offset and r.start_offset == location.start_offset
    ]
    assert len(records) == 1
    assert records[0].checksum == digest
    for start, end in boundary_slices(size):
        assert_same(db.get(location, Slice(start, end)), pattern_bytes(start, end), f"slice {start}..{end}")


# -- reads: the shared store --------------------------------------------------------------


@pytest.mark.parametrize("which", SIZES)
def test_get_returns_every_byte_of_a_blob_past_the_syscall_limit(filled: Filled, source: bytearray, which: str) -> None:
    """One pread moves at most 0x7ffff000 bytes: get() reads on instead of taking the rest for a cut segment."""
    blob = filled.blobs[which]
    got = filled.db.get(blob.location)
    kind, digest = type(got), blob_checksum(got)  # never name `got` in an assert: pytest would print it
    assert kind is bytes
    assert_same(got, memoryview(source)[: blob.size], f"{filled.mode} get({which})")
    assert digest == blob.digest  # one-shot XXH3 over more than 4 GiB agrees with the streamed one


@pytest.mark.parametrize("which", SIZES)
def test_get_slices_at_2_and_4_gib_and_at_the_very_end(filled: Filled, source: bytearray, which: str) -> None:
    """Slices at the start, across 2**31 and 2**32, ending at the last byte, and one longer than a syscall."""
    blob = filled.blobs[which]
    for start, end in boundary_slices(blob.size):
        got = filled.db.get(blob.location, Slice(start, end))
        assert_same(got, pattern_bytes(start, end), f"{filled.mode} {which} slice {start}..{end}")
    # A slice longer than one syscall moves, starting and ending inside the blob.
    start, end = blob.size - 2**31 - 5, blob.size - 3
    assert_same(filled.db.get(blob.location, Slice(start, end)), memoryview(source)[start:end], "long slice")
    with pytest.raises(InvalidLocationError):
        filled.db.get(blob.location, Slice(0, blob.size + 1))


def test_put_of_a_big_buffer_makes_no_copy_of_it(filled: Filled) -> None:
    """put() writes (raw) or compresses (zstd) the caller's buffer in place: a copy of a 4 GiB
    blob would double the memory a put needs."""
    assert filled.put_peak < 256 * 2**20, f"{filled.mode}: put held {filled.put_peak} bytes at once"


def test_small_blobs_around_big_ones_read_back(filled: Filled) -> None:
    """Offsets past 6 GiB in one segment: the small blobs after the big ones keep their bytes."""
    for location, data in filled.small:
        assert filled.db.get(location) == data
    assert filled.db.get_many([location for location, _ in filled.small]) == [data for _, data in filled.small]


def test_get_many_reads_big_blobs_and_slices_in_the_callers_order(filled: Filled, source: bytearray) -> None:
    """A whole 2 GiB+ blob, tails and slices across 2**31 and 2**32, a small blob: in input order."""
    two, four = filled.blobs["2gib"], filled.blobs["4gib"]
    small_location, small_data = filled.small[0]
    wanted = [
        (four.location, Slice(four.size - 5, 0)),
        (two.location, Slice(2**31 - 7, 2**31 + 7)),
        (small_location, None),
        (four.location, Slice(2**32 - 7, 2**32 + 7)),
        (two.location, None),
        (two.location, Slice(two.size - 1, 0)),
    ]
    got = filled.db.get_many([location for location, _ in wanted], [part for _, part in wanted])
    assert got[2] == small_data
    assert_same(got[0], pattern_bytes(four.size - 5, four.size), "tail of 4 GiB+")
    assert_same(got[1], pattern_bytes(2**31 - 7, 2**31 + 7), "across 2 GiB")
    assert_same(got[3], pattern_bytes(2**32 - 7, 2**32 + 7), "across 4 GiB")
    assert_same(got[5], pattern_bytes(two.size - 1, two.size), "last byte of 2 GiB+")
    assert_same(got[4], memoryview(source)[: two.size], f"{filled.mode} get_many: whole 2 GiB+ blob")


def test_get_view_maps_a_raw_blob_past_4_gib_and_refuses_a_compressed_one(filled: Filled, source: bytearray) -> None:
    """A zero-copy view of every byte (raw); compressed segments have no bytes to map."""
    for which, blob in filled.blobs.items():
        if filled.mode == "zstd":
            with pytest.raises(InvalidLocationError):
                filled.db.get_view(blob.location)
            continue
        view = filled.db.get_view(blob.location)
        assert view.readonly and len(view) == blob.size
        assert_same(view, memoryview(source)[: blob.size], f"get_view({which})")
        end = filled.db.get_view(blob.location, Slice(blob.size - 7, 0))
        assert_same(end, pattern_bytes(blob.size - 7, blob.size), f"view of the end of {which}")


@pytest.mark.parametrize("which", SIZES)
def test_open_blob_seeks_and_reads_across_the_boundaries(filled: Filled, source: bytearray, which: str) -> None:
    """Seek and read at every boundary, readinto across 2 GiB, and one read() longer than a syscall."""
    blob = filled.blobs[which]
    with filled.db.open_blob(blob.location) as handle:
        assert handle.size == blob.size
        for start, end in boundary_slices(blob.size):
            assert handle.seek(start) == start
            assert_same(handle.read(end - start), pattern_bytes(start, end), f"open_blob {start}..{end}")
        handle.seek(-3, io.SEEK_END)
        assert_same(handle.read(), pattern_bytes(blob.size - 3, blob.size), "read to the end")
        assert handle.read(10) == b""
        buffer = bytearray(11)
        handle.seek(2**31 - 5)
        assert handle.readinto(buffer) == 11
        assert_same(buffer, pattern_bytes(2**31 - 5, 2**31 + 6), "readinto across 2 GiB")
        # One read() longer than a syscall moves: from just before 2 GiB to the end.
        start = blob.size - 2**31 - 4
        handle.seek(start)
        assert_same(handle.read(), memoryview(source)[start : blob.size], f"one long read of {which}")


def test_verify_checks_every_byte_of_segments_past_4_gib(filled: Filled) -> None:
    """verify() checksums the whole segment (raw: through its map; compressed: frame by frame)."""
    report = filled.db.verify()
    assert report.ok, str(report)
    assert report.blobs == len(filled.small) + len(filled.blobs)
    assert report.bytes_checked == sum(len(data) for _, data in filled.small) + sum(SIZES.values())
    quick = filled.db.verify(full=False)
    assert quick.ok, str(quick)


def _ffdb(filled: Filled, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "conduit_flat_file_db",
        "--datadir",
        str(filled.db.datadir),
        "--lock",
        str(filled.lock),
        "--no-progress",
        *args,
    ]
    return subprocess.Popen(command, **kwargs)  # pylint: disable=consider-using-with  # callers wait


def _piped_digest(filled: Filled, *args: str) -> tuple[int, int]:
    """(bytes, XXH3-64) of what ``ffdb get`` writes to a pipe; the command must succeed."""
    hasher = xxhash.xxh3_64()
    count = 0
    with _ffdb(filled, "get", *args, stdout=subprocess.PIPE, bufsize=0) as process:  # raw pipe: one read a call
        assert process.stdout is not None
        with contextlib.suppress(OSError):  # a larger pipe: fewer, larger reads (Linux; 64 KiB elsewhere)
            fcntl.fcntl(process.stdout.fileno(), F_SETPIPE_SZ, 2**20)
        while chunk := process.stdout.read(2**20):
            hasher.update(chunk)
            count += len(chunk)
    assert process.returncode == 0
    return count, hasher.intdigest()


def test_cli_get_streams_a_blob_past_4_gib_to_a_pipe(filled: Filled, source: bytearray) -> None:
    """``ffdb get`` writes every byte of a 4 GiB+ blob to a pipe; ``--slice`` longer than a syscall too."""
    blob = filled.blobs["4gib"]
    location = filled.db.pack_location(blob.location).hex()
    assert _piped_digest(filled, location) == (blob.size, blob.digest)
    start, end = 1, 2**31 + 2
    want = streamed_digest(memoryview(source)[start:end], end - start)
    assert _piped_digest(filled, location, "--slice", str(start), str(end)) == (end - start, want)


def test_cli_get_slice_to_a_file(filled: Filled, scratch: Path) -> None:
    """``ffdb get --slice`` into a file: across 2**31 and 2**32, and to the very end (END 0)."""
    target = scratch / "out.bin"
    for blob in filled.blobs.values():
        path, start, end = blob.location
        for low, high in [(2**31 - 100, 2**31 + 100), (2**32 - 100, 2**32 + 100), (blob.size - 4099, 0)]:
            if high > blob.size:
                continue
            with (
                open(target, "wb") as out,
                _ffdb(filled, "get", f"{path}:{start}:{end}", "--slice", str(low), str(high), stdout=out) as process,
            ):
                pass
            assert process.returncode == 0
            assert_same(target.read_bytes(), pattern_bytes(low, high or blob.size), f"--slice {low} {high}")


# -- writes: one store per test -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_put_many_commits_blobs_past_2_and_4_gib_in_one_batch(
    scratch: Path, source: bytearray, digests: dict[int, int], mode: str
) -> None:
    """One run of 6 GiB+ (raw: one pwritev that Linux cuts short; compressed: one set of frames)."""
    db = open_store(scratch, mode)
    try:
        items: list[bytes | bytearray | memoryview] = [
            b"a",
            memoryview(source)[:JUST_PAST_2_GIB],
            b"",
            bytes(7),
            source,
            b"z",
        ]
        tracemalloc.start()
        try:
            locations = db.put_many(items)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        if mode == "raw":  # one pwritev from the callers' buffers, finished buffer by buffer: no joined copy
            assert peak < 256 * 2**20, f"put_many held {peak} bytes at once"
        assert len({location.file_path for location in locations}) == 1  # one run: one pwritev or one frame set
        assert [location.start_offset for location in locations[1:]] == [loc.end_offset for loc in locations[:-1]]
        assert locations[-1].end_offset == 9 + JUST_PAST_2_GIB + JUST_PAST_4_GIB
        check_blob(db, locations[1], JUST_PAST_2_GIB, digests[JUST_PAST_2_GIB])
        check_blob(db, locations[4], JUST_PAST_4_GIB, digests[JUST_PAST_4_GIB])
        assert db.get_many([locations[i] for i in (0, 2, 3, 5)]) == [b"a", b"", bytes(7), b"z"]
        report = db.verify()  # of the mutable segment (compressed: by its FRAME records, not a seek table)
        assert report.ok, str(report)
        assert report.bytes_checked == locations[-1].end_offset
    finally:
        db.close()


@pytest.mark.parametrize("mode", MODES)
def test_put_stream_stores_a_stream_past_4_gib(
    scratch: Path, source: bytearray, digests: dict[int, int], mode: str
) -> None:
    """A stream written aside (raw, or seekable Zstandard) and committed as a segment of its own.

    The stream arrives in 4 MiB pieces, so only its total size is large: one past 4 GiB also
    crosses 2 GiB in the segment (its reads are checked at both)."""
    db = open_store(scratch, mode)
    try:
        location = db.put_stream(ViewReader(source))
        assert location.start_offset == 0
        check_blob(db, location, JUST_PAST_4_GIB, digests[JUST_PAST_4_GIB])
        report = db.verify()
        assert report.ok, str(report)
        assert report.bytes_checked == JUST_PAST_4_GIB
    finally:
        db.close()


@pytest.mark.parametrize("mode", MODES)
def test_adopt_file_takes_a_file_past_4_gib(
    scratch: Path, source: bytearray, source_file: Path, digests: dict[int, int], mode: str
) -> None:
    """A raw file or a seekable Zstandard file past 4 GiB becomes a segment; its checksum covers all of it."""
    if mode == "raw":
        path = scratch / "adopt.bin"
        shutil.copyfile(source_file, path)  # a copy (a hard link is refused): adoption renames it away
    else:
        path = scratch / "adopt.zst"
        with SeekableWriter(path, frame_bytes=FRAME_BYTES, threads=2) as out:
            for pos in range(0, JUST_PAST_4_GIB, COMPARE_CHUNK):
                out.write(memoryview(source)[pos : pos + COMPARE_CHUNK])
    db = open_store(scratch, mode)
    try:
        location = db.adopt_file(path, verify=True)  # reads the whole file once for its checksum
        assert not path.exists()
        check_blob(db, location, JUST_PAST_4_GIB, digests[JUST_PAST_4_GIB])
        report = db.verify(full=False)
        assert report.ok, str(report)
    finally:
        db.close()


@pytest.mark.parametrize("mode", MODES)
def test_cli_put_streams_a_file_past_4_gib(
    scratch: Path, source_file: Path, digests: dict[int, int], mode: str
) -> None:
    """``ffdb put`` (and ``put --compress``) of a file past 4 GiB prints a location that reads back."""
    datadir = scratch / "store"
    command = [
        sys.executable,
        "-m",
        "conduit_flat_file_db",
        "--datadir",
        str(datadir),
        "--lock",
        str(scratch / "store.lock"),
        "--no-progress",
        "put",
        str(source_file),
    ]
    done = subprocess.run(command + (["--compress"] if mode == "zstd" else []), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    name, file_path, start, end, packed = done.stdout.decode().rstrip("\n").split("\t")
    assert name == str(source_file)
    location = DataLocation(file_path, int(start), int(end))
    assert file_path.endswith(".dat.zst" if mode == "zstd" else ".dat")
    db = FlatFileDb(datadir, scratch / "store.lock")
    try:
        assert db.unpack_location(bytes.fromhex(packed)) == location
        check_blob(db, location, JUST_PAST_4_GIB, digests[JUST_PAST_4_GIB])
    finally:
        db.close()


def test_padding_after_frames_past_64_gib_fits_its_u32_size_field(scratch: Path) -> None:
    """A compressed mutable segment keeps padding of 1/16 of its frames for appends; that stops
    at 1 GiB, so the padding frame's u32 size field holds it however large the segment grows.
    (The frames are a hole here: a sparse file ending past 64 GiB costs no disk.)"""
    frames_end = 2**37
    padding = padding_for(frames_end, 0)
    assert PADDING_MIN_BYTES <= padding < 2**32 - SKIPPABLE_HEADER_BYTES
    fd = os.open(scratch / "sparse.dat.zst", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        frames = [(2**31, 2**31)] * (frames_end // 2**31)
        write_padding_and_table(fd, frames_end, frames, padding)
        table = parse_seek_table(pread_at(fd), os.fstat(fd).st_size)
        assert table.sizes() == frames + [(SKIPPABLE_HEADER_BYTES + padding, 0)]
        assert os.pread(fd, SKIPPABLE_HEADER_BYTES, frames_end) == padding_header(padding)
    finally:
        os.close(fd)


def test_keyed_store_keeps_a_value_past_4_gib_beside_small_ones(
    scratch: Path, source: bytearray, digests: dict[int, int]
) -> None:
    """A KeyedStore value past 4 GiB (its key-log record names offsets past 2**32): whole
    reads, slices at 2 and 4 GiB and at its end, a file object seeking across them,
    get_many beside small values, after a vacuum and in a read-only open."""
    path = scratch / "kv"
    with KeyedStore(path) as store:
        store["a"] = b"first"
        store["big"] = source
        store["z"] = b"last"
        meta = store.meta("big")
        assert (meta.size, meta.checksum) == (JUST_PAST_4_GIB, digests[JUST_PAST_4_GIB])
        for start, end in boundary_slices(JUST_PAST_4_GIB):
            assert store.get("big", slice=Slice(start, end)) == pattern_bytes(start, end), (start, end)
        with store.open("big") as handle:
            handle.seek(2**32 - 5)
            assert handle.read(10) == pattern_bytes(2**32 - 5, 2**32 + 5)
        values = store.get_many(["z", "big", "a"])
        assert values[0] == b"last" and values[2] == b"first"
        assert_same(values[1], source, "get_many")
        del values
        store["a"] = b"again"  # a dead value, and a vacuum that keeps the big one where it is or moves it
        store.vacuum()
        assert xxhash.xxh3_64_intdigest(store["big"]) == digests[JUST_PAST_4_GIB]
        assert not store.verify().problems
    with KeyedStore(path, readonly=True) as store:
        assert store.get("big", slice=Slice(2**32 - 8, 2**32 + 8)) == pattern_bytes(2**32 - 8, 2**32 + 8)
        assert store["a"] == b"again" and store["z"] == b"last"
