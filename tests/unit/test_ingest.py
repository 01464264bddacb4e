"""``adopt_file``: a file becomes a sealed segment by rename, or is refused and left exactly
where and as it was.

Accepted: raw files (any store mode), seekable Zstandard files written by
``conduit_flat_file_db.seekable.SeekableWriter``. Refused: compressed files that are not
seekable, corrupt seek tables, other filesystems, symlinks, directories, files inside the
datadir. ``verify=True`` records the XXH3-64 (FORMAT.md section 4, BLOB record ``c``),
``verify=False`` reads nothing (checked with /proc/self/io) and marks the blob UNCHECKED.
Last, the durability of both whole-file commits: the file that becomes a sealed segment
(adopted, or streamed by ``put_stream``) is fsynced before the call returns with fsync=True,
and by the store's sync thread after the commit without.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import pytest
import xxhash
import zstandard

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import FormatError, InvalidLocationError
from conduit_flat_file_db.naming import STATE_FILE_NAME
from conduit_flat_file_db.seekable import SeekableWriter
from conduit_flat_file_db.state import W_SYNCED_BELOW

StoreFactory = Callable[..., FlatFileDb]
FRAME = 4096
REC_BLOB, REC_FRAME, REC_SEAL = 1, 2, 3  # FORMAT.md "Record index: records"
_RECORD = struct.Struct("<BBHIQQQ")


def payload(size: int, seed: int) -> bytes:
    """Half random, half repetitive bytes."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + (rng.randbytes(41) * (size // 41 + 1))[: size - half]


def number_of(location: DataLocation) -> int:
    """Segment number of a location (FORMAT.md section 2 names)."""
    return int(os.path.basename(location.file_path)[5:13])


def records_of(datadir: Path, number: int) -> list[tuple[int, int, int, int, int]]:
    """(type, flags, a, b, c) of every record of segment ``number`` (FORMAT.md section 4)."""
    raw = (datadir / f"data_{number:08d}.idx").read_bytes()
    out = []
    for at in range(32, len(raw) - len(raw) % 32, 32):
        rtype, flags, _res, _crc, a, b, c = _RECORD.unpack_from(raw, at)
        out.append((rtype, flags, a, b, c))
    return out


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    """Everything that must not change about a refused file: bytes, inode, size, mtime."""
    st = os.lstat(path)
    return path.read_bytes(), st.st_ino, st.st_size, st.st_mtime_ns


def datadir_listing(datadir: Path) -> dict[str, int]:
    """{name: size} of the datadir's files (state page aside)."""
    return {name: os.path.getsize(datadir / name) for name in os.listdir(datadir) if name != "ffdb.state"}


def write_seekable(path: Path, data: bytes, frame_bytes: int = FRAME) -> None:
    """A seekable Zstandard file as SeekableWriter writes it, in uneven writes."""
    with SeekableWriter(path, "w", frame_bytes=frame_bytes) as out:
        for at in range(0, len(data), 10_007):
            out.write(data[at : at + 10_007])


@pytest.fixture(name="db", params=[False, True], ids=["raw-store", "zstd-store"])
def db_fixture(request: pytest.FixtureRequest, make_store: StoreFactory) -> FlatFileDb:
    """A raw or a compressed store holding a few blobs in its mutable segment."""
    store = make_store(use_compression=bool(request.param), frame_bytes=FRAME)
    store.put_many([b"one", b"two", payload(10_000, 1)])
    return store


@pytest.fixture(name="incoming")
def incoming_fixture(tmp_path: Path) -> Path:
    """A directory beside the datadir, on the same filesystem."""
    path = tmp_path / "incoming"
    path.mkdir()
    return path


# -- accepted -------------------------------------------------------------------------------


def test_adopt_raw_file(db: FlatFileDb, incoming: Path, tmp_path: Path) -> None:
    """Content at the returned location, source gone, a sealed raw segment; puts go on; reopen."""
    data = payload(1_000_000, 2)
    source = incoming / "blob.bin"
    source.write_bytes(data)
    before = db.mutable_segment()
    location = db.adopt_file(source)
    assert not source.exists()
    assert location.start_offset == 0 and location.end_offset == len(data)
    assert location.file_path.endswith(".dat"), "a raw file becomes a raw segment, even in a compressed store"
    assert number_of(location) == before + 1 and db.mutable_segment() == before + 2
    assert db.get(location) == data
    assert db.get(location, Slice(999_000, 0)) == data[999_000:]
    with db.open_blob(location) as blob:
        blob.seek(12345)
        assert blob.read(100) == data[12345:12445]
    kinds = [r[0] for r in records_of(tmp_path / "store", before + 1)]
    assert kinds == [REC_BLOB, REC_SEAL]
    after = db.put(b"after")
    assert db.get(after) == b"after"
    db.close()
    assert db.get(location) == data  # reopens itself


def test_adopt_seekable_zstd_file(db: FlatFileDb, incoming: Path) -> None:
    """A SeekableWriter file becomes a .dat.zst segment; slices decompress correctly."""
    data = payload(300_000, 3)
    source = incoming / "blob.zst"
    write_seekable(source, data)
    location = db.adopt_file(source)
    assert not source.exists()
    assert location.file_path.endswith(".dat.zst")
    assert os.path.exists(location.file_path)
    assert db.get(location) == data
    assert db.get(location, Slice(FRAME - 3, 5 * FRAME + 9)) == data[FRAME - 3 : 5 * FRAME + 9]
    with db.open_blob(location) as blob:
        blob.seek(-10, io.SEEK_END)
        assert blob.read() == data[-10:]
    with pytest.raises(InvalidLocationError):
        db.get_view(location)
    assert db.verify().ok
    assert db.get(db.put(b"after")) == b"after"


def test_adopt_empty_file(db: FlatFileDb, incoming: Path) -> None:
    """An empty file is an empty blob."""
    source = incoming / "empty"
    source.write_bytes(b"")
    location = db.adopt_file(source)
    assert not source.exists()
    assert db.get(location) == b"" and location.end_offset == 0


def test_adopt_seals_or_removes_the_mutable_segment(make_store: StoreFactory, incoming: Path, tmp_path: Path) -> None:
    """Like put_stream: a non-empty mutable segment is sealed, an empty one removed."""
    store = make_store()
    first = store.put(b"first")
    n = store.mutable_segment()
    (incoming / "a").write_bytes(b"adopted a")
    a = store.adopt_file(incoming / "a")
    assert [r[0] for r in records_of(tmp_path / "store", n)] == [REC_BLOB, REC_SEAL]
    assert number_of(a) == n + 1 and store.mutable_segment() == n + 2
    (incoming / "b").write_bytes(b"adopted b")
    b = store.adopt_file(incoming / "b")
    assert number_of(b) == n + 3, "the empty mutable n+2 was replaced"
    assert store.segments() == [n, n + 1, n + 3, n + 4]
    assert store.get_many([first, a, b]) == [b"first", b"adopted a", b"adopted b"]


def test_adopt_relative_path_and_pathlike(
    make_store: StoreFactory, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """str relative to the working directory, and os.PathLike, both work."""
    store = make_store()
    (incoming / "rel").write_bytes(b"relative")
    (incoming / "pl").write_bytes(b"pathlike")
    monkeypatch.chdir(incoming)
    rel = store.adopt_file("rel")
    pl = store.adopt_file(incoming / "pl")
    assert store.get_many([rel, pl]) == [b"relative", b"pathlike"]


# -- refused, and left alone -----------------------------------------------------------------------


def assert_refused(store: FlatFileDb, path: Path, error: type[Exception], datadir: Path) -> None:
    """adopt_file raises ``error``; the file and the datadir are exactly as they were."""
    before = snapshot(path)
    files = datadir_listing(datadir)
    mutable = store.mutable_segment()
    with pytest.raises(error):
        store.adopt_file(path)
    assert snapshot(path) == before
    assert datadir_listing(datadir) == files
    assert store.mutable_segment() == mutable
    assert not [name for name in os.listdir(datadir) if name.startswith(".tmp-")]


def test_adopt_refuses_non_seekable_zstd(db: FlatFileDb, incoming: Path, tmp_path: Path) -> None:
    """A plain one-frame Zstandard file (no seek table): FormatError, file untouched."""
    source = incoming / "plain.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(payload(100_000, 4)))
    assert_refused(db, source, FormatError, tmp_path / "store")
    multi = incoming / "multi.zst"
    cctx = zstandard.ZstdCompressor()
    multi.write_bytes(b"".join(cctx.compress(payload(5000, i)) for i in range(5)))
    assert_refused(db, multi, FormatError, tmp_path / "store")


def corrupt_variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    """A valid seekable file's bytes, broken in one place each."""
    yield "footer magic", data[:-1] + bytes([data[-1] ^ 0xFF])
    yield "descriptor reserved bits", data[:-5] + bytes([data[-5] | 0x04]) + data[-4:]
    count = int.from_bytes(data[-9:-5], "little")
    yield "frame count too large", data[:-9] + (count + 1000).to_bytes(4, "little") + data[-5:]
    yield "frame count too small", data[:-9] + (count - 1).to_bytes(4, "little") + data[-5:]
    yield "table cut off", data[: -9 - 8]
    yield "trailing garbage", data + b"\x00" * 7
    yield "cut to its first frame's header", data[:20]


@pytest.mark.parametrize(
    "variant",
    [
        "footer magic",
        "descriptor reserved bits",
        "frame count too large",
        "frame count too small",
        "table cut off",
        "trailing garbage",
        "cut to its first frame's header",
    ],
)
def test_adopt_refuses_corrupt_seek_table(db: FlatFileDb, incoming: Path, tmp_path: Path, variant: str) -> None:
    """A seekable file with a bad footer or table: FormatError, untouched."""
    good = incoming / "good.zst"
    write_seekable(good, payload(50_000, 5))
    broken = dict(corrupt_variants(good.read_bytes()))[variant]
    source = incoming / "broken.zst"
    source.write_bytes(broken)
    assert_refused(db, source, FormatError, tmp_path / "store")


def other_filesystem_dir(than: Path) -> Iterator[Path]:
    """Writable directories on another device than ``than`` (/dev/shm first, then any mount)."""
    device = os.stat(than).st_dev
    candidates = ["/dev/shm", "/run/shm", f"/run/user/{os.getuid()}", "/var/tmp", "/tmp"]
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        candidates += [line.split()[1].replace("\\040", " ") for line in mounts]
    for candidate in candidates:
        try:
            if os.stat(candidate).st_dev == device or not os.access(candidate, os.W_OK):
                continue
            made = Path(tempfile.mkdtemp(prefix="ffdb-adopt-", dir=candidate))
        except OSError:
            continue
        if os.stat(made).st_dev != device:
            yield made
            return
        shutil.rmtree(made, ignore_errors=True)


def test_adopt_refuses_other_filesystem(db: FlatFileDb, tmp_path: Path) -> None:
    """A rename cannot cross filesystems: InvalidLocationError, file untouched."""
    found = list(other_filesystem_dir(tmp_path))
    assert found, "no writable directory on another filesystem than tmp_path on this machine"
    elsewhere = found[0]
    try:
        assert os.stat(elsewhere).st_dev != os.stat(tmp_path / "store").st_dev
        source = elsewhere / "blob.bin"
        source.write_bytes(payload(20_000, 6))
        assert_refused(db, source, InvalidLocationError, tmp_path / "store")
        seekable = elsewhere / "blob.zst"
        write_seekable(seekable, payload(20_000, 7))
        assert_refused(db, seekable, InvalidLocationError, tmp_path / "store")
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_adopt_refuses_symlinks_dirs_and_datadir_files(db: FlatFileDb, incoming: Path, tmp_path: Path) -> None:
    """A symlink (to a file or to a segment), a directory, a file in the datadir: refused."""
    datadir = tmp_path / "store"
    target = incoming / "target.bin"
    target.write_bytes(b"target bytes")
    link = incoming / "link.bin"
    link.symlink_to(target)
    target_before = snapshot(target)
    assert_refused(db, link, InvalidLocationError, datadir)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert snapshot(target) == target_before
    seg_link = incoming / "segment-link"
    seg_link.symlink_to(datadir / "data_00000000.idx")
    assert_refused(db, seg_link, InvalidLocationError, datadir)
    sub = incoming / "a-directory"
    sub.mkdir()
    with pytest.raises(InvalidLocationError):
        db.adopt_file(sub)
    assert sub.is_dir()
    inside = datadir / "stray.bin"
    inside.write_bytes(b"stray")
    try:
        assert_refused(db, inside, InvalidLocationError, datadir)
    finally:
        inside.unlink()
    with pytest.raises(FileNotFoundError):
        db.adopt_file(incoming / "missing")


# -- verify, or not --------------------------------------------------------------------------


def flip_byte(path: str, offset: int) -> None:
    """XOR one byte of a file with 0x01 (twice restores it)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 1]))


def read_bytes_of_process() -> int:
    """Bytes this process read through read-type system calls so far (/proc/self/io rchar)."""
    with open("/proc/self/io", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_adopt_with_verify_records_the_checksum(make_store: StoreFactory, incoming: Path, tmp_path: Path) -> None:
    """verify=True: the BLOB record holds the XXH3-64; verify() then catches a flipped byte."""
    store = make_store()
    data = payload(2_000_000, 8)
    source = incoming / "blob.bin"
    source.write_bytes(data)
    location = store.adopt_file(source, verify=True)
    blob = records_of(tmp_path / "store", number_of(location))[0]
    assert blob[0] == REC_BLOB and blob[2:] == (0, len(data), xxhash.xxh3_64_intdigest(data))
    report = store.verify()
    assert report.ok and not [n for n in report.notes if "adopt" in n], str(report)
    flip_byte(location.file_path, 1_234_567)
    try:
        report = store.verify()
        assert not report.ok
        assert [p for p in report.problems if p.kind == "checksum"], str(report)
    finally:
        flip_byte(location.file_path, 1_234_567)
    assert store.verify().ok


def test_adopt_zstd_with_verify(make_store: StoreFactory, incoming: Path, tmp_path: Path) -> None:
    """verify=True on a seekable file: checksum of the uncompressed bytes."""
    store = make_store()
    data = payload(200_000, 9)
    source = incoming / "blob.zst"
    write_seekable(source, data)
    location = store.adopt_file(source, verify=True)
    blob = records_of(tmp_path / "store", number_of(location))[0]
    assert blob[2:] == (0, len(data), xxhash.xxh3_64_intdigest(data))
    assert store.get(location) == data


def test_adopt_without_verify_reads_nothing(make_store: StoreFactory, incoming: Path, tmp_path: Path) -> None:
    """verify=False is O(1): the file's bytes are not read (verify=True reads them all, which
    shows the measure works); verify() notes the unchecked blob and stays ok."""
    store = make_store()
    size = 16 * 2**20
    data = payload(size, 10)
    (incoming / "unchecked").write_bytes(data)
    (incoming / "checked").write_bytes(data)
    store.put(b"warm up")
    before = read_bytes_of_process()
    unchecked = store.adopt_file(incoming / "unchecked")
    unchecked_read = read_bytes_of_process() - before
    before = read_bytes_of_process()
    checked = store.adopt_file(incoming / "checked", verify=True)
    checked_read = read_bytes_of_process() - before
    assert checked_read >= size
    assert unchecked_read < 256 * 1024, f"adopt_file(verify=False) read {unchecked_read} bytes"
    blob = records_of(tmp_path / "store", number_of(unchecked))[0]
    assert blob[2:4] == (0, size) and blob[4] == 0 and blob[1] != 0, "UNCHECKED: c is 0, a flag is set"
    report = store.verify()
    assert report.ok, str(report)
    assert any("without a checksum" in note for note in report.notes), str(report)
    flip_byte(unchecked.file_path, 77)
    try:
        report = store.verify()
        assert report.ok, "an unchecked blob cannot fail its checksum"
    finally:
        flip_byte(unchecked.file_path, 77)
    assert store.get_many([unchecked, checked]) == [data, data]


# -- durability of whole-file commits (put_stream, adopt_file) ------------------------------


@pytest.fixture(name="fsynced")
def fsynced_fixture(monkeypatch: pytest.MonkeyPatch) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every file fsync'ed or fdatasync'ed from now on."""
    seen: set[tuple[int, int]] = set()

    def record(fd: Any) -> None:
        st = os.fstat(fd if isinstance(fd, int) else fd.fileno())
        seen.add((st.st_dev, st.st_ino))

    _observe_fsyncs(monkeypatch, record)
    return seen


def _observe_fsyncs(monkeypatch: pytest.MonkeyPatch, record: Any) -> None:
    """Call ``record(fd)`` before every fsync and fdatasync (each is still made)."""
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: Any) -> None:
        record(fd)
        real_fsync(fd)

    def fdatasync(fd: Any) -> None:
        record(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)


@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw-store", "zstd-store"])
def test_put_stream_segment_is_fsynced(
    make_store: StoreFactory, compressed: bool, fsync: bool, fsynced: set[tuple[int, int]]
) -> None:
    """GUARANTEES.md "Durability": with fsync=True a streamed blob is durable when put_stream
    returns; by default its segment, a sealed segment, is fsynced by the store's sync thread
    after the commit, and sync() waits for that."""
    store = make_store(use_compression=compressed, fsync=fsync)
    store.put(b"x")
    location = store.put_stream(io.BytesIO(payload(100_000, 4)))
    st = os.stat(location.file_path)
    if fsync:
        assert (st.st_dev, st.st_ino) in fsynced, f"{location.file_path} was committed before its fsync"
    store.sync()
    assert (st.st_dev, st.st_ino) in fsynced, f"{location.file_path} was sealed but never fsynced"


class Fsync(NamedTuple):
    """One fsync or fdatasync call: the calling thread, the file, the path it had at the call, and,
    for the state page, its word 15 (every segment below it known to be fsynced) at the call."""

    thread: int
    file: tuple[int, int]
    path: str
    synced_below: int | None


@pytest.fixture(name="fsync_calls")
def fsync_calls_fixture(monkeypatch: pytest.MonkeyPatch) -> list[Fsync]:
    """Every fsync and fdatasync from now on, in order (wrapped only to observe; each is made)."""
    calls: list[Fsync] = []

    def record(fd: Any) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        word = struct.unpack("<Q", os.pread(fd, 8, 8 * W_SYNCED_BELOW))[0] if path.endswith(STATE_FILE_NAME) else None
        calls.append(Fsync(threading.get_ident(), (st.st_dev, st.st_ino), path, word))

    _observe_fsyncs(monkeypatch, record)
    return calls


def _adoptable(incoming: Path, seekable: bool) -> tuple[Path, tuple[int, int]]:
    """A file just written (page cache only) beside the datadir, and its (st_dev, st_ino)."""
    source = incoming / "fresh"
    if seekable:
        write_seekable(source, payload(100_000, 11))
    else:
        source.write_bytes(payload(100_000, 11))
    st = os.stat(source)
    return source, (st.st_dev, st.st_ino)


def _page_confirms(calls: list[Fsync], number: int, after: int) -> bool:
    """Whether, after call ``after``, the state page was fsynced holding word 15 past ``number``."""
    return any(c.synced_below is not None and c.synced_below > number for c in calls[after + 1 :])


@pytest.mark.parametrize("seekable", [False, True], ids=["raw-file", "zst-file"])
def test_adopt_without_fsync_leaves_the_fsync_to_the_sync_thread_then_confirms_it_on_disk(
    make_store: StoreFactory, incoming: Path, seekable: bool, fsync_calls: list[Fsync]
) -> None:
    """GUARANTEES.md "Durability": with fsync=False, adopt_file commits by rename without waiting
    for the disk (the caller's thread fsyncs nothing of the file, which may be gigabytes of pages
    not yet written back); the sync thread fsyncs the new segment after the commit, then the state
    page with word 15 past it (what keeps an unchecked file after a power loss), before sync()
    returns."""
    store = make_store()
    store.put(b"x")
    source, file = _adoptable(incoming, seekable)
    location = store.adopt_file(source)
    number = number_of(location)
    caller = threading.get_ident()
    assert not [c for c in fsync_calls if c.thread == caller and c.file == file], "the caller fsynced the file"
    store.sync()
    synced = [at for at, c in enumerate(fsync_calls) if c.file == file]
    assert synced, f"{location.file_path} was sealed but never fsynced"
    assert all(fsync_calls[at].thread != caller for at in synced), "the file was fsynced in the caller's thread"
    assert _page_confirms(fsync_calls, number, synced[0]), "word 15 never reached the disk past the adopted file"
    assert store.get(location) == payload(100_000, 11)


@pytest.mark.parametrize("seekable", [False, True], ids=["raw-file", "zst-file"])
def test_adopt_with_fsync_makes_the_file_durable_before_the_commit_and_confirmed_on_return(
    make_store: StoreFactory, incoming: Path, seekable: bool, fsync_calls: list[Fsync]
) -> None:
    """With fsync=True the file is fsynced while still at its own path (before the rename that
    commits it), and adopt_file returns only once the state page on disk says the segment is
    fsynced: a power loss right after the return cannot cost it."""
    store = make_store(fsync=True)
    store.put(b"x")
    source, file = _adoptable(incoming, seekable)
    location = store.adopt_file(source)
    before_commit = [at for at, c in enumerate(fsync_calls) if c.file == file and c.path == str(source)]
    assert before_commit, f"{source} was committed before its fsync: {fsync_calls}"
    assert _page_confirms(fsync_calls, number_of(location), before_commit[0]), "returned before word 15 was on disk"
