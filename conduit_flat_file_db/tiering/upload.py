"""One segment's objects put in the bucket, each checked before the manifest may name it.

The data file is read in PART_BYTES chunks, hashed on the way (XXH3-64 of the whole file, the
block sums, the MD5 of each part) and uploaded in parts. Each object is then checked: its size
by a HEAD, its bytes by the server's ETag when that is the MD5 of what was sent (one part), or
the MD5 of the parts' MD5s (several); a server whose ETag is something else gets the object
read back and its XXH3-64 compared (FORMAT.md "Object storage: Upload of segment n").
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any, Callable, Iterator

import xxhash

from ..errors import RemoteCorruptionError, TieringError
from ..fileio import pread_at, pread_full
from ..frames import SKIPPABLE_HEADER_BYTES
from ..index import REC_SEAL
from ..naming import index_name
from ..seekable import FOOTER_BYTES, parse_seek_table
from ..segment_files import index_records, read_index
from .bucket import RemoteBucket
from .manifest import (
    MANIFEST_FORMAT,
    SUM_BLOCK,
    Manifest,
    data_object,
    encode_sums,
    hex64,
    index_object,
    sums_object,
)

PART_BYTES = 8 * 2**20  # multipart upload part size (and the read chunk of an upload)


class UploadStoppedError(TieringError):
    """The store was closed while an upload waited for its turn to send; the upload is redone
    by the next open (nothing names its objects yet)."""


class Pacer:
    """Spreads uploads' bytes over time: at most ``rate`` bytes per second on average (None: no
    limit), whatever the number of objects and parts.

    A virtual clock, not a bucket of saved tokens: each ``take`` reserves the next free slot of
    ``size / rate`` seconds and waits for its start, so an idle minute earns no burst later. The
    wait ends early once ``stop`` is set (the store closes).
    """

    def __init__(self, rate: int | None, stop: threading.Event) -> None:
        self.rate = rate
        self._stop = stop
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time at which the next reservation may start

    def take(self, size: int) -> None:
        """Wait until ``size`` more bytes may go; UploadStoppedError once the store closes (also
        without a rate: close() then cuts an upload within one part, not after a whole file)."""
        if self.rate is not None:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + size / self.rate
            if start > now:
                self._stop.wait(start - now)
        if self._stop.is_set():
            raise UploadStoppedError("the store was closed during an upload; the next open redoes it")


def md5_etag(part_digests: list[bytes]) -> str:
    """The ETag S3-compatible servers give an upload of these parts (MD5 of one, MD5 of the MD5s
    and ``-count`` of several)."""
    if len(part_digests) == 1:
        return part_digests[0].hex()
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def upload_objects(  # pylint: disable=too-many-arguments,too-many-positional-arguments,too-many-locals
    bucket: RemoteBucket,
    store_id: str,
    dir_fd: int,
    dir_str: str,
    number: int,
    fd: int,
    compressed: bool,
    pacer: Pacer,
) -> Manifest | None:
    """Put segment ``number``'s index, data (``fd``) and sums, each checked; the manifest that
    describes them (not put: the caller makes it last). None when the segment has no index.
    Every byte sent or read back first waits for ``pacer``."""
    index = read_index(dir_fd, number)
    if index is None:
        return None
    seal = [r for r in index_records(dir_fd, number) if r.rtype == REC_SEAL]
    if not seal:
        raise TieringError(f"{dir_str}: segment {number} has no SEAL record; not uploaded")
    size = os.fstat(fd).st_size
    verified = "etag"
    pacer.take(len(index))
    if not _put_checked(bucket, "put_index", index_object(number), [index], len(index)):
        _read_back(bucket, index_object(number), len(index), xxhash.xxh3_64_intdigest(index), pacer)
        verified = "read-back"
    sums: list[int] = []
    whole = xxhash.xxh3_64()
    chunks = _chunks(dir_str, fd, size, sums, whole, pacer.take)
    if not _put_checked(bucket, "put_data", data_object(number, compressed), chunks, size):
        _read_back(bucket, data_object(number, compressed), size, whole.intdigest(), pacer)
        verified = "read-back"
    sums_raw = encode_sums(sums)
    pacer.take(len(sums_raw))
    if not _put_checked(bucket, "put_sums", sums_object(number), [sums_raw], len(sums_raw)):
        _read_back(bucket, sums_object(number), len(sums_raw), xxhash.xxh3_64_intdigest(sums_raw), pacer)
    table_bytes, table_sum = 0, ""
    if compressed:
        table = parse_seek_table(pread_at(fd), size)
        count = len(table.c_offsets) - 1
        entry = 12 if table.checksums is not None else 8
        table_bytes = SKIPPABLE_HEADER_BYTES + count * entry + FOOTER_BYTES
        table_sum = hex64(xxhash.xxh3_64_intdigest(pread_full(fd, table_bytes, size - table_bytes)))
    return Manifest(
        format=MANIFEST_FORMAT,
        store=store_id,
        segment=number,
        compressed=compressed,
        data_size=size,
        data_xxh3=hex64(whole.intdigest()),
        index_size=len(index),
        index_xxh3=hex64(xxhash.xxh3_64_intdigest(index)),
        limit=seal[0].offset,
        sums_xxh3=hex64(xxhash.xxh3_64_intdigest(sums_raw)),
        table_bytes=table_bytes,
        table_xxh3=table_sum,
        sealed_ns=os.stat(index_name(number), dir_fd=dir_fd).st_mtime_ns,
        verified=verified,
    )


def _chunks(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    dir_str: str, fd: int, size: int, sums: list[int], whole: Any, pace: Callable[[int], None]
) -> Iterator[bytes]:
    """The data file in PART_BYTES chunks, its block sums and whole checksum taken on the way."""
    for at in range(0, size, PART_BYTES):
        want = min(PART_BYTES, size - at)
        pace(want)
        chunk = pread_full(fd, want, at)
        if len(chunk) != want:
            raise TieringError(f"{dir_str}: a sealed data file changed size while uploaded")
        whole.update(chunk)
        view = memoryview(chunk)  # the block sums without a copy of each block
        sums.extend(xxhash.xxh3_64_intdigest(view[i : i + SUM_BLOCK]) for i in range(0, want, SUM_BLOCK))
        yield chunk


def _read_back(bucket: RemoteBucket, name: str, size: int, digest: int, pacer: Pacer) -> None:
    """Check an object whose ETag vouches for nothing (not an MD5 of what was sent): read it
    back in PART_BYTES ranges and compare its XXH3-64 with the upload's."""
    hasher = xxhash.xxh3_64()
    for at in range(0, size, PART_BYTES):
        pacer.take(min(size, at + PART_BYTES) - at)
        hasher.update(bucket.get_range("read_back", name, at, min(size, at + PART_BYTES)))
    if hasher.intdigest() != digest:
        raise RemoteCorruptionError(f"{bucket.url}/{name}: the server holds other bytes than were sent", name)


def _put_checked(bucket: RemoteBucket, kind: str, name: str, parts: Any, size: int) -> bool:
    """Upload, then check the object's size (HEAD) and, where the server's ETag is an MD5 of
    the parts sent, that too. True when the ETag vouched for the bytes."""
    digests: list[bytes] = []

    def hashed() -> Iterator[bytes]:
        for part in parts:
            digests.append(hashlib.md5(part).digest())
            yield part

    if size <= PART_BYTES:
        body = b"".join(hashed())
        etag = bucket.put(kind, name, body, size)
    else:
        etag = bucket.put(kind, name, hashed(), size, chunk=PART_BYTES)
    head = bucket.head(name)
    if head is None or head[0] != size:
        raise RemoteCorruptionError(
            f"{bucket.url}/{name}: uploaded {size} bytes, the server holds {head and head[0]}", name
        )
    expected = md5_etag(digests) if digests else hashlib.md5(b"").hexdigest()
    etag = (head[1] or etag or "").strip('"')
    if etag == expected:
        return True
    if len(etag) == 32 and "-" not in etag and len(digests) <= 1:
        raise RemoteCorruptionError(f"{bucket.url}/{name}: the server's MD5 differs from the upload's", name)
    return False


__all__ = ["PART_BYTES", "Pacer", "UploadStoppedError", "md5_etag", "upload_objects"]
