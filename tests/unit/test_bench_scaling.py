"""The scaling benchmark and its plots, in smoke sizes: every measurement gets positive figures and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_support import REPO, run_module


def _positive(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def _check_slices(slices: dict[str, Any]) -> None:
    groups = {(case["group"], case["role"]) for case in slices["cases"]}
    assert {
        ("raw", "baseline"),
        ("raw", "this store"),
        ("compressed", "baseline"),
        ("compressed", "this store"),
    } <= groups
    for case in slices["cases"]:
        assert _positive(case["p50"], case["p90"], case["p99"], case["p99.9"], case["max"], *case["whole_job_per_s"])
        assert case["p50"] <= case["p90"] <= case["p99"] <= case["p99.9"] <= case["max"], case["name"]
        assert case["cdf"][-1] == [case["max"], 1.0]


def _check_memory(memory: dict[str, Any]) -> None:
    assert [case["role"] for case in memory["cases"]][:3] == ["baseline", "this store", "this store"]
    for case in memory["cases"]:
        assert all(peak >= 0 for peak in case["peak_mib"]) and _positive(*case["mb_s"]), case


def _check_writers(writers: dict[str, Any]) -> None:
    assert writers["cores"] >= 1 and set(writers["blobs"]) == {"1024", str(2**20)}
    for series in writers["blobs"].values():
        assert [entry["role"] for entry in series][:2] == ["baseline", "this store"]
        for entry in series:
            assert [point["processes"] for point in entry["points"]] == [2]
            for point in entry["points"]:
                assert _positive(*point["puts_per_s"], *point["shares"], point["worst_put_ms"], *point["p99_us"])
                assert abs(sum(point["shares"]) - 1) < 1e-9 and len(point["shares"]) == point["processes"]


def _check_store_size(store: dict[str, Any]) -> None:
    assert [entry["role"] for entry in store["series"]] == ["baseline", "this store"]
    for entry in store["series"]:
        assert [point["store_mib"] for point in entry["points"]] == [4, 8]
        for point in entry["points"]:
            assert _positive(point["put_mb_s"], point["put_max_ms"], point["get_per_s"])


def test_smoke_scaling_benchmark_gives_every_measurement_positive_figures_and_a_plot(tmp_path: Path) -> None:
    """``benchmarks.run --only scaling`` in smoke sizes with its peers, then ``benchmarks.plots`` on its JSON."""
    out = tmp_path / "scaling.json"
    done = run_module(
        *("benchmarks.run", "--only", "scaling"),
        *("--smoke", "--peers", "--rounds", "1", "--json", str(out), "--dir", str(tmp_path)),
        *("--stream-mib", "4", "--writer-seconds", "0.05", "--writers", "2"),
        *("--max-store-gib", "2", "--get-seconds", "0.02"),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(out.read_text(encoding="utf-8"))
    assert run["machine"]["cores"] >= 1 and _positive(run["machine"]["ram_gib"])
    _check_slices(run["slices"])
    _check_memory(run["memory"])
    _check_writers(run["writers"])
    _check_store_size(run["store_size"])
    assert "per-call latency" in done.stdout and "whole job" in done.stdout
    assert not [name for name in tmp_path.iterdir() if name.name.startswith("ffdb-bench-")]
    plots = tmp_path / "plots"
    drawn = run_module("benchmarks.plots", str(out), str(plots), timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    for name in ("slice_latency.png", "stream_memory.png", "writers.png", "store_size.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_store_sizes_stop_short_of_a_full_disk_and_say_so() -> None:
    """The planned sizes double up to the maximum; the last is cut to the free space less the reserve."""
    code = (
        "import json; from benchmarks.bench_scaling import GIB, plan_sizes; "
        "print(json.dumps([plan_sizes(32, GIB, free * GIB) for free in (60, 23, 3)]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    roomy, cut, full = json.loads(done.stdout)
    assert roomy == [[2**i * 2**30 for i in range(6)], ""]
    assert cut[0] == [2**i * 2**30 for i in range(5)] + [20 * 2**30]
    assert "grew to 20 GiB instead of 32 GiB" in cut[1]
    assert full[0] == [] and "grew to nothing" in full[1]
