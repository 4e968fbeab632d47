"""``photonic``: the :class:`kvprism.photonics.PhotonicEngine` (a physical model of a microring weight bank) as a
scorer, built from ``SelectionConfig.photonic`` (a preset name or a ``PhotonicConfig``); its scores are noisy
estimates. :func:`group_scorers` lets the engines of all layers decode in lockstep as one
:class:`kvprism.photonics.EngineGroup`.

The photonics package is imported when a scorer or a group is built, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from kvprism.scorers.base import ScorerSettings, register_scorer

__all__ = ["PhotonicScorer", "group_scorers"]


@register_scorer("photonic")
class PhotonicScorer:
    """Adapter to :class:`kvprism.photonics.PhotonicEngine`; one engine per layer, banks = ``[batch, KV heads]``."""

    name: ClassVar[str] = "photonic"

    def __init__(self, sel: ScorerSettings, seed: int = 0) -> None:
        from kvprism.photonics import PhotonicConfig, PhotonicEngine

        cfg = PhotonicConfig.preset(sel.photonic) if isinstance(sel.photonic, str) else sel.photonic
        self.config = cfg
        self.engine = PhotonicEngine(cfg, seed=seed)

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.engine.counters)

    @property
    def n_rows(self) -> int:
        return int(self.engine.n_rows)

    # the engine checks its inputs (kvprism.boundary); non-float tensors reach it unconverted to be refused
    def program(self, signatures: torch.Tensor) -> None:
        self.engine.program(_float32(signatures))

    def append(self, signatures: torch.Tensor) -> None:
        self.engine.append(_float32(signatures))

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        out = self.engine.scores(_float32(query))
        return torch.as_tensor(out, dtype=torch.float32, device=query.device)

    def advance(self, steps: int = 1) -> None:
        self.engine.advance(steps)

    def feasibility(self) -> Any:
        from kvprism.photonics.feasibility import report

        return report(self.engine)


def _float32(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def group_scorers(selectors: Sequence[Any]) -> Any:
    """Let the scorers of selectors (:class:`kvprism.selection.BlockSelector`: anything with a ``scorer``) that decode in lockstep (one per layer of a model) share what they can do
    together: for ``photonic`` scorers an :class:`kvprism.photonics.EngineGroup` (one batched drift sample and
    W_eff refresh per decode step for all layers; each layer's draws, weights and counters are those it has alone).
    Returns the group, or None where there is nothing to share (fewer than two selectors, other scorers, an engine
    implementation without groups: each layer then samples its own drift, with the same results)."""
    scorers = [s.scorer for s in selectors]
    if len(scorers) < 2 or not all(isinstance(b, PhotonicScorer) for b in scorers):
        return None
    from kvprism.photonics import EngineGroup

    return EngineGroup([b.engine for b in scorers])
