"""Small compressed puts (stored frames through maps of the padding, FORMAT.md "Commit") on a
disk that runs out at every few blocks: each put returns a location that reads back or raises
ENOSPC, never a SIGBUS; once space is back, puts go on and every acknowledged blob reads back."""

from __future__ import annotations

import errno
from typing import Any

import pytest

# Imported the way pytest imports them, from this folder (pylint does not look there).
from fulldisk_fixtures import FullDisk, disk_fixture  # noqa: F401  # pylint: disable=import-error,unused-import

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
