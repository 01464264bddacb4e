"""Crash safety: writers SIGKILLed at random moments, and every crash point injected by hand.

Random kills: a child process (``crash_writer.py``) puts in a loop and reports each
acknowledged blob (location and a blake2b of its bytes) to a report file; the parent
kills it with SIGKILL after a random 5-200 ms, then reopens the store with a new
FlatFileDb and checks that every acknowledged blob reads back byte-identical, that
``verify()`` is clean, that no data or index file holds bytes past the last committed
record, and that new puts work. The next child writes on into the same datadir. The RNG
seed is printed and named in every failure message; rerun one with ``FFDB_CRASH_SEED``
(and ``FFDB_CRASH_KILLS`` for more rounds).

Every loop runs twice: with raw segments and with seekable Zstandard segments
(``use_compression=True``). Compressed runs also check that every compressed segment is a
valid seekable file holding exactly its committed bytes (``zstd -t``, pyzstd), and that a
writer killed while re-framing a sealed segment (tiny MAX_DAT_FILE_SIZE: a rotation and a
re-frame every few puts) leaves a scratch file that the next open removes: some rounds
kill at random moments, others make the writer kill itself just before the re-frame's
rename, so that crash point is always reached.

Fault injection: a store is written, then the files are changed by hand into the state
that a crash at one particular instant leaves, and the store is reopened (or, for a
writer that died while another process keeps the store open, the live instance writes on).
Where the state depends on the engine's own order of steps (a rotation, a delete), a child
process runs the real operation and SIGKILLs itself at a chosen file creation or unlink
(an audit hook in crash_writer.py), so the test follows the engine if that order changes.
Crash points specific to the compressed layout are in test_zstd_crash_points.py.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import xxhash
from crash_support import (
    CHECK_SECONDS,
    INJECT_SEGMENT,
    PROGRESS_SECONDS,
    READY_SECONDS,
    Ack,
    Checked,
    Writer,
    append,
    assert_whole,
    check_reopened,
    crash_seed,
    data_path,
    index_records_of,
    is_compressed,
    newest_segment,
    populate,
    read_acks,
    reopen_whole,
    scratch_files,
    set_state_word,
    state_word,
    with_deadline,
    write_at,
)

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.index import (
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    RECORD_BYTES,
    encode_blob,
    encode_header,
    encode_seal,
)
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, parse_segment_name
from conduit_flat_file_db.state import W_DIRTY, W_SEQ

pytestmark = pytest.mark.crash

KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "24"))
SURVIVOR_KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "20"))
# Compressed loops cost more per round (re-framing, seekable-file checks): fewer random kills.
ZSTD_KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "20"))
ZSTD_SURVIVOR_KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "14"))
REFRAME_KILLS = 4  # extra rounds of the single-writer compressed loop: the writer dies just before a re-frame's rename
COMPRESSION = pytest.mark.parametrize("use_compression", [False, True], ids=["raw", "zstd"])


# -- random SIGKILLs --------------------------------------------------------------------


def writer_config(rng: random.Random, use_compression: bool, **fixed: object) -> dict[str, object]:
    """A random writer configuration; compressed writers also pick a frame size (0: default)."""
    config: dict[str, object] = {
        "seed": rng.randrange(2**32),
        "fsync": rng.random() < 0.3,
        "max_size": rng.choice([4096, 4096, 65536, 8 * 2**20]),
        "big_fraction": rng.choice([0.0, 0.01, 0.03]),
    }
    if use_compression:
        config.update(use_compression=True, frame_bytes=rng.choice([0, 1024, 16384]))
    config.update(fixed)
    return config


def own_scratch(datadir: Path, writer: Writer) -> list[str]:
    """Scratch files named after the writer's pid."""
    return [name for name, pid in scratch_files(datadir).items() if pid == writer.proc.pid]


@COMPRESSION
def test_sigkill_single_writer(tmp_path: Path, use_compression: bool) -> None:
    """A writer is killed KILLS times at random moments; each time the reopened store is whole.
    Compressed: ZSTD_KILLS times, and REFRAME_KILLS more rounds in which the writer dies just
    before the rename of a re-framed segment; the reopen must remove its scratch file."""
    seed = crash_seed()
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    acks: list[Ack] = []
    repairs = scratch = 0
    check_times: list[float] = []
    checked: Checked = {}
    kills = ZSTD_KILLS if use_compression else KILLS
    rounds = kills + (REFRAME_KILLS if use_compression else 0)
    reframe_rounds = set(rng.sample(range(rounds), rounds - kills))
    for round_ in range(rounds):
        reframe = round_ in reframe_rounds
        config = writer_config(rng, use_compression)
        if reframe:  # default frames (64 KiB): a sealed segment of several puts is re-framed
            config.update(max_size=4096, frame_bytes=0, die_in_reframe=rng.randint(1, 3))
        where = f"FFDB_CRASH_SEED={seed} round {round_} writer {config}"
        writer = Writer(tmp_path, f"writer{round_}", datadir, config)
        if reframe:
            writer.wait_self_kill(where)
            assert own_scratch(datadir, writer), f"{where}: killed mid re-frame, but it left no scratch file"
        else:
            try:
                if rng.random() < 0.85:  # else: kill it while it starts or recovers the store
                    writer.wait_ready(where)
                time.sleep(rng.uniform(0.005, 0.2))
            finally:
                writer.sigkill(where)
        acks += read_acks(writer.report)
        began = time.monotonic()
        reopened = with_deadline(
            CHECK_SECONDS,
            f"{where}: reopen and check",
            datadir,
            functools.partial(check_reopened, datadir, acks, where, use_compression, checked),
        )
        check_times.append(time.monotonic() - began)
        acks.append(reopened.ack)
        repairs += reopened.repaired
        scratch += reopened.scratch
    print(
        f"{rounds} kills ({len(reframe_rounds)} injected just before a re-frame's rename; {repairs} left a "
        f"torn tail or half-done rotation for the reopen to repair; {scratch} scratch files of killed "
        f"re-frames removed), {len(acks)} acknowledged blobs checked; reopen+check took "
        f"{sum(check_times):.1f} s in all, {max(check_times):.2f} s at most"
    )


@COMPRESSION
def test_sigkill_one_of_two_writers(tmp_path: Path, use_compression: bool) -> None:
    """Two writers share the store; one is killed again and again while the other (which reads
    back each of its puts) must keep writing: it recovers the dead writer's torn tail.
    Compressed: the survivor compresses, a quarter of the victims do not (each segment is of
    the kind its creator chose; both append to either kind), and every 5th victim dies just
    before the rename of a segment it re-framed."""
    seed = crash_seed()
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    stop_file = tmp_path / "stop"
    max_size = rng.choice([4096, 8192])
    kills = ZSTD_SURVIVOR_KILLS if use_compression else SURVIVOR_KILLS
    base: dict[str, object] = {"use_compression": True} if use_compression else {}
    survivor = Writer(
        tmp_path,
        "survivor",
        datadir,
        {
            "seed": rng.randrange(2**32),
            "fsync": False,
            "max_size": max_size,
            "big_fraction": 0.01,
            "read_back": True,
            "stop_file": str(stop_file),
            "pause": 0.001,
            **base,
        },
    )
    acks: list[Ack] = []
    scratch_seen = 0
    try:
        survivor.wait_ready(f"FFDB_CRASH_SEED={seed} survivor")
        for round_ in range(kills):
            config: dict[str, object] = {
                "seed": rng.randrange(2**32),
                "fsync": rng.random() < 0.3,
                "max_size": max_size,
                "big_fraction": rng.choice([0.0, 0.02]),
                **base,
            }
            reframe = use_compression and round_ % 5 == 2
            if reframe:
                config["die_in_reframe"] = rng.randint(1, 2)
            elif use_compression and rng.random() < 0.25:
                config["use_compression"] = False
            where = f"FFDB_CRASH_SEED={seed} round {round_} victim {config}"
            victim = Writer(tmp_path, f"victim{round_}", datadir, config)
            if reframe:
                victim.wait_self_kill(where)
                scratch_seen += bool(own_scratch(datadir, victim))
            else:
                try:
                    victim.wait_ready(where)
                    time.sleep(rng.uniform(0.005, 0.2))
                finally:
                    victim.sigkill(where)
            acks += read_acks(victim.report)
            before = len(read_acks(survivor.report))
            deadline = time.monotonic() + PROGRESS_SECONDS
            while len(read_acks(survivor.report)) < before + 5:
                assert survivor.proc.poll() is None, (
                    f"{where}: the surviving writer failed (exit {survivor.proc.returncode}):\n{survivor.stderr()}"
                )
                assert time.monotonic() < deadline, (
                    f"{where}: the surviving writer made no progress in {PROGRESS_SECONDS} s "
                    f"(state page sequence word = {state_word(datadir, W_SEQ)})"
                )
                time.sleep(0.005)
        stop_file.touch()
        try:
            survivor.proc.wait(PROGRESS_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"FFDB_CRASH_SEED={seed}: the surviving writer did not stop")
        assert survivor.proc.returncode == 0, (
            f"FFDB_CRASH_SEED={seed}: surviving writer exit {survivor.proc.returncode}:\n{survivor.stderr()}"
        )
    finally:
        if survivor.proc.poll() is None:
            survivor.proc.kill()
            survivor.proc.wait()
    acks += read_acks(survivor.report)
    where = f"FFDB_CRASH_SEED={seed} after {kills} kills"
    if use_compression:
        assert scratch_seen, f"{where}: no victim killed mid re-frame left its scratch file"
    reopened = with_deadline(
        CHECK_SECONDS,
        f"{where}: reopen and check",
        datadir,
        functools.partial(check_reopened, datadir, acks, where, use_compression),
    )
    print(
        f"{kills} kills ({scratch_seen} left a re-frame's scratch file, {reopened.scratch} "
        f"removed by the final reopen), {len(acks)} acknowledged blobs checked"
    )


# -- fault injection: each crash point by hand ------------------------------------------


def committed_extent(datadir: Path, number: int) -> tuple[int, int]:
    """(committed uncompressed end, blob records) of a clean segment, from its index."""
    blobs = [r for r in index_records_of(datadir, number) if r.rtype == REC_BLOB]
    return (blobs[-1].offset + blobs[-1].size if blobs else 0), len(blobs)


def committed_index_bytes(datadir: Path, number: int) -> int:
    """Where the next record of a segment's index goes: after its header and valid records (a raw
    mutable index may hold zero room past them)."""
    return HEADER_BYTES + RECORD_BYTES * len(index_records_of(datadir, number))


def write_past_commit(datadir: Path, number: int, data: bytes) -> None:
    """Bytes in the data file past the committed end, where a writer puts them: a raw segment's
    at its committed end (over its zero room, if any); a compressed one's after its seek table."""
    path = data_path(datadir, number)
    if is_compressed(path):
        append(path, data)
    else:
        write_at(path, committed_extent(datadir, number)[0], data)


def torn_append(datadir: Path, record_bytes: int, bad_crc: bool = False) -> None:
    """What a writer killed mid-put leaves: bytes past the data file's committed end (raw: the
    blob; a compressed segment: loose bytes after its seek table) and (part of) a BLOB record
    after the index's last record."""
    number = newest_segment(datadir)
    end, _blobs = committed_extent(datadir, number)
    garbage = random.Random(3).randbytes(700)
    write_past_commit(datadir, number, garbage)
    record = bytearray(encode_blob(end, len(garbage), xxhash.xxh3_64_intdigest(garbage)))
    if bad_crc:
        record[4] ^= 0xFF  # the record's crc32 field
    write_at(datadir / index_name(number), committed_index_bytes(datadir, number), bytes(record[:record_bytes]))


def seal_mutable(datadir: Path, room: int = 0) -> int:
    """Seal the newest segment as a rotation does first (write_seal: a raw data file is cut at its
    committed end, then the SEAL record follows the last record and ends the index); returns its number.
    ``room``: that many zero bytes are left after the SEAL, as a writer's room that was not cut."""
    number = newest_segment(datadir)
    end, blobs = committed_extent(datadir, number)
    path = data_path(datadir, number)
    if not is_compressed(path):
        os.truncate(path, end)
    index = datadir / index_name(number)
    at = committed_index_bytes(datadir, number)
    write_at(index, at, encode_seal(end, blobs, os.path.getsize(path)))
    os.truncate(index, at + RECORD_BYTES + room)
    return number


def next_index(datadir: Path, header_bytes: int) -> None:
    """Seal, then create the next segment's index with ``header_bytes`` of its header, no data file."""
    number = seal_mutable(datadir)
    kind = KIND_ZSTD if is_compressed(data_path(datadir, number)) else KIND_RAW
    header = encode_header(number + 1, kind, time.time_ns())
    (datadir / index_name(number + 1)).write_bytes(header[:header_bytes])


def seal_with_room(datadir: Path) -> None:
    """The SEAL written, the writer's room after it not yet cut (a seal of an older release killed
    between its two steps, or a power loss that kept the SEAL and lost the cut)."""
    seal_mutable(datadir, room=65536)


def seal_only(datadir: Path) -> None:
    """(4) A rotation wrote the SEAL record, then died before creating the next segment."""
    seal_mutable(datadir)


def garbage_data_tail(datadir: Path) -> None:
    """(1) Bytes in the data file past the committed end (compressed: past the seek table), no record."""
    write_past_commit(datadir, newest_segment(datadir), b"\xde\xad" * 700)


def lose_state_page(datadir: Path) -> None:
    """(6) The state page is gone (and the dead writer left a torn tail)."""
    torn_append(datadir, 13)
    os.unlink(datadir / STATE_FILE_NAME)


def dirty_state_page(datadir: Path) -> None:
    """(7) A writer died between its first write and its publish: dirty word set, torn tail."""
    torn_append(datadir, 20)
    set_state_word(datadir, W_DIRTY, 1)


CRASH_POINTS: dict[str, Callable[[Path], None]] = {
    "garbage_past_data_end": garbage_data_tail,
    "partial_index_record": lambda datadir: torn_append(datadir, 13),
    "bad_checksum_index_record": lambda datadir: torn_append(datadir, RECORD_BYTES, bad_crc=True),
    "seal_without_next_segment": seal_only,
    "seal_with_room_after_it": seal_with_room,
    "next_index_without_data": lambda datadir: next_index(datadir, HEADER_BYTES),
    "next_index_empty_without_data": lambda datadir: next_index(datadir, 0),
    "next_index_torn_header_without_data": lambda datadir: next_index(datadir, 10),
    "state_page_deleted": lose_state_page,
    "state_page_dirty": dirty_state_page,
}


@COMPRESSION
@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_reopen_after_crash_point(tmp_path: Path, crash_point: str, use_compression: bool) -> None:
    """The store reopens whole from each state a crash can leave. A writer that dies there is
    mid-operation, so it leaves the dirty word up (an open that finds it down and the page of
    this boot takes the page as the committed state: test_open_trusts_a_clean_page_of_this_boot)."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=use_compression)
    CRASH_POINTS[crash_point](datadir)
    if (datadir / STATE_FILE_NAME).exists():
        set_state_word(datadir, W_DIRTY, 1)
    reopen_whole(datadir, written, crash_point, use_compression)


@COMPRESSION
@pytest.mark.parametrize("nth_unlink", [2, 3])
def test_reopen_after_interrupted_delete(tmp_path: Path, nth_unlink: int, use_compression: bool) -> None:
    """delete_file of the oldest sealed segment killed just before its n-th unlink (some of the
    segment's files gone, some left): the store reopens, the segment's blobs read back or raise
    FileNotFoundError, every other blob reads, verify() is clean and puts work."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=use_compression)
    victim = Writer(
        tmp_path,
        "deleter",
        datadir,
        {
            "seed": 0,
            "fsync": False,
            "max_size": INJECT_SEGMENT,
            "big_fraction": 0.0,
            "use_compression": use_compression,
            "die_at_segment_remove": nth_unlink,
            "delete_segment": 0,
        },
    )
    victim.proc.wait(READY_SECONDS)
    assert victim.proc.returncode == -signal.SIGKILL, (
        f"delete_file did not reach unlink {nth_unlink} (exit {victim.proc.returncode}):\n{victim.stderr()}"
    )
    in_deleted = [item for item in written if parse_segment_name(os.path.basename(item.location.file_path)) == 0]
    assert in_deleted, "segment 0 held no blob"
    where = f"delete_file killed before unlink {nth_unlink}"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression)
    try:
        for item in in_deleted:
            try:
                assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
            except FileNotFoundError:
                pass
        assert_whole(db, [item for item in written if item not in in_deleted], where)
    finally:
        db.close()


@COMPRESSION
def test_survivor_recovers_dead_writers_torn_tail(tmp_path: Path, use_compression: bool) -> None:
    """Another process died mid-put (dirty word set, torn tail) while this instance stays open:
    this instance's next put cuts the torn tail first."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression, frame_bytes=1024)
    try:
        written = populate(datadir, db)
        dirty_state_page(datadir)
        assert_whole(db, written, "survivor after a torn put", reopened=False)
    finally:
        db.close()


@COMPRESSION
@pytest.mark.parametrize("larger_max", [False, True], ids=["same_max", "survivor_larger_max"])
@pytest.mark.parametrize(
    "killed_before",
    ["seal", "index", "data"],
    ids=["between_index_cut_and_seal", "before_next_index", "before_next_data_file"],
)
def test_survivor_after_writer_killed_mid_rotation(
    tmp_path: Path, killed_before: str, larger_max: bool, use_compression: bool
) -> None:
    """Another process is SIGKILLed in the middle of a rotation (after it cut its index for the
    SEAL record but before writing it, just before it creates the next segment's index, or its
    data file) while this instance stays open. This instance's next puts must work and leave a
    clean store, whether its MAX_DAT_FILE_SIZE is the dead writer's (so it rotates too) or
    larger (each process sets its own)."""
    suffix = ".idx" if killed_before == "index" else ".dat.zst" if use_compression else ".dat"
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression, frame_bytes=1024)
    how = (
        "after cutting its index for the SEAL record"
        if killed_before == "seal"
        else f"before creating the next {suffix}"
    )
    where = f"survivor of a rotation killed {how}" + (
        " (survivor has a larger MAX_DAT_FILE_SIZE)" if larger_max else ""
    )
    kill: dict[str, object] = (
        {"die_after_index_cut": True} if killed_before == "seal" else {"die_before_creating": suffix}
    )
    try:
        written = populate(datadir, db)
        victim = Writer(
            tmp_path,
            "victim",
            datadir,
            {
                "seed": 11,
                "fsync": False,
                "max_size": INJECT_SEGMENT,
                "big_fraction": 0.0,
                "use_compression": use_compression,
                **kill,
            },
        )
        try:
            victim.proc.wait(READY_SECONDS)
        except subprocess.TimeoutExpired:
            victim.proc.kill()
            victim.proc.wait()
        assert victim.proc.returncode == -signal.SIGKILL, (
            f"the victim did not die in its rotation (exit {victim.proc.returncode}):\n{victim.stderr()}"
        )
        if killed_before == "seal":  # the index cut to its records plus 32 zero bytes, no SEAL yet
            last = (datadir / index_name(newest_segment(datadir))).read_bytes()[-RECORD_BYTES:]
            assert last == bytes(RECORD_BYTES), f"{where}: the index ends in {last.hex()}, not the SEAL's zero room"
        acks = read_acks(victim.report)
        if larger_max:
            db.MAX_DAT_FILE_SIZE = 2**20
        assert_whole(db, written, where, reopened=False, acks=acks)
    finally:
        db.close()
    reopen_whole(datadir, written, f"reopen after the {where}", use_compression, acks)


_REOPEN_AND_READ = textwrap.dedent("""
    import json, sys
    from conduit_flat_file_db import DataLocation, FlatFileDb
    datadir, written = sys.argv[1], json.load(sys.stdin)
    db = FlatFileDb(datadir, datadir + ".lock", use_compression=sys.argv[2] == "1")
    for path, start, end, hexdata in written:
        assert db.get(DataLocation(path, start, end)) == bytes.fromhex(hexdata), (path, start, end)
    report = db.verify()
    assert report.ok, str(report)
    location = db.put(b"after")
    assert db.get(location) == b"after"
    db.rotate()
    assert db.get(location) == b"after"
    db.close()
""")


@COMPRESSION
def test_writer_killed_mid_publish(tmp_path: Path, use_compression: bool) -> None:
    """A writer killed inside its state-page publish leaves the sequence counter odd. The
    store must still reopen, read, verify and write (in a child, so a hang cannot hang the run)."""
    datadir = tmp_path / "store"
    written = populate(datadir, use_compression=use_compression)
    seq = state_word(datadir, W_SEQ)
    assert seq % 2 == 0
    set_state_word(datadir, W_SEQ, seq + 1)  # killed between the two sequence stores of a publish
    arg = json.dumps(
        [[w.location.file_path, w.location.start_offset, w.location.end_offset, w.data.hex()] for w in written]
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _REOPEN_AND_READ, str(datadir), str(int(use_compression))],
            input=arg,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            "after a writer was killed mid-publish (state page sequence counter left odd), "
            "reopening and reading the store hangs for ever"
        )
    assert proc.returncode == 0, proc.stderr


_RECOMPRESS_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from conduit_flat_file_db import FlatFileDb
    datadir, to_compressed, old_name = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    db = FlatFileDb(datadir, datadir + ".lock")
    def hook(event, args):
        # Audit events come before the operation: this stops the rewrite between its rename of
        # the new file and its unlink of the old one.
        if event == "os.remove" and args and os.path.basename(str(args[0])) == old_name:
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
    db.recompress([0], mode=to_compressed)
    sys.exit(3)  # not reached: the rewrite must unlink the old file
""")


@pytest.mark.parametrize("to_compressed", [True, False], ids=["raw_to_compressed", "compressed_to_raw"])
def test_a_rewrite_killed_between_its_rename_and_unlink_leaves_one_data_file_after_reopen(
    tmp_path: Path, to_compressed: bool
) -> None:
    """recompress() of a sealed segment to the other kind, SIGKILLed after it renamed the new file
    in and before it unlinked the old one, leaves both data files of the segment. Both hold its
    bytes; the next writer's open removes the compressed one (readers take the raw one), every
    blob reads back, verify() is clean, and nothing else is lost."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=not to_compressed)
    blobs = [bytes([i]) * (500 + 37 * i) for i in range(40)]
    locations = db.put_many(blobs)
    db.rotate()
    db.close()
    old_name = data_path(datadir, 0).name
    done = subprocess.run(
        [sys.executable, "-c", _RECOMPRESS_AND_DIE, str(datadir), "1" if to_compressed else "0", old_name],
        capture_output=True,
        text=True,
        timeout=READY_SECONDS,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, f"the rewrite was not stopped before its unlink:\n{done.stderr}"
    names = sorted(name for name in os.listdir(datadir) if name.startswith("data_00000000.dat"))
    assert names == ["data_00000000.dat", "data_00000000.dat.zst"], names
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        assert sorted(n for n in os.listdir(datadir) if n.startswith("data_00000000.dat")) == ["data_00000000.dat"]
        assert [db.get(location) for location in locations] == blobs
        report = db.verify()
        assert report.ok, str(report)
    finally:
        db.close()
