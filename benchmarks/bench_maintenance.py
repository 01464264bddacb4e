"""Maintenance vs the physical baseline.

- recompress of a sealed raw segment to Zstandard vs single-thread zstandard on the same bytes;
- verify of raw segments (read + XXH3-64 of every blob) vs reading the same files
  sequentially with no checksum at all (the disk's, or page cache's, sequential read speed).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time

import zstandard

from conduit_flat_file_db import CompressMode, FlatFileDb

from .common import Result, blockchain_like, rounds, run_benchmark

MIB = 2**20


def _raw_store(path: str, data: list[bytes], segment_bytes: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    db = FlatFileDb(path, path + ".lock")
    db.MAX_DAT_FILE_SIZE = segment_bytes
    db.put_many(data)
    db.rotate()
    db.close()


def bench_recompress(args: argparse.Namespace, workdir: str, data: list[bytes]) -> Result:
    """Sealed raw segment -> compressed, MiB/s, vs zstandard one thread on the same bytes."""
    path = os.path.join(workdir, "recompress")
    total = len(data)

    def baseline() -> float:
        cctx = zstandard.ZstdCompressor(level=3)
        started = time.perf_counter()
        with open(os.devnull, "wb") as sink, cctx.stream_writer(sink, closefd=False) as writer:
            for blob in data:
                writer.write(blob)
        return total / (time.perf_counter() - started)

    def engine() -> float:
        _raw_store(path, data, total * MIB)
        db = FlatFileDb(path, path + ".lock")
        started = time.perf_counter()
        db.recompress(mode=CompressMode.YES)
        elapsed = time.perf_counter() - started
        db.close()
        return total / elapsed

    result = rounds(
        Result(f"recompress {total} MiB raw -> zstd", "MiB/s", "zstandard 1 thread", goal=1.5),
        args.rounds,
        baseline,
        engine,
    )
    shutil.rmtree(path, ignore_errors=True)
    return result


def bench_verify(args: argparse.Namespace, workdir: str, data: list[bytes]) -> Result:
    """verify() of raw segments vs a plain sequential read of the same files."""
    path = os.path.join(workdir, "verify")
    _raw_store(path, data, 64 * MIB)
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".dat")]
    total = sum(os.path.getsize(f) for f in files) / MIB

    def baseline() -> float:
        started = time.perf_counter()
        buffer = bytearray(8 * MIB)
        for name in files:
            with open(name, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
        return total / (time.perf_counter() - started)

    def engine() -> float:
        db = FlatFileDb(path, path + ".lock")
        started = time.perf_counter()
        report = db.verify()
        elapsed = time.perf_counter() - started
        db.close()
        assert report.ok, str(report)
        return total / elapsed

    result = rounds(
        Result(f"verify {total:.0f} MiB raw", "MiB/s", "sequential read", goal=0.7), args.rounds, baseline, engine
    )
    result.extra = "page cache warm: the baseline is memory speed, the hardest case for the checksum"
    shutil.rmtree(path, ignore_errors=True)
    return result


def _all(args: argparse.Namespace, workdir: str) -> list[Result]:
    rng = random.Random(args.seed)
    data = [blockchain_like(MIB, rng) for _ in range(64 if args.quick else 256)]
    return [bench_recompress(args, workdir, data), bench_verify(args, workdir, data)]


def main(argv: list[str] | None = None) -> list[Result]:
    """Run these benchmarks and print the table."""
    return run_benchmark(__doc__ or "", argv, _all)


if __name__ == "__main__":
    main()
