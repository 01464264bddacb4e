"""A long ``put_stream`` in one process does not hold back small puts of another.

``put_stream`` copies to a scratch file without the write lock and takes the lock only to
commit by rename (GUARANTEES.md "Who may do what at once"). A child streams ~200 MB from a
slow generator while this process keeps putting small blobs and times every put; the
small puts must keep completing during the whole stream, none waiting anywhere near the
stream's duration.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import xxhash

from conduit_flat_file_db import DataLocation, FlatFileDb

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
MB = 10**6
STREAM_BYTES = 200 * MB
MAX_PUT_SECONDS = 1.0

_STREAMER = textwrap.dedent(
    """
    import json, sys, time
    import xxhash
    from conduit_flat_file_db import FlatFileDb

    config = json.loads(sys.argv[1])

    class Slow:
        '''1 MiB per readinto, a short sleep every call: a slow-ish producer.'''

        def __init__(self, total):
            self.left = total
            self.calls = 0
            self.block = memoryview(bytes(range(256)) * 8192)  # 2 MiB
            self.hasher = xxhash.xxh3_128()

        def readinto(self, buffer):
            time.sleep(config["sleep"])
            view = memoryview(buffer).cast("B")
            count = min(len(view), self.left, 1 << 20)
            offset = (self.calls * 4099) % (1 << 20)
            view[:count] = self.block[offset : offset + count]
            self.hasher.update(view[:count])
            self.calls += 1
            self.left -= count
            return count

    db = FlatFileDb(config["datadir"], config["lock"], use_compression=config["compressed"])
    db.put(b"streamer is up")
    source = Slow(config["total"])
    print(json.dumps({"event": "start", "t": time.monotonic()}), flush=True)
    location = db.put_stream(source)
    end = time.monotonic()
    print(json.dumps({"event": "end", "t": end, "location": list(location), "hash": source.hasher.hexdigest()}),
          flush=True)
    """
)


def put_while_running(db: FlatFileDb, child: subprocess.Popen[str]) -> list[tuple[float, float, DataLocation, bytes]]:
    """Small puts until the child exits: (started, returned, location, bytes) of each."""
    puts: list[tuple[float, float, DataLocation, bytes]] = []
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        data = b"small %d" % len(puts)
        before = time.monotonic()
        location = db.put(data)
        puts.append((before, time.monotonic(), location, data))
        time.sleep(0.002)
    return puts


def stream_hash(db: FlatFileDb, location: DataLocation) -> str:
    """XXH3-128 of a blob read through open_blob in 1 MiB reads."""
    hasher = xxhash.xxh3_128()
    with db.open_blob(location) as blob:
        for chunk in iter(lambda: blob.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_small_puts_continue_during_a_long_put_stream(
    make_store: StoreFactory, tmp_path: Path, compressed: bool
) -> None:
    """Max latency of small puts stays < 1 s while another process streams for seconds."""
    db = make_store(use_compression=compressed)
    db.put(b"parent is up")
    config = {
        "datadir": str(tmp_path / "store"),
        "lock": str(tmp_path / "store.lock"),
        "compressed": compressed,
        "total": STREAM_BYTES,
        "sleep": 0.012,
    }
    with subprocess.Popen(
        [sys.executable, "-c", _STREAMER, json.dumps(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        start = json.loads(child.stdout.readline())
        assert start["event"] == "start", start
        puts = put_while_running(db, child)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    end = json.loads(out.strip().splitlines()[-1])
    stream_seconds = end["t"] - start["t"]
    during = [returned for _, returned, _, _ in puts if start["t"] <= returned <= end["t"]]
    latencies = [returned - started for started, returned, _, _ in puts]
    completions = [start["t"]] + during + [end["t"]]
    gaps = [later - earlier for earlier, later in zip(completions, completions[1:])]
    print(
        f"{'zstd' if compressed else 'raw'}: stream {STREAM_BYTES / MB:.0f} MB in {stream_seconds:.2f} s; "
        f"{len(during)} small puts during it; max put latency {max(latencies) * 1000:.1f} ms; "
        f"longest stretch without a completed put {max(gaps) * 1000:.1f} ms"
    )
    assert stream_seconds > 2 * MAX_PUT_SECONDS, "the stream must last long enough for the check to mean something"
    assert max(latencies) < MAX_PUT_SECONDS
    assert max(gaps) < MAX_PUT_SECONDS, "small puts stopped completing for a while during the stream"
    assert len(during) > 100
    assert db.get_many([location for _, _, location, _ in puts]) == [data for _, _, _, data in puts]
    stream = DataLocation(*end["location"])
    assert stream.end_offset == STREAM_BYTES
    assert stream_hash(db, stream) == end["hash"]
