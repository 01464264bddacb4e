"""Whole jobs as a user's program runs them, each beside the plain alternative a user would write instead.

Every engine figure is a whole job: ``FlatFileDb(...)`` opened, every put or get made, and
``close()`` returned (rates count the data of the job over that time). Each baseline is timed the
same way: its file opened, every write or read made, the file closed. Rounds alternate baseline and
engine; the ratio is the median of the per-round ratios.

- 1 MiB puts, raw: one file opened with ``O_APPEND``, one ``os.write`` per blob;
- 1 MiB puts, compressed: zstandard level 3, one frame per blob, appended to one file, one thread;
  the engine's on-disk size is printed beside the baseline's;
- ``put_many(1000)`` of 1 KiB: one ``os.writev`` of the 1,000 blobs per batch;
- ``put()`` of 1 KiB into a compressed store against the same puts into a raw store;
- ``get()`` of 1 KiB, random, from a compressed store whose frame cache holds a quarter of the
  data, against one zstandard frame per blob read with ``os.pread`` and decompressed.

The 1 MiB jobs use the W1 mix (half random blobs, half log-like text) by default, and
blockchain-like blocks with ``--data blocks``.

``--peers`` adds, for the raw 1 MiB job, ``put_many(1000)`` of 1 KiB and random gets of 1 KiB,
the stores a user would pick instead (each a whole job in its own directory, the same data, keys
``0..n-1`` as 8-byte big-endian integers where the store takes keys; see ``keyed_stores``), and
one file per blob. A peer that does not import here is listed as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import zstandard

from conduit_flat_file_db import FlatFileDb

from .common import Result, blockchain_like, rounds, run_benchmark, text_like
from .keyed_stores import ALL_STORES, KEYED_NAMES, BenchStore

KIB = 1024
MIB = 2**20


def _size(args: argparse.Namespace, full: int) -> int:
    """A count or byte size of the full run, an eighth of it with --quick, a 64th with --smoke."""
    return full // 64 if args.smoke else full // 8 if args.quick else full


def _fresh(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.startswith("data_"))


def big_blobs(kind: str, total: int, rng: random.Random) -> list[bytes]:
    """``total`` bytes of 1 MiB blobs: 32 distinct ones, repeated (generating text is slow)."""
    if kind == "blocks":
        distinct = [blockchain_like(MIB, rng) for _ in range(min(32, total // MIB))]
    else:
        distinct = [rng.randbytes(MIB) if i % 2 else text_like(MIB, rng) for i in range(min(32, total // MIB))]
    return [distinct[i % len(distinct)] for i in range(total // MIB)]


def _engine_job(path: str, blobs: list[bytes], compressed: bool, batch: int = 0) -> float:
    """Seconds from open to ``close()`` for puts of ``blobs`` (one at a time, or ``put_many`` batches)."""
    started = time.perf_counter()
    db = FlatFileDb(path, use_compression=compressed)
    if batch:
        for i in range(0, len(blobs), batch):
            db.put_many(blobs[i : i + batch])
    else:
        put = db.put
        for blob in blobs:
            put(blob)
    db.close()
    return time.perf_counter() - started


def bench_big_puts(args: argparse.Namespace, workdir: str, blobs: list[bytes], compressed: bool) -> Result:
    """1 MiB puts, whole job, raw or compressed, against the plain append (zstd-compressed when ``compressed``)."""
    total = sum(map(len, blobs))
    sizes: dict[str, int] = {}
    synced: list[float] = []  # raw: the same appends, then one fsync before the close

    def append(sync: bool) -> float:
        path = _fresh(workdir, "append.bin")
        cctx = zstandard.ZstdCompressor(level=3)
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for blob in blobs:
            os.write(fd, cctx.compress(blob) if compressed else blob)
        if sync:
            os.fsync(fd)
        os.close(fd)
        elapsed = time.perf_counter() - started
        sizes["baseline"] = os.path.getsize(path)
        os.unlink(path)
        return total / MIB / elapsed

    def baseline() -> float:
        if not compressed:
            synced.append(append(True))
        return append(False)

    def engine() -> float:
        path = _fresh(workdir, "db")
        elapsed = _engine_job(path, blobs, compressed)
        sizes["engine"] = _dir_bytes(path)
        shutil.rmtree(path)
        return total / MIB / elapsed

    name = f"1 MiB puts, {'compressed' if compressed else 'raw'}, whole job ({args.data})"
    base_name = "zstd-3 frame per blob, appended" if compressed else "one file, appends"
    result = rounds(Result(name, "MB/s", base_name, goal=1.2 if compressed else 0.9), args.rounds, baseline, engine)
    if compressed:
        result.extra = f"on disk: engine {sizes['engine'] / MIB:,.0f} MiB, baseline {sizes['baseline'] / MIB:,.0f} MiB"
    else:
        result.extra = f"the appends and one fsync before the close: {statistics.median(synced):,.0f} MB/s"
    return result


def bench_small_put_many(args: argparse.Namespace, workdir: str) -> Result:
    """put_many(1000) of 1 KiB, whole job, against one writev per batch."""
    rng = random.Random(args.seed)
    count = _size(args, 200_000)
    blobs = [rng.randbytes(KIB) for _ in range(count)]

    def baseline() -> float:
        path = _fresh(workdir, "writev.bin")
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for i in range(0, count, 1000):
            os.writev(fd, blobs[i : i + 1000])
        os.close(fd)
        elapsed = time.perf_counter() - started
        os.unlink(path)
        return count / elapsed

    def engine() -> float:
        path = _fresh(workdir, "db")
        elapsed = _engine_job(path, blobs, False, batch=1000)
        shutil.rmtree(path)
        return count / elapsed

    return rounds(
        Result("put_many(1000) of 1 KiB, whole job", "/s", "one writev per batch", goal=0.6),
        args.rounds,
        baseline,
        engine,
    )


def bench_small_compressed_puts(args: argparse.Namespace, workdir: str) -> Result:
    """put() of 1 KiB, whole job, compressed store against raw store."""
    rng = random.Random(args.seed)
    count = _size(args, 200_000)
    blobs = [text_like(KIB, rng) for _ in range(256)]
    data = [blobs[i % len(blobs)] for i in range(count)]

    def job(compressed: bool) -> Callable[[], float]:
        def run() -> float:
            path = _fresh(workdir, "db")
            elapsed = _engine_job(path, data, compressed)
            shutil.rmtree(path)
            return count / elapsed

        return run

    return rounds(
        Result("put() of 1 KiB, compressed store, whole job", "/s", "put() into a raw store", goal=0.5),
        args.rounds,
        job(False),
        job(True),
    )


def bench_small_compressed_gets(args: argparse.Namespace, workdir: str) -> Result:
    """get() of 1 KiB, random over the data, frame cache a quarter of it, against a zstd frame per blob."""
    rng = random.Random(args.seed)
    total = _size(args, 256 * MIB)
    count = total // KIB
    distinct = [text_like(KIB, rng) for _ in range(256)]
    reads = _size(args, 200_000)
    order = [rng.randrange(count) for _ in range(reads)]
    base_path = _fresh(workdir, "frames.bin")
    cctx = zstandard.ZstdCompressor(level=3)
    spans: list[tuple[int, int]] = []
    with open(base_path, "wb") as handle:
        for i in range(count):
            frame = cctx.compress(distinct[i % 256])
            spans.append((handle.tell(), len(frame)))
            handle.write(frame)
    db_path = _fresh(workdir, "db")
    with FlatFileDb(db_path, use_compression=True) as db:
        locations = []
        for i in range(0, count, 1000):
            locations += db.put_many([distinct[j % 256] for j in range(i, min(count, i + 1000))])

    def baseline() -> float:
        dctx = zstandard.ZstdDecompressor()
        started = time.perf_counter()
        fd = os.open(base_path, os.O_RDONLY)
        for i in order:
            offset, size = spans[i]
            dctx.decompress(os.pread(fd, size, offset))
        os.close(fd)
        return reads / (time.perf_counter() - started)

    def engine() -> float:
        started = time.perf_counter()
        with FlatFileDb(db_path, use_compression=True, frame_cache_bytes=total // 4) as db:
            get = db.get
            for i in order:
                get(locations[i])
        return reads / (time.perf_counter() - started)

    name = f"get() of 1 KiB, compressed store, random over {total // MIB} MiB, cache 1/4, whole job"
    return rounds(
        Result(name, "/s", "zstd frame per blob, pread + decompress", goal=0.8), args.rounds, baseline, engine
    )


PEER_KINDS = [kind for kind in ALL_STORES if kind.name not in KEYED_NAMES]


def _peer_job(kind_open: Callable[[str], BenchStore], path: str, values: list[bytes], batch: int) -> float:
    """Seconds from open to close for one peer storing ``values`` (one at a time, or batches)."""
    keys = [i.to_bytes(8, "big") for i in range(len(values))]
    started = time.perf_counter()
    store = kind_open(path)
    if batch > 1:
        for i in range(0, len(values), batch):
            store.put_many(list(zip(keys[i : i + batch], values[i : i + batch])))
    elif store.takes_key:
        put = store.put
        for key, value in zip(keys, values):
            put(key, value)
    else:
        for value in values:
            store.put(value)
    store.close()
    return time.perf_counter() - started


def _files_job(path: str, values: list[bytes]) -> float:
    """Seconds to write each value to a file of its own (the peer a user writes in ten lines)."""
    started = time.perf_counter()
    os.makedirs(path)
    for i, value in enumerate(values):
        fd = os.open(os.path.join(path, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, value)
        os.close(fd)
    return time.perf_counter() - started


def peer_puts(args: argparse.Namespace, workdir: str, name: str, values: list[bytes], batch: int) -> PeerTable:
    """Whole-job put rates of every peer beside the engine's, for ``values`` (rounds alternate stores)."""
    big = len(values[0]) >= MIB
    unit = sum(map(len, values)) / MIB if big else len(values)
    table = PeerTable(name, "MB/s" if big else "/s")
    for _ in range(args.rounds):
        path = _fresh(workdir, "peer")
        table.add(OURS, unit / _engine_job(path, values, False, batch))
        shutil.rmtree(path, ignore_errors=True)
        for kind in PEER_KINDS[1:]:  # [0] is the engine itself
            if kind.missing():
                continue
            table.add(kind.name, unit / _peer_job(kind.open, path, values, batch))
            shutil.rmtree(path, ignore_errors=True)
        table.add("one file per blob", unit / _files_job(path, values))
        shutil.rmtree(path, ignore_errors=True)
    return table


OURS = "this store (FlatFileDb)"


@dataclass
class PeerTable:
    """One workload's whole-job rates per store (every round), ours first."""

    name: str
    unit: str
    rates: dict[str, list[float]] = field(default_factory=dict)

    def add(self, store: str, rate: float) -> None:
        """Record one round of ``store``."""
        self.rates.setdefault(store, []).append(rate)

    def medians(self) -> dict[str, float]:
        """Median rate per store."""
        return {store: statistics.median(values) for store, values in self.rates.items()}

    def markdown(self) -> str:
        """The table as printed: rate and ratio (this store / peer) per store, and who was not measured."""
        medians = self.medians()
        ours = medians[OURS]
        lines = [f"{self.name} (whole jobs; ratio: this store / peer)", "| store | rate | ratio |", "|---|---|---|"]
        lines += [f"| {store} | {rate:,.0f} {self.unit} | {ours / rate:.2f} |" for store, rate in medians.items()]
        missing = [f"{kind.name} ({why})" for kind in PEER_KINDS for why in [kind.missing()] if why]
        if missing:
            lines.append(f"not measured: {'; '.join(missing)}")
        return "\n".join(lines)


def peer_gets(args: argparse.Namespace, workdir: str) -> PeerTable:
    """Random get() of 1 KiB values, open to close, every peer beside the engine (raw store)."""
    rng = random.Random(args.seed)
    count = _size(args, 100_000)
    values = [rng.randbytes(KIB) for _ in range(count)]
    order = [rng.randrange(count) for _ in range(count)]
    table = PeerTable(f"get() of 1 KiB, random over {count:,} values", "/s")
    stores = [(OURS, PEER_KINDS[0])] + [(k.name, k) for k in PEER_KINDS[1:] if not k.missing()]
    for name, kind in stores:
        path = _fresh(workdir, "peer")
        store = kind.open(path)
        keys = [i.to_bytes(8, "big") for i in range(count)]
        handles: list[object] = []
        for i in range(0, count, 1000):
            made = store.put_many(list(zip(keys[i : i + 1000], values[i : i + 1000])))
            handles += keys[i : i + 1000] if store.handles_are_keys else made
        store.close()
        for _ in range(args.rounds):
            started = time.perf_counter()
            store = kind.open(path)
            get = store.get
            for i in order:
                get(handles[i])
            store.close()
            table.add(name, count / (time.perf_counter() - started))
        shutil.rmtree(path, ignore_errors=True)
    return table


def body(args: argparse.Namespace, workdir: str) -> list[Result]:
    """Every whole-job benchmark, in the order of the module docstring."""
    rng = random.Random(args.seed)
    blobs = big_blobs(args.data, _size(args, 512 * MIB), rng)
    results = [
        bench_big_puts(args, workdir, blobs, compressed=False),
        bench_big_puts(args, workdir, blobs, compressed=True),
        bench_small_put_many(args, workdir),
        bench_small_compressed_puts(args, workdir),
        bench_small_compressed_gets(args, workdir),
    ]
    peers: list[PeerTable] = []
    if args.peers:
        small = [random.Random(args.seed).randbytes(KIB) for _ in range(_size(args, 100_000))]
        peers.append(peer_puts(args, workdir, f"1 MiB puts, raw ({args.data})", blobs, 1))
        peers.append(peer_puts(args, workdir, "put_many(1000) of 1 KiB", small, 1000))
        peers.append(peer_gets(args, workdir))
        for table in peers:
            print(table.markdown())
    if args.json:
        write_json(args.json, results, peers)
    return results


def write_json(path: str, results: list[Result], peers: list[PeerTable]) -> None:
    """Every figure of the run, for ``benchmarks.plots``: each job against its baseline, each peer table."""
    document = {
        "jobs": [
            {
                "name": r.name,
                "unit": r.unit,
                "baseline_name": r.baseline_name,
                "baseline": r.baseline,
                "engine": r.engine,
                "goal": r.goal,
                "ratio": r.ratio,
            }
            for r in results
        ],
        "peers": [{"name": t.name, "unit": t.unit, "rates": t.rates} for t in peers],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the whole-job benchmarks; ``--data blocks`` for blockchain-like 1 MiB blobs."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--data", choices=("w1", "blocks"), default="w1")
    own.add_argument("--peers", action="store_true")
    own.add_argument("--smoke", action="store_true", help="tiny sizes: the run works, its figures mean nothing")
    own.add_argument("--json", default=None, help="write every figure to this JSON file (for benchmarks.plots)")
    options, rest = own.parse_known_args(argv)

    def run(args: argparse.Namespace, workdir: str) -> list[Result]:
        args.data, args.peers, args.json, args.smoke = options.data, options.peers, options.json, options.smoke
        return body(args, workdir)

    return run_benchmark(__doc__ or "", rest, run)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
