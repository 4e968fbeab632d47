"""``seed-as-published``: the PRISM seed's own simplified impairment model as a scorer.

The seed's headline hardware numbers came from this model, not from a device model (EVALUATION.md, "What the
public repo's NIAH harness actually did"). It is kept here so that the difference between it and the physical
:class:`kvprism.photonics.PhotonicEngine` is visible side by side. Per weight bank (leading dims ``[*L]``):

1. min-max scaling of the bank's signatures ``S [N, w]`` to [0, 1] with one min and one max over the whole bank:
   ``U = (S − min S) / (max S − min S)`` (``U = 0`` when the bank is constant);
2. rounding to ``2^bits`` levels: ``W = round(U · (2^bits − 1)) / (2^bits − 1)``;
3. Gaussian "drift" noise on the weights, drawn afresh at every evaluation: ``W̃ = W + σ_w · E``, ``E ~ N(0, 1)``
   of shape ``[*L, N, w]`` (one draw per :meth:`SeedPublishedScorer.scores` call, shared by the call's queries);
4. the dot product with the raw query ``q``: ``s_n = Σ_j W̃_nj q_j``;
5. detector noise of ``σ_d`` (1 %) of the query's full scale: ``y_n = s_n + σ_d · max_m |s_m| · ε_n``,
   ``ε ~ N(0, 1)`` per (query, row);
6. top-k of ``y`` (done by the selector).

Draw order from the scorer's ``torch.Generator(seed)``, per ``scores`` call: ``E`` (if σ_w > 0), then ``ε`` (if
σ_d > 0). The affine scaling of step 1 adds a per-query constant to every row, so without noise and rounding the
ranking equals the exact one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from kvprism.boundary import check_query, check_rows
from kvprism.config import ConfigBase, param
from kvprism.errors import KvprismError
from kvprism.scorers.base import register_scorer

__all__ = ["SeedPublishedConfig", "SeedPublishedScorer", "seed_published_weights"]


@dataclasses.dataclass(frozen=True)
class SeedPublishedConfig(ConfigBase):
    """Parameters of the seed's simplified impairment model (module docstring)."""

    bits: int = param(
        5,
        doc="weight levels 2^bits after min-max scaling to [0, 1] (0 = not rounded)",
        unit="bit",
        ge=0,
        le=24,
        source="PRISM Table I: 5-bit weights; the seed repo swept 4/5/6/8 bits",
    )
    weight_sigma: float = param(
        0.01,
        doc="σ of the Gaussian 'drift' noise added to each [0, 1]-scaled weight at every evaluation",
        unit="weight units",
        ge=0.0,
        le=1.0,
        source="seed repo: σ 0.005–0.02 in weight units for '10–30 pm' (PHYSICS §10); 0.01 is mid-range",
    )
    detector_sigma: float = param(
        0.01,
        doc="σ of the Gaussian detector noise as a fraction of the query's full scale max_n |score_n|",
        unit="",
        ge=0.0,
        le=1.0,
        source="seed repo: 1 % detector noise (taken relative to full scale: the seed states no reference)",
    )


def seed_published_weights(signatures: torch.Tensor, bits: int) -> torch.Tensor:
    """Steps 1–2 of the model: ``signatures [*L, N, w]`` -> weights in [0, 1] on ``2^bits`` levels (float32)."""
    s = signatures.float()
    lo = s.amin(dim=(-2, -1), keepdim=True)
    hi = s.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    u = torch.where(span > 0, (s - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(s))
    if bits > 0:
        levels = float(2**bits - 1)
        u = torch.round(u * levels) / levels
    return u


@register_scorer("seed-as-published")
class SeedPublishedScorer:
    """Scorer ``seed-as-published`` (see the module docstring).

    Args:
        sel: a :class:`kvprism.selection.SelectionConfig` (or None); its ``photonic`` field may hold a
            :class:`SeedPublishedConfig` — any other value (e.g. the default preset name, which names a *physical*
            chip) leaves this model's own defaults.
        seed: seed of the generator of every noise draw.
        config: overrides ``sel.photonic``.
    """

    name: ClassVar[str] = "seed-as-published"

    def __init__(self, sel: Any = None, seed: int = 0, config: SeedPublishedConfig | None = None) -> None:
        if config is None:
            given = getattr(sel, "photonic", None)
            config = given if isinstance(given, SeedPublishedConfig) else SeedPublishedConfig()
        if not isinstance(config, SeedPublishedConfig):
            raise KvprismError(f"SeedPublishedScorer needs a SeedPublishedConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self.signatures: torch.Tensor | None = None  # [*L, N, w] as given (float32)
        self.weights: torch.Tensor | None = None  # [*L, N, w] in [0, 1], rounded
        self.counters: dict[str, int] = {"row_programs": 0, "evaluations": 0}

    @property
    def n_rows(self) -> int:
        return 0 if self.signatures is None else int(self.signatures.shape[-2])

    def program(self, signatures: torch.Tensor) -> None:
        """Program every bank: ``signatures [*L, N, w]``."""
        check_rows(signatures, where="program")
        self.signatures = signatures.float().clone()
        self.weights = seed_published_weights(self.signatures, self.config.bits)
        self.counters["row_programs"] += signatures[..., 0].numel()

    def append(self, signatures: torch.Tensor) -> None:
        """Add ``m`` rows ``[*L, m, w]``; the bank's min-max scale is recomputed over all rows (as the seed scaled the
        whole signature matrix)."""
        if self.signatures is None:
            raise KvprismError("append before program: no programmed rows; call program(signatures) first")
        check_rows(signatures, where="append", lead=self.signatures.shape[:-2], width=self.signatures.shape[-1])
        self.signatures = torch.cat([self.signatures, signatures.float()], dim=-2)
        self.weights = seed_published_weights(self.signatures, self.config.bits)
        self.counters["row_programs"] += signatures[..., 0].numel()

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """``query [*L, w]`` or ``[*L, G, w]`` -> noisy scores ``[*L, N]`` or ``[*L, G, N]`` (steps 3–5)."""
        w = self.weights
        single = check_query(query, lead=None if w is None else w.shape[:-2], width=None if w is None else w.shape[-1])
        c = self.config
        if c.weight_sigma > 0:
            w = w + c.weight_sigma * torch.randn(w.shape, generator=self._gen)
        q = query.float().cpu()
        self.counters["evaluations"] += q[..., 0].numel()
        s = torch.matmul(w, q.unsqueeze(-1)).squeeze(-1) if single else torch.matmul(q, w.transpose(-1, -2))
        if c.detector_sigma > 0:
            full = s.abs().amax(dim=-1, keepdim=True)
            s = s + c.detector_sigma * full * torch.randn(s.shape, generator=self._gen)
        return s.to(query.device)

    def advance(self, steps: int = 1) -> None:
        """No state evolves between decode steps (the weight noise is drawn afresh per evaluation)."""

    def feasibility(self) -> None:
        """This model has no device: nothing to judge."""
        return None
