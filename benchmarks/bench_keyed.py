"""The keyed store beside the stores a user would pick instead, in one run on one filesystem.

Stores (benchmarks/keyed_stores.py): KeyedStore with its SQLite index (the default) and with its
LMDB index; the engine alone (FlatFileDb put/get of the same values, the physical baseline);
SQLite and LMDB with the values inline; diskcache; disk-objectstore packs; RocksDB with blob
files. A store that does not import is reported as missing.

Every workload prints each store's figure and the keyed store's figure divided by it ("keyed ÷
store": above 1 the keyed store is ahead). Two rates stand side by side:
- per call: values / time spent inside the store's calls (open and close excluded);
- whole job: values / time from opening the store to the end of close() (what a job waits for).
Rates are medians of the rounds (--keyed-rounds). Targets are judged on the per-call median and
printed as PASS/FAIL lines under each table and once more at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .common import base_parser, conditions, percentile
from .keyed_stores import (
    ALL_STORES,
    BY_NAME,
    DOS,
    ENGINE,
    KEYED,
    KEYED_LMDB,
    KEYED_NAMES,
    LMDB,
    ROCKSDB,
    SQLITE,
    KeyedBench,
    StoreKind,
)

KIB = 1024
MIB = 2**20
GIB = 2**30
BATCH = 1000
CHUNK = 1000  # single-call loops look at the clock once per chunk of calls: 16, 32, ... then this many


def chunks(count: int) -> list[tuple[int, int]]:
    """(start, end) of the chunks of ``count`` calls: small first, so a store that takes a second for
    a thousand calls still stops near the round's time limit, then CHUNK (a clock read per CHUNK calls)."""
    out = []
    start, size = 0, 16
    while start < count:
        out.append((start, min(count, start + size)))
        start, size = start + size, min(CHUNK, size * 2)
    return out


KEY_MULTIPLIER = 0x9E3779B97F4A7C15  # odd: i -> i * M mod 2**64 is a permutation, keys look random
MASK64 = 2**64 - 1
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass
class Row:
    """One store's figures in one workload."""

    store: str
    per_call: list[float] = field(default_factory=list)
    whole_job: list[float] = field(default_factory=list)
    note: str = ""
    missing: str = ""  # why there is no figure (import error, or the error the store raised)

    @property
    def figure(self) -> float | None:
        """Median per-call figure, or None without one."""
        return statistics.median(self.per_call) if self.per_call and not self.missing else None

    @property
    def job(self) -> float | None:
        """Median whole-job figure, or None without one."""
        return statistics.median(self.whole_job) if self.whole_job and not self.missing else None


@dataclass
class Check:
    """One target against one keyed store."""

    target: str
    store: str
    passed: bool
    detail: str


@dataclass
class Workload:
    """A table: rows per store, the targets it was judged against."""

    title: str
    unit: str
    columns: tuple[str, str] = ("per call", "whole job, open..close()")
    ratios: bool = True  # figures are "higher is better" rates; print keyed ÷ store
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # printed under the table (curves, details)

    def row(self, store: str) -> Row | None:
        """The row of ``store`` if it has a figure."""
        for row in self.rows:
            if row.store == store and row.figure is not None:
                return row
        return None


@dataclass
class Context:
    """What every workload needs: options, scratch directory, the stores that import."""

    args: argparse.Namespace
    workdir: str
    kinds: list[StoreKind]
    missing: dict[str, str]
    rng: random.Random

    def clean(self) -> None:
        """Remove every store of the workload just measured (the next one starts on an emptier disk)."""
        for name in os.listdir(self.workdir):
            shutil.rmtree(os.path.join(self.workdir, name), ignore_errors=True)

    def fresh(self, name: str) -> str:
        """An empty directory for one store."""
        path = os.path.join(self.workdir, name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path


@dataclass
class Filled:
    """A store filled for the read workloads: its handles, and the random order to read them in."""

    kind: StoreKind
    path: str
    handles: list[Any]
    order: list[int]
    values: list[bytes]


def key_of(number: int) -> bytes:
    """The key of value ``number``: 8 bytes that look random (keys of real stores rarely come sorted)."""
    return ((number * KEY_MULTIPLIER) & MASK64).to_bytes(8, "big")


def make_values(count: int, size: int, rng: random.Random) -> list[bytes]:
    """``count`` distinct values (disk-objectstore stores equal contents once), ``size`` bytes each."""
    base = rng.randbytes(size - 8)
    return [base + number.to_bytes(8, "big") for number in range(count)]


def _size(size: int) -> str:
    return f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def render(workload: Workload) -> str:
    """The table of one workload, its notes and its PASS/FAIL lines."""
    first, second = workload.columns
    ratio_head = " keyed ÷ store (per call) |" if workload.ratios else ""
    lines = [
        f"\n### {workload.title}",
        f"| store | {first} ({workload.unit}) | {second} ({workload.unit}) |{ratio_head} notes |",
        "|---|---|---|" + ("---|" if workload.ratios else "") + "---|",
    ]
    reference = workload.row(KEYED)
    for row in workload.rows:
        if row.missing:
            lines.append(f"| {row.store} | - | - |{' - |' if workload.ratios else ''} {row.missing} |")
            continue
        ratio = ""
        if workload.ratios:
            figure = row.figure
            ratio = f" {reference.figure / figure:.2f} |" if reference and reference.figure and figure else " - |"
        lines.append(f"| {row.store} | {_fmt(row.figure)} | {_fmt(row.job)} |{ratio} {row.note} |")
    lines += workload.lines
    lines += [f"{'PASS' if c.passed else 'FAIL'} {c.store}: {c.target} ({c.detail})" for c in workload.checks]
    return "\n".join(lines)


def _guarded(workload: Workload, store: str, body: Callable[[Row], None]) -> None:
    """Run ``body`` for one store's row; an exception becomes the row's note instead of ending the run."""
    row = Row(store)
    workload.rows.append(row)
    try:
        body(row)
    except Exception as exc:  # pylint: disable=broad-exception-caught  # a peer's failure is a result
        row.missing = f"failed: {type(exc).__name__}: {exc}"


def _missing_rows(ctx: Context, workload: Workload, wanted: tuple[str, ...] | None = None) -> None:
    for name, why in ctx.missing.items():
        if wanted is None or name in wanted:
            workload.rows.append(Row(name, missing=why))


def _limit_note(done: int, wanted: int, limit: float) -> str:
    return "" if done == wanted else f"stopped at the {limit:g} s limit after {done:,} of {wanted:,} values"


def _timed_puts(kind: StoreKind, path: str, keys: list[bytes], values: list[bytes], limit: float) -> tuple[float, ...]:
    """Single puts of ``values``; (per-call rate, whole-job rate, values stored)."""
    began = time.perf_counter()
    store = kind.open(path)
    put = store.put
    opened = time.perf_counter()
    stop = opened + limit
    done = 0
    for start, end in chunks(len(values)):
        if store.takes_key:
            for key, value in zip(keys[start:end], values[start:end]):
                put(key, value)
        else:
            for value in values[start:end]:
                put(value)
        done = end
        if time.perf_counter() > stop:
            break
    called = time.perf_counter()
    store.close()
    closed = time.perf_counter()
    return done / (called - opened), done / (closed - began), done


def _timed_put_many(
    kind: StoreKind, path: str, keys: list[bytes], values: list[bytes], limit: float
) -> tuple[list[float], list[Any]]:
    """put_many batches of BATCH; ([per-call rate, whole-job rate, values stored], handles)."""
    pairs = list(zip(keys, values))
    handles: list[Any] = []
    began = time.perf_counter()
    store = kind.open(path)
    opened = time.perf_counter()
    stop = opened + limit
    done = 0
    for start in range(0, len(pairs), BATCH):
        got = store.put_many(pairs[start : start + BATCH])
        handles += got if got is not None else keys[start : start + BATCH]
        done = len(handles)
        if time.perf_counter() > stop:
            break
    called = time.perf_counter()
    store.close()
    closed = time.perf_counter()
    return [done / (called - opened), done / (closed - began), done], handles


def bench_puts(ctx: Context, keys: list[bytes], values: list[bytes]) -> Workload:
    """1. ``s[k] = v`` one value at a time."""
    args = ctx.args
    workload = Workload(f"1. s[k] = v one at a time, {len(values):,} values of 1 KiB", "values/s")
    for kind in ctx.kinds:

        def body(row: Row, kind: StoreKind = kind) -> None:
            for _ in range(args.keyed_rounds):
                per_call, whole, done = _timed_puts(kind, ctx.fresh(kind.name), keys, values, args.keyed_round_limit)
                row.per_call.append(per_call)
                row.whole_job.append(whole)
                row.note = _limit_note(int(done), len(values), args.keyed_round_limit)
            if kind.name == DOS:
                row.note = ("one add_objects_to_pack([v]) per value; " + row.note).rstrip("; ")

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload)
    lmdb = workload.row(LMDB)
    for name in _keyed_present(workload):
        figure = _figure(workload, name)
        _check(workload, name, ">= 100,000 values/s", figure >= 100_000, f"{figure:,.0f}/s")
        if lmdb is not None and lmdb.figure is not None:
            _check(workload, name, "ahead of LMDB inline", figure > lmdb.figure, f"{figure / lmdb.figure:.2f}x")
    return workload


def bench_put_many(ctx: Context, keys: list[bytes], values: list[bytes]) -> Workload:
    """2. ``put_many`` batches of 1000."""
    args = ctx.args
    workload = Workload(f"2. put_many({BATCH}) batches, {len(values):,} values of 1 KiB", "values/s")
    for kind in ctx.kinds:

        def body(row: Row, kind: StoreKind = kind) -> None:
            for _ in range(args.keyed_rounds):
                figures, _handles = _timed_put_many(kind, ctx.fresh(kind.name), keys, values, args.keyed_round_limit)
                row.per_call.append(figures[0])
                row.whole_job.append(figures[1])
                row.note = _limit_note(int(figures[2]), len(values), args.keyed_round_limit)

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload)
    for name in _keyed_present(workload):
        figure = _figure(workload, name)
        _check(workload, name, ">= 300,000 values/s", figure >= 300_000, f"{figure:,.0f}/s")
        _check_ahead_of_peers(workload, name)
    return workload


def bench_gets(ctx: Context, keys: list[bytes], values: list[bytes]) -> list[Workload]:
    """3. random ``s[k]`` and ``get_many(1000)`` over the stored keys of a reopened store."""
    single = Workload(f"3a. s[k] random gets over {len(values):,} stored keys, 1 KiB values", "values/s")
    many = Workload(f"3b. get_many({BATCH}) in random order over {len(values):,} stored keys", "values/s")
    for kind in ctx.kinds:
        path = ctx.fresh(kind.name)
        try:
            _figures, handles = _timed_put_many(kind, path, keys, values, float("inf"))
        except Exception as exc:  # pylint: disable=broad-exception-caught  # a peer's failure is a result
            for workload in (single, many):
                workload.rows.append(Row(kind.name, missing=f"failed to fill: {type(exc).__name__}: {exc}"))
            continue
        order = list(range(len(handles)))
        ctx.rng.shuffle(order)
        filled = Filled(kind, path, handles, order, values)
        _guarded(single, kind.name, functools.partial(_get_rounds, ctx, filled))
        _guarded(many, kind.name, functools.partial(_get_many_rounds, ctx, filled))
        shutil.rmtree(path, ignore_errors=True)
    for workload in (single, many):
        _missing_rows(ctx, workload)
    lmdb = single.row(LMDB)
    for name in _keyed_present(single):
        if lmdb is not None and lmdb.figure is not None:
            ratio = _figure(single, name) / lmdb.figure
            _check(single, name, ">= 0.8x LMDB inline", ratio >= 0.8, f"{ratio:.2f}x")
    for name in _keyed_present(many):
        _check_ahead_of_peers(many, name)
    return [single, many]


def _get_rounds(ctx: Context, filled: Filled, row: Row) -> None:
    kind, path, handles, order, values = filled.kind, filled.path, filled.handles, filled.order, filled.values
    picked = [handles[i] for i in order]
    limit = ctx.args.keyed_round_limit
    for _ in range(ctx.args.keyed_rounds):
        began = time.perf_counter()
        store = kind.open(path)
        get = store.get
        opened = time.perf_counter()
        stop = opened + limit
        done = 0
        got = b""
        for start, end in chunks(len(picked)):
            for handle in picked[start:end]:
                got = get(handle)
            done = end
            if time.perf_counter() > stop:
                break
        called = time.perf_counter()
        store.close()
        closed = time.perf_counter()
        if got != values[order[done - 1]]:
            raise AssertionError("a get returned the wrong value")
        row.per_call.append(done / (called - opened))
        row.whole_job.append(done / (closed - began))
        row.note = _limit_note(done, len(picked), limit)


def _get_many_rounds(ctx: Context, filled: Filled, row: Row) -> None:
    kind, path, handles, order, values = filled.kind, filled.path, filled.handles, filled.order, filled.values
    batches = [[handles[i] for i in order[start : start + BATCH]] for start in range(0, len(order), BATCH)]
    limit = ctx.args.keyed_round_limit
    for _ in range(ctx.args.keyed_rounds):
        began = time.perf_counter()
        store = kind.open(path)
        opened = time.perf_counter()
        stop = opened + limit
        done = 0
        got: list[bytes] = []
        for batch in batches:
            got = store.get_many(batch)
            done += len(batch)
            if time.perf_counter() > stop:
                break
        called = time.perf_counter()
        store.close()
        closed = time.perf_counter()
        if got[-1] != values[order[done - 1]] or len(got) != len(batches[(done - 1) // BATCH]):
            raise AssertionError("get_many returned the wrong values")
        row.per_call.append(done / (called - opened))
        row.whole_job.append(done / (closed - began))
        row.note = _limit_note(done, len(order), limit)


def _keyed_present(workload: Workload) -> list[str]:
    return [name for name in KEYED_NAMES if workload.row(name) is not None]


def _figure(workload: Workload, name: str) -> float:
    row = workload.row(name)
    if row is None or row.figure is None:
        raise KeyError(name)
    return row.figure


def _check(workload: Workload, store: str, target: str, passed: bool, detail: str) -> None:
    workload.checks.append(Check(target, store, passed, detail))


def _check_ahead_of_peers(workload: Workload, name: str) -> None:
    """The keyed store ``name`` ahead of every peer with a figure (not the engine alone: that is the floor)."""
    figure = _figure(workload, name)
    peers = [row for row in workload.rows if row.store not in KEYED_NAMES + (ENGINE,) and row.figure is not None]
    if not peers:
        return
    best = max(peers, key=lambda row: row.figure or 0.0)
    assert best.figure is not None
    _check(
        workload,
        name,
        "ahead of every peer",
        figure > best.figure,
        f"best peer {best.store} {figure / best.figure:.2f}x",
    )


def _writer(kind_name: str, path: str, seconds: float, number: int, barrier: Any, out: Any) -> None:
    """One of the writer processes: ``s[k] = v`` of 1 KiB values for ``seconds``."""
    began = time.perf_counter()
    store = BY_NAME[kind_name].open(path)
    put = store.put
    base = b"w" * (KIB - 8)
    latencies: list[int] = []
    errors = 0
    first_error = ""
    clock = time.perf_counter_ns
    barrier.wait()
    stop = clock() + int(seconds * 1e9)
    count = 0
    while True:
        now = clock()
        if now >= stop:
            break
        try:
            put(b"p%d-%d" % (number, count), base + count.to_bytes(8, "big"))
        except Exception as exc:  # pylint: disable=broad-exception-caught  # counted and reported
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
        latencies.append(clock() - now)
        count += 1
    store.close()
    latencies.sort()
    out.put(
        {
            "puts": count - errors,
            "errors": errors,
            "first_error": first_error,
            "p99_ms": percentile([float(x) for x in latencies], 0.99) / 1e6 if latencies else 0.0,
            "worst_ms": latencies[-1] / 1e6 if latencies else 0.0,
            "began": began,
            "closed": time.perf_counter(),
        }
    )


def _multi_run(ctx: Context, kind: StoreKind, processes: int, seconds: float) -> list[dict[str, Any]]:
    path = ctx.fresh(kind.name)
    kind.open(path).close()  # created before the clock starts
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(processes)
    out = fork.Queue()
    workers = [fork.Process(target=_writer, args=(kind.name, path, seconds, n, barrier, out)) for n in range(processes)]
    for worker in workers:
        worker.start()
    stats = [out.get(timeout=seconds + 600) for _ in workers]
    for worker in workers:
        worker.join()
    shutil.rmtree(path, ignore_errors=True)
    return stats


def bench_multiprocess(ctx: Context) -> Workload:
    """4. four writer processes doing ``s[k] = v`` at once for --keyed-seconds."""
    seconds = ctx.args.keyed_seconds
    processes = 4
    wanted = (KEYED, KEYED_LMDB, SQLITE, LMDB)
    workload = Workload(
        f"4. {processes} writer processes x s[k] = v of 1 KiB for {seconds:g} s (SQLite inline with busy_timeout)",
        "values/s",
        columns=("aggregate, per call", "aggregate, first open..last close()"),
    )
    per_store: dict[str, tuple[int, float, list[float]]] = {}  # store: errors, worst put ms, shares of fair
    for kind in [k for k in ctx.kinds if k.name in wanted]:

        def body(row: Row, kind: StoreKind = kind) -> None:
            stats = _multi_run(ctx, kind, processes, seconds)
            total = sum(s["puts"] for s in stats)
            row.per_call.append(total / seconds)
            row.whole_job.append(total / (max(s["closed"] for s in stats) - min(s["began"] for s in stats)))
            fair = total / processes if total else 1.0
            errors = sum(s["errors"] for s in stats)
            per_store[kind.name] = (errors, max(s["worst_ms"] for s in stats), [s["puts"] / fair for s in stats])
            first = next((s["first_error"] for s in stats if s["first_error"]), "")
            shares = per_store[kind.name][2]
            row.note = (
                f"errors {errors}{' (' + first + ')' if first else ''}; worst put {per_store[kind.name][1]:.1f} ms; "
                f"p99 {max(s['p99_ms'] for s in stats):.2f} ms; per process "
                + ", ".join(f"{s['puts']:,}" for s in stats)
                + f" (share of fair {min(shares):.2f}..{max(shares):.2f})"
            )

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload, wanted)
    peers = [row for row in workload.rows if row.store in (SQLITE, LMDB) and row.figure is not None]
    best = max(peers, key=lambda row: row.figure or 0.0) if peers else None
    for name in _keyed_present(workload):
        figure = _figure(workload, name)
        errors, worst, shares = per_store[name]
        if best is not None and best.figure:
            ratio = figure / best.figure
            _check(workload, name, ">= 2x the best peer", ratio >= 2, f"{best.store} {ratio:.2f}x")
        _check(workload, name, "no error", errors == 0, f"{errors} errors")
        _check(workload, name, "worst put < 50 ms", worst < 50, f"{worst:.1f} ms")
        low, high = min(shares), max(shares)
        _check(
            workload,
            name,
            "each process within 30% of its fair share",
            low >= 0.7 and high <= 1.3,
            f"{low:.2f}..{high:.2f}",
        )
    return workload


def disk_usage(path: str) -> int:
    """Bytes of disk the files under ``path`` occupy (as ``du``: allocated blocks, not lengths)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # removed by the store while we walked
                pass
    return total


def _vacuum_worker(
    kind_name: str, where: tuple[str, int], number: int, survivors: list[tuple[bytes, bytes]], sync: Any, out: Any
) -> None:
    """Reads a random surviving key (checking its value) and writes a new key, up to 500 times a second.

    ``where`` is the store's path and segment size; ``sync`` the start barrier and the stop event.
    """
    barrier, stop = sync
    store = BY_NAME[kind_name].open(*where)
    rng = random.Random(number)
    reads = writes = errors = 0
    first_error = ""
    barrier.wait()
    while not stop.is_set():
        key, value = survivors[rng.randrange(len(survivors))]
        try:
            if store.get(key) != value:
                raise AssertionError(f"wrong value for surviving key {key!r}")
            reads += 1
            store.put(b"vacuum-writer-%d-%d" % (number, writes), value)
            writes += 1
        except Exception as exc:  # pylint: disable=broad-exception-caught  # counted and reported
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
        time.sleep(0.002)  # background traffic: its own bytes stay small beside the dead bytes
    store.close()
    out.put({"reads": reads, "writes": writes, "errors": errors, "first_error": first_error})


def _sample_disk(path: str, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(disk_usage(path))
        time.sleep(0.005)


def _fill_half_dead(ctx: Context, kind: StoreKind, path: str, count: int, segment: int) -> list[tuple[bytes, bytes]]:
    """Store ``count`` values, delete every other one; the surviving pairs."""
    keys = [key_of(n) for n in range(count)]
    values = make_values(count, KIB, ctx.rng)
    store = kind.open(path, segment)
    for start in range(0, count, BATCH):
        store.put_many(list(zip(keys[start : start + BATCH], values[start : start + BATCH])))
    assert isinstance(store, KeyedBench)
    store.store.delete_many(keys[1::2])
    store.close()
    return list(zip(keys[0::2], values[0::2]))


def _vacuum_run(ctx: Context, kind: StoreKind, count: int) -> dict[str, Any]:
    """Fill, delete every other key, then vacuum while two processes read and write."""
    path = ctx.fresh(kind.name)
    segment = max(64 * KIB, count * KIB // 16)  # about 16 segments, so there is something to vacuum
    survivors = _fill_half_dead(ctx, kind, path, count, segment)
    fork = multiprocessing.get_context("fork")
    sync = (fork.Barrier(3), fork.Event())
    out = fork.Queue()
    workers = [
        fork.Process(target=_vacuum_worker, args=(kind.name, (path, segment), n, survivors, sync, out))
        for n in range(2)
    ]
    for worker in workers:
        worker.start()
    keyed = kind.open(path, segment)  # opened after the fork: the writers inherit no handle of it
    assert isinstance(keyed, KeyedBench)
    before = keyed.store.stats()
    run: dict[str, Any] = {"dead": before.dead_bytes, "live": before.live_bytes, "du_before": disk_usage(path)}
    samples: list[int] = [run["du_before"]]
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=_sample_disk, args=(path, stop_sampling, samples))
    sampler.start()
    sync[0].wait()
    began = time.perf_counter()
    try:
        result = keyed.store.vacuum()
        run["error"] = ""
    except Exception as exc:  # pylint: disable=broad-exception-caught  # reported as the workload's error
        result = None
        run["error"] = f"{type(exc).__name__}: {exc}"
    run["seconds"] = time.perf_counter() - began
    stop_sampling.set()
    sampler.join()
    sync[1].set()
    run["workers"] = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    run["reclaimed"] = result.bytes_reclaimed if result is not None else 0
    run["removed"] = result.segments_removed if result is not None else 0
    run["moved"] = result.values_moved if result is not None else 0
    run["du_after"] = disk_usage(path)
    run["du_peak"] = max(samples)
    run["samples"] = len(samples)
    run["live_after"] = keyed.store.stats().live_bytes
    keyed.close()
    shutil.rmtree(path, ignore_errors=True)
    return run


def bench_vacuum(ctx: Context) -> Workload:
    """5. vacuum() of a store with half its values deleted while two processes read and write."""
    count = ctx.args.keyed_vacuum_values
    workload = Workload(
        f"5. vacuum() of {count:,} values of 1 KiB, every other one deleted, while 2 processes read and write",
        "x",
        columns=("vacuum seconds", "peak disk / live bytes"),
        ratios=False,
    )
    for kind in [k for k in ctx.kinds if k.name in KEYED_NAMES]:

        def body(row: Row, kind: StoreKind = kind) -> None:
            run = _vacuum_run(ctx, kind, count)
            written = sum(w["writes"] for w in run["workers"]) * KIB
            worker_errors = sum(w["errors"] for w in run["workers"])
            errors = worker_errors + (1 if run["error"] else 0)
            first = next((w["first_error"] for w in run["workers"] if w["first_error"]), "")
            extra = (run["du_peak"] - run["du_before"] - written) / max(1, run["live"])
            returned = run["du_before"] + written - run["du_after"]
            off = abs(returned - run["dead"]) / max(1, run["dead"])
            row.per_call.append(run["seconds"])
            row.whole_job.append(run["du_peak"] / max(1, run["live"]))
            row.note = (
                f"vacuum {'raised ' + run['error'] if run['error'] else 'returned'}; errors of the 2 processes "
                f"{worker_errors}{' (first: ' + first + ')' if first else ''}"
            )
            workload.lines.append(
                f"{kind.name}: live {run['live']:,} B, dead {run['dead']:,} B before; du before {run['du_before']:,}, "
                f"peak {run['du_peak']:,} ({run['samples']} samples), after {run['du_after']:,}; the writers wrote "
                f"{written:,} B; du returned {returned:,} B = {returned / max(1, run['dead']):.3f}x dead; "
                f"VacuumResult: {run['removed']} segments removed, bytes_reclaimed {run['reclaimed']:,}, values "
                f"moved {run['moved']:,}; reads/writes of the 2 processes meanwhile "
                + ", ".join(f"{w['reads']:,}/{w['writes']:,}" for w in run["workers"])
            )
            _check(workload, kind.name, "0 errors", errors == 0, f"{errors} errors")
            _check(workload, kind.name, "space returned within 1% of dead bytes", off <= 0.01, f"off by {off:.2%}")
            _check(workload, kind.name, "peak <= 1.2x live: vacuum adds <= 0.2x", extra <= 0.2, f"{extra:+.3f}x live")

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload, KEYED_NAMES)
    workload.lines.append(
        "(du: allocated bytes of every file of the store, sampled by a thread. peak disk / live: the largest "
        "sample during vacuum over the live bytes before it; a store half dead starts near 2x, so the 1.2x target "
        "is judged on what the vacuum adds: peak - du before - bytes the writers wrote. du returned: du before + "
        "bytes the writers wrote - du after.)"
    )
    return workload


ARRAY_CHILD = "import sys; from benchmarks.bench_keyed import array_child; array_child(sys.argv[1:])"


def array_child(argv: list[str]) -> None:
    """In a fresh process limited to RLIMIT_DATA ``argv[3]`` bytes: create_array of ``argv[2]`` bytes.

    Prints one JSON line: fill and commit (exit of the with-block) times, and whether the array reads back.
    """
    path, index, size, limit = argv[0], argv[1], int(argv[2]), int(argv[3])
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    keyed_store = __import__("conduit_flat_file_db").KeyedStore
    store = keyed_store(path, index=index)
    began = time.perf_counter()
    with store.create_array(b"array", (size,), "uint8") as array:
        array[:] = 7
        filled = time.perf_counter()
    committed = time.perf_counter()
    back = store.get_array(b"array")
    ok = b"array" in store and back.shape == (size,) and int(back[0]) == 7 and int(back[-1]) == 7
    del back
    store.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"fill": filled - began, "commit": committed - filled, "ok": ok, "peak_rss_kib": peak_kib}))


def bench_array(ctx: Context) -> Workload:
    """6. create_array in a child process with RLIMIT_DATA 256 MiB: time of the commit."""
    size = ctx.args.keyed_array_bytes
    limit = 256 * MIB
    workload = Workload(
        f"6. create_array of {_size(size)} (uint8, filled) in a child with RLIMIT_DATA {limit // MIB} MiB",
        "ms",
        columns=("commit: exit of the with-block", "fill + commit"),
        ratios=False,
    )
    for kind in [k for k in ctx.kinds if k.name in KEYED_NAMES]:

        def body(row: Row, kind: StoreKind = kind) -> None:
            path = ctx.fresh(kind.name)
            index = "lmdb" if kind.name == KEYED_LMDB else "sqlite"
            done = subprocess.run(
                [sys.executable, "-c", ARRAY_CHILD, path, index, str(size), str(limit)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=False,
                timeout=3600,
            )
            shutil.rmtree(path, ignore_errors=True)
            if done.returncode != 0:
                raise RuntimeError(f"child exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            row.per_call.append(run["commit"] * 1e3)
            row.whole_job.append((run["fill"] + run["commit"]) * 1e3)
            row.note = (
                f"fill {size / MIB / run['fill']:,.0f} MiB/s; reads back: {'yes' if run['ok'] else 'NO'}; "
                f"child peak RSS {run['peak_rss_kib'] / KIB:,.0f} MiB (file pages of the map included)"
            )
            commit_ms = run["commit"] * 1e3
            _check(workload, kind.name, "commit < 50 ms", commit_ms < 50 and run["ok"], f"{commit_ms:.1f} ms")

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload, KEYED_NAMES)
    return workload


GROWTH_STORES = (KEYED, KEYED_LMDB, SQLITE, LMDB, ROCKSDB)


def _growth_run(kind: StoreKind, path: str, total: int, step: int, limit: float) -> tuple[list[float], float, float]:
    """put_many of 32-byte values up to ``total`` keys, or until ``limit`` seconds have passed at a step's end.

    Returns the per-call rate of each ``step`` keys, the per-call rate of all, and the whole-job rate:
    open + the put_many calls + close(), leaving out the time this loop spends making the keys.
    """
    began = time.perf_counter()
    store = kind.open(path)
    opening = time.perf_counter() - began
    curve: list[float] = []
    spent = calls = 0.0
    stored = 0
    for start in range(0, total, BATCH):
        pairs = []
        for number in range(start, min(total, start + BATCH)):
            key = key_of(number)
            pairs.append((key, key * 4))
        called = time.perf_counter()
        store.put_many(pairs)
        spent += time.perf_counter() - called
        stored = start + len(pairs)
        if stored % step == 0 or stored >= total:
            curve.append((stored - len(curve) * step) / spent)
            calls += spent
            spent = 0.0
            if time.perf_counter() - began > limit:
                break
    closing = time.perf_counter()
    store.close()
    return curve, stored / calls, stored / (opening + calls + time.perf_counter() - closing)


def bench_growth(ctx: Context) -> Workload:
    """7. put_many throughput of 32-byte values as the store grows, per step of keys."""
    total = ctx.args.keyed_growth_keys
    step = 1_000_000 if total >= 2_000_000 else max(BATCH, total // 10 // BATCH * BATCH)
    workload = Workload(
        f"7. growth: put_many({BATCH}) of 32-byte values up to {total:,} keys",
        "values/s",
        columns=("per call, all keys", "whole job: open + calls + close()"),
    )
    curves: dict[str, list[float]] = {}
    for kind in [k for k in ctx.kinds if k.name in GROWTH_STORES]:

        def body(row: Row, kind: StoreKind = kind) -> None:
            path = ctx.fresh(kind.name)
            limit = ctx.args.keyed_growth_limit
            curve, per_call, whole = _growth_run(kind, path, total, step, limit)
            shutil.rmtree(path, ignore_errors=True)
            curves[kind.name] = curve
            row.per_call.append(per_call)
            row.whole_job.append(whole)
            row.note = f"first step {curve[0]:,.0f}/s, last {curve[-1]:,.0f}/s ({curve[-1] / curve[0]:.2f}x)"
            if len(curve) * step < total:
                row.note += f"; stopped at the {limit:g} s limit after {len(curve) * step:,} keys"

        _guarded(workload, kind.name, body)
    _missing_rows(ctx, workload, GROWTH_STORES)
    names = list(curves)
    workload.lines.append(f"\ncurve, per-call values/s of each {step:,} keys:")
    workload.lines.append("| keys up to | " + " | ".join(names) + " |")
    workload.lines.append("|---|" + "---|" * len(names))
    for number in range(max((len(c) for c in curves.values()), default=0)):
        cells = [_fmt(curves[n][number]) if number < len(curves[n]) else "-" for n in names]
        workload.lines.append(f"| {min(total, (number + 1) * step):,} | " + " | ".join(cells) + " |")
    for name in _keyed_present(workload):
        curve = curves[name]
        _check(
            workload,
            name,
            "last step within 2x of the first",
            curve[-1] * 2 >= curve[0],
            f"{curve[-1] / curve[0]:.2f}x"
            + (f"; reached {len(curve) * step:,} keys" if len(curve) * step < total else ""),
        )
    return workload


def summary(workloads: list[Workload]) -> str:
    """Every target of the run, PASS or FAIL, after a count of those met."""
    lines = []
    for workload in workloads:
        number = workload.title.split(" ", 1)[0]
        lines += [
            f"{'PASS' if c.passed else 'FAIL'} {number} {c.store}: {c.target} ({c.detail})" for c in workload.checks
        ]
    met = sum(line.startswith("PASS") for line in lines)
    return "\n".join([f"\n### targets: {met} of {len(lines)} met"] + lines)


def add_keyed_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark (beside common.base_parser's); run.py strips them for the others."""
    group = parser.add_argument_group("keyed-store benchmark (bench_keyed; defaults, with --quick in brackets)")
    group.add_argument("--keyed-values", type=int, default=None, help="1 KiB values of workloads 1-3 (100,000 [500])")
    group.add_argument("--keyed-rounds", type=int, default=None, help="rounds of workloads 1-3; medians (3 [1])")
    group.add_argument("--keyed-round-limit", type=float, default=None, help="seconds per store per round (20 [0.5])")
    group.add_argument("--keyed-seconds", type=float, default=None, help="seconds of the 4 writers (10 [0.3])")
    group.add_argument("--keyed-vacuum-values", type=int, default=None, help="1 KiB values vacuumed (200,000 [500])")
    group.add_argument("--keyed-array-bytes", type=int, default=None, help="create_array size (2 GiB [8 MiB])")
    group.add_argument("--keyed-growth-keys", type=int, default=None, help="keys of the growth curve (10M [2,000])")
    group.add_argument("--keyed-growth-limit", type=float, default=None, help="seconds per growth store (1800 [10])")
    group.add_argument("--keyed-json", default=None, help="also write every figure to this JSON file")
    group.add_argument(
        "--keyed-workloads", default=None, help="comma-separated step numbers to run (1 puts ... 7 growth; all)"
    )


def _resolve(args: argparse.Namespace) -> None:
    defaults = {
        "keyed_values": (100_000, 500),
        "keyed_rounds": (3, 1),
        "keyed_round_limit": (20.0, 0.5),
        "keyed_seconds": (10.0, 0.3),
        "keyed_vacuum_values": (200_000, 500),
        "keyed_array_bytes": (2 * GIB, 8 * MIB),
        "keyed_growth_keys": (10_000_000, 2_000),
        "keyed_growth_limit": (1800.0, 10.0),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def main(argv: list[str] | None = None) -> list[Workload]:
    """Run every keyed-store workload, printing each table as it is done; return them."""
    parser = base_parser(__doc__ or "")
    add_keyed_options(parser)
    args = parser.parse_args(argv)
    _resolve(args)
    args.rounds = args.keyed_rounds  # for the conditions banner
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="ffdb-bench-keyed-", dir=args.dir or REPO_ROOT)
    try:
        print(conditions(args, workdir))
        print(__doc__)
        missing = {kind.name: why for kind in ALL_STORES if (why := kind.missing()) is not None}
        ctx = Context(
            args, workdir, [k for k in ALL_STORES if k.name not in missing], missing, random.Random(args.seed)
        )
        keys = [key_of(number) for number in range(args.keyed_values)]
        values = make_values(args.keyed_values, KIB, ctx.rng)
        workloads: list[Workload] = []
        steps: list[Callable[[], list[Workload]]] = [
            lambda: [bench_puts(ctx, keys, values)],
            lambda: [bench_put_many(ctx, keys, values)],
            lambda: bench_gets(ctx, keys, values),
            lambda: [bench_multiprocess(ctx)],
            lambda: [bench_vacuum(ctx)],
            lambda: [bench_array(ctx)],
            lambda: [bench_growth(ctx)],
        ]
        chosen = {int(n) for n in args.keyed_workloads.split(",")} if args.keyed_workloads else None
        for number, step in enumerate(steps, 1):
            if chosen is not None and number not in chosen:
                continue
            began = time.perf_counter()
            done = step()
            for workload in done:
                print(render(workload), flush=True)
                workloads.append(workload)
            print(f"({time.perf_counter() - began:.1f} s)", flush=True)
            ctx.clean()
        print(summary(workloads))
        if args.keyed_json:
            with open(args.keyed_json, "w", encoding="utf-8") as handle:
                json.dump(
                    {"conditions": conditions(args, workdir), "workloads": [asdict(w) for w in workloads]},
                    handle,
                    indent=1,
                )
        return workloads
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
