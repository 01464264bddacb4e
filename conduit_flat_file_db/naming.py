"""The only code that builds or parses the names of the store's files (FORMAT.md, "Files")."""

from __future__ import annotations

import os
import re

SEGMENT_PREFIX = "data_"
RAW_SUFFIX = ".dat"
ZSTD_SUFFIX = ".dat.zst"
INDEX_SUFFIX = ".idx"
STATE_FILE_NAME = "ffdb.state"
# Scratch files (re-framing, recompression, adoption) are ``.tmp-{pid}-{name}``; an
# opener removes those whose process is gone.
TEMP_PREFIX = ".tmp-"

_SEGMENT_RE = re.compile(r"data_([0-9]{8,10})(\.dat|\.dat\.zst|\.idx)\Z")
MAX_SEGMENT_NUMBER = 0xFFFFFFFF


def segment_name(number: int, compressed: bool) -> str:
    """File name of segment ``number``: ``data_00000007.dat`` or ``data_00000007.dat.zst``."""
    return f"{SEGMENT_PREFIX}{number:08d}{ZSTD_SUFFIX if compressed else RAW_SUFFIX}"


def index_name(number: int) -> str:
    """File name of the record index of segment ``number``: ``data_00000007.idx``."""
    return f"{SEGMENT_PREFIX}{number:08d}{INDEX_SUFFIX}"


def parse_name(name: str) -> tuple[int, str] | None:
    """Split a store file name into (segment number, suffix), or None if it is not one.

    The suffix is one of RAW_SUFFIX, ZSTD_SUFFIX, INDEX_SUFFIX.
    """
    match = _SEGMENT_RE.match(name)
    if match is None:
        return None
    number = int(match.group(1))
    if number > MAX_SEGMENT_NUMBER:
        return None
    return number, match.group(2)


def parse_segment_name(name: str) -> int | None:
    """The number of a data segment file name (``.dat`` or ``.dat.zst``), else None."""
    parsed = parse_name(name)
    if parsed is None or parsed[1] == INDEX_SUFFIX:
        return None
    return parsed[0]


def temp_name(name: str) -> str:
    """A scratch name for ``name`` owned by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}-{name}"


def temp_owner(name: str) -> int | None:
    """The pid that owns a scratch file name, or None if ``name`` is not one (or has no pid)."""
    if not name.startswith(TEMP_PREFIX):
        return None
    pid, _, rest = name[len(TEMP_PREFIX):].partition("-")
    return int(pid) if pid.isdecimal() and rest else 0
