"""Security and bad input: every refusal has an exact error type, a message naming the
file (and offset), and leaves every file on disk exactly as it was."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from conduit_flat_file_db import (
    DataLocation,
    FlatFileDb,
    FlatFileDbNotFoundError,
    FlatFileDbUnsafeAccessError,
    InvalidLocationError,
    NonContiguousBufferError,
    Slice,
    UnsupportedBufferError,
)

StoreFactory = Callable[..., FlatFileDb]
Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``: kind, and size + SHA-256 for files, target for symlinks."""
    result: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                result[rel] = ("symlink", os.readlink(path))
            elif os.path.isdir(path):
                result[rel] = ("dir",)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    result[rel] = ("file", st.st_size, hashlib.sha256(handle.read()).hexdigest())
            else:
                result[rel] = ("other", st.st_mode)
    return result


@dataclass
class Env:
    """A store with two sealed segments and a non-empty mutable one, plus things outside it."""

    root: Path
    store: FlatFileDb
    datadir: Path
    sealed: DataLocation  # in segment 0
    sealed_last: DataLocation  # the last blob of segment 1
    mutable: DataLocation  # the last blob of segment 2 (mutable)
    copy: Path  # a real copy of the datadir in another directory
    secret: Path  # a file outside the datadir


@pytest.fixture(name="env")
def fixture_env(make_store: StoreFactory, tmp_path: Path) -> Env:
    """Build the Env; make_store verifies the store at teardown."""
    store = make_store("store")
    sealed = store.put(b"sealed blob in segment zero")
    store.put(b"more")
    store.rotate()
    sealed_last = store.put(b"segment one")
    store.rotate()
    store.put(b"mutable one")
    mutable = store.put(b"mutable two")
    assert store.mutable_segment() == 2
    store.sync()  # waits for the background fsync of the sealed segments: no file changes after this
    copy = tmp_path / "elsewhere" / "store"
    shutil.copytree(store.datadir, copy)
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    return Env(tmp_path, store, store.datadir, sealed, sealed_last, mutable, copy, secret)


def refused(env: Env, exc_type: type[BaseException], action: Callable[[], object], *in_message: str) -> BaseException:
    """Run ``action``; it must raise exactly ``exc_type``, name ``in_message``, and change no file."""
    before = snapshot(env.root)
    with pytest.raises(exc_type) as info:
        action()
    assert info.type is exc_type, f"{info.type.__name__}: {info.value}"
    assert snapshot(env.root) == before
    for text in in_message:
        assert text in str(info.value), f"{text!r} not in {str(info.value)!r}"
    return info.value


def relocated(location: DataLocation, file_path: str | Path) -> DataLocation:
    """The same offsets under another file path."""
    return DataLocation(str(file_path), location.start_offset, location.end_offset)


# -- put ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", 42, None, [1, 2], {"a": 1}, 1.5, bytearray], ids=repr)
def test_put_non_bytes_is_type_error(env: Env, value: Any) -> None:
    """Only bytes-like data can be put: the typed error is a TypeError."""
    assert issubclass(UnsupportedBufferError, TypeError)
    refused(env, UnsupportedBufferError, lambda: env.store.put(value))


@pytest.mark.parametrize("batch", [[b"ok", "text"], [b"ok", None], [b"ok", 7], "abc", [[b"nested"]]], ids=repr)
def test_put_many_with_a_bad_item_writes_nothing(env: Env, batch: Any) -> None:
    """A batch is checked whole before the first byte is written."""
    refused(env, UnsupportedBufferError, lambda: env.store.put_many(batch))


def test_put_many_of_none_is_type_error(env: Env) -> None:
    """Not iterable."""
    nothing: Any = None
    refused(env, TypeError, lambda: env.store.put_many(nothing))


def test_put_non_contiguous_memoryview_is_value_error(env: Env) -> None:
    """A strided view has no single byte run to append."""
    view: Any = memoryview(b"abcdefgh")[::2]
    assert issubclass(NonContiguousBufferError, ValueError) and issubclass(NonContiguousBufferError, TypeError)
    refused(env, NonContiguousBufferError, lambda: env.store.put(view))


# -- get: offsets ----------------------------------------------------------------------------


def test_get_negative_start(env: Env) -> None:
    """start_offset < 0 is refused, naming the file and the offset."""
    loc = env.mutable._replace(start_offset=-1)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, "-1")


def test_get_negative_end(env: Env) -> None:
    """end_offset < 0 is refused, naming the file and the offset."""
    loc = env.sealed._replace(start_offset=0, end_offset=-5)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, "-5")


def test_get_start_after_end(env: Env) -> None:
    """An inverted location is refused, naming the file and both offsets."""
    loc = env.sealed._replace(start_offset=10, end_offset=4)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, "10", "4")


def test_get_past_committed_end_of_mutable(env: Env) -> None:
    """One byte past the last committed blob of the mutable segment is refused."""
    loc = env.mutable._replace(end_offset=env.mutable.end_offset + 1)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, str(loc.end_offset))


def test_get_empty_range_past_committed_end(env: Env) -> None:
    """Even a zero-length range must lie inside the committed bytes."""
    end = env.mutable.end_offset + 100
    loc = env.mutable._replace(start_offset=end, end_offset=end)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, str(end))


def test_get_uncommitted_tail_of_mutable_is_never_served(env: Env) -> None:
    """Bytes in the data file past the last index record (a dead writer's tail) do not read."""
    path = Path(env.mutable.file_path)
    size = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"uncommitted tail")
    try:
        loc = env.mutable._replace(start_offset=size, end_offset=size + 4)
        refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, str(size + 4))
    finally:
        os.truncate(path, size)


def test_get_past_end_of_sealed_segment(env: Env) -> None:
    """One byte past the end of a sealed segment is refused."""
    loc = env.sealed_last._replace(end_offset=env.sealed_last.end_offset + 1)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path, str(loc.end_offset))


@pytest.mark.parametrize("offsets", [("0", 5), (0, 5.0), (None, 5), (0, None), (True, 5), (0, b"5")], ids=repr)
def test_get_offsets_of_wrong_type(env: Env, offsets: tuple[Any, Any]) -> None:
    """Offsets are ints (not bool, float, str, bytes or None)."""
    loc = DataLocation(env.sealed.file_path, *offsets)
    env.store.get(env.sealed)  # warm the reader cache: the fast path must check types too
    refused(env, TypeError, lambda: env.store.get(loc))


# -- get: slices ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [Slice(-1, 0), Slice(0, -1), Slice(-3, -1)], ids=repr)
def test_get_negative_slice(env: Env, bad: Slice) -> None:
    """Negative slice offsets are refused, naming the file."""
    refused(env, InvalidLocationError, lambda: env.store.get(env.sealed, bad), env.sealed.file_path)


def test_get_inverted_slice(env: Env) -> None:
    """Slice start after slice end is refused, naming the file and the slice."""
    refused(env, InvalidLocationError, lambda: env.store.get(env.sealed, Slice(5, 3)), env.sealed.file_path, "5", "3")


@pytest.mark.parametrize("which", ["sealed", "mutable"])
def test_get_slice_past_the_blob(env: Env, which: str) -> None:
    """A slice may not reach into the next blob, even when those bytes exist."""
    loc: DataLocation = getattr(env, which)
    length = loc.end_offset - loc.start_offset
    for bad in (Slice(0, length + 1), Slice(length + 1, 0), Slice(length + 1, length + 2)):
        refused(env, InvalidLocationError, functools.partial(env.store.get, loc, bad), loc.file_path)


@pytest.mark.parametrize(
    "bad",
    [Slice._make(("1", 0)), Slice._make((0, 1.5)), Slice._make((None, 0)), [0, 1], (0,), (0, 1, 2), "01", 5],
    ids=repr,
)
def test_get_slice_of_wrong_type(env: Env, bad: Any) -> None:
    """A slice is a Slice (or a pair) of ints."""
    refused(env, TypeError, lambda: env.store.get(env.sealed, bad))


# -- get: not a location -----------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("shape", ["list", "dict", "str", "none", "int", "pair", "four"])
def test_get_of_non_location_is_type_error(make_store: StoreFactory, tmp_path: Path, warm: bool, shape: str) -> None:
    """Anything but a DataLocation-shaped tuple is a TypeError, whether or not the segment is cached."""
    store = make_store("store")
    loc = store.put(b"payload")
    if warm:
        assert store.get(loc) == b"payload"
    bad: Any = {
        "list": list(loc),
        "dict": loc._asdict(),
        "str": loc.file_path,
        "none": None,
        "int": 3,
        "pair": (loc.file_path, 0),
        "four": (*loc, 0),
    }[shape]
    env = Env(tmp_path, store, store.datadir, loc, loc, loc, tmp_path, tmp_path)
    refused(env, TypeError, lambda: store.get(bad))


def test_get_of_plain_tuple_location_reads(env: Env) -> None:
    """A plain 3-tuple (e.g. a location read back from a key-value store) is accepted."""
    plain: Any = tuple(env.sealed)
    assert env.store.get(plain) == b"sealed blob in segment zero"


@pytest.mark.parametrize("file_path", [None, 7, b"/x/data_00000000.dat"], ids=repr)
def test_get_file_path_of_wrong_type(env: Env, file_path: Any) -> None:
    """file_path is a str (or os.PathLike)."""
    loc = DataLocation(file_path, 0, 1)
    refused(env, TypeError, lambda: env.store.get(loc))


# -- get: paths ----------------------------------------------------------------------------


def test_get_from_copy_of_datadir_elsewhere(env: Env) -> None:
    """A real copy of the datadir is another directory: refused, although the bytes exist there."""
    loc = relocated(env.sealed, env.copy / "data_00000000.dat")
    assert (env.copy / "data_00000000.dat").exists()
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path)


def test_get_dotdot_leading_outside(env: Env) -> None:
    """``datadir/../elsewhere/store/data_...`` leaves the datadir."""
    path = os.path.join(str(env.datadir), "..", "elsewhere", "store", "data_00000000.dat")
    loc = relocated(env.sealed, path)
    refused(env, InvalidLocationError, lambda: env.store.get(loc), path)


def test_get_dotdot_staying_inside_reads(env: Env) -> None:
    """``..`` that comes back to the datadir names the same segment."""
    path = os.path.join(str(env.datadir), "..", "store", "data_00000000.dat")
    assert env.store.get(relocated(env.sealed, path)) == b"sealed blob in segment zero"


def test_get_absolute_path_elsewhere(env: Env) -> None:
    """A segment name in some other absolute directory is refused."""
    loc = relocated(env.sealed, env.secret.parent / "data_00000000.dat")
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path)


def test_get_nonexistent_directory(env: Env) -> None:
    """A directory that does not exist is not the datadir."""
    loc = relocated(env.sealed, env.root / "nowhere" / "data_00000000.dat")
    refused(env, InvalidLocationError, lambda: env.store.get(loc), loc.file_path)


def test_get_nul_byte_in_directory(env: Env) -> None:
    """A path with a NUL byte is refused like any other bad path, not with a bare ValueError."""
    loc = relocated(env.sealed, str(env.root) + "/st\x00ore/data_00000000.dat")
    refused(env, InvalidLocationError, lambda: env.store.get(loc))


def test_relative_paths_are_pinned_to_the_directory_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative file_path is taken relative to the working directory at construction (documented):
    a later chdir never makes a location name another directory, and the copy is still refused."""
    monkeypatch.chdir(tmp_path)
    db = FlatFileDb("store", "store.lock")
    loc = db.put(b"pinned")
    db.rotate()
    assert not os.path.isabs(loc.file_path)
    other = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "store", other / "store")
    monkeypatch.chdir(other)
    assert db.get(loc) == b"pinned"
    copy_loc = DataLocation(str(other / loc.file_path), loc.start_offset, loc.end_offset)
    with pytest.raises(InvalidLocationError, match="not in this store's datadir"):
        db.get(copy_loc)
    db.put(b"still here")  # writes go to the pinned datadir, not to ./store of the new cwd
    assert db.verify().ok
    db.close()
    assert (other / "store" / "data_00000001.dat").stat().st_size == 0


@pytest.mark.parametrize("number", [99, 0])
def test_get_symlink_in_datadir_pointing_outside(env: Env, number: int) -> None:
    """A segment-named symlink inside the datadir is refused (above and below the mutable number)."""
    if number == 0:
        env.store.delete_file(env.sealed.file_path)  # frees the name data_00000000.dat
    link = env.datadir / f"data_{number:08d}.dat"
    link.symlink_to(env.secret)
    try:
        loc = DataLocation(str(link), 0, 4)
        refused(env, InvalidLocationError, lambda: env.store.get(loc), link.name)
    finally:
        link.unlink()
    assert env.secret.read_bytes().startswith(b"root:")


def test_get_fifo_in_datadir_does_not_hang(env: Env) -> None:
    """A segment-named FIFO is refused at once: opening it must not wait for a writer."""
    fifo = env.datadir / "data_00000099.dat"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(env.store.get(DataLocation(str(fifo), 0, 0)))
        except Exception as exc:  # pylint: disable=broad-exception-caught  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(2)
    hung = thread.is_alive()
    if hung:  # release the reader: a writer opening the FIFO unblocks its open()
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    fifo.unlink()
    assert not hung, "get() blocked in open() on a FIFO named like a segment"
    assert len(outcome) == 1 and outcome[0].__class__ is InvalidLocationError, outcome


@pytest.mark.parametrize(
    "name",
    [
        "ffdb.state",
        "data_00000000.idx",
        "x.dat",
        "data_0000000.dat",
        "data_00000000.DAT",
        "data_00000000.dat.bak",
        "data_00000000.dat\x00",
        "store.lock",
        "",
    ],
)
def test_get_non_segment_file_name(env: Env, name: str) -> None:
    """Only data_NNNNNNNN.dat[.zst] names a segment."""
    loc = relocated(env.sealed, os.path.join(str(env.datadir), name))
    refused(env, InvalidLocationError, lambda: env.store.get(loc), repr(loc.file_path)[1:-1])


# -- get: deleted -------------------------------------------------------------------------


def test_get_of_deleted_segment_is_file_not_found(env: Env) -> None:
    """Reading a deleted segment raises FlatFileDbNotFoundError (a FileNotFoundError)."""
    assert env.store.get(env.sealed) == b"sealed blob in segment zero"  # cache its reader
    env.store.delete_file(env.sealed.file_path)
    exc = refused(env, FlatFileDbNotFoundError, lambda: env.store.get(env.sealed), "data_00000000.dat")
    assert isinstance(exc, FileNotFoundError)


def test_get_of_segment_deleted_by_another_instance(env: Env, make_store: StoreFactory) -> None:
    """An instance that had the segment open notices a delete done by another instance."""
    other = make_store("store")
    assert other.get(env.sealed) == b"sealed blob in segment zero"
    env.store.delete_file(env.sealed.file_path)
    refused(env, FlatFileDbNotFoundError, lambda: other.get(env.sealed), "data_00000000.dat")


def test_get_of_never_written_segment_number(env: Env) -> None:
    """A sealed-range number with no file (deleted long ago) is not found."""
    env.store.delete_file(env.sealed.file_path)
    loc = relocated(env.sealed, env.datadir / "data_00000000.dat")
    refused(env, FlatFileDbNotFoundError, lambda: env.store.get(loc), "data_00000000.dat")


# -- delete_file --------------------------------------------------------------------------


def test_delete_mutable_segment_is_unsafe(env: Env) -> None:
    """The mutable segment is never deleted; the message names it."""
    refused(
        env, FlatFileDbUnsafeAccessError, lambda: env.store.delete_file(env.mutable.file_path), env.mutable.file_path
    )
    refused(
        env,
        FlatFileDbUnsafeAccessError,
        lambda: env.store.delete_file(Path(env.mutable.file_path)),
        env.mutable.file_path,
    )
    assert Path(env.mutable.file_path).exists()
    assert env.store.get(env.mutable) == b"mutable two"


def test_delete_in_copy_of_datadir(env: Env) -> None:
    """The same name in a copy of the datadir is another store's file: refused, nothing deleted."""
    target = env.copy / "data_00000000.dat"
    refused(env, InvalidLocationError, lambda: env.store.delete_file(target), str(target))
    assert target.exists()
    assert (env.datadir / "data_00000000.dat").exists()


def test_delete_dotdot_leading_outside(env: Env) -> None:
    """``..`` out of the datadir is refused."""
    target = os.path.join(str(env.datadir), "..", "elsewhere", "store", "data_00000001.dat")
    refused(env, InvalidLocationError, lambda: env.store.delete_file(target), target)


def test_delete_absolute_path_elsewhere(env: Env) -> None:
    """A segment-named file in another directory is refused and survives."""
    target = env.secret.parent / "data_00000000.dat"
    target.write_bytes(b"not ours")
    refused(env, InvalidLocationError, lambda: env.store.delete_file(target), str(target))
    assert target.read_bytes() == b"not ours"


@pytest.mark.parametrize("number", [0, 99])
def test_delete_symlink_in_datadir(env: Env, number: int) -> None:
    """A segment-named symlink is refused: neither it nor its target is deleted."""
    if number == 0:
        env.store.delete_file(env.sealed.file_path)
    link = env.datadir / f"data_{number:08d}.dat"
    link.symlink_to(env.secret)
    try:
        refused(env, InvalidLocationError, lambda: env.store.delete_file(link), link.name)
        assert link.is_symlink()
    finally:
        link.unlink()
    assert env.secret.read_bytes().startswith(b"root:")


@pytest.mark.parametrize("name", ["ffdb.state", "data_00000000.idx", "data_00000002.idx", "x.dat", "store.lock"])
def test_delete_non_segment_file(env: Env, name: str) -> None:
    """Index, state and other files are not segments and are never deleted by delete_file."""
    target = (env.root if name == "store.lock" else env.datadir) / name
    refused(env, InvalidLocationError, lambda: env.store.delete_file(target), name)


def test_delete_already_deleted_sealed_segment_logs(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """README compatibility: the second delete of a sealed segment logs an error and returns."""
    env.store.delete_file(env.sealed.file_path)
    before = snapshot(env.root)
    with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
        env.store.delete_file(env.sealed.file_path)
    assert snapshot(env.root) == before
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 1 and env.sealed.file_path in messages[0], messages


# -- constructor and other entry points -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (123, "x.lock"),
        (None, "x.lock"),
        (b"store", "x.lock"),
        ("store", b"x.lock"),
        ("store", 5),
        (["store"], "x.lock"),
    ],
    ids=repr,
)
def test_constructor_non_path_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[Any, Any]) -> None:
    """datadir and mutable_file_lock_path are str or os.PathLike; nothing is created otherwise."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(TypeError) as info:
        FlatFileDb(*args)
    assert info.type is TypeError
    assert snapshot(tmp_path) == before


def test_pack_location_outside_datadir(env: Env) -> None:
    """Packing refuses a location this store cannot resolve."""
    loc = relocated(env.sealed, env.copy / "data_00000000.dat")
    refused(env, InvalidLocationError, lambda: env.store.pack_location(loc), loc.file_path)


@pytest.mark.parametrize("packed", [b"", b"\x00" * 19, b"\x00" * 21], ids=len)
def test_unpack_wrong_length(env: Env, packed: bytes) -> None:
    """A packed location is exactly 20 bytes."""
    refused(env, InvalidLocationError, lambda: env.store.unpack_location(packed))


def test_unpack_inverted(env: Env) -> None:
    """start > end in a packed location is refused."""
    packed = bytes(4) + (9).to_bytes(8, "big") + (3).to_bytes(8, "big")
    refused(env, InvalidLocationError, lambda: env.store.unpack_location(packed))


def test_unpack_not_bytes(env: Env) -> None:
    """A packed location is bytes."""
    text: Any = "0" * 20
    refused(env, TypeError, lambda: env.store.unpack_location(text))


@pytest.mark.parametrize("value", ["abc", None, 2.5, True, b"1"])
def test_max_dat_file_size_of_another_type_is_refused(store: FlatFileDb, value: object) -> None:
    """A setting every put compares with: refused when set, not at the next put."""
    with pytest.raises(TypeError, match="MAX_DAT_FILE_SIZE"):
        store.MAX_DAT_FILE_SIZE = value  # type: ignore[assignment]
    assert store.MAX_DAT_FILE_SIZE == 128 * 2**20
    assert store.get(store.put(b"x")) == b"x"


@pytest.mark.parametrize("value", [0, -1, -(2**70)])
def test_max_dat_file_size_below_one_byte_is_refused(store: FlatFileDb, value: int) -> None:
    """Zero or negative would seal a segment after every put."""
    with pytest.raises(ValueError, match="at least 1"):
        store.MAX_DAT_FILE_SIZE = value
    store.MAX_DAT_FILE_SIZE = 1
    first, second = store.put(b"ab"), store.put(b"c")
    assert first.file_path != second.file_path
