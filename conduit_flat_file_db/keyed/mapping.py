"""The keyed store as a mapping: puts, gets, deletes, iteration, metadata, streams, content keys."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import ItemsView, KeysView, ValuesView
from contextlib import contextmanager
from typing import Any, Generator, Iterable, Iterator, Mapping, NamedTuple

import xxhash

from ..arguments import as_bytes_like, check_stream_item
from ..errors import FlatFileDbError, FlatFileDbNotFoundError
from ..reader import BlobFile
from ..types import DataLocation, Slice
from .core import _RETRIES, KeyedCore
from .keylog import Entry, Row, decode_key, encode_key, encode_keylog

Key = str | bytes
_checksum = xxhash.xxh3_64_intdigest
_SMALL_STREAM = 2**20  # put_streams: values up to this size are batched, longer ones streamed
_BATCH_BYTES = 64 * 2**20
_READINTO_BYTES = 2**16  # put_streams: the buffer of each readinto of a stream without read()


class KeyMeta(NamedTuple):
    """What the store knows of one key's value (``KeyedStore.meta``)."""

    key: Key
    size: int
    segment: int
    offset: int
    compressed: bool
    created: float  # Unix seconds of the write
    checksum: int | None  # XXH3-64 of the value; None for an array made by create_array (never read)
    user: dict[str, Any]  # the metadata given at put time
    array: tuple[Any, tuple[int, ...]] | None  # (dtype description, shape) of a value stored as an array


def encode_meta(
    user: Mapping[str, Any] | None, array: tuple[Any, tuple[int, ...]] | None = None, unchecked: bool = False
) -> bytes:
    """The meta bytes of a row: a JSON object, or b"" when there is nothing to say.
    ``unchecked``: the value was committed without reading it (create_array): no checksum."""
    if user is None and array is None:
        return b""
    doc: dict[str, Any] = {"unchecked": True} if unchecked else {}
    if user is not None:
        if not isinstance(user, Mapping):
            raise TypeError(f"meta is a dict of JSON values, not {type(user).__name__}")
        doc["user"] = dict(user)
    if array is not None:
        doc["array"] = {"dtype": array[0], "shape": list(array[1])}
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise TypeError(f"meta must be JSON-serialisable: {exc}") from None


def is_unchecked(raw: bytes) -> bool:
    """Whether a row's value has no checksum (committed without reading it)."""
    return raw.startswith(b'{"unchecked":true')


def decode_meta(raw: bytes) -> tuple[dict[str, Any], tuple[Any, tuple[int, ...]] | None]:
    """(user metadata, array description) of a row's meta bytes."""
    if not raw:
        return {}, None
    doc = json.loads(raw)
    array = doc.get("array")
    return doc.get("user", {}), None if array is None else (array["dtype"], tuple(array["shape"]))


class _HashingReader(io.RawIOBase):
    """Reads through to ``inner`` and hashes what passes (SHA-256 and XXH3-64)."""

    def __init__(self, inner: Any, sha: Any = None) -> None:
        super().__init__()
        _check_readable(inner)
        self.inner = inner
        self.size = 0
        self.xxh = xxhash.xxh3_64()
        self.sha = sha  # a hashlib.sha256() object, or None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if hasattr(self.inner, "readinto"):
            count = self.inner.readinto(view) or 0
        else:
            chunk = self.inner.read(len(view)) or b""
            count = len(chunk)
            view[:count] = chunk
        if count:
            self.xxh.update(view[:count])
            if self.sha is not None:
                self.sha.update(view[:count])
            self.size += count
        return count


class _Items(ItemsView[Key, bytes]):
    """``items()``: (key, value) pairs in key order, read a chunk of keys at a time; a key deleted
    between the listing and its read is skipped, as a dict iterated while another process
    changes it cannot promise more."""

    def __init__(self, store: MappingStore) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[tuple[Key, bytes]]:
        store = self._store
        for key, row in store._scan():  # pylint: disable=protected-access
            try:
                value = store._read(key, decode_key(key), None, row)  # pylint: disable=protected-access
            except KeyError:
                continue
            yield decode_key(key), value


class _Values(ValuesView[bytes]):
    """``values()``: the values in key order (see _Items)."""

    def __init__(self, store: MappingStore) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[bytes]:
        return (value for _, value in _Items(self._store))


class _PrefixKeys(KeysView[Key]):
    """``keys(prefix=...)``: the keys that start with ``prefix`` (of the same type)."""

    def __init__(self, store: MappingStore, prefix: Key) -> None:
        super().__init__(store)
        self._store = store
        self._prefix = encode_key(prefix)

    def __iter__(self) -> Iterator[Key]:
        return (decode_key(key) for key, _ in self._store._scan(self._prefix))  # pylint: disable=protected-access

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return encode_key(key).startswith(self._prefix) and key in self._store


class MappingStore(KeyedCore):
    """The mapping and container operations (see KeyedStore for the whole class)."""

    # -- MutableMapping -------------------------------------------------------------------

    def __getitem__(self, key: Key) -> bytes:
        encoded = encode_key(key)
        row = self._lookup(encoded)
        if row is not None:
            # The common case inline (a whole value, present, its checksum right); _read does
            # the rest: retries after a vacuum moved the value, errors.
            try:
                value = self.db.get(self._location(row))
            except FlatFileDbNotFoundError:
                return self._read(encoded, key)
            if _checksum(value) == row[3]:
                return value
        return self._read(encoded, key, None, row)

    def __setitem__(self, key: Key, value: Any) -> None:
        # put(key, value) inline: one Python frame less on the hot path of s[k] = v.
        if self.readonly or self._closed:
            self._check_writable("put")
        encoded = encode_key(key)  # (the key first, as put() checks it)
        data = value if type(value) is bytes else as_bytes_like(value)  # pylint: disable=unidiomatic-typecheck
        self._commit_one(encoded, data, b"")

    def __delitem__(self, key: Key) -> None:
        if not self.delete_many([key]):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self._lookup(encode_key(key)) is not None

    def __len__(self) -> int:
        return self._count()

    def __iter__(self) -> Iterator[Key]:
        return (decode_key(key) for key, _ in self._scan())

    def items(self) -> ItemsView[Key, bytes]:
        """(key, value) pairs in key order; keys deleted meanwhile by others are skipped."""
        return _Items(self)

    def values(self) -> ValuesView[bytes]:
        """Values in key order; keys deleted meanwhile by others are skipped."""
        return _Values(self)

    def keys(self, prefix: Key | None = None) -> KeysView[Key]:
        """The keys (sorted: bytes keys, then str keys, each by their bytes); with ``prefix``,
        only the keys of its type that start with it."""
        if prefix is None:
            return KeysView(self)
        return _PrefixKeys(self, prefix)

    def put(self, key: Key, value: Any, *, meta: Mapping[str, Any] | None = None) -> None:
        """Store ``value`` (any bytes-like) under ``key``, with optional JSON-able user metadata."""
        if self.readonly or self._closed:
            self._check_writable("put")
        encoded = encode_key(key)
        data = value if type(value) is bytes else as_bytes_like(value)  # pylint: disable=unidiomatic-typecheck
        self._commit_one(encoded, data, b"" if meta is None else encode_meta(meta))

    def put_many(self, items: Iterable[tuple[Key, Any]] | Mapping[Key, Any]) -> None:
        """Store many (key, value) pairs as one atomic batch: after a crash all are stored or
        none. A key given twice ends with its last value."""
        self._check_writable("put_many")
        pairs = items.items() if isinstance(items, Mapping) else items
        puts = []
        for position, pair in enumerate(pairs):
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise TypeError(f"put_many() takes (key, value) pairs; item {position} is {pair!r:.60}") from None
            data = value if type(value) is bytes else as_bytes_like(value, f"put_many() item {position}")  # pylint: disable=unidiomatic-typecheck
            puts.append((encode_key(key), data, b""))
        if puts:
            self._commit(puts)

    def update(self, *args: Any, **kwargs: Any) -> None:  # pylint: disable=arguments-differ
        """dict.update in one batch (``put_many``)."""
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 positional argument, got {len(args)}")
        pairs: list[tuple[Key, Any]] = []
        if args:
            other = args[0]
            if isinstance(other, Mapping):
                pairs.extend(other.items())
            elif hasattr(other, "keys"):
                pairs.extend((key, other[key]) for key in other.keys())  # noqa: SIM118  # dict.update calls keys()
            else:
                pairs.extend(other)
        pairs.extend(kwargs.items())
        self.put_many(pairs)

    def get(self, key: Key, default: Any = None, *, slice: Slice | None = None) -> Any:  # pylint: disable=redefined-builtin
        """The value of ``key`` (or the ``slice`` of it), ``default`` when absent."""
        try:
            return self._read(encode_key(key), key, slice)
        except KeyError:
            return default

    def get_many(self, keys: Iterable[Key]) -> list[bytes]:
        """The values of ``keys`` in their order, read in disk order; KeyError for an absent key."""
        wanted = list(_many(keys, "get_many"))
        for _ in range(8):
            _, rows = self._rows(wanted)
            try:
                values = self.db.get_many([self._location(row) for row in rows])
            except FlatFileDbNotFoundError:
                continue  # a vacuum moved one meanwhile: look them up again
            for key, row, value in zip(wanted, rows, values):
                if _checksum(value) != row.checksum:
                    self._check_value(key, row, value)
            return values
        return [self[key] for key in wanted]

    def delete_many(self, keys: Iterable[Key]) -> int:
        """Delete the keys that are present; returns how many were."""
        self._check_writable("delete_many")
        encoded = list(dict.fromkeys(encode_key(key) for key in _many(keys, "delete_many")))
        present = [key for key, row in zip(encoded, self._lookup_many(encoded)) if row is not None]
        if present:
            self._commit([], present)
        return len(present)

    def clear(self) -> None:
        """Delete every key (in batches); the space is reclaimed by vacuum().

        One pass over the keys in key order: a key another thread or process writes meanwhile
        may be deleted or kept (a write concurrent with clear()), and clear() returns however
        fast others write (scanning again until none is left would chase them for ever)."""
        self._check_writable("clear")
        keys = self._scan()
        while chunk := [key for key, _ in itertools.islice(keys, 10000)]:
            self._commit([], chunk)

    def pop(self, key: Key, *default: Any) -> Any:
        """dict.pop, as one step: the value returned is the one deleted (a value another thread
        or process writes meanwhile is either the one returned, or stays stored)."""
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        self._check_writable("pop")
        encoded = encode_key(key)
        for _ in range(_RETRIES):
            row = self._lookup(encoded)
            if row is None:
                if default:
                    return default[0]
                raise KeyError(key)
            try:
                value = self._read(encoded, key, None, row)
            except KeyError:
                continue  # deleted meanwhile (and found again after a vacuum moved it): look again
            if self._delete_if_current([(encoded, row)]):
                return value
        raise FlatFileDbError(f"{self._dir}: key {key!r} kept changing while it was popped")

    def popitem(self) -> tuple[Key, bytes]:
        """dict.popitem: remove and return a (key, value) pair, the first in key order (one
        another process pops first is passed over); KeyError when the store is empty."""
        self._check_writable("popitem")
        missing = object()
        for key in self:
            value = self.pop(key, missing)
            if value is not missing:
                return key, value
        raise KeyError("popitem(): the keyed store is empty")

    def setdefault(self, key: Key, default: Any = None) -> Any:
        """dict.setdefault, as one step: ``default`` is stored only when the key is absent when
        its key-log record is made, and the value returned is the one stored then."""
        self._check_writable("setdefault")
        encoded = encode_key(key)
        for _ in range(_RETRIES):
            row = self._lookup(encoded)
            if row is not None:
                try:
                    return self._read(encoded, key, None, row)
                except KeyError:
                    continue  # deleted meanwhile: look again
            data = default if type(default) is bytes else as_bytes_like(default, "setdefault()")  # pylint: disable=unidiomatic-typecheck
            if self._put_if_absent(encoded, data):
                return default
        raise FlatFileDbError(f"{self._dir}: key {key!r} kept changing while setdefault() ran")

    def _put_if_absent(self, key: bytes, data: Any) -> bool:
        """Store ``data`` under ``key`` if the key is absent when the key-log record is made,
        under the engine's write lock; whether it was (else the bytes written are dead)."""
        checksum = _checksum(data)
        created = time.time_ns()
        made: list[Any] = []

        def make_log(locations: list[DataLocation]) -> bytes:
            self._refresh()
            entries: list[Entry] = []
            if self._lookup_many([key])[0] is None:
                loc = locations[0]
                entries.append(Entry(key, Row(self._segment_of(loc), loc[1], loc[2], checksum, created, 0, b"")))
            blob = encode_keylog(entries, created)
            made[:] = [entries, blob]
            return blob

        self._logged(self.db.put_logged([data], make_log), made)
        return bool(made[0])

    # -- metadata -------------------------------------------------------------------------

    def meta(self, key: Key) -> KeyMeta:
        """Size, place, time, checksum and user metadata of ``key``'s value; KeyError when absent."""
        row = self._lookup(encode_key(key))
        if row is None:
            raise KeyError(key)
        return self._meta(key, row)

    def _meta(self, key: Key, row: Row) -> KeyMeta:
        user, array = decode_meta(row.meta)
        compressed = self._location(row).file_path.endswith(".zst")
        checksum = None if is_unchecked(row.meta) else row.checksum
        return KeyMeta(
            key, row.end - row.start, row.segment, row.start, compressed, row.created_ns / 1e9, checksum, user, array
        )

    @contextmanager
    def iter_objects(self, keys: Iterable[Key]) -> Iterator[Iterator[tuple[Key, BlobFile, KeyMeta]]]:
        """(key, readable, meta) of each present key, in disk order, a chunk of keys at a time
        (bounded memory whatever the number of keys). Absent keys are skipped."""
        objects = self._objects(_many(keys, "iter_objects"))
        try:
            yield objects
        finally:
            objects.close()  # a loop left early: the file it was given is closed with the block

    def _objects(self, keys: Iterable[Key]) -> Generator[tuple[Key, BlobFile, KeyMeta], None, None]:
        chunk: list[Key] = []
        for key in keys:
            chunk.append(key)
            if len(chunk) >= 10000:
                yield from self._objects_of(chunk)
                chunk = []
        yield from self._objects_of(chunk)

    def _objects_of(self, keys: list[Key]) -> Iterator[tuple[Key, BlobFile, KeyMeta]]:
        rows = self._lookup_many([encode_key(key) for key in keys])
        found = sorted(((row.segment, row.start), key, row) for key, row in zip(keys, rows) if row is not None)
        for _, key, row in found:
            opened = self._open_row(key, row)
            if opened is None:
                continue  # deleted meanwhile
            stream, row = opened
            with stream:
                yield key, stream, self._meta(key, row)  # the meta of the value opened

    def _open_row(self, key: Key, row: Row | None) -> tuple[BlobFile, Row] | None:
        """A file of the value ``row`` names and that row; when a vacuum moved it meanwhile, of the
        key's value now (a later write's, perhaps) and its row; None when the key is gone."""
        for _ in range(8):
            if row is None:
                return None
            try:
                return self.db.open_blob(self._location(row)), row
            except FlatFileDbNotFoundError:
                row = self._lookup(encode_key(key))  # moved by a vacuum meanwhile: look it up again
        raise FlatFileDbNotFoundError(f"{self._dir}: key {key!r} kept moving while it was opened")

    def open(self, key: Key) -> BlobFile:
        """A read-only seekable binary file of ``key``'s value; KeyError when absent."""
        opened = self._open_row(key, self._lookup(encode_key(key)))
        if opened is None:
            raise KeyError(key)
        return opened[0]

    # -- streams --------------------------------------------------------------------------

    def put_stream(self, key: Key, readable: Any, *, meta: Mapping[str, Any] | None = None) -> None:
        """Store everything ``readable`` yields under ``key``, in constant memory."""
        self._check_writable("put_stream")
        encoded = encode_key(key)
        with self._no_vacuum():  # the value is a segment no key names until the commit
            self._commit([], (), [self._stream_entry(encoded, readable, encode_meta(meta))])

    def _stream_entry(self, encoded: bytes, readable: Any, meta: bytes, reader: _HashingReader | None = None) -> Entry:
        reader = reader or _HashingReader(readable)
        location = self.db.put_stream(reader)
        self.db.sync()  # the value's segment is durable before a key log names it
        row = Row(self._segment_of(location), location[1], location[2], reader.xxh.intdigest(), time.time_ns(), 0, meta)
        return Entry(encoded, row)

    def put_streams(self, pairs: Iterable[tuple[Key, Any]], open_streams: bool = False) -> None:
        """Store (key, readable) pairs; with ``open_streams`` each readable is a context manager
        (``LazyOpener``) entered only while it is read. Values up to 1 MiB are committed in
        batches; longer ones are streamed. Committed in order, a batch at a time."""
        self._check_writable("put_streams")
        puts: list[tuple[bytes, Any, bytes]] = []
        pending = 0
        for position, pair in enumerate(_many(pairs, "put_streams", "(key, stream) pairs")):
            try:
                key, source = pair
            except (TypeError, ValueError):
                raise TypeError(f"put_streams() takes (key, stream) pairs; item {position} is {pair!r:.60}") from None
            encoded = encode_key(key)
            check_stream_item(source, position, open_streams)
            with _opened(source, open_streams) as stream:
                head = _read_up_to(stream, _SMALL_STREAM + 1)
                if len(head) <= _SMALL_STREAM:
                    puts.append((encoded, head, b""))
                    pending += len(head)
                else:
                    if puts:
                        self._commit(puts)
                        puts, pending = [], 0
                    chained = _Chained(head, stream)
                    with self._no_vacuum():
                        self._commit([], (), [self._stream_entry(encoded, chained, b"")])
            if pending >= _BATCH_BYTES:
                self._commit(puts)
                puts, pending = [], 0
        if puts:
            self._commit(puts)

    # -- content addressing ---------------------------------------------------------------

    def add(self, data: Any) -> str:
        """Store ``data`` under the lowercase hex SHA-256 of its bytes and return that key; the
        same content stored twice is stored once."""
        return self.add_many([data])[0]

    def add_many(self, datas: Iterable[Any]) -> list[str]:
        """``add`` for many, in one batch; returns their keys in order."""
        self._check_writable("add_many")
        items = [as_bytes_like(data, "add_many()") for data in datas]
        keys = [hashlib.sha256(item).hexdigest() for item in items]
        encoded = [encode_key(key) for key in keys]
        new: dict[bytes, Any] = {}
        for key, row, item in zip(encoded, self._lookup_many(encoded), items):
            if row is None:
                new.setdefault(key, item)
        if new:
            self._commit([(key, item, b"") for key, item in new.items()])
        return keys

    def add_streams(self, streams: Iterable[Any], open_streams: bool = False) -> list[str]:
        """``add`` for readables (or context managers giving them, ``open_streams``), streamed:
        constant memory per stream. A content already stored is not stored again (its bytes
        written meanwhile are reclaimed by vacuum)."""
        self._check_writable("add_streams")
        keys: list[str] = []
        for source in _many(streams, "add_streams", "streams or paths"):
            sha = hashlib.sha256()
            with self._no_vacuum(), _opened(source, open_streams) as stream:
                reader = _HashingReader(stream, sha)
                location = self.db.put_stream(reader)
                key = sha.hexdigest()
                keys.append(key)
                encoded = encode_key(key)
                if self._lookup(encoded) is None:
                    self.db.sync()
                    row = Row(
                        self._segment_of(location),
                        location[1],
                        location[2],
                        reader.xxh.intdigest(),
                        time.time_ns(),
                        0,
                        b"",
                    )
                    self._commit([], (), [Entry(encoded, row)])
        return keys

    def _delete_if_current(self, rows: list[tuple[bytes, Row]]) -> int:
        """Delete each key of ``rows`` whose value is still the one its row names, decided when
        the key-log record is made, under the engine's write lock (as a vacuum's rewrite is): a
        key written again since it was chosen keeps its new value (deleting by key, as
        delete_many does, deleted it). Returns how many keys were deleted."""
        now = self._lookup_many([key for key, _ in rows])
        rows = [(key, row) for (key, row), found in zip(rows, now) if _same(found, row)]
        if not rows:
            return 0
        created = time.time_ns()
        made: list[Any] = []

        def make_log(_: list[DataLocation]) -> bytes:
            self._refresh()
            current = self._lookup_many([key for key, _ in rows])
            entries = [Entry(key, None) for (key, row), found in zip(rows, current) if _same(found, row)]
            blob = encode_keylog(entries, created)
            made[:] = [entries, blob]
            return blob

        self._logged(self.db.put_logged([], make_log), made)
        return len(made[0])


class _Chained(io.RawIOBase):
    """The bytes ``head`` then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: Any) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        if hasattr(self._stream, "readinto"):
            return int(self._stream.readinto(view) or 0)
        chunk = self._stream.read(len(view)) or b""
        view[: len(chunk)] = chunk
        return len(chunk)


def _same(found: Row | None, row: Row) -> bool:
    """Whether ``found`` names the value ``row`` names (the same location and checksum; the log
    segment of a row may differ between the tail and the index)."""
    return found is not None and found[:4] == row[:4]


@contextmanager
def _opened(source: Any, open_streams: bool) -> Iterator[Any]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield handle
    elif open_streams:
        with source as handle:
            yield handle
    else:
        yield source


def _many(keys: Iterable[Any], method: str, what: str = "keys") -> Iterable[Any]:
    """``keys``, unless it is one key: a str or bytes is an iterable of characters or ints, and
    delete_many("abc") would delete the keys "a", "b" and "c" (add_streams("data.bin") would
    store the files "d", "a" and "t", put_streams a pair per character)."""
    if isinstance(keys, (str, bytes, bytearray, memoryview, os.PathLike)):
        raise TypeError(f"{method}() takes an iterable of {what}, not one {type(keys).__name__} (pass [it])")
    return keys


def _check_readable(stream: Any) -> None:
    if not (hasattr(stream, "readinto") or hasattr(stream, "read")):
        raise TypeError(f"a stream is an object with read() or readinto(), not {type(stream).__name__}")


def _read_up_to(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream`` (by ``read``, else ``readinto``)."""
    _check_readable(stream)
    parts: list[bytes] = []
    left = size
    while left > 0:
        if hasattr(stream, "read"):
            chunk = stream.read(left)
        else:
            buffer = bytearray(min(left, _READINTO_BYTES))
            chunk = buffer[: stream.readinto(buffer) or 0]
        if not chunk:
            break
        parts.append(bytes(chunk))
        left -= len(chunk)
    return b"".join(parts)
