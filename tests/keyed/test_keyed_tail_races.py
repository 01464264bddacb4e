"""The keyed store's unapplied tail against the things that move under it: an index rebuilt while
others read, several instances writing the same keys while one applies, read-only instances that
only follow, and vacuums deleting the segments a reader had not read yet.

Every check is exact: the operations are sequential (one instance at a time, or threads reading
values that never change), so a read must give the last acknowledged write of the key, a deleted
key must stay deleted, and len() and iteration must agree with the model.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from crash_support import READY_SECONDS, crash_seed, is_ready
from keyed_support import INDEXES, OpLog, State, apply_op, child_context, describe_difference, open_keyed, read_ops

from conduit_flat_file_db import KeyedStore

pytestmark = pytest.mark.concurrency

REBUILD_KEYS = 12000
SMALL_SEGMENTS = 64 * 1024
HOT_KEYS = [f"hot{i}" for i in range(12)] + [b"hot%d" % i for i in range(4)]


@INDEXES
def test_a_rebuild_of_the_index_never_shows_a_reader_a_missing_or_older_value(tmp_path: Path, index: str) -> None:
    """rebuild_index() replays every key log into the index while other threads read through a
    read-only instance and through the rebuilding instance itself: each read gives the key's
    newest value and len() the number of keys, never the empty or half-replayed index."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put_many([(f"k{i}", b"old") for i in range(REBUILD_KEYS)])
        store.put_many([(f"k{i}", b"new%d" % i) for i in range(REBUILD_KEYS)])
        store.delete_many([f"k{i}" for i in range(0, REBUILD_KEYS, 3)])
    alive = [i for i in range(REBUILD_KEYS) if i % 3]
    probes = [alive[0], alive[len(alive) // 2], alive[-1]]
    writer = open_keyed(path, index)
    reader = open_keyed(path, index, readonly=True)
    stop = threading.Event()
    rebuilding = threading.Event()
    problems: list[str] = []
    reads = [0]

    def read_until_stopped(store: object) -> None:
        assert hasattr(store, "get")
        while not stop.is_set():
            during = rebuilding.is_set()
            for i in probes:
                got = store.get(f"k{i}")
                if got != b"new%d" % i:
                    problems.append(f"{store!r}: k{i} read {got!r}")
            if store.get("k0") is not None:
                problems.append(f"{store!r}: the deleted k0 reads")
            count = len(store)  # type: ignore[arg-type]
            if count != len(alive):
                problems.append(f"{store!r}: len() is {count}, not {len(alive)}")
            reads[0] += during and rebuilding.is_set()

    threads = [threading.Thread(target=read_until_stopped, args=(store,)) for store in (reader, writer)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(3):
            rebuilding.set()
            assert writer.rebuild_index() == len(alive)
            rebuilding.clear()
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        reader.close()
        writer.close()
    assert not problems, f"{len(problems)} bad reads: {problems[:6]}"
    assert reads[0] > 0, "no read ran while the index was being rebuilt: the test did not test it"


@INDEXES
@pytest.mark.parametrize("readonly", [True, False])
def test_a_store_read_from_another_thread_closes_from_this_one(tmp_path: Path, index: str, readonly: bool) -> None:
    """A store whose index another thread read (its own connection) closes without an error from
    the thread that opened it, read-only or not, and opens again."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store["k"] = b"v"
    store = open_keyed(path, index, readonly=readonly)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.get("k")))
    thread.start()
    thread.join()
    store.close()
    assert seen == [b"v"]
    with open_keyed(path, index, readonly=readonly) as again:
        assert again["k"] == b"v"


# -- several processes, one model --------------------------------------------------------------


def serve(conn: Connection, path: str, index: str, readonly: bool) -> None:
    """A child process holding one long-lived instance: runs the commands it receives, answers each."""
    store = open_keyed(path, index, readonly=readonly, max_file_size=SMALL_SEGMENTS)
    try:
        while True:
            command, *args = conn.recv()
            if command == "stop":
                break
            try:
                conn.send(("ok", _run(store, command, args)))
            except Exception as exc:  # pylint: disable=broad-exception-caught  # sent to the parent, which fails
                conn.send(("error", repr(exc)))
    finally:
        store.close()
        conn.send(("ok", None))


def _run(store: KeyedStore, command: str, args: list[Any]) -> Any:
    if command == "put":
        store[args[0]] = args[1]
    elif command == "put_many":
        store.put_many(args[0])
    elif command == "delete_many":
        return store.delete_many(args[0])
    elif command == "get":
        return [store.get(key) for key in args[0]]
    elif command == "vacuum":
        return store.vacuum(0.0).segments_removed
    elif command == "digest":
        return digest(store.items()), len(store), len(list(store.keys(prefix="hot")))
    return None


def digest(items: Any) -> str:
    """One hash of every (key, value) pair, in the store's order (bytes keys first)."""
    sha = hashlib.sha256()
    for key, value in sorted(items, key=lambda pair: (isinstance(pair[0], str), pair[0])):
        sha.update(repr((key, bytes(value))).encode())
    return sha.hexdigest()


class Fleet:
    """The child processes, each with its instance, and the model of the mapping they share."""

    def __init__(self, path: Path, index: str, roles: list[bool]) -> None:
        ctx = child_context()
        self.conns: list[Connection] = []
        self.procs = []
        for readonly in roles:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(theirs, str(path), index, readonly))
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)
        self.model: dict[Any, bytes] = {}

    def ask(self, who: int, *command: Any) -> Any:
        """Run a command in child ``who`` and return its answer (a child's exception fails the test)."""
        self.conns[who].send(command)
        if not self.conns[who].poll(60):
            raise AssertionError(f"child {who} did not answer {command[0]} within 60 s")
        status, result = self.conns[who].recv()
        assert status == "ok", f"child {who}: {command[0]} raised {result}"
        return result

    def check(self, who: int, keys: list[Any], where: str) -> None:
        """Child ``who`` reads ``keys``: each the model's value, or absent."""
        got = self.ask(who, "get", keys)
        want = [self.model.get(key) for key in keys]
        bad = [(key, g, w) for key, g, w in zip(keys, got, want) if g != w]
        assert not bad, f"{where}: child {who} read (key, got, want) {bad[:4]}"

    def check_all(self, who: int, where: str) -> None:
        """Child ``who``'s whole mapping, len() and a prefix scan agree with the model."""
        hot = sum(1 for key in self.model if isinstance(key, str) and key.startswith("hot"))
        got = self.ask(who, "digest")
        assert got == (digest(self.model.items()), len(self.model), hot), f"{where}: child {who}: {got[1:]}"

    def close(self) -> None:
        """Stop the children (each closes its instance: a writer applies its tail)."""
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                conn.send(("stop",))
                conn.poll(60)
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()


def hot_value(key: Any, version: int, rng: random.Random) -> bytes:
    """A value naming its key and version, of 0 to 1,500 more bytes."""
    return b"%r:%d|" % (key, version) + rng.randbytes(rng.choice([0, 10, 300, 1500]))


def bulk_then_unapplied(fleet: Fleet, step: int, rng: random.Random, where: str) -> None:
    """Thousands of keys while the read-only process does not look, then writes no one applies
    yet; the read-only process reads them all at once (its tail past 16,384 keys, cut back to
    what the index lacks) and must still see those last writes."""
    fleet.check(2, HOT_KEYS, where)  # (after the last vacuum: no segment it reads goes)
    for batch in range(5):
        items: list[tuple[Any, bytes]] = [(f"bulk{step}-{batch}-{i}", b"b%d" % i) for i in range(3500)]
        fleet.ask(rng.randrange(2), "put_many", items)
        fleet.model.update(items)
    items = [(f"bulk{step}-last-{i}", b"w") for i in range(2100)]
    fleet.ask(0, "put_many", items)  # writer 0 reads all that and applies it: its tail is empty
    fleet.model.update(items)
    for key in HOT_KEYS:  # then writes of writer 0 alone, which no one applies yet
        if rng.random() < 0.5:
            fleet.ask(0, "delete_many", [key])
            fleet.model.pop(key, None)
        else:
            fleet.ask(0, "put", key, b"after %d" % step)
            fleet.model[key] = b"after %d" % step
    fleet.check_all(2, where)


@INDEXES
def test_processes_writing_the_same_keys_each_read_the_last_acknowledged_write(tmp_path: Path, index: str) -> None:
    """Two writer processes and a read-only one, each with one instance open for the whole run,
    take turns: puts, batches and deletes of the same hot keys, batches of thousands of keys (a
    writer's tail past 2,048 keys, the read-only tail past 16,384 before it reads again), vacuums,
    on segments of 64 KiB. After every write, a random process reads hot keys: each is the last
    acknowledged value or absent when last deleted; now and then a whole mapping, len() and a
    prefix scan are compared with the model."""
    seed = crash_seed()
    rng = random.Random(seed)
    path = tmp_path / "store"
    open_keyed(path, index, max_file_size=SMALL_SEGMENTS).close()
    fleet = Fleet(path, index, [False, False, True])
    version = 0
    try:
        for step in range(300):
            where = f"FFDB_CRASH_SEED={seed} step {step}"
            writer = rng.randrange(2)
            roll = rng.random()
            version += 1
            if step == 150:
                bulk_then_unapplied(fleet, step, rng, where)
            elif roll < 0.4:
                key = rng.choice(HOT_KEYS)
                data = hot_value(key, version, rng)
                fleet.ask(writer, "put", key, data)
                fleet.model[key] = data
            elif roll < 0.6:
                items = [(key, hot_value(key, version, rng)) for key in rng.sample(HOT_KEYS, rng.randint(1, 6))]
                fleet.ask(writer, "put_many", items)
                fleet.model.update(items)
            elif roll < 0.85:
                doomed = rng.sample(HOT_KEYS, rng.randint(1, 4))
                if rng.random() < 0.3 and fleet.model:
                    doomed.append(rng.choice(list(fleet.model)))
                gone = fleet.ask(writer, "delete_many", doomed)
                assert gone == len({key for key in doomed if key in fleet.model}), f"{where}: delete_many count"
                for key in doomed:
                    fleet.model.pop(key, None)
            elif roll < 0.9:
                fleet.ask(writer, "vacuum")
            fleet.check(rng.randrange(3), rng.sample(HOT_KEYS, 5), where)
            if step % 60 == 59:
                fleet.check_all(rng.randrange(3), where)
        for who in range(3):
            fleet.check_all(who, "at the end")
    finally:
        fleet.close()
    with open_keyed(path, index) as store:
        assert digest(store.items()) == digest(fleet.model.items())
        assert store.verify().ok


EXPIRE_KEYS = 20000


@INDEXES
def test_expire_never_deletes_a_key_written_again_after_its_cutoff(tmp_path: Path, index: str) -> None:
    """expire(max_age=0) deletes the keys written before its call; another instance writes some
    of them again meanwhile: each key whose last write began well after the call began keeps
    that value (expire decides on the row it scanned, not on the key)."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put_many([(f"k{i}", b"old") for i in range(EXPIRE_KEYS)])
    writer = open_keyed(path, index)
    expirer = open_keyed(path, index)
    started = threading.Event()
    stop = threading.Event()
    last: dict[str, tuple[int, bytes]] = {}

    def write_again() -> None:
        rng = random.Random(7)
        started.wait()
        version = 0
        while not stop.is_set():
            key = f"k{rng.randrange(EXPIRE_KEYS)}"
            version += 1
            begun = time.time_ns()
            writer[key] = b"new %d" % version
            last[key] = (begun, b"new %d" % version)

    thread = threading.Thread(target=write_again)
    thread.start()
    try:
        begun = time.time_ns()
        started.set()
        expirer.expire(max_age=0)
        stop.set()
        thread.join()
        late = {key: data for key, (at, data) in last.items() if at > begun + 50_000_000}
        assert late, "no write began 50 ms after the expire did: the test did not test it"
        lost = [key for key, data in late.items() if writer.get(key) != data]
        assert not lost, f"expire deleted {len(lost)} of {len(late)} keys written after its cutoff: {lost[:5]}"
    finally:
        stop.set()
        thread.join()
        writer.close()
        expirer.close()


# -- writers killed while they apply -----------------------------------------------------------

APPLY_KEYS = [f"a{i}" for i in range(3000)]
APPLY_KILLS = 8


def apply_victim(cfg: dict[str, Any]) -> None:
    """Batches of up to 2,100 keys and deletions, so that nearly every write applies the tail of
    about 2,048 keys to the index; each op logged before and after (keyed_support.OpLog)."""
    rng = random.Random(cfg["seed"])
    log = OpLog(cfg["log"])
    version = cfg["base_version"]
    with open_keyed(cfg["path"], cfg["index"], max_file_size=SMALL_SEGMENTS) as store:
        log.note(f"ready {os.getpid()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            keys = rng.sample(APPLY_KEYS, rng.choice([1, 50, 700, 2100]))
            if rng.random() < 0.75:
                version += 1
                log.intent("put_many", [(key, version) for key in keys])
                store.put_many([(key, b"%s:%d" % (key.encode(), version)) for key in keys])
            else:
                log.intent("delete_many", [(key, None) for key in keys])
                store.delete_many(keys)
            log.ack()


def _mapping(path: Path, index: str, readonly: bool) -> State:
    """The store's keys and versions, each value checked to be the one its version names."""
    with open_keyed(path, index, readonly=readonly) as store:
        state: State = {}
        for key, data in store.items():
            assert isinstance(key, str)
            head, _, version = data.partition(b":")
            assert head == key.encode() and version.isdigit(), f"{key!r} holds {data[:40]!r}"
            state[key] = int(version)
        assert len(store) == len(state), f"len() is {len(store)}, the store lists {len(state)} keys"
        if not readonly:
            assert store.verify().ok
    return state


@pytest.mark.crash
@INDEXES
def test_a_writer_killed_while_it_applies_loses_no_acknowledged_write(tmp_path: Path, index: str) -> None:
    """A writer whose writes apply about 2,048 keys to the index nearly every time is SIGKILLed
    at random instants (mid-apply, mid-commit, between), APPLY_KILLS times: a read-only open and
    then a writer's open find exactly the acknowledged writes, with the one in flight all or
    nothing; the next writer goes on in the same store."""
    seed = crash_seed()
    rng = random.Random(seed)
    path = tmp_path / "store"
    state: State = {}
    for round_ in range(APPLY_KILLS):
        log = tmp_path / f"round{round_}.log"
        cfg = {"path": str(path), "index": index, "seed": rng.randrange(2**32), "log": str(log)}
        cfg["base_version"] = (round_ + 1) * 10**6
        proc = child_context().Process(target=apply_victim, args=(cfg,))
        proc.start()
        deadline = time.monotonic() + READY_SECONDS
        while not is_ready(log):
            assert proc.is_alive() and time.monotonic() < deadline, "the writer did not open the store"
            time.sleep(0.001)
        time.sleep(rng.uniform(0.01, 0.4))
        assert proc.pid is not None and proc.is_alive()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        acked, pending = read_ops(log)
        for op in acked:
            state = apply_op(state, op)
        where = f"FFDB_CRASH_SEED={seed} round {round_}"
        candidates = [state] + ([apply_op(state, pending)] if pending else [])
        for readonly in (True, False):
            seen = _mapping(path, index, readonly)
            assert seen in candidates, f"{where} (readonly={readonly}): {describe_difference(seen, state)}"
        state = seen


def write_and_vanish(path: str, index: str) -> None:
    """Open the store for writing (its open recovers), write, and exit without closing it: the
    writes stay in the key logs, not applied to the index."""
    store = open_keyed(path, index)
    assert len(store) == 100 and "lost0" not in store
    store["new"] = b"after the recovery"
    store.put_many([(f"n{i}", b"n") for i in range(50)])
    os._exit(0)  # pylint: disable=protected-access  # no close(): nothing applied


@INDEXES
def test_a_reader_opened_before_the_recovery_of_a_power_loss_sees_the_writes_after_it(
    tmp_path: Path, index: str
) -> None:
    """A power loss took the segments' tail after the index applied it (forged: the segments of
    an earlier moment put back under the later index). A read-only instance opened before any
    writer starts from the index's checkpoint, past the end of the log; a writer's open then
    rebuilds the index and writes, and those writes, not applied, must be visible to that reader."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put_many([(f"k{i}", b"kept") for i in range(100)])
    shutil.copytree(path / "segments", tmp_path / "early")
    with open_keyed(path, index) as store:
        for i in range(300):
            store[f"lost{i}"] = b"lost"
    shutil.rmtree(path / "segments")
    shutil.copytree(tmp_path / "early", path / "segments")
    with open_keyed(path, index, readonly=True) as reader:
        reader.get("k0")
        writer = child_context().Process(target=write_and_vanish, args=(str(path), index))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0, f"the writer exited {writer.exitcode}"
        assert reader.get("new") == b"after the recovery"
        assert reader.get("n49") == b"n" and "lost0" not in reader and len(reader) == 151


CLEAR_KEYS = 12000  # more than one of clear()'s batches


@INDEXES
def test_clear_returns_while_another_instance_keeps_writing_new_keys(tmp_path: Path, index: str) -> None:
    """clear() while another instance writes a new key after each of its batches (as a process
    writing all the time does): clear() returns after one pass over the keys, every key present
    when it began is gone, and the keys written meanwhile that it did not reach are kept.
    Before the fix clear() scanned again after each batch, found the new keys, and never
    returned while the other writer went on."""
    path = tmp_path / "store"
    writer = open_keyed(path, index)
    clearer = open_keyed(path, index)
    try:
        writer.put_many([(f"old{i:05d}", b"old") for i in range(CLEAR_KEYS)])
        commit = clearer._commit  # pylint: disable=protected-access
        written: list[str] = []

        def commit_then_write(*args: Any, **kwargs: Any) -> None:
            commit(*args, **kwargs)
            if len(written) >= 50:
                raise AssertionError("clear() went on deleting the keys written after it began")
            written.append(f"new{len(written)}")
            writer[written[-1]] = b"new"

        clearer._commit = commit_then_write  # type: ignore[method-assign]  # pylint: disable=protected-access
        clearer.clear()
        assert len(written) == 2  # one commit per batch of 10,000 keys
        assert sorted(clearer) == sorted(writer) == written  # every old key gone; the new ones sort before them
    finally:
        writer.close()
        clearer.close()


@INDEXES
@pytest.mark.parametrize("call", ["get", "len", "close"])
def test_a_reader_returns_while_another_instance_commits_during_each_read_of_the_key_logs(
    tmp_path: Path, index: str, call: str
) -> None:
    """Another instance commits a write each time this one reads the key logs (as writers that
    never pause do): a lookup, len() and the apply at close() read the key logs as far as their
    end when the call began, and return. Before the fix they read on until a read of the key
    logs found no new commit, which never came while the other writer went on."""
    path = tmp_path / "store"
    writer = open_keyed(path, index)
    reader = open_keyed(path, index)
    try:
        reader["mine"] = b"applied at close"  # something for close() to apply
        writer["k"] = b"before the call"
        log_tail = reader.db.log_tail
        written: list[str] = []

        def log_tail_then_write(*args: Any, **kwargs: Any) -> Any:
            found = log_tail(*args, **kwargs)
            if len(written) >= 50:
                raise AssertionError("the reader went on reading the key logs written after its call began")
            written.append(f"new{len(written)}")
            writer[written[-1]] = b"new"
            return found

        reader.db.log_tail = log_tail_then_write  # type: ignore[method-assign]
        if call == "get":
            assert reader["k"] == b"before the call"
        elif call == "len":
            assert len(reader) >= 2
        else:
            reader.close()
        assert 1 <= len(written) <= 2
    finally:
        reader.close()
    with writer:
        assert writer["mine"] == b"applied at close" and writer["k"] == b"before the call"
        assert sorted(writer) == sorted(["k", "mine", *written])
