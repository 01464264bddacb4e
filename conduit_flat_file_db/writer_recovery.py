"""Recovery of the store as a writer opens it (FORMAT.md "Recovery"): scratch files of dead
processes and indexes of interrupted deletes removed, the newest segment recovered (and, after
a power loss, sealed and continued in a new one), sealed segments not yet known durable
checked and fsynced, and the state page published.

``WriterRecovery`` is a base class of ``writer.SegmentWriter`` (recovery runs with the
writer's descriptors and state, under its write lock); the per-segment work it calls is in
recovery.py (a segment's torn tail cut, its index rebuilt) and seal.py (sealing and fsync).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from .errors import FlatFileDbUnsafeAccessError, FormatError, IndexVersionError
from .fileio import list_dir
from .frames import SKIPPABLE_HEADER_BYTES
from .index import HEADER_BYTES, KIND_ZSTD, decode_header
from .naming import (
    INDEX_SUFFIX,
    MAX_SEGMENT_NUMBER,
    REMOTE_SUFFIX,
    ZSTD_SUFFIX,
    index_name,
    parse_name,
    segment_name,
    temp_owner,
)
from .recovery import recover_segment
from .seal import holds_unchecked, reseal_segment, seal_problem, seal_recovered, sync_segment
from .seekable import growing_table_bytes, listed_frames, padding_header
from .segment import Tail, create_segment
from .segment_files import fsync_dir, index_ends_where_page_says, open_regular, read_index
from .state import W_DIRTY, W_DURABLE_END, W_SEGMENT, W_SYNCED_BELOW, SharedState, sync_page

logger = logging.getLogger("conduit_flat_file_db")


def last_segment_error(number: int, whole_file: bool = False) -> FlatFileDbUnsafeAccessError:
    """The error of a store that has reached the last segment number the format can name."""
    why = " (committing a whole file takes two more)" if whole_file else ""
    return FlatFileDbUnsafeAccessError(
        f"the store is at segment {number} and {MAX_SEGMENT_NUMBER} is the last segment number the format can "
        f'name (FORMAT.md "Files": n < 2**32): it cannot start another segment{why}. Every committed blob '
        "stays readable; copy the live ones into a new store to go on writing"
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listed_frames_at(dir_fd: int, number: int, table_at: int, frames: int) -> int | None:
    """How many of its ``frames`` frames the seek table at ``table_at`` of compressed segment
    ``number``'s data file lists (seekable.listed_frames), or None when no such table is there."""
    try:
        fd = open_regular(dir_fd, segment_name(number, True))
    except (OSError, ValueError):
        return None
    try:
        return listed_frames(fd, table_at, frames)
    finally:
        os.close(fd)


def _padding_header_at(dir_fd: int, number: int, offset: int) -> int | None:
    """The payload size of the padding frame at ``offset`` of compressed segment ``number``'s
    data file, or None when none starts there."""
    try:
        fd = open_regular(dir_fd, segment_name(number, True))
    except (OSError, ValueError):
        return None
    try:
        head = os.pread(fd, SKIPPABLE_HEADER_BYTES, offset)
    finally:
        os.close(fd)
    if len(head) != SKIPPABLE_HEADER_BYTES or head[:4] != padding_header(0)[:4]:
        return None
    return int.from_bytes(head[4:], "little")


class WriterRecovery:
    """Recovery steps of a writer (write lock held by the caller)."""

    # Set by SegmentWriter.
    dir_fd: int
    datadir: Path
    state: SharedState
    words: memoryview  # the state page, as words
    new_kind: int  # kind of segments this instance creates
    new_version: int  # index version of the segments this instance creates
    lost: list[int]  # segments removed by this instance's recoveries: unverifiable after a power loss

    def recover(self, power_loss_check: bool, may_defer: bool = False) -> None:
        """Full recovery of the store's newest segment (FORMAT.md "Recovery"); publishes the state.

        ``may_defer`` (on open): when the newest segment is sealed and the disk has no room for
        the next one, publish the sealed one and leave the dirty flag up instead of failing, so
        that a store on a full disk still opens to be read and to have segments deleted; the
        next writer creates the segment (or gets the ENOSPC).
        """
        state = self.state
        words = self.words
        data_numbers, index_numbers, remote_numbers, both_kinds = self._list_segments()
        numbers = data_numbers | index_numbers
        created = not numbers
        if created:
            create_segment(self.dir_fd, 0, self.new_kind, self.new_version)
            numbers.add(0)
        newest = max(numbers)
        self._remove_rewrite_leftovers(both_kinds, newest)
        for orphan in sorted(index_numbers - data_numbers - remote_numbers - {newest}):
            # A delete removes the data file first: an index alone is the rest of it.
            self._remove_regular(index_name(orphan), "record index", "left by an interrupted delete")
        if power_loss_check and self._page_is_committed_state(newest, data_numbers, index_numbers):
            return
        check_from: int | None = None
        if power_loss_check and (state.fresh or not state.same_boot()):
            same_segment = not state.fresh and words[W_SEGMENT] == newest
            check_from = words[W_DURABLE_END] if same_segment else 0
        tail = recover_segment(self.dir_fd, newest, self.new_kind, check_from)
        if check_from is not None and not tail.sealed and not created and newest in index_numbers:
            # After a power loss (or with the state page lost) nothing tells how far puts got
            # before it: continue in a new segment, so a lost blob's offsets are never reused.
            # (A segment without an index never had a record: recovery gave it one just now.)
            tail = seal_recovered(self.dir_fd, newest)  # its SEAL counted: a last segment stays sealed
            data_numbers.discard(newest)  # just checked, sealed and fsynced
        deferred = False
        if tail.sealed and newest < MAX_SEGMENT_NUMBER:
            try:
                newest, tail = self._create_next(newest)
            except OSError as exc:
                if not may_defer or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                logger.warning(
                    "%s: no room to create the segment after sealed segment %d (%s); the next writer creates it",
                    self.datadir,
                    newest,
                    exc,
                )
                deferred = True
        elif tail.sealed:  # nothing can follow it: published as it is, readable, refused to writers (resync)
            logger.warning("%s: %s", self.datadir, last_segment_error(newest))
        adopted = power_loss_check and self._settle_sealed(sorted(n for n in data_numbers if n < newest), newest)
        if check_from is not None or state.fresh:
            words[W_DURABLE_END] = tail.end if check_from is not None else 0
        was_fresh = state.fresh
        state.initialise()
        if was_fresh:
            state.persist(self.dir_fd)
        state.publish(tail.view(newest))
        words[W_DIRTY] = int(deferred)  # deferred: every segment below the sealed one is sealed too
        if adopted and not was_fresh:
            sync_page(self.dir_fd)  # word 15 now covers an adopted file: what keeps it after a power loss

    def _page_is_committed_state(self, newest: int, data_numbers: set[int], index_numbers: set[int]) -> bool:
        """Whether an open may take the state page as it is instead of recovering the newest segment.

        True when the page was published in this boot (no power loss since), no writer stopped
        mid-operation (the dirty flag is down: every commit, rotation and cut raises it until
        done), it publishes the newest segment, and that segment's files hold at least what it
        says is committed (a compressed data file: exactly that, then its padding frame and table
        where the page says). Then the page is the committed extent, as every writer already
        trusts it between opens, and decoding the segment's whole record index (about a
        second for a 128 MiB segment of 1 KiB blobs) would only find the same numbers.
        """
        state, words = self.state, self.words
        if state.fresh or not state.same_boot() or words[W_DIRTY] or words[W_SEGMENT] != newest:
            return False
        view = state.read_mutable()
        if view is None or newest not in data_numbers or newest not in index_numbers:
            return False
        compressed = view.kind == KIND_ZSTD
        try:
            data_size = os.stat(segment_name(newest, compressed), dir_fd=self.dir_fd, follow_symlinks=False).st_size
            raw_index = read_index(self.dir_fd, newest, HEADER_BYTES)
            index_size = os.stat(index_name(newest), dir_fd=self.dir_fd, follow_symlinks=False).st_size
        except OSError:
            return False  # e.g. the other suffix (the page's kind is not the file's): recovery sorts it out
        if raw_index is None or len(raw_index) < HEADER_BYTES:
            return False
        try:
            header = decode_header(raw_index, index_name(newest))  # a newer release's index: refused here too
        except IndexVersionError:
            raise
        except FormatError:
            return False
        # A compressed file is exactly its frames, padding frame and table, the padding frame right
        # after the frames: a page whose frames end, padding or frame count disagrees with the file
        # would send the next put's frame or table entries into the padding (the file then no
        # seekable file, its seal's table wrong), so such a page is recovered, not trusted. The
        # table may lag (put_mapped_zstd): it lists at most the page's frames. A raw file may hold
        # room past its committed end.
        committed = view.disk_bytes
        if compressed:
            committed += SKIPPABLE_HEADER_BYTES + view.padding
            listed = _listed_frames_at(self.dir_fd, newest, committed, view.frames)
            committed += growing_table_bytes(view.frames if listed is None else listed)
        return (
            header.segment == newest
            and header.kind == view.kind
            and (data_size == committed if compressed else data_size >= committed == view.end)
            and index_size >= max(view.index_bytes, HEADER_BYTES)
            and (not compressed or _padding_header_at(self.dir_fd, newest, view.disk_bytes) == view.padding)
            and index_ends_where_page_says(self.dir_fd, newest, view)
        )

    def _list_segments(self) -> tuple[set[int], set[int], set[int], set[int]]:
        """Numbers of the segments with a data file, with an index, uploaded to the tier (a
        ``.remote`` marker: its data file may be only in the bucket), and with data files of both
        kinds; removes the scratch files of processes that are gone (recovery step 1)."""
        data_numbers: set[int] = set()
        index_numbers: set[int] = set()
        remote_numbers: set[int] = set()
        zstd_numbers: set[int] = set()
        by_suffix = {INDEX_SUFFIX: index_numbers, REMOTE_SUFFIX: remote_numbers, ZSTD_SUFFIX: zstd_numbers}
        for name in list_dir(self.dir_fd):
            owner = temp_owner(name)
            if owner is not None:
                if owner != os.getpid() and not _pid_alive(owner):
                    self._remove_regular(name, "scratch file", "left by an interrupted operation")
                continue
            parsed = parse_name(name)
            if parsed is not None:
                by_suffix.get(parsed[1], data_numbers).add(parsed[0])
        return data_numbers | zstd_numbers, index_numbers, remote_numbers, data_numbers & zstd_numbers

    def _remove_rewrite_leftovers(self, both_kinds: set[int], newest: int) -> None:
        """A rewrite that changes a sealed segment's kind renames the new file in, then unlinks
        the old one (under the write lock, which recovery holds): a sealed segment with both
        names is one whose rewrite died between the two. Both files hold its bytes whole, and
        readers take the raw one: the compressed one goes. (The newest segment is never
        rewritten: two names there are not this, and are left to recovery.)"""
        for number in sorted(n for n in both_kinds if n < newest):
            self._remove_regular(
                segment_name(number, True),
                "compressed data file",
                f"beside the raw data file of sealed segment {number}, left by an interrupted rewrite "
                "(the raw one is read and kept)",
            )

    def _remove_regular(self, name: str, what: str, why: str) -> None:
        """Remove a leftover of ours, but only a regular file: a directory, FIFO or symlink of
        that name is not something the store wrote, so it is left alone (and verify notes it)
        rather than failing the open with an IsADirectoryError."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                logger.warning(
                    "%s: %s is named like a %s but is not a regular file; left alone", self.datadir, name, what
                )
                return
            logger.warning("%s: removing %s %s %s", self.datadir, what, name, why)
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass  # removed meanwhile (another opener of the store)

    def _settle_sealed(self, sealed: list[int], mutable: int) -> bool:
        """On open after a power loss: make whole and durable every sealed segment not known to be fsynced.

        Those are the segments from word W_SYNCED_BELOW on (all of them when the state
        page is new): their fsync runs in the background after the seal, and a process
        may have died (or closed with ``fsync=False``) before it. After a power loss they
        are checked (in full, or by size only when the page is new) and a damaged one is
        cut back to its last good blob and sealed again, but a file adopted without a
        checksum cannot be checked: it is removed (``_remove_lost``). Then each is fsynced.
        Returns whether one of them is such an adopted file: the caller then fsyncs the
        state page, whose word 15 is what keeps that segment after the next power loss.

        In the same boot nothing is lost: the opener's sync thread fsyncs them afterwards
        (``SealSyncer.request``), so an open never waits for the disk.
        """
        state = self.state
        after_power_loss = state.fresh or not state.same_boot()
        if not after_power_loss:
            return False
        below = 0 if state.fresh else self.words[W_SYNCED_BELOW]
        adopted = False
        for number in sealed:
            if number < below:
                continue
            why = seal_problem(self.dir_fd, number, full=not state.fresh)
            if why is not None and holds_unchecked(self.dir_fd, number):
                self._remove_lost(number, why)
                continue
            if why is not None:
                reseal_segment(self.dir_fd, number, why)
            sync_segment(self.dir_fd, number)
            adopted = adopted or holds_unchecked(self.dir_fd, number)
        self.words[W_SYNCED_BELOW] = mutable
        return adopted

    def _remove_lost(self, number: int, why: str) -> None:
        """Remove a sealed segment whose blob cannot be checked after a power loss (a file adopted
        without a checksum and without a confirmed fsync): its blocks may hold zeros or stale bytes,
        and a location must never read bytes that are not its blob. Its locations then raise
        FlatFileDbNotFoundError, as those of a deleted segment; with ``fsync=False`` a power loss may
        cost the blobs of the segments sealed last, and this is such a loss."""
        removed = []
        for name in (segment_name(number, False), segment_name(number, True), index_name(number)):
            try:
                os.unlink(name, dir_fd=self.dir_fd)  # data first: a lone index is removed by the next open
            except FileNotFoundError:
                continue
            removed.append(name)
        fsync_dir(self.dir_fd)
        logger.error(
            "%s: removed %s after a power loss: %s, and its fsync was not confirmed before the loss; its blob is lost",
            self.datadir,
            " and ".join(removed),
            why,
        )
        self.state.bump_epoch()
        self.lost.append(number)

    def _create_next(self, sealed: int) -> tuple[int, Tail]:
        """Create segment sealed+1, removing leftovers of a rotation that died half-way."""
        new = sealed + 1
        for name in (index_name(new), segment_name(new, False), segment_name(new, True)):
            try:
                os.unlink(name, dir_fd=self.dir_fd)  # nothing committed can be in them: no SEAL
            except FileNotFoundError:
                pass
        return new, create_segment(self.dir_fd, new, self.new_kind, self.new_version)


__all__ = ["WriterRecovery", "last_segment_error"]
