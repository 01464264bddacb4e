"""Files adopted without a checksum (``adopt_file`` without ``verify``) and a power loss.

With fsync=False an adopted file is committed by rename and fsynced afterwards by the sync
thread, which then records it in word W_SYNCED_BELOW of the state page and fsyncs the page. A
power loss before that may leave the segment's blocks holding zeros (or older bytes), at the
right size: with no checksum nothing could tell. The tests below forge that state (a page from
another boot whose W_SYNCED_BELOW is at or below the adopted segment, its data zeroed or not)
and check that a writer's open removes the segment, logging an error that names it, and keeps
everything else; that a read-only open refuses it; and that adopted segments known to be
fsynced, or checked ones (``verify=True``), are kept as any sealed segment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import pytest
from crash_support import set_state_word, state_word, zero_bytes

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.errors import CorruptionError, FlatFileDbNotFoundError, InvalidLocationError
from conduit_flat_file_db.naming import index_name, parse_segment_name
from conduit_flat_file_db.seal import holds_unchecked
from conduit_flat_file_db.seekable import SeekableWriter
from conduit_flat_file_db.state import W_BOOT_HI, W_BOOT_LO, W_SYNCED_BELOW
from conduit_flat_file_db.types import DataLocation

pytestmark = pytest.mark.crash

ADOPTED = bytes(range(256)) * 4096  # 1 MiB that zeros cannot pass for


class Written(NamedTuple):
    """A store after its writes: the adopted file's location, and every other blob with its bytes."""

    adopted: DataLocation
    others: list[tuple[DataLocation, bytes]]

    @property
    def number(self) -> int:
        """The adopted segment's number."""
        number = parse_segment_name(os.path.basename(self.adopted.file_path))
        assert number is not None
        return number


def open_store(datadir: Path, **options: object) -> FlatFileDb:
    """The store under test (small segments: the adopted one lies between sealed ones)."""
    db = FlatFileDb(datadir, str(datadir) + ".lock", **options)  # type: ignore[arg-type]
    db.MAX_DAT_FILE_SIZE = 16 * 1024
    return db


def write(tmp_path: Path, seekable: bool, verify: bool = False) -> Written:
    """Blobs in sealed segments, an adopted file, blobs after it; synced (which waits for every
    background fsync: word 15 ends past the adopted segment), then closed."""
    datadir = tmp_path / "store"
    source = tmp_path / "incoming.bin"
    if seekable:
        with SeekableWriter(source, "w", frame_bytes=64 * 1024) as writer:
            writer.write(ADOPTED)
    else:
        source.write_bytes(ADOPTED)
    db = open_store(datadir)
    try:
        others = [(db.put(data), data) for data in (bytes([n]) * 3000 for n in range(12))]
        adopted = db.adopt_file(source, verify=verify)
        others += [(db.put(data), data) for data in (bytes([n]) * 3000 for n in range(12, 24))]
        db.sync()
    finally:
        db.close()
    written = Written(adopted, others)
    assert state_word(datadir, W_SYNCED_BELOW) > written.number
    return written


def forge_power_loss(datadir: Path, synced_below: int | None, zero: DataLocation | None) -> None:
    """A state page from another boot (word 15 lowered to ``synced_below`` when given: the fsync of
    what is above it never confirmed), and the data file of ``zero`` zeroed (never written back)."""
    set_state_word(datadir, W_BOOT_LO, 0x1234)
    set_state_word(datadir, W_BOOT_HI, 0x5678)
    if synced_below is not None:
        set_state_word(datadir, W_SYNCED_BELOW, synced_below)
    if zero is not None:
        zero_bytes(Path(zero.file_path), 0, os.path.getsize(zero.file_path))


def assert_others_read(db: FlatFileDb, written: Written) -> None:
    """Every blob but the adopted one reads back its own bytes, and verify() is clean."""
    for location, data in written.others:
        assert db.get(location) == data, f"{location} lost or changed"
    report = db.verify()
    assert report.ok, report.problems


@pytest.mark.parametrize("zeroed", [False, True], ids=["intact", "zeroed"])
@pytest.mark.parametrize("seekable", [False, True], ids=["raw-file", "zst-file"])
def test_unchecked_adoption_not_known_fsynced_is_removed_after_a_power_loss(
    tmp_path: Path, seekable: bool, zeroed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Its blocks may hold zeros and nothing can check them: the open removes the segment (data and
    index), logs an error naming it, and reports it in lost_segments(); its location raises
    FlatFileDbNotFoundError; every other blob reads back; the store verifies clean and goes on."""
    written = write(tmp_path, seekable)
    datadir = tmp_path / "store"
    forge_power_loss(datadir, written.number, written.adopted if zeroed else None)
    with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
        db = open_store(datadir)
    try:
        name = os.path.basename(written.adopted.file_path)
        assert any(name in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records), caplog.text
        assert not os.path.exists(written.adopted.file_path) and not (datadir / index_name(written.number)).exists()
        assert db.lost_segments() == [written.number]
        with pytest.raises(FlatFileDbNotFoundError):
            db.get(written.adopted)
        assert_others_read(db, written)
        after = db.put(b"after the power loss")
        assert db.get(after) == b"after the power loss"
    finally:
        db.close()
    db = open_store(datadir)
    try:
        assert not db.lost_segments() and db.get(after) == b"after the power loss"
        assert_others_read(db, written)
    finally:
        db.close()


@pytest.mark.parametrize("seekable", [False, True], ids=["raw-file", "zst-file"])
def test_unchecked_adoption_known_fsynced_survives_a_power_loss(tmp_path: Path, seekable: bool) -> None:
    """Word 15 on disk past the adopted segment: its fsync was done, it is kept and reads back."""
    written = write(tmp_path, seekable)
    forge_power_loss(tmp_path / "store", None, None)
    db = open_store(tmp_path / "store")
    try:
        assert not db.lost_segments() and db.get(written.adopted) == ADOPTED
        assert_others_read(db, written)
    finally:
        db.close()


@pytest.mark.parametrize("zeroed", [False, True], ids=["intact", "zeroed"])
def test_checked_adoption_not_known_fsynced_is_checked_as_any_sealed_segment(tmp_path: Path, zeroed: bool) -> None:
    """verify=True gave the blob a checksum: after a power loss the segment is checked, not removed;
    intact it is kept, zeroed its blob is cut (its location then fails as past the end)."""
    written = write(tmp_path, False, verify=True)
    forge_power_loss(tmp_path / "store", written.number, written.adopted if zeroed else None)
    db = open_store(tmp_path / "store")
    try:
        assert not db.lost_segments() and os.path.exists(written.adopted.file_path)
        if zeroed:
            with pytest.raises(InvalidLocationError):
                db.get(written.adopted)
        else:
            assert db.get(written.adopted) == ADOPTED
        assert_others_read(db, written)
    finally:
        db.close()


def test_read_only_open_after_a_power_loss_refuses_an_unchecked_adoption_not_known_fsynced(tmp_path: Path) -> None:
    """Before a writer's open repairs the store, a read-only open serves every other blob but
    refuses the adopted one (CorruptionError) rather than bytes nothing can check."""
    written = write(tmp_path, False)
    datadir = tmp_path / "store"
    forge_power_loss(datadir, written.number, written.adopted)
    db = FlatFileDb(datadir, readonly=True)
    try:
        with pytest.raises(CorruptionError):
            db.get(written.adopted)
        for location, data in written.others:
            assert db.get(location) == data
    finally:
        db.close()


def test_only_a_file_adopted_without_checksum_is_taken_for_one(tmp_path: Path) -> None:
    """holds_unchecked, asked by the sync thread of every segment it fsyncs: true for an unchecked
    adoption only; false for a checked one, a segment of puts, a missing segment, and a directory
    in an index's place (refused as not ours, never an error that would end the thread)."""
    written = write(tmp_path, False)
    (tmp_path / "checked").mkdir()
    checked = write(tmp_path / "checked", False, verify=True)
    datadir = tmp_path / "store"
    (datadir / index_name(900)).mkdir()
    dir_fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY)
    checked_fd = os.open(tmp_path / "checked" / "store", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert holds_unchecked(dir_fd, written.number)
        assert not holds_unchecked(checked_fd, checked.number)
        assert not holds_unchecked(dir_fd, written.number - 1)  # a sealed segment of puts
        assert not holds_unchecked(dir_fd, 899) and not holds_unchecked(dir_fd, 900)
    finally:
        os.close(dir_fd)
        os.close(checked_fd)
