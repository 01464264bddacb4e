"""The tier against real S3 servers (SeaweedFS and Ceph RGW, started by the suite on 127.0.0.1),
through the client the tier builds itself from the URL, options and ``AWS_*`` environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import obstore
import pytest

from conduit_flat_file_db import FlatFileDb, FlatFileDbNotFoundError, Slice
from conduit_flat_file_db.errors import BucketNotFoundError, RemoteAccessError
from conduit_flat_file_db.tiering import Tiering

from .s3servers import S3Server

pytestmark = pytest.mark.tiering


def _options(server: S3Server, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "region": server.region,
        **extra,
    }


def _blobs(count: int, size: int) -> list[bytes]:
    return [os.urandom(size // 2) + bytes([i % 256]) * (size - size // 2) for i in range(count)]


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_a_store_tiers_to_a_real_server_and_reads_back_every_way(
    tmp_path: Path, s3_bucket: tuple[S3Server, str], compressed: bool
) -> None:
    """Upload with local retention 0, then every read path, open_remote, delete and gc, on the server."""
    server, bucket = s3_bucket
    url = f"s3://{bucket}/stores/one"
    tiering = Tiering(url, local_retention_bytes=0, **_options(server))
    with FlatFileDb(tmp_path / "db", use_compression=compressed, max_file_size=200_000, tiering=tiering) as db:
        datas = _blobs(120, 5000)
        locations = db.put_many(datas)
        db.rotate()
        db.sync_tiering()
        status = db.tiering_status()
        assert status["pending"] == [] and status["remote_only"] == db.segments()[:-1]
        assert [db.get(loc) for loc in locations] == datas
        assert db.get(locations[5], Slice(10, 300)) == datas[5][10:300]
        assert db.get_many(locations[::-1]) == datas[::-1]
        with db.open_blob(locations[9]) as blob:
            assert blob.read() == datas[9]
        remote = FlatFileDb.open_remote(url, **_options(server))
        assert remote.get_many(locations) == datas
        report = remote.verify()
        assert report.ok and report.blobs == len(datas), str(report)
        db.delete_file(locations[0].file_path)
        remote.refresh()
        with pytest.raises(FlatFileDbNotFoundError):
            remote.get(locations[0])
        assert db.gc_tiering() == {"manifests": 0, "objects": 0}


def test_the_aws_environment_variables_reach_the_server(
    tmp_path: Path, s3_bucket: tuple[S3Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the URL given, endpoint, region and keys come from AWS_* variables."""
    server, bucket = s3_bucket
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    with FlatFileDb(tmp_path / "db", max_file_size=50_000, tiering=Tiering(f"s3://{bucket}/env")) as db:
        location = db.put(b"z" * 60_000)
        db.rotate()
        db.sync_tiering()
        assert db.tiering_status()["uploaded"] == [location_segment(location.file_path)]


def location_segment(path: str) -> int:
    """The segment number a location's path names."""
    return int(os.path.basename(path)[5:13])


def test_uploads_are_checked_by_the_servers_md5_even_in_parts(tmp_path: Path, s3_bucket: tuple[S3Server, str]) -> None:
    """A segment larger than one part goes up in parts; the server's ETag (MD5 of the parts' MD5s)
    vouches for it, so no read-back is needed; the manifest records that."""
    server, bucket = s3_bucket
    tiering = Tiering(f"s3://{bucket}/big", **_options(server))
    with FlatFileDb(tmp_path / "db", max_file_size=20 * 2**20, tiering=tiering) as db:
        location = db.put(os.urandom(20 * 2**20))
        db.rotate()
        db.sync_tiering()
        number = location_segment(location.file_path)
        manifest = json.loads((tmp_path / "db" / f"data_{number:08d}.remote").read_bytes())
        assert manifest["verified"] == "etag", manifest
        assert manifest["data_size"] == 20 * 2**20
        assert db.tiering_status()["requests"].get("read_back") is None


def test_a_missing_bucket_is_refused_at_open(tmp_path: Path, s3_server: S3Server) -> None:
    """A bucket that does not exist: BucketNotFoundError (a FileNotFoundError) at open."""
    tiering = Tiering("s3://no-such-bucket-here/x", **_options(s3_server))
    with pytest.raises(BucketNotFoundError):
        FlatFileDb(tmp_path / "db", tiering=tiering)


def test_wrong_credentials_are_refused_at_open(tmp_path: Path, s3_bucket: tuple[S3Server, str]) -> None:
    """A wrong secret: RemoteAccessError (a PermissionError) at open, naming the cause."""
    server, bucket = s3_bucket
    tiering = Tiering(f"s3://{bucket}/x", **_options(server, secret_access_key="wrong-secret"))
    with pytest.raises(RemoteAccessError):
        FlatFileDb(tmp_path / "db", tiering=tiering)


def test_the_bucket_holds_what_format_md_says(tmp_path: Path, s3_bucket: tuple[S3Server, str]) -> None:
    """The claim, the four objects of each uploaded segment, nothing else (the probe cleans up)."""
    server, bucket = s3_bucket
    with FlatFileDb(
        tmp_path / "db", max_file_size=10_000, tiering=Tiering(f"s3://{bucket}/p", **_options(server))
    ) as db:
        db.put(b"a" * 12_000)
        db.rotate()
        db.sync_tiering()
        sealed = db.segments()[:-1]
    names = sorted(meta["path"] for batch in obstore.list(server.store(bucket)) for meta in batch)
    want = ["p/ffdb-tier.json"]
    for number in sealed:
        want += [f"p/manifests/data_{number:08d}.json"]
        want += [f"p/segments/data_{number:08d}.{suffix}" for suffix in ("dat", "idx", "sums")]
    assert names == sorted(want)
