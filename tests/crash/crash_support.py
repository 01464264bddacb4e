"""Shared helpers of the crash tests: writer children, reading their reports, and checking a
reopened store down to the bytes of its files (raw and seekable Zstandard segments).

Nothing here is a test; test_sigkill.py and test_zstd_crash_points.py import it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, Sequence, TypeVar

import pytest
import pyzstd

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.blocks import maps_supported
from conduit_flat_file_db.index import HEADER_BYTES, REC_BLOB, REC_FRAME, REC_SEAL, RECORD_BYTES, Record, decode_records
from conduit_flat_file_db.naming import STATE_FILE_NAME, index_name, segment_name
from conduit_flat_file_db.segment import ROOM_CHECK_MAX_BYTES
from conduit_flat_file_db.state import W_SEQ

T = TypeVar("T")

WRITER_SCRIPT = Path(__file__).with_name("crash_writer.py")
READY_SECONDS = 30.0
CHECK_SECONDS = 60.0
PROGRESS_SECONDS = 15.0
INJECT_SEGMENT = 8192
ZSTD_CLI = shutil.which("zstd")
RAW_ROOM_BYTES = ROOM_CHECK_MAX_BYTES if maps_supported() else 0
"""Zero bytes a raw mutable segment's data and index files may hold past their committed ends:
the room a writer allocates ahead of its puts through maps (none where maps are not used)."""

# Seekable Zstandard format (FORMAT.md "Compressed segment"), parsed here without the engine's code.
SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC_BASE = 0x184D2A50
FOOTER_BYTES = 9


class Ack(NamedTuple):
    """A blob a writer reported after its put returned."""

    location: DataLocation
    digest: str


def digest(data: bytes) -> str:
    """Same checksum as crash_writer.digest."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def crash_seed() -> int:
    """The run's seed: FFDB_CRASH_SEED, or a fresh one. Printed so a failure can be replayed."""
    seed = int(os.environ.get("FFDB_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FFDB_CRASH_SEED={seed}")
    return seed


def read_acks(report: Path) -> list[Ack]:
    """Acknowledged blobs in a report file; a torn last line (killed mid-write) is ignored."""
    try:
        data = report.read_bytes()
    except FileNotFoundError:
        return []
    acks = []
    for line in data[: data.rfind(b"\n") + 1].decode().splitlines():
        if line.startswith("#"):
            continue
        path, start, end, hexdigest = line.split("\t")
        acks.append(Ack(DataLocation(path, int(start), int(end)), hexdigest))
    return acks


def is_ready(report: Path) -> bool:
    """True once the writer has opened the store."""
    try:
        return report.read_bytes().startswith(b"# ready")
    except FileNotFoundError:
        return False


def state_word(datadir: Path, word: int) -> int:
    """One 8-byte word of the state page, read from the file."""
    with open(datadir / STATE_FILE_NAME, "rb") as handle:
        handle.seek(8 * word)
        value: int = struct.unpack("<Q", handle.read(8))[0]
        return value


def set_state_word(datadir: Path, word: int, value: int) -> None:
    """Write one word of the state page through a shared mapping, as a writer process does."""
    with open(datadir / STATE_FILE_NAME, "r+b") as handle, mmap.mmap(handle.fileno(), 4096, mmap.MAP_SHARED) as page:
        struct.pack_into("<Q", page, 8 * word, value)


def cut_file(path: Path, size: int) -> None:
    """Leave only the first ``size`` bytes of ``path`` (what reached the disk)."""
    with open(path, "r+b") as handle:
        handle.truncate(size)


def zero_bytes(path: Path, start: int, count: int) -> None:
    """Overwrite bytes with zeros (blocks whose data never reached the disk)."""
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(bytes(count))


def with_deadline(seconds: float, what: str, datadir: Path, func: Callable[[], T]) -> T:
    """Run ``func`` in a thread; fail (instead of hanging the run) if it takes over ``seconds``."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(func())
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(
            f"{what} did not finish within {seconds} s: the store hangs "
            f"(state page sequence word = {state_word(datadir, W_SEQ)})"
        )
    if errors:
        raise errors[0]
    return results[0]


class Writer:
    """A crash_writer.py child process."""

    def __init__(self, tmp_path: Path, name: str, datadir: Path, config: dict[str, object]) -> None:
        self.report = tmp_path / f"{name}.report"
        self.stderr_path = tmp_path / f"{name}.stderr"
        full = {"datadir": str(datadir), "lock_path": str(datadir) + ".lock", "report": str(self.report), **config}
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # killed by the test
                [sys.executable, str(WRITER_SCRIPT), json.dumps(full)], stderr=stderr
            )

    def stderr(self) -> str:
        """What the child wrote to stderr (its traceback, if it failed)."""
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, where: str) -> None:
        """Wait until the child has opened the store."""
        deadline = time.monotonic() + READY_SECONDS
        while not is_ready(self.report):
            assert self.proc.poll() is None, f"{where}: writer exited ({self.proc.returncode}):\n{self.stderr()}"
            assert time.monotonic() < deadline, f"{where}: writer not ready within {READY_SECONDS} s"
            time.sleep(0.002)

    def sigkill(self, where: str) -> None:
        """SIGKILL the child (it must still be running) and reap it."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert alive, f"{where}: writer exited ({self.proc.returncode}) before the kill:\n{self.stderr()}"

    def wait_self_kill(self, where: str) -> None:
        """Wait for a child that SIGKILLs itself at an injected point (kill it and fail if it does not)."""
        try:
            self.proc.wait(READY_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{where}: the writer did not reach its kill point within {READY_SECONDS} s")
        assert self.proc.returncode == -signal.SIGKILL, (
            f"{where}: the writer did not die at its kill point (exit {self.proc.returncode}):\n{self.stderr()}"
        )


# -- inspecting the files of a store ---------------------------------------------------------


def data_path(datadir: Path, number: int) -> Path:
    """The data file of segment ``number``, whichever suffix exists (the raw name if neither)."""
    compressed = datadir / segment_name(number, True)
    return compressed if compressed.exists() else datadir / segment_name(number, False)


def is_compressed(path: Path | str) -> bool:
    """True for a ``.dat.zst`` segment path."""
    return str(path).endswith(".dat.zst")


def index_records_of(datadir: Path, number: int) -> list[Record]:
    """The records of a segment's index that decode (its valid prefix)."""
    return decode_records((datadir / index_name(number)).read_bytes()[HEADER_BYTES:]).records


def frame_sizes(records: Sequence[Record]) -> list[tuple[int, int]]:
    """(compressed, uncompressed) size of each FRAME record."""
    return [(r.size >> 32, r.size & 0xFFFFFFFF) for r in records if r.rtype == REC_FRAME]


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forked_child_exit_code(pid: int, seconds: float, hung: str) -> int:
    """The exit code of forked child ``pid``; past ``seconds`` the child is killed and the test
    fails with ``hung`` (a child that hangs must never hang the test run)."""
    deadline = time.monotonic() + seconds
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(hung)
    return os.waitstatus_to_exitcode(done[1])


def scratch_files(datadir: Path) -> dict[str, int]:
    """The datadir's ``.tmp-<pid>-...`` scratch files and the pid in each name (0: none)."""
    found = {}
    for name in os.listdir(datadir):
        if name.startswith(".tmp-"):
            pid = name[len(".tmp-") :].partition("-")[0]
            found[name] = int(pid) if pid.isdecimal() else 0
    return found


def seek_table(data: bytes, where: str) -> tuple[int, list[tuple[int, int]]]:
    """(offset of the seek-table frame, (csize, dsize) entries) of a seekable Zstandard file."""
    assert len(data) >= 8 + FOOTER_BYTES, f"{where}: {len(data)} bytes is too short for a seekable file"
    count, descriptor, magic = struct.unpack_from("<IBI", data, len(data) - FOOTER_BYTES)
    assert magic == SEEKABLE_MAGIC, f"{where}: no seekable footer (magic {magic:#x})"
    entry = 12 if descriptor & 0x80 else 8
    table_at = len(data) - 8 - count * entry - FOOTER_BYTES
    assert table_at >= 0, f"{where}: a seek table of {count} entries does not fit the file"
    skip_magic, frame_size = struct.unpack_from("<II", data, table_at)
    assert (skip_magic, frame_size) == (SEEK_TABLE_MAGIC, count * entry + FOOTER_BYTES), (
        f"{where}: bad seek-table frame header at offset {table_at}"
    )
    entries = [struct.unpack_from("<II", data, table_at + 8 + i * entry) for i in range(count)]
    assert sum(c for c, _ in entries) == table_at, f"{where}: seek table entries do not add up to its offset"
    return table_at, [(int(c), int(d)) for c, d in entries]


def assert_zstd_cli_accepts(paths: Sequence[Path], where: str) -> None:
    """``zstd -t`` passes on every file (when the zstd CLI is installed; pyzstd's full decode of the
    frame sequence, run by assert_tails_clean, stands in for it otherwise)."""
    if ZSTD_CLI is None or not paths:
        return
    proc = subprocess.run([ZSTD_CLI, "-t", "-q", *map(str, paths)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{where}: zstd -t fails: {proc.stderr.strip()}"


def seekable_contents(path: Path, where: str, complete: bool = True) -> bytes:
    """The uncompressed bytes of a seekable file, read twice independently of the engine: by
    plain Zstandard decoding of its frame sequence and by pyzstd's seekable reader. With
    ``complete=False`` (a mutable segment, whose seek table may lag behind its frames) the
    seekable reader may read a prefix of what the frames hold; the frames' bytes are returned."""
    data = path.read_bytes()
    # pyzstd.decompress() would do, but it is quadratic in the number of frames; fed in
    # small chunks, its frame-by-frame decompressor is linear.
    decompressor = pyzstd.EndlessZstdDecompressor()
    parts = []
    try:
        for pos in range(0, len(data), 16384):
            parts.append(decompressor.decompress(data[pos : pos + 16384]))
    except pyzstd.ZstdError as exc:
        raise AssertionError(f"{where}: {path.name} is not a valid Zstandard frame sequence: {exc}") from None
    assert decompressor.at_frame_edge, f"{where}: {path.name} ends inside a frame"
    plain = b"".join(parts)
    try:
        with pyzstd.SeekableZstdFile(str(path)) as handle:
            seekable = handle.read()
    except (pyzstd.ZstdError, pyzstd.SeekableFormatError) as exc:
        raise AssertionError(f"{where}: pyzstd.SeekableZstdFile cannot read {path.name}: {exc}") from None
    if complete:
        assert plain == seekable, f"{where}: {path.name}: seek table and frames disagree"
    else:
        assert plain[: len(seekable)] == seekable, f"{where}: {path.name}: seek table and frames disagree"
    return plain


def _check_zstd_segment(db: FlatFileDb, number: int, path: Path, sealed: bool, end: int, where: str) -> None:
    """A compressed segment: its index ends at a commit, its file is a valid seekable file holding
    exactly the committed bytes; a mutable one is committed frames, one padding frame, the table."""
    index_path = db.datadir / index_name(number)
    scan = decode_records(index_path.read_bytes()[HEADER_BYTES:])
    if sealed:
        assert scan.problem is None, f"{where}: segment {number}: index has bytes past its records ({scan.problem})"
    else:  # the mutable segment's index may end in zero room, as a raw one's does
        _check_raw_file(
            index_path,
            HEADER_BYTES + RECORD_BYTES * len(scan.records),
            RAW_ROOM_BYTES,
            f"{where}: segment {number}: index",
        )
    kinds = [r.rtype for r in scan.records]
    frames = frame_sizes(scan.records)
    if sealed:
        assert kinds.count(REC_SEAL) == 1 and kinds[-1] == REC_SEAL, f"{where}: segment {number}: not one SEAL last"
    else:
        assert REC_SEAL not in kinds, f"{where}: mutable segment {number} has a SEAL record"
        assert not kinds or kinds[-1] == REC_BLOB, (
            f"{where}: segment {number}: index ends in FRAME records no BLOB record commits"
        )
    assert sum(d for _c, d in frames) == end, (
        f"{where}: segment {number}: FRAME records cover {sum(d for _c, d in frames)} bytes, blobs end at {end}"
    )
    data = path.read_bytes()
    table_at, entries = seek_table(data, f"{where}: {path.name}")
    if not sealed:
        # Its table may lag (FORMAT.md "The mutable layout"): it lists the first committed frames,
        # then one entry of decompressed size 0 from their end to the table.
        frames_end = sum(c for c, _d in frames)
        listed = len(entries) - 1
        listed_end = sum(c for c, _d in frames[:listed])
        assert (
            listed <= len(frames) and entries[:listed] == frames[:listed] and entries[-1] == (table_at - listed_end, 0)
        ), (
            f"{where}: {path.name}: seek table {entries[-4:]} ({len(entries)} entries) is not the first "
            f"of the {len(frames)} committed frames and one entry of size 0 up to the table"
        )
        magic = struct.unpack_from("<I", data, frames_end)[0]
        assert magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC_BASE, (
            f"{where}: {path.name}: no skippable padding frame after the committed frames (offset {frames_end})"
        )
    contents = seekable_contents(path, where, complete=sealed)
    assert len(contents) == end, f"{where}: {path.name} decompresses to {len(contents)} bytes, committed {end}"
    if end:
        engine = db.get(DataLocation(db.segment_path(number), 0, end))
        assert contents == engine, f"{where}: {path.name}: the engine and pyzstd read different bytes"


Checked = dict[str, tuple[int, int, int, int]]  # segment name -> (inode, size, mtime_ns, index size)


def assert_tails_clean(db: FlatFileDb, where: str, checked: Checked | None = None) -> None:
    """No data or index file holds bytes past the last committed record but a raw mutable
    segment's zero room (sealed segments end exactly at their commits); segment files pair up;
    compressed segments are valid seekable files holding exactly their committed bytes.

    ``checked`` (kept by a caller that checks one store again and again) remembers compressed
    segments already checked; they are checked again only when their files changed.
    """
    ends: dict[int, int] = {}
    blobs: Counter[int] = Counter()
    for record in db.iter_records():
        ends[record.segment] = record.end_offset
        blobs[record.segment] += 1
    mutable = db.mutable_segment()
    numbers = db.segments()
    assert numbers and numbers[-1] == mutable, f"{where}: segments {numbers[-3:]}, mutable {mutable}"
    for name in os.listdir(db.datadir):
        if name.startswith("data_"):
            number = int(name[5:].split(".")[0])
            assert number <= mutable, f"{where}: {name} is past the mutable segment {mutable}"
    compressed: list[Path] = []
    for number in numbers:
        if number != mutable and not (db.datadir / index_name(number)).exists():
            continue  # a sealed segment without an index (old engine, or a delete cut short)
        path = data_path(db.datadir, number)
        if is_compressed(path):
            st = path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, os.path.getsize(db.datadir / index_name(number)))
            if checked is None or checked.get(path.name) != stamp:
                _check_zstd_segment(db, number, path, number < mutable, ends.get(number, 0), where)
                compressed.append(path)
                if checked is not None:
                    checked[path.name] = stamp
            continue
        room = 0 if number < mutable else RAW_ROOM_BYTES
        _check_raw_file(path, ends.get(number, 0), room, f"{where}: segment {number}: data file")
        expected = HEADER_BYTES + RECORD_BYTES * (blobs[number] + (number < mutable))
        _check_raw_file(
            db.datadir / index_name(number),
            expected,
            room,
            f"{where}: segment {number} ({blobs[number]} blobs{', sealed' if number < mutable else ''}): index",
        )
    assert_zstd_cli_accepts(compressed, where)


def _check_raw_file(path: Path, committed: int, room: int, what: str) -> None:
    """The file holds ``committed`` bytes, then at most ``room`` bytes, all zeros (a sealed
    segment, ``room`` 0: exactly its committed bytes)."""
    size = os.path.getsize(path)
    assert committed <= size <= committed + room, f"{what} is {size} bytes, committed {committed}" + (
        f", room at most {room}" if room else ""
    )
    if size > committed:
        with open(path, "rb") as handle:
            handle.seek(committed)
            tail = handle.read()
        first = committed + len(tail) - len(tail.lstrip(b"\0"))
        assert first == size, (
            f"{what}: {size - committed} bytes past the committed {committed} are not all zeros (a torn tail "
            f"was kept; first non-zero byte at offset {first})"
        )


def assert_no_dead_scratch(datadir: Path, where: str) -> None:
    """Every scratch file left belongs to a live process."""
    dead = [name for name, pid in scratch_files(datadir).items() if not pid_alive(pid)]
    assert not dead, f"{where}: scratch files of dead processes survived a reopen: {dead}"


def store_file_sizes(datadir: Path) -> dict[str, int]:
    """Size of every segment data and index file."""
    return {name: os.path.getsize(datadir / name) for name in os.listdir(datadir) if name.startswith("data_")}


class Reopened(NamedTuple):
    """What check_reopened found."""

    ack: Ack  # the parent's own put after the reopen
    repaired: bool  # opening changed a segment file (cut a torn tail, finished a rotation)
    scratch: int  # scratch files of dead processes the reopen had to remove


def check_reopened(
    datadir: Path, acks: list[Ack], where: str, use_compression: bool = False, checked: Checked | None = None
) -> Reopened:
    """Reopen the store in this process and check everything, then put one blob (``checked``:
    see assert_tails_clean)."""
    before = store_file_sizes(datadir) if datadir.exists() else {}
    scratch = sum(1 for pid in scratch_files(datadir).values() if not pid_alive(pid)) if datadir.exists() else 0
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression)
    repaired = store_file_sizes(datadir) != before
    try:
        assert_no_dead_scratch(datadir, where)
        for ack in acks:
            got = db.get(ack.location)
            assert digest(got) == ack.digest, f"{where}: {ack.location} reads back different bytes"
        report = db.verify()
        assert report.ok, f"{where}: {report}"
        assert_tails_clean(db, where, checked)
        blob = f"parent put after {where}".encode()
        location = db.put(blob)
        assert db.get(location) == blob, f"{where}: new put at {location} reads back different bytes"
        return Reopened(Ack(location, digest(blob)), repaired, scratch)
    finally:
        db.close()


# -- stores written before an injected crash ----------------------------------------------


class Written(NamedTuple):
    """A blob written before the injected crash."""

    location: DataLocation
    data: bytes


def populate(datadir: Path, db: FlatFileDb | None = None, use_compression: bool = False) -> list[Written]:
    """Write ~40 blobs over several segments; the mutable segment ends non-empty. Compressed
    stores use 1 KiB frames, so most blobs span several frames."""
    own = db is None
    if db is None:
        db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression, frame_bytes=1024)
    db.MAX_DAT_FILE_SIZE = INJECT_SEGMENT
    rng = random.Random(7)
    written: list[Written] = []
    for i in range(30):
        if i % 5 == 4:
            blobs = [rng.randbytes(rng.randint(0, 3000)) for _ in range(3)]
            written += map(Written._make, zip(db.put_many(blobs), blobs))
        else:
            blob = rng.randbytes(rng.randint(0, 3000))
            written.append(Written(db.put(blob), blob))
    blob = b"the last blob before the crash"
    written.append(Written(db.put(blob), blob))
    if own:
        db.close()
    return written


def newest_segment(datadir: Path) -> int:
    """The highest segment number among the data and index files."""
    return max(int(name[5:].split(".")[0]) for name in os.listdir(datadir) if name.startswith("data_"))


def append(path: Path, data: bytes) -> None:
    """Append bytes to a file."""
    with open(path, "ab") as handle:
        handle.write(data)


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Write bytes at ``offset`` of a file, over what is there (a raw mutable segment's zero
    room, where a writer's next put goes) and on past its end if they reach it."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def assert_whole(
    db: FlatFileDb, written: list[Written], where: str, reopened: bool = True, acks: Sequence[Ack] = ()
) -> None:
    """Every written blob reads back, files end at their commits, verify is clean, puts work.

    ``reopened``: ``db`` was opened after the crash, so recovery has run and the files must
    already be clean. An instance that was open during the crash cuts a dead writer's tail
    before its next append: its files are checked after its puts.
    """
    for item in written:
        assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
    for ack in acks:
        assert digest(db.get(ack.location)) == ack.digest, f"{where}: {ack.location} reads back different bytes"
    if reopened:
        assert_tails_clean(db, where)
    report = db.verify()
    assert report.ok, f"{where}: {report}"
    more = [Written(db.put(blob), blob) for blob in (b"new after " + where.encode(), b"", b"x" * 5000)]
    for item in written + more:
        assert db.get(item.location) == item.data, f"{where}: {item.location} reads back different bytes"
    assert_tails_clean(db, where)
    report = db.verify()
    assert report.ok, f"{where}: after new puts: {report}"


def reopen_whole(
    datadir: Path, written: list[Written], where: str, use_compression: bool = False, acks: Sequence[Ack] = ()
) -> None:
    """Open the store anew (recovery runs) and run assert_whole on it."""
    db = FlatFileDb(datadir, str(datadir) + ".lock", use_compression=use_compression)
    try:
        assert_whole(db, written, where, acks=acks)
    finally:
        db.close()
