"""The tier's logic against obstore's in-process MemoryStore (same interface as the S3 client).

The same behaviour against real S3 servers (SeaweedFS, Ceph RGW) is in test_tier_servers.py;
here the bucket is in memory so that a test can look at and damage every object directly.
"""

from __future__ import annotations

import gc
import os
import pickle
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import MemoryStore

from conduit_flat_file_db import FlatFileDb, FlatFileDbNotFoundError, FlatFileDbReadOnlyError, Slice
from conduit_flat_file_db.errors import (
    RemoteCorruptionError,
    RemoteOnlySegmentError,
    TieringError,
    UnsafeRemoteError,
)
from conduit_flat_file_db.state import W_EPOCH
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.types import DataLocation

pytestmark = pytest.mark.tiering

URL = "s3://bucket/store"


def _blobs(count: int, seed: int = 0) -> list[bytes]:
    # Half random, half repetitive: compressed segments get real frames, raw ones real bytes.
    return [os.urandom(700) + bytes([(seed + i) % 251]) * (1300 + i) for i in range(count)]


def _open(path: Path, bucket: Any, compressed: bool = False, **options: Any) -> FlatFileDb:
    return FlatFileDb(
        path / "db",
        path / "db.lock",
        use_compression=compressed,
        max_file_size=40_000,
        tiering=Tiering(URL, object_store=bucket, **options),
    )


def _objects(bucket: Any) -> list[str]:
    return sorted(meta["path"] for batch in obstore.list(bucket) for meta in batch)


def _filled(
    path: Path, bucket: Any, compressed: bool, **options: Any
) -> tuple[FlatFileDb, list[DataLocation], list[bytes]]:
    db = _open(path, bucket, compressed, **options)
    datas = _blobs(60)
    locations = db.put_many(datas)
    db.rotate()
    db.sync_tiering()
    return db, locations, datas


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_remote_only_segments_read_the_same_bytes_by_every_read_path(tmp_path: Path, compressed: bool) -> None:
    """With local retention 0 every sealed data file leaves the disk once uploaded, and get, slices,
    get_many, iter_many, open_blob and the listings return what was put; get_view says why not."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, compressed, local_retention_bytes=0)
    status = db.tiering_status()
    sealed = db.segments()[:-1]
    assert status["pending"] == [] and status["uploaded"] == sealed and status["remote_only"] == sealed
    assert not [n for n in os.listdir(tmp_path / "db") if n.endswith((".dat", ".dat.zst")) and "0000000" in n][:-1]
    assert [db.get(loc) for loc in locations] == datas
    assert db.get(locations[3], Slice(100, 900)) == datas[3][100:900]
    assert db.get_many(locations[::-1]) == datas[::-1]
    assert db.get_many(locations[:5], [Slice(1, 2)] * 5) == [d[1:2] for d in datas[:5]]
    assert dict(db.iter_many(locations)) == dict(enumerate(datas))
    with db.open_blob(locations[7]) as blob:
        blob.seek(500)
        assert blob.read(100) == datas[7][500:600]
    with pytest.raises(RemoteOnlySegmentError):
        db.get_view(locations[0])
    assert list(db.iter_locations()) == locations
    stats = db.stats()
    assert all(s.remote for s in stats.segments[:-1]) and not stats.segments[-1].remote
    db.close()


def test_an_uploaded_segment_stays_readable_after_reopen_and_after_the_state_page_is_lost(tmp_path: Path) -> None:
    """A reopen, even one that checks every sealed segment as after a power loss, keeps the
    indexes of remote-only segments and reads them from the bucket."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False, local_retention_bytes=0)
    db.close()
    os.unlink(tmp_path / "db" / "ffdb.state")  # as after a power loss: the open checks every sealed segment
    db = _open(tmp_path, bucket, local_retention_bytes=0)
    assert [db.get(loc) for loc in locations] == datas
    assert sorted(n for n in os.listdir(tmp_path / "db") if n.endswith(".idx")) == [
        f"data_{n:08d}.idx" for n in db.segments()
    ], "recovery must not take the index of a remote-only segment for an orphan"
    db.close()


def test_local_retention_keeps_the_newest_segments_within_the_bound(tmp_path: Path) -> None:
    """local_retention_bytes removes the oldest uploaded data files until the rest fit."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False, local_retention_bytes=100_000)
    local = [n for n in os.listdir(tmp_path / "db") if n.endswith(".dat")]
    sizes = sum(os.stat(tmp_path / "db" / n).st_size for n in local)
    assert sizes <= 100_000
    remote_only = db.tiering_status()["remote_only"]
    assert remote_only and remote_only == db.segments()[: len(remote_only)], "oldest first"
    assert [db.get(loc) for loc in locations] == datas
    db.close()


def test_without_a_retention_bound_every_local_copy_stays(tmp_path: Path) -> None:
    """No bound: the bucket is a replica, nothing leaves the disk."""
    bucket = MemoryStore()
    db, _locations, _datas = _filled(tmp_path, bucket, False)
    status = db.tiering_status()
    assert status["uploaded"] and status["remote_only"] == []
    db.close()


def test_the_mutable_segment_and_segments_not_yet_durable_are_never_uploaded(tmp_path: Path) -> None:
    """Only sealed segments are uploaded."""
    bucket = MemoryStore()
    db = _open(tmp_path, bucket, local_retention_bytes=0)
    db.put(b"x" * 100)
    db.sync_tiering()
    assert not [o for o in _objects(bucket) if "/segments/" in o]
    assert db.tiering_status()["uploaded"] == []
    db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_a_changed_byte_in_the_bucket_is_never_returned(tmp_path: Path, compressed: bool) -> None:
    """A flipped byte in a data object fails its check: reads of it raise, the others return the blob."""
    bucket = MemoryStore()
    db, locations, _datas = _filled(tmp_path, bucket, compressed, local_retention_bytes=0)
    segment = os.path.basename(locations[0].file_path)
    name = f"store/segments/{segment}"
    stored = bytearray(obstore.get(bucket, name).bytes())
    stored[len(stored) // 3] ^= 0x40
    obstore.put(bucket, name, bytes(stored))
    failed = 0
    for location in locations:
        if os.path.basename(location.file_path) != segment:
            continue
        try:
            data = db.get(location)
        except RemoteCorruptionError:
            failed += 1
            continue
        assert data == _datas[locations.index(location)], "a read that succeeds returns the blob"
    assert failed >= 1
    db.close()


def test_delete_file_removes_the_remote_copy_manifest_first(tmp_path: Path) -> None:
    """delete_file removes the remote copy: the writer and a remote reader (after refresh) get
    FlatFileDbNotFoundError."""
    bucket = MemoryStore()
    db, locations, _datas = _filled(tmp_path, bucket, False, local_retention_bytes=0)
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    assert remote.get(locations[0]) == _datas[0]
    first = db.segments()[0]
    db.delete_file(locations[0].file_path)
    assert not [o for o in _objects(bucket) if f"data_{first:08d}" in o]
    with pytest.raises(FlatFileDbNotFoundError):
        db.get(locations[0])
    remote.refresh()
    with pytest.raises(FlatFileDbNotFoundError):
        remote.get(locations[0])
    assert first not in remote.segments()
    db.close()


def test_gc_removes_objects_without_a_manifest_and_manifests_of_deleted_segments(tmp_path: Path) -> None:
    """gc_tiering removes an upload's orphan objects and the manifest a cut-short delete left."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False)
    obstore.put(bucket, "store/segments/data_00000900.dat", b"left by an upload cut short")
    first = db.segments()[0]
    manifest = obstore.get(bucket, f"store/manifests/data_{first:08d}.json").bytes()
    db.delete_file(locations[0].file_path)
    obstore.put(bucket, f"store/manifests/data_{first:08d}.json", bytes(manifest))  # a delete cut short
    assert db.gc_tiering() == {"manifests": 1, "objects": 1}
    assert db.gc_tiering() == {"manifests": 0, "objects": 0}
    survivors = [loc for loc in locations if int(os.path.basename(loc.file_path)[5:13]) != first]
    assert db.get_many(survivors) == [datas[locations.index(loc)] for loc in survivors]
    db.close()


def test_an_upload_cut_before_its_manifest_is_redone_and_adopted_once(tmp_path: Path) -> None:
    """Objects without a manifest (a crash before it) are uploaded again, and each segment gets one manifest."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False)
    db.close()
    # What a crash between the last object and the manifest leaves: objects, no manifest, no marker.
    for name in _objects(bucket):
        if "/manifests/" in name:
            obstore.delete(bucket, name)
    for name in os.listdir(tmp_path / "db"):
        if name.endswith(".remote"):
            os.unlink(tmp_path / "db" / name)
    db = _open(tmp_path, bucket, local_retention_bytes=0)
    db.sync_tiering()
    manifests = [o for o in _objects(bucket) if "/manifests/" in o]
    assert len(manifests) == len(db.segments()) - 1
    assert db.tiering_status()["remote_only"] == db.segments()[:-1]
    assert [db.get(loc) for loc in locations] == datas
    db.close()


def test_a_second_store_on_the_same_prefix_is_refused(tmp_path: Path) -> None:
    """The prefix's claim names one store: another datadir may not upload there."""
    bucket = MemoryStore()
    db = _open(tmp_path / "a", bucket)
    db.close()
    with pytest.raises(UnsafeRemoteError, match="another store"):
        _open(tmp_path / "b", bucket)


def test_open_remote_serves_every_uploaded_blob_and_refuses_writes(tmp_path: Path) -> None:
    """open_remote reads, lists and verifies what was uploaded, sees later uploads after refresh(),
    and refuses writes with the read-only error."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, True)
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    assert remote.get_many(locations) == datas
    assert remote.get(locations[2], Slice(5, 50)) == datas[2][5:50]
    assert list(remote.iter_locations()) == [
        DataLocation(os.path.basename(loc[0]), loc[1], loc[2]) for loc in locations
    ]
    report = remote.verify()
    assert report.ok and report.blobs == len(datas), str(report)
    with pytest.raises(FlatFileDbReadOnlyError):
        remote.put(b"x")
    assert isinstance(FlatFileDbReadOnlyError("x"), __import__("io").UnsupportedOperation)
    more = db.put_many(_blobs(20, seed=9))
    db.rotate()
    db.sync_tiering()
    remote.refresh()
    assert remote.get(more[0]) == db.get(more[0])
    db.close()


def test_open_remote_of_an_empty_prefix_is_a_not_found_error() -> None:
    """No claim at the prefix: nothing was uploaded there."""
    with pytest.raises(FlatFileDbNotFoundError):
        FlatFileDb.open_remote(URL, object_store=MemoryStore())


def test_without_tiering_the_tier_calls_say_so(tmp_path: Path) -> None:
    """The tier's calls on a store opened without tiering raise TieringError."""
    db = FlatFileDb(tmp_path / "db")
    with pytest.raises(TieringError):
        db.tiering_status()
    db.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("http://bucket/x",), {}, ValueError),
        (("s3://",), {}, ValueError),
        (("s3://b/../x",), {}, ValueError),
        ((7,), {}, TypeError),
        ((URL,), {"local_retention_bytes": -1}, ValueError),
        ((URL,), {"local_retention_bytes": 1.5}, TypeError),
        ((URL,), {"local_retention_age": float("nan")}, ValueError),
        ((URL,), {"remote_cache_bytes": True}, TypeError),
        ((URL,), {"upload_bytes_per_second": 0}, ValueError),
        ((URL,), {"upload_bytes_per_second": -5}, ValueError),
        ((URL,), {"upload_bytes_per_second": 2.5e6}, TypeError),
        ((URL,), {"upload_bytes_per_second": "fast"}, TypeError),
    ],
)
def test_bad_tiering_arguments_get_typed_errors(args: tuple[Any, ...], kwargs: dict[str, Any], error: type) -> None:
    """Bad URLs and bounds are refused with TypeError or ValueError."""
    with pytest.raises(error):
        Tiering(*args, **kwargs)


def test_tiering_must_be_a_tiering(tmp_path: Path) -> None:
    """Anything but a Tiering is a TypeError, before the datadir is created."""
    with pytest.raises(TypeError, match="Tiering"):
        FlatFileDb(tmp_path / "db", tiering="s3://bucket/x")  # type: ignore[arg-type]
    assert not (tmp_path / "db").exists()


def test_a_tiering_pickles_by_its_url_and_options() -> None:
    """A Tiering pickles as its URL and options; one holding a store instance cannot."""
    tiering = Tiering(URL, local_retention_bytes=5, upload_bytes_per_second=10**6, endpoint="http://127.0.0.1:1")
    copy = pickle.loads(pickle.dumps(tiering))
    assert (copy.url, copy.local_retention_bytes, copy.client_options) == (URL, 5, {"endpoint": "http://127.0.0.1:1"})
    assert copy.upload_bytes_per_second == 10**6
    with pytest.raises(TypeError):
        pickle.dumps(Tiering(URL, object_store=MemoryStore()))


def test_a_remote_only_segment_opened_without_tiering_says_where_it_is(tmp_path: Path) -> None:
    """Without tiering, a read of a segment that is in the bucket only names the cause."""
    bucket = MemoryStore()
    db, locations, _datas = _filled(tmp_path, bucket, False, local_retention_bytes=0)
    db.close()
    with FlatFileDb(tmp_path / "db", tmp_path / "db.lock") as plain:
        with pytest.raises(FlatFileDbNotFoundError, match="object store only"):
            plain.get(locations[0])
        assert plain.verify().ok


def test_an_unreachable_server_at_open_does_not_stop_local_work(tmp_path: Path) -> None:
    """The open's checks give up after seconds on a server that does not answer: the store opens,
    puts and gets work, and tiering_status says what is wrong; nothing local is removed."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket is closed
    tiering = Tiering(
        "s3://bucket/x",
        local_retention_bytes=0,
        endpoint=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="s",
        region="us-east-1",
        client_options={"connect_timeout": "1s"},
    )
    started = time.monotonic()
    with FlatFileDb(tmp_path / "db", tmp_path / "db.lock", max_file_size=10_000, tiering=tiering) as db:
        assert time.monotonic() - started < 30
        locations = db.put_many([b"y" * 4000] * 10)
        db.rotate()
        assert db.get(locations[0]) == b"y" * 4000
        status = db.tiering_status()
        assert status["last_error"] and "RemoteUnavailableError" in status["last_error"]
        assert status["uploaded"] == [] and status["remote_only"] == []
        assert len(status["pending"]) == len(db.segments()) - 1


def test_enforce_retention_and_finish_compaction_delete_the_remote_copies(tmp_path: Path) -> None:
    """Retention by age deletes remote-only segments in the bucket too; so does a compaction's
    second phase; what was copied stays readable at its new location."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False, local_retention_bytes=0)
    sealed = db.segments()[:-1]
    compaction = db.compact(sealed[-2:], lambda location: location == locations[-1])
    assert db.finish_compaction(compaction) == sealed[-2:]
    assert db.get(compaction.mapping[locations[-1]]) == datas[-1]
    deleted = db.enforce_retention(max_age=0, keep_min=1)
    assert deleted == sealed[:-2]
    remaining = {int(o.rsplit("_", 1)[1][:8]) for o in _objects(bucket) if "/manifests/" in o}
    assert not remaining & set(sealed), "the bucket still holds deleted segments"
    db.close()


def test_open_remote_notices_deletes_by_itself_within_refresh_seconds(tmp_path: Path) -> None:
    """With refresh_seconds=0 every read lists the bucket anew: a deleted segment is gone at once."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False)
    remote = FlatFileDb.open_remote(URL, object_store=bucket, refresh_seconds=0)
    assert remote.get(locations[0]) == datas[0]
    db.delete_file(locations[0].file_path)
    remote.close()  # forget the open reader: the listing decides
    with pytest.raises(FlatFileDbNotFoundError):
        remote.get(locations[0])
    db.close()


def test_a_read_only_local_open_reads_remote_only_segments(tmp_path: Path) -> None:
    """readonly=True with tiering reads from the bucket and writes nothing anywhere."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, True, local_retention_bytes=0)
    db.close()
    before = _objects(bucket)
    reader = FlatFileDb(tmp_path / "db", tmp_path / "db.lock", readonly=True, tiering=Tiering(URL, object_store=bucket))
    assert reader.get_many(locations) == datas
    with pytest.raises(FlatFileDbReadOnlyError):
        reader.sync_tiering()
    reader.close()
    assert _objects(bucket) == before


def test_the_tier_and_the_store_list_the_datadir_at_once_without_losing_entries(tmp_path: Path) -> None:
    """The tier's thread lists the datadir while callers list it too: each listing is whole (a
    descriptor shared by dup would share the read position, and both would see parts)."""
    bucket = MemoryStore()
    db, _locations, _datas = _filled(tmp_path, bucket, False)
    want = db.segments()
    tier = db._tier  # pylint: disable=protected-access  # its listing, in a thread of its own
    stop = threading.Event()
    short: list[int] = []

    def list_in_the_tier() -> None:
        while not stop.is_set():
            if len(tier._listing()[0]) < len(want):  # pylint: disable=protected-access
                short.append(1)

    thread = threading.Thread(target=list_in_the_tier)
    thread.start()
    try:
        for _ in range(3000):
            assert db.segments() == want
    finally:
        stop.set()
        thread.join()
    assert not short
    db.close()


def test_local_retention_tells_every_reader_to_let_go_of_removed_files(tmp_path: Path) -> None:
    """Removing data files bumps the state page's epoch: readers of every process drop the
    descriptors that would keep the removed files' blocks on the disk."""
    bucket = MemoryStore()
    db, locations, datas = _filled(tmp_path, bucket, False)
    assert db.get(locations[0]) == datas[0]  # a local reader now holds segment 0 open
    before = db._words[W_EPOCH]  # pylint: disable=protected-access
    db.close()
    db = _open(tmp_path, bucket, local_retention_bytes=0)
    db.sync_tiering()
    assert db._words[W_EPOCH] > before  # pylint: disable=protected-access
    assert db.get(locations[0]) == datas[0]
    db.close()


def test_gc_takes_turns_with_the_tiers_own_thread(tmp_path: Path) -> None:
    """gc_tiering right after an open, while the open's own upload pass may be running: the two
    take turns (an inter-process lock alone does not exclude two threads of one process)."""
    bucket = MemoryStore()
    db, _locations, _datas = _filled(tmp_path, bucket, False)
    db.close()
    for _ in range(30):
        with _open(tmp_path, bucket) as again:
            assert again.gc_tiering() == {"manifests": 0, "objects": 0}


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "readonly"])
def test_a_tiered_store_dropped_unclosed_is_finalized_and_its_thread_ends(tmp_path: Path, readonly: bool) -> None:
    """A tiered store dropped without close() is collected like any other: its tier (and the
    tier's thread) must not keep it alive, or every such store would keep its descriptors, lock
    and thread for the life of the process."""
    bucket = MemoryStore()
    db, _locations, _datas = _filled(tmp_path, bucket, False)
    if readonly:
        db.close()
        db = FlatFileDb(tmp_path / "db", readonly=True, tiering=Tiering(URL, object_store=bucket))
    tier = db._tier  # pylint: disable=protected-access  # the thread that must end with the store
    assert tier is not None
    thread = tier._thread  # pylint: disable=protected-access
    dropped = weakref.ref(db)
    del db
    gc.collect()
    assert dropped() is None, "the tier keeps the dropped store alive"
    assert tier.stopped, "the dropped store's tier was not closed"
    if thread is not None:
        thread.join(10)
        assert not thread.is_alive(), "the tier's thread outlived its store"
