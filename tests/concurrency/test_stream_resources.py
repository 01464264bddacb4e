"""Resource bounds of streams, measured in child processes.

- Constant memory: a ~300 MB generated stream goes in through ``put_stream`` and comes back
  through ``open_blob`` in 1 MiB reads; each child reports its peak RSS, writer and reader in
  separate processes. The peak is VmHWM (/proc/self/status): ``ru_maxrss`` of RUSAGE_SELF is
  printed too, but Linux carries the parent's peak over fork + exec into it, so under a
  pytest process that has grown past the bound it would measure pytest, not the child.
- Few descriptors: ``put_streams`` of 5,000 files (``LazyOpener``, plain str and Path) in a
  child whose RLIMIT_NOFILE is 64; everything reads back in input order in that child.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.concurrency

MB = 10**6
STREAM_BYTES = 300 * MB
RSS_LIMIT_BYTES = 150 * MB
CHILD_SECONDS = 120

_MEMORY_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import xxhash
    from conduit_flat_file_db import DataLocation, FlatFileDb

    config = json.loads(sys.argv[1])

    class Generated:
        '''Pseudo-random, compressible (random 64-byte words from a 256-word dictionary, each
        1 MiB chunk rotated and stamped with its number), never held whole.'''

        def __init__(self, total):
            import random
            rng = random.Random(config["seed"])
            words = [rng.randbytes(64) for _ in range(256)]
            block = b"".join(rng.choice(words) for _ in range((1 << 20) // 64))
            self.twice = memoryview(block + block)
            self.left = total
            self.calls = 0
            self.hasher = xxhash.xxh3_128()

        def readinto(self, buffer):
            view = memoryview(buffer).cast("B")
            count = min(len(view), self.left, 1 << 20)
            offset = (self.calls * 7919) % (1 << 20)
            view[:count] = self.twice[offset : offset + count]
            stamp = self.calls.to_bytes(8, "little")[:count]
            view[: len(stamp)] = stamp
            self.hasher.update(view[:count])
            self.calls += 1
            self.left -= count
            return count

    def peak():
        # VmHWM: the peak RSS of this process's own address space. ru_maxrss would do on a
        # fresh process, but Linux carries the parent's peak over fork + exec into it.
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def maxrss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    db = FlatFileDb(config["datadir"], config["lock"], use_compression=config["compressed"])
    started = time.monotonic()
    if config["mode"] == "write":
        source = Generated(config["total"])
        location = db.put_stream(source)
        result = {"location": list(location), "hash": source.hasher.hexdigest()}
    else:
        hasher = xxhash.xxh3_128()
        size = 0
        with db.open_blob(DataLocation(*config["location"])) as blob:
            while True:
                chunk = blob.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                hasher.update(chunk)
        result = {"hash": hasher.hexdigest(), "size": size}
    result.update(peak_rss=peak(), ru_maxrss=maxrss(), seconds=time.monotonic() - started)
    db.close()
    print(json.dumps(result))
    """
)


def run_child(script: str, config: dict[str, Any], timeout: float = CHILD_SECONDS) -> dict[str, Any]:
    """Run ``script`` with the JSON config; its last stdout line is its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_put_stream_and_open_blob_in_constant_memory(tmp_path: Path, compressed: bool) -> None:
    """300 MB through put_stream and back through open_blob: peak RSS of each child < 150 MB
    (the default 64 MiB frame cache included), and the bytes read hash like the bytes put."""
    base = {
        "datadir": str(tmp_path / "store"),
        "lock": str(tmp_path / "store.lock"),
        "compressed": compressed,
        "seed": 17,
    }
    written = run_child(_MEMORY_CHILD, {**base, "mode": "write", "total": STREAM_BYTES})
    print(
        f"write ({'zstd' if compressed else 'raw'}): peak RSS {written['peak_rss'] / MB:.0f} MB "
        f"(ru_maxrss {written['ru_maxrss'] / MB:.0f} MB), {written['seconds']:.1f} s"
    )
    location = written["location"]
    assert location[1:] == [0, STREAM_BYTES]
    read = run_child(_MEMORY_CHILD, {**base, "mode": "read", "location": location})
    print(
        f"read ({'zstd' if compressed else 'raw'}): peak RSS {read['peak_rss'] / MB:.0f} MB "
        f"(ru_maxrss {read['ru_maxrss'] / MB:.0f} MB), {read['seconds']:.1f} s"
    )
    assert read["size"] == STREAM_BYTES
    assert read["hash"] == written["hash"]
    assert written["peak_rss"] < RSS_LIMIT_BYTES, f"put_stream peaked at {written['peak_rss'] / MB:.0f} MB RSS"
    assert read["peak_rss"] < RSS_LIMIT_BYTES, (
        f"reading a {STREAM_BYTES / MB:.0f} MB blob through open_blob in 1 MiB reads peaked at "
        f"{read['peak_rss'] / MB:.0f} MB RSS"
    )


_FILES_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    from pathlib import Path
    from conduit_flat_file_db import FlatFileDb, LazyOpener

    config = json.loads(sys.argv[1])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["nofile"], hard))

    open_now = 0
    most_open = 0

    class CountingOpener(LazyOpener):
        def __enter__(self):
            global open_now, most_open
            handle = super().__enter__()
            open_now += 1
            most_open = max(most_open, open_now)
            return handle

        def __exit__(self, *exc):
            global open_now
            open_now -= 1
            return super().__exit__(*exc)

    def content(path):
        with open(path, "rb") as handle:
            return handle.read()

    paths = [line for line in Path(config["list"]).read_text().splitlines() if line]
    results = {}
    for phase in config["phases"]:
        datadir = os.path.join(config["root"], phase)
        db = FlatFileDb(datadir, datadir + ".lock", use_compression=config["compressed"])
        result = results[phase] = {"stage": "put_streams"}
        try:
            if phase == "openers":
                items = [CountingOpener(p) for p in paths]
                locations = db.put_streams(items, open_streams=True, small_bytes=config["small_bytes"],
                                           batch_bytes=config["batch_bytes"])
            else:
                items = [p if i % 2 else Path(p) for i, p in enumerate(paths)]
                locations = db.put_streams(items, small_bytes=config["small_bytes"],
                                           batch_bytes=config["batch_bytes"])
            result["count"] = len(locations)
            result["most_open"] = most_open
            result["segments"] = len(db.segments())
            result["stage"] = "get"
            wrong = [i for i, (p, loc) in enumerate(zip(paths, locations)) if db.get(loc) != content(p)]
            result["stage"] = "get_many"
            got = db.get_many(locations)
            wrong += [i for i, p in enumerate(paths) if got[i] != content(p)]
            result["wrong"] = sorted(set(wrong))[:20]
            result["stage"] = "done"
        except OSError as exc:
            result["error"] = repr(exc)
        db.close()
    print(json.dumps(results))
    """
)


@pytest.fixture(name="scratch", scope="module")
def scratch_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the input files go: tmpfs when there is one (creating 5,000 files on a busy disk
    takes seconds), else a temporary directory."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="ffdb-streams-", dir="/dev/shm"))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("inputs")


def make_files(directory: Path, count: int, big: int, small_bytes: int, seed: int) -> Path:
    """``count`` files of random sizes (0..3000 bytes), ``big`` of them above ``small_bytes``
    (two at its edge); returns a file listing their paths, one per line, shuffled."""
    rng = random.Random(seed)
    directory.mkdir()
    sizes = [rng.randrange(0, 3000) for _ in range(count - big)]
    sizes += [small_bytes, small_bytes + 1] + [rng.randrange(small_bytes + 2, 100_000) for _ in range(big - 2)]
    rng.shuffle(sizes)
    paths = []
    for i, size in enumerate(sizes):
        path = directory / f"f{i:05d}"
        path.write_bytes(rng.randbytes(size))
        paths.append(str(path))
    listing = directory.parent / f"{directory.name}.list"
    listing.write_text("\n".join(paths))
    return listing


@pytest.fixture(name="five_thousand", scope="module")
def five_thousand_fixture(scratch: Path) -> Path:
    """5,000 small files, 6 of them above 4096 bytes."""
    return make_files(scratch / "many", 5000, 6, 4096, seed=1)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_put_streams_5000_files_with_64_descriptors(tmp_path: Path, five_thousand: Path, compressed: bool) -> None:
    """put_streams of 5,000 files (6 above small_bytes, so they go through put_stream) with
    RLIMIT_NOFILE=64, as LazyOpener items (open_streams=True) and as str/Path items: at most one
    input open at a time; every location reads back its file's bytes, in input order."""
    results = run_child(
        _FILES_CHILD,
        {
            "root": str(tmp_path),
            "compressed": compressed,
            "list": str(five_thousand),
            "phases": ["openers", "paths"],
            "nofile": 64,
            "small_bytes": 4096,
            "batch_bytes": 256 * 1024,
        },
    )
    print(results)
    for phase in ("openers", "paths"):
        result = results[phase]
        assert result["stage"] == "done", (phase, result)
        assert result["count"] == 5000
        assert result["wrong"] == [], (phase, result)
    assert results["openers"]["most_open"] == 1


def test_reads_after_put_streams_of_many_large_files_with_64_descriptors(tmp_path: Path, scratch: Path) -> None:
    """Every large stream becomes a segment of its own, so put_streams of 100 files above
    small_bytes makes 100 segments. Reading them back must work within the same descriptor
    limit that writing them did: a reader must not keep a descriptor (and a map) open for
    every segment it has read, beyond what the process may open."""
    listing = make_files(scratch / "large", 100, 100, 4096, seed=3)
    results = run_child(
        _FILES_CHILD,
        {
            "root": str(tmp_path),
            "compressed": False,
            "list": str(listing),
            "phases": ["paths"],
            "nofile": 64,
            "small_bytes": 4096,
            "batch_bytes": 256 * 1024,
        },
    )
    result = results["paths"]
    print(result)
    assert result.get("count") == 100, result
    assert result["stage"] == "done", f"reading back failed at stage {result['stage']}: {result.get('error')}"
    assert result["wrong"] == []
