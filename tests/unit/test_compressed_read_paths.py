"""Reads from compressed segments: the frame lookup (a guess, a near search, a full search), the
frame table a reader of a mutable segment builds from its FRAME records, and the record scans
behind it, each against a slower reference that builds every Record."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.index import (
    REC_FRAME,
    REC_SEAL,
    RECORD_BYTES,
    decode_records,
    encode_record,
    scan_frame_records,
)
from conduit_flat_file_db.seekable import FrameTable


def _blobs(rng: random.Random, sizes: list[int]) -> list[bytes]:
    """Compressible blobs (a few distinct words) of the given sizes."""
    words = [rng.randbytes(6).hex().encode() for _ in range(16)]
    out = []
    for size in sizes:
        text = b" ".join(rng.choice(words) for _ in range(size // 8 + 1))
        out.append(text[:size])
    return out


def _check_every_read(db: FlatFileDb, blobs: list[bytes], locations: list[DataLocation], rng: random.Random) -> None:
    for blob, location in zip(blobs, locations):
        assert db.get(location) == blob
        if blob:
            low = rng.randrange(len(blob))
            high = rng.randrange(low, len(blob)) + 1
            assert db.get(location, Slice(low, high)) == blob[low:high]


def test_blobs_in_frames_of_uneven_sizes_read_back_sealed_and_mutable(tmp_path: Path) -> None:
    """Every blob and a slice of each, wherever its frame's start lies from the guess."""
    # Batches of uneven sizes end frames early, so the equal-size guess misses near batch ends
    # (the near search finds them); 300 frames of 20 bytes before a blob of 500 full frames put
    # the guess for each of them far off (the full search finds those).
    rng = random.Random(7)
    sizes = [20] * 300 + [2_000_000] + [rng.choice([0, 1, 100, 1000, 3000, 9000]) for _ in range(600)]
    blobs = _blobs(rng, sizes)
    for frame_cache_bytes in (0, 2**20):
        path = tmp_path / f"db{frame_cache_bytes}"
        with FlatFileDb(path, use_compression=True, frame_bytes=4096, frame_cache_bytes=frame_cache_bytes) as db:
            locations = [db.put(blob) for blob in blobs[:300]]
            at = 300
            while at < len(blobs):
                count = rng.choice([1, 3, 17, 60])
                locations += db.put_many(blobs[at : at + count])
                at += count
            _check_every_read(db, blobs, locations, rng)  # mutable
            db.rotate()
            _check_every_read(db, blobs, locations, rng)  # sealed (re-framed or not)
        with FlatFileDb(path, use_compression=True, frame_bytes=4096, frame_cache_bytes=frame_cache_bytes) as db:
            _check_every_read(db, blobs, locations, rng)  # a new reader of the sealed segment


def test_a_reader_of_a_growing_compressed_segment_sees_each_new_blob(tmp_path: Path) -> None:
    """A second instance reads each blob just put: its table grows by the new FRAME records."""
    rng = random.Random(3)
    blobs = _blobs(rng, [rng.randrange(1, 20_000) for _ in range(300)])
    with FlatFileDb(tmp_path / "db", use_compression=True, frame_bytes=2048) as writer:
        with FlatFileDb(tmp_path / "db", use_compression=True, frame_bytes=2048) as reader:
            locations = []
            for blob in blobs:
                locations.append(writer.put(blob))
                # The reader refreshes its table from the new FRAME records, a few at a time.
                assert reader.get(locations[-1]) == blob
            _check_every_read(reader, blobs, locations, rng)


def _reference(buf: bytes) -> tuple[list[int], int, int]:
    scan = decode_records(buf)
    sizes = [r.size for r in scan.records if r.rtype == REC_FRAME]
    seals = [r.offset for r in scan.records if r.rtype == REC_SEAL]
    return sizes, seals[-1] if seals else -1, scan.valid_bytes


_record = st.tuples(
    st.sampled_from([1, 2, 3]), st.integers(0, 15), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)
).map(lambda t: encode_record(t[0], t[1], t[2], t[3], t[2] ^ t[3]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_record, max_size=40),
    st.sampled_from(["none", "crc", "type", "torn"]),
    st.integers(0, 39),
    st.integers(0, RECORD_BYTES - 1),
)
def test_the_frame_scan_reads_what_decoding_every_record_reads(
    records: list[bytes], damage: str, which: int, byte: int
) -> None:
    """Valid runs, a flipped byte, an unknown type with a valid CRC, a torn tail."""
    buf = bytearray(b"".join(records))
    if damage == "crc" and records:
        buf[(which % len(records)) * RECORD_BYTES + byte] ^= 0x5A
    elif damage == "type" and records:
        at = (which % len(records)) * RECORD_BYTES
        body = bytes(buf[at + 8 : at + RECORD_BYTES])
        prefix = bytes((9, 0, 0, 0))  # a record type this release does not know, with a valid CRC
        buf[at : at + 8] = prefix + struct.pack("<I", zlib.crc32(body, zlib.crc32(prefix)))
    elif damage == "torn":
        buf += os.urandom(byte % (RECORD_BYTES - 1) + 1)
    assert scan_frame_records(bytes(buf)) == _reference(bytes(buf))
    assert scan_frame_records(memoryview(bytes(buf))) == _reference(bytes(buf))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=6), max_size=5))
def test_extending_a_frame_table_equals_appending_each_frame(batches: list[list[tuple[int, int]]]) -> None:
    """FrameTable.extend from size words gives the offsets of one append per frame."""
    one, many = FrameTable([0], [0]), FrameTable([0], [0])
    for batch in batches:
        for csize, dsize in batch:
            one.append(csize, dsize)
        many.extend([csize << 32 | dsize for csize, dsize in batch])
        assert (many.c_offsets, many.d_offsets) == (one.c_offsets, one.d_offsets)
