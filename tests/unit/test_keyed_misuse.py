"""The keyed store used the wrong way, or given damaged files: each misuse is a typed error that
says what is wrong, nothing is written by a refused call, no key ever reads other bytes, and a
damaged index is rebuilt from the key logs (found by hostile-user testing)."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conduit_flat_file_db import (
    FlatFileDb,
    FlatFileDbError,
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    KeyedStore,
    Slice,
)
from conduit_flat_file_db.errors import InvalidLocationError
from conduit_flat_file_db.keyed.index_base import IndexDamagedError


@pytest.fixture(name="index", params=["sqlite", "lmdb"])
def fixture_index(request: pytest.FixtureRequest) -> str:
    """Each test runs against both indexes."""
    return str(request.param)


def _descriptors_into(path: Path) -> list[str]:
    """What this process's open descriptors name under ``path``."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(path)):
            names.append(target)
    return sorted(names)


def _damage_sqlite_pages_after_the_state_table(path: Path) -> None:
    """Invert every page of the SQLite file after the state table's: the header, the schema and
    the state table (what an open checks) stay whole, the rows' pages do not."""
    with sqlite3.connect(path) as conn:
        roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    first = roots["state"] * page  # the pages are numbered from 1: this is the page after it
    assert roots["keys"] < roots["state"] and len(data) > first + 4 * page
    data[first:] = bytes(byte ^ 0xFF for byte in data[first:])
    path.write_bytes(data)


def test_a_sqlite_index_damaged_past_what_the_open_checks_is_a_typed_error_and_rebuilt(tmp_path: Path) -> None:
    """A malformed page of the SQLite index that the open's checks do not reach was a raw
    sqlite3.DatabaseError at the first read reaching it, and rebuild_index() failed the same way
    (it clears the rows first): the store could not be repaired but by deleting the file. Reads
    now raise IndexDamagedError, and rebuild_index() sets the file aside and rebuilds it."""
    values = {f"k{i}": f"value {i}".encode() * 4 for i in range(3000)}
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many(values.items())
    _damage_sqlite_pages_after_the_state_table(tmp_path / "kv" / "index.sqlite3")
    with KeyedStore(tmp_path / "kv", readonly=True) as reader, pytest.raises(IndexDamagedError, match="rebuild_index"):
        for key in values:
            reader.get(key)
    with KeyedStore(tmp_path / "kv") as store:
        with pytest.raises(IndexDamagedError):
            list(store.items())
        assert store.rebuild_index() == len(values)
        assert dict(store.items()) == values
        assert store.verify().ok
    assert any(".damaged-" in p.name for p in (tmp_path / "kv").iterdir())
    with KeyedStore(tmp_path / "kv", readonly=True) as reader:
        assert reader.get_many(list(values)) == list(values.values())


def _first_object(store: KeyedStore) -> Any:
    with store.iter_objects(["k"]) as objects:
        return next(objects)


CLOSED_READS: dict[str, Callable[[KeyedStore], Any]] = {
    "getitem": lambda store: store["k"],
    "get": lambda store: store.get("k"),
    "get slice": lambda store: store.get("k", slice=Slice(0, 1)),
    "contains": lambda store: "k" in store,
    "len": len,
    "iter": list,
    "keys prefix": lambda store: list(store.keys(prefix="k")),
    "items": lambda store: list(store.items()),
    "get_many": lambda store: store.get_many(["k"]),
    "meta": lambda store: store.meta("k"),
    "open": lambda store: store.open("k"),
    "iter_objects": _first_object,
    "get_array": lambda store: store.get_array("grid"),
    "stats": lambda store: store.stats(),
    "verify": lambda store: store.verify(),
}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("read", list(CLOSED_READS))
def test_a_closed_store_refuses_reads_and_opens_nothing_again(
    tmp_path: Path, index: str, readonly: bool, read: str
) -> None:
    """close() says a closed store cannot be used again, but every read of one went on: the
    lookup reopened the engine (its lock file, state page, directory and segments) and the
    index's connections, which nothing closed again (descriptors held until a collection warned
    of an unclosed FlatFileDb); a read-only store's lookup raised a raw ValueError, stats() and
    verify() of a writer's said "open read-only". Each read of a closed store is now refused."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        store["k"] = b"value"
        store.put_array("grid", np.arange(4))
    store = KeyedStore(tmp_path / "kv", index=index, readonly=readonly)
    assert store["k"] == b"value"
    store.close()
    before = _descriptors_into(tmp_path)
    with pytest.raises(FlatFileDbError, match="is closed") as raised:
        CLOSED_READS[read](store)
    assert not isinstance(raised.value, FlatFileDbReadOnlyError)
    assert _descriptors_into(tmp_path) == before
    store.close()


def test_create_array_ended_after_its_store_closed_says_closed_and_stores_nothing(tmp_path: Path) -> None:
    """The exit of a create_array block whose store was closed meanwhile raised "the keyed
    store is open read-only" for a store opened to write; it says that the store is closed."""
    store = KeyedStore(tmp_path / "kv")
    with pytest.raises(FlatFileDbError, match="is closed") as raised:  # the close inside
        with store.create_array("grid", (4,), "u1") as grid:
            grid[:] = 7
            store.close()
    assert not isinstance(raised.value, FlatFileDbReadOnlyError)
    with KeyedStore(tmp_path / "kv") as store:
        assert "grid" not in store and not os.listdir(tmp_path / "kv" / "staging")


@pytest.mark.parametrize("readonly", [False, True])
def test_verify_reports_a_damaged_segment_index_instead_of_raising(tmp_path: Path, readonly: bool) -> None:
    """verify() found a sealed segment's record index replaced by garbage (the engine's check
    reports it), then raised the FormatError of the stats() it calls for its closing note: the
    caller got an exception instead of the report listing what is wrong."""
    with KeyedStore(tmp_path / "kv", max_file_size=64 * 1024) as store:
        for first in range(0, 2000, 100):
            store.put_many((f"k{i}", f"value {i}".encode() * 3) for i in range(first, first + 100))
        assert store.stats().segments >= 3
    index = tmp_path / "kv" / "segments" / "data_00000001.idx"
    index.write_bytes(bytes(range(256)) * (index.stat().st_size // 256))
    with KeyedStore(tmp_path / "kv", readonly=readonly) as store:
        report = store.verify()
    assert not report.ok
    assert any("data_00000001.idx" in problem for problem in report.problems), report.problems


def test_the_map_of_create_array_is_read_only_once_its_value_is_committed(tmp_path: Path, index: str) -> None:
    """The memmap that create_array yields stayed writable after the block committed it, and a
    write through it changed the committed value in its sealed segment (no checksum to see it,
    no fsync after it): a reader of the key got bytes written after the commit. The map is
    read-only once the block ends."""
    with KeyedStore(tmp_path / "kv", index=index) as store:
        with store.create_array("grid", (4,), "u1") as grid:
            grid[:] = 7
        with pytest.raises(ValueError, match="read-only"):
            grid[0] = 99
        assert store.get_array("grid").tolist() == [7, 7, 7, 7]
        assert store["grid"] == bytes([7] * 4)


def test_an_array_of_a_structured_dtype_with_titles_reads_back(tmp_path: Path) -> None:
    """A structured dtype whose fields have titles was stored by put_array, but get_array rebuilt
    each (title, name) pair from JSON as a list and numpy refused it ("field names must be
    strings", a raw ValueError): the array could not be read back as an array."""
    dtype = np.dtype([(("the title", "a"), "<i4"), ("b", [(("inner title", "c"), "u1", (2,))])])
    array = np.zeros(3, dtype=dtype)
    array["a"] = [1, 2, 3]
    array["b"]["c"] = [[4, 5], [6, 7], [8, 9]]
    with KeyedStore(tmp_path / "kv") as store:
        store.put_array("t", array)
        back = store.get_array("t")
        assert back.dtype == dtype and back.tobytes() == array.tobytes()
        with store.create_array("u", (2,), dtype) as made:
            made["a"] = [5, 6]
        assert store.get_array("u").dtype == dtype and store.get_array("u")["a"].tolist() == [5, 6]


def test_create_array_of_a_sub_array_dtype_reads_back_as_it_was_filled(tmp_path: Path) -> None:
    """create_array((2,), ("i4", (3,))) gave a map of shape (2, 3) of int32, as numpy does, but
    recorded the dtype's description, an opaque "|V12": get_array returned two 12-byte voids
    instead of the array written. It is recorded as numpy maps it, as put_array records it."""
    with KeyedStore(tmp_path / "kv") as store:
        with store.create_array("grid", (2,), ("i4", (3,))) as grid:
            assert grid.shape == (2, 3) and grid.dtype == np.int32
            grid[:] = [[1, 2, 3], [4, 5, 6]]
        back = store.get_array("grid")
        assert back.dtype == np.int32 and back.tolist() == [[1, 2, 3], [4, 5, 6]]
        assert store.meta("grid").array == ("<i4", (2, 3))


def test_expire_and_vacuum_take_any_age_and_refuse_what_is_not_a_number(tmp_path: Path) -> None:
    """expire(max_age=inf), or an age past any clock, raised OverflowError (converting the age
    to nanoseconds) where nothing is that old; max_age=True expired what was a second old, and a
    str was a bare "'>=' not supported", as was vacuum's min_dead_fraction="0.5" (True was 1.0).
    An infinite age now expires nothing; a bool or a str is a TypeError naming the argument."""
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many((f"k{i}", b"v") for i in range(5))
        assert store.expire(max_age=float("inf")) == 0
        assert store.expire(max_age=1e300) == 0
        assert store.expire(max_age=10**400) == 0
        assert store.expire(max_age=0) == 5
        for age in (True, "1", 1j):
            with pytest.raises(TypeError, match="max_age"):
                store.expire(max_age=age)  # type: ignore[arg-type]
        for fraction in (True, "0.5", None):
            with pytest.raises(TypeError, match="min_dead_fraction"):
                store.vacuum(fraction)  # type: ignore[arg-type]


class _ReadintoOnly:
    """A readable with readinto() and no read(), as put_stream accepts."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readinto(self, buffer: bytearray) -> int:
        """As io.BytesIO.readinto."""
        return self._data.readinto(buffer)


def test_stream_puts_take_what_put_stream_takes_and_refuse_the_rest_with_a_type_error(tmp_path: Path) -> None:
    """put_streams read the head of each stream with read(): a stream with readinto() alone,
    which put_stream and add_streams take, was a raw AttributeError; so was anything that is no
    stream at all (bytes, None, an int) in put_stream, put_streams and add_streams, where the
    engine's own put_stream says TypeError. Nothing is stored by a refused call."""
    small, large = b"small value", bytes(range(256)) * (5 * 2**12)  # large: past 1 MiB, streamed
    with KeyedStore(tmp_path / "kv") as store:
        store.put_streams([("small", _ReadintoOnly(small)), ("large", _ReadintoOnly(large))])
        assert store["small"] == small and store["large"] == large
        for item in (b"raw bytes", None, 5):
            with pytest.raises(TypeError, match="read"):
                store.put_stream("bad", item)
            with pytest.raises(TypeError, match="read"):
                store.put_streams([("bad", item)])
            with pytest.raises(TypeError, match="read"):
                store.add_streams([item])
        assert "bad" not in store and sorted(store) == ["large", "small"]


def test_meta_nested_past_the_json_encoders_recursion_is_a_type_error(tmp_path: Path) -> None:
    """put(meta=...) with metadata nested deeper than json.dumps recurses raised a raw
    RecursionError; it is the TypeError of metadata that is not JSON-serialisable."""
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    with KeyedStore(tmp_path / "kv") as store:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            store.put("k", b"v", meta=deep)
        assert "k" not in store


@pytest.mark.parametrize("inside", [".", "segments", "segments/copy", "staging/copy", "copy", "index.lmdb"])
def test_backup_into_the_stores_own_directory_is_refused(tmp_path: Path, inside: str) -> None:
    """backup(dest) took a destination inside the store's own directory: a copy in staging/
    made every writer's open fail (its sweep unlinks what is there, a directory), one in
    segments/ put a directory among the engine's segments, one named index.lmdb beside a
    SQLite index was what ``ffdb kv`` takes for an LMDB index. Refused: a ValueError, nothing
    written."""
    with KeyedStore(tmp_path / "kv") as store:
        store["k"] = b"v"
        before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "kv").rglob("*"))
        with pytest.raises(ValueError, match="inside the store"):
            store.backup(tmp_path / "kv" / inside)
        assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "kv").rglob("*")) == before
    with KeyedStore(tmp_path / "kv") as store:
        assert dict(store.items()) == {"k": b"v"}


def test_a_directory_in_staging_does_not_stop_a_writers_open(tmp_path: Path) -> None:
    """A writer's open removes the files that dead writers left in staging/ and unlinked
    whatever it found there: a directory (made by hand, or by a backup into the store) was an
    IsADirectoryError, and no writer could open the store. The directory is left alone."""
    with KeyedStore(tmp_path / "kv") as store:
        store["k"] = b"v"
    (tmp_path / "kv" / "staging" / "someones-dir").mkdir()
    leftover = tmp_path / "kv" / "staging" / "array-1-dead.tmp"
    leftover.write_bytes(bytes(16))
    with KeyedStore(tmp_path / "kv") as store:
        assert store["k"] == b"v"
    assert not leftover.exists() and (tmp_path / "kv" / "staging" / "someones-dir").is_dir()


@pytest.mark.parametrize("shape", [(2**62, 2**62), (2**31, 2**31, 4), 2**64])
def test_create_array_of_more_bytes_than_a_file_holds_is_a_value_error(tmp_path: Path, shape: Any) -> None:
    """create_array with a shape whose byte count passes 2**63 raised a raw OverflowError from
    the reservation of the file's blocks; it is a ValueError saying so, and nothing is left."""
    with KeyedStore(tmp_path / "kv") as store:
        with pytest.raises(ValueError, match="more than a file can hold"), store.create_array("huge", shape, "f8"):
            pass
        assert "huge" not in store and not os.listdir(tmp_path / "kv" / "staging")


def test_one_key_where_an_iterable_of_keys_is_expected_is_a_type_error(tmp_path: Path) -> None:
    """delete_many("abc") iterated the str: it deleted the keys "a", "b" and "c" and kept "abc";
    get_many and iter_objects read the characters' keys the same way. A str or bytes given
    for the keys is a TypeError, and nothing is deleted."""
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many([("a", b"1"), ("b", b"2"), ("c", b"3"), ("abc", b"4"), (b"abc", b"5")])
        single: tuple[Any, ...] = ("abc", b"abc", bytearray(b"abc"))
        for keys in single:
            with pytest.raises(TypeError, match="iterable of keys"):
                store.delete_many(keys)
            with pytest.raises(TypeError, match="iterable of keys"):
                store.get_many(keys)
            with pytest.raises(TypeError, match="iterable of keys"), store.iter_objects(keys) as objects:
                next(objects)
        assert len(store) == 5
        assert store.delete_many(["abc"]) == 1 and set(store) == {b"abc", "a", "b", "c"}


def test_a_damaged_lmdb_index_is_a_typed_error_read_only_and_rebuilt_by_a_writers_open(tmp_path: Path) -> None:
    """LMDB checks no page: an index whose tree pages were zeroed raised raw lmdb errors
    (CorruptedError, BadTxnError) from a read-only open, which also left the process's LMDB
    environment open read-only, so the next writer's open in the process was refused; a
    writer's open raised them too, as did rebuild_index(). A read-only open now raises
    IndexDamagedError and releases the environment, and a writer's open sets the index aside
    and rebuilds it from the key logs."""
    pytest.importorskip("lmdb")
    values = {f"k{i}": f"value {i}".encode() * 3 for i in range(3000)}
    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        store.put_many(values.items())
    data = tmp_path / "kv" / "index.lmdb" / "data.mdb"
    content = bytearray(data.read_bytes())
    content[4 * 4096 :] = bytes(len(content) - 4 * 4096)  # the pages past the two meta pages and the roots
    data.write_bytes(content)
    with pytest.raises(IndexDamagedError):
        with KeyedStore(tmp_path / "kv", index="lmdb", readonly=True) as reader:
            reader.get_many(list(values))
    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        assert dict(store.items()) == values
        assert store.rebuild_index() == len(values) and store.verify().ok
    assert any(".damaged-" in p.name for p in (tmp_path / "kv").iterdir())


@pytest.mark.parametrize(
    "options",
    [
        {"max_file_size": 0},
        {"max_file_size": True},
        {"lock_timeout": -1},
        {"lock_timeout": "1"},
        {"use_compression": "yes"},
        {"readonly": "no"},
        {"fsync": "no"},
        {"fsync": None},
        {"skip_damaged_logs": "no"},
    ],
)
def test_a_refused_option_creates_no_store_directory(tmp_path: Path, options: dict[str, Any]) -> None:
    """KeyedStore made its directory (and staging/ in it) before the engine checked the options
    they share: a typo in max_file_size, lock_timeout or use_compression left an empty store
    directory behind its TypeError or ValueError. Nothing is created now. readonly, fsync and
    skip_damaged_logs took any truthy value (readonly="no" opened read-only): bools only now."""
    with pytest.raises((TypeError, ValueError)):
        KeyedStore(tmp_path / "kv", **options)
    assert not (tmp_path / "kv").exists()


def test_iter_objects_left_early_closes_the_file_it_gave_when_its_block_ends(tmp_path: Path) -> None:
    """iter_objects is a context manager so that its files are closed with its block, but a
    loop left early (break, an exception) left the file it was given open until a collection:
    the block's end did not close the generator. It does now."""
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many([("a", b"1"), ("b", b"2")])
        with store.iter_objects(["a", "b"]) as objects:
            _, stream, _ = next(objects)  # and the loop stops here
        assert stream.closed


@pytest.mark.parametrize("readonly", [False, True])
def test_verify_reports_a_damaged_index_page_instead_of_raising(tmp_path: Path, readonly: bool) -> None:
    """verify() (and ``ffdb kv verify``) met a damaged page of the SQLite index while it listed
    the keys and raised, instead of returning the report of what is wrong. The damage is one
    of the report's problems, beside the engine's findings."""
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many((f"k{i}", f"value {i}".encode() * 4) for i in range(3000))
    _damage_sqlite_pages_after_the_state_table(tmp_path / "kv" / "index.sqlite3")
    with KeyedStore(tmp_path / "kv", readonly=readonly) as store:
        report = store.verify()
    assert not report.ok and any("the index cannot be read" in problem for problem in report.problems)


class _RefusingEnv:
    """An LMDB environment stand-in whose every transaction is refused with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse the transaction."""
        raise self.error


def test_an_lmdb_read_refused_for_another_reason_than_damage_is_not_called_damage(tmp_path: Path) -> None:
    """A damaged tree (CorruptedError, PageNotFoundError, ...) is IndexDamagedError, which a
    writer's open answers by rebuilding the index; a read refused for another reason (too many
    readers) is a FlatFileDbError that names the index, never IndexDamagedError: no rebuild of
    an index that is whole."""
    import lmdb  # pylint: disable=import-outside-toplevel

    with KeyedStore(tmp_path / "kv", index="lmdb") as store:
        store["k"] = b"v"
        store._apply()  # pylint: disable=protected-access
        index = store.index
        real = index.env  # type: ignore[attr-defined]
        try:
            index.env = _RefusingEnv(lmdb.ReadersFullError("MDB_READERS_FULL"))  # type: ignore[attr-defined]
            with pytest.raises(FlatFileDbError, match="index.lmdb: the index could not be read") as raised:
                index.lookup(b"\x01k")
            assert not isinstance(raised.value, IndexDamagedError)
            with pytest.raises(FlatFileDbError) as raised:
                index.count()
            assert not isinstance(raised.value, IndexDamagedError)
            index.env = _RefusingEnv(lmdb.CorruptedError("MDB_CORRUPTED"))  # type: ignore[attr-defined]
            with pytest.raises(IndexDamagedError):
                index.lookup(b"\x01k")
            with pytest.raises(IndexDamagedError):
                index.count()
        finally:
            index.env = real  # type: ignore[attr-defined]
        assert store["k"] == b"v"


def test_a_flat_file_db_datadir_given_to_keyed_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A plain FlatFileDb datadir passed as a KeyedStore's directory was turned into a keyed store
    around the datadir's own files (segments/, index and locks beside ffdb.state and the segments):
    it is an InvalidLocationError now, and nothing is added to the datadir."""
    datadir = tmp_path / "plain"
    with FlatFileDb(datadir) as db:
        location = db.put(b"engine's blob")
    before = sorted(os.listdir(datadir))
    with pytest.raises(InvalidLocationError, match="FlatFileDb datadir"):
        KeyedStore(datadir)
    assert sorted(os.listdir(datadir)) == before
    with FlatFileDb(datadir) as db:
        assert db.get(location) == b"engine's blob"
    with KeyedStore(tmp_path / "kv") as store:  # a keyed store's own directory opens as before
        store["k"] = b"v"
    with KeyedStore(tmp_path / "kv") as store:
        assert store["k"] == b"v"


def test_an_empty_path_is_refused_not_taken_for_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyedStore("") (an unset variable's value) made a keyed store in the current directory;
    it is a ValueError now, and nothing is written there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        KeyedStore("")
    assert not os.listdir(tmp_path)


def test_one_path_or_pair_where_stream_methods_take_an_iterable_is_a_type_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_streams("data.bin") iterated the str: it stored the files "d", "a", "t"... of the
    current directory when they existed (FileNotFoundError otherwise), and put_streams of a str
    or of an item that is not a pair was a bare unpacking ValueError. Both are TypeErrors now,
    and nothing is stored."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").write_bytes(b"the file d")
    with KeyedStore(tmp_path / "kv") as store:
        for single in ("data.bin", tmp_path / "d", b"d"):
            with pytest.raises(TypeError, match="iterable of streams"):
                store.add_streams(single)  # type: ignore[arg-type]
        for pairs in ("ab", [b"x"], [("k", io.BytesIO(b"v"), "extra")]):
            with pytest.raises(TypeError, match=r"\(key, stream\) pairs"):
                store.put_streams(pairs)  # type: ignore[arg-type]
        assert len(store) == 0
        assert store.add_streams([tmp_path / "d"]) == [hashlib.sha256(b"the file d").hexdigest()]


def test_a_segment_deleted_by_a_plain_engine_is_a_not_found_error_never_a_key_error(tmp_path: Path) -> None:
    """A FlatFileDb opened on a store's segments/ writes its own blobs there and deletes a
    segment that holds keys' values: those keys raise FlatFileDbNotFoundError (get() does not
    answer its default, as for an absent key), verify() lists them as dangling, and every other
    key keeps its value."""
    path = tmp_path / "kv"
    with KeyedStore(path, max_file_size=4096) as store:
        store.put_many([(f"old{i}", b"o%d" % i * 40) for i in range(20)])
        first = min(store.db.segments())
        lost = [key for key in store if store.meta(key).segment == first]
        store.db.rotate()
        store.put_many([(f"new{i}", b"n%d" % i * 40) for i in range(20)])
    with FlatFileDb(path / "segments", path / "segments.lock") as plain:
        plain.put(b"a plain blob")
        plain.delete_file(plain.segment_path(first))
    with KeyedStore(path, max_file_size=4096) as store:
        assert lost
        for key in lost:
            with pytest.raises(FlatFileDbNotFoundError):
                store.get(key, b"default")
        report = store.verify()
        assert sum("dangling" in problem for problem in report.problems) == len(lost)
        assert all(store[f"new{i}"] == b"n%d" % i * 40 for i in range(20))
