"""Interoperability of our seekable Zstandard files with the rest of the world, both ways.

- Files we write (SeekableWriter, and the segments of a compressed FlatFileDb: the mutable
  one after every committed put, sealed ones after re-framing) pass ``zstd -t``, decode
  with ``zstd -d`` to exactly the concatenated blobs, and open in pyzstd's
  SeekableZstdFile with identical bytes at random offsets.
- Files pyzstd's SeekableZstdFile writes (small and 10 MiB frames, with and without
  content checksums, appended to several times) read correctly through SeekableReader.
- A datadir written the way the original engine wrote compressed stores (pyzstd, no
  record index) opens as a store: old locations read, new puts go to a new segment.

The ``zstd`` CLI must be installed (scripts/test.sh installs it): these tests fail without it.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Literal

import pytest
from pyzstd import CParameter, SeekableZstdFile

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import FormatError
from conduit_flat_file_db.seekable import FrameTable, SeekableReader, SeekableWriter, parse_seek_table

StoreFactory = Callable[..., FlatFileDb]
KIB = 1024
MIB = 2**20
ORIGINAL_FRAME_BYTES = 10 * MIB  # the original engine's MAX_ZSTANDARD_FRAME_SIZE
ORIGINAL_OPTIONS: dict[int, int] = {CParameter.compressionLevel: 3, CParameter.checksumFlag: 1}
WriteMode = Literal["w", "a"]


def content(size: int, seed: int, compressible: bool | None = None) -> bytes:
    """Deterministic bytes: random, text-like, or half of each (``compressible=None``)."""
    rng = random.Random(seed * 1_000_003 + size)
    if compressible is None:
        half = size // 2
        return content(half, seed, True) + rng.randbytes(size - half)
    if not compressible:
        return rng.randbytes(size)
    out = bytearray()
    while len(out) < min(size, 64 * KIB):
        out += b"record %d: value=%d;\n" % (rng.randrange(10_000), rng.randrange(100))
    while len(out) < size:  # large sizes: the text again, each copy marked so no two are equal
        out += b"copy %d\n" % len(out) + out[: 64 * KIB]
    return bytes(out[:size])


def zstd_cli() -> str:
    """Path of the zstd command-line tool; its absence is a failure, never a skip."""
    path = shutil.which("zstd")
    assert path is not None, "the zstd CLI is required: apt-get install -y zstd (scripts/test.sh does it as root)"
    return path


def check_with_cli(path: Path | str, expected: bytes) -> None:
    """``zstd -t`` accepts the file and ``zstd -d`` yields exactly ``expected``."""
    tested = subprocess.run([zstd_cli(), "-t", "-q", str(path)], capture_output=True, check=False)
    assert tested.returncode == 0, f"zstd -t {path}: {tested.stderr.decode(errors='replace')}"
    decoded = subprocess.run([zstd_cli(), "-d", "-c", "-q", str(path)], capture_output=True, check=False)
    assert decoded.returncode == 0, f"zstd -d {path}: {decoded.stderr.decode(errors='replace')}"
    assert len(decoded.stdout) == len(expected), path
    assert decoded.stdout == expected, path


def check_with_pyzstd(path: Path | str, expected: bytes, rng: random.Random, reads: int = 30) -> None:
    """pyzstd's SeekableZstdFile opens the file and reads identical bytes at random offsets."""
    with SeekableZstdFile(path, "r") as file:
        assert file.seek(0, io.SEEK_END) == len(expected)
        for _ in range(reads):
            start = rng.randrange(len(expected) + 1)
            size = rng.choice([0, 1, 17, 1000, 70_000])
            assert file.seek(start) == start
            assert file.read(size) == expected[start : start + size], (path, start, size)
        file.seek(0)
        assert file.read() == expected


def check_lagging_with_pyzstd(path: Path | str, frames: bytes, listed: int, rng: random.Random) -> None:
    """A file whose seek table lists the first ``listed`` bytes of the ``frames`` it holds: pyzstd's
    SeekableZstdFile takes its size from the table, seeks within it, and reads the frames' true
    bytes from there (it decodes on past the listed frames)."""
    with SeekableZstdFile(path, "r") as file:
        assert file.seek(0, io.SEEK_END) == listed
        for _ in range(8):
            start = rng.randrange(listed + 1)
            size = rng.choice([0, 1, 17, 1000, 70_000])
            assert file.seek(start) == start
            got = file.read(size)
            assert len(got) >= min(size, listed - start) and got == frames[start : start + len(got)], (path, start)


def check_with_ours(path: Path | str, expected: bytes, rng: random.Random, reads: int = 40) -> FrameTable:
    """SeekableReader reads identical bytes at random offsets; returns the file's frame table."""
    with SeekableReader(path) as reader:
        assert reader.size == len(expected)
        for _ in range(reads):
            start = rng.randrange(len(expected) + 1)
            end = min(len(expected), start + rng.choice([0, 1, 17, 1000, 70_000, len(expected)]))
            assert reader.read_range(start, end) == expected[start:end], (path, start, end)
        reader.seek(max(0, len(expected) // 2 - 5))
        assert reader.read(10) == expected[len(expected) // 2 - 5 :][:10]
        assert reader.read_range(0, len(expected)) == expected
        return reader.table


def table_of(path: Path | str) -> FrameTable:
    """The seek table of a file."""
    raw = Path(path).read_bytes()
    return parse_seek_table(lambda offset, size: raw[offset : offset + size], len(raw), str(path))


# -- our files, read by the zstd CLI and pyzstd --------------------------------------------------------


def test_zstd_cli_is_installed() -> None:
    """The interop checks below really run the CLI."""
    version = subprocess.run([zstd_cli(), "--version"], capture_output=True, check=True)
    assert b"Zstandard" in version.stdout


@pytest.mark.parametrize(
    "size,frame_bytes", [(0, 1000), (1, 1000), (5000, 1000), (300_000, 4096), (1_000_000, 2**20), (2_500_000, 2**20)]
)
def test_our_writer_files_are_read_by_zstd_and_pyzstd(tmp_path: Path, size: int, frame_bytes: int) -> None:
    """SeekableWriter files of one or many frames decode everywhere."""
    path = tmp_path / "ours.zst"
    data = content(size, size)
    with SeekableWriter(path, "w", frame_bytes=frame_bytes) as writer:
        for pos in range(0, size, 77_777):
            writer.write(data[pos : pos + 77_777])
    check_with_cli(path, data)
    check_with_pyzstd(path, data, random.Random(size))


def test_our_appended_file_is_read_by_zstd_and_pyzstd(tmp_path: Path) -> None:
    """A file written, then appended to several times, stays a valid seekable file each time."""
    path = tmp_path / "appended.zst"
    expected = b""
    rng = random.Random(5)
    for step in range(5):
        part = content(rng.randrange(1, 60_000), step, compressible=None if step % 2 else True)
        with SeekableWriter(path, "w" if step == 0 else "a", frame_bytes=rng.choice([500, 4096, 16_384])) as writer:
            writer.write(part)
        expected += part
        check_with_cli(path, expected)
        check_with_pyzstd(path, expected, rng, reads=10)


def _store_ops() -> list[list[int]]:
    """Batches of blob sizes: a one-element list is a put, longer ones a put_many. Some batches
    overflow the 64 KiB padding after the frames (the seek table is then rewritten whole)."""
    return [
        [100],
        [0],
        [5000],
        [1, 2, 3],
        [200 * KIB],
        [70_000, 10, 70_000],
        [4096],
        [0, 0],
        [300 * KIB],
        [123],
        [8191, 8193],
    ]


def check_mutable(db: FlatFileDb, path: str, expected: bytes, rng: random.Random) -> bool:
    """The mutable segment's file right after a put (all of it decoded in order; seekable readers
    read the frames its table lists), then after a sync() (all of it, everywhere); returns whether
    the table lagged before the sync."""
    check_with_cli(path, expected)
    listed = table_of(path).decompressed_size
    assert listed <= len(expected)
    check_lagging_with_pyzstd(path, expected, listed, rng)
    check_with_ours(path, expected[:listed], rng, reads=8)
    db.sync()  # brings the table up to date
    check_with_cli(path, expected)
    check_with_pyzstd(path, expected, rng, reads=8)
    return listed < len(expected)


@pytest.mark.parametrize("reframe", [True, False])
def test_store_segments_are_valid_seekable_files_after_every_put(make_store: StoreFactory, reframe: bool) -> None:
    """The mutable .dat.zst is a valid seekable file after every committed put and put_many: the
    zstd CLI decodes all of it; its seek table may lag behind a small put (FORMAT.md "The mutable
    layout"), so seekable readers read the frames it lists, a prefix, and after sync() all of it.
    A sealed one (re-framed or as written) too; and so is the fresh empty mutable segment."""
    db = make_store("zst", use_compression=True, frame_bytes=4096, reframe_on_seal=reframe)
    rng = random.Random(11)
    segment_bytes: dict[str, bytes] = {}
    locations: list[tuple[DataLocation, bytes]] = []
    lagged = 0  # puts after which the table listed fewer frames than the file held
    for number, batch in enumerate(_store_ops()):
        blobs = [
            content(size, 1000 + number * 10 + i, compressible=None if i % 2 else (number % 3 != 0))
            for i, size in enumerate(batch)
        ]
        got = [db.put(blobs[0])] if len(blobs) == 1 else db.put_many(blobs)
        for location, blob in zip(got, blobs):
            assert location.file_path.endswith(".dat.zst")
            assert location.start_offset == len(segment_bytes.get(location.file_path, b""))
            segment_bytes[location.file_path] = segment_bytes.get(location.file_path, b"") + blob
            locations.append((location, blob))
        mutable = got[-1].file_path
        lagged += check_mutable(db, mutable, segment_bytes[mutable], rng)
        written = check_with_ours(mutable, segment_bytes[mutable], rng, reads=8)
    assert lagged >= 3  # the small single puts
    sealed = locations[-1][0].file_path
    new_path, _number = db.rotate()
    db.sync()  # the re-framing runs in the store's seal-hook thread: sync() waits for it
    assert str(new_path) != sealed
    expected = segment_bytes[sealed]
    check_with_cli(sealed, expected)
    check_with_pyzstd(sealed, expected, rng)
    table = check_with_ours(sealed, expected, rng)
    dsizes = [d for _, d in table.sizes()]
    if reframe:  # it holds stored frames (small puts): re-framed into frame_bytes frames, no padding frame
        assert all(d == 4096 for d in dsizes[:-1]) and 0 < dsizes[-1] <= 4096, dsizes
        assert len(dsizes) == -(-len(expected) // 4096)
    else:  # frames kept as written (few enough), the padding frame dropped at sealing
        assert dsizes == [d for _, d in written.sizes()][:-1], dsizes
    check_with_cli(new_path, b"")
    with SeekableZstdFile(new_path, "r") as empty:
        assert empty.read() == b""
    for location, blob in locations:
        assert db.get(location) == blob


def test_store_segments_after_automatic_rotations(make_store: StoreFactory) -> None:
    """Several segments sealed by MAX_DAT_FILE_SIZE: every one decodes to its blobs."""
    db = make_store("rot", use_compression=True, frame_bytes=2048)
    db.MAX_DAT_FILE_SIZE = 40 * KIB
    segment_bytes: dict[str, bytes] = {}
    for index in range(30):
        blob = content(random.Random(index).randrange(0, 25 * KIB), index, compressible=None)
        location = db.put(blob)
        segment_bytes[location.file_path] = segment_bytes.get(location.file_path, b"") + blob
    assert len(segment_bytes) >= 5
    rng = random.Random(2)
    for path, expected in segment_bytes.items():
        check_with_cli(path, expected)
        check_with_pyzstd(path, expected, rng, reads=5)


# -- pyzstd's files, read by ours ----------------------------------------------------------------------


def write_with_pyzstd(
    path: Path, data: bytes, frame_bytes: int, checksum: bool, mode: WriteMode = "w", rng: random.Random | None = None
) -> None:
    """Write ``data`` with pyzstd's SeekableZstdFile in writes of random sizes, sometimes ending a frame early."""
    rng = rng or random.Random(len(data))
    options: dict[int, int] = {CParameter.compressionLevel: 3, CParameter.checksumFlag: int(checksum)}
    with SeekableZstdFile(path, mode, level_or_option=options, max_frame_content_size=frame_bytes) as file:
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 100, 5000, 100_000, frame_bytes + 3])
            file.write(data[pos : pos + step])
            pos += step
            if rng.random() < 0.1:
                file.flush(SeekableZstdFile.FLUSH_FRAME)


@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("frame_bytes", [1000, 64 * KIB])
def test_pyzstd_files_are_read_by_ours(tmp_path: Path, frame_bytes: int, checksum: bool) -> None:
    """Several frames, with and without content checksums: random offsets read identical bytes."""
    path = tmp_path / "pyzstd.zst"
    data = content(600_000 if frame_bytes > 1000 else 60_000, frame_bytes, compressible=None)
    write_with_pyzstd(path, data, frame_bytes, checksum)
    table = check_with_ours(path, data, random.Random(frame_bytes), reads=150)
    assert len(table) >= len(data) // frame_bytes
    check_with_cli(path, data)


def test_pyzstd_file_with_10_mib_frames_is_read_by_ours(tmp_path: Path) -> None:
    """The original engine's frame size: 24 MiB in frames of 10, 10 and 4 MiB."""
    path = tmp_path / "big.zst"
    data = content(12 * MIB, 1, compressible=True) + content(12 * MIB, 2, compressible=False)
    options: dict[int, int] = {CParameter.compressionLevel: 1, CParameter.checksumFlag: 1}
    with SeekableZstdFile(path, "w", level_or_option=options, max_frame_content_size=ORIGINAL_FRAME_BYTES) as file:
        for pos in range(0, len(data), 4 * MIB):
            file.write(data[pos : pos + 4 * MIB])
    with SeekableReader(path) as reader:
        assert [d for _, d in reader.table.sizes()] == [10 * MIB, 10 * MIB, 4 * MIB]
        rng = random.Random(3)
        for start, end in [
            (0, 1),
            (10 * MIB - 1, 10 * MIB + 1),
            (20 * MIB - 10, 20 * MIB + 10),
            (len(data) - 1, len(data)),
            (5 * MIB, 15 * MIB),
        ]:
            assert reader.read_range(start, end) == data[start:end]
        for _ in range(8):
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.randrange(1, 100_000))
            assert reader.read_range(start, end) == data[start:end]
        assert reader.frames_decompressed <= 20


def test_pyzstd_file_appended_several_times_is_read_by_ours(tmp_path: Path) -> None:
    """pyzstd's 'a' mode, reopened several times with different frame sizes."""
    path = tmp_path / "appended.zst"
    expected = b""
    rng = random.Random(9)
    for step in range(6):
        part = content(rng.randrange(0, 80_000), 50 + step, compressible=None if step % 2 else True)
        write_with_pyzstd(
            path, part, rng.choice([777, 8192, 30_000]), checksum=step % 3 == 0, mode="w" if step == 0 else "a", rng=rng
        )
        expected += part
        check_with_ours(path, expected, rng, reads=30)
    assert len(table_of(path)) > 6


def test_pyzstd_empty_file_is_read_by_ours(tmp_path: Path) -> None:
    """A seekable file with no frames at all (pyzstd writes just the seek table)."""
    path = tmp_path / "empty.zst"
    SeekableZstdFile(path, "w").close()
    with SeekableReader(path) as reader:
        assert reader.size == 0
        assert reader.read() == b""
        assert reader.read_range(0, 0) == b""


# -- a datadir of the original engine, compressed mode ---------------------------------------------------


def write_original_datadir(
    datadir: Path, files: int, seed: int, empty_last: bool = False
) -> list[tuple[DataLocation, bytes]]:
    """Segments written the way the original engine did: each put_many batch appended with
    pyzstd's SeekableZstdFile in 'ab' mode (level 3, content checksums, 10 MiB frames), the
    batch ended by a frame flush; locations counted in uncompressed bytes; no index files.
    ``empty_last`` adds the empty segment a rotation left behind."""
    datadir.mkdir(parents=True)
    rng = random.Random(seed)
    locations: list[tuple[DataLocation, bytes]] = []
    for number in range(files):
        path = datadir / f"data_{number:08d}.dat.zst"
        position = 0
        for _batch in range(rng.randrange(1, 5)):
            with SeekableZstdFile(
                path, "ab", level_or_option=ORIGINAL_OPTIONS, max_frame_content_size=ORIGINAL_FRAME_BYTES
            ) as file:
                for _blob in range(rng.randrange(1, 5)):
                    blob = content(
                        rng.choice([0, 10, 1000, 30_000, 150_000]),
                        rng.randrange(10**6),
                        compressible=rng.choice([None, True, False]),
                    )
                    file.write(blob)
                    locations.append((DataLocation(str(path), position, position + len(blob)), blob))
                    position += len(blob)
                file.flush(SeekableZstdFile.FLUSH_FRAME)
    if empty_last:
        SeekableZstdFile(
            datadir / f"data_{files:08d}.dat.zst",
            "wb",
            level_or_option=ORIGINAL_OPTIONS,
            max_frame_content_size=ORIGINAL_FRAME_BYTES,
        ).close()
    assert not list(datadir.glob("*.idx"))
    return locations


def check_old_locations(db: FlatFileDb, locations: list[tuple[DataLocation, bytes]], rng: random.Random) -> None:
    """Every old location reads byte-identical, whole and in random slices."""
    for location, blob in locations:
        assert db.get(location) == blob, location
        assert db.get(location, Slice(0, 0)) == blob
        if blob:
            start = rng.randrange(len(blob))
            end = rng.randrange(start + 1, len(blob) + 1)
            assert db.get(location, Slice(start, end)) == blob[start:end], (location, start, end)
            assert db.get(location, Slice(start, 0)) == blob[start:]


@pytest.mark.parametrize("empty_last", [False, True])
def test_original_engine_compressed_datadir_opens(make_store: StoreFactory, tmp_path: Path, empty_last: bool) -> None:
    """FlatFileDb(datadir, lock, use_compression=True) on the original engine's datadir."""
    files = 4
    locations = write_original_datadir(tmp_path / "legacy", files, seed=21, empty_last=empty_last)
    rng = random.Random(4)
    for number in range(files):  # the fixture really is a set of valid seekable files
        path = tmp_path / "legacy" / f"data_{number:08d}.dat.zst"
        expected = b"".join(blob for loc, blob in locations if loc.file_path == str(path))
        check_with_ours(path, expected, rng, reads=5)
    db = make_store("legacy", use_compression=True)
    check_old_locations(db, locations, rng)
    fresh = [content(size, 900 + size, compressible=None) for size in (0, 5000, 100_000)]
    new_locations = [db.put(fresh[0])] + db.put_many(fresh[1:])
    for location, blob in zip(new_locations, fresh):
        number = int(Path(location.file_path).name[5:13])
        assert number >= files, location  # a new segment (or the empty one a rotation left), never an old one
        assert location.file_path.endswith(".dat.zst")
        assert db.get(location) == blob
    db.rotate()
    db.put(b"after rotation")
    report = db.verify()
    assert report.ok, str(report)
    check_old_locations(db, locations + list(zip(new_locations, fresh)), rng)
    db.close()
    reopened = make_store("legacy", use_compression=True)
    check_old_locations(reopened, locations + list(zip(new_locations, fresh)), rng)
    reopened.close()
    as_raw = make_store("legacy", use_compression=False)  # switching the mode is allowed
    check_old_locations(as_raw, locations, rng)
    raw_location = as_raw.put(b"raw now")
    assert as_raw.get(raw_location) == b"raw now"


def test_original_engine_datadir_torn_by_a_crash_mid_append_opens(make_store: StoreFactory, tmp_path: Path) -> None:
    """The original engine appended with pyzstd's 'ab' mode, which cuts the seek table off when
    it opens the file and writes a new one only on close: a crash during any put_many left its
    newest segment as bare frames without a seek table. Such a datadir must still open, every
    blob of the older segments must read, and so must the blobs of the torn segment's complete
    frames (frames can be found by walking their headers, FORMAT.md "Compressed segment")."""
    locations = write_original_datadir(tmp_path / "torn", 3, seed=8)
    newest = tmp_path / "torn" / "data_00000002.dat.zst"
    with SeekableZstdFile(
        newest, "ab", level_or_option=ORIGINAL_OPTIONS, max_frame_content_size=ORIGINAL_FRAME_BYTES
    ) as file:
        file.write(content(5000, 77))
        file.flush(SeekableZstdFile.FLUSH_FRAME)
        torn = newest.read_bytes()  # what the disk held when the process died
    newest.write_bytes(torn)
    with pytest.raises(FormatError):  # the fixture really lost its seek table
        SeekableReader(newest).close()
    db = make_store("torn", use_compression=True)
    check_old_locations(db, locations, random.Random(6))
    location = db.put(b"after the crash")
    assert int(Path(location.file_path).name[5:13]) >= 2
    assert db.get(location) == b"after the crash"


def test_original_engine_datadir_locations_use_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The original engine stored whatever path it was given; relative datadirs keep working."""
    locations = write_original_datadir(tmp_path / "rel", 2, seed=5)
    monkeypatch.chdir(tmp_path)
    relative = [
        (DataLocation(str(Path("rel") / Path(loc.file_path).name), loc.start_offset, loc.end_offset), blob)
        for loc, blob in locations
    ]
    db = FlatFileDb(Path("rel"), Path("rel.lock"), use_compression=True)
    try:
        check_old_locations(db, relative, random.Random(1))
        report = db.verify()
        assert report.ok, str(report)
    finally:
        db.close()
