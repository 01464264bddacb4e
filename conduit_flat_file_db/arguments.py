"""Checks of the arguments users pass to the store, made before anything is written.

Each function raises the TypeError or ValueError (InvalidLocationError) that says what is wrong
and what to do; none writes anything (check_lock_path only looks at paths with stat).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .errors import InvalidLocationError, NonContiguousBufferError, UnsupportedBufferError


def as_bytes_like(data: Any, method: str = "put()") -> Any:
    """``data`` as a flat bytes-like object for ``method``, or the typed error saying why not.

    bytes and bytearray pass as they are; any other object with the buffer protocol (memoryview,
    numpy array, ``array.array``, ``mmap``) as a byte-wide view of its memory, without a copy.
    """
    if isinstance(data, (bytearray, bytes)):
        return data
    try:
        view = data if isinstance(data, memoryview) else memoryview(data)
    except TypeError:
        raise UnsupportedBufferError(
            f"{method} takes bytes, bytearray, memoryview or another C-contiguous buffer "
            f"(numpy array, array.array, mmap), not {type(data).__name__}"
        ) from None
    # C order only: a Fortran-order view is "contiguous" too, but its bytes in memory are not
    # in the order its elements are indexed, and cast("B") refuses it. Copying it to C order
    # was rejected: which order the caller meant is a guess, and a silent copy hides the cost.
    if not view.c_contiguous:
        raise NonContiguousBufferError(
            f"{method} needs a C-contiguous buffer (got a strided or Fortran-order {type(data).__name__}: "
            "copy it first, e.g. with bytes(view) or numpy.ascontiguousarray)"
        )
    if view.format == "B" and view.ndim == 1:
        return view
    # cast() refuses a shape with a zero in it (an empty 2-d array): an empty buffer is no bytes.
    return view.cast("B") if view.nbytes else memoryview(b"")


def bytes_like_ok(data: Any) -> bool:
    """Whether as_bytes_like takes ``data``."""
    try:
        as_bytes_like(data)
    except (TypeError, ValueError):
        return False
    return True


def default_lock_path(datadir: str | os.PathLike[str]) -> str:
    """The lock path of a store opened without one: ``<datadir>.lock`` beside the datadir.

    Trailing slashes and ``.`` are resolved first (``db/`` and ``db/.`` give ``db.lock``), so
    every spelling of one datadir names one lock file; the command line uses the same rule.
    """
    absolute = os.path.abspath(datadir)
    return os.path.join(os.path.dirname(absolute), os.path.basename(absolute) + ".lock")


MAX_LOCK_TIMEOUT_SECONDS = 365 * 86400.0  # longer, and the lock's deadline arithmetic overflows: use None


def check_paths(datadir: Any, lock_path: Any) -> None:
    """TypeError unless ``datadir`` is a path and ``lock_path`` a path or None (the default)."""
    if not isinstance(datadir, (str, os.PathLike)) or not isinstance(lock_path, (str, os.PathLike, type(None))):
        raise TypeError("datadir and mutable_file_lock_path must be paths (str or os.PathLike)")


def check_options(
    lock_timeout: Any, frame_bytes: int, max_frame_bytes: int, frame_cache_bytes: int, compression_threads: int
) -> None:
    """The TypeError or ValueError of a bad store option (of those not checked where they are used)."""
    if lock_timeout is not None and (isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float))):
        raise TypeError(f"lock_timeout must be a number of seconds or None, not {type(lock_timeout).__name__}")
    if lock_timeout is not None and not 0 <= lock_timeout <= MAX_LOCK_TIMEOUT_SECONDS:
        raise ValueError(
            f"lock_timeout must be in 0..{MAX_LOCK_TIMEOUT_SECONDS} seconds, or None to wait for "
            f"ever; got {lock_timeout}"
        )
    if not 1 <= frame_bytes <= max_frame_bytes:
        raise ValueError(f"frame_bytes must be in 1..{max_frame_bytes}, got {frame_bytes}")
    if frame_cache_bytes < 0 or compression_threads < 1:
        raise ValueError("frame_cache_bytes must be >= 0 and compression_threads >= 1")


def check_lock_path(datadir: str, lock: str) -> None:
    """Refuse a lock path that is the datadir or inside it, before anything is created.

    The lock file is grown to 4096 bytes and its first word is written (the waiter flag):
    as ``ffdb.state`` or a segment file that corrupts the store, and as a name like a
    scratch file recovery would remove it from under a lock holder. Paths are compared
    after resolving symlinks, and by device and inode where both directories exist.
    """
    real_dir, real_lock = os.path.realpath(datadir), os.path.realpath(lock)
    inside = os.path.commonpath([real_dir, real_lock]) == real_dir
    if not inside:
        with contextlib.suppress(OSError):
            inside = os.path.samestat(os.stat(os.path.dirname(real_lock)), os.stat(real_dir))
    if inside:
        raise InvalidLocationError(
            f"mutable_file_lock_path {lock!r} is the datadir {datadir!r} or inside it, where the lock's writes "
            f"would corrupt or remove the store's files; put it beside the datadir (e.g. {datadir + '.lock'!r})"
        )
    if os.path.isdir(real_lock):
        raise InvalidLocationError(f"mutable_file_lock_path {lock!r} is a directory; it must name a file")
    with contextlib.suppress(OSError):
        if os.stat(real_lock).st_nlink > 1:
            # A second name of the file may be inside the datadir (ffdb.state, a segment), where
            # the lock's writes corrupt it; the path checks above cannot see hard links.
            raise InvalidLocationError(
                f"mutable_file_lock_path {lock!r} has other hard links; a lock file "
                "must be a file of its own (remove it, and it is created afresh)"
            )


def check_stream_item(item: Any, position: int, open_streams: bool) -> None:
    """TypeError naming ``item`` unless put_streams can read it (a path, a readable, or a context manager)."""
    if isinstance(item, (str, os.PathLike)):
        return
    if open_streams:
        if not (hasattr(item, "__enter__") and hasattr(item, "__exit__")):
            raise TypeError(
                f"put_streams: item {position} ({type(item).__name__}) is not a context manager "
                "giving a stream, nor a path (open_streams=True)"
            )
    elif not (hasattr(item, "readinto") or hasattr(item, "read")):
        raise TypeError(
            f"put_streams: item {position} ({type(item).__name__}) is not a readable stream "
            "(readinto or read), nor a path"
        )


__all__ = [
    "MAX_LOCK_TIMEOUT_SECONDS",
    "as_bytes_like",
    "bytes_like_ok",
    "check_lock_path",
    "check_options",
    "check_paths",
    "check_stream_item",
    "default_lock_path",
]


MIN_COMPRESSION_LEVEL = -(2**17)  # ZSTD_minCLevel(): faster levels are refused by the library
MAX_COMPRESSION_LEVEL = 22  # ZSTD_maxCLevel()


def check_level(level: Any, name: str = "compression_level") -> int:
    """``level`` if it is a Zstandard level (an int in -131072..22), else the TypeError or
    ValueError saying why (not an OverflowError of the compressor, at the first compression)."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"{name} must be an int Zstandard level, not {type(level).__name__}")
    if not MIN_COMPRESSION_LEVEL <= level <= MAX_COMPRESSION_LEVEL:
        raise ValueError(f"{name} must be in {MIN_COMPRESSION_LEVEL}..{MAX_COMPRESSION_LEVEL}, got {level}")
    return level
