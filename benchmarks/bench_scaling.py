"""How the store scales: slice latency tails, memory of streamed puts, writer processes, store size.

Four measurements, each beside its physical baseline measured in the same run, and (``--peers``)
beside the stores a user would pick instead:

1. **Slice latency**: random 256 B slices of random 64 KiB blobs of a 256 MiB store, each call
   timed (``perf_counter_ns``): p50/p90/p99/p99.9/max. Raw store against ``os.pread`` of the same
   256 bytes from one plain file; compressed store (its frame cache a quarter of the data) against
   one zstd frame per blob, read, decompressed and sliced. Peers: LMDB and SQLite, the whole value
   read, then sliced. Every timed call goes through one closure of one argument, the baselines too.
2. **Memory of a streamed put**: peak RSS above the process's own after its imports (``VmHWM``,
   reset then; a fresh interpreter per case) of storing one stream of ``--stream-mib`` (default 1 GiB),
   never held in memory: ``put_stream``, raw and compressed, against ``shutil.copyfileobj`` to a
   plain file. Peers (LMDB put, SQLite blob) take a value, not a stream: the whole value in memory.
3. **Writer processes**: 1, 2, 4, 8 processes put 1 KiB (then 1 MiB) blobs into the same datadir
   for ``--writer-seconds``: aggregate rate, each process's share, worst single put. Baseline: the
   same processes appending to one plain file (``O_APPEND``). Peers: LMDB, SQLite (WAL).
4. **Store size**: one store grown by 1 MiB puts to 1, 2, 4, ... ``--max-store-gib`` GiB; at each
   size the put rate of the last GiB grown and the rate of random 4 KiB reads over the whole store
   for ``--get-seconds``. Baseline: one plain file grown the same way, read with ``os.pread``. The
   two are grown one after the other (the disk holds one of them at a time); growth stops, with a
   message, before the free space would fall under ``RESERVE_GIB``. The data is deleted afterwards.

``--json FILE`` writes every figure; ``python -m benchmarks.plots FILE DIR`` draws one PNG per
measurement. Per-call figures (latencies) and window or whole-job figures (rates) are labelled so.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zstandard

from conduit_flat_file_db import FlatFileDb, Slice

from .bench_jobs import OURS, _fresh
from .bench_streams import Source, _peak_rss_kib
from .common import Result, percentile, run_benchmark, text_like
from .keyed_stores import BY_NAME, LMDB, SQLITE

KIB = 1024
MIB = 2**20
GIB = 2**30
SLICE = 256
SLICE_BLOB = 64 * KIB
READ = 4 * KIB
READ_PICKS = 2**18  # random reads prepared per store size (a multiple of 256)
RESERVE_GIB = 3  # free space left to the machine's other users when growing the store
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
CDF_FRACTIONS = (
    [i / 100 for i in range(99)] + [0.99 + i / 1000 for i in range(9)] + [0.999 + i / 10000 for i in range(10)]
)
PEERS = (LMDB, SQLITE)
BASELINE, ENGINE, PEER = "baseline", "this store", "peer"

Call = Callable[[Any], Any]


def _scaled(args: argparse.Namespace, full: int, smoke: int) -> int:
    return smoke if args.smoke else full


def _peers(args: argparse.Namespace) -> list[str]:
    """The peers to measure: none without --peers; those that import."""
    return [name for name in PEERS if args.peers and not BY_NAME[name].missing()]


def machine(workdir: str) -> dict[str, Any]:
    """The machine the figures come from: cores, RAM, the disk of ``workdir``, load average."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    usage = shutil.disk_usage(workdir)
    df = subprocess.run(
        ["df", "--output=source,fstype", workdir], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(ram / GIB, 1),
        "disk": " ".join(df[-2:]) if len(df) >= 4 else "?",
        "disk_total_gib": round(usage.total / GIB, 1),
        "disk_free_gib": round(usage.free / GIB, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def summary(samples_ns: list[int]) -> dict[str, Any]:
    """Quantiles and max of per-call latencies (ns), and the points of their CDF for the plot."""
    ordered = sorted(samples_ns)
    out: dict[str, Any] = {name: percentile(ordered, q) for name, q in QUANTILES.items()}
    out["max"] = ordered[-1]
    out["count"] = len(ordered)
    out["cdf"] = [[percentile(ordered, f), f] for f in CDF_FRACTIONS] + [[ordered[-1], 1.0]]
    return out


@dataclass
class SliceCase:
    """One way of reading the slices: ``opener`` gives (the timed call, the close); ``items`` its arguments."""

    name: str
    role: str
    group: str
    opener: Callable[[], tuple[Call, Callable[[], None]]]
    items: list[Any]


def _timed(case: SliceCase, samples: list[int]) -> float:
    """Run ``case`` once, appending each call's ns to ``samples``; the whole job's calls per second."""
    clock = time.perf_counter_ns
    started = clock()
    call, close = case.opener()
    append = samples.append
    for item in case.items:
        began = clock()
        call(item)
        append(clock() - began)
    close()
    return len(case.items) / ((clock() - started) / 1e9)


def _slice_data(args: argparse.Namespace, workdir: str) -> tuple[list[bytes], str, str, list[tuple[int, int]]]:
    """The blobs (W1 mix: half random, half log-like), the plain file of them, the zstd frames file and spans."""
    rng = random.Random(args.seed)
    count = _scaled(args, 256 * MIB, MIB) // SLICE_BLOB
    distinct = [rng.randbytes(SLICE_BLOB) if i % 2 else text_like(SLICE_BLOB, rng) for i in range(min(64, count))]
    blobs = [distinct[i % len(distinct)] for i in range(count)]
    plain, frames = os.path.join(workdir, "slices.bin"), os.path.join(workdir, "slices.zst")
    cctx = zstandard.ZstdCompressor(level=3)
    spans = []
    with open(plain, "wb") as raw, open(frames, "wb") as packed:
        for blob in blobs:
            raw.write(blob)
            frame = cctx.compress(blob)
            spans.append((packed.tell(), len(frame)))
            packed.write(frame)
    return blobs, plain, frames, spans


def _pread_opener(path: str, length: int) -> Callable[[], tuple[Call, Callable[[], None]]]:
    def opener() -> tuple[Call, Callable[[], None]]:
        fd = os.open(path, os.O_RDONLY)
        pread = os.pread
        return (lambda offset: pread(fd, length, offset)), functools.partial(os.close, fd)

    return opener


def _frames_opener(path: str, spans: list[tuple[int, int]]) -> Callable[[], tuple[Call, Callable[[], None]]]:
    def opener() -> tuple[Call, Callable[[], None]]:
        fd = os.open(path, os.O_RDONLY)
        pread, decompress = os.pread, zstandard.ZstdDecompressor().decompress

        def call(item: tuple[int, int]) -> bytes:
            offset, size = spans[item[0]]
            return decompress(pread(fd, size, offset))[item[1] : item[1] + SLICE]

        return call, functools.partial(os.close, fd)

    return opener


def _store_opener(path: str, compressed: bool, cache: int) -> Callable[[], tuple[Call, Callable[[], None]]]:
    def opener() -> tuple[Call, Callable[[], None]]:
        db = FlatFileDb(path, use_compression=compressed, frame_cache_bytes=cache)
        get = db.get
        return (lambda item: get(item[0], item[1])), db.close

    return opener


def _peer_opener(name: str, path: str) -> Callable[[], tuple[Call, Callable[[], None]]]:
    def opener() -> tuple[Call, Callable[[], None]]:
        store = BY_NAME[name].open(path)
        get = store.get
        return (lambda item: get(item[0])[item[1] : item[1] + SLICE]), store.close

    return opener


def _remove(workdir: str, prefix: str) -> None:
    """Delete every store, file and lock file of ``workdir`` whose name starts with ``prefix``."""
    for name in os.listdir(workdir):
        if name.startswith(prefix):
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _filled_store(path: str, blobs: list[bytes], compressed: bool) -> list[Any]:
    with FlatFileDb(path, use_compression=compressed) as db:
        return [loc for i in range(0, len(blobs), 256) for loc in db.put_many(blobs[i : i + 256])]


def _filled_peer(name: str, path: str, blobs: list[bytes]) -> list[bytes]:
    keys = [i.to_bytes(8, "big") for i in range(len(blobs))]
    store = BY_NAME[name].open(path)
    for i in range(0, len(blobs), 256):
        store.put_many(list(zip(keys[i : i + 256], blobs[i : i + 256])))
    store.close()
    return keys


def slice_cases(args: argparse.Namespace, workdir: str) -> list[SliceCase]:
    """Every way of reading the same random slices, raw group first, then compressed."""
    blobs, plain, frames, spans = _slice_data(args, workdir)
    rng = random.Random(args.seed + 1)
    picks = [(rng.randrange(len(blobs)), rng.randrange(SLICE_BLOB - SLICE)) for _ in range(_scaled(args, 20_000, 500))]
    cache = _scaled(args, 64 * MIB, MIB)
    raw_locs = _filled_store(_fresh(workdir, "slices-raw"), blobs, False)
    zst_locs = _filled_store(_fresh(workdir, "slices-zstd"), blobs, True)
    sliced = [Slice(at, at + SLICE) for _i, at in picks]
    cases = [
        SliceCase(
            "os.pread of the 256 B",
            BASELINE,
            "raw",
            _pread_opener(plain, SLICE),
            [i * SLICE_BLOB + at for i, at in picks],
        ),
        SliceCase(
            f"{OURS}, raw",
            ENGINE,
            "raw",
            _store_opener(os.path.join(workdir, "slices-raw"), False, cache),
            [(raw_locs[i], s) for (i, _at), s in zip(picks, sliced)],
        ),
    ]
    for name in _peers(args):
        keys = _filled_peer(name, _fresh(workdir, f"slices-{name}"), blobs)
        cases.append(
            SliceCase(
                f"{name}: get, then slice",
                PEER,
                "raw",
                _peer_opener(name, os.path.join(workdir, f"slices-{name}")),
                [(keys[i], at) for i, at in picks],
            )
        )
    cases += [
        SliceCase(
            "zstd frame per blob: pread, decompress, slice",
            BASELINE,
            "compressed",
            _frames_opener(frames, spans),
            picks,
        ),
        SliceCase(
            f"{OURS}, compressed, frame cache {cache // MIB} MiB",
            ENGINE,
            "compressed",
            _store_opener(os.path.join(workdir, "slices-zstd"), True, cache),
            [(zst_locs[i], s) for (i, _at), s in zip(picks, sliced)],
        ),
    ]
    return cases


def bench_slices(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], list[Result]]:
    """Measurement 1: per-call latency of random 256 B slices, every case in every round (alternating)."""
    cases = slice_cases(args, workdir)
    samples: dict[str, list[int]] = {case.name: [] for case in cases}
    whole: dict[str, list[float]] = {case.name: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            whole[case.name].append(_timed(case, samples[case.name]))
    _remove(workdir, "slices")  # 1.5 GiB of stores and files: not on disk during the measurements after this
    store_mib = _scaled(args, 256, 1)
    out: dict[str, Any] = {
        "name": f"random {SLICE} B slices of {SLICE_BLOB // KIB} KiB blobs, {store_mib} MiB store, page cache warm",
        "unit": "ns",
        "cases": [
            {
                "name": c.name,
                "role": c.role,
                "group": c.group,
                "whole_job_per_s": whole[c.name],
                **summary(samples[c.name]),
            }
            for c in cases
        ],
    }
    print(f"\n{out['name']}: per-call latency (us), {args.rounds} rounds of {len(cases[0].items):,} calls each;")
    print("whole job: calls per second from open to close (the latencies' loop included)")
    print("| case | p50 | p90 | p99 | p99.9 | max | whole job |\n|---|---|---|---|---|---|---|")
    for row in out["cases"]:
        cells = " | ".join(f"{row[q] / 1e3:,.1f}" for q in (*QUANTILES, "max"))
        print(f"| {row['name']} | {cells} | {statistics.median(row['whole_job_per_s']):,.0f}/s |")
    results = []
    for group in ("raw", "compressed"):
        base, ours = [c for c in cases if c.group == group and c.role != PEER]
        result = Result(f"256 B slices, {group}, whole job", "/s", base.name, whole[base.name], whole[ours.name])
        p99 = {row["name"]: row["p99"] / 1e3 for row in out["cases"]}
        result.extra = f"p99 per call: {p99[ours.name]:,.1f} us, baseline {p99[base.name]:,.1f} us"
        results.append(result)
    return out, results


class StreamSource(Source):
    """``Source`` with ``read`` too: ``shutil.copyfileobj`` reads, ``put_stream`` fills a buffer."""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (1 MiB when unbounded) of the stream."""
        buffer = bytearray(size if size > 0 else MIB)
        return bytes(buffer[: self.readinto(buffer)])


def _whole_value(source: StreamSource, size: int) -> bytearray:
    """The stream read into one buffer: what a store that takes a value needs."""
    value = bytearray(size)
    view, at = memoryview(value), 0
    while at < size:
        at += source.readinto(view[at:])
    return value


def _stream_copyfileobj(path: str, source: StreamSource, size: int) -> None:
    del size
    with open(path, "wb") as target:
        shutil.copyfileobj(source, target, MIB)


def _stream_engine(path: str, source: StreamSource, size: int, compressed: bool) -> None:
    with FlatFileDb(path, use_compression=compressed) as db:
        if db.put_stream(source).end_offset != size:
            raise RuntimeError("put_stream stored a different size")


def _stream_peer(path: str, source: StreamSource, size: int, name: str) -> None:
    store = BY_NAME[name].open(path)
    try:
        store.put(b"stream", _whole_value(source, size))
    finally:
        store.close()


STREAMERS: dict[str, Callable[[str, StreamSource, int], None]] = {
    "shutil.copyfileobj to a plain file": _stream_copyfileobj,
    f"{OURS}: put_stream, raw": functools.partial(_stream_engine, compressed=False),
    f"{OURS}: put_stream, compressed": functools.partial(_stream_engine, compressed=True),
    f"{LMDB}: put of the whole value": functools.partial(_stream_peer, name=LMDB),
    f"{SQLITE}: the whole value as one blob": functools.partial(_stream_peer, name=SQLITE),
}


def _rss_floor_kib() -> float:
    """Reset this process's peak RSS to its current RSS and return that (KiB), so that the peak read
    afterwards is the peak of what runs next. ``ru_maxrss`` cannot be reset, and would keep the
    interpreter's import-time peak, under which the first tens of MiB of a put would not show; Linux
    resets ``VmHWM`` on writing 5 to ``clear_refs``. Elsewhere: the peak so far (an underestimate)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        with open("/proc/self/status", encoding="ascii") as handle:
            return next(float(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return _peak_rss_kib()


def memory_child(name: str, workdir: str, size: int, seed: int) -> None:
    """In a fresh interpreter: store a ``size``-byte stream the ``name`` way; print seconds and peak RSS growth."""
    if name.startswith(LMDB):
        __import__("lmdb")  # its import is not the cost of the put
    path = os.path.join(workdir, "stream")
    source = StreamSource(size, seed)
    before = _rss_floor_kib()
    started = time.perf_counter()
    refused = None
    try:
        STREAMERS[name](path, source, size)
    except sqlite3.DataError as exc:  # a blob over SQLite's 1,000,000,000-byte limit
        refused = f"refused: {exc}"
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mib": (_peak_rss_kib() - before) / 1024, "refused": refused}))


def _memory_case(name: str, workdir: str, size: int, seed: int) -> dict[str, Any]:
    code = f"from benchmarks.bench_scaling import memory_child; memory_child({name!r}, {workdir!r}, {size}, {seed})"
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    _remove(workdir, "stream")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def bench_memory(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], list[Result]]:
    """Measurement 2: peak RSS growth of storing one stream, a fresh interpreter per case and round."""
    size = args.stream_mib * MIB
    names = list(STREAMERS)[:3] + [n for n in STREAMERS if n.split(":")[0] in _peers(args)]
    cases: dict[str, dict[str, Any]] = {name: {"peak_mib": [], "mb_s": [], "refused": None} for name in names}
    for _ in range(args.rounds):
        for name in names:
            found = _memory_case(name, workdir, size, args.seed)
            cases[name]["peak_mib"].append(found["peak_mib"])
            cases[name]["mb_s"].append(size / MIB / found["seconds"])
            cases[name]["refused"] = found["refused"]
    out: dict[str, Any] = {
        "name": f"one {args.stream_mib:,} MiB stream stored",
        "stream_mib": args.stream_mib,
        "cases": [{"name": name, "role": _role(name), **figures} for name, figures in cases.items()],
    }
    print(f"\n{out['name']}: peak RSS above the process's own after its imports (VmHWM reset then), whole job MB/s")
    print("| case | peak RSS growth | whole job |\n|---|---|---|")
    for row in out["cases"]:
        rate = row["refused"] or f"{statistics.median(row['mb_s']):,.0f} MB/s"
        print(f"| {row['name']} | {max(row['peak_mib']):,.1f} MiB | {rate} |")
    base, raw = cases[names[0]], cases[names[1]]
    result = Result(f"put_stream {args.stream_mib:,} MiB, raw, whole job", "MB/s", names[0], base["mb_s"], raw["mb_s"])
    result.extra = f"peak RSS growth {max(raw['peak_mib']):,.1f} MiB, baseline {max(base['peak_mib']):,.1f} MiB"
    return out, [result]


def _role(name: str) -> str:
    return ENGINE if name.startswith(OURS) else PEER if name.split(":")[0] in PEERS else BASELINE


def _open_writer(kind: str, target: str) -> tuple[Callable[[bytes], Any], Callable[[], None]]:
    """In a writer process: the put of one blob and the close, for the baseline, the store or a peer."""
    if kind == BASELINE:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return functools.partial(os.write, fd), functools.partial(os.close, fd)
    if kind == ENGINE:
        db = FlatFileDb(target)
        return db.put, db.close
    store = BY_NAME[kind].open(target)
    put, prefix, counter = store.put, os.getpid() << 32, iter(range(2**32))
    return (lambda blob: put((prefix | next(counter)).to_bytes(8, "big"), blob)), store.close


def _writer(kind: str, target: str, blob_bytes: int, seconds: float, barrier: Any, out: Any) -> None:
    """One writer process: puts for ``seconds`` after every writer is ready; reports count, p99 and max (ns)."""
    put, close = _open_writer(kind, target)
    blob = random.Random(os.getpid()).randbytes(blob_bytes)
    latencies: list[int] = []
    append, clock = latencies.append, time.perf_counter_ns
    barrier.wait()
    began = clock()
    stop = began + int(seconds * 1e9)
    while began < stop:
        put(blob)
        ended = clock()
        append(ended - began)
        began = ended
    close()
    latencies.sort()
    out.put((len(latencies), percentile(latencies, 0.99), latencies[-1]))


def _writers_round(kind: str, workdir: str, processes: int, blob_bytes: int, seconds: float) -> list[tuple[int, ...]]:
    """``processes`` writers of ``kind`` into one target at once; each one's (puts, p99 ns, max ns)."""
    ctx = multiprocessing.get_context("fork")
    target = _fresh(workdir, "writers")
    if kind not in (BASELINE, ENGINE):
        BY_NAME[kind].open(target).close()  # created (tables, WAL mode) before the clock starts
    elif kind == ENGINE:
        FlatFileDb(target).close()
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_writer, args=(kind, target, blob_bytes, seconds, barrier, out)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    stats = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    _remove(workdir, "writers")
    return stats


def _writer_series(args: argparse.Namespace, workdir: str, blob_bytes: int) -> list[dict[str, Any]]:
    kinds = [(BASELINE, "N processes appending to one file (O_APPEND)"), (ENGINE, OURS)]
    kinds += [(name, name) for name in _peers(args)]
    series: list[dict[str, Any]] = [
        {"name": label, "role": _role(label) if kind != BASELINE else BASELINE, "blob_bytes": blob_bytes, "points": []}
        for kind, label in kinds
    ]
    for processes in args.writers:
        points: list[dict[str, Any]] = [
            {"processes": processes, "puts_per_s": [], "shares": [], "worst_put_ms": 0.0, "p99_us": []} for _ in kinds
        ]
        for _ in range(args.rounds):
            for (kind, _label), point in zip(kinds, points):
                stats = _writers_round(kind, workdir, processes, blob_bytes, args.writer_seconds)
                total = sum(s[0] for s in stats)
                point["puts_per_s"].append(total / args.writer_seconds)
                point["shares"] = sorted(s[0] / total for s in stats)
                point["worst_put_ms"] = max(point["worst_put_ms"], max(s[2] for s in stats) / 1e6)
                point["p99_us"].append(max(s[1] for s in stats) / 1e3)
        for entry, point in zip(series, points):
            entry["points"].append(point)
    return series


def bench_writers(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], list[Result]]:
    """Measurement 3: 1..8 writer processes into one datadir, 1 KiB then 1 MiB blobs."""
    cores = os.cpu_count()
    out: dict[str, Any] = {
        "name": f"writer processes into one target, {args.writer_seconds:g} s each, {cores} cores",
        "cores": cores,
        "seconds": args.writer_seconds,
        "blobs": {str(size): _writer_series(args, workdir, size) for size in (KIB, MIB)},
    }
    print(f"\n{out['name']} (more processes than cores share them)")
    print("rates: puts made in the window by all processes (opens and closes outside it); latencies per call")
    print("| blob | N | store | puts/s | MB/s | shares (min..max) | worst put | p99 (worst process) |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for size, series in out["blobs"].items():
        for i, processes in enumerate(args.writers):
            for entry in series:
                point = entry["points"][i]
                rate = statistics.median(point["puts_per_s"])
                print(
                    f"| {int(size) // KIB:,} KiB | {processes} | {entry['name']} | {rate:,.0f} | "
                    f"{rate * int(size) / MIB:,.1f} | {point['shares'][0]:.2f}..{point['shares'][-1]:.2f} | "
                    f"{point['worst_put_ms']:,.1f} ms | {statistics.median(point['p99_us']):,.0f} us |"
                )
            base, ours = series[0]["points"][i], series[1]["points"][i]
            results.append(
                Result(
                    f"{processes} writer(s), {int(size) // KIB:,} KiB puts, window",
                    "puts/s",
                    series[0]["name"],
                    base["puts_per_s"],
                    ours["puts_per_s"],
                    extra=f"worst put {ours['worst_put_ms']:,.1f} ms",
                )
            )
    return out, results


class Grower:
    """One store (or the plain file) grown by 1 MiB puts, and read back by random 4 KiB reads."""

    def __init__(self, kind: str, path: str, blobs: list[bytes]) -> None:
        self.kind, self.blobs, self.size = kind, blobs, 0
        self.locations: list[Any] = []
        if kind == ENGINE:
            self.db: FlatFileDb | None = FlatFileDb(path)
            self.fd = -1
        else:
            self.db = None
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def grow(self, count: int) -> tuple[float, float]:
        """``count`` more 1 MiB puts: their MB/s and the worst single put (ms)."""
        clock, worst = time.perf_counter_ns, 0
        put = self.db.put if self.db is not None else functools.partial(os.write, self.fd)
        started = clock()
        for i in range(count):
            began = clock()
            location = put(self.blobs[i % len(self.blobs)])
            worst = max(worst, clock() - began)
            if self.db is not None:
                self.locations.append(location)
        elapsed = (clock() - started) / 1e9
        self.size += count * MIB
        return count / elapsed, worst / 1e6

    def reads(self, seconds: float, rng: random.Random) -> float:
        """Random 4 KiB reads (a slice of a random blob) over the whole store for ``seconds``: reads per second."""
        count = len(self.locations) if self.db is not None else self.size // MIB
        # Distinct random reads for as long as the page cache cannot hold the store (the rate is then low);
        # once a fast (cached) run has read them all it reads them again, which a cached store does not notice.
        picks = [(rng.randrange(count), rng.randrange(MIB // READ) * READ) for _ in range(READ_PICKS)]
        call, items = self._read_calls(picks)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            at = done % READ_PICKS
            for item in items[at : at + 256]:
                call(item)
            done += 256
        return done / (time.perf_counter() - started)

    def _read_calls(self, picks: list[tuple[int, int]]) -> tuple[Call, list[Any]]:
        """The timed call of one 4 KiB read, and its arguments for ``picks`` (blob, offset in it)."""
        if self.db is not None:
            get, locations = self.db.get, self.locations
            return (lambda item: get(item[0], item[1])), [(locations[i], Slice(at, at + READ)) for i, at in picks]
        pread, fd = os.pread, self.fd
        return (lambda offset: pread(fd, READ, offset)), [i * MIB + at for i, at in picks]

    def close(self) -> None:
        """Close the store or the file (the caller deletes them)."""
        if self.db is not None:
            self.db.close()
        else:
            os.close(self.fd)


def plan_sizes(max_units: int, unit: int, free: int) -> tuple[list[int], str]:
    """The store sizes to measure (bytes): 1, 2, 4, ... ``max_units`` units, the last cut to what ``free``
    bytes allow beside ``RESERVE_GIB``; and the note saying what the disk cut."""
    fits = (free - RESERVE_GIB * GIB) // unit
    sizes = [2**i for i in range(max_units.bit_length()) if 2**i <= max_units]
    if fits >= sizes[-1]:
        return [n * unit for n in sizes], ""
    kept = [n for n in sizes if n < fits] + ([fits] if fits >= 1 else [])
    grown = _size_label(kept[-1] * unit // MIB) if kept else "nothing"
    note = (
        f"disk: {free / GIB:,.1f} GiB free, {RESERVE_GIB} GiB kept free for the machine, so the store grew "
        f"to {grown} instead of {_size_label(max_units * unit // MIB)}"
    )
    return [n * unit for n in kept], note


def _grow_series(
    args: argparse.Namespace, workdir: str, kind: str, sizes: list[int]
) -> tuple[list[dict[str, Any]], str]:
    """Grow one store (or file) to each of ``sizes``, measuring the last unit's puts and then the reads at each;
    the points, and why it stopped early if it did (the free space is checked again before each step)."""
    if not sizes:  # no room for even one step: plan_sizes said so
        return [], ""
    rng = random.Random(args.seed)
    path = _fresh(workdir, f"grown-{kind.replace(' ', '-')}")
    grower = Grower(kind, path, [rng.randbytes(MIB) for _ in range(8)])
    unit, points, stopped = sizes[0], [], ""
    try:
        for size in sizes:
            free = shutil.disk_usage(workdir).free
            if free - (size - grower.size) < RESERVE_GIB * GIB:
                stopped = f"stopped before {_size_label(size // MIB)}: {free / GIB:,.1f} GiB free"
                break
            grower.grow((size - grower.size - unit) // MIB)  # to one unit below, untimed
            puts, worst = grower.grow(unit // MIB)
            gets = grower.reads(args.get_seconds, rng)
            points.append({"store_mib": grower.size // MIB, "put_mb_s": puts, "put_max_ms": worst, "get_per_s": gets})
            print(
                f"  {kind}: {_size_label(grower.size // MIB)}: last {unit // MIB:,} MiB of puts {puts:,.0f} MB/s "
                f"(worst put {worst:,.1f} ms), 4 KiB reads {gets:,.0f}/s",
                flush=True,
            )
    finally:
        grower.close()
        _remove(workdir, os.path.basename(path))
    return points, stopped


def _size_label(mib: int) -> str:
    return f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib} MiB"


def bench_store_size(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], list[Result]]:
    """Measurement 4: put and random-read rates as one store grows, beside a plain file grown the same way."""
    unit = _scaled(args, GIB, 4 * MIB)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    sizes, note = plan_sizes(args.max_store_gib, unit, shutil.disk_usage(workdir).free)
    print(
        f"\nstore size: grown by 1 MiB puts to {', '.join(_size_label(size // MIB) for size in sizes)}; RAM "
        f"{ram / GIB:,.1f} GiB, so the page cache stops holding the whole store near that size (less what other "
        f"processes use); one round (baseline, then this store: the disk holds one at a time)"
    )
    series: list[dict[str, Any]] = []
    stops = [note]
    for kind, label in ((BASELINE, "plain file, appends, os.pread reads"), (ENGINE, OURS)):
        points, stopped = _grow_series(args, workdir, kind, sizes)
        series.append({"name": label, "role": kind, "points": points})
        stops.append(f"{label}: {stopped}" if stopped else "")
    out: dict[str, Any] = {
        "name": f"store grown by 1 MiB puts; puts of the last {unit // MIB:,} MiB, random 4 KiB reads "
        f"for {args.get_seconds:g} s",
        "unit_mib": unit // MIB,
        "ram_gib": round(ram / GIB, 1),
        "stopped": "; ".join(s for s in stops if s),
        "series": series,
    }
    print("| size | baseline puts | store puts (worst put) | baseline reads | store reads |\n|---|---|---|---|---|")
    for base, ours in zip(series[0]["points"], series[1]["points"]):
        print(
            f"| {_size_label(base['store_mib'])} | {base['put_mb_s']:,.0f} MB/s | {ours['put_mb_s']:,.0f} MB/s "
            f"({ours['put_max_ms']:,.0f} ms) | {base['get_per_s']:,.0f}/s | {ours['get_per_s']:,.0f}/s |"
        )
    if out["stopped"]:
        print(out["stopped"])
    results = [
        Result(
            f"4 KiB random reads at {_size_label(b['store_mib'])} (window, 1 round)",
            "/s",
            series[0]["name"],
            [b["get_per_s"]],
            [o["get_per_s"]],
        )
        for b, o in zip(series[0]["points"], series[1]["points"])
    ]
    return out, results


def body(args: argparse.Namespace, workdir: str) -> list[Result]:
    """The four measurements in order; the JSON when asked for."""
    document: dict[str, Any] = {"machine": machine(workdir)}
    print("machine: " + ", ".join(f"{key} {value}" for key, value in document["machine"].items()))
    results: list[Result] = []
    for key, bench in (
        ("slices", bench_slices),
        ("memory", bench_memory),
        ("writers", bench_writers),
        ("store_size", bench_store_size),
    ):
        document[key], found = bench(args, workdir)
        results += found
    document["machine"]["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
    print("\nsummary: whole-job and window rates beside their baselines (ratio: median of per-round ratios)")
    return results


def add_scaling_options(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options (``benchmarks.run`` hands them to it alone)."""
    parser.add_argument("--stream-mib", type=int, default=1024, help="size of the streamed put (MiB)")
    parser.add_argument("--writer-seconds", type=float, default=1.5, help="how long each writer round puts")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8], help="writer process counts")
    parser.add_argument("--max-store-gib", type=int, default=32, help="largest store size (stops early on a full disk)")
    parser.add_argument("--get-seconds", type=float, default=3.0, help="how long the reads at each store size run")


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the four scaling measurements (``--peers`` adds LMDB and SQLite, ``--json`` writes the figures)."""
    own = argparse.ArgumentParser(add_help=False)
    add_scaling_options(own)
    own.add_argument("--peers", action="store_true")
    own.add_argument("--smoke", action="store_true", help="tiny sizes: the run works, its figures mean nothing")
    own.add_argument("--json", default=None, help="write every figure to this JSON file (for benchmarks.plots)")
    options, rest = own.parse_known_args(argv)

    def run(args: argparse.Namespace, workdir: str) -> list[Result]:
        for key, value in vars(options).items():
            setattr(args, key, value)
        return body(args, workdir)

    return run_benchmark(__doc__ or "", rest, run)


if __name__ == "__main__":
    main(sys.argv[1:])
