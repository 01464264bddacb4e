"""What ``ffdb kv`` accepts: the subcommands over a :class:`KeyedStore` (values by key).

A module of its own beside ``parser`` so the keyed store's command group reads in one place;
``parser.build_parser`` adds it and puts the store options (``--datadir`` ...) on each
subcommand, as it does for the others.
"""

from __future__ import annotations

import argparse
from typing import Any

from .base import EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS

INDEX_KINDS = ("sqlite", "lmdb")

KV_EPILOG = f"""\
KEY is a text key; with --bytes-key it is a bytes key written in hex (two digits per byte).
A text key and a bytes key of the same bytes are different keys. ls shows bytes keys in hex.
get, ls, stat and verify open the store read-only: they never create a store nor change
one. Only put creates a store; rm and vacuum refuse a store directory that does not exist.
The store keeps its locks inside DIR: --lock does not apply.

exit codes:
  {EXIT_OK}    success (verify: no problems found)
  {EXIT_PROBLEMS}    get, stat KEY or rm: a KEY is absent (stdout empty, the key named on stderr);
       verify found problems (listed on stdout)
  {EXIT_ERROR}    error: bad arguments or key, bad --meta JSON, missing file or store, store error
"""


def slice_range(text: str) -> tuple[int, int | None]:
    """argparse type of ``--slice START:END``: byte offsets in the value; START defaults to 0,
    END to the end of the value (None)."""
    start, colon, end = text.partition(":")
    if not colon or not all(part.isdecimal() for part in (start, end) if part):
        raise argparse.ArgumentTypeError(f"expected START:END with decimal offsets (either may be empty), got {text!r}")
    return int(start or 0), int(end) if end else None


def fraction(text: str) -> float:
    """argparse type of ``--min-dead-fraction``: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bytes-key", action="store_true", help="KEY is a bytes key given in hex (default: a text key)"
    )


def _add_put(commands: Any) -> list[argparse.ArgumentParser]:
    """put: a value under a key, or by its content."""
    put = commands.add_parser(
        "put",
        help="store a file (or standard input) under KEY",
        usage="ffdb kv put [options] KEY [FILE|-]\n       ffdb kv put [options] --add [FILE|-]...",
        description="Store the bytes of FILE (default and '-': standard input) under KEY, replacing "
        "any value it had; prints nothing. With --add, store each FILE by its content instead "
        "and print one line per file: FILE, its key (the SHA-256 of the content, hex), "
        "tab-separated; the same content is stored once. Creates the store if needed.",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    put.add_argument("operands", nargs="*", metavar="KEY [FILE|-]", help="the key, then the file ('-': standard input)")
    put.add_argument("--add", action="store_true", help="store each FILE under the SHA-256 of its content")
    put.add_argument("--meta", metavar="JSON", help="user metadata stored with the value: a JSON object")
    put.add_argument(
        "--compress",
        action="store_true",
        help="open the store with compression: new segments are seekable Zstandard",
    )
    _add_key_options(put)
    _add_no_progress_suppressed(put)
    return [put]


def _add_get(commands: Any) -> list[argparse.ArgumentParser]:
    """get: a value (or a slice of it) out."""
    get = commands.add_parser(
        "get",
        help="write the value of KEY (or a slice of it) to standard output or a file",
        description="Write the value stored under KEY to standard output (or to FILE with -o), "
        "streamed in constant memory.",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("key", metavar="KEY", help="the key")
    get.add_argument("-o", "--output", metavar="FILE", help="write to FILE (created or replaced) instead")
    get.add_argument(
        "--slice",
        type=slice_range,
        metavar="START:END",
        help="only bytes START to END of the value (END excluded; START empty: 0, END empty: the end)",
    )
    _add_key_options(get)
    _add_no_progress_suppressed(get)
    return [get]


def _add_ls_rm(commands: Any) -> list[argparse.ArgumentParser]:
    """ls and rm: the keys."""
    ls = commands.add_parser(
        "ls",
        help="list the keys, one per line",
        description="List the keys, one per line, sorted by their bytes: bytes keys (in hex) first, "
        "then text keys. --prefix lists the text keys starting with P; with --bytes-key, only "
        "bytes keys (starting with the bytes P in hex).",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--prefix", metavar="P", help="only keys starting with P")
    ls.add_argument("-l", "--long", action="store_true", help="add size, created time (UTC) and segment, tab-separated")
    ls.add_argument("--json", action="store_true", help="print one JSON object per key instead")
    _add_key_options(ls)

    rm = commands.add_parser(
        "rm",
        help="delete keys and their values",
        description="Delete every KEY in one batch and print how many were deleted. An absent KEY "
        f"deletes nothing at all (exit {EXIT_PROBLEMS}) unless --force is given. The space is "
        "reclaimed by vacuum.",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rm.add_argument("keys", nargs="+", metavar="KEY", help="key to delete")
    rm.add_argument("-f", "--force", action="store_true", help="ignore absent keys")
    _add_key_options(rm)
    return [ls, rm]


def _add_stat_vacuum_verify(commands: Any) -> list[argparse.ArgumentParser]:
    """stat, vacuum and verify: the whole store."""
    stat = commands.add_parser(
        "stat",
        help="totals of the store, or the metadata of one KEY",
        description="Without KEY: keys, live, dead and on-disk bytes, segments. With KEY: its "
        "size, segment, offset, compression, created time, checksum and user metadata.",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stat.add_argument("key", nargs="?", metavar="KEY", help="the key to describe")
    stat.add_argument("--json", action="store_true", help="print one JSON object instead")
    _add_key_options(stat)

    vacuum = commands.add_parser(
        "vacuum",
        help="reclaim the space of deleted and replaced values",
        description="Move the live values out of segments that hold mostly dead ones and delete "
        "those segments (other processes may use the store meanwhile); print what was reclaimed.",
    )
    vacuum.add_argument(
        "--min-dead-fraction",
        type=fraction,
        metavar="F",
        help="rewrite a segment when at least F (0 to 1) of it is dead (0: any dead byte; default: the library's)",
    )
    vacuum.add_argument("--json", action="store_true", help="print one JSON object instead")

    verify = commands.add_parser(
        "verify",
        help=f"check keys, values and checksums (exit {EXIT_PROBLEMS} on problems)",
        description="Check that every key points at a value, that no value is orphaned and that "
        f"every value matches its checksum; print each problem, each note (lines starting "
        f"'note: ') and a summary (exit {EXIT_PROBLEMS} when there is a problem).",
    )
    return [stat, vacuum, verify]


def _add_no_progress_suppressed(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --no-progress given before the command is kept.
    parser.add_argument(
        "--no-progress", action="store_true", default=argparse.SUPPRESS, help="never draw a progress bar"
    )


def add_kv_parser(commands: Any) -> list[argparse.ArgumentParser]:
    """Add ``kv`` to ``commands``; returns it and each of its subcommands (for the store options)."""
    kv = commands.add_parser(
        "kv",
        help="a keyed store: values by key (put, get, ls, rm, stat, vacuum, verify)",
        description="A keyed store in --datadir DIR: values stored and read by key.",
        epilog=KV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kv_commands = kv.add_subparsers(dest="kv_command", metavar="KV_COMMAND", required=True, prog="ffdb kv")
    subcommands = [
        subcommand
        for add in (_add_put, _add_get, _add_ls_rm, _add_stat_vacuum_verify)
        for subcommand in add(kv_commands)
    ]
    for parser in [kv, *subcommands]:
        # Accepted (unlisted) only to be refused with a reason: unknown, it would be taken
        # for an abbreviation of --lock-timeout.
        parser.add_argument("--lock", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument(
            "--index",
            choices=INDEX_KINDS,
            default=None if parser is kv else argparse.SUPPRESS,  # SUPPRESS: one given before is kept
            help="the store's index (default: lmdb when DIR holds index.lmdb, else sqlite; "
            "lmdb needs the extra 'lmdb')",
        )
        parser.add_argument(
            "--skip-damaged-logs",
            action="store_true",
            default=False if parser is kv else argparse.SUPPRESS,
            help="read past key-log records damaged on disk (logged; the keys they wrote keep "
            "their values from before them, or are absent; see GUARANTEES.md)",
        )
    return [kv, *subcommands]
