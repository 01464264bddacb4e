"""Log records: blobs a layer above the engine marks as its log, and the tail of that log.

A log record is a blob whose BLOB record carries FLAG_LOG (FORMAT.md "Record index"); the
keyed store keeps its key log this way. Besides appending one (``put_log``), a layer needs to
commit its data and the log record that names it under one lock acquisition
(``put_logged``), and to follow the log as other processes append to it (``log_tail``) at the
cost of shared-memory reads while nothing is appended (``log_moved``).

A position in the log is a :class:`LogPosition`: a segment, the data offset where what was
read of it ends, and the bytes of its record index read so far. Reading resumes from that
index offset in the mutable segment, whose record index only grows; in a sealed segment, from
the record before that offset when it is the BLOB record ending at the position's data offset,
else the whole index is read and filtered by data offset.
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from .arguments import as_bytes_like
from .errors import FlatFileDbUnsafeAccessError, InvalidLogPositionError, LogPositionTypeError
from .fileio import list_dir, pread_full
from .index import (
    FLAG_LOG,
    HEADER_BYTES,
    INDEX_VERSION_LOG,
    KIND_RAW,
    REC_BLOB,
    RECORD_BYTES,
    blob_checksum,
    decode_records,
)
from .naming import MAX_SEGMENT_NUMBER, index_name, parse_segment_name
from .segment_files import open_regular
from .state import W_END, W_INDEX_BYTES, W_SEGMENT, W_SEQ, MutableView
from .store import Store, new_location
from .types import BlobRecord, Buffer, DataLocation

_TAIL_RECORDS = 65536  # log_tail stops after the segment where this many log records were read


class LogPosition(NamedTuple):
    """A point in the log: segment ``segment`` read up to data offset ``end`` and record-index
    offset ``index_bytes`` (0: unknown). (-1, 0, 0) is before everything."""

    segment: int
    end: int
    index_bytes: int


LOG_START = LogPosition(-1, 0, 0)
_new_position = functools.partial(tuple.__new__, LogPosition)  # without NamedTuple.__new__'s Python frame
_new_record = functools.partial(tuple.__new__, BlobRecord)


class LoggedPut(NamedTuple):
    """What :meth:`LogRecords.put_logged` committed: the data's locations, the log record's,
    and the log position just before the data and just after the log record."""

    locations: list[DataLocation]
    log: DataLocation
    before: LogPosition
    after: LogPosition


_new_logged = functools.partial(tuple.__new__, LoggedPut)


class LoggedOne(NamedTuple):
    """What :meth:`LogRecords.put_logged_one` committed: the log position just before the blob
    and just after the log record, and the log record's segment, end offset and checksum."""

    before: LogPosition
    after: LogPosition
    log_segment: int
    log_end: int
    log_checksum: int


_new_logged_one = functools.partial(tuple.__new__, LoggedOne)


class LogTail(NamedTuple):
    """The log records read by :meth:`LogRecords.log_tail`, the position after them, and the
    numbers between the two positions that no segment has (deleted ones, whose records were
    not read, or numbers issued to segments still being written, which hold no log records)."""

    records: list[BlobRecord]
    position: LogPosition
    missing: list[int]
    last_index_bytes: int = 0  # where the last record's BLOB record ends in its record index
    # The position is past the end of the log, so of another history: the log lost its tail to
    # a power loss after the position was taken (or saved), or the store was replaced. Nothing
    # was read; read again from a position of this log.
    ahead: bool = False


class LogRecords(Store):
    """The engine with log records (see the module)."""

    def _check_log(self, operation: str) -> None:
        if self.readonly or not self.log_records:
            self._refuse_write(operation)
            raise FlatFileDbUnsafeAccessError(
                f"{self.datadir}: {operation}() needs a store opened with log_records=True"
            )

    def put_log(self, data: Buffer) -> DataLocation:
        """Append a log record and return its location: a blob whose BLOB record carries the LOG
        flag (FORMAT.md "Record index"), for a layer above the engine to find again with
        :meth:`iter_log` or :meth:`log_tail` (the keyed store's key log). Committed as put()
        commits, after every blob acknowledged before it. Needs a store opened with
        ``log_records=True``, whose new segments have index version 2; a mutable segment of
        version 1 is sealed first.
        """
        self._check_log("put_log")
        item = data if type(data) is bytes else as_bytes_like(data, "put_log()")  # pylint: disable=unidiomatic-typecheck
        lock = self._write_locked_open()
        try:
            location = self._append_log_locked(item)
            sealed = self._writer.take_sealed() if self._writer.sealed else None
        finally:
            lock.release_write()
        if sealed:
            self._after_seal(sealed)
        return location

    def put_logged(
        self, datas: Sequence[Buffer], make_log: Callable[[list[DataLocation]], Buffer], *, align: int = 0
    ) -> LoggedPut:
        """Append ``datas`` and then the log record ``make_log(their locations)`` returns, under
        one acquisition of the write lock: no other writer's blob comes between them, and a
        reader of the log that saw nothing between ``before`` and its own position knows the
        log record is the only one it has not read. ``make_log`` runs under the write lock:
        it must be quick and must not call this store. A crash may keep the data without the
        log record (never the reverse); an exception from ``make_log`` does too.

        ``align``: the last of ``datas`` starts at a multiple of it; a blob of zeros before it
        fills the gap (its location is among those ``make_log`` receives, before the last).
        """
        if self.readonly or not self.log_records:
            self._check_log("put_logged")
        if align and (type(align) is not int or align < 0):  # pylint: disable=unidiomatic-typecheck  # not bool
            raise ValueError(f"align is a non-negative int, not {align!r}")
        items = [d if type(d) is bytes else as_bytes_like(d, "put_logged()") for d in datas]  # pylint: disable=unidiomatic-typecheck
        checksums = list(map(blob_checksum, items))
        frames = self._frames(b"".join(items)) if self.use_compression and len(items) > 1 else None
        lock = self._write_locked_open()
        try:
            words = self._writer.words
            before = _new_position((words[W_SEGMENT], words[W_END], words[W_INDEX_BYTES]))
            locations: list[DataLocation] = []
            writer = self._writer
            start = -1
            if align > 1 and items:
                padding = -writer.prepare(self.MAX_DAT_FILE_SIZE) % align
                if padding:
                    items.insert(len(items) - 1, bytes(padding))
                    checksums.insert(len(checksums) - 1, blob_checksum(items[-2]))
                    frames = None
            elif len(items) == 1 and writer.kind == KIND_RAW:
                # The mutable segment's kind, not this instance's use_compression: a segment another
                # instance made compressed must never take put_mapped's raw bytes at a raw offset.
                start = writer.put_mapped(items[0], checksums[0], self.MAX_DAT_FILE_SIZE)
                if start >= 0:  # as in put(): the common case, no syscall
                    locations.append(new_location((writer.path, start, start + len(items[0]))))
                else:
                    locations.append(self._put_one_locked(items[0], checksums[0], None))
                    start = 0
            index = 0 if start < 0 else len(items)
            while index < len(items):
                index = self._put_run_locked(items, checksums, index, locations, frames)
                frames = None  # precompressed frames cover the whole batch only
            blob = make_log(locations)
            log = self._append_log_locked(blob if type(blob) is bytes else as_bytes_like(blob, "make_log()"))  # pylint: disable=unidiomatic-typecheck
            after = _new_position((words[W_SEGMENT], words[W_END], words[W_INDEX_BYTES]))
            sealed = writer.take_sealed() if writer.sealed else None
        finally:
            lock.release_write()
        if sealed:
            self._after_seal(sealed)
        return _new_logged((locations, log, before, after))

    def put_logged_one(self, data: Buffer, make_log: Callable[[int, int, int, int], Buffer]) -> LoggedOne:
        """put_logged((data,), ...) for one blob, with a log record built from where the blob
        lands: ``make_log(segment, start, end, checksum)`` (its segment's number, offsets and
        XXH3-64) returns the record's bytes. Same guarantees as put_logged; ``make_log`` runs
        under the write lock and may be called twice (the second time for another place), the
        record of its last call being the one committed. Into a raw mutable segment with room
        in its maps, the blob and its record are committed together (one publish), without a
        syscall.
        """
        if self.readonly or not self.log_records:
            self._check_log("put_logged_one")
        item = data if type(data) is bytes else as_bytes_like(data, "put_logged_one()")  # pylint: disable=unidiomatic-typecheck
        checksum = blob_checksum(item)
        lock = self._write_locked_open()
        try:
            words = self._writer.words
            writer = self._writer
            start = words[W_END]
            if (  # the mapped case, whose other conditions put_mapped_logged checks
                writer.kind == KIND_RAW
                and writer.version >= INDEX_VERSION_LOG
                and start < self.MAX_DAT_FILE_SIZE
                and len(item) <= writer.map_limit
            ):
                segment = writer.segment
                log = make_log(segment, start, start + len(item), checksum)
                if type(log) is not bytes:  # pylint: disable=unidiomatic-typecheck
                    log = bytes(as_bytes_like(log, "make_log()"))
                log_checksum = blob_checksum(log)
                index_bytes = words[W_INDEX_BYTES]
                if writer.put_mapped_logged(item, checksum, log, log_checksum):
                    return _new_logged_one(
                        (
                            _new_position((segment, start, index_bytes)),
                            _new_position((segment, words[W_END], words[W_INDEX_BYTES])),
                            segment,
                            words[W_END],
                            log_checksum,
                        )
                    )
        finally:
            lock.release_write()
        made: list[Buffer] = []

        def make_log_at(locations: list[DataLocation]) -> Buffer:
            path, start, end = locations[0]
            number = parse_segment_name(os.path.basename(path))
            if number is None:  # pragma: no cover - every location this store issues names a segment
                raise ValueError(f"{path} is not a segment of this store")
            made.append(make_log(number, start, end, checksum))
            return made[-1]

        put = self.put_logged((item,), make_log_at)
        log = made[-1]
        log_segment = parse_segment_name(os.path.basename(put.log[0]))
        return _new_logged_one(
            (
                put.before,
                put.after,
                -1 if log_segment is None else log_segment,
                put.log[2],
                blob_checksum(log if type(log) is bytes else as_bytes_like(log, "make_log()")),  # pylint: disable=unidiomatic-typecheck
            )
        )

    def _append_log_locked(self, item: bytes) -> DataLocation:
        """Append one log record (write lock held)."""
        checksum = blob_checksum(item)
        writer = self._writer
        if writer.version >= INDEX_VERSION_LOG and writer.kind == KIND_RAW:  # the segment's kind, as in put_logged
            start = writer.put_mapped(item, checksum, self.MAX_DAT_FILE_SIZE, FLAG_LOG)
            if start >= 0:
                return new_location((writer.path, start, start + len(item)))
        writer.prepare(self.MAX_DAT_FILE_SIZE)
        writer.ensure_version(INDEX_VERSION_LOG)
        return self._put_one_locked(item, checksum, None, FLAG_LOG)

    # -- following the log ----------------------------------------------------------------

    def log_position(self) -> LogPosition:
        """Where the committed log ends now (the position a reader that read everything has)."""
        self._reopen_if_closed()
        view = self._readers.mutable_view()
        return LogPosition(view.segment, view.end, view.index_bytes)

    def log_moved(self, position: LogPosition) -> bool:
        """Whether anything may have been committed after ``position`` (a position log_tail
        returned): a few reads of shared memory when the state page is current. A False is
        exact for every commit that completed before the call. Anything but a LogPosition is a
        LogPositionTypeError (a LogPosition of other values: True, and log_tail refuses it)."""
        try:
            index_bytes, segment = position.index_bytes, position.segment
        except AttributeError:  # (no test before: this runs at every keyed lookup)
            raise LogPositionTypeError(_not_a_position(position)) from None
        words = self._words if not self.readonly else self._ro_state.current_page()
        if words is None:
            return True  # read-only without a current state page: ask log_tail
        seq = words[W_SEQ]
        return bool(
            words[W_INDEX_BYTES] != index_bytes or words[W_SEGMENT] != segment or seq & 1 or words[W_SEQ] != seq
        )

    def log_tail(self, after: LogPosition, max_records: int = _TAIL_RECORDS) -> LogTail:
        """The log records committed after ``after``, in commit order, with the position after
        them (read every log record up to there), and whether a segment between is gone.

        A position past the end of the log (``ahead``) reads nothing: the log lost the tail the
        position was in (a power loss), or the position is of another store.

        Reads at most ``max_records`` log records (call again for more: memory stays bounded).
        Reads the record indexes only. A position that is not a LogPosition of ints is a
        LogPositionTypeError; a segment below -1 or past the largest number, or a negative
        offset, an InvalidLogPositionError (a ValueError).
        """
        if type(max_records) is not int or max_records < 1:  # pylint: disable=unidiomatic-typecheck  # not bool
            raise ValueError(f"max_records is a positive int, not {max_records!r}")
        # One test without a call (log_tail runs at every lookup after a write): ints, not bools.
        if (  # pylint: disable=unidiomatic-typecheck,too-many-boolean-expressions
            type(after) is not LogPosition
            or type(after[0]) is not int
            or type(after[1]) is not int
            or type(after[2]) is not int
            or not -1 <= after[0] <= MAX_SEGMENT_NUMBER
            or after[1] < 0
            or after[2] < 0
        ):
            after = _checked_position(after)
        self._reopen_if_closed()
        view = self._readers.mutable_view()
        if after.segment == view.segment:
            if after.end > view.end or after.index_bytes > view.index_bytes:
                return LogTail([], after, [], 0, True)
            found, position, last = self._segment_tail(view.segment, after, view, max_records)
            return LogTail(found, position, [], last)
        if after.segment > view.segment:
            return LogTail([], after, [after.segment], 0, True)
        numbers = sorted(
            n
            for n in (parse_segment_name(name) for name in list_dir(self._dir_fd))
            if n is not None and n >= after.segment
        )
        expected = after.segment if after.segment >= 0 else (numbers[0] if numbers else 0)
        records: list[BlobRecord] = []
        missing: list[int] = []
        position = after
        last_index_bytes = 0
        for number in numbers:
            if number > view.segment:
                break
            missing.extend(range(expected, number))
            expected = number + 1
            mutable = number == view.segment
            found, position, last = self._segment_tail(
                number, position, view if mutable else None, max_records - len(records)
            )
            if found:
                records.extend(found)
                last_index_bytes = last
            if mutable or len(records) >= max_records or position.segment == number:
                break
        return LogTail(records, position, missing, last_index_bytes)

    def log_record_at(self, position: LogPosition) -> BlobRecord | None:
        """The committed log record whose data ends at ``position.end`` and whose BLOB record ends
        at ``position.index_bytes`` of segment ``position.segment``'s record index, read with one
        ``pread`` of that record; None when it is not found there (a re-framing rewrote a sealed
        segment's index, the segment is gone, or the position is not one the log reached): then
        look for it with :meth:`log_tail`. What a layer checks its checkpoint with on open."""
        if type(position) is tuple and len(position) == len(LogPosition._fields):  # pylint: disable=unidiomatic-typecheck
            position = LogPosition(*position)  # a plain triple was always taken
        number, end, index_bytes = _checked_position(position)
        self._reopen_if_closed()
        if index_bytes < HEADER_BYTES + RECORD_BYTES or max(end, index_bytes) > _MAX_FILE_OFFSET:
            return None  # no file is that long: not a position the log reached
        view = self._readers.mutable_view()
        if number > view.segment or (number == view.segment and (index_bytes > view.index_bytes or end > view.end)):
            return None
        try:
            fd = open_regular(self._dir_fd, index_name(number))
        except FileNotFoundError:
            return None
        try:
            records = decode_records(pread_full(fd, RECORD_BYTES, index_bytes - RECORD_BYTES)).records
        finally:
            os.close(fd)
        if len(records) != 1:
            return None
        record = records[0]
        if record.rtype != REC_BLOB or not record.flags & FLAG_LOG or record.offset + record.size != end:
            return None
        return BlobRecord(number, record.offset, end, record.extra)

    def _segment_tail(
        self, number: int, after: LogPosition, view: MutableView | None, max_records: int = _TAIL_RECORDS
    ) -> tuple[list[BlobRecord], LogPosition, int]:
        """The log records of segment ``number`` after ``after`` (all when ``after`` is in an
        earlier segment), the position after them, and where the last one's BLOB record ends in
        the record index; ``view``: the mutable view when the segment is the mutable one, else
        None (a sealed segment)."""
        same = after.segment == number
        end = after.end if same else 0
        first = after.index_bytes if same and after.index_bytes >= HEADER_BYTES else HEADER_BYTES
        limit = view.index_bytes if view is not None else None
        try:
            fd = open_regular(self._dir_fd, index_name(number))
        except FileNotFoundError:
            return [], after if view is not None else LogPosition(number + 1, 0, HEADER_BYTES), 0
        try:
            size = _index_size(fd, limit)
            # Decoded a window at a time, as far as the loop below goes: a read of max_records
            # log records from a position deep inside a long segment decodes about what it takes
            # (a put's key-log record follows its value), not the rest of the segment.
            window = max(2 * max_records + 64, 1024) * RECORD_BYTES
            records: Iterator[Any]
            if first == HEADER_BYTES:
                records = _records_from(fd, size, first, window)
            elif view is None:
                # A sealed segment: read on from where the last read stopped only when the record
                # just before is the BLOB record that ends at ``end``. BLOB records are in data
                # order, so then the records after it are exactly those of the blobs from ``end``
                # on, in any index of the segment. Else (a position of another index, or forged)
                # read it all and filter by data offset: a segment of small puts holds 256 k
                # records, about half a second of decoding, which every instance following the
                # log paid at every rotation when sealed segments were always read whole.
                records = _records_from(fd, size, first - RECORD_BYTES, window)
                anchor = next(records, None)
                if anchor is None or anchor.rtype != REC_BLOB or anchor.offset + anchor.size != end:
                    first = HEADER_BYTES
                    records = _records_from(fd, size, first, window)
            else:
                continues, records = _continuing(_records_from(fd, size, first, window), end)
                if not continues:
                    first = HEADER_BYTES  # not where the last read stopped: read it all, by offset
                    records = _records_from(fd, size, first, window)
            out: list[BlobRecord] = []
            committed = view.end if view is not None else None
            index_bytes = first
            last = 0
            for record in records:
                if record.rtype == REC_BLOB:
                    if committed is not None and record.offset + record.size > committed:
                        break  # written, not yet committed (its publish is under way)
                    if record.flags & FLAG_LOG and record.offset >= end:
                        out.append(_new_record((number, record.offset, record.offset + record.size, record.extra)))
                        last = index_bytes + RECORD_BYTES
                    end = max(end, record.offset + record.size)
                index_bytes += RECORD_BYTES
                if len(out) >= max_records:
                    return out, LogPosition(number, end, index_bytes), last  # the rest next time
        finally:
            os.close(fd)
        if view is None:
            return out, LogPosition(number + 1, 0, HEADER_BYTES), last
        return out, LogPosition(number, end, index_bytes), last


_MAX_FILE_OFFSET = 2**63 - 1  # the largest offset pread takes (off_t)


def _not_a_position(position: Any) -> str:
    return (
        f"a log position is a LogPosition (as log_position, log_tail and put_logged return; LogPosition(*values)"
        f" makes one of a tuple), not {type(position).__name__}"
    )


def _checked_position(position: Any) -> LogPosition:
    """``position`` as a LogPosition, or the typed error saying what is wrong with it."""
    if not isinstance(position, LogPosition):
        raise LogPositionTypeError(_not_a_position(position))
    for name, value, low in zip(LogPosition._fields, position, (-1, 0, 0)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise LogPositionTypeError(f"a log position's {name} is an int, not {type(value).__name__}: {position}")
        if value < low:
            raise InvalidLogPositionError(f"a log position's {name} is at least {low}, not {value}: {position}")
    if position.segment > MAX_SEGMENT_NUMBER:
        raise InvalidLogPositionError(f"a log position's segment is at most {MAX_SEGMENT_NUMBER}: {position}")
    return LogPosition(*(int(value) for value in position))


def _records_from(fd: int, size: int, offset: int, window: int) -> Iterator[Any]:
    """The records of a record index from ``offset`` to ``size``, decoded ``window`` bytes (a
    multiple of RECORD_BYTES) at a time as they are taken; the first torn or damaged record ends
    them, as it ends a whole read."""
    while offset < size:
        count = min(size - offset, window)
        scan = decode_records(pread_full(fd, count, offset))
        yield from scan.records
        if scan.problem is not None:
            return
        offset += count


def _continuing(records: Iterator[Any], end: int) -> tuple[bool, Iterator[Any]]:
    """Whether the first BLOB record among ``records`` starts at ``end`` (or there is none), and
    the same records (those looked at, then the rest)."""
    head: list[Any] = []
    for record in records:
        head.append(record)
        if record.rtype == REC_BLOB:
            return record.offset == end, itertools.chain(head, records)
    return True, iter(head)


def _index_size(fd: int, limit: int | None) -> int:
    return os.fstat(fd).st_size if limit is None else limit


__all__ = [
    "LOG_START",
    "InvalidLogPositionError",
    "LogPosition",
    "LogPositionTypeError",
    "LogRecords",
    "LogTail",
    "LoggedOne",
    "LoggedPut",
]
