"""Chaos soak: several processes do everything at once to one store while a killer SIGKILLs
them at random instants and starts them again.

Every worker (soak_worker.py) writes (put, put_many, put_stream, put_streams, adopt_file; raw,
compressed and AUTO configurations picked per operation, empty blobs among them), reads
acknowledged blobs of every worker back byte for byte (get, slices, get_many, open_blob,
get_view), rotates, recompresses in every mode, verifies live, deletes sealed segments
(delete_file, enforce_retention) and compacts them (compact, finish_compaction). A live verify
must report nothing; a read must return the acknowledged bytes or, for a segment someone may
have deleted, FileNotFoundError. At the end the store is reopened: every acknowledged blob
whose segment nobody may have deleted reads back identical, the files end at their commits,
and a full verify() is clean.

``FFDB_SOAK_SECONDS`` sets how long the workers run (default 60; hours for a long soak) and
``FFDB_SOAK_SEED`` replays a run's choices (the seed is printed; timing still differs).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "crash"))  # the crash tier's helpers, as pytest imports them

# pylint: disable=wrong-import-position  # after the path to the crash tier's helpers
from crash_support import assert_no_dead_scratch, with_deadline
from soak_worker import COMPLETED, OPS, Ack, Reports, audit_of, make_pool

from conduit_flat_file_db import FlatFileDb

pytestmark = pytest.mark.soak

WORKER_SCRIPT = Path(__file__).with_name("soak_worker.py")
SEGMENT_BYTES = 512 * 2**10
RETENTION_BYTES = 48 * 2**20
KILL_EVERY_SECONDS = (0.05, 1.0)
STOP_SECONDS = 60.0
CHECK_SECONDS = 120.0
SHOWN = 10  # failures listed in full; the rest are counted

# Each worker does everything; its role only tilts the odds. The chaos worker runs two threads.
_BASE = {op: 1.0 for op in OPS}
ROLES: dict[str, dict[str, float]] = {
    "writer": {**_BASE, "put": 30, "put_many": 12, "put_stream": 3, "put_streams": 3, "adopt": 3, "read": 8},
    "reader": {**_BASE, "put": 4, "put_many": 2, "read": 40},
    "maintainer": {**_BASE, "put": 10, "put_many": 4, "read": 6, "rotate": 4, "recompress": 3, "verify": 2},
    "chaos": {**_BASE, "put": 8, "put_many": 4, "read": 8},
}


def soak_seconds() -> float:
    """How long the workers run: FFDB_SOAK_SECONDS, default 60."""
    return float(os.environ.get("FFDB_SOAK_SECONDS") or 60)


def soak_seed() -> int:
    """The run's seed: FFDB_SOAK_SEED, or a fresh one. Printed so a failure can be replayed."""
    seed = int(os.environ.get("FFDB_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FFDB_SOAK_SEED={seed}")
    return seed


class Worker:
    """One soak_worker.py process slot: killed and started again, its report kept."""

    def __init__(self, tmp_path: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.report = tmp_path / "reports" / f"{name}.report"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.failures: list[str] = []

    def start(self, seed: int) -> None:
        """Start an incarnation (the previous one must be reaped)."""
        self.starts += 1
        if self.report.exists():  # a torn last line of a killed incarnation would run into the next line
            data = self.report.read_bytes()
            os.truncate(self.report, data.rfind(b"\n") + 1)
        config = {**self.config, "seed": seed, "report": str(self.report)}
        with open(self.stderr_path, "ab") as stderr:
            stderr.write(f"--- start {self.starts} (seed {seed})\n".encode())
            stderr.flush()
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # killed or stopped by the test
                [sys.executable, str(WORKER_SCRIPT), json.dumps(config)], stderr=stderr
            )

    def kill(self) -> None:
        """SIGKILL the running incarnation; an incarnation that ended by itself is a failure."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.returncode != -signal.SIGKILL:
            self.failures.append(f"{self.name} (start {self.starts}) exited by itself with {self.proc.returncode}")

    def stop(self, deadline: float) -> None:
        """Wait for a clean exit after the stop file appeared; a worker that hangs is a failure
        (its stacks are printed to its stderr first)."""
        assert self.proc is not None
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            self.failures.append(f"{self.name} (start {self.starts}) did not stop within {STOP_SECONDS} s: hung")
            return
        if self.proc.returncode != 0:
            self.failures.append(f"{self.name} (start {self.starts}) exited with {self.proc.returncode}")

    def stderr_tail(self) -> str:
        """The last failures its incarnations wrote to stderr, with their tracebacks (else the end
        of it: the log lines of deletes and recoveries are many and rarely the point)."""
        text = self.stderr_path.read_text(errors="replace")
        found = text.split("FAILURE: ")[1:]
        return "".join(f"FAILURE: {block[:2000]}" for block in found[-3:]) if found else text[-4000:]


def run_workers(tmp_path: Path, seed: int, seconds: float) -> tuple[list[Worker], int]:
    """Start one worker per role, kill and restart them at random until ``seconds`` pass, then
    stop them; returns the workers and the number of kills."""
    datadir = tmp_path / "store"
    (tmp_path / "reports").mkdir()
    (tmp_path / "incoming").mkdir()
    stop_file = tmp_path / "stop"
    rng = random.Random(seed)
    workers = []
    for name, weights in ROLES.items():
        config = {
            "datadir": str(datadir),
            "run_seed": seed,
            "threads": 2 if name == "chaos" else 1,
            "report_dir": str(tmp_path / "reports"),
            "incoming": str(tmp_path / "incoming"),
            "stop_file": str(stop_file),
            "weights": weights,
            "segment_bytes": SEGMENT_BYTES,
            "retention_bytes": RETENTION_BYTES,
        }
        workers.append(Worker(tmp_path, name, config))
    FlatFileDb(datadir, str(datadir) + ".lock").close()  # created once, before the workers race to open it
    kills = 0
    try:
        for worker in workers:
            worker.start(rng.randrange(2**32))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(rng.uniform(*KILL_EVERY_SECONDS), max(deadline - time.monotonic(), 0)))
            victim = rng.choice(workers)
            victim.kill()
            kills += 1
            victim.start(rng.randrange(2**32))
        stop_file.touch()
        stop_by = time.monotonic() + STOP_SECONDS
        for worker in workers:
            worker.stop(stop_by)
    finally:  # interrupted (a timeout, ^C): no worker outlives the test
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
    return workers, kills


def check_store(datadir: Path, reports: Reports, pool: bytes) -> tuple[int, list[str]]:
    """Reopen the store: every acknowledged blob nobody may have deleted reads back identical;
    a full verify is clean. Returns (blobs checked, failures)."""
    failures = []
    db = FlatFileDb(datadir, str(datadir) + ".lock")
    try:
        assert_no_dead_scratch(datadir, "after the soak")
        live = reports.live()
        audited: set[int] = set()
        for ack in live:
            size = ack.location.end_offset - ack.location.start_offset
            try:
                got = db.get(ack.location)
            except (OSError, ValueError) as exc:
                failures.append(
                    f"acknowledged {'empty blob' if size == 0 else 'blob'} {ack.location} does not read: "
                    f"{type(exc).__name__}: {exc}"
                    + (
                        f"\n{audit_of(reports.report_dir, ack.key[0], datadir)}"
                        if _first_missing(exc, ack, audited)
                        else ""
                    )
                )
                continue
            if got != pool[ack.pool : ack.pool + size]:
                failures.append(f"acknowledged {ack.location} reads back different bytes")
        report = db.verify()
        if not report.ok:
            failures.append(f"verify after the soak: {report}")
    finally:
        db.close()
    return len(live), failures


def _first_missing(exc: Exception, ack: Ack, audited: set[int]) -> bool:
    """Whether ``exc`` says the segment of ``ack`` is gone and it is the first such of its segment
    (whose failure then carries the segment's audit lines)."""
    if not isinstance(exc, FileNotFoundError) or ack.key[0] in audited:
        return False
    audited.add(ack.key[0])
    return True


def excused(problem: str, reports: Reports) -> bool:
    """A live verify's 'missing-data' for a segment whose delete was killed between removing its
    data file and its index is true of the files (the next open removes the index)."""
    fields = problem.split("\t")
    if fields[1:2] != ["missing-data"]:
        return False
    name = os.path.basename(fields[2])
    return name.startswith("data_") and int(name[5:13]) in reports.deleted


@pytest.mark.timeout(soak_seconds() + STOP_SECONDS + CHECK_SECONDS + 60)  # the suite's 300 s would cut a long soak
def test_soak_many_processes_killed_at_random_lose_nothing(tmp_path: Path) -> None:
    """The chaos soak (module docstring); every failure found is listed with the seed."""
    seed = soak_seed()
    seconds = soak_seconds()
    workers, kills = run_workers(tmp_path, seed, seconds)
    reports = Reports(tmp_path / "reports")
    reports.refresh()
    pool = make_pool(seed)
    checked, failures = with_deadline(
        CHECK_SECONDS, "the final check", tmp_path / "store", lambda: check_store(tmp_path / "store", reports, pool)
    )
    failures = (
        [f for w in workers for f in w.failures]
        + reports.failures
        + [f"live verify: {p}" for p in reports.problems if not excused(p, reports)]
        + failures
    )
    deleted = Counter(reports.deleted.values())
    print(
        f"soak: {seconds:.0f} s, {kills} kills, {len(reports.acks)} acknowledged blobs ({checked} checked at "
        f"the end), segments deleted by {dict(deleted)}, operations {reports.ops}"
    )
    if failures:
        (tmp_path / "failures.txt").write_text("\n".join(failures) + "\n")
        stderr = "\n".join(
            f"--- {w.name} stderr:\n{w.stderr_tail()}"
            for w in workers
            if w.failures or any(f.startswith(f"{w.name}.report:") for f in reports.failures)
        )
        pytest.fail(
            f"FFDB_SOAK_SEED={seed}: {len(failures)} failures:\n"
            + "\n".join(failures[:SHOWN])
            + (
                f"\n... and {len(failures) - SHOWN} more (all in {tmp_path / 'failures.txt'})"
                if len(failures) > SHOWN
                else ""
            )
            + f"\n{stderr}"
        )
    assert kills > 0 and checked > 0, "the soak did not run"
    idle = [op for op in COMPLETED if reports.ops[op] == 0]
    assert not idle, f"operations never completed in {seconds} s: {idle} (FFDB_SOAK_SECONDS too short?)"
