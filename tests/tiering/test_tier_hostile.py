"""The tier against hostile or damaged bucket content, forged locations, misused arguments and
two actors at once, all against obstore's in-process MemoryStore.

What every test here holds the tier to: a remote read returns the blob's bytes or raises a typed
error (a subclass of FlatFileDbError), never another blob's bytes, never an untyped exception,
never a hang; and nothing the bucket holds ever costs the local store its data.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import obstore
import pytest
from obstore.store import MemoryStore

from conduit_flat_file_db import FlatFileDb, FlatFileDbNotFoundError, Slice
from conduit_flat_file_db.cli import main
from conduit_flat_file_db.cli.base import EXIT_ERROR
from conduit_flat_file_db.errors import (
    FlatFileDbError,
    IndexVersionError,
    InvalidLocationError,
    RemoteCorruptionError,
    RemoteTimeoutError,
    TieringError,
    TieringOptionError,
    UnsafeRemoteError,
)
from conduit_flat_file_db.index import HEADER_BYTES, INDEX_VERSION_LOG, encode_blob, encode_header
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.types import DataLocation

from .s3servers import S3Server
from .test_tier_logic import _blobs

pytestmark = pytest.mark.tiering

URL = "s3://bucket/store"


def _open(path: Path, bucket: Any, compressed: bool = False, **options: Any) -> FlatFileDb:
    return FlatFileDb(
        path,
        use_compression=compressed,
        max_file_size=40_000,
        tiering=Tiering(URL, object_store=bucket, **options),
    )


def _filled(
    path: Path, compressed: bool, **options: Any
) -> tuple[FlatFileDb, MemoryStore, list[DataLocation], list[bytes]]:
    """A store whose sealed segments are uploaded (and, by default, only in the bucket)."""
    bucket = MemoryStore()
    options.setdefault("local_retention_bytes", 0)
    db = _open(path / "db", bucket, compressed, **options)
    datas = _blobs(60)
    locations = db.put_many(datas)
    db.rotate()
    db.sync_tiering()
    return db, bucket, locations, datas


def _get(bucket: Any, name: str) -> bytes:
    return bytes(obstore.get(bucket, name).bytes())


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """("ok", call(*args)) or ("error", the exception's type); an untyped exception fails the test."""
    try:
        return "ok", call(*args)
    except (FlatFileDbError, TypeError) as exc:  # TypeError: a location of the wrong types, as the local engine
        return "error", type(exc)


# -- hostile manifests -------------------------------------------------------------------------


def _forge(field: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda manifest: json.dumps({**manifest, field: value}).encode()


HOSTILE_MANIFESTS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "nested-too-deep": lambda _m: b"[" * 100_000,
    "format-true": _forge("format", True),
    "data-size-past-64-bits": _forge("data_size", 2**64 + 7),
    "table-bytes-past-the-data": lambda m: json.dumps({**m, "table_bytes": m["data_size"] + 10}).encode(),
    "limit-past-the-data": lambda m: json.dumps({**m, "limit": m["limit"] + 100_000}).encode(),
    "compressed-flipped": lambda m: json.dumps({**m, "compressed": not m["compressed"]}).encode(),
    "compressed-a-string": _forge("compressed", "no"),
    "checksum-an-int": _forge("data_xxh3", 5),
    "sealed-ns-a-string": _forge("sealed_ns", "yesterday"),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
@pytest.mark.parametrize("forgery", sorted(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_a_remote_corruption_error_for_every_read(
    tmp_path: Path, compressed: bool, forgery: str
) -> None:
    """A manifest whose fields do not fit together (or do not parse) is refused with
    RemoteCorruptionError by get and get_many, and verify() reports it: never an untyped error
    (RecursionError, an overflow in the client), never "unavailable", never bytes read past the
    data object or past the frames."""
    db, bucket, locations, _datas = _filled(tmp_path, compressed)
    name = f"store/manifests/data_{db.segments()[0]:08d}.json"
    obstore.put(bucket, name, HOSTILE_MANIFESTS[forgery](json.loads(_get(bucket, name))))
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    with pytest.raises(RemoteCorruptionError):
        remote.get(locations[0])
    with pytest.raises(RemoteCorruptionError):
        remote.get_many(locations[:3])
    report = remote.verify()
    assert not report.ok
    db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_a_manifest_copied_from_another_segment_never_serves_that_segments_bytes(
    tmp_path: Path, compressed: bool
) -> None:
    """Segment 1's manifest stored under segment 0's name: a read of segment 0 raises
    RemoteCorruptionError, it never returns segment 1's bytes at the same offsets."""
    db, bucket, locations, _datas = _filled(tmp_path, compressed)
    first, second = db.segments()[:2]
    obstore.put(
        bucket, f"store/manifests/data_{first:08d}.json", _get(bucket, f"store/manifests/data_{second:08d}.json")
    )
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    in_first = [loc for loc in locations if os.path.basename(loc.file_path).startswith(f"data_{first:08d}")]
    with pytest.raises(RemoteCorruptionError, match="names segment"):
        remote.get(in_first[0])
    db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_a_data_object_shorter_than_its_manifest_is_corruption_not_a_sick_server(
    tmp_path: Path, compressed: bool
) -> None:
    """A data object cut short in the bucket makes reads past its end RemoteCorruptionError
    (the object is not what its manifest says), not RemoteUnavailableError (retrying cannot help),
    on the writer and on open_remote alike."""
    db, bucket, locations, datas = _filled(tmp_path, compressed)
    last = [i for i, loc in enumerate(locations) if loc.file_path == locations[0].file_path][-1]
    name = f"store/segments/{os.path.basename(locations[0].file_path)}"
    obstore.put(bucket, name, _get(bucket, name)[:100])
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    for reader in (db, remote):
        with pytest.raises(RemoteCorruptionError):
            reader.get(locations[last])
        with pytest.raises(RemoteCorruptionError):
            reader.get_many(locations[last - 1 : last + 1])
    assert db.get(locations[-1]) == datas[-1], "the mutable segment is untouched"
    db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_damaged_index_sums_and_seek_table_objects_get_typed_errors(tmp_path: Path, compressed: bool) -> None:
    """An index, sums object or seek table that matches a forged manifest but is garbage, of the
    wrong length, or claims a hundred million frames: a typed error, without allocating what it
    claims."""
    import xxhash  # pylint: disable=import-outside-toplevel

    db, bucket, locations, _datas = _filled(tmp_path, compressed)
    number = db.segments()[0]
    manifest_name = f"store/manifests/data_{number:08d}.json"
    manifest = json.loads(_get(bucket, manifest_name))
    data_name = f"store/segments/{os.path.basename(locations[0].file_path)}"

    def hexsum(raw: bytes) -> str:
        return f"{xxhash.xxh3_64_intdigest(raw):016x}"

    garbage = os.urandom(300)
    obstore.put(bucket, f"store/segments/data_{number:08d}.idx", garbage)
    damaged = {**manifest, "index_size": len(garbage), "index_xxh3": hexsum(garbage)}
    if compressed:
        data = _get(bucket, data_name)
        table = bytearray(data[-manifest["table_bytes"] :])
        table[-9:-5] = (10**8).to_bytes(4, "little")  # the footer's frame count
        obstore.put(bucket, data_name, data[: -len(table)] + bytes(table))
        damaged["table_xxh3"] = hexsum(bytes(table))
    else:
        sums = _get(bucket, f"store/segments/data_{number:08d}.sums")[:-8]  # one block's sum short
        obstore.put(bucket, f"store/segments/data_{number:08d}.sums", sums)
        damaged["sums_xxh3"] = hexsum(sums)
    obstore.put(bucket, manifest_name, json.dumps(damaged).encode())
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    assert _outcome(remote.get, locations[0])[0] == "error"
    assert _outcome(remote.get, locations[0], Slice(1, 10))[0] == "error"
    assert _outcome(lambda: list(remote.iter_locations()))[0] == "error"
    assert not remote.verify().ok
    db.close()


# -- forged locations ------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_forged_locations_read_the_same_bytes_or_errors_remote_as_local(tmp_path: Path, compressed: bool) -> None:
    """Offsets inside a blob, straddling two, past the end, inverted, huge, in a segment that does
    not exist, and slices out of range: a remote-only segment (on the writer and through
    open_remote) gives exactly the bytes the local copy gives, or the same error type."""
    db, bucket, locations, _datas = _filled(tmp_path, compressed, local_retention_bytes=None)
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    path = locations[0].file_path
    first, second = locations[0], locations[1]
    end = max(loc.end_offset for loc in locations if loc.file_path == path)
    forged: list[tuple[Any, Any, Any]] = [
        (path, first.start_offset + 5, first.end_offset - 5),
        (path, first.start_offset + 10, second.end_offset - 10),
        (path, end - 5, end),
        (path, end - 5, end + 5),
        (path, end, end),
        (path, 10, 5),
        (path, -1, 5),
        (path, 0, 2**63),
        (path, 2**64, 2**64 + 1),
        (path, 1.5, 10),
        (path.replace(os.path.basename(path), "data_00000777.dat"), 0, 10),
    ]
    slices = [None, Slice(1, 2), Slice(0, 10**6), Slice(5, 3), Slice(2**63, 2**63 + 1)]
    local = [[_outcome(db.get, DataLocation(*loc), part) for part in slices] for loc in forged]
    db.close()
    db = _open(tmp_path / "db", bucket, compressed, local_retention_bytes=0)
    db.sync_tiering()
    assert db.tiering_status()["remote_only"], "the segment is read from the bucket now"
    for loc, expected in zip(forged, local):
        for part, want in zip(slices, expected):
            location = DataLocation(*loc)
            assert _outcome(db.get, location, part) == want, (loc, part)
            # open_remote checks the whole location before its slice: stricter, never looser (the
            # local engine checks only the sliced range, so a slice of (-1, 5) reads byte 0).
            valid = isinstance(loc[1], int) and 0 <= loc[1] <= loc[2] <= end
            allowed = [want] if valid else [want, ("error", InvalidLocationError)]
            assert _outcome(remote.get, location, part) in allowed, (loc, part)
            many = _outcome(remote.get_many, [location], [part])
            assert many in [w if w[0] == "error" else ("ok", [w[1]]) for w in allowed], (loc, part)
    db.close()


# -- the writer never adopts what is not its own ----------------------------------------------------


def test_a_copy_of_the_datadir_never_adopts_the_other_copys_segments(tmp_path: Path) -> None:
    """Two copies of one datadir (a restored backup, a copy for tests) tier to one prefix: the
    second finds the first's manifests under its own segment numbers and its own store id. It
    refuses them (UnsafeRemoteError) and keeps its local data files: adopting them would let local
    retention delete its segments and leave only the other copy's bytes in the bucket."""
    bucket = MemoryStore()
    _open(tmp_path / "a", bucket).close()  # the claim and the local .tier file, copied below
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = _open(tmp_path / "a", bucket)
    first.put_many(_blobs(30, seed=1))
    first.rotate()
    first.sync_tiering()
    first.close()
    second = _open(tmp_path / "b", bucket, local_retention_bytes=0)
    datas = _blobs(30, seed=2)
    locations = second.put_many(datas)
    second.rotate()
    with pytest.raises(UnsafeRemoteError, match="other bytes"):
        second.sync_tiering()
    assert second.tiering_status()["remote_only"] == []
    assert [second.get(loc) for loc in locations] == datas
    second.close()


# -- misused arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"no_such_option": 1},
        {"client_options": 5},
        {"client_options": {"no_such_key": 1}},
        {"endpoint": 5},
        {"endpoint": "::::"},
        {"endpoint": "http://127.0.0.1:99999"},
    ],
    ids=[
        "unknown-option",
        "client-options-not-a-dict",
        "unknown-client-option",
        "endpoint-int",
        "endpoint-garbage",
        "endpoint-bad-port",
    ],
)
def test_options_the_client_refuses_are_a_tiering_option_error_at_construction(options: dict[str, Any]) -> None:
    """An option the S3 client would refuse (or panic on, at the first request) is refused by
    Tiering(...) itself, before any store is opened: TieringOptionError, a ValueError too."""
    with pytest.raises(TieringOptionError) as caught:
        Tiering(URL, **options)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TieringError)


def test_an_object_store_that_is_not_a_store_is_an_option_error(tmp_path: Path) -> None:
    """object_store= given something else: TieringOptionError at open, not a server "unavailable"
    that the writer's thread would retry forever."""
    with pytest.raises(TieringOptionError):
        FlatFileDb.open_remote(URL, object_store="not a store")
    with pytest.raises(TieringOptionError):
        FlatFileDb(tmp_path / "db", tiering=Tiering(URL, object_store=5))


@pytest.mark.parametrize("url", ["s3://bucket/a\x00b", "s3://bucket/a\nb", "s3://buck\x00et/a", "s3://bucket/\x7f"])
def test_a_url_with_a_control_character_is_refused(url: str) -> None:
    """No object key can hold a control character: ValueError at Tiering(...) and open_remote."""
    with pytest.raises(ValueError, match="control character"):
        Tiering(url)
    with pytest.raises(ValueError, match="control character"):
        FlatFileDb.open_remote(url, object_store=MemoryStore())


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("x", TypeError), (True, TypeError)],
)
def test_sync_tiering_takes_only_a_finite_timeout(tmp_path: Path, timeout: Any, error: type) -> None:
    """sync_tiering(timeout=) is None or a finite number >= 0: NaN would never expire."""
    db = _open(tmp_path / "db", MemoryStore())
    with pytest.raises(error, match="timeout"):
        db.sync_tiering(timeout=timeout)
    db.sync_tiering(timeout=30)
    db.close()


def test_a_claim_or_tier_file_nested_too_deep_is_unsafe_not_a_recursion_error(tmp_path: Path) -> None:
    """A claim in the bucket, or the datadir's ffdb.tier, that is JSON nested past the parser's
    limit: UnsafeRemoteError at open, like any other claim this release does not read."""
    bucket = MemoryStore()
    obstore.put(bucket, "store/ffdb-tier.json", b"[" * 100_000)
    with pytest.raises(UnsafeRemoteError):
        _open(tmp_path / "a", bucket)
    _open(tmp_path / "b", MemoryStore()).close()
    (tmp_path / "b" / "ffdb.tier").write_bytes(b"{" * 100_000)
    with pytest.raises(UnsafeRemoteError):
        _open(tmp_path / "b", MemoryStore())


# -- two actors at once --------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_open_remote_reading_while_the_writer_deletes_gets_the_blob_or_not_found(
    tmp_path: Path, compressed: bool
) -> None:
    """Readers of open_remote race the writer's delete_file of every sealed segment: each read
    returns the blob or raises FlatFileDbNotFoundError, nothing else."""
    db, bucket, locations, datas = _filled(tmp_path, compressed)
    remote = FlatFileDb.open_remote(URL, object_store=bucket, refresh_seconds=0)
    stop = threading.Event()
    wrong: list[Any] = []

    def read() -> None:
        turn = 0
        while not stop.is_set():
            at = turn % len(locations)
            turn += 1
            try:
                got = remote.get(locations[at]) if turn % 2 else remote.get_many(locations[at : at + 4])[0]
            except FlatFileDbNotFoundError:
                continue
            except Exception as exc:  # pylint: disable=broad-exception-caught  # collected, then asserted
                wrong.append(exc)
                continue
            if got != datas[at]:
                wrong.append(at)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for path in sorted({loc.file_path for loc in locations})[:-1]:
        time.sleep(0.02)
        db.delete_file(path)
    time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not wrong
    db.close()


def test_close_during_sync_tiering_in_another_thread_is_an_error_not_a_success(tmp_path: Path) -> None:
    """close() cuts a sync_tiering() that another thread runs: sync_tiering raises a TieringError
    instead of returning as if every segment were uploaded, and the next open uploads the rest."""
    bucket = MemoryStore()
    db = _open(tmp_path / "db", bucket, upload_bytes_per_second=200_000)
    datas = _blobs(100)
    locations = db.put_many(datas)
    db.rotate()
    outcome: list[Any] = []

    def sync() -> None:
        try:
            db.sync_tiering()
            outcome.append("returned")
        except TieringError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=sync)
    thread.start()
    time.sleep(0.3)
    db.close()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], TieringError), outcome
    db = _open(tmp_path / "db", bucket, local_retention_bytes=0)
    assert db.tiering_status()["pending"], "the cut pass left segments to upload"
    db.sync_tiering()
    assert db.tiering_status()["pending"] == []
    assert db.get_many(locations) == datas
    db.close()


def test_a_location_past_a_remote_segments_end_is_an_invalid_location(tmp_path: Path) -> None:
    """Pinned: offsets past a remote-only segment's end are InvalidLocationError on both paths."""
    db, bucket, locations, _datas = _filled(tmp_path, False)
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    forged = DataLocation(locations[0].file_path, 0, 2**63)
    for reader in (db, remote):
        with pytest.raises(InvalidLocationError):
            reader.get(forged)
    db.close()


def test_deleting_a_segment_never_uploaded_here_leaves_the_buckets_copy_alone(tmp_path: Path) -> None:
    """A copy of a datadir deletes one of its own segments that it never uploaded (its upload was
    refused: the bucket's segment of that number is the other copy's): the other copy's remote-only
    segment stays readable; only what a datadir uploaded itself is deleted in the bucket."""
    bucket = MemoryStore()
    _open(tmp_path / "a", bucket).close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = _open(tmp_path / "a", bucket, local_retention_bytes=0)
    datas = _blobs(30, seed=1)
    locations = first.put_many(datas)
    first.rotate()
    first.sync_tiering()
    assert first.tiering_status()["remote_only"] == first.segments()[:-1]
    second = _open(tmp_path / "b", bucket)
    mine = second.put_many(_blobs(30, seed=2))
    second.rotate()
    second.delete_file(mine[0].file_path)
    second.close()
    assert first.get_many(locations) == datas
    first.close()


def test_the_command_line_with_a_malformed_endpoint_exits_with_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ffdb --remote URL ls`` with AWS_ENDPOINT_URL that is not a URL: exit code 2 and one line
    saying so (the S3 client panicked on its first request), no request sent."""
    for name, value in {
        "AWS_ENDPOINT_URL": "::::",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["--remote", "s3://bucket/store", "ls"]) == EXIT_ERROR
    assert "endpoint '::::' is not a URL" in capsys.readouterr().err


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_a_data_object_replaced_between_two_reads_never_serves_the_new_bytes(tmp_path: Path, compressed: bool) -> None:
    """Pinned: once a reader has fetched a segment's sums or seek table, the data object replaced
    by another segment's (same length, cut or padded) makes reads of what it had not fetched yet
    raise RemoteCorruptionError; what it fetched and checked before is still served."""
    db, bucket, locations, datas = _filled(tmp_path, compressed)
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    assert remote.get(locations[1], Slice(3, 50)) == datas[1][3:50]
    first, second = db.segments()[:2]
    suffix = ".dat.zst" if compressed else ".dat"
    name = f"store/segments/data_{first:08d}{suffix}"
    size = len(_get(bucket, name))
    other = _get(bucket, f"store/segments/data_{second:08d}{suffix}")
    obstore.put(bucket, name, (other + bytes(size))[:size])
    # Past the first 32 KiB: neither a block nor a frame of them was fetched (and cached) before.
    far = [loc for loc in locations if loc.file_path == locations[0].file_path and loc.start_offset > 2**15]
    assert far
    for reader in (db, remote):
        for location in far:
            with pytest.raises(RemoteCorruptionError):
                reader.get(location)
    assert remote.get(locations[1], Slice(3, 50)) == datas[1][3:50], "checked bytes in its cache stay good"
    db.close()


def _replace_index(bucket: Any, number: int, raw: bytes) -> None:
    """Put ``raw`` as segment ``number``'s index, with a manifest that vouches for it."""
    import xxhash  # pylint: disable=import-outside-toplevel

    obstore.put(bucket, f"store/segments/data_{number:08d}.idx", raw)
    name = f"store/manifests/data_{number:08d}.json"
    manifest = json.loads(_get(bucket, name))
    manifest.update(index_size=len(raw), index_xxh3=f"{xxhash.xxh3_64_intdigest(raw):016x}")
    obstore.put(bucket, name, json.dumps(manifest).encode())


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_verify_reports_an_indexed_blob_past_the_segments_end_and_checks_the_rest(
    tmp_path: Path, compressed: bool
) -> None:
    """An index (vouched for by its manifest) with a blob past the segment's end: open_remote's
    verify() reports it and checks every other blob; it never raises (it raised IndexError for a
    compressed segment)."""
    db, bucket, locations, _datas = _filled(tmp_path, compressed)
    number = db.segments()[0]
    index = _get(bucket, f"store/segments/data_{number:08d}.idx")
    _replace_index(bucket, number, index + encode_blob(2**40, 100, 0))
    report = FlatFileDb.open_remote(URL, object_store=bucket).verify()
    assert [problem.offset for problem in report.problems] == [2**40]
    assert report.blobs == len(locations), "every blob put (all in sealed segments) was checked"
    db.close()


def test_an_index_object_of_another_segment_is_refused(tmp_path: Path) -> None:
    """An index whose header names another segment (vouched for by a forged manifest) is
    RemoteCorruptionError for every reader of the segment, and verify() reports it."""
    db, bucket, locations, _datas = _filled(tmp_path, False)
    number = db.segments()[0]
    index = _get(bucket, f"store/segments/data_{number:08d}.idx")
    _replace_index(bucket, number, encode_header(number + 5, 0, 0) + index[HEADER_BYTES:])
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    with pytest.raises(RemoteCorruptionError, match="index of segment"):
        remote.get(locations[0])
    with pytest.raises(RemoteCorruptionError):
        list(remote.iter_locations())
    assert not remote.verify().ok
    db.close()


def test_sync_tiering_keeps_its_timeout_while_the_tiers_own_thread_uploads(tmp_path: Path) -> None:
    """sync_tiering(timeout=0.5) while the tier's background thread is in a long (paced) pass:
    RemoteTimeoutError after about half a second, not once the thread's pass ends (it waited for
    the whole pass, many times the timeout)."""
    bucket = MemoryStore()
    db = _open(tmp_path / "db", bucket, upload_bytes_per_second=20_000)
    db.put_many(_blobs(40))
    db.rotate()
    db.sync()  # durable: the thread's next pass uploads them, 80 kB at 20 kB/s
    deadline = time.monotonic() + 10
    while not any(meta["path"].startswith("store/segments/") for batch in obstore.list(bucket) for meta in batch):
        assert time.monotonic() < deadline, "the tier's thread never began uploading"
        time.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(RemoteTimeoutError):
        db.sync_tiering(timeout=0.5)
    assert time.monotonic() - started < 2.5
    db.close()


def test_a_manifest_of_gigabytes_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A manifest object far larger than any manifest: RemoteCorruptionError from its size, its
    body never read into memory; the other segments stay readable."""
    db, bucket, locations, datas = _filled(tmp_path, False)
    first = db.segments()[0]
    obstore.put(bucket, f"store/manifests/data_{first:08d}.json", b" " * (2**20 + 1))
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    with pytest.raises(RemoteCorruptionError, match="not a manifest"):
        remote.get(locations[0])
    assert remote.bucket.stats.snapshot().get("get_manifest", {"bytes": 0})["bytes"] < 2**20, "its body was read"
    assert remote.get(locations[-1]) == datas[-1]
    db.close()


def test_manifest_names_that_no_segment_has_are_not_listed(tmp_path: Path) -> None:
    """Names under manifests/ with digits of another script or a number past the largest segment
    number are no segment's: open_remote does not list them, and iter_locations still works."""
    db, bucket, locations, _datas = _filled(tmp_path, False)
    for name in ("data_\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0661.json", "data_9999999999.json"):
        obstore.put(bucket, f"store/manifests/{name}", b"{}")
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    assert remote.segments() == db.segments()[:-1]
    assert len(list(remote.iter_locations())) == len(locations)
    db.close()


def test_a_damaged_local_marker_neither_hides_a_segment_nor_blocks_its_delete(tmp_path: Path) -> None:
    """A remote-only segment whose .remote marker is damaged on disk: reads, stats() and
    enforce_retention take the bucket's manifest when it describes the local index; and with no
    manifest in the bucket either, delete_file still deletes the segment (it raised
    RemoteCorruptionError for ever, and so did every enforce_retention)."""
    db, bucket, locations, datas = _filled(tmp_path, False)
    first, second = db.segments()[:2]
    db.close()
    for number in (first, second):
        (tmp_path / "db" / f"data_{number:08d}.remote").write_bytes(b"\x00garbage")
    obstore.delete(bucket, f"store/manifests/data_{second:08d}.json")
    db = _open(tmp_path / "db", bucket, local_retention_bytes=0)
    assert db.get(locations[0]) == datas[0]
    in_second = [loc for loc in locations if loc.file_path.endswith(f"data_{second:08d}.dat")]
    with pytest.raises(RemoteCorruptionError):
        db.get(in_second[0])
    db.delete_file(in_second[0].file_path)
    assert second not in db.segments()
    assert not [meta for batch in obstore.list(bucket) for meta in batch if f"data_{second:08d}" in meta["path"]]
    assert db.stats().segments[0].remote
    assert first in db.enforce_retention(max_bytes=1)
    db.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_an_index_of_a_newer_version_and_a_longer_data_object(tmp_path: Path, compressed: bool) -> None:
    """Pinned: an index object of a newer format version (vouched for by its manifest) is
    IndexVersionError wherever the index is needed, never taken for garbage; a data object longer
    than its manifest says is read as the manifest says (its tail is never read)."""
    db, bucket, locations, datas = _filled(tmp_path, compressed)
    first, second = db.segments()[:2]
    index = _get(bucket, f"store/segments/data_{first:08d}.idx")
    kind = 1 if compressed else 0
    _replace_index(bucket, first, encode_header(first, kind, 0, version=INDEX_VERSION_LOG + 1) + index[HEADER_BYTES:])
    suffix = ".dat.zst" if compressed else ".dat"
    longer = f"store/segments/data_{second:08d}{suffix}"
    obstore.put(bucket, longer, _get(bucket, longer) + os.urandom(5000))
    remote = FlatFileDb.open_remote(URL, object_store=bucket)
    with pytest.raises(IndexVersionError):
        list(remote.iter_locations())
    assert not remote.verify().ok
    in_second = [i for i, loc in enumerate(locations) if loc.file_path.endswith(f"data_{second:08d}{suffix}")]
    assert remote.get_many([locations[i] for i in in_second]) == [datas[i] for i in in_second]
    assert [db.get(locations[i]) for i in in_second] == [datas[i] for i in in_second]
    db.close()


def _upload_from_another_process(root: str, seed: int, out: Any) -> None:
    """One of two processes of one datadir: puts, seals and syncs five times (spawned)."""
    from obstore.store import LocalStore  # pylint: disable=import-outside-toplevel,redefined-outer-name

    db = _open(Path(root) / "db", LocalStore(os.path.join(root, "bucket")), local_retention_bytes=0)
    locations: list[tuple[str, int, int]] = []
    for _turn in range(5):
        locations += [tuple(loc) for loc in db.put_many(_blobs(12, seed))]  # type: ignore[misc]
        db.rotate()
        db.sync_tiering(timeout=60)
    out.put((seed, locations))
    db.close()


def test_two_processes_of_one_datadir_upload_in_turns_and_lose_nothing(tmp_path: Path) -> None:
    """Two processes of one datadir, both tiering to one bucket (a LocalStore both can reach),
    seal and sync at once: each segment is uploaded once, every blob of both reads back through
    open_remote, and verify() finds nothing."""
    import multiprocessing  # pylint: disable=import-outside-toplevel

    from obstore.store import LocalStore  # pylint: disable=import-outside-toplevel,redefined-outer-name

    (tmp_path / "bucket").mkdir()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_upload_from_another_process, args=(str(tmp_path), s, out)) for s in (1, 2)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    remote = FlatFileDb.open_remote(URL, object_store=LocalStore(str(tmp_path / "bucket")))
    for seed, locations in results:
        got = remote.get_many([DataLocation(*loc) for loc in locations])
        # _blobs: 700 random bytes, then a run that names the blob
        assert [data[700:] for data in got] == [blob[700:] for blob in _blobs(12, seed)] * 5
    assert len(remote.segments()) == 10
    report = remote.verify()
    assert report.ok and report.blobs == 120, str(report)


def test_get_many_of_a_data_object_cut_short_on_a_real_server_is_corruption(tmp_path: Path, ceph: S3Server) -> None:
    """A data object cut short on a real S3 server (Ceph RGW), read through get_many (one coalesced
    ranged GET for neighbouring blobs): RemoteCorruptionError. The client panicked (a BaseException,
    past every ``except Exception``) when the server's answer to the coalesced range was shorter
    than asked."""
    server, name = ceph, f"test-{os.urandom(8).hex()}"
    server.create_bucket(name)
    url = f"s3://{name}/store"
    options: dict[str, Any] = {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "region": server.region,
    }
    db = FlatFileDb(tmp_path / "db", max_file_size=40_000, tiering=Tiering(url, local_retention_bytes=0, **options))
    locations = db.put_many(_blobs(40))
    db.rotate()
    db.sync_tiering()
    store = server.store(name)
    key = f"store/segments/{os.path.basename(locations[0].file_path)}"
    obstore.put(store, key, bytes(obstore.get(store, key).bytes())[:3000])
    in_first = [loc for loc in locations if loc.file_path == locations[0].file_path]
    remote = FlatFileDb.open_remote(url, **options)
    for reader in (db, remote):
        with pytest.raises(RemoteCorruptionError):
            reader.get_many(in_first)
    db.close()
    server.delete_bucket(name)


def test_two_opens_of_a_new_datadir_at_once_agree_on_its_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances open one new datadir at the same instant: both read "no id yet" before either
    writes one. Each made its own id, and the one whose claim on the bucket lost refused the
    bucket as another store's (UnsafeRemoteError at open). The first id written now stands for both."""
    from conduit_flat_file_db.tiering.tier import Tier  # pylint: disable=import-outside-toplevel

    (tmp_path / "bucket").mkdir()
    both_read = threading.Barrier(2, timeout=30)
    first_read = threading.local()
    real_read = Tier._read_tier_file  # pylint: disable=protected-access

    def read_then_wait_for_the_other(tier: Any) -> Any:
        fields = real_read(tier)
        if not getattr(first_read, "done", False):
            first_read.done = True
            both_read.wait()  # neither goes on before both have read the (missing) file
        return fields

    monkeypatch.setattr(Tier, "_read_tier_file", read_then_wait_for_the_other)
    from obstore.store import LocalStore  # pylint: disable=import-outside-toplevel,redefined-outer-name

    bucket = LocalStore(str(tmp_path / "bucket"))
    errors: list[BaseException] = []
    opened: list[FlatFileDb] = []

    def open_one() -> None:
        try:
            opened.append(_open(tmp_path / "db", bucket))
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(opened) == 2
    first, second = opened[0], opened[1]
    location = first.put(b"x" * 5000)
    first.rotate()
    first.sync_tiering(timeout=60)
    assert second.tiering_status()["last_error"] is None
    assert second.get(location) == b"x" * 5000
    for db in opened:
        db.close()
