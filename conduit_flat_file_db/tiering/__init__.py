"""Tiering: a store's sealed segments in S3-compatible object storage (``pip install
'conduit_flat_file_db[s3]'``). ``Tiering`` configures it; FORMAT.md "Object storage" and
GUARANTEES.md "Tiering" say what is in the bucket and what each failure costs."""

from __future__ import annotations

from ..errors import (
    BucketNotFoundError,
    RemoteAccessError,
    RemoteCorruptionError,
    RemoteOnlySegmentError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    TieringError,
    TieringOptionError,
    UnsafeRemoteError,
)
from .config import Tiering
from .remote_db import RemoteFlatFileDb

__all__ = [
    "BucketNotFoundError",
    "RemoteAccessError",
    "RemoteCorruptionError",
    "RemoteFlatFileDb",
    "RemoteOnlySegmentError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "Tiering",
    "TieringError",
    "TieringOptionError",
    "UnsafeRemoteError",
]
