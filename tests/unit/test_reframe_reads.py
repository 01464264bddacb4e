"""The reads a re-framing makes of a sealed segment of small puts: ``SeekableReader.read_span``
(one pread per piece, stored frames taken in place once checked), ``index.frame_summary`` (the
re-framing decision without decoding every record) and the rewrite's SEAL check."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
import xxhash
import zstandard

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import CorruptionError, FlatFileDbUnsafeAccessError
from conduit_flat_file_db.frames import stored_frame
from conduit_flat_file_db.index import FLAG_STORED, HEADER_BYTES, REC_FRAME, decode_records, frame_summary
from conduit_flat_file_db.naming import index_name
from conduit_flat_file_db.rewrite import rewrite_segment
from conduit_flat_file_db.seekable import Framing, SeekableReader, encode_seek_table

SKIPPABLE = struct.pack("<II", 0x184D2A50, 4) + b"meta"


def mixed_file(path: Path, seed: int, checksums: bool) -> bytes:
    """A seekable file of stored frames (one block, and a 200 KiB one of two blocks), compressed
    frames, a frame without content size and a skippable frame; returns its content."""
    rng = random.Random(seed)
    parts: list[tuple[bytes, bytes]] = []
    for number in range(60):
        data = rng.randbytes(rng.choice([0, 1, 255, 256, 1000, 5000])) if number % 5 else b"abc" * rng.randint(1, 900)
        if number % 7 == 3:
            frame = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(data)
        elif number % 11 == 4:
            frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
        else:
            frame = stored_frame(data)
        parts.append((frame, data))
        if number == 30:
            parts.append((SKIPPABLE, b""))
            big = rng.randbytes(200 * 1024)
            parts.append((stored_frame(big), big))
    sizes = [(len(frame), len(data)) for frame, data in parts]
    sums = [xxhash.xxh64_intdigest(data) & 0xFFFFFFFF for _, data in parts] if checksums else None
    path.write_bytes(b"".join(frame for frame, _ in parts) + encode_seek_table(sizes, checksums=sums))
    return b"".join(data for _, data in parts)


@pytest.mark.parametrize("checksums", [False, True])
def test_read_span_reads_what_read_range_reads(tmp_path: Path, checksums: bool) -> None:
    """read_span returns the bytes read_range returns, for any range over any kind of frame."""
    path = tmp_path / "mixed.zst"
    content = mixed_file(path, 1, checksums)
    rng = random.Random(2)
    with SeekableReader(path) as reader:
        assert reader.read_span(0, len(content)) == content
        for _ in range(300):
            start = rng.randrange(len(content) + 1)
            end = rng.randint(start, min(len(content), start + rng.choice([1, 100, 5000, 300_000])))
            assert reader.read_span(start, end) == reader.read_range(start, end) == content[start:end]
        with pytest.raises(ValueError):
            reader.read_span(0, len(content) + 1)


def stored_at(path: Path, data: bytes) -> int:
    """File offset of the stored frame holding ``data``."""
    at = path.read_bytes().find(stored_frame(data))
    assert at >= 0
    return at


@pytest.mark.parametrize("where", ["content", "checksum", "content-size"])
def test_read_span_refuses_a_stored_frame_that_fails_its_checks(tmp_path: Path, where: str) -> None:
    """A stored frame whose content, content checksum or content-size field was changed is refused
    with CorruptionError, as decompressing it refuses it: read_span never returns other bytes."""
    data = bytes(range(200)) * 5
    frames = [stored_frame(b"before" * 50), stored_frame(data), stored_frame(b"after" * 50)]
    sizes = [(len(frames[0]), 300), (len(frames[1]), len(data)), (len(frames[2]), 250)]
    path = tmp_path / "one.zst"
    path.write_bytes(b"".join(frames) + encode_seek_table(sizes))
    at = stored_at(path, data)
    offset = {"content": at + 10 + 3 + 100, "checksum": at + len(frames[1]) - 2, "content-size": at + 5}[where]
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with SeekableReader(path) as reader:
        assert reader.read_span(0, 300) == b"before" * 50
        with pytest.raises(CorruptionError):
            reader.read_span(0, 300 + len(data) + 250)
        with pytest.raises(CorruptionError):
            reader.read_range(300, 300 + len(data))


def test_read_span_checks_the_seek_tables_checksums(tmp_path: Path) -> None:
    """A stored frame that is whole but not what the seek table's checksum says is refused."""
    data = b"x" * 1000
    frame = stored_frame(data)
    path = tmp_path / "sums.zst"
    path.write_bytes(frame + encode_seek_table([(len(frame), len(data))], checksums=[12345]))
    with SeekableReader(path) as reader, pytest.raises(CorruptionError):
        reader.read_span(0, 1000)
    with SeekableReader(path, verify_checksums=False) as reader:
        assert reader.read_span(0, 1000) == data


def test_frame_summary_counts_as_the_decoded_records_do(tmp_path: Path) -> None:
    """frame_summary finds the FRAME records, whether one is STORED and the bytes they hold, as
    decoding every record does, in segments written by put (stored frames) and put_many."""
    for compressed_many in (False, True):
        datadir = tmp_path / f"db{compressed_many}"
        with FlatFileDb(datadir, use_compression=True, reframe_on_seal=False) as db:
            if compressed_many:
                db.put_many([os.urandom(20) + b"z" * 20000 for _ in range(10)])
            else:
                for size in (0, 5, 1000, 9000, 40000):
                    db.put(b"q" * size)
            db.rotate()
        raw = (datadir / index_name(0)).read_bytes()[HEADER_BYTES:]
        records = [r for r in decode_records(raw).records if r.rtype == REC_FRAME]
        expected = (
            len(records),
            any(r.flags & FLAG_STORED for r in records),
            sum(r.uncompressed_size for r in records),
        )
        assert frame_summary(raw) == expected
        assert expected[1] == (not compressed_many)
    assert frame_summary(b"") == (0, False, 0)


def test_rewrite_refuses_the_mutable_segment_whose_index_ends_in_room(tmp_path: Path) -> None:
    """The rewrite's SEAL check reads the last record only when it is a SEAL that ends the file;
    the mutable segment, whose index may end in zero room, is still refused."""
    datadir = tmp_path / "db"
    with FlatFileDb(datadir, use_compression=True) as db:
        for _ in range(20):
            db.put(b"m" * 700)
        index = datadir / index_name(0)
        size = os.path.getsize(index)
        with open(index, "r+b") as handle:  # room of a whole number of records: zeros
            handle.truncate(size + 64 * 32 - (size - HEADER_BYTES) % 32)
        framing = Framing(True, frame_bytes=16384)
        with pytest.raises(FlatFileDbUnsafeAccessError):
            rewrite_segment(db._dir_fd, str(datadir), 0, framing, write_lock=db._write_lock, state=db._state)  # pylint: disable=protected-access
        db.rotate()
        db._wait_seal_hooks()  # pylint: disable=protected-access  # not racing the seal hook's own rewrite
        assert rewrite_segment(db._dir_fd, str(datadir), 0, framing, write_lock=db._write_lock, state=db._state)  # pylint: disable=protected-access
        assert db.verify().ok
