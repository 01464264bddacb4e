"""The full-disk tier's fixture (a fresh small ext4 filesystem per test) and its runner of child steps.

Test modules import ``disk_fixture`` (it registers the fixture ``disk``); a conftest.py here
would clash with tests/conftest.py as a module name for mypy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from disk_support import Filler, blob, free_bytes, mounted_ext4  # pylint: disable=import-error  # pytest's import

from conduit_flat_file_db import DataLocation, FlatFileDb

CHILD = Path(__file__).with_name("fulldisk_child.py")
REPO = Path(__file__).resolve().parents[2]
CHILD_SECONDS = 60
FS_MIB = 24


class FullDisk:
    """A mounted filesystem, its filler, and the store the test works on (``store`` and ``store.lock``)."""

    def __init__(self, mount: Path, tmp_path: Path) -> None:
        self.mount = mount
        self.tmp_path = tmp_path
        self.filler = Filler(mount)
        self.datadir = mount / "store"
        self.lock = mount / "store.lock"
        self.acked: dict[DataLocation, bytes] = {}
        self._runs = 0

    def free(self) -> int:
        """Bytes free on the filesystem now."""
        return free_bytes(self.mount)

    def open(self, **options: Any) -> FlatFileDb:
        """Open the store in this process (only while the disk has room: a bug could kill pytest)."""
        max_size = options.pop("max_size", None)
        db = FlatFileDb(self.datadir, self.lock, **options)
        if max_size:
            db.MAX_DAT_FILE_SIZE = max_size
        return db

    def put_setup(self, db: FlatFileDb, sizes: list[int], first_tag: int = 0) -> list[DataLocation]:
        """Put blobs ``first_tag``... of ``sizes`` (disk not full) and remember them as acknowledged."""
        locations = []
        for tag, size in enumerate(sizes, first_tag):
            data = blob(tag, size)
            location = db.put(data)
            self.acked[location] = data
            locations.append(location)
        return locations

    def spawn(self, steps: list[dict[str, Any]], **options: Any) -> subprocess.Popen[str]:
        """Start a child process running ``steps`` on the store; :meth:`join` it."""
        self._runs += 1
        max_size = options.pop("max_size", None)
        spec = {
            "mount": str(self.mount),
            "datadir": str(self.datadir),
            "lock": str(self.lock),
            "options": options,
            "max_size": max_size,
            "steps": steps,
            "first_tag": 1_000_000 * self._runs,
        }
        spec_path = self.tmp_path / f"spec-{self._runs}.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        return subprocess.Popen(
            [sys.executable, str(CHILD), str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def join(self, child: subprocess.Popen[str]) -> list[dict[str, Any]]:
        """The outcomes of a child's steps. The child must exit 0 (a SIGBUS is a negative return
        code) and may fail a step only with OSError(ENOSPC); what it acknowledged is added to
        ``acked``, and the blobs of segments it deleted are dropped from it."""
        try:
            stdout, stderr = child.communicate(timeout=CHILD_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        assert child.returncode == 0, f"child died (return code {child.returncode}): {stderr[-3000:]}"
        report = json.loads(stdout.strip().splitlines()[-1])
        for outcome in report["outcomes"]:
            assert outcome["ok"] or outcome["errno"] == errno.ENOSPC, outcome["error"]
        self._merge_acked(report["acked"], [o for o in report["outcomes"] if o["ok"]])
        return list(report["outcomes"])

    def run(self, steps: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
        """Run ``steps`` in a child process and return their outcomes (see :meth:`join`)."""
        return self.join(self.spawn(steps, **options))

    def _merge_acked(self, acked: list[list[Any]], done: list[dict[str, Any]]) -> None:
        deleted: set[int] = set()
        for outcome in done:
            if outcome["op"] in ("delete_oldest",):
                deleted.add(outcome["detail"])
            elif outcome["op"] in ("retention", "compact"):
                deleted.update(outcome["detail"])
        for location in list(self.acked):
            if int(os.path.basename(location.file_path)[5:13]) in deleted:
                del self.acked[location]
        for path, start, end, tag, size in acked:
            self.acked[DataLocation(path, start, end)] = blob(tag, size)

    def check_recovered(self, **options: Any) -> None:
        """With the filler gone: the store opens, verifies clean, reads back every acknowledged
        blob byte for byte, and takes new puts (which read back too)."""
        self.filler.release()
        db = self.open(**options)
        try:
            report = db.verify()
            assert report.ok, str(report)
            assert db.get_many(list(self.acked)) == list(self.acked.values())
            fresh = self.put_setup(db, [100, 70_000, 5000], first_tag=9_000_000)
            assert [db.get(location) for location in fresh] == [self.acked[location] for location in fresh]
            report = db.verify()
            assert report.ok, str(report)
        finally:
            db.close()


def _needs_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("loop-mounting a filesystem needs root (CI runs as root)")
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        assert shutil.which(tool), f"{tool} is needed by the full-disk tests"


@pytest.fixture(name="disk")
def disk_fixture(tmp_path: Path) -> Iterator[FullDisk]:
    """A fresh, empty ext4 filesystem of a few MiB, mounted for this test and unmounted after it."""
    _needs_root()
    with mounted_ext4(tmp_path, FS_MIB) as mount:
        yield FullDisk(mount, tmp_path)
