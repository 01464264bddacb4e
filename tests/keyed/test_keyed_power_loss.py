"""Forged power losses of a keyed store: its segments and its index cut back to states a power
loss could leave, in both fsync modes and with both index kinds.

A store is written in two phases: phase A, then sync() (so A is durable in both modes), then
phase B (acknowledged, but with fsync=False not yet durable); it is closed cleanly. Copies of it
are then damaged as a reboot could leave them (as tests/crash/test_forged_power_loss.py does for
the engine): the state page is stamped with another boot, the mutable segment's index and data
are cut back to a commit boundary (or the data shorter than its index says), and the keyed
index is left as it was (ahead of the cut segments), replaced by its copy from the sync (behind),
lost, or truncated to half. Each copy is reopened in a child process (a damaged LMDB file can
crash the process that maps it) and checked:

- every key reads a value written for it, byte for byte (no key points at bytes that are not its
  value), also after new puts that land on the offsets the loss freed, and after one more reopen;
- what was durable before the loss is there (phase A; with fsync=True everything acknowledged);
- the mapping is one that a prefix of the ops left, and rebuild_index() finds the same one (a
  separate test: the index agrees with the segments, the durable truth).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest
from crash_support import append, cut_file, index_records_of, newest_segment, set_state_word, write_at
from keyed_support import (
    INDEXES,
    ChildFailed,
    Key,
    State,
    apply_op,
    describe_difference,
    open_keyed,
    read_state,
    run_in_child,
    value_for,
)

from conduit_flat_file_db import KeyedStore
from conduit_flat_file_db.index import HEADER_BYTES, REC_BLOB, RECORD_BYTES
from conduit_flat_file_db.naming import index_name, segment_name
from conduit_flat_file_db.state import W_BOOT_HI, W_BOOT_LO

pytestmark = pytest.mark.crash

KEYS: list[Key] = [f"key{i}" for i in range(25)] + [f"key{i}".encode() for i in range(25)]
Op = list[tuple[Key, int | None]]


class History(NamedTuple):
    """What was written: the state after phase A (synced), phase B's ops, and the mutable
    segment's record count at the sync."""

    state_a: State
    ops_b: list[Op]
    synced_records: int

    def states(self) -> list[State]:
        """The state after each prefix of phase B (the first: phase A's)."""
        states = [self.state_a]
        for op in self.ops_b:
            states.append(apply_op(states[-1], op))
        return states

    def written(self, key: Key) -> set[int | None]:
        """Every version ``key`` had at some point (None: absent)."""
        return {state.get(key) for state in self.states()}


def random_ops(rng: random.Random, count: int, first_version: int) -> list[Op]:
    """Puts, batches (repeated keys among them) and deletes."""
    version = first_version
    ops: list[Op] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.2:
            ops.append([(key, None) for key in rng.sample(KEYS, rng.randint(1, 3))])
            continue
        op: Op = []
        for _ in range(1 if roll < 0.7 else rng.randint(2, 6)):
            version += 1
            op.append((rng.choice(KEYS), version))
        ops.append(op)
    return ops


def apply_to_store(store: KeyedStore, op: Op) -> None:
    """One op through the API: put / put_many for puts, del / delete_many for deletes."""
    if op[0][1] is None:
        doomed = [key for key, _v in op]
        if len(doomed) == 1:
            store.pop(doomed[0], None)
        else:
            store.delete_many(doomed)
    elif len(op) == 1:
        store.put(op[0][0], value_for(op[0][0], op[0][1]))
    else:
        store.put_many([(key, value_for(key, version)) for key, version in op if version is not None])


def write_history(pristine: Path, index: str, fsync: bool, seed: int) -> History:
    """Phase A, sync, close, save the index aside, phase B, close."""
    rng = random.Random(seed)
    ops_a = random_ops(rng, 40, 0)
    state_a: State = {}
    with open_keyed(pristine / "store", index, fsync=fsync) as store:
        for op in ops_a:
            apply_to_store(store, op)
            state_a = apply_op(state_a, op)
        store.sync()
    segments = pristine / "store" / "segments"
    synced = len(index_records_of(segments, newest_segment(segments)))
    save_index(pristine / "store", pristine / "index_at_sync", index)
    ops_b = random_ops(rng, 20, 10**6)
    with open_keyed(pristine / "store", index, fsync=fsync) as store:
        for op in ops_b:
            apply_to_store(store, op)
    return History(state_a, ops_b, synced)


# -- the index files ------------------------------------------------------------------------------


def index_paths(store: Path, index: str) -> list[Path]:
    """The index's files (SQLite: the database and any -wal/-shm; LMDB: its directory)."""
    if index == "lmdb":
        return [store / "index.lmdb"]
    return sorted(store.glob("index.sqlite3*"))


def drop_index(store: Path, index: str) -> None:
    """Remove the index's files."""
    for path in index_paths(store, index):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def save_index(store: Path, dest: Path, index: str) -> None:
    """Copy the index's files into ``dest``."""
    dest.mkdir()
    paths = index_paths(store, index)
    assert paths, f"no {index} index files in {store}: {sorted(p.name for p in store.iterdir())}"
    for path in paths:
        if path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)


def restore_index(store: Path, saved: Path, index: str) -> None:
    """Replace the index with the saved copy (an index behind the segments)."""
    drop_index(store, index)
    for path in saved.iterdir():
        if path.is_dir():
            shutil.copytree(path, store / path.name)
        else:
            shutil.copy2(path, store / path.name)


def truncate_index(store: Path, index: str) -> None:
    """Cut the index's main file to half its size (4 KiB pages), dropping a SQLite -wal and -shm."""
    main = store / "index.lmdb" / "data.mdb" if index == "lmdb" else store / "index.sqlite3"
    for path in index_paths(store, index):
        if path.name.endswith(("-wal", "-shm")):
            path.unlink()
    cut_file(main, main.stat().st_size // 2 // 4096 * 4096)
    os.utime(main, (0, 0))  # as a power loss leaves it: last written before this boot


def keep_index(store: Path, saved: Path, index: str) -> None:  # pylint: disable=unused-argument
    """The index as it was at the close: ahead of segments that lost their tail."""


INDEX_STATES: dict[str, Callable[..., None]] = {
    "index_ahead": keep_index,
    "index_behind": restore_index,
    "index_lost": lambda store, saved, index: drop_index(store, index),
    "index_truncated": lambda store, saved, index: truncate_index(store, index),
}


# -- the segments ---------------------------------------------------------------------------------


def segment_cuts(segments: Path, synced: int, rng: random.Random) -> Iterator[tuple[str, int, int]]:
    """(name, index records kept, data bytes kept) of the mutable segment: at record boundaries
    from the sync to the end, the data at the end of the kept blobs, shorter than them, or whole."""
    records = index_records_of(segments, newest_segment(segments))
    ends = [0]
    for record in records:
        ends.append(max(ends[-1], record.offset + record.size if record.rtype == REC_BLOB else 0))
    total = len(records)
    points = sorted({synced, total, *rng.sample(range(synced, total + 1), min(4, total + 1 - synced))})
    for count in points:
        yield f"records_{count}_of_{total}", count, ends[count]
    middle = points[len(points) // 2]
    if middle > synced and ends[middle] > ends[middle - 1] + 1:
        yield f"records_{middle}_data_short", middle, (ends[middle - 1] + ends[middle]) // 2
    if synced < total:
        yield f"records_{synced}_data_whole", synced, ends[total]


def cut_segment(store: Path, records: int, data_bytes: int) -> None:
    """Cut the mutable segment's index to ``records`` records and its data to ``data_bytes``."""
    segments = store / "segments"
    number = newest_segment(segments)
    cut_file(segments / index_name(number), HEADER_BYTES + RECORD_BYTES * records)
    cut_file(segments / segment_name(number, False), data_bytes)


def torn_tail(store: Path, behind: tuple[Path, str] | None = None) -> None:
    """What a put in flight leaves: bytes past the data's commit, half a record past the index's
    (``behind``: (saved index, kind) to put back as well)."""
    segments = store / "segments"
    number = newest_segment(segments)
    records = index_records_of(segments, number)
    end = max((r.offset + r.size for r in records if r.rtype == REC_BLOB), default=0)
    write_at(segments / segment_name(number, False), end, b"\xa5" * 3000)
    idx = segments / index_name(number)
    cut_file(idx, HEADER_BYTES + RECORD_BYTES * len(records))
    append(idx, b"\x01" * (RECORD_BYTES // 2))
    if behind is not None:
        restore_index(store, *behind)


def forge_reboot(store: Path) -> None:
    """Stamp the engine's state page with another boot: the reopen treats it as after a power loss."""
    set_state_word(store / "segments", W_BOOT_LO, 0x1234)
    set_state_word(store / "segments", W_BOOT_HI, 0x5678)


# -- the checks (run in a child process) ----------------------------------------------------------


def check_no_wrong_key(store_path: str, index: str, history: History, durable: State | None, where: str) -> None:
    """Reopen: every key reads a value written for it; the durable state is there (``durable``:
    exactly, for fsync=True; else phase A's keys that phase B did not touch); new puts and one
    more reopen keep all of it true."""
    touched = {key for op in history.ops_b for key, _v in op}
    with open_keyed(store_path, index) as store:
        state = read_state(store, f"{where}: reopened")
        for key in KEYS:
            assert state.get(key) in history.written(key), f"{where}: {key!r} has version {state.get(key)}, never its"
        if durable is not None:
            assert state == durable, f"{where}: acknowledged writes lost: {describe_difference(state, durable)}"
        else:
            kept = {k: v for k, v in history.state_a.items() if k not in touched}
            got = {k: v for k, v in state.items() if k not in touched}
            assert got == kept, f"{where}: writes durable before the loss lost: {describe_difference(got, kept)}"
        report = store.verify()
        assert report.ok, f"{where}: verify(): {report.problems[:10]}"
        fresh = {key: 5 * 10**6 + i for i, key in enumerate(KEYS[::4])}
        for key, version in fresh.items():
            store.put(key, value_for(key, version))
        after = read_state(store, f"{where}: after new puts")
        assert after == {**state, **fresh}, f"{where}: new puts: {describe_difference(after, {**state, **fresh})}"
        report = store.verify()
        assert report.ok, f"{where}: verify() after new puts: {report.problems[:10]}"
    with open_keyed(store_path, index) as store:
        again = read_state(store, f"{where}: reopened again")
        assert again == after, f"{where}: second reopen: {describe_difference(again, after)}"


def check_prefix_and_rebuild(store_path: str, index: str, history: History, where: str) -> None:
    """Reopen: the mapping is one a prefix of the ops left, and rebuild_index() finds the same."""
    with open_keyed(store_path, index) as store:
        state = read_state(store, f"{where}: reopened")
        states = history.states()
        assert state in states, (
            f"{where}: the mapping is no state a prefix of the ops leaves; from the nearest: "
            + min((describe_difference(state, s) for s in states), key=len)
        )
        store.rebuild_index()
        rebuilt = read_state(store, f"{where}: rebuilt")
        assert rebuilt == state, f"{where}: rebuild_index() disagrees with the reopened index: " + describe_difference(
            rebuilt, state
        )


def run_cases(
    tmp_path: Path, pristine: Path, cases: list[tuple[str, Callable[[Path], None]]], check: Callable[[Path, str], None]
) -> None:
    """For each case: copy the pristine store, damage it, forge a reboot, check; report all failures."""
    failures = []
    for number, (name, damage) in enumerate(cases):
        copy = tmp_path / f"case{number}"
        shutil.copytree(pristine / "store", copy)
        damage(copy)
        forge_reboot(copy)
        try:
            check(copy, name)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}"[-2500:])
        shutil.rmtree(copy)
    assert not failures, f"{len(failures)} of {len(cases)} forged power losses failed:\n" + "\n\n".join(failures)


@INDEXES
def test_unsynced_power_loss_leaves_no_key_pointing_at_other_bytes(tmp_path: Path, index: str) -> None:
    """fsync=False: segments cut anywhere after the sync, index ahead, behind, lost or truncated."""
    pristine = tmp_path / "pristine"
    history = write_history(pristine, index, False, seed=5)
    cases = damages(pristine, history, index, random.Random(5))

    def check(copy: Path, name: str) -> None:
        run_in_child(check_no_wrong_key, str(copy), index, history, None, name)

    run_cases(tmp_path, pristine, cases, check)


@INDEXES
def test_unsynced_power_loss_reopens_to_a_prefix_of_the_ops_that_rebuild_agrees_with(
    tmp_path: Path, index: str
) -> None:
    """fsync=False: as above; the index reopened after the loss agrees with the segments."""
    pristine = tmp_path / "pristine"
    history = write_history(pristine, index, False, seed=6)
    cases = damages(pristine, history, index, random.Random(6))

    def check(copy: Path, name: str) -> None:
        run_in_child(check_prefix_and_rebuild, str(copy), index, history, name)

    run_cases(tmp_path, pristine, cases, check)


def damages(
    pristine: Path, history: History, index: str, rng: random.Random
) -> list[tuple[str, Callable[[Path], None]]]:
    """Every segment cut combined with every index state."""
    cuts = list(segment_cuts(pristine / "store" / "segments", history.synced_records, rng))
    saved = pristine / "index_at_sync"
    return [
        (
            f"{cut_name}+{state_name}",
            functools.partial(cut_and_forge, count=count, data=data, forge=forge, saved=saved, index=index),
        )
        for cut_name, count, data in cuts
        for state_name, forge in INDEX_STATES.items()
    ]


def cut_and_forge(  # pylint: disable=too-many-arguments
    copy: Path, *, count: int, data: int, forge: Callable[[Path, Path, str], None], saved: Path, index: str
) -> None:
    """Cut the segment, then put the index in its state."""
    cut_segment(copy, count, data)
    forge(copy, saved, index)


@INDEXES
def test_fsync_store_keeps_every_acknowledged_write_across_a_power_loss(tmp_path: Path, index: str) -> None:
    """fsync=True: whatever the index lost (behind, lost, truncated) and a put torn in flight, the
    reopened store holds exactly every acknowledged write."""
    pristine = tmp_path / "pristine"
    history = write_history(pristine, index, True, seed=8)
    final = history.states()[-1]
    saved = pristine / "index_at_sync"
    cases: list[tuple[str, Callable[[Path], None]]] = [
        (name, functools.partial(forge, saved=saved, index=index)) for name, forge in INDEX_STATES.items()
    ]
    cases += [
        ("torn_tail+index_ahead", torn_tail),
        ("torn_tail+index_behind", functools.partial(torn_tail, behind=(saved, index))),
    ]

    def check(copy: Path, name: str) -> None:
        run_in_child(check_prefix_and_rebuild, str(copy), index, history, name)
        run_in_child(check_no_wrong_key, str(copy), index, history, final, name)

    run_cases(tmp_path, pristine, cases, check)


def test_child_failures_are_reported(tmp_path: Path) -> None:
    """run_in_child turns a failed check in the child into ChildFailed (so a case cannot pass by dying)."""
    with pytest.raises(ChildFailed, match="no such store"):
        run_in_child(_fail, str(tmp_path))


def _fail(path: str) -> None:
    raise AssertionError(f"no such store at {path}")
