"""Shared benchmark plumbing: conditions banner, alternating rounds, result table."""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import conduit_flat_file_db


@dataclass
class Result:
    """One benchmark line: engine vs baseline, higher is better for both."""

    name: str
    unit: str
    baseline_name: str
    baseline: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    goal: float | None = None  # minimum engine/baseline ratio
    extra: str = ""

    @property
    def ratio(self) -> float:
        """Median of the per-round ratios: rounds alternate, so each ratio compares like with like."""
        return statistics.median(e / b for e, b in zip(self.engine, self.baseline))

    def row(self) -> str:
        """One line of the table."""
        goal = "" if self.goal is None else f">= {self.goal:.2f} {'met' if self.ratio >= self.goal else 'MISSED'}"
        return (
            f"| {self.name} | {self.baseline_name} {_fmt(statistics.median(self.baseline))} {self.unit} | "
            f"{_fmt(statistics.median(self.engine))} {self.unit} | {self.ratio:.2f} | {goal} | {self.extra} |"
        )


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def rounds(result: Result, count: int, baseline: Callable[[], float], engine: Callable[[], float]) -> Result:
    """Alternate baseline and engine runs ``count`` times; each returns a rate."""
    for _ in range(count):
        result.baseline.append(baseline())
        result.engine.append(engine())
    return result


def table(results: list[Result]) -> str:
    """Markdown table of results."""
    head = "| benchmark | baseline | engine | ratio | goal | notes |\n|---|---|---|---|---|---|"
    return "\n".join([head] + [r.row() for r in results])


def conditions(args: argparse.Namespace, workdir: str) -> str:
    """The banner printed before any number."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        fstype = subprocess.run(
            ["stat", "-f", "-c", "%T", workdir], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        fstype = "?"
    lines = [
        f"conduit_flat_file_db {conduit_flat_file_db.__version__}; Python {sys.version.split()[0]} "
        f"({platform.python_implementation()}); {platform.system()} {platform.release()}",
        f"CPU: {cpu} x {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}",
        f"workdir: {workdir} (filesystem {fstype}); page cache warm (files written in this run); "
        f"fsync={'on' if args.fsync else 'off'}; seed={args.seed}; rounds={args.rounds}",
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    ]
    return "\n".join(lines)


def run_benchmark(
    description: str, argv: list[str] | None, body: Callable[[argparse.Namespace, str], list[Result]]
) -> list[Result]:
    """Parse the common options, print the conditions, run ``body`` in a scratch directory, print
    the table, remove the directory."""
    parser = base_parser(description)
    args = parser.parse_args(argv)
    if args.dir:
        try:
            os.makedirs(args.dir, exist_ok=True)  # --dir /var/tmp/new: made, not a traceback
        except OSError as exc:
            parser.error(f"--dir {args.dir}: {exc.strerror or exc}")
    workdir = tempfile.mkdtemp(prefix="ffdb-bench-", dir=args.dir or str(Path(__file__).resolve().parent.parent))
    try:
        print(conditions(args, workdir))
        results = body(args, workdir)
        print(table(results))
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir beside the repo)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating baseline/engine rounds")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--fsync", action="store_true", help="engine puts with fsync=True")
    return parser


def blockchain_like(size: int, rng: random.Random) -> bytes:
    """Bytes shaped like raw Bitcoin blocks: hashes, signatures and keys (random) in script templates."""
    out = bytearray(rng.randbytes(80))
    while len(out) < size:
        out += struct.pack("<I", 1)
        inputs = rng.choice((1, 1, 1, 2, 2, 3, 5))
        out.append(inputs)
        for _ in range(inputs):
            sig = rng.randbytes(rng.randint(70, 72))
            script = bytes([len(sig) + 1]) + sig + b"\x01\x21\x02" + rng.randbytes(32)
            out += rng.randbytes(32) + struct.pack("<I", rng.randrange(4)) + bytes([len(script)]) + script
            out += b"\xff\xff\xff\xff"
        outputs = rng.choice((1, 2, 2, 2, 3))
        out.append(outputs)
        for _ in range(outputs):
            out += struct.pack("<Q", rng.randrange(10**8) // 1000 * 1000)
            out += b"\x19\x76\xa9\x14" + rng.randbytes(20) + b"\x88\xac"
        out += b"\x00\x00\x00\x00"
    return bytes(out[:size])


def text_like(size: int, rng: random.Random) -> bytes:
    """Log-like bytes: a vocabulary of 4,000 tokens with Zipf frequencies, 15% random runs.

    Much of its redundancy is long-range (the vocabulary), which small frames cannot see.
    """
    tokens = [rng.randbytes(rng.randint(4, 40)) for _ in range(4000)]
    weights = [1 / (i + 1) for i in range(len(tokens))]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.15:
            out += rng.randbytes(32)
        else:
            out += b"".join(rng.choices(tokens, weights, k=64))
    return bytes(out[:size])


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]
