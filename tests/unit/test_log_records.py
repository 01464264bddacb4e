"""Log records: put_logged commits data and its log record together; log_tail and log_moved
follow the log from a position, across segments, as other instances append to it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import xxhash

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.errors import (
    FlatFileDbError,
    FlatFileDbReadOnlyError,
    FlatFileDbUnsafeAccessError,
    InvalidLogPositionError,
    LogPositionTypeError,
)
from conduit_flat_file_db.fileio import pread_full
from conduit_flat_file_db.log_records import LOG_START, LogPosition


def _log(locations: list[DataLocation]) -> bytes:
    return b"log:" + b",".join(b"%d-%d" % (loc.start_offset, loc.end_offset) for loc in locations)


def _read_all(db: FlatFileDb, position: LogPosition) -> tuple[list[bytes], LogPosition]:
    out: list[bytes] = []
    while True:
        tail = db.log_tail(position)
        assert not tail.missing
        for record in tail.records:
            out.append(db.get(DataLocation(db.segment_path(record.segment), record.start_offset, record.end_offset)))
        if tail.position == position:
            return out, position
        position = tail.position


@pytest.mark.parametrize("compressed", [False, True])
def test_put_logged_commits_the_data_then_the_log_record_naming_it(tmp_path: Path, compressed: bool) -> None:
    """The data first, then the record made from their locations; positions before and after."""
    with FlatFileDb(tmp_path / "d", use_compression=compressed, log_records=True) as db:
        db.put(b"before")
        put = db.put_logged([b"aa", b"bbbb"], _log)
        assert [db.get(loc) for loc in put.locations] == [b"aa", b"bbbb"]
        assert db.get(put.log) == _log(put.locations)
        assert put.after == db.log_position() and put.before != put.after
        records, position = _read_all(db, LOG_START)
        assert records == [_log(put.locations)] and position == put.after
        empty = db.put_logged([], _log)  # a log record alone
        assert db.get(empty.log) == b"log:" and empty.before == put.after


def test_log_tail_resumes_where_it_stopped_and_sees_other_instances(tmp_path: Path) -> None:
    """A reader's position: nothing moved until another instance commits; then only the new."""
    with FlatFileDb(tmp_path / "d", log_records=True) as writer, FlatFileDb(tmp_path / "d", log_records=True) as reader:
        first = writer.put_logged([b"x"], _log)
        records, position = _read_all(reader, LOG_START)
        assert records == [_log(first.locations)]
        assert not reader.log_moved(position)
        writer.put(b"not a log record")
        assert reader.log_moved(position)  # moved, though nothing to read
        assert not _read_all(reader, position)[0]
        second = writer.put_logged([b"y"], _log)
        again, position = _read_all(reader, position)
        assert again == [_log(second.locations)] and not reader.log_moved(position)


def test_log_tail_follows_the_log_across_rotations_and_skips_deleted_numbers(tmp_path: Path) -> None:
    """Records of many segments in order; a deleted segment is reported, and read past."""
    with FlatFileDb(tmp_path / "d", log_records=True, max_file_size=4096) as db:
        logs = [db.get(db.put_logged([bytes(1000)], _log).log) for _ in range(20)]
        assert len(db.segments()) > 4
        records, position = _read_all(db, LOG_START)
        assert records == logs
        middle = db.segments()[2]
        db.delete_file(db.segment_path(middle))
        tail = db.log_tail(LogPosition(middle - 1, 0, 0))
        assert tail.missing == [middle]  # reported, and the log read on after it
        assert tail.records and all(record.segment != middle for record in tail.records)
        more = db.put_logged([b"z"], _log)
        assert _read_all(db, position)[0] == [db.get(more.log)]


def test_put_logged_aligns_the_last_value_when_asked(tmp_path: Path) -> None:
    """align=64: the last blob starts at a multiple of 64 (a padding blob before it)."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        db.put(b"123")
        put = db.put_logged([b"a" * 100], _log, align=64)
        assert put.locations[-1].start_offset % 64 == 0 and db.get(put.locations[-1]) == b"a" * 100


def test_put_logged_needs_log_records_and_a_writable_store(tmp_path: Path) -> None:
    """Typed errors for a store without log records and for a read-only one."""
    with FlatFileDb(tmp_path / "d") as db:
        with pytest.raises(FlatFileDbUnsafeAccessError, match="log_records=True"):
            db.put_logged([b"x"], _log)
    with FlatFileDb(tmp_path / "d", readonly=True) as ro:
        with pytest.raises(FlatFileDbReadOnlyError):
            ro.put_logged([b"x"], _log)


def test_an_exception_from_make_log_keeps_the_data_and_writes_no_log_record(tmp_path: Path) -> None:
    """make_log raising: the data stays (an orphan), no record, the lock is free again."""

    def broken(_: list[DataLocation]) -> bytes:
        raise RuntimeError("no log today")

    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        with pytest.raises(RuntimeError):
            db.put_logged([b"orphan"], broken)
        assert not _read_all(db, LOG_START)[0]
        assert b"".join(db.get(loc) for loc in db.iter_locations()) == b"orphan"
        db.put(b"next")  # the lock was released


@pytest.mark.parametrize("max_file_size", [4096, 2**20])
def test_log_tail_in_pieces_of_max_records_reads_the_same_records(tmp_path: Path, max_file_size: int) -> None:
    """max_records bounds each call (sealed and mutable segments alike); resuming from each
    position returned reads every record once, in order."""
    with FlatFileDb(tmp_path / "d", log_records=True, max_file_size=max_file_size) as db:
        logs = [db.get(db.put_logged([bytes(100), bytes(200)], _log).log) for _ in range(30)]
        position, pieces = LOG_START, []
        while True:
            tail = db.log_tail(position, max_records=4)
            assert len(tail.records) <= 4 and not tail.missing
            pieces += [
                db.get(DataLocation(db.segment_path(r.segment), r.start_offset, r.end_offset)) for r in tail.records
            ]
            if tail.position == position:
                break
            position = tail.position
        assert pieces == logs and not db.log_moved(position)


@pytest.mark.parametrize("align", [-1, 1.5, True, "64"])
def test_put_logged_refuses_a_bad_align_before_writing(tmp_path: Path, align: object) -> None:
    """A bad align is a ValueError, raised before anything is written."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        with pytest.raises(ValueError, match="align"):
            db.put_logged([b"x"], _log, align=align)  # type: ignore[arg-type]  # the misuse tested
        assert not list(db.iter_locations())


@pytest.mark.parametrize("max_records", [0, -3, 2.0, True])
def test_log_tail_refuses_a_bad_max_records(tmp_path: Path, max_records: object) -> None:
    """max_records is a positive int: anything else is a ValueError."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        with pytest.raises(ValueError, match="max_records"):
            db.log_tail(LOG_START, max_records=max_records)  # type: ignore[arg-type]  # the misuse tested


BAD_POSITIONS: list[tuple[object, type[Exception]]] = [
    (None, TypeError),
    (5, TypeError),
    ("x", TypeError),
    ((2, 0, 0), TypeError),  # a plain tuple: LogPosition(*values) makes one
    ([2, 0, 0], TypeError),
    (LogPosition(1.5, 0, 0), TypeError),  # type: ignore[arg-type]  # the misuse tested
    (LogPosition("a", 0, 0), TypeError),  # type: ignore[arg-type]
    (LogPosition(True, 0, 0), TypeError),
    (LogPosition(0, None, 0), TypeError),  # type: ignore[arg-type]
    (LogPosition(-2, 0, 0), ValueError),
    (LogPosition(0, -1, 0), ValueError),
    (LogPosition(0, 0, -1), ValueError),
    (LogPosition(2**32, 0, 0), ValueError),  # past the largest segment number
]


@pytest.mark.parametrize(("position", "builtin"), BAD_POSITIONS)
def test_log_tail_refuses_a_malformed_position_with_a_typed_error(
    tmp_path: Path, position: object, builtin: type[Exception]
) -> None:
    """A position that is not a LogPosition of ints (segment >= -1, offsets >= 0) is a
    FlatFileDbError that is also the matching builtin, never an AttributeError from inside."""
    with FlatFileDb(tmp_path / "d", log_records=True, max_file_size=4096) as db:
        for _ in range(6):
            db.put_logged([bytes(1000)], _log)
        with pytest.raises(InvalidLogPositionError) as caught:
            db.log_tail(position)  # type: ignore[arg-type]  # the misuse tested
        assert isinstance(caught.value, FlatFileDbError) and isinstance(caught.value, builtin)
        assert "position" in str(caught.value)
        assert db.log_tail(LOG_START).records  # the store goes on


@pytest.mark.parametrize("position", [None, 5, "x", (2, 0, 0), [2, 0, 0]])
def test_log_moved_refuses_what_is_not_a_log_position(tmp_path: Path, position: object) -> None:
    """log_moved() of anything but a LogPosition is a typed TypeError (it cannot say whether the
    log moved after it), not an AttributeError."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        db.put_logged([b"x"], _log)
        with pytest.raises(LogPositionTypeError, match="position"):
            db.log_moved(position)  # type: ignore[arg-type]  # the misuse tested
        assert issubclass(LogPositionTypeError, TypeError) and issubclass(LogPositionTypeError, FlatFileDbError)
        assert not db.log_moved(db.log_position())


def test_log_tail_says_when_a_position_is_past_the_end_of_the_log(tmp_path: Path) -> None:
    """A position no reader of this log can hold (past the committed end of the mutable segment,
    or in a later segment: the log lost its tail to a power loss) reads nothing and says so; a
    position of this log never does."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        db.put_logged([b"x"], _log)
        end = db.log_position()
        assert not db.log_tail(end).ahead and not db.log_tail(LOG_START).ahead
        for beyond in (end._replace(end=end.end + 1), end._replace(index_bytes=end.index_bytes + 32)):
            tail = db.log_tail(beyond)
            assert tail.ahead and not tail.records and tail.position == beyond
        assert db.log_tail(end._replace(segment=end.segment + 1)).ahead


def _positions_in_one_segment(db: FlatFileDb, logs: int) -> list[LogPosition]:
    """The position after each of ``logs`` log records committed in the mutable segment (each
    after a plain blob, so that data and log records alternate)."""
    positions = []
    for number in range(logs):
        db.put(b"v%d" % number * 50)
        positions.append(db.put_logged([b"d%d" % number * 30], _log).after)
    return positions


@pytest.mark.parametrize("compressed", [False, True])
def test_log_tail_from_a_position_in_a_segment_sealed_since_reads_only_the_records_after_it(
    tmp_path: Path, compressed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A position taken while its segment was mutable: once the segment is sealed, log_tail
    reads its index from that position on (one record before it, checked), not all of it (a
    segment of small puts holds 256 k records: half a second, at every rotation, for every
    instance that follows the log). It reads the same records either way."""
    from conduit_flat_file_db import log_records  # pylint: disable=import-outside-toplevel

    with FlatFileDb(tmp_path / "d", use_compression=compressed, log_records=True) as db:
        positions = _positions_in_one_segment(db, 40)
        expected = [_read_all(db, position)[0] for position in positions]
        db.rotate()
        reads: list[tuple[int, int]] = []

        def spy(fd: int, size: int, offset: int) -> bytes:
            reads.append((size, offset))
            return pread_full(fd, size, offset)

        monkeypatch.setattr(log_records, "pread_full", spy)
        for position, records in zip(positions, expected):
            reads.clear()
            tail = db.log_tail(position)
            assert [
                db.get(DataLocation(db.segment_path(r.segment), r.start_offset, r.end_offset)) for r in tail.records
            ] == records
            assert reads[0][1] == position.index_bytes - 32, reads  # from the record before the position
            assert len(reads) == 1, reads  # the sealed segment's rest (the new mutable one holds no record yet)


@pytest.mark.parametrize("sealed", [False, True])
def test_log_tail_of_a_few_records_from_deep_in_a_long_segment_decodes_about_what_it_returns(
    tmp_path: Path, sealed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_tail(position, 8) from the start of a segment of 20,000 log records reads one window
    of its record index (about 3 x 8 records, at least 1,024), not the rest of the segment: a
    keyed writer's bounded apply step reads from deep inside long segments. Read 8 at a time,
    the log gives the same records as read whole."""
    from conduit_flat_file_db import log_records  # pylint: disable=import-outside-toplevel

    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        start = db.log_position()
        positions = _positions_in_one_segment(db, 20_000)
        if sealed:
            db.rotate()
        whole = _read_all(db, start)[0]
        reads: list[tuple[int, int]] = []

        def spy(fd: int, size: int, offset: int) -> bytes:
            reads.append((size, offset))
            return pread_full(fd, size, offset)

        monkeypatch.setattr(log_records, "pread_full", spy)
        for position in (start, positions[9_000]):
            reads.clear()
            tail = db.log_tail(position, 8)
            assert len(tail.records) == 8
            assert sum(size for size, _ in reads) <= 1025 * 32, reads
        stepped: list[bytes] = []
        position = start
        while True:
            tail = db.log_tail(position, 8)
            stepped += [
                db.get(DataLocation(db.segment_path(r.segment), r.start_offset, r.end_offset)) for r in tail.records
            ]
            if tail.position == position:
                break
            position = tail.position
        assert stepped == whole and len(whole) == 20_000


def test_log_tail_reads_a_sealed_segment_whole_when_the_record_before_the_position_is_not_its_end(
    tmp_path: Path,
) -> None:
    """A position whose record-index offset no longer names the BLOB record that ends at its data
    offset (the index was rewritten since, here: the position's offsets forged one record off)
    reads the whole index and filters by data offset: the same records, none skipped."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        positions = _positions_in_one_segment(db, 10)
        expected = _read_all(db, positions[4])[0]
        db.rotate()
        for shift in (-32, 32, 64, -64):
            moved = LogPosition(positions[4].segment, positions[4].end, positions[4].index_bytes + shift)
            assert _read_all(db, moved)[0] == expected, shift
        far = LogPosition(positions[4].segment, positions[4].end, 10**9)  # past the index's end
        assert _read_all(db, far)[0] == expected


@pytest.mark.parametrize("readonly", [False, True])
def test_log_moved_on_a_closed_instance_says_maybe_and_log_tail_reopens_it(tmp_path: Path, readonly: bool) -> None:
    """A closed instance has no state page to look at: log_moved says the log may have moved
    (True), as a writer's did, and log_tail reopens the instance and reads on. A read-only
    instance raised a raw ValueError instead (its page's released memoryview was read)."""
    with FlatFileDb(tmp_path / "db", log_records=True) as db:
        db.put_logged([b"value"], _log)
        position = db.log_tail(LOG_START).position
    db = FlatFileDb(tmp_path / "db", readonly=readonly)
    assert not db.log_moved(position)
    db.close()
    assert db.log_moved(position)
    assert db.log_tail(position).position == position
    db.close()


def _one_log(calls: list[tuple[int, int, int, int]]) -> Callable[[int, int, int, int], bytes]:
    """A make_log for put_logged_one that notes each call and names the place it was given."""

    def make_log(segment: int, start: int, end: int, checksum: int) -> bytes:
        calls.append((segment, start, end, checksum))
        return b"one:%d:%d-%d:%x" % (segment, start, end, checksum)

    return make_log


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({}, 100),  # raw, through the maps: the blob and its record in one publish
        ({}, 200_000),  # raw, past the mapped-put limit: put_logged's path
        ({"use_compression": True}, 100),  # compressed: put_logged's path
        ({"fsync": True}, 100),  # fsync: no maps
    ],
)
def test_put_logged_one_commits_the_blob_then_a_log_record_built_from_its_place(
    tmp_path: Path, options: dict[str, bool], size: int
) -> None:
    """The record is built from the blob's real segment, offsets and checksum, whichever path
    commits it; the positions and the record's place are those log_tail then reads."""
    with FlatFileDb(tmp_path / "d", log_records=True, **options) as db:  # type: ignore[arg-type]
        db.put(b"before")
        start_position = db.log_position()
        value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        calls: list[tuple[int, int, int, int]] = []
        put = db.put_logged_one(value, _one_log(calls))
        if not options and size == 100:
            assert len(calls) == 1  # the maps took it at the first try
        segment, start, end, checksum = calls[-1]
        assert db.get(DataLocation(db.segment_path(segment), start, end)) == value
        assert checksum == xxhash.xxh3_64_intdigest(value)
        assert put.before == start_position and put.after == db.log_position()
        tail = db.log_tail(start_position)
        assert len(tail.records) == 1 and tail.position == put.after
        record = tail.records[0]
        assert (record.segment, record.end_offset, record.checksum) == (put.log_segment, put.log_end, put.log_checksum)
        log = db.get(DataLocation(db.segment_path(record.segment), record.start_offset, record.end_offset))
        assert log == b"one:%d:%d-%d:%x" % calls[-1]
        assert put.log_checksum == xxhash.xxh3_64_intdigest(log)
    with FlatFileDb(tmp_path / "d", log_records=True) as again:  # and after a reopen
        records, _ = _read_all(again, LOG_START)
        assert records == [b"one:%d:%d-%d:%x" % calls[-1]]


def test_put_logged_one_in_a_full_segment_builds_the_record_for_the_next_one(tmp_path: Path) -> None:
    """A blob that must go to the next segment (the mutable one is full) gets a record naming
    that segment, never the full one's end: the mapped path is refused before make_log."""
    with FlatFileDb(tmp_path / "d", log_records=True, max_file_size=4096) as db:
        calls: list[list[tuple[int, int, int, int]]] = [[] for _ in range(12)]
        puts = [db.put_logged_one(bytes([n]) * 1000, _one_log(calls[n])) for n in range(12)]
        assert len({made[-1][0] for made in calls}) > 2
        for n, made in enumerate(calls):
            segment, start, end, _ = made[-1]
            assert db.get(DataLocation(db.segment_path(segment), start, end)) == bytes([n]) * 1000
        records, position = _read_all(db, LOG_START)
        assert len(records) == 12 and position == puts[-1].after
        assert [put.before for put in puts[1:]] == [put.after for put in puts[:-1]]


def test_put_logged_one_takes_a_bytes_like_record_and_refuses_what_put_logged_refuses(tmp_path: Path) -> None:
    """make_log may return any bytes-like object; a store without log records or read-only
    refuses with put_logged's errors, and a make_log that raises commits nothing (mapped path)."""
    with FlatFileDb(tmp_path / "d", log_records=True) as db:
        db.put(b"warm")  # the maps are made
        put = db.put_logged_one(b"v", lambda segment, start, end, checksum: bytearray(b"rec"))
        tail = db.log_tail(put.before)
        assert len(tail.records) == 1
        before = db.log_position()

        def failing(segment: int, start: int, end: int, checksum: int) -> bytes:
            raise RuntimeError("no record")

        with pytest.raises(RuntimeError, match="no record"):
            db.put_logged_one(b"lost", failing)
        assert db.log_position() == before
    with FlatFileDb(tmp_path / "plain") as plain, pytest.raises(FlatFileDbUnsafeAccessError):
        plain.put_logged_one(b"v", _one_log([]))
    with FlatFileDb(tmp_path / "d", readonly=True) as ro, pytest.raises(FlatFileDbReadOnlyError):
        ro.put_logged_one(b"v", _one_log([]))
