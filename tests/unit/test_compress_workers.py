"""The process's compression workers (frames.compress_frames with ``threads > 1``): the same
frames as one thread makes, in order; a forked child compresses with workers of its own; and
with no worker to take a run (the interpreter exiting), the caller compresses it."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import tracemalloc
from typing import Any

import pytest
import zstandard

from conduit_flat_file_db import frames
from conduit_flat_file_db.frames import PARALLEL_MIN_BYTES, compress_frames


def mixed(size: int, seed: int) -> bytes:
    """``size`` bytes: random runs and repeated text, so some frames compress and some are stored."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    while sum(len(part) for part in parts) < size:
        parts.append(rng.randbytes(5000) if rng.random() < 0.5 else b"a log line %d\n" % rng.randrange(99) * 300)
    return b"".join(parts)[:size]


@pytest.mark.parametrize("threads", [2, 3, 8])
@pytest.mark.parametrize("frame_bytes", [16384, 100_000, 2**20])
def test_frames_compressed_by_workers_are_the_frames_one_thread_makes(threads: int, frame_bytes: int) -> None:
    """Byte for byte the same frames, in order, as the caller's thread alone makes; each one
    decompresses to its piece."""
    data = mixed(3 * 2**20 + 12345, frame_bytes)
    one = compress_frames(data, frame_bytes, 3, 1)
    many = compress_frames(memoryview(data), frame_bytes, 3, threads)
    assert many == one
    assert len(many) == -(-len(data) // frame_bytes)
    pieces = [zstandard.ZstdDecompressor().decompress(frame) for frame in many]
    assert b"".join(pieces) == data


def test_runs_go_to_workers_and_small_batches_stay_in_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of PARALLEL_MIN_BYTES or more is cut into one run per thread, all but the first
    compressed by a worker (when the workers take them while the caller compresses its own);
    a smaller one is compressed by the caller alone."""
    seen: list[str] = []
    real = frames._compress_run  # pylint: disable=protected-access

    def spy(*args: Any) -> list[bytes]:
        name = threading.current_thread().name
        seen.append(name)
        if not name.startswith("ffdb-compress"):
            time.sleep(0.2)  # the caller's own run: long enough for the workers to take theirs
        return real(*args)

    monkeypatch.setattr(frames, "_compress_run", spy)
    data = mixed(PARALLEL_MIN_BYTES * 4, 5)
    assert compress_frames(data, 16384, 3, 3) == compress_frames(data, 16384, 3, 1)
    assert len(seen) == 4  # three runs, then the one thread's single run
    assert seen[-1] == threading.current_thread().name
    assert sorted(name.startswith("ffdb-compress") for name in seen[:3]) == [False, True, True]
    seen.clear()
    compress_frames(data[: PARALLEL_MIN_BYTES - 1], 16384, 3, 3)
    assert seen == [threading.current_thread().name]


def test_the_caller_compresses_a_run_no_worker_can_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the workers refuse work (as a ThreadPoolExecutor does once the interpreter is
    exiting), every run is compressed in the caller's thread: the same frames, no error."""
    data = mixed(2**20, 6)
    monkeypatch.setattr(frames._WORKERS, "submit", lambda workers, job: None)  # pylint: disable=protected-access
    assert compress_frames(data, 16384, 3, 4) == compress_frames(data, 16384, 3, 1)


def test_a_forked_child_compresses_with_workers_of_its_own() -> None:
    """The parent's workers do not exist in a forked child: the child makes its own and its
    compression returns (it waited for ever on the parent's, which never run its runs)."""
    data = mixed(2**20, 7)
    expected = compress_frames(data, 16384, 3, 1)
    assert compress_frames(data, 16384, 3, 2) == expected  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when it compressed the same frames
        try:
            signal.alarm(20)  # a hang ends the child, which the parent sees
            code = 0 if compress_frames(data, 16384, 3, 2) == expected else 1
        except BaseException:  # pylint: disable=broad-exception-caught  # any failure is exit 1
            code = 1
        os._exit(code)  # pylint: disable=protected-access
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_run_no_worker_started_is_compressed_by_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the one worker is busy (here: held inside another run), a caller does not wait in
    the queue: it takes its run back and returns the same frames."""
    monkeypatch.setattr(frames, "_WORKERS", frames._Workers())  # pylint: disable=protected-access  # one worker
    data = mixed(2**20, 8)
    expected = compress_frames(data, 16384, 3, 1)
    release = threading.Event()
    started = threading.Event()
    real = frames._compress_run  # pylint: disable=protected-access

    def held(*args: Any) -> list[bytes]:
        if threading.current_thread().name.startswith("ffdb-compress") and not started.is_set():
            started.set()
            release.wait(30)
        return real(*args)

    monkeypatch.setattr(frames, "_compress_run", held)
    workers = frames._WORKERS  # pylint: disable=protected-access
    blocker = workers.submit(1, (memoryview(data), 16384, 3, 0, 1, 0.125))  # the one worker, held inside it
    try:
        assert blocker is not None and started.wait(10)
        done: list[list[bytes]] = []
        caller = threading.Thread(target=lambda: done.append(compress_frames(data, 16384, 3, 2)))
        caller.start()
        caller.join(10)
        assert done == [expected], "the caller waited for a busy worker"
    finally:
        release.set()
    assert blocker.done.wait(30) and len(blocker.frames) == 1


def test_the_callers_buffer_can_be_resized_as_soon_as_its_frames_are_back() -> None:
    """No worker keeps a view of the caller's buffer once compress_frames returns, whether the
    worker ran the run or the caller took it back: a bytearray can be resized at once, as
    SeekableWriter does (BufferError "Existing exports of data" when a worker still held one)."""
    buffer = bytearray(mixed(2**20, 9))
    expected = compress_frames(bytes(buffer[: 2**19]), 16384, 3, 1)
    for _ in range(300):
        assert compress_frames(memoryview(buffer)[: 2**19], 16384, 3, 2) == expected
        buffer += b"x" * 100  # a resize: refused while any export of the buffer exists
        del buffer[-100:]


def test_an_error_in_a_worker_reaches_the_caller_and_no_worker_keeps_its_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that fails in a worker raises its error in the caller (zstandard raises
    ZstdError, or MemoryError), and once it is raised no worker holds a view of the caller's
    buffer: it can be resized."""
    real = frames._compress_run  # pylint: disable=protected-access

    def failing(*args: Any) -> list[bytes]:
        if threading.current_thread().name.startswith("ffdb-compress"):
            raise MemoryError("no memory for a compression context")
        time.sleep(0.2)  # the caller's own run: the workers take theirs meanwhile
        return real(*args)

    monkeypatch.setattr(frames, "_compress_run", failing)
    buffer = bytearray(mixed(2**20, 10))
    with pytest.raises(MemoryError, match="compression context"):
        compress_frames(memoryview(buffer), 16384, 3, 4)
    buffer += b"x"  # refused with BufferError while an export of the buffer exists


@pytest.mark.parametrize("threads", [1, 2])
def test_frames_of_compressible_data_hold_their_own_size_not_the_inputs(threads: int) -> None:
    """zstandard's compress keeps an output bound as large as its input behind each frame: the
    frames of 64 MiB of zeros, a few KiB in all, must not hold 64 MiB (a put of 4 GiB held 4 GiB)."""
    data = bytearray(64 * 2**20)
    tracemalloc.start()
    try:
        made = compress_frames(memoryview(data), 2**20, 3, threads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(len(frame) for frame in made) < 64 * 1024
    assert peak < 8 * 2**20, peak
