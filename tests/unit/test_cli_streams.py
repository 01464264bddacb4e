"""``ffdb put`` / ``ffdb get`` on a ~200 MB file in real processes: constant memory,
byte-identical round trips (compared by hash), standard input, --compress, and the
progress bar drawn on a terminal (a pty) and nowhere else.

Memory is measured in a small wrapper process that calls ``cli.main`` under
``RLIMIT_DATA`` and reports ``ru_maxrss``. ``RLIMIT_DATA`` bounds the heap and every
other private writable mapping (Linux >= 4.7), so holding the whole file anywhere makes
the command fail with MemoryError (``test_data_limit_catches_a_whole_blob_in_memory``
shows that it does). ``ru_maxrss`` also counts file pages mapped into the process: a
raw segment is read through a map of the segment, so ``get`` of a raw blob maps every
page it reads (page cache, not heap); that one bound is an expected failure below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Iterator, NamedTuple

import pytest

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

BIG_BYTES = 200_000_000 + 12_345  # not a multiple of any chunk size
LIMIT_BYTES = 120 * 2**20  # RLIMIT_DATA of the wrapper, and the bound on its peak RSS
TIMEOUT = 120
RATE = re.compile(r"\d+(\.\d+)?[kMGT]?B/s")  # tqdm's rate

WRAPPER = """\
import json, resource, sys
report, limit, mode, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
if mode == "cli":
    from conduit_flat_file_db.cli import main
    code = main(args)
    sys.stdout.flush()
else:  # "whole": read a whole blob into memory, as the CLI must not
    from conduit_flat_file_db import FlatFileDb
    with FlatFileDb(args[0], args[0] + ".lock") as db:
        try:
            code = len(db.get(db.unpack_location(bytes.fromhex(args[1]))))
        except MemoryError:
            code = -1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss of a
    for line in status:                     # child starts from its parent's peak on Linux)
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
with open(report, "w") as out:
    json.dump({"code": code, "maxrss": peak}, out)
"""


class Big(NamedTuple):
    """The large input file and its hash."""

    path: Path
    sha256: str


class Result(NamedTuple):
    """One wrapper run: exit code, peak RSS in bytes, stdout (unless sent to a file), stderr."""

    code: int
    maxrss: int
    stdout: bytes
    stderr: bytes


def sha256_of(path: Path) -> str:
    """Hash of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for the whole module: the input, the stores, the outputs (about 1.3 GB,
    removed at the end rather than left to pytest's retention of old temporary dirs)."""
    path = tmp_path_factory.mktemp("cli_streams")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def big(work: Path) -> Big:
    """~200 MB: 1 MiB blocks, alternately random and repetitive (so compression has work)."""
    path = work / "big.bin"
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as out:
        for index in range((BIG_BYTES >> 20) + 1):
            size = min(2**20, BIG_BYTES - written)
            block = os.urandom(size) if index % 2 else (b"conduit flat file db %08d\n" % index * 40000)[:size]
            out.write(block)
            digest.update(block)
            written += size
    assert written == BIG_BYTES
    return Big(path, digest.hexdigest())


def run_wrapper(
    work: Path,
    *args: str,
    mode: str = "cli",
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    stdout_path: Path | None = None,
) -> Result:
    """Run the wrapper in a new process (stderr a pipe, so never a terminal)."""
    report = work / "report.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-c", WRAPPER, str(report), str(LIMIT_BYTES), mode, *args]
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(open(stdout_path, "wb")) if stdout_path is not None else subprocess.PIPE
        done = subprocess.run(
            command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=False, timeout=TIMEOUT, cwd=work
        )
    assert done.returncode == 0 and report.exists(), done.stderr.decode(errors="replace")
    measured = json.loads(report.read_text())
    return Result(measured["code"], measured["maxrss"], done.stdout or b"", done.stderr)


def packed_of(result: Result) -> str:
    """The packed location of the one line a put printed."""
    [line] = result.stdout.decode().splitlines()
    return line.split("\t")[4]


def run_in_pty(work: Path, *args: str) -> tuple[int, str]:
    """``python -m conduit_flat_file_db ARGS`` with stderr on a pseudo-terminal (stdout to
    /dev/null); returns the exit code and everything written to the terminal."""
    master, slave = pty.openpty()
    with open(os.devnull, "wb") as devnull:
        with subprocess.Popen(
            [sys.executable, "-m", "conduit_flat_file_db", *args],
            stdin=subprocess.DEVNULL,
            stdout=devnull,
            stderr=slave,
            cwd=work,
        ) as proc:
            os.close(slave)
            chunks = []
            try:
                while True:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
            finally:
                os.close(master)
            code = proc.wait(timeout=TIMEOUT)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def raw_put(work: Path, big: Big) -> tuple[Path, Result]:
    """The big file put once into a raw store."""
    datadir = work / "raw"
    return datadir, run_wrapper(work, "--datadir", str(datadir), "put", str(big.path))


@pytest.fixture(scope="module")
def raw_get(work: Path, big: Big, raw_put: tuple[Path, Result]) -> tuple[Result, str]:
    """That blob read back once through ``ffdb get`` into a file; (result, hash of the file)."""
    datadir, put = raw_put
    out = work / "raw_out.bin"
    result = run_wrapper(work, "--datadir", str(datadir), "get", packed_of(put), stdout_path=out)
    digest = sha256_of(out)
    assert out.stat().st_size == big.path.stat().st_size
    out.unlink()
    return result, digest


def test_put_large_file_in_constant_memory(raw_put: tuple[Path, Result], big: Big) -> None:
    """put streams the file: one blob, a segment of its own, peak RSS far below its size."""
    datadir, put = raw_put
    assert (put.code, put.stderr) == (0, b"")  # stderr is a pipe: no progress bar
    [(name, file_path, start, end, _)] = [line.split("\t") for line in put.stdout.decode().splitlines()]
    assert name == str(big.path) and (int(start), int(end)) == (0, BIG_BYTES)
    assert os.path.getsize(file_path) == BIG_BYTES and Path(file_path).parent == datadir
    assert put.maxrss < LIMIT_BYTES, f"peak RSS {put.maxrss >> 20} MiB"


def test_get_large_blob_round_trip(raw_get: tuple[Result, str], big: Big) -> None:
    """get writes the blob byte-identical (same hash) within the data limit, no bar on a pipe."""
    result, digest = raw_get
    assert (result.code, result.stderr) == (0, b"")
    assert digest == big.sha256


def test_get_large_raw_blob_peak_rss(raw_get: tuple[Result, str]) -> None:
    """Peak RSS of get of a raw blob, file-backed pages included."""
    assert raw_get[0].maxrss < LIMIT_BYTES, f"peak RSS {raw_get[0].maxrss >> 20} MiB"


def test_data_limit_catches_a_whole_blob_in_memory(work: Path, raw_put: tuple[Path, Result]) -> None:
    """The wrapper's RLIMIT_DATA is a real bound: reading the whole blob with get() fails."""
    datadir, put = raw_put
    result = run_wrapper(work, str(datadir), packed_of(put), mode="whole")
    assert result.code == -1  # MemoryError


def test_put_stdin_pipe_in_constant_memory(work: Path, big: Big, raw_put: tuple[Path, Result]) -> None:
    """put - reads a pipe of unknown size in constant memory; the blob reads back identical."""
    datadir, _ = raw_put
    with subprocess.Popen(["cat", str(big.path)], stdout=subprocess.PIPE) as cat:
        put = run_wrapper(work, "--datadir", str(datadir), "put", "-", stdin=cat.stdout)
        assert cat.stdout is not None
        cat.stdout.close()
    assert (put.code, put.stderr) == (0, b"")
    assert put.maxrss < LIMIT_BYTES, f"peak RSS {put.maxrss >> 20} MiB"
    [(name, _, start, end, packed)] = [line.split("\t") for line in put.stdout.decode().splitlines()]
    assert (name, int(start), int(end)) == ("-", 0, BIG_BYTES)
    out = work / "stdin_out.bin"
    get = run_wrapper(work, "--datadir", str(datadir), "get", packed, stdout_path=out)
    assert get.code == 0
    assert sha256_of(out) == big.sha256
    out.unlink()


def test_compress_round_trip_in_constant_memory(work: Path, big: Big) -> None:
    """put --compress: a smaller .dat.zst segment; put and get both in constant memory
    (no map: compressed frames are read and decompressed one at a time)."""
    datadir = work / "compressed"
    put = run_wrapper(work, "--datadir", str(datadir), "put", "--compress", str(big.path))
    assert (put.code, put.stderr) == (0, b"")
    [(_, file_path, start, end, packed)] = [line.split("\t") for line in put.stdout.decode().splitlines()]
    assert file_path.endswith(".dat.zst") and (int(start), int(end)) == (0, BIG_BYTES)
    assert os.path.getsize(file_path) < 0.7 * BIG_BYTES  # the repetitive half compresses
    out = work / "compressed_out.bin"
    get = run_wrapper(work, "--datadir", str(datadir), "get", packed, stdout_path=out)
    assert (get.code, get.stderr) == (0, b"")
    assert sha256_of(out) == big.sha256
    out.unlink()
    assert put.maxrss < LIMIT_BYTES and get.maxrss < LIMIT_BYTES, (put.maxrss >> 20, get.maxrss >> 20)


def test_progress_bar_on_a_terminal_only(work: Path, big: Big) -> None:
    """stderr a pty: put, get and verify of > 64 MiB draw a tqdm bar (then one final line);
    --no-progress, or work under the threshold, draws nothing."""
    datadir = str(work / "pty")
    code, screen = run_in_pty(work, "--datadir", datadir, "put", "--json", str(big.path))
    assert code == 0
    assert screen.startswith("\rput: ") and re.search(r"100%\|#+\| 191M/191M ", screen) and RATE.search(screen)
    assert screen.count("\n") == 1 and "Traceback" not in screen

    with open(os.devnull, "wb") as devnull:
        packed = [
            line.split("\t")[4]
            for line in subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "conduit_flat_file_db",
                    "--datadir",
                    datadir,
                    "put",
                    "--no-progress",
                    str(big.path),
                ],
                stdout=subprocess.PIPE,
                stderr=devnull,
                check=True,
                timeout=TIMEOUT,
                cwd=work,
            )
            .stdout.decode()
            .splitlines()
        ][0]
    code, screen = run_in_pty(work, "--datadir", datadir, "get", packed)
    assert code == 0
    assert screen.startswith("\rget: ") and "100%" in screen and RATE.search(screen)

    code, screen = run_in_pty(work, "--datadir", datadir, "verify")
    assert code == 0
    assert screen.startswith("\rverify 0/") and "100%" in screen and " segments: " in screen

    for args in (
        ("--no-progress", "get", packed),
        ("get", packed, "--no-progress"),
        ("--no-progress", "verify"),
        ("get", packed, "--slice", "0", str(2**20)),
    ):
        code, screen = run_in_pty(work, "--datadir", datadir, *args)
        assert (code, screen) == (0, ""), args


def test_broken_pipe_mid_stream(work: Path, raw_put: tuple[Path, Result]) -> None:
    """A reader that leaves after the first bytes: exit 2 with one line, no traceback."""
    datadir, put = raw_put
    command = [sys.executable, "-m", "conduit_flat_file_db", "--datadir", str(datadir), "get", packed_of(put)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(4096)) == 4096
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=TIMEOUT)
    assert code == 2
    assert err == b"ffdb: error: output closed before everything was written\n"
