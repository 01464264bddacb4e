"""A power loss before the fsync of an array made by ``create_array`` was confirmed.

The exit of the with-block commits the array's file by rename without waiting for the disk (the
engine's sync thread fsyncs it afterwards). The value has no checksum: after a power loss that
beat the fsync, its blocks could hold zeros and nothing could tell. The tests forge that state
(the segments' state page from another boot, its word 15 at the array's segment, the array's
data zeroed; the key logs and the index kept as they were, so the index is ahead of what the
engine keeps) and check that the key then has its value from before the write, or none, never
the zeros; that every other key is intact; and that verify() is clean.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy
import pytest
from keyed_support import INDEXES, open_keyed, value_for

from conduit_flat_file_db.keyed.core import SEGMENTS_DIR
from conduit_flat_file_db.naming import STATE_FILE_NAME, segment_name
from conduit_flat_file_db.state import W_BOOT_HI, W_BOOT_LO, W_SYNCED_BELOW

pytestmark = pytest.mark.crash

SHAPE = (256, 1024)  # uint64: 2 MiB
OTHERS = [f"key{i}" for i in range(20)]


def set_word(segments: Path, word: int, value: int) -> None:
    """Write one word of the engine's state page (as a writer process does, through the file)."""
    with open(segments / STATE_FILE_NAME, "r+b") as handle:
        handle.seek(8 * word)
        handle.write(value.to_bytes(8, "little"))


@INDEXES
@pytest.mark.parametrize("before", [False, True], ids=["new-key", "overwritten-key"])
def test_array_not_known_fsynced_is_lost_whole_after_a_power_loss(
    tmp_path: Path, index: str, before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The open removes the array's segment and rebuilds the index: the key is absent (or has its
    value before create_array), not pointing at a missing segment or at zeros; the keys written
    before and after it read back; verify() is clean; a second open agrees."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        for key in OTHERS[:10]:
            store.put(key, value_for(key, 1))
        if before:
            store.put("array", value_for("array", 1))
        with store.create_array("array", SHAPE, "uint64") as array:
            array[:] = 7
        for key in OTHERS[10:]:
            store.put(key, value_for(key, 1))
        number = store.meta("array").segment  # (the close applies the index: it has the row)
    segments = path / SEGMENTS_DIR
    data = segments / segment_name(number, False)
    set_word(segments, W_BOOT_LO, 0x1234)
    set_word(segments, W_BOOT_HI, 0x5678)
    set_word(segments, W_SYNCED_BELOW, number)
    with open(data, "r+b") as handle:
        handle.write(bytes(os.path.getsize(data)))
    expected = {key: value_for(key, 1) for key in OTHERS}
    if before:
        expected["array"] = value_for("array", 1)
    for attempt in ("first open", "second open"):
        with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"), open_keyed(path, index) as store:
            assert not data.exists(), f"{attempt}: the array's segment was kept"
            assert {key: store[key] for key in store} == expected, attempt
            if not before:
                with pytest.raises(KeyError):
                    store.get_array("array")
            report = store.verify()
            assert report.ok, (attempt, report.problems)
        if attempt == "first open":
            assert data.name in caplog.text, caplog.text


@INDEXES
def test_array_known_fsynced_survives_a_power_loss(tmp_path: Path, index: str) -> None:
    """sync() waited for the array's fsync and word 15 reached the disk (close() with fsync=False
    does not wait for it): after a power loss the array is kept and reads back."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        with store.create_array("array", SHAPE, "uint64") as array:
            array[:] = 7
        store.sync()
    set_word(path / SEGMENTS_DIR, W_BOOT_LO, 0x1234)
    with open_keyed(path, index) as store:
        back = store.get_array("array")
        assert back.shape == SHAPE and bool(numpy.all(back == 7))
        del back
        assert store.verify().ok
