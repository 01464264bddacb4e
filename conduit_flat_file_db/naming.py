"""The only code that builds or parses the names of the store's files (FORMAT.md, "Files")."""

from __future__ import annotations

import os
import re

SEGMENT_PREFIX = "data_"
RAW_SUFFIX = ".dat"
ZSTD_SUFFIX = ".dat.zst"
INDEX_SUFFIX = ".idx"
# A sealed segment uploaded to the object-storage tier: the file holds its manifest. With the
# data file gone (local retention), the segment's bytes live only in the bucket.
REMOTE_SUFFIX = ".remote"
TIER_FILE_NAME = "ffdb.tier"  # which bucket prefix the store's tier uses, and the store's id there
STATE_FILE_NAME = "ffdb.state"
# Scratch files (re-framing, recompression, adoption) are ``.tmp-{pid}-{name}``; an
# opener removes those whose process is gone.
TEMP_PREFIX = ".tmp-"

_SEGMENT_RE = re.compile(r"data_([0-9]{8,10})(\.dat|\.dat\.zst|\.idx|\.remote)\Z")
# Exactly what temp_name makes: a positive pid without leading zeros, a dash, a non-empty rest.
_TEMP_RE = re.compile(r"\.tmp-([1-9][0-9]*)-(.+)\Z", re.DOTALL)
MAX_SEGMENT_NUMBER = 0xFFFFFFFF  # the index header holds it in a u32 (FORMAT.md "Record index")


def segment_name(number: int, compressed: bool) -> str:
    """File name of segment ``number``: ``data_00000007.dat`` or ``data_00000007.dat.zst``."""
    return f"{SEGMENT_PREFIX}{number:08d}{ZSTD_SUFFIX if compressed else RAW_SUFFIX}"


def index_name(number: int) -> str:
    """File name of the record index of segment ``number``: ``data_00000007.idx``."""
    return f"{SEGMENT_PREFIX}{number:08d}{INDEX_SUFFIX}"


def remote_name(number: int) -> str:
    """File name of the marker of an uploaded segment: ``data_00000007.remote``."""
    return f"{SEGMENT_PREFIX}{number:08d}{REMOTE_SUFFIX}"


def parse_name(name: str) -> tuple[int, str] | None:
    """Split a store file name into (segment number, suffix), or None if it is not one.

    The suffix is one of RAW_SUFFIX, ZSTD_SUFFIX, INDEX_SUFFIX, REMOTE_SUFFIX.
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
    if parsed is None or parsed[1] in (INDEX_SUFFIX, REMOTE_SUFFIX):
        return None
    return parsed[0]


def temp_name(name: str) -> str:
    """A scratch name for ``name`` owned by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}-{name}"


def temp_owner(name: str) -> int | None:
    """The pid that owns a scratch file name, or None if ``name`` is not one.

    Only names of the exact form temp_name makes (``.tmp-{pid}-{rest}``) are scratch
    files: an opener removes those of dead processes, so a user's ``.tmp-notes`` or
    ``.tmp-x-y`` must not match (a looser prefix test once removed such files).
    """
    match = _TEMP_RE.match(name)
    return int(match.group(1)) if match is not None else None
