"""Shared fixtures: a store in tmp_path that must verify clean at teardown; hypothesis profiles."""

from __future__ import annotations

import os
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
