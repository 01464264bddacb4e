"""Writer child of the SIGKILL tests: puts in a loop and reports every acknowledged blob.

Run as ``python crash_writer.py CONFIG_JSON`` (see ``WriterConfig`` in test_sigkill.py).
It imports only the engine, so it starts fast.

Report file (appended with one ``write`` per acknowledged put or put_many; a kill can
still leave a torn last line, so readers trust only complete lines)::

    # ready <pid>                                  the store is open
    <file_path>\t<start>\t<end>\t<blake2b-128 hex>    one per acknowledged blob
    # done                                         clean stop (stop file seen)

With ``read_back`` set, every blob is read back right after its put and a mismatch ends
the process with exit code 3. With ``die_before_creating`` set to ".idx", ".dat" or ".dat.zst", the
process SIGKILLs itself when it is about to create such a segment file (mid-rotation).
With ``die_at_segment_remove`` = n it instead deletes segment ``delete_segment`` and
SIGKILLs itself just before the n-th unlink of one of that segment's files. With
``use_compression`` the store writes seekable Zstandard segments (``frame_bytes``, if
given, sets their frame size); ``die_in_reframe`` = n then makes the process SIGKILL itself
in its n-th re-framing of a segment it sealed, when the re-framed copy is written aside
but not yet renamed over the segment. With ``die_after_index_cut`` set, the process SIGKILLs
itself right after its first cut of a record index (a seal cuts the index before it writes
the SEAL record there).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.store import DEFAULT_FRAME_BYTES

BIG_BLOB = 2**20


def digest(data: bytes) -> str:
    """The checksum reported for a blob (the parent compares it with what it reads)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class BlobMaker:
    """Random blobs cut from one random pool, so the writer spends its time in the engine
    (where a kill is interesting) rather than in generating bytes."""

    def __init__(self, rng: random.Random, big_fraction: float) -> None:
        self.rng = rng
        self.big_fraction = big_fraction
        self.pool = memoryview(rng.randbytes(2 * BIG_BLOB + 8192))

    def make(self) -> bytes:
        """Mostly 1..4000 bytes, some empty; ``big_fraction`` of blobs are about 1 MiB."""
        rng = self.rng
        roll = rng.random()
        if roll < self.big_fraction:
            size = rng.randint(BIG_BLOB - 4096, BIG_BLOB + 4096)
        elif roll < self.big_fraction + 0.05:
            size = 0
        else:
            size = rng.randint(1, 4000)
        start = rng.randrange(len(self.pool) - size)
        return bytes(self.pool[start : start + size])


def report_line(location: DataLocation, data: bytes) -> str:
    """One acknowledged blob."""
    return f"{location.file_path}\t{location.start_offset}\t{location.end_offset}\t{digest(data)}\n"


def die_at(event: str, suffix: str, nth: int) -> None:
    """SIGKILL this process at its ``nth`` audit event ``event`` on a segment file named ``*suffix``.

    Audit events are raised before the operation runs, so this stops a rotation or a delete
    at a chosen step, whatever the engine did before it, with no engine internals patched.
    ``event`` is "open" (only opens that may create the file count) or "os.remove".
    """
    seen = 0

    def hook(name: str, args: tuple[object, ...]) -> None:
        nonlocal seen
        if name != event or not args or not isinstance(args[0], str):
            return
        if event == "open" and not (len(args) >= 3 and isinstance(args[2], int) and args[2] & os.O_CREAT):
            return
        base = os.path.basename(args[0])
        if base.startswith("data_") and base.endswith(suffix):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def die_in_reframe(nth: int) -> None:
    """SIGKILL this process in its ``nth`` re-framing of a sealed segment, just before the
    rename: the scratch file ``.tmp-<pid>-data_N.dat.zst`` is complete, the segment unchanged."""
    seen = 0

    def hook(name: str, args: tuple[object, ...]) -> None:
        nonlocal seen
        if name == "os.rename" and args and isinstance(args[0], str) and os.path.basename(args[0]).startswith(".tmp-"):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def die_after_index_cut() -> None:
    """SIGKILL this process right after its first ``ftruncate`` of a segment's record index: the
    hook runs the cut itself (audit events come before the operation), then kills."""
    done = False

    def hook(name: str, args: tuple[object, ...]) -> None:
        nonlocal done
        if done or name != "os.truncate" or len(args) != 2:
            return
        fd, length = args
        if not isinstance(fd, int) or not isinstance(length, int):
            return
        base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if base.startswith("data_") and base.endswith(".idx"):
            done = True
            os.ftruncate(fd, length)
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def main(argv: list[str]) -> int:
    """Write until killed, or until the stop file appears."""
    config = json.loads(argv[1])
    rng = random.Random(config["seed"])
    maker = BlobMaker(rng, float(config["big_fraction"]))
    stop_file: str | None = config.get("stop_file")
    read_back = bool(config.get("read_back", False))
    pause = float(config.get("pause", 0.0))
    report = os.open(config["report"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    db = FlatFileDb(
        config["datadir"],
        config["lock_path"],
        fsync=bool(config["fsync"]),
        use_compression=bool(config.get("use_compression", False)),
        frame_bytes=int(config.get("frame_bytes") or DEFAULT_FRAME_BYTES),
    )
    db.MAX_DAT_FILE_SIZE = int(config["max_size"])
    os.write(report, f"# ready {os.getpid()}\n".encode())
    if config.get("die_before_creating"):
        die_at("open", str(config["die_before_creating"]), 1)
    if config.get("die_in_reframe"):
        die_in_reframe(int(config["die_in_reframe"]))
    if config.get("die_after_index_cut"):
        die_after_index_cut()
    if config.get("die_at_segment_remove"):
        die_at("os.remove", "", int(config["die_at_segment_remove"]))
        db.delete_file(db.segment_path(int(config["delete_segment"])))
        return 0
    while stop_file is None or not os.path.exists(stop_file):
        if rng.random() < 0.6:
            blobs = [maker.make()]
            locations = [db.put(blobs[0])]
        else:
            blobs = [maker.make() for _ in range(rng.randint(1, 4))]
            locations = db.put_many(blobs)
        if read_back:
            for location, blob in zip(locations, blobs):
                if db.get(location) != blob:
                    sys.stderr.write(f"read back mismatch at {location}\n")
                    return 3
        os.write(report, "".join(report_line(loc, blob) for loc, blob in zip(locations, blobs)).encode())
        if pause:
            time.sleep(pause)
    os.write(report, b"# done\n")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
