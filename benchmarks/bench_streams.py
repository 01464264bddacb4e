"""Streams, bulk reads and zero-copy views vs the physical baseline.

- put_stream of a large blob: MiB/s vs raw sequential os.write of the same bytes, and the
  peak RSS of the process that streams it (measured in a fresh child process);
- get_many of 1,000 random 1 KiB blobs vs a loop of os.pread on one open file;
- get_view + a 256-byte slice of it vs os.pread of the same 256 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice

from .common import Result, rounds, run_benchmark

KIB = 1024
MIB = 2**20


class Source:
    """A readable of ``size`` bytes cycling through a 4 MiB random block (holds 4 MiB, never more)."""

    def __init__(self, size: int, seed: int) -> None:
        self.left = size
        self.block = random.Random(seed).randbytes(4 * MIB)
        self.at = 0

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` from the block."""
        view = memoryview(buffer)
        count = min(len(view), self.left, len(self.block) - self.at)
        view[:count] = self.block[self.at : self.at + count]
        self.at = (self.at + count) % len(self.block)
        self.left -= count
        return count


def child(kind: str, workdir: str, size: int, seed: int) -> None:
    """Run in a fresh interpreter: stream ``size`` bytes one way, print JSON with rate and peak RSS."""
    source = Source(size, seed)
    started = time.perf_counter()
    if kind == "raw":
        path = os.path.join(workdir, "raw_stream.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        buffer = bytearray(4 * MIB)
        view = memoryview(buffer)
        while True:
            count = source.readinto(buffer)
            if not count:
                break
            written = 0
            while written < count:
                written += os.write(fd, view[written:count])
        os.close(fd)
        elapsed = time.perf_counter() - started
        os.unlink(path)
    else:
        store = os.path.join(workdir, "stream_store")
        db = FlatFileDb(store, store + ".lock", use_compression=kind == "zstd")
        location = db.put_stream(source)
        elapsed = time.perf_counter() - started
        assert location.end_offset == size
        db.close()
        shutil.rmtree(store)
    print(json.dumps({"mib_s": size / MIB / elapsed, "peak_mib": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss of a forked-then-exec'd child starts from its parent's."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _run_child(kind: str, workdir: str, size: int, seed: int) -> dict[str, float]:
    code = f"from benchmarks.bench_streams import child; child({kind!r}, {workdir!r}, {size}, {seed})"
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_put_stream(args: argparse.Namespace, workdir: str) -> list[Result]:
    """put_stream of a big blob vs raw sequential write; peak RSS of the streaming process."""
    size = (256 if args.quick else 2048) * MIB
    peaks: list[float] = []

    def raw() -> float:
        return _run_child("raw", workdir, size, args.seed)["mib_s"]

    def engine() -> float:
        out = _run_child("engine", workdir, size, args.seed)
        peaks.append(out["peak_mib"])
        return out["mib_s"]

    result = rounds(
        Result(f"put_stream {size // MIB} MiB", "MiB/s", "raw sequential write", goal=0.8), args.rounds, raw, engine
    )
    result.extra = f"peak RSS {max(peaks):.0f} MiB (goal < 64 MiB)"
    zsize = size // 4
    zstd = _run_child("zstd", workdir, zsize, args.seed)
    result.extra += (
        f"; compressed put_stream of {zsize // MIB} MiB: {zstd['mib_s']:,.0f} MiB/s, "
        f"peak RSS {zstd['peak_mib']:.0f} MiB"
    )
    return [result]


def _bulk_fixture(workdir: str, rng: random.Random, count: int) -> tuple[str, list[DataLocation], str]:
    """A store of ``count`` 1 KiB blobs in 32 MiB sealed segments, and the same bytes in one file."""
    path = os.path.join(workdir, "bulk")
    db = FlatFileDb(path, path + ".lock")
    blobs = [rng.randbytes(KIB) for _ in range(256)]
    db.MAX_DAT_FILE_SIZE = 32 * MIB
    locations = db.put_many(blobs[i % 256] for i in range(count))
    db.rotate()
    db.close()
    raw_path = os.path.join(workdir, "bulk_raw.bin")
    with open(raw_path, "wb") as handle:
        for i in range(count):
            handle.write(blobs[i % 256])
    return path, locations, raw_path


def bench_get_many(
    args: argparse.Namespace, path: str, locations: list[DataLocation], raw_path: str, rng: random.Random
) -> Result:
    """get_many of 1,000 random 1 KiB blobs vs a loop of os.pread on one open file."""
    count = len(locations)
    batches = [rng.sample(range(count), 1000) for _ in range(20)]

    def pread_loop() -> float:
        fd = os.open(raw_path, os.O_RDONLY)
        started = time.perf_counter()
        for batch in batches:
            for i in batch:
                os.pread(fd, KIB, i * KIB)
        elapsed = time.perf_counter() - started
        os.close(fd)
        return len(batches) * 1000 / elapsed

    picked = [[locations[i] for i in batch] for batch in batches]
    others = [[locations[i] for i in rng.sample(range(count), 1000)] for _ in batches]
    store = FlatFileDb(path, path + ".lock")
    first_pass: list[float] = []

    def timed_get_many(which: list[list[DataLocation]]) -> float:
        started = time.perf_counter()
        for batch in which:
            store.get_many(batch)
        return len(which) * 1000 / (time.perf_counter() - started)

    def get_many() -> float:
        """Steady state, the store open as the baseline's file is: a freshly opened store
        first reads other random blobs (that pass, which also builds the mappings' page
        tables, is reported on its own), then the timed batches."""
        nonlocal store
        store.close()
        store = FlatFileDb(path, path + ".lock")
        first_pass.append(timed_get_many(others))
        return timed_get_many(picked)

    result = rounds(
        Result("get_many(1000) random 1 KiB", "blobs/s", "os.pread loop", goal=1.2), args.rounds, pread_loop, get_many
    )
    store.close()
    result.extra = (
        f"store kept open; first pass after opening {statistics.median(first_pass):,.0f} blobs/s "
        f"({statistics.median(first_pass) / statistics.median(result.baseline):.2f}x), "
        "page tables included"
    )
    return result


def bench_views(
    args: argparse.Namespace, path: str, locations: list[DataLocation], raw_path: str, rng: random.Random
) -> Result:
    """get_view + a 256-byte slice of it vs os.pread of the same 256 bytes."""
    count = len(locations)
    slices = [(rng.randrange(count), rng.randrange(KIB - 256)) for _ in range(50_000)]

    def pread_slices() -> float:
        fd = os.open(raw_path, os.O_RDONLY)
        started = time.perf_counter()
        for i, at in slices:
            os.pread(fd, 256, i * KIB + at)
        elapsed = time.perf_counter() - started
        os.close(fd)
        return len(slices) / elapsed

    def view_slices() -> float:
        store = FlatFileDb(path, path + ".lock")
        picked = [(locations[i], Slice(at, at + 256)) for i, at in slices]
        started = time.perf_counter()
        for location, part in picked:
            store.get_view(location, part)
        elapsed = time.perf_counter() - started
        store.close()
        return len(slices) / elapsed

    return rounds(
        Result("get_view + 256 B slice", "ops/s", "os.pread 256 B", goal=0.9), args.rounds, pread_slices, view_slices
    )


def bench_bulk_and_views(args: argparse.Namespace, workdir: str) -> list[Result]:
    """get_many and get_view + slice over 100,000 1 KiB blobs, both vs os.pread."""
    rng = random.Random(args.seed)
    path, locations, raw_path = _bulk_fixture(workdir, rng, 100_000)
    out = [bench_get_many(args, path, locations, raw_path, rng), bench_views(args, path, locations, raw_path, rng)]
    os.unlink(raw_path)
    shutil.rmtree(path)
    return out


def main(argv: list[str] | None = None) -> list[Result]:
    """Run these benchmarks and print the table."""
    return run_benchmark(
        __doc__ or "", argv, lambda args, workdir: bench_put_stream(args, workdir) + bench_bulk_and_views(args, workdir)
    )


if __name__ == "__main__":
    main()
