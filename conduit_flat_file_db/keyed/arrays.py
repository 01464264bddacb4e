"""Arrays in the keyed store (numpy, imported only when an array method is called; never pickle).

``put_array`` stores an array's bytes in memory order, aligned to ALIGN bytes in raw segments,
with its dtype and shape in the key's metadata; ``get_array`` maps them back without a copy.
``create_array`` gives a writable memory map of a new file in ``staging/`` that becomes a sealed
segment by rename when the with-block ends: an array larger than memory is filled in place
and committed by rename (no copy), and is never visible half-filled.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
import uuid
from typing import Any, Iterator, Mapping

import xxhash

from ..errors import FlatFileDbNotFoundError, InvalidLocationError, NotAnArrayError
from ..types import DataLocation
from .core import fcntl  # type: ignore[attr-defined]  # one import of fcntl for the package
from .index_base import IndexBase
from .keylog import Entry, Row, encode_key, encode_keylog
from .mapping import Key, MappingStore, decode_meta, encode_meta

ALIGN = 64  # bytes: every dtype's alignment, and a cache line
_MAX_FILE_BYTES = 2**63 - 1  # off_t

logger = logging.getLogger("conduit_flat_file_db")


def _numpy() -> Any:
    try:
        import numpy  # pylint: disable=import-outside-toplevel  # an optional extra

        return numpy
    except ImportError as exc:
        raise ImportError("arrays need numpy: pip install 'conduit_flat_file_db[numpy]'") from exc


def _descr(np: Any, dtype: Any) -> Any:
    if dtype.hasobject:
        raise NotAnArrayError(f"an array of dtype {dtype} holds Python objects; it would need pickle")
    return np.lib.format.dtype_to_descr(dtype)


def _shape(shape: Any) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in dims):
        raise ValueError(f"an array's shape is non-negative ints, not {shape!r}")
    return dims


class ArrayStore(MappingStore):
    """Array operations (see KeyedStore for the whole class)."""

    def _recover_locked(self, index: IndexBase, rebuild: bool = False) -> None:
        """Rebuild the index when this open's engine removed segments after a power loss: arrays
        of ``create_array`` whose fsync was not confirmed, which nothing can check. The key logs
        may have kept the records naming them (and the index applied them): the replay drops
        their PUTs (their segment is gone), so each such key has its value before, or none."""
        lost = self.db.lost_segments()
        if lost:
            logger.error(
                "%s: a power loss took segments %s (arrays whose fsync was not confirmed); rebuilding the index",
                self._dir,
                lost,
            )
        super()._recover_locked(index, rebuild or bool(lost))

    def put_array(self, key: Key, array: Any, *, meta: Mapping[str, Any] | None = None) -> None:
        """Store ``array`` (any numpy array but of object dtype) under ``key``."""
        self._check_writable("put_array")
        np = _numpy()
        arr = np.asarray(array)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)  # (which would make a 0-d array 1-d: not called for those)
        encoded = encode_key(key)
        row_meta = encode_meta(meta, (_descr(np, arr.dtype), tuple(arr.shape)))
        data = arr.reshape(-1).view(np.uint8)
        checksum = xxhash.xxh3_64_intdigest(data)
        created = time.time_ns()
        made: list[Any] = []

        def make_log(locations: list[DataLocation]) -> bytes:
            location = locations[-1]
            row = Row(self._segment_of(location), location[1], location[2], checksum, created, 0, row_meta)
            entries = [Entry(encoded, row)]
            made.extend((entries, encode_keylog(entries, created)))
            return made[1]  # type: ignore[no-any-return]  # the bytes just made

        # The padding before the array is a blob no key names: vacuum reclaims it.
        self._logged(self.db.put_logged([data], make_log, align=ALIGN), made)

    def get_array(self, key: Key) -> Any:
        """The array stored under ``key``, read-only: a zero-copy map of a raw segment (it stays
        valid after the key is deleted or vacuumed), a copy from a compressed one. KeyError when
        absent; NotAnArrayError for a value not stored as an array."""
        np = _numpy()
        encoded = encode_key(key)
        for _ in range(8):
            row = self._lookup(encoded)
            if row is None:
                raise KeyError(key)
            _, described = decode_meta(row.meta)
            if described is None:
                raise NotAnArrayError(f"key {key!r} holds bytes, not an array (use get)")
            dtype = np.lib.format.descr_to_dtype(_plain(described[0]))
            location = self._location(row)
            try:
                try:
                    buffer: Any = self.db.get_view(location)
                except InvalidLocationError:
                    buffer = self.db.get(location)  # a compressed segment: no bytes to map
            except FlatFileDbNotFoundError:
                continue  # moved by a vacuum: look it up again
            array = np.frombuffer(buffer, dtype=dtype).reshape(described[1])
            array.flags.writeable = False
            return array
        raise FlatFileDbNotFoundError(f"{self._dir}: key {key!r} kept moving while it was read")

    @contextlib.contextmanager
    def create_array(self, key: Key, shape: Any, dtype: Any, *, meta: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """A writable ``numpy.memmap`` of a new array, zero-filled, never held in memory; stored
        under ``key`` when the with-block ends without an exception (the file becomes a segment
        by rename, no copy), discarded otherwise. Until then no reader sees it; a crash leaves
        nothing visible. The map turns read-only when the block ends (views taken of it inside
        the block do not: write through them only inside it). The commit is O(1): it does not
        wait for the disk. The file is fsynced after it by the engine's sync thread (``sync()``
        and ``close()`` wait for that; with ``fsync=True`` the commit does). The value has no
        checksum, so a power loss before that fsync is confirmed costs the whole write: the next
        open removes the segment and the key has its value from before, or none; it never names
        bytes that are not its value (GUARANTEES.md "Keyed store")."""
        self._check_writable("create_array")
        np = _numpy()
        encoded = encode_key(key)
        dims = _shape(shape)
        dt = np.dtype(dtype)
        if dt.subdtype is not None:  # ("i4", (3,)): numpy maps it as more dimensions of the base type
            dt, inner = dt.subdtype
            dims += inner
        row_meta = encode_meta(meta, (_descr(np, dt), dims), unchecked=True)
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > _MAX_FILE_BYTES:
            raise ValueError(f"an array of shape {dims} of {dt} is {nbytes} bytes: more than a file can hold")
        if nbytes == 0:
            empty = np.zeros(dims, dt)
            yield empty
            self.put_array(key, empty, meta=meta)
            return
        path = os.path.join(self._staging_path(), f"array-{os.getpid()}-{uuid.uuid4().hex}.tmp")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # held while alive: the staging sweep skips this file
            _reserve(fd, nbytes)
            mapped = np.memmap(path, dtype=dt, mode="r+", shape=dims)
            try:
                yield mapped
            finally:
                # The caller may keep the map: its writes would change the committed segment
                # (sealed, unchecked, not fsynced again) under every reader of the key.
                mapped.flags.writeable = False
                del mapped
            # No msync: the map's pages are the file's page-cache pages. No fsync either (the engine's
            # fsync is False): the sync thread fsyncs the new segment after the commit, and after a
            # power loss an open removes it unless the state page says that fsync was done, so a key
            # never names pages a power loss left unwritten. The rejected alternative, an fsync here,
            # made the commit cost the writing back of every page not yet written (seconds per GiB).
            with self._no_vacuum():  # the adopted segment is named by no key until the commit
                location = self.db.adopt_file(path)
                row = Row(self._segment_of(location), location[1], location[2], 0, time.time_ns(), 0, row_meta)
                self._commit([], (), [Entry(encoded, row)])
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _reserve(fd: int, nbytes: int) -> None:
    """Give the file its blocks now: a store into a hole of a full disk would be a SIGBUS."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, nbytes)


def _plain(descr: Any) -> Any:
    """A dtype description read back from JSON: tuples where numpy wrote tuples. A structure is a
    list of fields (name, format, and a shape for a sub-array); a name is a str, or a (title,
    name) pair; a format is a str, or a structure."""
    if not isinstance(descr, list):
        return descr
    fields = []
    for name, form, *shape in descr:
        fields.append((tuple(name) if isinstance(name, list) else name, _plain(form), *map(tuple, shape)))
    return fields
