"""Failures of the large tier are reported without the values of arguments.

pytest's long tracebacks print the repr of every argument of the test function and of
the frame that raised; for a 4 GiB bytes object that repr is a 16 GiB string, and the
report of one failure would exhaust the machine's memory instead of naming the
problem. Tests here therefore report in the short style (source lines, no values), and
never name a big object in an ``assert`` statement (its explanation prints values too).
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Short tracebacks for the tests of this directory, whatever ``--tb`` says."""
    for item in items:
        repr_failure_py = getattr(item, "_repr_failure_py", None)
        if item.get_closest_marker("large") is not None and repr_failure_py is not None:
            item.repr_failure = _short(repr_failure_py)  # type: ignore[method-assign]


def _short(repr_failure_py: Any) -> Any:
    return lambda excinfo, style=None: repr_failure_py(excinfo, style="short")
