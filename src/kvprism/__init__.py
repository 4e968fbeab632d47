"""kvprism: photonic KV-cache block selection for long-context LLM inference.

The public API is re-exported here lazily, so ``import kvprism`` does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("kvprism")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ConfigBase": "kvprism.config",
    "ConfigError": "kvprism.errors",
    "KvprismError": "kvprism.errors",
    "ModelNotFoundError": "kvprism.errors",
    "load_model": "kvprism.hf.models",
    "PhotonicConfig": "kvprism.photonics.config",
    "PhotonicEngine": "kvprism.photonics.engine",
    "EnergyConfig": "kvprism.energy.config",
    "chip_query": "kvprism.energy.chip",
    "decode_step": "kvprism.energy.compare",
    "SelectionConfig": "kvprism.selection",
    "BlockSelector": "kvprism.selection",
    "SCORERS": "kvprism.scorers",
    "register_scorer": "kvprism.scorers",
    "ExactScorer": "kvprism.scorers",
    "PhotonicScorer": "kvprism.scorers",
    "SeedPublishedScorer": "kvprism.scorers",
    "SeedPublishedConfig": "kvprism.scorers",
    "SparseCache": "kvprism.hf.cache",
    "cache_kwargs": "kvprism.hf.cache",
    "StaticSparseCache": "kvprism.hf.static",
    "StaticDecodeStep": "kvprism.hf.static",
    "make_sample": "kvprism.eval.tasks",
    "Sample": "kvprism.eval.tasks",
    "Runner": "kvprism.eval.runner",
    "EvalConfig": "kvprism.eval.grid",
    "build_configs": "kvprism.eval.grid",
    "write_report": "kvprism.eval.report",
    "run_profile": "kvprism.eval.heads",
    "set_threads": "kvprism.runtime",
    "ResultStore": "kvprism.eval.store",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvprism' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
