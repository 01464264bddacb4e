"""``Tiering``: where a store's sealed segments go, and how much of them stays on local disk."""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import urllib.parse
from typing import Any

from ..errors import TieringOptionError

DEFAULT_REMOTE_CACHE_BYTES = 64 * 2**20
DEFAULT_REFRESH_SECONDS = 30.0
DEFAULT_TIMEOUT = "30s"
DEFAULT_CONNECT_TIMEOUT = "5s"
# obstore retries 5xx answers, connection errors and timeouts of idempotent requests with
# exponential backoff and jitter; a minute bounds how long a read waits for a sick server.
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_MAX_RETRIES = 8
QUICK_RETRY_SECONDS = 5.0


def _non_negative(name: str, value: float, *, integer: bool) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'} or None, not {type(value).__name__}")
    if float(value) < 0 or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")


def check_timeout(name: str, value: Any) -> None:
    """TypeError or ValueError unless ``value`` is None or a finite number of seconds >= 0 (NaN
    would never expire: a wait bounded by it would be unbounded)."""
    if value is not None:
        _non_negative(name, value, integer=False)


def parse_url(url: Any) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at its ends)."""
    if not isinstance(url, str):
        raise TypeError(f"the tier's URL must be a str like 's3://bucket/prefix', not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if scheme != "s3" or not sep:
        raise ValueError(f"the tier's URL must look like 's3://bucket/prefix', got {url!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):  # no object key may hold one: refused now, not at open
        raise ValueError(f"the tier's URL {url!r} holds a control character")
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise ValueError(f"no valid bucket name in {url!r}")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"the prefix of {url!r} has an empty, '.' or '..' part")
    return bucket, prefix


class Tiering:
    """Sealed segments of a store, uploaded to S3-compatible object storage.

    Args:
        url: ``s3://bucket/prefix``: every object of the store is under ``prefix/``.
        local_retention_bytes: once uploaded, sealed data files leave the local disk, oldest
            first, until the local segments take at most this many bytes (0: none stays).
            None (the default): no limit by size.
        local_retention_age: once uploaded, sealed data files older than this many seconds
            (since their seal) leave the local disk. None: no limit by age. With both None,
            every local copy stays (the bucket is a replica).
        remote_cache_bytes: bound of the in-memory cache of verified remote ranges.
        upload_bytes_per_second: uploads (and their read-backs) send at most this many bytes
            per second on average, in the background and in ``sync_tiering()`` alike, so that
            they leave the disk, the cores and the network to the store's own reads and writes.
            None (the default): as fast as the server takes them.
        refresh_seconds: a read-only remote open (``FlatFileDb.open_remote``) lists the
            bucket again at most this often by itself; ``refresh()`` does it at once.
        object_store: an obstore store to use instead of one built from the URL (another
            cloud, an in-memory store in tests). Its root is the bucket: the prefix still applies.
        client_options: the rest go to obstore's ``S3Store`` (``endpoint``, ``region``,
            ``access_key_id``, ``secret_access_key``, ``client_options``, ``retry_config``...);
            what is not given comes from the standard ``AWS_*`` environment variables.
    """

    __slots__ = (
        "bucket",
        "client_options",
        "local_retention_age",
        "local_retention_bytes",
        "object_store",
        "prefix",
        "refresh_seconds",
        "remote_cache_bytes",
        "upload_bytes_per_second",
        "url",
    )

    def __init__(  # pylint: disable=too-many-arguments
        self,
        url: str,
        *,
        local_retention_bytes: int | None = None,
        local_retention_age: float | None = None,
        remote_cache_bytes: int = DEFAULT_REMOTE_CACHE_BYTES,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        upload_bytes_per_second: int | None = None,
        object_store: Any = None,
        **client_options: Any,
    ) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = url
        if local_retention_bytes is not None:
            _non_negative("local_retention_bytes", local_retention_bytes, integer=True)
        if local_retention_age is not None:
            _non_negative("local_retention_age", local_retention_age, integer=False)
        _non_negative("remote_cache_bytes", remote_cache_bytes, integer=True)
        _non_negative("refresh_seconds", refresh_seconds, integer=False)
        if upload_bytes_per_second is not None:
            _non_negative("upload_bytes_per_second", upload_bytes_per_second, integer=True)
            if upload_bytes_per_second == 0:
                raise ValueError("upload_bytes_per_second must be > 0 (None: no limit); 0 would never upload")
        self.local_retention_bytes = local_retention_bytes
        self.local_retention_age = local_retention_age
        self.remote_cache_bytes = remote_cache_bytes
        self.refresh_seconds = float(refresh_seconds)
        self.upload_bytes_per_second = upload_bytes_per_second
        self.object_store = object_store
        self.client_options = dict(client_options)
        if object_store is None and _has_client():
            self.build_store()  # an unknown or malformed client option is refused here, before any open

    def __repr__(self) -> str:
        return (
            f"Tiering({self.url!r}, local_retention_bytes={self.local_retention_bytes!r}, "
            f"local_retention_age={self.local_retention_age!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self.object_store is not None:
            raise TypeError("a Tiering with an object_store instance cannot be pickled; give the URL and options")
        return (_rebuild, (self.url, self._options()))

    def _options(self) -> dict[str, Any]:
        return {
            "local_retention_bytes": self.local_retention_bytes,
            "local_retention_age": self.local_retention_age,
            "remote_cache_bytes": self.remote_cache_bytes,
            "refresh_seconds": self.refresh_seconds,
            "upload_bytes_per_second": self.upload_bytes_per_second,
            **self.client_options,
        }

    def build_store(self, quick: bool = False) -> Any:
        """The obstore store of the bucket (the given one, or an ``S3Store`` from the URL and
        the ``AWS_*`` environment). ``quick``: retries bounded by seconds, for the checks of an open."""
        if self.object_store is not None:
            return self.object_store
        try:
            from obstore.store import S3Store  # pylint: disable=import-outside-toplevel  # an optional extra
        except ImportError as exc:
            raise ImportError("tiering needs the S3 client: pip install 'conduit_flat_file_db[s3]' (obstore)") from exc
        options = dict(self.client_options)
        client: dict[str, Any] = {"timeout": DEFAULT_TIMEOUT, "connect_timeout": DEFAULT_CONNECT_TIMEOUT}
        endpoint = options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
        if not isinstance(endpoint, str):
            raise TieringOptionError(f"endpoint must be a str like 'http://host:port', not {type(endpoint).__name__}")
        if endpoint and not _valid_endpoint(endpoint):  # the client panics on a request to a malformed one
            raise TieringOptionError(f"the endpoint {endpoint!r} is not a URL like 'http://host:port'")
        if endpoint.startswith("http://"):
            client["allow_http"] = True
        extra = options.pop("client_options", {}) or {}
        if not isinstance(extra, dict):
            raise TieringOptionError(f"client_options must be a dict, not {type(extra).__name__}")
        client.update(extra)
        retry = options.pop("retry_config", None)
        if quick:
            retry = {"max_retries": 2, "retry_timeout": datetime.timedelta(seconds=QUICK_RETRY_SECONDS)}
        elif retry is None:
            retry = {
                "max_retries": DEFAULT_MAX_RETRIES,
                "retry_timeout": datetime.timedelta(seconds=DEFAULT_RETRY_SECONDS),
            }
        # Uploads are checked by the tier itself (the server's MD5 of what it stored, or a read-back),
        # so the body's SHA-256 in the signature adds nothing but CPU: 40% slower uploads measured here.
        options.setdefault("unsigned_payload", True)
        try:
            return S3Store(self.bucket, client_options=client, retry_config=retry, **options)  # type: ignore[arg-type]
        except Exception as exc:  # pylint: disable=broad-exception-caught  # the client's refusal, typed
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TieringOptionError(f"{self.url}: the S3 client refuses the options ({first})") from None


def _valid_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is an http(s) URL with a host (and, if any, a valid port)."""
    try:
        parts = urllib.parse.urlsplit(endpoint)
        _ = parts.port  # ValueError when not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _has_client() -> bool:
    """Whether the S3 client (the optional extra) is installed."""
    return importlib.util.find_spec("obstore") is not None


def _rebuild(url: str, options: dict[str, Any]) -> Tiering:
    return Tiering(url, **options)


__all__ = ["Tiering", "check_timeout", "parse_url"]
