"""A keyed store's writer SIGKILLed at random instants, many times in a row, for each kind of op:
put, put_many (batches with repeated keys), delete (and delete_many), and vacuum() among puts and
deletes on small segments.

The child logs each op before it starts and after it returns (keyed_support.OpLog). After each
kill the parent reopens the store and reads all of it back: every listed key reads (no dangling
key), every value is byte for byte one written for its key, meta() agrees, verify() is clean, and
the mapping is exactly the one the acknowledged ops leave, or that one with the op in flight
applied whole (a batch is all or nothing). The next child writes on into the same store.

The RNG seed is printed and named in every failure; rerun with FFDB_CRASH_SEED (and
FFDB_CRASH_KILLS for more rounds).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from pathlib import Path

import pytest
from crash_support import CHECK_SECONDS, READY_SECONDS, crash_seed, is_ready, with_deadline
from keyed_support import INDEXES, State, apply_op, child_context, describe_difference, open_keyed, read_ops, read_state
from keyed_workers import victim_role

pytestmark = pytest.mark.crash

KILLS = int(os.environ.get("FFDB_CRASH_KILLS", "24"))  # per kind of op and index: 192 kills in all


def reopen_and_read(path: Path, index: str, where: str) -> tuple[State, State]:
    """Open the store read-only (nothing repaired yet), then for writing (its open recovers), read
    it all back each time (keyed_support.read_state), verify it; returns both states."""
    with open_keyed(path, index, readonly=True) as store:
        seen_readonly = read_state(store, f"{where}: read-only open before any writer")
    with open_keyed(path, index) as store:
        state = read_state(store, where)
        report = store.verify()
        assert report.ok, f"{where}: verify() after the kill: {report.problems[:10]}"
        stats = store.stats()
        assert stats.keys == len(state), f"{where}: stats().keys is {stats.keys}, the store has {len(state)} keys"
    return seen_readonly, state


def kill_one(tmp_path: Path, round_: int, cfg: dict[str, object], pause: float, where: str) -> Path:
    """Start a victim, let it work ``pause`` seconds after it opened the store, SIGKILL it;
    returns its op log."""
    log = tmp_path / f"round{round_}.log"
    proc = child_context().Process(target=victim_role, args=({**cfg, "log": str(log)},))
    proc.start()
    deadline = time.monotonic() + READY_SECONDS
    while not is_ready(log):
        assert proc.is_alive(), f"{where}: the writer exited ({proc.exitcode}) before it opened the store"
        assert time.monotonic() < deadline, f"{where}: the writer did not open the store within {READY_SECONDS} s"
        time.sleep(0.001)
    time.sleep(pause)
    assert proc.is_alive(), f"{where}: the writer exited ({proc.exitcode}) before the kill"
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return log


@INDEXES
@pytest.mark.parametrize("kind", ["put", "put_many", "delete", "vacuum"])
def test_sigkilled_writer_loses_no_acknowledged_op_and_leaves_no_dangling_or_wrong_key(
    tmp_path: Path, index: str, kind: str
) -> None:
    """KILLS rounds: a writer doing mostly ``kind`` ops is SIGKILLed at a random instant; the
    reopened store holds exactly what its acknowledged ops left (the op in flight all or nothing)."""
    seed = crash_seed()
    rng = random.Random(seed)
    path = tmp_path / "store"
    state: State = {}
    mid_op = ops = 0
    for round_ in range(KILLS):
        cfg: dict[str, object] = {
            "path": str(path),
            "index": index,
            "kind": kind,
            "seed": rng.randrange(2**32),
            "base_version": (round_ + 1) * 10**6,
            "fsync": rng.random() < 0.2,
            "max_file_size": rng.choice([16 * 1024, 64 * 1024]),
        }
        where = f"FFDB_CRASH_SEED={seed} round {round_} ({cfg})"
        log = kill_one(tmp_path, round_, cfg, rng.uniform(0.002, 0.15), where)
        acked, pending = read_ops(log)
        committed = state
        for op in acked:
            committed = apply_op(committed, op)
        seen_readonly, observed = with_deadline(
            CHECK_SECONDS, f"{where}: reopen", path / "segments", functools.partial(reopen_and_read, path, index, where)
        )
        candidates = [committed] + ([apply_op(committed, pending)] if pending else [])
        assert observed in candidates, (
            f"{where}: after {len(acked)} acknowledged ops and the op in flight {pending}, the store differs from "
            f"the acknowledged state: {describe_difference(observed, committed)}"
            + (
                f"; and from it with the op in flight: {describe_difference(observed, candidates[1])}"
                if pending
                else ""
            )
        )
        assert seen_readonly in candidates, (
            f"{where}: a read-only open right after the kill sees neither the acknowledged state nor it with the op "
            f"in flight: {describe_difference(seen_readonly, committed)}"
        )
        state = observed
        ops += len(acked)
        mid_op += pending is not None
    print(f"{KILLS} kills ({mid_op} inside an op), {ops} acknowledged ops, {len(state)} keys at the end")
    assert mid_op >= KILLS // 3, f"FFDB_CRASH_SEED={seed}: only {mid_op} of {KILLS} kills hit an op in flight"
