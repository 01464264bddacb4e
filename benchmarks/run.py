"""Entry point: ``python -m benchmarks.run [--quick] [--seed N] [--only NAME ...] [--peers]`` runs the benchmarks.

Without --only every benchmark runs, in the order of BENCHMARKS. ``--peers`` runs the benchmarks
that measure other stores side by side: the whole jobs with their peers (``jobs --peers``) and the
keyed store beside its peers (``keyed``). The keyed benchmark's own options (``--keyed-*``, see
``python -m benchmarks.bench_keyed --help``) reach only it; ``--data`` and ``--json`` only ``jobs``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from . import bench_compression, bench_core, bench_jobs, bench_keyed, bench_maintenance, bench_streams, bench_tiering

BENCHMARKS: dict[str, Callable[[list[str] | None], Any]] = {
    "core": bench_core.main,
    "compression": bench_compression.main,
    "streams": bench_streams.main,
    "maintenance": bench_maintenance.main,
    "jobs": bench_jobs.main,
    "keyed": bench_keyed.main,
    "tiering": bench_tiering.main,  # starts a SeaweedFS server on 127.0.0.1 (the dev extra installs it)
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark modules (all by default) with the same common arguments."""
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run this benchmark (repeatable)")
    parser.add_argument("--peers", action="store_true", help="the keyed store beside its peers only (= --only keyed)")
    ours, rest = parser.parse_known_args(argv)
    chosen = set(ours.only or []) | ({"jobs", "keyed"} if ours.peers else set())
    # The other modules take only common.base_parser's options: hand them the rest without
    # --keyed-*, and the jobs' own options to the jobs alone.
    keyed_only = argparse.ArgumentParser(add_help=False)
    bench_keyed.add_keyed_options(keyed_only)
    _keyed, common = keyed_only.parse_known_args(rest)
    jobs_only = argparse.ArgumentParser(add_help=False)
    jobs_only.add_argument("--data")
    jobs_only.add_argument("--json")
    jobs_options, common = jobs_only.parse_known_args(common)
    jobs_args = common + (["--peers"] if ours.peers else [])
    jobs_args += [f"--{name}={value}" for name, value in vars(jobs_options).items() if value is not None]
    _jobs, keyed_args = jobs_only.parse_known_args(rest)
    for name, run in BENCHMARKS.items():
        if not chosen or name in chosen:
            run(keyed_args if name == "keyed" else jobs_args if name == "jobs" else common)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
