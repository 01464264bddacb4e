"""Entry point: ``python -m benchmarks.run [--quick] [--seed N] [--only NAME ...] [--peers]`` runs the benchmarks.

Without --only every benchmark runs, in the order of BENCHMARKS. ``--only keyed`` (or ``--peers``)
runs the keyed store beside its peers alone; its own options (``--keyed-*``, see
``python -m benchmarks.bench_keyed --help``) reach only it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from . import bench_compression, bench_core, bench_keyed, bench_maintenance, bench_streams

BENCHMARKS: dict[str, Callable[[list[str] | None], Any]] = {
    "core": bench_core.main,
    "compression": bench_compression.main,
    "streams": bench_streams.main,
    "maintenance": bench_maintenance.main,
    "keyed": bench_keyed.main,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark modules (all by default) with the same common arguments."""
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run this benchmark (repeatable)")
    parser.add_argument("--peers", action="store_true", help="the keyed store beside its peers only (= --only keyed)")
    ours, rest = parser.parse_known_args(argv)
    chosen = set(ours.only or []) | ({"keyed"} if ours.peers else set())
    # The other modules take only common.base_parser's options: hand them the rest without --keyed-*.
    keyed_only = argparse.ArgumentParser(add_help=False)
    bench_keyed.add_keyed_options(keyed_only)
    _keyed, common = keyed_only.parse_known_args(rest)
    for name, run in BENCHMARKS.items():
        if not chosen or name in chosen:
            run(rest if name == "keyed" else common)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
