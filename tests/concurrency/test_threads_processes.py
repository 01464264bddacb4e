"""Real threads and processes on one store: no lost, duplicated, overlapping or wrong blobs.

Every blob's bytes are a function of a short key (``blob_for``), so any thread, process or
the parent can recompute what a location must hold. Writers report ``key, location`` lines
to a per-writer report file (flushed after each put); readers in other processes tail those
files, trusting only complete lines.

Every test runs with raw segments and with seekable Zstandard segments
(``use_compression=True``). Compressed runs rotate every few puts, and the writer that
seals a segment of several small puts re-frames it (rewrites it aside with bigger frames and
renames it in) while other threads and processes read it. A mixed test has processes with
and without compression writing to one datadir.

The process workers are module-level functions so that the 'spawn' start method can
import them in the child.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import struct
import threading
import time
import traceback
from collections import Counter
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.naming import parse_segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
Entry = tuple[str, DataLocation]  # (key, location)

TINY_SEGMENT = 8192  # MAX_DAT_FILE_SIZE that makes a rotation every ~5 blobs (each costs ~4 fsyncs)
MAX_BLOB = 3000
JOIN_SECONDS = 60.0
COMPRESSION = pytest.mark.parametrize("use_compression", [False, True], ids=["raw", "zstd"])


def open_store(datadir: str, lock_path: str, use_compression: bool) -> FlatFileDb:
    """A worker's own instance of the store."""
    return FlatFileDb(datadir, lock_path, use_compression=use_compression)


def blob_for(key: str) -> bytes:
    """The bytes stored under ``key``: 0..MAX_BLOB random bytes seeded by the key (any process)."""
    rng = random.Random(key)
    return rng.randbytes(rng.randint(0, MAX_BLOB))


def segment_number(location: DataLocation) -> int:
    """The segment number a location's file name carries."""
    number = parse_segment_name(os.path.basename(location.file_path))
    assert number is not None, f"not a segment file name: {location.file_path}"
    return number


def assert_no_overlaps(locations: Iterable[DataLocation]) -> None:
    """No two locations share a byte of one segment (empty blobs may sit anywhere)."""
    by_segment: dict[int, list[DataLocation]] = {}
    for loc in locations:
        assert 0 <= loc.start_offset <= loc.end_offset, f"inverted location {loc}"
        by_segment.setdefault(segment_number(loc), []).append(loc)
    for number, locs in by_segment.items():
        locs.sort(key=lambda loc: (loc.start_offset, loc.end_offset))
        for before, after in zip(locs, locs[1:]):
            assert after.start_offset >= before.end_offset, f"segment {number}: {before} overlaps {after}"


def assert_same_locations(returned: Iterable[DataLocation], stored: Iterable[DataLocation]) -> None:
    """The store lists exactly the returned locations: as a multiset, compared by segment number."""

    def key(loc: DataLocation) -> tuple[int, int, int]:
        return (segment_number(loc), loc.start_offset, loc.end_offset)

    returned_set = Counter(key(loc) for loc in returned)
    stored_set = Counter(key(loc) for loc in stored)
    lost = returned_set - stored_set
    extra = stored_set - returned_set
    assert not lost and not extra, (
        f"{sum(lost.values())} returned locations missing from iter_locations() (e.g. {list(lost)[:5]}), "
        f"{sum(extra.values())} listed but never returned (e.g. {list(extra)[:5]})"
    )


def format_entry(key: str, loc: DataLocation) -> str:
    """One report line."""
    return f"{key}\t{loc.file_path}\t{loc.start_offset}\t{loc.end_offset}\n"


class ReportTail:
    """Reads a report file as it grows, returning only complete lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Entry]:
        """Entries appended since the last call (a torn last line waits for its end)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        entries: list[Entry] = []
        for line in data[:cut].decode().splitlines():
            if line.startswith("#"):
                continue
            key, path, start, end = line.split("\t")
            entries.append((key, DataLocation(path, int(start), int(end))))
        return entries


def read_report(path: Path) -> tuple[list[Entry], int | None]:
    """All entries of a finished report and the total its writer claimed ('# total N')."""
    total: int | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# total "):
            total = int(line.split()[-1])
    return ReportTail(path).poll(), total


def put_some(db: FlatFileDb, rng: random.Random, prefix: str, counter: int, batch_fraction: float) -> list[Entry]:
    """One put, or (``batch_fraction`` of the time) one put_many of 0..5 blobs, keyed
    ``prefix-counter``, ``prefix-counter+1``...; returns (key, location) pairs in order."""
    if rng.random() < batch_fraction:
        keys = [f"{prefix}-{counter + i}" for i in range(rng.randint(0, 5))]
        locations = db.put_many([blob_for(key) for key in keys])
        assert len(locations) == len(keys), f"put_many of {len(keys)} returned {len(locations)} locations"
        return list(zip(keys, locations))
    key = f"{prefix}-{counter}"
    return [(key, db.put(blob_for(key)))]


def read_and_check(db: FlatFileDb, rng: random.Random, key: str, loc: DataLocation, who: str) -> None:
    """Read a blob, or (half the time) a random slice of it, and compare the bytes."""
    want = blob_for(key)
    if rng.random() < 0.5 and want:
        start = rng.randrange(len(want))
        end = rng.randint(start + 1, len(want))
        got = db.get(loc, Slice(start, end))
        assert got == want[start:end], f"{who}: {loc} of {key}, slice {start}..{end}: wrong bytes"
        return
    assert db.get(loc) == want, f"{who}: {loc} of {key} read back wrong bytes"


def check_entries(db: FlatFileDb, entries: list[Entry]) -> None:
    """Every entry reads back byte-identical; no overlaps; the store lists exactly these locations."""
    for key, loc in entries:
        assert db.get(loc) == blob_for(key), f"{loc} of {key} read back wrong bytes"
    locations = [loc for _key, loc in entries]
    assert_no_overlaps(locations)
    assert_same_locations(locations, db.iter_locations())


def run_guarded(err_path: str, body: Callable[[], None]) -> None:
    """Run a worker body; leave its traceback in ``err_path`` for the parent's message."""
    try:
        body()
    except BaseException:
        Path(err_path).write_text(traceback.format_exc(), encoding="utf-8")
        raise


def start_processes(
    ctx: BaseContext, target: Callable[..., None], args_list: list[tuple[Any, ...]]
) -> list[BaseProcess]:
    """Start one process per argument tuple."""
    procs = [ctx.Process(target=target, args=args) for args in args_list]  # type: ignore[attr-defined]
    for proc in procs:
        proc.start()
    return procs


def join_all(procs: list[BaseProcess], err_dir: Path) -> None:
    """Join every process; fail with the children's tracebacks if one failed or hung."""
    deadline = time.monotonic() + JOIN_SECONDS
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.kill()
        proc.join()
    errors = "\n".join(p.read_text() for p in sorted(err_dir.glob("*.err")))
    assert not hung, f"{len(hung)} worker processes did not finish in {JOIN_SECONDS} s\n{errors}"
    codes = [proc.exitcode for proc in procs]
    assert codes == [0] * len(procs), f"worker exit codes {codes}\n{errors}"


# -- 8 threads, one instance ------------------------------------------------------------

THREADS = 8
OPS_PER_THREAD = 300


@COMPRESSION
def test_threads_on_one_instance(make_store: StoreFactory, use_compression: bool) -> None:
    """8 threads put/put_many/get on one FlatFileDb through hundreds of rotations (compressed:
    and as many re-framings of sealed segments, each by the thread that sealed it)."""
    db = make_store(use_compression=use_compression)
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    results: list[list[Entry]] = [[] for _ in range(THREADS)]
    puts = [0] * THREADS
    errors: list[str] = []
    # A thread that dies before the barrier breaks it for the others (and a timeout breaks it if
    # a thread died where guarded cannot see it): the test then fails with the reasons, not hangs.
    barrier = threading.Barrier(THREADS, timeout=JOIN_SECONDS / 2)

    def work(tid: int) -> None:
        rng = random.Random(tid)
        mine = results[tid]
        counter = 0
        barrier.wait()
        for _ in range(OPS_PER_THREAD):
            entries = put_some(db, rng, f"t{tid}", counter, 0.2)
            mine.extend(entries)
            counter += len(entries)
            puts[tid] += len(entries)
            for _ in range(2 if mine else 0):
                key, loc = rng.choice(mine)
                read_and_check(db, rng, key, loc, f"thread {tid}")

    def guarded(tid: int) -> None:
        try:
            work(tid)
        except BaseException:  # pylint: disable=broad-exception-caught  # reported below
            errors.append(f"thread {tid}:\n{traceback.format_exc()}")
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=(tid,)) for tid in range(THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * JOIN_SECONDS
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not errors, "\n".join(errors)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"

    entries = [entry for mine in results for entry in mine]
    assert len(entries) == sum(puts)
    check_entries(db, entries)
    assert len(db.segments()) > 50, f"only {len(db.segments())} segments: rotations were not exercised"
    report = db.verify()
    assert report.ok, str(report)


READ_THREADS = 4
GROW_PUTS = 3000
GROW_SECONDS = 3.0


@COMPRESSION
def test_threads_read_growing_segment(make_store: StoreFactory, use_compression: bool) -> None:
    """One thread appends to the mutable segment (no rotation) while 4 threads of the same
    instance read its newest blobs, or slices of them: many threads catch up with the growing
    segment at once (compressed: each loads the new FRAME records from the index)."""
    db = make_store(use_compression=use_compression)
    entries: list[Entry] = []
    errors: list[str] = []
    reads = [0] * READ_THREADS
    stop = threading.Event()

    def read(tid: int) -> None:
        rng = random.Random(tid)
        try:
            while not stop.is_set():
                if not entries:
                    time.sleep(0.0001)
                    continue
                key, loc = entries[-1] if rng.random() < 0.7 else rng.choice(entries)
                read_and_check(db, rng, key, loc, f"reader thread {tid}")
                reads[tid] += 1
        except BaseException:  # pylint: disable=broad-exception-caught  # reported below
            errors.append(f"reader thread {tid} after {len(entries)} puts:\n{traceback.format_exc()}")
            stop.set()

    threads = [threading.Thread(target=read, args=(tid,)) for tid in range(READ_THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + GROW_SECONDS
    try:
        for counter in range(GROW_PUTS):
            if stop.is_set() or time.monotonic() > deadline:
                break
            key = f"grow-{counter}"
            entries.append((key, db.put(blob_for(key))))
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_SECONDS)
    assert not errors, "\n".join(errors[:2])
    assert len({segment_number(loc) for _key, loc in entries}) == 1, "the segment rotated"
    assert min(reads) > 50, f"too few reads per thread: {reads}"
    check_entries(db, entries)


# -- 4 processes, each with its own instance ---------------------------------------------

PROCESSES = 4
OPS_PER_PROCESS = 150


class WriterArgs(NamedTuple):
    """What a writer process is told (picklable for 'spawn')."""

    worker: int
    datadir: str
    lock_path: str
    report_dir: str
    use_compression: bool
    workers: int  # writers in the test: the others' report files are read back
    mixed: bool  # some writers compress, some not: go on until both kinds of segment were appended to


def process_writer(args: WriterArgs, barrier: Barrier) -> None:
    """A writer process: puts/put_many, reading back its own and other processes' blobs."""
    run_guarded(os.path.join(args.report_dir, f"w{args.worker}.err"), lambda: _process_writer(args, barrier))


def read_back_some(db: FlatFileDb, rng: random.Random, pools: list[list[Entry]], who: str) -> None:
    """Read one random entry (or a slice of it) of each non-empty pool and compare its bytes."""
    for pool in pools:
        if pool:
            key, loc = rng.choice(pool)
            read_and_check(db, rng, key, loc, who)


def load_json(path: Path) -> Any:
    """A worker's JSON result file."""
    return json.loads(path.read_text(encoding="utf-8"))


def _process_writer(args: WriterArgs, barrier: Barrier) -> None:
    worker = args.worker
    report_dir = Path(args.report_dir)
    db = open_store(args.datadir, args.lock_path, args.use_compression)
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    rng = random.Random(1000 + worker)
    tails = [ReportTail(report_dir / f"w{other}.txt") for other in range(args.workers) if other != worker]
    mine: list[Entry] = []
    theirs: list[Entry] = []
    kinds: Counter[str] = Counter()  # puts that landed in raw / compressed segments
    counter = 0
    barrier.wait()
    with open(report_dir / f"w{worker}.txt", "a", encoding="utf-8") as report:
        op = 0
        # Mixed stores: go on until this process has appended to both kinds of segment.
        while op < OPS_PER_PROCESS or (args.mixed and len(kinds) < 2 and op < MIXED_MAX_OPS):
            entries = put_some(db, rng, f"p{worker}", counter, 0.25)
            counter += len(entries)
            mine.extend(entries)
            kinds.update("zstd" if loc.file_path.endswith(".zst") else "raw" for _key, loc in entries)
            report.write("".join(format_entry(key, loc) for key, loc in entries))
            report.flush()
            theirs.extend(tails[op % len(tails)].poll())
            read_back_some(db, rng, [mine, theirs], f"process {worker}")
            op += 1
        report.write(f"# total {counter}\n")
    (report_dir / f"w{worker}.json").write_text(json.dumps(kinds), encoding="utf-8")
    db.close()


def run_writers(
    db: FlatFileDb, tmp_path: Path, start_method: str, compression: list[bool], entries: list[Entry]
) -> list[Entry]:
    """Run one writer process per entry of ``compression`` (its use_compression) on ``db``'s
    datadir; check every entry they reported and ``entries`` (written before); return theirs."""
    ctx = multiprocessing.get_context(start_method)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    barrier = ctx.Barrier(len(compression))
    procs = start_processes(
        ctx,
        process_writer,
        [
            (
                WriterArgs(
                    worker,
                    str(db.datadir),
                    str(db.mutable_file_lock_path),
                    str(report_dir),
                    compressed,
                    len(compression),
                    len(set(compression)) > 1,
                ),
                barrier,
            )
            for worker, compressed in enumerate(compression)
        ],
    )
    join_all(procs, report_dir)

    theirs: list[Entry] = []
    for worker in range(len(compression)):
        mine, total = read_report(report_dir / f"w{worker}.txt")
        assert total == len(mine), f"process {worker} put {total} blobs but reported {len(mine)}"
        theirs.extend(mine)
    check_entries(db, entries + theirs)
    fresh = FlatFileDb(db.datadir, db.mutable_file_lock_path)
    try:
        assert_same_locations([loc for _key, loc in entries + theirs], fresh.iter_locations())
        report = fresh.verify()
        assert report.ok, str(report)
    finally:
        fresh.close()
    return theirs


@COMPRESSION
@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_processes_each_with_own_instance(
    make_store: StoreFactory, tmp_path: Path, start_method: str, use_compression: bool
) -> None:
    """4 processes write to one datadir at once, each through its own FlatFileDb."""
    # Opened before the fork: children inherit its lock registry, mapping and (compressed) its
    # thread-local compressor, used here once before the fork.
    db = make_store(use_compression=use_compression)
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    before: list[Entry] = []
    if use_compression:
        before.append(("parent", db.put(blob_for("parent"))))
        assert db.get(before[0][1]) == blob_for("parent")
    entries = run_writers(db, tmp_path, start_method, [use_compression] * PROCESSES, before)
    if use_compression:
        assert all(loc.file_path.endswith(".dat.zst") for _key, loc in entries)


MIXED_PROCESSES = 4
MIXED_MAX_OPS = 2000


def test_processes_mixed_compression(make_store: StoreFactory, tmp_path: Path) -> None:
    """2 processes with use_compression=True and 2 without write to one datadir: each segment
    is of the kind its creator chose, and every process appends to segments of both kinds."""
    db = make_store()
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    entries = run_writers(db, tmp_path, "spawn", [True, False] * (MIXED_PROCESSES // 2), [])
    kinds = [load_json(tmp_path / "reports" / f"w{worker}.json") for worker in range(MIXED_PROCESSES)]
    print(f"puts per segment kind, per process: {kinds}")
    for worker, counts in enumerate(kinds):
        assert set(counts) == {"raw", "zstd"}, (
            f"process {worker} (use_compression={worker % 2 == 0}) appended only to {set(counts)} segments "
            f"in {MIXED_MAX_OPS} operations: {kinds}"
        )
    suffixes = {name.partition(".")[2] for name in os.listdir(db.datadir) if name.startswith("data_")}
    assert suffixes == {"dat", "dat.zst", "idx"}, suffixes
    in_kinds = Counter("zstd" if loc.file_path.endswith(".zst") else "raw" for _key, loc in entries)
    assert sum(sum(counts.values()) for counts in kinds) == len(entries) == sum(in_kinds.values())


# -- lock-free readers against a growing mutable segment and deletions of sealed ones -----

READ_SECONDS = 3.0
READ_SEGMENT = 16384
ROTATOR_SEGMENT = 4096  # the rotator's MAX_DAT_FILE_SIZE: nearly each of its puts seals a segment
ROTATOR_PAUSE = 0.01
KEEP_SEALED = 3


class Paths(NamedTuple):
    """Where the processes of the lock-free reader test find the store and each other."""

    datadir: str
    lock_path: str
    report_dir: str
    use_compression: bool


def _reporting_writer(
    paths: Paths,
    barrier: Barrier,
    segment_bytes: int,
    prefix: str,
    report_name: str,  # pylint: disable=too-many-arguments
    pause: float,
) -> None:
    """Put for READ_SECONDS, appending each location to ``report_name`` at once."""

    def body() -> None:
        db = open_store(paths.datadir, paths.lock_path, paths.use_compression)
        db.MAX_DAT_FILE_SIZE = segment_bytes
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        counter = 0
        with open(os.path.join(paths.report_dir, f"{report_name}.txt"), "a", encoding="utf-8") as report:
            while time.monotonic() < deadline:
                key = f"{prefix}-{counter}"
                report.write(format_entry(key, db.put(blob_for(key))))
                report.flush()
                counter += 1
                if pause:
                    time.sleep(pause)
        db.close()

    run_guarded(os.path.join(paths.report_dir, f"{report_name}.err"), body)


def growing_writer(paths: Paths, barrier: Barrier) -> None:
    """Puts for READ_SECONDS, reporting each location at once."""
    _reporting_writer(paths, barrier, READ_SEGMENT, "g", "writer", 0.0)


def tiny_rotator(paths: Paths, barrier: Barrier) -> None:
    """A second writer with a tiny MAX_DAT_FILE_SIZE: its puts seal the mutable segment (and,
    compressed, re-frame it) every few ms under the readers; reports its puts like the writer."""
    _reporting_writer(paths, barrier, ROTATOR_SEGMENT, "r", "rotator", ROTATOR_PAUSE)


def sealed_deleter(paths: Paths, barrier: Barrier) -> None:
    """Deletes the oldest sealed segments, keeping KEEP_SEALED; logs "start N" before each
    delete_file and "done N" after it returned."""

    def body() -> None:
        db = FlatFileDb(paths.datadir, paths.lock_path)
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        with open(os.path.join(paths.report_dir, "deleted.txt"), "a", encoding="utf-8") as log:
            while time.monotonic() < deadline:
                mutable = db.mutable_segment()
                sealed = [n for n in db.segments() if n < mutable]
                for number in sealed[: max(0, len(sealed) - KEEP_SEALED)]:
                    log.write(f"start {number}\n")
                    log.flush()
                    db.delete_file(db.segment_path(number))
                    log.write(f"done {number}\n")
                    log.flush()
                time.sleep(0.005)
        db.close()

    run_guarded(os.path.join(paths.report_dir, "deleter.err"), body)


def deletions(deleted_log: Path, stage: str) -> set[int]:
    """Segments whose deletion reached ``stage`` ("start": delete_file called, "done": returned)."""
    words = deleted_log.read_text(encoding="utf-8").split()
    return {int(number) for what, number in zip(words[::2], words[1::2]) if what == stage}


def read_or_deleted(
    db: FlatFileDb, rng: random.Random, key: str, loc: DataLocation, deleted_log: Path, who: str
) -> bool:
    """Read one location (or a slice of it): True for the right bytes, False for FileNotFoundError
    of a deleted segment.

    A segment whose delete_file returned before the read began must raise FileNotFoundError
    (GUARANTEES.md); one whose delete had not started must not.
    """
    number = segment_number(loc)
    gone_before = number in deletions(deleted_log, "done")
    try:
        read_and_check(db, rng, key, loc, who)
    except FileNotFoundError:
        assert number in deletions(deleted_log, "start"), (
            f"{who}: {loc} not found, but segment {number} was never deleted"
        )
        return False
    assert not gone_before, f"{who}: {loc} read after segment {number}'s delete_file had returned"
    return True


def lock_free_reader(reader: int, paths: Paths, barrier: Barrier) -> None:
    """Reads the newest and recent locations of both writers without a lock; right bytes or
    FileNotFoundError only. Counts reads of the newest blob and of segments sealed before the read."""

    def body() -> None:
        db = FlatFileDb(paths.datadir, paths.lock_path)
        rng = random.Random(reader)
        tails = [ReportTail(Path(paths.report_dir) / name) for name in ("writer.txt", "rotator.txt")]
        deleted_log = Path(paths.report_dir) / "deleted.txt"
        entries: list[Entry] = []
        stats = {"ok": 0, "ok_newest": 0, "ok_sealed": 0, "not_found": 0}
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            for tail in tails:
                entries.extend(tail.poll())
            if not entries:
                time.sleep(0.001)
                continue
            newest = rng.random() < 0.5
            key, loc = entries[-1] if newest else rng.choice(entries[-400:])
            sealed = segment_number(loc) < db.mutable_segment()
            if read_or_deleted(db, rng, key, loc, deleted_log, f"reader {reader}"):
                stats["ok"] += 1
                stats["ok_newest"] += newest
                stats["ok_sealed"] += sealed
            else:
                stats["not_found"] += 1
        Path(paths.report_dir, f"reader{reader}.json").write_text(json.dumps(stats), encoding="utf-8")
        db.close()

    run_guarded(os.path.join(paths.report_dir, f"reader{reader}.err"), body)


def reframed(datadir: Path, number: int) -> bool:
    """True when a sealed compressed segment's frames are no longer the ones its index records
    (the writer that sealed it re-framed it)."""
    data = (datadir / f"data_{number:08d}.dat.zst").read_bytes()
    count, descriptor = struct.unpack_from("<IB", data, len(data) - 9)
    entry = 12 if descriptor & 0x80 else 8
    table = len(data) - 9 - count * entry
    in_file = [struct.unpack_from("<II", data, table + i * entry) for i in range(count)]
    index = (datadir / f"data_{number:08d}.idx").read_bytes()
    in_index = [
        struct.unpack_from("<II", index, at + 16)[::-1] for at in range(32, len(index) - 31, 32) if index[at] == 2
    ]  # FRAME records: b = csize << 32 | dsize
    return [e for e in in_file if e[1]] != [e for e in in_index if e[1]]


@COMPRESSION
def test_lock_free_readers_against_growth_and_deletion(
    make_store: StoreFactory, tmp_path: Path, use_compression: bool
) -> None:
    """Readers in 2 processes read while a writer grows the mutable segment, a second writer
    with a tiny MAX_DAT_FILE_SIZE seals it every few ms (compressed: and re-frames each sealed
    segment under the readers) and a deleter removes sealed segments: each read gives the right
    bytes or FileNotFoundError."""
    db = make_store(use_compression=use_compression)
    ctx = multiprocessing.get_context("spawn")
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    (report_dir / "deleted.txt").touch()
    paths = Paths(str(db.datadir), str(db.mutable_file_lock_path), str(report_dir), use_compression)
    barrier = ctx.Barrier(5)
    procs = start_processes(ctx, growing_writer, [(paths, barrier)])
    procs += start_processes(ctx, tiny_rotator, [(paths, barrier)])
    procs += start_processes(ctx, sealed_deleter, [(paths, barrier)])
    procs += start_processes(ctx, lock_free_reader, [(reader, paths, barrier) for reader in range(2)])
    join_all(procs, report_dir)

    stats = [load_json(report_dir / f"reader{reader}.json") for reader in range(2)]
    print(f"reader stats: {stats}")
    deleted = deletions(report_dir / "deleted.txt", "done")
    assert deleted, "the deleter deleted nothing: sealed-segment deletion was not exercised"
    assert all(s["ok_newest"] > 20 for s in stats), f"too few reads of the growing segment: {stats}"
    assert all(s["ok_sealed"] > 20 for s in stats), f"too few reads of sealed segments: {stats}"
    assert sum(s["not_found"] for s in stats) > 0, f"no read met a deleted segment: {stats}"

    entries = read_report(report_dir / "writer.txt")[0] + read_report(report_dir / "rotator.txt")[0]
    assert len({segment_number(loc) for _key, loc in entries}) > 20, "too few rotations"
    for _key, loc in entries:
        if segment_number(loc) in deleted:
            with pytest.raises(FileNotFoundError):
                db.get(loc)
    kept = [(key, loc) for key, loc in entries if segment_number(loc) not in deleted]
    check_entries(db, kept)
    report = db.verify()
    assert report.ok, str(report)
    if use_compression:
        assert all(loc.file_path.endswith(".dat.zst") for _key, loc in entries)
        sealed = {segment_number(loc) for _key, loc in kept} - {db.mutable_segment()}
        done = [number for number in sealed if reframed(db.datadir, number)]
        print(f"{len(done)} of the {len(sealed)} sealed segments left were re-framed")
        assert done, "no sealed compressed segment was re-framed: re-framing under readers was not exercised"


# -- writer fairness ----------------------------------------------------------------------

FAIR_SECONDS = 2.0
FAIR_MIN_PUTS = 20


def fair_writer(worker: int, paths: Paths, barrier: Barrier) -> None:
    """Single puts in a tight loop for FAIR_SECONDS; writes its count and latency percentiles."""
    report_dir = paths.report_dir

    def body() -> None:
        db = open_store(paths.datadir, paths.lock_path, paths.use_compression)
        db.MAX_DAT_FILE_SIZE = 2**20
        payload = bytes([worker]) * 256
        latencies: list[float] = []
        barrier.wait()
        deadline = time.perf_counter() + FAIR_SECONDS
        now = time.perf_counter()
        while now < deadline:
            before = now
            db.put(payload)
            now = time.perf_counter()
            latencies.append(now - before)
        latencies.sort()
        stats = {
            "puts": len(latencies),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
            "max_ms": 1000 * latencies[-1],
        }
        Path(report_dir, f"fair{worker}.json").write_text(json.dumps(stats), encoding="utf-8")
        db.close()

    run_guarded(os.path.join(report_dir, f"fair{worker}.err"), body)


@COMPRESSION
def test_writer_fairness(make_store: StoreFactory, tmp_path: Path, use_compression: bool) -> None:
    """4 processes hammer single puts for ~2 s: no process is starved of the write lock."""
    db = make_store(use_compression=use_compression)
    ctx = multiprocessing.get_context("spawn")
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    barrier = ctx.Barrier(PROCESSES)
    paths = Paths(str(db.datadir), str(db.mutable_file_lock_path), str(report_dir), use_compression)
    procs = start_processes(ctx, fair_writer, [(worker, paths, barrier) for worker in range(PROCESSES)])
    join_all(procs, report_dir)
    stats = [load_json(report_dir / f"fair{worker}.json") for worker in range(PROCESSES)]
    for worker, stat in enumerate(stats):
        print(
            f"writer {worker}: {stat['puts']} puts, p50 {stat['p50_ms']:.3f} ms, "
            f"p99 {stat['p99_ms']:.3f} ms, max {stat['max_ms']:.1f} ms"
        )
    counts = [stat["puts"] for stat in stats]
    assert min(counts) >= FAIR_MIN_PUTS, f"a writer was starved: puts per process {counts}"
    assert min(counts) * 50 >= max(counts), f"a writer got under 2% of the busiest one's puts: {counts}"
    assert sum(1 for _ in db.iter_records()) == sum(counts)
