"""SeekableReader on hostile input: random bytes, every truncation and every single-byte
flip of small valid files, and hand-made lies in the seek table or the frame headers.

The contract: opening a file and reading any range either succeeds with the right bytes
or raises FormatError / CorruptionError (conduit_flat_file_db.errors); never another
exception, never a hang, and never memory in proportion to what a field claims rather
than to what the file holds.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import CorruptionError, FormatError
from conduit_flat_file_db.seekable import FrameTable, SeekableReader, SeekableWriter, encode_seek_table

ALLOWED = (FormatError, CorruptionError)
SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
MEMORY_BOUND = 16 * 2**20  # far above what reading these few-hundred-byte files needs


@dataclass(frozen=True)
class Original:
    """What a valid file holds: its frame table and each frame's decompressed bytes."""

    table: FrameTable
    frames: list[bytes]

    @property
    def data(self) -> bytes:
        """All uncompressed bytes."""
        return b"".join(self.frames)


@pytest.fixture(name="scratch")
def fixture_scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for the thousands of small files these tests write: in memory (/dev/shm)
    where there is one, since rewriting a file on ext4 flushes it to disk (auto_da_alloc)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="ffdb-fuzz-") as tmp:
            yield Path(tmp)
    else:
        yield tmp_path


def text(size: int, seed: int) -> bytes:
    """Compressible deterministic bytes."""
    return b"".join(b"%d:%d;" % (seed, i) for i in range(size))[:size]


def frame_of(data: bytes, content_size: bool = True, checksum: bool = True) -> bytes:
    """One Zstandard frame."""
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum, write_content_size=content_size).compress(data)


def skippable(payload: bytes, magic: int = 0x184D2A51) -> bytes:
    """A skippable frame."""
    return struct.pack("<II", magic, len(payload)) + payload


def build(parts: list[tuple[bytes, bytes]], checksums: bool = False) -> tuple[bytes, Original]:
    """A seekable file of (frame bytes, decompressed bytes) parts and its Original."""
    sizes = [(len(frame), len(data)) for frame, data in parts]
    sums = [xxhash.xxh64_intdigest(data) & 0xFFFFFFFF for _, data in parts] if checksums else None
    raw = b"".join(frame for frame, _ in parts) + encode_seek_table(sizes, checksums=sums)
    return raw, Original(FrameTable.from_sizes(sizes), [data for _, data in parts])


def small_file(scratch: Path) -> tuple[bytes, Original]:
    """A ~250-byte file from our own writer: several frames, content checksums, content sizes."""
    path = scratch / "small.zst"
    data = text(400, 1)
    with SeekableWriter(path, "w", frame_bytes=90) as writer:
        writer.write(data)
    raw = path.read_bytes()
    chunks = [data[i : i + 90] for i in range(0, len(data), 90)]
    with SeekableReader(path) as reader:
        return raw, Original(reader.table, chunks)


def small_file_with_checksums_and_skippable() -> tuple[bytes, Original]:
    """A hand-made file: per-frame checksums in the table, a skippable frame, a frame without content size."""
    return build(
        [
            (frame_of(text(100, 2)), text(100, 2)),
            (skippable(b"meta"), b""),
            (frame_of(text(120, 3), content_size=False), text(120, 3)),
            (frame_of(text(60, 4), checksum=False), text(60, 4)),
        ],
        checksums=True,
    )


def ranges_to_read(table: FrameTable) -> Iterator[tuple[int, int]]:
    """Each frame whole, each frame boundary crossed, the first and last byte, the whole file."""
    size = table.decompressed_size
    d = table.d_offsets
    for index in range(len(table)):
        if d[index + 1] > d[index]:
            yield d[index], d[index + 1]
        if 0 < d[index] < size:
            yield d[index] - 1, d[index] + 1
    if size:
        yield 0, 1
        yield size - 1, size
        yield 0, size


def exercise(path: Path, raw: bytes, original: Original | None) -> str:
    """Open ``raw`` and read ranges; only FormatError / CorruptionError may come out.

    With ``original`` (``raw`` is a damaged copy of that file), successful reads must be right:
    when the frame layout still matches the original, a frame read whole yields that frame's
    bytes, and when the uncompressed offsets match too, every range yields the original bytes.
    Returns "open-error", "read-error" or "ok".
    """
    path.write_bytes(raw)
    try:
        reader = SeekableReader(path)
    except ALLOWED:
        return "open-error"
    outcome = "ok"
    with reader:
        table = reader.table
        same_frames = original is not None and table.c_offsets == original.table.c_offsets
        same_offsets = same_frames and original is not None and table.d_offsets == original.table.d_offsets
        for start, end in ranges_to_read(table):
            try:
                got = reader.read_range(start, end)
            except ALLOWED:
                outcome = "read-error"
                continue
            assert len(got) == end - start
            if same_offsets and original is not None:
                assert got == original.data[start:end], (start, end)
            elif same_frames and original is not None:
                index = table.frame_at(start)
                if (start, end) == (table.d_offsets[index], table.d_offsets[index + 1]):
                    assert got == original.frames[index], index
        try:
            reader.seek(0)
            whole = reader.read()
            if same_offsets and original is not None:
                assert whole == original.data
        except ALLOWED:
            outcome = "read-error"
    return outcome


def peak_memory(action: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Peak Python allocation while ``action`` runs, and what it raised."""
    tracemalloc.start()
    error: BaseException | None = None
    try:
        action()
    except Exception as exc:  # pylint: disable=broad-exception-caught  # the caller checks the type
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


def open_and_read_all(path: Path) -> None:
    """Open a file and read every byte."""
    with SeekableReader(path) as reader:
        reader.read_range(0, reader.size)


# -- valid files and how they read ----------------------------------------------------------


def test_the_small_files_are_valid(scratch: Path) -> None:
    """The files the damage tests start from read back right, and exercise() says so."""
    raw, original = small_file(scratch)
    assert len(original.frames) == 5 and len(raw) < 400
    assert exercise(scratch / "probe.zst", raw, original) == "ok"
    raw2, original2 = small_file_with_checksums_and_skippable()
    assert exercise(scratch / "probe.zst", raw2, original2) == "ok"


# -- truncation and flipped bytes ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_truncation_of_a_small_file(scratch: Path) -> None:
    """Every shorter prefix of a valid file is refused with FormatError."""
    for raw, _original in (small_file(scratch), small_file_with_checksums_and_skippable()):
        for length in range(len(raw)):
            outcome = exercise(scratch / "cut.zst", raw[:length], None)
            assert outcome == "open-error", length


@pytest.mark.timeout(60)
def test_every_truncation_of_a_store_segment_tail(scratch: Path) -> None:
    """A compressed store's segment (padding frame, table) cut anywhere is refused."""
    db = FlatFileDb(scratch / "s", scratch / "s.lock", use_compression=True, frame_bytes=256)
    try:
        location = db.put(text(3000, 9))
        raw = Path(location.file_path).read_bytes()
    finally:
        db.close()
    lengths = list(range(0, len(raw), 97)) + list(range(max(0, len(raw) - 400), len(raw)))
    for length in lengths:
        assert exercise(scratch / "cut.zst", raw[:length], None) == "open-error", length


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80, 0x04])
def test_every_single_byte_flip_of_a_small_file(scratch: Path, mask: int) -> None:
    """Each byte XOR ``mask``, one at a time: an allowed error or the right bytes."""
    for raw, original in (small_file(scratch), small_file_with_checksums_and_skippable()):
        for position in range(len(raw)):
            damaged = bytearray(raw)
            damaged[position] ^= mask
            exercise(scratch / "flip.zst", bytes(damaged), original)


# -- the footer, the table header, the table's sizes ------------------------------------------------


def test_bad_footer_magic(scratch: Path) -> None:
    """Any change to the last four bytes is refused."""
    raw, _ = small_file(scratch)
    for magic in (0, SEEKABLE_MAGIC ^ 1, 0xB1EA928F, SEEK_TABLE_MAGIC):
        damaged = raw[:-4] + struct.pack("<I", magic)
        assert exercise(scratch / "m.zst", damaged, None) == "open-error", hex(magic)
    with pytest.raises(FormatError, match="seekable"):
        open_and_read_all(scratch / "m.zst")


@pytest.mark.parametrize("bit", range(8))
def test_descriptor_bits(scratch: Path, bit: int) -> None:
    """Bits 6..2 are reserved (refused); bit 7 changes the entry size (the table no longer
    parses); bits 1..0 are unused and ignored."""
    raw, original = small_file(scratch)
    damaged = bytearray(raw)
    damaged[-5] |= 1 << bit
    outcome = exercise(scratch / "d.zst", bytes(damaged), original)
    if bit <= 1:
        assert outcome == "ok"
    else:
        assert outcome == "open-error"
        if 2 <= bit <= 6:
            with pytest.raises(FormatError, match="reserved"):
                open_and_read_all(scratch / "d.zst")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", [0x7FFFFFF, 0x8000000, 0x8000001, 0xFFFFFFFF, 2, 1000])
def test_frame_count_larger_than_the_file(scratch: Path, count: int) -> None:
    """A 30-byte file claiming huge numbers of frames: FormatError at once, no big allocation."""
    raw = struct.pack("<II", SEEK_TABLE_MAGIC, 13) + b"\0" * 13 + struct.pack("<IBI", count, 0, SEEKABLE_MAGIC)
    assert len(raw) == 30
    path = scratch / "count.zst"
    path.write_bytes(raw)
    began = time.monotonic()
    peak, error = peak_memory(lambda: open_and_read_all(path))
    assert isinstance(error, FormatError), repr(error)
    assert time.monotonic() - began < 1.0
    assert peak < 64 * 1024, f"{peak} bytes allocated for a 30-byte file claiming {count} frames"


def test_frame_count_one_more_than_the_table_holds(scratch: Path) -> None:
    """A count off by one either way is refused (the table frame's size no longer fits)."""
    raw, _ = small_file(scratch)
    count = struct.unpack_from("<I", raw, len(raw) - 9)[0]
    for wrong in (count - 1, count + 1, 0):
        damaged = raw[:-9] + struct.pack("<I", wrong) + raw[-5:]
        assert exercise(scratch / "c.zst", damaged, None) == "open-error", wrong


def test_frame_size_field_mismatch(scratch: Path) -> None:
    """The seek table frame's size field must be exactly entries * entry size + 9."""
    raw, _ = small_file(scratch)
    count = struct.unpack_from("<I", raw, len(raw) - 9)[0]
    table_at = len(raw) - (8 + 8 * count + 9)
    size = struct.unpack_from("<I", raw, table_at + 4)[0]
    assert size == 8 * count + 9
    for wrong in (size - 1, size + 1, size + 8, 0, 0xFFFFFFFF):
        damaged = raw[: table_at + 4] + struct.pack("<I", wrong) + raw[table_at + 8 :]
        assert exercise(scratch / "s.zst", damaged, None) == "open-error", wrong
        with pytest.raises(FormatError, match="size"):
            open_and_read_all(scratch / "s.zst")


def test_seek_table_frame_magic(scratch: Path) -> None:
    """The table frame must use 0x184D2A5E; other skippable magics are refused there."""
    raw, _ = small_file(scratch)
    count = struct.unpack_from("<I", raw, len(raw) - 9)[0]
    table_at = len(raw) - (8 + 8 * count + 9)
    for magic in (0x184D2A50, 0x184D2A5F, 0xFD2FB528, 0):
        damaged = raw[:table_at] + struct.pack("<I", magic) + raw[table_at + 4 :]
        assert exercise(scratch / "t.zst", damaged, None) == "open-error", hex(magic)


def test_compressed_sizes_that_do_not_add_up(scratch: Path) -> None:
    """Compressed sizes must sum to where the seek table starts."""
    chunks = [text(100, i) for i in range(3)]
    frames = [frame_of(c) for c in chunks]
    sizes = [(len(f), len(c)) for f, c in zip(frames, chunks)]
    body = b"".join(frames)
    path = scratch / "sum.zst"
    for index in range(3):
        for delta in (-1, 1, 1000):
            wrong = list(sizes)
            wrong[index] = (sizes[index][0] + delta, sizes[index][1])
            assert exercise(path, body + encode_seek_table(wrong), None) == "open-error", (index, delta)
    # loose bytes between the last frame and the table
    assert exercise(path, body + b"xyz" + encode_seek_table(sizes), None) == "open-error"
    # a frame missing from the table
    assert exercise(path, body + encode_seek_table(sizes[:2]), None) == "open-error"


def test_compressed_sizes_that_add_up_but_cut_frames_wrongly(scratch: Path) -> None:
    """Sizes shifted between neighbours sum right; the frames they cut fail to decode."""
    chunks = [text(100, i) for i in range(3)]
    frames = [frame_of(c) for c in chunks]
    sizes = [(len(f), len(c)) for f, c in zip(frames, chunks)]
    shifted = [(sizes[0][0] + 5, 100), (sizes[1][0] - 5, 100), sizes[2]]
    path = scratch / "shift.zst"
    raw = b"".join(frames) + encode_seek_table(shifted)
    original = Original(FrameTable.from_sizes(sizes), chunks)
    assert exercise(path, raw, original) == "read-error"
    with SeekableReader(path) as reader:
        with pytest.raises(CorruptionError):
            reader.read_range(150, 151)
        assert reader.read_range(200, 300) == chunks[2]


def test_decompressed_sizes_that_do_not_match_the_frames(scratch: Path) -> None:
    """A table entry whose decompressed size disagrees with its frame: CorruptionError for
    that frame (with or without a content size in the frame header), the others read."""
    for content_size in (True, False):
        chunks = [text(100, i) for i in range(3)]
        frames = [frame_of(c, content_size=content_size) for c in chunks]
        for delta in (-1, 1, -99, 50):  # -100 would make it a skippable frame's entry (size 0)
            sizes = [(len(f), len(c)) for f, c in zip(frames, chunks)]
            sizes[1] = (sizes[1][0], 100 + delta)
            path = scratch / "dsize.zst"
            path.write_bytes(b"".join(frames) + encode_seek_table(sizes))
            with SeekableReader(path) as reader:
                assert reader.read_range(0, 100) == chunks[0]
                with pytest.raises(CorruptionError):
                    reader.read_range(100, 101)
                with pytest.raises(CorruptionError):
                    reader.read_range(0, reader.size)
                after = 100 + 100 + delta
                assert reader.read_range(after, after + 100) == chunks[2]


def test_skippable_frame_claiming_decompressed_bytes(scratch: Path) -> None:
    """A skippable frame cannot yield bytes: its entry must say 0."""
    parts = [frame_of(text(50, 1)), skippable(b"meta-data")]
    raw = b"".join(parts) + encode_seek_table([(len(parts[0]), 50), (len(parts[1]), 9)])
    path = scratch / "skip.zst"
    path.write_bytes(raw)
    with SeekableReader(path) as reader:
        assert reader.read_range(0, 50) == text(50, 1)
        with pytest.raises(CorruptionError):
            reader.read_range(50, 51)


def test_zstd_frame_listed_as_skippable(scratch: Path) -> None:
    """A real frame whose entry says decompressed size 0 is stepped over: its bytes never appear."""
    parts = [frame_of(text(50, 1)), frame_of(text(40, 2)), frame_of(text(30, 3))]
    raw = b"".join(parts) + encode_seek_table([(len(parts[0]), 50), (len(parts[1]), 0), (len(parts[2]), 30)])
    path = scratch / "hidden.zst"
    path.write_bytes(raw)
    with SeekableReader(path) as reader:
        assert reader.read() == text(50, 1) + text(30, 3)


@pytest.mark.parametrize("length", range(17))
def test_files_too_short_to_hold_a_table(scratch: Path, length: int) -> None:
    """0..16 bytes, even ending in the magic: FormatError."""
    raw = (b"\0" * 16 + struct.pack("<I", SEEKABLE_MAGIC))[-length:] if length else b""
    assert exercise(scratch / "short.zst", raw, None) == "open-error"


def test_empty_table_is_an_empty_file(scratch: Path) -> None:
    """A file of just a 0-entry seek table is a valid empty file."""
    path = scratch / "empty.zst"
    path.write_bytes(encode_seek_table([]))
    with SeekableReader(path) as reader:
        assert reader.size == 0
        assert reader.read() == b""


# -- claims about sizes must not turn into allocations ------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("claim", [2**30 + 1, 0xFFFFFFFF])
def test_decompressed_size_claim_does_not_allocate_the_claim(scratch: Path, claim: int) -> None:
    """A 40-byte frame without a content size, listed as ``claim`` bytes: the spec caps a frame
    at 1 GiB, and the reader must fail without allocating the claimed size."""
    frame = frame_of(text(50, 1), content_size=False)
    path = scratch / "claim.zst"
    path.write_bytes(frame + encode_seek_table([(len(frame), claim)]))
    peak, error = peak_memory(lambda: open_and_read_all(path))
    assert isinstance(error, ALLOWED), repr(error)
    assert peak < MEMORY_BOUND, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("claim", [2**33, 2**62])
def test_frame_header_content_size_claim_does_not_allocate_the_claim(scratch: Path, claim: int) -> None:
    """A frame header claiming ``claim`` bytes of content, with a seek table saying 50:
    CorruptionError, not MemoryError, and no allocation of the claim."""
    frame = frame_of(text(50, 1), checksum=False)
    assert frame[4] == 0x20  # single segment, 1-byte content size
    forged = frame[:4] + bytes([0xE0]) + struct.pack("<Q", claim) + frame[6:]
    assert zstandard.get_frame_parameters(forged).content_size == claim
    path = scratch / "forged.zst"
    path.write_bytes(forged + encode_seek_table([(len(forged), 50)]))
    peak, error = peak_memory(lambda: open_and_read_all(path))
    assert isinstance(error, ALLOWED), repr(error)
    assert peak < MEMORY_BOUND, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"


# -- hypothesis: random files -----------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.mark.timeout(60)
@FUZZ_SETTINGS
@given(raw=st.binary(max_size=300))
def test_random_bytes(scratch: Path, raw: bytes) -> None:
    """Random bytes: refused (or, if they happen to be valid, read without surprises)."""
    exercise(scratch / "random.zst", raw, None)


@pytest.mark.timeout(60)
@FUZZ_SETTINGS
@given(
    body=st.binary(max_size=200),
    count=st.integers(0, 2**32 - 1),
    descriptor=st.integers(0, 255),
    size_field=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_random_bytes_with_a_plausible_footer(
    scratch: Path, body: bytes, count: int, descriptor: int, size_field: int | None
) -> None:
    """Random bytes before a footer with the right magic and often a right-looking table header."""
    entry = 12 if descriptor & 0x80 else 8
    entries = body[: count * entry] if count * entry <= len(body) else body
    field = size_field if size_field is not None else len(entries) + 9
    raw = (
        body
        + struct.pack("<II", SEEK_TABLE_MAGIC, field)
        + entries
        + struct.pack("<IBI", count, descriptor, SEEKABLE_MAGIC)
    )
    exercise(scratch / "footer.zst", raw, None)


PART = st.one_of(
    st.tuples(st.just("frame"), st.integers(0, 300), st.booleans(), st.booleans()),
    st.tuples(st.just("skip"), st.integers(0, 40), st.just(False), st.just(False)),
    st.tuples(st.just("junk"), st.integers(1, 40), st.just(False), st.just(False)),
)


@pytest.mark.timeout(60)
@FUZZ_SETTINGS
@given(parts=st.lists(PART, max_size=6), checksums=st.booleans(), data=st.data())
def test_random_tables_over_real_frames(
    scratch: Path, parts: list[tuple[str, int, bool, bool]], checksums: bool, data: st.DataObject
) -> None:
    """Real frames, skippable frames and junk under a table that may lie a little."""
    built: list[tuple[bytes, bytes]] = []
    honest = True
    for number, (kind, size, content_size, frame_checksum) in enumerate(parts):
        if kind == "frame":
            payload = text(size, number)
            built.append((frame_of(payload, content_size, frame_checksum), payload))
        elif kind == "skip":
            built.append((skippable(bytes(size)), b""))
        else:
            built.append((data.draw(st.binary(min_size=size, max_size=size)), b""))
            honest = False
    sizes = [(len(frame), len(payload)) for frame, payload in built]
    perturb: bool = data.draw(st.booleans())
    if built and perturb:
        index = data.draw(st.integers(0, len(built) - 1))
        csize, dsize = sizes[index]
        if data.draw(st.booleans()):
            csize = max(0, csize + data.draw(st.integers(-5, 5)))
        else:
            dsize = max(0, dsize + data.draw(st.integers(-5, 2000)))
        honest = honest and (csize, dsize) == sizes[index]
        sizes[index] = (csize, dsize)
    sums = [xxhash.xxh64_intdigest(p) & 0xFFFFFFFF for _, p in built] if checksums else None
    raw = b"".join(frame for frame, _ in built) + encode_seek_table(sizes, checksums=sums)
    original = Original(FrameTable.from_sizes(sizes), [p for _, p in built]) if honest else None
    outcome = exercise(scratch / "parts.zst", raw, original)
    if honest:
        assert outcome == "ok"
