"""Bulk, streamed and zero-copy reads: get_many, iter_many, open_blob, get_view.

``BulkReads`` adds them to the engine (store.Store) as a subclass rather than as a helper
object: get_many's loop reads the engine's reader cache (``_by_path``, ``_words``,
``_epoch``) directly, and an object in between would add an attribute hop per blob on
that loop. Reads go in disk order (segment, then offset), one segment at a time, so any
number of segments can be read within the process's descriptor limit.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Iterable, Iterator

from .errors import InvalidLocationError, RemoteOnlySegmentError
from .reader import MAP_READ_BYTES, BlobFile, SegmentReader, apply_slice, fast_slice
from .state import W_EPOCH
from .store import Store, map_read, new_location
from .tiering.remote_reader import read_groups
from .types import DataLocation, Slice

_DISK_ORDER = operator.itemgetter(0, 1)


def _disk_order(paths: tuple[Any, ...], starts: tuple[Any, ...], by_path: dict[Any, SegmentReader]) -> list[int] | None:
    """Indexes sorted by (segment, offset), or None when the keys do not compare (bad input).

    Segment names are zero-padded, so path order is segment order. When the segments'
    sizes fit one machine word together (the usual case), one sort of small int keys
    does it; else two stable sorts. The order only steers the reads: an offset past its
    segment's size may land out of place, never read the wrong bytes.
    """
    count = len(starts)
    try:
        ranks = sorted(set(paths))
        limits = [reader.limit if (reader := by_path.get(path)) is not None else -1 for path in ranks]
        span = (max(limits) if min(limits) >= 0 else max(starts)) + 1
        if span > 0 and len(ranks) * span < 1 << 30:
            base = {path: rank * span for rank, path in enumerate(ranks)}
            keys = list(map(operator.add, map(base.__getitem__, paths), starts))
            return sorted(range(count), key=keys.__getitem__)
        order = sorted(range(count), key=starts.__getitem__)
        order.sort(key=paths.__getitem__)
        return order
    except TypeError:  # paths of mixed types, offsets that are not numbers
        return None


class BulkReads(Store):
    """The engine plus reads of many blobs and reads that copy nothing."""

    def open_blob(self, location: DataLocation, slice: Slice | None = None) -> BlobFile:  # pylint: disable=redefined-builtin
        """A read-only, seekable binary file object over one blob (raw or compressed), or over
        ``slice`` of it (checked as ``get(location, slice)`` checks it: InvalidLocationError).

        Seeking in a compressed blob costs nothing; reading decompresses only the frames
        read. Use it as a context manager. Not thread-safe: open one per thread.
        """
        file_path, start, end, reader = self._resolve(location)
        start, end = self._readers.check_range(reader, file_path, start, end)
        if slice is not None:
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        return BlobFile(reader, start, end, str(file_path))

    def _in_disk_order(self, locations: Iterable[DataLocation]) -> list[tuple[Any, ...]]:
        """(segment, start, end, input index, location) for each location, sorted on disk.

        Readers are not kept here: reading in this order needs one segment open at a time,
        so any number of segments can be read within the process's descriptor limit.
        """
        lookup = self._lookup
        resolved = []
        for index, location in enumerate(locations):
            _file_path, start, end, reader = lookup(location)
            resolved.append((reader.number, start, end, index, location))
        resolved.sort(key=_DISK_ORDER)
        return resolved

    def _sliced(self, locations: list[DataLocation], slices: Iterable[Slice | None]) -> list[DataLocation]:
        """The locations of ``get(location, slice)`` for each pair; bad slices raise as in get()."""
        parts = slices if isinstance(slices, list) else list(slices)
        if len(parts) != len(locations):
            raise InvalidLocationError(f"get_many: {len(locations)} locations but {len(parts)} slices")
        out = []
        for location, part in zip(locations, parts):
            if part is not None:
                file_path, start, end, reader = self._lookup(location)
                start, end = self._readers.check_range(reader, file_path, start, end)  # the location itself first
                start, end = fast_slice(start, end, part) or apply_slice(file_path, start, end, part)
                location = new_location((file_path, start, end))
            out.append(location)
        return out

    def iter_many(self, locations: Iterable[DataLocation]) -> Iterator[tuple[int, bytes]]:
        """Read many blobs in disk order (segment, offset); yields (input index, bytes).

        Memory holds one blob at a time (plus the sorted list of locations); one
        segment is open at a time.
        """
        lookup = self._lookup
        read = self._readers.read
        number = -1
        reader: SegmentReader | None = None
        file_path: Any = None
        for segment, start, end, index, location in self._in_disk_order(locations):
            if segment != number or reader is None:
                file_path, _start, _end, reader = lookup(location)
                number = segment
            data = map_read(reader, start, end)
            yield index, data if data is not None else read(reader, file_path, start, end)

    def get_many(self, locations: Iterable[DataLocation], slices: Iterable[Slice | None] | None = None) -> list[bytes]:
        """Read many blobs (or slices of them) in one call; returns them in the caller's order.

        Underneath, the reads go in disk order (segment, then offset), one segment at a
        time through its cached reader. ``slices``, when given, pairs one ``Slice`` (or
        ``None`` for the whole blob) with each location, as ``get(location, slice)``
        would. Errors are those of :meth:`get`, for the first bad item in disk order.
        """
        locations = locations if isinstance(locations, list) else list(locations)
        if slices is not None:
            locations = self._sliced(locations, slices)
        count = len(locations)
        out: list[bytes] = [b""] * count
        if count == 0:
            return out
        if self._tier is not None:
            return self._get_many_tiered(locations)
        return self._get_many_local(locations, out)

    def _get_many_local(self, locations: list[DataLocation], out: list[bytes]) -> list[bytes]:
        """get_many of locations in local segments (``out``: as many empty slots)."""
        try:  # columns first (this pass pays the cache misses on the items), then the type check
            paths, starts, ends = itertools.islice(zip(*locations), 3)
        except (TypeError, ValueError):  # an item that is not a sequence of three: get() says why
            paths = ()
        # bool is an int that get() refuses as an offset; the mapped loop would read it as 0 or 1.
        if paths and {*map(type, locations)} == {DataLocation} and bool not in {*map(type, starts), *map(type, ends)}:
            order = _disk_order(paths, starts, self._by_path if self._words[W_EPOCH] == self._epoch else {})
            if order is not None:
                self._read_mapped(locations, order, paths, starts, ends, out)
                return out
        for *_disk, index, location in self._in_disk_order(locations):  # unusual input: one get() each
            out[index] = self.get(location)
        return out

    def _read_mapped(
        self,
        locations: list[DataLocation],
        order: list[int],
        paths: tuple[Any, ...],
        starts: tuple[int, ...],
        ends: tuple[int, ...],
        out: list[bytes],
    ) -> None:
        """get_many's loop: ``out[i]`` = blob ``i``, read in ``order``, from the mappings where possible."""
        by_path = self._by_path if self._words[W_EPOCH] == self._epoch else {}
        for file_path, group in itertools.groupby(order, paths.__getitem__):
            reader = by_path.get(file_path)
            mm: Any = None
            mapped = 0
            if reader is not None:
                mm, mapped = reader.mm, reader.mapped
            for index in group:
                start = starts[index]
                end = ends[index]
                try:  # map_read's test, inlined: a call per blob would slow get_many by a fifth
                    if 0 <= start < end <= mapped and end - start <= MAP_READ_BYTES:
                        out[index] = mm[start:end]
                        continue
                except TypeError:  # offsets that are not ints: get() names the problem
                    pass
                # not mapped yet, compressed, large, empty or bad: get() reads it or says why
                out[index] = self.get(locations[index])
                by_path = self._by_path  # get() resolved it: the cache is current now
                if (reader := by_path.get(file_path)) is not None:
                    mm, mapped = reader.mm, reader.mapped

    def _get_many_tiered(self, locations: list[DataLocation]) -> list[bytes]:
        """get_many with some segments in the bucket: their ranges are fetched together, per segment."""
        out: list[bytes] = [b""] * len(locations)
        local: list[int] = []
        remote: dict[int, tuple[SegmentReader, list[int], list[tuple[int, int]]]] = {}
        for index, location in enumerate(locations):
            file_path, start, end, reader = self._lookup(location)
            if not reader.REMOTE:
                local.append(index)
                continue
            start, end = self._readers.check_range(reader, file_path, start, end)
            entry = remote.setdefault(reader.number, (reader, [], []))
            entry[1].append(index)
            entry[2].append((start, end))
        if remote:
            read_groups(list(remote.values()), out)
        if local:
            local_out = self._get_many_local([locations[i] for i in local], [b""] * len(local))
            for index, data in zip(local, local_out):
                out[index] = data
        return out

    def get_view(self, location: DataLocation, slice: Slice | None = None) -> memoryview:  # pylint: disable=redefined-builtin
        """A read-only, zero-copy ``memoryview`` of a blob in a raw segment (memory-mapped).

        The view stays valid as long as you hold it, even if the segment is deleted
        meanwhile (the mapping keeps the file). Compressed segments have no bytes to
        map: InvalidLocationError (use ``get``, or recompress the segment raw).
        ``numpy.frombuffer(view, dtype=...)`` makes an array without a copy.
        """
        # _lookup inlined, as in get(): a view is a hot read path, and the call costs a tenth of it.
        if (
            location.__class__ is DataLocation
            and self._words[W_EPOCH] == self._epoch
            and (reader := self._by_path.get(location[0])) is not None
        ):
            file_path, start, end = location
        else:
            file_path, start, end, reader = self._resolve(location)
        if slice is not None:  # the location itself first, as in get()
            if start.__class__ is not int or end.__class__ is not int or not 0 <= start <= end <= reader.limit:
                start, end = self._readers.check_range(reader, file_path, start, end)
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        if start == end and type(start) is int:  # pylint: disable=unidiomatic-typecheck
            self._readers.check_range(reader, file_path, start, end)
            return memoryview(b"")
        view = reader.view
        if type(start) is int and type(end) is int and 0 <= start <= end <= reader.mapped and view is not None:  # pylint: disable=unidiomatic-typecheck
            return view[start:end]
        start, end = self._readers.check_range(reader, file_path, start, end)
        if reader.REMOTE:
            raise RemoteOnlySegmentError(f"{file_path}: the segment is in the object store only; use get()")
        if not reader.raw:
            raise InvalidLocationError(f"{file_path}: a compressed segment has no bytes to map; use get()")
        if end > reader.mapped:
            reader.remap()
        view = reader.view
        if view is None or end > reader.mapped:
            raise InvalidLocationError(f"{file_path}: bytes {start}..{end} cannot be mapped")
        return view[start:end]


__all__ = ["BulkReads"]
