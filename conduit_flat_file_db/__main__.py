"""``python -m conduit_flat_file_db``: the ``ffdb`` command line."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
