"""Real threads and processes on one store: no lost, duplicated, overlapping or wrong blobs.

Every blob's bytes are a function of a short key (``blob_for``), so any thread, process or
the parent can recompute what a location must hold. Writers report ``key, location`` lines
to a per-writer report file (flushed after each put); readers in other processes tail those
files, trusting only complete lines.

The process workers are module-level functions so that the 'spawn' start method can
import them in the child.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import threading
import time
import traceback
from collections import Counter
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.naming import parse_segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
Entry = tuple[str, DataLocation]  # (key, location)

TINY_SEGMENT = 8192  # MAX_DAT_FILE_SIZE that makes a rotation every ~5 blobs (each costs ~4 fsyncs)
MAX_BLOB = 3000
JOIN_SECONDS = 60.0


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
        f"{sum(extra.values())} listed but never returned (e.g. {list(extra)[:5]})")


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


def put_some(db: FlatFileDb, rng: random.Random, prefix: str, counter: int,
             batch_fraction: float) -> list[Entry]:
    """One put, or (``batch_fraction`` of the time) one put_many of 0..5 blobs, keyed
    ``prefix-counter``, ``prefix-counter+1``...; returns (key, location) pairs in order."""
    if rng.random() < batch_fraction:
        keys = [f"{prefix}-{counter + i}" for i in range(rng.randint(0, 5))]
        locations = db.put_many([blob_for(key) for key in keys])
        assert len(locations) == len(keys), f"put_many of {len(keys)} returned {len(locations)} locations"
        return list(zip(keys, locations))
    key = f"{prefix}-{counter}"
    return [(key, db.put(blob_for(key)))]


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


def start_processes(ctx: BaseContext, target: Callable[..., None],
                    args_list: list[tuple[Any, ...]]) -> list[BaseProcess]:
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


def test_threads_on_one_instance(make_store: StoreFactory) -> None:
    """8 threads put/put_many/get on one FlatFileDb through hundreds of rotations."""
    db = make_store()
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    results: list[list[Entry]] = [[] for _ in range(THREADS)]
    puts = [0] * THREADS
    errors: list[str] = []
    barrier = threading.Barrier(THREADS)

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
                got = db.get(loc)
                assert got == blob_for(key), f"thread {tid}: {loc} of {key} read back wrong bytes"

    def guarded(tid: int) -> None:
        try:
            work(tid)
        except BaseException:  # pylint: disable=broad-exception-caught  # reported below
            errors.append(f"thread {tid}:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=guarded, args=(tid,)) for tid in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, "\n".join(errors)

    entries = [entry for mine in results for entry in mine]
    assert len(entries) == sum(puts)
    check_entries(db, entries)
    assert len(db.segments()) > 50, f"only {len(db.segments())} segments: rotations were not exercised"
    report = db.verify()
    assert report.ok, str(report)


# -- 4 processes, each with its own instance ---------------------------------------------

PROCESSES = 4
OPS_PER_PROCESS = 150


def process_writer(worker: int, datadir: str, lock_path: str, report_dir: str, barrier: Barrier) -> None:
    """A writer process: puts/put_many, reading back its own and other processes' blobs."""
    run_guarded(os.path.join(report_dir, f"w{worker}.err"),
                lambda: _process_writer(worker, datadir, lock_path, Path(report_dir), barrier))


def read_back_some(db: FlatFileDb, rng: random.Random, pools: list[list[Entry]], who: str) -> None:
    """Read one random entry of each non-empty pool and compare its bytes."""
    for pool in pools:
        if pool:
            key, loc = rng.choice(pool)
            assert db.get(loc) == blob_for(key), f"{who}: {loc} of {key} read back wrong bytes"


def load_json(path: Path) -> Any:
    """A worker's JSON result file."""
    return json.loads(path.read_text(encoding="utf-8"))


def _process_writer(worker: int, datadir: str, lock_path: str, report_dir: Path, barrier: Barrier) -> None:
    db = FlatFileDb(datadir, lock_path)
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    rng = random.Random(1000 + worker)
    tails = [ReportTail(report_dir / f"w{other}.txt") for other in range(PROCESSES) if other != worker]
    mine: list[Entry] = []
    theirs: list[Entry] = []
    counter = 0
    barrier.wait()
    with open(report_dir / f"w{worker}.txt", "a", encoding="utf-8") as report:
        for op in range(OPS_PER_PROCESS):
            entries = put_some(db, rng, f"p{worker}", counter, 0.25)
            counter += len(entries)
            mine.extend(entries)
            report.write("".join(format_entry(key, loc) for key, loc in entries))
            report.flush()
            theirs.extend(tails[op % len(tails)].poll())
            read_back_some(db, rng, [mine, theirs], f"process {worker}")
        report.write(f"# total {counter}\n")
    db.close()


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_processes_each_with_own_instance(make_store: StoreFactory, tmp_path: Path,
                                          start_method: str) -> None:
    """4 processes write to one datadir at once, each through its own FlatFileDb."""
    db = make_store()  # opened before the fork: children inherit its lock registry and mapping
    db.MAX_DAT_FILE_SIZE = TINY_SEGMENT
    ctx = multiprocessing.get_context(start_method)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    barrier = ctx.Barrier(PROCESSES)
    procs = start_processes(ctx, process_writer, [
        (worker, str(db.datadir), str(db.mutable_file_lock_path), str(report_dir), barrier)
        for worker in range(PROCESSES)])
    join_all(procs, report_dir)

    entries: list[Entry] = []
    for worker in range(PROCESSES):
        mine, total = read_report(report_dir / f"w{worker}.txt")
        assert total == len(mine), f"process {worker} put {total} blobs but reported {len(mine)}"
        entries.extend(mine)
    check_entries(db, entries)
    fresh = FlatFileDb(db.datadir, db.mutable_file_lock_path)
    try:
        assert_same_locations([loc for _key, loc in entries], fresh.iter_locations())
        report = fresh.verify()
        assert report.ok, str(report)
    finally:
        fresh.close()


# -- lock-free readers against a growing mutable segment and deletions of sealed ones -----

READ_SECONDS = 3.0
READ_SEGMENT = 16384
KEEP_SEALED = 3


def growing_writer(datadir: str, lock_path: str, report_dir: str, barrier: Barrier) -> None:
    """Puts for READ_SECONDS, reporting each location at once."""
    def body() -> None:
        db = FlatFileDb(datadir, lock_path)
        db.MAX_DAT_FILE_SIZE = READ_SEGMENT
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        counter = 0
        with open(os.path.join(report_dir, "writer.txt"), "a", encoding="utf-8") as report:
            while time.monotonic() < deadline:
                key = f"g-{counter}"
                report.write(format_entry(key, db.put(blob_for(key))))
                report.flush()
                counter += 1
        db.close()
    run_guarded(os.path.join(report_dir, "writer.err"), body)


def sealed_deleter(datadir: str, lock_path: str, report_dir: str, barrier: Barrier) -> None:
    """Deletes the oldest sealed segments, keeping KEEP_SEALED; logs "start N" before each
    delete_file and "done N" after it returned."""
    def body() -> None:
        db = FlatFileDb(datadir, lock_path)
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        with open(os.path.join(report_dir, "deleted.txt"), "a", encoding="utf-8") as log:
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
    run_guarded(os.path.join(report_dir, "deleter.err"), body)


def deletions(deleted_log: Path, stage: str) -> set[int]:
    """Segments whose deletion reached ``stage`` ("start": delete_file called, "done": returned)."""
    words = deleted_log.read_text(encoding="utf-8").split()
    return {int(number) for what, number in zip(words[::2], words[1::2]) if what == stage}


def read_or_deleted(db: FlatFileDb, key: str, loc: DataLocation, deleted_log: Path, who: str) -> bool:
    """Read one location: True for the right bytes, False for FileNotFoundError of a deleted segment.

    A segment whose delete_file returned before the read began must raise FileNotFoundError
    (GUARANTEES.md); one whose delete had not started must not.
    """
    number = segment_number(loc)
    gone_before = number in deletions(deleted_log, "done")
    try:
        got = db.get(loc)
    except FileNotFoundError:
        assert number in deletions(deleted_log, "start"), (
            f"{who}: {loc} not found, but segment {number} was never deleted")
        return False
    assert not gone_before, f"{who}: {loc} read after segment {number}'s delete_file had returned"
    assert got == blob_for(key), f"{who}: {loc} of {key} read back wrong bytes"
    return True


def lock_free_reader(reader: int, datadir: str, lock_path: str, report_dir: str, barrier: Barrier) -> None:
    """Reads the newest and recent locations without a lock; right bytes or FileNotFoundError only."""
    def body() -> None:
        db = FlatFileDb(datadir, lock_path)
        rng = random.Random(reader)
        tail = ReportTail(Path(report_dir) / "writer.txt")
        deleted_log = Path(report_dir) / "deleted.txt"
        entries: list[Entry] = []
        stats = {"ok": 0, "ok_newest": 0, "not_found": 0}
        barrier.wait()
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            entries.extend(tail.poll())
            if not entries:
                time.sleep(0.001)
                continue
            newest = rng.random() < 0.5
            key, loc = entries[-1] if newest else rng.choice(entries[-400:])
            if read_or_deleted(db, key, loc, deleted_log, f"reader {reader}"):
                stats["ok"] += 1
                stats["ok_newest"] += newest
            else:
                stats["not_found"] += 1
        Path(report_dir, f"reader{reader}.json").write_text(json.dumps(stats), encoding="utf-8")
        db.close()
    run_guarded(os.path.join(report_dir, f"reader{reader}.err"), body)


def test_lock_free_readers_against_growth_and_deletion(make_store: StoreFactory, tmp_path: Path) -> None:
    """Readers in 2 processes read while a writer grows the mutable segment and a deleter
    removes sealed segments: each read gives the right bytes or FileNotFoundError."""
    db = make_store()
    ctx = multiprocessing.get_context("spawn")
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    (report_dir / "deleted.txt").touch()
    paths = (str(db.datadir), str(db.mutable_file_lock_path), str(report_dir))
    barrier = ctx.Barrier(4)
    procs = start_processes(ctx, growing_writer, [(*paths, barrier)])
    procs += start_processes(ctx, sealed_deleter, [(*paths, barrier)])
    procs += start_processes(ctx, lock_free_reader, [(reader, *paths, barrier) for reader in range(2)])
    join_all(procs, report_dir)

    stats = [load_json(report_dir / f"reader{reader}.json") for reader in range(2)]
    print(f"reader stats: {stats}")
    deleted = deletions(report_dir / "deleted.txt", "done")
    assert deleted, "the deleter deleted nothing: sealed-segment deletion was not exercised"
    assert all(s["ok_newest"] > 20 for s in stats), f"too few reads of the growing segment: {stats}"
    assert sum(s["not_found"] for s in stats) > 0, f"no read met a deleted segment: {stats}"

    entries, _ = read_report(report_dir / "writer.txt")
    for _key, loc in entries:
        if segment_number(loc) in deleted:
            with pytest.raises(FileNotFoundError):
                db.get(loc)
    check_entries(db, [(key, loc) for key, loc in entries if segment_number(loc) not in deleted])
    report = db.verify()
    assert report.ok, str(report)


# -- writer fairness ----------------------------------------------------------------------

FAIR_SECONDS = 2.0
FAIR_MIN_PUTS = 20


def fair_writer(worker: int, datadir: str, lock_path: str, report_dir: str, barrier: Barrier) -> None:
    """Single puts in a tight loop for FAIR_SECONDS; writes its count and latency percentiles."""
    def body() -> None:
        db = FlatFileDb(datadir, lock_path)
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
        stats = {"puts": len(latencies),
                 "p50_ms": 1000 * latencies[len(latencies) // 2],
                 "p99_ms": 1000 * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
                 "max_ms": 1000 * latencies[-1]}
        Path(report_dir, f"fair{worker}.json").write_text(json.dumps(stats), encoding="utf-8")
        db.close()
    run_guarded(os.path.join(report_dir, f"fair{worker}.err"), body)


def test_writer_fairness(make_store: StoreFactory, tmp_path: Path) -> None:
    """4 processes hammer single puts for ~2 s: no process is starved of the write lock."""
    db = make_store()
    ctx = multiprocessing.get_context("spawn")
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    barrier = ctx.Barrier(PROCESSES)
    procs = start_processes(ctx, fair_writer, [
        (worker, str(db.datadir), str(db.mutable_file_lock_path), str(report_dir), barrier)
        for worker in range(PROCESSES)])
    join_all(procs, report_dir)
    stats = [load_json(report_dir / f"fair{worker}.json") for worker in range(PROCESSES)]
    for worker, stat in enumerate(stats):
        print(f"writer {worker}: {stat['puts']} puts, p50 {stat['p50_ms']:.3f} ms, "
              f"p99 {stat['p99_ms']:.3f} ms, max {stat['max_ms']:.1f} ms")
    counts = [stat["puts"] for stat in stats]
    assert min(counts) >= FAIR_MIN_PUTS, f"a writer was starved: puts per process {counts}"
    assert min(counts) * 50 >= max(counts), f"a writer got under 2% of the busiest one's puts: {counts}"
    assert sum(1 for _ in db.iter_records()) == sum(counts)
