"""Many processes on one keyed store: 3 writers, 2 readers (one read-only) and a process that
runs vacuum() in a loop (with verify() now and then), for a few seconds, on a store with small
segments so that vacuum always has sealed segments with dead values to rewrite.

Every value names its key and a version (keyed_support.value_for), so a reader checks each value
byte for byte, and per key that only one writer writes, that its versions never go back. No
process may raise anything (a KeyError only where a key may be absent). At the end the mapping is
what the writers' logs say: for a key one writer owns, its last op; for a key all writers share,
one of the writers' last ops on it.
"""

from __future__ import annotations

import json
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Callable

import pytest
from keyed_support import INDEXES, Key, State, apply_op, child_context, open_keyed, read_ops, read_state
from keyed_workers import SHARED_KEYS, own_keys, reader_role, vacuum_role, writer_role

pytestmark = pytest.mark.concurrency

WRITERS = 3
READERS = 2
RUN_SECONDS = 4.0
START_SECONDS = 30.0
JOIN_SECONDS = 60.0
MAX_FILE_SIZE = 64 * 1024
MIN_READS = 100


class Crew:
    """The worker processes of one test and their files."""

    def __init__(self, tmp_path: Path) -> None:
        self.ctx = child_context()
        self.stop = self.ctx.Event()
        self.tmp_path = tmp_path
        self.procs: list[tuple[str, BaseProcess, Event, dict[str, Any]]] = []

    def start(self, name: str, role: Callable[..., None], cfg: dict[str, Any]) -> dict[str, Any]:
        """Start ``role(cfg, ready, stop)``; cfg gets its log, result and errors files."""
        cfg = {
            **cfg,
            "log": str(self.tmp_path / f"{name}.log"),
            "result": str(self.tmp_path / f"{name}.json"),
            "errors": str(self.tmp_path / f"{name}.errors"),
        }
        ready = self.ctx.Event()
        proc = self.ctx.Process(target=role, args=(cfg, ready, self.stop), name=name)
        proc.start()
        self.procs.append((name, proc, ready, cfg))
        return cfg

    def errors(self, name: str) -> str:
        """The traceback a worker wrote, if any."""
        path = self.tmp_path / f"{name}.errors"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def run(self, seconds: float) -> None:
        """Wait until every worker has worked, let them run ``seconds``, stop them, check their exits."""
        try:
            deadline = time.monotonic() + START_SECONDS
            for name, proc, ready, _cfg in self.procs:
                while not ready.wait(0.1):
                    assert proc.is_alive(), (
                        f"{name} exited ({proc.exitcode}) before it did anything:\n{self.errors(name)}"
                    )
                    assert time.monotonic() < deadline, f"{name} did nothing within {START_SECONDS} s"
            time.sleep(seconds)
        finally:
            self.stop.set()
            for _name, proc, _ready, _cfg in self.procs:
                proc.join(JOIN_SECONDS)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        failed = {name: (proc.exitcode, self.errors(name)) for name, proc, _ready, _cfg in self.procs if proc.exitcode}
        assert not failed, "\n".join(f"{name} exited {code}:\n{text}" for name, (code, text) in failed.items())


def expected_finals(crew: Crew) -> tuple[State, dict[Key, list[int | None]], set[tuple[Key, int]]]:
    """From the writers' logs: the final state of the keys one writer owns, the candidate final
    versions (None: absent) of each shared key, and every (key, version) ever written."""
    owned: State = {}
    shared: dict[Key, list[int | None]] = {key: [] for key in SHARED_KEYS}
    written: set[tuple[Key, int]] = set()
    for writer in range(WRITERS):
        acked, pending = read_ops(crew.tmp_path / f"writer{writer}.log")
        assert pending is None, f"writer{writer} stopped in the middle of an op"
        assert len(acked) >= 20, f"writer{writer} acknowledged only {len(acked)} ops"
        last: dict[Key, int | None] = {}
        for op in acked:
            for key, version in op:
                last[key] = version
                if version is not None:
                    written.add((key, version))
        mine = set(own_keys(writer))
        owned.update(apply_op({}, [(k, v) for k, v in last.items() if k in mine]))
        for key in SHARED_KEYS:
            if key in last:
                shared[key].append(last[key])
    return owned, shared, written


@INDEXES
def test_writers_readers_and_vacuum_in_processes_see_only_written_values(tmp_path: Path, index: str) -> None:
    """3 writers, 2 readers and vacuum() in a loop, each a process, on one store for RUN_SECONDS:
    no exception, every read value is byte for byte one written for its key, no stale read, and
    the final mapping is what the writers' logs say."""
    path = tmp_path / "store"
    open_keyed(path, index, max_file_size=MAX_FILE_SIZE).close()
    base = {"path": str(path), "index": index, "max_file_size": MAX_FILE_SIZE, "writers": WRITERS}
    crew = Crew(tmp_path)
    for writer in range(WRITERS):
        crew.start(f"writer{writer}", writer_role, {**base, "writer": writer, "seed": 100 + writer})
    readers = [
        crew.start(f"reader{r}", reader_role, {**base, "seed": 200 + r, "readonly": r == 1}) for r in range(READERS)
    ]
    vacuum = crew.start("vacuum", vacuum_role, base)
    crew.run(RUN_SECONDS)

    owned, shared, written = expected_finals(crew)
    problems: list[str] = []
    for cfg in readers:
        result = json.loads(Path(cfg["result"]).read_text(encoding="utf-8"))
        assert result["reads"] >= MIN_READS, f"a reader read only {result['reads']} values"
        problems += result["problems"]
        unwritten = [(k, v) for k, v in map(tuple, result["seen"]) if (_key(k), v) not in written]
        problems += [f"a reader saw version {v} of {k}, which no writer wrote" for k, v in unwritten[:10]]
    vacuumed = json.loads(Path(vacuum["result"]).read_text(encoding="utf-8"))
    problems += vacuumed["problems"]
    assert not problems, "\n".join(problems[:30])
    assert vacuumed["vacuums"] >= 3, f"vacuum() ran only {vacuumed['vacuums']} times"
    assert vacuumed["segments_removed"] > 0, "vacuum() never removed a segment: the test did not test it"

    with open_keyed(path, index) as store:
        state = read_state(store, "after the run")
        report = store.verify()
        assert report.ok, report.problems[:10]
        assert store.stats().keys == len(state)
    for key, version in owned.items():
        assert state.get(key) == version, f"{key!r}: final version {state.get(key)}, the owner's log says {version}"
    for key in state:
        assert key in owned or key in shared, f"{key!r} is in the store, its owner's log says it is absent"
    for key, candidates in shared.items():
        if candidates:
            assert state.get(key) in candidates, f"{key!r}: final {state.get(key)}, the writers' last ops {candidates}"
        else:
            assert key not in state


def _key(encoded: str) -> Key:
    """A key from a reader's JSON (["s", text] or ["b", hex])."""
    kind, text = json.loads(encoded)
    return str(text) if kind == "s" else bytes.fromhex(text)
