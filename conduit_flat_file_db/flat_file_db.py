"""The compatibility face: the names the original engine's README imports from here."""

from __future__ import annotations

from .errors import FlatFileDbUnsafeAccessError
from .maintenance import FlatFileDb
from .types import DataLocation, Slice

MAX_DAT_FILE_SIZE = 128 * 2**20

__all__ = ["FlatFileDb", "FlatFileDbUnsafeAccessError", "DataLocation", "Slice", "MAX_DAT_FILE_SIZE"]
