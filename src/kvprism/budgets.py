"""Block budgets: how many of the top-scored candidate blocks a (layer, KV head) reads at a decode step.

The selector ranks the candidates by signature score and keeps at most ``k`` of them (the *cap*); a budget then
decides how many of those ``k`` to keep, per (batch row, KV head). Registry :data:`BUDGETS`:

- ``topk``: always the ``k`` best (a fixed budget).
- ``top_p``: Twilight-style adaptive budget (Lin et al., "Twilight: Adaptive Attention Sparsity with Hierarchical
  Top-p Pruning", 2025): the smallest prefix of the ranked blocks whose *estimated* attention mass reaches ``p``,
  never more than ``k``. The estimate is the softmax over all candidate blocks of the block score times a logit
  scale: with the learned projection the temperature fitted with it, which was trained so that this softmax
  matches the true block masses of the prefill queries (:func:`kvprism.signatures.fit_learned`); otherwise the
  softmax scale (``scaling / G`` when the GQA group's scores are summed), i.e. a block's mass is taken as that of
  one key equal to its signature. Heads with concentrated attention read one or two
  blocks; heads with flat attention read up to the cap.

Whatever a budget keeps, sink blocks and the tail are always read (:meth:`kvprism.layout.BlockLayout.gather_plan`),
and the read fraction is counted from the tokens actually gathered, per (layer, KV head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["BUDGETS", "TopKBudget", "TopPBudget", "make_budget"]


@dataclass(frozen=True)
class TopKBudget:
    """Fixed budget: every one of the ``k`` best candidates."""

    name: ClassVar[str] = "topk"

    def trim(
        self, scores: torch.Tensor, val: torch.Tensor, idx: torch.Tensor, logit_scale: float | torch.Tensor
    ) -> torch.Tensor:
        return idx


@dataclass(frozen=True)
class TopPBudget:
    """Adaptive budget: the shortest prefix of the ranked blocks with estimated mass ``>= p`` (at most the cap)."""

    p: float = 0.9
    name: ClassVar[str] = "top_p"

    def trim(
        self, scores: torch.Tensor, val: torch.Tensor, idx: torch.Tensor, logit_scale: float | torch.Tensor
    ) -> torch.Tensor:
        """Drop the ranked blocks beyond the top-p prefix.

        Args:
            scores: ``[..., N]`` block scores, ``-inf`` on non-candidates.
            val, idx: ``[..., k]`` the top-k scores (descending) and their block ids (``-1`` = none).
            logit_scale: factor turning a block score into a block-mass logit (a float or ``[..., 1]``).

        Returns:
            ``[..., k]`` block ids with ``-1`` after the prefix (the first ranked block is always kept).
        """
        if idx.shape[-1] == 0:
            return idx
        lse = torch.logsumexp(scores.float() * logit_scale, dim=-1, keepdim=True)
        mass = torch.exp(val.float() * logit_scale - lse)
        mass = torch.nan_to_num(mass, nan=0.0)  # rows without candidates
        before = torch.cumsum(mass, dim=-1) - mass
        keep = before < self.p
        keep[..., 0] = True
        return idx.masked_fill(~keep, -1)


#: budget name -> class
BUDGETS: dict[str, type] = {"topk": TopKBudget, "top_p": TopPBudget}


def make_budget(name: str, top_p: float) -> TopKBudget | TopPBudget:
    """The budget object of a ``SelectionConfig`` (``budget``, ``top_p``)."""
    if name == "top_p":
        return TopPBudget(top_p)
    if name == "topk":
        return TopKBudget()
    raise ValueError(f"unknown budget {name!r}; allowed: {', '.join(BUDGETS)}")
