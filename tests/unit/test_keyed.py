"""The keyed store (conduit_flat_file_db/keyed/): the mapping, its errors, the key logs as the
truth behind the index (catch-up, rebuild, power-loss check), vacuum's rewrites, arrays."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import xxhash

from conduit_flat_file_db import (
    CorruptionError,
    DataLocation,
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    FormatError,
    InvalidKeyError,
    KeyedStore,
    KeyTooLongError,
    LazyOpener,
    NotAnArrayError,
    Slice,
)
from conduit_flat_file_db.keyed import core as keyed_core
from conduit_flat_file_db.keyed.core import SEGMENTS_DIR
from conduit_flat_file_db.keyed.keylog import Entry, Row, decode_keylog, encode_key, encode_keylog

INDEXES = ["sqlite", "lmdb"]


@pytest.fixture(name="index", params=INDEXES)
def fixture_index(request: pytest.FixtureRequest) -> str:
    """Each test runs against both indexes."""
    return str(request.param)


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path, index: str) -> Iterator[KeyedStore]:
    """A fresh store."""
    with KeyedStore(tmp_path / "kv", index=index) as opened:
        yield opened


def _index_files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name.startswith("index.") and p.name != "index.lock"]


def _remove_index(path: Path) -> None:
    for index in _index_files(path):
        if index.is_dir():
            shutil.rmtree(index)
        else:
            index.unlink()


def _contents(store: KeyedStore) -> dict[object, tuple[bytes, object]]:
    return {key: (store[key], store.meta(key)[1:]) for key in store}


# -- the mapping -------------------------------------------------------------------------


def test_mapping_basics_with_str_and_bytes_keys_as_different_keys(store: KeyedStore) -> None:
    """A str key and a bytes key with the same bytes are two keys, as in a dict."""
    store["a"] = b"str key"
    store[b"a"] = bytearray(b"bytes key")
    store["b"] = memoryview(b"view")
    assert (store["a"], store[b"a"], store["b"]) == (b"str key", b"bytes key", b"view")
    assert len(store) == 3 and "a" in store and b"a" in store and "c" not in store
    assert list(store) == [b"a", "a", "b"]  # bytes keys first, then str keys, each by their bytes
    del store["a"]
    assert len(store) == 2 and "a" not in store
    with pytest.raises(KeyError):
        del store["a"]
    with pytest.raises(KeyError):
        _ = store["a"]
    assert store.get("a") is None and store.get("a", b"d") == b"d"
    store["b"] = b"again"
    assert store["b"] == b"again" and len(store) == 2


def test_keys_with_a_prefix_match_only_keys_of_its_type(store: KeyedStore) -> None:
    """keys(prefix=...) is a range scan of one key type."""
    store.update({"tx/1": b"1", "tx/2": b"2", "ty": b"3", b"tx/3": b"4"})
    assert list(store.keys(prefix="tx/")) == ["tx/1", "tx/2"]
    assert list(store.keys(prefix=b"tx")) == [b"tx/3"]
    assert len(store.keys(prefix="t")) == 3 and "ty" in store.keys(prefix="t")
    assert sorted(store.keys(), key=repr) == sorted([b"tx/3", "tx/1", "tx/2", "ty"], key=repr)


def test_put_many_later_pairs_win_and_get_many_keeps_the_callers_order(store: KeyedStore) -> None:
    """One batch; a key given twice ends with its last value; get_many returns in input order."""
    store.put_many([("k", b"first"), ("j", b"j"), ("k", b"second")])
    assert store["k"] == b"second" and len(store) == 2
    assert store.get_many(["k", "j", "k"]) == [b"second", b"j", b"second"]
    with pytest.raises(KeyError):
        store.get_many(["j", "absent"])
    assert store.delete_many(["j", "absent", "j"]) == 1 and list(store) == ["k"]


def test_slices_of_a_value(store: KeyedStore) -> None:
    """get(slice=...) reads only part of a value."""
    store["v"] = b"0123456789"
    assert store.get("v", slice=Slice(2, 5)) == b"234"
    assert store.get("v", slice=Slice(7)) == b"789"


def test_bad_keys_and_values_are_typed_errors_and_store_nothing(store: KeyedStore) -> None:
    """Keys that are not str/bytes, keys too long, values that are not bytes-like, meta that is not
    JSON: typed errors, and the store is unchanged."""
    for key in (1, 1.5, None, ("t",), "\udc80"):
        with pytest.raises(InvalidKeyError):
            store[key] = b"x"  # type: ignore[index]
    store["x" * 510] = b"longest key"
    with pytest.raises(KeyTooLongError) as info:
        store["x" * 511] = b"x"
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError):
        store["k"] = "a str value"
    with pytest.raises(TypeError):
        store.put("k", b"v", meta={"bad": object()})
    with pytest.raises(TypeError):
        store.put_many([("a", b"1"), ("b",)])  # type: ignore[list-item]
    with pytest.raises(KeyError):
        _ = store[b"missing"]
    assert list(store) == ["x" * 510]


def test_read_only_store_refuses_every_write_as_unsupported_operation(tmp_path: Path, index: str) -> None:
    """mmappickle's contract: a write on a read-only store is an io.UnsupportedOperation."""
    with KeyedStore(tmp_path / "kv", index=index) as writer:
        writer["k"] = b"v"
    reader = KeyedStore(tmp_path / "kv", index=index, readonly=True)
    assert reader["k"] == b"v"
    writes: list[Callable[[], object]] = [
        lambda: reader.__setitem__("k", b"w"),
        lambda: reader.__delitem__("k"),
        lambda: reader.put_many([("a", b"b")]),
        lambda: reader.add(b"x"),
        reader.vacuum,
        lambda: reader.put_array("a", np.zeros(3)),
        reader.clear,
        reader.sync,
    ]
    for write in writes:
        with pytest.raises(FlatFileDbReadOnlyError) as info:
            write()
        assert isinstance(info.value, io.UnsupportedOperation)
    assert dict(reader.items()) == {"k": b"v"}
    reader.close()
    with pytest.raises(FlatFileDbNotFoundError):
        KeyedStore(tmp_path / "nothing", readonly=True)


def test_metadata_of_a_key(store: KeyedStore) -> None:
    """meta() gives size, place, time, checksum and the user's metadata."""
    before = time.time()
    store.put("k", b"value", meta={"source": "run 7", "n": [1, 2]})
    meta = store.meta("k")
    assert (meta.key, meta.size, meta.user, meta.array, meta.compressed) == (
        "k",
        5,
        {"source": "run 7", "n": [1, 2]},
        None,
        False,
    )
    assert before - 1 <= meta.created <= time.time() + 1
    assert meta.checksum is not None and meta.checksum > 0
    with pytest.raises(KeyError):
        store.meta("absent")


def test_content_addressing_stores_the_same_content_once(store: KeyedStore) -> None:
    """add() keys by SHA-256; a second add of the same bytes writes no value."""
    key = store.add(b"some content")
    assert key == "290f493c44f5d63d06b374d0a5abd292fae38b92cab2fae5efefe1b0e9347f56"
    live = store.stats().live_bytes
    assert store.add_many([b"some content", b"other", b"other"]) == [key, store.add(b"other"), store.add(b"other")]
    assert store.stats().live_bytes == live + len(b"other") and len(store) == 2
    assert store.add_streams([io.BytesIO(b"some content"), io.BytesIO(b"third")]) == [key, store.add(b"third")]
    assert len(store) == 3 and store[key] == b"some content"


def test_streams_in_and_out(store: KeyedStore, tmp_path: Path) -> None:
    """put_stream / put_streams (with LazyOpener) store streams; open() reads one back."""
    big = os.urandom(3 * 2**20)
    store.put_stream("big", io.BytesIO(big), meta={"kind": "stream"})
    files = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * (i * 1000) if i < 2 else big)
        files.append(path)
    store.put_streams([(f"f{i}", LazyOpener(p)) for i, p in enumerate(files)], open_streams=True)
    assert store["big"] == big and store.meta("big").user == {"kind": "stream"}
    assert [store[f"f{i}"] for i in range(3)] == [b"", b"\x01" * 1000, big]
    with store.open("big") as handle:
        handle.seek(100)
        assert handle.read(10) == big[100:110]
    with store.iter_objects(["f1", "absent", "big"]) as objects:
        seen = {key: (stream.read(), meta.size) for key, stream, meta in objects}
    assert seen == {"f1": (b"\x01" * 1000, 1000), "big": (big, len(big))}


# -- the key logs behind the index -----------------------------------------------------


def test_a_lost_index_is_rebuilt_equal_to_itself(tmp_path: Path, index: str) -> None:
    """The key logs in the segments hold everything the index holds."""
    with KeyedStore(tmp_path / "kv", index=index, max_file_size=4096) as store:
        store.put_many((f"k{i}", os.urandom(100)) for i in range(200))
        store.put("m", b"meta", meta={"a": 1})
        store.delete_many(f"k{i}" for i in range(0, 200, 3))
        store["k1"] = b"overwritten"
        store.put_array("arr", np.arange(7, dtype=np.int16))
        store.vacuum()
        before = _contents(store)
    _remove_index(tmp_path / "kv")
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert _contents(store) == before
        assert len(store) == len(before) and store.verify().ok


def test_a_damaged_index_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    """An index file that is not a database is renamed, never read again, and rebuilt."""
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many([("a", b"1"), ("b", b"2")])
    (tmp_path / "kv" / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    for name in ("index.sqlite3-wal", "index.sqlite3-shm"):
        (tmp_path / "kv" / name).unlink(missing_ok=True)
    with KeyedStore(tmp_path / "kv") as store:
        assert dict(store.items()) == {"a": b"1", "b": b"2"}
    assert any(".damaged-" in p.name for p in (tmp_path / "kv").iterdir())


def test_an_index_ahead_of_the_segments_is_rebuilt_never_trusted(tmp_path: Path, index: str) -> None:
    """A power loss can cut the segments' tail after the index applied it: the index's checkpoint
    then names a record the segments do not hold, and the open rebuilds the index from them."""
    path = tmp_path / "kv"
    with KeyedStore(path, index=index) as store:
        store["old"] = b"old value"
        store.db.rotate()
    saved = tmp_path / "segments-then"
    shutil.copytree(path / SEGMENTS_DIR, saved)
    with KeyedStore(path, index=index) as store:
        store["old"] = b"new value"  # in the segments lost below, but applied by the index
        store["gone"] = b"lost"
    shutil.rmtree(path / SEGMENTS_DIR)
    shutil.copytree(saved, path / SEGMENTS_DIR)
    (path / SEGMENTS_DIR / "ffdb.state").unlink(missing_ok=True)
    with KeyedStore(path, index=index) as store:
        assert dict(store.items()) == {"old": b"old value"}
        assert store.verify().ok


def test_an_apply_another_instance_covered_reads_no_key_log(
    tmp_path: Path, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that asks for an apply once another has applied past where the key logs
    ended when it asked (as happens to a writer that waited for another process's apply) reads
    no key log: its tail is dropped as applied, and the index answers for its keys."""
    with KeyedStore(tmp_path / "kv", index=index) as first, KeyedStore(tmp_path / "kv", index=index) as second:
        first.put_many((f"a{i}", b"x" * i) for i in range(50))
        second.put_many((f"b{i}", b"y" * i) for i in range(50))
        second._apply()  # pylint: disable=protected-access  # covers both instances' writes
        calls: list[object] = []
        real = first.db.log_tail

        def spy(*args: Any) -> Any:
            calls.append(args)
            return real(*args)

        monkeypatch.setattr(first.db, "log_tail", spy)
        first._apply()  # pylint: disable=protected-access
        assert not calls
        assert first._tail == {}  # pylint: disable=protected-access
        assert (first["a49"], first["b49"], len(first)) == (b"x" * 49, b"y" * 49, 100)


def test_a_key_log_not_yet_applied_is_seen_at_once_and_applied_in_order(tmp_path: Path, index: str) -> None:
    """A key-log record committed but not applied to the index (a writer that died before it
    applied its tail): every instance sees it at once, and the index applies it in commit order,
    so a later write of the same key wins."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store["k"] = b"v0"
        value = b"v1 of the dead writer"
        location = store.db.put(value)
        segment = int(Path(location.file_path).name[5:13])
        row = Row(segment, location.start_offset, location.end_offset, xxhash.xxh3_64_intdigest(value), 1, 0, b"")
        store.db.put_log(encode_keylog([Entry(encode_key("k"), row), Entry(encode_key("x"), row)], 1))
        with KeyedStore(tmp_path / "kv", index=index, readonly=True) as reader:
            assert (reader["k"], len(reader)) == (value, 2)  # committed: seen before any index has it
        store["y"] = b"a later write"
        assert (store["k"], store["x"], store["y"]) == (b"v1 of the dead writer",) * 2 + (b"a later write",)
        store["k"] = b"v2"
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert (store["k"], len(store)) == (b"v2", 3)


def test_a_newer_key_log_version_is_refused_not_misread() -> None:
    """A key-log record of an unknown version is a FormatError, never entries."""
    blob = bytearray(encode_keylog([Entry(encode_key("k"), None)], 5))
    assert decode_keylog(bytes(blob), 0, "x") == (5, [Entry(encode_key("k"), None)])
    blob[8] = 2
    with pytest.raises(FormatError, match="version 2"):
        decode_keylog(bytes(blob), 0, "x")
    with pytest.raises(FormatError):
        decode_keylog(bytes(blob[:30]), 0, "x")


def test_a_key_log_record_of_a_newer_version_in_the_log_is_a_corruption_error_naming_it(
    tmp_path: Path, index: str
) -> None:
    """A committed key-log record that does not decode (here: a newer version) makes a lookup
    that reads it raise CorruptionError naming the segment file and the record's offset, with
    what is wrong; never entries, never KeyError. (The writer's close, which applies its tail,
    meets it too.)"""
    with pytest.raises(CorruptionError), KeyedStore(tmp_path / "kv", index=index) as store:
        store["k"] = b"v"
        blob = bytearray(encode_keylog([Entry(encode_key("x"), None)], 5))
        blob[8] = 2
        location = store.db.put_log(bytes(blob))
        with KeyedStore(tmp_path / "kv", index=index, readonly=True) as reader:
            with pytest.raises(CorruptionError) as raised:
                reader["x"]  # pylint: disable=pointless-statement
            assert str(raised.value).startswith(f"{location.file_path} at {location.start_offset}: key-log version 2")
            assert (raised.value.path, raised.value.offset) == (location.file_path, location.start_offset)


def _damage_second_keylog_of(store_dir: Path) -> None:
    """Flip bytes inside the key-log record that wrote "a" the second time (segment 0)."""
    with KeyedStore(store_dir, readonly=True) as reader:
        records = list(reader.db.iter_log((0, 0)))
        path = reader.db.segment_path(records[1].segment)
        start = records[1].start_offset
    with open(path, "r+b") as handle:
        handle.seek(start + 30)
        byte = handle.read(1)
        handle.seek(start + 30)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("lost_index", [False, True])
def test_a_damaged_key_log_record_is_refused_unless_skip_damaged_logs_reads_past_it(
    tmp_path: Path, lost_index: bool
) -> None:
    """A key-log record damaged on disk (one flipped byte) makes a writer's open that needs it
    (the index lost, or behind it) a CorruptionError that says what to do; with
    skip_damaged_logs=True the store opens, every other key reads its value, the keys of that
    record keep their values from before it, and verify() lists the record. (Before, no open
    for writing could get past it at all.)"""
    store_dir = tmp_path / "kv"
    with KeyedStore(store_dir, max_file_size=2**16) as store:
        store["a"] = b"first"
        store["a"] = b"second"  # the record damaged below
        store.put_many((f"k{i}", bytes([i % 256]) * 200) for i in range(300))  # rotates past segment 0
        want = {f"k{i}": bytes([i % 256]) * 200 for i in range(300)}
    _damage_second_keylog_of(store_dir)
    if lost_index:
        (store_dir / "index.sqlite3").unlink()
    else:  # the index's checkpoint before every record: an open replays them all
        from conduit_flat_file_db.keyed.index_base import Checkpoint  # pylint: disable=import-outside-toplevel
        from conduit_flat_file_db.keyed.index_sqlite import SqliteIndex  # pylint: disable=import-outside-toplevel

        index = SqliteIndex(str(store_dir / "index.sqlite3"), False)
        index.apply_rows([], Checkpoint(-1, 0, 0))
        index.close()
    with pytest.raises(CorruptionError, match="skip_damaged_logs=True"):
        KeyedStore(store_dir)
    with KeyedStore(store_dir, skip_damaged_logs=True) as store:
        assert store["a"] == b"first"
        assert {key: store[key] for key in want} == want
        report = store.verify()
        assert not report.ok and any("skipped (skip_damaged_logs=True)" in p for p in report.problems), report
    with KeyedStore(store_dir, readonly=True) as reader:  # the index, rebuilt without the record, serves reads
        assert reader["a"] == b"first" and len(reader) == 301


def test_skip_damaged_logs_never_passes_over_a_record_of_a_newer_format(tmp_path: Path) -> None:
    """A key-log record of a newer version is no damage: refused with skip_damaged_logs=True too
    (a newer release wrote it; reading past it would lose its keys for good at the next apply)."""
    with KeyedStore(tmp_path / "kv") as store:
        store["k"] = b"v"
        blob = bytearray(encode_keylog([Entry(encode_key("x"), None)], 5))
        blob[8] = 2
        store.db.put_log(bytes(blob))
        with KeyedStore(tmp_path / "kv", readonly=True, skip_damaged_logs=True) as reader:
            with pytest.raises(CorruptionError, match="key-log version 2"):
                reader["x"]  # pylint: disable=pointless-statement
        store.db.close()  # the writer's close would apply the record: not this test's subject
        store._closed = True  # pylint: disable=protected-access


# -- vacuum ------------------------------------------------------------------------------


def test_vacuum_returns_the_space_of_dead_values(tmp_path: Path, index: str) -> None:
    """Half the values overwritten or deleted: vacuum removes the old segments and keeps every key."""
    with KeyedStore(tmp_path / "kv", index=index, max_file_size=2**16) as store:
        store.put_many((f"k{i}", os.urandom(1024)) for i in range(400))
        store.delete_many(f"k{i}" for i in range(0, 400, 4))
        store.put_many((f"k{i}", os.urandom(1024)) for i in range(1, 400, 4))
        before = dict(store.items())
        dead = store.stats().dead_bytes
        result = store.vacuum(0.0)
        after = store.stats()
        assert dict(store.items()) == before
        assert result.segments_removed > 0 and result.bytes_reclaimed >= dead * 0.9
        assert after.dead_bytes < 0.05 * after.live_bytes
        assert store.verify().ok


def test_vacuum_carries_a_deletion_forward_so_a_rebuild_does_not_bring_the_key_back(tmp_path: Path, index: str) -> None:
    """The deletion of a key whose value is in an older segment is written again when its own
    segment is vacuumed; else a rebuild would replay the old PUT and resurrect the key."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store["keep"] = bytes(10000)
        store["deleted"] = b"d"
        store.db.rotate()
        del store["deleted"]
        store["filler"] = b"f"
        store.db.rotate()
        store["filler"] = b"g"  # segment 1 now has a dead value and the deletion, and no live value
        store.vacuum(0.5)  # segment 0 is almost all live: it stays, with the old PUT of "deleted"
        assert 1 not in store.db.segments() and 0 in store.db.segments()
    _remove_index(tmp_path / "kv")
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert dict(store.items()) == {"keep": bytes(10000), "filler": b"g"}


def test_vacuum_rewrites_rows_whose_key_log_is_in_the_segment_it_deletes(tmp_path: Path, index: str) -> None:
    """A stream's value is a segment of its own and its key-log record is in another: deleting the
    record's segment must not lose the key for a rebuild."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_stream("stream", io.BytesIO(b"streamed value"))
        store["x"] = b"1"
        store["x"] = b"2"
        store.vacuum(0.0)
        assert store["stream"] == b"streamed value"
    _remove_index(tmp_path / "kv")
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert dict(store.items()) == {"stream": b"streamed value", "x": b"2"}


def test_expire_by_age_and_by_size(tmp_path: Path, index: str) -> None:
    """expire deletes the keys older than max_age, then the oldest until max_bytes."""
    with KeyedStore(tmp_path / "kv", index=index, max_file_size=4096) as store:
        store.put_many((f"old{i}", bytes(100)) for i in range(10))
        time.sleep(0.05)
        cutoff = time.time()
        store.put_many((f"new{i}", bytes(100)) for i in range(10))
        assert store.expire(max_age=time.time() - cutoff + 0.02) == 10
        assert sorted(store) == sorted(f"new{i}" for i in range(10))
        assert store.expire(max_bytes=550) == 5
        assert len(store) == 5 and store.stats().live_bytes <= 550
        with pytest.raises(ValueError):
            store.expire(max_bytes=-1)


def test_backup_is_a_store_of_its_own(tmp_path: Path, index: str) -> None:
    """backup(dest) writes a copy that opens as a KeyedStore with the same contents."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_many((f"k{i}", bytes([i])) for i in range(50))
        store.backup(tmp_path / "copy")
        store["after"] = b"not in the copy"
        with pytest.raises(FileExistsError):
            store.backup(tmp_path / "copy")
    with KeyedStore(tmp_path / "copy", index=index) as copy:
        assert dict(copy.items()) == {f"k{i}": bytes([i]) for i in range(50)}


def test_backup_fsyncs_every_file_and_directory_of_the_copy(
    tmp_path: Path, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backup() returns a copy on stable storage: each file it wrote, each directory of it, and
    the directory that holds it were fsynced (a crash right after it returns keeps the copy)."""
    synced: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_many((f"k{i}", bytes([i]) * 100) for i in range(50))
        monkeypatch.setattr(os, "fsync", recording_fsync)
        store.backup(tmp_path / "copy")
        monkeypatch.undo()
    written = {str(path) for path in (tmp_path / "copy").rglob("*")} | {str(tmp_path / "copy"), str(tmp_path)}
    assert len(written) > 5
    assert sorted(written - synced) == []


# -- arrays ------------------------------------------------------------------------------


def test_arrays_come_back_aligned_read_only_and_without_a_copy(store: KeyedStore) -> None:
    """get_array maps the segment: aligned to 64 bytes, not writable, and valid after a vacuum."""
    store["pad"] = b"123"  # the array does not start at a round offset by itself
    data = np.arange(1000, dtype=np.float64).reshape(10, 100)
    store.put_array("a", data, meta={"units": "m"})
    got = store.get_array("a")
    assert np.array_equal(got, data) and got.dtype == data.dtype and not got.flags.writeable
    assert got.ctypes.data % 64 == 0
    assert store.meta("a").array == ("<f8", (10, 100)) and store.meta("a").user == {"units": "m"}
    store.put_array("scalar", np.float64(7.25))
    store.put_array("fortran", np.asfortranarray(data))
    assert store.get_array("scalar").shape == () and float(store.get_array("scalar")) == 7.25
    assert np.array_equal(store.get_array("fortran"), data)
    structured = np.zeros(3, dtype=[("x", "<i4"), ("y", "<f2", (2,))])
    store.put_array("s", structured)
    assert store.get_array("s").dtype == structured.dtype
    del store["pad"]
    store.vacuum(0.0)
    assert np.array_equal(got, data)  # the map keeps the old segment's bytes
    assert np.array_equal(store.get_array("a"), data)


def test_array_errors(store: KeyedStore) -> None:
    """Object arrays need pickle: refused; get_array of plain bytes: NotAnArrayError; absent: KeyError."""
    with pytest.raises(NotAnArrayError):
        store.put_array("o", np.array([object()]))
    store["b"] = b"bytes"
    with pytest.raises(NotAnArrayError):
        store.get_array("b")
    with pytest.raises(KeyError):
        store.get_array("absent")
    with pytest.raises(ValueError):
        with store.create_array("bad", (-1, 3), "f4"):
            pass
    assert list(store) == ["b"]


def test_create_array_is_committed_at_exit_and_discarded_on_error(tmp_path: Path, index: str) -> None:
    """The key appears only when the with-block ends well; an error leaves no key and no file."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        with pytest.raises(RuntimeError):
            with store.create_array("a", (100, 100), "int32") as grid:
                grid[:] = 5
                assert "a" not in store
                raise RuntimeError("stop")
        assert "a" not in store and not os.listdir(tmp_path / "kv" / "staging")
        with store.create_array("a", (100, 100), "int32") as grid:
            grid[3] = 7
        with store.create_array("empty", (0, 5), "f8"):
            pass
    with KeyedStore(tmp_path / "kv", index=index) as store:
        got = store.get_array("a")
        assert got.shape == (100, 100) and int(got.sum()) == 700
        assert store.get_array("empty").shape == (0, 5)
        assert store.meta("a").checksum is None and store.verify().ok


def test_staging_files_of_dead_writers_are_swept_at_open(tmp_path: Path) -> None:
    """A create_array whose process died leaves a staging file; the next writer's open removes it."""
    KeyedStore(tmp_path / "kv").close()
    leftover = tmp_path / "kv" / "staging" / "array-1-dead.tmp"
    leftover.write_bytes(bytes(4096))
    KeyedStore(tmp_path / "kv").close()
    assert not leftover.exists()


def test_an_lmdb_index_not_closed_cleanly_before_a_reboot_is_rebuilt(tmp_path: Path) -> None:
    """LMDB commits without a sync: after a power loss its tree may be torn, so an index last
    written in another boot without a clean close is rebuilt from the key logs, never read."""
    import lmdb  # pylint: disable=import-outside-toplevel  # the optional index

    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        store.put_many([("a", b"1"), ("b", b"2")])
    env = lmdb.open(str(tmp_path / "kv" / "index.lmdb"), max_dbs=2)
    with env.begin(write=True) as txn:
        keys, state = env.open_db(b"keys", txn=txn), env.open_db(b"state", txn=txn)
        row_of_b = txn.get(encode_key("b"), db=keys)
        assert row_of_b is not None
        txn.put(encode_key("a"), row_of_b, db=keys)  # a torn tree's wrong row
        txn.put(b"boot", bytes(16), db=state)  # written in another boot, never closed
    env.close()
    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        assert dict(store.items()) == {"a": b"1", "b": b"2"}


def test_a_store_pickles_as_its_arguments_and_opens_again(tmp_path: Path, index: str) -> None:
    """A KeyedStore can be handed to a worker process: the copy opens the same directory."""
    import pickle  # pylint: disable=import-outside-toplevel

    with KeyedStore(tmp_path / "kv", index=index, max_file_size=4096) as store:
        store["k"] = b"v"
        with pickle.loads(pickle.dumps(store)) as copy:
            assert copy["k"] == b"v" and copy.index_kind == index and copy.db.MAX_DAT_FILE_SIZE == 4096


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_an_index_file_cut_short_is_rebuilt_not_mapped(tmp_path: Path, index: str, keep: float) -> None:
    """A cut LMDB file would be a SIGBUS on its first read of a missing page, a cut SQLite file a
    "malformed" error long after the open: both are found at the open and rebuilt. (A power loss
    cuts files written before the boot; an LMDB file written since may rightly be shorter than
    its meta page says: test_a_writer_killed_while_it_applies_loses_no_acknowledged_write.)"""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_many((f"k{i}", bytes([i % 256]) * 100) for i in range(3000))
        before = dict(store.items())
    data = tmp_path / "kv" / ("index.lmdb/data.mdb" if index == "lmdb" else "index.sqlite3")
    os.truncate(data, int(data.stat().st_size * keep))
    os.utime(data, (0, 0))  # as a power loss leaves it: last written before this boot
    code = (
        "import sys; from conduit_flat_file_db import KeyedStore\n"
        "with KeyedStore(sys.argv[1], index=sys.argv[2]) as s: print(len(s), s['k7'][:1].hex())"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "kv"), index], capture_output=True, text=True, check=False
    )
    assert child.returncode == 0 and child.stdout.split() == ["3000", "07"], child.stderr[-2000:]
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert dict(store.items()) == before


@pytest.mark.parametrize("keep", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("readonly", [True, False])
def test_an_lmdb_file_cut_short_this_boot_is_an_error_or_a_rebuild_never_a_sigbus(
    tmp_path: Path, keep: float, readonly: bool
) -> None:
    """An LMDB file cut by hand since this boot (which the boot check cannot tell from a file
    a killed writer rightly left short) is grown back with zero pages before any read: a
    reader's open is an IndexDamagedError, a writer's open rebuilds; neither process dies of
    SIGBUS, as both did before."""
    pytest.importorskip("lmdb")
    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        store.put_many((f"k{i}", bytes([i % 256]) * 100) for i in range(20_000))
        before = dict(store.items())
    data = tmp_path / "kv" / "index.lmdb" / "data.mdb"
    os.truncate(data, int(data.stat().st_size * keep))
    code = (
        "import sys; from conduit_flat_file_db import KeyedStore\n"
        "from conduit_flat_file_db.keyed import IndexDamagedError\n"
        "try:\n"
        "    with KeyedStore(sys.argv[1], index='lmdb', readonly=sys.argv[2] == 'ro') as s:\n"
        "        print(len(s), sum(len(s[f'k{i}']) for i in range(20000)))\n"
        "except IndexDamagedError as exc:\n"
        "    print('damaged', exc)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "kv"), "ro" if readonly else "rw"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    if readonly:
        assert child.stdout.startswith("damaged "), child.stdout
    else:
        assert child.stdout.split() == ["20000", str(20_000 * 100)], (child.stdout, child.stderr[-2000:])
    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        assert dict(store.items()) == before


def test_vacuum_waits_for_a_write_whose_values_its_rotation_would_seal(tmp_path: Path, index: str) -> None:
    """A write's values and its key log are one engine commit: a vacuum's rotation cannot seal
    the segment between them, so the vacuum sees the row before it decides what the segment
    holds. (The key-log record is made slowly here, while the vacuum starts.)"""
    import threading  # pylint: disable=import-outside-toplevel

    with KeyedStore(tmp_path / "kv", index=index) as writer, KeyedStore(tmp_path / "kv", index=index) as vacuumer:
        writer["old"] = b"dead soon"
        writer["old"] = b"alive"
        value = b"value in the segment the vacuum seals"
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(vacuumer.vacuum(0.0)))

        def make_log(locations: list[DataLocation]) -> bytes:
            worker.start()
            worker.join(0.5)  # the vacuum waits for the engine's lock meanwhile
            location = locations[0]
            segment = int(Path(location.file_path).name[5:13])
            row = Row(segment, location.start_offset, location.end_offset, xxhash.xxh3_64_intdigest(value), 1, 0, b"")
            return encode_keylog([Entry(encode_key("new"), row)], 1)

        writer.db.put_logged([value], make_log)
        worker.join(30)
        assert result and vacuumer["new"] == value and writer["new"] == value
        assert vacuumer.verify().ok and dict(vacuumer.items())["old"] == b"alive"


def test_vacuum_leaves_alone_a_stream_segment_not_yet_named_by_its_key(
    tmp_path: Path, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put_stream's value becomes a segment of its own before its key log names it: a vacuum in
    between would take it for an orphan and delete it, leaving the key pointing at nothing."""
    import threading  # pylint: disable=import-outside-toplevel

    with KeyedStore(tmp_path / "kv", index=index) as writer, KeyedStore(tmp_path / "kv", index=index) as vacuumer:
        writer["x"] = b"1"
        between, go_on = threading.Event(), threading.Event()
        real_sync = writer.db.sync

        def slow_sync() -> None:  # runs between the stream's segment and its key log
            between.set()
            go_on.wait(10)
            real_sync()

        monkeypatch.setattr(writer.db, "sync", slow_sync)
        streamer = threading.Thread(target=lambda: writer.put_stream("s", io.BytesIO(b"streamed")))
        streamer.start()
        assert between.wait(10)
        vacuum = threading.Thread(target=lambda: vacuumer.vacuum(0.0))
        vacuum.start()
        vacuum.join(0.5)
        go_on.set()
        streamer.join(30)
        vacuum.join(30)
        assert vacuumer["s"] == b"streamed" and vacuumer.verify().ok


def test_vacuum_keeps_the_segment_of_the_indexs_checkpoint(
    tmp_path: Path, index: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The last key log applied names the index's checkpoint; an open finding it gone would take the
    index for one ahead of the segments and rebuild it all. Vacuum leaves that segment for later."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_many((f"k{i}", bytes(100)) for i in range(10))
        store.delete_many(f"k{i}" for i in range(10))  # the last key log: its segment is all dead
        store.delete_many(f"k{i}" for i in range(10))  # the last key log: its segment is all dead
        store.vacuum(0.0)
        assert store.index.checkpoint().segment in store.db.segments()
    with caplog.at_level("ERROR", logger="conduit_flat_file_db"):
        with KeyedStore(tmp_path / "kv", index=index) as store:
            assert not dict(store.items())
    assert "rebuilding" not in caplog.text


def test_a_whole_value_that_fails_its_checksum_is_an_error_never_returned(tmp_path: Path, index: str) -> None:
    """Every whole value read is checked against the checksum its row holds: a flipped byte in a
    segment (or an index row naming other bytes) is a CorruptionError, not wrong data."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store.put_many([("a", b"A" * 100), ("b", b"B" * 100)])
        meta = store.meta("b")
    segment = tmp_path / "kv" / SEGMENTS_DIR / f"data_{meta.segment:08d}.dat"
    with open(segment, "r+b") as handle:
        handle.seek(meta.offset + 10)
        handle.write(b"X")
    with KeyedStore(tmp_path / "kv", index=index) as store:
        assert store["a"] == b"A" * 100
        for read in (lambda: store["b"], lambda: store.get("b"), lambda: store.get_many(["a", "b"])):
            with pytest.raises(CorruptionError, match="fails its checksum"):
                read()
        assert store.get("b", slice=Slice(0, 5)) == b"BBBBB"  # a slice is not the whole value: not checked
        assert not store.verify().ok


@pytest.mark.parametrize("apply_at", [1, 4096])
def test_interleaved_writers_keep_the_newest_value_of_each_key(
    tmp_path: Path, index: str, apply_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers take turns: each adds its own entries to its tail before reading the other's
    records committed in between; reading those later (or applying them, after every write with
    ``apply_at`` 1) never puts an older value over a newer one, in the tail or in the index."""
    monkeypatch.setattr(keyed_core, "APPLY_AT", apply_at)
    with KeyedStore(tmp_path / "kv", index=index) as a, KeyedStore(tmp_path / "kv", index=index) as b:
        a["k"] = b"a1"
        b["k"] = b"b2"
        a["j"] = b"a3"  # B's record came between A's reads: A's entry goes in ahead of it
        b["k"] = b"b4"
        a["k"] = b"a5"
        assert (a["k"], b["k"], a["j"], b["j"]) == (b"a5", b"a5", b"a3", b"a3")
        b.delete_many(["j"])
        a.put_many([("k", b"a6"), ("m", b"a7")])
        assert ("j" in a, a["k"], b["m"], len(a), len(b)) == (False, b"a6", b"a7", 2, 2)
    with KeyedStore(tmp_path / "kv", index=index) as again:
        assert dict(again.items()) == {"k": b"a6", "m": b"a7"}
        again.rebuild_index()
        assert dict(again.items()) == {"k": b"a6", "m": b"a7"} and again.verify().ok


def test_iter_objects_gives_the_meta_of_the_value_it_opened_when_a_vacuum_moved_the_key(
    tmp_path: Path, index: str
) -> None:
    """iter_objects() looks its keys up first and opens each value when it gets there; another
    instance writes key "b" again and vacuums its old segment away in between: the file then
    holds the new value, and the meta yielded with it is the new value's (size, checksum), not
    the row looked up first. Before the fix it was: the file and its meta disagreed."""
    path = tmp_path / "kv"
    with KeyedStore(path, index=index) as store, KeyedStore(path, index=index) as other:
        store.put_many([("a", b"first a"), ("b", b"old b, the longer value")])
        seen = []
        with store.iter_objects(["a", "b"]) as objects:
            for key, stream, meta in objects:
                if key == "a":
                    other["b"] = b"new b"
                    assert other.vacuum(min_dead_fraction=0.0).segments_removed
                data = stream.read()
                seen.append((key, data, meta.size, meta.checksum))
        assert seen == [
            ("a", b"first a", 7, xxhash.xxh3_64_intdigest(b"first a")),
            ("b", b"new b", 5, xxhash.xxh3_64_intdigest(b"new b")),
        ]
