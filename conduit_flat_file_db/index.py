"""The per-segment record index: the store's commit log (FORMAT.md, "Record index").

One index file per segment, ``data_{n:08d}.idx``: a 32-byte header, then fixed-size
32-byte records. A blob exists once its BLOB record is written; a segment is sealed
once its SEAL record is written. This module only encodes and decodes bytes; it does
no I/O of its own.
"""

from __future__ import annotations

import enum
import functools
import struct
import zlib
from typing import Any, Iterable, Iterator, NamedTuple

import xxhash

from .errors import FormatError, IndexVersionError

# FORMAT.md "Record index: header".
INDEX_MAGIC = b"FFDB-IDX"
INDEX_VERSION = 1  # what a store writes unless it is opened with log_records=True
INDEX_VERSION_LOG = 2  # BLOB records may carry FLAG_LOG; the newest version this release reads


class SegmentKind(enum.IntEnum):
    """What a segment's data file holds (the index header's kind byte)."""

    RAW = 0  # the blobs, concatenated: data_{n:08d}.dat
    ZSTD = 1  # Zstandard frames in the seekable format: data_{n:08d}.dat.zst


# The members under module names: the code compares kinds on hot paths, where a module global
# is one lookup and SegmentKind.ZSTD two. They are the enum members, so they print as such.
KIND_RAW = SegmentKind.RAW
KIND_ZSTD = SegmentKind.ZSTD
HEADER_BYTES = 32
_HEADER = struct.Struct("<8sHBBIQI")  # 28 bytes, then the crc32 of those 28 bytes
_U32 = struct.Struct("<I")

# FORMAT.md "Record index: records".
RECORD_BYTES = 32


class RecordType(enum.IntEnum):
    """The type byte of an index record."""

    BLOB = 1  # a blob committed: its offset, length and checksum
    FRAME = 2  # a frame of a compressed segment written (committed by the BLOB records after it)
    SEAL = 3  # the segment is sealed: nothing follows


# The members under module names, for the same reason as KIND_RAW and KIND_ZSTD.
REC_BLOB = RecordType.BLOB
REC_FRAME = RecordType.FRAME
REC_SEAL = RecordType.SEAL
FLAG_LEGACY_EXTENT = 0x01  # bytes written by an engine without an index: blob bounds unknown
FLAG_UNCHECKED = 0x02  # adopted without reading it: extra holds no checksum, verify computes none
FLAG_STORED = 0x04  # FRAME record of a stored (uncompressed) frame: sealing re-frames the segment
FLAG_LOG = 0x08  # BLOB record of a log record of a layer above the engine (index version 2 only)
_PREFIX = struct.Struct("<BBHI")  # type, flags, reserved, crc32
_BODY = struct.Struct("<QQQ")
_RECORD = struct.Struct("<BBHIQQQ")
_RECORD_TYPES = frozenset((REC_BLOB, REC_FRAME, REC_SEAL))

blob_checksum = xxhash.xxh3_64_intdigest
"""Checksum of a blob's bytes: XXH3-64, seed 0 (FORMAT.md "Checksums")."""


def _record_crc(prefix4: bytes, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(prefix4))


_BLOB_PREFIX = bytes((REC_BLOB, 0, 0, 0))
_BLOB_PREFIX_CRC = zlib.crc32(_BLOB_PREFIX)
_BLOB_RECORD = struct.Struct("<4sIQQQ")  # the BLOB prefix bytes, crc, body


class IndexHeader(NamedTuple):
    """Decoded index header."""

    version: int
    kind: SegmentKind
    flags: int
    segment: int
    created_ns: int


_FRAME_SIZE_SPLIT = 2**32  # a FRAME record's size word: compressed size above, uncompressed size below
_FRAME_SIZE_MASK = _FRAME_SIZE_SPLIT - 1


class Record(NamedTuple):
    """One decoded index record: its type, its flags and three 64-bit words.

    The words are named by what they hold in every record type; read them through the
    properties named for one type where that reads better (FORMAT.md "Record index: records"):

    ====== ======================== ============================================ ===========================
    rtype  ``offset``               ``size``                                     ``extra``
    ====== ======================== ============================================ ===========================
    BLOB   start of the blob        length of the blob                           XXH3-64 of the blob
    FRAME  uncompressed start       compressed size << 32 | uncompressed size    compressed start
    SEAL   final uncompressed size  blob count                                   final size of the data
                                                                                 file on disk
    ====== ======================== ============================================ ===========================

    ``offset`` is always an uncompressed offset; in every BLOB and SEAL record it is where the
    blobs before it end (see :func:`blob_starts`).
    """

    rtype: int
    flags: int
    offset: int
    size: int
    extra: int

    @property
    def end(self) -> int:
        """BLOB: the offset just past the blob."""
        return self.offset + self.size

    @property
    def checksum(self) -> int:
        """BLOB: the XXH3-64 of the blob (0 with FLAG_UNCHECKED)."""
        return self.extra

    @property
    def compressed_start(self) -> int:
        """FRAME: where the frame starts in the data file."""
        return self.extra

    @property
    def compressed_size(self) -> int:
        """FRAME: the frame's size in the data file."""
        return self.size // _FRAME_SIZE_SPLIT

    @property
    def uncompressed_size(self) -> int:
        """FRAME: how many bytes the frame decompresses to."""
        return self.size % _FRAME_SIZE_SPLIT

    @property
    def blob_count(self) -> int:
        """SEAL: how many BLOB records the sealed segment has."""
        return self.size

    @property
    def disk_size(self) -> int:
        """SEAL: the final size of the data file on disk."""
        return self.extra


def encode_header(segment: int, kind: int, created_ns: int, version: int = INDEX_VERSION) -> bytes:
    """The 32 header bytes of a new index file."""
    head = _HEADER.pack(INDEX_MAGIC, version, kind, 0, segment, created_ns, 0)
    return head + _U32.pack(zlib.crc32(head))


def decode_header(buf: bytes, path: str, segment: int | None = None) -> IndexHeader:
    """Decode and check a header; raises FormatError naming ``path``.

    With ``segment``: also refuses a header that names another segment (an index file moved or
    copied over this segment's), whose records describe another data file."""
    if len(buf) < HEADER_BYTES:
        raise FormatError(f"{path}: index header is {len(buf)} bytes, expected {HEADER_BYTES}")
    head = buf[: HEADER_BYTES - 4]
    (crc,) = _U32.unpack_from(buf, HEADER_BYTES - 4)
    magic, version, kind, flags, number, created_ns, _reserved = _HEADER.unpack(head)
    if magic != INDEX_MAGIC:
        raise FormatError(f"{path}: not a record index (magic {magic!r} at offset 0)")
    if zlib.crc32(head) != crc:
        raise FormatError(f"{path}: index header checksum mismatch at offset 0")
    if version > INDEX_VERSION_LOG:
        raise IndexVersionError(
            f"{path}: index version {version} was written by a newer release of conduit_flat_file_db"
            f" (this one reads versions 1 to {INDEX_VERSION_LOG}); upgrade to open this store"
        )
    if version < INDEX_VERSION:
        raise FormatError(f"{path}: index version {version} is not a version of this format")
    if kind not in (KIND_RAW, KIND_ZSTD):
        raise FormatError(f"{path}: unknown segment kind {kind} in index header")
    if segment is not None and number != segment:
        raise FormatError(
            f"{path}: the index header names segment {number}, not {segment}: the file belongs to another "
            "segment (moved or copied over this one?)"
        )
    return IndexHeader(version, SegmentKind(kind), flags, number, created_ns)


def encode_blob(start: int, length: int, checksum: int) -> bytes:
    """A BLOB record: the commit of ``length`` bytes at ``start``."""
    return _BLOB_RECORD.pack(
        _BLOB_PREFIX, zlib.crc32(_BODY.pack(start, length, checksum), _BLOB_PREFIX_CRC), start, length, checksum
    )


_LOG_PREFIX = bytes((REC_BLOB, FLAG_LOG, 0, 0))
_LOG_PREFIX_CRC = zlib.crc32(_LOG_PREFIX)


def encode_log_blob(start: int, length: int, checksum: int) -> bytes:
    """A BLOB record with FLAG_LOG: the commit of a log record of ``length`` bytes at ``start``
    (encode_record's work for this one kind, as encode_blob does for plain blobs)."""
    return _BLOB_RECORD.pack(
        _LOG_PREFIX, zlib.crc32(_BODY.pack(start, length, checksum), _LOG_PREFIX_CRC), start, length, checksum
    )


_BLOB_AND_LOG = struct.Struct("<4sIQQQ4sIQQQ")  # a BLOB record, then a BLOB record flagged LOG


def encode_blob_and_log(start: int, length: int, checksum: int, log_length: int, log_checksum: int) -> bytes:
    """encode_blob(start, length, checksum) + encode_log_blob(start + length, log_length,
    log_checksum) in one pack: a value and the log record right after it (their commit)."""
    log_start = start + length
    body = _BODY.pack
    return _BLOB_AND_LOG.pack(
        _BLOB_PREFIX,
        zlib.crc32(body(start, length, checksum), _BLOB_PREFIX_CRC),
        start,
        length,
        checksum,
        _LOG_PREFIX,
        zlib.crc32(body(log_start, log_length, log_checksum), _LOG_PREFIX_CRC),
        log_start,
        log_length,
        log_checksum,
    )


def encode_record(rtype: int, flags: int, a: int, b: int, c: int) -> bytes:
    """Any record (BLOB, FRAME, SEAL) with its checksum."""
    body = _BODY.pack(a, b, c)
    crc = _record_crc(bytes((rtype, flags, 0, 0)), body)
    return _PREFIX.pack(rtype, flags, 0, crc) + body


def encode_seal(uncompressed_size: int, blob_count: int, disk_size: int) -> bytes:
    """The SEAL record that makes a segment immutable."""
    return encode_record(REC_SEAL, 0, uncompressed_size, blob_count, disk_size)


def encode_frame(flags: int, u_start: int, csize: int, dsize: int, c_start: int) -> bytes:
    """A FRAME record: a frame of ``csize`` bytes at ``c_start`` in the file holding uncompressed
    bytes [u_start, u_start + dsize).

    Does encode_record's work itself rather than calling it: it runs for each frame of a put
    into a compressed segment, whose Python call count is pinned."""
    body = _BODY.pack(u_start, csize * _FRAME_SIZE_SPLIT + dsize, c_start)
    crc = _record_crc(bytes((REC_FRAME, flags, 0, 0)), body)
    return _PREFIX.pack(REC_FRAME, flags, 0, crc) + body


_STORED_FRAME_PREFIX = bytes((REC_FRAME, FLAG_STORED, 0, 0))
_STORED_FRAME_PREFIX_CRC = zlib.crc32(_STORED_FRAME_PREFIX)
_FRAME_AND_BLOB = struct.Struct("<4sIQQQ4sIQQQ")  # a FRAME record, then a BLOB record


def pack_stored_commit_into(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    buffer: Any, at: int, start: int, csize: int, c_start: int, length: int, checksum: int
) -> None:
    """Store at ``buffer[at:at + 64]`` the records of one blob of ``length`` bytes at ``start``
    held alone by a stored frame of ``csize`` bytes at ``c_start``: its FRAME record (STORED)
    and its BLOB record, as encode_frame and encode_blob make them, in one pack (the commit of
    a small put into a compressed segment, which writes them through a map)."""
    frame_body = _BODY.pack(start, csize * _FRAME_SIZE_SPLIT + length, c_start)
    blob_body = _BODY.pack(start, length, checksum)
    _FRAME_AND_BLOB.pack_into(
        buffer,
        at,
        _STORED_FRAME_PREFIX,
        zlib.crc32(frame_body, _STORED_FRAME_PREFIX_CRC),
        start,
        csize * _FRAME_SIZE_SPLIT + length,
        c_start,
        _BLOB_PREFIX,
        zlib.crc32(blob_body, _BLOB_PREFIX_CRC),
        start,
        length,
        checksum,
    )


_SIZE_FIELD = struct.Struct("<16xQ8x")  # a record's size field alone


def frame_summary(raw: bytes | memoryview) -> tuple[int, bool, int]:
    """(FRAME records, whether one is flagged STORED, the uncompressed bytes they hold) among the
    index records ``raw`` (an index from offset HEADER_BYTES), read from their type, flags and
    size fields alone, without each record's CRC: for deciding whether re-framing a sealed
    segment pays, never for finding data. A sealed segment of small puts has hundreds of
    thousands of records, which decode_records takes about a second to build and check."""
    view = memoryview(raw).cast("B")
    view = view[: len(view) - len(view) % RECORD_BYTES]
    types = bytes(view[0::RECORD_BYTES])
    frames = types.count(REC_FRAME)
    if not frames:
        return 0, False, 0
    flags = bytes(view[1::RECORD_BYTES])
    stored = any(rtype == REC_FRAME and flag & FLAG_STORED for rtype, flag in zip(types, flags))
    size = sum(
        field & _FRAME_SIZE_MASK for (field,), rtype in zip(_SIZE_FIELD.iter_unpack(view), types) if rtype == REC_FRAME
    )
    return frames, stored, size


def frame_sizes(records: Iterable[Record]) -> list[tuple[int, int]]:
    """(compressed size, uncompressed size) of each FRAME record among ``records``, in order."""
    return [divmod(r.size, _FRAME_SIZE_SPLIT) for r in records if r.rtype == REC_FRAME]


def blob_starts(records: Iterable[Record]) -> Iterator[tuple[int, Record, int]]:
    """Each BLOB and SEAL record with its position in ``records`` and where the BLOB records
    before it end: the one walk of blob contiguity. The blobs of a segment are contiguous from
    offset 0 when every record's ``offset`` equals that end (a BLOB starts there, a SEAL ends there)."""
    end = 0
    for position, record in enumerate(records):
        if record.rtype == REC_BLOB:
            yield position, record, end
            end = record.offset + record.size
        elif record.rtype == REC_SEAL:
            yield position, record, end


def contiguous(records: Iterable[Record]) -> bool:
    """Whether the BLOB records among ``records`` follow each other from offset 0, and each SEAL
    record among them gives the size they end at."""
    return all(record.offset == end for _, record, end in blob_starts(records))


class RecordScan(NamedTuple):
    """Result of decoding a run of records.

    ``records`` is the longest valid prefix; ``valid_bytes`` its length in bytes;
    ``problem`` says why decoding stopped early (None when every byte decoded).
    """

    records: list[Record]
    valid_bytes: int
    problem: str | None


_new_record = functools.partial(tuple.__new__, Record)  # Record(...) without NamedTuple.__new__'s Python frame
# CRC-32 of the first 4 bytes of a record of each known type and flags (reserved bytes 0).
_PREFIX_CRCS = {
    rtype << 8 | flags: zlib.crc32(bytes((rtype, flags, 0, 0))) for rtype in _RECORD_TYPES for flags in range(256)
}


def decode_records(buf: bytes | memoryview) -> RecordScan:
    """Decode records until the first one that is torn or fails its checksum."""
    view = memoryview(buf)
    whole = len(view) - len(view) % RECORD_BYTES
    records: list[Record] = []
    append = records.append
    offset = 0
    crc32 = zlib.crc32
    prefix_crcs = _PREFIX_CRCS
    # iter_unpack walks the records in C; the loop only checks each and builds its Record. The
    # CRC of a record's first 4 bytes (type, flags, reserved) comes from a table when the type
    # is known and the reserved bytes are 0 (as every writer leaves them), else is computed.
    for rtype, flags, res, crc, a, b, c in _RECORD.iter_unpack(view[:whole]):
        head = prefix_crcs.get(rtype << 8 | flags) if not res else None
        if head is None:
            head = crc32(view[offset : offset + 4])
        if crc32(view[offset + 8 : offset + RECORD_BYTES], head) != crc:
            return RecordScan(records, offset, f"record checksum mismatch at record offset {offset}")
        if rtype not in _RECORD_TYPES:
            return RecordScan(records, offset, f"unknown record type {rtype} at record offset {offset}")
        append(_new_record((rtype, flags, a, b, c)))
        offset += RECORD_BYTES
    if whole != len(view):
        return RecordScan(records, whole, f"torn record of {len(view) - whole} bytes at record offset {whole}")
    return RecordScan(records, whole, None)


def valid_record_bytes(buf: bytes | memoryview) -> int:
    """How many bytes of whole, valid records ``buf`` starts with: where :func:`decode_records`
    would stop (torn, failing its checksum, of an unknown type), without building a Record."""
    view = memoryview(buf)
    whole = len(view) - len(view) % RECORD_BYTES
    offset = 0
    crc32 = zlib.crc32
    for rtype, _flags, _res, crc, _a, _b, _c in _RECORD.iter_unpack(view[:whole]):
        if (
            rtype not in _RECORD_TYPES
            or crc32(view[offset + 8 : offset + RECORD_BYTES], crc32(view[offset : offset + 4])) != crc
        ):
            break
        offset += RECORD_BYTES
    return offset


def scan_frame_records(buf: bytes | memoryview) -> tuple[list[int], int, int]:
    """What a reader of a compressed mutable segment needs of the records in ``buf``, checked as
    :func:`decode_records` checks them and up to the same first bad record: (the size word of
    each FRAME record in order, the offset of the SEAL record or -1, the bytes of valid records).
    No Record is built: a reader's first read of a large compressed mutable segment walks
    hundreds of thousands of records, and building them took three quarters of that time."""
    view = memoryview(buf)
    whole = len(view) - len(view) % RECORD_BYTES
    sizes: list[int] = []
    seal = -1
    offset = 0
    crc32 = zlib.crc32
    for rtype, _flags, _res, crc, a, b, _c in _RECORD.iter_unpack(view[:whole]):
        if crc32(view[offset + 8 : offset + RECORD_BYTES], crc32(view[offset : offset + 4])) != crc:
            break
        if rtype == REC_FRAME:
            sizes.append(b)
        elif rtype == REC_SEAL:
            seal = a
        elif rtype != REC_BLOB:
            break
        offset += RECORD_BYTES
    return sizes, seal, offset
