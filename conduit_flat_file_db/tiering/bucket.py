"""The object store as the tier sees it: a few calls, typed errors, counted requests.

Every request of the tier goes through :class:`RemoteBucket`, which names objects under the
store's prefix, turns the client's exceptions into the library's typed errors (a missing
object is ``None`` where the caller expects absence) and counts requests and bytes by kind
for ``tiering_status()``. Transient failures (5xx, dropped connections, timeouts) are
retried by the client with exponential backoff and jitter (``Tiering`` sets its bounds);
what still fails surfaces as :class:`RemoteUnavailableError`, never as a hang.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

from ..errors import (
    BucketNotFoundError,
    RemoteAccessError,
    RemoteCorruptionError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    TieringError,
    TieringOptionError,
    UnsafeRemoteError,
)


def _obstore() -> Any:
    import obstore  # pylint: disable=import-outside-toplevel  # an optional extra, imported on first use

    return obstore


def translate(exc: BaseException, what: str) -> TieringError:
    """The library's error for a client exception raised while doing ``what`` (its message: the
    client's first line, and the cause found in the rest)."""
    name = type(exc).__name__
    full = str(exc)
    lowered = full.lower()
    causes = [hint for key, hint in _CAUSES if key in lowered]
    text = f"{what}: {full.splitlines()[0] if full else name}" + (f" ({', '.join(causes)})" if causes else "")
    if "expected an object store" in lowered:  # Tiering(object_store=) given something else
        return TieringOptionError(f"{text}: object_store must be an obstore store (S3Store, MemoryStore...)")
    if "non-partial response" in lowered:  # the client refuses a 200 to a ranged GET
        return UnsafeRemoteError(f"{text}: the server ignores Range; every read would fetch whole segments")
    if name in ("PermissionDeniedError", "UnauthenticatedError") or any(k in lowered for k in _ACCESS_KEYS):
        return RemoteAccessError(text)
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        return BucketNotFoundError(text)
    if any(key in lowered for key in _TIMEOUT_KEYS):
        return RemoteTimeoutError(text)
    return RemoteUnavailableError(text)


# How the client's errors say "timeout" (its first line says "error sending request"; the
# kind is in its debug text). Not "timeout" alone: every message names "retry_timeout".
_TIMEOUT_KEYS = ("timed out", "timedout", "kind: timeout", "deadline has elapsed")
# How the client says a range starts past an object's end (its own check, or the server's 416).
_RANGE_KEYS = ("invalid range", "wanted range starting", "range not satisfiable", "invalidrange")
_ACCESS_KEYS = ("signaturedoesnotmatch", "invalidaccesskeyid", "accessdenied", "403 forbidden")
_CAUSES = (
    ("connecterror", "cannot connect"),
    ("connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("timedout", "timed out"),
    ("kind: timeout", "timed out"),
    ("nosuchbucket", "no such bucket"),
    ("signaturedoesnotmatch", "wrong secret key"),
    ("invalidaccesskeyid", "unknown access key"),
    ("accessdenied", "access denied"),
    ("status: 5", "server error"),
)


def _not_found_types() -> tuple[type[BaseException], ...]:
    try:
        return (FileNotFoundError, _obstore().exceptions.NotFoundError)
    except ImportError:
        return (FileNotFoundError,)


_NOT_FOUND = _not_found_types()


def _raise_if_no_bucket(exc: BaseException, what: str) -> None:
    """A 404 for the bucket itself is BucketNotFoundError; for an object, the caller's absence."""
    lowered = str(exc).lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        raise BucketNotFoundError(f"{what}: {exc}") from None


class RequestStats:
    """Requests and bytes by kind (``get_data``, ``put_index``...), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, kind: str, nbytes: int) -> None:
        """Count one request of ``kind`` that moved ``nbytes``."""
        with self._lock:
            entry = self._counts[kind]
            entry[0] += 1
            entry[1] += nbytes

    def snapshot(self) -> dict[str, dict[str, int]]:
        """{kind: {"requests": n, "bytes": b}}."""
        with self._lock:
            return {kind: {"requests": n, "bytes": b} for kind, (n, b) in sorted(self._counts.items())}


class RemoteBucket:
    """The store's objects under ``prefix/`` in one bucket."""

    def __init__(self, store: Any, prefix: str, url: str) -> None:
        self.store = store
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url
        self.stats = RequestStats()

    def key(self, name: str) -> str:
        """The object key of ``name`` (a path relative to the prefix)."""
        return self.prefix + name

    def get(self, kind: str, name: str, max_bytes: int | None = None) -> bytes | None:
        """The whole object ``name``, or None when it does not exist. An object larger than
        ``max_bytes`` is RemoteCorruptionError, its body never read (a manifest or a claim of
        gigabytes is not one, and would be held in memory)."""
        obs = _obstore()
        try:
            result = obs.get(self.store, self.key(name))
            if max_bytes is not None and int(result.meta["size"]) > max_bytes:
                where = f"{self.url}/{name}"
                raise RemoteCorruptionError(f"{where}: {result.meta['size']} bytes, not a {kind[4:]}", where)
            data = bytes(result.bytes())
        except _NOT_FOUND as exc:
            _raise_if_no_bucket(exc, f"GET {self.url}/{name}")
            self.stats.add(kind, 0)
            return None
        except RemoteCorruptionError:
            raise
        except Exception as exc:  # pylint: disable=broad-exception-caught  # the client's errors, translated
            raise translate(exc, f"GET {self.url}/{name}") from None
        self.stats.add(kind, len(data))
        return data

    def get_range(self, kind: str, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of ``name``; a missing object is FileNotFoundError, a short answer
        RemoteCorruptionError (the object is shorter than its manifest says, or the answer was cut)."""
        obs = _obstore()
        fetch = functools.partial(obs.get_range, self.store, self.key(name), start=start, end=end)
        return self._ranges(kind, name, [start], [end], lambda: [fetch()], f"bytes {start}-{end - 1}")[0]

    def get_ranges(self, kind: str, name: str, starts: list[int], ends: list[int]) -> list[bytes]:
        """Several ranges of one object, coalesced and fetched in parallel by the client."""
        obs = _obstore()
        fetch = functools.partial(obs.get_ranges, self.store, self.key(name), starts=starts, ends=ends, coalesce=2**18)
        return self._ranges(kind, name, starts, ends, fetch, f"({len(starts)} ranges)")

    def _ranges(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, kind: str, name: str, starts: list[int], ends: list[int], fetch: Callable[[], Any], what: str
    ) -> list[bytes]:
        """The answers of ``fetch()`` for the ranges [starts[i], ends[i]) of ``name``, each checked
        to be as long as asked: the errors get_range and get_ranges promise."""
        try:
            out = [bytes(part) for part in fetch()]
        except _NOT_FOUND as exc:
            _raise_if_no_bucket(exc, f"GET {self.url}/{name}")
            self.stats.add(kind, 0)
            raise FileNotFoundError(name) from None
        except Exception as exc:  # pylint: disable=broad-exception-caught  # the client's errors, translated
            if any(key in str(exc).lower() for key in _RANGE_KEYS):  # not a sick server: retrying will not help
                where = f"{self.url}/{name}"
                raise RemoteCorruptionError(
                    f"{where}: {what} is past the object's end (it is shorter than its manifest says)",
                    where,
                    min(starts, default=-1),
                ) from None
            raise translate(exc, f"GET {self.url}/{name} {what}") from None
        except BaseException as exc:  # the client panics when a coalesced answer is shorter than its ranges
            if type(exc).__name__ != "PanicException":
                raise
            where = f"{self.url}/{name}"
            raise RemoteCorruptionError(
                f"{where}: the answer to {what} does not hold them (the object is shorter than its manifest says)",
                where,
                min(starts, default=-1),
            ) from None
        self.stats.add(kind, sum(map(len, out)))
        for start, end, data in zip(starts, ends, out):
            if len(data) != end - start:
                raise RemoteCorruptionError(
                    f"{self.url}/{name}: asked for bytes {start}..{end}, got {len(data)}", f"{self.url}/{name}", start
                )
        return out

    def head(self, name: str) -> tuple[int, str | None] | None:
        """(size, ETag) of ``name``, or None when it does not exist."""
        obs = _obstore()
        try:
            meta = obs.head(self.store, self.key(name))
        except _NOT_FOUND as exc:
            _raise_if_no_bucket(exc, f"HEAD {self.url}/{name}")
            self.stats.add("head", 0)
            return None
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise translate(exc, f"HEAD {self.url}/{name}") from None
        self.stats.add("head", 0)
        return int(meta["size"]), meta.get("e_tag")

    def put(
        self, kind: str, name: str, data: bytes | Iterable[bytes], size: int, *, create: bool = False, chunk: int = 0
    ) -> str | None:
        """Write object ``name``; returns its ETag. With ``create``, only if it does not exist yet:
        FileExistsError otherwise (the server checks, atomically). ``chunk`` > 0 uploads an
        iterable in parts of that size."""
        obs = _obstore()
        options: dict[str, Any] = {"mode": "create"} if create else {}
        if chunk:
            options.update(use_multipart=True, chunk_size=chunk, max_concurrency=4)
        try:
            result = obs.put(self.store, self.key(name), data, **options)
        except (obs.exceptions.AlreadyExistsError, obs.exceptions.PreconditionError):
            self.stats.add(kind, 0)
            raise FileExistsError(name) from None
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise translate(exc, f"PUT {self.url}/{name}") from None
        self.stats.add(kind, size)
        etag = result.get("e_tag")
        return etag.strip('"') if isinstance(etag, str) else None

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        """(name relative to ``folder``, size) of every object under ``folder/``."""
        obs = _obstore()
        base = self.key(folder) + "/"
        try:
            for batch in obs.list(self.store, base, chunk_size=1000):
                self.stats.add("list", 0)
                for meta in batch:
                    yield meta["path"][len(base) :], int(meta["size"])
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise translate(exc, f"LIST {self.url}/{folder}/") from None

    def delete(self, kind: str, name: str) -> None:
        """Remove ``name``; absent already is fine."""
        obs = _obstore()
        try:
            obs.delete(self.store, self.key(name))
        except _NOT_FOUND as exc:
            _raise_if_no_bucket(exc, f"DELETE {self.url}/{name}")
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise translate(exc, f"DELETE {self.url}/{name}") from None
        self.stats.add(kind, 0)


__all__ = ["RemoteBucket", "RequestStats", "translate"]
