"""``exact``: fp32 dot products of the programmed signature rows with the encoded query (the ideal selector)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kvprism.boundary import check_query, check_rows
from kvprism.errors import KvprismError
from kvprism.scorers.base import ScorerSettings, register_scorer

__all__ = ["ExactScorer"]


@register_scorer("exact")
@dataclass
class ExactScorer:
    """fp32 dot products of the programmed rows with the query: the ideal selector. Inputs are checked by
    :mod:`kvprism.boundary` (an all-zero bank scores 0 everywhere: top-k takes the lowest ids)."""

    sel: ScorerSettings | None
    seed: int = 0
    rows: torch.Tensor | None = None  # [*L, N, w] float32
    counters: dict[str, int] = field(default_factory=lambda: {"row_programs": 0, "evaluations": 0})
    name: ClassVar[str] = "exact"

    def program(self, signatures: torch.Tensor) -> None:
        """Program every bank: ``signatures [*L, N, w]`` (kept as a float32 copy)."""
        check_rows(signatures, where="program")
        self.rows = signatures.float().clone()
        self.counters["row_programs"] += signatures[..., 0].numel()

    def append(self, signatures: torch.Tensor) -> None:
        """Add ``m`` rows ``[*L, m, w]`` after the programmed ones of every bank."""
        if self.rows is None:
            raise KvprismError("append before program: no programmed rows; call program(signatures) first")
        check_rows(signatures, where="append", lead=self.rows.shape[:-2], width=self.rows.shape[-1])
        self.rows = torch.cat([self.rows, signatures.float().to(self.rows.device)], dim=-2)
        self.counters["row_programs"] += signatures[..., 0].numel()

    @property
    def n_rows(self) -> int:
        return 0 if self.rows is None else self.rows.shape[-2]

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """``query [*L, w]`` or ``[*L, G, w]`` -> float32 scores ``[*L, N]`` or ``[*L, G, N]``."""
        rows = self.rows
        check_query(
            query, lead=None if rows is None else rows.shape[:-2], width=None if rows is None else rows.shape[-1]
        )
        return self.scores_unchecked(query)

    def scores_unchecked(self, query: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` without the boundary check, for a caller that checked the query and the rows itself (the
        selector scoring its own signatures; a static cache, which must not read values on the host)."""
        q = query.float()
        self.counters["evaluations"] += q[..., 0].numel()
        if q.dim() == self.rows.dim() - 1:  # [*L, w]
            return torch.matmul(self.rows, q.unsqueeze(-1)).squeeze(-1)
        return torch.matmul(q, self.rows.transpose(-1, -2))  # [*L, G, N]

    def advance(self, steps: int = 1) -> None:
        pass

    def feasibility(self) -> None:
        return None
