"""Small loop-mounted ext4 filesystems for the full-disk tests, and a filler that takes their space.

Nothing here is a test. The tests (and the child processes they start, which import this
module by path) fill a filesystem to an exact number of free bytes with one filler file,
run a step of the store, and shrink the filler to give space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

FILLER_NAME = "filler"
BLOCK_BYTES = 4096  # the filesystems are made with 4 KiB blocks: one block per page, as on most disks


def blob(tag: int, size: int) -> bytes:
    """The bytes of blob ``tag``: pseudo-random, so each blob takes its size on disk in both modes."""
    return random.Random(tag).randbytes(size)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes this (root) process can still allocate on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Filler:
    """One file on a filesystem whose size decides how much space is left for everything else."""

    def __init__(self, mount: str | os.PathLike[str]) -> None:
        self.mount = os.fspath(mount)
        self.path = os.path.join(self.mount, FILLER_NAME)

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def _resize(self, size: int) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            current = os.fstat(fd).st_size
            if size < current:
                os.ftruncate(fd, size)
            elif size > current:
                try:
                    os.posix_fallocate(fd, current, size - current)
                except OSError as exc:  # metadata took a block meanwhile: the caller measures again
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def fill_to(self, target: int) -> None:
        """Grow or shrink the filler until exactly ``target`` bytes are free (a multiple of 4 KiB)."""
        if target % BLOCK_BYTES:
            raise ValueError(f"{target} is not a whole number of {BLOCK_BYTES}-byte blocks")
        for _ in range(100):
            free = free_bytes(self.mount)
            if free == target:
                return
            size = self._size()
            if free > target:
                self._resize(size + free - target)
                if self._size() == size:  # nothing allocated in one go: the extent tree needs a block
                    self._resize(size + BLOCK_BYTES)
            else:
                if size == 0:
                    raise RuntimeError(f"{self.mount}: only {free} bytes free without any filler, want {target}")
                self._resize(max(0, size - (target - free)))
        raise RuntimeError(f"{self.mount}: could not reach {target} free bytes (now {free_bytes(self.mount)})")

    def release(self) -> None:
        """Give all the filler's space back."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@contextlib.contextmanager
def mounted_ext4(workdir: str | os.PathLike[str], size_mib: int = 24) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``size_mib`` MiB, loop-mounted under ``workdir``; unmounted and
    its loop device detached on exit, whatever happened inside."""
    workdir = Path(workdir)
    name = f"fs-{uuid.uuid4().hex[:8]}"
    image = workdir / f"{name}.img"
    mount = workdir / name
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(size_mib * 2**20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-b", str(BLOCK_BYTES), str(image)], check=True, capture_output=True
    )
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", device, str(mount)], check=True, capture_output=True)
        try:
            yield mount
        finally:
            _unmount(mount)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        image.unlink()
        with contextlib.suppress(OSError):
            mount.rmdir()


def _unmount(mount: Path) -> None:
    """Unmount, retrying while a just-exited child still holds a file open; lazily as a last resort."""
    for _ in range(50):
        if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
