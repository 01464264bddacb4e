"""Small compressed puts (stored frames through maps of the padding, FORMAT.md "Commit") on a
disk that runs out at every few blocks: each put returns a location that reads back or raises
ENOSPC, never a SIGBUS; once space is back, puts go on and every acknowledged blob reads back."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import disk_support  # pylint: disable=import-error  # pytest's import, from this folder
import pytest
from crash_support import assert_tails_clean, frame_sizes, set_state_word
from disk_support import Filler, mounted_ext4  # pylint: disable=import-error

# Imported the way pytest imports them, from this folder (pylint does not look there).
from fulldisk_fixtures import FullDisk, disk_fixture  # noqa: F401  # pylint: disable=import-error,unused-import

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.index import HEADER_BYTES, decode_records
from conduit_flat_file_db.seekable import write_padding_and_table
from conduit_flat_file_db.state import W_DIRTY

pytestmark = pytest.mark.fulldisk

COMPRESSED = {"use_compression": True}
SEGMENT_BYTES = 200 * 2**10  # rotations (seal, re-frame, next segment) happen on the full disk too


def test_small_compressed_puts_until_the_disk_is_full_are_errors_never_a_sigbus(disk: FullDisk) -> None:
    """Free space swept in single blocks around what a padding map and an index room take: small
    puts until ENOSPC, a put past the padding (the seek table moves), then space back and more
    puts, all in one process that must exit cleanly."""
    db = disk.open(max_size=SEGMENT_BYTES, **COMPRESSED)
    try:
        disk.put_setup(db, [3000] * 100 + [9000, 100])
    finally:
        db.close()
    steps: list[dict[str, Any]] = []
    for free in [0, 4096, 8192, 12288, 16384, 28672, 65536, 69632, 73728]:
        steps += [
            {"op": "fill", "free": free},
            {"op": "put_until_full", "size": 2000},
            {"op": "put", "sizes": [100, 20_000]},
            {"op": "read_back"},
            {"op": "release"},
            {"op": "put", "sizes": [5000, 0, 7000]},
        ]
    outcomes = disk.run(steps, max_size=SEGMENT_BYTES, **COMPRESSED)
    refused = [o for o in outcomes if not o["ok"]]
    assert refused and all(o["errno"] == errno.ENOSPC for o in refused), refused
    assert all(o["ok"] for o in outcomes if o["op"] in ("read_back", "release")), outcomes
    disk.check_recovered(**COMPRESSED)


_EXACT_PUTS = """
import json, os, sys
sys.path[:0] = [os.path.join(sys.argv[3], "fulldisk"), os.path.join(sys.argv[3], "crash")]
from crash_support import state_word
from disk_support import Filler
from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db.frames import STORED_HEAD_MEDIUM, STORED_TAIL_BYTES
from conduit_flat_file_db.segment import ROOM_MAX_BYTES
from conduit_flat_file_db.state import W_DISK_BYTES

from pathlib import Path
datadir, mount = Path(sys.argv[1]), sys.argv[2]
db = FlatFileDb(datadir, use_compression=True)
acked = []
def put(size):
    data = os.urandom(size)
    location = db.put(data)
    acked.append([location.file_path, location.start_offset, location.end_offset, data.hex()])
put(100)  # maps the padding: blocks for ROOM_MAX_BYTES past the frames end (as a page-blind writer gave them)
room_end = state_word(datadir, W_DISK_BYTES) + ROOM_MAX_BYTES - 200
while room_end - state_word(datadir, W_DISK_BYTES) > 6000:
    put(3000)
Filler(mount).fill_to(0)
# One put whose padding header ends right at room_end: it stores into the page holding room_end.
put(room_end - state_word(datadir, W_DISK_BYTES) - 8 - STORED_HEAD_MEDIUM.size - STORED_TAIL_BYTES)
try:
    for _ in range(100):
        put(3000)
    error = 0
except OSError as exc:
    error = exc.errno
print(json.dumps({"acked": acked, "errno": error}))
"""


def test_a_small_compressed_put_into_a_block_smaller_than_a_page_is_no_sigbus_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ext4 of 1 KiB blocks, with a padding longer than the 4 MiB given blocks per map (a
    segment past 64 MiB of frames has one): a put whose frame ends in the page holding the end
    of that room, on a full disk, stores into a page whose other blocks were holes, which the
    kernel must allocate then: a SIGBUS. Rooms end at page boundaries, and the table's page gets
    its blocks too, so the put lands or raises ENOSPC, and everything acknowledged reads back."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("loop-mounting a filesystem needs root (CI runs as root)")
    monkeypatch.setattr(disk_support, "BLOCK_BYTES", 1024)
    with mounted_ext4(tmp_path, 24) as mount:
        datadir = mount / "store"
        db = FlatFileDb(datadir, use_compression=True)
        written = {db.put(data): data for data in [random.Random(i).randbytes(3001) for i in range(30)]}
        db.close()
        # The same layout with a padding of 8 MiB: what a segment of 128 MiB of frames has.
        records = decode_records((datadir / "data_00000000.idx").read_bytes()[HEADER_BYTES:]).records
        fd = os.open(datadir / "data_00000000.dat.zst", os.O_RDWR)
        try:
            sizes = frame_sizes(records)
            write_padding_and_table(fd, sum(c for c, _d in sizes), sizes, 8 * 2**20 + 3000)
        finally:
            os.close(fd)
        set_state_word(datadir, W_DIRTY, 1)  # the next writer lays the segment out from its files
        child = subprocess.run(
            [sys.executable, "-c", _EXACT_PUTS, str(datadir), str(mount), str(Path(__file__).parents[1])],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert child.returncode == 0, f"the writer died (return code {child.returncode}): {child.stderr[-2000:]}"
        report = json.loads(child.stdout)
        assert report["errno"] == errno.ENOSPC, report["errno"]
        Filler(mount).release()
        written.update({DataLocation(p, s, e): bytes.fromhex(h) for p, s, e, h in report["acked"]})
        db = FlatFileDb(datadir, use_compression=True)
        try:
            assert [db.get(location) for location in written] == list(written.values())
            assert db.verify().ok
            assert_tails_clean(db, "after the full disk")
        finally:
            db.close()
