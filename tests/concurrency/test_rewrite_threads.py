"""Two threads of one process rewriting the same sealed segment at once (recompress called from
two threads, or a recompress racing the seal hook of the thread that sealed the segment).

Each rewrite writes its new file aside and switches it in under the write lock. The scratch
file must be the rewrite's own: were it named by process and segment only, the second thread
would truncate and rewrite the first thread's finished copy while the first switches it in,
and the segment would then be a half-written file (frames without a seek table) until the
second thread finished, for ever if the process died first, and never fsynced either way.

The interleaving is forced: the first thread's switch waits (an audit hook on its rename) until
the second thread has opened its scratch file and written its frames, and the second thread is
held (a trace function) just before it writes its seek table.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any, Callable

import pytest

from conduit_flat_file_db import DataLocation, FlatFileDb
from conduit_flat_file_db.maintenance import CompressMode, RecompressResult
from conduit_flat_file_db.naming import TEMP_PREFIX, segment_name

pytestmark = pytest.mark.concurrency

StoreFactory = Callable[..., FlatFileDb]
WAIT_SECONDS = 30.0
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"\n"]


class SecondRewriteAtSwitch:
    """When the arming thread is about to switch a rewritten segment in (its rename of a scratch
    file), start ``second`` in another thread and wait until that thread is held just before it
    ends its own copy (SeekableWriter.flush, which writes the seek table); ``release()`` lets it go."""

    def __init__(self, second: Callable[[], list[RecompressResult]]) -> None:
        self.second = second
        self.thread = threading.current_thread()
        self.armed = True
        self.held = threading.Event()
        self.go = threading.Event()
        self.results: list[RecompressResult] = []
        self.errors: list[BaseException] = []
        self.other: threading.Thread | None = None
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not (self.armed and event == "os.rename" and threading.current_thread() is self.thread):
            return
        if not str(args[0]).startswith(TEMP_PREFIX) or not str(args[1]).startswith("data_"):
            return
        self.armed = False  # audit hooks cannot be removed: this one fires once
        self.other = threading.Thread(target=self._run_second)
        self.other.start()
        assert self.held.wait(WAIT_SECONDS), "the second rewrite never reached the end of its copy"

    def _run_second(self) -> None:
        sys.settrace(self._trace)
        try:
            self.results = self.second()
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # reported by the test
            self.errors.append(exc)
        finally:
            sys.settrace(None)

    def _trace(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "flush" and frame.f_code.co_filename.endswith("seekable.py"):
            self.held.set()
            self.go.wait(WAIT_SECONDS)

    def release(self) -> None:
        """Let the second rewrite finish; wait for it."""
        self.go.set()
        if self.other is not None:
            self.other.join(WAIT_SECONDS)


def read_or_error(db: FlatFileDb, location: DataLocation) -> bytes | str:
    """The blob's bytes, or the error reading it raised (the test then lists which blobs failed)."""
    try:
        return db.get(location)
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_two_threads_rewriting_one_segment_never_switch_in_a_half_written_file(make_store: StoreFactory) -> None:
    """Thread one re-frames sealed segment 0 while thread two re-frames it with other frames: thread
    one switches in the copy it wrote, whole; every blob reads back at every moment; thread two
    then finds the segment replaced and reports it "vanished" (rewritten meanwhile)."""
    db = make_store(use_compression=True, frame_bytes=4096)
    blobs = [b" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3000 + 200 * i)) for i in range(12)]
    locations = [db.put(blob) for blob in blobs]
    db.rotate()
    assert db.segments() == [0, 1] and (db.datadir / segment_name(0, True)).exists()

    second = SecondRewriteAtSwitch(lambda: db.recompress([0], mode=CompressMode.KEEP, frame_bytes=1024))
    try:
        first = db.recompress([0], mode=CompressMode.KEEP, frame_bytes=8192)
        assert second.held.is_set(), "the rewrites did not overlap"
        read_meanwhile = [read_or_error(db, location) == blob for location, blob in zip(locations, blobs)]
    finally:
        second.release()
    assert not second.errors, second.errors
    assert [(r.number, r.action) for r in first] == [(0, "reframed")]
    assert [(r.number, r.action) for r in second.results] == [(0, "vanished")]
    assert all(read_meanwhile), "a blob did not read back while the second rewrite was still copying"
    assert [db.get(location) for location in locations] == blobs
    assert db.verify().ok
    assert not [name for name in db.datadir.iterdir() if name.name.startswith(TEMP_PREFIX)]
