"""What every ``ffdb`` command shares: sizes, exit codes, its own error, reading LOCATION and
SEGMENT arguments, and writing to standard output."""

from __future__ import annotations

import errno
import json
import os
import string
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import DataLocation, FlatFileDb
from ..types import PACKED_LOCATION_BYTES

if TYPE_CHECKING:
    from .remote import RemoteStore

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

READ_CHUNK_BYTES = 1 << 20  # one read from a blob, one write to standard output
SMALL_BLOB_BYTES = 1 << 20  # put: inputs up to this size are grouped, larger ones streamed; get: same
BATCH_BYTES = 16 << 20  # put / get: small blobs held in memory at a time
BATCH_COUNT = 4096  # put: ... or this many of them
# A one-shot process gains nothing from a large cache of decompressed frames (an
# open blob keeps the frame it is reading itself); keep the footprint small.
CLI_FRAME_CACHE_BYTES = 4 << 20
HEX_LOCATION_CHARS = 2 * PACKED_LOCATION_BYTES
TIER_URL_ENV = "FFDB_TIER_URL"  # the default of --tier-url (and of ffdb tier --url)


class CliError(Exception):
    """A user error detected by the command line itself (printed, exit code 2)."""


def parse_location(db: FlatFileDb | RemoteStore, text: str) -> DataLocation:
    """A LOCATION argument: packed hex, or FILE_PATH:START:END (bare file names are in the datadir)."""
    if len(text) == HEX_LOCATION_CHARS and all(c in string.hexdigits for c in text):
        return db.unpack_location(bytes.fromhex(text))
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not all(p.isdecimal() for p in parts[1:]):
        raise CliError(
            f"bad location {text!r}: expected {HEX_LOCATION_CHARS} hex digits "
            "or FILE_PATH:START:END with decimal offsets"
        )
    path, start, end = parts
    if not os.path.dirname(path):
        path = os.path.join(str(db.datadir), path)
    return DataLocation(path, int(start), int(end))


def segment_arg(db: FlatFileDb, text: str) -> int | str:
    """A SEGMENT argument: its number, or a data file path (bare names are in the datadir)."""
    if text.isdecimal():
        return int(text)
    return text if os.path.dirname(text) else os.path.join(str(db.datadir), text)


def print_line(line: str) -> None:
    """One line of results on standard output."""
    sys.stdout.write(line + "\n")


def print_json(document: Any) -> None:
    """One JSON document on one line of standard output."""
    print_line(json.dumps(document))


def write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte or raise: a large ``BufferedWriter.write`` to a pipe whose reader
    left can report a short count instead of raising, so write in chunks and check."""
    view = memoryview(data)
    while view:
        written = out.write(view[:READ_CHUNK_BYTES])
        if not written:
            raise OSError(errno.EIO, "standard output accepted no bytes")
        view = view[written:]
