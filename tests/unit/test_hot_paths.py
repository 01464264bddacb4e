"""The hot paths' cost, pinned: Python calls and system calls of a warm put() and get() of 1 KiB.

Users rely on small puts and gets running near disk speed, and the cheapest way to lose that is
one more call on every operation: a helper split out of a function, a stat, a second pread. These
tests count, for a warm raw store and a warm compressed store, in a child process:

- Python-level calls (``sys.setprofile`` events: ``call`` for Python functions, ``c_call`` for
  builtins), per operation, and
- system calls of the calling thread (``strace -f``, between marker syscalls; futex is left out,
  since lock hand-offs between threads depend on timing, not on the code path),

and compare them with the counts measured on the code as it is (upper bounds: fewer is welcome;
then lower the numbers here). All counts are deterministic: each child opens a fresh store, warms it
with the same 300 puts and gets, then measures the same 40 put/get rounds. The lock's lease (see
locking.LEASE_SECONDS) is the one timing-dependent choice on these paths, so each case runs twice
with it fixed: FFDB_LEASE_SECONDS=0 (no lease: every put takes and gives back the inter-process
lock, the costliest path) and FFDB_LEASE_SECONDS=600 (the lease is held: the cheapest path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROUNDS = 40
MARKER = "/ffdb-hot-path-marker/"

# Runs in a child: a fresh interpreter, so nothing of the test session is on the measured paths.
CHILD = f"""
import collections, gc, json, os, sys
from pathlib import Path
from conduit_flat_file_db import FlatFileDb

root, compressed = Path(sys.argv[1]), sys.argv[2] == "compressed"
db = FlatFileDb(root / "store", root / "store.lock", use_compression=compressed)
blob = bytes(range(256)) * 4  # 1 KiB
for _ in range(300):  # warm: maps grown, readers and caches open, the lease thread started
    assert db.get(db.put(blob)) == blob
counts = {{"put": [], "get": []}}

def measure(op, fn, arg):
    events = collections.Counter()
    def profile(frame, event, arg):
        events[event] += 1
    os.access({MARKER!r} + op, os.F_OK)  # marker syscall: strace shows where the operation starts
    gc.disable()  # a collection's callbacks (the engine has one) are no calls of the operation's
    sys.setprofile(profile)
    result = fn(arg)
    sys.setprofile(None)  # counted itself: one c_call in every number below
    gc.enable()
    os.access({MARKER!r} + "end", os.F_OK)
    counts[op].append([events["call"], events["c_call"]])
    return result

for _ in range({ROUNDS}):
    location = measure("put", db.put, blob)
    assert measure("get", db.get, location) == blob
db.close()
print(json.dumps(counts))
"""

CASES = [(kind, lease) for kind in ("raw", "compressed") for lease in ("no-lease", "lease-held")]
LEASE_SECONDS = {"no-lease": "0", "lease-held": "600"}

# (Python calls, builtin calls) of a typical operation (the median of the rounds) and of all
# ROUNDS operations together; the total also holds the rare costly operation, e.g. a compressed
# put that moves its segment's seek table and maps its new padding (one in these 40 rounds).
# Measured on CPython 3.11 (the Python of CI and of the Docker image): other versions count the
# same code differently (e.g. which builtins are calls), so they need their own measurement.
PYTHON_CALLS_MEASURED_ON = (3, 11)
PYTHON_CALLS: dict[tuple[str, str, str], tuple[tuple[int, int], tuple[int, int]]] = {
    ("raw", "no-lease", "put"): ((7, 14), (280, 560)),
    ("raw", "no-lease", "get"): ((10, 12), (400, 480)),
    ("raw", "lease-held", "put"): ((5, 11), (200, 440)),
    ("raw", "lease-held", "get"): ((10, 12), (400, 480)),
    ("compressed", "no-lease", "put"): ((8, 22), (360, 960)),
    ("compressed", "no-lease", "get"): ((23, 38), (920, 1520)),
    ("compressed", "lease-held", "put"): ((6, 19), (280, 835)),
    ("compressed", "lease-held", "get"): ((23, 38), (920, 1520)),
}

# System calls of the calling thread over all ROUNDS operations (futex and the memory allocator's
# calls left out, see syscalls_per_operation), and the most
# any one operation made. Measured: a raw put writes through the map (no write call; fcntl lock
# and unlock without a lease); a raw get is one pread; a compressed put stores its frame and records
# through the maps and makes no system call (its seek table lags, brought up to date every 1,024
# such puts; one put in 40 moves the table, pwrite, pwritev and ftruncate, and maps the new padding:
# lseek, fallocate, pwritev of zeros, fstat, mmap, and the old map's close; before the move the
# lagging table where it is lists every frame: three preads and two pwrites); a compressed get is
# three preads.
# Mapping the new padding may also give blocks to the padding in the seek table's page (a second
# lseek and a fallocate, with its zeros): whether that page still holds a hole depends on the
# filesystem's writeback of the zeros written before, so the compressed puts' totals and
# largest allow those two or three calls more (one syscall more per put would add 40).
SYSCALLS: dict[tuple[str, str, str], tuple[int, int]] = {
    ("raw", "no-lease", "put"): (80, 2),  # fcntl 80
    ("raw", "no-lease", "get"): (40, 1),  # pread64 40
    ("raw", "lease-held", "put"): (0, 0),
    ("raw", "lease-held", "get"): (40, 1),  # pread64 40
    ("compressed", "no-lease", "put"): (100, 15),  # fcntl 81, pwrite64 6, pread64 3, pwritev2 1, ftruncate 1, map 5-8
    ("compressed", "no-lease", "get"): (120, 3),  # pread64 120
    ("compressed", "lease-held", "put"): (20, 13),  # pwrite64 6, pread64 3, pwritev2 1, ftruncate 1, fcntl 1, map 5-8
    ("compressed", "lease-held", "get"): (120, 3),  # pread64 120
}


Counts = dict[str, list[list[int]]]  # per operation, per round: [Python calls, builtin calls]


def run_child(tmp_path: Path, kind: str, lease: str, strace: str | None = None) -> tuple[Counts, Path]:
    """Run the measuring child (under ``strace -f`` when given); its counts and the trace file."""
    trace = tmp_path / "trace.txt"
    command = [sys.executable, "-c", CHILD, str(tmp_path / "data"), kind]
    if strace is not None:
        command = [strace, "-f", "-qq", "-o", str(trace), *command]
    env = {**os.environ, "FFDB_LEASE_SECONDS": LEASE_SECONDS[lease]}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"measuring child failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1]), trace


def syscalls_per_operation(trace: Path) -> dict[str, list[Counter[str]]]:
    """From an ``strace -f`` trace: per operation, the system calls of the marking thread."""
    found: dict[str, list[Counter[str]]] = {"put": [], "get": []}
    marking_thread: str | None = None
    current: list[Counter[str]] = []  # the operation being traced, or none between an end marker and the next
    for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
        thread, _, call = line.partition(" ")
        call = call.lstrip()
        marker = re.search(re.escape(MARKER) + r"(\w+)", call)
        if marker is not None and call.startswith(("access(", "faccessat")):
            marking_thread = thread
            current = [] if marker.group(1) == "end" else [Counter()]
            found.get(marker.group(1), []).extend(current)
        elif thread == marking_thread and current and not call.startswith(("<...", "+++", "---")):
            name = call.partition("(")[0]
            # Left out: futex, and the memory allocator's calls (brk, madvise, anonymous maps, and
            # munmap, which cannot be told from a file map's): Python's allocator takes a new arena
            # now and then, in whatever operation needs it. The engine's file maps still count.
            if name not in ("futex", "brk", "madvise", "munmap") and not (name == "mmap" and "MAP_ANONYMOUS" in call):
                current[0][name] += 1
    return found


@pytest.mark.parametrize(("kind", "lease"), CASES)
def test_warm_put_and_get_of_1_kib_make_no_more_python_calls_than_today(tmp_path: Path, kind: str, lease: str) -> None:
    """A typical warm put/get, and 40 of them together, make at most today's Python calls."""
    if sys.version_info[:2] != PYTHON_CALLS_MEASURED_ON or sys.implementation.name != "cpython":
        why = f"the pinned Python call counts are CPython {PYTHON_CALLS_MEASURED_ON}'s, not {sys.version.split()[0]}'s"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: set PYTHON_CALLS_MEASURED_ON to it, take the counts a run reports")
        pytest.skip(why)
    counts, _ = run_child(tmp_path, kind, lease)
    for op in ("put", "get"):
        rounds = counts[op]
        assert len(rounds) == ROUNDS
        typical = (int(statistics.median(r[0] for r in rounds)), int(statistics.median(r[1] for r in rounds)))
        total = (sum(r[0] for r in rounds), sum(r[1] for r in rounds))
        pinned_typical, pinned_total = PYTHON_CALLS[(kind, lease, op)]
        assert typical <= pinned_typical and total[0] <= pinned_total[0] and total[1] <= pinned_total[1], (
            f"{kind} store, {lease}: a warm {op}() of 1 KiB now makes {typical} (Python, builtin) calls "
            f"(pinned: {pinned_typical}) and {ROUNDS} of them {total} (pinned: {pinned_total}); "
            "the hot path must not get more calls (if it got fewer, lower the pinned numbers)"
        )


@pytest.fixture(name="strace")
def fixture_strace() -> str:
    """The strace command: scripts/test.sh installs it where it can; mandatory under CI."""
    found = shutil.which("strace")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("strace is not installed: CI must count the hot paths' system calls (apt-get install strace)")
        pytest.skip("strace is not installed (scripts/test.sh installs it when run as root with apt-get)")
    return found


@pytest.mark.parametrize(("kind", "lease"), CASES)
def test_warm_put_and_get_of_1_kib_make_no_more_syscalls_than_today(
    tmp_path: Path, strace: str, kind: str, lease: str
) -> None:
    """40 warm puts/gets make at most today's system calls in their thread, none more than today's most."""
    _, trace = run_child(tmp_path, kind, lease, strace)
    found = syscalls_per_operation(trace)
    for op in ("put", "get"):
        assert len(found[op]) == ROUNDS, f"{len(found[op])} {op} markers in the trace, not {ROUNDS}"
        names = sum(found[op], Counter())
        total = sum(names.values())
        most = max(sum(calls.values()) for calls in found[op])
        pinned_total, pinned_most = SYSCALLS[(kind, lease, op)]
        assert total <= pinned_total and most <= pinned_most, (
            f"{kind} store, {lease}: {ROUNDS} warm {op}() calls of 1 KiB now make {total} system calls "
            f"({dict(names)}; pinned: {pinned_total}), at most {most} in one (pinned: {pinned_most}); "
            "the hot path must not get more system calls (if it got fewer, lower the pinned numbers)"
        )
