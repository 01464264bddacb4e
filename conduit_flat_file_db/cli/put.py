"""``ffdb put``: inputs handed to :meth:`FlatFileDb.put_streams`, one output line per input.

Memory stays constant whatever the size of the inputs: small regular files go in groups of
at most ``BATCH_BYTES``, each larger input (or one of unknown size) alone, so put_streams
streams it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
from types import TracebackType
from typing import Any, BinaryIO, ContextManager, Sequence

from .. import DataLocation, FlatFileDb, LazyOpener
from .base import BATCH_BYTES, BATCH_COUNT, EXIT_OK, SMALL_BLOB_BYTES, CliError, print_json, print_line
from .progress import Bar, isatty, make_bar


def check_sources(names: Sequence[str]) -> None:
    """Refuse missing files, directories and a repeated '-' before anything is stored."""
    if sum(1 for name in names if name == "-") > 1:
        raise CliError("standard input ('-') can be given only once")
    for name in names:
        if name != "-" and os.path.isdir(name):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if name != "-" and not os.path.exists(name):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _source_size(name: str) -> int | None:
    """Size of input ``name`` if it is a regular file (known before reading it), else None."""
    try:
        st = os.stat(sys.stdin.fileno() if name == "-" else name)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a test's in-memory stdin
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _total_size(names: Sequence[str]) -> int | None:
    """Bytes all inputs will give, or None when one of them is a pipe or a device."""
    sizes = [_source_size(name) for name in names]
    return None if None in sizes else sum(size or 0 for size in sizes)


def open_source(name: str) -> ContextManager[BinaryIO]:
    """Input ``name``, opened when entered (a file's :class:`LazyOpener`); standard input is not closed."""
    if name == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return LazyOpener(name)


class _Counted:
    """A readable over ``source`` that counts what is read into the progress bar."""

    def __init__(self, source: Any, progress: Bar) -> None:
        self._readinto = source.readinto
        self._bar = progress
        self.count = 0

    def readinto(self, buffer: Any) -> int | None:
        """As ``source.readinto`` (put_streams checks what it returns)."""
        count: int | None = self._readinto(buffer)
        if isinstance(count, int) and count > 0:
            self.count += count
            self._bar.update(count)
        return count


class _Input:
    """One input of ``ffdb put`` as ``put_streams(open_streams=True)`` takes it: opened when
    entered, closed on exit, its reads counted."""

    def __init__(self, name: str, progress: Bar) -> None:
        self.name = name
        self.done = False  # read to its end and closed without an error
        self.counted: _Counted | None = None
        self._bar = progress
        self._source: ContextManager[BinaryIO] | None = None

    def __enter__(self) -> _Counted:
        self._source = open_source(self.name)
        self.counted = _Counted(self._source.__enter__(), self._bar)
        return self.counted

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._source is not None:
            self._source.__exit__(exc_type, exc, tb)
        self.done = exc_type is None


class _Puts:
    """Stores the inputs of one ``ffdb put`` through ``put_streams`` and prints one line per
    input, in argument order, each as soon as it and every line before it are stored.

    Regular files of at most ``SMALL_BLOB_BYTES`` wait in one group (at most ``BATCH_BYTES`` /
    ``BATCH_COUNT``), even across larger inputs, which are stored at once (a streamed input
    makes a segment of its own and seals the mutable one, so storing the group before each
    would scatter the small inputs over many segments); an input of unknown size goes alone
    (``put_streams`` streams it if it is large).
    """

    def __init__(self, db: FlatFileDb, as_json: bool, progress: Bar) -> None:
        self._db = db
        self._json = as_json
        self._bar = progress
        self._clear = isatty(sys.stdout)  # the bar shares the terminal with standard output
        self._lines: list[list[Any]] = []  # [name, location or None], in argument order
        self._printed = 0
        self._group: list[int] = []  # indexes into _lines
        self._group_bytes = 0

    def add(self, name: str) -> None:
        """Queue input ``name``: into the group if it is a small regular file, else store it now."""
        self._lines.append([name, None])
        size = _source_size(name)
        if size is None or size > SMALL_BLOB_BYTES:
            self._store([len(self._lines) - 1])
            return
        self._group.append(len(self._lines) - 1)
        self._group_bytes += size
        if self._group_bytes >= BATCH_BYTES or len(self._group) >= BATCH_COUNT:
            self.flush()

    def flush(self) -> None:
        """Store the group (if any) and print what is ready."""
        group, self._group, self._group_bytes = self._group, [], 0
        if group:
            self._store(group)

    def _store(self, indexes: list[int]) -> None:
        inputs = [_Input(self._lines[i][0], self._bar) for i in indexes]
        try:
            # small_bytes + 1: an input of exactly SMALL_BLOB_BYTES is small; batch_bytes above a
            # group's size: put_streams stores a group of small inputs in one put_many, at its end.
            locations = self._db.put_streams(
                inputs,
                open_streams=True,
                small_bytes=SMALL_BLOB_BYTES + 1,
                batch_bytes=BATCH_BYTES + 2 * SMALL_BLOB_BYTES,
            )
        except Exception as exc:
            if len(inputs) > 1 and not isinstance(exc, BrokenPipeError):
                self._store_before_failure(indexes, inputs)
            raise
        for index, location in zip(indexes, locations):
            self._lines[index][1] = location
        self._print_ready()

    def _store_before_failure(self, indexes: list[int], inputs: list[_Input]) -> None:
        """An input of a group failed while it was opened or read: store the inputs before it.

        put_streams stored none of them (it held their bytes for one put_many at the end), so
        they are read again and stored, and reported. Not when the failure came after every
        input was read (put_many failed: nothing is retried), nor when one of them grew past
        SMALL_BLOB_BYTES since it was listed (put_streams then stored it, and those before it,
        already: storing them again would make copies).
        """
        failed = next((position for position, item in enumerate(inputs) if not item.done), None)
        if not failed or any(item.counted is None or item.counted.count > SMALL_BLOB_BYTES for item in inputs[:failed]):
            return
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            self._store(indexes[:failed])

    def _print_ready(self) -> None:
        while self._printed < len(self._lines) and self._lines[self._printed][1] is not None:
            self._print(*self._lines[self._printed])
            self._printed += 1

    def print_stored(self) -> None:
        """After a failure: print every stored line not printed yet (in order, gaps skipped)."""
        for name, location in self._lines[self._printed :]:
            if location is not None:
                self._print(name, location)
        self._printed = len(self._lines)

    def _print(self, name: str, location: DataLocation) -> None:
        packed = self._db.pack_location(location).hex()
        if self._clear:
            self._bar.clear()
        if self._json:
            print_json(
                {
                    "file": name,
                    "file_path": location.file_path,
                    "start_offset": location.start_offset,
                    "end_offset": location.end_offset,
                    "packed": packed,
                }
            )
        else:
            print_line(f"{name}\t{location.file_path}\t{location.start_offset}\t{location.end_offset}\t{packed}")
        sys.stdout.flush()  # a later failure must not hide locations already stored
        if self._clear:
            self._bar.refresh()


def cmd_put(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb put FILE...``: through ``put_streams``; output in argument order."""
    progress = make_bar("put", _total_size(args.files), args.no_progress)
    puts = _Puts(db, args.json, progress)
    try:
        for name in args.files:
            puts.add(name)
        puts.flush()
    except BaseException as exc:
        progress.close()
        if isinstance(exc, Exception) and not isinstance(exc, BrokenPipeError):
            with contextlib.suppress(Exception):  # store the small inputs listed before a failed large one ...
                puts.flush()
        with contextlib.suppress(OSError, ValueError):  # ... and report every stored one
            puts.print_stored()
        raise
    progress.close()
    return EXIT_OK
