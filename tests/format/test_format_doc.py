"""FORMAT.md's worked examples decode with the code, and the code writes exactly those bytes."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import xxhash
import zstandard

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.frames import stored_frame, stored_payload
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
from conduit_flat_file_db.seekable import (
    PADDING_MAGIC,
    SEEK_TABLE_MAGIC,
    SEEKABLE_MAGIC,
    encode_seek_table,
    parse_seek_table,
)
from conduit_flat_file_db.types import pack_location_parts, unpack_location_parts

FORMAT_MD = Path(__file__).resolve().parents[2] / "FORMAT.md"


def _section(title: str) -> str:
    """The text of the ``### title`` subsection of FORMAT.md, up to the next heading."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    body = text.split(f"\n### {title}\n", 1)[1]
    return re.split(r"\n##+ ", body, maxsplit=1)[0]


def _hex_blocks(title: str) -> list[list[tuple[str, bytes]]]:
    """Each code block of a worked example as (label, bytes) lines: a label, then hex groups."""
    blocks = _section(title).split("```")[1::2]
    return [
        [(line.split()[0], bytes.fromhex("".join(line.split()[1:]))) for line in block.strip().splitlines()]
        for block in blocks
    ]


def _example_index_bytes() -> bytes:
    (block,) = _hex_blocks("Worked example: a raw segment")
    return b"".join(data for _label, data in block)


def test_worked_example_decodes() -> None:
    """The bytes printed in FORMAT.md decode to the documented fields."""
    raw = _example_index_bytes()
    assert len(raw) == 128
    header = decode_header(raw, "example")
    assert (header.version, header.kind, header.segment, header.created_ns) == (1, 0, 0, 1_700_000_000_000_000_000)
    scan = decode_records(raw[HEADER_BYTES:])
    assert scan.problem is None
    blob1, blob2, seal = scan.records
    assert (blob1.rtype, blob1.offset, blob1.size, blob1.extra) == (REC_BLOB, 0, 5, blob_checksum(b"hello"))
    assert (blob2.rtype, blob2.offset, blob2.size, blob2.extra) == (REC_BLOB, 5, 6, blob_checksum(b"world!"))
    assert (seal.rtype, seal.offset, seal.size, seal.extra) == (REC_SEAL, 11, 2, 11)


def test_code_writes_the_worked_example() -> None:
    """The encoders produce exactly the documented bytes."""
    expected = _example_index_bytes()
    written = (
        encode_header(0, 0, 1_700_000_000_000_000_000)
        + encode_blob(0, 5, blob_checksum(b"hello"))
        + encode_blob(5, 6, blob_checksum(b"world!"))
        + encode_seal(11, 2, 11)
    )
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


# -- section 5: the compressed segment's worked example -----------------------------------

PADDING_PAYLOAD = 65536 - 37  # the segment's first 64 KiB of padding, less the two frames


def _compressed_example() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(mutable layout lines, sealed file lines) of FORMAT.md's compressed worked example."""
    mutable, sealed = _hex_blocks("Worked example: a compressed segment")
    assert [label for label, _ in mutable] == ["frame", "frame", "padding", "table"]
    assert [label for label, _ in sealed] == ["frame", "frame", "table"]
    return mutable, sealed


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def test_compressed_example_decodes_by_the_documented_layout() -> None:
    """The sealed file of the example decodes field by field as section 5 describes it."""
    _mutable, sealed = _compressed_example()
    frame0, frame1, table = (data for _label, data in sealed)
    file = frame0 + frame1 + table
    assert len(file) == 70
    for frame, content in ((frame0, b"hello"), (frame1, b"world!")):
        assert _u32(frame, 0) == 0xFD2FB528
        assert frame[4] == 0x24 and frame[5] == len(content)  # single segment, checksum, 1-byte size
        assert int.from_bytes(frame[6:9], "little") == len(content) << 3 | 1  # last block, raw
        assert frame[9 : 9 + len(content)] == content
        assert _u32(frame, 9 + len(content)) == xxhash.xxh64_intdigest(content) & 0xFFFFFFFF
        assert stored_payload(frame, len(frame), len(content)) == 9
        assert zstandard.ZstdDecompressor().decompress(frame) == content
    # Footer from the end, then the table: the steps of "Seek table".
    count, descriptor, magic = struct.unpack("<IBI", file[-9:])
    assert (count, descriptor, magic) == (2, 0, SEEKABLE_MAGIC)
    table_at = len(file) - (8 + count * 8 + 9)
    assert (_u32(file, table_at), _u32(file, table_at + 4)) == (SEEK_TABLE_MAGIC, count * 8 + 9)
    assert struct.unpack_from("<4I", file, table_at + 8) == (18, 5, 19, 6)
    assert table_at == 18 + 19
    assert file[27:28] == b"w"  # uncompressed byte 5, read in place
    parsed = parse_seek_table(lambda offset, size: file[offset : offset + size], len(file))
    assert parsed.sizes() == [(18, 5), (19, 6)]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(file) == b"hello"  # first frame only
    reader = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
    assert reader.read() == b"helloworld!"


def test_compressed_example_mutable_layout_decodes() -> None:
    """The padding frame's header and the table that lists it, as printed."""
    mutable, sealed = _compressed_example()
    assert mutable[:2] == sealed[:2]
    padding, table = mutable[2][1], mutable[3][1]
    assert struct.unpack("<II", padding) == (PADDING_MAGIC, PADDING_PAYLOAD)
    size = 37 + 8 + PADDING_PAYLOAD + len(table)
    assert size == 65585
    table_at = size - len(table)  # only the table's bytes are printed: read_at serves those
    parsed = parse_seek_table(lambda offset, length: table[offset - table_at : offset - table_at + length], size)
    assert parsed.sizes() == [(18, 5), (19, 6), (8 + PADDING_PAYLOAD, 0)]


def test_code_writes_the_compressed_example() -> None:
    """The frame and table encoders produce exactly the documented bytes."""
    mutable, sealed = _compressed_example()
    assert [data for _label, data in sealed] == [
        stored_frame(b"hello"),
        stored_frame(b"world!"),
        encode_seek_table([(18, 5), (19, 6)]),
    ]
    assert mutable[3][1] == encode_seek_table([(18, 5), (19, 6), (8 + PADDING_PAYLOAD, 0)])


def test_store_writes_the_compressed_example(tmp_path: Path) -> None:
    """A real compressed store writes the documented mutable layout, then the documented sealed file."""
    mutable, sealed = _compressed_example()
    db = FlatFileDb(tmp_path / "s", tmp_path / "s.lock", use_compression=True, reframe_on_seal=False)
    db.put(b"hello")
    db.put(b"world!")
    db.sync()
    path = tmp_path / "s" / "data_00000000.dat.zst"
    raw = path.read_bytes()
    assert len(raw) == 65585
    assert raw[:37] == mutable[0][1] + mutable[1][1]
    assert raw[37:45] == mutable[2][1]
    assert raw[-len(mutable[3][1]) :] == mutable[3][1]
    db.rotate()
    db.close()
    assert path.read_bytes() == b"".join(data for _label, data in sealed)


def _reading_blocks() -> list[str]:
    """The shell code blocks of FORMAT.md "Reading a blob without this library"."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    body = re.split(r"\n## [0-9]+\. Reading a blob without this library\n", text)[1].split("\n## ", 1)[0]
    return body.split("```")[1::2]


def _run_shell(script: str, cwd: Path) -> bytes:
    zstd = shutil.which("zstd")
    assert zstd is not None, "the zstd command-line tool is missing (scripts/test.sh installs it)"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reading_a_blob_without_this_library_works_as_printed(tmp_path: Path) -> None:
    """The shell lines of FORMAT.md read the worked examples' blob ``world!`` (bytes 5..11) back."""
    raw_block, _whole_file_block, frame_block = _reading_blocks()
    for datadir, compression in ((tmp_path / "raw", False), (tmp_path / "zst", True)):
        db = FlatFileDb(datadir, tmp_path / f"{datadir.name}.lock", use_compression=compression, reframe_on_seal=False)
        db.put(b"hello")
        db.put(b"world!")
        db.rotate()
        db.close()
    assert _run_shell(raw_block, tmp_path / "raw") == b"world!" * 2
    out = _run_shell(frame_block, tmp_path / "zst")
    assert out.split() == [b"18", b"5", b"19", b"6", b"world!"]


# -- references to FORMAT.md from the code ---------------------------------------------------

REPO = FORMAT_MD.parent
# A reference: the name of this document, maybe a comma, then a quoted title, "Title" or
# "Title: Subtitle" (also inside f-strings, where the quotes are escaped).
REFERENCE = re.compile(r'FORMAT\.md,?\s+\\?"([^"\\]+)\\?"')


def _format_titles() -> list[tuple[str, list[str]]]:
    """Each ``## N. Title`` of FORMAT.md with its ``###`` subtitles and bold labels (**Name**)."""
    sections: list[tuple[str, list[str]]] = []
    for line in FORMAT_MD.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            sections.append((re.sub(r"^## [0-9]+\. ", "", line).lower(), []))
        elif line.startswith("### ") and sections:
            sections[-1][1].append(line[4:].lower())
        elif sections:
            sections[-1][1].extend(label.lower() for label in re.findall(r"\*\*([^*]+)\*\*", line))
    return sections


def _resolves(reference: str, sections: list[tuple[str, list[str]]]) -> bool:
    """True when "Title" names a section, subsection or label, or "Title: Sub" a subsection of it."""
    head, _, sub = (" ".join(reference.split())).lower().partition(": ")
    for title, children in sections:
        if sub:
            if title.startswith(head) and any(child.startswith(sub) for child in children):
                return True
        elif title.startswith(head) or any(child.startswith(head) for child in children):
            return True
    return False


def test_code_references_to_format_md_name_existing_sections() -> None:
    """Every quoted FORMAT.md title in the package, tests and benchmarks names a heading that exists."""
    sections = _format_titles()
    stale = []
    for folder in ("conduit_flat_file_db", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for match in REFERENCE.finditer(path.read_text(encoding="utf-8")):
                if not _resolves(match.group(1), sections):
                    stale.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not stale, "references to FORMAT.md sections that do not exist:\n" + "\n".join(stale)


def test_packed_location_example() -> None:
    """The packed-location example of FORMAT.md "Packed location"."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    match = re.search(r"Example: segment 7, bytes 5\.\.11 is `([0-9a-f ]+)`", text)
    assert match is not None
    packed = bytes.fromhex(match.group(1).replace(" ", ""))
    assert packed == pack_location_parts(7, 5, 11)
    assert unpack_location_parts(packed) == (7, 5, 11)
