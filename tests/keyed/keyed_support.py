"""Shared helpers of the keyed-store tests: self-describing values, reading a whole store back
with every check a reader can make, op logs of child processes, and child processes started
from a fork server that has already imported the package (a child is up in milliseconds, so a
loop can kill hundreds of them).

Every value is a function of its key and a version number (``value_for``): whoever reads a value
can tell whether it is byte for byte a value that was written for that key, and which one.

Nothing here is a test; the test_keyed_*.py files import it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest
import xxhash

from conduit_flat_file_db import KeyedStore

Key = str | bytes
State = dict[Key, int]
"""A mapping as the tests model it: each key and the version of its value."""

INDEXES = pytest.mark.parametrize("index", ["sqlite", "lmdb"])
CHILD_SECONDS = 120.0


def key_bytes(key: Key) -> bytes:
    """The bytes of a key (UTF-8 for a str key)."""
    return key.encode() if isinstance(key, str) else key


def sort_keys(keys: Iterable[Key]) -> list[Key]:
    """The store's iteration order: bytes keys first, then str keys, each sorted by their bytes."""
    return sorted(keys, key=lambda key: (isinstance(key, str), key_bytes(key)))


def key_to_json(key: Key) -> list[str]:
    """A key as JSON can carry it, its type kept."""
    return ["s", key] if isinstance(key, str) else ["b", key.hex()]


def key_from_json(item: list[str]) -> Key:
    """Inverse of key_to_json."""
    return item[1] if item[0] == "s" else bytes.fromhex(item[1])


def value_for(key: Key, version: int) -> bytes:
    """The value written for ``key`` at ``version``: a header naming both, then 0..5000 bytes that
    are a function of the header (so a value cut short, shifted or mixed up with another is seen)."""
    head = b"%s:%s:%d|" % (b"s" if isinstance(key, str) else b"b", key_bytes(key).hex().encode(), version)
    rng = random.Random(head)
    size = rng.choice([0, 1, rng.randint(2, 300), rng.randint(300, 5000)])
    return head + rng.randbytes(size)


def version_of(key: Key, value: bytes, where: str) -> int:
    """The version of a value read for ``key``; fails unless it is byte for byte value_for(key, version)."""
    head, sep, _rest = bytes(value[:1100]).partition(b"|")
    parts = head.split(b":")
    assert sep and len(parts) == 3 and parts[2].isdigit(), (
        f"{where}: key {key!r} holds {len(value)} bytes that are no value written by the test: {bytes(value[:60])!r}"
    )
    version = int(parts[2])
    expected = value_for(key, version)
    assert bytes(value) == expected, (
        f"{where}: key {key!r} holds {len(value)} bytes, not the {len(expected)} bytes of version {version} "
        f"(header {head!r})"
    )
    return version


def open_keyed(path: Path | str, index: str, **options: Any) -> KeyedStore:
    """A KeyedStore on ``path`` with the ``index`` kind."""
    return KeyedStore(path, index=index, **options)


def read_state(store: KeyedStore, where: str, only: Callable[[Key], bool] | None = None) -> State:
    """The whole mapping of a store, as versions, checked every way a reader can: every listed key
    reads (no dangling key), every value is a value written for its key, meta() agrees with it
    (size, XXH3-64 checksum), len() counts the keys, iteration is in the documented order.
    ``only``: the keys whose values are value_for() values (others are checked against meta only)."""
    keys = list(store)
    assert keys == sort_keys(keys), f"{where}: iteration order is not bytes keys, then str keys, by their bytes"
    assert len(set(keys)) == len(keys), f"{where}: iteration yields a key twice"
    assert len(store) == len(keys), f"{where}: len() is {len(store)}, iteration yields {len(keys)} keys"
    state: State = {}
    for key in keys:
        try:
            value = store[key]
        except Exception as exc:  # pylint: disable=broad-exception-caught  # any error is a dangling key
            raise AssertionError(f"{where}: key {key!r} is listed but its value does not read: {exc!r}") from exc
        if only is None or only(key):
            state[key] = version_of(key, value, where)
        meta = store.meta(key)
        assert meta.size == len(value), f"{where}: meta({key!r}).size is {meta.size}, the value has {len(value)} bytes"
        assert meta.checksum == xxhash.xxh3_64_intdigest(value), f"{where}: meta({key!r}).checksum is not XXH3-64"
    return state


def describe_difference(got: State, want: State) -> str:
    """The keys on which two states differ, for a failure message."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    changed = [(k, want[k], got[k]) for k in want if k in got and got[k] != want[k]]
    return f"missing {missing[:8]} ({len(missing)}), extra {extra[:8]} ({len(extra)}), (key, want, got) {changed[:8]}"


# -- op logs of child processes ---------------------------------------------------------------
#
# A child writes one JSON line per op: "I <op>" before it starts the op (intent), "A" after the
# op returned (acknowledged). An op is {"op": name, "items": [[key, version or null], ...]}: a
# version for a key put, null for a key deleted. A kill can leave a torn last line; it is ignored.


def op_line(op: str, items: list[tuple[Key, int | None]]) -> bytes:
    """The intent line of an op."""
    return b"I " + json.dumps({"op": op, "items": [[key_to_json(k), v] for k, v in items]}).encode() + b"\n"


def read_ops(log: Path) -> tuple[list[list[tuple[Key, int | None]]], list[tuple[Key, int | None]] | None]:
    """(acknowledged ops in order, the op in flight when the log ends, or None)."""
    data = log.read_bytes() if log.exists() else b""
    acked: list[list[tuple[Key, int | None]]] = []
    pending: list[tuple[Key, int | None]] | None = None
    for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
        if line.startswith(b"I "):
            assert pending is None, f"{log}: two intents without an acknowledgement between them"
            pending = [(key_from_json(k), v) for k, v in json.loads(line[2:])["items"]]
        elif line == b"A":
            assert pending is not None, f"{log}: an acknowledgement without an intent"
            acked.append(pending)
            pending = None
    return acked, pending


def apply_op(state: State, items: Iterable[tuple[Key, int | None]]) -> State:
    """A new state: ``state`` with one op applied (items in order, later ones win)."""
    new = dict(state)
    for key, version in items:
        if version is None:
            new.pop(key, None)
        else:
            new[key] = version
    return new


class OpLog:
    """The writing end of an op log (unbuffered appends; a SIGKILL loses no complete line)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def intent(self, op: str, items: list[tuple[Key, int | None]]) -> None:
        """Log an op about to start."""
        os.write(self.fd, op_line(op, items))

    def ack(self) -> None:
        """Log that the op returned."""
        os.write(self.fd, b"A\n")

    def note(self, text: str) -> None:
        """A comment line (ignored by read_ops)."""
        os.write(self.fd, f"# {text}\n".encode())


# -- child processes ---------------------------------------------------------------------------


def child_context() -> multiprocessing.context.ForkServerContext:
    """Processes forked from a server that has imported the package and numpy already."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["conduit_flat_file_db", "keyed_support", "keyed_workers", "numpy", "xxhash"])
    return ctx


def call_in_child(send: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``target(*args)`` and send ("ok", result) or ("error", traceback)."""
    try:
        send.send(("ok", target(*args)))
    except BaseException:  # pylint: disable=broad-exception-caught  # sent to the parent, which fails
        send.send(("error", traceback.format_exc()))


def in_children(target: Any, *argsets: tuple[Any, ...]) -> list[Any]:
    """Run ``target(*args, start)`` for each of ``argsets`` in a child process each, all let go
    at once by the Event ``start``; their results, in order."""
    ctx = child_context()
    start = ctx.Event()
    pipes, procs = [], []
    for args in argsets:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=call_in_child, args=(send, target, (*args, start)))
        proc.start()
        send.close()
        pipes.append(recv)
        procs.append(proc)
    start.set()
    results = []
    try:
        for recv in pipes:
            assert recv.poll(120), "a child did not finish within 120 s"
            status, result = recv.recv()
            assert status == "ok", result
            results.append(result)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return results


class ChildFailed(AssertionError):
    """A check run in a child process failed, or the child died."""


def run_in_child(target: Callable[..., Any], *args: Any, timeout: float = CHILD_SECONDS) -> Any:
    """Run ``target(*args)`` in a child process and return its result; raise ChildFailed with the
    end of the child's traceback if it raised, or say so if it died (a crash in a C extension,
    e.g. a memory map of a damaged file, kills only the child)."""
    what = f"{target.__name__}({str(args[0]) if args else ''}, ...)"
    ctx = child_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=call_in_child, args=(send, target, args))
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise ChildFailed(f"{what} did not finish within {timeout} s in its child process")
        status, result = recv.recv()
    except EOFError:
        proc.join(timeout)
        raise ChildFailed(f"{what}: the child process died (exit code {proc.exitcode}) without an answer") from None
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    if status != "ok":
        raise ChildFailed(f"{what} failed in its child process:\n" + "\n".join(str(result).splitlines()[-14:]))
    return result


def tree_bytes(path: Path) -> int:
    """Total size of the regular files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def iter_chunks(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs that cut range(total) into pieces of at most ``chunk``."""
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)
