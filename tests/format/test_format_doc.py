"""FORMAT.md's worked example decodes with the code, and the code writes exactly those bytes."""

from __future__ import annotations

import re
from pathlib import Path

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.index import (
    HEADER_BYTES,
    REC_BLOB,
    REC_SEAL,
    blob_checksum,
    decode_header,
    decode_records,
    encode_blob,
    encode_header,
    encode_seal,
)
from conduit_flat_file_db.types import pack_location_parts, unpack_location_parts

FORMAT_MD = Path(__file__).resolve().parents[2] / "FORMAT.md"


def _example_index_bytes() -> bytes:
    text = FORMAT_MD.read_text(encoding="utf-8")
    section = text.split("### Worked example", 1)[1].split("## 5.", 1)[0]
    block = section.split("```", 2)[1]
    words = [w for line in block.strip().splitlines() for w in line.split()[1:]]
    return bytes.fromhex("".join(words))


def test_worked_example_decodes() -> None:
    """The bytes printed in FORMAT.md decode to the documented fields."""
    raw = _example_index_bytes()
    assert len(raw) == 128
    header = decode_header(raw, "example")
    assert (header.version, header.kind, header.segment, header.created_ns) == (1, 0, 0, 1_700_000_000_000_000_000)
    scan = decode_records(raw[HEADER_BYTES:])
    assert scan.problem is None
    blob1, blob2, seal = scan.records
    assert (blob1.rtype, blob1.a, blob1.b, blob1.c) == (REC_BLOB, 0, 5, blob_checksum(b"hello"))
    assert (blob2.rtype, blob2.a, blob2.b, blob2.c) == (REC_BLOB, 5, 6, blob_checksum(b"world!"))
    assert (seal.rtype, seal.a, seal.b, seal.c) == (REC_SEAL, 11, 2, 11)


def test_code_writes_the_worked_example() -> None:
    """The encoders produce exactly the documented bytes."""
    expected = _example_index_bytes()
    written = (encode_header(0, 0, 1_700_000_000_000_000_000) + encode_blob(0, 5, blob_checksum(b"hello"))
               + encode_blob(5, 6, blob_checksum(b"world!")) + encode_seal(11, 2, 11))
    assert written == expected


def test_store_writes_the_worked_example(tmp_path: Path) -> None:
    """A real store writes the documented data file and index."""
    db = FlatFileDb(tmp_path / "s", tmp_path / "s.lock")
    db.put(b"hello")
    db.put(b"world!")
    db.rotate()
    db.close()
    assert (tmp_path / "s" / "data_00000000.dat").read_bytes() == b"helloworld!"
    idx = (tmp_path / "s" / "data_00000000.idx").read_bytes()
    expected = _example_index_bytes()
    # created_ns (bytes 16..23) and so the header crc (28..31) differ: compare the rest.
    assert idx[:16] == expected[:16]
    assert idx[24:28] == expected[24:28]
    assert idx[HEADER_BYTES:] == expected[HEADER_BYTES:]


def test_packed_location_example() -> None:
    """The packed-location example of FORMAT.md section 7."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    match = re.search(r"Example: segment 7, bytes 5\.\.11 is `([0-9a-f ]+)`", text)
    assert match is not None
    packed = bytes.fromhex(match.group(1).replace(" ", ""))
    assert packed == pack_location_parts(7, 5, 11)
    assert unpack_location_parts(packed) == (7, 5, 11)
