"""Workers for the Ray tests (importable by Ray's worker processes, which load them by module path)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path


def _claim(marker: str) -> bool:
    """Write this process's pid to ``marker`` unless it exists: atomic (a hard link of a per-process file fails when
    the marker is there), so of two workers arriving together exactly one becomes the victim."""
    if Path(marker).exists():
        return False
    tmp = Path(f"{marker}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, marker)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _square(marker: str | None, unit: int) -> list[dict]:
    """One cell per unit; with ``marker``, the unit 2 task writes its pid there and then waits to be killed (once)."""
    if marker is not None and unit == 2 and _claim(marker):
        time.sleep(60)
    return [{"unit": unit, "value": unit * unit, "pid": os.getpid()}]


def make_square_worker(marker: str | None = None):
    return functools.partial(_square, marker)


def tiny_llama_and_tokenizer():
    """The tiny random Llama and tokenizer of the runner tests (what each Ray worker loads)."""
    from tests.conftest import tiny_model, tiny_tokenizer

    return tiny_model("llama"), tiny_tokenizer()


class KillOnceDecode:
    """The default decoder, except that the first decode of a configuration named ``victim`` writes the worker's
    pid to ``marker`` and waits there to be killed (once: a marker that exists disarms it)."""

    def __init__(self, marker: str, victim: str) -> None:
        self.marker, self.victim = marker, victim

    def __call__(self, model, cache, last, cfg, n, eos):
        from kvprism.eval.decode import default_decode

        if cfg.name == self.victim and _claim(self.marker):
            time.sleep(120)
        return default_decode(model, cache, last, cfg, n, eos)


class SlowDecode:
    """The default decoder, a little slower (so a test can interrupt a grid part-way)."""

    def __call__(self, model, cache, last, cfg, n, eos):
        from kvprism.eval.decode import default_decode

        time.sleep(0.5)
        return default_decode(model, cache, last, cfg, n, eos)
