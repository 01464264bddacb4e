"""Worker of the soak tier: one process doing everything to one store at random until it is
killed or its stop file appears.

Run as ``python soak_worker.py CONFIG_JSON`` (see ``test_soak.py``). The worker opens the store
three times (raw, compressed with a random frame size, compression AUTO) and picks one of them
per operation, so raw and compressed segments are written, sealed, rewritten and read at once;
with ``threads`` > 1, that many threads of it do so through the same instances.

Blob bytes are slices of one pool that every process derives from the run's seed, so a blob is
known by its pool offset and any process can check any blob, or any slice of it, byte for byte.

Report file (one per worker, kept across its restarts; each line written with one ``write``
after the call it describes returned, except ``D`` and compaction lines, see below)::

    # ready <pid>                          the store is open
    A\t<path>\t<start>\t<end>\t<pool offset>   an acknowledged blob
    D\t<segment>\t<why>                     a segment that may be deleted: written BEFORE the
                                           delete starts, since a killed delete may have happened
    P\t<kind>\t<path>\t<offset>\t<message>     a problem a live verify() reported
    F\t<message>                           something wrong the worker saw (its traceback goes to stderr)
    # op <name>                            an operation that completed
    # done                                 clean stop

Audit file (one per worker next to its report, ``<name>.audit``): every ``os.unlink``,
``os.remove``, ``os.rename`` and ``os.replace`` this process makes on a segment's file (data or
index, as source or target), one line before the call and one after it with its outcome, each
with the pid, thread and the engine frames that made it. A segment that vanished is then
attributable: :func:`audit_of` gathers the lines of one segment from every worker.

The same module is imported by the test for the pool and for reading the reports.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import random
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from conduit_flat_file_db import DataLocation, FlatFileDb, Slice
from conduit_flat_file_db.errors import FlatFileDbNotFoundError, InvalidLocationError
from conduit_flat_file_db.maintenance import CompressMode
from conduit_flat_file_db.naming import parse_segment_name

POOL_BYTES = 4 * 2**20
POOL_BLOCK = 4096
WORDS = [b"soak", b"blob", b"segment", b"frame", b"seal", b"\n", b"0123", b"store"]
REFRESH_SECONDS = 0.2  # how stale a worker's view of the other workers' reports may get
KEEP_SEALED = 3  # deletes spare the newest sealed segments, so readers have something to read
READ_BATCH = 8

OPS = (
    "put",
    "put_many",
    "put_stream",
    "put_streams",
    "adopt",
    "read",
    "rotate",
    "recompress",
    "verify",
    "delete",
    "retention",
    "compact",
)
COMPLETED = (*OPS, "finish_compaction")  # what "# op" lines name


AUDIT_SHOWN = 40  # audit lines of one segment put in a failure message (the last ones)
_SEGMENT_FILE = re.compile(r"data_([0-9]{8,10})\.(?:dat|dat\.zst|idx)\Z")


def install_audit(path: str) -> None:
    """Log every unlink/remove/rename/replace of a segment's file by this process to ``path``
    (module docstring). Costs nothing on puts and gets: they make none of these calls."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def wrap(op: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def audited(*args: Any, **kwargs: Any) -> Any:
            names = [os.path.basename(os.fsdecode(a)) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            numbers = {m.group(1) for m in map(_SEGMENT_FILE.search, names) if m}
            if not numbers:
                return real(*args, **kwargs)
            frames = [
                f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
                for f in traceback.extract_stack(limit=12)[:-1]
                if "conduit_flat_file_db" in f.filename or "soak_worker" in f.filename
            ]
            head = f"{time.time():.6f} pid {os.getpid()} {threading.current_thread().name} {op} {' -> '.join(names)}"
            os.write(fd, f"{head} segments {sorted(numbers)} via {' < '.join(reversed(frames))}\n".encode())
            try:
                result = real(*args, **kwargs)
            except OSError as exc:
                os.write(fd, f"{head} failed: {type(exc).__name__} {exc.errno}\n".encode())
                raise
            os.write(fd, f"{head} done\n".encode())
            return result

        return audited

    for op in ("unlink", "remove", "rename", "replace"):
        setattr(os, op, wrap(op, getattr(os, op)))


def audit_of(report_dir: Path, number: int, datadir: Path) -> str:
    """The files of segment ``number`` in ``datadir`` now (all gone, or only the data file: a
    removal; all there: the segment was not found although it was there) and the audit lines of
    every worker that name it (the last AUDIT_SHOWN, by time)."""
    name = f"data_{number:08d}."
    files = []
    for suffix in ("dat", "dat.zst", "idx"):
        with contextlib.suppress(FileNotFoundError):
            files.append(f"{name}{suffix} ({(datadir / f'{name}{suffix}').stat().st_size} bytes)")
    lines = []
    for path in sorted(report_dir.glob("*.audit")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines += [f"{path.stem}: {line.rstrip()}" for line in handle if name in line]
    lines.sort(key=lambda line: line.split(" ", 2)[1])
    shown = lines[-AUDIT_SHOWN:]
    more = f" (the last {AUDIT_SHOWN} of {len(lines)})" if len(lines) > AUDIT_SHOWN else ""
    return f"files of segment {number} now: {', '.join(files) or 'none'}; its audit{more}:\n" + (
        "\n".join(shown) if shown else "(no unlink or rename of its files)"
    )


def make_pool(seed: int) -> bytes:
    """POOL_BYTES of blocks, alternately random (incompressible) and text (compressible)."""
    rng = random.Random(seed)
    blocks = []
    for number in range(POOL_BYTES // POOL_BLOCK):
        if number % 2:
            blocks.append(b" ".join(rng.choices(WORDS, k=POOL_BLOCK // 4))[:POOL_BLOCK].ljust(POOL_BLOCK, b"."))
        else:
            blocks.append(rng.randbytes(POOL_BLOCK))
    return b"".join(blocks)


def segment_of(location: DataLocation) -> int:
    """The segment number a location's file name carries."""
    number = parse_segment_name(os.path.basename(location.file_path))
    if number is None:
        raise ValueError(f"not a segment location: {location}")
    return number


class Ack(NamedTuple):
    """An acknowledged blob: its location and where its bytes are in the pool."""

    location: DataLocation
    pool: int

    @property
    def key(self) -> tuple[int, int, int]:
        """(segment, start, end): the blob whatever suffix its path was given."""
        return segment_of(self.location), self.location.start_offset, self.location.end_offset


class Reports:
    """Everything the workers reported, read incrementally, complete lines only (a line being
    written is read once its newline is there; the test cuts a killed worker's torn line off
    before the worker starts again)."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = report_dir
        self.offsets: dict[str, int] = {}
        self.acks: list[Ack] = []
        self.pool_of: dict[tuple[int, int, int], int] = {}
        self.deleted: dict[int, str] = {}
        self.problems: list[str] = []
        self.failures: list[str] = []
        self.ops: dict[str, int] = dict.fromkeys(COMPLETED, 0)
        self.refreshed = 0.0

    def refresh(self) -> None:
        """Read what was appended to every report since the last call."""
        self.refreshed = time.monotonic()
        for path in sorted(self.report_dir.glob("*.report")):
            at = self.offsets.get(path.name, 0)
            with open(path, "rb") as handle:
                handle.seek(at)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path.name] = at + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self._parse(path.name, line)

    def _parse(self, name: str, line: str) -> None:
        fields = line.split("\t")
        if fields[0] == "A":
            ack = Ack(DataLocation(fields[1], int(fields[2]), int(fields[3])), int(fields[4]))
            self.acks.append(ack)
            self.pool_of[ack.key] = ack.pool
        elif fields[0] == "D":
            self.deleted.setdefault(int(fields[1]), fields[2])
        elif fields[0] == "P":
            self.problems.append(f"{name}: {line}")
        elif fields[0] == "F":
            self.failures.append(f"{name}: {line}")
        elif line.startswith("# op "):
            self.ops[line[5:]] = self.ops.get(line[5:], 0) + 1

    def live(self) -> list[Ack]:
        """Acknowledged blobs whose segment nobody may have deleted."""
        return [ack for ack in self.acks if ack.key[0] not in self.deleted]

    def gone(self, numbers: Iterable[int]) -> bool:
        """Whether any of these segments may have been deleted (reports read anew first)."""
        self.refresh()
        return any(number in self.deleted for number in numbers)


class ChunkyReader(io.RawIOBase):
    """A stream that returns fewer bytes than asked, at random (down to one byte)."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        super().__init__()
        self.data = memoryview(data)
        self.pos = 0
        self.rng = rng

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), len(self.data) - self.pos, self.rng.choice([1, 7, 4096, 65536, 2**20]))
        buffer[:size] = self.data[self.pos : self.pos + size]
        self.pos += size
        return size


class Worker:  # pylint: disable=too-many-instance-attributes  # one store in three configurations + its reports
    """One worker process: random operations on the store, each checked and reported."""

    def __init__(self, config: dict[str, Any], seed: int, dbs: list[FlatFileDb] | None = None) -> None:
        """``dbs``: the store instances of another thread of this process, shared (every method
        of a store may be called from any thread); else this worker opens its own."""
        self.rng = random.Random(seed)
        self.pool = make_pool(int(config["run_seed"]))
        self.report = os.open(config["report"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.reports = Reports(Path(config["report_dir"]))
        self.incoming = Path(config["incoming"])
        self.retention_bytes = int(config["retention_bytes"])
        self.weights = [float(config["weights"].get(op, 0)) for op in OPS]
        self.made = 0
        self.dbs = dbs if dbs is not None else self._open(config)

    def _open(self, config: dict[str, Any]) -> list[FlatFileDb]:
        """The store three times: raw, compressed with a random frame size, AUTO; the last two
        of them with fsync=True now and then (the background fsync of sealed segments)."""
        datadir, lock = config["datadir"], config["datadir"] + ".lock"
        fsync = self.rng.random() < 0.2
        dbs = [
            FlatFileDb(datadir, lock),
            FlatFileDb(
                datadir, lock, fsync=fsync, use_compression=True, frame_bytes=self.rng.choice([1024, 4096, 16384])
            ),
            FlatFileDb(datadir, lock, fsync=fsync, use_compression=CompressMode.AUTO),
        ]
        for db in dbs:
            db.MAX_DAT_FILE_SIZE = int(config["segment_bytes"])
        self.write(f"# ready {os.getpid()}\n")
        return dbs

    # -- reporting --------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Append to this worker's report with one write (lines are whole or torn, never mixed)."""
        os.write(self.report, text.encode())

    def acknowledge(self, op: str, locations: list[DataLocation], pools: list[int]) -> None:
        """Report blobs whose call returned, and the operation."""
        lines = [
            f"A\t{loc.file_path}\t{loc.start_offset}\t{loc.end_offset}\t{pool}\n" for loc, pool in zip(locations, pools)
        ]
        self.write("".join(lines) + f"# op {op}\n")

    def fail(self, message: str) -> None:
        """Report something wrong, with the traceback of the exception being handled, if any."""
        sys.stderr.write(f"FAILURE: {message}\n{traceback.format_exc()}\n")
        self.write("F\t" + message.replace("\n", " | ").replace("\t", " ") + "\n")

    # -- blobs ----------------------------------------------------------------------------

    def blob(self, big: bool = False) -> tuple[int, bytes]:
        """(pool offset, bytes): often empty or small, sometimes up to 1 MiB (``big``: up to 3 MiB)."""
        roll = self.rng.random()
        if roll < 0.12:
            size = 0
        elif roll < 0.8 and not big:
            size = self.rng.randint(1, 4000)
        elif roll < 0.95:
            size = self.rng.randint(4000, 100_000)
        else:
            size = self.rng.randint(100_000, (3 if big else 1) * 2**20)
        pool = self.rng.randrange(POOL_BYTES - size + 1)
        return pool, self.pool[pool : pool + size]

    def db(self) -> FlatFileDb:
        """One of the three configurations, at random."""
        return self.rng.choice(self.dbs)

    def incoming_file(self, data: bytes) -> Path:
        """A new file holding ``data`` on the store's filesystem (outside the datadir)."""
        self.made += 1
        path = self.incoming / f"{os.getpid()}-{threading.get_ident()}-{self.made}"
        path.write_bytes(data)
        return path

    # -- writes ---------------------------------------------------------------------------

    def op_put(self) -> None:
        """put of one blob."""
        pool, data = self.blob()
        self.acknowledge("put", [self.db().put(data)], [pool])

    def op_put_many(self) -> None:
        """put_many of 0..8 blobs, empty ones among them."""
        blobs = [self.blob() for _ in range(self.rng.randint(0, 8))]
        self.acknowledge("put_many", self.db().put_many([data for _pool, data in blobs]), [p for p, _d in blobs])

    def op_put_stream(self) -> None:
        """put_stream of a stream that returns short reads."""
        pool, data = self.blob(big=True)
        stream = ChunkyReader(data, self.rng) if self.rng.random() < 0.5 else io.BytesIO(data)
        self.acknowledge("put_stream", [self.db().put_stream(stream)], [pool])

    def op_put_streams(self) -> None:
        """put_streams of streams and file paths, small ones batched, long ones streamed."""
        blobs = [self.blob(big=self.rng.random() < 0.2) for _ in range(self.rng.randint(0, 5))]
        items: list[Any] = []
        for _pool, data in blobs:
            items.append(self.incoming_file(data) if self.rng.random() < 0.4 else io.BytesIO(data))
        locations = self.db().put_streams(items, small_bytes=self.rng.choice([0, 4096, 2**20]))
        for item in items:
            if isinstance(item, Path):
                item.unlink()
        self.acknowledge("put_streams", locations, [p for p, _d in blobs])

    def op_adopt(self) -> None:
        """adopt_file of a file written next to the datadir."""
        pool, data = self.blob(big=True)
        path = self.incoming_file(data)
        location = self.db().adopt_file(path, verify=self.rng.random() < 0.5)
        self.acknowledge("adopt", [location], [pool])

    # -- reads ----------------------------------------------------------------------------

    def op_read(self) -> None:
        """Read acknowledged blobs one of five ways and check every byte."""
        if time.monotonic() - self.reports.refreshed > REFRESH_SECONDS:
            self.reports.refresh()
        acks = self.reports.live()
        if not acks:
            return
        batch = [self.rng.choice(acks) for _ in range(self.rng.randint(1, READ_BATCH))]
        how = self.rng.choice(["get", "slice", "get_many", "open_blob", "get_view"])
        db = self.db()
        try:
            for ack, got, want in self._read(db, how, batch):
                if got != want:
                    self.fail(
                        f"{how} of {ack.location} read {len(got)} bytes that differ from the "
                        f"{len(want)} acknowledged (pool offset {ack.pool})"
                    )
        except FlatFileDbNotFoundError:
            self.reports.refresh()
            for ack in batch:  # which one: each read alone
                try:
                    db.get(ack.location)
                except FlatFileDbNotFoundError as exc:
                    # Reports read anew after this get failed: a segment deleted since the refresh
                    # above was reported before it went (its D line is there now).
                    if not self.reports.gone([ack.key[0]]):
                        self.fail(
                            f"{how}: acknowledged {_describe(ack)} is gone, nobody deleted its segment: {exc}\n"
                            + audit_of(self.reports.report_dir, ack.key[0], Path(ack.location.file_path).parent)
                        )
        self.write("# op read\n")

    def _read(self, db: FlatFileDb, how: str, batch: list[Ack]) -> Iterable[tuple[Ack, bytes, bytes]]:
        """(ack, bytes read, bytes expected) of each blob of ``batch``, read ``how``."""

        def want(ack: Ack, lo: int = 0, hi: int | None = None) -> bytes:
            size = ack.location.end_offset - ack.location.start_offset
            return self.pool[ack.pool : ack.pool + size][lo:hi]

        if how == "get_many":
            return self._many(db, batch, want)
        out = []
        for ack in batch:
            if how == "get":
                out.append((ack, db.get(ack.location), want(ack)))
            elif how == "slice":
                piece = self._slice(ack)
                out.append((ack, db.get(ack.location, piece), want(ack, *_bounds(piece, ack))))
            elif how == "open_blob":
                out.append(self._open_blob(db, ack, want))
            else:
                try:
                    view = db.get_view(ack.location)
                except InvalidLocationError as exc:
                    if "compressed" not in str(exc):
                        raise
                    continue  # a compressed segment has no bytes to map
                out.append((ack, bytes(view), want(ack)))
        return out

    def _many(self, db: FlatFileDb, batch: list[Ack], want: Callable[..., bytes]) -> list[tuple[Ack, bytes, bytes]]:
        if self.rng.random() < 0.5:
            got = db.get_many([ack.location for ack in batch])
            return [(ack, data, want(ack)) for ack, data in zip(batch, got)]
        slices = [self._slice(ack) for ack in batch]
        got = db.get_many([ack.location for ack in batch], slices)
        return [(ack, data, want(ack, *_bounds(piece, ack))) for ack, data, piece in zip(batch, got, slices)]

    def _open_blob(self, db: FlatFileDb, ack: Ack, want: Callable[..., bytes]) -> tuple[Ack, bytes, bytes]:
        size = ack.location.end_offset - ack.location.start_offset
        with db.open_blob(ack.location) as handle:
            if self.rng.random() < 0.5:
                return ack, handle.read(), want(ack)
            lo = self.rng.randint(0, size)
            handle.seek(lo)
            count = self.rng.randint(0, size - lo)
            return ack, handle.read(count), want(ack, lo, lo + count)

    def _slice(self, ack: Ack) -> Slice:
        size = ack.location.end_offset - ack.location.start_offset
        lo = self.rng.randint(0, size)
        return Slice(lo, self.rng.randint(lo, size))

    # -- maintenance ------------------------------------------------------------------------

    def sealed(self) -> list[int]:
        """Sealed segments that nobody may have deleted."""
        db = self.dbs[0]
        mutable = db.mutable_segment()
        return [n for n in db.segments() if n < mutable and n not in self.reports.deleted]

    def op_rotate(self) -> None:
        """Seal the mutable segment (re-framed or compressed at seal by some configurations)."""
        self.db().rotate()
        self.write("# op rotate\n")

    def op_recompress(self) -> None:
        """recompress of a few sealed segments: compress, decompress, re-frame or AUTO (a segment
        deleted meanwhile is reported "vanished"; nothing is raised)."""
        sealed = self.sealed()
        picked = self.rng.sample(sealed, min(2, len(sealed)))
        mode = self.rng.choice(list(CompressMode))
        level = self.rng.choice([None, 1, 3])
        frame_bytes = self.rng.choice([None, 2048, 32768])
        for result in self.db().recompress(picked, mode=mode, level=level, frame_bytes=frame_bytes):
            if (
                result.action == "vanished"
                and result.number not in self.dbs[0].segments()
                and not self.reports.gone([result.number])
            ):  # "vanished" also means rewritten by another
                self.fail(
                    f"recompress of {result.number}: vanished, nobody deleted it ({result.reason})\n"
                    + audit_of(self.reports.report_dir, result.number, self.dbs[0].datadir)
                )
        self.write("# op recompress\n")

    def op_verify(self) -> None:
        """A live verify: whatever it reports is a problem of the store (judged by the test)."""
        report = self.db().verify(full=self.rng.random() < 0.7)
        lines = [
            f"P\t{p.kind}\t{p.path}\t{p.offset}\t{p.message}\n".replace("\n", " ")[:-1] + "\n" for p in report.problems
        ]
        self.write("".join(lines) + "# op verify\n")

    def op_delete(self) -> None:
        """delete_file of an old sealed segment."""
        candidates = self.sealed()[:-KEEP_SEALED]
        if not candidates:
            return
        number = self.rng.choice(candidates)
        self.write(f"D\t{number}\tdelete_file\n")
        self.db().delete_file(self.dbs[0].segment_path(number))
        self.write("# op delete\n")

    def op_retention(self) -> None:
        """enforce_retention by size; each segment is reported before it goes."""

        def on_delete(path: str, _locations: list[DataLocation]) -> None:
            self.write(f"D\t{segment_of(DataLocation(path, 0, 0))}\tenforce_retention\n")

        self.db().enforce_retention(max_bytes=self.retention_bytes, keep_min=KEEP_SEALED, on_delete=on_delete)
        self.write("# op retention\n")

    def op_compact(self) -> None:
        """compact of one or two sealed segments keeping most blobs; finish_compaction most times."""
        self.reports.refresh()
        sealed = self.sealed()
        picked = self.rng.sample(sealed, min(self.rng.randint(1, 2), len(sealed)))
        if not picked:
            return
        db = self.db()
        keep = self.rng.random()
        try:
            compaction = db.compact(picked, lambda _location: self.rng.random() < keep)
        except FlatFileDbNotFoundError:
            if not self.reports.gone(picked):
                self.fail(
                    f"compact of {picked}: a segment is missing, nobody deleted it\n"
                    + "\n".join(audit_of(self.reports.report_dir, number, self.dbs[0].datadir) for number in picked)
                )
            return
        copies = [(new, self.reports.pool_of.get(Ack(old, 0).key)) for old, new in compaction.mapping.items()]
        known = [(new, pool) for new, pool in copies if pool is not None]
        self.acknowledge("compact", [new for new, _pool in known], [pool for _new, pool in known])
        if self.rng.random() < 0.8:
            self.write("".join(f"D\t{n}\tfinish_compaction\n" for n in compaction.old_segments))
            db.finish_compaction(compaction)
            self.write("# op finish_compaction\n")

    # -- main loop --------------------------------------------------------------------------

    def run(self, stop_file: str) -> None:
        """Random operations until the stop file appears."""
        ops: list[Callable[[], None]] = [getattr(self, f"op_{name}") for name in OPS]
        while not os.path.exists(stop_file):
            op = self.rng.choices(ops, self.weights)[0]
            try:
                op()
            except Exception as exc:  # pylint: disable=broad-exception-caught  # reported, then carry on
                self.fail(f"{op.__name__} raised {type(exc).__name__}: {exc}")


def _describe(ack: Ack) -> str:
    """A location, saying when it is an empty blob."""
    size = ack.location.end_offset - ack.location.start_offset
    return f"{'empty blob' if size == 0 else f'blob of {size} bytes'} {ack.location}"


def _bounds(piece: Slice, ack: Ack) -> tuple[int, int]:
    """A Slice as (lo, hi) within its blob (end 0 means the blob's end)."""
    size = ack.location.end_offset - ack.location.start_offset
    return piece.start_offset, piece.end_offset or size


def main(argv: list[str]) -> int:
    """Work until stopped, in ``threads`` threads sharing the store instances; SIGUSR1 prints
    every thread's stack (the test asks for it before it kills a hung worker)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = json.loads(argv[1])
    install_audit(str(Path(config["report"]).with_suffix(".audit")))
    first = Worker(config, config["seed"])
    workers = [first] + [Worker(config, config["seed"] + n, first.dbs) for n in range(1, int(config["threads"]))]
    threads = [threading.Thread(target=w.run, args=(config["stop_file"],)) for w in workers[1:]]
    for thread in threads:
        thread.start()
    first.run(config["stop_file"])
    for thread in threads:
        thread.join()
    for db in first.dbs:
        db.close()
    first.write("# done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
