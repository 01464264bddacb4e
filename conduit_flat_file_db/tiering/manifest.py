"""What the tier writes in the bucket (FORMAT.md "Object storage"), and the checks of it.

Under the store's prefix::

    ffdb-tier.json                  the claim: which store owns this prefix
    segments/data_NNNNNNNN.dat      a sealed segment's data file, as it was on disk (or .dat.zst)
    segments/data_NNNNNNNN.idx      its record index
    segments/data_NNNNNNNN.sums     raw segments only: XXH3-64 of every SUM_BLOCK bytes of the data
    manifests/data_NNNNNNNN.json    the manifest: written last, after every object above was
                                    uploaded and checked; a segment without one does not exist

A reader trusts nothing but a manifest: the sizes and checksums it holds check every byte
fetched (raw blocks against the sums, compressed frames against their own checksums and the
seek table against the manifest), so a flipped or cut byte in a ranged answer never reaches
a caller, and an object left by an upload that died before its manifest is never read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

import xxhash

from ..errors import RemoteCorruptionError
from ..frames import SKIPPABLE_HEADER_BYTES
from ..naming import MAX_SEGMENT_NUMBER, index_name, segment_name
from ..seekable import FOOTER_BYTES

MANIFEST_FORMAT = 1
CLAIM_NAME = "ffdb-tier.json"
SEGMENTS = "segments"
MANIFESTS = "manifests"
SUM_BLOCK = 16 * 2**10  # a raw slice fetches the 16 KiB blocks it touches: small, and checkable
_SUMS_MAGIC = b"FFDBSUMS"
_SUMS_HEAD = struct.Struct("<8sII")  # magic, block size, reserved
TABLE_MIN_BYTES = SKIPPABLE_HEADER_BYTES + FOOTER_BYTES  # a seek table of no frames
MAX_MANIFEST_BYTES = 2**20  # a manifest or a claim is a few hundred bytes; a larger object is neither


def data_object(number: int, compressed: bool) -> str:
    """Object name of a segment's data file."""
    return f"{SEGMENTS}/{segment_name(number, compressed)}"


def index_object(number: int) -> str:
    """Object name of a segment's record index."""
    return f"{SEGMENTS}/{index_name(number)}"


def sums_object(number: int) -> str:
    """Object name of a raw segment's block checksums."""
    return f"{SEGMENTS}/data_{number:08d}.sums"


def manifest_object(number: int) -> str:
    """Object name of a segment's manifest."""
    return f"{MANIFESTS}/data_{number:08d}.json"


def parse_manifest_name(name: str) -> int | None:
    """The segment number of a manifest object name relative to ``manifests/``, else None."""
    if len(name) < 18 or not name.startswith("data_") or not name.endswith(".json"):
        return None
    return _number(name[5:-5])


def parse_segment_object(name: str) -> int | None:
    """The segment number of an object name relative to ``segments/``, else None."""
    if not name.startswith("data_"):
        return None
    return _number(name[5:].split(".", 1)[0])


def _number(digits: str) -> int | None:
    """A segment number written as 8 to 10 ASCII digits (str.isdigit alone takes other scripts'
    digits too), at most MAX_SEGMENT_NUMBER; else None: no segment's object has that name."""
    if not (digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 10):
        return None
    number = int(digits)
    return number if number <= MAX_SEGMENT_NUMBER else None


@dataclass(frozen=True)
class Manifest:
    """One uploaded segment (FORMAT.md "Object storage: Manifest")."""

    format: int
    store: str  # the id of the store that uploaded it (the claim's)
    segment: int
    compressed: bool  # the data object is a seekable Zstandard file
    data_size: int
    data_xxh3: str  # of the whole data object, hex
    index_size: int
    index_xxh3: str
    limit: int  # uncompressed bytes of the segment (its committed end)
    sums_xxh3: str  # raw: of the sums object; "" when compressed
    table_bytes: int  # compressed: the seek table's bytes at the end of the data object; 0 when raw
    table_xxh3: str  # of those bytes; "" when raw
    sealed_ns: int
    verified: str  # how the upload was checked: "etag" (the server's MD5 of what it got) or "read-back"

    @property
    def data_name(self) -> str:
        """The data object's name."""
        return data_object(self.segment, self.compressed)

    def encode(self) -> bytes:
        """The manifest as stored (JSON, sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    def same_segment(self, other: Manifest) -> bool:
        """True when ``other`` describes the same uploaded bytes (a retried upload)."""
        return (self.store, self.segment, self.compressed, self.data_xxh3, self.index_xxh3) == (
            other.store,
            other.segment,
            other.compressed,
            other.data_xxh3,
            other.index_xxh3,
        )

    @classmethod
    def decode(cls, raw: bytes, where: str, number: int | None = None) -> Manifest:
        """Parse and check a manifest; RemoteCorruptionError if it is not one this release reads,
        or (``number`` given) not the manifest of segment ``number``."""
        try:
            fields: dict[str, Any] = json.loads(raw)
            if not isinstance(fields, dict) or _bad_int(fields.get("format")) or fields["format"] != MANIFEST_FORMAT:
                raise ValueError(f"format {fields.get('format') if isinstance(fields, dict) else None!r}")
            manifest = cls(**fields)
            manifest.check()
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            raise RemoteCorruptionError(f"{where}: not a manifest this release reads ({exc})", where) from None
        if number is not None and manifest.segment != number:
            raise RemoteCorruptionError(
                f"{where}: the manifest of segment {number} names segment {manifest.segment}", where
            )
        return manifest

    def check(self) -> None:
        """ValueError unless every field has its type and the sizes fit together: a reader never
        asks for bytes outside the data object, nor past the frames the seek table lists."""
        ints = (self.segment, self.data_size, self.index_size, self.limit, self.table_bytes)
        if any(_bad_int(v) for v in ints) or self.segment > MAX_SEGMENT_NUMBER:
            raise ValueError("a size or number is not an int in [0, 2**63)")
        if isinstance(self.sealed_ns, bool) or not isinstance(self.sealed_ns, int):  # a clock may say 1969
            raise ValueError("sealed_ns is not an int")
        texts = (self.store, self.data_xxh3, self.index_xxh3, self.sums_xxh3, self.table_xxh3, self.verified)
        if not isinstance(self.compressed, bool) or not all(isinstance(v, str) for v in texts):
            raise ValueError("compressed is not a bool, or a checksum, store or verified is not a str")
        if self.compressed:
            if not TABLE_MIN_BYTES <= self.table_bytes <= self.data_size:
                raise ValueError(f"a {self.table_bytes}-byte seek table in a {self.data_size}-byte data object")
        elif self.table_bytes or self.limit > self.data_size:
            raise ValueError(f"a raw segment of {self.limit} bytes in {self.data_size} bytes, table {self.table_bytes}")


def _bad_int(value: Any) -> bool:
    """True unless ``value`` is an int (not a bool) in [0, 2**63): what a size, an offset or a
    number can be (the client's ranges are unsigned 64-bit)."""
    return isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63


def hex64(value: int) -> str:
    """A 64-bit checksum as 16 hex digits."""
    return f"{value:016x}"


def encode_sums(sums: list[int]) -> bytes:
    """The sums object: a header, then one XXH3-64 (little-endian) per SUM_BLOCK of the data."""
    return _SUMS_HEAD.pack(_SUMS_MAGIC, SUM_BLOCK, 0) + struct.pack(f"<{len(sums)}Q", *sums)


def decode_sums(raw: bytes, manifest: Manifest, where: str) -> tuple[int, tuple[int, ...]]:
    """(block size, sums) of a sums object, checked against its manifest."""
    if hex64(xxhash.xxh3_64_intdigest(raw)) != manifest.sums_xxh3 or len(raw) < _SUMS_HEAD.size:
        raise RemoteCorruptionError(f"{where}: the block checksums do not match the manifest", where)
    magic, block, _ = _SUMS_HEAD.unpack_from(raw)
    count = (len(raw) - _SUMS_HEAD.size) // 8
    if magic != _SUMS_MAGIC or block <= 0 or count != -(-manifest.data_size // block):
        raise RemoteCorruptionError(f"{where}: not a sums object for {manifest.data_size} bytes", where)
    return block, struct.unpack_from(f"<{count}Q", raw, _SUMS_HEAD.size)


__all__ = [
    "CLAIM_NAME",
    "MANIFESTS",
    "MANIFEST_FORMAT",
    "MAX_MANIFEST_BYTES",
    "SEGMENTS",
    "SUM_BLOCK",
    "Manifest",
    "data_object",
    "decode_sums",
    "encode_sums",
    "hex64",
    "index_object",
    "manifest_object",
    "parse_manifest_name",
    "parse_segment_object",
    "sums_object",
]
