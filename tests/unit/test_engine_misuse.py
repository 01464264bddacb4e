"""Misuse of the engine's public arguments: each is refused with a typed error, before
anything is stored, and never leaks an error from inside (ValueError of a format string,
OverflowError, an unpacking error)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.errors import InvalidLocationError, LogPositionTypeError
from conduit_flat_file_db.log_records import LogPosition

StoreFactory = Callable[..., FlatFileDb]


@pytest.mark.parametrize("number", [1.0, "3", None, True, float("nan")])
def test_segment_path_of_a_non_int_is_type_error(store: FlatFileDb, number: Any) -> None:
    """segment_path() of anything but an int names no segment: TypeError, not a ValueError of
    a format string nor a path of segment True."""
    store.put(b"a")
    with pytest.raises(TypeError, match="segment number"):
        store.segment_path(number)


@pytest.mark.parametrize("number", [-1, 2**32, 2**70])
def test_segment_path_out_of_range_is_invalid_location(store: FlatFileDb, number: int) -> None:
    """A number no segment file can have is refused, not made into data_-0000001.dat."""
    store.put(b"a")
    with pytest.raises(InvalidLocationError, match=str(number)):
        store.segment_path(number)


@pytest.mark.parametrize(
    "position",
    [
        LogPosition(0, 1, 2**70),
        LogPosition(0, 1, 2**63),
        LogPosition(0, 1, 65.5),  # type: ignore[arg-type]
        LogPosition(0.5, 1, 64),  # type: ignore[arg-type]
        LogPosition(True, 1, 64),
        {},
        "abc",
    ],
)
def test_log_record_at_of_a_bad_position_is_typed_or_none(make_store: StoreFactory, position: Any) -> None:
    """A position of floats, bools or another type is a LogPositionTypeError, and one past
    any file's end is not found (None): never an OverflowError, an OSError(EINVAL) or an
    unpacking error from inside, nor a record of segment True."""
    db = make_store(log_records=True)
    db.put_log(b"a")
    db.rotate()
    db.put_log(b"b")
    try:
        found = db.log_record_at(position)
    except LogPositionTypeError:
        return
    assert found is None


def test_log_record_at_still_takes_a_plain_triple(make_store: StoreFactory) -> None:
    """A (segment, end, index_bytes) tuple was always taken: it still finds its record."""
    db = make_store(log_records=True)
    put = db.put_logged([b"value"], lambda locations: b"log")
    plain: Any = tuple(put.after)
    found = db.log_record_at(put.after)
    assert found is not None
    assert db.log_record_at(plain) == found


@pytest.mark.parametrize("after", [(0.5, 0), ("a", 0), (None, None), {}, "ab", (0, 0, 0), (True, 0)])
def test_iter_log_of_a_bad_position_is_log_position_type_error(make_store: StoreFactory, after: Any) -> None:
    """iter_log(after=) of anything but a pair of ints is a LogPositionTypeError (a TypeError),
    not an unpacking ValueError or a comparison TypeError from inside."""
    db = make_store(log_records=True)
    db.put_log(b"a")
    with pytest.raises(LogPositionTypeError):
        list(db.iter_log(after))


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("small_bytes", -1, ValueError),
        ("small_bytes", -(2**70), ValueError),
        ("small_bytes", 1.5, TypeError),
        ("small_bytes", float("nan"), TypeError),
        ("small_bytes", True, TypeError),
        ("batch_bytes", -1, ValueError),
        ("batch_bytes", float("nan"), TypeError),
        ("batch_bytes", "64", TypeError),
    ],
)
def test_put_streams_refuses_bad_sizes_before_storing(
    store: FlatFileDb, option: str, value: Any, error: type[Exception]
) -> None:
    """small_bytes and batch_bytes are byte counts: a negative one is a ValueError, another
    type a TypeError, raised before the first stream is read (not the "negative count" or
    OverflowError of a read inside), and nothing is stored."""
    stream = io.BytesIO(b"data")
    with pytest.raises(error, match=option):
        store.put_streams([stream, io.BytesIO(b"more")], **{option: value})
    assert stream.tell() == 0
    assert not list(store.iter_records())


@pytest.mark.parametrize(
    ("level", "error"),
    [
        (2**70, ValueError),
        (-(2**40), ValueError),
        (23, ValueError),
        ("3", TypeError),
        (1.5, TypeError),
        (True, TypeError),
    ],
)
def test_compression_level_out_of_range_is_refused_at_construction(
    tmp_path: Path, level: Any, error: type[Exception]
) -> None:
    """A compression level zstd cannot take is refused by the constructor, not by an
    OverflowError or TypeError of the compressor at the first compressed put."""
    with pytest.raises(error, match="compression_level"):
        FlatFileDb(tmp_path / "store", use_compression=True, compression_level=level)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "options",
    [
        {"level": 2**70},
        {"level": -(2**40)},
        {"level": True},
        {"frame_bytes": 0},
        {"frame_bytes": 2**70},
        {"frame_bytes": 1.0},
    ],
)
def test_recompress_refuses_a_bad_level_or_frame_size_before_rewriting(
    make_store: StoreFactory, options: dict[str, Any]
) -> None:
    """recompress(level=, frame_bytes=) out of range or of another type is a TypeError or
    ValueError naming the option, before any segment is rewritten (not an OverflowError of
    the compressor, nor frame_bytes=0 taken as the default)."""
    db = make_store(use_compression=True)
    location = db.put(b"x" * 50_000)
    db.rotate()
    before = sorted(path.name for path in db.datadir.iterdir())
    with pytest.raises((TypeError, ValueError), match=next(iter(options))):
        db.recompress(mode=True, **options)
    assert sorted(path.name for path in db.datadir.iterdir()) == before
    assert db.get(location) == b"x" * 50_000


def test_cli_recompress_with_a_level_out_of_range_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ffdb recompress --level -99999999999 printed an OverflowError traceback; now one line, exit 2."""
    (tmp_path / "a.txt").write_bytes(b"hello")
    datadir = str(tmp_path / "store")
    assert main(["--datadir", datadir, "put", str(tmp_path / "a.txt")]) == 0
    assert main(["--datadir", datadir, "rotate"]) == 0
    capsys.readouterr()
    assert main(["--datadir", datadir, "recompress", "--mode", "yes", "--level", "-99999999999"]) == 2
    err = capsys.readouterr().err
    assert "level" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("target", ["sealed segment", "index", "state page", "lock file"])
def test_cli_refuses_standard_output_appended_to_a_file_of_the_store(tmp_path: Path, target: str) -> None:
    """``ffdb get LOC >> datadir/data_00000000.dat`` appended the blob to a sealed segment (verify
    then reports it damaged), and ``>> datadir.lock`` or ``>> ffdb.state`` wrote into the lock or
    the page: the command now exits 2 with one line and writes nothing there."""
    datadir = tmp_path / "store"
    with FlatFileDb(datadir) as db:
        location = db.put(b"hello")
        db.rotate()
        db.put(b"after")
        packed = db.pack_location(location).hex()
    path = {
        "sealed segment": datadir / "data_00000000.dat",
        "index": datadir / "data_00000000.idx",
        "state page": datadir / "ffdb.state",
        "lock file": tmp_path / "store.lock",
    }[target]
    before = path.read_bytes()
    with open(path, "ab") as out:
        done = subprocess.run(
            [sys.executable, "-m", "conduit_flat_file_db", "--datadir", str(datadir), "get", packed],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert done.returncode == 2
    assert "a file of the store" in done.stderr
    assert "Traceback" not in done.stderr
    assert path.read_bytes() == before
    with FlatFileDb(datadir, readonly=True) as db:
        assert db.verify().ok


@pytest.mark.parametrize("slices", [[], [None, None], "", {}])
def test_get_many_with_as_many_slices_as_locations_missing_is_invalid_location(store: FlatFileDb, slices: Any) -> None:
    """get_many(locations, slices) of another length is an InvalidLocationError (a ValueError, as
    before, and now a FlatFileDbError too), not a bare ValueError."""
    location = store.put(b"abc")
    with pytest.raises(InvalidLocationError, match="1 locations but"):
        store.get_many([location], slices)
