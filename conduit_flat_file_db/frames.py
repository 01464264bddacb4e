"""One Zstandard frame at a time: compress, decompress within bounds, stored frames, a frame cache.

What every reader and writer of compressed segments needs of single frames, with
no knowledge of the seek table (that is seekable.py's): this thread's compressor
and decompressor contexts, :func:`decompress_frame` (which checks every claimed
size before allocating for it), :func:`stored_frame` and :func:`stored_payload`
(frames that hold their bytes verbatim, so a slice is one ``pread``),
:func:`compress_frames`, and :class:`FrameCache` of decompressed frames.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections import OrderedDict
from typing import Any, Callable

import xxhash
import zstandard

from .errors import CorruptionError

ZSTD_FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0  # skippable frames have magic 0x184D2A5? (any last digit)
SKIPPABLE_MAGIC = 0x184D2A50
SKIPPABLE_HEADER_BYTES = 8
MAX_FRAME_DECOMPRESSED_BYTES = 2**30
DEFAULT_LEVEL = 3
WINDOW_LOG_MAX = 27  # plain ``zstd -d`` refuses larger windows by default
_U32 = struct.Struct("<I")


class FrameCache:
    """A thread-safe LRU of decompressed frames, bounded in bytes (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def reset_after_fork(self) -> None:
        """In a forked child: empty, with a new lock (a thread of the parent may have held the
        old one, mid-change of the contents)."""
        self._lock = threading.Lock()
        self._items = OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> bytes | None:
        """The cached frame, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: bytes) -> None:
        """Cache a frame, evicting the least recently used ones beyond the limit."""
        if not value or len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _key, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes


def scan_frames(read_at: Callable[[int, int], bytes], size: int) -> list[tuple[int, int]]:
    """(compressed, decompressed) sizes of the complete frames at the start of a file, found
    by walking frame and block headers: no seek table needed. Stops at the first frame
    that is cut short or is not a frame; skippable frames count with decompressed size 0.
    """
    sizes: list[tuple[int, int]] = []
    pos = 0
    while pos + SKIPPABLE_HEADER_BYTES <= size:
        head = read_at(pos, 18)  # the longest frame header
        magic = _U32.unpack_from(head, 0)[0]
        if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC:
            end = pos + SKIPPABLE_HEADER_BYTES + _U32.unpack_from(head, 4)[0]
            if end > size:
                break
            sizes.append((end - pos, 0))
            pos = end
            continue
        if magic != ZSTD_FRAME_MAGIC:
            break
        try:
            at = pos + zstandard.frame_header_size(head)
            params = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError:
            break
        complete = False
        while at + 3 <= size:
            block = int.from_bytes(read_at(at, 3), "little")
            kind, block_size = (block >> 1) & 3, block >> 3
            if kind == 3:
                break
            at += 3 + (1 if kind == 1 else block_size)
            if block & 1:
                complete = True
                break
        at += 4 if params.has_checksum else 0
        if not complete or at > size:
            break
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN:
            dsize = params.content_size
        else:
            try:
                dsize = len(decompressor().decompressobj().decompress(read_at(pos, at - pos)))
            except zstandard.ZstdError:
                break
        sizes.append((at - pos, dsize))
        pos = at
    return sizes


_local = threading.local()


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (zstandard objects are not thread-safe)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` (content size and checksum in every frame)."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=True, write_content_size=True)
        if params.window_log > WINDOW_LOG_MAX:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, write_checksum=True, write_content_size=True, window_log=WINDOW_LOG_MAX
            )
        cctx = cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return cctx


# A Zstandard block of 4 bytes (3-byte header, 1-byte RLE payload) can stand for 128 KiB:
# no frame decompresses to more than this many times its compressed size.
MAX_EXPANSION = 2**15


def decompress_frame(frame: bytes, dsize: int, path: str, offset: int, checksum: int | None = None) -> bytes:
    """Decompress one whole frame that must yield exactly ``dsize`` bytes.

    Sizes claimed by the seek table or the frame header are checked before any
    memory is allocated for them, so a forged file cannot make us allocate more
    than its own size allows.
    """
    if dsize > MAX_FRAME_DECOMPRESSED_BYTES or dsize > (len(frame) + 1) * MAX_EXPANSION:
        raise CorruptionError(
            f"{path} at offset {offset}: a {len(frame)}-byte frame cannot hold {dsize} bytes", path, offset
        )
    try:
        claimed = zstandard.frame_content_size(frame)
        if claimed not in (-1, dsize):
            raise CorruptionError(
                f"{path} at offset {offset}: frame header says {claimed} bytes, the seek table says {dsize}",
                path,
                offset,
            )
        if claimed == -1:  # no size in the header: stream, so memory follows real output only
            dobj = decompressor().decompressobj()
            out = dobj.decompress(frame)
        else:
            out = decompressor().decompress(frame, max_output_size=dsize)
    except zstandard.ZstdError as exc:
        raise CorruptionError(f"{path} at offset {offset}: bad Zstandard frame ({exc})", path, offset) from None
    if len(out) != dsize:
        raise CorruptionError(
            f"{path} at offset {offset}: frame decompressed to {len(out)} bytes, the seek table says {dsize}",
            path,
            offset,
        )
    if checksum is not None and xxhash.xxh64_intdigest(out) & 0xFFFFFFFF != checksum:
        raise CorruptionError(f"{path} at offset {offset}: frame fails its seek-table checksum", path, offset)
    return out


_MAX_BLOCK_BYTES = 128 * 2**10
# The head of a one-block stored frame (FORMAT.md "Stored frames"), packed in one call: magic,
# descriptor, content size (1 byte below 256, else 2 bytes holding size - 256), then the 3-byte
# block header ``size << 3 | 1`` as its low 16 bits and its high 8 bits (struct has no 3-byte
# integer). Small puts write one such frame each, so its head is not joined from parts.
STORED_HEAD_SMALL = struct.Struct("<IBBHB")  # content of fewer than 256 bytes: a 9-byte head
STORED_HEAD_MEDIUM = struct.Struct("<IBHHB")  # fewer than 65,792 bytes: a 10-byte head
STORED_SMALL_BELOW = 256
STORED_MEDIUM_BELOW = 65536 + 256
STORED_DESCRIPTOR_SMALL = 0x24  # single segment, content checksum, 1-byte content size
STORED_DESCRIPTOR_MEDIUM = 0x64  # the same with a 2-byte content size
STORED_TAIL_BYTES = 4  # the content checksum
# Puts and batches smaller than this go into a compressed mutable segment as stored frames:
# compressing a few KiB alone costs ~15 us and gains little; sealing compresses them.
STORED_BELOW_BYTES = 8 * 2**10


def stored_head(size: int) -> bytes:
    """The frame header and block header of a one-block stored frame of ``size`` bytes
    (``size`` below STORED_MEDIUM_BELOW and at most 128 KiB)."""
    block = size << 3 | 1  # last block, raw, ``size`` bytes
    if size < STORED_SMALL_BELOW:
        return STORED_HEAD_SMALL.pack(ZSTD_FRAME_MAGIC, STORED_DESCRIPTOR_SMALL, size, block & 0xFFFF, block >> 16)
    return STORED_HEAD_MEDIUM.pack(ZSTD_FRAME_MAGIC, STORED_DESCRIPTOR_MEDIUM, size - 256, block & 0xFFFF, block >> 16)


def stored_frame(data: bytes | bytearray | memoryview) -> bytes:
    """A Zstandard frame that stores ``data`` uncompressed (raw blocks), with its content size
    and checksum: any decoder reads it, and making it costs a copy and an XXH64.

    Small puts are written this way: compressing a few KiB alone costs far more CPU than
    writing it and gains little; the segment is compressed for real when it is sealed.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < STORED_MEDIUM_BELOW and size <= _MAX_BLOCK_BYTES:  # one block: one pack, one join
        return b"".join((stored_head(size), view, _U32.pack(xxhash.xxh64_intdigest(view) & 0xFFFFFFFF)))
    if size < 2**32:
        header = struct.pack("<IBI", ZSTD_FRAME_MAGIC, 0xA4, size)
    else:
        header = struct.pack("<IBQ", ZSTD_FRAME_MAGIC, 0xE4, size)
    parts: list[bytes | memoryview] = [header]
    for start in range(0, max(size, 1), _MAX_BLOCK_BYTES):
        chunk = view[start : start + _MAX_BLOCK_BYTES]
        last = 1 if start + _MAX_BLOCK_BYTES >= size else 0
        parts.append((len(chunk) << 3 | last).to_bytes(3, "little"))
        parts.append(chunk)
    parts.append(_U32.pack(xxhash.xxh64_intdigest(view) & 0xFFFFFFFF))
    return b"".join(parts)


# By default a frame that compression shrinks by less than 1/8 is written stored instead
# (raw blocks): reading it back costs a copy, not a decompression, and a slice of it is one
# pread. LevelDB and RocksDB apply the same rule to their blocks. It costs at most 1/7 more
# disk on data that compresses by just under 1/8; 0 stores only what compression enlarges.
DEFAULT_MIN_SAVING = 0.125


def check_min_saving(min_saving: float) -> float:
    """``min_saving`` as a float in [0, 1), or ValueError/TypeError."""
    if isinstance(min_saving, bool) or not isinstance(min_saving, (int, float)):
        raise TypeError(f"min_frame_saving must be a number, got {type(min_saving).__name__}")
    if not 0 <= min_saving < 1:
        raise ValueError(f"min_frame_saving must be in [0, 1), got {min_saving}")
    return float(min_saving)


# Below this many bytes a batch's frames are compressed in the caller's thread: handing a share
# to a worker costs tens of microseconds, what compressing about 20 KB costs.
PARALLEL_MIN_BYTES = 256 * 2**10


_RunArgs = tuple[memoryview, int, int, int, int, float]  # _compress_run's arguments


class _Run:
    """A run of frames handed to the compression workers: claimed once, by a worker or back by
    its caller. Whoever runs it drops ``args`` (a view of the caller's buffer) before ``done``
    is set: the caller may resize that buffer the moment it has its frames."""

    __slots__ = ("_guard", "_state", "args", "done", "error", "frames")

    def __init__(self, args: _RunArgs) -> None:
        self.args: _RunArgs | None = args
        self.done = threading.Event()
        self.frames: list[bytes] = []
        self.error: BaseException | None = None
        self._guard = threading.Lock()
        self._state = 0  # 0: queued; 1: a worker runs it; 2: its caller took it back

    def claim(self) -> bool:
        """A worker takes the run; False when its caller took it back first."""
        with self._guard:
            if self._state:
                return False
            self._state = 1
            return True

    def take_back(self) -> bool:
        """The caller takes the run back (and sets it done); False when a worker runs or ran it."""
        with self._guard:
            if self._state == 1:
                return False
            self._state = 2
        self.args = None
        self.done.set()
        return True


def _work(runs: queue.SimpleQueue[_Run | None]) -> None:
    """A compression worker: runs queued runs that their callers have not taken back."""
    while True:
        run = runs.get()
        if run is None:
            return
        if not run.claim():
            continue
        args, run.args = run.args, None
        try:
            run.frames = _compress_run(*args)  # type: ignore[misc]  # claimed: args is set
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # handed to the caller
            run.error = exc.with_traceback(None)  # (a traceback would keep the caller's buffer)
        del args
        run.done.set()


class _Workers:
    """Compression threads kept for the process, beside the caller's thread: made on first use
    (daemon threads, each with its own compressor: frames.compressor), made again in a forked
    child (the parent's threads do not exist in it). zstandard's own
    ``multi_compress_to_buffer(threads=)`` starts threads and compression contexts at every call,
    which measured slower than one thread for a batch of a few MiB."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._runs: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's threads (the next submit makes new ones)."""
        self._guard = threading.Lock()
        self._runs = queue.SimpleQueue()
        self._threads = []

    def submit(self, workers: int, args: _RunArgs) -> _Run | None:
        """Queue a run for up to ``workers`` threads; None when no thread can be had."""
        with self._guard:
            while len(self._threads) < workers:
                thread = threading.Thread(
                    target=_work, args=(self._runs,), name=f"ffdb-compress-{len(self._threads)}", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # a thread limit, or an exiting interpreter
                    break
                self._threads.append(thread)
            if not self._threads:
                return None
        run = _Run(args)
        self._runs.put(run)
        return run


_WORKERS = _Workers()
os.register_at_fork(after_in_child=_WORKERS.reset_after_fork)


def _compress_run(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    view: memoryview, frame_bytes: int, level: int, first: int, stop: int, min_saving: float
) -> list[bytes]:
    """Frames ``first`` to ``stop - 1`` of ``view`` cut in ``frame_bytes``, compressed in this
    thread (see compress_frames; a frame that shrinks by less than ``min_saving`` is stored).

    zstandard's ``compress`` returns a bytes object that keeps the memory of the bound it
    allocated (about the input's size) however small the frame: a frame under half its input
    is copied to a bytes object of its own size, or a batch of compressible data would hold
    its own size in memory until it is written (4 GiB for a put of 4 GiB)."""
    compress = compressor(level).compress
    frames = []
    for start in range(first * frame_bytes, stop * frame_bytes, frame_bytes):
        piece = view[start : start + frame_bytes]
        frame = compress(piece)
        if len(frame) > len(piece) * (1 - min_saving):
            frame = stored_frame(piece)
        elif 2 * len(frame) < len(piece):
            frame = bytes(memoryview(frame))
        frames.append(frame)
    return frames


def _compress_runs(view: memoryview, frame_bytes: int, level: int, bounds: list[int], min_saving: float) -> list[bytes]:
    """Frames ``bounds[0]`` to ``bounds[-1] - 1``: the first run (to ``bounds[1]``) in this
    thread, the others handed to the workers. A run no worker has started when this thread is
    done with its own is taken back (a caller never waits in a queue for work it can do
    itself). When this returns or raises, no worker holds ``view`` any more."""
    pending = [
        _WORKERS.submit(len(bounds) - 2, (view, frame_bytes, level, low, high, min_saving))
        for low, high in zip(bounds[1:-1], bounds[2:])
    ]
    frames: list[bytes] = []
    try:
        frames.extend(_compress_run(view, frame_bytes, level, 0, bounds[1], min_saving))
        for index, (low, high) in enumerate(zip(bounds[1:-1], bounds[2:])):
            run = pending[index]
            if run is None or run.take_back():
                frames.extend(_compress_run(view, frame_bytes, level, low, high, min_saving))
                continue
            run.done.wait()
            error, run.error = run.error, None
            if error is not None:
                try:
                    raise error
                finally:
                    del error  # no cycle through this frame: its traceback would keep ``view``
            frames.extend(run.frames)
    finally:
        for run in pending:  # after an error: runs still queued are taken back, running ones awaited
            if run is not None and not run.take_back():
                run.done.wait()
    return frames


def compress_frames(
    data: bytes | memoryview, frame_bytes: int, level: int, threads: int = 1, min_saving: float = DEFAULT_MIN_SAVING
) -> list[bytes]:
    """Cut ``data`` into frames of at most ``frame_bytes`` and compress them.

    With ``threads > 1``, more than one frame and at least PARALLEL_MIN_BYTES, the frames are
    compressed in ``threads`` runs at once: the caller's thread compresses the first run while
    the process's compression workers compress the others (zstandard drops the GIL while it
    compresses), and they are returned in order; a run no worker has started when the caller
    is done with its own is compressed by the caller. A frame that compression shrinks by less than
    the fraction ``min_saving`` is returned stored.
    """
    view = memoryview(data).cast("B")
    count = -(-len(view) // frame_bytes)
    runs = min(threads, count) if len(view) >= PARALLEL_MIN_BYTES else 1
    if runs <= 1:
        return _compress_run(view, frame_bytes, level, 0, max(count, 1), min_saving)
    return _compress_runs(view, frame_bytes, level, [count * run // runs for run in range(runs + 1)], min_saving)


_FCS_BYTES = (0, 2, 4, 8)
_DICT_ID_BYTES = (0, 1, 2, 4)
STORED_PROBE_BYTES = 4 + 1 + 1 + 4 + 8 + 3  # the longest frame header, then one block header


def stored_payload(head: bytes | memoryview, csize: int, dsize: int) -> int:
    """Where the bytes of a one-block stored frame start within it, or -1 if it is not one.

    ``head``: the frame's first bytes (up to STORED_PROBE_BYTES); ``csize``/``dsize``: its
    sizes from the frame table. A frame of one raw block holds its content verbatim, so a
    slice of it can be read from the file with no decompression, whoever wrote it.
    """
    if len(head) < 5 or _U32.unpack_from(head)[0] != ZSTD_FRAME_MAGIC or not 0 < dsize <= _MAX_BLOCK_BYTES:
        return -1
    descriptor = head[4]
    if descriptor & 0x08:  # reserved bit
        return -1
    single = descriptor >> 5 & 1
    fcs = _FCS_BYTES[descriptor >> 6] or single
    at = 5 + (0 if single else 1) + _DICT_ID_BYTES[descriptor & 3] + fcs
    if at + 3 > len(head):
        return -1
    block = int.from_bytes(head[at : at + 3], "little")
    checksum = 4 if descriptor & 0x04 else 0
    if block != (dsize << 3 | 1) or csize != at + 3 + dsize + checksum:  # last block, raw, all of it
        return -1
    return at + 3
