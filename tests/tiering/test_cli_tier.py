"""``ffdb tier status|sync|gc`` and ``ffdb --remote URL get|ls|verify`` against a real S3 server
(the session's SeaweedFS, tests/tiering/conftest.py): in-process through ``main([...])`` and in a real
``python -m conduit_flat_file_db`` process, each asserting the output and the exit code, misuse
included (--remote with --datadir or with a write command, a missing bucket, no URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.cli.base import SMALL_BLOB_BYTES

from .s3servers import S3Server

pytestmark = pytest.mark.tiering

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

BUCKET = "ffdb-cli-tier"
TIMEOUT = 120


@pytest.fixture(scope="module")
def s3(seaweedfs: S3Server) -> Iterator[tuple[str, Any]]:
    """The session's SeaweedFS server with the bucket BUCKET; yields (endpoint URL, a boto3
    client of it)."""
    seaweedfs.create_bucket(BUCKET)
    try:
        yield seaweedfs.endpoint, seaweedfs.client()
    finally:
        seaweedfs.delete_bucket(BUCKET)


@pytest.fixture
def server(seaweedfs: S3Server) -> S3Server:
    """The server the CLI is pointed at."""
    return seaweedfs


@pytest.fixture
def url(s3: tuple[str, Any], server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A prefix of its own in BUCKET, with the AWS_* variables of the server set (for main()
    in this process and for the processes it starts)."""
    del s3  # the bucket must exist
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FFDB_TIER_URL", raising=False)
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


class Ffdb:
    """Runs ``ffdb ARGS`` in-process and captures binary stdout/stderr."""

    def __init__(self, capture: pytest.CaptureFixture[bytes]) -> None:
        self.capture = capture

    def __call__(self, *args: str) -> tuple[int, bytes, str]:
        self.capture.readouterr()
        code = main(list(args))
        out, err = self.capture.readouterr()
        return code, out, err.decode()

    def ok(self, *args: str) -> str:
        """Must succeed with nothing on stderr; returns stdout."""
        code, out, err = self(*args)
        assert (code, err) == (0, ""), (args, err)
        return out.decode()


@pytest.fixture
def ffdb(capsysbinary: pytest.CaptureFixture[bytes]) -> Ffdb:
    """In-process ``ffdb``."""
    return Ffdb(capsysbinary)


LARGE = bytes(range(256)) * (SMALL_BLOB_BYTES // 256 + 5)  # streamed by get (open_blob), not batched


def _store(datadir: Path, segments: list[list[bytes]], **options: Any) -> list[list[str]]:
    """Blobs put through the library (no tiering), each inner list a segment sealed by a rotate,
    and an empty mutable one; returns their packed locations."""
    with FlatFileDb(datadir, str(datadir) + ".lock", **options) as db:

        def segment(blobs: list[bytes]) -> list[str]:
            packed = [db.pack_location(db.put(blob)).hex() for blob in blobs]
            db.rotate()
            return packed

        return [segment(blobs) for blobs in segments]


def _status(ffdb: Ffdb, datadir: Path, url: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ffdb.ok("--datadir", str(datadir), "tier", "status", "--url", url, "--json"))
    return document


def _data_files(datadir: Path) -> list[str]:
    return sorted(path.name for path in datadir.glob("data_*.dat*") if not path.name.endswith(".remote"))


# -- tier status, sync, gc ---------------------------------------------------------------------


def test_tier_sync_uploads_every_sealed_segment_and_status_shows_them(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """Before: both sealed segments pending; sync uploads them (the mutable one stays local) and
    prints the status; status --json and the human form agree; the local files stay (no retention)."""
    datadir = tmp_path / "store"
    _store(datadir, [[b"alpha", b"bravo"], [b"charlie"]])
    before = _status(ffdb, datadir, url)
    assert (before["url"], before["pending"], before["uploaded"]) == (url, [0, 1], [])
    out = ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    assert out.splitlines()[:4] == [
        f"url: {url}",
        "uploaded: 2 segments (0-1)",
        "pending: 0 segments",
        "remote only: 0 segments",
    ]
    after = _status(ffdb, datadir, url)
    assert (after["pending"], after["uploaded"], after["remote_only"]) == ([], [0, 1], [])
    assert after["last_error"] is None
    assert _data_files(datadir) == ["data_00000000.dat", "data_00000001.dat", "data_00000002.dat"]
    human = ffdb.ok("tier", "status", "--datadir", str(datadir), "--url", url)
    assert human.splitlines()[1] == "uploaded: 2 segments (0-1)"


def test_tier_sync_with_local_retention_0_removes_local_data_and_get_reads_the_bucket(
    ffdb: Ffdb, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--local-retention-bytes 0: once uploaded, the sealed data files leave the disk (status:
    remote only); get with the tier's URL (--tier-url or FFDB_TIER_URL) still returns every blob,
    the large one streamed; without it the blob is not found (exit 2)."""
    datadir = tmp_path / "store"
    [[a, big], [c]] = _store(datadir, [[b"first", LARGE], [b"third"]])
    out = ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url, "--local-retention-bytes", "0")
    assert "remote only: 2 segments (0-1)" in out.splitlines()
    assert _data_files(datadir) == ["data_00000002.dat"]  # the mutable one only
    status = _status(ffdb, datadir, url)
    assert (status["uploaded"], status["remote_only"], status["local_bytes"]) == ([0, 1], [0, 1], 0)
    code, got, err = ffdb("--datadir", str(datadir), "--tier-url", url, "get", c, a, big)
    assert (code, err) == (0, "") and got == b"third" + b"first" + LARGE
    monkeypatch.setenv("FFDB_TIER_URL", url)
    assert ffdb("--datadir", str(datadir), "get", a, "--slice", "1", "3")[:2] == (0, b"ir")
    monkeypatch.delenv("FFDB_TIER_URL")
    code, got, err = ffdb("--datadir", str(datadir), "get", a)
    assert (code, got) == (2, b"") and err.startswith("ffdb: error: ")


# gc_tiering() shares the tier's fasteners InterProcessLock object with the background upload pass
# the open starts; two threads of one process both "hold" it, and the second release raises.
def test_tier_gc_removes_orphans_and_prints_the_counts(ffdb: Ffdb, tmp_path: Path, url: str, s3: Any) -> None:
    """Objects of a segment without a manifest (an upload cut short) are removed; gc prints the
    counts (human and --json); a second gc finds nothing; the uploaded segments are untouched."""
    _endpoint, client = s3
    datadir = tmp_path / "store"
    [[a]] = _store(datadir, [[b"kept"]])
    ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    prefix = url.split("/", 3)[3]
    for name in ("data_00000007.dat", "data_00000007.idx"):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/segments/{name}", Body=b"orphan")
    assert ffdb.ok("--datadir", str(datadir), "tier", "gc", "--url", url) == "removed 0 manifests, 2 objects\n"
    assert json.loads(ffdb.ok("--datadir", str(datadir), "tier", "gc", "--url", url, "--json")) == {
        "manifests": 0,
        "objects": 0,
    }
    assert ffdb.ok("--remote", url, "get", a) == "kept"


def test_tier_without_url_is_a_usage_error(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """No --url and no FFDB_TIER_URL: exit 2 naming both, nothing opened."""
    del url  # only for its environment (FFDB_TIER_URL unset)
    datadir = tmp_path / "store"
    _store(datadir, [[b"x"]])
    code, out, err = ffdb("--datadir", str(datadir), "tier", "status")
    assert (code, out) == (2, b"")
    assert "needs --url" in err and "FFDB_TIER_URL" in err


def test_tier_on_a_missing_bucket_exits_2_with_a_clear_error(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """sync and gc into a bucket that does not exist: the error names the bucket and the server's
    answer, no traceback, exit 2; --remote of it too."""
    datadir = tmp_path / "store"
    [[a]] = _store(datadir, [[b"x"]])
    missing = url.replace(BUCKET, "ffdb-no-such-bucket")
    for command in ("sync", "gc"):
        code, out, err = ffdb("--datadir", str(datadir), "tier", command, "--url", missing)
        assert (code, out) == (2, b""), err
        assert err.startswith("ffdb: error: ") and "ffdb-no-such-bucket" in err and "Traceback" not in err
        assert "(no such bucket)" in err  # the cause found in the server's answer
    code, out, err = ffdb("--remote", missing, "get", a)
    assert (code, out) == (2, b"") and err.startswith("ffdb: error: ") and "ffdb-no-such-bucket" in err


# -- --remote get, ls, verify ------------------------------------------------------------------


def test_remote_get_ls_verify_serve_what_the_local_store_does(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """After a sync, --remote ls lists the same blobs (same offsets, sizes and packed locations;
    segments named by file name alone), get returns the same bytes for every location form the
    local store prints (packed, the writer's FILE_PATH:START:END, a slice), and verify is clean."""
    datadir = tmp_path / "store"
    packed = _store(datadir, [[b"alpha", b"", LARGE], [b"bravo!"]])
    ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    local = [line.split("\t") for line in ffdb.ok("--datadir", str(datadir), "ls").splitlines()]
    remote = [line.split("\t") for line in ffdb.ok("--remote", url, "ls").splitlines()]
    assert [fields[1:] for fields in remote] == [fields[1:] for fields in local]
    assert [fields[0] for fields in remote] == [os.path.basename(fields[0]) for fields in local]
    assert [fields[4] for fields in remote] == packed[0] + packed[1]
    as_json = [json.loads(line) for line in ffdb.ok("ls", "--remote", url, "--json").splitlines()]
    assert [(d["file_path"], str(d["start_offset"]), d["packed"]) for d in as_json] == [
        (f[0], f[1], f[4]) for f in remote
    ]
    for fields in local:
        blob = ffdb("--datadir", str(datadir), "get", fields[4])[1]
        assert ffdb("--remote", url, "get", fields[4])[:2] == (0, blob)
        assert ffdb("--remote", url, "get", ":".join(fields[:3]))[:2] == (0, blob)  # the writer's path
    assert ffdb("--remote", url, "get", packed[1][0], packed[0][0], "--slice", "1", "0")[:2] == (0, b"ravo!lpha")
    # The same blobs and bytes checked; the local store also counts its empty mutable segment.
    expected = ffdb.ok("--datadir", str(datadir), "verify").replace("OK: 3 segments", "OK: 2 segments")
    assert (
        ffdb.ok("--remote", url, "verify")
        == expected
        == f"OK: 2 segments, 4 blobs, {11 + len(LARGE)} bytes checked, 0 problems\n"
    )


def test_remote_serves_a_compressed_store_by_its_packed_locations(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """Compressed segments (``.dat.zst``): --remote ls names them so, and get of the packed
    locations returns what the local store returns (the segment is found by number)."""
    datadir = tmp_path / "store"
    blobs = [b"compressible " * 1000, LARGE]
    [packed] = _store(datadir, [blobs], use_compression=True)
    ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    remote = [line.split("\t") for line in ffdb.ok("--remote", url, "ls").splitlines()]
    assert [(fields[0], fields[4]) for fields in remote] == [("data_00000000.dat.zst", p) for p in packed]
    assert ffdb("--remote", url, "get", *packed)[:2] == (0, b"".join(blobs))
    assert ffdb.ok("--remote", url, "verify").startswith("OK: 1 segments, 2 blobs")


def test_remote_verify_exits_1_when_an_uploaded_blob_is_damaged(ffdb: Ffdb, tmp_path: Path, url: str, s3: Any) -> None:
    """A data object rewritten in the bucket with other bytes of the same size: verify names it
    and exits 1; --quick (indexes only, no blob read) still passes."""
    _endpoint, client = s3
    datadir = tmp_path / "store"
    _store(datadir, [[b"precious bytes"]])
    ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    key = f"{url.split('/', 3)[3]}/segments/data_00000000.dat"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"damaged bytes!")
    code, out, err = ffdb("--remote", url, "verify")
    assert (code, err) == (1, ""), err
    first, problem = out.decode().splitlines()
    assert first.startswith("PROBLEMS FOUND: 1 segments") and first.endswith(", 1 problems")
    assert "segments/data_00000000.dat" in problem and "checksum" in problem
    assert ffdb("--remote", url, "verify", "--quick")[0] == 0


def test_remote_refuses_writes_and_datadir(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """--remote serves get, ls and verify only: put (and every other command) and --remote with
    --datadir are usage errors (exit 2), nothing is written anywhere."""
    source = tmp_path / "file"
    source.write_bytes(b"data")
    for args in (["put", str(source)], ["info"], ["rotate"], ["delete", "0"], ["kv", "ls"], ["tier", "status"]):
        code, out, err = ffdb("--remote", url, *args)
        assert (code, out) == (2, b""), args
        assert f"ffdb {args[0]} is not available with --remote" in err
    code, out, err = ffdb("--remote", url, "--datadir", str(tmp_path / "store"), "ls")
    assert (code, out) == (2, b"") and "--remote and --datadir are mutually exclusive" in err
    assert not (tmp_path / "store").exists()


def test_remote_of_a_prefix_without_a_store_exits_2(ffdb: Ffdb, url: str) -> None:
    """An existing bucket, a prefix no store uploaded to: a clear error, not an empty listing."""
    code, out, err = ffdb("--remote", url, "ls")
    assert (code, out) == (2, b"")
    assert err.startswith("ffdb: error: ") and "no store was ever uploaded here" in err


def test_remote_get_in_a_real_process_reads_the_aws_environment(ffdb: Ffdb, tmp_path: Path, url: str) -> None:
    """``python -m conduit_flat_file_db --remote URL get`` in its own process: the endpoint and
    credentials come from the AWS_* variables it inherits."""
    datadir = tmp_path / "store"
    [[a, big]] = _store(datadir, [[b"from afar", LARGE]])
    ffdb.ok("--datadir", str(datadir), "tier", "sync", "--url", url)
    done = subprocess.run(
        [sys.executable, "-m", "conduit_flat_file_db", "--remote", url, "get", big, a],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == LARGE + b"from afar"
