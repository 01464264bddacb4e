"""Entry point: ``python -m benchmarks.run [--quick] [--seed N] [--only NAME ...] [--peers]`` runs the benchmarks.

Without --only every benchmark but ``scaling`` runs, in the order of BENCHMARKS (``scaling`` writes
stores of up to ``--max-store-gib`` and runs only when named). ``--peers`` alone runs the benchmarks
that measure other stores side by side: the whole jobs with their peers (``jobs --peers``) and the
keyed store beside its peers (``keyed``); with ``--only`` it adds the peers to the chosen ``jobs``
and ``scaling``. The keyed benchmark's own options (``--keyed-*``, see
``python -m benchmarks.bench_keyed --help``) reach only it; ``--data`` only ``jobs``; the scaling
options (``python -m benchmarks.bench_scaling --help``) only ``scaling``; ``--json`` the one of
``jobs`` and ``scaling`` chosen.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Iterable

from . import (
    bench_compression,
    bench_core,
    bench_jobs,
    bench_keyed,
    bench_maintenance,
    bench_scaling,
    bench_streams,
    bench_tiering,
)

BENCHMARKS: dict[str, Callable[[list[str] | None], Any]] = {
    "core": bench_core.main,
    "compression": bench_compression.main,
    "streams": bench_streams.main,
    "maintenance": bench_maintenance.main,
    "jobs": bench_jobs.main,
    "keyed": bench_keyed.main,
    "tiering": bench_tiering.main,  # starts a SeaweedFS server on 127.0.0.1 (the dev extra installs it)
    "scaling": bench_scaling.main,  # only when named: writes up to --max-store-gib GiB
}
DEFAULT = [name for name in BENCHMARKS if name != "scaling"]
WITH_JSON = ("jobs", "scaling")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark modules (all by default) with the same common arguments."""
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run this benchmark (repeatable)")
    parser.add_argument("--peers", action="store_true", help="jobs and keyed with their peers; with --only: peers")
    ours, rest = parser.parse_known_args(argv)
    chosen = ours.only or (["jobs", "keyed"] if ours.peers else DEFAULT)
    if "--json" in " ".join(rest) and len(set(chosen) & set(WITH_JSON)) > 1:
        parser.error("--json: run jobs and scaling separately (each writes its own JSON)")
    # Each module takes common.base_parser's options; the keyed, jobs and scaling ones take their own too.
    keyed_only = argparse.ArgumentParser(add_help=False)
    bench_keyed.add_keyed_options(keyed_only)
    _keyed, common = keyed_only.parse_known_args(rest)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--data")
    own.add_argument("--json")
    bench_scaling.add_scaling_options(own)
    options, common = own.parse_known_args(common)
    peers = ["--peers"] if ours.peers else []
    jobs_args = common + peers + _given(options, ("data", "json"))
    scaling_args = common + peers + _given(options, [key for key in vars(options) if key != "data"])
    keyed_args = own.parse_known_args(rest)[1]
    arguments = {"keyed": keyed_args, "jobs": jobs_args, "scaling": scaling_args}
    for name, run in BENCHMARKS.items():
        if name in chosen:
            run(arguments.get(name, common))
    return 0


def _given(options: argparse.Namespace, keys: Iterable[str]) -> list[str]:
    """The command-line form of the options among ``keys`` that were given."""
    out: list[str] = []
    for key in keys:
        value = getattr(options, key)
        if value is not None:
            out += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
