"""``ffdb``: a small command line over one store.

A thin layer: every command is one or two calls of :class:`FlatFileDb` (``put_streams``,
``get_many``, ``open_blob``, ``iter_locations``, ``stats``, ``verify``, ``rotate``,
``delete_file``, ``enforce_retention``, ``recompress``) plus argument parsing and
printing; nothing below imports it. Exit codes are listed in ``EXIT_CODES_EPILOG``
(shown by ``ffdb --help``).

Memory stays constant whatever the size of the blobs: ``put`` hands its inputs to
``put_streams`` (small files in groups of at most ``BATCH_BYTES``, each larger input
alone, so it is streamed) and ``get`` copies a blob larger than ``SMALL_BLOB_BYTES`` to
standard output ``READ_CHUNK_BYTES`` at a time through ``open_blob``; smaller ones are
read ``BATCH_BYTES`` at a time through ``get_many`` (disk order).

The progress bar is tqdm's, from the optional extra ``progress``
(``pip install conduit_flat_file_db[progress]``); without it no bar is drawn.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import math
import os
import stat
import string
import sys
from types import TracebackType
from typing import Any, BinaryIO, Callable, ContextManager, Protocol, Sequence, TextIO

from . import CompressMode, DataLocation, FlatFileDb, LazyOpener, Slice, __version__
from .errors import FlatFileDbError, FlatFileDbUnsafeAccessError
from .reader import apply_slice
from .types import PACKED_LOCATION_BYTES

_TQDM: Any  # tqdm.tqdm, from the optional extra "progress"; without it no bar is drawn
try:
    import tqdm as _tqdm_module
except ImportError:
    _TQDM = None
else:
    _TQDM = _tqdm_module.tqdm

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

READ_CHUNK_BYTES = 1 << 20  # one read from a blob, one write to standard output
SMALL_BLOB_BYTES = 1 << 20  # put: inputs up to this size are grouped, larger ones streamed; get: same
BATCH_BYTES = 16 << 20  # put / get: small blobs held in memory at a time
BATCH_COUNT = 4096  # put: ... or this many of them
PROGRESS_MIN_BYTES = 64 << 20  # a progress bar only for work larger than this
PROGRESS_INTERVAL_SECONDS = 0.1  # at most this often a redraw
PROGRESS_DELAY_SECONDS = 1.0  # work of unknown size (a pipe): a progress once it has lasted this long
# A one-shot process gains nothing from a large cache of decompressed frames (an
# open blob keeps the frame it is reading itself); keep the footprint small.
CLI_FRAME_CACHE_BYTES = 4 << 20
_HEX_LOCATION_CHARS = 2 * PACKED_LOCATION_BYTES
_READ_COMMANDS = ("get", "info", "verify", "stats", "ls")

LOCATION_HELP = f"""\
LOCATION is either the packed form printed by put and ls ({_HEX_LOCATION_CHARS} hex digits)
or FILE_PATH:START:END; a FILE_PATH without a directory is taken inside --datadir.
SEGMENT is a segment number or its data file (a bare file name is taken inside --datadir).
"""

EXIT_CODES_EPILOG = f"""\
{LOCATION_HELP}
A progress bar is drawn on standard error when it is a terminal, the work is larger
than {PROGRESS_MIN_BYTES >> 20} MiB and tqdm is installed (extra "progress"); --no-progress: never.

exit codes:
  {EXIT_OK}    success (verify: no problems found)
  {EXIT_PROBLEMS}    verify found problems
  {EXIT_ERROR}    error: bad arguments, bad location, missing file, store error, lock timeout
  {EXIT_REFUSED}    refused: delete or recompress of the mutable segment (seal it first: ffdb rotate)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class CliError(Exception):
    """A user error detected by the command line itself (printed, exit code 2)."""


# -- argument parsing ------------------------------------------------------------------


def _seconds(text: str) -> float:
    """argparse type of --lock-timeout and --max-age: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    """argparse type of byte and segment counts: a decimal integer >= 0."""
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


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


def _add_data_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """put, get and ls: blobs in and out."""
    put = commands.add_parser("put", help="store each FILE as one blob and print its location",
                              description="Store each FILE as one blob; print one line per file: FILE, "
                                          "file_path, start, end, packed location (hex), tab-separated. "
                                          f"Files larger than {SMALL_BLOB_BYTES >> 20} MiB are streamed "
                                          "(constant memory) into a segment of their own; smaller ones "
                                          "are stored in groups.")
    put.add_argument("files", nargs="+", metavar="FILE", help="file to store ('-' reads standard input)")
    put.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    put.add_argument("--compress", action="store_true",
                     help="open the store with compression: new segments and streamed files are "
                          "seekable Zstandard")
    # On the subcommands too (``ffdb ... put --no-progress``); SUPPRESS keeps a global one.
    _add_no_progress(put, argparse.SUPPRESS)

    get = commands.add_parser("get", help="write blobs (or slices of them) to standard output",
                              description="Write the bytes of the blob at each LOCATION (or a slice of "
                                          "each) to standard output, one after the other in the order "
                                          "given; they are read in disk order.",
                              epilog=LOCATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    get.add_argument("location", nargs="+", metavar="LOCATION", help="packed hex location or FILE_PATH:START:END")
    get.add_argument("--slice", nargs=2, type=int, metavar=("START", "END"),
                     help="byte range relative to each blob; END 0 means to the end of the blob")
    _add_no_progress(get, argparse.SUPPRESS)

    ls = commands.add_parser("ls", help="list every blob: file_path, start, end, size, packed location",
                             description="List every committed blob in disk order, one tab-separated "
                                         "line each: file_path, start, end, size, packed location (hex).")
    ls.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    return [put, get, ls]


def _add_inspect_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """info, verify and stats: read-only looks at the whole store."""
    info = commands.add_parser("info", help="list segments and totals")
    info.add_argument("--json", action="store_true", help="print one JSON document instead")

    verify = commands.add_parser("verify", help="check every blob against its checksum (exit 1 on problems)")
    verify.add_argument("--quick", action="store_true",
                        help="structure only (indexes, sizes, seek tables); no checksums, no decompression")
    _add_no_progress(verify, argparse.SUPPRESS)

    stats = commands.add_parser("stats", help="logical and on-disk bytes, ratio and blobs per segment")
    stats.add_argument("--json", action="store_true", help="print one JSON document instead")
    return [info, verify, stats]


def _add_maintenance_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """rotate, delete, retention and recompress: they change an existing store (never create one)."""
    rotate = commands.add_parser("rotate", help="seal the mutable segment and start a new one",
                                 description="Seal the mutable segment now (a no-op when it is empty) and "
                                             "print the new mutable segment's file and number.")
    rotate.add_argument("--json", action="store_true", help="print one JSON object instead")

    delete = commands.add_parser("delete", help="delete sealed segments and every blob in them",
                                 description="Delete each SEGMENT (sealed only; the mutable one is refused "
                                             f"with exit {EXIT_REFUSED}) and print its file.",
                                 epilog=LOCATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    delete.add_argument("segments", nargs="+", metavar="SEGMENT", help="segment number or data file")

    retention = commands.add_parser("retention", help="delete the oldest sealed segments past a size or age",
                                    description="Delete the oldest sealed segments until the store holds at "
                                                "most --max-bytes on disk and none is older than --max-age "
                                                "seconds, keeping at least --keep-min; prints each deleted one.")
    retention.add_argument("--max-bytes", type=_count, metavar="BYTES", help="bound on the bytes on disk")
    retention.add_argument("--max-age", type=_seconds, metavar="SECONDS",
                           help="bound on the age of a sealed segment (since its seal)")
    retention.add_argument("--keep-min", type=_count, default=0, metavar="N",
                           help="never keep fewer than N sealed segments (default 0)")
    retention.add_argument("--json", action="store_true", help="print one JSON object per deleted segment")

    recompress = commands.add_parser("recompress", help="rewrite sealed segments compressed, raw, or reframed",
                                     description="Rewrite each SEGMENT (default: every sealed one); every "
                                                 "location stays valid. Prints one line per segment: number, "
                                                 "action, bytes on disk before and after, reason.",
                                     epilog=LOCATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    recompress.add_argument("segments", nargs="*", metavar="SEGMENT", help="segment number or data file")
    recompress.add_argument("--mode", choices=[mode.value for mode in CompressMode], default="auto",
                            help="yes: compress; no: raw; keep: as they are (with --level or --frame-bytes: "
                                 "reframe); auto (default): compress where a sample shows it pays")
    recompress.add_argument("--level", type=int, metavar="N", help="Zstandard level (default: the store's)")
    recompress.add_argument("--frame-bytes", type=_count, metavar="BYTES",
                            help="uncompressed bytes per frame (default: the store's)")
    recompress.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    return [rotate, delete, retention, recompress]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``ffdb`` (global options, then one subcommand)."""
    parser = argparse.ArgumentParser(
        prog="ffdb",
        # Written out: --datadir is required but not required=True, which would refuse it after the subcommand.
        usage="%(prog)s [-h] --datadir DIR [--lock PATH] [--lock-timeout SECONDS] [--fsync] [--no-progress] "
              "[--version] COMMAND ...",
        description="Append-only flat-file BLOB store: store files as blobs, read them back, "
                    "inspect, verify, maintain.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store_options(parser, None)
    _add_no_progress(parser, False)
    parser.add_argument("--version", action="version", version=f"ffdb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="ffdb")
    for command in _add_data_commands(commands) + _add_inspect_commands(commands) \
            + _add_maintenance_commands(commands):
        _add_store_options(command, argparse.SUPPRESS)
    return parser


def default_lock_path(datadir: str) -> str:
    """``<datadir>.lock`` beside the datadir (trailing slashes and ``.`` resolved first)."""
    absolute = os.path.abspath(datadir)
    return os.path.join(os.path.dirname(absolute), os.path.basename(absolute) + ".lock")


# -- progress on standard error --------------------------------------------------------


class _Bar(Protocol):
    """What the commands use of a tqdm progress."""

    def update(self, n: float = 1) -> bool | None:
        """``n`` more bytes done."""

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        """The text before the bar."""

    def clear(self, nolock: bool = False) -> None:
        """Erase the bar's line (other output follows on the same terminal)."""

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        """Draw the bar again (after that output)."""

    def close(self) -> None:
        """Draw the final state and end the line."""


class _NoBar:
    """The bar when none is drawn: not a terminal, small work, --no-progress, or no tqdm."""

    def update(self, n: float = 1) -> bool | None:  # pylint: disable=unused-argument
        """Nothing to draw."""
        return None

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        """Nothing to draw."""

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase."""

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to end."""


def _progress_stream(no_progress: bool) -> TextIO | None:
    """Standard error when a bar may be drawn on it (a terminal, not turned off), else None."""
    if no_progress:
        return None
    return sys.stderr if _isatty(sys.stderr) else None


def _bar(label: str, total: int | None, no_progress: bool) -> _Bar:
    """A tqdm bar of bytes on standard error, or a :class:`_NoBar`. A known ``total`` gets a bar
    only above ``PROGRESS_MIN_BYTES``; an unknown one (a pipe) once the work has lasted
    ``PROGRESS_DELAY_SECONDS``."""
    stream = _progress_stream(no_progress)
    if _TQDM is None or stream is None or (total is not None and total <= PROGRESS_MIN_BYTES):
        return _NoBar()
    progress: _Bar = _TQDM(total=total, desc=label, file=stream, unit="B", unit_scale=True, unit_divisor=1024,
                           ascii=True, mininterval=PROGRESS_INTERVAL_SECONDS,
                           delay=0 if total is not None else PROGRESS_DELAY_SECONDS, **_shape(stream))
    return progress


def _shape(stream: TextIO) -> dict[str, Any]:
    """tqdm's size options for the terminal ``stream`` writes to: its own size, followed as it
    changes; 80x24 when it reports none (a fresh pseudo-terminal says 0x0, and tqdm would hide
    a bar on row 0 of a screen 0 rows high)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 80, "nrows": 24}


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


# -- inputs of put -----------------------------------------------------------------------


def _check_sources(names: Sequence[str]) -> None:
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


def _open_source(name: str) -> ContextManager[BinaryIO]:
    """Input ``name``, opened when entered (a file's :class:`LazyOpener`); standard input is not closed."""
    if name == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return LazyOpener(name)


class _Counted:
    """A readable over ``source`` that counts what is read into the progress bar."""

    def __init__(self, source: Any, progress: _Bar) -> None:
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

    def __init__(self, name: str, progress: _Bar) -> None:
        self.name = name
        self.done = False  # read to its end and closed without an error
        self.counted: _Counted | None = None
        self._bar = progress
        self._source: ContextManager[BinaryIO] | None = None

    def __enter__(self) -> _Counted:
        self._source = _open_source(self.name)
        self.counted = _Counted(self._source.__enter__(), self._bar)
        return self.counted

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._source is not None:
            self._source.__exit__(exc_type, exc, tb)
        self.done = exc_type is None


# -- locations and segments ----------------------------------------------------------------


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


def _segment_arg(db: FlatFileDb, text: str) -> int | str:
    """A SEGMENT argument: its number, or a data file path (bare names are in the datadir)."""
    if text.isdecimal():
        return int(text)
    return text if os.path.dirname(text) else os.path.join(str(db.datadir), text)


def _describe(exc: BaseException) -> str:
    """A one-line message for an expected error; paths as text (some libraries name files in bytes)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        names = [os.fsdecode(name) if isinstance(name, bytes) else str(name)
                 for name in (exc.filename, exc.filename2) if name is not None]
        return f"{' -> '.join(names)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


def _print_json(document: Any) -> None:
    _print(json.dumps(document))


def _write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte or raise: a large ``BufferedWriter.write`` to a pipe whose reader
    left can report a short count instead of raising, so write in chunks and check."""
    view = memoryview(data)
    while view:
        written = out.write(view[:READ_CHUNK_BYTES])
        if not written:
            raise OSError(errno.EIO, "standard output accepted no bytes")
        view = view[written:]


# -- put -----------------------------------------------------------------------------------


class _Puts:
    """Stores the inputs of one ``ffdb put`` through ``put_streams`` and prints one line per
    input, in argument order, each as soon as it and every line before it are stored.

    Regular files of at most ``SMALL_BLOB_BYTES`` wait in one group (at most ``BATCH_BYTES`` /
    ``BATCH_COUNT``), even across larger inputs, which are stored at once (a streamed input
    makes a segment of its own and seals the mutable one, so storing the group before each
    would scatter the small inputs over many segments); an input of unknown size goes alone
    (``put_streams`` streams it if it is large).
    """

    def __init__(self, db: FlatFileDb, as_json: bool, progress: _Bar) -> None:
        self._db = db
        self._json = as_json
        self._bar = progress
        self._clear = _isatty(sys.stdout)  # the bar shares the terminal with standard output
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
            locations = self._db.put_streams(inputs, open_streams=True, small_bytes=SMALL_BLOB_BYTES + 1,
                                             batch_bytes=BATCH_BYTES + 2 * SMALL_BLOB_BYTES)
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
        if not failed or any(item.counted is None or item.counted.count > SMALL_BLOB_BYTES
                             for item in inputs[:failed]):
            return
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            self._store(indexes[:failed])

    def _print_ready(self) -> None:
        while self._printed < len(self._lines) and self._lines[self._printed][1] is not None:
            self._print(*self._lines[self._printed])
            self._printed += 1

    def print_stored(self) -> None:
        """After a failure: print every stored line not printed yet (in order, gaps skipped)."""
        for name, location in self._lines[self._printed:]:
            if location is not None:
                self._print(name, location)
        self._printed = len(self._lines)

    def _print(self, name: str, location: DataLocation) -> None:
        packed = self._db.pack_location(location).hex()
        if self._clear:
            self._bar.clear()
        if self._json:
            _print_json({"file": name, "file_path": location.file_path, "start_offset": location.start_offset,
                         "end_offset": location.end_offset, "packed": packed})
        else:
            _print(f"{name}\t{location.file_path}\t{location.start_offset}\t{location.end_offset}\t{packed}")
        sys.stdout.flush()  # a later failure must not hide locations already stored
        if self._clear:
            self._bar.refresh()


def cmd_put(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb put FILE...``: through ``put_streams``; output in argument order."""
    progress = _bar("put", _total_size(args.files), args.no_progress)
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


# -- get and ls ----------------------------------------------------------------------------


def _sliced(locations: list[DataLocation], slice_: Sequence[int] | None) -> list[DataLocation]:
    """Each location narrowed to ``--slice START END`` (checked against each blob, as get(slice=) does)."""
    if slice_ is None:
        return locations
    part = Slice(*slice_)
    return [DataLocation(location.file_path, *apply_slice(location.file_path, *location[1:], part))
            for location in locations]


def _stream_blob(db: FlatFileDb, location: DataLocation, out: BinaryIO, progress: _Bar) -> None:
    """Copy one blob to ``out`` ``READ_CHUNK_BYTES`` at a time (constant memory)."""
    with db.open_blob(location) as blob:
        remaining = blob.size
        while remaining:
            chunk = blob.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                raise CliError(f"{blob.name}: blob ended {remaining} bytes early")
            _write_all(out, chunk)
            remaining -= len(chunk)
            progress.update(len(chunk))


def _write_batch(db: FlatFileDb, batch: list[DataLocation], out: BinaryIO, progress: _Bar) -> None:
    """Read small blobs in one ``get_many`` (disk order) and write them in the order given."""
    for data in db.get_many(batch):
        _write_all(out, data)
        progress.update(len(data))
    batch.clear()


def cmd_get(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb get LOCATION... [--slice START END]``: every argument is checked before a byte is written."""
    locations = _sliced([parse_location(db, text) for text in args.location], args.slice)
    out = sys.stdout.buffer
    progress = _bar("get", sum(max(0, end - start) for _, start, end in locations), args.no_progress)
    batch: list[DataLocation] = []
    batch_bytes = 0
    try:
        for location in locations:
            size = location.end_offset - location.start_offset
            if size > SMALL_BLOB_BYTES:
                _write_batch(db, batch, out, progress)
                _stream_blob(db, location, out, progress)
                continue
            if batch_bytes + size > BATCH_BYTES:
                _write_batch(db, batch, out, progress)
                batch_bytes = 0
            batch.append(location)
            batch_bytes += size
        _write_batch(db, batch, out, progress)
        out.flush()
    finally:
        progress.close()
    return EXIT_OK


def cmd_ls(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb ls``: every committed blob in disk order, from the record indexes."""
    for location in db.iter_locations():
        file_path, start, end = location
        packed = db.pack_location(location).hex()
        if args.json:
            _print_json({"file_path": file_path, "start_offset": start, "end_offset": end, "size": end - start,
                         "packed": packed})
        else:
            _print(f"{file_path}\t{start}\t{end}\t{end - start}\t{packed}")
    return EXIT_OK


# -- info, verify, stats -----------------------------------------------------------------------


def cmd_info(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb info``: one row per segment from :meth:`FlatFileDb.stats` (so it agrees with ``stats``)."""
    rows = [{"segment": s.number, "file": s.file_name, "state": "sealed" if s.sealed else "mutable",
             "disk_bytes": s.disk_bytes, "blobs": s.blobs, "blob_bytes": s.logical_bytes}
            for s in db.stats().segments]
    totals = {"segments": len(rows), "sealed": sum(1 for r in rows if r["state"] == "sealed")}
    totals.update({key: sum(int(r[key]) for r in rows) for key in ("blobs", "blob_bytes", "disk_bytes")})
    if args.json:
        _print_json({"datadir": str(db.datadir), "mutable_segment": db.mutable_segment(), "segments": rows,
                     "totals": totals})
        return EXIT_OK
    header = ("SEGMENT", "FILE", "STATE", "DISK_BYTES", "BLOBS", "BLOB_BYTES")
    table = [header] + [tuple(str(value) for value in r.values()) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    _print(f"datadir: {db.datadir}")
    for row in table:
        cells = [cell.ljust(width) if column in (1, 2) else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        _print("  ".join(cells).rstrip())
    _print(f"total: {totals['segments']} segments ({totals['sealed']} sealed), {totals['blobs']} blobs, "
           f"{totals['blob_bytes']} blob bytes, {totals['disk_bytes']} bytes on disk")
    return EXIT_OK


def cmd_verify(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb verify``: the bar counts the bytes on disk of the segments verified so far."""
    no_bar = _progress_stream(args.no_progress) is None or _TQDM is None
    sizes = [] if no_bar else [s.disk_bytes for s in db.stats().segments]
    progress = _bar(f"verify 0/{len(sizes)} segments", sum(sizes), args.no_progress)
    done_bytes = list(itertools.accumulate(sizes, initial=0))
    shown = [0]  # bytes the bar shows

    def segment_done(done: int, total: int) -> None:
        # Segments that came or went since they were listed: count them alone.
        now = done_bytes[done] if total == len(sizes) else sum(sizes) * done // max(1, total)
        progress.set_description_str(f"verify {done}/{total} segments", refresh=False)
        progress.update(now - shown[0])
        shown[0] = now

    try:
        report = db.verify(full=not args.quick, progress=None if isinstance(progress, _NoBar) else segment_done)
    finally:
        progress.close()
    _print(str(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_stats(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb stats``: per segment and total logical bytes, bytes on disk, ratio, blobs."""
    stats = db.stats()
    if args.json:
        _print_json({
            "segments": [{"number": s.number, "file": s.file_name, "sealed": s.sealed, "compressed": s.compressed,
                          "blobs": s.blobs, "logical_bytes": s.logical_bytes, "disk_bytes": s.disk_bytes,
                          "ratio": round(s.ratio, 4)} for s in stats.segments],
            "totals": {"segments": len(stats.segments), "blobs": stats.blobs, "logical_bytes": stats.logical_bytes,
                       "disk_bytes": stats.disk_bytes, "ratio": round(stats.ratio, 4)}})
        return EXIT_OK
    _print(f"{'SEGMENT':>8}  {'FILE':<20} {'STATE':<7} {'BLOBS':>9} {'LOGICAL':>14} {'ON_DISK':>14} {'RATIO':>6}")
    for s in stats.segments:
        _print(f"{s.number:>8}  {s.file_name:<20} {'sealed' if s.sealed else 'mutable':<7} {s.blobs:>9} "
               f"{s.logical_bytes:>14} {s.disk_bytes:>14} {s.ratio:>6.2f}")
    _print(f"total: {len(stats.segments)} segments, {stats.blobs} blobs, {stats.logical_bytes} logical bytes, "
           f"{stats.disk_bytes} bytes on disk, ratio {stats.ratio:.2f}")
    return EXIT_OK


# -- maintenance -------------------------------------------------------------------------------


def cmd_rotate(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb rotate``: prints the mutable segment after the rotation (the same one if it was empty)."""
    path, number = db.rotate()
    if args.json:
        _print_json({"file_path": str(path), "segment": number})
    else:
        _print(f"{path}\t{number}")
    return EXIT_OK


def cmd_delete(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb delete SEGMENT...``: in the order given; the mutable one is refused by the library."""
    segments = [_segment_arg(db, text) for text in args.segments]
    present = set(db.segments())
    for segment in segments:  # delete_file only logs a missing one; a command line says so and fails
        if not (segment in present if isinstance(segment, int) else os.path.exists(segment)):
            raise FileNotFoundError(errno.ENOENT, "no such segment", str(segment))
    for segment in segments:
        path = db.segment_path(segment) if isinstance(segment, int) else segment
        db.delete_file(path)
        _print(f"deleted {path}")
        sys.stdout.flush()  # a later refusal must not hide what was deleted
    return EXIT_OK


def cmd_retention(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb retention``: ``enforce_retention``, printing each segment as it is deleted."""
    if args.max_bytes is None and args.max_age is None:
        raise CliError("retention needs --max-bytes and/or --max-age")

    def deleting(path: str, locations: list[DataLocation]) -> None:
        if args.json:
            _print_json({"file_path": path, "blobs": len(locations)})
        else:
            _print(f"deleted {path}\t{len(locations)} blobs")
        sys.stdout.flush()

    deleted = db.enforce_retention(max_bytes=args.max_bytes, max_age=args.max_age, keep_min=args.keep_min,
                                   on_delete=deleting)
    if not args.json:
        _print(f"total: {len(deleted)} segments deleted, {db.stats().disk_bytes} bytes on disk")
    return EXIT_OK


def cmd_recompress(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb recompress [SEGMENT...]``: one line per segment from :meth:`FlatFileDb.recompress`."""
    segments = [_segment_arg(db, text) for text in args.segments] or None
    results = db.recompress(segments, mode=CompressMode(args.mode), level=args.level, frame_bytes=args.frame_bytes)
    for result in results:
        if args.json:
            _print_json({"segment": result.number, "action": result.action, "disk_before": result.disk_before,
                         "disk_after": result.disk_after, "reason": result.reason})
        else:
            _print(f"{result.number}\t{result.action}\t{result.disk_before}\t{result.disk_after}\t{result.reason}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[FlatFileDb, argparse.Namespace], int]] = {
    "put": cmd_put, "get": cmd_get, "ls": cmd_ls, "info": cmd_info, "verify": cmd_verify, "stats": cmd_stats,
    "rotate": cmd_rotate, "delete": cmd_delete, "retention": cmd_retention, "recompress": cmd_recompress}


def _run(args: argparse.Namespace) -> int:
    datadir: str = args.datadir
    lock: str = args.lock if args.lock is not None else default_lock_path(datadir)
    if args.command in _READ_COMMANDS:
        # Read commands open read-only: they never create or write anything (not the datadir,
        # nor the lock file), so they work on read-only media and without write permission.
        with FlatFileDb(datadir, lock, readonly=True, frame_cache_bytes=CLI_FRAME_CACHE_BYTES) as db:
            return _COMMANDS[args.command](db, args)
    if args.command == "put":
        _check_sources(args.files)  # before the store is opened (and its datadir created)
    elif not os.path.isdir(datadir):  # maintenance of a store that is not there: never create one
        raise FileNotFoundError(errno.ENOENT, "the store's directory does not exist", datadir)
    with FlatFileDb(datadir, lock, fsync=args.fsync, use_compression=args.command == "put" and args.compress,
                    lock_timeout=args.lock_timeout, frame_cache_bytes=CLI_FRAME_CACHE_BYTES) as db:
        return _COMMANDS[args.command](db, args)


def _parse(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of --help, --version or a usage error (argparse printed it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.datadir is None:  # not required=True: it may come after the subcommand
            parser.error("the following arguments are required: --datadir")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run ``ffdb`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        if sys.stdout is None:  # started with standard output closed (`>&-`): refuse before doing anything
            raise CliError("standard output is closed; every command writes its results there")
        return _run(args)
    except BrokenPipeError:
        _silence_stdout()
        sys.stderr.write("ffdb: error: output closed before everything was written\n")
        return EXIT_ERROR
    except FlatFileDbUnsafeAccessError as exc:
        sys.stderr.write(f"ffdb: refused: {_describe(exc)}\n")
        return EXIT_REFUSED
    except (CliError, FlatFileDbError, OSError, ValueError, TypeError) as exc:
        if sys.stderr is not None:
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


__all__ = ["main"]
