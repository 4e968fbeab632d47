"""``exact``: fp32 dot products of the programmed signature rows with the encoded query (the ideal selector)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from kvprism.scorers.base import register_scorer

if TYPE_CHECKING:
    from kvprism.selection.config import SelectionConfig

__all__ = ["ExactScorer"]


@register_scorer("exact")
@dataclass
class ExactScorer:
    """fp32 dot products of the programmed rows with the query: the ideal selector."""

    sel: SelectionConfig
    seed: int = 0
    rows: torch.Tensor | None = None  # [*L, N, w] float32
    counters: dict[str, int] = field(default_factory=lambda: {"row_programs": 0, "evaluations": 0})
    name: ClassVar[str] = "exact"

    def program(self, signatures: torch.Tensor) -> None:
        self.rows = signatures.float().clone()
        self.counters["row_programs"] += signatures[..., 0].numel()

    def append(self, signatures: torch.Tensor) -> None:
        assert self.rows is not None, "append before program"
        self.rows = torch.cat([self.rows, signatures.float()], dim=-2)
        self.counters["row_programs"] += signatures[..., 0].numel()

    @property
    def n_rows(self) -> int:
        return 0 if self.rows is None else self.rows.shape[-2]

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        assert self.rows is not None, "scores before program"
        lead = self.rows.dim() - 2
        q = query.float()
        self.counters["evaluations"] += q[..., 0].numel()
        if q.dim() == lead + 1:  # [*L, w]
            return torch.matmul(self.rows, q.unsqueeze(-1)).squeeze(-1)
        return torch.matmul(q, self.rows.transpose(-1, -2))  # [*L, G, N]

    def advance(self, steps: int = 1) -> None:
        pass

    def feasibility(self) -> None:
        return None
