"""Hypothesis state machines: a KeyedStore behaves as a dict, step after step, and a read-only twin
(a second KeyedStore(readonly=True) on the same path) sees the same mapping after every step.

Steps: put (with and without user meta; bytes, bytearray or memoryview values), s[k] = v,
put_many and update (one batch; a repeated key's later pair wins), del, delete_many, clear, add and
add_many (content addressing), get (whole and sliced), get_many, writes refused by the twin, bad
keys refused by the writer, and reopening either store. After each step both stores must agree with
the model in len(), iteration order (bytes keys first, then str keys, each by their bytes), items(),
keys(prefix) for prefixes of both types, get() of absent keys and meta() (user meta, size,
checksum). Run for index="sqlite" and index="lmdb".
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import xxhash
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from keyed_support import Key, key_bytes, sort_keys

from conduit_flat_file_db import FlatFileDbError, FlatFileDbReadOnlyError, InvalidKeyError, KeyedStore, Slice

# "a" and b"a" are different keys; "é" is two bytes; 510 bytes is the longest key.
KEYS: list[Key] = ["a", b"a", "ab", b"ab", "b", b"\x00", b"\xff\xfe", "é", "日本", "a" * 510, b"z" * 510, "é" * 255]
PREFIXES: list[Key] = ["a", b"a", "", b"", "é", b"\xff", "日"]
BAD_KEYS: list[Any] = ["x" * 511, b"y" * 511, "é" * 256, 5, None, 1.5, ("a",), ["a"]]
META = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3)
)
VALUES = st.binary(max_size=2000)
key_strategy = st.sampled_from(KEYS)
Entry = tuple[bytes, dict[str, Any]]


def as_buffer(value: bytes, kind: int) -> Any:
    """The same bytes as bytes, bytearray or memoryview (all are accepted as values)."""
    return [value, bytearray(value), memoryview(value)][kind]


class KeyedStoreMachine(RuleBasedStateMachine):
    """The store under test, its read-only twin, and a dict model of both."""

    INDEX = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="keyed-property-"))
        self.store = KeyedStore(self.dir / "store", index=self.INDEX)
        self.twin = KeyedStore(self.dir / "store", index=self.INDEX, readonly=True)
        self.model: dict[Key, Entry] = {}

    def teardown(self) -> None:
        try:
            report = self.store.verify()
            assert report.ok, report.problems
        finally:
            self.twin.close()
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- writes ---------------------------------------------------------------------------------

    @rule(key=key_strategy, value=VALUES, meta=META, kind=st.integers(0, 2), item_syntax=st.booleans())
    def put(self, key: Key, value: bytes, meta: dict[str, Any] | None, kind: int, item_syntax: bool) -> None:
        """put() with meta, or s[k] = v."""
        if item_syntax and meta is None:
            self.store[key] = as_buffer(value, kind)
        else:
            self.store.put(key, as_buffer(value, kind), meta=meta)
        self.model[key] = (value, meta or {})

    @rule(pairs=st.lists(st.tuples(key_strategy, VALUES), max_size=6), use_update=st.booleans())
    def put_many(self, pairs: list[tuple[Key, bytes]], use_update: bool) -> None:
        """put_many() or update() with pairs (a repeated key: the later pair wins)."""
        if use_update:
            self.store.update(pairs)
        else:
            self.store.put_many(iter(pairs))
        for key, value in pairs:
            self.model[key] = (value, {})

    @rule(mapping=st.dictionaries(key_strategy, VALUES, max_size=4))
    def update_from_dict(self, mapping: dict[Key, bytes]) -> None:
        """update() with a dict."""
        self.store.update(mapping)
        for key, value in mapping.items():
            self.model[key] = (value, {})

    @rule(key=key_strategy)
    def delete(self, key: Key) -> None:
        """del s[k]; KeyError for an absent key, and nothing changes."""
        if key in self.model:
            del self.store[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.store[key]

    @rule(keys=st.lists(key_strategy, max_size=6))
    def delete_many(self, keys: list[Key]) -> None:
        """delete_many() returns how many of the keys were there."""
        expected = len({k for k in keys if k in self.model})
        assert self.store.delete_many(keys) == expected
        for key in keys:
            self.model.pop(key, None)

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def clear(self) -> None:
        """clear() empties the store."""
        self.store.clear()
        self.model.clear()

    @rule(datas=st.lists(st.binary(max_size=300), min_size=1, max_size=3), many=st.booleans())
    def add(self, datas: list[bytes], many: bool) -> None:
        """add() / add_many(): the key is the lowercase SHA-256 hex of the data; the same content
        twice is stored once (its meta, location included, does not change)."""
        known = {key: self.store.meta(key) for key in map(self.hexkey, datas) if key in self.model}
        keys = self.store.add_many(datas) if many else [self.store.add(data) for data in datas]
        assert keys == [self.hexkey(data) for data in datas]
        for key, data in zip(keys, datas):
            if key in known:
                assert self.store.meta(key) == known[key], "add() of stored content wrote it again"
            self.model[key] = (data, self.model[key][1] if key in self.model else {})

    @staticmethod
    def hexkey(data: bytes) -> str:
        """The key add() gives ``data``."""
        return hashlib.sha256(data).hexdigest()

    @rule(key=st.sampled_from(BAD_KEYS), value=VALUES)
    def bad_key_is_refused(self, key: Any, value: bytes) -> None:
        """A key too long or of a wrong type: InvalidKeyError (ValueError / TypeError), nothing written."""
        expected = TypeError if not isinstance(key, (str, bytes)) else ValueError
        with pytest.raises(InvalidKeyError) as raised:
            self.store.put(key, value)
        assert isinstance(raised.value, (FlatFileDbError, expected)) and isinstance(raised.value, expected)
        with pytest.raises(InvalidKeyError):
            self.store.put_many([(KEYS[0], b"never"), (key, value)])

    @rule(key=key_strategy, value=VALUES, which=st.integers(0, 3))
    def twin_refuses_writes(self, key: Key, value: bytes, which: int) -> None:
        """Every write through the read-only twin raises FlatFileDbReadOnlyError (io.UnsupportedOperation)."""
        writes: list[Callable[[], object]] = [
            lambda: self.twin.put(key, value),
            lambda: self.twin.put_many([(key, value)]),
            lambda: self.twin.delete_many([key]),
            lambda: self.twin.add(value),
        ]
        with pytest.raises(FlatFileDbReadOnlyError) as raised:
            writes[which]()
        assert isinstance(raised.value, io.UnsupportedOperation)

    @rule()
    def reopen(self) -> None:
        """Close the store and open it again (the twin stays open)."""
        self.store.close()
        self.store = KeyedStore(self.dir / "store", index=self.INDEX)

    @rule()
    def reopen_twin(self) -> None:
        """Close the twin and open it again."""
        self.twin.close()
        self.twin = KeyedStore(self.dir / "store", index=self.INDEX, readonly=True)

    # -- reads ----------------------------------------------------------------------------------

    @rule(key=key_strategy, data=st.data())
    def get_slice(self, key: Key, data: st.DataObject) -> None:
        """get() of a Slice of a value (end 0: to the end)."""
        if key not in self.model:
            assert self.store.get(key, slice=Slice(0, 0)) is None
            return
        value = self.model[key][0]
        start = data.draw(st.integers(0, len(value)))
        end = data.draw(st.integers(start, len(value)))
        want = value[start:end] if end else value[start:]
        for store in (self.store, self.twin):
            assert store.get(key, slice=Slice(start, end)) == want

    @rule(keys=st.lists(key_strategy, max_size=5))
    def get_many(self, keys: list[Key]) -> None:
        """get_many() in the caller's order; KeyError if any key is absent."""
        for store in (self.store, self.twin):
            if all(k in self.model for k in keys):
                assert store.get_many(keys) == [self.model[k][0] for k in keys]
            else:
                with pytest.raises(KeyError):
                    store.get_many(keys)

    @invariant()
    def both_stores_match_the_model(self) -> None:
        """The store and its twin agree with the model in every read."""
        for name, store in (("store", self.store), ("twin", self.twin)):
            check_matches(store, self.model, name)


def check_matches(store: KeyedStore, model: dict[Key, Entry], name: str) -> None:
    """len, iteration order, items, keys(prefix), get of absent keys, meta of each key."""
    order = sort_keys(model)
    assert len(store) == len(model), f"{name}: len"
    assert list(store) == order, f"{name}: iteration"
    assert list(store.items()) == [(k, model[k][0]) for k in order], f"{name}: items()"
    assert list(store.values()) == [model[k][0] for k in order], f"{name}: values()"
    for prefix in PREFIXES:
        want = [k for k in order if type(k) is type(prefix) and key_bytes(k).startswith(key_bytes(prefix))]
        assert list(store.keys(prefix=prefix)) == want, f"{name}: keys(prefix={prefix!r})"
    for key in KEYS:
        if key not in model:
            assert key not in store and store.get(key) is None and store.get(key, b"d") == b"d", f"{name}: {key!r}"
            with pytest.raises(KeyError):
                store.meta(key)
    for key, (value, user) in model.items():
        assert store[key] == value, f"{name}: {key!r}"
        meta = store.meta(key)
        assert (meta.key, meta.size, meta.user, meta.array) == (key, len(value), user, None), f"{name}: meta({key!r})"
        assert meta.checksum == xxhash.xxh3_64_intdigest(value), f"{name}: meta({key!r}).checksum"


SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None)


class LmdbKeyedStoreMachine(KeyedStoreMachine):
    """The same machine on an LMDB index."""

    INDEX = "lmdb"


TestSqliteKeyedStoreActsAsADictSeenAlikeByAReadOnlyTwin = KeyedStoreMachine.TestCase
TestSqliteKeyedStoreActsAsADictSeenAlikeByAReadOnlyTwin.settings = SETTINGS
TestLmdbKeyedStoreActsAsADictSeenAlikeByAReadOnlyTwin = LmdbKeyedStoreMachine.TestCase
TestLmdbKeyedStoreActsAsADictSeenAlikeByAReadOnlyTwin.settings = SETTINGS


@pytest.mark.parametrize("index", ["sqlite", "lmdb"])
def test_empty_str_and_empty_bytes_are_two_valid_keys(tmp_path: Path, index: str) -> None:
    """A key of 0 bytes is within "at most 510 bytes"; "" and b"" are different keys."""
    with KeyedStore(tmp_path / "store", index=index) as store:
        store[""] = b"str"
        store[b""] = b"bytes"
        assert (store[""], store[b""], list(store)) == (b"str", b"bytes", [b"", ""])
