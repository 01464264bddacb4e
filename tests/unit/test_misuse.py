"""Misuse and hostile files: every one gets a clear typed error (or is handled), none breaks
the exclusion of the locks, none loses or duplicates data."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy
import pytest

from conduit_flat_file_db import (
    DataLocation,
    FlatFileDb,
    FlatFileDbNotFoundError,
    FlatFileDbUnsafeAccessError,
    InvalidLocationError,
)
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.cli import progress as cli_progress
from conduit_flat_file_db.maintenance import Compaction, CompressMode
from conduit_flat_file_db.naming import temp_owner

StoreFactory = Callable[..., FlatFileDb]
LAST = 2**32 - 1  # the last segment number: the index header holds it in a u32 (FORMAT.md "Record index")


def listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: kind, and size + SHA-256 for regular files."""
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                result[os.path.relpath(path, root)] = ("file", st.st_size, digest)
            else:
                result[os.path.relpath(path, root)] = ("other", st.st_mode)
    return result


def sealed_store(make_store: StoreFactory, blobs: int = 60, **kwargs: Any) -> tuple[FlatFileDb, list[DataLocation]]:
    """A store whose segment 0 is sealed and holds ``blobs`` blobs."""
    db = make_store(**kwargs)
    locations = db.put_many([b"blob %d " % i * (i + 1) for i in range(blobs)])
    db.rotate()
    return db, locations


# -- compact and recompress: each segment once ------------------------------------------------


def test_compact_of_one_segment_named_in_four_spellings_copies_each_live_blob_once(make_store: StoreFactory) -> None:
    """0, the .dat path as str, the .dat.zst name as Path and 0 again are one segment: 60 copies, not 240."""
    db, locations = sealed_store(make_store)
    dat = str(db.datadir / "data_00000000.dat")
    result = db.compact([0, dat, Path(dat + ".zst"), 0], lambda location: True)
    assert result.old_segments == [0]
    assert len(result.mapping) == 60
    assert sum(1 for record in db.iter_records() if record.segment != 0) == 60
    assert [db.get(result.mapping[old]) for old in locations] == db.get_many(locations)
    assert db.finish_compaction(result) == [0]


def test_recompress_of_one_segment_named_twice_rewrites_it_once(make_store: StoreFactory) -> None:
    """A segment given as a number and as a path is compressed once, with one result."""
    db, locations = sealed_store(make_store)
    results = db.recompress(
        [0, db.datadir / "data_00000000.dat", str(db.datadir / "data_00000000.dat")], mode=CompressMode.YES
    )
    assert [(r.number, r.action) for r in results] == [(0, "compressed")]
    assert db.get_many(locations)[5] == b"blob 5 " * 6


def test_compact_and_recompress_refuse_a_negative_segment_number(make_store: StoreFactory) -> None:
    """-1 names no segment: InvalidLocationError, not a silent no-op."""
    db, _ = sealed_store(make_store, blobs=3)
    with pytest.raises(InvalidLocationError, match="-1"):
        db.compact([-1], lambda location: True)
    with pytest.raises(InvalidLocationError, match="-1"):
        db.recompress([-1])


# -- the lock file: never adopted, never inside the datadir -------------------------------------


def test_adopting_the_stores_own_lock_file_is_refused_and_the_lock_stays(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """Adopted, the lock file would be renamed into the datadir and the next process would lock a new
    file of the same name: two processes would both hold the write lock. Refused; the lock file stays."""
    db = make_store()
    lock = tmp_path / "store.lock"
    before = os.stat(lock)
    with db.read_lock():
        with pytest.raises(InvalidLocationError, match="lock file"):
            db.adopt_file(lock)
    after = os.stat(lock)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert db.segments() == [0]


@pytest.mark.parametrize(
    "lock_name",
    ["ffdb.state", "data_00000000.dat", "data_00000000.idx", ".", "my.lock", ".tmp-1-lock", "sub/deeper.lock"],
)
@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "new-store"])
def test_lock_path_inside_the_datadir_is_refused_before_anything_is_written(
    tmp_path: Path, lock_name: str, existing: bool
) -> None:
    """The lock file is grown to 4 KiB and its first word written: as the state page (or a segment) that
    corrupts the store, as a scratch name recovery would remove it. Refused at construction."""
    datadir = tmp_path / "store"
    if existing:
        with FlatFileDb(datadir, tmp_path / "store.lock") as db:
            db.put(b"kept")
    before = listing(tmp_path)
    with pytest.raises(InvalidLocationError, match="inside"):
        FlatFileDb(datadir, datadir / lock_name)
    assert listing(tmp_path) == before
    if existing:
        with FlatFileDb(datadir, tmp_path / "store.lock") as db:
            assert db.verify().ok and db.get(DataLocation(str(datadir / "data_00000000.dat"), 0, 4)) == b"kept"


def test_lock_path_reaching_the_datadir_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """A symlinked directory leading into the datadir is still the datadir."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    (tmp_path / "alias").symlink_to(datadir)
    with pytest.raises(InvalidLocationError):
        FlatFileDb(datadir, tmp_path / "alias" / "ffdb.state")
    assert not (datadir / "ffdb.state").exists()


def test_lock_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    """A directory cannot be the lock file: a typed error, not IsADirectoryError from the lock library."""
    (tmp_path / "locks").mkdir()
    with pytest.raises(InvalidLocationError, match="directory"):
        FlatFileDb(tmp_path / "store", tmp_path / "locks")


# -- files of the datadir that the store did not write -----------------------------------------


def test_open_leaves_a_stray_directory_named_like_a_dead_processes_scratch_file(tmp_path: Path) -> None:
    """Only regular files are removed as scratch files: a directory of that name stays, the store opens."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    stray = datadir / ".tmp-999999999-x"
    stray.mkdir()
    (stray / "inside").write_bytes(b"user data")
    with FlatFileDb(datadir, tmp_path / "store.lock") as db:
        db.put(b"x")
        report = db.verify()
    assert (stray / "inside").read_bytes() == b"user data"
    assert report.ok and any(".tmp-999999999-x" in note for note in report.notes)


@pytest.mark.parametrize("name", [".tmp-notes", ".tmp-x-y", ".tmp-0123-z", ".tmp-7-", ".tmp--5-a", ".tmp-"])
def test_open_keeps_a_user_file_named_only_almost_like_a_scratch_file(tmp_path: Path, name: str) -> None:
    """Only the exact ``.tmp-{pid}-{name}`` pattern of temp_name is scratch; other names are the user's."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    (datadir / name).write_bytes(b"my notes")
    FlatFileDb(datadir, tmp_path / "store.lock").close()
    assert (datadir / name).read_bytes() == b"my notes"
    assert temp_owner(name) is None


def test_open_still_removes_a_dead_processes_scratch_file(tmp_path: Path) -> None:
    """The exact pattern of a process that is gone is removed (what recovery is for)."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    (datadir / ".tmp-999999999-data_00000003.dat").write_bytes(b"half a rewrite")
    FlatFileDb(datadir, tmp_path / "store.lock").close()
    assert not (datadir / ".tmp-999999999-data_00000003.dat").exists()
    assert temp_owner(".tmp-999999999-data_00000003.dat") == 999999999


@pytest.mark.parametrize(
    "name,kind",
    [
        ("data_00000003.dat", "directory"),
        ("data_00000003.idx", "directory"),
        ("data_00000003.idx", "fifo"),
        ("data_00000003.idx", "symlink"),
    ],
)
def test_newest_segments_file_name_taken_by_a_non_file_fails_open_with_a_typed_error(
    make_store: StoreFactory, tmp_path: Path, name: str, kind: str
) -> None:
    """A directory, FIFO or symlink named like the newest segment's data file or index:
    InvalidLocationError naming it, nothing created or removed; once it is moved away the store
    opens as before."""
    db = make_store()
    location = db.put(b"committed")
    db.close()
    path = db.datadir / name
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(db.datadir / "data_00000000.idx")
    before = listing(tmp_path)
    with pytest.raises(InvalidLocationError, match=name.replace(".", r"\.")):
        FlatFileDb(db.datadir, tmp_path / "store.lock")
    assert listing(tmp_path) == before
    if kind == "directory":
        path.rmdir()
    else:
        path.unlink()
    assert db.get(location) == b"committed"


def _replace_index(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/etc/passwd")


def _restore_index(path: Path, saved: bytes) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()
    path.write_bytes(saved)


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_verify_reports_a_sealed_index_that_is_not_a_regular_file_and_stats_raises_typed(
    make_store: StoreFactory, kind: str
) -> None:
    """verify never raises: the index is a problem of its segment; stats names it in a typed error."""
    db, _ = sealed_store(make_store, blobs=3)
    db.put(b"mutable")
    index = db.datadir / "data_00000000.idx"
    saved = index.read_bytes()
    _replace_index(index, kind)
    try:
        report = db.verify()
        quick = db.verify(full=False)
        with pytest.raises(InvalidLocationError, match="data_00000000.idx"):
            db.stats()
    finally:
        _restore_index(index, saved)
    for checked in (report, quick):
        assert not checked.ok
        assert [p.kind for p in checked.problems] == ["unreadable"]
        assert "data_00000000.idx" in checked.problems[0].message


def test_verify_reports_a_data_file_that_is_a_directory(make_store: StoreFactory) -> None:
    """A directory where a sealed segment's data file was is a problem, with or without its index."""
    db, _ = sealed_store(make_store, blobs=3)
    data = db.datadir / "data_00000000.dat"
    saved = data.read_bytes()
    data.unlink()
    data.mkdir()
    try:
        with_index = db.verify()
        index = (db.datadir / "data_00000000.idx").read_bytes()
        (db.datadir / "data_00000000.idx").unlink()
        without_index = db.verify()
        (db.datadir / "data_00000000.idx").write_bytes(index)
    finally:
        data.rmdir()
        data.write_bytes(saved)
    for report in (with_index, without_index):
        assert [p.kind for p in report.problems] == ["unreadable"], str(report)
        assert "data_00000000.dat" in report.problems[0].message


# -- the last segment number ---------------------------------------------------------------------


def _store_at(make_store: StoreFactory, tmp_path: Path, number: int, content: bytes = b"") -> FlatFileDb:
    """A store whose only segment is ``number`` (a datadir holding just that data file)."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    (datadir / f"data_{number:08d}.dat").write_bytes(content)
    return make_store()


def test_rotation_past_the_last_segment_number_is_refused_and_the_store_stays_readable(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """Segment 4294967295 cannot be followed: rotate() (and a put that fills the segment) raise
    FlatFileDbUnsafeAccessError before sealing; the store reopens and serves every blob."""
    db = _store_at(make_store, tmp_path, LAST)
    location = db.put(b"last segment")
    index = db.datadir / f"data_{LAST}.idx"
    before = index.read_bytes()
    with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
        db.rotate()
    assert index.read_bytes() == before  # no SEAL record
    db.MAX_DAT_FILE_SIZE = 16
    full = db.put(b"x" * 20)  # the segment is full now: the next put would rotate
    with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
        db.put(b"y")
    with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
        db.put_many([b"y", b"z"])
    assert db.get(full) == b"x" * 20
    db.close()
    with FlatFileDb(db.datadir, tmp_path / "store.lock") as again:
        assert again.get(location) == b"last segment"
        assert again.segments() == [LAST] and again.verify().ok


def test_whole_file_commit_needing_numbers_past_the_last_is_refused_and_the_file_stays(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """put_stream and adopt_file at segment 4294967294 need two more numbers: refused, nothing moved."""
    db = _store_at(make_store, tmp_path, LAST - 1)
    kept = db.put(b"kept")
    source = tmp_path / "adopt.bin"
    source.write_bytes(b"a file to adopt")
    before = listing(tmp_path)
    with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
        db.adopt_file(source)
    with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
        db.put_stream(io.BytesIO(b"streamed"))
    assert listing(tmp_path) == before
    assert db.get(kept) == b"kept" and db.mutable_segment() == LAST - 1


def test_legacy_segment_at_the_last_number_opens_readable_and_refuses_writes(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """A data file without an index at 4294967295 is sealed by recovery as a legacy extent and nothing
    can follow it: the store opens, reads it and verifies, and every write is refused, typed."""
    db = _store_at(make_store, tmp_path, LAST, b"legacy bytes")
    location = DataLocation(str(db.datadir / f"data_{LAST}.dat"), 0, 12)
    assert db.get(location) == b"legacy bytes"
    for write in (
        lambda: db.put(b"x"),
        lambda: db.put_many([b"y"]),
        db.rotate,
        lambda: db.put_stream(io.BytesIO(b"z")),
    ):
        with pytest.raises(FlatFileDbUnsafeAccessError, match="last segment number"):
            write()
    assert db.get(location) == b"legacy bytes" and db.verify().ok


def test_names_past_the_last_segment_number_are_not_segments(make_store: StoreFactory, tmp_path: Path) -> None:
    """data_4294967296.dat and 11-digit names are not the store's: ignored (a note of verify), untouched."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    for name in ("data_4294967296.dat", "data_4294967296.idx", "data_99999999999.dat"):
        (datadir / name).write_bytes(b"not ours")
    db = make_store()
    db.put(b"x")
    db.rotate()
    assert db.segments() == [0, 1]
    report = db.verify()
    assert report.ok and sum("unknown file data_" in note for note in report.notes) == 3
    assert (datadir / "data_4294967296.dat").read_bytes() == b"not ours"
    with pytest.raises(InvalidLocationError):
        db.get(DataLocation(str(datadir / "data_4294967296.dat"), 0, 1))


# -- bytes-like and stream arguments ------------------------------------------------------------


def test_unpack_location_of_a_non_contiguous_view_reads_its_bytes_in_order(store: FlatFileDb) -> None:
    """A strided view of the 20 packed bytes unpacks like the bytes themselves (no BufferError)."""
    location = store.put(b"abcdef")
    packed = store.pack_location(location)
    spread = bytearray(2 * len(packed))
    spread[::2] = packed
    view = memoryview(spread)[::2]
    assert not view.c_contiguous
    assert store.unpack_location(view) == location
    with pytest.raises(InvalidLocationError, match="20 bytes"):
        store.unpack_location(memoryview(spread)[::3])


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "generator"])
def test_put_streams_with_an_item_that_is_no_stream_is_type_error_naming_it(store: FlatFileDb, as_list: bool) -> None:
    """``put_streams([stream, 5])``: TypeError naming item 1 and its type; from a list nothing is stored."""
    items: list[Any] = [io.BytesIO(b"first"), 5]
    with pytest.raises(TypeError, match=r"item 1 \(int\)"):
        store.put_streams(items if as_list else (item for item in items))
    assert not list(store.iter_records())
    with pytest.raises(TypeError, match=r"item 0 \(bytes\) is not a context manager"):
        store.put_streams([b"bytes are not a context manager"], open_streams=True)


@pytest.mark.parametrize("method", ["put", "put_many"])
def test_fortran_order_memoryview_is_refused_before_anything_is_written(store: FlatFileDb, method: str) -> None:
    """A Fortran-order view is 'contiguous' but not in C order: ValueError naming the method, nothing stored."""
    array = numpy.arange(12, dtype=numpy.uint8).reshape(3, 4, order="F")
    view = array.data
    assert view.contiguous and not view.c_contiguous
    with pytest.raises(ValueError, match=rf"{method}\(\) needs a C-contiguous"):
        if method == "put":
            store.put(view)
        else:
            store.put_many([b"ok", view])
    assert not list(store.iter_records())
    assert store.get(store.put(numpy.ascontiguousarray(array).data)) == numpy.ascontiguousarray(array).tobytes()


def test_put_many_errors_name_put_many_and_the_item(store: FlatFileDb) -> None:
    """The error of a bad item names put_many() (not put()) and where the item is."""
    with pytest.raises(TypeError, match=r"put_many\(\) takes bytes.*not int \(item 2\)"):
        store.put_many([b"a", b"b", 7])
    with pytest.raises(TypeError, match=r"put_many\(\) takes bytes"):
        store.put_many(x for x in [b"a", "text"])
    assert not list(store.iter_records())


# -- smaller ------------------------------------------------------------------------------------


@pytest.mark.parametrize("offsets", [(True, 3), (0, True), (False, 2)])
def test_get_many_refuses_bool_offsets_as_get_does(store: FlatFileDb, offsets: tuple[Any, Any]) -> None:
    """An offset of type bool is refused by get(); get_many() must not read it as 0 or 1 (from a
    sealed segment's map, where it would be read without a call to get())."""
    location = store.put(b"abcdef")
    store.rotate()
    assert store.get_many([location]) == [b"abcdef"]  # the segment is open and mapped now
    bad = DataLocation(location.file_path, *offsets)
    with pytest.raises(TypeError, match="bool"):
        store.get(bad)
    with pytest.raises(TypeError, match="bool"):
        store.get_many([location, bad])


def test_adopt_file_with_another_hard_link_is_refused(make_store: StoreFactory, tmp_path: Path) -> None:
    """Through its other name the committed bytes could change after adoption: refused, both names stay."""
    db = make_store()
    source = tmp_path / "blob.bin"
    source.write_bytes(b"adopt me")
    os.link(source, tmp_path / "other-name.bin")
    with pytest.raises(InvalidLocationError, match="hard link"):
        db.adopt_file(source)
    assert source.read_bytes() == b"adopt me" and os.stat(source).st_nlink == 2
    (tmp_path / "other-name.bin").unlink()
    assert db.get(db.adopt_file(source)) == b"adopt me"


def test_missing_compressed_segment_error_names_both_suffixes(make_store: StoreFactory) -> None:
    """A deleted data_N.dat.zst is not reported as a missing data_N.dat alone."""
    db = make_store(use_compression=True)
    location = db.put(b"compressed")
    db.rotate()
    db.delete_file(location.file_path)
    with pytest.raises(FlatFileDbNotFoundError) as info:
        db.get(location)
    assert "data_00000000.dat.zst" in str(info.value) and "does not exist" in str(info.value)


def test_quick_verify_reports_the_records_and_index_bytes_it_checked(make_store: StoreFactory) -> None:
    """verify(full=False) checks indexes, not blobs: its report counts records and index bytes."""
    db, _ = sealed_store(make_store, blobs=5)
    db.put(b"mutable")
    quick = db.verify(full=False)
    # segment 0: header + 5 BLOB + SEAL; segment 1: header + 1 BLOB
    assert (quick.segments, quick.records, quick.index_bytes) == (2, 7, 2 * 32 + 7 * 32)
    assert str(quick).startswith("OK: 2 segments, 7 index records (288 bytes of indexes) checked, structure only")
    assert "0 blobs" not in str(quick)
    assert str(db.verify()).startswith("OK: 2 segments, 6 blobs, ")


# -- the command line -----------------------------------------------------------------------------


def test_cli_info_and_stats_agree_on_bytes_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One computation: per segment and in total, info's bytes on disk are stats' (data file + index)."""
    datadir = str(tmp_path / "store")
    with FlatFileDb(datadir, datadir + ".lock", use_compression=True) as db:
        db.put(b"compressible " * 1000)
        db.rotate()
        db.put(b"mutable")
    assert main(["--datadir", datadir, "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert main(["--datadir", datadir, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [s["disk_bytes"] for s in info["segments"]] == [s["disk_bytes"] for s in stats["segments"]]
    assert info["totals"]["disk_bytes"] == stats["totals"]["disk_bytes"]


@pytest.mark.parametrize("command", [["info"], ["verify"], ["stats"], ["get", "data_00000000.dat:0:1"]])
def test_cli_read_commands_on_a_directory_that_is_not_a_store_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A directory without segment files is not a store: a clear error, and no store file is created."""
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "cat.jpg").write_bytes(b"jpeg")
    before = listing(tmp_path)
    assert main(["--datadir", str(plain), *command]) == 2
    assert "not a store: the directory holds no segment file" in capsys.readouterr().err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", [["info"], ["verify"], ["stats"], ["get", "data_00000000.dat:0:1"]])
def test_cli_read_commands_on_a_missing_datadir_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A datadir that does not exist: a clear error naming it; it is not created."""
    missing = tmp_path / "nowhere"
    assert main(["--datadir", str(missing), *command]) == 2
    assert f"{missing}: the datadir does not exist" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "nowhere.lock").exists()


def test_cli_datadir_is_accepted_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ffdb info --datadir D`` works as ``ffdb --datadir D info``; without it, a usage error."""
    datadir = str(tmp_path / "store")
    (tmp_path / "f").write_bytes(b"data")
    assert main(["put", str(tmp_path / "f"), "--datadir", datadir, "--lock", datadir + ".x.lock"]) == 0
    assert os.path.exists(datadir + ".x.lock")
    capsys.readouterr()
    assert main(["info", "--datadir", datadir]) == 0
    after = capsys.readouterr().out
    assert main(["--datadir", datadir, "info"]) == 0
    assert capsys.readouterr().out == after and "1 blobs" in after
    assert main(["info"]) == 2
    assert "--datadir" in capsys.readouterr().err


class FakeTerminal(io.StringIO):
    """One terminal that standard output and standard error both write to."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: a carriage return goes back to the line's start,
    later characters overwrite earlier ones."""
    lines: list[list[str]] = [[]]
    column = 0
    for char in text:
        if char == "\n":
            lines.append([])
            column = 0
        elif char == "\r":
            column = 0
        else:
            line = lines[-1]
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


@pytest.mark.parametrize("compress", [False, True])
def test_put_lines_on_a_terminal_are_not_glued_to_the_progress_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    """Each location line starts its own clean line, and the finished bar is shown once."""
    monkeypatch.setattr(cli_progress, "PROGRESS_MIN_BYTES", 2**20)
    monkeypatch.setattr(cli_progress, "PROGRESS_INTERVAL_SECONDS", 0.0)
    names = []
    for index, size in enumerate([3 * 2**20 + 7, 1000, 2 * 2**20]):
        path = tmp_path / f"input{index}"
        path.write_bytes(os.urandom(size))
        names.append(str(path))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["--datadir", str(tmp_path / "store"), "put", *names] + (["--compress"] if compress else [])
    assert main(args) == 0
    shown = screen(terminal.getvalue())
    assert [line.split("\t")[0] for line in shown[:-1]] == names, shown
    assert re.match(r"put: 100%\|#+\| ", shown[-1]), shown


def test_progress_bar_clear_erases_its_line_and_refresh_draws_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """clear() blanks what the bar drew and returns to the line's start; refresh() (after a line
    of output) draws it again, within the redraw interval too."""
    monkeypatch.setattr(cli_progress, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(cli_progress, "PROGRESS_INTERVAL_SECONDS", 3600.0)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = cli_progress.make_bar("put", 100, False)
    assert screen(terminal.getvalue())[-1].startswith("put:   0%|")  # drawn when made
    progress.update(10)
    progress.clear()
    assert screen(terminal.getvalue()) == []
    assert terminal.getvalue().endswith("\r")
    progress.update(10)  # within the interval: not drawn by itself ...
    assert screen(terminal.getvalue()) == [] and terminal.getvalue().endswith("\r")
    progress.refresh()  # ... but by refresh()
    assert screen(terminal.getvalue())[-1].startswith("put:  20%|##")


def test_finish_compaction_of_another_stores_compaction_is_refused_and_deletes_nothing(
    make_store: StoreFactory,
) -> None:
    """A Compaction names segments by number: another store's must not delete ours."""
    first, second = make_store("first"), make_store("second")
    first.put(b"old")
    first.rotate()
    compaction = first.compact([0], lambda location: False)
    kept = second.put(b"never copied")
    second.rotate()
    with pytest.raises(InvalidLocationError, match="not made by compact"):
        second.finish_compaction(compaction)
    with pytest.raises(InvalidLocationError, match="not made by compact"):
        second.finish_compaction(Compaction(old_segments=[0]))
    assert second.get(kept) == b"never copied"
    assert first.finish_compaction(compaction) == [0]


class _BrokenReadinto(io.RawIOBase):
    """A stream whose readinto() returns ``counts`` in turn, then 0."""

    def __init__(self, counts: list[Any]) -> None:
        self.counts = counts
        self.calls = 0

    def readable(self) -> bool:
        """A readable stream."""
        return True

    def readinto(self, buffer: Any) -> Any:  # pylint: disable=unused-argument  # never fills it
        """The next count, whatever the buffer."""
        self.calls += 1
        return self.counts.pop(0) if self.counts else 0


@pytest.mark.parametrize("count", [-1, -4096, 2**40, True, 1.5])
def test_put_stream_refuses_a_readinto_count_outside_the_buffer(make_store: StoreFactory, count: Any) -> None:
    """A negative count once stored 4 MiB of stale buffer bytes; for ever, it filled the disk."""
    db = make_store()
    stream = _BrokenReadinto([count] * 1000)
    with pytest.raises(ValueError, match="readinto"):
        db.put_stream(stream)
    assert stream.calls == 1
    assert not list(db.iter_records())


def test_put_stream_refuses_a_read_that_returns_more_than_asked(store: FlatFileDb) -> None:
    """read(n) giving more than n bytes is a broken stream, refused with a ValueError saying so."""

    class TooMuch:
        """read() ignores its size."""

        def read(self, size: int) -> bytes:
            """One byte too many."""
            return b"x" * (size + 1)

    with pytest.raises(ValueError, match="more than asked"):
        store.put_stream(TooMuch())


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, float("nan"), -1.0])
def test_lock_timeout_out_of_range_is_refused_at_construction(tmp_path: Path, timeout: float) -> None:
    """inf passed the old check, then every write raised a bare OverflowError from the lock."""
    with pytest.raises(ValueError, match="lock_timeout"):
        FlatFileDb(tmp_path / "store", tmp_path / "store.lock", lock_timeout=timeout)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("timeout", ["5", True, b"1"])
def test_lock_timeout_of_another_type_is_refused_at_construction(tmp_path: Path, timeout: Any) -> None:
    """Seconds are a number."""
    with pytest.raises(TypeError, match="lock_timeout"):
        FlatFileDb(tmp_path / "store", tmp_path / "store.lock", lock_timeout=timeout)


@pytest.mark.parametrize("command", ["info", "verify", "stats", "put"])
def test_cli_with_standard_output_closed_exits_2_with_one_line(tmp_path: Path, command: str) -> None:
    """`ffdb ... >&-`: a one-line error, no traceback, nothing stored."""
    datadir = tmp_path / "store"
    FlatFileDb(datadir, str(datadir) + ".lock").close()
    source = tmp_path / "file.bin"
    source.write_bytes(b"data")
    args = [sys.executable, "-m", "conduit_flat_file_db", "--datadir", str(datadir), command]
    args += [str(source)] if command == "put" else []
    done = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, preexec_fn=lambda: os.close(1)
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1 and "standard output is closed" in done.stderr.decode()
    db = FlatFileDb(datadir, str(datadir) + ".lock", readonly=True)
    try:
        assert not list(db.iter_records())
    finally:
        db.close()


@pytest.mark.parametrize("target", ["ffdb.state", "data_00000000.dat", "data_00000000.idx"])
def test_lock_path_hard_linked_to_a_file_of_the_datadir_is_refused(tmp_path: Path, target: str) -> None:
    """A hard link passes every path check; the lock's flag page would be written into the store's file."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, tmp_path / "store.lock")
    location = db.put(b"kept")
    db.close()
    before = (datadir / target).read_bytes()
    os.link(datadir / target, tmp_path / "linked.lock")
    with pytest.raises(InvalidLocationError, match="hard links"):
        FlatFileDb(datadir, tmp_path / "linked.lock")
    assert (datadir / target).read_bytes() == before
    db = FlatFileDb(datadir, tmp_path / "store.lock")
    try:
        assert db.get(location) == b"kept"
    finally:
        db.close()
