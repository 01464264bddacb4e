"""The whole-job benchmark and its plots, in smoke sizes: every job and every importable peer gets a figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bench_support import run_module

PEER_MODULES = {
    "sqlite, values inline": None,
    "lmdb, values inline": "lmdb",
    "diskcache": "diskcache",
    "disk-objectstore packs": "disk_objectstore",
    "rocksdb, blob files": "rocksdict",
}


def test_smoke_jobs_benchmark_gives_every_job_and_importable_peer_a_figure_and_plots_them(tmp_path: Path) -> None:
    """``benchmarks.bench_jobs --smoke --peers --json`` (its ``--dir`` not made yet), then
    ``benchmarks.plots`` on its JSON."""
    out = tmp_path / "jobs.json"
    done = run_module(
        "benchmarks.bench_jobs",
        "--smoke",
        "--rounds",
        "1",
        "--peers",
        "--json",
        str(out),
        "--dir",
        str(tmp_path / "not" / "made" / "yet"),  # made by the benchmark
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(out.read_text(encoding="utf-8"))
    assert [job["name"].split(",")[0] for job in run["jobs"]] == [
        "1 MiB puts",
        "1 MiB puts",
        "put_many(1000) of 1 KiB",
        "put() of 1 KiB",
        "get() of 1 KiB",
    ]
    for job in run["jobs"]:
        assert job["baseline"] and job["engine"] and all(v > 0 for v in job["baseline"] + job["engine"]), job
        assert job["name"] in done.stdout
    assert len(run["peers"]) == 3
    for table in run["peers"]:
        stores = set(table["rates"])
        assert "this store (FlatFileDb)" in stores
        for store, module in PEER_MODULES.items():
            assert (store in stores) == (module is None or importlib.util.find_spec(module) is not None), store
        assert all(rate > 0 for rates in table["rates"].values() for rate in rates)
    plots = tmp_path / "plots"
    drawn = run_module("benchmarks.plots", str(out), str(plots), timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    for name in ("jobs.png", "peers.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
