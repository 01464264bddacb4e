"""A writer that SIGKILLs itself at one chosen step of an upload or a delete (run by
test_tier_crash.py): ``python tier_crash_child.py DATADIR BUCKET ACTION STEP``.

BUCKET is a directory (obstore's LocalStore there, which outlives the process as a server's
bucket would) or a JSON object naming a real server's bucket: ``{"url": ..., "options": {...}}``.
STEP names the instant: ``<call>:<kind>:<n>:<before|after>`` kills at the n-th call
(1-based) of that kind, before or after the call does its work; calls are the bucket's
``put``/``delete``, the marker write (``marker``) and local retention's unlink (``unlink``).
Prints the locations it was acknowledged as JSON lines before the crash point is reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections import Counter
from typing import Any, Callable

from obstore.store import LocalStore

from conduit_flat_file_db import FlatFileDb
from conduit_flat_file_db import catalog as catalog_module
from conduit_flat_file_db.tiering import Tiering
from conduit_flat_file_db.tiering import bucket as bucket_module
from conduit_flat_file_db.tiering import tier as tier_module

URL = "s3://bucket/store"


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(step: str) -> None:
    call, kind, nth, when = step.split(":")
    seen: Counter[str] = Counter()

    def wrap(original: Callable[..., Any], name: str, kind_of: Callable[..., str]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            if name == call and kind_of(*args) == kind:
                seen[kind] += 1
                if seen[kind] == int(nth) and when == "before":
                    _die()
                result = original(*args, **kwargs)
                if seen[kind] == int(nth) and when == "after":
                    _die()
                return result
            return original(*args, **kwargs)

        return hooked

    cls = bucket_module.RemoteBucket
    cls.put = wrap(cls.put, "put", lambda _self, k, *_: k)  # type: ignore[method-assign]
    cls.delete = wrap(cls.delete, "delete", lambda _self, k, name: name.split("/")[0])  # type: ignore[method-assign]
    tier_cls = tier_module.Tier
    tier_cls._write_file = wrap(tier_cls._write_file, "marker", lambda _self, name, _data: name.rsplit(".", 1)[-1])  # type: ignore[method-assign]  # pylint: disable=protected-access
    # Only the unlinks of local retention (tier.py) and of delete_file (catalog.py): each module
    # gets an ``os`` of its own whose unlink is hooked.
    hooked_unlink = wrap(os.unlink, "unlink", lambda name, **_: name.rsplit(".", 1)[-1])
    for module in (tier_module, catalog_module):
        module.os = _OsWith(hooked_unlink)  # type: ignore[attr-defined]


class _OsWith:
    """The os module, but for its unlink."""

    def __init__(self, unlink: Callable[..., Any]) -> None:
        self.unlink = unlink

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def main() -> None:
    """Run ACTION (upload or delete) with the crash point STEP installed."""
    datadir, where, action, step = sys.argv[1:5]
    if where.startswith("{"):  # a real server: {"url": ..., "options": {endpoint, keys, region}}
        server = json.loads(where)
        tiering = Tiering(server["url"], local_retention_bytes=0, **server["options"])
    else:
        tiering = Tiering(URL, object_store=LocalStore(where), local_retention_bytes=0)
    db = FlatFileDb(datadir, max_file_size=30_000, tiering=tiering)
    if action == "upload":
        _install(step)
        for index in range(40):
            data = bytes([index]) * 3000 + os.urandom(500)
            location = db.put(data)
            row = [location.file_path, location.start_offset, location.end_offset, hashlib.sha256(data).hexdigest()]
            print(json.dumps(row), flush=True)
        db.rotate()
        db.sync_tiering()
    else:
        db.sync_tiering()
        _install(step)
        db.delete_file(db.segment_path(db.segments()[0]))
    print("survived", flush=True)
    db.close()


if __name__ == "__main__":
    main()
