"""The store's shared state page: a small memory-mapped file every process maps.

``ffdb.state`` caches what every writer and reader of the mutable segment needs on
each call (which segment is mutable, where its committed bytes end, a deletion
epoch) so that the hot paths read shared memory instead of making ``fstat`` calls.
It is derivable: the opener of a store rebuilds it from the record index under the
write lock, so losing it loses nothing (FORMAT.md, "State page").

Writers change it only while holding the store's write lock. Readers read it without
a lock through a sequence counter (a seqlock): an odd counter, or one that changed
during the read, means "read again".
"""

from __future__ import annotations

import mmap
import os
import uuid
from typing import Any, NamedTuple, Protocol

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # pylint: disable=invalid-name

from .blocks import allocate_for_map
from .errors import FlatFileDbUnsafeAccessError, FormatError
from .naming import STATE_FILE_NAME

STATE_MAGIC = int.from_bytes(b"FFDBSTAT", "little")
STATE_VERSION = 2
STATE_BYTES = 4096

# Word (8-byte) indexes into the page; FORMAT.md "State page".
W_MAGIC = 0
W_VERSION = 1
W_SEQ = 2
W_SEGMENT = 3
W_END = 4  # committed uncompressed bytes of the mutable segment
W_INDEX_BYTES = 5  # committed bytes of its record index
W_DISK_BYTES = 6  # committed bytes of its data file on disk
W_EPOCH = 7  # bumped after any segment file is removed or replaced
W_DIRTY = 8  # a writer is between its first write and its publish
W_DURABLE_END = 9  # uncompressed bytes of the mutable segment known to be fsynced
W_BOOT_LO = 10  # boot id of the machine that last published (power-loss detection)
W_BOOT_HI = 11
W_KIND = 12
W_PADDING = 13  # compressed mutable segment: payload bytes of its padding frame (see segment.py)
W_FRAMES = 14  # compressed mutable segment: number of committed Zstandard frames
W_SYNCED_BELOW = 15  # every segment numbered below this is known to be fsynced since its seal
W_LOCK_DEV = 16  # the lock file the store's writers lock: its st_dev and st_ino (0, 0: not known)
W_LOCK_INO = 17
_SPINS_BEFORE_STUCK = 20_000
_WORD_MASK = 2**64 - 1  # a word of the page holds an unsigned 64-bit value


def _read_boot_id() -> tuple[int, int]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            raw = uuid.UUID(handle.read().strip()).int
    except (OSError, ValueError):
        return (0, 0)  # unknown: every open is treated as after a power loss
    return (raw & 0xFFFFFFFFFFFFFFFF, raw >> 64)


BOOT_ID = _read_boot_id()


class MutableView(NamedTuple):
    """A consistent snapshot of the mutable segment's committed extent (FORMAT.md "State page").

    Writers publish it from their ``segment.Tail`` (``Tail.view``), the same facts plus
    the blob count and whether the segment is sealed.
    """

    segment: int
    end: int  # committed uncompressed bytes
    index_bytes: int  # committed bytes of the record index
    disk_bytes: int  # raw: == end; compressed: bytes of committed frames
    kind: int
    padding: int = 0  # compressed: payload bytes of the padding frame
    frames: int = 0  # compressed: committed frames


def read_view(words: Any) -> MutableView | None:
    """The seqlock read of a state page's words (shared by writers' and read-only maps): a
    consistent MutableView, or None when a publish never finished (its writer died mid-way)."""
    for _ in range(_SPINS_BEFORE_STUCK):
        seq = words[W_SEQ]
        view = MutableView(
            words[W_SEGMENT],
            words[W_END],
            words[W_INDEX_BYTES],
            words[W_DISK_BYTES],
            words[W_KIND],
            words[W_PADDING],
            words[W_FRAMES],
        )
        if not seq & 1 and words[W_SEQ] == seq:
            return view
        os.sched_yield()
    return None


def page_is_current(words: Any) -> bool:
    """True when the words are an initialised state page of this version whose last publish
    happened since this machine booted: its view is then the committed extent on disk."""
    return (
        words[W_MAGIC] == STATE_MAGIC
        and words[W_VERSION] == STATE_VERSION
        and BOOT_ID != (0, 0)
        and (words[W_BOOT_LO], words[W_BOOT_HI]) == BOOT_ID
    )


def sync_page(dir_fd: int) -> None:
    """fsync the state page: after a power loss its word 15 is what it held then. Needed when the
    word comes to cover a file adopted without a checksum, which nothing else could keep: every
    other segment not covered is checked instead (the kernel writes the page back within seconds)."""
    fd = os.open(STATE_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateSource(Protocol):  # pylint: disable=too-few-public-methods  # a structural type
    """What the read side needs of a state page: its words (for the epoch) and the mutable view."""

    words: Any

    def read_mutable(self) -> MutableView | None:
        """A consistent snapshot of the mutable segment, or None when the page needs repair."""


class SharedState:
    """The mapped state page of one store (one instance per FlatFileDb)."""

    def __init__(self, dir_fd: int) -> None:
        """Open (creating if needed) and map the state page. Call under the write lock."""
        fd = os.open(STATE_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            size = os.fstat(fd).st_size
            # Blocks first: every publish stores into this page, and a store into a hole of a full
            # disk is a SIGBUS (a page made by ftruncate is one hole). A full disk fails the open here.
            allocate_for_map(fd, STATE_BYTES, STATE_FILE_NAME)
            self._map = mmap.mmap(fd, STATE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept: its shared flock says this instance has the store open (check_lock_file)
        self.words = memoryview(self._map).cast("Q")
        self.fresh = self.words[W_MAGIC] != STATE_MAGIC or self.words[W_VERSION] != STATE_VERSION
        if self.fresh and size >= STATE_BYTES and self.words[W_MAGIC] not in (0, STATE_MAGIC):
            self.close()
            raise FormatError(f"{STATE_FILE_NAME}: not a state page of this store (bad magic)")

    def same_boot(self) -> bool:
        """True when the last publish happened since this machine booted."""
        words = self.words
        return BOOT_ID != (0, 0) and (words[W_BOOT_LO], words[W_BOOT_HI]) == BOOT_ID

    def read_mutable(self) -> MutableView | None:
        """A consistent snapshot of the mutable segment, without any lock.

        Returns None when a publish never finished (its writer died mid-way): the
        caller repairs the page under the write lock.
        """
        return read_view(self.words)

    def publish(self, view: MutableView) -> None:
        """Make a new mutable segment extent visible, in one seq round. Caller holds the write lock."""
        words = self.words
        seq = words[W_SEQ] | 1  # odd: a dead publisher may already have left it odd
        words[W_SEQ] = seq
        words[W_SEGMENT] = view.segment
        words[W_END] = view.end
        words[W_INDEX_BYTES] = view.index_bytes
        words[W_DISK_BYTES] = view.disk_bytes
        words[W_KIND] = view.kind
        words[W_PADDING] = view.padding
        words[W_FRAMES] = view.frames
        words[W_SEQ] = (seq + 1) & _WORD_MASK  # a page damaged to the last value wraps, not fails

    def mark_cut(self) -> None:
        """A file of the mutable segment may have become shorter: one seq round with no change,
        which tells every writer to map the files afresh (each compares the seq word before a
        store through its maps). Caller holds the write lock."""
        words = self.words
        words[W_SEQ] = ((words[W_SEQ] | 1) + 1) & _WORD_MASK

    def initialise(self) -> None:
        """Stamp magic, version and boot id. Caller holds the write lock."""
        words = self.words
        words[W_VERSION] = STATE_VERSION
        words[W_BOOT_LO], words[W_BOOT_HI] = BOOT_ID
        words[W_MAGIC] = STATE_MAGIC
        self.fresh = False

    def persist(self, dir_fd: int) -> None:
        """fsync the page and its directory entry. Done once when a page is (re)initialised, so
        that after a power loss a new page means no segment was sealed under this one's watch
        (sealed segments are fsynced in the background and confirmed in word W_SYNCED_BELOW)."""
        sync_page(dir_fd)
        os.fsync(dir_fd)

    def bump_epoch(self) -> None:
        """Tell every reader that a segment file was removed or replaced."""
        self.words[W_EPOCH] = (self.words[W_EPOCH] + 1) & _WORD_MASK

    def check_lock_file(self, lock_fd: int, lock_path: str) -> None:
        """Refuse a lock file that is not the one the other open writers of the store lock: it
        was deleted (or replaced) while they run, and this process would lock a new file, so
        two writers would append at once. Records the lock file's identity in the page when no
        other instance has the store open (each open writer instance holds a shared ``flock``
        on the page's file from here to its close). Call under the write lock."""
        if fcntl is None:  # pragma: no cover - Windows: no flock
            return
        info = os.fstat(lock_fd)
        ident = (info.st_dev, info.st_ino)
        words = self.words
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        except OSError:  # a filesystem without flock: nothing to tell open writers by
            return
        recorded = (words[W_LOCK_DEV], words[W_LOCK_INO])
        if not alone and recorded not in ((0, 0), ident):
            raise FlatFileDbUnsafeAccessError(
                f"the lock file {lock_path} is not the file the processes that have this store open lock"
                " (it was deleted or replaced while they run): a writer locking it would write beside"
                " them and lose data. Close every process using the store first, or give the same lock"
                " path (a lock file must stay while any process uses the store)"
            )
        words[W_LOCK_DEV], words[W_LOCK_INO] = ident
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def close(self) -> None:
        """Unmap the page (and let go of the page's shared flock)."""
        self.words.release()
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
