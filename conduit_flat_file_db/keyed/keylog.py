"""The key log: what a keyed store commits beside its values (FORMAT.md "Key log").

Each write of a keyed store appends its values to the engine with ``put_many`` and then one
*key-log record* with ``put_log``: a blob flagged LOG in the record index that names, for
each key, the location of its value (PUT) or its deletion (DEL). The engine's commit of that
record is the durable truth; the index file (SQLite or LMDB) is a cache of the key logs
replayed in commit order, which a store can always rebuild from its segments.

This module only encodes and decodes bytes.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from ..errors import FormatError, IndexVersionError, InvalidKeyError, KeyTooLongError

KEYLOG_MAGIC = b"FFKEYLOG"
KEYLOG_VERSION = 1
_HEADER = struct.Struct("<8sHHIQ")  # magic, version, flags, entry count, written_ns: 24 bytes
_ENTRY = struct.Struct("<BBHI")  # op, key kind, key length, meta length: 8 bytes
_WHERE = struct.Struct("<IQQQQ")  # PUT: segment, start, end, checksum, created_ns: 36 bytes
_PUT_ENTRY = struct.Struct("<BBHIIQQQQ")  # _ENTRY then _WHERE, packed at once
OP_PUT = 1
OP_DEL = 2
_ONE_PUT = struct.Struct("<8sHHIQBBHIIQQQQ")  # _HEADER then one _PUT_ENTRY: the record of one s[k] = v
_new_tuple = tuple.__new__
_KIND_BYTES = (b"\x00", b"\x01")
MAX_KEY_BYTES = 511  # an encoded key (kind byte + key): LMDB's default key limit, kept for both indexes


class Row(NamedTuple):
    """Where a key's value is, as the index keeps it.

    ``logseg`` is the segment holding the key-log record that wrote this row: vacuum must
    write the row again before it deletes that segment, or a rebuild would not find it.
    ``meta`` is the JSON object of the value's metadata (user metadata, array shape), or b"".
    """

    segment: int
    start: int
    end: int
    checksum: int
    created_ns: int
    logseg: int
    meta: bytes


new_row = functools.partial(tuple.__new__, Row)
"""Row(...) from one tuple of its fields, without NamedTuple.__new__'s Python frame (hot paths)."""


class Entry(NamedTuple):
    """One key's change in a key-log record: a PUT with its row, or a DEL (row None)."""

    key: bytes  # the encoded key (see encode_key)
    row: Row | None


def encode_key(key: object) -> bytes:
    """The index form of a key: b"\\x00" + bytes, or b"\\x01" + UTF-8 of a str.

    A str and a bytes key with the same bytes are different keys, as in a dict; bytes keys
    sort before str keys. Raises InvalidKeyError for any other type or a key too long."""
    if isinstance(key, str):
        try:
            encoded = b"\x01" + key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"key {key!r} is not encodable as UTF-8: {exc}") from None
    elif isinstance(key, bytes):
        encoded = b"\x00" + key
    elif isinstance(key, (bytearray, memoryview)):
        encoded = b"\x00" + bytes(key)
    else:
        raise InvalidKeyError(f"a key is str or bytes, not {type(key).__name__}")
    if len(encoded) > MAX_KEY_BYTES:
        raise KeyTooLongError(f"a key is at most {MAX_KEY_BYTES - 1} bytes (UTF-8 for str); got {len(encoded) - 1}")
    return encoded


def decode_key(encoded: bytes) -> str | bytes:
    """Inverse of encode_key."""
    if encoded[:1] == b"\x01":
        return encoded[1:].decode("utf-8")
    return encoded[1:]


def encode_keylog(entries: list[Entry], written_ns: int) -> bytes:
    """One key-log record holding ``entries`` in order (a later entry for a key wins)."""
    parts = [_HEADER.pack(KEYLOG_MAGIC, KEYLOG_VERSION, 0, len(entries), written_ns)]
    append = parts.append
    put = _PUT_ENTRY.pack
    for key, row in entries:
        if row is None:
            append(_ENTRY.pack(OP_DEL, key[0], len(key) - 1, 0))
            append(key[1:])
        else:
            segment, start, end, checksum, created_ns, _, meta = row
            append(put(OP_PUT, key[0], len(key) - 1, len(meta), segment, start, end, checksum, created_ns))
            append(key[1:])
            append(meta)
    return b"".join(parts)


def encode_one_put(  # pylint: disable=too-many-arguments,too-many-positional-arguments  # one call, hot path
    key: bytes, segment: int, start: int, end: int, checksum: int, created_ns: int, meta: bytes
) -> bytes:
    """encode_keylog([Entry(key, Row(segment, start, end, checksum, created_ns, 0, meta))],
    created_ns) in one pack: the record of one ``s[k] = v`` (its hot path)."""
    return (
        _ONE_PUT.pack(
            KEYLOG_MAGIC,
            KEYLOG_VERSION,
            0,
            1,
            created_ns,
            OP_PUT,
            key[0],
            len(key) - 1,
            len(meta),
            segment,
            start,
            end,
            checksum,
            created_ns,
        )
        + key[1:]
        + meta
    )


def _decode_entry(buf: bytes, offset: int, logseg: int, where: str) -> tuple[Entry, int]:
    """The entry at ``offset`` and the offset after it (struct.error when cut short)."""
    op, kind, key_len, meta_len = _ENTRY.unpack_from(buf, offset)
    offset += _ENTRY.size
    if op == OP_DEL and not meta_len:
        where_fields = None
    elif op == OP_PUT:
        where_fields = _WHERE.unpack_from(buf, offset)
        offset += _WHERE.size
    else:
        raise FormatError(f"{where}: bad key-log entry (op {op}) at offset {offset - _ENTRY.size}")
    key = bytes((kind,)) + buf[offset : offset + key_len]
    offset += key_len
    if kind not in (0, 1) or len(key) != key_len + 1:
        raise FormatError(f"{where}: bad key in key-log entry at offset {offset - key_len}")
    if where_fields is None:
        return Entry(key, None), offset
    segment, start, end, checksum, created_ns = where_fields
    meta = buf[offset : offset + meta_len]
    offset += meta_len
    if len(meta) != meta_len or start > end:
        raise FormatError(f"{where}: key-log entry cut short or inverted at offset {offset}")
    return Entry(key, Row(segment, start, end, checksum, created_ns, logseg, bytes(meta))), offset


def decode_keylog(buf: bytes, logseg: int, where: str) -> tuple[int, list[Entry]]:
    """(written_ns, entries) of a key-log record; its PUT rows get ``logseg``.

    Raises FormatError naming ``where`` for bytes that are not a whole key-log record; a
    record of a newer KEYLOG_VERSION is refused the same way, never half-read."""
    size = len(buf)
    if size >= _ONE_PUT.size:  # the record of one put, checked and built in a few operations
        magic, version, _flags, count, written_ns, op, kind, key_len, meta_len, *where_fields = _ONE_PUT.unpack_from(
            buf, 0
        )
        key_end = _ONE_PUT.size + key_len
        if (  # pylint: disable=too-many-boolean-expressions
            count == 1
            and op == OP_PUT
            and key_end + meta_len == size
            and kind <= 1
            and where_fields[1] <= where_fields[2]
            and magic == KEYLOG_MAGIC
            and version == KEYLOG_VERSION
        ):
            row = _new_tuple(Row, (*where_fields, logseg, bytes(buf[key_end:])))
            return written_ns, [_new_tuple(Entry, (_KIND_BYTES[kind] + buf[_ONE_PUT.size : key_end], row))]
    if size < _HEADER.size:
        raise FormatError(f"{where}: key-log record of {len(buf)} bytes is shorter than its header")
    magic, version, _flags, count, written_ns = _HEADER.unpack_from(buf, 0)
    if magic != KEYLOG_MAGIC:
        raise FormatError(f"{where}: not a key-log record (magic {magic!r})")
    if version != KEYLOG_VERSION:
        raise IndexVersionError(
            f"{where}: key-log version {version} is not supported (this release reads {KEYLOG_VERSION})"
        )
    entries: list[Entry] = []
    offset = _HEADER.size
    try:
        for _ in range(count):
            entry, offset = _decode_entry(buf, offset, logseg, where)
            entries.append(entry)
    except struct.error:
        raise FormatError(f"{where}: key-log record cut short at offset {offset}") from None
    if offset != len(buf):
        raise FormatError(f"{where}: {len(buf) - offset} bytes after the last key-log entry")
    return written_ns, entries
