"""What ``ffdb`` accepts: its argparse parser, the help text and the exit codes it documents."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .. import CompressMode, __version__
from .base import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_REFUSED,
    HEX_LOCATION_CHARS,
    SMALL_BLOB_BYTES,
    TIER_URL_ENV,
)
from .kv_parser import add_kv_parser
from .progress import PROGRESS_MIN_BYTES

LOCATION_HELP = f"""\
LOCATION is either the packed form printed by put and ls ({HEX_LOCATION_CHARS} hex digits)
or FILE_PATH:START:END; a FILE_PATH without a directory is taken inside --datadir
(with --remote, a location names its segment by the file name alone: the directory is ignored).
SEGMENT is a segment number or its data file (a bare file name is taken inside --datadir).
"""

REMOTE_COMMANDS = ("get", "ls", "verify")

TIER_HELP = f"""\
URL is s3://BUCKET/PREFIX (default: the environment variable {TIER_URL_ENV}). The endpoint,
region and credentials come from the standard AWS_* environment variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP).
"""

EXIT_CODES_EPILOG = f"""\
{LOCATION_HELP}
A progress bar is drawn on standard error when it is a terminal, the work is larger
than {PROGRESS_MIN_BYTES >> 20} MiB and tqdm is installed (extra "progress"); --no-progress: never.

exit codes:
  {EXIT_OK}    success (verify: no problems found)
  {EXIT_PROBLEMS}    verify found problems; kv get, kv stat KEY, kv rm: a KEY is absent
  {EXIT_ERROR}    error: bad arguments, bad location, missing file, store error, lock timeout,
       object storage error (no such bucket, access denied, unreachable)
  {EXIT_REFUSED}    refused: delete or recompress of the mutable segment (seal it first: ffdb rotate)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

--remote URL serves {", ".join(REMOTE_COMMANDS)} from the segments a store uploaded to s3://BUCKET/PREFIX
(read-only, no datadir); --tier-url URL (or {TIER_URL_ENV}) opens the store at --datadir with
its tier, so reads find the segments that are only in the bucket (ffdb tier --help).
"""


def _seconds(text: str) -> float:
    """argparse type of --lock-timeout and --max-age: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    """argparse type of byte and segment counts: a decimal integer >= 0."""
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _add_no_progress(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", default=default, help="never draw a progress bar on standard error"
    )


def _add_store_options(parser: argparse.ArgumentParser, default: Any, lock: bool = True) -> None:
    """The options that say which store and how to open it: on the main parser (``default``:
    their defaults) and on each subcommand (``argparse.SUPPRESS``: a value given before the
    subcommand is kept), so ``ffdb --datadir D info`` and ``ffdb info --datadir D`` both work.
    ``lock``: whether ``--lock`` applies (not to ``kv``: a keyed store keeps its locks inside DIR)."""
    parser.add_argument(
        "--datadir", metavar="DIR", default=default, help="directory of the store (required, unless --remote)"
    )
    if lock:
        parser.add_argument(
            "--remote",
            metavar="URL",
            default=default,
            help=f"read the store uploaded to s3://BUCKET/PREFIX instead of --datadir ({', '.join(REMOTE_COMMANDS)})",
        )
        parser.add_argument(
            "--tier-url",
            metavar="URL",
            default=default,
            help=f"open the store with its tier in s3://BUCKET/PREFIX (default: ${TIER_URL_ENV})",
        )
        parser.add_argument(
            "--lock",
            metavar="PATH",
            default=default,
            help="inter-process lock file shared by every user of the store (default: DIR.lock)",
        )
    parser.add_argument(
        "--lock-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=default,
        help="give up (exit 2) when the store's lock is not acquired within SECONDS (default: wait for ever)",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        default=False if default is None else default,
        help="make every stored blob durable before reporting its location",
    )


def _add_data_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """put, get and ls: blobs in and out."""
    put = commands.add_parser(
        "put",
        help="store each FILE as one blob and print its location",
        description="Store each FILE as one blob; print one line per file: FILE, "
        "file_path, start, end, packed location (hex), tab-separated. "
        f"Files larger than {SMALL_BLOB_BYTES >> 20} MiB are streamed "
        "(constant memory) into a segment of their own; smaller ones "
        "are stored in groups.",
    )
    put.add_argument("files", nargs="+", metavar="FILE", help="file to store ('-' reads standard input)")
    put.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    put.add_argument(
        "--compress",
        action="store_true",
        help="open the store with compression: new segments and streamed files are seekable Zstandard",
    )
    # On the subcommands too (``ffdb ... put --no-progress``); SUPPRESS keeps a global one.
    _add_no_progress(put, argparse.SUPPRESS)

    get = commands.add_parser(
        "get",
        help="write blobs (or slices of them) to standard output",
        description="Write the bytes of the blob at each LOCATION (or a slice of "
        "each) to standard output, one after the other in the order "
        "given; they are read in disk order.",
        epilog=LOCATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("location", nargs="+", metavar="LOCATION", help="packed hex location or FILE_PATH:START:END")
    get.add_argument(
        "--slice",
        nargs=2,
        type=int,
        metavar=("START", "END"),
        help="byte range relative to each blob; END 0 means to the end of the blob",
    )
    _add_no_progress(get, argparse.SUPPRESS)

    ls = commands.add_parser(
        "ls",
        help="list every blob: file_path, start, end, size, packed location",
        description="List every committed blob in disk order, one tab-separated "
        "line each: file_path, start, end, size, packed location (hex).",
    )
    ls.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    return [put, get, ls]


def _add_inspect_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """info, verify and stats: read-only looks at the whole store."""
    info = commands.add_parser("info", help="list segments and totals")
    info.add_argument("--json", action="store_true", help="print one JSON document instead")

    verify = commands.add_parser("verify", help="check every blob against its checksum (exit 1 on problems)")
    verify.add_argument(
        "--quick",
        action="store_true",
        help="structure only (indexes, sizes, seek tables); no checksums, no decompression",
    )
    _add_no_progress(verify, argparse.SUPPRESS)

    stats = commands.add_parser("stats", help="logical and on-disk bytes, ratio and blobs per segment")
    stats.add_argument("--json", action="store_true", help="print one JSON document instead")
    return [info, verify, stats]


def _add_maintenance_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """rotate, delete, retention and recompress: they change an existing store (never create one)."""
    rotate = commands.add_parser(
        "rotate",
        help="seal the mutable segment and start a new one",
        description="Seal the mutable segment now (a no-op when it is empty) and "
        "print the new mutable segment's file and number.",
    )
    rotate.add_argument("--json", action="store_true", help="print one JSON object instead")

    delete = commands.add_parser(
        "delete",
        help="delete sealed segments and every blob in them",
        description="Delete each SEGMENT (sealed only; the mutable one is refused "
        f"with exit {EXIT_REFUSED}) and print its file.",
        epilog=LOCATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    delete.add_argument("segments", nargs="+", metavar="SEGMENT", help="segment number or data file")

    retention = commands.add_parser(
        "retention",
        help="delete the oldest sealed segments past a size or age",
        description="Delete the oldest sealed segments until the store holds at "
        "most --max-bytes on disk and none is older than --max-age "
        "seconds, keeping at least --keep-min; prints each deleted one.",
    )
    retention.add_argument("--max-bytes", type=_count, metavar="BYTES", help="bound on the bytes on disk")
    retention.add_argument(
        "--max-age", type=_seconds, metavar="SECONDS", help="bound on the age of a sealed segment (since its seal)"
    )
    retention.add_argument(
        "--keep-min", type=_count, default=0, metavar="N", help="never keep fewer than N sealed segments (default 0)"
    )
    retention.add_argument("--json", action="store_true", help="print one JSON object per deleted segment")

    recompress = commands.add_parser(
        "recompress",
        help="rewrite sealed segments compressed, raw, or reframed",
        description="Rewrite each SEGMENT (default: every sealed one); every "
        "location stays valid. Prints one line per segment: number, "
        "action, bytes on disk before and after, reason.",
        epilog=LOCATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recompress.add_argument("segments", nargs="*", metavar="SEGMENT", help="segment number or data file")
    recompress.add_argument(
        "--mode",
        choices=[mode.value for mode in CompressMode],
        default="auto",
        help="yes: compress; no: raw; keep: as they are (with --level or --frame-bytes: "
        "reframe); auto (default): compress where a sample shows it pays",
    )
    recompress.add_argument("--level", type=int, metavar="N", help="Zstandard level (default: the store's)")
    recompress.add_argument(
        "--frame-bytes", type=_count, metavar="BYTES", help="uncompressed bytes per frame (default: the store's)"
    )
    recompress.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    return [rotate, delete, retention, recompress]


def _add_tier_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """tier status, sync and gc: the store's sealed segments in S3-compatible object storage."""
    tier = commands.add_parser(
        "tier",
        help="the store's sealed segments in object storage: status, sync, gc",
        description="Upload the store's sealed segments to S3-compatible object storage and look "
        'after them there (README "Tiering"). Each subcommand opens the store at --datadir with '
        "its tier in URL.",
        epilog=TIER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = tier.add_subparsers(dest="tier_command", metavar="SUBCOMMAND", required=True, prog="ffdb tier")
    status = subcommands.add_parser(
        "status",
        help="segments uploaded, pending and remote only; bytes on local disk",
        description="Which sealed segments are uploaded, which are pending and which are only in "
        "the bucket, and the bytes of the local data files (opens the store read-only).",
        epilog=TIER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync = subcommands.add_parser(
        "sync",
        help="upload every sealed segment now, then apply the local retention",
        description="Return once every sealed segment is uploaded and, with --local-retention-bytes "
        "or --local-retention-age, the local data files past those bounds are removed (their "
        "blobs stay readable from the bucket); then print the status.",
        epilog=TIER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="give up (exit 2) after SECONDS (default: no limit)"
    )
    sync.add_argument(
        "--local-retention-bytes",
        type=_count,
        metavar="BYTES",
        help="once uploaded, remove local data files, oldest first, until at most BYTES stay (0: none)",
    )
    sync.add_argument(
        "--local-retention-age",
        type=_seconds,
        metavar="SECONDS",
        help="once uploaded, remove local data files sealed more than SECONDS ago",
    )
    gc = subcommands.add_parser(
        "gc",
        help="remove what interrupted uploads and deletes left in the bucket",
        description="Remove objects of segments that have no manifest (an upload cut short) and "
        "manifests of segments this store deleted (a delete cut short); print the counts.",
        epilog=TIER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for command in (status, sync, gc):
        command.add_argument(
            "--url",
            dest="tier_url",
            metavar="URL",
            default=argparse.SUPPRESS,
            help=f"s3://BUCKET/PREFIX of the store's tier (required; default: ${TIER_URL_ENV})",
        )
        command.add_argument("--json", action="store_true", help="print one JSON document instead")
    return [status, sync, gc]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``ffdb`` (global options, then one subcommand)."""
    parser = argparse.ArgumentParser(
        prog="ffdb",
        # Written out: --datadir is required but not required=True, which would refuse it after the subcommand.
        usage="%(prog)s [-h] (--datadir DIR | --remote URL) [--tier-url URL] [--lock PATH] "
        "[--lock-timeout SECONDS] [--fsync] [--no-progress] [--version] COMMAND ...",
        description="Append-only flat-file BLOB store: store files as blobs, read them back, "
        "inspect, verify, maintain; or store values by key (ffdb kv --help).",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store_options(parser, None)
    _add_no_progress(parser, False)
    parser.add_argument("--version", action="version", version=f"ffdb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="ffdb")
    for command in (
        _add_data_commands(commands)
        + _add_inspect_commands(commands)
        + _add_maintenance_commands(commands)
        + _add_tier_commands(commands)
    ):
        _add_store_options(command, argparse.SUPPRESS)
    for command in add_kv_parser(commands):
        _add_store_options(command, argparse.SUPPRESS, lock=False)
    return parser
