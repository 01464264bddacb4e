"""Crash points of the compressed segment layout, injected by hand, and killed re-framings.

The mutable ``.dat.zst`` segment is its committed frames, then a padding skippable frame,
then the seek table (FORMAT.md); a put writes its frames over the padding, shrinks the
padding, rewrites the table's tail and only then writes its FRAME and BLOB records. Each
test below leaves the files as a crash (or a power loss) at one instant of that sequence
would, and then checks that the store reopens whole: every earlier location reads back,
``verify()`` is clean, the mutable segment is again a valid seekable file holding exactly
its committed bytes (``zstd -t``; pyzstd's plain and seekable readers), and new puts work.
The same states are also met by an instance that stays open while the writer dies (the
dirty word set): its next put must repair them.

Re-framing rewrites a sealed segment into a scratch file ``.tmp-<pid>-data_N.dat.zst`` and
renames it over the segment; a writer killed before the rename leaves the scratch file,
which the next open removes once its process is dead (and never while it lives).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import xxhash
import zstandard
from crash_support import (
    SEEK_TABLE_MAGIC,
    SEEKABLE_MAGIC,
    Writer,
    append,
    assert_no_dead_scratch,
    assert_tails_clean,
    assert_whole,
    digest,
    frame_sizes,
    index_records_of,
    newest_segment,
    pid_alive,
    populate,
    read_acks,
    reopen_whole,
    scratch_files,
    seek_table,
    seekable_contents,
    set_state_word,
)

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.index import REC_BLOB, REC_FRAME, encode_blob, encode_record
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, segment_name
from conduit_flat_file_db.state import W_DIRTY

pytestmark = pytest.mark.crash

PADDING_MAGIC = 0x184D2A50  # the skippable frame the engine pads with (any of 0x184D2A50..5F would do)


# -- building the states a crash leaves ------------------------------------------------------


class Mutable(NamedTuple):
    """The mutable compressed segment as its index commits it."""

    number: int
    path: Path
    end: int  # committed uncompressed bytes
    frames: list[tuple[int, int]]  # committed (csize, dsize) from the FRAME records
    frames_end: int  # where the committed frames end in the file


def mutable_segment(datadir: Path) -> Mutable:
    """Read the newest segment's index (it must be a compressed segment)."""
    number = newest_segment(datadir)
    path = datadir / segment_name(number, True)
    assert path.exists(), f"segment {number} is not compressed: {sorted(os.listdir(datadir))}"
    records = index_records_of(datadir, number)
    blobs = [r for r in records if r.rtype == REC_BLOB]
    frames = frame_sizes(records)
    return Mutable(number, path, blobs[-1].offset + blobs[-1].size if blobs else 0, frames, sum(c for c, _ in frames))


def zstd_frame(data: bytes) -> bytes:
    """One Zstandard frame with its content size and checksum, as the engine writes them."""
    return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(data)


def encode_table(entries: list[tuple[int, int]]) -> bytes:
    """A seek-table skippable frame without checksums (FORMAT.md "Compressed segment")."""
    body = b"".join(struct.pack("<II", c, d) for c, d in entries)
    return (
        struct.pack("<II", SEEK_TABLE_MAGIC, len(body) + 9)
        + body
        + struct.pack("<IBI", len(entries), 0, SEEKABLE_MAGIC)
    )


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def truncate(path: Path, size: int) -> None:
    """Cut a file."""
    os.truncate(path, size)


def fresh_frames(count: int, seed: int = 5) -> list[tuple[bytes, bytes]]:
    """(uncompressed, frame) pairs of new data that no put acknowledged."""
    rng = random.Random(seed)
    datas = [rng.randbytes(rng.randint(300, 1024)) for _ in range(count)]
    return [(data, zstd_frame(data)) for data in datas]


def frames_over_padding(datadir: Path, count: int = 2) -> tuple[Mutable, list[tuple[bytes, bytes]]]:
    """New frames after the committed ones, then a padding frame and a seek table listing them
    all: a valid seekable file, as a put leaves it just before it writes its index records."""
    seg = mutable_segment(datadir)
    new = fresh_frames(count)
    padding = 4096
    entries = seg.frames + [(len(frame), len(data)) for data, frame in new] + [(8 + padding, 0)]
    truncate(seg.path, seg.frames_end)
    append(
        seg.path,
        b"".join(frame for _data, frame in new)
        + struct.pack("<II", PADDING_MAGIC, padding)
        + bytes(padding)
        + encode_table(entries),
    )
    assert len(seekable_contents(seg.path, "injected frames")) == seg.end + sum(len(d) for d, _f in new)
    return seg, new


def frame_records(seg: Mutable, new: list[tuple[bytes, bytes]]) -> bytes:
    """The FRAME records of ``new`` frames written after the committed ones."""
    records = []
    u_at, c_at = seg.end, seg.frames_end
    for data, frame in new:
        records.append(encode_record(REC_FRAME, 0, u_at, (len(frame) << 32) | len(data), c_at))
        u_at += len(data)
        c_at += len(frame)
    return b"".join(records)


def torn_frame_over_padding(datadir: Path) -> None:
    """A put died while writing its frame: half a frame where the padding frame began (the seek
    table at the end still describes the old padding)."""
    seg = mutable_segment(datadir)
    frame = fresh_frames(1)[0][1]
    write_at(seg.path, seg.frames_end, frame[: len(frame) // 2])


def torn_frame_without_table(datadir: Path) -> None:
    """Half a frame after the committed frames, then the end of the file: no padding, no table
    (a put that had to move the seek table died while writing its frames)."""
    seg = mutable_segment(datadir)
    frame = fresh_frames(1)[0][1]
    truncate(seg.path, seg.frames_end)
    append(seg.path, frame[: len(frame) // 2])


def torn_seek_table(datadir: Path) -> None:
    """The file ends in the middle of its seek table."""
    seg = mutable_segment(datadir)
    table_at, _entries = seek_table(seg.path.read_bytes(), "before the crash")
    truncate(seg.path, table_at + (os.path.getsize(seg.path) - table_at) // 2)


def frames_without_records(datadir: Path) -> None:
    """A put wrote its frames, the smaller padding frame and the table, then died: no records."""
    frames_over_padding(datadir)


def frame_records_without_blob(datadir: Path) -> None:
    """A batch's frames and FRAME records were written, its BLOB record was lost."""
    seg, new = frames_over_padding(datadir)
    append(datadir / index_name(seg.number), frame_records(seg, new))


def frame_records_torn_blob(datadir: Path) -> None:
    """As above, and the first 20 bytes of the batch's BLOB record."""
    seg, new = frames_over_padding(datadir, 1)
    data = new[0][0]
    blob = encode_blob(seg.end, len(data), xxhash.xxh3_64_intdigest(data))
    append(datadir / index_name(seg.number), frame_records(seg, new) + blob[:20])


def frame_record_past_eof(datadir: Path) -> None:
    """A FRAME record (and the BLOB record it would commit) whose compressed bytes end past the
    end of the data file: the frame never reached the file."""
    seg = mutable_segment(datadir)
    data = b"never written" * 50
    csize = os.path.getsize(seg.path) - seg.frames_end + 4096
    records = encode_record(REC_FRAME, 0, seg.end, (csize << 32) | len(data), seg.frames_end)
    records += encode_blob(seg.end, len(data), xxhash.xxh3_64_intdigest(data))
    append(datadir / index_name(seg.number), records)


def sealing_table_written(datadir: Path, cut: bool) -> None:
    """A rotation died while sealing the segment: the plain seek table a sealed segment ends
    with is written after the committed frames (``cut``: and the file cut after it; else the
    rest of the padding and the old table still follow), but the SEAL record is not."""
    seg = mutable_segment(datadir)
    table = encode_table(seg.frames)
    write_at(seg.path, seg.frames_end, table)
    if cut:
        truncate(seg.path, seg.frames_end + len(table))
        assert len(seekable_contents(seg.path, "sealed layout")) == seg.end


def padding_header_overwritten(datadir: Path) -> None:
    """The padding frame's 8-byte header is garbage (a torn write of the next frame's start)."""
    seg = mutable_segment(datadir)
    write_at(seg.path, seg.frames_end, b"\x28\xb5\x2f\xfd\xde\xad\xbe\xef")


ZSTD_CRASH_POINTS: dict[str, Callable[[Path], None]] = {
    "torn_frame_over_padding": torn_frame_over_padding,
    "torn_frame_without_table": torn_frame_without_table,
    "torn_seek_table": torn_seek_table,
    "frames_without_records": frames_without_records,
    "frame_records_without_blob": frame_records_without_blob,
    "frame_records_torn_blob": frame_records_torn_blob,
    "frame_record_past_eof": frame_record_past_eof,
    "padding_header_overwritten": padding_header_overwritten,
    "sealing_table_written_file_not_cut": lambda datadir: sealing_table_written(datadir, cut=False),
    "sealing_table_written_no_seal_record": lambda datadir: sealing_table_written(datadir, cut=True),
}


def open_store(datadir: Path) -> FlatFileDb:
    """A compressed store on ``datadir``."""
    return FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True)


@pytest.mark.parametrize("crash_point", list(ZSTD_CRASH_POINTS))
def test_reopen_after_zstd_crash_point(tmp_path: Path, crash_point: str) -> None:
    """The store reopens whole from each state a crash mid-append to a compressed segment leaves."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=True)
    ZSTD_CRASH_POINTS[crash_point](datadir)
    set_state_word(datadir, W_DIRTY, 1)  # the writer died mid-append, with the dirty word up
    reopen_whole(datadir, written, crash_point, use_compression=True)


@pytest.mark.parametrize("crash_point", list(ZSTD_CRASH_POINTS))
def test_survivor_after_zstd_crash_point(tmp_path: Path, crash_point: str) -> None:
    """A writer died in the middle of a compressed append (dirty word set) while this instance
    stays open: its reads are unaffected and its next put repairs the segment first."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True, frame_bytes=1024)
    try:
        written = populate(datadir, db)
        ZSTD_CRASH_POINTS[crash_point](datadir)
        set_state_word(datadir, W_DIRTY, 1)
        assert_whole(db, written, f"survivor of {crash_point}", reopened=False)
    finally:
        db.close()
    reopen_whole(datadir, written, f"reopen after the survivor of {crash_point}", use_compression=True)


def test_power_loss_zeroed_last_frame(tmp_path: Path) -> None:
    """After a power loss (state page gone) the index holds the last put's records but its
    frame's bytes never reached the disk (zeros): recovery must check the checksums past the
    durable end, cut that blob, and keep every earlier one."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=True)
    seg = mutable_segment(datadir)
    lost = written[-1]
    assert lost.location.file_path.endswith(seg.path.name) and lost.location.end_offset == seg.end
    csize, _dsize = seg.frames[-1]
    write_at(seg.path, seg.frames_end - csize, bytes(csize))
    os.unlink(datadir / STATE_FILE_NAME)
    db = open_store(datadir)
    try:
        with pytest.raises(ValueError):
            db.get(lost.location)  # past the committed end now: never served
        assert_whole(db, written[:-1], "power loss zeroed the last frame")
    finally:
        db.close()


# -- killed re-framings ----------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pid = int(proc.stdout)
    assert not pid_alive(pid)
    return pid


def sealed_compressed_segment(datadir: Path) -> int:
    """The oldest sealed compressed segment."""
    mutable = newest_segment(datadir)
    for number in range(mutable):
        if (datadir / segment_name(number, True)).exists():
            return number
    raise AssertionError(f"no sealed compressed segment in {sorted(os.listdir(datadir))}")


@pytest.mark.parametrize("content", ["torn", "complete", "empty"])
def test_reopen_removes_scratch_of_dead_process(tmp_path: Path, content: str) -> None:
    """A re-frame's scratch file left by a dead process (torn: its frames cut short, complete:
    not yet renamed, empty: just created) is removed by the next open; the segment still reads."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=True)
    number = sealed_compressed_segment(datadir)
    original = (datadir / segment_name(number, True)).read_bytes()
    size = {"torn": len(original) // 2, "complete": len(original), "empty": 0}[content]
    scratch = datadir / f".tmp-{dead_pid()}-{segment_name(number, True)}"
    scratch.write_bytes(original[:size])
    db = open_store(datadir)
    try:
        assert not scratch.exists(), f"{scratch.name} survived the reopen"
        assert (datadir / segment_name(number, True)).read_bytes() == original, "the segment changed"
        assert_whole(db, written, f"{content} scratch file of a dead re-frame")
    finally:
        db.close()


def test_scratch_of_live_process_survives_reopen(tmp_path: Path) -> None:
    """A scratch file whose process is alive (a re-frame in progress elsewhere) is left alone by
    an open; once that process is dead, the next open removes it."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=True)
    number = sealed_compressed_segment(datadir)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        scratch = datadir / f".tmp-{other.pid}-{segment_name(number, True)}"
        scratch.write_bytes((datadir / segment_name(number, True)).read_bytes()[:100])
        try:
            db = open_store(datadir)
            try:
                assert scratch.exists(), "an open removed the scratch file of a live process"
                assert_whole(db, written, "scratch file of a live process")
            finally:
                db.close()
        finally:
            other.kill()
    reopen_whole(datadir, written, "scratch file of a process that died since", use_compression=True)
    assert not scratch.exists(), "the scratch file survived a reopen after its process died"


def test_writer_killed_mid_reframe(tmp_path: Path) -> None:
    """A writer is SIGKILLed in the re-framing of a segment it sealed (copy written aside, not yet
    renamed) while this instance stays open: this instance reads every blob of that segment and
    writes on; the next open removes the scratch file; the segment still reads and is a valid
    seekable file."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True, frame_bytes=1024)
    try:
        written = populate(datadir, db)
        victim = Writer(
            tmp_path,
            "victim",
            datadir,
            {
                "seed": 3,
                "fsync": False,
                "max_size": 4096,
                "big_fraction": 0.0,
                "use_compression": True,
                "die_in_reframe": 2,
            },
        )
        victim.wait_self_kill("writer killed mid re-frame")
        acks = read_acks(victim.report)
        left = [name for name, pid in scratch_files(datadir).items() if pid == victim.proc.pid]
        assert len(left) == 1 and left[0].endswith(".dat.zst"), f"scratch files {scratch_files(datadir)}"
        number = int(left[0].rpartition("data_")[2].split(".")[0])
        assert number < newest_segment(datadir), f"{left[0]}: segment {number} is not sealed"
        in_segment = [ack for ack in acks if ack.location.file_path.endswith(segment_name(number, True))]
        assert in_segment, f"the victim acknowledged no blob in segment {number}"
        for ack in in_segment:
            assert digest(db.get(ack.location)) == ack.digest, f"{ack.location} reads back different bytes"
        assert_whole(db, written, "survivor of a writer killed mid re-frame", reopened=False, acks=acks)
    finally:
        db.close()
    db = open_store(datadir)
    try:
        assert_no_dead_scratch(datadir, "reopen after a writer killed mid re-frame")
        assert not scratch_files(datadir), f"scratch files left: {scratch_files(datadir)}"
        assert_tails_clean(db, "reopen after a writer killed mid re-frame")
        assert_whole(db, written, "reopen after a writer killed mid re-frame", acks=acks)
    finally:
        db.close()


def test_untouched_store_passes_the_checks(tmp_path: Path) -> None:
    """Control: a store no crash touched passes every check the tests above make, so a failure
    above is the crash point's, not the checks'."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=True)
    seg = mutable_segment(datadir)
    assert seekable_contents(seg.path, "untouched")[-len(written[-1].data) :] == written[-1].data
    reopen_whole(datadir, written, "untouched store", use_compression=True)
