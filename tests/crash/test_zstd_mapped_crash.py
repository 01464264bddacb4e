"""Crash points of the mapped commit of a small put into a compressed segment, by SIGKILL.

A put of less than 8 KiB into a compressed mutable segment (no fsync, maps supported) commits
in these steps (FORMAT.md "Commit"): raise the dirty flag; store the stored frame and the smaller
padding frame's header through the data file's map; store the FRAME and BLOB records through the
index's map; publish. Every UNLISTED_FRAMES_MAX such puts, the put then brings the seek table up
to date (FORMAT.md "The mutable layout"): dirty flag up again, one ``pwrite`` of the new entries,
a padding entry and a footer over the old padding entry and footer, one ``pwrite`` of the
table's frame-size field, dirty flag down. A child process puts blobs, reports each
acknowledged one, then SIGKILLs itself at one of those steps inside one more put (the points in
the table's update with UNLISTED_FRAMES_MAX set to 1 in the child). After each death:

- an instance that was open during the crash (a survivor) reads every acknowledged blob, and
  its next put repairs the segment (the dirty flag) and reads back;
- a fresh open (recovery) reads every acknowledged blob with its bytes, the mutable segment is
  again a valid seekable file of exactly its committed bytes, ``verify()`` is clean, and new
  puts land where the killed one would have and read back their own bytes.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from crash_support import Ack, assert_whole, digest, read_acks, reopen_whole

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.blocks import maps_supported

pytestmark = [
    pytest.mark.crash,
    pytest.mark.skipif(not maps_supported(), reason="mapped writes need Linux on x86 (FORMAT.md 'Commit')"),
]

# The child: puts ``warm`` blobs (each reported once acknowledged), arms one crash point, puts
# one more blob. Crash points wrap the mapped path's steps in write_maps.py (its module-level
# names are what put_mapped_zstd calls) and the two writes of seekable.append_table_entries.
_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, random, signal, sys
    import conduit_flat_file_db.seekable as seekable
    import conduit_flat_file_db.write_maps as write_maps
    from conduit_flat_file_db import DataLocation, FlatFileDb

    config = json.loads(sys.argv[1])
    point = config["point"]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def blob(i):  # as the test's blob()
        return (b"%08d" % i) * (1 + i % 120) + random.Random(i).randbytes(i % 300)

    db = FlatFileDb(config["datadir"], config["lock"], use_compression=True)
    with open(config["report"], "a", encoding="utf-8") as report:
        for i in range(config["warm"]):
            data = blob(i)
            location = db.put(data)
            digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            report.write(f"{location.file_path}\\t{location.start_offset}\\t{location.end_offset}\\t{digest}\\n")
            report.flush()

    real_store = write_maps.MappedWrites._store_stored_frame
    real_records = write_maps.pack_stored_commit_into

    real_pwrite_all = seekable.pwrite_all

    def pwrite_all(fd, data, offset):
        # seekable's writes of the table's update: the new tail (300 entries, a padding entry and
        # a footer), then the frame-size field (4 bytes)
        if point == "table_tail_torn" and len(data) > 4:
            os.pwrite(fd, bytes(data)[:12], offset)
            die()
        if point == "table_tail_written" and len(data) == 4:
            die()
        return real_pwrite_all(fd, data, offset)

    def store(self, data, disk, head, padding):
        if point == "frame_not_stored":
            die()
        real_store(self, data, disk, head, padding)
        if point == "frame_stored":
            die()

    def records(buffer, at, *args):
        if point == "records_not_stored":
            die()
        scratch = bytearray(64)
        real_records(scratch, 0, *args)
        if point == "frame_record_only":
            buffer[at : at + 32] = scratch[:32]
            die()
        buffer[at : at + 64] = scratch
        if point == "records_stored":
            die()

    if point in ("table_tail_written", "table_tail_torn"):
        write_maps.UNLISTED_FRAMES_MAX = 1  # this put brings the table up to date
        seekable.pwrite_all = pwrite_all
    write_maps.MappedWrites._store_stored_frame = store
    write_maps.pack_stored_commit_into = records
    location = db.put(blob(config["warm"]))
    print(json.dumps({"survived": list(location)}))
    """
)


def blob(number: int) -> bytes:
    """The child's blob number ``number``."""
    return (b"%08d" % number) * (1 + number % 120) + random.Random(number).randbytes(number % 300)


# Where the killed put's records are whole (though not published, or published before the table's
# update): recovery keeps its blob, as a put whose BLOB record is written is committed (FORMAT.md
# "Record index"); elsewhere it is cut.
KEPT_BY_RECOVERY = {"records_stored", "table_tail_torn", "table_tail_written"}

CRASH_POINTS = [
    "frame_not_stored",
    "frame_stored",
    "records_not_stored",
    "frame_record_only",
    "records_stored",
    "table_tail_torn",
    "table_tail_written",
]


def run_child(datadir: Path, point: str, warm: int) -> list[Ack]:
    """Run the child to its death at ``point`` ("none": to its end); returns the blobs it
    acknowledged."""
    report = datadir.parent / "acks.txt"
    config = {
        "datadir": str(datadir),
        "lock": str(datadir) + ".lock",
        "report": str(report),
        "point": point,
        "warm": warm,
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == (0 if point == "none" else -signal.SIGKILL), (
        f"{point}: the child was to die by SIGKILL inside its last put, it ended with {done.returncode}:\n"
        f"{done.stdout}{done.stderr[-3000:]}"
    )
    acks = read_acks(report)
    assert len(acks) == warm, f"{point}: {len(acks)} blobs acknowledged, {warm} put"
    if point != "none":  # the child died before it could report its last put
        assert "survived" not in done.stdout, f"{point}: the last put returned"
    return acks


def check_acks(db: FlatFileDb, acks: list[Ack], where: str) -> None:
    """Every acknowledged blob reads back its own bytes."""
    for ack in acks:
        assert digest(db.get(ack.location)) == ack.digest, f"{where}: {ack.location} reads back different bytes"


def put_after(db: FlatFileDb, acks: list[Ack], point: str, where: str) -> None:
    """New puts start where the last acknowledged blob ended (the killed put left nothing
    committed), or after the killed put's blob, whole, when its records were (KEPT_BY_RECOVERY);
    they read back their own bytes."""
    last = acks[-1].location
    location = db.put(b"after the crash " + where.encode())  # a survivor repairs the segment first
    start = last.end_offset
    if point in KEPT_BY_RECOVERY:
        killed = blob(len(acks))
        kept = DataLocation(last.file_path, start, start + len(killed))
        assert db.get(kept) == killed, f"{where}: the killed put's blob, committed by its records, reads back wrong"
        start = kept.end_offset
    assert location.file_path == last.file_path and location.start_offset == start, (
        f"{where}: the next put went to {location}, not to {start}, right after the last committed blob {last}"
    )
    assert db.get(location) == b"after the crash " + where.encode()
    check_acks(db, acks, where)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_inside_a_mapped_compressed_put_keeps_every_acknowledged_blob(tmp_path: Path, point: str) -> None:
    """SIGKILL at each step of the mapped commit: the survivor repairs, a reopen recovers, and
    every acknowledged blob reads back (in a survivor, after its repair, and after reopening)."""
    datadir = tmp_path / "store"
    survivor = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True)
    try:
        acks = run_child(datadir, point, warm=300)
        check_acks(survivor, acks, f"survivor of {point}")
        put_after(survivor, acks, point, f"survivor of {point}")
    finally:
        survivor.close()
    reopen_whole(datadir, [], f"reopen after {point}", use_compression=True, acks=acks)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_reopen_after_a_kill_inside_a_mapped_compressed_put_recovers_the_segment(tmp_path: Path, point: str) -> None:
    """SIGKILL at each step of the mapped commit with no other instance open: the next open
    recovers the mutable segment to its last commit (a valid seekable file of exactly its
    committed bytes, verify clean) and puts go on where the acknowledged blobs end."""
    datadir = tmp_path / "store"
    acks = run_child(datadir, point, warm=300)
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True)
    try:
        put_after(db, acks, point, f"reopen after {point}")
        assert_whole(db, [], f"reopen after {point}", acks=acks)
    finally:
        db.close()


def test_mapped_compressed_puts_are_seen_by_another_process_at_once(tmp_path: Path) -> None:
    """Blobs put through the maps by one process are read, with their bytes, by another process
    that had the segment open before they were put, and by a new read-only instance."""
    datadir = tmp_path / "store"
    reader = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=True)
    try:
        first = reader.put(b"opened before")
        acks = run_child(datadir, "none", warm=500)
        check_acks(reader, acks, "an instance open before the puts")
        assert reader.get(first) == b"opened before"
    finally:
        reader.close()
    readonly = FlatFileDb(datadir, readonly=True)
    try:
        check_acks(readonly, acks, "a read-only instance")
    finally:
        readonly.close()
