"""The read side of a store opened with ``readonly=True``: what is committed, found without writing.

A writer's open takes the write lock, runs recovery (which may cut a torn tail) and
creates the state page. A read-only open may do none of that: it must work on a
read-only mount and for a user who may not write the datadir, and must not wait for
the lock. So it learns the committed extent of the mutable segment in one of two ways
(GUARANTEES.md "Read-only opens"):

- from the shared state page, mapped read-only, when the page was published since this
  machine booted: writers publish every commit there, so each read sees their puts as
  soon as they return (the same seqlock read as a writer's instance makes);
- otherwise (no page, a page this user cannot read, one left by another boot) from the
  mutable segment's record index: the records are walked as recovery walks them, up to
  the last commit point whose blobs lie inside the data file, without cutting anything.
  After a possible power loss, blobs not known to be durable are checked against their
  XXH3-64 first. The walk is resumed from its last commit point whenever the read side
  asks again, which it does when a location lies past the end it knows.

A torn tail (a crashed writer's cut index record, bytes after the last commit) is past
the committed end either way, so it is never served. Rejected: taking the read lock to
open (it waits for writers and maintenance, and needs the lock file to be writable).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import Any

from .errors import FlatFileDbNotFoundError, FormatError, IndexVersionError
from .fileio import list_dir
from .index import (
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    RECORD_BYTES,
    decode_header,
    decode_records,
)
from .naming import STATE_FILE_NAME, index_name, parse_name
from .recovery import Walk
from .seal import seal_problem
from .segment_files import (
    OPEN_READ,
    index_ends_where_page_says,
    open_data_file,
    open_regular,
    valid_records_from,
)
from .state import (
    STATE_BYTES,
    STATE_MAGIC,
    STATE_VERSION,
    W_DURABLE_END,
    W_EPOCH,
    W_MAGIC,
    W_SEGMENT,
    W_SYNCED_BELOW,
    W_VERSION,
    MutableView,
    page_is_current,
    read_view,
)

_WORDS = STATE_BYTES // 8


def open_datadir(abs_dir: str, dir_str: str) -> int:
    """A descriptor of an existing store's directory, opened for reading; creates nothing.

    Raises FlatFileDbNotFoundError (a FileNotFoundError) when the directory is missing,
    is not a directory or holds no segment file (not a store), and PermissionError when
    this user may not read it.
    """
    try:
        dir_fd = os.open(abs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FlatFileDbNotFoundError(
            errno.ENOENT, "the datadir does not exist (a read-only open creates nothing)", dir_str
        ) from None
    except NotADirectoryError:
        raise FlatFileDbNotFoundError(errno.ENOENT, "not a directory, so not a datadir", dir_str) from None
    try:
        if not any(parse_name(name) is not None for name in list_dir(dir_fd)):
            raise FlatFileDbNotFoundError(
                errno.ENOENT,
                "not a store: the directory holds no segment file (a read-only open creates nothing)",
                dir_str,
            )
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def _map_page(dir_fd: int) -> tuple[mmap.mmap | None, Any]:
    """The state page mapped read-only and its words, or (None, None) where it cannot be."""
    try:
        fd = os.open(STATE_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:  # missing, not readable by this user, a symlink
        return None, None
    try:
        if os.fstat(fd).st_size < STATE_BYTES:
            return None, None
        page = mmap.mmap(fd, STATE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError):
        return None, None
    finally:
        os.close(fd)
    return page, memoryview(page).cast("Q")


class ReadOnlyState:
    """The committed extent of a store's mutable segment, for a read-only instance (see the module)."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        self._map, page_words = _map_page(dir_fd)
        self._page = page_words
        # The epoch word tells readers that segment files were removed or replaced: writers
        # bump it in the page. Without a page, a local word is bumped when a scan finds the
        # set of segment files changed.
        self.words: Any = page_words if page_words is not None else [0] * _WORDS
        self._names: frozenset[str] = frozenset()
        self._walk: Walk | None = None
        self._walked: tuple[int, int] = (-1, -1)  # (segment, kind) the walk belongs to
        self._scan_lock = threading.Lock()  # one walk at a time: threads share the instance
        self._page_checked: MutableView | None = None  # the last page view found to agree with the index
        # The mutable segment's index file, kept open for those checks (a pread each, not an
        # open, a pread and a close: a follower of a busy writer checks at nearly every read).
        self._check_lock = threading.Lock()
        self._check_fd = -1
        self._check_segment = -1
        self._sealed_checked: dict[int, str | None] = {}  # sealed segment -> why it is not whole (None: it is)

    def read_mutable(self) -> MutableView:
        """The committed extent now: the page's when it is current, else the index's (never None)."""
        page = self._page
        if page is not None and page_is_current(page):
            view = read_view(page)
            # None: a publisher died mid-way. A view the index disagrees with: a page damaged since
            # its publish (else a location there would be served the room's zeros, or fail inside).
            # Either way the index says what is committed. Checked once per view: two records read.
            if view is not None and (view == self._page_checked or self._page_agrees(view)):
                return view
        return self.scan()

    def _page_agrees(self, view: MutableView) -> bool:
        """Whether the segment's record index ends where ``view`` says (remembered when it does).
        Read through the index file kept open, and once more through a new descriptor when that
        one disagrees (a file replaced since it was opened)."""
        with self._check_lock:
            agrees = False
            for fresh in (False, True):
                kept = self._check_fd >= 0 and self._check_segment == view.segment
                if fresh or not kept:
                    self._close_check_fd()
                    try:
                        self._check_fd = os.open(index_name(view.segment), OPEN_READ, dir_fd=self.dir_fd)
                    except OSError:
                        break
                    self._check_segment = view.segment
                try:
                    agrees = index_ends_where_page_says(
                        self.dir_fd, view.segment, view, check_next=False, index_fd=self._check_fd
                    )
                except OSError:
                    agrees = False
                if agrees or not kept:
                    break
        if agrees:
            self._page_checked = view
        return agrees

    def _close_check_fd(self) -> None:
        fd, self._check_fd, self._check_segment = self._check_fd, -1, -1
        if fd >= 0:
            os.close(fd)

    def current_page(self) -> Any:
        """The state page's words when the page is current (its view is the committed extent), else None."""
        page = self._page
        return page if page is not None and page_is_current(page) else None

    def repair(self) -> None:
        """Never needed: :meth:`read_mutable` never returns None (a writer's instance repairs the page)."""

    def scan(self) -> MutableView:
        """The committed extent of the newest segment from its record index (resumed walk)."""
        with self._scan_lock:
            return self._scan()

    def _scan(self) -> MutableView:
        names = frozenset(list_dir(self.dir_fd))
        if names != self._names:
            if self._page is None and self._names:
                self.words[W_EPOCH] += 1
            self._names = names
        numbers = [parsed[0] for parsed in map(parse_name, names) if parsed is not None]
        newest = max(numbers, default=0)
        try:
            data_fd, kind = open_data_file(self.dir_fd, newest)
        except FlatFileDbNotFoundError:  # an index alone: a segment being created, nothing in it yet
            return MutableView(newest, 0, HEADER_BYTES, 0, KIND_RAW)
        try:
            return self._walk_index(newest, kind, data_fd)
        finally:
            os.close(data_fd)

    def _walk_index(self, number: int, kind: int, data_fd: int) -> MutableView:
        data_size = os.fstat(data_fd).st_size
        walk = self._walk if self._walked == (number, kind) else None
        try:
            index_fd = open_regular(self.dir_fd, index_name(number))  # a FIFO or directory: refused, typed
        except FileNotFoundError:
            index_fd = -1
        try:
            if index_fd < 0 or (walk is None and not self._header_fits(index_fd, number, kind)):
                # Written without an index (or it lost it): a writer's open indexes and seals it.
                return _sealed_view(number, kind, data_size)
            if walk is None:
                walk = Walk(data_fd, kind, data_size, self._check_from(number))
                self._walk, self._walked = walk, (number, kind)
            walk.data_fd = data_fd
            first = walk.resume(data_size)
            at = HEADER_BYTES + first * RECORD_BYTES
            raw = valid_records_from(index_fd, at, os.fstat(index_fd).st_size)
        finally:
            if index_fd >= 0:
                os.close(index_fd)
        walk.run(decode_records(raw).records, first)
        tail = walk.commit()
        if tail.sealed:
            return MutableView(number + 1, 0, HEADER_BYTES, 0, kind)  # sealed; the next not created yet
        return tail.view(number)

    @staticmethod
    def _header_fits(index_fd: int, number: int, kind: int) -> bool:
        try:
            header = decode_header(os.pread(index_fd, HEADER_BYTES, 0), index_name(number))
        except IndexVersionError:
            raise  # a newer release's index: not served as a segment without one
        except FormatError:
            return False
        return bool(header.segment == number and header.kind == kind)

    def sealed_problem(self, number: int) -> str | None:
        """Why sealed segment ``number`` may not be served as it is, or None.

        After a power loss a segment sealed shortly before it may hold zeros where its data
        never reached the disk, and only a writer's open repairs that (cuts it back to its
        last good blob). Until a writer has published the page in this boot, such segments
        are checked here once, as that open would check them: in full when the page names
        the segments not yet confirmed durable (word 15 up), by sizes when there is no page
        of ours. A damaged one is refused as a whole: reading its intact blobs would need
        the cut that a read-only open may not make.
        """
        page = self._page
        if page is not None and page_is_current(page):
            return None
        ours = page is not None and page[W_MAGIC] == STATE_MAGIC and page[W_VERSION] == STATE_VERSION
        if ours and number < page[W_SYNCED_BELOW]:
            return None
        if number not in self._sealed_checked:
            self._sealed_checked[number] = seal_problem(self.dir_fd, number, full=ours)
        return self._sealed_checked[number]

    def _check_from(self, number: int) -> int | None:
        """Where checksums start to matter: blobs ending past it are checked before they count.

        Nothing needs checking when the page is current (its commits are on disk or in the
        page cache). A page from another boot knows what was durable in its segment; with no
        page at all nothing is known, so every blob of the mutable segment is checked once.
        """
        page = self._page
        if page is not None and page_is_current(page):
            return None
        if (
            page is not None
            and page[W_MAGIC] == STATE_MAGIC
            and page[W_VERSION] == STATE_VERSION
            and page[W_SEGMENT] == number
        ):
            return int(page[W_DURABLE_END])
        return 0

    def close(self) -> None:
        """Unmap the page (no page is current afterwards: log_moved says the log may have moved)."""
        if self._map is not None:
            page, self._page = self._page, None
            page.release()
            self._map.close()
            self._map = None
        self._walk = None
        with self._check_lock:
            self._close_check_fd()


def _sealed_view(number: int, kind: int, data_size: int) -> MutableView:
    """A newest segment without a usable index: empty, nothing is committed in it; else its
    bytes are committed as a whole (as a writer's open would index and seal them)."""
    if data_size == 0:
        return MutableView(number, 0, HEADER_BYTES, 0, kind if kind in (KIND_RAW, KIND_ZSTD) else KIND_RAW)
    return MutableView(number + 1, 0, HEADER_BYTES, 0, kind)


__all__ = ["ReadOnlyState", "open_datadir"]
