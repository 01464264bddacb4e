"""Crash safety: writers SIGKILLed at random moments, and every crash point injected by hand.

Random kills: a child process (``crash_writer.py``) puts in a loop and reports each
acknowledged blob (location and a blake2b of its bytes) to a report file; the parent
kills it with SIGKILL after a random 5-200 ms, then reopens the store with a new
FlatFileDb and checks that every acknowledged blob reads back byte-identical, that
``verify()`` is clean, that no data or index file holds bytes past the last committed
record, and that new puts work. The next child writes on into the same datadir. The RNG
seed is printed and named in every failure message; rerun one with ``FFDB_CRASH_SEED``
(and ``FFDB_CRASH_KILLS`` for more rounds).

Fault injection: a store is written, then the files are changed by hand into the state
that a crash at one particular instant leaves, and the store is reopened (or, for a
writer that died while another process keeps the store open, the live instance writes on).
Where the state depends on the engine's own order of steps (a rotation, a delete), a child
process runs the real operation and SIGKILLs itself at a chosen file creation or unlink
(an audit hook in crash_writer.py), so the test follows the engine if that order changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, Sequence, TypeVar

import pytest
import xxhash

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.index import (
    HEADER_BYTES,
    KIND_RAW,
    RECORD_BYTES,
    encode_blob,
    encode_header,
    encode_seal,
)
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, segment_name
from conduit_flat_file_db.state import W_DIRTY, W_SEQ

pytestmark = pytest.mark.crash

T = TypeVar("T")

WRITER_SCRIPT = Path(__file__).with_name("crash_writer.py")
KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "24"))
SURVIVOR_KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "20"))
READY_SECONDS = 30.0
CHECK_SECONDS = 60.0
PROGRESS_SECONDS = 15.0


class Ack(NamedTuple):
    """A blob a writer reported after its put returned."""

    location: DataLocation
    digest: str


def digest(data: bytes) -> str:
    """Same checksum as crash_writer.digest."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def crash_seed() -> int:
    """The run's seed: FFDB_CRASH_SEED, or a fresh one. Printed so a failure can be replayed."""
    seed = int(os.environ.get("FFDB_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FFDB_CRASH_SEED={seed}")
    return seed


def read_acks(report: Path) -> list[Ack]:
    """Acknowledged blobs in a report file; a torn last line (killed mid-write) is ignored."""
    try:
        data = report.read_bytes()
    except FileNotFoundError:
        return []
    acks = []
    for line in data[: data.rfind(b"\n") + 1].decode().splitlines():
        if line.startswith("#"):
            continue
        path, start, end, hexdigest = line.split("\t")
        acks.append(Ack(DataLocation(path, int(start), int(end)), hexdigest))
    return acks


def is_ready(report: Path) -> bool:
    """True once the writer has opened the store."""
    try:
        return report.read_bytes().startswith(b"# ready")
    except FileNotFoundError:
        return False


def state_word(datadir: Path, word: int) -> int:
    """One 8-byte word of the state page, read from the file."""
    with open(datadir / STATE_FILE_NAME, "rb") as handle:
        handle.seek(8 * word)
        value: int = struct.unpack("<Q", handle.read(8))[0]
        return value


def set_state_word(datadir: Path, word: int, value: int) -> None:
    """Write one word of the state page through a shared mapping, as a writer process does."""
    with open(datadir / STATE_FILE_NAME, "r+b") as handle, \
            mmap.mmap(handle.fileno(), 4096, mmap.MAP_SHARED) as page:
        struct.pack_into("<Q", page, 8 * word, value)


def with_deadline(seconds: float, what: str, datadir: Path, func: Callable[[], T]) -> T:
    """Run ``func`` in a thread; fail (instead of hanging the run) if it takes over ``seconds``."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(func())
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {seconds} s: the store hangs "
                    f"(state page sequence word = {state_word(datadir, W_SEQ)})")
    if errors:
        raise errors[0]
    return results[0]


class Writer:
    """A crash_writer.py child process."""

    def __init__(self, tmp_path: Path, name: str, datadir: Path, config: dict[str, object]) -> None:
        self.report = tmp_path / f"{name}.report"
        self.stderr_path = tmp_path / f"{name}.stderr"
        full = {"datadir": str(datadir), "lock_path": str(datadir) + ".lock", "report": str(self.report),
                **config}
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # killed by the test
                [sys.executable, str(WRITER_SCRIPT), json.dumps(full)], stderr=stderr)

    def stderr(self) -> str:
        """What the child wrote to stderr (its traceback, if it failed)."""
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, where: str) -> None:
        """Wait until the child has opened the store."""
        deadline = time.monotonic() + READY_SECONDS
        while not is_ready(self.report):
            assert self.proc.poll() is None, (
                f"{where}: writer exited ({self.proc.returncode}):\n{self.stderr()}")
            assert time.monotonic() < deadline, f"{where}: writer not ready within {READY_SECONDS} s"
            time.sleep(0.002)

    def sigkill(self, where: str) -> None:
        """SIGKILL the child (it must still be running) and reap it."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert alive, f"{where}: writer exited ({self.proc.returncode}) before the kill:\n{self.stderr()}"


def assert_tails_clean(db: FlatFileDb, where: str) -> None:
    """No data or index file holds bytes past the last committed record; segment files pair up."""
    ends: dict[int, int] = {}
    blobs: Counter[int] = Counter()
    for record in db.iter_records():
        ends[record.segment] = record.end_offset
        blobs[record.segment] += 1
    mutable = db.mutable_segment()
    numbers = db.segments()
    assert numbers and numbers[-1] == mutable, f"{where}: segments {numbers[-3:]}, mutable {mutable}"
    for name in os.listdir(db.datadir):
        if name.startswith("data_"):
            number = int(name[5:].split(".")[0])
            assert number <= mutable, f"{where}: {name} is past the mutable segment {mutable}"
    for number in numbers:
        if number != mutable and not (db.datadir / index_name(number)).exists():
            continue  # a sealed segment without an index (old engine, or a delete cut short)
        data_size = os.path.getsize(db.datadir / segment_name(number, False))
        assert data_size == ends.get(number, 0), (
            f"{where}: segment {number}: data file is {data_size} bytes, committed end {ends.get(number, 0)}")
        index_size = os.path.getsize(db.datadir / index_name(number))
        expected = HEADER_BYTES + RECORD_BYTES * (blobs[number] + (number < mutable))
        assert index_size == expected, (
            f"{where}: segment {number}: index is {index_size} bytes, expected {expected} "
            f"({blobs[number]} blobs{', sealed' if number < mutable else ''})")


def store_file_sizes(datadir: Path) -> dict[str, int]:
    """Size of every segment data and index file."""
    return {name: os.path.getsize(datadir / name) for name in os.listdir(datadir) if name.startswith("data_")}


def check_reopened(datadir: Path, acks: list[Ack], where: str) -> tuple[Ack, bool]:
    """Reopen the store in this process and check everything.

    Returns the ack of a new put, and whether opening changed any segment file (recovery
    cut a torn tail or finished a rotation).
    """
    before = store_file_sizes(datadir) if datadir.exists() else {}
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    repaired = store_file_sizes(datadir) != before
    try:
        for ack in acks:
            got = db.get(ack.location)
            assert digest(got) == ack.digest, f"{where}: {ack.location} reads back different bytes"
        report = db.verify()
        assert report.ok, f"{where}: {report}"
        assert_tails_clean(db, where)
        blob = f"parent put after {where}".encode()
        location = db.put(blob)
        assert db.get(location) == blob, f"{where}: new put at {location} reads back different bytes"
        return Ack(location, digest(blob)), repaired
    finally:
        db.close()


# -- random SIGKILLs --------------------------------------------------------------------


def test_sigkill_single_writer(tmp_path: Path) -> None:
    """A writer is killed KILLS times at random moments; each time the reopened store is whole."""
    seed = crash_seed()
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    acks: list[Ack] = []
    repairs = 0
    for round_ in range(KILLS):
        config: dict[str, object] = {
            "seed": rng.randrange(2**32),
            "fsync": rng.random() < 0.3,
            "max_size": rng.choice([4096, 4096, 65536, 8 * 2**20]),
            "big_fraction": rng.choice([0.0, 0.01, 0.03]),
        }
        where = f"FFDB_CRASH_SEED={seed} round {round_} writer {config}"
        writer = Writer(tmp_path, f"writer{round_}", datadir, config)
        try:
            if rng.random() < 0.85:  # else: kill it while it starts or recovers the store
                writer.wait_ready(where)
            time.sleep(rng.uniform(0.005, 0.2))
        finally:
            writer.sigkill(where)
        acks += read_acks(writer.report)
        ack, repaired = with_deadline(CHECK_SECONDS, f"{where}: reopen and check", datadir,
                                      functools.partial(check_reopened, datadir, acks, where))
        acks.append(ack)
        repairs += repaired
    print(f"{KILLS} kills ({repairs} left a torn tail or half-done rotation for the reopen to repair), "
          f"{len(acks)} acknowledged blobs checked")


def test_sigkill_one_of_two_writers(tmp_path: Path) -> None:
    """Two writers share the store; one is killed again and again while the other (which reads
    back each of its puts) must keep writing: it recovers the dead writer's torn tail."""
    seed = crash_seed()
    rng = random.Random(seed)
    datadir = tmp_path / "store"
    stop_file = tmp_path / "stop"
    max_size = rng.choice([4096, 8192])
    survivor = Writer(tmp_path, "survivor", datadir, {
        "seed": rng.randrange(2**32), "fsync": False, "max_size": max_size, "big_fraction": 0.01,
        "read_back": True, "stop_file": str(stop_file), "pause": 0.001})
    acks: list[Ack] = []
    try:
        survivor.wait_ready(f"FFDB_CRASH_SEED={seed} survivor")
        for round_ in range(SURVIVOR_KILLS):
            config: dict[str, object] = {"seed": rng.randrange(2**32), "fsync": rng.random() < 0.3,
                                         "max_size": max_size, "big_fraction": rng.choice([0.0, 0.02])}
            where = f"FFDB_CRASH_SEED={seed} round {round_} victim {config}"
            victim = Writer(tmp_path, f"victim{round_}", datadir, config)
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
                    f"{where}: the surviving writer failed (exit {survivor.proc.returncode}):\n"
                    f"{survivor.stderr()}")
                assert time.monotonic() < deadline, (
                    f"{where}: the surviving writer made no progress in {PROGRESS_SECONDS} s "
                    f"(state page sequence word = {state_word(datadir, W_SEQ)})")
                time.sleep(0.005)
        stop_file.touch()
        try:
            survivor.proc.wait(PROGRESS_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"FFDB_CRASH_SEED={seed}: the surviving writer did not stop")
        assert survivor.proc.returncode == 0, (
            f"FFDB_CRASH_SEED={seed}: surviving writer exit {survivor.proc.returncode}:\n{survivor.stderr()}")
    finally:
        if survivor.proc.poll() is None:
            survivor.proc.kill()
            survivor.proc.wait()
    acks += read_acks(survivor.report)
    where = f"FFDB_CRASH_SEED={seed} after {SURVIVOR_KILLS} kills"
    with_deadline(CHECK_SECONDS, f"{where}: reopen and check", datadir,
                  functools.partial(check_reopened, datadir, acks, where))
    print(f"{SURVIVOR_KILLS} kills, {len(acks)} acknowledged blobs checked")


# -- fault injection: each crash point by hand ------------------------------------------

INJECT_SEGMENT = 8192


class Written(NamedTuple):
    """A blob written before the injected crash."""

    location: DataLocation
    data: bytes


def populate(datadir: Path, db: FlatFileDb | None = None) -> list[Written]:
    """Write ~40 blobs over several segments; the mutable segment ends non-empty."""
    own = db is None
    if db is None:
        db = FlatFileDb(datadir, str(datadir) + ".lock")
    db.MAX_DAT_FILE_SIZE = INJECT_SEGMENT
    rng = random.Random(7)
    written: list[Written] = []
    for i in range(30):
        if i % 5 == 4:
            blobs = [rng.randbytes(rng.randint(0, 3000)) for _ in range(3)]
            written += map(Written._make, zip(db.put_many(blobs), blobs))
        else:
            blob = rng.randbytes(rng.randint(0, 3000))
            written.append(Written(db.put(blob), blob))
    blob = b"the last blob before the crash"
    written.append(Written(db.put(blob), blob))
    if own:
        db.close()
    return written


def newest_segment(datadir: Path) -> int:
    """The highest segment number among the data and index files."""
    return max(int(name[5:].split(".")[0]) for name in os.listdir(datadir) if name.startswith("data_"))


def append(path: Path, data: bytes) -> None:
    """Append bytes to a file."""
    with open(path, "ab") as handle:
        handle.write(data)


def committed_extent(datadir: Path, number: int) -> tuple[int, int]:
    """(data bytes, blob records) of a clean segment, from its file sizes."""
    data_size = os.path.getsize(datadir / segment_name(number, False))
    return data_size, (os.path.getsize(datadir / index_name(number)) - HEADER_BYTES) // RECORD_BYTES


def torn_append(datadir: Path, record_bytes: int, bad_crc: bool = False) -> None:
    """What a writer killed mid-put leaves: blob bytes past the end and (part of) their record."""
    number = newest_segment(datadir)
    end, _blobs = committed_extent(datadir, number)
    garbage = random.Random(3).randbytes(700)
    append(datadir / segment_name(number, False), garbage)
    record = bytearray(encode_blob(end, len(garbage), xxhash.xxh3_64_intdigest(garbage)))
    if bad_crc:
        record[4] ^= 0xFF  # the record's crc32 field
    append(datadir / index_name(number), bytes(record[:record_bytes]))


def seal_mutable(datadir: Path) -> int:
    """Append the SEAL record of the newest segment, as a rotation does first; returns its number."""
    number = newest_segment(datadir)
    end, blobs = committed_extent(datadir, number)
    append(datadir / index_name(number), encode_seal(end, blobs, end))
    return number


def next_index(datadir: Path, header_bytes: int) -> None:
    """Seal, then create the next segment's index with ``header_bytes`` of its header, no data file."""
    number = seal_mutable(datadir)
    header = encode_header(number + 1, KIND_RAW, time.time_ns())
    (datadir / index_name(number + 1)).write_bytes(header[:header_bytes])


def seal_only(datadir: Path) -> None:
    """(4) A rotation wrote the SEAL record, then died before creating the next segment."""
    seal_mutable(datadir)


def garbage_data_tail(datadir: Path) -> None:
    """(1) Bytes in the data file past the committed end, no index record."""
    append(datadir / segment_name(newest_segment(datadir), False), b"\xde\xad" * 700)


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
    "next_index_without_data": lambda datadir: next_index(datadir, HEADER_BYTES),
    "next_index_empty_without_data": lambda datadir: next_index(datadir, 0),
    "next_index_torn_header_without_data": lambda datadir: next_index(datadir, 10),
    "state_page_deleted": lose_state_page,
    "state_page_dirty": dirty_state_page,
}


def assert_whole(db: FlatFileDb, written: list[Written], where: str, reopened: bool = True,
                 acks: Sequence[Ack] = ()) -> None:
    """Every written blob reads back, files end at their commits, verify is clean, puts work.

    ``reopened``: ``db`` was opened after the crash, so recovery has run and the files must
    already be clean. An instance that was open during the crash cuts a dead writer's tail
    before its next append: its files are checked after its puts.
    """
    for item in written:
        assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
    for ack in acks:
        assert digest(db.get(ack.location)) == ack.digest, f"{where}: {ack.location} reads back different bytes"
    if reopened:
        assert_tails_clean(db, where)
    report = db.verify()
    assert report.ok, f"{where}: {report}"
    more = [Written(db.put(blob), blob) for blob in (b"new after " + where.encode(), b"", b"x" * 5000)]
    for item in written + more:
        assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
    assert_tails_clean(db, where)
    report = db.verify()
    assert report.ok, f"{where}: after new puts: {report}"


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_reopen_after_crash_point(tmp_path: Path, crash_point: str) -> None:
    """The store reopens whole from each state a crash can leave."""
    datadir = tmp_path / "store"
    written = populate(datadir)
    CRASH_POINTS[crash_point](datadir)
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        assert_whole(db, written, crash_point)
    finally:
        db.close()


@pytest.mark.parametrize("nth_unlink", [2, 3])
def test_reopen_after_interrupted_delete(tmp_path: Path, nth_unlink: int) -> None:
    """delete_file of the oldest sealed segment killed just before its n-th unlink (some of the
    segment's files gone, some left): the store reopens, the segment's blobs read back or raise
    FileNotFoundError, every other blob reads, verify() is clean and puts work."""
    datadir = tmp_path / "store"
    written = populate(datadir)
    victim = Writer(tmp_path, "deleter", datadir, {
        "seed": 0, "fsync": False, "max_size": INJECT_SEGMENT, "big_fraction": 0.0,
        "die_at_segment_remove": nth_unlink, "delete_segment": 0})
    victim.proc.wait(READY_SECONDS)
    assert victim.proc.returncode == -signal.SIGKILL, (
        f"delete_file did not reach unlink {nth_unlink} (exit {victim.proc.returncode}):\n{victim.stderr()}")
    in_deleted = [item for item in written if item.location.file_path.endswith(segment_name(0, False))]
    assert in_deleted, "segment 0 held no blob"
    where = f"delete_file killed before unlink {nth_unlink}"
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        for item in in_deleted:
            try:
                assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
            except FileNotFoundError:
                pass
        assert_whole(db, [item for item in written if item not in in_deleted], where)
    finally:
        db.close()


def test_survivor_recovers_dead_writers_torn_tail(tmp_path: Path) -> None:
    """Another process died mid-put (dirty word set, torn tail) while this instance stays open:
    this instance's next put cuts the torn tail first."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        written = populate(datadir, db)
        dirty_state_page(datadir)
        assert_whole(db, written, "survivor after a torn put", reopened=False)
    finally:
        db.close()


@pytest.mark.parametrize("larger_max", [False, True], ids=["same_max", "survivor_larger_max"])
@pytest.mark.parametrize("killed_before", [".idx", ".dat"], ids=["before_next_index", "before_next_data_file"])
def test_survivor_after_writer_killed_mid_rotation(tmp_path: Path, killed_before: str,
                                                 larger_max: bool) -> None:
    """Another process is SIGKILLed in the middle of a rotation (just before it creates the next
    segment's index, or its data file) while this instance stays open. This instance's next
    puts must work and leave a clean store, whether its MAX_DAT_FILE_SIZE is the dead writer's
    (so it rotates too) or larger (each process sets its own)."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    where = f"survivor of a rotation killed before creating the next {killed_before}" + (
        " (survivor has a larger MAX_DAT_FILE_SIZE)" if larger_max else "")
    try:
        written = populate(datadir, db)
        victim = Writer(tmp_path, "victim", datadir, {
            "seed": 11, "fsync": False, "max_size": INJECT_SEGMENT, "big_fraction": 0.0,
            "die_before_creating": killed_before})
        try:
            victim.proc.wait(READY_SECONDS)
        except subprocess.TimeoutExpired:
            victim.proc.kill()
            victim.proc.wait()
        assert victim.proc.returncode == -signal.SIGKILL, (
            f"the victim did not die in its rotation (exit {victim.proc.returncode}):\n{victim.stderr()}")
        acks = read_acks(victim.report)
        if larger_max:
            db.MAX_DAT_FILE_SIZE = 2**20
        assert_whole(db, written, where, reopened=False, acks=acks)
    finally:
        db.close()
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        assert_whole(db, written, f"reopen after the {where}", acks=acks)
    finally:
        db.close()


_REOPEN_AND_READ = textwrap.dedent("""
    import json, sys
    from conduit_flat_file_db import DataLocation, FlatFileDb
    datadir, written = sys.argv[1], json.load(sys.stdin)
    db = FlatFileDb(datadir, datadir + ".lock")
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


def test_writer_killed_mid_publish(tmp_path: Path) -> None:
    """A writer killed inside its state-page publish leaves the sequence counter odd. The
    store must still reopen, read, verify and write (in a child, so a hang cannot hang the run)."""
    datadir = tmp_path / "store"
    written = populate(datadir)
    seq = state_word(datadir, W_SEQ)
    assert seq % 2 == 0
    set_state_word(datadir, W_SEQ, seq + 1)  # killed between the two sequence stores of a publish
    arg = json.dumps([[w.location.file_path, w.location.start_offset, w.location.end_offset, w.data.hex()]
                      for w in written])
    try:
        proc = subprocess.run([sys.executable, "-c", _REOPEN_AND_READ, str(datadir)], input=arg,
                              capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("after a writer was killed mid-publish (state page sequence counter left odd), "
                    "reopening and reading the store hangs for ever")
    assert proc.returncode == 0, proc.stderr
