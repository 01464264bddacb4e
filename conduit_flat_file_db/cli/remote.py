"""``ffdb --remote URL get|ls|verify``: the store a writer uploaded to ``s3://BUCKET/PREFIX``,
opened with :meth:`FlatFileDb.open_remote` (read-only, no datadir).

:class:`RemoteStore` gives that read-only store the few calls ``cmd_get``, ``cmd_ls`` and
``cmd_verify`` make on a local one, so the three commands run the same code (and print the
same way) on either; a location names its segment by the file name alone, since the
directory in it is the writer's and means nothing here.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Iterator

from .. import DataLocation, FlatFileDb
from ..errors import InvalidLocationError
from ..naming import parse_segment_name, segment_name
from ..types import pack_location_parts, unpack_location_parts

if TYPE_CHECKING:
    from ..reader import BlobFile
    from ..tiering.remote_db import RemoteFlatFileDb
    from ..verify import VerifyReport


class RemoteStore:
    """The read calls of the ``ffdb`` commands, served by :meth:`FlatFileDb.open_remote`."""

    # parse_location joins a bare FILE_PATH with the datadir: here there is none, the name stays bare.
    datadir = ""

    def __init__(self, url: str) -> None:
        self.db: RemoteFlatFileDb = FlatFileDb.open_remote(url)

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.db.close()

    def get_many(self, locations: list[DataLocation]) -> list[bytes]:
        """Small blobs in the order given (one coalesced fetch per segment)."""
        return self.db.get_many(locations)

    def open_blob(self, location: DataLocation) -> BlobFile:
        """A large blob, read in chunks."""
        return self.db.open_blob(location)

    def iter_locations(self) -> Iterator[DataLocation]:
        """Every uploaded blob, in disk order, named by segment file name."""
        return self.db.iter_locations()

    def pack_location(self, location: DataLocation) -> bytes:
        """The packed form a local store gives the same blob (segment number and offsets)."""
        number = parse_segment_name(os.path.basename(location.file_path))
        if number is None:
            raise InvalidLocationError(f"{location.file_path!r} is not a segment file name")
        return pack_location_parts(number, location.start_offset, location.end_offset)

    def unpack_location(self, packed: bytes) -> DataLocation:
        """Inverse of :meth:`pack_location`; the suffix is immaterial (a segment is found by number)."""
        try:
            number, start, end = unpack_location_parts(packed)
        except ValueError as exc:
            raise InvalidLocationError(str(exc)) from None
        return DataLocation(segment_name(number, False), start, end)

    def verify(self, full: bool = True, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """``open_remote``'s verify; it reports no progress (``progress`` is never called)."""
        del progress
        return self.db.verify(full=full)


__all__ = ["RemoteStore"]
