"""Compressed segments vs zstandard alone on the same bytes.

- 1 MiB puts into a compressed store vs single-thread zstandard streaming compression;
- random 256-byte slices from compressed 1 MiB blobs with a frame cache smaller than the
  data (slices/s, p50/p99) vs os.pread of the same slices from a raw copy;
- on-disk size at the default frame size vs each whole segment as one frame;
- 1 KiB single puts into a compressed store: rate across the segment (flat?) and the
  on-disk size of the sealed segment vs the same bytes in default-size frames;
- the frame-size trade-off table (ratio vs slice latency) for two kinds of data.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import zstandard

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.frames import DEFAULT_MIN_SAVING
from conduit_flat_file_db.store import DEFAULT_FRAME_BYTES

from .common import Result, base_parser, blockchain_like, conditions, percentile, rounds, table, text_like

KIB = 1024
MIB = 2**20


def _fresh(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _disk_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(path, n))
        for n in os.listdir(path)
        if n.startswith("data_") and not n.endswith(".idx")
    )


def bench_big_puts(args: argparse.Namespace, workdir: str, data: list[bytes]) -> Result:
    """1 MiB compressed puts (MiB/s) vs zstandard streaming compression of the same bytes, one thread."""

    def baseline() -> float:
        cctx = zstandard.ZstdCompressor(level=3)
        sink = open(os.devnull, "wb")  # pylint: disable=consider-using-with  # closed below
        started = time.perf_counter()
        with cctx.stream_writer(sink, closefd=False) as writer:
            for blob in data:
                writer.write(blob)
        elapsed = time.perf_counter() - started
        sink.close()
        return len(data) / elapsed

    def engine() -> float:
        path = _fresh(workdir, "zstore")
        db = FlatFileDb(path, path + ".lock", use_compression=True)
        started = time.perf_counter()
        for blob in data:
            db.put(blob)
        elapsed = time.perf_counter() - started
        db.close()
        return len(data) / elapsed

    return rounds(
        Result("put 1 MiB compressed", "MiB/s", "zstandard 1 thread", goal=1.5), args.rounds, baseline, engine
    )


def _slice_latencies(db: FlatFileDb, locations: list[DataLocation], rng: random.Random, count: int) -> list[float]:
    from conduit_flat_file_db import Slice  # pylint: disable=import-outside-toplevel

    picks = []
    for _ in range(count):
        loc = rng.choice(locations)
        start = rng.randrange(0, loc.end_offset - loc.start_offset - 256)
        picks.append((loc, Slice(start, start + 256)))
    out = []
    clock = time.perf_counter_ns
    get = db.get
    for loc, part in picks:
        began = clock()
        get(loc, part)
        out.append((clock() - began) / 1e3)
    return out


def bench_slices(
    args: argparse.Namespace,
    workdir: str,
    data: list[bytes],
    frame_bytes: int,  # pylint: disable=too-many-arguments
    label: str,
    min_saving: float = DEFAULT_MIN_SAVING,
) -> tuple[Result, float, float]:
    """Random 256 B slices of compressed 1 MiB blobs, cache a quarter of the data."""
    path = _fresh(workdir, "slices")
    db = FlatFileDb(path, path + ".lock", use_compression=True, frame_bytes=frame_bytes, min_frame_saving=min_saving)
    db.MAX_DAT_FILE_SIZE = 64 * MIB
    locations = db.put_many(data)
    db.rotate()  # seal (and re-frame) the last segment: every segment measured as it stays
    db.close()
    raw_path = os.path.join(workdir, "slices_raw.bin")
    with open(raw_path, "wb") as handle:
        for blob in data:
            handle.write(blob)
    rng = random.Random(args.seed)
    count = 10_000
    offsets = [rng.randrange(0, len(data) * MIB - 256) for _ in range(count)]
    p50s: list[float] = []
    p99s: list[float] = []

    def baseline() -> float:
        fd = os.open(raw_path, os.O_RDONLY)
        started = time.perf_counter()
        for offset in offsets:
            os.pread(fd, 256, offset)
        elapsed = time.perf_counter() - started
        os.close(fd)
        return count / elapsed

    def engine() -> float:
        store = FlatFileDb(path, path + ".lock", frame_cache_bytes=len(data) * MIB // 4)
        started = time.perf_counter()
        latencies = sorted(_slice_latencies(store, locations, rng, count))
        elapsed = time.perf_counter() - started
        store.close()
        p50s.append(percentile(latencies, 0.5))
        p99s.append(percentile(latencies, 0.99))
        return count / elapsed

    result = rounds(Result(f"256 B slices, {label}", "slices/s", "os.pread raw copy"), args.rounds, baseline, engine)
    result.extra = f"p50 {min(p50s):.0f} us, p99 {min(p99s):.0f} us (best round); goal >= 50,000/s, p99 < 100 us"
    os.unlink(raw_path)
    on_disk = _disk_bytes(path)
    shutil.rmtree(path)
    return result, on_disk, statistics_median(p99s)


def statistics_median(values: list[float]) -> float:
    """Median without importing statistics at each call site."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def one_frame_bytes(data: list[bytes], segment_bytes: int) -> int:
    """Each segment's bytes compressed as one frame (the ratio ceiling for our layout)."""
    cctx = zstandard.ZstdCompressor(level=3)
    joined = b"".join(data)
    return sum(len(cctx.compress(joined[i : i + segment_bytes])) for i in range(0, len(joined), segment_bytes))


def bench_small_puts(args: argparse.Namespace, workdir: str, make: Callable[[int, random.Random], bytes]) -> str:
    """1 KiB single compressed puts through one whole segment: rate by tenth, then sealed size."""
    rng = random.Random(args.seed)
    segment = (8 if args.quick else 32) * MIB
    blobs = [make(KIB, rng) for _ in range(segment // KIB)]
    path = _fresh(workdir, "small")
    db = FlatFileDb(path, path + ".lock", use_compression=True)
    db.MAX_DAT_FILE_SIZE = segment
    tenth = len(blobs) // 10
    rates = []
    for part in range(10):
        started = time.perf_counter()
        for blob in blobs[part * tenth : (part + 1) * tenth]:
            db.put(blob)
        rates.append(tenth / (time.perf_counter() - started))
    db.rotate()  # seals and re-frames segment 0
    sealed = os.path.getsize(os.path.join(path, "data_00000000.dat.zst"))
    db.close()
    reference_dir = _fresh(workdir, "reference")
    ref = FlatFileDb(reference_dir, reference_dir + ".lock", use_compression=True)
    ref.MAX_DAT_FILE_SIZE = segment
    ref.put(b"".join(blobs))
    ref.rotate()
    reference = os.path.getsize(os.path.join(reference_dir, "data_00000000.dat.zst"))
    ref.close()
    shutil.rmtree(path)
    shutil.rmtree(reference_dir)
    return (
        f"1 KiB compressed put: {min(rates):,.0f}..{max(rates):,.0f} ops/s over the tenths of a "
        f"{segment // MIB} MiB segment (first {rates[0]:,.0f}, last {rates[-1]:,.0f}; goal >= 20,000/s, flat); "
        f"sealed segment {sealed:,} bytes vs the same bytes in default frames {reference:,} "
        f"({sealed / reference:.3f}x; goal within 1.10x)"
    )


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the compression benchmarks and print the tables."""
    parser = base_parser(__doc__ or "")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="ffdb-bench-", dir=args.dir or str(Path(__file__).resolve().parent.parent))
    try:
        print(conditions(args, workdir))
        rng = random.Random(args.seed)
        total_mib = 64 if args.quick else 256
        chain = [blockchain_like(MIB, rng) for _ in range(total_mib)]
        results = [bench_big_puts(args, workdir, chain)]
        slices, on_disk, _p99 = bench_slices(args, workdir, chain, DEFAULT_FRAME_BYTES, "blockchain-like")
        results.append(slices)
        print(table(results))
        ceiling = one_frame_bytes(chain, 64 * MIB)
        print(
            f"\non-disk size at the default frame size ({DEFAULT_FRAME_BYTES // KIB} KiB) vs each 64 MiB segment "
            f"as one frame: {on_disk:,} vs {ceiling:,} bytes = {on_disk / ceiling:.3f}x (goal within 1.10x)"
        )
        print(bench_small_puts(args, workdir, blockchain_like))
        print("\nframe size trade-off (slices: 256 B, frame cache a quarter of the data):")
        print("| frame | data | size vs one frame per segment | slices/s | p99 |\n|---|---|---|---|---|")
        text = [text_like(MIB, rng) for _ in range(total_mib // 4)]
        args.rounds = 1
        for frame in (16 * KIB, 32 * KIB, 64 * KIB, 128 * KIB, 256 * KIB, MIB):
            for label, data in (("blockchain-like", chain[: total_mib // 4]), ("text-like", text)):
                res, disk, p99 = bench_slices(args, workdir, data, frame, label)
                print(
                    f"| {frame // KIB} KiB | {label} | {disk / one_frame_bytes(data, 64 * MIB):.3f}x | "
                    f"{res.engine[0]:,.0f} | {p99:.0f} us |"
                )
        res, disk, p99 = bench_slices(args, workdir, chain[: total_mib // 4], 16 * KIB, "blockchain-like", 0.0)
        ratio = disk / one_frame_bytes(chain[: total_mib // 4], 64 * MIB)
        print(
            f"| 16 KiB, min_frame_saving=0 (every frame compressed) | blockchain-like | {ratio:.3f}x | "
            f"{res.engine[0]:,.0f} | {p99:.0f} us |"
        )
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
