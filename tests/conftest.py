"""Shared fixtures: a store in tmp_path that must verify clean at teardown; hypothesis profiles."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from conduit_flat_file_db import FlatFileDb

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

StoreFactory = Callable[..., FlatFileDb]


class _RetryingTraceSys(types.ModuleType):
    """``sys`` as the threading module sees it, with a ``settrace`` that tries again when
    CPython 3.11 refuses it with "Cannot install a trace function while another trace function
    is being installed" (gh-98257, fixed in 3.12: the guard is one flag for every thread, held
    while audit hooks run). Coverage installs its tracer in each new thread through
    ``threading.settrace``; with the audit hooks some tests add (Python functions, which can
    hand the interpreter lock to another thread), two threads starting at once can collide, and
    the loser died before running anything: a test waited for it, or a store for its
    background thread."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)

    @staticmethod
    def settrace(function: Any) -> None:
        """sys.settrace, again (after a pause that lets the other thread finish) when refused so."""
        for _ in range(10_000):
            try:
                sys.settrace(function)
                return
            except RuntimeError as exc:
                if "another trace function is being installed" not in str(exc):
                    raise
                time.sleep(0.0001)
        sys.settrace(function)


@pytest.fixture(autouse=True, scope="session")
def threads_survive_tracer_installs() -> Iterator[None]:
    """Under CPython 3.11, new threads install the tracer through _RetryingTraceSys."""
    if sys.version_info >= (3, 12) or getattr(threading, "_sys", None) is not sys:
        yield
        return
    threading._sys = _RetryingTraceSys("sys")  # type: ignore[attr-defined]  # pylint: disable=protected-access
    try:
        yield
    finally:
        threading._sys = sys  # type: ignore[attr-defined]  # pylint: disable=protected-access


@pytest.fixture(autouse=True, scope="session")
def thread_deaths_to_stderr(pytestconfig: pytest.Config) -> Iterator[None]:
    """Print a thread's uncaught exception to the terminal at once (past pytest's capture), then
    let pytest's own hook turn it into a warning as usual. A test waiting for a thread that died
    this way hangs until the run's timeout ends the process (os._exit), and pytest's warnings
    die with it: this print is then the only record of why the thread is gone."""
    pytest_hook = threading.excepthook
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def echo(args: threading.ExceptHookArgs) -> None:
        try:
            name = args.thread.name if args.thread is not None else "?"
            text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                sys.stderr.write(f"\n!!! uncaught exception in thread {name}:\n{text}")
                sys.stderr.flush()
        except Exception:  # pylint: disable=broad-exception-caught  # a diagnostic never hides the exception
            pass
        pytest_hook(args)

    threading.excepthook = echo
    yield
    threading.excepthook = pytest_hook


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """Open stores in tmp_path (``datadir`` defaults to tmp_path/"store"); each must verify clean."""
    opened: list[FlatFileDb] = []

    def factory(name: str = "store", **kwargs: object) -> FlatFileDb:
        db = FlatFileDb(tmp_path / name, tmp_path / f"{name}.lock", **kwargs)  # type: ignore[arg-type]
        opened.append(db)
        return db

    yield factory
    for db in opened:
        report = db.verify()
        db.close()
        assert report.ok, str(report)


@pytest.fixture
def store(make_store: StoreFactory) -> FlatFileDb:  # pylint: disable=redefined-outer-name  # pytest fixture
    """A fresh raw store in tmp_path, verified at teardown."""
    return make_store()
