"""``ffdb`` get, ls, info, verify, stats, rotate, delete, retention and recompress: each one or
two calls of :class:`FlatFileDb` and the printing of what they return (get, ls and verify also
of a :class:`RemoteStore`: ``--remote``).

``get`` streams a blob larger than ``SMALL_BLOB_BYTES`` to standard output
``READ_CHUNK_BYTES`` at a time through ``open_blob``; smaller ones are read
``BATCH_BYTES`` at a time through ``get_many`` (disk order).
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import sys
from typing import BinaryIO, Sequence

from .. import CompressMode, DataLocation, FlatFileDb, Slice
from ..reader import apply_slice
from .base import (
    BATCH_BYTES,
    EXIT_OK,
    EXIT_PROBLEMS,
    READ_CHUNK_BYTES,
    SMALL_BLOB_BYTES,
    CliError,
    parse_location,
    print_json,
    print_line,
    segment_arg,
    write_all,
)
from .progress import Bar, NoBar, make_bar, progress_stream
from .remote import RemoteStore


def _sliced(locations: list[DataLocation], slice_: Sequence[int] | None) -> list[DataLocation]:
    """Each location narrowed to ``--slice START END`` (checked against each blob, as get(slice=) does)."""
    if slice_ is None:
        return locations
    part = Slice(*slice_)
    return [
        DataLocation(location.file_path, *apply_slice(location.file_path, *location[1:], part))
        for location in locations
    ]


def _stream_blob(db: FlatFileDb | RemoteStore, location: DataLocation, out: BinaryIO, progress: Bar) -> None:
    """Copy one blob to ``out`` ``READ_CHUNK_BYTES`` at a time (constant memory)."""
    with db.open_blob(location) as blob:
        remaining = blob.size
        while remaining:
            chunk = blob.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                raise CliError(f"{blob.name}: blob ended {remaining} bytes early")
            write_all(out, chunk)
            remaining -= len(chunk)
            progress.update(len(chunk))


def _write_batch(db: FlatFileDb | RemoteStore, batch: list[DataLocation], out: BinaryIO, progress: Bar) -> None:
    """Read small blobs in one ``get_many`` (disk order) and write them in the order given."""
    for data in db.get_many(batch):
        write_all(out, data)
        progress.update(len(data))
    batch.clear()


def cmd_get(db: FlatFileDb | RemoteStore, args: argparse.Namespace) -> int:
    """``ffdb get LOCATION... [--slice START END]``: every argument is checked before a byte is written."""
    locations = _sliced([parse_location(db, text) for text in args.location], args.slice)
    out = sys.stdout.buffer
    progress = make_bar("get", sum(max(0, end - start) for _, start, end in locations), args.no_progress)
    batch: list[DataLocation] = []
    batch_bytes = 0
    try:
        for location in locations:
            size = location.end_offset - location.start_offset
            if size > SMALL_BLOB_BYTES:
                _write_batch(db, batch, out, progress)
                _stream_blob(db, location, out, progress)
                continue
            if batch_bytes + size > BATCH_BYTES:
                _write_batch(db, batch, out, progress)
                batch_bytes = 0
            batch.append(location)
            batch_bytes += size
        _write_batch(db, batch, out, progress)
        out.flush()
    finally:
        progress.close()
    return EXIT_OK


def cmd_ls(db: FlatFileDb | RemoteStore, args: argparse.Namespace) -> int:
    """``ffdb ls``: every committed blob in disk order, from the record indexes."""
    for location in db.iter_locations():
        file_path, start, end = location
        packed = db.pack_location(location).hex()
        if args.json:
            print_json(
                {
                    "file_path": file_path,
                    "start_offset": start,
                    "end_offset": end,
                    "size": end - start,
                    "packed": packed,
                }
            )
        else:
            print_line(f"{file_path}\t{start}\t{end}\t{end - start}\t{packed}")
    return EXIT_OK


# -- info, verify, stats -----------------------------------------------------------------------


def cmd_info(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb info``: one row per segment from :meth:`FlatFileDb.stats` (so it agrees with ``stats``)."""
    rows = [
        {
            "segment": s.number,
            "file": s.file_name,
            "state": "sealed" if s.sealed else "mutable",
            "disk_bytes": s.disk_bytes,
            "blobs": s.blobs,
            "blob_bytes": s.logical_bytes,
        }
        for s in db.stats().segments
    ]
    totals = {"segments": len(rows), "sealed": sum(1 for r in rows if r["state"] == "sealed")}
    totals.update({key: sum(int(r[key]) for r in rows) for key in ("blobs", "blob_bytes", "disk_bytes")})
    if args.json:
        print_json(
            {"datadir": str(db.datadir), "mutable_segment": db.mutable_segment(), "segments": rows, "totals": totals}
        )
        return EXIT_OK
    header = ("SEGMENT", "FILE", "STATE", "DISK_BYTES", "BLOBS", "BLOB_BYTES")
    table = [header] + [tuple(str(value) for value in r.values()) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print_line(f"datadir: {db.datadir}")
    for row in table:
        cells = [
            cell.ljust(width) if column in (1, 2) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        print_line("  ".join(cells).rstrip())
    print_line(
        f"total: {totals['segments']} segments ({totals['sealed']} sealed), {totals['blobs']} blobs, "
        f"{totals['blob_bytes']} blob bytes, {totals['disk_bytes']} bytes on disk"
    )
    return EXIT_OK


def cmd_verify(db: FlatFileDb | RemoteStore, args: argparse.Namespace) -> int:
    """``ffdb verify``: the bar counts the bytes on disk of the segments verified so far (no bar
    with --remote: its verify reports no progress)."""
    if isinstance(db, RemoteStore) or progress_stream(args.no_progress) is None:
        sizes: list[int] = []
    else:
        sizes = [s.disk_bytes for s in db.stats().segments]
    progress = make_bar(f"verify 0/{len(sizes)} segments", sum(sizes), args.no_progress)
    done_bytes = list(itertools.accumulate(sizes, initial=0))
    shown = [0]  # bytes the bar shows

    def segment_done(done: int, total: int) -> None:
        # Segments that came or went since they were listed: count them alone.
        now = done_bytes[done] if total == len(sizes) else sum(sizes) * done // max(1, total)
        progress.set_description_str(f"verify {done}/{total} segments", refresh=False)
        progress.update(now - shown[0])
        shown[0] = now

    try:
        report = db.verify(full=not args.quick, progress=None if isinstance(progress, NoBar) else segment_done)
    finally:
        progress.close()
    print_line(str(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_stats(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb stats``: per segment and total logical bytes, bytes on disk, ratio, blobs."""
    stats = db.stats()
    if args.json:
        print_json(
            {
                "segments": [
                    {
                        "number": s.number,
                        "file": s.file_name,
                        "sealed": s.sealed,
                        "compressed": s.compressed,
                        "blobs": s.blobs,
                        "logical_bytes": s.logical_bytes,
                        "disk_bytes": s.disk_bytes,
                        "ratio": round(s.ratio, 4),
                    }
                    for s in stats.segments
                ],
                "totals": {
                    "segments": len(stats.segments),
                    "blobs": stats.blobs,
                    "logical_bytes": stats.logical_bytes,
                    "disk_bytes": stats.disk_bytes,
                    "ratio": round(stats.ratio, 4),
                },
            }
        )
        return EXIT_OK
    print_line(f"{'SEGMENT':>8}  {'FILE':<20} {'STATE':<7} {'BLOBS':>9} {'LOGICAL':>14} {'ON_DISK':>14} {'RATIO':>6}")
    for s in stats.segments:
        print_line(
            f"{s.number:>8}  {s.file_name:<20} {'sealed' if s.sealed else 'mutable':<7} {s.blobs:>9} "
            f"{s.logical_bytes:>14} {s.disk_bytes:>14} {s.ratio:>6.2f}"
        )
    print_line(
        f"total: {len(stats.segments)} segments, {stats.blobs} blobs, {stats.logical_bytes} logical bytes, "
        f"{stats.disk_bytes} bytes on disk, ratio {stats.ratio:.2f}"
    )
    return EXIT_OK


# -- maintenance -------------------------------------------------------------------------------


def cmd_rotate(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb rotate``: prints the mutable segment after the rotation (the same one if it was empty)."""
    path, number = db.rotate()
    if args.json:
        print_json({"file_path": str(path), "segment": number})
    else:
        print_line(f"{path}\t{number}")
    return EXIT_OK


def cmd_delete(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb delete SEGMENT...``: in the order given; the mutable one is refused by the library."""
    segments = [segment_arg(db, text) for text in args.segments]
    present = set(db.segments())
    for segment in segments:  # delete_file only logs a missing one; a command line says so and fails
        if not (segment in present if isinstance(segment, int) else os.path.exists(segment)):
            raise FileNotFoundError(errno.ENOENT, "no such segment", str(segment))
    for segment in segments:
        path = db.segment_path(segment) if isinstance(segment, int) else segment
        db.delete_file(path)
        print_line(f"deleted {path}")
        sys.stdout.flush()  # a later refusal must not hide what was deleted
    return EXIT_OK


def cmd_retention(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb retention``: ``enforce_retention``, printing each segment as it is deleted."""
    if args.max_bytes is None and args.max_age is None:
        raise CliError("retention needs --max-bytes and/or --max-age")

    def deleting(path: str, locations: list[DataLocation]) -> None:
        if args.json:
            print_json({"file_path": path, "blobs": len(locations)})
        else:
            print_line(f"deleted {path}\t{len(locations)} blobs")
        sys.stdout.flush()

    deleted = db.enforce_retention(
        max_bytes=args.max_bytes, max_age=args.max_age, keep_min=args.keep_min, on_delete=deleting
    )
    if not args.json:
        print_line(f"total: {len(deleted)} segments deleted, {db.stats().disk_bytes} bytes on disk")
    return EXIT_OK


def cmd_recompress(db: FlatFileDb, args: argparse.Namespace) -> int:
    """``ffdb recompress [SEGMENT...]``: one line per segment from :meth:`FlatFileDb.recompress`."""
    segments = [segment_arg(db, text) for text in args.segments] or None
    results = db.recompress(segments, mode=CompressMode(args.mode), level=args.level, frame_bytes=args.frame_bytes)
    for result in results:
        if args.json:
            print_json(
                {
                    "segment": result.number,
                    "action": result.action,
                    "disk_before": result.disk_before,
                    "disk_after": result.disk_after,
                    "reason": result.reason,
                }
            )
        else:
            print_line(f"{result.number}\t{result.action}\t{result.disk_before}\t{result.disk_after}\t{result.reason}")
    return EXIT_OK
