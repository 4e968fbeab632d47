"""The selection config: every knob of block-sparse decode (:class:`SelectionConfig`), and the head mask it names
(:func:`resolve_heads`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from kvprism.budgets import BUDGETS
from kvprism.config import ConfigBase, param
from kvprism.errors import ConfigError
from kvprism.layout import DEFAULT_BLOCK_SIZE
from kvprism.migrate import migrate_backend
from kvprism.scorers import SCORERS
from kvprism.signatures import PROJECTIONS, SIGNATURES

__all__ = ["SelectionConfig", "resolve_heads"]


_SWEEP_SOURCE = (
    "kvprism recall --sweep on SmolLM2 at 8K (benchmarks/measured/sweep-smollm2-8k-b32.md, -b64.md): at equal read "
    "fraction blocks of 32 capture more attention mass than blocks of 64, and 32 / 32 / 6 reads 1/16 of a 4K cache"
)

_CARRY_SOURCE = (
    "kvprism niah on qwen2.5-coder-0.5b at the defaults' read (B 32, window 32, k 6): the claims' needle, 2 prompts "
    "per context at 4K, 8K, 16K and 32K: 0 carried blocks answer 3 of 8, 2 answer 8 of 8 "
    "(benchmarks/measured/niah-single-qwen-carry.md); RULER's hard tasks at 4K, 10 prompts each, 0 keep 3 of dense's "
    "32 answers, 2 keep 18 (hard-tasks-qwen-carry-4k.md)"
)


@dataclass(frozen=True)
class SelectionConfig(ConfigBase):
    """Block-sparse decode: block size, how many blocks, how they are scored and by what."""

    block_size: int = param(
        DEFAULT_BLOCK_SIZE,
        doc="Tokens per block (one signature / one weight-bank row per block).",
        unit="tokens",
        ge=1,
        source=_SWEEP_SOURCE,
    )
    k: int = param(
        6,
        doc="Complete blocks selected per (layer, KV head) at each decode step (>= 1, as on the command line; a head "
        "that reads only its sink and window is a streaming head: see ``heads``).",
        unit="blocks",
        ge=1,
        source=_SWEEP_SOURCE,
    )
    d_sig: int = param(
        32,
        doc="Projected signature dimension (wavelength channels per bank row); ignored for projection='none', where "
        "signatures keep the head dimension. minmax signatures use 2*d_sig channels.",
        ge=1,
    )
    signature: str = param("mean", doc="Block signature.", choices=tuple(SIGNATURES))
    sig_rows: int = param(
        4,
        doc="Rows per block of the multi-row signatures ('centroids', 'reps'): each block takes sig_rows bank rows "
        "and scores as the max over them. Ignored by 'mean' and 'minmax'.",
        unit="rows",
        ge=1,
    )
    budget: str = param(
        "topk",
        doc="Blocks read per (layer, KV head) out of the k best: 'topk' (all k) or 'top_p' (adaptive: the fewest "
        "whose estimated attention mass reaches top_p; k is then the cap). See kvprism.budgets.",
        choices=tuple(BUDGETS),
    )
    top_p: float = param(
        0.9, doc="For budget='top_p': estimated attention mass of the candidate blocks to cover.", gt=0.0, le=1.0
    )
    projection: str = param(
        "learned",
        doc="Projection of keys and query to d_sig dimensions. 'learned' (default) is fitted on the prefill and needs "
        "its queries; on SmolLM2 needles it ranked blocks far better than 'pca' or 'none'.",
        source=_SWEEP_SOURCE,
        choices=PROJECTIONS,
    )
    sign: str = param(
        "signed",
        doc="'signed' (balanced photodetection) or 'relu' (non-negative weights and inputs, non-balanced hardware).",
        choices=("signed", "relu"),
    )
    gqa_reduce: str = param(
        "sum",
        doc="Combine the scores of the query heads sharing a KV head: 'sum' (one evaluation of the summed encoded "
        "query) or 'max' (one evaluation per query head).",
        choices=("sum", "max"),
    )
    rerank: int = param(
        1,
        doc="Two-stage selection: the scorer proposes the rerank*k best blocks, the electronics rescores those "
        "candidates exactly from the fp32 signatures it keeps in memory (rerank*k*w elements read per bank and "
        "step) and keeps the k best. 1 = one stage (the scorer's top-k is the selection). Needs budget='topk'.",
        unit="x k",
        ge=1,
    )
    carry: int = param(
        2,
        doc="Blocks carried over from the previous decode step: of that step's selected blocks, the 'carry' that "
        "took the most attention mass (summed over the query group, from the step's own sparse attention: no "
        "extra reads, no extra scorer rows or evaluations) stay selected; the scorer picks the rest of the k, "
        "excluding them. At most k - 1 are carried (the scorer picks at least one block every step; k 1 carries "
        "none). 0 = off (plain per-step top-k).",
        unit="blocks",
        ge=0,
        source=_CARRY_SOURCE,
    )
    sink_blocks: int = param(1, doc="First blocks (of real tokens) always read (attention sinks).", unit="blocks", ge=0)
    window: int = param(32, doc="Most recent tokens always read.", unit="tokens", ge=0, source=_SWEEP_SOURCE)
    scorer: str = param(
        "exact",
        doc="What ranks the blocks: a name in kvprism.scorers.SCORERS ('exact', 'photonic', 'seed-as-published').",
    )
    photonic: object = param(
        "seed-nominal",
        doc="For scorer='photonic': a PhotonicConfig preset name or a PhotonicConfig instance; for "
        "scorer='seed-as-published': a kvprism.scorers.SeedPublishedConfig (other values: its defaults).",
    )
    heads: object = param(
        "all",
        doc="Heads that select: 'all', a per-(layer, KV head) bool mask [[...], ...] (False = streaming head: sink + "
        "window only), or the path of a JSON file holding such a mask (a list of lists, or an object with 'mask').",
    )
    seed: int = param(0, doc="Seed of random projections and of the photonic engine's noise/fabrication draws.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> Self:
        """As :meth:`kvprism.config.ConfigBase.from_dict`; stored settings that name the scorer ``backend`` load
        (:func:`kvprism.migrate.migrate_backend`)."""
        return super().from_dict(migrate_backend(data, "scorer"), where=where)

    def _check(self) -> None:
        if self.scorer not in SCORERS:
            self._fail("scorer", self.scorer, f"allowed: {', '.join(map(repr, SCORERS))}")
        if not isinstance(self.photonic, str) and type(self.photonic).__name__ not in (
            "PhotonicConfig",
            "SeedPublishedConfig",
        ):
            self._fail("photonic", self.photonic, "must be a preset name, a PhotonicConfig or a SeedPublishedConfig")
        if isinstance(self.photonic, str):
            known = _photonic_presets()
            if self.photonic not in known:
                self._fail("photonic", self.photonic, f"allowed presets: {', '.join(known)}")
        if self.rerank > 1 and self.budget != "topk":
            self._fail("rerank", self.rerank, f"rerank > 1 needs budget='topk' (budget is {self.budget!r})")
        h = self.heads
        if isinstance(h, str):
            if h != "all" and not h.endswith(".json"):
                self._fail("heads", h, "must be 'all', a JSON file path or a nested bool mask")
        elif isinstance(h, (list, tuple)):
            if not all(isinstance(row, (list, tuple)) and all(isinstance(x, bool) for x in row) for row in h):
                self._fail("heads", h, "a mask must be a list of lists of bools (layers x KV heads)")
            object.__setattr__(self, "heads", tuple(tuple(row) for row in h))
        else:
            self._fail("heads", h, "must be 'all', a JSON file path or a nested bool mask")


def _photonic_presets() -> list[str]:
    """Shipped photonic preset names."""
    from kvprism.photonics.config import PhotonicConfig

    return PhotonicConfig.presets()


def resolve_heads(heads: Any, num_layers: int, num_kv_heads: int) -> torch.Tensor:
    """``SelectionConfig.heads`` as a ``[num_layers, num_kv_heads]`` bool tensor (True = selecting head)."""
    if isinstance(heads, str) and heads == "all":
        return torch.ones(num_layers, num_kv_heads, dtype=torch.bool)
    if isinstance(heads, str):
        path = Path(heads)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"SelectionConfig.heads = {heads!r}: file does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SelectionConfig.heads = {heads!r}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("mask")
        heads = data
    try:
        mask = torch.tensor(heads, dtype=torch.bool)
    except (TypeError, ValueError):
        raise ConfigError("SelectionConfig.heads: the mask must be a rectangular list of lists of bools") from None
    if tuple(mask.shape) != (num_layers, num_kv_heads):
        raise ConfigError(
            f"SelectionConfig.heads mask has shape {tuple(mask.shape)}; the model needs ({num_layers}, {num_kv_heads}) "
            "(layers x KV heads)"
        )
    return mask
