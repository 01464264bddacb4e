"""The tier through a fault-injecting proxy, against both real servers (SeaweedFS and Ceph RGW).

Every test arms faults on the proxy (faultproxy.py) between the tier and the server: 5xx answers, slow
answers, cut and flipped response bodies, connections dropped after the server acted, request bodies changed
on the way, a server that overwrites on a conditional create or ignores Range. Each asserts what the tier
promises (GUARANTEES.md, "Tiering"): the request is retried, or a typed error is raised in bounded time;
bad bytes never reach a caller; nothing local goes before its upload is whole and vouched for.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from pathlib import Path
from typing import Any

import obstore
import pytest

from conduit_flat_file_db import FlatFileDb, Slice
from conduit_flat_file_db.errors import (
    RemoteCorruptionError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    UnsafeRemoteError,
)
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.types import DataLocation

from .faultproxy import FaultProxy
from .s3servers import S3Server, ServerNotInstalledError, restart_seaweedfs, start_seaweedfs

PREFIX = "faults"
RETRIES = 2  # the client's retries per request (the tests arm fewer, or more, failures than this)


def _options(server: S3Server, timeout: str = "2s", retries: int = RETRIES) -> dict[str, Any]:
    """Client options for ``server``: short timeouts and quick backoff keep a failing test fast."""
    backoff = {
        "init_backoff": datetime.timedelta(milliseconds=10),
        "max_backoff": datetime.timedelta(milliseconds=50),
        "base": 2,
    }
    return {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "region": server.region,
        "client_options": {"timeout": timeout, "connect_timeout": "2s"},
        "retry_config": {
            "max_retries": retries,
            "retry_timeout": datetime.timedelta(seconds=5),
            "backoff": backoff,
        },
    }


@pytest.fixture(name="proxied")
def proxied_fixture(s3_bucket: tuple[S3Server, str], fault_proxy: FaultProxy) -> tuple[S3Server, str, FaultProxy]:
    """(the server reached through the proxy, a fresh bucket, the proxy)."""
    server, bucket = s3_bucket
    return server.behind(fault_proxy.endpoint), bucket, fault_proxy


def _blobs(count: int, size: int = 5000) -> list[bytes]:
    # Half random, half repetitive: compressed segments get real frames, raw ones real bytes.
    return [os.urandom(size // 2) + bytes([i % 251]) * (size - size // 2) for i in range(count)]


def _open(path: Path, server: S3Server, bucket: str, compressed: bool = False, **extra: Any) -> FlatFileDb:
    options = {**_options(server), **extra}
    retention = options.pop("local_retention_bytes", 0)
    max_file_size = options.pop("max_file_size", 400_000)
    tiering = Tiering(f"s3://{bucket}/{PREFIX}", local_retention_bytes=retention, **options)
    return FlatFileDb(
        path / "db", use_compression=compressed, max_file_size=max_file_size, frame_bytes=16_384, tiering=tiering
    )


def _first_error(db: FlatFileDb, kind: str) -> dict[str, Any]:
    """The tier's status once its thread has recorded an error of ``kind`` (within 30 s; on a loaded
    machine the open's own checks may time out first and be recorded before it)."""
    deadline = time.monotonic() + 30
    while kind not in (db.tiering_status()["last_error"] or "") and time.monotonic() < deadline:
        time.sleep(0.02)
    status = db.tiering_status()
    assert kind in (status["last_error"] or ""), status
    return status


def _uploaded(
    path: Path, server: S3Server, bucket: str, compressed: bool = False
) -> tuple[FlatFileDb, list[DataLocation], list[bytes]]:
    """A store whose one sealed segment lives only in the bucket (local retention 0)."""
    db = _open(path, server, bucket, compressed)
    datas = _blobs(40)
    locations = db.put_many(datas)
    db.rotate()
    db.sync_tiering()
    assert db.tiering_status()["remote_only"] == [_number(locations[0])]
    return db, locations, datas


def _number(location: DataLocation) -> int:
    return int(os.path.basename(location.file_path)[5:13])


def _manifests(server: S3Server, bucket: str) -> list[str]:
    """The manifest objects in the bucket, listed directly (not through the proxy)."""
    store = server.store(bucket)
    return sorted(meta["path"] for batch in obstore.list(store, f"{PREFIX}/manifests/") for meta in batch)


def _local_segments(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path / "db") if name.endswith((".dat", ".dat.zst")))


# -- 5xx answers ------------------------------------------------------------------------------------------


def test_reads_retry_503s_and_fail_typed_past_the_retries(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """A GET answered 503 up to RETRIES times still reads the blob; more failures than retries raise
    RemoteUnavailableError (a ConnectionError) soon, and the blob reads once the server recovers."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket)
    with db:
        proxy.fail_next("GET", 503, times=RETRIES, path="/segments/")
        assert db.get(locations[1]) == datas[1]
        assert proxy.pending() == 0
        proxy.fail_next("GET", 503, times=RETRIES + 5, path="/segments/")
        began = time.monotonic()
        with pytest.raises(RemoteUnavailableError) as caught:
            db.get(locations[2])
        assert isinstance(caught.value, ConnectionError)
        assert time.monotonic() - began < 10
        proxy.reset()
        assert db.get(locations[2]) == datas[2]


def test_uploads_retry_503s_and_keep_local_files_past_the_retries(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """PUTs answered 503 up to RETRIES times: the upload succeeds. More: sync_tiering raises
    RemoteUnavailableError, no manifest is made, the local data file stays (retention 0 applies only to
    uploaded segments) and reads it; the next pass uploads."""
    server, bucket, proxy = proxied
    with _open(tmp_path, server, bucket) as db:
        first = db.put_many(_blobs(10))
        db.rotate()
        proxy.fail_next("PUT", 503, times=RETRIES, path="/segments/")
        db.sync_tiering()
        assert proxy.pending() == 0
        assert db.tiering_status()["remote_only"] == [_number(first[0])]

        datas = _blobs(10)
        locations = db.put_many(datas)
        db.rotate()
        number = _number(locations[0])
        proxy.fail_next("PUT", 503, times=100, path="/segments/")
        with pytest.raises(RemoteUnavailableError):
            db.sync_tiering()
        status = db.tiering_status()
        assert status["pending"] == [number] and number not in status["uploaded"]
        assert os.path.basename(locations[0].file_path) in _local_segments(tmp_path)
        assert _manifests(server, bucket) == [f"{PREFIX}/manifests/data_{_number(first[0]):08d}.json"]
        assert db.get_many(locations) == datas
        proxy.reset()
        db.sync_tiering()
        assert db.tiering_status()["remote_only"] == [_number(first[0]), number]
        assert db.get_many(locations) == datas


def test_the_background_thread_records_an_upload_that_failed(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """The thread woken by a seal meets 503s past the retries: tiering_status() names the error, the
    segment stays pending with its local file, and a later pass uploads it."""
    server, bucket, proxy = proxied
    with _open(tmp_path, server, bucket) as db:
        assert db.tiering_status()["last_error"] is None
        datas = _blobs(10)
        locations = db.put_many(datas)
        proxy.fail_next("PUT", 503, times=1000, path="/segments/")
        db.rotate()  # wakes the thread
        status = _first_error(db, "RemoteUnavailableError")
        assert status["last_error_at"] is not None
        assert status["pending"] == [_number(locations[0])]
        assert db.get_many(locations) == datas
        proxy.reset()
        db.sync_tiering()
        assert db.tiering_status()["remote_only"] == [_number(locations[0])]


# -- slow answers ------------------------------------------------------------------------------------------


def test_a_read_slower_than_the_client_timeout_raises_a_typed_timeout_without_hanging(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """Every GET held longer than the client's timeout: the read raises RemoteTimeoutError (a
    TimeoutError, and a RemoteUnavailableError) within the retries' bounds, not after the server
    finally answers; once the server answers in time, the read works."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket)
    db.close()
    with _open(tmp_path, server, bucket, client_options={"timeout": "1s", "connect_timeout": "1s"}) as slow:
        proxy.delay_next("GET", 2.5, times=RETRIES + 1, path="/segments/")
        began = time.monotonic()
        with pytest.raises(RemoteTimeoutError):
            slow.get(locations[3])
        elapsed = time.monotonic() - began
        assert 1 <= elapsed < 8, elapsed
        proxy.reset()
        assert slow.get(locations[3]) == datas[3]


# -- cut and flipped response bodies ------------------------------------------------------------------------


def _read_through(proxy: FaultProxy, read: Any, want: bytes, arm: Any, times_ok: int = 1, times_bad: int = 5) -> None:
    """``arm(times)`` faults the next responses of what ``read()`` fetches: once, the read returns
    ``want`` (fetched again); every time, RemoteCorruptionError; after that, ``want`` again."""
    arm(times_ok)
    assert read() == want
    assert proxy.pending() == 0, "the armed fault met no request"
    proxy.reset()
    arm(times_bad)
    with pytest.raises(RemoteCorruptionError):
        read()
    proxy.reset()
    assert read() == want


def test_a_flipped_byte_in_a_whole_raw_blob_is_fetched_again(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """A whole blob of a raw segment is checked by its own checksum."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket)
    with db:
        _read_through(
            proxy,
            lambda: db.get(locations[4]),
            datas[4],
            lambda times: proxy.flip_next("GET", 100, times=times, path=".dat"),
        )


@pytest.mark.parametrize(
    ("compressed", "path", "offset", "warm", "index", "part"),
    [
        (False, ".dat", 3000, True, 30, Slice(10, 3000)),  # blocks, against the sums (loaded by the warm-up)
        (False, ".sums", 20, False, 5, Slice(1, 2000)),  # the sums, against the manifest
        (True, ".dat.zst", 10, False, 8, None),  # the seek table (a reader's first GET), against the manifest
    ],
    ids=["raw-blocks", "block-sums", "seek-table"],
)
def test_a_flipped_byte_in_blocks_sums_or_seek_table_is_fetched_again(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    tmp_path: Path,
    proxied: tuple[S3Server, str, FaultProxy],
    compressed: bool,
    path: str,
    offset: int,
    warm: bool,
    index: int,
    part: Slice | None,
) -> None:
    """A slice of a raw segment is fetched in blocks, each checked against the block sums, which are
    checked against the manifest, as a compressed segment's seek table is when its reader is made.
    Flipped once, the read returns the right bytes; every time, RemoteCorruptionError. A fresh store
    for each case: nothing is served from a cache."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket, compressed=compressed)
    db.close()
    want = datas[index] if part is None else datas[index][part.start_offset : part.end_offset]
    for times, fails in ((1, False), (5, True)):
        with _open(tmp_path, server, bucket, compressed=compressed) as fresh:
            if warm:
                fresh.get(locations[0], Slice(0, 10))  # the sums are loaded, the first block cached
            proxy.flip_next("GET", offset, times=times, path=path)
            if fails:
                with pytest.raises(RemoteCorruptionError):
                    fresh.get(locations[index], part)
                proxy.reset()
            assert fresh.get(locations[index], part) == want
            assert proxy.pending() == 0


def test_a_cut_response_is_fetched_again_or_raises_never_returns_short_bytes(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """A ranged GET whose body is cut (the head promised more): once, the read returns the blob; every
    time, a typed error (the client sees a broken body: RemoteUnavailableError, or RemoteCorruptionError
    for a short answer); never fewer or other bytes."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket)
    with db:
        proxy.truncate_next("GET", 100, times=1, path=".dat")
        assert db.get(locations[6]) == datas[6]
        assert proxy.pending() == 0
        proxy.truncate_next("GET", 100, times=20, path=".dat")
        with pytest.raises((RemoteCorruptionError, RemoteUnavailableError)):
            db.get(locations[7])
        proxy.reset()
        assert db.get(locations[7]) == datas[7]


def test_a_flipped_byte_in_a_compressed_frame_is_fetched_again(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """A frame of a compressed segment is checked by its checksum while it is decompressed."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket, compressed=True)
    with db:
        assert db.get(locations[0]) == datas[0]  # the seek table is fetched and checked
        fresh = iter(range(len(datas) - 1, 0, -3))  # blobs in frames not fetched (nor cached) yet
        for times, fails in ((1, False), (5, True)):
            number = next(fresh)
            proxy.flip_next("GET", 64, times=times, path=".dat.zst")
            if fails:
                with pytest.raises(RemoteCorruptionError):
                    db.get(locations[number])
                proxy.reset()
                number = next(fresh)
            assert db.get(locations[number]) == datas[number]
            assert proxy.pending() == 0


def test_open_remote_fetches_a_flipped_index_again_and_refuses_one_flipped_every_time(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """open_remote reads a segment's record index from the bucket, checked against the manifest: one
    flipped response is fetched again; flipped in every response, RemoteCorruptionError; then it reads.
    A fresh remote opener for each case: the index is read once per segment."""
    server, bucket, proxy = proxied
    db, locations, datas = _uploaded(tmp_path, server, bucket)
    db.close()
    for times, fails in ((1, False), (5, True)):
        with FlatFileDb.open_remote(f"s3://{bucket}/{PREFIX}", **_options(server)) as remote:
            proxy.flip_next("GET", 40, times=times, path=".idx")
            if fails:
                with pytest.raises(RemoteCorruptionError):
                    remote.get(locations[9])
                proxy.reset()
            assert remote.get(locations[9]) == datas[9]
            assert proxy.pending() == 0


# -- uploads: dropped connections, changed bodies --------------------------------------------------------------


def _whole(server: S3Server, bucket: str, locations: list[DataLocation], datas: list[bytes]) -> None:
    """One manifest per uploaded segment, open_remote verifies every blob, gc finds nothing to remove."""
    numbers = sorted({_number(location) for location in locations})
    assert _manifests(server, bucket) == [f"{PREFIX}/manifests/data_{n:08d}.json" for n in numbers]
    with FlatFileDb.open_remote(f"s3://{bucket}/{PREFIX}", **_options(server)) as remote:
        report = remote.verify()
        assert report.ok and report.blobs == len(datas), str(report)
        assert remote.get_many(locations) == datas


@pytest.mark.parametrize("what", [".dat", "/manifests/"], ids=["data", "manifest"])
def test_an_upload_whose_answer_was_lost_after_the_server_stored_it_ends_whole(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy], what: str
) -> None:
    """The connection drops after the server did the PUT (of the data object, or of the manifest: a
    conditional create the retry finds made): the upload is retried and ends whole, one manifest for the
    segment, never two uploads of it."""
    server, bucket, proxy = proxied
    with _open(tmp_path, server, bucket) as db:
        datas = _blobs(20)
        locations = db.put_many(datas)
        db.rotate()
        proxy.drop_next("PUT", forwarded=True, times=1, path=what)
        try:
            db.sync_tiering()
        except RemoteUnavailableError:
            db.sync_tiering()  # a create the client does not retry: the next pass adopts the manifest made
        assert proxy.pending() == 0
        assert db.tiering_status()["remote_only"] == [_number(locations[0])]
        assert db.get_many(locations) == datas
        assert db.gc_tiering() == {"manifests": 0, "objects": 0}
    _whole(server, bucket, locations, datas)


@pytest.mark.parametrize("what", [".dat", ".idx", ".sums"], ids=["data", "index", "sums"])
def test_an_upload_the_server_stored_changed_makes_no_manifest_and_keeps_the_local_file(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy], what: str
) -> None:
    """A byte of a PUT's body changed on the way: the server stores other bytes, and its ETag (the MD5 of
    what it stored) differs from the MD5 of what was sent. The pass (the tier's own thread, woken by the
    seal: it would take the one flipped request before a sync_tiering here, now and then) records
    RemoteCorruptionError, makes no manifest and removes no local file (retention 0); the next pass
    uploads correctly."""
    server, bucket, proxy = proxied
    with _open(tmp_path, server, bucket) as db:
        datas = _blobs(20)
        locations = db.put_many(datas)
        name = os.path.basename(locations[0].file_path)
        proxy.flip_request_next("PUT", 10, times=1, path=what)
        db.rotate()  # the thread uploads the segment once it is durable
        _first_error(db, "RemoteCorruptionError")
        proxy.fail_next("PUT", 503, times=10_000, path="/")  # the thread's next passes change nothing meanwhile
        assert _manifests(server, bucket) == []
        assert name in _local_segments(tmp_path)
        assert db.tiering_status()["pending"] == [_number(locations[0])]
        proxy.reset()
        db.sync_tiering()
        assert db.tiering_status()["remote_only"] == [_number(locations[0])]
        assert name not in _local_segments(tmp_path)
        assert db.get_many(locations) == datas
    _whole(server, bucket, locations, datas)


# -- unsafe servers --------------------------------------------------------------------------------------------


def test_a_server_that_overwrites_on_a_conditional_create_is_refused_at_open(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """The probe's second conditional create (If-None-Match: *) answered 200 instead of 412: the open
    raises UnsafeRemoteError naming conditional create; no claim is made."""
    server, bucket, proxy = proxied
    proxy.rewrite_status_next("PUT", 412, 200, times=2, path="/ffdb-probe/")
    with pytest.raises(UnsafeRemoteError, match="conditional create"):
        _open(tmp_path, server, bucket)
    assert proxy.pending() == 0
    store = server.store(bucket)
    assert [meta["path"] for batch in obstore.list(store) for meta in batch] == []


def test_a_server_that_ignores_range_is_refused_at_open(
    tmp_path: Path, proxied: tuple[S3Server, str, FaultProxy]
) -> None:
    """The probe's ranged GET answered 200 with the whole object: the open raises UnsafeRemoteError."""
    server, bucket, proxy = proxied
    proxy.whole_for_range_next("GET", times=1, path="/ffdb-probe/")
    opened: list[FlatFileDb] = []
    try:
        with pytest.raises(UnsafeRemoteError, match="(?i)range"):
            opened.append(_open(tmp_path, server, bucket))
    finally:
        for db in opened:
            db.close()
    assert proxy.pending() == 0


# -- the server killed mid-upload ------------------------------------------------------------------------------


def test_a_server_killed_mid_upload_and_restarted_loses_nothing(tmp_path: Path) -> None:
    """A SeaweedFS of its own, killed (SIGKILL) while sync_tiering sends a segment of several parts, then
    restarted on the same ports and data: the pass raises RemoteUnavailableError and keeps the local file;
    the next pass uploads everything, open_remote verifies every blob, gc leaves exactly the segments'
    objects, and every acknowledged blob reads back."""
    try:
        server, handle = start_seaweedfs(tmp_path / "weed")
    except ServerNotInstalledError as error:
        if os.environ.get("CI"):
            pytest.fail(f"{error} (CI must run the tiering tests against seaweedfs)")
        pytest.skip(str(error))
    try:
        server.create_bucket("killed")
        with FaultProxy(server.endpoint) as proxy:
            reached = server.behind(proxy.endpoint)
            # A 30 MiB answer through the proxy (which holds it whole) takes longer than the tests' 2 s timeout.
            slow = {"timeout": "30s", "connect_timeout": "2s"}
            with _open(tmp_path, reached, "killed", max_file_size=100 * 2**20, client_options=slow) as db:
                small = _blobs(10)
                datas = small + [os.urandom(30 * 2**20)]  # several 8 MiB parts
                locations = db.put_many(datas)
                db.rotate()
                proxy.set_latency(50)  # each part waits: the kill lands among them
                opening_puts = proxy.seen("PUT")
                failure: list[BaseException] = []
                uploader = threading.Thread(target=_sync_catching, args=(db, failure))
                uploader.start()
                deadline = time.monotonic() + 20
                while proxy.seen("PUT") < opening_puts + 2 and time.monotonic() < deadline:
                    time.sleep(0.005)  # the index and the first part are on their way
                handle.stop(remove_workdir=False)
                uploader.join(30)
                assert not uploader.is_alive()
                assert len(failure) == 1 and isinstance(failure[0], RemoteUnavailableError), failure
                name = os.path.basename(locations[0].file_path)
                assert name in _local_segments(tmp_path)
                assert db.tiering_status()["pending"] == [_number(locations[0])]
                handle = restart_seaweedfs(server, handle)
                proxy.set_latency(0)
                db.sync_tiering()
                assert db.tiering_status()["remote_only"] == [_number(locations[0])]
                assert db.gc_tiering() == {"manifests": 0, "objects": 0}
                assert db.get_many(locations[:-1]) == small  # the big one: by _whole, not through the proxy
            _whole(server, "killed", locations, datas)
            objects = sorted(meta["path"] for batch in obstore.list(server.store("killed")) for meta in batch)
            number = _number(locations[0])
            assert objects == sorted(
                [f"{PREFIX}/ffdb-tier.json", f"{PREFIX}/manifests/data_{number:08d}.json"]
                + [f"{PREFIX}/segments/data_{number:08d}.{suffix}" for suffix in ("dat", "idx", "sums")]
            )
    finally:
        handle.stop()


def _sync_catching(db: FlatFileDb, failure: list[BaseException]) -> None:
    try:
        db.sync_tiering()
    except BaseException as exc:  # pylint: disable=broad-exception-caught  # the test looks at it
        failure.append(exc)
