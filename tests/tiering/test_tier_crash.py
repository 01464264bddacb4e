"""SIGKILL of the writer at every step of an upload and of a delete: nothing acknowledged is
lost, no remote segment is trusted that is not whole, and gc_tiering() leaves no orphan.

The bucket is obstore's LocalStore (files, so it outlives the killed process), then a real
SeaweedFS server's; the steps are
chosen by tier_crash_child.py, which kills itself with SIGKILL right before or after one call.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import obstore
import pytest
from obstore.store import LocalStore

from conduit_flat_file_db import FlatFileDb, FlatFileDbNotFoundError
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.types import DataLocation

from .s3servers import S3Server

pytestmark = pytest.mark.tiering

# pytest fixtures are parameters named like the fixture functions.
# pylint: disable=redefined-outer-name

CHILD = Path(__file__).with_name("tier_crash_child.py")
URL = "s3://bucket/store"

UPLOAD_STEPS = [
    f"{call}:{kind}:{nth}:{when}"
    for call, kind, nths in [
        ("put", "put_index", (1, 2)),
        ("put", "put_data", (1, 2)),
        ("put", "put_sums", (1,)),
        ("put", "put_manifest", (1, 2)),
        ("marker", "remote", (1, 2)),
        ("unlink", "dat", (1,)),
    ]
    for nth in nths
    for when in ("before", "after")
]
DELETE_STEPS = [
    "delete:manifests:1:before",
    "delete:manifests:1:after",
    "unlink:remote:1:after",
    "unlink:idx:1:after",
    "delete:segments:1:after",
    "delete:segments:3:after",
]


@dataclass
class Bucket:
    """Where the killed writer's segments go: a LocalStore directory or a real server's bucket."""

    url: str
    store: Any  # an obstore store rooted at the bucket
    child_arg: str  # how tier_crash_child.py is told about it


@pytest.fixture(params=["local", "seaweedfs"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bucket]:
    """A LocalStore directory, then a fresh bucket on a real SeaweedFS server."""
    if request.param == "local":
        (tmp_path / "bucket").mkdir()
        yield Bucket(URL, LocalStore(str(tmp_path / "bucket")), str(tmp_path / "bucket"))
        return
    server: S3Server = request.getfixturevalue("seaweedfs")
    name = f"crash-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    options = {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "region": server.region,
    }
    url = f"s3://{name}/store"
    yield Bucket(url, server.store(name), json.dumps({"url": url, "options": options}))
    server.delete_bucket(name)


def _run_child(tmp_path: Path, bucket: Bucket, action: str, step: str, killed: bool = True) -> list[list[object]]:
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "db"), bucket.child_arg, action, step],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    want = -signal.SIGKILL if killed else 0
    assert proc.returncode == want, f"{action} {step}: exit {proc.returncode}: {proc.stderr[-2000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]


def _objects(bucket: Bucket) -> list[str]:
    return sorted(meta["path"] for batch in obstore.list(bucket.store) for meta in batch)


def _check_every_manifest_whole(bucket: Bucket) -> None:
    """The invariant at every instant: a segment with a manifest has all its objects, and they
    verify; what a reader on another machine trusts is whole."""
    names = _objects(bucket)
    for name in names:
        if "/manifests/" in name:
            number = name.rsplit("_", 1)[1][:8]
            have = {n.rsplit("/", 1)[1].split(".", 1)[1] for n in names if f"/segments/data_{number}." in n}
            assert {"idx", "sums"} <= have and have & {"dat", "dat.zst"}, f"segment {number} is trusted but has {have}"
    if any("/manifests/" in name for name in names):
        report = FlatFileDb.open_remote(bucket.url, object_store=bucket.store).verify()
        assert report.ok, str(report)


def _check_bucket_whole(db: FlatFileDb, bucket: Bucket) -> None:
    """Every manifest's segment verifies from the bucket; after gc, every object has a manifest."""
    db.gc_tiering()
    assert db.gc_tiering() == {"manifests": 0, "objects": 0}
    remote = FlatFileDb.open_remote(bucket.url, object_store=bucket.store)
    report = remote.verify()
    assert report.ok, str(report)
    manifests = {int(o.rsplit("_", 1)[1][:8]) for o in _objects(bucket) if "/manifests/" in o}
    assert set(remote.segments()) == manifests
    for name in _objects(bucket):
        if "/segments/" in name:
            assert int(name.rsplit("_", 1)[1][:8]) in manifests, f"orphan {name} survived gc"


@pytest.mark.parametrize("step", UPLOAD_STEPS)
def test_sigkill_during_an_upload_loses_nothing_and_leaves_no_untrusted_segment(
    tmp_path: Path, bucket: Bucket, step: str
) -> None:
    """Killed at ``step`` of an upload: a new open uploads again, every acknowledged blob reads back
    (locally or from the bucket), and the bucket holds only whole, verifiable segments."""
    rows = _run_child(tmp_path, bucket, "upload", step)
    assert rows, "the child acknowledged nothing before the crash point"
    _check_every_manifest_whole(bucket)
    with FlatFileDb(
        tmp_path / "db", tiering=Tiering(bucket.url, object_store=bucket.store, local_retention_bytes=0)
    ) as db:
        db.sync_tiering()
        for path, start, end, digest in rows:
            data = db.get(DataLocation(str(path), int(str(start)), int(str(end))))
            assert hashlib.sha256(data).hexdigest() == digest
        status = db.tiering_status()
        assert status["pending"] == [] and status["remote_only"] == db.segments()[:-1]
        _check_bucket_whole(db, bucket)


@pytest.mark.parametrize("step", DELETE_STEPS)
def test_sigkill_during_a_delete_never_serves_a_half_deleted_segment(tmp_path: Path, bucket: Bucket, step: str) -> None:
    """Killed at ``step`` of delete_file: the segment is whole or gone (reads return its bytes or
    FlatFileDbNotFoundError), the others are untouched, and delete + gc finish the job."""
    rows = _run_child(tmp_path, bucket, "upload", "put:no-such-kind:1:before", killed=False)
    first = 0  # the segment the child deletes: the oldest of a new store
    _run_child(tmp_path, bucket, "delete", step)
    _check_every_manifest_whole(bucket)
    with FlatFileDb(
        tmp_path / "db", tiering=Tiering(bucket.url, object_store=bucket.store, local_retention_bytes=0)
    ) as db:
        for path, start, end, digest in rows:
            location = DataLocation(str(path), int(str(start)), int(str(end)))
            try:
                assert hashlib.sha256(db.get(location)).hexdigest() == digest
            except FlatFileDbNotFoundError:
                assert str(path).endswith(f"data_{first:08d}.dat"), "only the deleted segment may be gone"
        if first in db.segments():
            db.delete_file(db.segment_path(first))
        _check_bucket_whole(db, bucket)
        assert not [o for o in _objects(bucket) if f"data_{first:08d}" in o]
