"""decode_records (CRC of a record's first bytes from a table) decodes what a plain decoder
that computes every CRC decodes: the same records, stopping at the same offset with the same
problem, for valid records, any byte changed, reserved bytes set (with their CRC made over
them, and without), unknown types and torn tails."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from conduit_flat_file_db.index import (
    FLAG_LOG,
    RECORD_BYTES,
    Record,
    RecordScan,
    decode_records,
    encode_blob,
    encode_blob_and_log,
    encode_log_blob,
)

_RECORD = struct.Struct("<BBHIQQQ")
U64 = st.integers(0, 2**64 - 1)


def reference(buf: bytes) -> RecordScan:
    """Every record's CRC computed over its bytes 0-3 and 8-31, as FORMAT.md defines it."""
    records: list[Record] = []
    whole = len(buf) - len(buf) % RECORD_BYTES
    for offset in range(0, whole, RECORD_BYTES):
        rtype, flags, _res, crc, a, b, c = _RECORD.unpack_from(buf, offset)
        if zlib.crc32(buf[offset + 8 : offset + RECORD_BYTES], zlib.crc32(buf[offset : offset + 4])) != crc:
            return RecordScan(records, offset, f"record checksum mismatch at record offset {offset}")
        if rtype not in (1, 2, 3):
            return RecordScan(records, offset, f"unknown record type {rtype} at record offset {offset}")
        records.append(Record(rtype, flags, a, b, c))
    if whole != len(buf):
        return RecordScan(records, whole, f"torn record of {len(buf) - whole} bytes at record offset {whole}")
    return RecordScan(records, whole, None)


def record(rtype: int, flags: int, reserved: int, words: tuple[int, int, int]) -> bytes:
    """A record whose CRC covers its bytes as they are (reserved ones included)."""
    body = struct.pack("<QQQ", *words)
    head = struct.pack("<BBH", rtype, flags, reserved)
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


records_st = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 1, 1, 0, 4, 255]),
        st.integers(0, 255),
        st.sampled_from([0, 0, 0, 1, 0xFFFF]),
        st.tuples(U64, U64, U64),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(
    fields=records_st,
    flip=st.none() | st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
    tail=st.integers(0, 31),
)
def test_decode_records_decodes_what_computing_every_crc_decodes(
    fields: list[tuple[int, int, int, tuple[int, int, int]]], flip: tuple[int, int] | None, tail: int
) -> None:
    """Records of every type, flags and reserved bytes; one byte changed anywhere; a torn tail."""
    buf = bytearray(b"".join(record(*f) for f in fields) + bytes(tail))
    if flip is not None and buf:
        buf[flip[0] % len(buf)] ^= flip[1]
    assert decode_records(bytes(buf)) == reference(bytes(buf))
    assert decode_records(memoryview(bytes(buf))) == reference(bytes(buf))


def test_reserved_bytes_set_after_the_crc_was_made_fail_the_crc() -> None:
    """A record written with reserved bytes 0 whose reserved bytes were changed since fails its
    checksum (the table of first-byte CRCs is for reserved bytes 0 only)."""
    good = record(1, 0, 0, (1, 2, 3))
    bad = bytearray(good)
    bad[2] = 7
    assert decode_records(good).records == [Record(1, 0, 1, 2, 3)]
    scan = decode_records(bytes(bad))
    assert scan.records == [] and scan.problem == "record checksum mismatch at record offset 0"


@given(st.integers(0, 2**62), st.integers(0, 2**40), U64, st.integers(0, 2**40), U64)
def test_a_value_and_its_log_record_encode_as_their_two_records(
    start: int, length: int, checksum: int, log_length: int, log_checksum: int
) -> None:
    """encode_blob_and_log (one pack, a keyed put's commit) is encode_blob then encode_log_blob
    of the record right after the value, and decodes as those two records."""
    both = encode_blob_and_log(start, length, checksum, log_length, log_checksum)
    assert both == encode_blob(start, length, checksum) + encode_log_blob(start + length, log_length, log_checksum)
    assert reference(both).records == decode_records(both).records
    assert [(record.offset, record.flags) for record in decode_records(both).records] == [
        (start, 0),
        (start + length, FLAG_LOG),
    ]
