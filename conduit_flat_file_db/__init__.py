"""conduit_flat_file_db: an append-only flat-file BLOB storage engine."""

from __future__ import annotations

from .errors import (
    CorruptionError,
    FlatFileDbError,
    FlatFileDbLockTimeoutError,
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    FlatFileDbUnsafeAccessError,
    FormatError,
    IndexVersionError,
    InvalidKeyError,
    InvalidLocationError,
    KeyTooLongError,
    NonContiguousBufferError,
    NotAnArrayError,
    UnsupportedBufferError,
)
from .flat_file_db import FlatFileDb
from .keyed import IndexDamagedError, IndexWriteError, KeyedStats, KeyedStore, KeyedVerifyReport, KeyMeta, VacuumResult
from .maintenance import Compaction, CompressMode, RecompressResult, SegmentStats, StoreStats
from .streams import LazyOpener
from .types import PACKED_LOCATION_BYTES, BlobRecord, DataLocation, Slice
from .verify import Problem, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "PACKED_LOCATION_BYTES",
    "BlobRecord",
    "Compaction",
    "CompressMode",
    "CorruptionError",
    "DataLocation",
    "FlatFileDb",
    "FlatFileDbError",
    "FlatFileDbLockTimeoutError",
    "FlatFileDbNotFoundError",
    "FlatFileDbReadOnlyError",
    "FlatFileDbUnsafeAccessError",
    "FormatError",
    "IndexDamagedError",
    "IndexVersionError",
    "IndexWriteError",
    "InvalidKeyError",
    "InvalidLocationError",
    "KeyMeta",
    "KeyTooLongError",
    "KeyedStats",
    "KeyedStore",
    "KeyedVerifyReport",
    "LazyOpener",
    "NonContiguousBufferError",
    "NotAnArrayError",
    "Problem",
    "RecompressResult",
    "SegmentStats",
    "Slice",
    "StoreStats",
    "UnsupportedBufferError",
    "VacuumResult",
    "VerifyReport",
    "__version__",
]
