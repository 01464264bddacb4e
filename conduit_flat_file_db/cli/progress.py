"""The progress bar of ``ffdb`` on standard error: tqdm's, from the optional extra ``progress``
(``pip install conduit_flat_file_db[progress]``); without tqdm, a :class:`NoBar` that draws nothing."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Protocol, TextIO

PROGRESS_MIN_BYTES = 64 << 20  # a progress bar only for work larger than this
PROGRESS_INTERVAL_SECONDS = 0.1  # at most this often a redraw
PROGRESS_DELAY_SECONDS = 1.0  # work of unknown size (a pipe): a bar once it has lasted this long


class Bar(Protocol):
    """What the commands use of a tqdm progress."""

    def update(self, n: float = 1) -> bool | None:
        """``n`` more bytes done."""

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        """The text before the bar."""

    def clear(self, nolock: bool = False) -> None:
        """Erase the bar's line (other output follows on the same terminal)."""

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        """Draw the bar again (after that output)."""

    def close(self) -> None:
        """Draw the final state and end the line."""


class NoBar:
    """The bar when none is drawn: not a terminal, small work, --no-progress, or no tqdm."""

    def update(self, n: float = 1) -> bool | None:  # pylint: disable=unused-argument
        """Nothing to draw."""
        return None

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        """Nothing to draw."""

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase."""

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to end."""


def progress_stream(no_progress: bool) -> TextIO | None:
    """Standard error when a bar may be drawn on it (a terminal, not turned off), else None."""
    if no_progress:
        return None
    return sys.stderr if isatty(sys.stderr) else None


def make_bar(label: str, total: int | None, no_progress: bool) -> Bar:
    """A tqdm bar of bytes on standard error, or a :class:`NoBar`. A known ``total`` gets a bar
    only above ``PROGRESS_MIN_BYTES``; an unknown one (a pipe) once the work has lasted
    ``PROGRESS_DELAY_SECONDS``."""
    stream = progress_stream(no_progress)
    if stream is None or (total is not None and total <= PROGRESS_MIN_BYTES) or tqdm_class() is None:
        return NoBar()
    progress: Bar = tqdm_class()(
        total=total,
        desc=label,
        file=stream,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        ascii=True,
        mininterval=PROGRESS_INTERVAL_SECONDS,
        delay=0 if total is not None else PROGRESS_DELAY_SECONDS,
        **_shape(stream),
    )
    return progress


@functools.cache
def tqdm_class() -> Any:
    """``tqdm.tqdm``, or None without the extra "progress". Imported when a bar is about to be
    drawn, not with the command line: the import costs about 60 ms, a tenth of a small get."""
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


def _shape(stream: TextIO) -> dict[str, Any]:
    """tqdm's size options for the terminal ``stream`` writes to: its own size, followed as it
    changes; 80x24 when it reports none (a fresh pseudo-terminal says 0x0, and tqdm would hide
    a bar on row 0 of a screen 0 rows high)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 80, "nrows": 24}


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for one without isatty, or closed)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
