"""Child process of the full-disk tests: runs steps of a store on a (nearly) full filesystem.

Usage: ``python fulldisk_child.py SPEC.json``. The spec names the store, its options and a
list of steps; each step's outcome (done, or the error it raised) and every blob the store
acknowledged are printed as one JSON object on stdout. A step that raises OSError is an
expected outcome here (the test judges it); the process itself must always exit 0, so a
SIGBUS shows as a negative return code in the test instead of killing pytest.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))

from disk_support import Filler, blob  # pylint: disable=wrong-import-position,import-error

from conduit_flat_file_db import DataLocation, FlatFileDb  # pylint: disable=wrong-import-position
from conduit_flat_file_db.state import W_DIRTY  # pylint: disable=wrong-import-position


class Runner:
    """The store of one spec and what it acknowledged: {location: [tag, size]}."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.filler = Filler(spec["mount"])
        self.db: FlatFileDb | None = None
        self.acked: dict[tuple[str, int, int], tuple[int, int]] = {}
        self.next_tag = int(spec.get("first_tag", 1_000_000))

    def store(self) -> FlatFileDb:
        """The open store (opened on first use)."""
        if self.db is None:
            self.db = FlatFileDb(self.spec["datadir"], self.spec["lock"], **self.spec.get("options", {}))
            if self.spec.get("max_size"):
                self.db.MAX_DAT_FILE_SIZE = self.spec["max_size"]
        return self.db

    def _ack(self, location: DataLocation, tag: int, size: int) -> None:
        self.acked[(location[0], location[1], location[2])] = (tag, size)

    def _tags(self, sizes: list[int]) -> list[tuple[int, int]]:
        tags = [(self.next_tag + i, size) for i, size in enumerate(sizes)]
        self.next_tag += len(sizes)
        return tags

    def _forget_segments(self, numbers: list[int]) -> None:
        db = self.store()
        gone = {db.segment_path(n) for n in numbers} | {db.segment_path(n, as_issued=True) for n in numbers}
        gone_numbers = set(numbers)
        for key in list(self.acked):
            name = os.path.basename(key[0])
            if key[0] in gone or int(name[5:13]) in gone_numbers:
                del self.acked[key]

    # -- steps: each returns a small JSON-able detail ---------------------------------

    def op_open(self, _step: dict[str, Any]) -> Any:
        """Open the store; returns its segment numbers."""
        return self.store().segments()

    def op_close(self, _step: dict[str, Any]) -> Any:
        """Close the store (the next step opens it again)."""
        if self.db is not None:
            self.db.close()
            self.db = None

    def op_put(self, step: dict[str, Any]) -> Any:
        """Put one blob per size in ``sizes``, one call each."""
        db = self.store()
        for tag, size in self._tags(step["sizes"]):
            self._ack(db.put(blob(tag, size)), tag, size)

    def op_put_until_full(self, step: dict[str, Any]) -> Any:
        """Put blobs of ``size`` until the disk refuses one (that OSError is the step's outcome)."""
        db = self.store()
        for _ in range(100_000):
            ((tag, size),) = self._tags([step["size"]])
            self._ack(db.put(blob(tag, size)), tag, size)
        raise AssertionError("the disk never filled up")

    def op_put_many(self, step: dict[str, Any]) -> Any:
        """Put blobs of ``sizes`` in one put_many call."""
        tags = self._tags(step["sizes"])
        for location, (tag, size) in zip(self.store().put_many([blob(t, s) for t, s in tags]), tags):
            self._ack(location, tag, size)

    def op_put_stream(self, step: dict[str, Any]) -> Any:
        """Store a blob of ``size`` bytes with put_stream."""
        ((tag, size),) = self._tags([step["size"]])
        self._ack(self.store().put_stream(io.BytesIO(blob(tag, size))), tag, size)

    def op_write_file(self, step: dict[str, Any]) -> Any:
        """Write file ``name`` (outside the datadir) holding blob ``tag`` of ``size`` bytes."""
        with open(os.path.join(self.spec["mount"], step["name"]), "wb") as handle:
            handle.write(blob(step["tag"], step["size"]))

    def op_adopt(self, step: dict[str, Any]) -> Any:
        """Adopt the file ``name`` that op_write_file wrote."""
        location = self.store().adopt_file(os.path.join(self.spec["mount"], step["name"]))
        self._ack(location, step["tag"], step["size"])

    def op_exists(self, step: dict[str, Any]) -> Any:
        """Whether file ``name`` is (still) in the mount's top directory."""
        return os.path.exists(os.path.join(self.spec["mount"], step["name"]))

    def op_dirty(self, _step: dict[str, Any]) -> Any:
        """Whether the state page's dirty flag is up: the mutable segment awaits a writer's recovery."""
        return bool(self.store()._state.words[W_DIRTY])  # pylint: disable=protected-access  # the test's probe

    def op_rotate(self, _step: dict[str, Any]) -> Any:
        """Seal the mutable segment; returns the new one's number."""
        return str(self.store().rotate()[1])

    def op_delete_oldest(self, _step: dict[str, Any]) -> Any:
        """Delete the oldest segment; returns its number."""
        db = self.store()
        number = db.segments()[0]
        db.delete_file(db.segment_path(number))
        self._forget_segments([number])
        return number

    def op_retention(self, step: dict[str, Any]) -> Any:
        """enforce_retention(max_bytes, keep_min); returns the deleted numbers."""
        deleted = self.store().enforce_retention(max_bytes=step.get("max_bytes", 0), keep_min=step.get("keep_min", 0))
        self._forget_segments(deleted)
        return deleted

    def op_recompress(self, step: dict[str, Any]) -> Any:
        """Recompress every sealed segment (``compress``: True or False)."""
        return [r.action for r in self.store().recompress(mode=step["compress"])]

    def op_compact(self, _step: dict[str, Any]) -> Any:
        """Compact every sealed segment (all blobs live) and finish; returns the deleted numbers."""
        db = self.store()
        sealed = db.segments()[:-1]
        compaction = db.compact(sealed, lambda _location: True)
        for old, new in compaction.mapping.items():
            key = (old[0], old[1], old[2])
            if key in self.acked:
                self.acked[(new[0], new[1], new[2])] = self.acked[key]
        deleted = db.finish_compaction(compaction)
        self._forget_segments(deleted)
        return deleted

    def op_fill(self, step: dict[str, Any]) -> Any:
        """Leave exactly ``free`` bytes free on the filesystem."""
        self.filler.fill_to(step["free"])

    def op_release(self, _step: dict[str, Any]) -> Any:
        """Give the filler's space back."""
        self.filler.release()

    def op_hold_read_lock(self, step: dict[str, Any]) -> Any:
        """Hold the store's read lock for ``seconds``, creating file ``ready`` once held."""
        with self.store().read_lock():
            Path(step["ready"]).touch()
            time.sleep(step["seconds"])

    def op_wait_for(self, step: dict[str, Any]) -> Any:
        """Wait until file ``path`` exists."""
        deadline = time.monotonic() + 30
        while not os.path.exists(step["path"]):
            if time.monotonic() > deadline:
                raise AssertionError(f"{step['path']} never appeared")
            time.sleep(0.01)

    def op_read_back(self, _step: dict[str, Any]) -> Any:
        """Every blob this child was acknowledged reads back as put; returns how many."""
        db = self.store()
        for (path, start, end), (tag, size) in self.acked.items():
            if db.get(DataLocation(path, start, end)) != blob(tag, size):
                raise AssertionError(f"blob {tag} at {path} {start}..{end} reads back different bytes")
        return len(self.acked)

    def op_verify(self, _step: dict[str, Any]) -> Any:
        """verify() must find nothing wrong."""
        report = self.store().verify()
        if not report.ok:
            raise AssertionError(str(report))

    def run(self) -> dict[str, Any]:
        """Run every step; a step that raises is recorded and the next one runs."""
        outcomes = []
        for step in self.spec["steps"]:
            method: Callable[[dict[str, Any]], Any] = getattr(self, "op_" + step["op"])
            try:
                detail = method(step)
            except OSError as exc:
                outcomes.append(
                    {"op": step["op"], "ok": False, "errno": exc.errno, "error": repr(exc), "type": type(exc).__name__}
                )
            except Exception as exc:  # pylint: disable=broad-exception-caught  # the test judges it
                outcomes.append(
                    {
                        "op": step["op"],
                        "ok": False,
                        "errno": None,
                        "error": traceback.format_exc(),
                        "type": type(exc).__name__,
                    }
                )
            else:
                outcomes.append({"op": step["op"], "ok": True, "detail": detail})
        if self.db is not None:
            try:
                self.db.close()
            except OSError as exc:
                outcomes.append(
                    {
                        "op": "final close",
                        "ok": False,
                        "errno": exc.errno,
                        "error": repr(exc),
                        "type": type(exc).__name__,
                    }
                )
        return {"outcomes": outcomes, "acked": [[*key, *value] for key, value in self.acked.items()]}


def main() -> None:
    """Run the spec named on the command line; print its report as JSON."""
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    print(json.dumps(Runner(spec).run()))


if __name__ == "__main__":
    main()
