"""The parts of fasteners that locking.py relies on beyond its public API, checked by name.

``locking._KeptOpenLock`` subclasses ``fasteners.InterProcessReaderWriterLock`` and overrides
its private ``_do_open``/``_do_close`` (fasteners opens the lock file on every acquire and closes
it on every release; the store keeps one handle for the life of the process, because closing any
handle drops the process's POSIX locks). A fasteners release that stopped calling ``_do_close``,
or a renamed method, would silently give back the locks a process holds. pyproject.toml caps
fasteners below the next release; these tests say exactly what to look at before raising the cap.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path

import fasteners
import pytest

from conduit_flat_file_db import locking

BASE = fasteners.InterProcessReaderWriterLock
WHERE = f"fasteners {version('fasteners')}: InterProcessReaderWriterLock"

# Each method locking.py overrides, calls or relies on fasteners to call, with the parameters
# it passes (the Windows path calls fasteners' own polling acquire with these keywords).
EXPECTED_PARAMETERS = {
    "_do_open": ["self"],
    "_do_close": ["self"],
    "acquire_read_lock": ["self", "blocking", "delay", "max_delay", "timeout"],
    "acquire_write_lock": ["self", "blocking", "delay", "max_delay", "timeout"],
    "release_read_lock": ["self"],
    "release_write_lock": ["self"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_fasteners_lock_has_the_methods_locking_relies_on(name: str) -> None:
    """Each method exists on fasteners' class with the parameters locking.py uses."""
    method = getattr(BASE, name, None)
    if not callable(method):
        pytest.fail(f"{WHERE}.{name} is missing: conduit_flat_file_db/locking.py (_KeptOpenLock) relies on it")
    parameters = list(inspect.signature(method).parameters)
    assert parameters == EXPECTED_PARAMETERS[name], (
        f"{WHERE}.{name} now takes {parameters}, not {EXPECTED_PARAMETERS[name]}: "
        "conduit_flat_file_db/locking.py (_KeptOpenLock) relies on the old signature"
    )


def test_fasteners_do_open_sets_lockfile_to_an_open_handle(tmp_path: Path) -> None:
    """_do_open opens the file (and its missing directory) into ``lockfile``; open_handle returns it."""
    path = tmp_path / "made" / "by" / "fasteners.lock"
    lock = BASE(str(path))
    assert getattr(lock, "lockfile", "missing") is None, f"{WHERE}.lockfile is not None before _do_open"
    lock._do_open()  # pylint: disable=protected-access  # the private method under test
    try:
        assert path.is_file(), f"{WHERE}._do_open no longer creates the lock file and its directory"
        assert lock.lockfile is not None and not lock.lockfile.closed, f"{WHERE}._do_open no longer sets lockfile"
    finally:
        lock._do_close()  # pylint: disable=protected-access  # the private method under test
    assert lock.lockfile is None, f"{WHERE}._do_close no longer resets lockfile to None"


@pytest.mark.parametrize("mode", ["write", "read"])
def test_fasteners_release_goes_through_do_close_which_kept_open_lock_overrides(tmp_path: Path, mode: str) -> None:
    """fasteners' release closes its handle through _do_close, so the override keeps ours open.

    A plain fasteners lock ends a release with no handle; the store's subclass ends it with the
    same, still open, handle: the override is what keeps the process's other locks on the file.
    """
    plain = BASE(str(tmp_path / "plain.lock"))
    assert getattr(plain, f"acquire_{mode}_lock")(blocking=True, delay=0.001, max_delay=0.01, timeout=5)
    getattr(plain, f"release_{mode}_lock")()
    assert plain.lockfile is None, (
        f"{WHERE}.release_{mode}_lock no longer closes its handle through _do_close: "
        "check what _KeptOpenLock._do_close must override now"
    )

    kept = locking._KeptOpenLock(str(tmp_path / "kept.lock"))  # pylint: disable=protected-access  # under test
    handle = kept.open_handle()
    try:
        assert getattr(kept, f"acquire_{mode}_lock")(blocking=True, delay=0.001, max_delay=0.01, timeout=5)
        getattr(kept, f"release_{mode}_lock")()
        assert kept.lockfile is handle and not handle.closed, (
            f"{WHERE}.release_{mode}_lock closed the handle _KeptOpenLock keeps open"
        )
    finally:
        kept.close_handle()
    assert handle.closed and kept.lockfile is None, "_KeptOpenLock.close_handle (fasteners' _do_close) did not close"
