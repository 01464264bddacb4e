"""Ingest of streams and whole files: put_stream, put_streams, adopt_file.

A stream is copied into a private scratch file (streams.write_aside), then, like an adopted
file, committed as a sealed segment of its own by one rename under the write lock
(``SegmentWriter.commit_sealed_file``): other writers wait only for that rename, never
for the copy. ``Ingest`` adds these to the engine (store.Store) as a subclass rather than
as a helper object, so they stay methods of the one public class and share its lock,
writer and seal hook without an object in between.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any, Iterable

from .arguments import check_stream_item
from .errors import InvalidLocationError
from .index import FLAG_UNCHECKED, KIND_RAW, KIND_ZSTD
from .naming import segment_name
from .seekable import Framing
from .store import Store
from .streams import LazyOpener, examine_for_adoption, read_head, write_aside
from .types import DataLocation


class Ingest(Store):
    """The engine plus stores of streams and adoption of files, each as a sealed segment."""

    def put_stream(self, stream: Any) -> DataLocation:
        """Store everything ``stream`` yields (``readinto`` or ``read``) as one blob, in constant memory.

        The bytes go to a private scratch file first (compressed when
        ``use_compression``), which then becomes a sealed segment of its own by rename:
        other writers wait only for that rename, never for the copy. Same commit and
        crash guarantees as ``put``; a crash mid-copy leaves nothing behind.
        """
        self._refuse_write("put_stream")
        self._reopen_if_closed()
        return self._put_stream(stream, b"")

    def _put_stream(self, stream: Any, prefix: bytes) -> DataLocation:
        framing = Framing(
            self.use_compression,
            self.compression_level,
            self.frame_bytes,
            self.compression_threads,
            self.min_frame_saving,
        )
        written = write_aside(self._dir_fd, self._abs_dir, stream, prefix, framing=framing, fsync=self.fsync)
        kind = KIND_ZSTD if self.use_compression else KIND_RAW
        return self._commit_file(written.name, kind, written.size, written.checksum, 0, written.disk_size)

    def _commit_file(
        self,
        source: str,
        kind: int,
        size: int,
        checksum: int,
        flags: int,  # pylint: disable=too-many-arguments
        disk_size: int,
        *,
        confirm: bool = False,
    ) -> DataLocation:
        """Commit the file ``source`` as a sealed segment; with ``confirm``, return only once the
        sync thread has fsynced it and recorded that in the state page (on disk)."""
        try:
            with self._writing():
                self._writer.resync()
                number = self._writer.commit_sealed_file(source, kind, size, checksum, flags, disk_size)
                sealed = self._writer.take_sealed()
        except BaseException:
            if not os.path.isabs(source):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(source, dir_fd=self._dir_fd)
            raise
        self._after_seal(sealed)
        if confirm:
            self._syncer.wait(number + 1)  # a failed fsync is logged there and raised by sync()
        return DataLocation(str(self.datadir / segment_name(number, kind == KIND_ZSTD)), 0, size)

    def put_streams(
        self,
        streams: Iterable[Any],
        open_streams: bool = False,
        small_bytes: int = 2**20,
        batch_bytes: int = 64 * 2**20,
    ) -> list[DataLocation]:
        """Store many streams; returns their locations in input order.

        Each item is a readable, or (``open_streams=True``) a context manager giving
        one, such as :class:`LazyOpener`; a str or os.PathLike item is opened lazily
        either way. Streams up to ``small_bytes`` are batched through ``put_many``
        (at most ``batch_bytes`` in memory); longer ones go through ``put_stream``. Only
        one input is open at a time.
        """
        self._refuse_write("put_streams")
        for name, value in (("small_bytes", small_bytes), ("batch_bytes", batch_bytes)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"put_streams({name}=) takes an int number of bytes, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"put_streams({name}=) takes a number of bytes >= 0, got {value}")
        if isinstance(streams, (list, tuple)):  # refused before anything is stored
            for position, item in enumerate(streams):
                check_stream_item(item, position, open_streams)
        self._reopen_if_closed()
        locations: list[DataLocation] = []
        pending: list[bytes] = []
        pending_bytes = 0
        for position, item in enumerate(streams):
            check_stream_item(item, position, open_streams)
            if isinstance(item, (str, os.PathLike)):
                item, opened = LazyOpener(item), True
            else:
                opened = open_streams
            with item if opened else contextlib.nullcontext(item) as stream:
                head, ended = read_head(stream, small_bytes)
                if ended:
                    pending.append(head)
                    pending_bytes += len(head)
                else:
                    locations += self.put_many(pending) if pending else []
                    pending, pending_bytes = [], 0
                    locations.append(self._put_stream(stream, head))
            if pending_bytes >= batch_bytes:
                locations += self.put_many(pending)
                pending, pending_bytes = [], 0
        if pending:
            locations += self.put_many(pending)
        return locations

    def adopt_file(self, path: str | os.PathLike[str], *, verify: bool = False) -> DataLocation:
        """Move an existing file into the store as a new sealed segment, by rename: O(1).

        Returns the location of its whole content. A file starting with a Zstandard or
        skippable frame must be a valid seekable Zstandard file (its seek table is
        checked) and becomes a compressed segment; anything else becomes a raw one.
        Without ``verify`` the blob is recorded without a checksum (``verify()`` then
        only checks its framing); with it the file is read once to compute one (O(n)).

        Durability: with ``fsync=True`` the file is fsynced before the commit, and the call
        returns once the state page records it as durable. With ``fsync=False`` nothing waits
        for the disk: the file is fsynced after the commit by the sync thread, as any sealed
        segment (``sync()`` and ``close()`` wait for it). A power loss before that fsync is
        confirmed costs the whole blob when it has no checksum: its segment cannot be checked,
        so the next open removes it and its location raises FlatFileDbNotFoundError
        (GUARANTEES.md "Durability"). With ``verify`` it is checked as any sealed segment.

        Raises InvalidLocationError for a symlink, a non-regular file, a file on another
        filesystem (copy it with ``put_stream`` instead) or inside the datadir, and
        FormatError for a compressed file that is not seekable; the file is then left
        where it was.
        """
        self._refuse_write("adopt_file")
        self._reopen_if_closed()
        source = os.path.abspath(os.fspath(path))
        st = os.lstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidLocationError(f"{source!r}: only a regular file can be adopted (not a symlink, device or dir)")
        if st.st_dev != os.fstat(self._dir_fd).st_dev:
            raise InvalidLocationError(
                f"{source!r} is on another filesystem than {self._dir_str!r}; "
                "a rename cannot move it (use put_stream to copy it)"
            )
        if os.path.samefile(os.path.dirname(source), self._abs_dir):
            raise InvalidLocationError(f"{source!r} is inside the datadir already")
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(st, os.stat(self._abs_lock)):
                # Renamed away, the lock file would be created afresh by the next process: two locks.
                raise InvalidLocationError(f"{source!r} is this store's lock file; it cannot be adopted")
        if st.st_nlink > 1:
            raise InvalidLocationError(
                f"{source!r} has {st.st_nlink} hard links: through another name the committed bytes could "
                "change; remove the other links, or copy it with put_stream"
            )
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            kind, size, checksum = examine_for_adoption(fd, source, st.st_size, verify)
            if self.fsync:
                # Durable before the commit. Without fsync the caller's thread never waits for the disk
                # (the file may be gigabytes of just written pages): the sync thread fsyncs it after.
                os.fsync(fd)
        finally:
            os.close(fd)
        flags = 0 if verify else FLAG_UNCHECKED
        # Unchecked, it is kept after a power loss only when the state page on disk says it was fsynced.
        return self._commit_file(source, kind, size, checksum, flags, st.st_size, confirm=self.fsync and not verify)


__all__ = ["Ingest"]
