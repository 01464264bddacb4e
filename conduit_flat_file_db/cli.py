"""``ffdb``: a small command line over one store (put, get, info, verify).

Sits on top of the package and uses only its public names; nothing below imports it.
Exit codes are listed in ``EXIT_CODES_EPILOG`` (shown by ``ffdb --help``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import string
import sys
from typing import BinaryIO, Iterator, NamedTuple, Sequence

from . import __version__
from .errors import FlatFileDbError
from .store import FlatFileDb
from .types import PACKED_LOCATION_BYTES, DataLocation, Slice

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

READ_CHUNK_BYTES = 1 << 20
_HEX_LOCATION_CHARS = 2 * PACKED_LOCATION_BYTES

LOCATION_HELP = f"""\
LOCATION is either the packed form printed by put ({_HEX_LOCATION_CHARS} hex digits)
or FILE_PATH:START:END; a FILE_PATH without a directory is taken inside --datadir.
"""

EXIT_CODES_EPILOG = f"""\
{LOCATION_HELP}
exit codes:
  {EXIT_OK}    success (verify: no problems found)
  {EXIT_PROBLEMS}    verify found problems
  {EXIT_ERROR}    error: bad arguments, bad location, missing file, store error
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class CliError(Exception):
    """A user error detected by the command line itself (printed, exit code 2)."""


class SegmentInfo(NamedTuple):
    """One row of ``ffdb info``."""

    segment: int
    file: str
    state: str  # "sealed" or "mutable"
    disk_bytes: int  # size of the data file
    blobs: int  # committed blobs according to the record index
    blob_bytes: int  # their total length


# -- argument parsing ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``ffdb`` (global options, then one subcommand)."""
    parser = argparse.ArgumentParser(
        prog="ffdb",
        description="Append-only flat-file BLOB store: store files as blobs, read them back, "
                    "inspect, verify.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--datadir", required=True, metavar="DIR", help="directory of the store")
    parser.add_argument("--lock", metavar="PATH",
                        help="inter-process lock file shared by every user of the store (default: DIR.lock)")
    parser.add_argument("--fsync", action="store_true",
                        help="make every stored blob durable before reporting its location")
    parser.add_argument("--version", action="version", version=f"ffdb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    put = commands.add_parser("put", help="store each FILE as one blob and print its location",
                              description="Store each FILE as one blob; print one line per file: FILE, "
                                          "file_path, start, end, packed location (hex), tab-separated.")
    put.add_argument("files", nargs="+", metavar="FILE",
                     help="file to store ('-' reads standard input)")
    put.add_argument("--json", action="store_true", help="print one JSON object per line instead")

    get = commands.add_parser("get", help="write a blob (or a slice of it) to standard output",
                              description="Write the bytes of the blob at LOCATION (or a slice of it) "
                                          "to standard output.",
                              epilog=LOCATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    get.add_argument("location", metavar="LOCATION", help="packed hex location or FILE_PATH:START:END")
    get.add_argument("--slice", nargs=2, type=int, metavar=("START", "END"),
                     help="byte range relative to the blob; END 0 means to the end of the blob")

    info = commands.add_parser("info", help="list segments and totals")
    info.add_argument("--json", action="store_true", help="print one JSON document instead")

    commands.add_parser("verify", help="check every blob against its checksum (exit 1 on problems)")
    return parser


def default_lock_path(datadir: str) -> str:
    """``<datadir>.lock`` beside the datadir (trailing slashes and ``.`` resolved first)."""
    absolute = os.path.abspath(datadir)
    return os.path.join(os.path.dirname(absolute), os.path.basename(absolute) + ".lock")


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


def put_source(db: FlatFileDb, name: str) -> DataLocation:
    """Store the contents of file ``name`` (standard input for '-') as one blob.

    The one place that reads a FILE argument. ``put`` takes bytes today, so the chunks
    are joined first; once the engine can write a blob from a stream, the chunks go
    straight to it and nothing else changes.
    """
    if name == "-":
        return db.put(b"".join(_read_chunks(sys.stdin.buffer)))
    with open(name, "rb") as stream:
        return db.put(b"".join(_read_chunks(stream)))


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK_BYTES):
        yield chunk


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


def segment_infos(db: FlatFileDb) -> list[SegmentInfo]:
    """One row per segment, oldest first; blob counts come from the record indexes."""
    counts: dict[int, tuple[int, int]] = {}
    for record in db.iter_records():
        blobs, size = counts.get(record.segment, (0, 0))
        counts[record.segment] = (blobs + 1, size + record.end_offset - record.start_offset)
    mutable = db.mutable_segment()
    rows = []
    for number in db.segments():
        path = db.segment_path(number)
        try:
            disk_bytes = os.stat(path).st_size
        except FileNotFoundError:
            continue  # deleted since it was listed
        blobs, size = counts.get(number, (0, 0))
        state = "sealed" if number < mutable else "mutable"
        rows.append(SegmentInfo(number, os.path.basename(path), state, disk_bytes, blobs, size))
    return rows


def _describe(exc: BaseException) -> str:
    """A one-line message for an expected error."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


# -- commands ----------------------------------------------------------------------------


def cmd_put(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb put FILE...``"""
    names: list[str] = args.files
    for name in names:
        location = put_source(db, name)
        packed = db.pack_location(location).hex()
        if args.json:
            _print(json.dumps({"file": name, "file_path": location.file_path,
                               "start_offset": location.start_offset, "end_offset": location.end_offset,
                               "packed": packed}))
        else:
            _print(f"{name}\t{location.file_path}\t{location.start_offset}\t{location.end_offset}\t{packed}")
        sys.stdout.flush()  # a later failure must not hide locations already stored
    return EXIT_OK


def cmd_get(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb get LOCATION [--slice START END]``"""
    location = parse_location(db, args.location)
    slice_ = Slice(*args.slice) if args.slice is not None else None
    _write_all(sys.stdout.buffer, db.get(location, slice_))
    return EXIT_OK


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write every byte or raise: a large ``BufferedWriter.write`` to a pipe whose reader
    left can report a short count instead of raising, so write in chunks and check."""
    view = memoryview(data)
    while view:
        written = out.write(view[:READ_CHUNK_BYTES])
        if not written:
            raise OSError(errno.EIO, "standard output accepted no bytes")
        view = view[written:]
    out.flush()


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


def cmd_verify(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb verify``"""
    del args
    report = db.verify()
    _print(str(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


_COMMANDS = {"put": cmd_put, "get": cmd_get, "info": cmd_info, "verify": cmd_verify}


def _run(args: argparse.Namespace) -> int:
    datadir: str = args.datadir
    if args.command == "put":
        _check_sources(args.files)  # before the store is opened (and its datadir created)
    elif not os.path.isdir(datadir):
        raise CliError(f"datadir {datadir!r} does not exist or is not a directory (put creates a store)")
    lock: str = args.lock if args.lock is not None else default_lock_path(datadir)
    with FlatFileDb(datadir, lock, fsync=args.fsync) as db:
        return _COMMANDS[args.command](db, args)


def main(argv: list[str] | None = None) -> int:
    """Run ``ffdb`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (argparse prints them)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
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


__all__ = ["CliError", "SegmentInfo", "build_parser", "default_lock_path", "main", "parse_location",
           "put_source", "segment_infos"]
