"""Golden bytes of the record index (index.py; FORMAT.md "Record index").

Layout, all integers little-endian:

Header, 32 bytes::

    0   8  magic      b"FFDB-IDX"
    8   2  version    u16 = 1
    10  1  kind       u8  (0 raw, 1 zstd)
    11  1  flags      u8  = 0
    12  4  segment    u32
    16  8  created_ns u64
    24  4  reserved   u32 = 0
    28  4  crc32      u32 of bytes 0..27

Record, 32 bytes::

    0   1  type       u8  (1 BLOB, 2 FRAME, 3 SEAL)
    1   1  flags      u8  (0x01 LEGACY_EXTENT)
    2   2  reserved   u16 = 0
    4   4  crc32      u32 of bytes 0..3 followed by bytes 8..31
    8   8  a          u64 (BLOB: start; SEAL: uncompressed size)
    16  8  b          u64 (BLOB: length; SEAL: blob count)
    24  8  c          u64 (BLOB: XXH3-64 of the blob; SEAL: data file size)

The hex literals below were written field by field from this table; the crc32 values
were computed once with zlib.crc32 over the documented byte ranges (the tests check
that derivation too).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from conduit_flat_file_db import FlatFileDb, FormatError, IndexVersionError
from conduit_flat_file_db.index import (
    FLAG_LEGACY_EXTENT,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_FRAME,
    REC_SEAL,
    RECORD_BYTES,
    IndexHeader,
    Record,
    blob_checksum,
    contiguous,
    decode_header,
    decode_records,
    encode_blob,
    encode_frame,
    encode_header,
    encode_record,
    encode_seal,
    frame_sizes,
)


def fields(*hex_fields: str) -> bytes:
    """Bytes from hex fields written one after the other."""
    return bytes.fromhex("".join(hex_fields))


# XXH3-64, seed 0, of b"hello" / b"" / b"world!!" (published test vector for b"": 2d06800538d394c2).
XXH3_HELLO = 0x9555E8555C62DCFD
XXH3_EMPTY = 0x2D06800538D394C2
XXH3_WORLD = 0xA45F6047C9F5B0A1

# Header of segment 7, raw, created_ns 0x0102030405060708.
GOLDEN_HEADER = fields(
    "464644422d494458",  # magic "FFDB-IDX"
    "0100",  # version 1
    "00",  # kind raw
    "00",  # flags
    "07000000",  # segment 7
    "0807060504030201",  # created_ns
    "00000000",  # reserved
    "24e28650",  # crc32(bytes 0..27) = 0x5086e224
)

# BLOB record: start 0x10, length 5, checksum XXH3(b"hello").
GOLDEN_BLOB = fields(
    "01",  # type BLOB
    "00",  # flags
    "0000",  # reserved
    "bc7cae28",  # crc32(bytes 0..3 + 8..31) = 0x28ae7cbc
    "1000000000000000",  # a = start 16
    "0500000000000000",  # b = length 5
    "fddc625c55e85595",  # c = 0x9555e8555c62dcfd
)

# SEAL record: 21 uncompressed bytes, 3 blobs, 21 bytes on disk.
GOLDEN_SEAL = fields(
    "03",
    "00",
    "0000",
    "367f7508",  # crc32 = 0x08757f36
    "1500000000000000",  # a = 21
    "0300000000000000",  # b = 3
    "1500000000000000",  # c = 21
)

# FRAME record: uncompressed start 0x1000, (compressed 0x30 << 32) | uncompressed 0x1000, at 0x40.
GOLDEN_FRAME = fields(
    "02",
    "00",
    "0000",
    "3960bffb",  # crc32 = 0xfbbf6039
    "0010000000000000",
    "0010000030000000",
    "4000000000000000",
)

# BLOB with LEGACY_EXTENT: 100 bytes at 0, checksum 0xdeadbeef.
GOLDEN_LEGACY = fields(
    "01",
    "01",
    "0000",
    "8d90c4bb",  # crc32 = 0xbbc4908d
    "0000000000000000",
    "6400000000000000",
    "efbeadde00000000",
)


def _record_crc(record: bytes) -> int:
    return zlib.crc32(record[0:4] + record[8:32])


# -- golden encodings ----------------------------------------------------------------------


def test_constants() -> None:
    """Sizes and codes the layout above relies on."""
    assert (HEADER_BYTES, RECORD_BYTES) == (32, 32)
    assert (REC_BLOB, REC_FRAME, REC_SEAL, FLAG_LEGACY_EXTENT) == (1, 2, 3, 1)
    assert (KIND_RAW, KIND_ZSTD) == (0, 1)


def test_blob_checksum_is_xxh3_64() -> None:
    """The blob checksum is XXH3-64 with seed 0."""
    assert blob_checksum(b"") == XXH3_EMPTY
    assert blob_checksum(b"hello") == XXH3_HELLO
    assert blob_checksum(b"world!!") == XXH3_WORLD


def test_golden_header() -> None:
    """encode_header writes the documented 32 bytes; decode_header reads them back."""
    assert zlib.crc32(GOLDEN_HEADER[:28]) == int.from_bytes(GOLDEN_HEADER[28:], "little")
    assert encode_header(7, KIND_RAW, 0x0102030405060708) == GOLDEN_HEADER
    assert decode_header(GOLDEN_HEADER, "x.idx") == IndexHeader(1, KIND_RAW, 0, 7, 0x0102030405060708)


def test_golden_blob_record() -> None:
    """encode_blob writes the documented BLOB record."""
    assert _record_crc(GOLDEN_BLOB) == int.from_bytes(GOLDEN_BLOB[4:8], "little")
    assert encode_blob(16, 5, XXH3_HELLO) == GOLDEN_BLOB
    assert encode_record(REC_BLOB, 0, 16, 5, XXH3_HELLO) == GOLDEN_BLOB


def test_golden_seal_record() -> None:
    """encode_seal writes the documented SEAL record."""
    assert _record_crc(GOLDEN_SEAL) == int.from_bytes(GOLDEN_SEAL[4:8], "little")
    assert encode_seal(21, 3, 21) == GOLDEN_SEAL


def test_golden_frame_record() -> None:
    """A FRAME record packs compressed and uncompressed sizes into b."""
    assert _record_crc(GOLDEN_FRAME) == int.from_bytes(GOLDEN_FRAME[4:8], "little")
    assert encode_record(REC_FRAME, 0, 0x1000, (0x30 << 32) | 0x1000, 0x40) == GOLDEN_FRAME


def test_golden_legacy_extent_record() -> None:
    """The flags byte is covered by the crc."""
    assert _record_crc(GOLDEN_LEGACY) == int.from_bytes(GOLDEN_LEGACY[4:8], "little")
    assert encode_record(REC_BLOB, FLAG_LEGACY_EXTENT, 0, 100, 0xDEADBEEF) == GOLDEN_LEGACY


def test_decode_golden_records() -> None:
    """A run of valid records decodes whole, in order."""
    scan = decode_records(GOLDEN_BLOB + GOLDEN_FRAME + GOLDEN_LEGACY + GOLDEN_SEAL)
    assert scan.problem is None
    assert scan.valid_bytes == 4 * RECORD_BYTES
    assert scan.records == [
        Record(REC_BLOB, 0, 16, 5, XXH3_HELLO),
        Record(REC_FRAME, 0, 0x1000, (0x30 << 32) | 0x1000, 0x40),
        Record(REC_BLOB, FLAG_LEGACY_EXTENT, 0, 100, 0xDEADBEEF),
        Record(REC_SEAL, 0, 21, 3, 21),
    ]


def test_decode_empty_run() -> None:
    """No bytes, no records, no problem."""
    assert decode_records(b"") == ([], 0, None)


# -- decode_records corruption cases ---------------------------------------------------------


def test_decode_records_torn_record() -> None:
    """A partial trailing record is cut off; the whole records before it stay."""
    scan = decode_records(GOLDEN_BLOB + GOLDEN_SEAL[:17])
    assert scan.records == [Record(REC_BLOB, 0, 16, 5, XXH3_HELLO)]
    assert scan.valid_bytes == 32
    assert scan.problem is not None and "torn" in scan.problem and "32" in scan.problem


def test_decode_records_flipped_checksum_byte() -> None:
    """A flipped bit in the crc field fails the record and everything after it."""
    bad = bytearray(GOLDEN_SEAL)
    bad[5] ^= 0x40
    scan = decode_records(GOLDEN_BLOB + bytes(bad) + GOLDEN_FRAME)
    assert scan.records == [Record(REC_BLOB, 0, 16, 5, XXH3_HELLO)]
    assert scan.valid_bytes == 32
    assert scan.problem is not None and "checksum" in scan.problem and "32" in scan.problem


@pytest.mark.parametrize("position", [0, 1, 2, 3, 8, 15, 16, 24, 31])
def test_decode_records_flipped_covered_byte(position: int) -> None:
    """Every byte except the crc itself is covered by the crc."""
    bad = bytearray(GOLDEN_BLOB)
    bad[position] ^= 0x01
    scan = decode_records(bytes(bad))
    assert scan.records == []
    assert scan.valid_bytes == 0
    assert scan.problem is not None


def test_decode_records_unknown_record_type() -> None:
    """A well-formed record of an unknown type stops decoding."""
    unknown = fields(
        "09",
        "00",
        "0000",
        "bb256004",  # a valid crc32 for this record
        "0100000000000000",
        "0200000000000000",
        "0300000000000000",
    )
    assert _record_crc(unknown) == int.from_bytes(unknown[4:8], "little")
    scan = decode_records(GOLDEN_BLOB + unknown)
    assert scan.records == [Record(REC_BLOB, 0, 16, 5, XXH3_HELLO)]
    assert scan.valid_bytes == 32
    assert scan.problem is not None and "unknown record type 9" in scan.problem


def test_decode_records_type_zero_with_valid_crc() -> None:
    """Type 0 is not a record even when its crc is right."""
    zero_type = fields("00000000", "e9777080") + bytes(24)
    assert _record_crc(zero_type) == int.from_bytes(zero_type[4:8], "little")
    scan = decode_records(zero_type)
    assert (scan.records, scan.valid_bytes) == ([], 0)
    assert scan.problem is not None and "unknown record type 0" in scan.problem


def test_decode_records_zero_filled_record() -> None:
    """A zero-filled tail (a file system's hole after a crash) is not a record."""
    scan = decode_records(GOLDEN_BLOB + bytes(RECORD_BYTES) + GOLDEN_SEAL)
    assert scan.records == [Record(REC_BLOB, 0, 16, 5, XXH3_HELLO)]
    assert scan.valid_bytes == 32
    assert scan.problem is not None and "checksum" in scan.problem


# -- decode_header corruption cases ----------------------------------------------------------


def test_decode_header_bad_magic() -> None:
    """Another file's first bytes are refused, naming the path."""
    bad = b"FFDB-IDY" + GOLDEN_HEADER[8:]
    with pytest.raises(FormatError, match="magic") as info:
        decode_header(bad, "/d/data_00000007.idx")
    assert "/d/data_00000007.idx" in str(info.value)


def test_decode_header_of_a_newer_version_is_refused_as_such() -> None:
    """A header of version 3 with a valid crc is refused as a newer release's, not as damage."""
    v3 = fields("464644422d494458", "0300", "00", "00", "00000000", "0000000000000000", "00000000", "74a605ca")
    assert zlib.crc32(v3[:28]) == int.from_bytes(v3[28:], "little")
    with pytest.raises(IndexVersionError, match="version 3 was written by a newer release") as info:
        decode_header(v3, "/d/data_00000000.idx")
    assert "/d/data_00000000.idx" in str(info.value)


def test_decode_header_of_version_0_is_refused() -> None:
    """Version 0 was never written: a FormatError, not an IndexVersionError."""
    v0 = fields("464644422d494458", "0000", "00", "00", "00000000", "0000000000000000", "00000000", "beebac65")
    with pytest.raises(FormatError, match="version 0") as info:
        decode_header(v0, "/d/data_00000000.idx")
    assert not isinstance(info.value, IndexVersionError)


def test_version_2_header_is_read_and_its_log_records_found(tmp_path: Path) -> None:
    """A store opened with log_records writes version 2 and finds its LOG records again."""
    db = FlatFileDb(tmp_path / "d", log_records=True)
    db.put(b"value")
    log = db.put_log(b"log")
    assert decode_header((tmp_path / "d" / "data_00000000.idx").read_bytes(), "x").version == 2
    assert [(r.segment, r.start_offset, r.end_offset) for r in db.iter_log()] == [(0, 5, 8)]
    assert db.get(log) == b"log"
    db.close()


def test_open_refuses_a_newer_index_version_and_leaves_the_files_alone(tmp_path: Path) -> None:
    """Recovery used to take an unknown version for a missing index and rebuild the segment as one
    legacy extent, destroying the records a newer release wrote; now the open is refused."""
    db = FlatFileDb(tmp_path / "d")
    db.put(b"abc")
    db.close()
    index = tmp_path / "d" / "data_00000000.idx"
    raw = bytearray(index.read_bytes())
    raw[8:10] = (3).to_bytes(2, "little")
    raw[28:32] = zlib.crc32(bytes(raw[:28])).to_bytes(4, "little")
    index.write_bytes(bytes(raw))
    with pytest.raises(IndexVersionError, match="newer release"):
        FlatFileDb(tmp_path / "d")
    assert index.read_bytes() == bytes(raw)
    reader = FlatFileDb(tmp_path / "d", readonly=True)  # writes nothing, so it may open
    with pytest.raises(IndexVersionError, match="newer release"):
        list(reader.iter_records())
    reader.close()
    assert index.read_bytes() == bytes(raw)


def test_decode_header_unknown_kind() -> None:
    """Kind 2 with a valid crc is refused."""
    kind2 = fields("464644422d494458", "0100", "02", "00", "00000000", "0000000000000000", "00000000", "7bbb1f05")
    assert zlib.crc32(kind2[:28]) == int.from_bytes(kind2[28:], "little")
    with pytest.raises(FormatError, match="kind 2"):
        decode_header(kind2, "x.idx")


def test_decode_header_zstd_kind() -> None:
    """Kind 1 (zstd) with a valid crc decodes."""
    kind1 = fields("464644422d494458", "0100", "01", "00", "00000000", "0000000000000000", "00000000", "196699ef")
    assert decode_header(kind1, "x.idx") == IndexHeader(1, KIND_ZSTD, 0, 0, 0)


@pytest.mark.parametrize("position", [8, 10, 12, 16, 23, 24, 28, 31])
def test_decode_header_bad_crc(position: int) -> None:
    """Any flipped bit after the magic fails the header crc."""
    bad = bytearray(GOLDEN_HEADER)
    bad[position] ^= 0x10
    with pytest.raises(FormatError, match="checksum") as info:
        decode_header(bytes(bad), "/d/data_00000007.idx")
    assert "/d/data_00000007.idx" in str(info.value)


@pytest.mark.parametrize("length", [0, 1, 8, 31])
def test_decode_header_short(length: int) -> None:
    """Fewer than 32 bytes is refused with the size in the message."""
    with pytest.raises(FormatError) as info:
        decode_header(GOLDEN_HEADER[:length], "/d/data_00000007.idx")
    assert "/d/data_00000007.idx" in str(info.value)
    assert f"{length} bytes" in str(info.value)


def test_decode_header_ignores_records_after_it() -> None:
    """decode_header reads the first 32 bytes of a whole index file."""
    assert decode_header(GOLDEN_HEADER + GOLDEN_BLOB, "x.idx").segment == 7


# -- end to end ------------------------------------------------------------------------------


def test_index_file_written_by_store(tmp_path: Path) -> None:
    """The .idx a store writes after known puts and a rotation, byte for byte (except created_ns)."""
    with FlatFileDb(tmp_path / "s", tmp_path / "s.lock") as store:
        store.put(b"hello")
        store.put(b"")
        store.put_many([b"world!!"])
        store.rotate()
        report = store.verify()
        assert report.ok, str(report)
    raw = (tmp_path / "s" / "data_00000000.idx").read_bytes()
    assert len(raw) == HEADER_BYTES + 4 * RECORD_BYTES
    header, records = raw[:HEADER_BYTES], raw[HEADER_BYTES:]
    assert header[:16] == fields("464644422d494458", "0100", "00", "00", "00000000")
    assert header[24:28] == bytes(4)
    assert zlib.crc32(header[:28]) == int.from_bytes(header[28:], "little")
    assert records == fields(
        # BLOB start 0, length 5, XXH3(b"hello")
        "01000000",
        "8103c557",
        "0000000000000000",
        "0500000000000000",
        "fddc625c55e85595",
        # BLOB start 5, length 0, XXH3(b"")
        "01000000",
        "6eee778a",
        "0500000000000000",
        "0000000000000000",
        "c294d3380580062d",
        # BLOB start 5, length 7, XXH3(b"world!!")
        "01000000",
        "85ae5bd1",
        "0500000000000000",
        "0700000000000000",
        "a1b0f5c947605fa4",
        # SEAL 12 bytes, 3 blobs, 12 bytes on disk
        "03000000",
        "9273c247",
        "0c00000000000000",
        "0300000000000000",
        "0c00000000000000",
    )
    assert (tmp_path / "s" / "data_00000000.dat").read_bytes() == b"helloworld!!"
    new_header = (tmp_path / "s" / "data_00000001.idx").read_bytes()
    assert new_header[:16] == fields("464644422d494458", "0100", "00", "00", "01000000")
    assert len(new_header) == HEADER_BYTES


def test_a_frame_record_decodes_to_the_sizes_it_was_written_with() -> None:
    """FRAME b packs the compressed size above the uncompressed one (32 bits each)."""
    raw = encode_frame(0, 10, 2**32 - 1, 5, 7) + encode_blob(10, 5, 0) + encode_frame(0, 15, 1, 2**32 - 1, 2**32 + 6)
    records = decode_records(raw).records
    assert frame_sizes(records) == [(2**32 - 1, 5), (1, 2**32 - 1)]
    assert (records[0].offset, records[0].extra, records[2].extra) == (10, 7, 2**32 + 6)


def test_blobs_are_contiguous_from_zero_up_to_a_seal_of_their_size() -> None:
    """One rule for every walk: each BLOB starts where the blobs before it end, a SEAL gives that end."""
    blobs = [encode_blob(0, 4, 0), encode_frame(0, 0, 9, 9, 0), encode_blob(4, 6, 0)]
    assert contiguous(decode_records(b"".join(blobs + [encode_seal(10, 2, 99)])).records)
    assert not contiguous(decode_records(b"".join(blobs + [encode_seal(11, 2, 99)])).records)
    assert not contiguous(decode_records(encode_blob(1, 4, 0)).records)
    assert not contiguous(decode_records(encode_blob(0, 4, 0) + encode_blob(5, 1, 0)).records)
