"""The S3 test infrastructure itself, against each real server: what obstore sees, directly and through faults."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import obstore
import pytest
from botocore.exceptions import ClientError
from obstore.exceptions import AlreadyExistsError, GenericError, PermissionDeniedError
from obstore.store import S3Store

from .faultproxy import FaultProxy
from .s3servers import SEAWEEDFS_INSTALL_HINT, S3Server, ServerStartError, start_seaweedfs, weed_binary

pytestmark = pytest.mark.tiering

Bucket = tuple[S3Server, str]
PAYLOAD = bytes(range(256)) * 64  # 16 KiB, every byte value


def test_put_get_ranges_head_list_delete_round_trip(s3_bucket: Bucket) -> None:
    """Every call the tiering code makes returns what was put: whole, one range, several ranges, size, listing."""
    server, bucket = s3_bucket
    store = server.store(bucket)
    obstore.put(store, "dir/a", PAYLOAD)
    obstore.put(store, "dir/b", b"second")
    assert bytes(obstore.get(store, "dir/a").bytes()) == PAYLOAD
    assert bytes(obstore.get_range(store, "dir/a", start=1000, length=256)) == PAYLOAD[1000:1256]
    ranges = obstore.get_ranges(store, "dir/a", starts=[0, 5000, 16000], ends=[10, 5100, 16384])
    assert [bytes(r) for r in ranges] == [PAYLOAD[0:10], PAYLOAD[5000:5100], PAYLOAD[16000:16384]]
    assert obstore.head(store, "dir/a")["size"] == len(PAYLOAD)
    listed = sorted((meta["path"], meta["size"]) for batch in obstore.list(store, prefix="dir") for meta in batch)
    assert listed == [("dir/a", len(PAYLOAD)), ("dir/b", 6)]
    obstore.delete(store, "dir/a")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "dir/a")


def test_create_mode_refuses_to_replace_an_existing_object(s3_bucket: Bucket) -> None:
    """A conditional create (If-None-Match: *) of an existing key fails and keeps the first object."""
    server, bucket = s3_bucket
    store = server.store(bucket)
    obstore.put(store, "once", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "once", b"second", mode="create")
    assert bytes(obstore.get(store, "once").bytes()) == b"first"


def test_put_if_none_match_star_is_refused_when_the_key_exists(s3_bucket: Bucket) -> None:
    """The raw header, as obstore's create mode sends it: 412 Precondition Failed, object unchanged."""
    server, bucket = s3_bucket
    client = server.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_single_put_etag_is_the_hex_md5_of_the_body(s3_bucket: Bucket) -> None:
    """A single PUT's ETag is the quoted hex MD5 of the body."""
    server, bucket = s3_bucket
    store = server.store(bucket)
    obstore.put(store, "k", PAYLOAD)
    assert obstore.head(store, "k")["e_tag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"'


def test_multipart_etag_is_the_md5_of_the_part_md5s_and_the_part_count(s3_bucket: Bucket) -> None:
    """A multipart upload's ETag is the MD5 of the parts' binary MD5s, then '-' and the part count."""
    server, bucket = s3_bucket
    store = server.store(bucket)
    part = 5 << 20
    data = PAYLOAD * (12 * 64)  # 12 MiB: parts of 5, 5 and 2 MiB
    obstore.put(store, "big", data, use_multipart=True, chunk_size=part)
    digests = b"".join(hashlib.md5(data[start : start + part]).digest() for start in range(0, len(data), part))
    assert obstore.head(store, "big")["e_tag"] == f'"{hashlib.md5(digests).hexdigest()}-3"'
    assert bytes(obstore.get_range(store, "big", start=len(data) - 100, length=100)) == data[-100:]


def test_get_and_put_in_a_missing_bucket_are_not_found(s3_server: S3Server) -> None:
    """A missing bucket is FileNotFoundError for reads and writes, and a write does not create it."""
    store = s3_server.store("no-such-bucket-here")
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "k")
    with pytest.raises(FileNotFoundError):
        obstore.put(store, "k", b"v")
    buckets = [bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in buckets


def test_deleting_a_bucket_that_holds_objects_is_refused(s3_bucket: Bucket) -> None:
    """As on AWS: a bucket with objects is not deleted (BucketNotEmpty)."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", b"v")
    with pytest.raises(ClientError, match="BucketNotEmpty"):
        server.client().delete_bucket(Bucket=bucket)


def test_a_wrong_secret_key_is_permission_denied(s3_bucket: Bucket) -> None:
    """A bad signature is PermissionDeniedError for reads and writes."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", b"v")
    wrong = S3Server(server.name, server.endpoint, server.access_key, "not-the-secret", server.region)
    with pytest.raises(PermissionDeniedError):
        obstore.get(wrong.store(bucket), "k")
    with pytest.raises(PermissionDeniedError):
        obstore.put(wrong.store(bucket), "k2", b"v")


def test_env_names_the_server_for_obstore_from_env(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3Server.env() is all an S3Store built from the environment needs."""
    server, bucket = s3_bucket
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(bucket)  # endpoint, keys, region and allow_http from the environment
    obstore.put(store, "k", b"from env")
    assert bytes(obstore.get(server.store(bucket), "k").bytes()) == b"from env"


def test_proxy_relays_requests_unchanged_and_counts_them(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """Without faults the proxy is transparent (large streamed PUTs, multipart, ranges) and counts by method."""
    server, bucket = s3_bucket
    store = server.behind(fault_proxy.endpoint).store(bucket)
    data = PAYLOAD * 400  # 6.25 MiB: one streamed PUT and a two-part upload
    obstore.put(store, "single", data, use_multipart=False)
    obstore.put(store, "multi", data, use_multipart=True, chunk_size=5 << 20)
    assert bytes(obstore.get(store, "single").bytes()) == data
    assert (
        bytes(obstore.get_range(store, "multi", start=(5 << 20) - 3, length=6)) == data[(5 << 20) - 3 : (5 << 20) + 3]
    )
    assert obstore.head(store, "multi")["size"] == len(data)
    assert sorted(meta["path"] for batch in obstore.list(store) for meta in batch) == ["multi", "single"]
    counts = fault_proxy.counts()
    assert counts["GET"] >= 3 and counts["HEAD"] == 1 and counts["PUT"] == 3 and counts["POST"] == 2


@pytest.mark.parametrize("status", [500, 503])
def test_an_injected_server_error_is_retried_by_obstore(
    s3_bucket: Bucket, fault_proxy: FaultProxy, status: int
) -> None:
    """A 500 or 503 answered by the proxy is retried by obstore, which then gets the object."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", PAYLOAD)
    fault_proxy.fail_next("GET", status=status)
    assert bytes(obstore.get(server.behind(fault_proxy.endpoint).store(bucket, max_retries=2), "k").bytes()) == PAYLOAD
    assert fault_proxy.seen("GET") == 2 and fault_proxy.pending() == 0


def test_injected_server_errors_beyond_the_retries_surface(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """More 503s than obstore's retries surface as an error naming the status; nothing was stored."""
    server, bucket = s3_bucket
    fault_proxy.fail_next("PUT", status=503, times=3)
    with pytest.raises(GenericError, match="503"):
        obstore.put(server.behind(fault_proxy.endpoint).store(bucket, max_retries=2), "k", PAYLOAD)
    assert fault_proxy.seen("PUT") == 3
    with pytest.raises(FileNotFoundError):
        obstore.head(server.store(bucket), "k")


def test_a_delayed_response_arrives_after_the_delay(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A delayed response arrives whole, no sooner than the delay."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", PAYLOAD)
    fault_proxy.delay_next("GET", 0.4, path="/k")
    started = time.monotonic()
    assert bytes(obstore.get(server.behind(fault_proxy.endpoint).store(bucket), "k").bytes()) == PAYLOAD
    assert time.monotonic() - started >= 0.4


def test_a_truncated_body_surfaces_as_an_error_without_retries(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A body cut short (connection closed) is an error when obstore may not retry."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", PAYLOAD)
    fault_proxy.truncate_next("GET", keep=1000)
    with pytest.raises(GenericError):
        obstore.get(server.behind(fault_proxy.endpoint).store(bucket, max_retries=0), "k").bytes()
    assert fault_proxy.seen("GET") == 1


def test_a_truncated_body_is_resumed_by_obstore_retries(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """With retries obstore fetches the rest of a cut-short body with a second GET."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", PAYLOAD)
    fault_proxy.truncate_next("GET", keep=1000)
    assert bytes(obstore.get(server.behind(fault_proxy.endpoint).store(bucket, max_retries=2), "k").bytes()) == PAYLOAD
    assert fault_proxy.seen("GET") == 2


def test_a_flipped_byte_arrives_flipped(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A flipped byte in a ranged GET reaches the client flipped, every other byte intact."""
    server, bucket = s3_bucket
    obstore.put(server.store(bucket), "k", PAYLOAD)
    fault_proxy.flip_next("GET", offset=3)
    got = bytes(obstore.get_range(server.behind(fault_proxy.endpoint).store(bucket), "k", start=256, length=256))
    assert got[3] == PAYLOAD[256 + 3] ^ 0xFF and got[:3] + got[4:] == PAYLOAD[256:259] + PAYLOAD[260:512]


def test_a_connection_dropped_before_forwarding_loses_the_put(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A PUT whose connection drops before it reaches the server fails and stores nothing."""
    server, bucket = s3_bucket
    fault_proxy.drop_next("PUT", forwarded=False)
    with pytest.raises(GenericError):
        obstore.put(server.behind(fault_proxy.endpoint).store(bucket, max_retries=0), "k", PAYLOAD)
    with pytest.raises(FileNotFoundError):
        obstore.head(server.store(bucket), "k")


def test_a_connection_dropped_after_forwarding_hides_a_done_put(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A PUT whose answer is lost fails at the client although the server stored the object."""
    server, bucket = s3_bucket
    fault_proxy.drop_next("PUT", forwarded=True)
    with pytest.raises(GenericError):
        obstore.put(server.behind(fault_proxy.endpoint).store(bucket, max_retries=0), "k", PAYLOAD)
    assert bytes(obstore.get(server.store(bucket), "k").bytes()) == PAYLOAD


def test_a_dropped_connection_is_retried_by_obstore(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """A connection dropped without an answer is retried by obstore, and the PUT lands."""
    server, bucket = s3_bucket
    fault_proxy.drop_next("PUT", forwarded=False)
    obstore.put(server.behind(fault_proxy.endpoint).store(bucket, max_retries=2), "k", PAYLOAD)
    assert fault_proxy.seen("PUT") == 2
    assert bytes(obstore.get(server.store(bucket), "k").bytes()) == PAYLOAD


def test_latency_is_added_before_every_response(s3_bucket: Bucket, fault_proxy: FaultProxy) -> None:
    """The global latency delays every response."""
    server, bucket = s3_bucket
    store = server.behind(fault_proxy.endpoint).store(bucket)
    obstore.put(store, "k", PAYLOAD)
    fault_proxy.set_latency(50)
    started = time.monotonic()
    for _ in range(4):
        obstore.get_range(store, "k", start=0, length=10)
    assert time.monotonic() - started >= 0.2


def test_a_server_not_ready_in_time_raises_with_its_logs_and_leaves_nothing(tmp_path: Path) -> None:
    """A failed start names the server and carries its log tail; no daemon outlives it."""
    if weed_binary() is None and not os.environ.get("CI"):
        pytest.skip(f"SeaweedFS not installed; {SEAWEEDFS_INSTALL_HINT}")
    workdir = tmp_path / "weed"
    with pytest.raises(ServerStartError, match=r"(?s)seaweedfs did not start.*not ready after 0 s.*log/weed\.out"):
        start_seaweedfs(workdir, ready_timeout=0.0)
    assert not [pid for pid in _pids_of("weed") if str(workdir) in _cmdline(pid)]


def _pids_of(program: str) -> list[int]:
    """The ids of running processes whose executable's name is ``program``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text(encoding="utf-8").strip() == program:
                    pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> str:
    """A process's command line, words joined by spaces ("" once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
