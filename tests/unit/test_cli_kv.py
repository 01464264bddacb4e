"""``ffdb kv``: put, get, ls, rm, stat, vacuum and verify over a keyed store, in-process through
``main([...])`` and in real processes of the installed ``ffdb`` script, each asserting the
output and the exit code, misuse included (absent key, bad JSON, bad hex, a missing store)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conduit_flat_file_db import FlatFileDb, KeyedStore
from conduit_flat_file_db.cli import main, progress
from conduit_flat_file_db.cli.base import SMALL_BLOB_BYTES
from conduit_flat_file_db.cli.parser import build_parser

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

TIMEOUT = 60
BINARY = bytes(range(256)) * 5 + b"\x00\r\n\xff\x1a"  # every byte value, NUL, CR LF, ^Z


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Ffdb:
    """Runs ``ffdb kv ...`` in-process and captures binary stdout and stderr."""

    def __init__(self, datadir: Path, capture: pytest.CaptureFixture[bytes]) -> None:
        self.datadir = str(datadir)
        self.capture = capture

    def __call__(self, *args: str) -> tuple[int, bytes, str]:
        """``ffdb ARGS`` (no implicit --datadir): exit code, stdout, stderr."""
        self.capture.readouterr()
        code = main(list(args))
        out, err = self.capture.readouterr()
        return code, out, err.decode()

    def kv(self, *args: str) -> tuple[int, bytes, str]:
        """``ffdb --datadir DIR kv ARGS``."""
        return self("--datadir", self.datadir, "kv", *args)

    def ok(self, *args: str) -> bytes:
        """``ffdb --datadir DIR kv ARGS``; must succeed with nothing on stderr; returns stdout."""
        code, out, err = self.kv(*args)
        assert (code, err) == (0, ""), (args, err)
        return out

    def stdin(self, monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
        """Standard input of the next runs: ``data``."""
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """Where the keyed store under test lives (not created yet)."""
    return tmp_path / "kv"


@pytest.fixture
def ffdb(datadir: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Ffdb:
    """In-process ``ffdb``."""
    return Ffdb(datadir, capsysbinary)


def _file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: (size, mtime in ns)."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _console_script() -> list[str]:
    """The installed ``ffdb`` script (beside this interpreter, or on PATH); else the module."""
    script = Path(sys.executable).with_name("ffdb")
    found = str(script) if script.exists() else shutil.which("ffdb")
    return [found] if found is not None else [sys.executable, "-m", "conduit_flat_file_db"]


def _process(*args: str, stdin: bytes = b"", cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """A real ``ffdb ARGS`` process, ``stdin`` on its standard input."""
    return subprocess.run(
        [*_console_script(), *args], input=stdin, capture_output=True, check=False, timeout=TIMEOUT, cwd=cwd
    )


# -- put and get -----------------------------------------------------------------------------------


def test_kv_put_from_a_file_then_get_writes_the_value_to_stdout(ffdb: Ffdb, tmp_path: Path) -> None:
    """put prints nothing and creates the store; get writes the value back byte for byte; a
    second put under the same key replaces it."""
    assert ffdb.ok("put", "greeting", _file(tmp_path, "in", b"hello, keyed store\n")) == b""
    assert Path(ffdb.datadir).is_dir()
    assert ffdb.ok("get", "greeting") == b"hello, keyed store\n"
    assert ffdb.ok("put", "greeting", _file(tmp_path, "in2", b"bye")) == b""
    assert ffdb.ok("get", "greeting") == b"bye"
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        assert (store["greeting"], len(store)) == (b"bye", 1)


def test_kv_binary_value_round_trips_through_stdin_and_stdout_in_real_processes(tmp_path: Path) -> None:
    """The installed script: every byte value in through standard input ('-' and no FILE), out
    through standard output and through -o FILE, unchanged; an empty value too."""
    datadir = str(tmp_path / "kv")
    for put_args in (["blob", "-"], ["blob2"]):
        put = _process("kv", "put", "--datadir", datadir, *put_args, stdin=BINARY, cwd=tmp_path)
        assert (put.returncode, put.stdout, put.stderr) == (0, b"", b"")
    for key in ("blob", "blob2"):
        got = _process("--datadir", datadir, "kv", "get", key, cwd=tmp_path)
        assert (got.returncode, got.stdout, got.stderr) == (0, BINARY, b"")
    got = _process("--datadir", datadir, "kv", "get", "blob", "-o", "out.bin", cwd=tmp_path)
    assert (got.returncode, got.stdout, got.stderr) == (0, b"", b"")
    assert (tmp_path / "out.bin").read_bytes() == BINARY
    assert _process("--datadir", datadir, "kv", "put", "empty", stdin=b"", cwd=tmp_path).returncode == 0
    got = _process("--datadir", datadir, "kv", "get", "empty", cwd=tmp_path)
    assert (got.returncode, got.stdout, got.stderr) == (0, b"", b"")
    large = os.urandom(SMALL_BLOB_BYTES) * 2 + BINARY  # streamed both ways, across chunk boundaries
    put = _process("--datadir", datadir, "kv", "put", "large", "--meta", '{"a": 1}', stdin=large, cwd=tmp_path)
    assert (put.returncode, put.stderr) == (0, b"")
    got = _process("--datadir", datadir, "kv", "get", "large", cwd=tmp_path)
    assert (got.returncode, got.stdout == large, got.stderr) == (0, True, b"")
    with KeyedStore(datadir, readonly=True) as store:
        assert (store.meta("large").user, store["blob"], store["blob2"]) == ({"a": 1}, BINARY, BINARY)


def test_kv_get_of_an_absent_key_exits_1_names_it_and_writes_nothing(ffdb: Ffdb, tmp_path: Path) -> None:
    """stdout stays empty, stderr names the key on one line, and an -o FILE is left as it was."""
    ffdb.ok("put", "present", _file(tmp_path, "in", b"x"))
    assert ffdb.kv("get", "absent") == (1, b"", "ffdb: not found: key 'absent'\n")
    kept = _file(tmp_path, "kept", b"old contents")
    assert ffdb.kv("get", "absent", "-o", kept) == (1, b"", "ffdb: not found: key 'absent'\n")
    assert Path(kept).read_bytes() == b"old contents"
    assert ffdb.kv("get", "--bytes-key", "abcd") == (1, b"", "ffdb: not found: bytes key abcd (hex)\n")


def test_kv_get_to_a_file_and_slices(ffdb: Ffdb, tmp_path: Path) -> None:
    """-o FILE writes the value there (stdout empty); --slice START:END with either side empty;
    a slice past the value or a malformed one exits 2 and writes nothing."""
    ffdb.ok("put", "digits", _file(tmp_path, "in", b"0123456789"))
    out = tmp_path / "out"
    assert ffdb.ok("get", "digits", "-o", str(out)) == b"" and out.read_bytes() == b"0123456789"
    for spec, expected in (("2:5", b"234"), ("7:", b"789"), (":3", b"012"), ("4:4", b""), (":", b"0123456789")):
        assert ffdb.ok("get", "digits", "--slice", spec) == expected, spec
    assert ffdb.ok("get", "digits", "--slice", "1:4", "-o", str(out)) == b"" and out.read_bytes() == b"123"
    code, stdout, err = ffdb.kv("get", "digits", "--slice", "5:11")
    assert (code, stdout) == (2, b"")
    assert err == "ffdb: error: slice 5:11 is not inside the value of key 'digits' (10 bytes)\n"
    assert ffdb.kv("get", "digits", "--slice", "6:5")[:2] == (2, b"")
    for bad in ("5", "a:b", "-1:3"):
        code, stdout, err = ffdb.kv("get", "digits", f"--slice={bad}")
        assert (code, stdout) == (2, b"") and "--slice: expected START:END" in err, bad


def test_kv_put_meta_is_stored_and_bad_meta_exits_2_before_the_store_is_created(ffdb: Ffdb, tmp_path: Path) -> None:
    """--meta JSON object: stat KEY shows it; not JSON, or JSON that is not an object: exit 2
    naming the problem, and no store directory appears."""
    source = _file(tmp_path, "in", b"value")
    for meta, message in (
        ("{not json", "ffdb: error: --meta is not valid JSON: "),
        ("[1, 2]", "ffdb: error: --meta must be a JSON object, got list: '[1, 2]'"),
    ):
        code, out, err = ffdb.kv("put", "k", source, "--meta", meta)
        assert (code, out) == (2, b"") and err.startswith(message) and err.count("\n") == 1, err
        assert not Path(ffdb.datadir).exists()
    ffdb.ok("put", "k", source, "--meta", '{"owner": "ana", "tags": [1, 2]}')
    assert json.loads(ffdb.ok("stat", "k", "--json"))["user"] == {"owner": "ana", "tags": [1, 2]}
    assert ffdb.ok("get", "k") == b"value"


def test_kv_put_meta_the_store_would_refuse_exits_2_before_the_store_is_created(ffdb: Ffdb, tmp_path: Path) -> None:
    """json.loads takes NaN and Infinity, which the store's metadata refuses: ``put --meta`` made
    the store, then refused the meta (while every argument is checked before the store is
    opened). JSON nested deeper than the parser's recursion went as far as a traceback."""
    source = _file(tmp_path, "in", b"value")
    for meta, message in (
        ('{"a": NaN}', "ffdb: error: --meta cannot be stored: meta must be JSON-serialisable: "),
        ('{"a": 1e999}', "ffdb: error: --meta cannot be stored: meta must be JSON-serialisable: "),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "ffdb: error: --meta is not valid JSON: "),
    ):
        code, out, err = ffdb.kv("put", "k", source, "--meta", meta)
        assert (code, out) == (2, b"") and err.startswith(message) and err.count("\n") == 1, err
        assert not Path(ffdb.datadir).exists()


def test_kv_put_of_a_missing_file_or_with_bad_operands_exits_2_and_creates_nothing(ffdb: Ffdb, tmp_path: Path) -> None:
    """A missing FILE, no KEY, or too many operands: exit 2 before the store is opened."""
    code, out, err = ffdb.kv("put", "k", str(tmp_path / "missing"))
    assert (code, out) == (2, b"") and err.startswith("ffdb: error: ") and "missing" in err
    assert ffdb.kv("put") == (2, b"", "ffdb: error: put takes KEY [FILE|-], got 0 arguments (--add: FILE...)\n")
    assert ffdb.kv("put", "k", "a", "b")[0] == 2
    assert not Path(ffdb.datadir).exists()


def test_kv_bytes_key_is_hex_and_distinct_from_the_text_key_of_the_same_bytes(
    ffdb: Ffdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--bytes-key 616263 and the text key 'abc' hold different values; bad hex exits 2."""
    ffdb.stdin(monkeypatch, b"bytes value")
    ffdb.ok("put", "--bytes-key", "616263")
    ffdb.ok("put", "abc", _file(tmp_path, "in", b"text value"))
    assert ffdb.ok("get", "--bytes-key", "616263") == b"bytes value"
    assert ffdb.ok("get", "abc") == b"text value"
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        assert (store[b"abc"], store["abc"]) == (b"bytes value", b"text value")
    for bad in ("6162x3", "616", "61 62"):
        code, out, err = ffdb.kv("get", "--bytes-key", bad)
        assert (code, out, err) == (2, b"", f"ffdb: error: bad bytes key {bad!r}: expected hex digits, two per byte\n")


def test_kv_put_add_stores_by_content_and_prints_each_sha256_key(
    ffdb: Ffdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--add FILE...: one line per file, FILE then the SHA-256 of its content; the same content
    twice is stored once; '-' (or no FILE) reads standard input."""
    one, same = _file(tmp_path, "one", b"content A"), _file(tmp_path, "same", b"content A")
    other = _file(tmp_path, "other", BINARY)
    digest_a, digest_b = hashlib.sha256(b"content A").hexdigest(), hashlib.sha256(BINARY).hexdigest()
    out = ffdb.ok("put", "--add", one, other, same).decode()
    assert out == f"{one}\t{digest_a}\n{other}\t{digest_b}\n{same}\t{digest_a}\n"
    assert ffdb.ok("ls").decode().splitlines() == sorted([digest_a, digest_b])
    assert ffdb.ok("get", digest_b) == BINARY
    large = BINARY * (SMALL_BLOB_BYTES // len(BINARY) + 2)  # streamed by add_streams
    big, small = _file(tmp_path, "big", large), _file(tmp_path, "small", b"small")
    digest_big, digest_small = hashlib.sha256(large).hexdigest(), hashlib.sha256(b"small").hexdigest()
    assert (
        ffdb.ok("put", "--add", small, big, one).decode()
        == f"{small}\t{digest_small}\n{big}\t{digest_big}\n{one}\t{digest_a}\n"
    )
    assert ffdb.ok("get", digest_big) == large and ffdb.ok("get", digest_small) == b"small"
    ffdb.stdin(monkeypatch, b"from stdin")
    assert ffdb.ok("put", "--add").decode() == f"-\t{hashlib.sha256(b'from stdin').hexdigest()}\n"
    code, out_bytes, err = ffdb.kv("put", "--add", one, "--meta", "{}")
    assert (code, out_bytes) == (2, b"") and "no --meta nor --bytes-key" in err


# -- ls ---------------------------------------------------------------------------------------------


def test_kv_ls_lists_keys_sorted_with_prefix_long_and_json(ffdb: Ffdb, tmp_path: Path) -> None:
    """Bytes keys (hex) first, then text keys, each sorted; --prefix P: text keys starting with P;
    --bytes-key: bytes keys only; --long adds size, created time and segment; --json objects."""
    source = _file(tmp_path, "in", b"12345")
    for key in ("b/2", "a/1", "b/1", "c"):
        ffdb.ok("put", key, source)
    ffdb.ok("put", "--bytes-key", "00ff", source)
    ffdb.ok("put", "--bytes-key", "0001", _file(tmp_path, "in2", b""))
    assert ffdb.ok("ls").decode().splitlines() == ["0001", "00ff", "a/1", "b/1", "b/2", "c"]
    assert ffdb.ok("ls", "--prefix", "b/").decode().splitlines() == ["b/1", "b/2"]
    assert ffdb.ok("ls", "--bytes-key").decode().splitlines() == ["0001", "00ff"]
    code, out, err = ffdb.kv("ls", "--bytes-key", "--prefix", "00f")
    assert (code, out, err) == (2, b"", "ffdb: error: bad bytes key '00f': expected hex digits, two per byte\n")
    assert ffdb.ok("ls", "--bytes-key", "--prefix", "00ff").decode().splitlines() == ["00ff"]
    assert ffdb.ok("ls", "--prefix", "zzz") == b""
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        meta = store.meta("a/1")
    long_lines = [line.split("\t") for line in ffdb.ok("ls", "--long", "--prefix", "a").decode().splitlines()]
    assert len(long_lines) == 1 and long_lines[0][:2] == ["a/1", "5"] and long_lines[0][3] == str(meta.segment)
    assert long_lines[0][2].startswith("20") and long_lines[0][2].endswith("+00:00")
    documents = [json.loads(line) for line in ffdb.ok("ls", "--json", "--long").decode().splitlines()]
    assert [(d["key"], d["bytes_key"], d["size"]) for d in documents] == [
        ("0001", True, 0),
        ("00ff", True, 5),
        ("a/1", False, 5),
        ("b/1", False, 5),
        ("b/2", False, 5),
        ("c", False, 5),
    ]
    assert documents[2]["created"] == meta.created and documents[2]["segment"] == meta.segment
    assert json.loads(ffdb.ok("ls", "--json").decode().splitlines()[0]) == {"key": "0001", "bytes_key": True}


# -- rm ---------------------------------------------------------------------------------------------


def test_kv_rm_deletes_keys_and_an_absent_key_deletes_nothing_unless_forced(ffdb: Ffdb, tmp_path: Path) -> None:
    """rm KEY... prints how many it deleted; with an absent key: exit 1 naming it, nothing
    deleted; --force ignores absent keys."""
    source = _file(tmp_path, "in", b"v")
    for key in ("a", "b", "c", "d"):
        ffdb.ok("put", key, source)
    assert ffdb.ok("rm", "a", "b") == b"deleted 2 keys\n"
    assert ffdb.kv("rm", "c", "a", "zz") == (1, b"", "ffdb: not found: key 'a', key 'zz'; nothing deleted\n")
    assert ffdb.ok("ls").decode().splitlines() == ["c", "d"]
    assert ffdb.ok("rm", "--force", "c", "a") == b"deleted 1 keys\n"
    assert ffdb.ok("ls") == b"d\n"
    assert ffdb.kv("get", "c")[0] == 1


# -- stat, vacuum, verify ------------------------------------------------------------------------


def test_kv_stat_prints_the_totals_and_the_meta_of_one_key(ffdb: Ffdb, tmp_path: Path) -> None:
    """stat: keys, live/dead/disk bytes, segments, as stats() says (text and --json); stat KEY:
    its meta; an absent KEY exits 1."""
    ffdb.ok("put", "k1", _file(tmp_path, "a", b"x" * 100), "--meta", '{"n": 1}')
    ffdb.ok("put", "k2", _file(tmp_path, "b", b"y" * 50))
    ffdb.ok("put", "k2", _file(tmp_path, "c", b"z" * 20))  # 50 dead bytes
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        stats, meta = store.stats(), store.meta("k1")
    totals = json.loads(ffdb.ok("stat", "--json"))
    assert totals == {
        "keys": 2,
        "live_bytes": 120,
        "dead_bytes": stats.dead_bytes,
        "disk_bytes": stats.disk_bytes,
        "segments": stats.segments,
    }
    assert stats.live_bytes == 120 and stats.dead_bytes >= 50
    assert ffdb.ok("stat").decode().splitlines() == [f"{name}: {value}" for name, value in totals.items()]
    document = json.loads(ffdb.ok("stat", "k1", "--json"))
    assert document == {
        "key": "k1",
        "bytes_key": False,
        "size": 100,
        "segment": meta.segment,
        "offset": meta.offset,
        "compressed": False,
        "created": meta.created,
        "checksum": f"{meta.checksum:016x}",
        "user": {"n": 1},
        "array": None,
    }
    text = ffdb.ok("stat", "k1").decode().splitlines()
    assert text[:3] == ["key: k1", "bytes_key: False", "size: 100"] and 'user: {"n": 1}' in text
    assert ffdb.kv("stat", "k3") == (1, b"", "ffdb: not found: key 'k3'\n")


def test_kv_stat_of_an_array_made_by_create_array_shows_it_without_a_checksum(ffdb: Ffdb) -> None:
    """A value made by create_array has no checksum (its KeyMeta says None): stat KEY formatted
    it as hex and failed, "unsupported format string passed to NoneType.__format__" (exit 2).
    It shows the checksum as null (JSON) or None (text), and the array's dtype and shape."""
    with KeyedStore(ffdb.datadir) as store, store.create_array("grid", (2, 3), "<u2") as grid:
        grid[:] = 1
    document = json.loads(ffdb.ok("stat", "grid", "--json"))
    assert document["checksum"] is None and document["array"] == {"dtype": "<u2", "shape": [2, 3]}
    assert document["size"] == 12
    text = ffdb.ok("stat", "grid").decode().splitlines()
    assert "checksum: None" in text and 'array: {"dtype": "<u2", "shape": [2, 3]}' in text


def test_kv_get_refuses_an_output_file_inside_the_store(ffdb: Ffdb, tmp_path: Path) -> None:
    """get -o FILE creates or replaces FILE: naming a segment of the store itself truncated it,
    losing every key in it, from a command that only reads. An output inside the store's
    directory is refused (exit 2) before the store is opened, and the store is unchanged."""
    ffdb.ok("put", "a", _file(tmp_path, "a", b"value a"))
    ffdb.ok("put", "b", _file(tmp_path, "b", b"value b"))
    before = _snapshot(Path(ffdb.datadir))
    for inside in ("segments/data_00000000.dat", "index.sqlite3", "copy-of-a"):
        code, out, err = ffdb.kv("get", "a", "-o", str(Path(ffdb.datadir) / inside))
        assert (code, out) == (2, b"") and "inside the store's directory" in err, err
    assert _snapshot(Path(ffdb.datadir)) == before
    assert ffdb.ok("get", "b") == b"value b"


def test_kv_vacuum_reclaims_the_space_of_deleted_values(ffdb: Ffdb) -> None:
    """Values two to a small segment, most deleted: --min-dead-fraction 1 moves no live value;
    vacuum then moves the four live ones and prints what it reclaimed; the values read back
    unchanged, fewer dead bytes are left, and a second vacuum has nothing to do."""
    values = {f"key{i}": bytes([i]) * 3000 for i in range(20)}
    with KeyedStore(ffdb.datadir, max_file_size=8000) as store:
        store.update(values)
    assert ffdb.ok("rm", *[f"key{i}" for i in range(20) if i % 5]) == b"deleted 16 keys\n"
    before = json.loads(ffdb.ok("stat", "--json"))
    assert json.loads(ffdb.ok("vacuum", "--min-dead-fraction", "1", "--json"))["values_moved"] == 0
    match = re.fullmatch(
        r"reclaimed (\d+) bytes: (\d+) segments removed, (\d+) values moved\n", ffdb.ok("vacuum").decode()
    )
    assert match is not None
    reclaimed, removed, moved = map(int, match.groups())
    assert (reclaimed > 0, removed > 0, moved) == (True, True, 4)
    after = json.loads(ffdb.ok("stat", "--json"))
    assert after["dead_bytes"] < before["dead_bytes"] and after["keys"] == 4
    for i in range(0, 20, 5):
        assert ffdb.ok("get", f"key{i}") == values[f"key{i}"]
    assert json.loads(ffdb.ok("vacuum", "--json")) == {"segments_removed": 0, "bytes_reclaimed": 0, "values_moved": 0}
    for bad in ("1.5", "nan", "x"):
        code, out, err = ffdb.kv("vacuum", "--min-dead-fraction", bad)
        assert (code, out) == (2, b"") and "--min-dead-fraction: " in err, bad


def test_kv_verify_exits_0_when_ok_and_1_listing_each_problem(ffdb: Ffdb, tmp_path: Path) -> None:
    """A healthy store: a summary line 'OK: ...'; a value whose bytes changed on disk: exit 1,
    the problem named on stdout before a summary line counting the problems."""
    ffdb.ok("put", "good", _file(tmp_path, "a", b"G" * 1000))
    ffdb.ok("put", "bad", _file(tmp_path, "b", b"B" * 1000))
    assert ffdb.ok("verify").decode().splitlines()[-1] == "OK: 2 keys checked, no problems found"
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        meta = store.meta("bad")
    [segment_file] = [
        path
        for path in (Path(ffdb.datadir) / "segments").iterdir()
        if path.name.startswith("data_") and int(path.name[5:13]) == meta.segment and ".dat" in path.name
    ]
    with open(segment_file, "r+b") as handle:
        handle.seek(meta.offset + 10)
        handle.write(b"X")
    code, out, err = ffdb.kv("verify")
    lines = out.decode().splitlines()
    problems = [line for line in lines[:-1] if not line.startswith("note: ")]
    assert (code, err) == (1, "") and lines[-1] == f"PROBLEMS: {len(problems)} found, 2 keys checked"
    assert any("key 'bad'" in line for line in problems) and not any("'good'" in line for line in problems), problems


def test_kv_put_and_get_draw_a_progress_bar_on_a_terminal_unless_told_not_to(
    ffdb: Ffdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stderr a terminal and a low threshold, put and get of a large value draw a bar that
    reaches 100% on stderr; stdout carries only the value; --no-progress (before kv or after
    the subcommand): no bar."""
    data = bytes(range(251)) * (3 * SMALL_BLOB_BYTES // 251)
    source = _file(tmp_path, "in", data)
    monkeypatch.setattr(progress, "PROGRESS_MIN_BYTES", SMALL_BLOB_BYTES)
    for args, label in ((["put", "big", source], "kv put: "), (["get", "big"], "kv get: ")):
        terminal = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        code, out, _ = ffdb.kv(*args)
        assert (code, out) == (0, data if args[0] == "get" else b"")
        assert terminal.getvalue().startswith("\r" + label) and "100%" in terminal.getvalue(), terminal.getvalue()
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert ffdb("--no-progress", "--datadir", ffdb.datadir, "kv", "get", "big")[:2] == (0, data)
    assert ffdb.kv("put", "big", source, "--no-progress")[:2] == (0, b"")
    assert terminal.getvalue() == ""


# -- options, misuse -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["get", "k"], ["ls"], ["stat"], ["stat", "k"], ["verify"], ["rm", "k"], ["vacuum"]],
)
def test_kv_commands_other_than_put_on_a_missing_or_other_store_exit_2_and_create_nothing(
    ffdb: Ffdb, datadir: Path, command: list[str]
) -> None:
    """Only put creates a store: every other command names the missing directory, or the
    directory that is not a keyed store (empty, or a blob store's), and leaves it as it was."""
    assert ffdb.kv(*command) == (2, b"", f"ffdb: error: {datadir}: the store's directory does not exist\n")
    assert not datadir.exists()
    datadir.mkdir()
    assert ffdb.kv(*command) == (2, b"", f"ffdb: error: {datadir}: not a keyed store (no segments/ in it)\n")
    with FlatFileDb(datadir, str(datadir) + ".lock") as db:
        db.put(b"a blob")
    before = _snapshot(datadir)
    assert ffdb.kv(*command) == (2, b"", f"ffdb: error: {datadir}: not a keyed store (no segments/ in it)\n")
    assert _snapshot(datadir) == before


def test_kv_read_commands_change_no_file_of_the_store(ffdb: Ffdb, tmp_path: Path, datadir: Path) -> None:
    """get, ls, stat and verify open the store read-only: no file of it is written, and no file
    appears but SQLite's shared-memory side files of the index (a reader of a WAL database
    makes them)."""
    ffdb.ok("put", "k", _file(tmp_path, "in", b"value"), "--meta", '{"a": 1}')
    before = _snapshot(datadir)
    for command in (["get", "k"], ["ls", "--long"], ["stat"], ["stat", "k"], ["verify"]):
        ffdb.ok(*command)
    after = _snapshot(datadir)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) <= {"index.sqlite3-wal", "index.sqlite3-shm"}
    assert after.get("index.sqlite3-wal", (0, 0))[0] == 0  # nothing written to the index


def test_kv_index_lmdb_is_chosen_by_option_then_found_in_the_directory(ffdb: Ffdb, tmp_path: Path) -> None:
    """--index lmdb makes an LMDB index; later commands without --index use it."""
    pytest.importorskip("lmdb")
    ffdb.ok("--index", "lmdb", "put", "k", _file(tmp_path, "in", b"lmdb value"))
    assert (Path(ffdb.datadir) / "index.lmdb").is_dir()
    assert not (Path(ffdb.datadir) / "index.sqlite3").exists()
    assert ffdb.ok("get", "k") == b"lmdb value"
    assert ffdb.ok("ls", "--index", "lmdb") == b"k\n"
    code, out, err = ffdb.kv("ls", "--index", "bdb")
    assert (code, out) == (2, b"") and "invalid choice: 'bdb'" in err


def test_kv_put_compress_stores_a_compressed_value_that_reads_back(ffdb: Ffdb, tmp_path: Path) -> None:
    """--compress opens the store with compression; the value reads back whole and sliced."""
    value = b"compressible text " * 5000
    ffdb.ok("put", "--compress", "big", _file(tmp_path, "in", value))
    assert ffdb.ok("get", "big") == value
    assert ffdb.ok("get", "big", "--slice", "18:36") == value[18:36]
    assert json.loads(ffdb.ok("stat", "big", "--json"))["size"] == len(value)


def test_kv_lock_option_is_refused(ffdb: Ffdb, tmp_path: Path) -> None:
    """The keyed store keeps its locks inside DIR: a --lock before or after kv is refused, saying so."""
    code, out, err = ffdb("--datadir", ffdb.datadir, "--lock", str(tmp_path / "l"), "kv", "ls")
    assert (code, out) == (2, b"")
    assert (
        err == "ffdb: error: --lock does not apply to kv commands: a keyed store keeps its locks inside its directory\n"
    )
    for argv in (["kv", "--lock", "x", "ls"], ["kv", "ls", "--lock", "x"]):
        code, out, err_after = ffdb("--datadir", ffdb.datadir, *argv)
        assert (code, out, err_after) == (2, b"", err), argv


@pytest.mark.parametrize(
    "command", [["put", "k", "f"], ["get", "k"], ["ls"], ["rm", "k"], ["stat"], ["vacuum"], ["verify"]]
)
def test_kv_datadir_and_index_before_or_after_the_command(
    capsysbinary: pytest.CaptureFixture[bytes], command: list[str]
) -> None:
    """--datadir (and --index, --lock-timeout) go before kv, after it, or after the subcommand;
    without --datadir: exit 2 naming the option."""
    parser = build_parser()
    for argv in (
        ["--datadir", "D", "kv", "--index", "lmdb", *command],
        ["kv", "--datadir", "D", *command, "--index", "lmdb"],
        ["kv", *command, "--datadir", "D", "--index", "lmdb", "--lock-timeout", "2"],
    ):
        args = parser.parse_args(argv)
        assert (args.command, args.kv_command, args.datadir, args.index) == ("kv", command[0], "D", "lmdb"), argv
    assert parser.parse_args(["--datadir", "D", "kv", *command]).index is None
    assert main(["kv", *command]) == 2
    assert "the following arguments are required: --datadir" in capsysbinary.readouterr().err.decode()


def test_kv_help_names_every_subcommand_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """ffdb kv --help lists the subcommands and exit codes; ffdb --help names kv."""
    assert main(["kv", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("put", "get", "ls", "rm", "stat", "vacuum", "verify", "exit codes:", "--bytes-key"):
        assert name in out, name
    assert main(["kv", "put", "--help"]) == 0
    assert "ffdb kv put [options] --add [FILE|-]..." in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "kv get, kv stat KEY, kv rm: a KEY is absent" in capsys.readouterr().out


def test_kv_absent_key_and_missing_store_in_a_real_process(tmp_path: Path) -> None:
    """The installed script: exit 1 for an absent key, 2 for a missing store; messages on stderr."""
    datadir = str(tmp_path / "kv")
    assert _process("--datadir", datadir, "kv", "put", "k", stdin=b"v", cwd=tmp_path).returncode == 0
    absent = _process("--datadir", datadir, "kv", "get", "nope", cwd=tmp_path)
    assert (absent.returncode, absent.stdout, absent.stderr) == (1, b"", b"ffdb: not found: key 'nope'\n")
    missing = _process("--datadir", str(tmp_path / "nowhere"), "kv", "ls", cwd=tmp_path)
    assert (missing.returncode, missing.stdout) == (2, b"") and b"does not exist" in missing.stderr
    assert not (tmp_path / "nowhere").exists() and os.listdir(tmp_path) == ["kv"]


def test_kv_skip_damaged_logs_reads_past_a_damaged_key_log_record(ffdb: Ffdb, tmp_path: Path) -> None:
    """A key-log record damaged on disk (its index lost too): `ffdb kv get` exits non-zero with
    the CorruptionError, which names --skip-damaged-logs' option; with --skip-damaged-logs it
    reads the other keys, and the damaged record's key has its value from before."""
    assert ffdb.ok("put", "a", _file(tmp_path, "1", b"first")) == b""
    assert ffdb.ok("put", "a", _file(tmp_path, "2", b"second")) == b""
    assert ffdb.ok("put", "b", _file(tmp_path, "3", b"other")) == b""
    with KeyedStore(ffdb.datadir, readonly=True) as store:
        second = list(store.db.iter_log())[1]
        path = store.db.segment_path(second.segment)
    with open(path, "r+b") as handle:
        handle.seek(second.start_offset + 30)
        byte = handle.read(1)[0]
        handle.seek(second.start_offset + 30)
        handle.write(bytes([byte ^ 0xFF]))
    (Path(ffdb.datadir) / "index.sqlite3").unlink()
    code, out, err = ffdb.kv("put", "c", _file(tmp_path, "4", b"new"))
    assert code != 0 and out == b"" and "skip_damaged_logs" in err, (code, err)
    assert ffdb.ok("put", "--skip-damaged-logs", "c", _file(tmp_path, "4", b"new")) == b""
    assert ffdb.ok("get", "a") == b"first"
    assert ffdb.ok("get", "b") == b"other" and ffdb.ok("get", "c") == b"new"
