"""conduit_flat_file_db: an append-only flat-file BLOB storage engine."""

from __future__ import annotations

from .errors import (
    CorruptionError,
    FlatFileDbError,
    FlatFileDbLockTimeoutError,
    FlatFileDbNotFoundError,
    FlatFileDbUnsafeAccessError,
    FormatError,
    InvalidLocationError,
)
from .store import FlatFileDb
from .types import PACKED_LOCATION_BYTES, BlobRecord, DataLocation, Slice

__version__ = "0.1.0"

__all__ = [
    "BlobRecord",
    "CorruptionError",
    "DataLocation",
    "FlatFileDb",
    "FlatFileDbError",
    "FlatFileDbLockTimeoutError",
    "FlatFileDbNotFoundError",
    "FlatFileDbUnsafeAccessError",
    "FormatError",
    "InvalidLocationError",
    "PACKED_LOCATION_BYTES",
    "Slice",
    "__version__",
]
