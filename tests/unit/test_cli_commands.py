"""``ffdb`` ls, multi-location get, rotate, delete, retention and recompress: in-process through
``main([...])`` and in real ``python -m conduit_flat_file_db`` processes, each asserting the
output and the exit code, misuse included (bad location, the mutable segment, a missing
datadir, --datadir before and after the command)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.cli.base import SMALL_BLOB_BYTES
from conduit_flat_file_db.cli.parser import build_parser

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

TIMEOUT = 60


class Ffdb:
    """Runs ``ffdb ARGS`` in-process (no implicit --datadir) and captures binary stdout/stderr."""

    def __init__(self, datadir: Path, capture: pytest.CaptureFixture[bytes]) -> None:
        self.datadir = str(datadir)
        self.capture = capture

    def __call__(self, *args: str) -> tuple[int, bytes, str]:
        self.capture.readouterr()
        code = main(list(args))
        out, err = self.capture.readouterr()
        return code, out, err.decode()

    def ok(self, *args: str) -> str:
        """Run with ``--datadir`` first; must succeed with nothing on stderr; returns stdout."""
        code, out, err = self("--datadir", self.datadir, *args)
        assert (code, err) == (0, ""), (args, err)
        return out.decode()


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """Where the store under test lives (not created yet)."""
    return tmp_path / "store"


@pytest.fixture
def ffdb(datadir: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Ffdb:
    """In-process ``ffdb``."""
    return Ffdb(datadir, capsysbinary)


def _store(datadir: Path, segments: list[list[bytes]]) -> list[list[str]]:
    """Blobs put through the library, one inner list per sealed segment (rotated after each), so
    ``segments`` sealed segments and an empty mutable one; returns their packed locations."""
    with FlatFileDb(datadir, str(datadir) + ".lock") as db:

        def segment(blobs: list[bytes]) -> list[str]:
            packed = [db.pack_location(db.put(blob)).hex() for blob in blobs]
            db.rotate()
            return packed

        return [segment(blobs) for blobs in segments]


def _segment_numbers(datadir: Path) -> list[int]:
    with FlatFileDb(datadir, str(datadir) + ".lock", readonly=True) as db:
        return db.segments()


def _module(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """A real ``python -m conduit_flat_file_db ARGS`` process (stdin empty, stdout and stderr pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "conduit_flat_file_db", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=TIMEOUT,
        cwd=cwd,
    )


# -- ls --------------------------------------------------------------------------------------


def test_ls_lists_every_blob_in_disk_order_with_size_and_packed_location(ffdb: Ffdb, datadir: Path) -> None:
    """One line per blob (file_path, start, end, size, packed), oldest segment first; --json the
    same facts as objects; each packed location reads its blob back."""
    blobs = [[b"alpha", b""], [b"bravo!"]]
    packed = _store(datadir, blobs)
    lines = [line.split("\t") for line in ffdb.ok("ls").splitlines()]
    assert [fields[4] for fields in lines] == packed[0] + packed[1]
    first_segment = str(datadir / "data_00000000.dat")
    assert lines[0][:4] == [first_segment, "0", "5", "5"] and lines[1][:4] == [first_segment, "5", "5", "0"]
    assert lines[2][:4] == [str(datadir / "data_00000001.dat"), "0", "6", "6"]
    documents = [json.loads(line) for line in ffdb.ok("ls", "--json").splitlines()]
    assert [(d["file_path"], d["start_offset"], d["end_offset"], d["size"], d["packed"]) for d in documents] == [
        (f[0], int(f[1]), int(f[2]), int(f[3]), f[4]) for f in lines
    ]
    for fields, blob in zip(lines, blobs[0] + blobs[1]):
        assert ffdb("--datadir", str(datadir), "get", fields[4])[:2] == (0, blob)


def test_ls_of_a_missing_store_exits_2_and_creates_nothing(ffdb: Ffdb, datadir: Path) -> None:
    """ls opens read-only: a missing datadir is an error, never a new store."""
    code, out, err = ffdb("ls", "--datadir", str(datadir))
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: ") and "does not exist" in err
    assert not datadir.exists()


# -- get of several locations ------------------------------------------------------------------


def test_get_several_locations_writes_them_in_the_order_given(ffdb: Ffdb, datadir: Path) -> None:
    """Blobs from two segments, asked for against disk order and one twice, plus a streamed one
    larger than SMALL_BLOB_BYTES: written one after the other in argument order."""
    large = bytes(range(256)) * (SMALL_BLOB_BYTES // 256 + 3)
    [[a, b], [c, big]] = _store(datadir, [[b"first ", b"second "], [b"third ", large]])
    code, out, err = ffdb("--datadir", str(datadir), "get", c, big, a, b, a)
    assert (code, err) == (0, "")
    assert out == b"third " + large + b"first second first "
    path_form = "data_00000000.dat:6:13"  # bare file name: inside --datadir
    assert ffdb("get", "--datadir", str(datadir), path_form, a)[:2] == (0, b"second first ")


def test_get_several_locations_slices_each(ffdb: Ffdb, datadir: Path) -> None:
    """--slice applies to every location (END 0: to the end); a slice past one blob fails them all."""
    [[a, b]] = _store(datadir, [[b"0123456789", b"abcdef"]])
    assert ffdb("--datadir", str(datadir), "get", b, a, "--slice", "2", "0")[:2] == (0, b"cdef" + b"23456789")
    assert ffdb("--datadir", str(datadir), "get", a, b, "--slice", "1", "3")[:2] == (0, b"12" + b"bc")
    code, out, err = ffdb("--datadir", str(datadir), "get", a, b, "--slice", "0", "8")  # b has 6 bytes
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: ") and "slice 0..8 is not inside the blob" in err


def test_get_with_one_bad_location_among_several_writes_nothing(ffdb: Ffdb, datadir: Path) -> None:
    """Every location is parsed and checked before a byte is written: exit 2, stdout empty."""
    [[a]] = _store(datadir, [[b"good"]])
    for bad, message in (
        ("nonsense", "bad location 'nonsense'"),
        ("00000009" + "0" * 32, "segment 9 does not exist"),
        ("data_00000000.dat:0:999", "past the committed end"),
    ):
        code, out, err = ffdb("--datadir", str(datadir), "get", a, bad)
        assert (code, out) == (2, b""), bad
        assert err.startswith("ffdb: error: ") and message in err and "Traceback" not in err


# -- rotate -------------------------------------------------------------------------------------


def test_rotate_seals_the_mutable_segment_and_prints_the_new_one(ffdb: Ffdb, datadir: Path, tmp_path: Path) -> None:
    """After a put, rotate prints the new mutable segment (number 1); rotating an empty one is a
    no-op that prints the same; --json says the same."""
    (tmp_path / "in").write_bytes(b"payload")
    ffdb.ok("put", str(tmp_path / "in"))
    assert ffdb.ok("rotate") == f"{datadir / 'data_00000001.dat'}\t1\n"
    assert json.loads(ffdb.ok("rotate", "--json")) == {"file_path": str(datadir / "data_00000001.dat"), "segment": 1}
    info = json.loads(ffdb.ok("info", "--json"))
    assert [(s["segment"], s["state"], s["blobs"]) for s in info["segments"]] == [(0, "sealed", 1), (1, "mutable", 0)]


def test_rotate_of_a_missing_store_exits_2_and_creates_nothing(ffdb: Ffdb, datadir: Path) -> None:
    """Maintenance commands never create a store."""
    code, out, err = ffdb("rotate", "--datadir", str(datadir))
    assert (code, out) == (2, b"")
    assert err == f"ffdb: error: {datadir}: the store's directory does not exist\n"
    assert not datadir.exists() and not Path(str(datadir) + ".lock").exists()


# -- delete -------------------------------------------------------------------------------------


def test_delete_sealed_segments_by_number_and_by_file_name(ffdb: Ffdb, datadir: Path) -> None:
    """Both forms delete the segment (data and index); its blobs are gone (get exits 2)."""
    [[a], [b], [c]] = _store(datadir, [[b"zero"], [b"one"], [b"two"]])
    assert (
        ffdb.ok("delete", "0", "data_00000002.dat")
        == f"deleted {datadir / 'data_00000000.dat'}\ndeleted {datadir / 'data_00000002.dat'}\n"
    )
    assert _segment_numbers(datadir) == [1, 3]
    assert sorted(os.listdir(datadir)) == [
        "data_00000001.dat",
        "data_00000001.idx",
        "data_00000003.dat",
        "data_00000003.idx",
        "ffdb.state",
    ]
    for gone in (a, c):
        code, out, err = ffdb("--datadir", str(datadir), "get", gone)
        assert (code, out) == (2, b"") and "does not exist" in err
    assert ffdb("--datadir", str(datadir), "get", b)[:2] == (0, b"one")


def test_delete_refuses_the_mutable_segment_with_exit_3(ffdb: Ffdb, datadir: Path) -> None:
    """The library's refusal, on one line, exit 3; nothing is deleted."""
    _store(datadir, [[b"zero"]])
    before = sorted(os.listdir(datadir))
    code, out, err = ffdb("--datadir", str(datadir), "delete", "1")
    assert (code, out) == (3, b"")
    assert err.startswith("ffdb: refused: Deleting the mutable file is not allowed.") and err.count("\n") == 1
    assert "rotate()" in err and sorted(os.listdir(datadir)) == before


def test_delete_of_a_missing_segment_or_store_exits_2(ffdb: Ffdb, datadir: Path) -> None:
    """A segment that is not there is named in the error; nothing is deleted (not even the ones
    named before it); a missing datadir is not created."""
    code, out, err = ffdb("delete", "0", "--datadir", str(datadir))
    assert (code, out, err) == (2, b"", f"ffdb: error: {datadir}: the store's directory does not exist\n")
    assert not datadir.exists()
    _store(datadir, [[b"zero"]])
    code, out, err = ffdb("--datadir", str(datadir), "delete", "0", "7")
    assert (code, out, err) == (2, b"", "ffdb: error: 7: no such segment\n")
    assert _segment_numbers(datadir) == [0, 1]


# -- retention ----------------------------------------------------------------------------------


def test_retention_deletes_the_oldest_sealed_segments_down_to_keep_min(ffdb: Ffdb, datadir: Path) -> None:
    """--max-bytes 0 --keep-min 1: the two oldest of three sealed segments go, each printed with
    its blob count; the newest sealed and the mutable one stay."""
    _store(datadir, [[b"a", b"b"], [b"c"], [b"d"]])
    out = ffdb.ok("retention", "--max-bytes", "0", "--keep-min", "1")
    lines = out.splitlines()
    assert lines[:2] == [
        f"deleted {datadir / 'data_00000000.dat'}\t2 blobs",
        f"deleted {datadir / 'data_00000001.dat'}\t1 blobs",
    ]
    assert lines[2].startswith("total: 2 segments deleted, ") and len(lines) == 3
    assert _segment_numbers(datadir) == [2, 3]
    assert (
        ffdb.ok("retention", "--max-age", "3600") == "total: 0 segments deleted, " + lines[2].split(", ")[1] + "\n"
    )  # nothing is an hour old


def test_retention_json_and_misuse(ffdb: Ffdb, datadir: Path) -> None:
    """--json prints one object per deleted segment; no bound at all, or a negative one, exits 2."""
    _store(datadir, [[b"a"], [b"b"]])
    documents = [json.loads(line) for line in ffdb.ok("retention", "--max-bytes", "0", "--json").splitlines()]
    assert documents == [{"file_path": str(datadir / f"data_0000000{n}.dat"), "blobs": 1} for n in (0, 1)]
    code, out, err = ffdb("--datadir", str(datadir), "retention")
    assert (code, out, err) == (2, b"", "ffdb: error: retention needs --max-bytes and/or --max-age\n")
    code, out, err = ffdb("--datadir", str(datadir), "retention", "--max-bytes", "-5")
    assert (code, out) == (2, b"") and "--max-bytes: must be a whole number >= 0" in err


# -- recompress ----------------------------------------------------------------------------------


def test_recompress_compresses_then_decompresses_and_locations_stay_valid(ffdb: Ffdb, datadir: Path) -> None:
    """--mode yes makes the sealed segment seekable Zstandard (smaller), --mode no makes it raw
    again; the packed location printed at put time reads the same bytes throughout."""
    blob = b"compressible text " * 4000
    [[packed]] = _store(datadir, [[blob]])
    number, action, before, after, _reason = ffdb.ok("recompress", "--mode", "yes", "--level", "3").split("\t")
    assert (number, action) == ("0", "compressed") and int(after) < int(before) // 10
    assert (datadir / "data_00000000.dat.zst").exists() and not (datadir / "data_00000000.dat").exists()
    assert ffdb("--datadir", str(datadir), "get", packed)[:2] == (0, blob)
    [document] = [json.loads(line) for line in ffdb.ok("recompress", "0", "--mode", "no", "--json").splitlines()]
    assert (document["segment"], document["action"]) == (0, "decompressed")
    assert (datadir / "data_00000000.dat").exists()
    assert ffdb("--datadir", str(datadir), "get", packed)[:2] == (0, blob)
    [line] = ffdb.ok("recompress", "--mode", "no").splitlines()  # already raw
    assert line.split("\t")[:2] == ["0", "skipped"]


def test_recompress_refuses_the_mutable_segment_and_bad_modes(ffdb: Ffdb, datadir: Path) -> None:
    """The mutable segment: exit 3 with the library's message; an unknown --mode: exit 2 (argparse)."""
    _store(datadir, [[b"a"]])
    code, out, err = ffdb("--datadir", str(datadir), "recompress", "1", "--mode", "yes")
    assert (code, out) == (3, b"")
    assert err == "ffdb: refused: segment 1 is the mutable segment (or newer): only sealed segments are maintained\n"
    code, out, err = ffdb("--datadir", str(datadir), "recompress", "--mode", "maybe")
    assert (code, out) == (2, b"") and "invalid choice: 'maybe'" in err


# -- --datadir anywhere --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["rotate"],
        ["delete", "0"],
        ["retention", "--max-bytes", "0"],
        ["recompress", "--mode", "no"],
        ["get", "x", "y"],
        ["info"],
        ["stats"],
        ["verify"],
        ["put", "f"],
    ],
)
def test_datadir_before_or_after_the_command(capsysbinary: pytest.CaptureFixture[bytes], command: list[str]) -> None:
    """Every command takes --datadir (and --lock) before or after its name and its arguments;
    without it, exit 2 naming the option."""
    parser = build_parser()
    for argv in (
        ["--datadir", "D", *command],
        [command[0], "--datadir", "D", *command[1:]],
        [*command, "--datadir", "D"],
    ):
        args = parser.parse_args(argv)
        assert (args.command, args.datadir) == (command[0], "D"), argv
    assert main(command) == 2
    assert "the following arguments are required: --datadir" in capsysbinary.readouterr().err.decode()


# -- real processes --------------------------------------------------------------------------------


def test_every_new_command_in_a_real_process(tmp_path: Path) -> None:
    """python -m conduit_flat_file_db: put, ls, multi-get, rotate, recompress, retention, delete,
    with their exit codes and outputs, misuse included."""
    datadir = str(tmp_path / "store")
    for name, data in (("x", b"x-data"), ("y", b"y-data!")):
        (tmp_path / name).write_bytes(data)
    put = _module("put", "x", "y", "--datadir", datadir, cwd=tmp_path)
    assert (put.returncode, put.stderr) == (0, b"")
    listed = _module("--datadir", datadir, "ls", cwd=tmp_path)
    assert (listed.returncode, listed.stderr) == (0, b"")
    packed = [line.split(b"\t")[4].decode() for line in listed.stdout.splitlines()]
    assert packed == [line.split(b"\t")[4].decode() for line in put.stdout.splitlines()]
    got = _module("get", packed[1], packed[0], "--datadir", datadir, cwd=tmp_path)
    assert (got.returncode, got.stdout, got.stderr) == (0, b"y-data!x-data", b"")
    bad = _module("--datadir", datadir, "get", packed[0], "nope", cwd=tmp_path)
    assert (bad.returncode, bad.stdout) == (2, b"") and bad.stderr.startswith(b"ffdb: error: bad location 'nope'")

    refused = _module("--datadir", datadir, "delete", "0", cwd=tmp_path)
    assert (refused.returncode, refused.stdout) == (3, b"")
    assert refused.stderr.startswith(b"ffdb: refused: Deleting the mutable file is not allowed.")
    rotated = _module("--datadir", datadir, "rotate", cwd=tmp_path)
    assert (rotated.returncode, rotated.stdout, rotated.stderr) == (
        0,
        f"{datadir}/data_00000001.dat\t1\n".encode(),
        b"",
    )
    recompressed = _module("--datadir", datadir, "recompress", "--mode", "yes", cwd=tmp_path)
    assert (recompressed.returncode, recompressed.stderr) == (0, b"")
    assert recompressed.stdout.split(b"\t")[:2] == [b"0", b"compressed"]
    assert _module("--datadir", datadir, "get", *packed, cwd=tmp_path).stdout == b"x-datay-data!"
    kept = _module("--datadir", datadir, "retention", "--max-bytes", "0", "--keep-min", "1", cwd=tmp_path)
    assert (kept.returncode, kept.stdout.startswith(b"total: 0 segments deleted"), kept.stderr) == (0, True, b"")
    deleted = _module("delete", "0", "--datadir", datadir, cwd=tmp_path)
    assert (deleted.returncode, deleted.stdout, deleted.stderr) == (
        0,
        f"deleted {datadir}/data_00000000.dat.zst\n".encode(),
        b"",
    )
    assert _module("--datadir", datadir, "ls", cwd=tmp_path).stdout == b""
    missing = _module("--datadir", str(tmp_path / "nowhere"), "rotate", cwd=tmp_path)
    assert (missing.returncode, missing.stdout) == (2, b"") and b"does not exist" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


PROGRESS_PROBE = """\
import sys
if sys.argv[1] == "hide":
    sys.modules["tqdm"] = None  # as if the extra "progress" were not installed: import tqdm fails
from conduit_flat_file_db.cli import main, progress
progress.PROGRESS_MIN_BYTES = 0
sys.exit(main(sys.argv[2:]))
"""


def _in_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python -c PROGRESS_PROBE ARGS`` with stderr on a pseudo-terminal; (exit code, screen)."""
    master, slave = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-c", PROGRESS_PROBE, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=cwd,
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        code = proc.wait(timeout=TIMEOUT)
    return code, b"".join(chunks).decode(errors="replace")


def test_without_tqdm_no_bar_is_drawn_and_commands_work(tmp_path: Path) -> None:
    """The progress extra is optional: with tqdm hidden, put on a terminal works and draws
    nothing; with it, the same run draws a bar."""
    (tmp_path / "in").write_bytes(b"z" * 100_000)
    datadir = str(tmp_path / "store")
    assert _in_pty(["hide", "--datadir", datadir, "put", "in"], tmp_path) == (0, "")
    code, screen = _in_pty(["show", "--datadir", datadir, "put", "in"], tmp_path)
    assert code == 0 and screen.startswith("\rput: ") and "100%" in screen
    code, screen = _in_pty(["hide", "--datadir", datadir, "verify"], tmp_path)
    assert (code, screen) == (0, "")
    listed = _module("--datadir", datadir, "ls", cwd=tmp_path)
    assert [line.split(b"\t")[3] for line in listed.stdout.splitlines()] == [b"100000", b"100000"]
