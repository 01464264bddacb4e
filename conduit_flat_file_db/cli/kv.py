"""``ffdb kv``: put, get, ls, rm, stat, vacuum and verify over a :class:`KeyedStore`, each one
or two calls of it and the printing of what they return.

Every argument is checked before the store is opened (so a typo never creates a store), and
only ``put`` may create one; ``get``, ``ls``, ``stat`` and ``verify`` open it read-only, as the
blob commands' read commands do. A value larger than ``SMALL_BLOB_BYTES`` is streamed both ways
(``put_stream`` / ``open``, ``READ_CHUNK_BYTES`` at a time), so memory stays constant whatever
its size; smaller ones are stored by ``put`` / ``add_many`` (a streamed value makes a segment of
its own).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import string
import sys
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Iterator

from .. import KeyedStore, KeyMeta
from ..keyed.mapping import encode_meta
from .base import (
    BATCH_BYTES,
    BATCH_COUNT,
    EXIT_OK,
    EXIT_PROBLEMS,
    READ_CHUNK_BYTES,
    SMALL_BLOB_BYTES,
    CliError,
    print_json,
    print_line,
    write_all,
)
from .progress import Bar, make_bar
from .put import check_sources, open_source

Key = str | bytes


class CliNotFound(Exception):
    """A key the command needs is absent (printed as "not found", exit code 1)."""


# The commands that only read: opened read-only, they never create a store nor change one.
_READ_COMMANDS = ("get", "ls", "stat", "verify")


# -- arguments ---------------------------------------------------------------------------------


def parse_key(text: str, bytes_key: bool) -> Key:
    """A KEY argument: the text itself, or with ``--bytes-key`` the bytes its hex digits spell."""
    if not bytes_key:
        return text
    # Stricter than bytes.fromhex, which also skips spaces: a key is spelled one way only.
    if len(text) % 2 or not all(c in string.hexdigits for c in text):
        raise CliError(f"bad bytes key {text!r}: expected hex digits, two per byte")
    return bytes.fromhex(text)


def show_key(key: Key) -> str:
    """A key as the commands take it back: the text, or the hex of a bytes key."""
    return key.hex() if isinstance(key, bytes) else key


def describe_key(key: Key) -> str:
    """A key in a message, unambiguous whatever its characters."""
    return f"bytes key {key.hex()} (hex)" if isinstance(key, bytes) else f"key {key!r}"


def parse_meta(text: str | None) -> dict[str, Any] | None:
    """``--meta JSON``: a JSON object, or None when not given."""
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CliError(f"--meta is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CliError(f"--meta must be a JSON object, got {type(meta).__name__}: {text!r}")
    try:
        encode_meta(meta)  # what the store refuses (NaN, Infinity: json.loads takes them), before it is opened
    except TypeError as exc:
        raise CliError(f"--meta cannot be stored: {exc}") from None
    return meta


def _check_put(args: argparse.Namespace) -> None:
    if args.add:
        if args.meta is not None or args.bytes_key:
            raise CliError("--add stores each file under the SHA-256 of its content: no --meta nor --bytes-key")
        check_sources(args.operands or ["-"])
        return
    if not 1 <= len(args.operands) <= 2:
        raise CliError(f"put takes KEY [FILE|-], got {len(args.operands)} arguments (--add: FILE...)")
    parse_key(args.operands[0], args.bytes_key)
    parse_meta(args.meta)
    check_sources(args.operands[1:])


def check_kv_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments, and a store that is not there (except for put), before opening it."""
    if args.lock is not None:
        raise CliError("--lock does not apply to kv commands: a keyed store keeps its locks inside its directory")
    command = args.kv_command
    if command == "put":
        _check_put(args)
        return
    for text in args.keys if command == "rm" else [getattr(args, "key", None), getattr(args, "prefix", None)]:
        if text is not None:
            parse_key(text, args.bytes_key)
    output = getattr(args, "output", None)
    if output not in (None, "-"):
        real_dir = os.path.realpath(args.datadir)
        if os.path.commonpath([real_dir, os.path.realpath(output)]) == real_dir:
            # Created or replaced: a segment or index named there would be truncated, every key in it lost.
            raise CliError(f"-o {output}: the file is inside the store's directory {args.datadir}; write it elsewhere")
    # Read or maintain a store that is not there: never create one (rm and vacuum open it for
    # writing, which would). segments/ is what makes a directory a keyed store.
    if not os.path.isdir(args.datadir):
        raise FileNotFoundError(errno.ENOENT, "the store's directory does not exist", args.datadir)
    if not os.path.isdir(os.path.join(args.datadir, "segments")):
        raise FileNotFoundError(errno.ENOENT, "not a keyed store (no segments/ in it)", args.datadir)


def _index_kind(args: argparse.Namespace) -> str:
    """``--index``, else the kind the store directory holds (a new store: sqlite)."""
    if args.index is not None:
        return str(args.index)
    datadir = args.datadir
    has_lmdb = os.path.isdir(os.path.join(datadir, "index.lmdb"))
    return "lmdb" if has_lmdb and not os.path.exists(os.path.join(datadir, "index.sqlite3")) else "sqlite"


# -- put ---------------------------------------------------------------------------------------


class _Counted:
    """A readable over ``source`` that counts what is read into the progress bar."""

    def __init__(self, source: Any, progress: Bar) -> None:
        self._source = source
        self._bar = progress

    def readinto(self, buffer: Any) -> int | None:
        """As ``source.readinto``."""
        count: int | None = self._source.readinto(buffer)
        if count:
            self._bar.update(count)
        return count

    def read(self, size: int = -1) -> bytes:
        """As ``source.read``."""
        data: bytes = self._source.read(size)
        self._bar.update(len(data))
        return data


class _HeadThen:
    """The bytes ``head`` (already read from ``rest``), then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: Any) -> int | None:
        """Fill ``buffer`` from the head while it lasts, then from the rest."""
        if not self._head:
            count: int | None = self._rest.readinto(buffer)
            return count
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._head))
        view[:count] = self._head[:count]
        self._head = self._head[count:]
        return count


def _read_head(source: BinaryIO | _Counted) -> bytes:
    """Up to ``SMALL_BLOB_BYTES + 1`` bytes of ``source``: all of a small value, or a sign of a
    large one (a pipe's size is known only by reading it)."""
    parts: list[bytes] = []
    left = SMALL_BLOB_BYTES + 1
    while left > 0:
        chunk = source.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _regular_size(source: BinaryIO) -> int | None:
    """Size of ``source`` if it is a regular file (known before reading it), else None."""
    try:
        st = os.fstat(source.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a test's in-memory stdin
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Adds:
    """``ffdb kv put --add``: small inputs stored in groups by ``add_many``, a large one streamed
    by ``add_streams``; one line per input, FILE and its key, in argument order."""

    def __init__(self, store: KeyedStore) -> None:
        self._store = store
        self._group: list[tuple[str, bytes]] = []
        self._group_bytes = 0

    def add(self, name: str) -> None:
        """Store input ``name`` (now, or with its group)."""
        with open_source(name) as source:
            head = _read_head(source)
            if len(head) <= SMALL_BLOB_BYTES:
                self._group.append((name, head))
                self._group_bytes += len(head)
                if self._group_bytes >= BATCH_BYTES or len(self._group) >= BATCH_COUNT:
                    self.flush()
                return
            self.flush()  # its line comes after theirs
            [key] = self._store.add_streams([_HeadThen(head, source)])
        self._print(name, key)

    def flush(self) -> None:
        """Store the group (if any) and print its lines."""
        group, self._group, self._group_bytes = self._group, [], 0
        if group:
            for (name, _), key in zip(group, self._store.add_many([data for _, data in group])):
                self._print(name, key)

    @staticmethod
    def _print(name: str, key: str) -> None:
        print_line(f"{name}\t{key}")
        sys.stdout.flush()  # a later failure must not hide what is stored


def cmd_kv_put(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv put KEY [FILE|-]``: a small value by ``put``, with the others in the mutable
    segment; a large one streamed by ``put_stream`` into a segment of its own (constant memory)."""
    if args.add:
        adds = _Adds(store)
        for name in args.operands or ["-"]:
            adds.add(name)
        adds.flush()
        return EXIT_OK
    key = parse_key(args.operands[0], args.bytes_key)
    meta = parse_meta(args.meta)
    with open_source(args.operands[1] if len(args.operands) > 1 else "-") as source:
        progress = make_bar("kv put", _regular_size(source), args.no_progress)
        try:
            counted = _Counted(source, progress)
            head = _read_head(counted)
            if len(head) <= SMALL_BLOB_BYTES:
                store.put(key, head, meta=meta)
            else:
                store.put_stream(key, _HeadThen(head, counted), meta=meta)
        finally:
            progress.close()
    return EXIT_OK


# -- get ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[BinaryIO]:
    """Standard output (no ``-o``, or ``-o -``), or the file ``path`` created or replaced."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as out:
        yield out


def cmd_kv_get(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv get KEY [-o FILE] [--slice START:END]``: the key and the slice are checked
    before the output is opened (a bad one leaves an existing FILE as it was)."""
    key = parse_key(args.key, args.bytes_key)
    try:
        value = store.open(key)
    except KeyError:
        raise CliNotFound(describe_key(key)) from None
    with value:
        size = value.seek(0, os.SEEK_END)
        start, end = args.slice if args.slice is not None else (0, None)
        end = size if end is None else end
        if not start <= end <= size:
            raise CliError(f"slice {start}:{end} is not inside the value of {describe_key(key)} ({size} bytes)")
        value.seek(start)
        progress = make_bar("kv get", end - start, args.no_progress)
        try:
            with _output(args.output) as out:
                remaining = end - start
                while remaining:
                    chunk = value.read(min(READ_CHUNK_BYTES, remaining))
                    if not chunk:
                        raise CliError(f"the value of {describe_key(key)} ended {remaining} bytes early")
                    write_all(out, chunk)
                    remaining -= len(chunk)
                    progress.update(len(chunk))
        finally:
            progress.close()
    return EXIT_OK


# -- ls, rm ------------------------------------------------------------------------------------


def _created(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def _ls_line(key: Key, meta: KeyMeta | None, as_json: bool) -> None:
    """One key of ``ls``: its text (tab-separated long fields), or a JSON object."""
    if as_json:
        document: dict[str, Any] = {"key": show_key(key), "bytes_key": isinstance(key, bytes)}
        if meta is not None:
            document.update(size=meta.size, created=meta.created, segment=meta.segment)
        print_json(document)
    elif meta is not None:
        print_line(f"{show_key(key)}\t{meta.size}\t{_created(meta.created)}\t{meta.segment}")
    else:
        print_line(show_key(key))


def cmd_kv_ls(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv ls [--prefix P] [--bytes-key] [--long] [--json]``: in the store's key order."""
    if args.prefix is not None or args.bytes_key:
        keys = store.keys(parse_key(args.prefix or "", args.bytes_key))
    else:
        keys = store.keys()
    for key in keys:
        meta = None
        if args.long:
            try:
                meta = store.meta(key)
            except KeyError:  # deleted since it was listed
                continue
        _ls_line(key, meta, args.json)
    return EXIT_OK


def cmd_kv_rm(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv rm KEY...``: one ``delete_many``; without --force an absent key deletes nothing."""
    keys = [parse_key(text, args.bytes_key) for text in args.keys]
    if not args.force:
        absent = [describe_key(key) for key in keys if key not in store]
        if absent:
            raise CliNotFound(f"{', '.join(absent)}; nothing deleted")
    print_line(f"deleted {store.delete_many(keys)} keys")
    return EXIT_OK


# -- stat, vacuum, verify ----------------------------------------------------------------------


def _meta_document(meta: KeyMeta) -> dict[str, Any]:
    return {
        "key": show_key(meta.key),
        "bytes_key": isinstance(meta.key, bytes),
        "size": meta.size,
        "segment": meta.segment,
        "offset": meta.offset,
        "compressed": meta.compressed,
        "created": meta.created,
        "checksum": None if meta.checksum is None else f"{meta.checksum:016x}",  # None: create_array's
        "user": meta.user,
        "array": None if meta.array is None else {"dtype": meta.array[0], "shape": list(meta.array[1])},
    }


def _print_fields(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(document)
        return
    for name, value in document.items():
        print_line(f"{name}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def cmd_kv_stat(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv stat [KEY] [--json]``: ``stats()``, or ``meta(KEY)``."""
    if args.key is None:
        stats = store.stats()
        totals = {
            "keys": stats.keys,
            "live_bytes": stats.live_bytes,
            "dead_bytes": stats.dead_bytes,
            "disk_bytes": stats.disk_bytes,
            "segments": stats.segments,
        }
        _print_fields(totals, args.json)
        return EXIT_OK
    key = parse_key(args.key, args.bytes_key)
    try:
        meta = store.meta(key)
    except KeyError:
        raise CliNotFound(describe_key(key)) from None
    document = _meta_document(meta)
    if not args.json:
        document["created"] = _created(meta.created)
    _print_fields(document, args.json)
    return EXIT_OK


def cmd_kv_vacuum(store: KeyedStore, args: argparse.Namespace) -> int:
    """``ffdb kv vacuum [--min-dead-fraction F] [--json]``: one line saying what was reclaimed."""
    result = store.vacuum() if args.min_dead_fraction is None else store.vacuum(args.min_dead_fraction)
    if args.json:
        print_json(
            {
                "segments_removed": result.segments_removed,
                "bytes_reclaimed": result.bytes_reclaimed,
                "values_moved": result.values_moved,
            }
        )
    else:
        print_line(
            f"reclaimed {result.bytes_reclaimed} bytes: {result.segments_removed} segments removed, "
            f"{result.values_moved} values moved"
        )
    return EXIT_OK


def cmd_kv_verify(store: KeyedStore, args: argparse.Namespace) -> int:  # pylint: disable=unused-argument
    """``ffdb kv verify``: each problem and each note on a line of its own, then a summary line."""
    report = store.verify()
    for problem in report.problems:
        print_line(problem)
    for note in report.notes:  # worth knowing, not wrong (e.g. space vacuum would reclaim)
        print_line(f"note: {note}")
    if report.ok:
        print_line(f"OK: {report.keys_checked} keys checked, no problems found")
        return EXIT_OK
    print_line(f"PROBLEMS: {len(report.problems)} found, {report.keys_checked} keys checked")
    return EXIT_PROBLEMS


_KV_COMMANDS: dict[str, Callable[[KeyedStore, argparse.Namespace], int]] = {
    "put": cmd_kv_put,
    "get": cmd_kv_get,
    "ls": cmd_kv_ls,
    "rm": cmd_kv_rm,
    "stat": cmd_kv_stat,
    "vacuum": cmd_kv_vacuum,
    "verify": cmd_kv_verify,
}


def run_kv(args: argparse.Namespace) -> int:
    """Check the arguments, open the keyed store (read-only for the read commands), run the
    command; an absent key is reported here (exit 1), every other error by ``main``."""
    check_kv_args(args)
    command = args.kv_command
    readonly = command in _READ_COMMANDS
    try:
        with KeyedStore(
            args.datadir,
            readonly=readonly,
            use_compression=command == "put" and args.compress,
            fsync=args.fsync and not readonly,
            index=_index_kind(args),
            lock_timeout=args.lock_timeout,
            skip_damaged_logs=args.skip_damaged_logs,
        ) as store:
            return _KV_COMMANDS[command](store, args)
    except CliNotFound as exc:
        sys.stderr.write(f"ffdb: not found: {exc}\n")
        return EXIT_PROBLEMS
