"""Crash safety of the whole-file commit (``adopt_file``, ``put_stream``): a child process
SIGKILLs itself at every file-system step of the operation in turn, and this process reopens
the store after each death.

The child installs an audit hook (audit events are raised *before* the operation runs) and
kills itself at the n-th event that changes the file system (a rename, a remove, a truncate,
an open for writing) once the operation has started; n runs 1, 2, ... until the operation
completes without reaching it. So every step of ``commit_sealed_file`` (FORMAT.md "Commit of
a whole file") is a crash point, whatever its order, with no engine code patched.

After every death (GUARANTEES.md "crash during put_stream / adopt_file"):
- the adopted file is either still at its path, unchanged, or the store has a whole sealed
  segment holding exactly its bytes (never both, never neither);
- every blob acknowledged before still reads back; no scratch file is left after reopen;
- ``verify()`` is clean, the store takes puts, and a file left in place can be adopted now.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.errors import FlatFileDbError
from conduit_flat_file_db.seekable import SeekableWriter

pytestmark = pytest.mark.crash

FRAME = 4096
MAX_ROUNDS = 60

# A driver process imports the library once, then forks one worker per crash point: the worker
# opens the store, arms the audit hook and runs the operation; the driver reports how it ended.
_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    from conduit_flat_file_db import FlatFileDb

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
    MUTATING = ("os.rename", "os.replace", "os.remove", "os.truncate", "os.link", "os.symlink")

    def worker(config):
        db = FlatFileDb(config["datadir"], config["lock"], use_compression=config["compressed"], frame_bytes=4096)
        state = {"armed": False, "seen": 0}

        def hook(name, args):
            if not state["armed"]:
                return
            if name == "open":
                flags = args[2] if len(args) > 2 else None
                mode = args[1] if len(args) > 1 else None
                if not ((isinstance(flags, int) and flags & WRITE_FLAGS)
                        or (isinstance(mode, str) and any(c in mode for c in "wax+"))):
                    return
            elif name not in MUTATING:
                return
            state["seen"] += 1
            if state["seen"] == config["kill_at"]:
                state["armed"] = False
                with open(config["result"] + ".step", "w", encoding="utf-8") as out:
                    out.write(f"{name}{tuple(args)!r}")
                os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)
        if config["what"] == "stream":
            with open(config["source"], "rb") as stream:
                state["armed"] = True
                location = db.put_stream(stream)
        else:
            state["armed"] = True
            location = db.adopt_file(config["source"])
        state["armed"] = False
        return {"location": list(location), "events": state["seen"]}

    for line in sys.stdin:
        config = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                result = worker(config)
                with open(config["result"], "w", encoding="utf-8") as out:
                    json.dump(result, out)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        print(json.dumps({"killed": killed, "status": status}), flush=True)
    """
)


class Driver:
    """The driver process: ``run(config)`` forks a worker and returns how it ended."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # closed in close()
            [sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, config: dict[str, object]) -> dict[str, object]:
        """One worker, one crash point."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the driver died (exit {self.proc.poll()})"
        answer: dict[str, object] = json.loads(line)
        return answer

    def close(self) -> None:
        """End the driver."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(name="driver")
def driver_fixture() -> Iterator[Driver]:
    """A driver process for the test."""
    started = Driver()
    yield started
    started.close()


def payload(size: int, seed: int) -> bytes:
    """Half random, half repetitive bytes."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + (rng.randbytes(29) * (size // 29 + 1))[: size - half]


def build_base(directory: Path, compressed: bool) -> list[tuple[str, int, int, bytes]]:
    """A store with a sealed segment and blobs in the mutable one; returns (segment file name,
    start, end, bytes) of every acknowledged blob."""
    db = FlatFileDb(directory, directory.parent / "base.lock", use_compression=compressed, frame_bytes=FRAME)
    acked = []
    for i in range(6):
        data = payload(100 + 3000 * i, i)
        location = db.put(data)
        acked.append((os.path.basename(location.file_path), location.start_offset, location.end_offset, data))
        if i == 2:
            db.rotate()
    db.close()
    return acked


def write_source(path: Path, data: bytes, seekable: bool) -> None:
    """The file to adopt: raw bytes, or a seekable Zstandard file holding them."""
    if seekable:
        with SeekableWriter(path, "w", frame_bytes=FRAME) as out:
            out.write(data)
    else:
        path.write_bytes(data)


def blobs_equal_to(db: FlatFileDb, data: bytes) -> list[DataLocation]:
    """Locations of every committed blob whose bytes are ``data``."""
    size = len(data)
    return [loc for loc in db.iter_locations() if loc.end_offset - loc.start_offset == size and db.get(loc) == data]


class Round(NamedTuple):
    """What one crash round did."""

    where: str
    what: str
    killed: bool
    datadir: Path
    source: Path
    original: bytes  # the source file's bytes (compressed, for a seekable source)
    data: bytes  # the blob's bytes
    result_file: Path


def check_round(db: FlatFileDb, done: Round, acked: list[tuple[str, int, int, bytes]]) -> None:
    """Everything GUARANTEES.md promises after a crash of adopt_file / put_stream."""
    where = done.where
    for file_name, start, end, blob in acked:
        assert db.get(DataLocation(str(done.datadir / file_name), start, end)) == blob, where
    assert not [n for n in os.listdir(done.datadir) if n.startswith(".tmp-")], f"{where}: scratch left after reopen"
    report = db.verify()
    assert report.ok, f"{where}:\n{report}"
    mutable = db.mutable_segment()
    try:
        found = blobs_equal_to(db, done.data)
    except FlatFileDbError as exc:
        pytest.fail(f"{where}: reading the committed blobs after reopen raised {exc!r}")
    for location in found:
        assert int(os.path.basename(location.file_path)[5:13]) < mutable, f"{where}: the new blob is sealed"
        assert location.start_offset == 0, where
    if done.what == "adopt" and done.source.exists():
        assert done.source.read_bytes() == done.original, f"{where}: the source file changed"
        assert not found, f"{where}: the file is both in place and in the store"
    elif done.what == "adopt":
        assert len(found) == 1, f"{where}: the source file is gone but no segment holds its bytes"
    assert len(found) <= 1, where
    if not done.killed:
        assert len(found) == 1, where
        assert DataLocation(*json.loads(done.result_file.read_text())["location"]) == found[0], where
    assert db.get(db.put(b"after the crash")) == b"after the crash", where
    if done.what == "adopt" and done.source.exists():
        assert db.get(db.adopt_file(done.source)) == done.data, where
    assert db.verify().ok, where


SCENARIOS = [
    # (what, source is seekable zstd, store compressed)
    ("adopt", False, False),
    ("adopt", True, False),
    ("adopt", False, True),
    ("adopt", True, True),
    ("stream", False, False),
    ("stream", False, True),
]


@pytest.mark.parametrize(
    ("what", "seekable", "compressed"),
    SCENARIOS,
    ids=[
        "raw-file-raw-store",
        "zst-file-raw-store",
        "raw-file-zstd-store",
        "zst-file-zstd-store",
        "stream-raw-store",
        "stream-zstd-store",
    ],
)
def test_crash_at_every_step_of_a_whole_file_commit(
    driver: Driver, tmp_path: Path, what: str, seekable: bool, compressed: bool
) -> None:
    """SIGKILL at each file-system step of adopt_file / put_stream, then reopen and check."""
    base = tmp_path / "base"
    acked = build_base(base, compressed)
    data = payload(50_000, 99)
    completed = False
    for kill_at in range(1, MAX_ROUNDS + 1):
        name = f"round{kill_at:02d}"
        datadir = tmp_path / name
        shutil.copytree(base, datadir)
        source = tmp_path / f"incoming-{kill_at}" / "blob"
        source.parent.mkdir()
        write_source(source, data, seekable)
        original = source.read_bytes()
        result_file = tmp_path / f"{name}.json"
        config = {
            "datadir": str(datadir),
            "lock": str(tmp_path / f"{name}.lock"),
            "compressed": compressed,
            "what": what,
            "source": str(source),
            "kill_at": kill_at,
            "result": str(result_file),
        }
        answer = driver.run(config)
        killed = bool(answer["killed"])
        assert killed or answer["status"] == 0, f"round {kill_at}: the worker failed ({answer})"
        step = Path(f"{result_file}.step")
        before = step.read_text(encoding="utf-8") if step.exists() else "?"
        where = f"{what} killed at step {kill_at}, before {before}" if killed else f"{what} completed"
        # Not make_store: a failed round must fail here, with its step named, not at teardown.
        db = FlatFileDb(datadir, tmp_path / f"{name}.lock", use_compression=compressed, frame_bytes=FRAME)
        try:
            check_round(db, Round(where, what, killed, datadir, source, original, data, result_file), acked)
        finally:
            db.close()
        if not killed:
            completed = True
            break
    assert completed, f"the operation never completed within {MAX_ROUNDS} crash points"
