"""Core engine vs the physical baseline: puts, put_many, random gets, 4 writer processes.

Baselines, measured in the same run on the same filesystem:
- raw append: ``os.write`` of the same buffers to one file opened with O_APPEND;
- raw read: ``os.pread`` of the same ranges on one open file descriptor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import time
from typing import Any

from conduit_flat_file_db import FlatFileDb

from .common import Result, rounds, run_benchmark

KIB = 1024
MIB = 2**20


def _fresh(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path + ".lock"):
        os.unlink(path + ".lock")
    return path


def _raw_append_rate(workdir: str, blob: bytes, count: int, per_item: bool) -> float:
    path = os.path.join(workdir, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    write = os.write
    started = time.perf_counter()
    for _ in range(count):
        write(fd, blob)
    elapsed = time.perf_counter() - started
    os.close(fd)
    os.unlink(path)
    return (count if per_item else count * len(blob) / MIB) / elapsed


def _engine_put_rate(workdir: str, blob: bytes, count: int, per_item: bool, fsync: bool) -> float:
    path = _fresh(workdir, "store")
    db = FlatFileDb(path, path + ".lock", fsync=fsync)
    put = db.put
    started = time.perf_counter()
    for _ in range(count):
        put(blob)
    elapsed = time.perf_counter() - started
    db.close()
    shutil.rmtree(path)
    return (count if per_item else count * len(blob) / MIB) / elapsed


def _engine_put_many_rate(workdir: str, blob: bytes, count: int, batch: int, fsync: bool) -> float:
    path = _fresh(workdir, "store")
    db = FlatFileDb(path, path + ".lock", fsync=fsync)
    items = [blob] * batch
    started = time.perf_counter()
    for _ in range(count // batch):
        db.put_many(items)
    elapsed = time.perf_counter() - started
    db.close()
    shutil.rmtree(path)
    return (count // batch * batch) / elapsed


def bench_puts(args: argparse.Namespace, workdir: str) -> list[Result]:
    """1 MiB puts (MB/s), 1 KiB puts (ops/s), 1 KiB put_many(1000) (ops/s)."""
    rng = random.Random(args.seed)
    big = rng.randbytes(MIB)
    small = rng.randbytes(KIB)
    big_count = 64 if args.quick else 256
    small_count = 20_000 if args.quick else 100_000
    out = [
        rounds(
            Result("put 1 MiB", "MiB/s", "raw append", goal=0.9),
            args.rounds,
            lambda: _raw_append_rate(workdir, big, big_count, False),
            lambda: _engine_put_rate(workdir, big, big_count, False, args.fsync),
        ),
        rounds(
            Result("put 1 KiB", "ops/s", "raw append", goal=0.25),
            args.rounds,
            lambda: _raw_append_rate(workdir, small, small_count, True),
            lambda: _engine_put_rate(workdir, small, small_count, True, args.fsync),
        ),
        rounds(
            Result("put_many(1000) 1 KiB", "ops/s", "raw append", goal=0.5),
            args.rounds,
            lambda: _raw_append_rate(workdir, small, small_count, True),
            lambda: _engine_put_many_rate(workdir, small, small_count, 1000, args.fsync),
        ),
    ]
    return out


def bench_gets(args: argparse.Namespace, workdir: str) -> list[Result]:
    """Random 1 KiB gets from a reopened store vs os.pread on one open file."""
    rng = random.Random(args.seed)
    count = 20_000 if args.quick else 100_000
    path = _fresh(workdir, "getstore")
    db = FlatFileDb(path, path + ".lock")
    blobs = [rng.randbytes(KIB) for _ in range(256)]
    locations = db.put_many(blobs[i % 256] for i in range(count))
    db.close()
    raw_path = os.path.join(workdir, "raw_read.bin")
    with open(raw_path, "wb") as handle:
        for i in range(count):
            handle.write(blobs[i % 256])
    order = list(range(count))
    rng.shuffle(order)
    picked = [locations[i] for i in order]
    offsets = [i * KIB for i in order]

    def baseline() -> float:
        fd = os.open(raw_path, os.O_RDONLY)
        pread = os.pread
        started = time.perf_counter()
        for offset in offsets:
            pread(fd, KIB, offset)
        elapsed = time.perf_counter() - started
        os.close(fd)
        return count / elapsed

    def engine() -> float:
        store = FlatFileDb(path, path + ".lock")  # reopened: no warm reader caches
        get = store.get
        started = time.perf_counter()
        for location in picked:
            get(location)
        elapsed = time.perf_counter() - started
        store.close()
        return count / elapsed

    result = rounds(Result("get 1 KiB random", "ops/s", "os.pread", goal=0.85), args.rounds, baseline, engine)
    os.unlink(raw_path)
    shutil.rmtree(path)
    return [result]


def _writer_process(kind: str, target: str, seconds: float, barrier: Any, out: Any) -> None:
    blob = b"w" * KIB
    latencies: list[int] = []
    clock = time.perf_counter_ns
    if kind == "raw":
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        barrier.wait()
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            began = clock()
            os.write(fd, blob)
            latencies.append(clock() - began)
        os.close(fd)
    else:
        db = FlatFileDb(target, target + ".lock")
        barrier.wait()
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            began = clock()
            db.put(blob)
            latencies.append(clock() - began)
        db.close()
    latencies.sort()
    out.put((len(latencies), latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], latencies[-1]))


def _multi_rate(kind: str, workdir: str, processes: int, seconds: float) -> tuple[float, list[tuple[int, ...]]]:
    ctx = multiprocessing.get_context("fork")
    target = _fresh(workdir, "multistore") if kind == "engine" else os.path.join(workdir, "multi_raw.bin")
    if kind == "engine":
        FlatFileDb(target, target + ".lock").close()  # create before the clock starts
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_writer_process, args=(kind, target, seconds, barrier, out)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    stats = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    if kind == "engine":
        shutil.rmtree(target)
    else:
        os.unlink(target)
    return sum(s[0] for s in stats) / seconds, stats


def bench_multiprocess(args: argparse.Namespace, workdir: str) -> list[Result]:
    """4 processes putting 1 KiB blobs vs 4 processes appending to one O_APPEND file."""
    seconds = 0.5 if args.quick else 1.5
    result = Result("4 processes x put 1 KiB", "ops/s", "4 x raw O_APPEND", goal=0.4)
    worst_wait_ms: list[float] = []
    fewest: list[int] = []
    for _ in range(args.rounds):
        rate, _stats = _multi_rate("raw", workdir, 4, seconds)
        result.baseline.append(rate)
        rate, stats = _multi_rate("engine", workdir, 4, seconds)
        result.engine.append(rate)
        worst_wait_ms.append(max(s[3] for s in stats) / 1e6)
        fewest.append(min(s[0] for s in stats))
        last = stats
    per_writer = ", ".join(f"{s[0]} puts p99 {s[2] / 1e3:.0f} us max {s[3] / 1e6:.1f} ms" for s in last)
    result.extra = (
        f"worst single put over all rounds {max(worst_wait_ms):.1f} ms; fewest puts by one writer "
        f"{min(fewest)}; last round per writer: {per_writer}"
    )
    return [result]


def main(argv: list[str] | None = None) -> list[Result]:
    """Run these benchmarks and print the table."""
    return run_benchmark(
        __doc__ or "",
        argv,
        lambda args, workdir: bench_puts(args, workdir) + bench_gets(args, workdir) + bench_multiprocess(args, workdir),
    )


if __name__ == "__main__":
    main()
