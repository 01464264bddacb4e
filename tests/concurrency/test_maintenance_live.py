"""Recompression while other processes read and write: raw -> zstd, zstd -> raw and re-framing
(KEEP with a new level and frame size) of a mixed store's sealed segments, round after round,
while two reader processes read random known locations (whole blobs, slices, bulk reads and blob
files, each checked byte for byte) and a writer process appends.

Nothing is deleted here, so a reader may see no error at all: not even FileNotFoundError. Every
rewrite bumps the epoch, so readers drop their open segments and reopen them by number, often
while the next rewrite is switching files.

The process workers are module-level functions so that the 'spawn' start method can import them.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import time
import traceback
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.maintenance import CompressMode
from conduit_flat_file_db.naming import TEMP_PREFIX, parse_segment_name, segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
Entry = tuple[tuple[str, int, int], str]  # (location as a plain tuple, key)

SEGMENTS = 6
BLOBS_PER_SEGMENT = 60
FRAME_BYTES = 8 * 1024
MIN_ROUNDS = 3
RUN_SECONDS = 3.0
START_SECONDS = 30.0
JOIN_SECONDS = 60.0
MIN_READS = 200
WORDS = [b"north", b"south", b"east", b"west", b"up", b"down", b"left", b"right", b"\n"]


def blob_for(key: str) -> bytes:
    """The bytes stored under ``key`` (compressible text, 0..40000 bytes), the same in any process."""
    rng = random.Random(key)
    size = rng.choice([0, 1, rng.randint(2, 2000), rng.randint(2000, 40_000)])
    return b" ".join(rng.choices(WORDS, k=size // 4 + 1))[:size]


class Job(NamedTuple):
    """What a worker process is told (picklable for 'spawn')."""

    datadir: str
    lock_path: str
    entries: list[Entry]
    seed: int = 0
    online_verify: bool = False


def read_batch(
    db: FlatFileDb, rng: random.Random, batch: list[tuple[DataLocation, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Read ``batch`` one of four ways (get, slice, get_many, open_blob); returns (read, expected) pairs."""
    how = rng.randrange(4)
    if how == 0:
        return [(db.get(loc), data) for loc, data in batch]
    if how == 1:
        out = []
        for loc, data in batch:
            lo = rng.randint(0, len(data))
            hi = rng.randint(lo, len(data))
            out.append((db.get(loc, Slice(lo, hi)) if hi else b"", data[lo:hi]))  # Slice(x, 0) means "to the end"
        return out
    if how == 2:
        return list(zip(db.get_many([loc for loc, _data in batch]), [data for _loc, data in batch]))
    out = []
    for loc, data in batch:
        with db.open_blob(loc) as blob:
            pos = rng.randint(0, len(data))
            blob.seek(pos)
            out.append((blob.read(), data[pos:]))
    return out


def reader_worker(job: Job, ready: Event, stop: Event, results: Queue[dict[str, Any]]) -> None:
    """Read random known locations until ``stop``; report counts of reads, errors and wrong bytes."""
    out: dict[str, Any] = {"role": "reader", "seed": job.seed, "reads": 0, "errors": [], "wrong": []}
    try:
        rng = random.Random(job.seed)
        known = [(DataLocation(*loc), blob_for(key)) for loc, key in job.entries]
        db = FlatFileDb(job.datadir, job.lock_path)
        while not stop.is_set():
            batch = [rng.choice(known) for _ in range(rng.randint(1, 8))]
            out["reads"] += len(batch)
            try:
                pairs = read_batch(db, rng, batch)
            except Exception as exc:  # pylint: disable=broad-exception-caught  # every error counts
                out["errors"].append(f"{[loc for loc, _data in batch]}: {exc!r}")
                continue
            for (loc, _data), (got, want) in zip(batch, pairs):
                if bytes(got) != want:
                    out["wrong"].append(f"{loc}: {len(got)} bytes read, {len(want)} expected")
            if out["reads"] >= 10:
                ready.set()
        db.close()
    except Exception:  # pylint: disable=broad-exception-caught  # reported to the parent
        out["errors"].append(traceback.format_exc())
    finally:
        ready.set()
        out["errors"] = out["errors"][:20]
        out["wrong"] = out["wrong"][:20]
        results.put(out)


def writer_worker(job: Job, ready: Event, stop: Event, results: Queue[dict[str, Any]]) -> None:
    """Append blobs (rotating now and then) until ``stop``; report (location, key) of each."""
    out: dict[str, Any] = {"role": "writer", "entries": [], "errors": []}
    try:
        db = FlatFileDb(job.datadir, job.lock_path)
        db.MAX_DAT_FILE_SIZE = 512 * 1024
        count = 0
        while not stop.is_set():
            key = f"writer-{count}"
            out["entries"].append((tuple(db.put(blob_for(key))), key))
            count += 1
            ready.set()
        db.close()
    except Exception:  # pylint: disable=broad-exception-caught  # reported to the parent
        out["errors"].append(traceback.format_exc())
    finally:
        ready.set()
        results.put(out)


class Workers:
    """Worker processes that share one stop event and one result queue."""

    def __init__(self, start_method: str) -> None:
        self.ctx = multiprocessing.get_context(start_method)
        self.stop = self.ctx.Event()
        self.results: Queue[dict[str, Any]] = self.ctx.Queue()
        self.procs: list[BaseProcess] = []
        self.readies: list[Event] = []

    def start(self, target: Callable[..., None], job: Job, *extra: Any) -> None:
        """Start ``target(job, ready, stop, results, *extra)``."""
        ready = self.ctx.Event()
        proc = self.ctx.Process(  # type: ignore[attr-defined]  # BaseContext's stub lacks Process
            target=target, args=(job, ready, self.stop, self.results, *extra)
        )
        proc.start()
        self.procs.append(proc)
        self.readies.append(ready)

    def wait_ready(self) -> None:
        """Wait until every worker has done some work."""
        for ready in self.readies:
            assert ready.wait(START_SECONDS), "a worker did not start"

    def finish(self) -> list[dict[str, Any]]:
        """Stop every worker and collect their reports (each must have ended cleanly)."""
        self.stop.set()
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + JOIN_SECONDS
        while len(reports) < len(self.procs) and time.monotonic() < deadline:
            try:
                reports.append(self.results.get(timeout=1.0))
            except queue.Empty:
                if not any(proc.is_alive() for proc in self.procs):
                    break
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 1.0))
            if proc.is_alive():
                proc.kill()
                proc.join()
        assert len(reports) == len(self.procs), f"only {len(reports)} of {len(self.procs)} workers reported"
        assert all(proc.exitcode == 0 for proc in self.procs), [proc.exitcode for proc in self.procs]
        return reports


def build_mixed_store(make_store: StoreFactory) -> tuple[FlatFileDb, list[Entry], dict[int, bool]]:
    """SEGMENTS sealed segments, written alternately raw and compressed by two instances."""
    raw_db = make_store(frame_bytes=FRAME_BYTES)
    zstd_db = make_store(use_compression=True, frame_bytes=FRAME_BYTES)
    entries: list[Entry] = []
    compressed: dict[int, bool] = {}
    for number in range(SEGMENTS):
        db = zstd_db if number % 2 else raw_db
        keys = [f"seg{number}-{i}" for i in range(BLOBS_PER_SEGMENT)]
        locations = db.put_many([blob_for(key) for key in keys])
        assert {segment_of(loc) for loc in locations} == {number}
        entries += [(tuple(loc), key) for loc, key in zip(locations, keys)]  # type: ignore[misc]
        compressed[number] = bool(number % 2)
        (raw_db if number % 2 else zstd_db).rotate()  # the other kind makes the next segment
    zstd_db.close()
    return raw_db, entries, compressed


def segment_of(location: DataLocation | tuple[str, int, int]) -> int:
    """The segment number a location's file name carries."""
    number = parse_segment_name(os.path.basename(location[0]))
    assert number is not None, location
    return number


def check_files(datadir: Path, compressed: dict[int, bool]) -> None:
    """Each segment has exactly the data file of its expected kind, and no scratch file is left."""
    names = os.listdir(datadir)
    assert not [n for n in names if n.startswith(TEMP_PREFIX)], names
    for number, zstd in compressed.items():
        assert segment_name(number, zstd) in names, (number, zstd, sorted(names))
        assert segment_name(number, not zstd) not in names, (number, zstd, sorted(names))


def recompress_rounds(db: FlatFileDb, datadir: Path, compressed: dict[int, bool]) -> int:
    """Flip every segment's kind, then re-frame the compressed ones; repeat. Returns rounds done."""
    rounds = 0
    started = time.monotonic()
    levels = [1, 7, 3]
    while rounds < MIN_ROUNDS or time.monotonic() - started < RUN_SECONDS:
        raw = [n for n, zstd in compressed.items() if not zstd]
        zstd = [n for n, is_zstd in compressed.items() if is_zstd]
        results = db.recompress(raw, mode=CompressMode.YES)
        assert [(r.number, r.action) for r in results] == [(n, "compressed") for n in raw], results
        results = db.recompress(zstd, mode=CompressMode.NO)
        assert [(r.number, r.action) for r in results] == [(n, "decompressed") for n in zstd], results
        for number in compressed:
            compressed[number] = not compressed[number]
        check_files(datadir, compressed)
        now_zstd = sorted(n for n, is_zstd in compressed.items() if is_zstd)
        frame = FRAME_BYTES * (1 + rounds % 4)
        results = db.recompress(now_zstd, mode=CompressMode.KEEP, level=levels[rounds % 3], frame_bytes=frame)
        assert [(r.number, r.action) for r in results] == [(n, "reframed") for n in now_zstd], results
        results = db.recompress(sorted(compressed), mode=CompressMode.KEEP)
        assert {r.action for r in results} == {"skipped"}, results  # KEEP without new framing: nothing
        check_files(datadir, compressed)
        rounds += 1
    return rounds


def test_recompress_under_readers_and_a_writer(make_store: StoreFactory, tmp_path: Path) -> None:
    """Rounds of raw -> zstd, zstd -> raw and re-framing of every sealed segment while two reader
    processes check random blobs byte for byte and a writer process appends: no reader sees an
    error or a wrong byte, every location reads afterwards and verify() is clean."""
    db, entries, compressed = build_mixed_store(make_store)
    datadir, lock_path = tmp_path / "store", tmp_path / "store.lock"
    check_files(datadir, compressed)
    workers = Workers("spawn")
    try:
        for seed in (1, 2):
            workers.start(reader_worker, Job(str(datadir), str(lock_path), entries, seed))
        workers.start(writer_worker, Job(str(datadir), str(lock_path), []))
        workers.wait_ready()
        rounds = recompress_rounds(db, datadir, compressed)
    finally:
        reports = workers.finish()
    assert rounds >= MIN_ROUNDS
    [writer] = [r for r in reports if r["role"] == "writer"]
    assert writer["errors"] == [], writer["errors"]
    assert len(writer["entries"]) > 10, "the writer barely wrote"
    for reader in (r for r in reports if r["role"] == "reader"):
        assert reader["errors"] == [], reader["errors"]
        assert reader["wrong"] == [], reader["wrong"]
        assert reader["reads"] >= MIN_READS, reader["reads"]

    check_files(datadir, compressed)
    for loc, key in entries + [(tuple(loc), key) for loc, key in writer["entries"]]:
        assert db.get(DataLocation(*loc)) == blob_for(key), (loc, key)
    verified = db.verify()
    assert verified.ok, str(verified)
    assert verified.blobs == len(entries) + len(writer["entries"])


RACE_SECONDS = 4.0


def race_reader(
    job: Job, ready: Event, stop: Event, results: Queue[dict[str, Any]], failures: Synchronized[int]
) -> None:
    """Read (or verify without checksums) in a tight loop; count every failure in ``failures``."""
    out: dict[str, Any] = {"role": "verify(full=False)" if job.online_verify else "get", "calls": 0, "errors": []}
    try:
        db = FlatFileDb(job.datadir, job.lock_path)
        expected = [(DataLocation(*loc), blob_for(key)) for loc, key in job.entries]
        while not stop.is_set():
            out["calls"] += 1
            ready.set()
            if job.online_verify:
                report = db.verify(full=False)
                problem = None if report.ok else str(report)
            else:
                try:
                    problem = next((f"{loc}: wrong bytes" for loc, data in expected if db.get(loc) != data), None)
                except Exception as exc:  # pylint: disable=broad-exception-caught  # every error counts
                    problem = repr(exc)
            if problem is not None:
                out["errors"].append(problem)
                with failures.get_lock():
                    failures.value += 1
        db.close()
    except Exception:  # pylint: disable=broad-exception-caught  # reported to the parent
        out["errors"].append(traceback.format_exc())
    finally:
        ready.set()
        out["errors"] = out["errors"][:5]
        results.put(out)


def test_segment_never_missing_while_it_is_recompressed(make_store: StoreFactory, tmp_path: Path) -> None:
    """A segment switched between raw and compressed over and over: a get in another process, and
    an online verify(full=False), must find it every time (it is never deleted). Both look a
    segment up by number, whichever suffix exists; the look-up must not fall between the two
    names while a rewrite renames one and unlinks the other."""
    db = make_store()
    entries: list[Entry] = []
    for key in (f"race-{i}" for i in range(4)):
        entries.append((tuple(db.put(blob_for(key))), key))  # type: ignore[arg-type]
    db.rotate()
    db.put(b"mutable")
    workers = Workers("fork")
    failures: Synchronized[int] = workers.ctx.Value("i", 0)
    rewrites = 0
    try:
        for online_verify in (False, True):
            job = Job(str(tmp_path / "store"), str(tmp_path / "store.lock"), entries, online_verify=online_verify)
            workers.start(race_reader, job, failures)
        workers.wait_ready()
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline and failures.value == 0:
            for mode in (CompressMode.YES, CompressMode.NO):
                [result] = db.recompress([0], mode=mode)
                assert result.action in ("compressed", "decompressed"), result
                rewrites += 1
    finally:
        reports = workers.finish()
    assert all(report["calls"] > 0 for report in reports), reports
    problems = {report["role"]: report["errors"] for report in reports if report["errors"]}
    assert not problems, f"after {rewrites} rewrites of segment 0: {problems}"
    for loc, key in entries:
        assert db.get(DataLocation(*loc)) == blob_for(key)
