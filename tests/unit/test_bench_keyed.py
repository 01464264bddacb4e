"""The keyed-store benchmark in its quick mode: every store that imports gets a figure in every workload."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from bench_support import run_module

# The stores of each workload, by the number its title starts with, and the modules each store needs.
STORE_MODULES = {
    "keyed (sqlite index)": ("conduit_flat_file_db.KeyedStore",),
    "keyed (lmdb index)": ("conduit_flat_file_db.KeyedStore", "lmdb"),
    "engine alone (FlatFileDb)": (),
    "sqlite, values inline": (),
    "lmdb, values inline": ("lmdb",),
    "diskcache": ("diskcache",),
    "disk-objectstore packs": ("disk_objectstore",),
    "rocksdb, blob files": ("rocksdict",),
}
KEYED = ("keyed (sqlite index)", "keyed (lmdb index)")
WORKLOAD_STORES = {
    "1.": tuple(STORE_MODULES),
    "2.": tuple(STORE_MODULES),
    "3a.": tuple(STORE_MODULES),
    "3b.": tuple(STORE_MODULES),
    "4.": KEYED + ("sqlite, values inline", "lmdb, values inline"),
    "5.": KEYED,
    "6.": KEYED,
    "7.": KEYED + ("sqlite, values inline", "lmdb, values inline", "rocksdb, blob files"),
}


def _imports(module: str) -> bool:
    if module == "conduit_flat_file_db.KeyedStore":
        return hasattr(importlib.import_module("conduit_flat_file_db"), "KeyedStore")
    return importlib.util.find_spec(module) is not None


def test_quick_keyed_benchmark_gives_every_importable_store_a_figure_in_every_workload(tmp_path: Path) -> None:
    """``benchmarks.run --only keyed --quick``: a figure per store that imports, "missing" for the others.

    About 15 s on a quiet 2-core machine; the timeout only stops a hung run."""
    out = tmp_path / "keyed.json"
    done = run_module(
        "benchmarks.run", "--only", "keyed", "--quick", "--dir", str(tmp_path), "--keyed-json", str(out), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "### targets:" in done.stdout
    workloads = json.loads(out.read_text(encoding="utf-8"))["workloads"]
    assert [w["title"].split(" ", 1)[0] for w in workloads] == list(WORKLOAD_STORES)
    for workload in workloads:
        rows = {row["store"]: row for row in workload["rows"]}
        wanted = WORKLOAD_STORES[workload["title"].split(" ", 1)[0]]
        assert sorted(rows) == sorted(wanted), workload["title"]
        for store in wanted:
            row = rows[store]
            if all(_imports(module) for module in STORE_MODULES[store]):
                assert row["missing"] == "" and row["per_call"] and row["whole_job"], (workload["title"], row)
                assert all(figure > 0 for figure in row["per_call"] + row["whole_job"]), (workload["title"], row)
            else:
                assert row["missing"].startswith("missing:"), (workload["title"], row)
        assert f"### {workload['title']}" in done.stdout
