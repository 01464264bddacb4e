"""The exception hierarchy of the store.

Every exception the library raises on purpose derives from :class:`FlatFileDbError`.
Exceptions that the original engine raised as built-in types keep that type as a
second base, so existing ``except FileNotFoundError`` / ``except ValueError``
handlers keep working.

Naming rule: errors about the store as a whole keep the ``FlatFileDb`` prefix of the
original engine (``FlatFileDbNotFoundError``, ``FlatFileDbReadOnlyError``, ...); every
other error is named by what is wrong, without the prefix, and ends in ``Error``
(``FormatError``, ``CorruptionError``, ``InvalidLocationError``, ``UnsupportedBufferError``).

This module imports nothing of ours.
"""

from __future__ import annotations

import io


class FlatFileDbError(Exception):
    """Base class of every error raised by conduit_flat_file_db."""


class FlatFileDbLockTimeoutError(FlatFileDbError, TimeoutError):
    """The store's inter-process lock was not acquired within the timeout."""


class FlatFileDbUnsafeAccessError(FlatFileDbError):
    """An operation would break an invariant of the store (e.g. deleting the mutable segment)."""


class FlatFileDbNotFoundError(FlatFileDbError, FileNotFoundError):
    """The segment a location points at does not exist (deleted, or never written)."""


class FlatFileDbReadOnlyError(FlatFileDbError, io.UnsupportedOperation):
    """A write (put, delete, rotate, maintenance, sync, read_lock) on a store opened with ``readonly=True``.

    Also an ``io.UnsupportedOperation`` (so an OSError and a ValueError), as writing to a
    file opened for reading is. Raised before anything is touched.
    """


class InvalidLocationError(FlatFileDbError, ValueError):
    """A location or slice that cannot resolve to committed bytes of this store.

    Raised for paths that are not a segment file of this datadir, offsets past the
    committed end of a segment, negative or inverted ranges, and slices past the blob.
    """


class UnsupportedBufferError(FlatFileDbError, TypeError):
    """Data to store that is not a bytes-like object (no buffer protocol: str, int, list ...)."""


class NonContiguousBufferError(UnsupportedBufferError, ValueError):
    """A buffer whose bytes are not in C order (strided, Fortran-order): nothing is stored.

    Also a ValueError, the type this error had before it was a TypeError as well.
    """


class InvalidKeyError(FlatFileDbError, TypeError):
    """A keyed store's key that is neither a str nor bytes (or a str that is not valid UTF-8)."""


class KeyTooLongError(InvalidKeyError, ValueError):
    """A keyed store's key longer than its index allows (510 bytes, UTF-8 for a str)."""


class InvalidLogPositionError(FlatFileDbError, ValueError):
    """A position in the log (``log_tail``) with a field out of range: a segment below -1 or past
    the largest segment number, a negative offset."""


class LogPositionTypeError(InvalidLogPositionError, TypeError):
    """A position in the log that is not a ``LogPosition`` of ints (``log_tail``, ``log_moved``)."""


class NotAnArrayError(FlatFileDbError, ValueError):
    """``get_array`` of a key stored as plain bytes, or an array that cannot be stored as one
    (object dtype: it would need pickle, which the keyed store never uses)."""


class FormatError(FlatFileDbError, ValueError):
    """A file does not have the layout FORMAT.md describes (bad magic, version, size)."""


class IndexVersionError(FormatError):
    """A record index written by a newer release: a format version this one does not know.

    Never taken for a damaged or missing index (recovery would index the segment again as
    legacy data and destroy what the newer release recorded): opening or reading such a
    segment is refused, and its files are left as they are.
    """


class CorruptionError(FlatFileDbError):
    """Stored bytes fail a checksum or structural check.

    Attributes:
        path: the file in which the problem was found.
        offset: byte offset in that file (or in the segment's uncompressed space,
            as the message says), or -1 when not applicable.
    """

    def __init__(self, message: str, path: str, offset: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class TieringError(FlatFileDbError):
    """A problem with the object-storage tier (``Tiering``, ``FlatFileDb.open_remote``)."""


class TieringOptionError(TieringError, ValueError, TypeError):
    """An option of ``Tiering`` (or ``open_remote``) that the object-store client refuses: an
    unknown key, or a value of the wrong type or form. Raised before any request is sent."""


class RemoteUnavailableError(TieringError, ConnectionError):
    """The object store did not answer usefully after the retries (connection refused or
    reset, 5xx responses, a timeout): nothing was lost; try again later."""


class RemoteTimeoutError(RemoteUnavailableError, TimeoutError):  # pylint: disable=too-many-ancestors  # two builtins
    """A request to the object store, or a wait for the tier (``sync_tiering(timeout=)``), timed out."""


class RemoteAccessError(TieringError, PermissionError):
    """The object store refused the credentials (wrong key or secret, or no permission)."""


class BucketNotFoundError(TieringError, FileNotFoundError):
    """The bucket named by the tier's URL does not exist."""


class UnsafeRemoteError(TieringError):
    """The object store lacks what the tier relies on (ranged GETs, conditional creates), or
    the prefix belongs to another store: refused at open, with the reason."""


class RemoteCorruptionError(CorruptionError, TieringError):
    """Bytes from the object store failed their checksum (after a retry), or an object the
    tier wrote is not what it should be. Never returned to a caller as data."""


class RemoteOnlySegmentError(InvalidLocationError, TieringError):
    """The operation needs a segment's local file (``get_view`` maps it), and the segment
    lives only in the object store now: use ``get``."""
