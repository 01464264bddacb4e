"""``close()`` in one thread while other threads write through the same instance.

An instance reopens itself on next use; a close must never cut a write of another thread short.
It closes the writer under the write lock, so a write holding the lock finishes first, and a write
that waited for it finds the instance closed and opens it again. Before, close() closed the
writer's descriptors under a put: puts failed with EBADF, ``ValueError`` (a released state page),
or, when a descriptor number was taken again by a file opened meanwhile, a failed put's undo cut
that file: acknowledged blobs read back wrong.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb

SECONDS = 1.5


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_close_in_another_thread_never_fails_or_loses_a_write(tmp_path: Path, compressed: bool) -> None:
    """Two threads put and put_many, one syncs and rotates, one closes the instance in a loop and
    opens files (taking the closed descriptors' numbers): no call fails, and every acknowledged
    blob reads back its own bytes, in this instance and in a fresh one."""
    db = FlatFileDb(tmp_path / "s", use_compression=compressed)
    db.MAX_DAT_FILE_SIZE = 64 * 1024
    stop = threading.Event()
    errors: collections.Counter[str] = collections.Counter()
    acked: list[tuple[DataLocation, bytes]] = []

    def putter(seed: int) -> None:
        count = 0
        while not stop.is_set():
            data = b"%d-%d;" % (seed, count) * (1 + count % 40)
            try:
                if count % 5:
                    acked.append((db.put(data), data))
                else:
                    batch = [data, data[::-1], b""]
                    acked.extend(zip(db.put_many(batch), batch))
            except Exception as exc:  # pylint: disable=broad-exception-caught  # every failure is counted
                errors[repr(exc)[:120]] += 1
            count += 1

    def maintainer() -> None:
        while not stop.is_set():
            try:
                db.sync()
                db.rotate()
            except Exception as exc:  # pylint: disable=broad-exception-caught  # every failure is counted
                errors[repr(exc)[:120]] += 1

    def closer() -> None:
        while not stop.is_set():
            db.close()
            for fd in [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]:
                os.close(fd)

    threads = [threading.Thread(target=putter, args=(seed,)) for seed in range(2)]
    threads += [threading.Thread(target=maintainer), threading.Thread(target=closer)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    try:
        assert not errors, dict(errors)
        assert len(acked) > 100
        wrong = [location for location, data in acked if db.get(location) != data]
        assert not wrong, f"{len(wrong)} of {len(acked)} acknowledged blobs read back wrong: {wrong[:3]}"
    finally:
        db.close()
    with FlatFileDb(tmp_path / "s", use_compression=compressed) as again:
        assert all(again.get(location) == data for location, data in acked)
        assert again.verify().ok
