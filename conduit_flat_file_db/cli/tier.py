"""``ffdb tier status|sync|gc``: one call each of :meth:`FlatFileDb.tiering_status`,
:meth:`FlatFileDb.sync_tiering` and :meth:`FlatFileDb.gc_tiering` on the store opened with
``tiering=Tiering(URL)``, and the printing of what they return."""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from .. import FlatFileDb
from ..tiering import Tiering
from .base import CLI_FRAME_CACHE_BYTES, EXIT_OK, print_json, print_line


def segment_ranges(numbers: Iterable[int]) -> str:
    """Sorted segment numbers as runs (``1-4 7 9-10``): a store of thousands stays one short line."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return " ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(status)
        return
    print_line(f"url: {status['url']}")
    for key, label in (("uploaded", "uploaded"), ("pending", "pending"), ("remote_only", "remote only")):
        numbers = status[key]
        print_line(f"{label}: {len(numbers)} segments" + (f" ({segment_ranges(numbers)})" if numbers else ""))
    print_line(f"local bytes: {status['local_bytes']}")
    if status["last_error"] is not None:
        print_line(f"last error: {status['last_error']}")


def run_tier(db: FlatFileDb, args: argparse.Namespace) -> int:
    """Run ``ffdb tier SUBCOMMAND`` on ``db``, opened by :func:`open_tiered` for it."""
    if args.tier_command == "gc":
        removed = db.gc_tiering()
        if args.json:
            print_json(removed)
        else:
            print_line(f"removed {removed['manifests']} manifests, {removed['objects']} objects")
        return EXIT_OK
    if args.tier_command == "sync":
        db.sync_tiering(timeout=args.timeout)
    _print_status(db.tiering_status(), args.json)
    return EXIT_OK


def open_tiered(datadir: str, lock: str, url: str, args: argparse.Namespace) -> FlatFileDb:
    """The store for ``ffdb tier SUBCOMMAND``: read-only for status (it changes nothing);
    read-write for sync and gc, with sync's local retention bounds."""
    if args.tier_command == "status":
        tiering = Tiering(url)
        return FlatFileDb(datadir, lock, readonly=True, tiering=tiering, frame_cache_bytes=CLI_FRAME_CACHE_BYTES)
    if args.tier_command == "sync":
        tiering = Tiering(
            url, local_retention_bytes=args.local_retention_bytes, local_retention_age=args.local_retention_age
        )
    else:
        tiering = Tiering(url)
    return FlatFileDb(
        datadir,
        lock,
        fsync=args.fsync,
        lock_timeout=args.lock_timeout,
        tiering=tiering,
        frame_cache_bytes=CLI_FRAME_CACHE_BYTES,
    )
