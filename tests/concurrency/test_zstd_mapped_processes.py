"""Two processes (one compressing, one not) put small blobs into one compressed store at once (each stores stored frames
through its own shared maps of the same padding and index, FORMAT.md "Commit"), one of them also
larger blobs and batches that move the seek table, while this process reads every blob as soon
as it is acknowledged: each reads back its own bytes, here and in a read-only instance."""

from __future__ import annotations

import hashlib
import selectors
import subprocess
import sys
from pathlib import Path

import pytest
from crash_support import assert_tails_clean

from conduit_flat_file_db import DataLocation, FlatFileDb

pytestmark = pytest.mark.concurrency

_WRITER = """
import hashlib, random, sys
from conduit_flat_file_db import FlatFileDb
rng = random.Random(int(sys.argv[2]))
db = FlatFileDb(sys.argv[1], use_compression=sys.argv[3] == "1", max_file_size=150_000)
for i in range(300):
    roll = rng.random()
    if roll < 0.05:
        datas = [rng.randbytes(rng.randrange(0, 9000)) for _ in range(3)]
        locations = db.put_many(datas)
    else:
        datas = [rng.randbytes(rng.randrange(0, 8192) if roll < 0.9 else rng.randrange(8192, 30_000))]
        locations = [db.put(datas[0])]
    for location, data in zip(locations, datas):
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        print(location.file_path, location.start_offset, location.end_offset, digest, flush=True)
db.close()
"""


def test_two_processes_of_small_compressed_puts_and_a_reader_in_a_third(tmp_path: Path) -> None:
    """Each acknowledged blob reads back at once in this process (a writer instance and a
    read-only one), and again after both writers finished; the files end whole and verify."""
    datadir = tmp_path / "store"
    FlatFileDb(datadir, use_compression=True).close()
    writers = [
        subprocess.Popen(  # pylint: disable=consider-using-with  # waited for below
            [sys.executable, "-c", _WRITER, str(datadir), str(seed), compress],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, compress in ((1, "1"), (2, "0"))
    ]
    db = FlatFileDb(datadir, use_compression=True)
    reader = FlatFileDb(datadir, readonly=True)
    acked: dict[DataLocation, str] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for writer in writers:
                assert writer.stdout is not None
                selector.register(writer.stdout, selectors.EVENT_READ)
            open_streams = len(writers)
            while open_streams:
                for key, _events in selector.select(timeout=60):
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        selector.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    path, start, end, digest = line.split()
                    location = DataLocation(path, int(start), int(end))
                    for instance in (db, reader):
                        got = hashlib.blake2b(instance.get(location), digest_size=16).hexdigest()
                        assert got == digest, f"{location} read back other bytes at once"
                    acked[location] = digest
        for writer in writers:
            assert writer.wait(60) == 0, writer.stderr.read() if writer.stderr else ""
        assert len(acked) > 600
        for location, digest in acked.items():
            assert hashlib.blake2b(db.get(location), digest_size=16).hexdigest() == digest, location
        assert db.verify().ok
        assert_tails_clean(db, "after two writers")
    finally:
        reader.close()
        db.close()
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
