"""Entry point: ``python -m benchmarks.run [--quick] [--seed N]`` runs every benchmark."""

from __future__ import annotations

import sys

from . import bench_compression, bench_core, bench_maintenance, bench_streams


def main(argv: list[str] | None = None) -> int:
    """Run all benchmark modules with the same arguments."""
    bench_core.main(argv)
    bench_compression.main(argv)
    bench_streams.main(argv)
    bench_maintenance.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
