"""The ``ffdb`` command line: in-process through ``main()``, plus real subprocess runs."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.arguments import default_lock_path
from conduit_flat_file_db.cli import main, progress, put
from conduit_flat_file_db.cli.base import READ_CHUNK_BYTES, SMALL_BLOB_BYTES
from conduit_flat_file_db.cli.parser import build_parser

BINARY = bytes(range(256)) * 7 + b"\x00\r\n\xff"
TEXT = b"hello, flat file\n"


class Run:
    """Runs ``ffdb --datadir <store> ...`` in-process and captures binary stdout/stderr."""

    def __init__(self, datadir: Path, capture: pytest.CaptureFixture[bytes]) -> None:
        self.datadir = datadir
        self.capture = capture

    def __call__(self, *args: str) -> tuple[int, bytes, str]:
        self.capture.readouterr()
        code = main(["--datadir", str(self.datadir), *args])
        out, err = self.capture.readouterr()
        return code, out, err.decode()

    def put(self, *files: Path) -> list[list[str]]:
        """Put files; return the tab-separated fields of each output line."""
        code, out, err = self(*["put", *map(str, files)])
        assert code == 0, err
        return [line.split("\t") for line in out.decode().splitlines()]


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """Where the store under test lives (not created yet)."""
    return tmp_path / "store"


@pytest.fixture
def run(datadir: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Run:
    """In-process ``ffdb --datadir <datadir>``."""
    return Run(datadir, capsysbinary)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A text file, a binary file with every byte value, and an empty file."""
    contents = {"text.txt": TEXT, "binary.bin": BINARY, "empty": b""}
    paths = {}
    for name, data in contents.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def test_put_many_files_then_get_each_back_by_hex(run: Run, files: dict[str, Path], datadir: Path) -> None:
    """Several files in one put; each reads back byte-identical through its hex location."""
    lines = run.put(*files.values())
    assert [fields[0] for fields in lines] == [str(p) for p in files.values()]
    position = 0
    for fields, path in zip(lines, files.values()):
        name, file_path, start, end, packed = fields
        assert name == str(path)
        assert file_path == str(datadir / "data_00000000.dat")
        assert (int(start), int(end)) == (position, position + path.stat().st_size)
        assert len(packed) == 40
        position = int(end)
        code, out, err = run("get", packed)
        assert (code, err) == (0, "")
        assert out == path.read_bytes()
    assert (datadir.parent / "store.lock").exists()  # default lock: <datadir>.lock beside it


def test_get_path_form_full_and_bare_name(run: Run, files: dict[str, Path]) -> None:
    """FILE_PATH:START:END with the full path or a bare segment name."""
    [(_, file_path, start, end, _)] = run.put(files["binary.bin"])
    for location in (f"{file_path}:{start}:{end}", f"data_00000000.dat:{start}:{end}"):
        code, out, _ = run("get", location)
        assert code == 0
        assert out == BINARY
    code, out, _ = run("get", f"{file_path}:{start}:{start}")
    assert (code, out) == (0, b"")


def test_get_slice(run: Run, files: dict[str, Path]) -> None:
    """--slice START END is blob-relative; END 0 reads to the end; past the blob is an error."""
    run.put(files["text.txt"])
    [(_, _, _, _, packed)] = run.put(files["binary.bin"])
    assert run("get", packed, "--slice", "10", "20")[:2] == (0, BINARY[10:20])
    assert run("get", packed, "--slice", "1000", "0")[:2] == (0, BINARY[1000:])  # END 0: to the end
    code, out, err = run("get", packed, "--slice", "0", str(len(BINARY) + 1))
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: ") and "slice" in err and "Traceback" not in err


def test_put_stdin_and_json(run: Run, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """'-' reads standard input; --json prints one object per line."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BINARY)))
    code, out, err = run("put", "--json", "-", str(files["empty"]))
    assert code == 0, err
    first, second = (json.loads(line) for line in out.decode().splitlines())
    assert first["file"] == "-" and (first["start_offset"], first["end_offset"]) == (0, len(BINARY))
    assert second["file"] == str(files["empty"]) and second["start_offset"] == second["end_offset"]
    assert run("get", first["packed"])[1] == BINARY
    assert run("get", second["packed"])[:2] == (0, b"")


def test_info_text_and_json(run: Run, files: dict[str, Path], datadir: Path, tmp_path: Path) -> None:
    """info lists sealed and mutable segments with blob counts and totals."""
    run.put(files["text.txt"], files["binary.bin"])
    with FlatFileDb(datadir, tmp_path / "store.lock") as db:
        db.rotate()
    run.put(files["empty"])
    code, out, _ = run("info", "--json")
    assert code == 0
    info = json.loads(out)
    assert [(s["segment"], s["file"], s["state"], s["blobs"]) for s in info["segments"]] == [
        (0, "data_00000000.dat", "sealed", 2),
        (1, "data_00000001.dat", "mutable", 1),
    ]
    # Bytes on disk: the data file and its index (header, 2 BLOB records, SEAL), as stats counts them.
    assert info["segments"][0]["disk_bytes"] == len(TEXT) + len(BINARY) + 4 * 32
    disk = json.loads(run("stats", "--json")[1])["totals"]["disk_bytes"]
    assert info["totals"] == {
        "segments": 2,
        "sealed": 1,
        "blobs": 3,
        "blob_bytes": len(TEXT) + len(BINARY),
        "disk_bytes": disk,
    }
    code, out, _ = run("info")
    text = out.decode()
    assert code == 0
    assert "data_00000000.dat  sealed" in text and "data_00000001.dat  mutable" in text
    size = len(TEXT) + len(BINARY)
    assert text.splitlines()[-1] == f"total: 2 segments (1 sealed), 3 blobs, {size} blob bytes, {disk} bytes on disk"


def test_verify_clean_then_corrupted(run: Run, files: dict[str, Path], datadir: Path, tmp_path: Path) -> None:
    """verify exits 0 on a clean store, 1 after a byte of a sealed segment flips."""
    run.put(*files.values())
    code, out, _ = run("verify")
    assert code == 0
    assert out.decode().startswith("OK: ")
    with FlatFileDb(datadir, tmp_path / "store.lock") as db:
        db.rotate()
    sealed = datadir / "data_00000000.dat"
    data = bytearray(sealed.read_bytes())
    data[len(TEXT) + 3] ^= 0xFF  # inside the binary blob
    sealed.write_bytes(bytes(data))
    code, out, _ = run("verify")
    assert code == 1
    assert out.decode().startswith("PROBLEMS FOUND: ")
    assert "[checksum]" in out.decode()


@pytest.mark.parametrize(
    "location, message",
    [
        ("nonsense", "bad location 'nonsense'"),
        ("data_00000000.dat:0:x", "bad location"),
        ("/etc/passwd:0:1", "is not a segment file"),
        ("data_00000000.dat:0:999", "past the committed end"),
        ("00000007" + "0" * 32, "segment 7 does not exist"),
        ("0" * 39, "bad location"),
    ],
)
def test_bad_location_exits_2_with_message(run: Run, files: dict[str, Path], location: str, message: str) -> None:
    """A bad LOCATION is exit 2 with one clear line on stderr, never a traceback."""
    run.put(files["text.txt"])
    code, out, err = run("get", location)
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: ") and message in err and "Traceback" not in err


def test_missing_datadir_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--datadir is required."""
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "ffdb: error: the following arguments are required: --datadir" in err


def test_user_errors_exit_2(run: Run, files: dict[str, Path], datadir: Path, tmp_path: Path) -> None:
    """Missing input files and a missing datadir fail before anything is created."""
    code, _, err = run("put", str(files["text.txt"]), str(tmp_path / "missing"))
    assert code == 2 and f"ffdb: error: {tmp_path / 'missing'}: No such file or directory" in err
    code, _, err = run("put", "-", "-")
    assert code == 2 and "only once" in err
    assert not datadir.exists()  # nothing stored before the checks
    code, _, err = run("info")
    assert code == 2 and "does not exist" in err
    assert not datadir.exists()  # read commands never create a store


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows the usage line and the exit codes."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert " ".join(out.split()).startswith(
        "usage: ffdb [-h] (--datadir DIR | --remote URL) [--tier-url URL] [--lock PATH] [--lock-timeout SECONDS] "
        "[--fsync] [--no-progress] [--version] COMMAND ..."
    )
    assert "exit codes:" in out and "verify found problems" in out


def test_default_lock_path() -> None:
    """The default lock is <datadir>.lock beside the datadir."""
    assert default_lock_path("/x/store") == "/x/store.lock"
    assert default_lock_path("/x/store/") == "/x/store.lock"
    assert default_lock_path("rel") == os.path.abspath("rel.lock")


def _console_script() -> str:
    script = Path(sys.executable).with_name("ffdb")
    found = str(script) if script.exists() else shutil.which("ffdb")
    if found is None:
        pytest.skip("the ffdb console script is not installed (pip install -e .)")
    return found


def test_subprocess_module_put_and_console_script_get(tmp_path: Path, files: dict[str, Path]) -> None:
    """Real processes: python -m put, the installed ffdb script get, error and verify."""
    datadir = str(tmp_path / "store")
    put = subprocess.run(
        [
            sys.executable,
            "-m",
            "conduit_flat_file_db",
            "--datadir",
            datadir,
            "put",
            str(files["binary.bin"]),
            str(files["empty"]),
        ],
        capture_output=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert put.returncode == 0, put.stderr
    packed = [line.split(b"\t")[4].decode() for line in put.stdout.splitlines()]
    ffdb = _console_script()
    for hex_location, expected in zip(packed, (BINARY, b"")):
        got = subprocess.run(
            [ffdb, "--datadir", datadir, "get", hex_location],
            capture_output=True,
            check=False,
            timeout=60,
            cwd=tmp_path,
        )
        assert (got.returncode, got.stdout, got.stderr) == (0, expected, b"")
    bad = subprocess.run(
        [ffdb, "--datadir", datadir, "get", "nope"], capture_output=True, check=False, timeout=60, cwd=tmp_path
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"ffdb: error: bad location") and b"Traceback" not in bad.stderr
    verify = subprocess.run(
        [sys.executable, "-m", "conduit_flat_file_db", "--datadir", datadir, "verify"],
        capture_output=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert verify.returncode == 0 and verify.stdout.startswith(b"OK: ")


# -- streaming put and get, compression, lock timeout, progress (in-process) --------------


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _pattern(size: int, seed: int) -> bytes:
    """``size`` bytes that differ from one KiB to the next (so misplaced chunks show)."""
    block = bytes((seed + i) % 251 for i in range(1021))
    return (block * (size // len(block) + 1))[:size]


def test_put_mixed_sizes_streams_large_batches_small_in_argument_order(run: Run, tmp_path: Path) -> None:
    """Inputs over 1 MiB get a segment of their own (put_stream); the rest share the mutable
    segment; lines come out in argument order and every blob reads back intact."""
    sizes = {
        "a": 10,
        "big": 3 * SMALL_BLOB_BYTES + 5,
        "b": 0,
        "exact": SMALL_BLOB_BYTES,
        "over": SMALL_BLOB_BYTES + 1,
        "c": 7,
    }
    paths = []
    for seed, (name, size) in enumerate(sizes.items()):
        path = tmp_path / name
        path.write_bytes(_pattern(size, seed))
        paths.append(path)
    lines = run.put(*paths)
    assert [fields[0] for fields in lines] == [str(p) for p in paths]
    segment = {Path(fields[0]).name: fields[1] for fields in lines}
    small = {segment[name] for name in ("a", "b", "exact", "c")}
    assert len(small) == 1  # batched together in the mutable segment
    assert segment["big"] not in small and segment["over"] not in small and segment["big"] != segment["over"]
    for fields, path in zip(lines, paths):
        if Path(fields[0]).name in ("big", "over"):
            assert (int(fields[2]), int(fields[3])) == (0, path.stat().st_size)  # a whole segment
        code, out, err = run("get", fields[4])
        assert (code, err) == (0, "")
        assert out == path.read_bytes()


def test_get_streams_slices_across_chunk_boundaries(run: Run, tmp_path: Path) -> None:
    """--slice on a streamed read: seek, then bounded reads that cross READ_CHUNK_BYTES."""
    data = _pattern(2 * READ_CHUNK_BYTES + 17, 3)
    (tmp_path / "blob").write_bytes(data)
    [(_, _, _, _, packed)] = run.put(tmp_path / "blob")
    for start, end in (
        (0, 0),
        (5, 6),
        (READ_CHUNK_BYTES - 3, READ_CHUNK_BYTES + 7),
        (1, len(data) - 1),
        (READ_CHUNK_BYTES + 1, 0),
        (len(data), len(data)),
        (len(data), 0),
    ):
        code, out, err = run("get", packed, "--slice", str(start), str(end))
        assert (code, err) == (0, "")
        assert out == data[start : end or len(data)]
    for bad_start, bad_end in (("-1", "5"), ("3", "2"), ("0", str(len(data) + 1))):
        code, out, err = run("get", packed, "--slice", bad_start, bad_end)
        assert (code, out) == (2, b"")
        assert err.startswith("ffdb: error: ") and "slice" in err


def test_put_compress(run: Run, datadir: Path, tmp_path: Path) -> None:
    """--compress: small files land in a Zstandard mutable segment, a large one in a
    compressed segment of its own, smaller on disk; both read back intact."""
    (tmp_path / "small").write_bytes(TEXT * 100)
    (tmp_path / "large").write_bytes(_pattern(3 * SMALL_BLOB_BYTES, 1))
    code, out, err = run("put", "--compress", "--json", str(tmp_path / "small"), str(tmp_path / "large"))
    assert (code, err) == (0, "")
    small, large = (json.loads(line) for line in out.decode().splitlines())
    assert small["file_path"].endswith(".dat.zst") and large["file_path"].endswith(".dat.zst")
    assert os.path.getsize(large["file_path"]) < 3 * SMALL_BLOB_BYTES // 10
    assert run("get", small["packed"])[1] == TEXT * 100
    assert run("get", large["packed"])[1] == (tmp_path / "large").read_bytes()
    code, out, _ = run("verify")
    assert code == 0 and out.startswith(b"OK: ")
    assert all(name.endswith((".zst", ".idx", ".state")) for name in os.listdir(datadir))


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_lock_timeout_must_be_seconds(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """--lock-timeout takes a finite number of seconds >= 0 (argparse error, exit 2)."""
    assert main(["--datadir", "x", "--lock-timeout", value, "info"]) == 2
    assert "--lock-timeout" in capsys.readouterr().err


def test_lock_timeout_gives_up_while_another_process_holds_the_lock(
    run: Run, files: dict[str, Path], datadir: Path
) -> None:
    """A reader in another process holds the lock: put --lock-timeout 0.2 exits 2 quickly."""
    run.put(files["text.txt"])
    holder_code = (
        "import sys\n"
        "from conduit_flat_file_db import FlatFileDb\n"
        "db = FlatFileDb(sys.argv[1], sys.argv[2])\n"
        "with db.read_lock():\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder_code, str(datadir), default_lock_path(str(datadir))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline() == b"held\n"
            began = time.monotonic()
            code, out, err = run("--lock-timeout", "0.2", "put", str(files["binary.bin"]))
            assert time.monotonic() - began < 5
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: lock ") and "not acquired within 0.2 s" in err
    assert run("--lock-timeout", "5", "put", str(files["binary.bin"]))[0] == 0  # released: goes through


def test_no_progress_global_or_after_the_command() -> None:
    """--no-progress is accepted before or after put/get/verify; off unless given."""
    parser = build_parser()
    assert parser.parse_args(["--datadir", "d", "put", "f"]).no_progress is False
    assert parser.parse_args(["--datadir", "d", "--no-progress", "put", "f"]).no_progress is True
    assert parser.parse_args(["--datadir", "d", "put", "--no-progress", "f"]).no_progress is True
    assert parser.parse_args(["--datadir", "d", "--no-progress", "get", "x"]).no_progress is True
    assert parser.parse_args(["--datadir", "d", "verify", "--no-progress"]).no_progress is True


def test_progress_stream_only_for_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar is drawn on stderr only when it is a terminal and not turned off."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.progress_stream(False) is None
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress.progress_stream(False) is terminal
    assert progress.progress_stream(True) is None


def test_progress_bar_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known total: drawn (tqdm) only above the threshold, in place, ended by close(); unknown
    total: not drawn for work shorter than the delay; not a terminal or --no-progress: nothing."""
    monkeypatch.setattr(progress, "PROGRESS_MIN_BYTES", 2**20)
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL_SECONDS", 0)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    known = progress.make_bar("put", 3 * 2**20, False)
    known.update(2**20)
    known.update(2 * 2**20)
    known.close()
    text = terminal.getvalue()
    assert text.startswith("\rput: ") and text.endswith("\n") and text.count("\n") == 1
    assert re.search(r"put:  33%\|#+\d? +\| 1.00M/3.00M ", text) and re.search(r"100%\|#+\| 3.00M/3.00M ", text)
    assert "B/s]" in text

    for total, no_progress in ((2**20, False), (None, False), (2**30, True)):
        quiet = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", quiet)
        small = progress.make_bar("get", total, no_progress)
        small.update(2**20)
        small.close()
        assert quiet.getvalue() == "", (total, no_progress)

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert isinstance(progress.make_bar("put", 2**30, False), progress.NoBar)


def test_progress_of_put_get_verify_on_a_terminal(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With stderr a terminal and a low threshold, put, get and verify draw a bar on stderr
    (and --no-progress none); stdout carries only the data."""
    data = _pattern(3 * SMALL_BLOB_BYTES, 2)
    (tmp_path / "blob").write_bytes(data)
    monkeypatch.setattr(progress, "PROGRESS_MIN_BYTES", SMALL_BLOB_BYTES)
    for args, label in ((["put"], "put: "), (["get"], "get: "), (["verify"], "verify 0/")):
        terminal = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        if args == ["put"]:
            code, out, _ = run("put", str(tmp_path / "blob"))
            packed = out.decode().split("\t")[4].strip()
        elif args == ["get"]:
            code, out, _ = run("get", packed)
            assert out == data
        else:
            code, out, _ = run("verify")
            assert out.startswith(b"OK: ")
        assert code == 0
        assert terminal.getvalue().startswith("\r" + label) and "100%" in terminal.getvalue()
        assert terminal.getvalue().endswith("\n")
    assert " segments: 100%" in terminal.getvalue()
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run("--no-progress", "get", packed)[:2] == (0, data)
    assert run("get", packed, "--no-progress")[:2] == (0, data)
    assert terminal.getvalue() == ""


def test_put_failure_still_stores_and_prints_what_came_before(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input that cannot be read: the inputs before it are stored and printed in order
    (the batched small ones too), then exit 2; nothing after it is stored."""
    paths = [tmp_path / name for name in ("small1", "big", "small2", "bad", "small3")]
    for seed, path in enumerate(paths):
        path.write_bytes(_pattern(2 * SMALL_BLOB_BYTES if path.name == "big" else 100 + seed, seed))
    real_open = put.open_source

    def failing_open(name: str) -> Any:
        if name.endswith("bad"):
            raise PermissionError(13, "Permission denied", name)
        return real_open(name)

    monkeypatch.setattr(put, "open_source", failing_open)
    code, out, err = run("put", *map(str, paths))
    assert code == 2 and err == f"ffdb: error: {paths[3]}: Permission denied\n"
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert [fields[0] for fields in lines] == [str(p) for p in paths[:3]]
    for fields, path in zip(lines, paths):
        assert run("get", fields[4])[1] == path.read_bytes()


def test_stats_and_quick_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ffdb stats`` reports blobs and bytes per segment (text and JSON); ``verify --quick`` passes."""
    source = tmp_path / "in.bin"
    source.write_bytes(b"stats " * 1000)
    datadir = str(tmp_path / "statstore")
    assert main(["--datadir", datadir, "put", str(source)]) == 0
    capsys.readouterr()
    assert main(["--datadir", datadir, "stats", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["totals"]["blobs"] == 1
    assert document["totals"]["logical_bytes"] == 6000
    assert main(["--datadir", datadir, "stats"]) == 0
    assert "total: 1 segments, 1 blobs, 6000 logical bytes" in capsys.readouterr().out
    assert main(["--datadir", datadir, "verify", "--quick"]) == 0
