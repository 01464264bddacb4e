"""The keyed store: a dict and a content-addressed container on the engine (``KeyedStore``)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from .index_base import IndexDamagedError, IndexWriteError
from .keylog import MAX_KEY_BYTES
from .mapping import KeyMeta
from .upkeep import KeyedStats, KeyedVerifyReport, MaintainedStore, VacuumResult


class KeyedStore(MaintainedStore, MutableMapping[Any, bytes]):
    """A mapping of str or bytes keys to bytes values, stored in a directory.

    ``KeyedStore(path, *, readonly=False, use_compression=False, fsync=False, index="sqlite",
    max_file_size=128 MiB, lock_timeout=None, skip_damaged_logs=False)``. The directory holds ``segments/`` (the
    engine's segments: the values, and the key-log records that say which key each value
    belongs to), the index (``index.sqlite3``, or ``index.lmdb/`` with ``index="lmdb"``),
    and lock files. The key logs are the durable truth: the index is rebuilt from them when
    it is lost or damaged. Many threads and processes may use a store at once, maintenance
    (vacuum) included. ``readonly=True`` opens it for reading only: every write raises
    FlatFileDbReadOnlyError, an ``io.UnsupportedOperation``.

    A key-log record damaged on disk (it fails its checksum or does not decode) is a
    CorruptionError for every read that needs it, a writer's open included: the keys it wrote
    are unknown. ``skip_damaged_logs=True`` reads past it (logged as an error, listed by
    ``verify()``): those keys keep their values from before it, or are absent. A record of a
    newer release's format is refused either way.

    Keys are str or bytes (a str and a bytes key are different keys), at most 510 bytes
    (UTF-8 for a str); values are bytes-like. See README "Keyed store" and GUARANTEES.md.
    """


__all__ = [
    "MAX_KEY_BYTES",
    "IndexDamagedError",
    "IndexWriteError",
    "KeyMeta",
    "KeyedStats",
    "KeyedStore",
    "KeyedVerifyReport",
    "VacuumResult",
]
