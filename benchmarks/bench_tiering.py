"""Tiering: remote reads and uploads against a real S3 server, beside the same client used directly.

``python -m benchmarks.bench_tiering [--quick] [--latency-ms 0 20]`` starts a SeaweedFS server on
127.0.0.1 (the test suite's starter, tests/tiering/s3servers.py) and a latency-injecting proxy in
front of it (S3's time to first byte is tens of milliseconds; loopback hides it), then measures:

- random 256 B slices of a remote raw segment, cold cache, against one ranged GET of the same
  256 bytes by the client itself; and of a remote compressed segment, against a GET of the one
  frame holding them plus its decompression;
- ``get_many`` of 1,000 blobs over 64 remote segments against the client's own coalesced
  multi-range call (``obstore.get_ranges``), one per segment;
- the upload of 1 GiB of sealed segments (``sync_tiering``) against the client's plain upload of
  the same files;
- local reads while uploads run, against the same reads without tiering;
- the S3 clients themselves (obstore, boto3): one 256-byte ranged GET.

Each row prints requests and bytes per operation, and the cost per million operations at AWS S3
Standard list prices (GET $0.40, PUT $5.00 per million requests; transfer inside a region free).
"""

from __future__ import annotations

import bisect
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import obstore
import zstandard

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.naming import REMOTE_SUFFIX, TIER_FILE_NAME
from conduit_flat_file_db.tiering import Tiering

from .common import Result, run_benchmark


def _test_module(name: str) -> Any:
    """A helper module of the tiering tests (the real-server starter, the proxy), loaded by path:
    the benchmark starts the same servers the tests start."""
    path = Path(__file__).resolve().parent.parent / "tests" / "tiering" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ffdb_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


FaultProxy = _test_module("faultproxy").FaultProxy
_servers = _test_module("s3servers")
start_seaweedfs = _servers.start_seaweedfs


GET_PER_MILLION = 0.40
PUT_PER_MILLION = 5.00
SLICE = 256


def _timed(calls: int, call: Callable[[int], Any]) -> float:
    """Operations per second of ``calls`` calls of ``call(i)``."""
    started = time.perf_counter()
    for index in range(calls):
        call(index)
    return calls / (time.perf_counter() - started)


def _requests(db: Any) -> tuple[int, int]:
    snapshot = db.tiering_status()["requests"] if hasattr(db, "tiering_status") else db.bucket.stats.snapshot()
    gets = [v for k, v in snapshot.items() if k.startswith("get")]
    return sum(v["requests"] for v in gets), sum(v["bytes"] for v in gets)


def _forget_tier(path: Path) -> None:
    """Let the datadir forget its tier (its claim file and upload markers; no data file was
    removed), so that the next measurement uploads the same segments again, to another prefix."""
    for item in path.iterdir():
        if item.name == TIER_FILE_NAME or item.name.endswith(REMOTE_SUFFIX):
            item.unlink()


def _gets(db: FlatFileDb, picks: list[DataLocation]) -> float:
    """Gets per second of ``picks`` from ``db``."""
    return _timed(len(picks), lambda i: db.get(picks[i]))


class Bench:  # pylint: disable=too-many-instance-attributes  # one server, one proxy, the data sets
    """The server, its proxy, the stores under test and their data."""

    def __init__(self, args: Any, workdir: str) -> None:
        self.args = args
        self.workdir = Path(workdir)
        self.rng = random.Random(args.seed)
        self.server, self.handle = start_seaweedfs(self.workdir / "seaweedfs")
        # The server shares this machine's cores; at the lowest priority it takes only what this
        # process leaves, as a server on another machine would.
        for process in self.handle.processes:  # every thread: Linux's nice value is per thread
            for task in os.listdir(f"/proc/{process.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(task), 19)
        self.proxy = FaultProxy(self.server.endpoint)
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        self.server.create_bucket(self.bucket)
        self.direct = self.via(0).store(self.bucket)
        self.segments = 8 if args.quick else 64
        self.segment_bytes = (1 if args.quick else 4) * 2**20
        self.blob = 4096

    def via(self, latency_ms: float) -> Any:
        """The server reached through the proxy with ``latency_ms`` before each answer."""
        self.proxy.set_latency(latency_ms)
        return self.server.behind(self.proxy.endpoint)

    def tiering(self, prefix: str, latency_ms: float, **options: Any) -> Tiering:
        """A Tiering on the bench bucket, reached through the proxy."""
        server = self.via(latency_ms)
        return Tiering(
            f"s3://{self.bucket}/{prefix}",
            object_store=server.store(self.bucket),
            **options,
        )

    def close(self) -> None:
        """Stop the proxy and the server."""
        self.proxy.close()
        self.handle.stop()

    # -- data ---------------------------------------------------------------------------

    def fill(self, prefix: str, compressed: bool) -> list[DataLocation]:
        """A store of ``segments`` sealed segments, all uploaded and remote only."""
        path = self.workdir / prefix
        tiering = self.tiering(prefix, 0, local_retention_bytes=0)
        count = self.segment_bytes // self.blob
        locations: list[DataLocation] = []
        with FlatFileDb(path, use_compression=compressed, max_file_size=self.segment_bytes, tiering=tiering) as db:
            for _ in range(self.segments):
                blobs = [self.rng.randbytes(self.blob // 2) + bytes(self.blob // 2) for _ in range(count)]
                locations += db.put_many(blobs)
                db.rotate()
            db.sync_tiering()
        return locations

    def open(self, prefix: str, latency_ms: float, cache: int = 0) -> FlatFileDb:
        """The store ``prefix`` reached at ``latency_ms``, with a cache of ``cache`` bytes."""
        return FlatFileDb(self.workdir / prefix, tiering=self.tiering(prefix, latency_ms, remote_cache_bytes=cache))

    # -- rows -----------------------------------------------------------------------------

    def slices(  # pylint: disable=too-many-locals  # the two sides of a row and its counts
        self, prefix: str, locations: list[DataLocation], latency_ms: float, compressed: bool
    ) -> Result:
        """Random 256 B slices of remote segments, cold cache, beside the client doing the same."""
        calls = 30 if latency_ms else (100 if self.args.quick else 400)
        picks = [self.rng.choice(locations) for _ in range(calls)]
        offsets = [self.rng.randrange(0, self.blob - SLICE) for _ in range(calls)]
        db = self.open(prefix, latency_ms)
        # Once per segment and process, not per read: its manifest, seek table or block sums.
        for number in {int(os.path.basename(p.file_path)[5:13]) for p in picks}:
            first = next(p for p in picks if int(os.path.basename(p.file_path)[5:13]) == number)
            db.get(DataLocation(first.file_path, first.start_offset, first.start_offset + 1))
        store = self.via(latency_ms).store(self.bucket)
        tier = db._tier  # pylint: disable=protected-access  # the segments' manifests and frame tables, for the baseline
        readers = {n: tier.reader(n) for n in {int(os.path.basename(p.file_path)[5:13]) for p in picks}}
        kind = "compressed" if compressed else "raw"
        result = Result(
            f"256 B slices, remote {kind}, cold, {latency_ms:g} ms",
            "reads/s",
            "one ranged GET" + (" + decompress" if compressed else ""),
            goal=0.95 if latency_ms else 0.8,
        )

        def ours(index: int) -> None:
            location = picks[index]
            start = location.start_offset + offsets[index]
            db.get(DataLocation(location.file_path, start, start + SLICE))

        def theirs(index: int) -> None:
            location = picks[index]
            reader = readers[int(os.path.basename(location.file_path)[5:13])]
            assert reader is not None
            start = location.start_offset + offsets[index]
            key = f"{prefix}/{reader.manifest.data_name}"
            if not compressed:
                obstore.get_range(store, key, start=start, end=start + SLICE)
                return
            table = reader.table
            assert table is not None
            frame = bisect.bisect_right(table.d_offsets, start) - 1
            raw = bytes(obstore.get_range(store, key, start=table.c_offsets[frame], end=table.c_offsets[frame + 1]))
            out = zstandard.ZstdDecompressor().decompress(raw)
            _ = out[start - table.d_offsets[frame] : start - table.d_offsets[frame] + SLICE]

        requests = moved = 0
        for _ in range(self.args.rounds):
            result.baseline.append(_timed(calls, theirs))
            before = _requests(db)
            result.engine.append(_timed(calls, ours))
            after = _requests(db)
            requests, moved = requests + after[0] - before[0], moved + after[1] - before[1]
        per_op = requests / (calls * self.args.rounds)
        result.extra = (
            f"{per_op:.2f} GETs and {moved / (calls * self.args.rounds) / 1024:.1f} KiB per read; "
            f"${per_op * GET_PER_MILLION:.2f} per million reads"
        )
        db.close()
        return result

    def get_many(self, prefix: str, locations: list[DataLocation], latency_ms: float) -> Result:
        """get_many(1000) over every remote segment, beside one get_ranges per segment by the client."""
        picks = self.rng.sample(locations, 1000 if len(locations) >= 1000 else len(locations))
        db = self.open(prefix, latency_ms)
        db.get_many(picks[:1])  # manifests of the segments (once per segment and process)
        for location in {p.file_path: p for p in picks}.values():
            db.get(DataLocation(location.file_path, location.start_offset, location.start_offset + 1))
        store = self.via(latency_ms).store(self.bucket)
        by_segment: dict[str, list[DataLocation]] = {}
        for location in picks:
            by_segment.setdefault(os.path.basename(location.file_path), []).append(location)
        result = Result(
            f"get_many(1000) over {len(by_segment)} segments, {latency_ms:g} ms",
            "blobs/s",
            "get_ranges per segment",
            goal=1.0,
        )

        def ours(_index: int) -> None:
            db.get_many(picks)

        def theirs(_index: int) -> None:
            for name, group in by_segment.items():
                obstore.get_ranges(
                    store,
                    f"{prefix}/segments/{name}",
                    starts=[g.start_offset for g in group],
                    ends=[g.end_offset for g in group],
                )

        requests = moved = 0
        for _ in range(self.args.rounds):
            result.baseline.append(_timed(1, theirs) * len(picks))
            before = _requests(db)
            result.engine.append(_timed(1, ours) * len(picks))
            after = _requests(db)
            requests, moved = requests + after[0] - before[0], moved + after[1] - before[1]
        per_call = requests / self.args.rounds
        result.extra = (
            f"{per_call:.0f} GETs and {moved / self.args.rounds / 2**20:.1f} MiB per call; "
            f"${per_call / len(picks) * GET_PER_MILLION:.3f} per million blobs"
        )
        db.close()
        return result

    def upload(self) -> Result:
        """sync_tiering of sealed segments beside the client's upload of the same files."""
        total = (128 if self.args.quick else 1024) * 2**20
        size = 32 * 2**20 if self.args.quick else 128 * 2**20
        result = Result(f"upload of {total >> 20} MiB", "MB/s", "obstore.put of the files", goal=0.9)
        for round_ in range(max(1, self.args.rounds // 2)):
            path = self.workdir / f"up{round_}"
            prefix = f"up{round_}"
            with FlatFileDb(path, max_file_size=size) as db:
                for _ in range(total // size):
                    db.put(os.urandom(size))
                db.rotate()
                db.sync()
            files = sorted(p for p in path.iterdir() if p.name.endswith((".dat", ".idx")) and p.stat().st_size)
            files = [p for p in files if not p.name.startswith(f"data_{total // size:08d}")]
            started = time.perf_counter()
            for file in files:
                obstore.put(self.direct, f"plain{round_}/{file.name}", file)
            result.baseline.append(total / 1e6 / (time.perf_counter() - started))
            with FlatFileDb(path, max_file_size=size, tiering=self.tiering(prefix, 0)) as db:
                started = time.perf_counter()
                db.sync_tiering()
                result.engine.append(total / 1e6 / (time.perf_counter() - started))
                puts = sum(v["requests"] for k, v in db.tiering_status()["requests"].items() if k.startswith("put"))
            per_gib = puts / (total / 2**30)
            result.extra = f"{per_gib:.0f} PUTs per GiB; ${per_gib * PUT_PER_MILLION / 1e6:.5f} per GiB"
        return result

    def reads_while_uploading(self, rates: list[int | None]) -> list[Result]:
        """Random local 4 KiB gets while the tier's background thread uploads, beside the same
        gets with no upload: one row per upload rate (None: as fast as the server takes them)."""
        total = (64 if self.args.quick else 512) * 2**20
        size = 16 * 2**20 if self.args.quick else 64 * 2**20
        results = {
            rate: Result(
                f"local gets while uploading{'' if rate is None else f' at {rate / 1e6:.0f} MB/s'}",
                "gets/s",
                "the same gets, no upload",
                goal=0.95 if rate is not None else None,
            )
            for rate in rates
        }
        floor: list[float] = []
        overlapped = {rate: True for rate in rates}
        for round_ in range(self.args.rounds):
            path = self.workdir / f"local{round_}"
            with FlatFileDb(path, max_file_size=size) as db:
                locations = [db.put(os.urandom(4096)) for _ in range(2000)]
                for _ in range(total // size):
                    db.put(os.urandom(size))
                db.rotate()
                db.sync()
            calls = 300_000  # about half a second of gets: long enough to see the upload, not one moment of it
            picks = [self.rng.choice(locations) for _ in range(calls)]
            with FlatFileDb(path) as db:
                alone = _gets(db, picks)
                floor.append(self._gets_beside_a_plain_upload(db, picks, path, round_) / alone)
            for rate in rates:
                with FlatFileDb(
                    path, tiering=self.tiering(f"local{round_}-{rate}", 0, upload_bytes_per_second=rate)
                ) as db:
                    time.sleep(0.05)  # the open woke the tier's thread: it is uploading now
                    results[rate].engine.append(_gets(db, picks))
                    overlapped[rate] = overlapped[rate] and bool(db.tiering_status()["pending"])
                # close() cut the upload short; the same gets alone again, so that the baseline is
                # the mean of the measurements just before and just after (the machine drifts)
                with FlatFileDb(path) as db:
                    after = _gets(db, picks)
                results[rate].baseline.append((alone + after) / 2)
                alone = after
                _forget_tier(path)
            for rate in rates:
                results[rate].extra = "uploads ran throughout" if overlapped[rate] else "the upload ended first"
        results[None if None in rates else rates[0]].extra += (
            f"; the same gets beside a plain upload of the files by another process: "
            f"{statistics.median(floor):.2f} of alone; the server runs at nice 19 on this machine's cores"
        )
        return list(results.values())

    def _gets_beside_a_plain_upload(self, db: FlatFileDb, picks: list[DataLocation], path: Path, round_: int) -> float:
        """Gets per second while another process uploads the data files with the client alone."""
        files = [str(p) for p in sorted(path.iterdir()) if p.name.endswith(".dat")]
        server = self.server
        code = (
            "import sys, obstore\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
            "from pathlib import Path\nfrom tests.tiering.s3servers import S3Server\n"
            f"store = S3Server(*{(server.name, server.endpoint, server.access_key, server.secret_key, server.region)!r})"  # pylint: disable=line-too-long
            f".store({self.bucket!r})\n"
            f"for name in {files!r}:\n    obstore.put(store, 'plain-process{round_}/' + Path(name).name, Path(name))\n"
        )
        process = subprocess.Popen([sys.executable, "-c", code])  # pylint: disable=consider-using-with
        try:
            time.sleep(0.3)
            return _gets(db, picks)
        finally:
            process.wait()

    def clients(self) -> Result:
        """obstore against boto3: one 256-byte ranged GET (the client the tier is built on)."""
        import boto3  # pylint: disable=import-outside-toplevel  # dev only

        key = "clients/object"
        obstore.put(self.direct, key, os.urandom(2**20))
        client = boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
            region_name=self.server.region,
        )
        calls = 200
        offsets = [self.rng.randrange(0, 2**20 - SLICE) for _ in range(calls)]
        result = Result("one 256 B ranged GET: obstore vs boto3", "GETs/s", "boto3 get_object(Range=)")

        def with_boto3(index: int) -> None:
            start = offsets[index]
            client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + SLICE - 1}")["Body"].read()

        def with_obstore(index: int) -> None:
            obstore.get_range(self.direct, key, start=offsets[index], end=offsets[index] + SLICE)

        for _ in range(self.args.rounds):
            result.baseline.append(_timed(calls, with_boto3))
            result.engine.append(_timed(calls, with_obstore))
        result.extra = (
            f"the engine column is obstore; Python work beside a thread waiting in 50 ms GETs: "
            f"{self._gil_share():.2f} of its speed alone"
        )
        return result

    def _gil_share(self) -> float:
        """How fast a CPU-bound loop runs while another thread waits in obstore GETs (1.0: the
        client releases the GIL while it waits)."""
        slow = self.via(50).store(self.bucket)
        obstore.put(slow, "gil/object", b"x" * 1000)

        def spin() -> float:
            started, total = time.perf_counter(), 0
            for value in range(2_000_000):
                total += value
            return time.perf_counter() - started

        alone = spin()
        stop = threading.Event()

        def waiter() -> None:
            while not stop.is_set():
                obstore.get_range(slow, "gil/object", start=0, end=10)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        beside = spin()
        stop.set()
        thread.join()
        return alone / beside


def _body(args: Any, workdir: str) -> list[Result]:
    bench = Bench(args, workdir)
    results: list[Result] = []
    try:
        results.append(bench.clients())
        raw = bench.fill("raw", compressed=False)
        packed = bench.fill("zstd", compressed=True)
        for latency in args.latency_ms:
            results.append(bench.slices("raw", raw, latency, compressed=False))
            results.append(bench.slices("zstd", packed, latency, compressed=True))
            results.append(bench.get_many("raw", raw, latency))
        results.append(bench.upload())
        results.extend(bench.reads_while_uploading([None, *args.upload_rates]))
    finally:
        bench.close()
    for result in results:
        print(f"  {result.name}: {statistics.median(result.engine):,.1f} {result.unit}; {result.extra}")
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the tiering benchmark (see the module docstring)."""
    argv = list(argv or [])
    latency = [0.0, 20.0]
    if "--latency-ms" in argv:
        at = argv.index("--latency-ms")
        values = []
        for item in argv[at + 1 :]:
            if item.startswith("--"):
                break
            values.append(float(item))
        del argv[at : at + 1 + len(values)]
        latency = values

    def body(args: Any, workdir: str) -> list[Result]:
        args.latency_ms = latency
        args.upload_rates = [16 * 10**6, 32 * 10**6]
        return _body(args, workdir)

    return run_benchmark(__doc__ or "", argv, body)


if __name__ == "__main__":
    main(sys.argv[1:])
