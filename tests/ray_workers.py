"""Workers for the Ray tests (importable by Ray's worker processes, which load them by module path)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path


def _square(marker: str | None, unit: int) -> list[dict]:
    """One cell per unit; with ``marker``, the unit 2 task writes its pid there and then waits to be killed (once)."""
    if marker is not None and unit == 2 and not Path(marker).exists():
        tmp = Path(marker + ".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(marker)
        time.sleep(60)
    return [{"unit": unit, "value": unit * unit, "pid": os.getpid()}]


def make_square_worker(marker: str | None = None):
    return functools.partial(_square, marker)
