"""PNG plots of a benchmark run, from the JSON ``bench_jobs --json`` or ``bench_scaling --json`` writes.

``python -m benchmarks.plots RUN.json OUTDIR`` writes, for a whole-job run:

- ``jobs.png``: each whole job, this store against its plain baseline (median rate and every
  round), with the goal ratio drawn as a mark on the baseline's bar;
- ``peers.png``: each peer workload, every store's median whole-job rate (log scale), this store first;

and for a scaling run one PNG per measurement: ``slice_latency.png`` (the share of calls slower
than each latency, log-log), ``stream_memory.png``, ``writers.png`` and ``store_size.png``.

matplotlib is a benchmark extra (``pip install '.[peers]'``), never a dependency of the library.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib.ticker import NullFormatter  # pylint: disable=wrong-import-position


def plot_jobs(jobs: list[dict[str, Any]], path: str) -> None:
    """One panel per job: baseline and this store, medians as bars and every round as dots."""
    figure, axes = plt.subplots(1, len(jobs), figsize=(3.2 * len(jobs), 4.2), squeeze=False)
    for axis, job in zip(axes[0], jobs):
        medians = [statistics.median(job["baseline"]), statistics.median(job["engine"])]
        axis.bar([0, 1], medians, color=["#999999", "#1f77b4"])
        for x, rounds in ((0, job["baseline"]), (1, job["engine"])):
            axis.plot([x] * len(rounds), rounds, "k.", markersize=4)
        if job["goal"] is not None:
            axis.axhline(medians[0] * job["goal"], color="#d62728", linestyle="--", linewidth=1)
        axis.set_xticks([0, 1], ["baseline", "this store"])
        axis.set_title(_wrap(job["name"], 28), fontsize=8)
        axis.set_ylabel(job["unit"], fontsize=8)
        axis.tick_params(labelsize=7)
        axis.text(1, medians[1], f"{job['ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
    figure.suptitle("Whole jobs (open to close): this store vs the plain baseline; dashed: goal", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_peers(peers: list[dict[str, Any]], path: str) -> None:
    """One panel per workload: every store's median whole-job rate, log scale."""
    figure, axes = plt.subplots(len(peers), 1, figsize=(7.5, 2.6 * len(peers)), squeeze=False)
    for axis, table in zip(axes[:, 0], peers):
        names = list(table["rates"])
        medians = [statistics.median(table["rates"][name]) for name in names]
        colours = ["#1f77b4"] + ["#999999"] * (len(names) - 1)
        axis.barh(range(len(names)), medians, color=colours)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())  # labels on decades only
        axis.set_xlabel(table["unit"], fontsize=8)
        axis.set_title(table["name"], fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
        for y, rate in enumerate(medians):
            axis.text(rate, y, f" {rate:,.0f}", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


COLOURS = {"baseline": "#555555", "this store": "#1f77b4"}
PEER_COLOURS = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


def _colour(role: str, peer_index: int) -> str:
    return COLOURS.get(role) or PEER_COLOURS[peer_index % len(PEER_COLOURS)]


def plot_slices(slices: dict[str, Any], path: str) -> None:
    """Per group (raw, compressed): the share of calls slower than each latency, log-log (the tail)."""
    groups = list(dict.fromkeys(case["group"] for case in slices["cases"]))
    figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.4), squeeze=False)
    for axis, group in zip(axes[0], groups):
        for index, case in enumerate(c for c in slices["cases"] if c["group"] == group):
            points = [(ns / 1e3, 1 - fraction) for ns, fraction in case["cdf"] if fraction < 1]
            label = f"{case['name']} (p99 {case['p99'] / 1e3:,.1f} us)"
            axis.step(*zip(*points), where="post", color=_colour(case["role"], index), label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("latency of one call (us)", fontsize=8)
        axis.set_ylabel("share of calls slower", fontsize=8)
        axis.set_title(f"{group}: {slices['name']}", fontsize=8)
        axis.legend(fontsize=7)
        axis.grid(True, which="major", linewidth=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_memory(memory: dict[str, Any], path: str) -> None:
    """Peak RSS growth per case (log scale), the whole-job rate written beside each bar."""
    figure, axis = plt.subplots(figsize=(10, 0.6 * len(memory["cases"]) + 1.2))
    names = [case["name"] for case in memory["cases"]]
    peaks = [max(*case["peak_mib"], 0.1) for case in memory["cases"]]
    axis.barh(range(len(names)), peaks, color=[_colour(c["role"], i) for i, c in enumerate(memory["cases"])])
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlim(right=max(peaks) * 30)  # room for the notes
    axis.set_xlabel("peak RSS above the process's own after its imports (MiB, log)", fontsize=8)
    axis.set_title(memory["name"], fontsize=9)
    for y, case in enumerate(memory["cases"]):
        note = case["refused"] or f"{statistics.median(case['mb_s']):,.0f} MB/s"
        axis.text(peaks[y], y, f" {max(case['peak_mib']):,.1f} MiB, {note}", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_writers(writers: dict[str, Any], path: str) -> None:
    """Per blob size: aggregate puts per second against the number of writer processes (log)."""
    figure, axes = plt.subplots(1, len(writers["blobs"]), figsize=(6 * len(writers["blobs"]), 4.2), squeeze=False)
    for axis, (size, series) in zip(axes[0], writers["blobs"].items()):
        for index, entry in enumerate(series):
            counts = [point["processes"] for point in entry["points"]]
            rates = [statistics.median(point["puts_per_s"]) for point in entry["points"]]
            axis.plot(counts, rates, "o-", color=_colour(entry["role"], index), label=entry["name"])
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(count) for count in counts])
        axis.set_yscale("log")
        axis.set_xlabel(f"writer processes ({writers['cores']} cores)", fontsize=8)
        axis.set_ylabel("puts per second, all processes", fontsize=8)
        axis.set_title(f"{int(size) // 1024:,} KiB puts, {writers['seconds']:g} s windows", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_store_size(store: dict[str, Any], path: str) -> None:
    """Put MB/s and random 4 KiB reads per second against the store's size; RAM marked."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, entry in enumerate(store["series"]):
        sizes = [point["store_mib"] / 1024 for point in entry["points"]]
        for axis, key in zip(axes, ("put_mb_s", "get_per_s")):
            axis.plot(
                sizes, [p[key] for p in entry["points"]], "o-", color=_colour(entry["role"], index), label=entry["name"]
            )
    for axis, label in zip(axes, ("puts of the last step (MB/s)", "random 4 KiB reads per second")):
        axis.set_xscale("log", base=2)
        axis.axvline(store["ram_gib"], color="#d62728", linestyle="--", linewidth=1, label="RAM")
        axis.set_xlabel("store size (GiB)", fontsize=8)
        axis.set_ylabel(label, fontsize=8)
        axis.legend(fontsize=7)
    axes[1].set_yscale("log")
    figure.suptitle(store["name"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


SCALING_PLOTS = {
    "slices": ("slice_latency.png", plot_slices),
    "memory": ("stream_memory.png", plot_memory),
    "writers": ("writers.png", plot_writers),
    "store_size": ("store_size.png", plot_store_size),
}


def main(argv: list[str]) -> int:
    """``RUN.json OUTDIR``: write the plots of one run."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        run = json.load(handle)
    os.makedirs(argv[1], exist_ok=True)
    if "jobs" in run:
        plot_jobs(run["jobs"], os.path.join(argv[1], "jobs.png"))
    if run.get("peers"):
        plot_peers(run["peers"], os.path.join(argv[1], "peers.png"))
    for key, (name, plot) in SCALING_PLOTS.items():
        if key in run:
            plot(run[key], os.path.join(argv[1], name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
