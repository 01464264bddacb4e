"""Reading a segment's record index: a large file is read up to the first chunk that does not
start with a valid record and a bounded tail after it, and what its readers decode of it is what
they decoded of the whole file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conduit_flat_file_db import segment as segment_module
from conduit_flat_file_db import segment_files
from conduit_flat_file_db.index import (
    HEADER_BYTES,
    KIND_RAW,
    RECORD_BYTES,
    decode_records,
    encode_blob,
    encode_header,
    valid_record_bytes,
)
from conduit_flat_file_db.naming import index_name
from conduit_flat_file_db.segment import ROOM_CHECK_MAX_BYTES, is_room

RECORDS = 500


def records(count: int) -> bytes:
    """``count`` contiguous BLOB records of 7 bytes each."""
    return b"".join(encode_blob(7 * i, 7, i) for i in range(count))


def write_index(datadir: Path, body: bytes, extra_zeros: int = 0) -> None:
    """Index file 0 of a raw segment: a header, ``body``, then ``extra_zeros`` zero bytes (sparse)."""
    path = datadir / index_name(0)
    path.write_bytes(encode_header(0, KIND_RAW, 1) + body)
    if extra_zeros:
        os.truncate(path, path.stat().st_size + extra_zeros)


@pytest.fixture(name="small_reads")
def fixture_small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds scaled down: a file over 4 KiB is read in chunks of 1 KiB, with 2 KiB after its
    records; a zero tail is a writer's room up to 1 KiB."""
    monkeypatch.setattr(segment_module, "ROOM_CHECK_MAX_BYTES", 1024)
    monkeypatch.setattr(segment_files, "_WHOLE_READ_BYTES", 4096)
    monkeypatch.setattr(segment_files, "_CHUNK_BYTES", 1024)
    monkeypatch.setattr(segment_files, "_TAIL_READ_BYTES", 2048)


def read(datadir: Path) -> bytes:
    """read_index of segment 0, through a descriptor of the directory."""
    dir_fd = os.open(datadir, os.O_RDONLY)
    try:
        raw = segment_files.read_index(dir_fd, 0)
    finally:
        os.close(dir_fd)
    assert raw is not None
    return raw


def read_bound(whole: bytes) -> int:
    """Where the read of ``whole`` may end, scaled down as small_reads does: the end of the first
    chunk of 1 KiB that does not start with a valid record, and 2 KiB after it."""
    for start in range(HEADER_BYTES, len(whole), 1024):
        if not valid_record_bytes(whole[start : start + RECORD_BYTES]):
            return start + 1024 + 2048
    return len(whole)


def test_the_tail_read_covers_every_room_recovery_keeps() -> None:
    """A zero tail longer than what is read after the records is no room either way."""
    assert segment_files._TAIL_READ_BYTES > ROOM_CHECK_MAX_BYTES  # pylint: disable=protected-access
    assert segment_files._CHUNK_BYTES % RECORD_BYTES == 0  # pylint: disable=protected-access


@pytest.mark.usefixtures("small_reads")
@pytest.mark.parametrize(
    "body, extra_zeros",
    [
        (records(RECORDS), 0),  # valid records only, over several chunks: the whole file
        (records(RECORDS) + b"\x01" * 13, 0),  # a torn record at the end
        (records(RECORDS)[: 100 * RECORD_BYTES] + b"\xff" * RECORD_BYTES + records(RECORDS), 0),  # bad record inside
        (records(RECORDS), 10 << 20),  # 10 MiB of zeros after the records (sparse)
        (records(31), 5000),  # the first chunk ends inside the zeros
        (records(32), 5000),  # records end at a chunk's end
        (b"", 20 << 20),  # no record, 20 MiB of zeros
    ],
    ids=["valid", "torn", "bad-inside", "zeros-10MiB", "zeros-in-chunk", "zeros-at-chunk", "only-zeros"],
)
def test_a_large_index_reads_as_its_valid_records_and_a_bounded_tail(
    tmp_path: Path, body: bytes, extra_zeros: int
) -> None:
    """Whatever follows the valid records, the bytes read decode to the same records and the same
    first problem as the whole file, and give the same answer to "is the rest a writer's room?"."""
    write_index(tmp_path, body, extra_zeros)
    whole = (tmp_path / index_name(0)).read_bytes()
    raw = read(tmp_path)
    assert len(raw) <= read_bound(whole)
    assert raw == whole[: len(raw)]
    assert decode_records(raw[HEADER_BYTES:]) == decode_records(whole[HEADER_BYTES:])
    for cut in (HEADER_BYTES, HEADER_BYTES + valid_record_bytes(whole[HEADER_BYTES:])):
        assert is_room(raw[cut:]) == is_room(whole[cut:])


def test_valid_record_bytes_stops_where_decode_records_stops() -> None:
    """The count of valid bytes matches decode_records for clean, torn and damaged runs."""
    clean = records(40)
    for buf in (b"", clean, clean + b"\0" * 5, clean[:64] + bytes(32) + clean, clean[:96] + b"\x07" + clean[97:]):
        scan = decode_records(buf)
        assert valid_record_bytes(buf) == len(scan.records) * RECORD_BYTES


SHRINK_WHILE_READ = """
    import os, sys
    from conduit_flat_file_db import segment_files
    from conduit_flat_file_db.index import HEADER_BYTES, KIND_RAW, encode_blob, encode_header
    from conduit_flat_file_db.naming import index_name
    segment_files._WHOLE_READ_BYTES, segment_files._CHUNK_BYTES, segment_files._TAIL_READ_BYTES = 4096, 1024, 2048
    path = os.path.join(sys.argv[1], index_name(0))
    with open(path, "wb") as out:
        out.write(encode_header(0, KIND_RAW, 1) + b"".join(encode_blob(7 * i, 7, i) for i in range(500)))
    real_pread_full = segment_files.pread_full

    def pread_full(fd, size, offset):
        if offset == HEADER_BYTES:  # another process cuts the file after its size was taken
            os.truncate(path, HEADER_BYTES + int(sys.argv[2]))
        return real_pread_full(fd, size, offset)

    segment_files.pread_full = pread_full
    dir_fd = os.open(sys.argv[1], os.O_RDONLY)
    raw = segment_files.read_index(dir_fd, 0)
    with open(path, "rb") as now:
        print("ok" if raw == now.read() else "differs")
"""


@pytest.mark.parametrize("left", [0, 40 * RECORD_BYTES], ids=["to-its-header", "inside-a-chunk"])
def test_a_large_index_cut_while_it_is_read_reads_what_is_left(tmp_path: Path, left: int) -> None:
    """An index cut shorter after its size was taken (recovery or a seal in another process cuts
    its tail) is read up to where it now ends: the read used to ask for the missing bytes again
    and again, for ever. In a child process, with a timeout: a hang is a failure."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SHRINK_WHILE_READ), str(tmp_path), str(left)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-3000:]
