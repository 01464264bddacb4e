"""``ffdb``: a small command line over one store (``main`` is its one public name).

A thin layer: every command is one or two calls of :class:`FlatFileDb` (``put_streams``,
``get_many``, ``open_blob``, ``iter_locations``, ``stats``, ``verify``, ``rotate``,
``delete_file``, ``enforce_retention``, ``recompress``; ``ffdb tier``: ``tiering_status``,
``sync_tiering``, ``gc_tiering``; ``ffdb kv``: of :class:`KeyedStore`; ``--remote``: of
``FlatFileDb.open_remote``) plus argument parsing and printing; nothing below imports it.
This module opens the store and maps errors to exit codes; ``parser`` (and ``kv_parser``)
say what the command line accepts (and its exit codes, shown by ``ffdb --help``), ``put``,
``commands``, ``tier``, ``remote`` and ``kv`` run the commands, ``progress`` draws the bar,
``base`` holds what they share.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from typing import Callable

from .. import FlatFileDb
from ..arguments import default_lock_path
from ..errors import FlatFileDbError, FlatFileDbUnsafeAccessError
from ..tiering import Tiering
from .base import (
    CLI_FRAME_CACHE_BYTES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    TIER_URL_ENV,
    CliError,
)
from .commands import (
    cmd_delete,
    cmd_get,
    cmd_info,
    cmd_ls,
    cmd_recompress,
    cmd_retention,
    cmd_rotate,
    cmd_stats,
    cmd_verify,
)
from .kv import run_kv
from .parser import REMOTE_COMMANDS, build_parser
from .put import check_sources, cmd_put
from .remote import RemoteStore
from .tier import open_tiered, run_tier

_READ_COMMANDS = ("get", "info", "verify", "stats", "ls")


def _describe(exc: BaseException) -> str:
    """A one-line message for an expected error; paths as text (some libraries name files in bytes)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        names = [
            os.fsdecode(name) if isinstance(name, bytes) else str(name)
            for name in (exc.filename, exc.filename2)
            if name is not None
        ]
        return f"{' -> '.join(names)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


_COMMANDS: dict[str, Callable[[FlatFileDb, argparse.Namespace], int]] = {
    "put": cmd_put,
    "get": cmd_get,
    "ls": cmd_ls,
    "info": cmd_info,
    "verify": cmd_verify,
    "stats": cmd_stats,
    "rotate": cmd_rotate,
    "delete": cmd_delete,
    "retention": cmd_retention,
    "recompress": cmd_recompress,
}

# What --remote serves (parser.REMOTE_COMMANDS): the same functions, on FlatFileDb.open_remote's store.
_REMOTE_COMMANDS: dict[str, Callable[[FlatFileDb | RemoteStore, argparse.Namespace], int]] = {
    "get": cmd_get,
    "ls": cmd_ls,
    "verify": cmd_verify,
}


def _run(args: argparse.Namespace) -> int:
    if args.command == "kv":
        return run_kv(args)
    if args.remote is not None:
        with RemoteStore(args.remote) as remote:
            return _REMOTE_COMMANDS[args.command](remote, args)
    datadir: str = args.datadir
    lock: str = args.lock if args.lock is not None else default_lock_path(datadir)
    _refuse_output_into_the_store(datadir, lock)
    tiering = None if args.tier_url is None else Tiering(args.tier_url)
    if args.command in _READ_COMMANDS:
        # Read commands open read-only: they never create or write anything (not the datadir,
        # nor the lock file), so they work on read-only media and without write permission.
        with FlatFileDb(datadir, lock, readonly=True, frame_cache_bytes=CLI_FRAME_CACHE_BYTES, tiering=tiering) as db:
            return _COMMANDS[args.command](db, args)
    if args.command == "put":
        check_sources(args.files)  # before the store is opened (and its datadir created)
    elif not os.path.isdir(datadir):  # maintenance of a store that is not there: never create one
        raise FileNotFoundError(errno.ENOENT, "the store's directory does not exist", datadir)
    if args.command == "tier":
        with open_tiered(datadir, lock, args.tier_url, args) as db:
            return run_tier(db, args)
    with FlatFileDb(
        datadir,
        lock,
        fsync=args.fsync,
        use_compression=args.command == "put" and args.compress,
        lock_timeout=args.lock_timeout,
        frame_cache_bytes=CLI_FRAME_CACHE_BYTES,
        tiering=tiering,
    ) as db:
        return _COMMANDS[args.command](db, args)


def _refuse_output_into_the_store(datadir: str, lock: str) -> None:
    """CliError when standard output is a file of the store (``ffdb get LOC >> datadir/data_…``):
    what the command prints would be appended to a segment, its index, the state page or the
    lock file. Refused before the store is opened, so nothing is written there."""
    try:
        out = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # an in-process capture has no descriptor
        return
    if not stat.S_ISREG(out.st_mode):
        return
    names = [lock]
    try:
        if os.stat(datadir).st_dev == out.st_dev:
            names += [os.path.join(datadir, name) for name in os.listdir(datadir)]
    except OSError:
        pass  # no datadir (yet): only the lock file can be a file of the store
    for name in names:
        try:
            found = os.stat(name, follow_symlinks=False)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (out.st_dev, out.st_ino):
            raise CliError(
                f"standard output is {name}, a file of the store: writing there would damage it; "
                "redirect the output elsewhere"
            )


def _check_store_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Which store: --datadir, or --remote for the commands it serves (argparse.error otherwise);
    --tier-url from the environment when not given, and required by ``ffdb tier``."""
    if args.remote is not None:
        if args.datadir is not None:
            parser.error("--remote and --datadir are mutually exclusive: give one store")
        if args.command not in REMOTE_COMMANDS:
            parser.error(f"ffdb {args.command} is not available with --remote (only {', '.join(REMOTE_COMMANDS)})")
        return
    if args.datadir is None:  # not required=True: it may come after the subcommand
        parser.error("the following arguments are required: --datadir (or --remote URL)")
    args.tier_url = args.tier_url or os.environ.get(TIER_URL_ENV) or None
    if args.command == "tier" and args.tier_url is None:
        parser.error(f"ffdb tier {args.tier_command} needs --url s3://BUCKET/PREFIX (or {TIER_URL_ENV})")


def _parse(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of --help, --version or a usage error (argparse printed it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_store_options(parser, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run ``ffdb`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        if sys.stdout is None:  # started with standard output closed (`>&-`): refuse before doing anything
            raise CliError("standard output is closed; every command writes its results there")
        return _run(args)
    except BrokenPipeError:
        _silence_stdout()
        sys.stderr.write("ffdb: error: output closed before everything was written\n")
        return EXIT_ERROR
    except FlatFileDbUnsafeAccessError as exc:
        sys.stderr.write(f"ffdb: refused: {_describe(exc)}\n")
        return EXIT_REFUSED
    except (CliError, FlatFileDbError, OSError, ValueError, TypeError) as exc:
        if sys.stderr is not None:
            sys.stderr.write(f"ffdb: error: {_describe(exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("ffdb: interrupted\n")
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # io.UnsupportedOperation is both; in-process captures have no fd
        pass


__all__ = ["main"]
