"""The read side of a store: resolving locations to open segments, without any lock.

A location resolves only to a segment file of this datadir: the directory part
must be the datadir itself (compared by device and inode), the name must be a
segment name, and files are opened relative to the datadir's descriptor with
``O_NOFOLLOW``. Open segments are cached; a descriptor is closed only when the
last thread using it lets go (CPython reference counting), so a descriptor number
is never reused under a read that is about to run.
"""

from __future__ import annotations

import errno
import io
import itertools
import mmap
import operator
import os
import resource
import threading
from bisect import bisect_right
from typing import Any, Callable

from .errors import CorruptionError, FlatFileDbNotFoundError, InvalidLocationError
from .fileio import finish_pread, pread_at, pread_exact, pread_full
from .frames import STORED_PROBE_BYTES, FrameCache, stored_payload
from .index import HEADER_BYTES, KIND_RAW, decode_header, scan_frame_records
from .naming import index_name, parse_segment_name, remote_name, segment_name
from .sealed_check import check_blobs, check_sealed_files, read_mutable_index, read_sealed_index
from .seekable import FrameTable, parse_seek_table, read_frame, read_frames
from .segment_files import open_data_file, open_regular, valid_records_from
from .state import W_EPOCH, MutableView, StateSource
from .types import Slice

_reader_tokens = itertools.count()
MAX_CACHED_PATHS = 4096
MAX_OPEN_SEGMENTS = 1024
REMAP_MIN_BYTES = 4 * 2**20
# Reads up to this size are copied out of the map (no syscall); larger ones use pread, so
# reading a big blob never leaves the whole of it mapped in (and counted in) the process.
MAP_READ_BYTES = 256 * 2**10
NEAR_FRAMES = 64  # how far from its guessed frame a compressed read searches first


class SegmentReader:
    """One open segment. ``limit``: bytes [0, limit) of its uncompressed space are committed."""

    REMOTE = False  # a segment read from the object-storage tier (tiering.remote_reader)

    __slots__ = (
        "__weakref__",
        "cache",
        "cache_key",
        "fd",
        "index_fd",
        "index_loaded",
        "limit",
        "mapped",
        "mm",
        "mutable",
        "name",
        "number",
        "raw",
        "stored",
        "table",
        "view",
    )

    def __init__(self, number: int, fd: int, name: str, limit: int, mutable: bool) -> None:
        self.number = number
        self.fd = fd
        self.name = name
        self.limit = limit
        self.mutable = mutable
        self.raw = True
        self.table: FrameTable | None = None
        self.index_fd = -1
        self.index_loaded = HEADER_BYTES
        self.cache: FrameCache | None = None
        self.cache_key = next(_reader_tokens)  # never (device, inode): inode numbers are reused at once
        # Raw segments are read through a read-only map of their committed bytes: a
        # slice of a map is a memcpy, no syscall. Bytes past ``mapped`` use pread.
        self.mm: mmap.mmap | None = None
        self.view: memoryview | None = None  # of ``mm``, for zero-copy slices
        self.mapped = 0
        # Per frame of a compressed segment: where its bytes start in the file if it is a
        # one-block stored frame (read slices of it directly), -1 if not, 0 if not probed yet.
        self.stored: dict[int, int] = {}

    def __del__(self) -> None:
        for fd in (self.fd, self.index_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def remap(self) -> None:
        """Map [0, limit) of a raw segment (the old map stays valid for whoever still holds it)."""
        if self.limit <= self.mapped:
            return
        try:
            mm = mmap.mmap(self.fd, self.limit, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return  # e.g. a filesystem without mmap: pread keeps working
        self.view = memoryview(mm)
        self.mm = mm
        self.mapped = self.limit

    def frame(self, index: int) -> bytes:
        """Decompressed frame ``index`` of a compressed segment (cached)."""
        cache = self.cache
        key = (self.cache_key, index)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                return hit
        table = self.table
        assert table is not None  # only compressed readers call this
        out = read_frame(self.fd, table, index, self.name)
        if cache is not None:
            cache.put(key, out)
        return out

    def read(self, start: int, end: int) -> bytes:  # pylint: disable=too-many-return-statements  # one per path, no calls between
        """Uncompressed bytes [start, end) (already checked against ``limit``): raw, copied out of
        the map when mapped and at most MAP_READ_BYTES, else read with pread; compressed, from
        the one frame holding them (read in place if stored, else decompressed or cached)."""
        if self.raw:
            mm = self.mm
            if end <= self.mapped and end - start <= MAP_READ_BYTES and mm is not None:
                return mm[start:end]
            return pread_full(self.fd, end - start, start)
        table = self.table
        assert table is not None
        # read_frames, piece and frame inlined for the common read (a small blob inside one
        # frame): a get from a compressed segment is otherwise six Python calls deep.
        if start >= end:
            return b""
        d_offsets = table.d_offsets
        # The frame holding ``start``: first guessed as if frames were of equal size (they are,
        # but for batch ends), checked, else searched near the guess, then everywhere. A plain
        # bisect of a large segment's table costs about 2 us in cache misses; a right guess, two
        # list reads. (end <= limit <= the table's total, so the division is by more than start.)
        frames = len(d_offsets) - 1
        index = start * frames // d_offsets[frames]
        if not d_offsets[index] <= start < d_offsets[index + 1]:
            low, high = max(index - NEAR_FRAMES, 0), min(index + NEAR_FRAMES, frames)
            if d_offsets[low] <= start < d_offsets[high]:
                index = bisect_right(d_offsets, start, low, high) - 1
            else:
                index = bisect_right(d_offsets, start) - 1
        base = d_offsets[index]
        if end > d_offsets[index + 1]:
            return read_frames(table, self.piece, start, end)
        payload = self.stored.get(index)
        if payload is None:
            payload = self._probe_stored(index)
        if payload > 0:
            data = os.pread(self.fd, end - start, payload + start - base)
            if len(data) != end - start:  # read on, or the file ends: the error read_frame raises
                return pread_exact(self.fd, end - start, payload + start - base, self.name)
            return data
        cache = self.cache
        if cache is None:
            return read_frame(self.fd, table, index, self.name)[start - base : end - base]
        key = (self.cache_key, index)
        frame = cache.get(key)
        if frame is None:
            frame = read_frame(self.fd, table, index, self.name)
            cache.put(key, frame)
        return frame[start - base : end - base]  # a whole frame's slice is the frame itself: no copy

    def piece(self, index: int, low: int, high: int, frame: Callable[[int], bytes] | None = None) -> bytes:
        """Bytes [low, high) of frame ``index``: read in place if the frame is stored, else
        from its decompressed copy (``frame``, default the cached :meth:`frame`)."""
        payload = self.stored.get(index)
        if payload is None:
            payload = self._probe_stored(index)
        if payload > 0:
            data = os.pread(self.fd, high - low, payload + low)
            if len(data) != high - low:  # read on, or the file ends: the error read_frame raises
                return pread_exact(self.fd, high - low, payload + low, self.name)
            return data
        return (frame or self.frame)(index)[low:high]  # a whole frame's slice is the frame itself: no copy

    def _probe_stored(self, index: int) -> int:
        """Read frame ``index``'s header: the file offset of its bytes if it is stored, else -1."""
        table = self.table
        assert table is not None
        c_start = table.c_offsets[index]
        csize = table.c_offsets[index + 1] - c_start
        dsize = table.d_offsets[index + 1] - table.d_offsets[index]
        payload = -1
        if 8 <= csize - dsize <= STORED_PROBE_BYTES + 4:  # header, block header, checksum: else compressed
            head = os.pread(self.fd, STORED_PROBE_BYTES, c_start)
            at = stored_payload(head, csize, dsize)
            payload = c_start + at if at > 0 else -1
        self.stored[index] = payload
        return payload


class ReaderCache:
    """Resolves locations to SegmentReaders for one FlatFileDb instance. Thread-safe."""

    def __init__(
        self,
        dir_fd: int,
        dir_str: str,
        base_dir: str,
        state: StateSource,
        frame_cache: FrameCache | None,
        repair: Callable[[], None],
    ) -> None:
        self.dir_fd = dir_fd
        self.dir_str = dir_str
        self.base_dir = base_dir  # relative location paths are taken relative to this
        st = os.fstat(dir_fd)
        self.dir_id = (st.st_dev, st.st_ino)
        self.state = state
        self.frame_cache = frame_cache
        self.repair = repair
        # With tiering: segment number -> a reader from the bucket (None: never uploaded), for
        # a segment whose data file is not on the local disk (any more).
        self.remote: Callable[[int], SegmentReader | None] | None = None
        self.by_path: dict[Any, SegmentReader] = {}
        self.by_number: dict[int, SegmentReader] = {}
        self.known_dirs: set[str] = set()
        self.epoch = state.words[W_EPOCH]
        self._refresh_lock = threading.Lock()
        # A raw segment holds two descriptors (the file and its map's duplicate): stay well
        # inside the process's limit, whatever it is.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_open = (
            MAX_OPEN_SEGMENTS if soft == resource.RLIM_INFINITY else max(4, min(MAX_OPEN_SEGMENTS, soft // 8))
        )

    def reset_after_fork(self) -> None:
        """In a forked child: a new refresh lock and no segment reader (a thread of the parent may
        have held the lock, mid-refresh of a reader: frames added to its table, not yet counted
        as loaded, would be added again). Readers open afresh as they are needed."""
        self._refresh_lock = threading.Lock()
        self.by_path.clear()  # in place: the store's fast path holds this dict
        self.by_number.clear()

    def reset(self) -> None:
        """Forget every open segment (their descriptors close as their users finish)."""
        self.epoch = self.state.words[W_EPOCH]
        self.by_path.clear()
        self.by_number.clear()

    def mutable_view(self) -> MutableView:
        """The state page's snapshot, repairing the page if a publisher died mid-way."""
        view = self.state.read_mutable()
        while view is None:
            self.repair()
            view = self.state.read_mutable()
        return view

    def resolve(self, location: Any) -> tuple[Any, int, int, SegmentReader]:
        """Validate a location and find (or open) its segment: (file_path, start, end, reader)."""
        if self.state.words[W_EPOCH] != self.epoch:
            self.reset()
        if not isinstance(location, tuple) or len(location) != 3:
            raise TypeError(f"expected a DataLocation(file_path, start_offset, end_offset), got {location!r}")
        file_path, start, end = location
        number = self.segment_number_of(file_path)
        start, end = as_offset(start, "start_offset", file_path), as_offset(end, "end_offset", file_path)
        reader = self.by_number.get(number)
        if reader is None:
            reader = self.open(number)
        if isinstance(file_path, str):
            if len(self.by_path) >= MAX_CACHED_PATHS:
                self.by_path.clear()
            self.by_path[file_path] = reader
        return file_path, start, end, reader

    def segment_number_of(self, file_path: Any) -> int:
        """The segment number a path names; refuses anything but a segment file of this datadir."""
        try:
            path = os.fspath(file_path)
        except TypeError:
            raise TypeError(f"file_path must be str or os.PathLike, not {type(file_path).__name__}") from None
        if not isinstance(path, str):
            raise TypeError(f"file_path must be a str path, not bytes: {path!r}")
        dirname, base = os.path.split(path)
        number = parse_segment_name(base)
        if number is None:
            raise InvalidLocationError(
                f"{path!r} is not a segment file (names are data_NNNNNNNN.dat or data_NNNNNNNN.dat.zst)"
            )
        if dirname not in self.known_dirs:
            try:
                st = os.stat(os.path.join(self.base_dir, dirname))
            except (OSError, ValueError):
                st = None
            if st is None or (st.st_dev, st.st_ino) != self.dir_id:
                raise InvalidLocationError(f"{path!r} is not in this store's datadir {self.dir_str!r}")
            if len(self.known_dirs) < MAX_CACHED_PATHS:
                self.known_dirs.add(dirname)
        return number

    def open(self, number: int) -> SegmentReader:
        """Open segment ``number`` for reading and cache it."""
        try:
            fd, kind = open_data_file(self.dir_fd, number)
        except FlatFileDbNotFoundError:
            if self.remote is None:
                self._refuse_remote_only(number)
                raise
            remote = self.remote(number)
            if remote is None:
                raise
            return self._cached(number, remote)
        view = self.mutable_view()
        reader: SegmentReader | None = None
        try:
            mutable = number >= view.segment
            check = None if mutable else getattr(self.state, "sealed_problem", None)  # read-only opens only
            if check is not None and (why := check(number)) is not None:
                raise CorruptionError(
                    f"segment {number} may have been damaged by a power loss ({why}); a read-write "
                    "open repairs it (read-only opens serve no segment they cannot vouch for)",
                    os.path.join(self.dir_str, segment_name(number, kind != KIND_RAW)),
                    0,
                )
            name = os.path.join(self.dir_str, "data_%08d" % number)  # pylint: disable=consider-using-f-string
            if kind == KIND_RAW:
                reader = SegmentReader(number, fd, name + ".dat", 0 if mutable else os.fstat(fd).st_size, mutable)
                reader.remap()
            else:
                reader = SegmentReader(number, fd, name + ".dat.zst", 0, mutable)
                reader.raw = False
                reader.cache = self.frame_cache
                if mutable:
                    reader.table = FrameTable([0], [0])
                    reader.index_fd = open_regular(self.dir_fd, index_name(number))
                    index_path = os.path.join(self.dir_str, index_name(number))
                    decode_header(pread_full(reader.index_fd, HEADER_BYTES, 0), index_path, number)
                else:
                    reader.table = parse_seek_table(pread_at(fd), os.fstat(fd).st_size, reader.name)
                    reader.limit = reader.table.decompressed_size
            if not mutable:
                self._check_own(reader)
        except BaseException:
            if reader is not None:
                # Closed here, so not again when the reader is dropped: by then the number may be
                # another file's (the lowest free number is reused at once), which it would close.
                reader.fd = -1
            os.close(fd)
            raise
        if mutable:
            self.refresh(reader)
            self._check_own_mutable(reader)
        return self._cached(number, reader)

    def _check_own(self, reader: SegmentReader) -> None:
        """Refuse a sealed segment whose files are not its own (sealed_check): once per open."""
        index = read_sealed_index(self.dir_fd, reader.number, os.path.join(self.dir_str, index_name(reader.number)))
        if index is not None:
            check_sealed_files(index, reader.name, os.fstat(reader.fd).st_size, reader.table, reader.read)

    def _check_own_mutable(self, reader: SegmentReader) -> None:
        """Refuse a mutable segment whose data file is not its own (another segment's moved or
        copied over it): its index's header, and its last and first committed blobs (sealed_check)."""
        view = self.mutable_view()
        if view.segment != reader.number:
            return  # sealed meanwhile, or a number past the mutable one (nothing committed there)
        index_path = os.path.join(self.dir_str, index_name(reader.number))
        index = read_mutable_index(self.dir_fd, reader.number, index_path, view.index_bytes)
        if index is not None and (index.last is None or index.last.end <= reader.limit):
            check_blobs(index, reader.name, reader.table, reader.read)

    def _refuse_remote_only(self, number: int) -> None:
        """A segment whose data is only in the object-storage tier, opened without tiering: say so."""
        try:
            os.stat(remote_name(number), dir_fd=self.dir_fd)
        except OSError:
            return
        raise FlatFileDbNotFoundError(
            errno.ENOENT,
            f"segment {number} is in the object store only: open the store with tiering=Tiering(...) to read it",
            remote_name(number),
        )

    def _cached(self, number: int, reader: SegmentReader) -> SegmentReader:
        if len(self.by_number) >= self.max_open:
            self.by_path.clear()
            self.by_number.clear()
        self.by_number[number] = reader
        return reader

    def refresh(self, reader: SegmentReader) -> None:
        """Catch a mutable segment's reader up with what has been committed since.

        One thread at a time (readers of one segment are shared by threads): a compressed
        reader's frame table must take each new FRAME record once, and a limit only grows.
        """
        with self._refresh_lock:
            view = self.mutable_view()
            if reader.raw:
                if view.segment == reader.number:
                    reader.limit = max(reader.limit, view.end)
                elif view.segment > reader.number:
                    # Sealed since it was opened: sealing cut the file to its committed size.
                    reader.limit = os.fstat(reader.fd).st_size
                    reader.mutable = False
                if reader.limit - reader.mapped > max(REMAP_MIN_BYTES, reader.mapped // 8) or not reader.mutable:
                    reader.remap()  # a growing segment is remapped in steps, not on every read
                return
            self._refresh_frames(reader, view)

    def _refresh_frames(self, reader: SegmentReader, view: MutableView) -> None:
        sealed = view.segment != reader.number
        upto = None if sealed else view.index_bytes
        if upto is None:  # sealed: its records up to the SEAL, whatever follows them
            raw = valid_records_from(reader.index_fd, reader.index_loaded, os.fstat(reader.index_fd).st_size)
        else:
            raw = pread_full(reader.index_fd, max(upto - reader.index_loaded, 0), reader.index_loaded)
        sizes, seal, valid = scan_frame_records(raw)
        table = reader.table
        assert table is not None
        if sizes:
            table.extend(sizes)
        if seal >= 0:
            reader.limit = max(reader.limit, seal)
            reader.mutable = False
        reader.index_loaded += valid
        if not sealed:
            reader.limit = max(reader.limit, min(view.end, table.decompressed_size))

    def check_range(self, reader: SegmentReader, file_path: Any, start: Any, end: Any) -> tuple[int, int]:
        """Slow path of a range check: types, order, and the committed end (refreshed if mutable)."""
        start, end = as_offset(start, "start_offset", file_path), as_offset(end, "end_offset", file_path)
        if start > end:
            raise InvalidLocationError(f"{file_path}: start_offset {start} > end_offset {end}")
        if end > reader.limit and reader.mutable:
            self.refresh(reader)
        if end > reader.limit:
            raise InvalidLocationError(
                f"{file_path}: end_offset {end} is past the committed end of segment {reader.number} "
                f"({reader.limit} bytes)"
            )
        return start, end

    def read(self, reader: SegmentReader, file_path: Any, start: Any, end: Any) -> bytes:
        """The read path past the fast one: checks, then a map, pread or frames."""
        start, end = self.check_range(reader, file_path, start, end)
        if not reader.raw:
            return reader.read(start, end)
        mm = reader.mm
        # SegmentReader.read's map test and pread, inlined: a get of a blob just written past the
        # map comes this way, and a short read here means a cut or replaced file (reopen below).
        if end <= reader.mapped and end - start <= MAP_READ_BYTES and mm is not None:
            return mm[start:end]
        data = os.pread(reader.fd, end - start, start)
        if len(data) == end - start:
            return data
        if data:  # one call moves at most MAX_IO_BYTES: read on before taking it for a cut file
            data = finish_pread(reader.fd, data, end - start, start)
            if len(data) == end - start:
                return data
        self.by_number.pop(reader.number, None)
        self.by_path.pop(file_path, None)
        try:
            fresh = self.open(reader.number)
        except FlatFileDbNotFoundError:
            raise FlatFileDbNotFoundError(errno.ENOENT, f"segment {reader.number} was deleted", file_path) from None
        data = fresh.read(start, end)
        if len(data) != end - start:
            raise CorruptionError(
                f"{file_path} at offset {start + len(data)}: segment is shorter than its "
                f"committed size ({len(data)} of {end - start} bytes read)",
                str(file_path),
                start + len(data),
            )
        return data


class BlobFile(io.RawIOBase):
    """A read-only, seekable binary file over one blob (``FlatFileDb.open_blob``).

    Positions are relative to the blob. Reading a compressed blob decompresses only
    the frames the read touches (the last one is kept, so small sequential reads
    decompress each frame once). The file keeps its segment open: it goes on reading
    the bytes it was opened on even if the segment is deleted meanwhile. Not
    thread-safe (it has a position); open one per thread.
    """

    def __init__(self, reader: SegmentReader, start: int, end: int, name: str) -> None:
        super().__init__()
        self._reader = reader
        self._start = start
        self._end = end
        self._pos = 0
        self.name = name
        self._last: tuple[int, bytes] = (-1, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    @property
    def size(self) -> int:
        """Length of the blob."""
        return self._end - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        offset = operator.index(offset)
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end - self._start}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r} (use io.SEEK_SET, SEEK_CUR or SEEK_END)")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def _frame(self, index: int) -> bytes:
        if self._last[0] != index:
            self._last = (index, self._reader.frame(index))
        return self._last[1]

    def _read_range(self, start: int, end: int) -> bytes:
        reader = self._reader
        if reader.raw or reader.table is None:  # raw, local or remote
            return reader.read(start, end)
        return read_frames(reader.table, self._piece, start, end)

    def _piece(self, index: int, low: int, high: int) -> bytes:
        return self._reader.piece(index, low, high, self._frame)

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is not None and type(size) is not int:  # pylint: disable=unidiomatic-typecheck  # (the common case)
            try:
                size = operator.index(size)  # as FileIO.read: a float (nan!) is no size
            except TypeError:
                raise TypeError(f"{self.name}: read() takes an int size or None, not {type(size).__name__}") from None
        remaining = self._end - self._start - self._pos
        count = remaining if size is None or size < 0 else min(size, remaining)
        if count <= 0:
            return b""
        at = self._start + self._pos
        data = self._read_range(at, at + count)
        if len(data) != count:
            raise CorruptionError(f"{self.name}: short read at offset {at}", self.name, at)
        self._pos += count
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def write(self, data: Any) -> int:
        """Refused, as by a file opened for reading: a blob never changes."""
        raise io.UnsupportedOperation(f"{self.name}: a blob file is read-only")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.name}: I/O operation on a closed blob file")


def as_offset(value: Any, name: str, file_path: Any = None) -> int:
    """An offset argument as an int >= 0, or a TypeError / InvalidLocationError naming the file."""
    where = f"{file_path}: " if file_path is not None else ""
    if isinstance(value, bool):
        raise TypeError(f"{where}{name} must be an int, not bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}{name} must be an int, not {type(value).__name__}") from None
    if result < 0:
        raise InvalidLocationError(f"{where}{name} must be >= 0, got {result}")
    return result


def fast_slice(start: Any, end: Any, slice_: Any) -> tuple[int, int] | None:
    """apply_slice for the plain case (a Slice of ints inside the blob), else None: cheap."""
    if slice_.__class__ is Slice and type(start) is int and type(end) is int:  # pylint: disable=unidiomatic-typecheck
        s_start, s_end = slice_
        if type(s_start) is int and type(s_end) is int and s_start >= 0:  # pylint: disable=unidiomatic-typecheck
            if s_end == 0:
                s_end = end - start
            if s_start <= s_end <= end - start:
                return start + s_start, start + s_end
    return None


def apply_slice(file_path: Any, start: Any, end: Any, slice_: Any) -> tuple[int, int]:
    """Turn a blob-relative Slice into absolute segment offsets, refusing bad slices."""
    if not isinstance(slice_, tuple) or len(slice_) != 2:
        raise TypeError(f"{file_path}: slice must be a Slice(start_offset, end_offset), got {slice_!r}")
    start, end = as_offset(start, "start_offset", file_path), as_offset(end, "end_offset", file_path)
    s_start = as_offset(slice_[0], "slice start_offset", file_path)
    s_end = as_offset(slice_[1], "slice end_offset", file_path)
    length = end - start
    if s_end == 0:
        s_end = length
    if s_start > s_end or s_end > length:
        raise InvalidLocationError(
            f"{file_path}: slice {s_start}..{s_end} is not inside the blob at {start}..{end} ({length} bytes)"
        )
    return start + s_start, start + s_end
