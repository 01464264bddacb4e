"""PNG plots of a whole-job benchmark run, from the JSON ``benchmarks.bench_jobs --json`` writes.

``python -m benchmarks.plots RUN.json OUTDIR`` writes:

- ``jobs.png``: each whole job, this store against its plain baseline (median rate and every
  round), with the goal ratio drawn as a mark on the baseline's bar;
- ``peers.png``: each peer workload, every store's median whole-job rate (log scale), this store first.

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


def main(argv: list[str]) -> int:
    """``RUN.json OUTDIR``: write the plots of one run."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        run = json.load(handle)
    os.makedirs(argv[1], exist_ok=True)
    plot_jobs(run["jobs"], os.path.join(argv[1], "jobs.png"))
    if run["peers"]:
        plot_peers(run["peers"], os.path.join(argv[1], "peers.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
