"""Misuse of the engine's public arguments: each is refused with a typed error, before
anything is stored, and never leaks an error from inside (ValueError of a format string,
OverflowError, an unpacking error)."""

from __future__ import annotations

from typing import Any

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import InvalidLocationError


@pytest.mark.parametrize("number", [1.0, "3", None, True, float("nan")])
def test_segment_path_of_a_non_int_is_type_error(store: FlatFileDb, number: Any) -> None:
    """segment_path() of anything but an int names no segment: TypeError, not a ValueError of
    a format string nor a path of segment True."""
    store.put(b"a")
    with pytest.raises(TypeError, match="segment number"):
        store.segment_path(number)


@pytest.mark.parametrize("number", [-1, 2**32, 2**70])
def test_segment_path_out_of_range_is_invalid_location(store: FlatFileDb, number: int) -> None:
    """A number no segment file can have is refused, not made into data_-0000001.dat."""
    store.put(b"a")
    with pytest.raises(InvalidLocationError, match=str(number)):
        store.segment_path(number)
