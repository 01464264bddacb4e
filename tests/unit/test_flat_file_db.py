"""The public class as a newcomer meets it: its documented constructor, the default lock path,
``max_file_size``, the AUTO seal policy handed to the engine, pickling, and the buffers put takes."""

from __future__ import annotations

import array
import inspect
import mmap
import multiprocessing
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy
import pytest

from conduit_flat_file_db import (
    CompressMode,
    DataLocation,
    FlatFileDb,
    NonContiguousBufferError,
    UnsupportedBufferError,
)
from conduit_flat_file_db.arguments import default_lock_path as cli_default_lock_path
from conduit_flat_file_db.naming import segment_name
from conduit_flat_file_db.seekable import parse_seek_table


def test_help_documents_every_constructor_option() -> None:
    """Each parameter of FlatFileDb(...) is spelled out (no **options) and described in its docstring."""
    parameters = inspect.signature(FlatFileDb).parameters
    assert not [p for p in parameters.values() if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    doc = FlatFileDb.__doc__ or ""
    missing = [name for name in parameters if f"        {name}:" not in doc]
    assert not missing, missing
    assert list(parameters)[:4] == ["datadir", "mutable_file_lock_path", "fsync", "use_compression"]
    assert parameters["mutable_file_lock_path"].default is None


@pytest.mark.parametrize("spelling", ["db", "db/", "db/.", "./db"])
def test_default_lock_path_is_the_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str) -> None:
    """Opened without a lock path, the store locks ``<datadir>.lock`` beside it, as ``ffdb`` does."""
    monkeypatch.chdir(tmp_path)
    with FlatFileDb(spelling) as db:
        db.put(b"x")
        assert str(db.mutable_file_lock_path) == cli_default_lock_path(spelling) == str(tmp_path / "db.lock")
    assert (tmp_path / "db.lock").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "db.lock"]


def test_positional_lock_path_of_the_original_still_works(tmp_path: Path) -> None:
    """``FlatFileDb(datadir, lock_path)`` as the original engine's README writes it."""
    with FlatFileDb(str(tmp_path / "db"), str(tmp_path / "elsewhere.lock")) as db:
        assert db.get(db.put(b"abc")) == b"abc"
        assert db.mutable_file_lock_path == tmp_path / "elsewhere.lock"
    assert (tmp_path / "elsewhere.lock").is_file()


def test_max_file_size_option_rotates_like_the_attribute(tmp_path: Path) -> None:
    """max_file_size=N seals a segment once it holds N bytes, as setting MAX_DAT_FILE_SIZE does."""
    with FlatFileDb(tmp_path / "db", max_file_size=100) as db:
        assert db.MAX_DAT_FILE_SIZE == 100
        locations = [db.put(bytes(60)) for _ in range(4)]
        assert len({loc.file_path for loc in locations}) == 2
        db.MAX_DAT_FILE_SIZE = 1000
        assert db.MAX_DAT_FILE_SIZE == 1000


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError), ("10", TypeError)]
)
def test_max_file_size_out_of_range_is_refused_before_anything_is_created(
    tmp_path: Path, bad: object, error: type[Exception]
) -> None:
    """The option is checked as the attribute is, before the datadir exists."""
    with pytest.raises(error, match="max_file_size"):
        FlatFileDb(tmp_path / "db", max_file_size=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "db").exists()


def test_min_savings_is_a_deprecated_alias_of_min_segment_saving(tmp_path: Path) -> None:
    """The old keyword and attribute keep working, and each use warns."""
    with pytest.warns(DeprecationWarning, match="min_segment_saving"):
        db = FlatFileDb(tmp_path / "db", min_savings=0.4)
    with db:
        with pytest.warns(DeprecationWarning, match="min_segment_saving"):
            assert db.min_segment_saving == 0.4 and db.min_savings == 0.4
        with pytest.warns(DeprecationWarning, match="min_segment_saving"):
            db.min_savings = 0.2
        assert db.min_segment_saving == 0.2


@pytest.mark.parametrize(
    ("value", "error"),
    [(5, ValueError), (-0.1, ValueError), (1.0, ValueError), ("0.2", TypeError), (True, TypeError), (None, TypeError)],
)
def test_min_segment_saving_is_checked_when_set_so_a_pickled_copy_still_opens(
    tmp_path: Path, value: object, error: type[Exception]
) -> None:
    """Setting the attribute checks it as the constructor does; the old value stays, and a
    pickled copy of the store opens with it."""
    with FlatFileDb(tmp_path / "db", min_segment_saving=0.3) as db:
        with pytest.raises(error, match="min_segment_saving"):
            db.min_segment_saving = value  # type: ignore[assignment]
        with pytest.raises(error, match="min_segment_saving"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            db.min_savings = value  # type: ignore[assignment]
        assert db.min_segment_saving == 0.3
        copy = pickle.loads(pickle.dumps(db))
        with copy:
            assert copy.min_segment_saving == 0.3


def _frame_sizes(datadir: Path, number: int) -> list[tuple[int, int]]:
    """(compressed, uncompressed) size of each frame of a compressed segment, from its seek table."""
    path = datadir / segment_name(number, True)
    with open(path, "rb") as file:
        return parse_seek_table(lambda offset, size: os.pread(file.fileno(), size, offset), path.stat().st_size).sizes()


def test_compressed_segment_sealed_under_auto_is_reframed(tmp_path: Path) -> None:
    """A compressed mutable segment (written by a use_compression=True instance, in small stored
    frames) sealed by an AUTO instance is re-framed by the AUTO seal hook into fewer, compressed
    frames of frame_bytes, and every blob reads back."""
    rng = random.Random(5)
    blobs = [(" ".join(rng.choice(["alpha", "beta", "gamma"]) for _ in range(200))).encode() for _ in range(30)]
    with FlatFileDb(tmp_path / "db", use_compression=True) as writer:
        locations = [writer.put(blob) for blob in blobs]
    before = _frame_sizes(tmp_path / "db", 0)
    assert len([1 for csize, dsize in before if csize > dsize > 0]) == len(blobs)  # one stored frame per put
    with FlatFileDb(tmp_path / "db", use_compression=CompressMode.AUTO) as db:
        db.rotate()
        db._wait_seal_hooks()  # pylint: disable=protected-access  # the hook runs in its own thread
        after = _frame_sizes(tmp_path / "db", 0)
        assert len(after) == -(-sum(len(b) for b in blobs) // db.frame_bytes), after
        assert all(csize < dsize // 2 for csize, dsize in after), after
        assert [db.get(loc) for loc in locations] == blobs


def _put_and_get(db: FlatFileDb, payload: bytes) -> tuple[DataLocation, bytes, int]:
    location = db.put(payload)
    return location, db.get(location), db.MAX_DAT_FILE_SIZE


def test_pickled_store_puts_and_gets_in_a_spawn_pool(tmp_path: Path) -> None:
    """A FlatFileDb handed to spawn workers opens the same store there: their puts are read here,
    and the options it was opened with (and a MAX_DAT_FILE_SIZE set later) go along."""
    with FlatFileDb(tmp_path / "db", lock_timeout=30, frame_bytes=4096) as db:
        db.MAX_DAT_FILE_SIZE = 10_000
        copy = pickle.loads(pickle.dumps(db))
        with copy:
            assert (
                copy.datadir,
                copy.mutable_file_lock_path,
                copy.lock_timeout,
                copy.frame_bytes,
                copy.MAX_DAT_FILE_SIZE,
            ) == (db.datadir, db.mutable_file_lock_path, 30, 4096, 10_000)
        payloads = [bytes([i]) * (100 + i) for i in range(8)]
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.starmap(_put_and_get, [(db, p) for p in payloads])
        for payload, (location, read_there, max_size) in zip(payloads, results):
            assert read_there == payload and max_size == 10_000
            assert db.get(location) == payload
        assert len({loc for loc, _read, _max in results}) == len(payloads)


@pytest.mark.parametrize(
    "make",
    [
        lambda: numpy.arange(100, dtype=numpy.int32),
        lambda: numpy.arange(12, dtype=numpy.float64).reshape(3, 4),
        lambda: array.array("d", [1.5, 2.5, 3.5]),
        lambda: memoryview(array.array("H", [1, 2, 3])),
    ],
    ids=["numpy-int32", "numpy-2d", "array.array", "memoryview-of-array"],
)
def test_put_takes_any_c_contiguous_buffer(store: FlatFileDb, make: object) -> None:
    """put and put_many store the buffer's bytes in memory order, without asking for bytes()."""
    data = make()  # type: ignore[operator]
    expected = memoryview(data).tobytes()
    assert store.get(store.put(data)) == expected
    assert store.get_many(store.put_many([data, data])) == [expected, expected]


def test_put_takes_an_mmap(store: FlatFileDb, tmp_path: Path) -> None:
    """A memory-mapped file is put as its bytes."""
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 16)
    with open(source, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        location = store.put(mapped)
        [batched] = store.put_many([mapped])
    assert store.get(location) == store.get(batched) == source.read_bytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda: numpy.arange(16, dtype=numpy.int8)[::2],
        lambda: numpy.asfortranarray(numpy.arange(12, dtype=numpy.int8).reshape(3, 4)),
        lambda: memoryview(bytearray(16))[::4],
    ],
    ids=["numpy-strided", "numpy-fortran", "memoryview-strided"],
)
def test_put_of_a_non_contiguous_buffer_is_a_typed_type_error(store: FlatFileDb, make: object) -> None:
    """Not in C order: NonContiguousBufferError (a TypeError, and a ValueError as before); nothing stored."""
    before = store.stats().blobs
    for action in (store.put, lambda d: store.put_many([b"ok", d])):
        with pytest.raises(NonContiguousBufferError, match="C-contiguous") as info:
            action(make())  # type: ignore[operator]
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert store.stats().blobs == before


@pytest.mark.parametrize("value", ["text", 7, [b"a"], object()], ids=["str", "int", "list", "object"])
def test_put_of_a_non_buffer_is_a_typed_type_error(store: FlatFileDb, value: object) -> None:
    """No buffer protocol: UnsupportedBufferError, a TypeError naming the type."""
    with pytest.raises(UnsupportedBufferError, match=type(value).__name__) as info:
        store.put(value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(UnsupportedBufferError, match=r"item 1"):
        store.put_many([b"ok", value])


def test_pickled_store_with_relative_paths_opens_the_same_store_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy opens the store the original opened, whatever its working directory is then
    (the locations it issued name files relative to the old one: the copy lists its own)."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with FlatFileDb("db", "db.lock") as db:
        db.put(b"before pickling")
        pickled = pickle.dumps(db)
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pickle.loads(pickled) as copy:
        assert [copy.get(location) for location in copy.iter_locations()] == [b"before pickling"]
        assert copy.mutable_file_lock_path == tmp_path / "db.lock"
    assert not list((tmp_path / "elsewhere").iterdir())


def test_both_names_of_min_segment_saving_are_refused(tmp_path: Path) -> None:
    """min_savings is only the old name: giving both is a mistake, not a choice between them."""
    with pytest.raises(TypeError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        FlatFileDb(tmp_path / "db", min_segment_saving=0.2, min_savings=0.5)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("shape", [(2, 0), (0, 3), (0,)])
def test_put_of_an_empty_array_of_any_shape_stores_an_empty_blob(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """An empty numpy array is an empty blob, whatever its shape."""
    with FlatFileDb(tmp_path / "db") as db:
        location = db.put(numpy.zeros(shape))
        assert db.get(location) == b""
        assert db.put_many([numpy.zeros(shape), b"x"])[0].end_offset == location.end_offset
