"""Read-only opens: no lock, no recovery, nothing created or written; every committed blob, and
the puts of live writers in other processes (GUARANTEES.md "Read-only opens")."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name
from conduit_flat_file_db import (
    CorruptionError,
    DataLocation,
    FlatFileDb,
    FlatFileDbError,
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    InvalidLocationError,
    Slice,
)
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.state import W_BOOT_LO, W_SYNCED_BELOW

pytestmark = pytest.mark.readonly

NOBODY = 65534


def blob(index: int) -> bytes:
    """A distinct blob per index, some large enough to be compressed in frames."""
    return (f"blob {index} ".encode() * (1 + index * 37))[: 20 + index * 211]


def need_root() -> None:
    """Mounting, chown and setuid need root; only a developer's own non-root run may skip."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root (CI runs as root)")


def fill(datadir: Path, lock: Path, use_compression: bool, count: int = 40) -> list[DataLocation]:
    """A closed store of a few sealed segments and a mutable one; the blobs' locations."""
    with FlatFileDb(datadir, lock, use_compression=use_compression) as db:
        locations = []
        for index in range(count):
            locations.append(db.put(blob(index)))
            if index % 15 == 14:
                db.rotate()
    return locations


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``directory``: (size, mtime_ns, bytes) — any write shows."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.stat()
        content = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns, content)
    return out


WRITES: dict[str, Callable[[FlatFileDb, DataLocation], object]] = {
    "put": lambda db, loc: db.put(b"x"),
    "put_many": lambda db, loc: db.put_many([b"x", b"y"]),
    "put_stream": lambda db, loc: db.put_stream(io.BytesIO(b"x" * 100)),
    "put_streams": lambda db, loc: db.put_streams([io.BytesIO(b"x")]),
    "adopt_file": lambda db, loc: db.adopt_file(__file__),
    "delete_file": lambda db, loc: db.delete_file(db.segment_path(0)),
    "rotate": lambda db, loc: db.rotate(),
    "_maybe_get_new_mutable_file": lambda db, loc: db._maybe_get_new_mutable_file(True),  # pylint: disable=protected-access
    "sync": lambda db, loc: db.sync(),
    "read_lock": lambda db, loc: db.read_lock(),
    "recompress": lambda db, loc: db.recompress(),
    "compact": lambda db, loc: db.compact([0], lambda location: True),
    "finish_compaction": lambda db, loc: db.finish_compaction(db.compact([0], lambda location: True)),
    "enforce_retention": lambda db, loc: db.enforce_retention(max_bytes=0),
}


@pytest.mark.parametrize("use_compression", [False, True])
def test_every_write_of_a_read_only_instance_raises_a_typed_error_and_touches_nothing(
    tmp_path: Path, use_compression: bool
) -> None:
    """Each write method raises FlatFileDbReadOnlyError (an io.UnsupportedOperation); no file changes."""
    locations = fill(tmp_path / "store", tmp_path / "store.lock", use_compression)
    before = snapshot(tmp_path)
    lock = tmp_path / "locks" / "ro.lock"
    with FlatFileDb(tmp_path / "store", lock, use_compression=use_compression, readonly=True) as db:
        for name, write in WRITES.items():
            with pytest.raises(FlatFileDbReadOnlyError) as caught:
                write(db, locations[0])
            assert isinstance(caught.value, io.UnsupportedOperation), name
            assert isinstance(caught.value, FlatFileDbError), name
            assert "readonly=True" in str(caught.value), name
        assert db.get_many(locations) == [blob(i) for i in range(len(locations))]
    assert snapshot(tmp_path) == before  # no file created, written or touched; no lock file
    assert not lock.parent.exists()


@pytest.mark.parametrize("use_compression", [False, True])
def test_read_only_open_serves_every_committed_blob_and_reports_like_a_writer(
    tmp_path: Path, use_compression: bool
) -> None:
    """Every read API works; stats, segments, records and verify agree with a writer's instance."""
    locations = fill(tmp_path / "store", tmp_path / "store.lock", use_compression)
    with FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=use_compression) as writer:
        expected = (writer.stats(), writer.segments(), list(writer.iter_records()), writer.mutable_segment())
    before = snapshot(tmp_path)
    with FlatFileDb(tmp_path / "store", tmp_path / "store.lock", readonly=True) as db:
        assert [db.get(loc) for loc in locations] == [blob(i) for i in range(len(locations))]
        assert db.get_many(locations) == [blob(i) for i in range(len(locations))]
        assert db.get(locations[3], Slice(2, 5)) == blob(3)[2:5]
        with db.open_blob(locations[-1]) as handle:
            assert handle.read() == blob(len(locations) - 1)
        if not use_compression:
            assert bytes(db.get_view(locations[5])) == blob(5)
        report = db.verify()
        assert report.ok and report.blobs == len(locations), str(report)
        assert (db.stats(), db.segments(), list(db.iter_records()), db.mutable_segment()) == expected
    assert snapshot(tmp_path) == before


def test_missing_datadir_non_store_directory_and_file_raise_typed_errors_and_create_nothing(tmp_path: Path) -> None:
    """A typed FileNotFoundError naming the path; no datadir, state page or lock file appears."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    (tmp_path / "file").write_text("a file")
    before = snapshot(tmp_path)
    for name, says in (
        ("missing", "does not exist"),
        ("empty", "not a store"),
        ("other", "not a store"),
        ("file", "not a directory"),
    ):
        with pytest.raises(FlatFileDbNotFoundError, match=says) as caught:
            FlatFileDb(tmp_path / name, tmp_path / f"{name}.lock", readonly=True)
        assert isinstance(caught.value, FileNotFoundError)
        assert caught.value.filename == str(tmp_path / name)
    assert snapshot(tmp_path) == before


def test_cli_read_commands_on_a_non_store_report_clearly_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """info, verify, stats and get exit 2 naming the directory as text, and create nothing."""
    (tmp_path / "plain").mkdir()
    before = snapshot(tmp_path)
    for datadir in ("plain", "missing"):
        for command in (["info"], ["verify"], ["stats"], ["get", "0" * 40]):
            capsys.readouterr()
            code = main(["--datadir", str(tmp_path / datadir), *command])
            err = capsys.readouterr().err
            assert code == 2 and err.startswith(f"ffdb: error: {tmp_path / datadir}: "), err
            assert "b'" not in err
    assert snapshot(tmp_path) == before


def _child(code: str, *args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


READER = """
    import json, sys, time
    from conduit_flat_file_db import DataLocation, FlatFileDb
    started = time.monotonic()
    with FlatFileDb(sys.argv[1], sys.argv[2], readonly=True) as db:
        blobs = [db.get(DataLocation(*loc)).hex() for loc in json.loads(sys.argv[3])]
        ok = db.verify().ok
    print(json.dumps({"blobs": blobs, "ok": ok, "seconds": time.monotonic() - started}))
"""


@pytest.mark.parametrize("use_compression", [False, True])
def test_read_only_open_in_another_process_does_not_wait_for_a_held_read_lock(
    tmp_path: Path, use_compression: bool
) -> None:
    """A writer's open in the child would wait for the held read lock; a read-only one does not."""
    locations = fill(tmp_path / "store", tmp_path / "store.lock", use_compression)
    with FlatFileDb(tmp_path / "store", tmp_path / "store.lock", use_compression=use_compression) as holder:
        with holder.read_lock():  # a writer's open would wait for this (it takes the write lock)
            done = _child(
                READER, str(tmp_path / "store"), str(tmp_path / "store.lock"), json.dumps(locations), timeout=60
            )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["seconds"] < 30
    assert [bytes.fromhex(b) for b in result["blobs"]] == [blob(i) for i in range(len(locations))]


WRITER = """
    import json, sys
    from conduit_flat_file_db import FlatFileDb
    db = FlatFileDb(sys.argv[1], sys.argv[2], use_compression=sys.argv[3] == "1")
    print("open", flush=True)
    for line in sys.stdin:
        first, count, rotate = map(int, line.split())
        locations = []
        for index in range(first, first + count):
            locations.append(db.put((f"blob {index} ".encode() * (1 + index * 37))[: 20 + index * 211]))
            if rotate and index == first + count // 2:
                db.rotate()
        print(json.dumps(locations), flush=True)
    db.close()
"""


class LiveWriter:
    """A writer in another process: ``put(first, count, rotate)`` returns the locations it committed."""

    def __init__(self, datadir: Path, lock: Path, use_compression: bool) -> None:
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # closed in close()
            [sys.executable, "-c", textwrap.dedent(WRITER), str(datadir), str(lock), "1" if use_compression else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "open\n"

    def put(self, first: int, count: int, rotate: bool = False) -> list[DataLocation]:
        """Have the writer put blobs ``first``.. ``first + count - 1`` (rotating half-way if asked)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{first} {count} {int(rotate)}\n")
        self.proc.stdin.flush()
        return [DataLocation(*loc) for loc in json.loads(self.proc.stdout.readline())]

    def close(self) -> None:
        """End the writer: it closes its store and exits 0."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.parametrize("use_compression", [False, True])
@pytest.mark.parametrize("state_page", [True, False], ids=["state-page", "no-state-page"])
def test_read_only_open_sees_puts_a_writer_in_another_process_makes_after_the_open(
    tmp_path: Path, use_compression: bool, state_page: bool
) -> None:
    """Through the state page, or by walking the index on when there is none; across a rotation."""
    datadir, lock = tmp_path / "store", tmp_path / "store.lock"
    writer = LiveWriter(datadir, lock, use_compression)
    try:
        early = writer.put(0, 5)
        if not state_page:
            # The writer keeps its map of the page; the reader finds none and walks the index.
            (datadir / "ffdb.state").unlink()
        with FlatFileDb(datadir, tmp_path / "unused.lock", readonly=True) as db:
            assert [db.get(loc) for loc in early] == [blob(i) for i in range(5)]
            for first in (5, 20, 40):
                later = writer.put(first, 12, rotate=first == 20)
                assert [db.get(loc) for loc in later] == [blob(i) for i in range(first, first + 12)]
                assert db.get_many(later[::-1]) == [blob(i) for i in range(first, first + 12)][::-1]
                with db.open_blob(later[-1]) as handle:
                    assert handle.read() == blob(first + 11)
            report = db.verify()
            assert report.ok and report.blobs == 5 + 36, str(report)
            assert db.stats().blobs == 5 + 36
        assert not (tmp_path / "unused.lock").exists()
    finally:
        writer.close()


def test_threads_of_one_read_only_instance_follow_a_writer_without_a_state_page(tmp_path: Path) -> None:
    """Threads reading new puts at once each walk the index on; the walks must not interleave."""
    datadir = tmp_path / "store"
    writer = LiveWriter(datadir, tmp_path / "store.lock", False)
    try:
        writer.put(0, 1)
        (datadir / "ffdb.state").unlink()
        errors: list[BaseException] = []
        with FlatFileDb(datadir, tmp_path / "store.lock", readonly=True) as db:
            for first in range(1, 120, 17):
                later = writer.put(first, 17, rotate=first % 3 == 0)

                def read(offset: int, later: list[DataLocation] = later, first: int = first) -> None:
                    try:
                        for step in range(len(later)):
                            index = (offset + step) % len(later)
                            assert db.get(later[index]) == blob(first + index)
                    except BaseException as exc:  # pylint: disable=broad-exception-caught  # reported below
                        errors.append(exc)

                threads = [threading.Thread(target=read, args=(offset,)) for offset in range(6)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            assert not errors, errors[0]
            assert db.verify().ok
    finally:
        writer.close()


def _tear(datadir: Path, number: int) -> tuple[int, int]:
    """What a writer killed mid-put leaves: half an index record, bytes after the committed data.
    Returns the data file's size before and after."""
    data = next(p for p in datadir.iterdir() if p.name.startswith(f"data_{number:08d}.dat"))
    index = datadir / f"data_{number:08d}.idx"
    size = data.stat().st_size
    with open(data, "ab") as handle:
        handle.write(b"\xde\xad torn tail \xbe\xef" * 50)
    with open(index, "ab") as handle:
        handle.write(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c")
    return size, data.stat().st_size


@pytest.mark.parametrize("use_compression", [False, True])
@pytest.mark.parametrize("state_page", [True, False], ids=["state-page", "no-state-page"])
def test_read_only_open_never_serves_a_torn_tail_and_reports_no_false_corruption(
    tmp_path: Path, use_compression: bool, state_page: bool
) -> None:
    """A crashed writer's half index record and trailing bytes: refused, not reported, not cut."""
    datadir = tmp_path / "store"
    locations = fill(datadir, tmp_path / "store.lock", use_compression)
    mutable = int(Path(locations[-1].file_path).name[5:13])
    end = locations[-1].end_offset
    _tear(datadir, mutable)
    if not state_page:
        (datadir / "ffdb.state").unlink()  # e.g. read-only media copied without it
    before = snapshot(tmp_path)
    with FlatFileDb(datadir, tmp_path / "store.lock", readonly=True) as db:
        assert db.get_many(locations) == [blob(i) for i in range(len(locations))]
        for torn in (
            DataLocation(locations[-1].file_path, end, end + 10),
            DataLocation(locations[-1].file_path, end - 5, end + 1),
        ):
            with pytest.raises(InvalidLocationError, match="past the committed end"):
                db.get(torn)
            with pytest.raises(InvalidLocationError, match="past the committed end"):
                db.open_blob(torn)
        report = db.verify()
        assert report.ok and report.blobs == len(locations), str(report)
        assert db.stats().blobs == len(locations)
        assert len(list(db.iter_records())) == len(locations)
        assert db.mutable_segment() == mutable
    assert snapshot(tmp_path) == before  # nothing cut: that is a writer's recovery's job


def test_read_only_open_checks_blobs_not_known_durable_when_no_page_vouches_for_them(tmp_path: Path) -> None:
    """Without a state page a power loss cannot be ruled out: a blob whose bytes fail their
    checksum ends the committed extent (as a writer's recovery would cut it)."""
    datadir = tmp_path / "store"
    locations = fill(datadir, tmp_path / "store.lock", False, count=10)
    (datadir / "ffdb.state").unlink()
    data = Path(locations[-1].file_path)
    with open(data, "r+b") as handle:  # the last blob's bytes lost: zeros, as after a power loss
        handle.seek(locations[-1].start_offset)
        handle.write(b"\0" * (locations[-1].end_offset - locations[-1].start_offset))
    with FlatFileDb(datadir, tmp_path / "store.lock", readonly=True) as db:
        assert db.get_many(locations[:-1]) == [blob(i) for i in range(9)]
        with pytest.raises(InvalidLocationError, match="past the committed end"):
            db.get(locations[-1])
        assert db.verify().ok


def test_read_only_open_of_an_original_engine_datadir_serves_it_without_indexing_it(tmp_path: Path) -> None:
    """Plain .dat files without indexes or state page: every byte reads; nothing is written
    (a writer's open would index and seal them)."""
    datadir = tmp_path / "store"
    datadir.mkdir()
    parts = {"data_00000000.dat": [b"old blob A", b"old blob B" * 7], "data_00000001.dat": [b"C", b"old blob D!"]}
    for name, blobs in parts.items():
        (datadir / name).write_bytes(b"".join(blobs))
    before = snapshot(tmp_path)
    with FlatFileDb(datadir, tmp_path / "store.lock", readonly=True) as db:
        for name, blobs in parts.items():
            start = 0
            for part in blobs:
                assert db.get(DataLocation(str(datadir / name), start, start + len(part))) == part
                start += len(part)
        assert db.verify().ok
        assert db.stats().logical_bytes == sum(len(b"".join(blobs)) for blobs in parts.values())
    assert snapshot(tmp_path) == before


# -- read-only media and users without write permission -------------------------------------


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source, mount): ``mount`` is a read-only bind mount of ``source``; unmounted at teardown."""
    need_root()
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True)
        yield source, mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("use_compression", [False, True])
def test_read_only_open_works_on_a_read_only_mount_while_a_writer_goes_on_underneath(
    read_only_mount: tuple[Path, Path], use_compression: bool
) -> None:
    """A read-only bind mount of a live store: every blob, and the writer's new puts."""
    source, mount = read_only_mount
    with pytest.raises(OSError):  # the mount really is read-only
        (mount / "probe").write_bytes(b"")
    locations = fill(source / "store", source / "store.lock", use_compression)
    as_mounted = [loc._replace(file_path=str(mount / "store" / Path(loc.file_path).name)) for loc in locations]
    with (
        FlatFileDb(source / "store", source / "store.lock", use_compression=use_compression) as writer,
        FlatFileDb(mount / "store", mount / "store.lock", readonly=True) as db,
    ):
        assert db.get_many(as_mounted) == [blob(i) for i in range(len(locations))]
        for index in range(40, 46):  # puts through the writable path show through the mount
            loc = writer.put(blob(index))
            assert db.get(loc._replace(file_path=str(mount / "store" / Path(loc.file_path).name))) == blob(index)
        report = db.verify()
        assert report.ok and report.blobs == 46, str(report)
        with pytest.raises(FlatFileDbReadOnlyError):
            db.put(b"x")
    with pytest.raises(OSError) as caught:  # a writer's open needs write access; the error names the path as text
        FlatFileDb(mount / "store", mount / "store.lock")
    assert caught.value.filename == str(mount / "store.lock")


def test_cli_read_commands_work_on_a_read_only_mount_and_errors_name_paths_as_text(
    read_only_mount: tuple[Path, Path], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The read commands succeed on the mount; put fails naming the lock file as text, not bytes."""
    source, mount = read_only_mount
    locations = fill(source / "store", source / "store.lock", True)
    before = snapshot(source)

    def run(*args: str) -> tuple[int, bytes, str]:
        capsysbinary.readouterr()
        code = main(["--datadir", str(mount / "store"), *args])
        out, err = capsysbinary.readouterr()
        return code, out, err.decode()

    for command in ("info", "verify", "stats"):
        code, out, err = run(command)
        assert code == 0 and out and not err, err
    code, out, err = run(
        "get", f"{Path(locations[7].file_path).name}:{locations[7].start_offset}:{locations[7].end_offset}"
    )
    assert code == 0 and out == blob(7), err
    code, out, err = run("put", __file__)  # a write: fails, naming the lock file as text
    assert code == 2 and err == f"ffdb: error: {mount / 'store.lock'}: Read-only file system\n"
    assert snapshot(source) == before


DROP_TO_NOBODY = """
    import json, os, sys, io, contextlib
    import conduit_flat_file_db
    from conduit_flat_file_db import DataLocation, FlatFileDb, FlatFileDbReadOnlyError
    from conduit_flat_file_db import cli
    # The interpreter lives where only root may look, so it cannot be started as nobody
    # (subprocess user=): it starts as root, imports what it needs, then becomes nobody.
    cli.build_parser()  # argparse imports gettext's and locale's modules on first use
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    assert not os.access(sys.argv[1], os.W_OK)
    out = {}
    with FlatFileDb(sys.argv[1], sys.argv[2], readonly=True) as db:
        out["blobs"] = [db.get(DataLocation(*loc)).hex() for loc in json.loads(sys.argv[3])]
        out["verify"] = db.verify().ok
        out["stats"] = db.stats().blobs
        try:
            db.put(b"x")
        except FlatFileDbReadOnlyError:
            out["put"] = "refused"
    for command in (["info"], ["verify"], ["stats"]):
        with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.redirect_stderr(io.StringIO()) as err:
            out["cli " + command[0]] = (cli.main(["--datadir", sys.argv[1], "--lock", sys.argv[2], *command]), err.getvalue())
    try:
        FlatFileDb(sys.argv[1], sys.argv[2])
    except PermissionError:
        out["writer"] = "PermissionError"
    print(json.dumps(out))
""".replace("NOBODY", str(NOBODY))


@pytest.mark.parametrize("use_compression", [False, True])
def test_read_only_open_works_for_a_user_without_write_permission(use_compression: bool) -> None:
    """A child running as nobody reads, verifies and runs the CLI on a store it may not write."""
    need_root()
    # Not under tmp_path: pytest makes its parent private to root, and nobody must reach the store.
    base = Path(tempfile.mkdtemp(prefix="ffdb-readonly-"))
    try:
        base.chmod(0o755)
        locations = fill(base / "store", base / "store.lock", use_compression)
        for path in [base / "store", *(base / "store").iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = snapshot(base)
        done = _child(DROP_TO_NOBODY, str(base / "store"), str(base / "store.lock"), json.dumps(locations))
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert [bytes.fromhex(b) for b in result["blobs"]] == [blob(i) for i in range(len(locations))]
        assert result["verify"] and result["stats"] == len(locations) and result["put"] == "refused"
        assert result["cli info"] == result["cli verify"] == result["cli stats"] == [0, ""]
        assert result["writer"] == "PermissionError"  # a writer's open still needs write access
        assert snapshot(base) == before
    finally:
        shutil.rmtree(base)


def _forge_reboot(datadir: Path, synced_below: int) -> None:
    """A state page written under another boot, with seals confirmed durable below ``synced_below``."""
    with open(datadir / "ffdb.state", "r+b") as page:
        page.seek(8 * W_SYNCED_BELOW)
        page.write(synced_below.to_bytes(8, "little"))
        page.seek(8 * W_BOOT_LO)
        page.write((0x1234).to_bytes(8, "little") + (0x5678).to_bytes(8, "little"))


def test_read_only_open_after_a_power_loss_refuses_an_unconfirmed_sealed_segment_it_cannot_vouch_for(
    tmp_path: Path,
) -> None:
    """Zeros where a sealed blob's data never reached the disk: refused (typed), never served, until a
    writer's open cuts the segment; a segment that checks is served as it is."""
    datadir, lock = tmp_path / "store", tmp_path / "store.lock"
    writer = FlatFileDb(datadir, lock)
    first, second = writer.put(b"A" * 100), writer.put(b"B" * 100)
    writer.rotate()
    third = writer.put(b"C" * 50)
    writer.rotate()
    writer.close()
    with open(second.file_path, "r+b") as data:
        data.seek(second.start_offset)
        data.write(bytes(100))
    _forge_reboot(datadir, synced_below=0)
    reader = FlatFileDb(datadir, lock, readonly=True)
    try:
        for location in (first, second):
            with pytest.raises(CorruptionError, match="power loss"):
                reader.get(location)
        assert reader.get(third) == b"C" * 50
    finally:
        reader.close()
    FlatFileDb(datadir, lock).close()  # the writer's open cuts segment 0 after its first blob
    reader = FlatFileDb(datadir, lock, readonly=True)
    try:
        assert reader.get(first) == b"A" * 100
        with pytest.raises(InvalidLocationError):
            reader.get(second)
    finally:
        reader.close()


def test_a_read_only_follower_checks_each_new_page_through_one_kept_index_descriptor(tmp_path: Path) -> None:
    """A read-only instance reading each blob a writer just put checks every new view of the
    state page against the mutable segment's index through one descriptor it keeps (the next
    segment's after a rotation), closed by close(); and when that file was replaced since it
    was opened (here, between two writers: a whole copy put in its place, the kept one cut),
    it checks the new file and trusts the page, instead of walking the index at every read."""
    writer = FlatFileDb(tmp_path / "s")
    reader = FlatFileDb(tmp_path / "s", readonly=True)
    state: Any = reader._readers.state  # pylint: disable=protected-access  # the check under test
    for round_ in range(3):
        kept = -1
        for number in range(100):
            blob = b"%d-%d" % (round_, number) * 20
            assert reader.get(writer.put(blob)) == blob
            if number == 1:
                kept = os.fstat(state._check_fd).st_ino  # pylint: disable=protected-access
        assert os.fstat(state._check_fd).st_ino == kept  # pylint: disable=protected-access  # the segment's index, kept
        assert state._check_segment == writer._state.read_mutable().segment  # type: ignore[union-attr]  # pylint: disable=protected-access
        writer.rotate()
    blob = b"after the rotations"
    assert reader.get(writer.put(blob)) == blob
    writer.close()
    index = tmp_path / "s" / f"data_{state._check_segment:08d}.idx"  # pylint: disable=protected-access
    old = os.open(index, os.O_RDWR)
    shutil.copyfile(index, tmp_path / "copy")
    os.replace(tmp_path / "copy", index)
    os.ftruncate(old, 64)  # the file the reader keeps open: its records gone
    os.close(old)
    with FlatFileDb(tmp_path / "s") as writer:
        blob = b"read through the new file"
        assert reader.get(writer.put(blob)) == blob
        assert state._page_checked == state.read_mutable()  # pylint: disable=protected-access  # trusted
        assert os.fstat(state._check_fd).st_ino == os.stat(index).st_ino  # pylint: disable=protected-access
    reader.close()
    assert state._check_fd == -1  # pylint: disable=protected-access
