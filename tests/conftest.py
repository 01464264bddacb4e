"""Shared fixtures: a store in tmp_path that must verify clean at teardown; hypothesis profiles."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from conduit_flat_file_db import FlatFileDb

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

StoreFactory = Callable[..., FlatFileDb]


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
