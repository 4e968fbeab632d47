"""What a scorer is: the :class:`Scorer` protocol the selector calls, and the :data:`SCORERS` registry.

A scorer ranks the blocks of every weight bank: it is programmed with the banks' signature rows, extended by the rows of
newly completed blocks, and asked for the scores of an encoded query against every row. Leading dims ``[*L]`` are
independent banks (``[batch, KV heads]`` in the selector). Each scorer is one small class in its own module of
:mod:`kvprism.scorers`, added to :data:`SCORERS` under its name by :func:`register_scorer`; a
:class:`kvprism.selection.SelectionConfig` names it in its ``scorer`` field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

__all__ = ["SCORERS", "Scorer", "ScorerSettings", "register_scorer"]


class ScorerSettings(Protocol):
    """What a scorer reads of its selection settings (:class:`kvprism.selection.SelectionConfig` satisfies it; the
    scorers do not import the selection package, which imports them)."""

    photonic: object


class Scorer(Protocol):
    """What the selector needs from a scorer. Leading dims ``[*L]`` are independent banks."""

    counters: dict[str, int]

    def program(self, signatures: torch.Tensor) -> None: ...  # [*L, N, w]
    def append(self, signatures: torch.Tensor) -> None: ...  # [*L, m, w]
    def scores(self, query: torch.Tensor) -> torch.Tensor: ...  # [*L, w] | [*L, G, w] -> [*L, N] | [*L, G, N]
    def advance(self, steps: int) -> None: ...
    def feasibility(self) -> Any: ...


#: scorer name -> class taking ``(sel: ScorerSettings, seed: int)``
SCORERS: dict[str, type] = {}

_C = TypeVar("_C", bound=type)


def register_scorer(name: str) -> Callable[[_C], _C]:
    """Class decorator adding a scorer to :data:`SCORERS` under ``name`` (also set as the class's ``name``)."""

    def deco(cls: _C) -> _C:
        SCORERS[name] = cls
        cls.name = name
        return cls

    return deco
