"""What every index of a keyed store does (index_sqlite.py, index_lmdb.py).

An index maps each encoded key to its Row and remembers its *checkpoint*: the last key-log
record it has applied (its segment, the offset where it ends, and its checksum). Rows and
checkpoint change together, in one transaction, so the index is always the replay of a
prefix of the key logs; the keyed store replays the rest (keyed/store.py).
"""

from __future__ import annotations

import abc
import errno
import struct
from typing import Iterable, Iterator, NamedTuple

from ..errors import FlatFileDbError
from .keylog import Entry, Row


class Checkpoint(NamedTuple):
    """The last key-log record an index applied: segment -1 when none. ``index_bytes``: where
    its BLOB record ends in the segment's record index (0: unknown), so that a reader of the
    key logs resumes there instead of reading the segment's whole record index."""

    segment: int
    end: int
    checksum: int
    index_bytes: int = 0


_CHECKPOINT = struct.Struct("<qQQQ")


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as the indexes store it."""
    return _CHECKPOINT.pack(*checkpoint)


def decode_checkpoint(raw: bytes | None) -> Checkpoint:
    """Inverse of encode_checkpoint; also reads the 24 bytes of a checkpoint without
    ``index_bytes``, and None or b"" (no checkpoint)."""
    if not raw:
        return Checkpoint(-1, 0, 0)
    if len(raw) == 24:
        return Checkpoint(*struct.unpack("<qQQ", raw))
    return Checkpoint(*_CHECKPOINT.unpack(raw))


class IndexDamagedError(FlatFileDbError):
    """The index file cannot be used as it is (unreadable, incomplete, of another format):
    a writer's open rebuilds it from the key logs; a read-only open reports it."""


class IndexWriteError(FlatFileDbError, OSError):
    """The index could not be written: a full disk (``errno`` ENOSPC) or an I/O error (EIO).
    Raised by a write after its engine commit, or by close(), when they apply the key logs:
    the write happened (every instance sees it) and the next apply writes it to the index."""


def index_write_error(path: str, exc: BaseException, full: bool) -> IndexWriteError:
    """The IndexWriteError for ``exc``, an error of the index's library writing ``path``."""
    code = errno.ENOSPC if full else errno.EIO
    return IndexWriteError(
        code,
        f"{path}: the index cannot be written ({exc}); the key logs hold every write acknowledged"
        " (or that raised this), and the next apply once there is room writes them",
    )


class IndexBase(abc.ABC):
    """The operations the keyed store needs from its index. Thread-safe; writes are made by
    the holder of the keyed store's write lock only."""

    NAME = ""  # the file or directory name of the index in the store's directory

    @abc.abstractmethod
    def close(self) -> None:
        """Release the index's files (every thread's handles)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise IndexDamagedError when the index cannot be used."""

    def trusted(self) -> bool:
        """False when a power loss may have damaged the index (a writer's open rebuilds it)."""
        return True

    @abc.abstractmethod
    def lookup(self, key: bytes) -> Row | None:
        """The row of ``key``, None when absent."""

    @abc.abstractmethod
    def lookup_many(self, keys: list[bytes]) -> list[Row | None]:
        """The rows of ``keys``, in their order."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many keys: O(1)."""

    @abc.abstractmethod
    def checkpoint(self) -> Checkpoint:
        """The last key-log record applied."""

    @abc.abstractmethod
    def snapshot(self, keys: list[bytes]) -> tuple[int, Checkpoint, list[bool]]:
        """In one read transaction: the number of keys, the checkpoint, and whether each of
        ``keys`` is present (what a count past the checkpoint needs)."""

    @abc.abstractmethod
    def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int = 1000) -> list[tuple[bytes, Row]]:
        """Up to ``limit`` (key, row) pairs in key order, keys starting with ``prefix``, after ``after``."""

    @abc.abstractmethod
    def segment_usage(self) -> dict[int, tuple[int, int]]:
        """Per segment: (live bytes, keys) of the values in it (a scan of every row)."""

    @abc.abstractmethod
    def rows_of_segments(self, segments: Iterable[int]) -> Iterator[tuple[bytes, Row]]:
        """Every row whose value or whose key-log record is in one of ``segments``."""

    @abc.abstractmethod
    def apply_rows(self, rows: Iterable[tuple[bytes, Row | None, int]], checkpoint: Checkpoint) -> None:
        """Set each (key, row or None for a deletion, log segment of the row) and the
        checkpoint, in one transaction. Each key appears once (the order does not matter); the
        row's own log-segment field is not read."""

    def apply(self, entries: Iterable[Entry], checkpoint: Checkpoint) -> None:
        """Apply entries (a later one for a key wins) and set the checkpoint, in one transaction."""
        final = dict(entries)
        self.apply_rows(((key, row, 0 if row is None else row.logseg) for key, row in final.items()), checkpoint)

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every row and reset the checkpoint."""

    @abc.abstractmethod
    def replace(self, chunks: Iterable[tuple[Iterable[tuple[bytes, Row | None, int]], Checkpoint]]) -> None:
        """Remove every row, then set each chunk's rows and checkpoint as apply_rows() does, all
        in one transaction (a rebuild): until it commits, readers see the index as it was, never
        an empty or half-replayed one. ``chunks`` may be a generator: it must not use the index."""

    def tidy(self) -> None:  # noqa: B027  # optional: an index whose writes leave nothing to do later
        """Work the writes left for later (SQLite: a WAL checkpoint), called after the keyed
        store's write lock is released so that no other writer waits for it."""

    def sync(self) -> None:  # noqa: B027  # optional: an index whose commits are durable has nothing to do
        """Make the index's committed transactions durable (the key logs are durable already)."""

    @abc.abstractmethod
    def backup_to(self, dest: str) -> None:
        """Write a consistent copy of the index at ``dest`` (a path in another store's directory)."""
