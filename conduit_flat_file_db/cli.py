"""``ffdb``: a small command line over one store (put, get, info, verify).

Sits on top of the package and uses only its public names; nothing below imports it.
Exit codes are listed in ``EXIT_CODES_EPILOG`` (shown by ``ffdb --help``).

Memory stays constant whatever the size of the blobs: ``put`` streams every input
larger than ``SMALL_BLOB_BYTES`` through ``FlatFileDb.put_stream`` (smaller ones are
batched through ``put_many``, at most ``BATCH_BYTES`` held at a time) and ``get``
copies the blob to standard output ``READ_CHUNK_BYTES`` at a time through
``FlatFileDb.open_blob``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import itertools
import json
import math
import os
import stat
import string
import sys
import time
from typing import Any, BinaryIO, Iterator, NamedTuple, Sequence, TextIO

from . import FlatFileDb, __version__
from .errors import FlatFileDbError
from .types import PACKED_LOCATION_BYTES, DataLocation

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

READ_CHUNK_BYTES = 1 << 20  # one read from a blob, one write to standard output
SMALL_BLOB_BYTES = 1 << 20  # put: inputs up to this size are batched, larger ones streamed
BATCH_BYTES = 16 << 20  # put: small inputs held in memory before one put_many
BATCH_COUNT = 4096  # put: ... or this many of them
HEAD_READ_BYTES = 64 << 10  # put: reads while finding out whether an input is small
PROGRESS_MIN_BYTES = 64 << 20  # a progress bar only for work larger than this
PROGRESS_INTERVAL_SECONDS = 0.1  # at most this often a redraw
# A one-shot process gains nothing from a large cache of decompressed frames (an
# open blob keeps the frame it is reading itself); keep the footprint small.
CLI_FRAME_CACHE_BYTES = 4 << 20
_HEX_LOCATION_CHARS = 2 * PACKED_LOCATION_BYTES

LOCATION_HELP = f"""\
LOCATION is either the packed form printed by put ({_HEX_LOCATION_CHARS} hex digits)
or FILE_PATH:START:END; a FILE_PATH without a directory is taken inside --datadir.
"""

EXIT_CODES_EPILOG = f"""\
{LOCATION_HELP}
A progress bar is drawn on standard error when it is a terminal and the work is
larger than {PROGRESS_MIN_BYTES >> 20} MiB (--no-progress: never).

exit codes:
  {EXIT_OK}    success (verify: no problems found)
  {EXIT_PROBLEMS}    verify found problems
  {EXIT_ERROR}    error: bad arguments, bad location, missing file, store error, lock timeout
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class CliError(Exception):
    """A user error detected by the command line itself (printed, exit code 2)."""


class SegmentInfo(NamedTuple):
    """One row of ``ffdb info``."""

    segment: int
    file: str
    state: str  # "sealed" or "mutable"
    disk_bytes: int  # size of the data file plus its record index (as ``ffdb stats``)
    blobs: int  # committed blobs according to the record index
    blob_bytes: int  # their total length


# -- argument parsing ------------------------------------------------------------------


def _seconds(text: str) -> float:
    """argparse type of --lock-timeout: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _add_no_progress(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--no-progress", action="store_true", default=default,
                        help="never draw a progress bar on standard error")


def _add_store_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options that say which store and how to open it: on the main parser (``default``:
    their defaults) and on each subcommand (``argparse.SUPPRESS``: a value given before the
    subcommand is kept), so ``ffdb --datadir D info`` and ``ffdb info --datadir D`` both work."""
    parser.add_argument("--datadir", metavar="DIR", default=default, help="directory of the store (required)")
    parser.add_argument("--lock", metavar="PATH", default=default,
                        help="inter-process lock file shared by every user of the store (default: DIR.lock)")
    parser.add_argument("--lock-timeout", type=_seconds, metavar="SECONDS", default=default,
                        help="give up (exit 2) when the store's lock is not acquired within SECONDS "
                             "(default: wait for ever)")
    parser.add_argument("--fsync", action="store_true", default=False if default is None else default,
                        help="make every stored blob durable before reporting its location")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``ffdb`` (global options, then one subcommand)."""
    parser = argparse.ArgumentParser(
        prog="ffdb",
        # Written out: --datadir is required but not required=True, which would refuse it after the subcommand.
        usage="%(prog)s [-h] --datadir DIR [--lock PATH] [--lock-timeout SECONDS] [--fsync] [--no-progress] "
              "[--version] COMMAND ...",
        description="Append-only flat-file BLOB store: store files as blobs, read them back, "
                    "inspect, verify.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store_options(parser, None)
    _add_no_progress(parser, False)
    parser.add_argument("--version", action="version", version=f"ffdb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="ffdb")

    put = commands.add_parser("put", help="store each FILE as one blob and print its location",
                              description="Store each FILE as one blob; print one line per file: FILE, "
                                          "file_path, start, end, packed location (hex), tab-separated. "
                                          f"Files larger than {SMALL_BLOB_BYTES >> 20} MiB are streamed "
                                          "(constant memory) into a segment of their own; smaller ones "
                                          "are stored in batches.")
    put.add_argument("files", nargs="+", metavar="FILE",
                     help="file to store ('-' reads standard input)")
    put.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    put.add_argument("--compress", action="store_true",
                     help="open the store with compression: new segments and streamed files are "
                          "seekable Zstandard")
    # On the subcommands too (``ffdb ... put --no-progress``); SUPPRESS keeps a global one.
    _add_no_progress(put, argparse.SUPPRESS)

    get = commands.add_parser("get", help="write a blob (or a slice of it) to standard output",
                              description="Write the bytes of the blob at LOCATION (or a slice of it) "
                                          "to standard output.",
                              epilog=LOCATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    get.add_argument("location", metavar="LOCATION", help="packed hex location or FILE_PATH:START:END")
    get.add_argument("--slice", nargs=2, type=int, metavar=("START", "END"),
                     help="byte range relative to the blob; END 0 means to the end of the blob")
    _add_no_progress(get, argparse.SUPPRESS)

    info = commands.add_parser("info", help="list segments and totals")
    info.add_argument("--json", action="store_true", help="print one JSON document instead")

    verify = commands.add_parser("verify", help="check every blob against its checksum (exit 1 on problems)")
    verify.add_argument("--quick", action="store_true",
                        help="structure only (indexes, sizes, seek tables); no checksums, no decompression")
    _add_no_progress(verify, argparse.SUPPRESS)

    stats = commands.add_parser("stats", help="logical and on-disk bytes, ratio and blobs per segment")
    stats.add_argument("--json", action="store_true", help="print one JSON document instead")
    for command in (put, get, info, verify, stats):
        _add_store_options(command, argparse.SUPPRESS)
    return parser


def default_lock_path(datadir: str) -> str:
    """``<datadir>.lock`` beside the datadir (trailing slashes and ``.`` resolved first)."""
    absolute = os.path.abspath(datadir)
    return os.path.join(os.path.dirname(absolute), os.path.basename(absolute) + ".lock")


# -- progress on standard error --------------------------------------------------------


def human_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``: binary units, one decimal from KiB on."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _columns(stream: TextIO) -> int:
    """Width of the terminal ``stream`` writes to (80 when unknown)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return 80


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress_stream(no_progress: bool) -> TextIO | None:
    """Standard error when a bar may be drawn on it (a terminal, not turned off), else None."""
    if no_progress:
        return None
    stream = sys.stderr
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):  # no isatty, or closed
        return None


class ProgressBar:
    """Bytes done / total, percentage and rate on one line of ``stream``, redrawn in place.

    Nothing is drawn when ``stream`` is None or the work is small: with a known
    ``total`` the bar appears only when it exceeds ``min_bytes``; with an unknown one
    (a pipe) once that many bytes are done. Redraws at most every ``interval``
    seconds; :meth:`close` draws the final state and ends the line.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int | None, stream: TextIO | None, *,  # pylint: disable=too-many-arguments
                 min_bytes: int | None = None, interval: float | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.detail = ""
        self.shown = False
        self._stream = stream
        self._min_bytes = PROGRESS_MIN_BYTES if min_bytes is None else min_bytes
        self._interval = PROGRESS_INTERVAL_SECONDS if interval is None else interval
        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._last_width = 0

    def _wanted(self) -> bool:
        if self._stream is None:
            return False
        if self.total is not None:
            return self.total > self._min_bytes
        return self.done > self._min_bytes

    def advance(self, count: int) -> None:
        """``count`` more bytes are done; redraw if it is time."""
        self.update(self.done + count)

    def update(self, done: int, detail: str | None = None) -> None:
        """``done`` bytes are done (``detail``: text after the label); redraw if it is time."""
        self.done = done
        if detail is not None:
            self.detail = detail
        if self._stream is None:
            return
        now = time.monotonic()
        if now - self._last_draw >= self._interval and self._wanted():
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar as it stands."""
        elapsed = (time.monotonic() if now is None else now) - self._started
        rate = f"{human_bytes(self.done / elapsed)}/s" if elapsed > 0 else "-"
        label = f"{self.label} {self.detail}" if self.detail else self.label
        if self.total is None:
            return f"{label} {human_bytes(self.done)}  {rate}"
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        gauge = "#" * filled + "." * (self.WIDTH - filled)
        return f"{label} [{gauge}] {fraction * 100:3.0f}%  {human_bytes(self.done)} / {human_bytes(self.total)}  {rate}"

    def _draw(self, now: float) -> None:
        assert self._stream is not None
        text = self.line(now)[: _columns(self._stream) - 1]  # a wrapped line could not be redrawn in place
        pad = " " * max(0, self._last_width - len(text))
        self._stream.write("\r" + text + pad)
        self._stream.flush()
        self._last_width = len(text)
        self._last_draw = now
        self.shown = True

    def clear(self) -> None:
        """Erase the bar's line, before other output goes to the same terminal (else that output
        would be glued to the bar's text); the next update draws the bar again."""
        if self._stream is None or not self._last_width:
            return
        self._stream.write("\r" + " " * self._last_width + "\r")
        self._stream.flush()
        self._last_width = 0
        self._last_draw = -math.inf

    def close(self) -> None:
        """Draw the final state and end the line (only if the bar was wanted)."""
        if self._stream is None or not (self.shown or self._wanted()):
            return
        self._draw(time.monotonic())
        self._stream.write("\n")
        self._stream.flush()
        self._stream = None


# -- helpers -----------------------------------------------------------------------------


def _check_sources(names: Sequence[str]) -> None:
    """Refuse missing files, directories and a repeated '-' before anything is stored."""
    if sum(1 for name in names if name == "-") > 1:
        raise CliError("standard input ('-') can be given only once")
    for name in names:
        if name != "-" and os.path.isdir(name):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if name != "-" and not os.path.exists(name):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _regular_size(fd_or_path: int | str) -> int | None:
    """Size of a regular file (by descriptor or path), None for pipes, terminals, devices."""
    try:
        st = os.stat(fd_or_path)
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a test's in-memory stdin
        return None


def _source_size(name: str) -> int | None:
    """Size of input ``name`` if it can be known before reading it."""
    if name != "-":
        return _regular_size(name)
    fd = _stdin_fd()
    return None if fd is None else _regular_size(fd)


def _total_size(names: Sequence[str]) -> int | None:
    """Bytes all inputs will give, or None when one of them is a pipe or a device."""
    total = 0
    for name in names:
        size = _source_size(name)
        if size is None:
            return None
        total += size
    return total


@contextlib.contextmanager
def _open_source(name: str) -> Iterator[BinaryIO]:
    """The binary stream of input ``name``; standard input is not closed afterwards."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as stream:
        yield stream


def _read_head(source: BinaryIO, limit: int, size_hint: int | None) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes from the start of ``source`` and whether it ended within them."""
    parts: list[bytes] = []
    got = 0
    # A regular file's size (+1 to see its end) makes a small file one read, not a 1 MiB buffer.
    step = min(limit, size_hint + 1) if size_hint is not None else HEAD_READ_BYTES
    while got < limit:
        chunk = source.read(min(step, limit - got))
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        got += len(chunk)
        step = HEAD_READ_BYTES
    return b"".join(parts), False


class CountingReader:
    """A readable that serves ``head`` (bytes already taken from ``source``), then the rest of
    ``source``, counting what it reads from ``source`` into a progress bar.

    ``FlatFileDb.put_stream`` reads it with ``readinto``; memory is ``head`` plus its buffer.
    """

    def __init__(self, source: BinaryIO, head: bytes, progress: ProgressBar) -> None:
        self._source = source
        self._head = memoryview(head)
        self._progress = progress
        self._readinto = getattr(source, "readinto", None)

    def readinto(self, buffer: Any) -> int:
        """Fill up to ``len(buffer)`` bytes; 0 at the end of the input."""
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        if self._readinto is not None:
            count = self._readinto(view) or 0
        else:
            data = self._source.read(len(view))
            count = len(data)
            view[:count] = data
        self._progress.advance(count)
        return count

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (a bounded chunk when ``size`` is negative)."""
        buffer = bytearray(size if size >= 0 else READ_CHUNK_BYTES)
        count = self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)


def parse_location(db: FlatFileDb, text: str) -> DataLocation:
    """A LOCATION argument: packed hex, or FILE_PATH:START:END (bare file names are in the datadir)."""
    if len(text) == _HEX_LOCATION_CHARS and all(c in string.hexdigits for c in text):
        return db.unpack_location(bytes.fromhex(text))
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not all(p.isdecimal() for p in parts[1:]):
        raise CliError(f"bad location {text!r}: expected {_HEX_LOCATION_CHARS} hex digits "
                       "or FILE_PATH:START:END with decimal offsets")
    path, start, end = parts
    if not os.path.dirname(path):
        path = os.path.join(str(db.datadir), path)
    return DataLocation(path, int(start), int(end))


def slice_bounds(size: int, slice_: Sequence[int] | None) -> tuple[int, int]:
    """Blob-relative ``[start, end)`` of ``--slice START END`` in a blob of ``size`` bytes (END 0: to the end)."""
    if slice_ is None:
        return 0, size
    start, end = slice_
    if start < 0 or end < 0:
        raise CliError(f"bad slice {start} {end}: START and END must be >= 0")
    if end == 0:
        end = size
    if start > end or end > size:
        raise CliError(f"slice {start}..{end} is not inside the blob ({size} bytes)")
    return start, end


def segment_infos(db: FlatFileDb) -> list[SegmentInfo]:
    """One row per segment, oldest first, from :meth:`FlatFileDb.stats` (the one computation of
    blob counts and bytes on disk, so ``info`` and ``stats`` always agree)."""
    return [SegmentInfo(s.number, s.file_name, "sealed" if s.sealed else "mutable", s.disk_bytes, s.blobs,
                        s.logical_bytes) for s in db.stats().segments]


def _describe(exc: BaseException) -> str:
    """A one-line message for an expected error; paths as text (some libraries name files in bytes)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        names = [os.fsdecode(name) if isinstance(name, bytes) else str(name)
                 for name in (exc.filename, exc.filename2) if name is not None]
        return f"{' -> '.join(names)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write every byte or raise: a large ``BufferedWriter.write`` to a pipe whose reader
    left can report a short count instead of raising, so write in chunks and check."""
    view = memoryview(data)
    while view:
        written = out.write(view[:READ_CHUNK_BYTES])
        if not written:
            raise OSError(errno.EIO, "standard output accepted no bytes")
        view = view[written:]


# -- commands ----------------------------------------------------------------------------


class _Puts:
    """Stores the inputs of one ``ffdb put`` and prints one line per input, in argument order.

    Small inputs wait in one batch (at most ``BATCH_BYTES`` / ``BATCH_COUNT``) for a
    ``put_many``, even across large ones, which are streamed at once (each makes a segment
    of its own and seals the mutable one, so interleaving them would scatter the small
    ones over many segments). A line is printed, and flushed, as soon as it and every
    line before it are stored; after a failure, :meth:`print_stored` prints the rest of
    what was stored, so no stored location is hidden.
    """

    def __init__(self, db: FlatFileDb, as_json: bool, progress: ProgressBar | None = None) -> None:
        self._db = db
        self._json = as_json
        self._progress = progress  # cleared before each line: it shares the terminal with standard output
        self._lines: collections.deque[list[Any]] = collections.deque()  # [name, location or None]
        self._batch: list[tuple[list[Any], bytes]] = []
        self._batch_bytes = 0

    def small(self, name: str, data: bytes) -> None:
        """Hold one small input; store the batch when it is full."""
        line: list[Any] = [name, None]
        self._lines.append(line)
        self._batch.append((line, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_COUNT:
            self.flush()

    def large(self, name: str, stream: CountingReader) -> None:
        """Stream one input into the store now."""
        line: list[Any] = [name, None]
        self._lines.append(line)
        line[1] = self._db.put_stream(stream)
        self._print_ready()

    def flush(self) -> None:
        """Store the batch (nothing is retried if that fails) and print what is ready."""
        batch = self._batch
        self._batch, self._batch_bytes = [], 0
        if batch:
            for (line, _), location in zip(batch, self._db.put_many([data for _, data in batch])):
                line[1] = location
        self._print_ready()

    def _print_ready(self) -> None:
        lines = self._lines
        while lines and lines[0][1] is not None:
            self._print(*lines.popleft())

    def print_stored(self) -> None:
        """After a failure: print every stored line not printed yet (in order, gaps skipped)."""
        while self._lines:
            name, location = self._lines.popleft()
            if location is not None:
                self._print(name, location)

    def _print(self, name: str, location: DataLocation) -> None:
        packed = self._db.pack_location(location).hex()
        if self._progress is not None:
            self._progress.clear()
        if self._json:
            _print(json.dumps({"file": name, "file_path": location.file_path,
                               "start_offset": location.start_offset, "end_offset": location.end_offset,
                               "packed": packed}))
        else:
            _print(f"{name}\t{location.file_path}\t{location.start_offset}\t{location.end_offset}\t{packed}")
        sys.stdout.flush()  # a later failure must not hide locations already stored


def cmd_put(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb put FILE...``: small inputs in batches, large ones streamed; output in argument order."""
    names: list[str] = args.files
    progress = ProgressBar("put", _total_size(names), progress_stream(args.no_progress))
    puts = _Puts(db, args.json, progress if _isatty(sys.stdout) else None)
    try:
        for name in names:
            with _open_source(name) as source:
                head, ended = _read_head(source, SMALL_BLOB_BYTES + 1, _source_size(name))
                progress.advance(len(head))
                if ended:
                    puts.small(name, head)
                else:
                    puts.large(name, CountingReader(source, head, progress))
        puts.flush()
    except BaseException as exc:
        progress.close()
        if isinstance(exc, Exception) and not isinstance(exc, BrokenPipeError):
            with contextlib.suppress(Exception):  # store the small inputs read before the failure ...
                puts.flush()
        with contextlib.suppress(OSError, ValueError):  # ... and report every stored one
            puts.print_stored()
        raise
    progress.close()
    return EXIT_OK


def cmd_get(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb get LOCATION [--slice START END]``: streamed, ``READ_CHUNK_BYTES`` at a time."""
    location = parse_location(db, args.location)
    out = sys.stdout.buffer
    with db.open_blob(location) as blob:
        start, end = slice_bounds(blob.size, args.slice)
        blob.seek(start)
        remaining = end - start
        progress = ProgressBar("get", remaining, progress_stream(args.no_progress))
        try:
            while remaining:
                chunk = blob.read(min(READ_CHUNK_BYTES, remaining))
                if not chunk:
                    raise CliError(f"{blob.name}: blob ended {remaining} bytes early")
                _write_all(out, chunk)
                remaining -= len(chunk)
                progress.advance(len(chunk))
            out.flush()
        finally:
            progress.close()
    return EXIT_OK


def cmd_info(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb info``"""
    rows = segment_infos(db)
    totals = {
        "segments": len(rows),
        "sealed": sum(1 for r in rows if r.state == "sealed"),
        "blobs": sum(r.blobs for r in rows),
        "blob_bytes": sum(r.blob_bytes for r in rows),
        "disk_bytes": sum(r.disk_bytes for r in rows),
    }
    if args.json:
        _print(json.dumps({"datadir": str(db.datadir), "mutable_segment": db.mutable_segment(),
                           "segments": [r._asdict() for r in rows], "totals": totals}))
        return EXIT_OK
    header = ("SEGMENT", "FILE", "STATE", "DISK_BYTES", "BLOBS", "BLOB_BYTES")
    table = [header] + [(str(r.segment), r.file, r.state, str(r.disk_bytes), str(r.blobs), str(r.blob_bytes))
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    _print(f"datadir: {db.datadir}")
    for row in table:
        cells = [cell.ljust(width) if column in (1, 2) else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        _print("  ".join(cells).rstrip())
    _print(f"total: {totals['segments']} segments ({totals['sealed']} sealed), {totals['blobs']} blobs, "
           f"{totals['blob_bytes']} blob bytes, {totals['disk_bytes']} bytes on disk")
    return EXIT_OK


def _segment_sizes(db: FlatFileDb) -> list[int]:
    """Bytes of each segment's data file, oldest first (0 for one deleted meanwhile)."""
    return [_regular_size(db.segment_path(number)) or 0 for number in db.segments()]


def cmd_verify(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb verify``: the bar counts the data files of the segments verified so far."""
    stream = progress_stream(args.no_progress)
    sizes = _segment_sizes(db) if stream is not None else []
    total_bytes = sum(sizes)
    progress = ProgressBar("verify", total_bytes, stream)
    done_bytes = list(itertools.accumulate(sizes, initial=0))

    def segment_done(done: int, total: int) -> None:
        if total == len(sizes):
            progress.update(done_bytes[done], f"{done}/{total} segments")
        else:  # segments came or went since they were listed: count them alone
            progress.update(total_bytes * done // max(1, total), f"{done}/{total} segments")

    progress.update(0, f"0/{len(sizes)} segments")  # shown during the first segment already
    try:
        report = db.verify(full=not args.quick, progress=segment_done if stream is not None else None)
    finally:
        progress.close()
    _print(str(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_stats(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb stats``: per segment and total logical bytes, bytes on disk, ratio, blobs."""
    stats = db.stats()
    if args.json:
        _print(json.dumps({
            "segments": [{"number": s.number, "file": s.file_name, "sealed": s.sealed, "compressed": s.compressed,
                          "blobs": s.blobs, "logical_bytes": s.logical_bytes, "disk_bytes": s.disk_bytes,
                          "ratio": round(s.ratio, 4)} for s in stats.segments],
            "totals": {"segments": len(stats.segments), "blobs": stats.blobs, "logical_bytes": stats.logical_bytes,
                       "disk_bytes": stats.disk_bytes, "ratio": round(stats.ratio, 4)}}))
        return EXIT_OK
    _print(f"{'SEGMENT':>8}  {'FILE':<20} {'STATE':<7} {'BLOBS':>9} {'LOGICAL':>14} {'ON_DISK':>14} {'RATIO':>6}")
    for s in stats.segments:
        _print(f"{s.number:>8}  {s.file_name:<20} {'sealed' if s.sealed else 'mutable':<7} {s.blobs:>9} "
               f"{s.logical_bytes:>14} {s.disk_bytes:>14} {s.ratio:>6.2f}")
    _print(f"total: {len(stats.segments)} segments, {stats.blobs} blobs, {stats.logical_bytes} logical bytes, "
           f"{stats.disk_bytes} bytes on disk, ratio {stats.ratio:.2f}")
    return EXIT_OK


_COMMANDS = {"put": cmd_put, "get": cmd_get, "info": cmd_info, "verify": cmd_verify, "stats": cmd_stats}


def _run(args: argparse.Namespace) -> int:
    datadir: str = args.datadir
    lock: str = args.lock if args.lock is not None else default_lock_path(datadir)
    if args.command != "put":
        # Read commands open read-only: they never create or write anything (not the datadir,
        # nor the lock file), so they work on read-only media and without write permission.
        with FlatFileDb(datadir, lock, readonly=True, frame_cache_bytes=CLI_FRAME_CACHE_BYTES) as db:
            return _COMMANDS[args.command](db, args)
    _check_sources(args.files)  # before the store is opened (and its datadir created)
    with FlatFileDb(datadir, lock, fsync=args.fsync, use_compression=args.compress, lock_timeout=args.lock_timeout,
                    frame_cache_bytes=CLI_FRAME_CACHE_BYTES) as db:
        return _COMMANDS[args.command](db, args)


def main(argv: list[str] | None = None) -> int:
    """Run ``ffdb`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.datadir is None:  # not required=True: it may come after the subcommand
            parser.error("the following arguments are required: --datadir")
    except SystemExit as exc:  # --help, --version and usage errors (argparse prints them)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
    if sys.stdout is None:  # started with standard output closed (`>&-`): refuse before doing anything
        if sys.stderr is not None:
            sys.stderr.write("ffdb: error: standard output is closed; every command writes its results there\n")
        return EXIT_ERROR
    try:
        return _run(args)
    except BrokenPipeError:
        _silence_stdout()
        sys.stderr.write("ffdb: error: output closed before everything was written\n")
        return EXIT_ERROR
    except (CliError, FlatFileDbError, OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"ffdb: error: {_describe(exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("ffdb: interrupted\n")
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # io.UnsupportedOperation is both; in-process captures have no fd
        pass


__all__ = ["CliError", "CountingReader", "ProgressBar", "SegmentInfo", "build_parser",
           "default_lock_path", "human_bytes", "main", "parse_location", "progress_stream", "segment_infos",
           "slice_bounds"]
