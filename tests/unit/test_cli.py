"""The ``ffdb`` command line: in-process through ``main()``, plus real subprocess runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.cli import default_lock_path, main

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
        (0, "data_00000000.dat", "sealed", 2), (1, "data_00000001.dat", "mutable", 1)]
    assert info["segments"][0]["disk_bytes"] == len(TEXT) + len(BINARY)
    assert info["totals"] == {"segments": 2, "sealed": 1, "blobs": 3,
                              "blob_bytes": len(TEXT) + len(BINARY), "disk_bytes": len(TEXT) + len(BINARY)}
    code, out, _ = run("info")
    text = out.decode()
    assert code == 0
    assert "data_00000000.dat  sealed" in text and "data_00000001.dat  mutable" in text
    size = len(TEXT) + len(BINARY)
    assert text.splitlines()[-1] == \
        f"total: 2 segments (1 sealed), 3 blobs, {size} blob bytes, {size} bytes on disk"


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


@pytest.mark.parametrize("location, message", [
    ("nonsense", "bad location 'nonsense'"),
    ("data_00000000.dat:0:x", "bad location"),
    ("/etc/passwd:0:1", "is not a segment file"),
    ("data_00000000.dat:0:999", "past the committed end"),
    ("00000007" + "0" * 32, "segment 7 does not exist"),
    ("0" * 39, "bad location"),
])
def test_bad_location_exits_2_with_message(run: Run, files: dict[str, Path], location: str,
                                           message: str) -> None:
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
    assert out.startswith("usage: ffdb [-h] --datadir DIR [--lock PATH] [--fsync] [--version] COMMAND ...")
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
    put = subprocess.run([sys.executable, "-m", "conduit_flat_file_db", "--datadir", datadir, "put",
                          str(files["binary.bin"]), str(files["empty"])],
                         capture_output=True, check=False, timeout=60, cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    packed = [line.split(b"\t")[4].decode() for line in put.stdout.splitlines()]
    ffdb = _console_script()
    for hex_location, expected in zip(packed, (BINARY, b"")):
        got = subprocess.run([ffdb, "--datadir", datadir, "get", hex_location],
                             capture_output=True, check=False, timeout=60, cwd=tmp_path)
        assert (got.returncode, got.stdout, got.stderr) == (0, expected, b"")
    bad = subprocess.run([ffdb, "--datadir", datadir, "get", "nope"],
                         capture_output=True, check=False, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"ffdb: error: bad location") and b"Traceback" not in bad.stderr
    verify = subprocess.run([sys.executable, "-m", "conduit_flat_file_db", "--datadir", datadir, "verify"],
                            capture_output=True, check=False, timeout=60, cwd=tmp_path)
    assert verify.returncode == 0 and verify.stdout.startswith(b"OK: ")
