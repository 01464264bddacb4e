"""The keyed-store tests reuse the crash tests' helpers (crash_support), imported from their folder
as pytest imports them when it collects tests/crash."""

from __future__ import annotations

import sys
from pathlib import Path

_CRASH = str(Path(__file__).resolve().parent.parent / "crash")
if _CRASH not in sys.path:
    sys.path.append(_CRASH)
