"""Sealed segments whose background fsync a power loss beat.

A seal writes the SEAL record (compressed: also the final seek table) and returns; the
segment is fsynced by a background thread, which then raises word W_SYNCED_BELOW of the
state page. A power loss before that can leave the segment's data or index short, or
hold zeros where data was. The tests below forge exactly that state: a state page from
another boot whose W_SYNCED_BELOW is at or below the damaged segment. Recovery on open
must check those segments, cut a damaged one back to its last blob that checks, seal it
again (SEAL record and seek table), and leave every other blob readable.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
from crash_support import cut_file, index_records_of, set_state_word, state_word, zero_bytes

import conduit_flat_file_db.seal as seal_module
import conduit_flat_file_db.syncer as syncer_module
from conduit_flat_file_db import CompressMode, FlatFileDb
from conduit_flat_file_db.errors import InvalidLocationError
from conduit_flat_file_db.index import HEADER_BYTES, REC_BLOB, REC_FRAME, REC_SEAL, RECORD_BYTES
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, parse_segment_name, segment_name
from conduit_flat_file_db.seal import seal_problem
from conduit_flat_file_db.seekable import SeekableReader, write_padding_and_table
from conduit_flat_file_db.segment import PADDING_MIN_BYTES
from conduit_flat_file_db.state import W_BOOT_HI, W_BOOT_LO, W_SYNCED_BELOW
from conduit_flat_file_db.types import DataLocation

pytestmark = pytest.mark.crash

SEGMENT_BYTES = 24 * 1024
DAMAGED = 1  # the segment the tests damage; segment 0 stays known-durable


class Blob(NamedTuple):
    """One put: where it went and what it was."""

    location: DataLocation
    data: bytes

    @property
    def segment(self) -> int:
        """Number of the segment holding it."""
        number = parse_segment_name(os.path.basename(self.location.file_path))
        assert number is not None
        return number


def open_store(datadir: Path, compressed: bool, **options: object) -> FlatFileDb:
    """The store under test (compressed stores keep their put frames: no re-framing)."""
    options.setdefault("reframe_on_seal", False)
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=compressed, frame_bytes=1024, **options)  # type: ignore[arg-type]
    db.MAX_DAT_FILE_SIZE = SEGMENT_BYTES
    return db


def fill(datadir: Path, compressed: bool, **options: object) -> list[Blob]:
    """About four sealed segments of 300..3000-byte blobs, then a non-empty mutable one."""
    rng = random.Random(11)
    db = open_store(datadir, compressed, **options)
    blobs: list[Blob] = []
    try:
        while db.mutable_segment() < 4 or not blobs or blobs[-1].segment < 4:
            data = bytes(rng.getrandbits(8) if i % 3 else 97 for i in range(rng.randint(300, 3000)))
            blobs.append(Blob(db.put(data), data))
        db.sync()  # waits for the background fsyncs (close() does not, with fsync=False)
    finally:
        db.close()
    assert state_word(datadir, W_SYNCED_BELOW) == 4
    return blobs


def forge_power_loss(datadir: Path, synced_below: int) -> None:
    """Make the state page look written before a reboot, with fsyncs confirmed below ``synced_below``."""
    set_state_word(datadir, W_SYNCED_BELOW, synced_below)
    set_state_word(datadir, W_BOOT_LO, 0x1234)
    set_state_word(datadir, W_BOOT_HI, 0x5678)


def records(datadir: Path, number: int, rtype: int) -> list[tuple[int, int, int]]:
    """(a, b, c) of the records of one type in a segment's index."""
    return [(r.offset, r.size, r.extra) for r in index_records_of(datadir, number) if r.rtype == rtype]


def data_file(datadir: Path, number: int) -> Path:
    """The data file of segment ``number``, either suffix."""
    for compressed in (False, True):
        path = datadir / segment_name(number, compressed)
        if path.exists():
            return path
    raise AssertionError(f"segment {number} has no data file")


def lose_data_tail(datadir: Path, blobs: list[Blob]) -> int:
    """The data file lost everything from inside its last blob on; returns the blobs kept."""
    mine = [b for b in blobs if b.segment == DAMAGED]
    path = data_file(datadir, DAMAGED)
    frames = records(datadir, DAMAGED, REC_FRAME)
    cut_file(path, frames[-1][2] + 3 if frames else mine[-1].location.start_offset + 1)
    if frames:  # the last frame is cut: every blob that reaches into it is lost
        last_frame_start = frames[-1][0]
        return sum(1 for b in mine if b.location.end_offset <= last_frame_start)
    return len(mine) - 1


def lose_index_tail(datadir: Path, blobs: list[Blob]) -> int:
    """The index lost its SEAL and its last BLOB record; returns the blobs kept."""
    path = datadir / index_name(DAMAGED)
    raw = path.read_bytes()
    last_blob = max(i for i in range(HEADER_BYTES, len(raw), RECORD_BYTES) if raw[i] == REC_BLOB)
    cut_file(path, last_blob)
    return sum(1 for b in blobs if b.segment == DAMAGED) - 1


def zero_a_middle_blob(datadir: Path, blobs: list[Blob]) -> int:
    """Zeros where a blob in the middle of the segment was; returns the blobs kept (those before it)."""
    mine = [b for b in blobs if b.segment == DAMAGED]
    victim = mine[len(mine) // 2]
    frames = records(datadir, DAMAGED, REC_FRAME)
    if frames:  # zero the first frame holding the victim's first byte
        frame = max(f for f in frames if f[0] <= victim.location.start_offset)
        zero_bytes(data_file(datadir, DAMAGED), frame[2], frame[1] >> 32)
        return sum(1 for b in mine if b.location.end_offset <= frame[0])
    zero_bytes(data_file(datadir, DAMAGED), victim.location.start_offset, 50)
    return len(mine) // 2


DAMAGE: dict[str, Callable[[Path, list[Blob]], int]] = {
    "data tail lost": lose_data_tail,
    "index tail lost": lose_index_tail,
    "zeros in the middle": zero_a_middle_blob,
}


def assert_resealed(db: FlatFileDb, datadir: Path, blobs: list[Blob], kept: int) -> None:
    """The damaged segment holds its first ``kept`` blobs and is sealed again; the rest is untouched."""
    mine = [b for b in blobs if b.segment == DAMAGED]
    assert 0 < kept < len(mine)
    for blob in blobs:
        if blob.segment != DAMAGED or mine.index(blob) < kept:
            assert db.get(blob.location) == blob.data, blob.location
        else:
            with pytest.raises(InvalidLocationError):
                db.get(blob.location)  # past the sealed end: never served
    end = mine[kept - 1].location.end_offset
    seal = records(datadir, DAMAGED, REC_SEAL)
    assert [(a, b) for a, b, _ in seal] == [(end, kept)]
    assert len(records(datadir, DAMAGED, REC_BLOB)) == kept
    assert index_records_of(datadir, DAMAGED)[-1].rtype == REC_SEAL
    path = data_file(datadir, DAMAGED)
    if path.suffix == ".zst":
        with SeekableReader(str(path)) as reader:  # a plain seek table for exactly the kept bytes
            assert reader.size == end
            assert reader.read_range(0, end) == b"".join(b.data for b in mine[:kept])
    else:
        assert path.stat().st_size == end
    dir_fd = os.open(datadir, os.O_RDONLY)
    try:
        assert seal_problem(dir_fd, DAMAGED, full=True) is None
    finally:
        os.close(dir_fd)
    report = db.verify()
    assert report.ok, str(report)
    more = db.put(b"after the power loss")
    assert db.get(more) == b"after the power loss"
    assert state_word(datadir, W_SYNCED_BELOW) == db.mutable_segment()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_unsynced_sealed_segment_is_cut_and_sealed_again(
    tmp_path: Path, damage: str, compressed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Each kind of damage costs the blobs from the damage on, and only those."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, compressed)
    kept = DAMAGE[damage](datadir, blobs)
    forge_power_loss(datadir, synced_below=DAMAGED)
    with caplog.at_level(logging.WARNING, logger="conduit_flat_file_db"):
        db = open_store(datadir, compressed)
        try:
            assert db.mutable_segment() == 5  # the mutable segment was sealed: its lost offsets stay lost
            assert_resealed(db, datadir, blobs, kept)
        finally:
            db.close()
    assert "sealed segment damaged by a power loss" in caplog.text


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_intact_unsynced_sealed_segments_lose_nothing(
    tmp_path: Path, compressed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Unconfirmed but whole: checked, nothing cut, nothing rewritten (the mutable segment, 4,
    is sealed as after every power loss, and segment 5 takes the puts)."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, compressed)
    sealed_names = [name for name in os.listdir(datadir) if name != STATE_FILE_NAME and _number(name) < 4]
    before = {name: (datadir / name).read_bytes() for name in sealed_names}
    forge_power_loss(datadir, synced_below=0)
    with caplog.at_level(logging.WARNING, logger="conduit_flat_file_db"):
        db = open_store(datadir, compressed)
        try:
            for blob in blobs:
                assert db.get(blob.location) == blob.data
            assert state_word(datadir, W_SYNCED_BELOW) == 5
            assert db.mutable_segment() == 5
        finally:
            db.close()
    assert "damaged" not in caplog.text and "cut" not in caplog.text
    after = {name: (datadir / name).read_bytes() for name in sealed_names}
    assert after == before


def _number(name: str) -> int:
    """The segment number in a data or index file name."""
    return int(name[len("data_") : len("data_") + 8])


def test_segments_confirmed_durable_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only segments at or above W_SYNCED_BELOW are checked: reopening a large store after a
    power loss reads what was exposed, not every segment."""
    datadir = tmp_path / "store"
    fill(datadir, False)
    forge_power_loss(datadir, synced_below=3)
    checked: list[int] = []
    real = seal_problem

    def spy(dir_fd: int, number: int, *, full: bool) -> str | None:
        checked.append(number)
        return real(dir_fd, number, full=full)

    monkeypatch.setattr("conduit_flat_file_db.writer_recovery.seal_problem", spy)
    open_store(datadir, False).close()
    assert checked == [3]


def test_lost_state_page_checks_every_sealed_segment_by_size(tmp_path: Path) -> None:
    """With no state page nothing is known to be durable: every sealed segment gets the
    size check, which catches a lost data tail."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, False)
    kept = lose_data_tail(datadir, blobs)
    os.unlink(datadir / STATE_FILE_NAME)
    db = open_store(datadir, False)
    try:
        assert_resealed(db, datadir, blobs, kept)
    finally:
        db.close()


def test_same_boot_reopen_fsyncs_segments_a_dead_writer_left_unconfirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same boot, so no power loss: the unconfirmed segments are fsynced by the opener's sync
    thread (the open does not wait for them), the older ones are not."""
    datadir = tmp_path / "store"
    fill(datadir, False)
    set_state_word(datadir, W_SYNCED_BELOW, 2)  # as if the sealing process died before its fsyncs
    synced = fsync_spy(monkeypatch)
    db = open_store(datadir, False)
    try:
        assert not [name for name, thread in synced if thread != "ffdb-seal-sync"]  # the open fsynced nothing itself
        deadline = time.monotonic() + 30
        while state_word(datadir, W_SYNCED_BELOW) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state_word(datadir, W_SYNCED_BELOW) == 4
    finally:
        db.close()
    names = {name for name, thread in synced if thread == "ffdb-seal-sync"}
    assert {segment_name(2, False), index_name(2), segment_name(3, False), index_name(3)} <= names
    assert not {name for name, _thread in synced} & {segment_name(0, False), segment_name(1, False)}


def test_close_without_fsync_leaves_a_running_seal_fsync_and_the_next_open_confirms_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync=False: close() returns while the sync thread is still inside a seal's fsync; that
    thread touches the state page no more, and the next open fsyncs the segment and confirms it."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, False)
    set_state_word(datadir, W_SYNCED_BELOW, 3)
    entered, release = threading.Event(), threading.Event()
    real = os.fsync

    def slow(fd: int) -> None:
        if threading.current_thread().name == "ffdb-seal-sync":
            entered.set()
            release.wait(60)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    db = open_store(datadir, False)
    assert entered.wait(30)  # the opener's sync thread is fsyncing segment 3
    closer = threading.Thread(target=db.close)
    closer.start()
    closer.join(10)
    try:
        assert not closer.is_alive()  # close() did not wait for the disk
    finally:
        release.set()
        closer.join()
    monkeypatch.setattr(os, "fsync", real)
    deadline = time.monotonic() + 30
    while any(t.name == "ffdb-seal-sync" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state_word(datadir, W_SYNCED_BELOW) == 3  # the abandoned thread did not confirm it
    with open_store(datadir, False) as again:
        deadline = time.monotonic() + 30
        while state_word(datadir, W_SYNCED_BELOW) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state_word(datadir, W_SYNCED_BELOW) == 4
        assert all(again.get(blob.location) == blob.data for blob in blobs)


def fsync_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record (file name, thread name) of every os.fsync from now on."""
    calls: list[tuple[str, str]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), threading.current_thread().name))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_a_seal_is_fsynced_by_the_background_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    """The writer that seals does not fsync the sealed segment (neither under the write lock nor
    after it); the store's sync thread does, then confirms it in the state page."""
    db = open_store(tmp_path / "store", compressed)
    try:
        db.put(b"x" * 5000)
        db.sync()
        calls = fsync_spy(monkeypatch)
        db.rotate()
        sealed = {segment_name(0, compressed), index_name(0)}
        db.sync()  # waits for the background fsync
        by_thread = {(name, thread) for name, thread in calls if name in sealed}
        assert by_thread == {(name, "ffdb-seal-sync") for name in sealed}
        assert state_word(tmp_path / "store", W_SYNCED_BELOW) == 1
    finally:
        db.close()


def test_forked_child_seals_with_its_own_sync_thread(tmp_path: Path) -> None:
    """A child forked from a process whose sync thread ran starts its own and confirms its seals."""
    datadir = tmp_path / "store"
    db = open_store(datadir, False)
    try:
        db.put(b"parent")
        db.rotate()
        pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit code
            code = 1
            try:
                db.put(b"child")
                db.rotate()
                db.sync()
                code = 0 if state_word(datadir, W_SYNCED_BELOW) == 2 else 2
            finally:
                os._exit(code)  # pylint: disable=protected-access
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        db.put(b"parent again")
        db.rotate()
        db.sync()
        assert state_word(datadir, W_SYNCED_BELOW) == 3
    finally:
        db.close()


def test_recovery_never_cuts_a_rewritten_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A re-framed segment was fsynced before its switch, so bad bytes in it are not a power-loss
    tail: recovery logs it for verify() and cuts nothing."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, True, reframe_on_seal=True)
    path = data_file(datadir, DAMAGED)
    size = path.stat().st_size
    zero_bytes(path, size // 2, 64)
    forge_power_loss(datadir, synced_below=DAMAGED)
    with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
        db = open_store(datadir, True, reframe_on_seal=True)
        try:
            assert path.stat().st_size == size
            assert not db.verify().ok
            for blob in blobs:
                if blob.segment != DAMAGED:
                    assert db.get(blob.location) == blob.data
        finally:
            db.close()
    assert "was rewritten, so it is not cut" in caplog.text


@pytest.mark.parametrize("seal_record", ["kept", "lost"])
def test_seal_whose_seek_table_never_landed(tmp_path: Path, seal_record: str) -> None:
    """The seal's plain seek table did not reach the disk: the file still ends in the mutable
    layout (padding frame, table with a padding entry). That is a power-loss tail, not a
    rewrite: no blob is lost. Without its SEAL record the segment is sealed again; with it,
    the file is a valid seekable file of exactly the sealed bytes and stays as it is."""
    datadir = tmp_path / "store"
    blobs = fill(datadir, True)
    frames = records(datadir, DAMAGED, REC_FRAME)
    frames_end = frames[-1][2] + (frames[-1][1] >> 32)
    fd = os.open(data_file(datadir, DAMAGED), os.O_RDWR)
    try:
        os.ftruncate(fd, frames_end)
        write_padding_and_table(fd, frames_end, [(b >> 32, b & 0xFFFFFFFF) for _, b, _ in frames], PADDING_MIN_BYTES)
    finally:
        os.close(fd)
    if seal_record == "lost":
        index = datadir / index_name(DAMAGED)
        cut_file(index, index.stat().st_size - RECORD_BYTES)
    forge_power_loss(datadir, synced_below=DAMAGED)
    db = open_store(datadir, True)
    try:
        mine = [b for b in blobs if b.segment == DAMAGED]
        for blob in blobs:
            assert db.get(blob.location) == blob.data
        assert [(a, b) for a, b, _ in records(datadir, DAMAGED, REC_SEAL)] == [
            (mine[-1].location.end_offset, len(mine))
        ]
        with SeekableReader(str(data_file(datadir, DAMAGED))) as reader:
            assert reader.size == mine[-1].location.end_offset
            if seal_record == "lost":  # sealed again: a plain table, the padding entry is gone
                assert len(reader.table) == len(frames)
        assert db.verify().ok
    finally:
        db.close()


def test_auto_compression_mode_confirms_its_seals(tmp_path: Path) -> None:
    """CompressMode.AUTO recompresses sealed segments after the seal; they are fsynced and
    confirmed all the same."""
    datadir = tmp_path / "store"
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=CompressMode.AUTO)
    db.MAX_DAT_FILE_SIZE = SEGMENT_BYTES
    try:
        rng = random.Random(3)
        while db.mutable_segment() < 3:
            db.put(rng.randbytes(8000))
        db.sync()
        assert state_word(datadir, W_SYNCED_BELOW) == 3
    finally:
        db.close()


def test_a_failed_fsync_is_reported_by_every_sync_and_confirms_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After an fsync error the kernel may have dropped the dirty pages: this store never again
    confirms a sealed segment as durable, and sync() keeps raising the error."""
    datadir = tmp_path / "store"
    db = open_store(datadir, False)
    failures = [OSError(errno.EIO, "Input/output error")]
    real = seal_module.sync_segment

    def failing(dir_fd: int, number: int) -> int:
        if failures:
            raise failures.pop()
        return real(dir_fd, number)

    monkeypatch.setattr(syncer_module, "sync_segment", failing)
    try:
        db.put(b"a" * 100)
        with caplog.at_level(logging.ERROR, logger="conduit_flat_file_db"):
            db.rotate()
            for _ in range(2):
                with pytest.raises(OSError) as info:
                    db.sync()
                assert info.value.errno == errno.EIO
        assert "fsync of a sealed segment failed" in caplog.text
        db.put(b"b" * 100)
        db.rotate()
        with pytest.raises(OSError):
            db.sync()
        assert state_word(datadir, W_SYNCED_BELOW) == 0
    finally:
        db.close()


def test_seals_are_confirmed_when_no_thread_can_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no new thread possible (a thread limit, an exiting interpreter) the sealing thread
    fsyncs the segment itself; nothing waits for a thread that never ran."""
    datadir = tmp_path / "store"
    db = open_store(datadir, False)

    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("ffdb-"):  # this library's threads: the sync thread, the lease reaper
            raise RuntimeError(f"can't start new thread {self.name}")
        real_start(self)

    try:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        for number in range(3):
            db.put(b"c" * 100)
            db.rotate()
            assert state_word(datadir, W_SYNCED_BELOW) == number + 1
        db.sync()
    finally:
        db.close()


def test_the_sync_thread_ends_when_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that stopped sealing holds no thread (so an unclosed store leaks none)."""
    monkeypatch.setattr(syncer_module, "_IDLE_SECONDS", 0.05)
    db = open_store(tmp_path / "store", False)
    try:
        db.put(b"d" * 100)
        db.rotate()
        db.sync()
        deadline = time.monotonic() + 10
        while any(t.name == "ffdb-seal-sync" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not [t for t in threading.enumerate() if t.name == "ffdb-seal-sync"]
        db.put(b"e" * 100)
        db.rotate()  # a new thread serves the next seal
        db.sync()
        assert state_word(tmp_path / "store", W_SYNCED_BELOW) == 2
    finally:
        db.close()


def test_a_process_exiting_without_close_confirms_its_seals(tmp_path: Path) -> None:
    """Interpreter exit waits for the sync thread (it is a daemon thread, killed otherwise)."""
    datadir = tmp_path / "store"
    script = (
        f"from conduit_flat_file_db import FlatFileDb\n"
        f"db = FlatFileDb({str(datadir)!r}, {str(datadir) + '.lock'!r})\n"
        f"db.MAX_DAT_FILE_SIZE = 4096\n"
        f"for _ in range(20):\n"
        f"    db.put(b'f' * 3000)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    mutable = max(n for n in map(parse_segment_name, os.listdir(datadir)) if n is not None)
    assert mutable >= 5
    assert state_word(datadir, W_SYNCED_BELOW) == mutable


def test_a_new_state_page_is_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new page is fsynced (with its directory entry) before anything is sealed under it: after
    a power loss, a new page means no seal happened under the old one's watch."""
    calls = fsync_spy(monkeypatch)
    open_store(tmp_path / "store", False).close()
    assert (STATE_FILE_NAME, "MainThread") in calls
    assert ("store", "MainThread") in calls


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
def test_put_stream_fsyncs_like_a_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool, fsync: bool
) -> None:
    """With fsync=True the stream is durable before put_stream returns; by default its segment
    is fsynced by the sync thread after the commit, as every sealed segment is."""
    db = open_store(tmp_path / "store", compressed, fsync=fsync)
    try:
        db.put(b"before")
        calls = fsync_spy(monkeypatch)
        location = db.put_stream(io.BytesIO(b"streamed " * 10_000))
        in_caller = [
            name for name, thread in calls if thread == "MainThread" and name.startswith(".tmp-") and "stream" in name
        ]
        assert bool(in_caller) == fsync
        db.sync()
        name = os.path.basename(location.file_path)
        assert (name, "ffdb-seal-sync") in calls or fsync
        assert state_word(tmp_path / "store", W_SYNCED_BELOW) == db.mutable_segment()
        assert db.get(location) == b"streamed " * 10_000
    finally:
        db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_unconfirmed_stream_segment_damaged_by_a_power_loss_loses_its_blob(tmp_path: Path, compressed: bool) -> None:
    """A streamed blob whose segment was not yet fsynced when the power went: its bytes are
    damaged, so the blob is cut (the segment stays, sealed and empty) and never served."""
    datadir = tmp_path / "store"
    db = open_store(datadir, compressed)
    try:
        kept = db.put(b"kept")
        stream = db.put_stream(io.BytesIO(bytes(range(256)) * 2000))
        after = db.put(b"after")
    finally:
        db.close()
    path = (
        Path(stream.file_path)
        if not compressed
        else data_file(datadir, parse_segment_name(os.path.basename(stream.file_path)) or 0)
    )
    size = path.stat().st_size
    zero_bytes(path, size // 3, 4096)
    forge_power_loss(datadir, synced_below=0)
    db = open_store(datadir, compressed)
    try:
        assert db.get(kept) == b"kept" and db.get(after) == b"after"
        with pytest.raises(InvalidLocationError):
            db.get(stream)
        assert db.verify().ok
    finally:
        db.close()


def test_put_stream_does_not_wait_for_its_own_segments_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer waits only for segments sealed before its call: a 2 GiB stream must not wait for
    its own segment's fsync (the sync thread is held on it here until after put_stream returns)."""
    gate = threading.Event()
    real = seal_module.sync_segment

    def gated(dir_fd: int, number: int) -> int:
        if number >= 1:
            gate.wait(30)
        return real(dir_fd, number)

    monkeypatch.setattr(syncer_module, "sync_segment", gated)
    datadir = tmp_path / "store"
    db = open_store(datadir, False)
    try:
        location = db.put_stream(io.BytesIO(b"s" * 100_000))  # 0 was empty: removed; the stream is 1; 2 is mutable
        assert not gate.is_set() and state_word(datadir, W_SYNCED_BELOW) <= 1
        gate.set()
        db.sync()
        assert state_word(datadir, W_SYNCED_BELOW) == 2
        assert db.get(location) == b"s" * 100_000
    finally:
        gate.set()
        db.close()
