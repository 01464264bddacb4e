"""The seekable Zstandard layer on its own (conduit_flat_file_db.seekable): the writer (new
files, appends), the reader's file-object API and range reads, how many frames a read
decompresses, seek tables with per-frame checksums, skippable frames inside a file, and
the byte-bounded LRU frame cache."""

from __future__ import annotations

import io
import os
import random
import struct
import time
from pathlib import Path

import pytest
import xxhash
import zstandard

from conduit_flat_file_db.errors import CorruptionError, FormatError
from conduit_flat_file_db.frames import STORED_PROBE_BYTES, FrameCache, compress_frames, stored_frame, stored_payload
from conduit_flat_file_db.seekable import (
    FrameTable,
    SeekableReader,
    SeekableWriter,
    encode_seek_table,
    parse_seek_table,
)

SKIPPABLE_MAGIC = 0x184D2A53  # any of 0x184D2A50..0x184D2A5F; not the seek table's own 0x184D2A5E


def source(size: int, seed: int = 0, compressible: bool = True) -> bytes:
    """Deterministic test bytes: text-like (compressible) or random."""
    rng = random.Random(seed * 7919 + size)
    if not compressible:
        return rng.randbytes(size)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" " + str(rng.randrange(1000)).encode() + b"\n"
    return bytes(out[:size])


def write_file(path: Path, data: bytes, frame_bytes: int, chunk: int = 333, threads: int = 1) -> None:
    """Write ``data`` with SeekableWriter in ``chunk``-byte writes."""
    with SeekableWriter(path, "w", frame_bytes=frame_bytes, threads=threads) as writer:
        for pos in range(0, len(data), chunk):
            assert writer.write(data[pos : pos + chunk]) == len(data[pos : pos + chunk])


def table_of(path: Path) -> FrameTable:
    """The seek table of a file, parsed from its bytes."""
    raw = path.read_bytes()
    return parse_seek_table(lambda offset, size: raw[offset : offset + size], len(raw), str(path))


def checksum32(data: bytes) -> int:
    """The seekable format's per-frame checksum: low 32 bits of XXH64 (seed 0)."""
    return xxhash.xxh64_intdigest(data) & 0xFFFFFFFF


def skippable_frame(payload: bytes, magic: int = SKIPPABLE_MAGIC) -> bytes:
    """A Zstandard skippable frame."""
    return struct.pack("<II", magic, len(payload)) + payload


def one_frame(data: bytes, content_size: bool = True) -> bytes:
    """``data`` as one Zstandard frame with a content checksum."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=content_size).compress(data)


# -- writer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,frame_bytes", [(0, 100), (1, 100), (100, 100), (101, 100), (10_000, 1000), (123_457, 4096), (50_000, 2**20)]
)
def test_writer_new_file_round_trip(tmp_path: Path, size: int, frame_bytes: int) -> None:
    """A new file: frames of at most frame_bytes (all full but the last), readable back whole."""
    path = tmp_path / "new.zst"
    data = source(size, 1)
    write_file(path, data, frame_bytes)
    table = table_of(path)
    assert table.decompressed_size == size
    expected_frames = -(-size // frame_bytes)
    assert len(table) == expected_frames
    dsizes = [d for _, d in table.sizes()]
    assert all(d == frame_bytes for d in dsizes[:-1])
    assert table.compressed_size + 17 + 8 * len(table) == path.stat().st_size
    with SeekableReader(path) as reader:
        assert reader.size == size
        assert reader.read_range(0, size) == data
        assert reader.read() == data


def test_writer_frames_are_self_checking_zstd_frames(tmp_path: Path) -> None:
    """Every frame is a complete Zstandard frame carrying its content size and a content checksum."""
    path = tmp_path / "frames.zst"
    data = source(10_000, 2)
    write_file(path, data, 3000)
    raw = path.read_bytes()
    table = table_of(path)
    for index, (csize, dsize) in enumerate(table.sizes()):
        frame = raw[table.c_offsets[index] : table.c_offsets[index] + csize]
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == dsize
        assert params.has_checksum
        start = table.d_offsets[index]
        assert zstandard.ZstdDecompressor().decompress(frame) == data[start : start + dsize]


def test_writer_with_threads_matches_single_thread(tmp_path: Path) -> None:
    """Frames compressed in parallel come back in order."""
    data = source(200_000, 3, compressible=False) + source(200_000, 4)
    write_file(tmp_path / "mt.zst", data, 7000, chunk=50_000, threads=4)
    write_file(tmp_path / "st.zst", data, 7000, chunk=50_000, threads=1)
    assert table_of(tmp_path / "mt.zst").d_offsets == table_of(tmp_path / "st.zst").d_offsets
    with SeekableReader(tmp_path / "mt.zst") as reader:
        assert reader.read_range(0, len(data)) == data


def test_writer_flush_leaves_a_valid_file_every_time(tmp_path: Path) -> None:
    """flush() ends the frame and writes the seek table: the file is readable after each one."""
    path = tmp_path / "flush.zst"
    written = b""
    with SeekableWriter(path, "w", frame_bytes=1000) as writer:
        for step in range(6):
            chunk = source(700 * step + 1, step)
            writer.write(chunk)
            written += chunk
            writer.flush()
            with SeekableReader(path) as reader:
                assert reader.read_range(0, reader.size) == written
    with SeekableReader(path) as reader:
        assert reader.read() == written


def test_writer_append_mode_several_appends(tmp_path: Path) -> None:
    """'a' keeps the old frames, drops the old seek table, adds frames and a new table."""
    path = tmp_path / "append.zst"
    first = source(5000, 10)
    write_file(path, first, 1000)
    expected = first
    frames = len(table_of(path))
    for step, frame_bytes in enumerate([700, 4096, 1, 2000]):
        part = source(1500 + 17 * step, 20 + step, compressible=step % 2 == 0)
        with SeekableWriter(path, "a", frame_bytes=frame_bytes) as writer:
            writer.write(part[:100])
            writer.write(part[100:])
        expected += part
        table = table_of(path)
        frames += -(-len(part) // frame_bytes)
        assert len(table) == frames
        assert table.decompressed_size == len(expected)
        with SeekableReader(path) as reader:
            assert reader.read_range(0, len(expected)) == expected
            assert reader.read_range(len(expected) - len(part) - 3, len(expected)) == expected[-len(part) - 3 :]


def test_writer_append_without_writing_leaves_file_unchanged(tmp_path: Path) -> None:
    """Opening in 'a' and closing without a write changes no byte."""
    path = tmp_path / "same.zst"
    write_file(path, source(3000, 5), 1000)
    before = path.read_bytes()
    SeekableWriter(path, "a").close()
    assert path.read_bytes() == before


def test_writer_append_creates_missing_file(tmp_path: Path) -> None:
    """'a' on a file that does not exist starts a new one."""
    path = tmp_path / "fresh.zst"
    with SeekableWriter(path, "a", frame_bytes=500) as writer:
        writer.write(b"x" * 1200)
    with SeekableReader(path) as reader:
        assert reader.read() == b"x" * 1200
        assert len(reader.table) == 3


def test_writer_append_to_file_with_checksums_and_skippable_frames(tmp_path: Path) -> None:
    """Appending to a foreign seekable file keeps its frames (and skippable frames) readable."""
    path = tmp_path / "foreign.zst"
    chunks = [source(900, 30), source(400, 31)]
    frames = [one_frame(chunks[0]), skippable_frame(b"meta"), one_frame(chunks[1])]
    sizes = [(len(frames[0]), 900), (len(frames[1]), 0), (len(frames[2]), 400)]
    sums = [checksum32(chunks[0]), checksum32(b""), checksum32(chunks[1])]
    path.write_bytes(b"".join(frames) + encode_seek_table(sizes, checksums=sums))
    tail = source(2500, 32)
    with SeekableWriter(path, "a", frame_bytes=1000) as writer:
        writer.write(tail)
    expected = chunks[0] + chunks[1] + tail
    with SeekableReader(path) as reader:
        assert reader.read_range(0, len(expected)) == expected
        assert reader.read_range(850, 1350) == expected[850:1350]


def test_writer_refuses_bad_arguments(tmp_path: Path) -> None:
    """Unknown modes and frame sizes outside 1..1 GiB are refused."""
    with pytest.raises(ValueError):
        SeekableWriter(tmp_path / "a.zst", "r")
    with pytest.raises(ValueError):
        SeekableWriter(tmp_path / "b.zst", "w", frame_bytes=0)
    with pytest.raises(ValueError):
        SeekableWriter(tmp_path / "c.zst", "w", frame_bytes=2**30 + 1)


def test_writer_append_to_a_non_seekable_file_is_a_format_error(tmp_path: Path) -> None:
    """'a' on bytes that are not a seekable file says so instead of overwriting them."""
    path = tmp_path / "plain.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"plain zstd, no seek table" * 10))
    before = path.read_bytes()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(FormatError):
            SeekableWriter(path, "a")
    assert path.read_bytes() == before
    assert len(os.listdir("/proc/self/fd")) == fds, "the refused writer leaked its descriptor"


def test_writer_close_is_idempotent(tmp_path: Path) -> None:
    """close() twice is fine; the context manager closes."""
    writer = SeekableWriter(tmp_path / "c.zst")
    writer.write(b"abc")
    writer.close()
    writer.close()
    assert writer.closed
    with SeekableWriter(tmp_path / "d.zst") as other:
        other.write(b"abc")
    assert other.closed


# -- reader: file object -------------------------------------------------------------------


@pytest.fixture(name="sample")
def fixture_sample(tmp_path: Path) -> tuple[Path, bytes]:
    """A 20,000-byte file in 1000-byte frames."""
    path = tmp_path / "sample.zst"
    data = source(20_000, 42)
    write_file(path, data, 1000)
    return path, data


def test_reader_read_sequential_and_tell(sample: tuple[Path, bytes]) -> None:
    """read(n) advances tell(); read() returns the rest; reads past the end return b''."""
    path, data = sample
    with SeekableReader(path) as reader:
        assert reader.readable()
        assert reader.seekable()
        assert not reader.writable()
        assert reader.tell() == 0
        assert reader.read(10) == data[:10]
        assert reader.tell() == 10
        assert reader.read(2500) == data[10:2510]
        assert reader.tell() == 2510
        assert reader.read() == data[2510:]
        assert reader.tell() == len(data)
        assert reader.read(5) == b""
        assert reader.read() == b""
        assert reader.tell() == len(data)


def test_reader_readinto(sample: tuple[Path, bytes]) -> None:
    """readinto fills bytearrays and memoryviews, returns the count, stops at the end."""
    path, data = sample
    with SeekableReader(path) as reader:
        buf = bytearray(1500)
        assert reader.readinto(buf) == 1500
        assert bytes(buf) == data[:1500]
        reader.seek(len(data) - 100)
        big = bytearray(300)
        assert reader.readinto(memoryview(big)) == 100
        assert bytes(big[:100]) == data[-100:]
        assert reader.readinto(big) == 0
        reader.seek(999)
        view = memoryview(bytearray(8)).cast("B")
        assert reader.readinto(view) == 8
        assert bytes(view) == data[999:1007]


def test_reader_seek_all_whence_values(sample: tuple[Path, bytes]) -> None:
    """SEEK_SET, SEEK_CUR, SEEK_END, past the end, and the refused cases."""
    path, data = sample
    size = len(data)
    with SeekableReader(path) as reader:
        assert reader.seek(1234) == 1234
        assert reader.read(10) == data[1234:1244]
        assert reader.seek(-44, io.SEEK_CUR) == 1200
        assert reader.read(5) == data[1200:1205]
        assert reader.seek(100, os.SEEK_CUR) == 1305
        assert reader.read(3) == data[1305:1308]
        assert reader.seek(-10, io.SEEK_END) == size - 10
        assert reader.read() == data[-10:]
        assert reader.seek(0, io.SEEK_END) == size
        assert reader.read(1) == b""
        assert reader.seek(size + 50) == size + 50
        assert reader.read(10) == b""
        assert reader.seek(5, io.SEEK_END) == size + 5
        assert reader.read() == b""
        assert reader.seek(0, io.SEEK_SET) == 0
        assert reader.read(3) == data[:3]
        with pytest.raises(ValueError):
            reader.seek(-1)
        with pytest.raises(ValueError):
            reader.seek(-size - 1, io.SEEK_END)
        with pytest.raises(ValueError):
            reader.seek(0, 3)
        assert reader.tell() == 3  # a refused seek does not move


def test_reader_context_manager_and_buffered_wrapper(sample: tuple[Path, bytes]) -> None:
    """with-block closes the reader; io.BufferedReader can wrap it."""
    path, data = sample
    with SeekableReader(path) as reader:
        assert not reader.closed
    assert reader.closed
    with io.BufferedReader(SeekableReader(path), buffer_size=777) as buffered:
        assert buffered.read(5) == data[:5]
        buffered.seek(15_000)
        assert buffered.read(2000) == data[15_000:17_000]
        assert buffered.readline() == data[17_000 : data.index(b"\n", 17_000) + 1]


def test_reader_refuses_reads_after_close(sample: tuple[Path, bytes]) -> None:
    """A closed reader raises ValueError (the io contract) instead of reading a closed descriptor.

    Its descriptor number may already belong to another open file by then.
    """
    path, _data = sample
    reader = SeekableReader(path)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(10)
    with pytest.raises(ValueError):
        reader.readinto(bytearray(10))
    with pytest.raises(ValueError):
        reader.read_range(0, 10)


def test_reader_opens_fd_and_file_object(sample: tuple[Path, bytes]) -> None:
    """A path, a descriptor or a binary file object; only a path's descriptor is ours to close."""
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    try:
        with SeekableReader(fd) as reader:
            assert reader.read_range(5000, 6000) == data[5000:6000]
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)
    with open(path, "rb") as file:
        with SeekableReader(file) as reader:
            assert reader.read_range(19_000, 20_000) == data[19_000:]
        assert not file.closed
    with SeekableReader(str(path)) as reader:
        assert reader.name == str(path)


def test_reader_read_range_random(tmp_path: Path) -> None:
    """Random ranges of files with varied frame sizes equal the source bytes."""
    rng = random.Random(7)
    for frame_bytes in (1, 97, 1000, 65_536):
        path = tmp_path / f"r{frame_bytes}.zst"
        size = 3000 if frame_bytes == 1 else 150_000
        data = source(size, frame_bytes, compressible=frame_bytes != 97)
        write_file(path, data, frame_bytes, chunk=4099)
        with SeekableReader(path) as reader:
            for _ in range(150):
                start = rng.randrange(size + 1)
                end = rng.randrange(start, min(size, start + rng.choice([1, 10, 1000, size])) + 1)
                assert reader.read_range(start, end) == data[start:end], (frame_bytes, start, end)
            assert reader.read_range(size, size) == b""
            assert reader.read_range(0, size) == data


def test_reader_read_range_refuses_ranges_outside_the_file(sample: tuple[Path, bytes]) -> None:
    """Inverted ranges, negative starts and ends past the size are ValueErrors."""
    path, data = sample
    with SeekableReader(path) as reader:
        for start, end in ((-1, 5), (10, 5), (0, len(data) + 1), (len(data) + 1, len(data) + 2)):
            with pytest.raises(ValueError):
                reader.read_range(start, end)


# -- frames decompressed per read ----------------------------------------------------------


def test_read_touching_k_frames_decompresses_k_frames(tmp_path: Path) -> None:
    """Without a cache, a read decompresses exactly the frames it overlaps."""
    path = tmp_path / "k.zst"
    data = source(50_000, 8)
    write_file(path, data, 1000)
    rng = random.Random(3)
    with SeekableReader(path) as reader:
        for _ in range(100):
            start = rng.randrange(len(data))
            end = rng.randrange(start + 1, min(len(data), start + 5000) + 1)
            touched = (end - 1) // 1000 - start // 1000 + 1
            before = reader.frames_decompressed
            assert reader.read_range(start, end) == data[start:end]
            assert reader.frames_decompressed - before == touched, (start, end)
        before = reader.frames_decompressed
        reader.seek(2999)
        assert reader.read(2) == data[2999:3001]
        assert reader.frames_decompressed - before == 2
        before = reader.frames_decompressed
        reader.read_range(7000, 7000)
        assert reader.frames_decompressed == before


def test_repeated_reads_with_a_cache_decompress_nothing_new(tmp_path: Path) -> None:
    """With a FrameCache, frames read once are served from it, also to another reader given the same key."""
    path = tmp_path / "cached.zst"
    data = source(30_000, 9)
    write_file(path, data, 1000)
    cache = FrameCache(2**20)
    with SeekableReader(path, cache=cache, cache_key="cached.zst v1") as reader:
        assert reader.read_range(1500, 4500) == data[1500:4500]
        assert reader.frames_decompressed == 4
        for _ in range(3):
            assert reader.read_range(1500, 4500) == data[1500:4500]
            assert reader.read_range(2000, 2001) == data[2000:2001]
        assert reader.frames_decompressed == 4
        assert cache.misses == 4
        assert cache.hits >= 4
        assert reader.read_range(4500, 5500) == data[4500:5500]
        assert reader.frames_decompressed == 5
    with SeekableReader(path, cache=cache, cache_key="cached.zst v1") as other:
        assert other.read_range(1000, 5000) == data[1000:5000]
        assert other.frames_decompressed == 0
    with SeekableReader(path, cache=cache) as stranger:  # no key: its own frames only
        assert stranger.read_range(1000, 2001) == data[1000:2001]
        assert stranger.frames_decompressed == 2


def test_shared_cache_never_serves_frames_of_a_deleted_file(tmp_path: Path) -> None:
    """A cache shared by readers must tell a new file from a deleted one.

    File systems reuse the inode numbers of deleted files (ext4 does so at once), so
    keying cached frames by (device, inode) alone serves a deleted file's frames as
    the new file's bytes.
    """
    cache = FrameCache(2**24)
    path = tmp_path / "reused.zst"
    inodes: set[int] = set()
    reused = 0
    for round_ in range(40):
        data = source(5000, 100 + round_, compressible=False)
        write_file(path, data, 1000)
        inode = path.stat().st_ino
        reused += inode in inodes
        inodes.add(inode)
        with SeekableReader(path, cache=cache) as reader:
            right = reader.read_range(0, len(data)) == data  # not in the assert: pytest's diff of bytes is slow
        assert right, f"round {round_}: the frames of a deleted file were served (inode {inode} reused)"
        path.unlink()
        if reused >= 3:
            break
        time.sleep(0.02)


# -- seek tables with checksums, skippable frames --------------------------------------------


def build_checksummed(path: Path, chunks: list[bytes], bad: int | None = None) -> None:
    """A seekable file with per-frame checksums in its seek table; frame ``bad`` gets a wrong one."""
    frames = [one_frame(chunk) for chunk in chunks]
    sums = [checksum32(chunk) for chunk in chunks]
    if bad is not None:
        sums[bad] ^= 0x5A5A
    table = encode_seek_table([(len(f), len(c)) for f, c in zip(frames, chunks)], checksums=sums)
    assert table[-5] & 0x80  # descriptor: checksum flag
    path.write_bytes(b"".join(frames) + table)


def test_reader_accepts_seek_table_with_checksums(tmp_path: Path) -> None:
    """12-byte entries (csize, dsize, XXH64 low 32 bits) are read and checked."""
    chunks = [source(1000 + 100 * i, 50 + i) for i in range(6)]
    data = b"".join(chunks)
    path = tmp_path / "sums.zst"
    build_checksummed(path, chunks)
    with SeekableReader(path) as reader:
        assert reader.table.checksums == [checksum32(c) for c in chunks]
        assert reader.read() == data
        rng = random.Random(1)
        for _ in range(50):
            start = rng.randrange(len(data))
            end = rng.randrange(start, len(data) + 1)
            assert reader.read_range(start, end) == data[start:end]


def test_wrong_seek_table_checksum_is_corruption(tmp_path: Path) -> None:
    """A frame whose bytes do not match its seek-table checksum raises CorruptionError;
    the other frames still read; verify_checksums=False skips the check."""
    chunks = [source(1000, 60 + i) for i in range(4)]
    data = b"".join(chunks)
    path = tmp_path / "badsum.zst"
    build_checksummed(path, chunks, bad=2)
    with SeekableReader(path) as reader:
        assert reader.read_range(0, 2000) == data[:2000]
        assert reader.read_range(3000, 4000) == data[3000:]
        with pytest.raises(CorruptionError):
            reader.read_range(2500, 2501)
        with pytest.raises(CorruptionError):
            reader.read_range(0, 4000)
    with SeekableReader(path, verify_checksums=False) as lenient:
        assert lenient.read_range(0, 4000) == data


def test_reader_steps_over_skippable_frames(tmp_path: Path) -> None:
    """Skippable frames (decompressed size 0 in the table) at the start, middle and end."""
    chunks = [source(800, 70), source(1200, 71), source(500, 72)]
    data = b"".join(chunks)
    parts = [
        skippable_frame(b"head"),
        one_frame(chunks[0]),
        skippable_frame(b"x" * 100),
        skippable_frame(b""),
        one_frame(chunks[1]),
        one_frame(chunks[2]),
        skippable_frame(b"tail" * 9),
    ]
    dsizes = [0, 800, 0, 0, 1200, 500, 0]
    path = tmp_path / "skip.zst"
    path.write_bytes(b"".join(parts) + encode_seek_table([(len(p), d) for p, d in zip(parts, dsizes)]))
    with SeekableReader(path) as reader:
        assert reader.size == len(data)
        assert reader.read() == data
        for start, end in (
            (0, 800),
            (799, 801),
            (800, 801),
            (800, 2000),
            (1999, 2001),
            (2000, 2500),
            (0, 2500),
            (2499, 2500),
            (0, 1),
        ):
            before = reader.frames_decompressed
            assert reader.read_range(start, end) == data[start:end], (start, end)
            touched = len({0 if p < 800 else 1 if p < 2000 else 2 for p in range(start, end)})
            assert reader.frames_decompressed - before == touched, (start, end)
        reader.seek(800)
        assert reader.read(5) == data[800:805]


def test_reader_with_checksums_and_skippable_frames(tmp_path: Path) -> None:
    """Both at once: a skippable frame's entry carries the checksum of no bytes."""
    chunks = [source(700, 80), source(900, 81)]
    parts = [one_frame(chunks[0]), skippable_frame(b"meta" * 4), one_frame(chunks[1], content_size=False)]
    sizes = [(len(parts[0]), 700), (len(parts[1]), 0), (len(parts[2]), 900)]
    sums = [checksum32(chunks[0]), checksum32(b""), checksum32(chunks[1])]
    path = tmp_path / "both.zst"
    path.write_bytes(b"".join(parts) + encode_seek_table(sizes, checksums=sums))
    with SeekableReader(path) as reader:
        assert reader.read_range(650, 750) == (chunks[0] + chunks[1])[650:750]
        assert reader.read() == chunks[0] + chunks[1]


def test_encode_and_parse_seek_table_round_trip() -> None:
    """encode_seek_table and parse_seek_table agree on offsets and checksums."""
    sizes = [(10, 100), (8, 0), (25, 1000), (1, 1)]
    for sums in (None, [1, 2, 3, 0xFFFFFFFF]):
        body = b"\0" * 44 + encode_seek_table(sizes, checksums=sums)

        def read_at(offset: int, size: int, raw: bytes = body) -> bytes:
            return raw[offset : offset + size]

        table = parse_seek_table(read_at, len(body))
        assert table.c_offsets == [0, 10, 18, 43, 44]
        assert table.d_offsets == [0, 100, 100, 1100, 1101]
        assert table.checksums == sums
        assert table.sizes() == sizes
        assert table.frame_at(100) == 2
        assert table.frame_at(99) == 0
        assert table.frame_at(1100) == 3


# -- FrameCache --------------------------------------------------------------------------------


def test_frame_cache_lru_eviction_by_bytes() -> None:
    """The least recently used frames go first, until the bytes fit the bound."""
    cache = FrameCache(100)
    cache.put("a", b"a" * 40)
    cache.put("b", b"b" * 40)
    assert cache.size_bytes == 80
    assert cache.get("a") == b"a" * 40  # a is now the most recently used
    cache.put("c", b"c" * 40)  # 120 > 100: evict b
    assert cache.get("b") is None
    assert cache.get("a") == b"a" * 40
    assert cache.get("c") == b"c" * 40
    assert cache.size_bytes == 80
    cache.put("d", b"d" * 90)  # evicts a and c
    assert cache.size_bytes == 90
    assert cache.get("a") is None and cache.get("c") is None
    assert cache.get("d") == b"d" * 90
    cache.put("d", b"D" * 10)  # replacing a key counts the new size only
    assert cache.size_bytes == 10
    assert cache.get("d") == b"D" * 10
    cache.put("huge", b"h" * 101)  # larger than the whole cache: not cached, evicts nothing
    assert cache.get("huge") is None
    assert cache.get("d") == b"D" * 10
    cache.put("exact", b"e" * 100)
    assert cache.size_bytes == 100
    assert cache.get("d") is None
    cache.clear()
    assert cache.size_bytes == 0
    assert cache.get("exact") is None


def test_frame_cache_counts_hits_and_misses() -> None:
    """hits and misses count lookups."""
    cache = FrameCache(1000)
    assert cache.get(1) is None
    cache.put(1, b"x")
    assert cache.get(1) == b"x"
    assert cache.get(1) == b"x"
    assert cache.get(2) is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_frame_cache_of_size_zero_caches_nothing() -> None:
    """A cache of 0 bytes never returns a frame, empty frames included."""
    cache = FrameCache(0)
    for key, value in ((1, b"x"), (2, b"y" * 1000), (3, b"")):
        cache.put(key, value)
        assert cache.get(key) is None, key
    assert cache.size_bytes == 0
    assert cache.hits == 0
    with pytest.raises(ValueError):
        FrameCache(-1)


def test_reader_with_size_zero_cache_decompresses_every_time(tmp_path: Path) -> None:
    """FrameCache(0) given to a reader: every read decompresses again."""
    path = tmp_path / "nocache.zst"
    data = source(5000, 90)
    write_file(path, data, 1000)
    cache = FrameCache(0)
    with SeekableReader(path, cache=cache) as reader:
        for _ in range(3):
            assert reader.read_range(500, 1500) == data[500:1500]
        assert reader.frames_decompressed == 6
        assert cache.misses == 6
        assert cache.size_bytes == 0


# -- stored frames ----------------------------------------------------------------------------


def test_stored_payload_finds_the_bytes_of_one_block_stored_frames() -> None:
    """Our stored frames and zstd's own raw-block frames: the payload offset, whose bytes are the content."""
    rng = random.Random(21)
    for size in (1, 255, 256, 4096, 65791, 65792, 128 * 1024):
        content = rng.randbytes(size)
        for frame in (
            stored_frame(content),
            zstandard.ZstdCompressor(write_checksum=True).compress(content),
            zstandard.ZstdCompressor(write_content_size=False).compress(content),
        ):
            at = stored_payload(frame[:STORED_PROBE_BYTES], len(frame), size)
            assert at > 0 and frame[at : at + size] == content, (size, frame[:8].hex())


def test_stored_payload_refuses_everything_else() -> None:
    """Compressed frames, wrong sizes, other magic, reserved bits, multi-block frames: -1."""
    text = b"compressible " * 400
    compressed = zstandard.ZstdCompressor().compress(text)
    assert stored_payload(compressed[:STORED_PROBE_BYTES], len(compressed), len(text)) == -1
    frame = stored_frame(b"x" * 5000)
    head = frame[:STORED_PROBE_BYTES]
    assert stored_payload(head, len(frame), 5000) > 0
    assert stored_payload(head, len(frame) + 1, 5000) == -1  # sizes disagree with the table
    assert stored_payload(head, len(frame), 4999) == -1
    assert stored_payload(b"\x00" + head[1:], len(frame), 5000) == -1  # magic
    assert stored_payload(head[:4] + bytes([head[4] | 0x08]) + head[5:], len(frame), 5000) == -1  # reserved bit
    assert stored_payload(head[:3], len(frame), 5000) == -1  # too short to tell
    big = stored_frame(b"y" * (128 * 1024 + 1))  # two blocks: decompressed instead
    assert stored_payload(big[:STORED_PROBE_BYTES], len(big), 128 * 1024 + 1) == -1
    rng = random.Random(22)
    for _ in range(2000):  # random headers never raise
        junk = rng.randbytes(rng.randrange(STORED_PROBE_BYTES + 1))
        assert stored_payload(junk, rng.randrange(1 << 20), rng.randrange(1 << 18)) >= -1


def test_compress_frames_stores_what_barely_compresses() -> None:
    """Frames saving less than min_saving come back stored, others compressed; both decode."""
    rng = random.Random(23)
    noise, text = rng.randbytes(8192), b"all work and no play " * 400
    data = noise + text[:8192]
    for threads in (1, 2):
        frames = compress_frames(data, 8192, 3, threads)
        assert frames[0] == stored_frame(noise)
        assert len(frames[1]) < 2000
        assert b"".join(zstandard.ZstdDecompressor().decompress(f) for f in frames) == data
        assert compress_frames(data, 8192, 3, threads, min_saving=0.0)[0] == stored_frame(noise)
        assert len(compress_frames(text[:8192], 8192, 3, threads, min_saving=0.999)[0]) > 8192
