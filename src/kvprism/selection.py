"""Query-aware block selection: which cached tokens each (layer, KV head) reads at a decode step.

:class:`SelectionConfig` carries every knob. One :class:`BlockSelector` per layer owns the projection, the
signatures' scorer (one weight bank per (batch row, KV head)) and does GQA reduction and top-k. Scorers (what ranks
the blocks) are small classes in the :data:`SCORERS` registry:

- ``exact``: fp32 dot products of the programmed signatures with the encoded query (the ideal selector).
- ``photonic``: the :class:`kvprism.photonics.PhotonicEngine` (a physical model of a microring weight bank) built
  from ``SelectionConfig.photonic`` (a preset name or a ``PhotonicConfig``); its scores are noisy estimates.

What a decode step reads, per (batch row, KV head), is defined once in :mod:`kvprism.layout` (:class:`BlockLayout`):
the ``sink_blocks`` first blocks holding real (non-padding) tokens, the top-``k`` candidate blocks by score, and the
*tail*: the ``window`` most recent tokens together with the incomplete last block. Padding tokens are never read.
"Streaming" heads (masked out in ``heads``) read sink + tail only. Top-k is :func:`kvprism.layout.topk_blocks`
(ties: the lower block id).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from kvprism.budgets import BUDGETS, make_budget
from kvprism.config import ConfigBase, param
from kvprism.errors import ConfigError, KvprismError
from kvprism.layout import topk_blocks
from kvprism.signatures import PROJECTIONS, SIGNATURES, fit_projection, project

__all__ = [
    "BACKENDS",
    "SCORERS",
    "BlockSelector",
    "ExactBackend",
    "ExactScorer",
    "PhotonicBackend",
    "PhotonicScorer",
    "ScoreBackend",
    "Scorer",
    "SelectionConfig",
    "block_signatures",
    "fit_layer_projection",
    "fit_uses_queries",
    "group_backends",
    "group_scorers",
    "layer_probe",
    "needs_queries",
    "register_backend",
    "register_scorer",
    "resolve_heads",
    "signature_settings",
]


_SWEEP_SOURCE = (
    "kvprism recall --sweep on SmolLM2 at 8K (benchmarks/measured/sweep-smollm2-8k-b32.md, -b64.md): at equal read "
    "fraction blocks of 32 capture more attention mass than blocks of 64, and 32 / 32 / 6 reads 1/16 of a 4K cache"
)


@dataclass(frozen=True)
class SelectionConfig(ConfigBase):
    """Block-sparse decode: block size, how many blocks, how they are scored and by what."""

    block_size: int = param(
        32,
        doc="Tokens per block (one signature / one weight-bank row per block).",
        unit="tokens",
        ge=1,
        source=_SWEEP_SOURCE,
    )
    k: int = param(
        6,
        doc="Complete blocks selected per (layer, KV head) at each decode step.",
        unit="blocks",
        ge=0,
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
    sink_blocks: int = param(1, doc="First blocks (of real tokens) always read (attention sinks).", unit="blocks", ge=0)
    window: int = param(32, doc="Most recent tokens always read.", unit="tokens", ge=0, source=_SWEEP_SOURCE)
    scorer: str = param(
        "exact",
        doc="What ranks the blocks: a name in kvprism.selection.SCORERS ('exact', 'photonic', 'seed-as-published').",
    )
    photonic: object = param(
        "seed-nominal",
        doc="For scorer='photonic': a PhotonicConfig preset name or a PhotonicConfig instance; for "
        "scorer='seed-as-published': a kvprism.seed_published.SeedPublishedConfig (other values: its defaults).",
    )
    heads: object = param(
        "all",
        doc="Heads that select: 'all', a per-(layer, KV head) bool mask [[...], ...] (False = streaming head: sink + "
        "window only), or the path of a JSON file holding such a mask (a list of lists, or an object with 'mask').",
    )
    seed: int = param(0, doc="Seed of random projections and of the photonic engine's noise/fabrication draws.")

    #: old field name -> new one (accepted with a DeprecationWarning by the constructor, replace and from_dict)
    _renamed: ClassVar[dict[str, str]] = {"backend": "scorer"}

    @property
    def backend(self) -> str:
        """Deprecated name of :attr:`scorer`."""
        _warn_renamed("SelectionConfig.backend", "SelectionConfig.scorer")
        return self.scorer

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


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


_dataclass_init = SelectionConfig.__init__


@functools.wraps(_dataclass_init)
def _selection_init(self: SelectionConfig, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **type(self).renamed_fields(kwargs))


SelectionConfig.__init__ = _selection_init  # type: ignore[method-assign]


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


def derive_seed(seed: int, layer_idx: int, salt: int = 0) -> int:
    """A distinct, deterministic seed per (config seed, layer, purpose)."""
    return (seed * 1_000_003 + layer_idx * 7919 + salt * 104_729) % (2**63 - 1)


# -------------------------------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """What the selector needs from a scorer. Leading dims ``[*L]`` are independent banks."""

    counters: dict[str, int]

    def program(self, signatures: torch.Tensor) -> None: ...  # [*L, N, w]
    def append(self, signatures: torch.Tensor) -> None: ...  # [*L, m, w]
    def scores(self, query: torch.Tensor) -> torch.Tensor: ...  # [*L, w] | [*L, G, w] -> [*L, N] | [*L, G, N]
    def advance(self, steps: int) -> None: ...
    def feasibility(self) -> Any: ...


#: scorer name -> class taking ``(sel: SelectionConfig, seed: int)``
SCORERS: dict[str, type] = {}


def register_scorer(name: str):
    """Class decorator adding a scorer to :data:`SCORERS`."""

    def deco(cls: type) -> type:
        SCORERS[name] = cls
        cls.name = name
        return cls

    return deco


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


@register_scorer("photonic")
class PhotonicScorer:
    """Adapter to :class:`kvprism.photonics.PhotonicEngine`; one engine per layer, banks = ``[batch, KV heads]``."""

    name: ClassVar[str] = "photonic"

    def __init__(self, sel: SelectionConfig, seed: int = 0) -> None:
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

    def program(self, signatures: torch.Tensor) -> None:
        self.engine.program(signatures.float())

    def append(self, signatures: torch.Tensor) -> None:
        self.engine.append(signatures.float())

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        out = self.engine.scores(query.float())
        return torch.as_tensor(out, dtype=torch.float32, device=query.device)

    def advance(self, steps: int = 1) -> None:
        self.engine.advance(steps)

    def feasibility(self) -> Any:
        return self.engine.feasibility()


def group_scorers(selectors: Sequence[BlockSelector]) -> Any:
    """Let the scorers of selectors that decode in lockstep (one per layer of a model) share what they can do
    together: for ``photonic`` scorers an :class:`kvprism.photonics.EngineGroup` (one batched drift sample and
    W_eff refresh per decode step for all layers; each layer's draws, weights and counters are those it has alone).
    Returns the group, or None where there is nothing to share (fewer than two selectors, other scorers, an engine
    implementation without groups: each layer then samples its own drift, with the same results)."""
    scorers = [s.scorer for s in selectors]
    if len(scorers) < 2 or not all(isinstance(b, PhotonicScorer) for b in scorers):
        return None
    from kvprism.photonics import EngineGroup

    return EngineGroup([b.engine for b in scorers])


# names of one release before the scorer vocabulary (same objects)
BACKENDS = SCORERS
ScoreBackend = Scorer
ExactBackend = ExactScorer
PhotonicBackend = PhotonicScorer
group_backends = group_scorers


def register_backend(name: str):
    """Deprecated name of :func:`register_scorer`."""
    _warn_renamed("kvprism.selection.register_backend", "kvprism.selection.register_scorer")
    return register_scorer(name)


# ------------------------------------------------------------------------------------------------------- selector
def signature_settings(sel: SelectionConfig) -> tuple:
    """The fields that decide a layer's projection, temperature, probe and signatures (configurations equal in these
    share them)."""
    return (sel.block_size, sel.d_sig, sel.signature, sel.sig_rows, sel.projection, sel.sign, sel.seed)


def needs_queries(sel: SelectionConfig) -> bool:
    """Whether fitting a layer needs the prefill queries (learned projection, representative-token signatures)."""
    return sel.projection == "learned" or SIGNATURES[sel.signature].needs_probe


def fit_uses_queries(sel: SelectionConfig, n_blocks: int) -> bool:
    """Whether fitting a layer on a prefill of ``n_blocks`` complete blocks reads the prefill queries: with fewer than
    two blocks the learned projection is PCA anyway; representative-token signatures always need their probe."""
    return needs_queries(sel) and (n_blocks >= 2 or SIGNATURES[sel.signature].needs_probe)


def fit_layer_projection(
    sel: SelectionConfig,
    layer_idx: int,
    keys: torch.Tensor,
    valid: torch.Tensor,
    *,
    scaling: float = 1.0,
    queries: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The projection of layer ``layer_idx`` fitted on its prefill keys ``[B, H, T, D]`` (``valid [B, T]``) and its
    fitted score temperature: ``(projection [B, H, D, d_sig] or None, temperature [B, H] or None)`` (a temperature
    only for ``projection='learned'``; see :func:`kvprism.signatures.fit_learned`)."""
    return fit_projection(
        sel.projection,
        keys,
        valid,
        sel.d_sig,
        seed=derive_seed(sel.seed, layer_idx, 2),
        block_size=sel.block_size,
        scaling=scaling,
        queries=queries,
        query_pos=query_pos,
        return_temperature=True,
    )


def layer_probe(sel: SelectionConfig, proj: torch.Tensor | None, queries: torch.Tensor | None) -> torch.Tensor | None:
    """The projected prefill queries ``[B, H, n*G, d_sig]`` a probe-based signature ('reps') ranks tokens by, from
    ``queries [B, H, n, G, D]``; None for signatures without a probe."""
    if not SIGNATURES[sel.signature].needs_probe:
        return None
    if queries is None:
        raise ConfigError(f"SelectionConfig.signature = {sel.signature!r} needs the prefill queries")
    b, h, n, g, d = queries.shape
    return project(queries.float().reshape(b, h, n * g, d), proj)


def block_signatures(
    sel: SelectionConfig,
    proj: torch.Tensor | None,
    keys: torch.Tensor,
    valid: torch.Tensor,
    *,
    layer_idx: int,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Signatures of whole blocks of layer ``layer_idx``: ``keys [B, H, n*bs, D]`` (block-aligned), ``valid
    [B, n*bs]`` -> bank rows ``[B, H, n*R, w]`` float32 (``R`` = the signature's rows per block, consecutive rows per
    block); ``probe``: :func:`layer_probe` for signatures that need one."""
    b, h, t, _ = keys.shape
    bs = sel.block_size
    n = t // bs
    signature = SIGNATURES[sel.signature]
    rows = signature.rows_per_block(sel.sig_rows)
    pk = project(keys.float(), proj).reshape(b, h, n, bs, -1)
    v = valid.reshape(b, 1, n, bs).expand(b, h, n, bs)
    if probe is not None:
        probe = probe.to(pk.device)
    sig = signature.block(pk, v, rows=rows, seed=derive_seed(sel.seed, layer_idx, 3), probe=probe)
    if sel.sign == "relu":
        sig = sig.clamp_min(0)
    return sig.reshape(b, h, n * rows, -1)


class BlockSelector:
    """Selection state of one layer: projection, signatures programmed into a scorer (one bank per (batch row,
    KV head)), GQA reduction and top-k. :attr:`scorer` is the scorer object (:attr:`backend` is the same object
    under its older name).

    Args:
        sel: the selection config.
        layer_idx: which layer (seeds derive from it).
        num_kv_heads: KV heads ``H`` of the layer.
        head_mask: ``[H]`` bool, False = streaming head (never selects blocks).
    """

    def __init__(self, sel: SelectionConfig, layer_idx: int, num_kv_heads: int, head_mask: torch.Tensor) -> None:
        self.sel = sel
        self.layer_idx = layer_idx
        self.num_kv_heads = num_kv_heads
        self.head_mask = head_mask.bool()
        self.signature = SIGNATURES[sel.signature]
        self.rows_per_block = self.signature.rows_per_block(sel.sig_rows)
        self.budget = make_budget(sel.budget, sel.top_p)
        self.proj: torch.Tensor | None = None  # [B, H, D, d_sig]
        self.probe: torch.Tensor | None = None  # [B, H, P, d_sig] projected prefill queries (signature 'reps')
        self.scaling = 1.0  # the model's softmax scale (set by fit)
        self.temperature: torch.Tensor | None = None  # [B, H] fitted score temperature (projection 'learned')
        self.scorer: Scorer = SCORERS[sel.scorer](sel, derive_seed(sel.seed, layer_idx, 1))
        # rerank > 1: the fp32 signatures the electronics keeps in memory to rescore the scorer's candidates
        self.memory: ExactScorer | None = ExactScorer(sel) if sel.rerank > 1 else None
        self.rows_rescored = 0  # signature rows read from memory by the rescoring stage (all banks, all steps)
        self.n_blocks = 0  # rows programmed per bank
        self.rows_programmed = 0  # rows written over all banks (initial programming + appends)
        self.selection_calls = 0
        self.fitted = False

    @property
    def backend(self) -> Scorer:
        """The scorer object (older name of :attr:`scorer`)."""
        return self.scorer

    # ---------------------------------------------------------------- projection and signatures
    @property
    def fit_result(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(projection, temperature)`` as fitted (for :meth:`fit` ``fitted=`` on another selector)."""
        return self.proj, self.temperature

    @property
    def needs_queries(self) -> bool:
        """Whether :meth:`fit` needs the prefill queries (learned projection, representative-token signatures)."""
        return self.sel.projection == "learned" or self.signature.needs_probe

    def fit(
        self,
        keys: torch.Tensor,
        valid: torch.Tensor,
        *,
        scaling: float = 1.0,
        queries: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        fitted: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> None:
        """Fit the projection on the prefill keys ``[B, H, T, D]`` (``valid [B, T]``); ``queries [B, H, n, G, D]``
        (with their positions ``query_pos [n]``) are the prefill query sample of :attr:`needs_queries`. ``fitted``:
        ``(projection, temperature)`` already fitted on this prefill with the same projection settings (reused, not
        refitted; see :attr:`fit_result`)."""
        self.scaling = scaling
        if fitted is not None:
            self.proj, self.temperature = fitted
        else:
            self.proj, self.temperature = fit_layer_projection(
                self.sel, self.layer_idx, keys, valid, scaling=scaling, queries=queries, query_pos=query_pos
            )
        self.probe = layer_probe(self.sel, self.proj, queries)
        self.fitted = True

    def block_signatures(self, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Signatures of whole blocks: ``keys [B, H, n*bs, D]`` (block-aligned), ``valid [B, n*bs]`` ->
        bank rows ``[B, H, n*R, w]`` float32 (``R`` = :attr:`rows_per_block` consecutive rows per block)."""
        return block_signatures(self.sel, self.proj, keys, valid, layer_idx=self.layer_idx, probe=self.probe)

    def adopt(
        self,
        proj: torch.Tensor | None,
        signatures: torch.Tensor,
        *,
        temperature: torch.Tensor | None = None,
        probe: torch.Tensor | None = None,
        scaling: float = 1.0,
    ) -> None:
        """Take a projection (with its fitted ``temperature`` and the signature's ``probe``) and the bank rows of the
        first complete blocks ``[B, H, n*R, w]`` computed elsewhere (once per prefill, for every selector that shares
        the signature settings): the same state as :meth:`fit` (``scaling``: the model's softmax scale) followed by
        :meth:`program` of those blocks."""
        self.proj = proj
        self.temperature = temperature
        self.probe = probe
        self.scaling = scaling
        self.fitted = True
        if signatures.shape[-2]:
            self.program(signatures.clone())

    def program(self, signatures: torch.Tensor) -> None:
        """Program all rows ``[B, H, N*R, w]`` (end of prefill)."""
        self.scorer.program(signatures)
        if self.memory is not None:
            self.memory.program(signatures)
        self.n_blocks = signatures.shape[-2] // self.rows_per_block
        self.rows_programmed += signatures[..., 0].numel()

    def append(self, signatures: torch.Tensor) -> None:
        """Program the rows ``[B, H, m*R, w]`` of ``m`` newly completed blocks after the existing rows."""
        if signatures.shape[-2] == 0:
            return
        if self.n_blocks == 0:
            self.program(signatures)
            return
        self.scorer.append(signatures)
        if self.memory is not None:
            self.memory.append(signatures)
        self.n_blocks += signatures.shape[-2] // self.rows_per_block
        self.rows_programmed += signatures[..., 0].numel()

    # ---------------------------------------------------------------- scoring and top-k
    def encode_query(self, query: torch.Tensor) -> torch.Tensor:
        """``query [B, H, G, D]`` -> encoded ``[B, H, G, w]`` (projected, signature-encoded, sign variant)."""
        enc = self.signature.encode_query(project(query.float(), self.proj))
        if self.sel.sign == "relu":
            enc = enc.clamp_min(0)
        return enc

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Block scores ``[B, H, N]`` of the query group ``[B, H, G, D]`` after GQA reduction (and, for multi-row
        signatures, the max over each block's rows)."""
        return self._block_scores(self.scorer.scores, self.encode_query(query))

    def _block_scores(self, score: Any, enc: torch.Tensor) -> torch.Tensor:
        """``score`` (rows ``[B, H, M*R]`` of an encoded query ``[B, H, w]`` or ``[B, H, G, w]``) reduced over the
        query group and over each block's ``R`` rows -> ``[B, H, M]``."""
        s = score(enc.sum(2)) if self.sel.gqa_reduce == "sum" else score(enc).amax(2)
        r = self.rows_per_block
        return s if r == 1 else s.reshape(*s.shape[:-1], s.shape[-1] // r, r).amax(-1)

    def exact_scores(self, query: torch.Tensor) -> torch.Tensor | None:
        """Block scores ``[B, H, N]`` of the query group ``[B, H, G, D]`` computed exactly (fp32) from the programmed
        signatures, whatever the scorer (the reference a noisy scorer's selection is measured against at every
        step); None when the scorer keeps no signatures to score (a scorer of a plugin)."""
        if self.memory is not None and self.memory.rows is not None:
            rows = self.memory.rows
        elif getattr(self.scorer, "rows", None) is not None:
            rows = self.scorer.rows
        elif getattr(getattr(self.scorer, "engine", None), "signatures", None) is not None:
            rows = self.scorer.engine.signatures.float()
        else:
            return None
        twin = ExactScorer(self.sel, rows=rows.to(query.device))
        return self._block_scores(twin.scores, self.encode_query(query))

    def rescore(self, query: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Exact scores ``[B, H, M]`` of the candidate ``blocks [B, H, M]`` (``-1`` = none: ``-inf``) of the query
        group ``[B, H, G, D]`` from the fp32 signatures in memory (``rerank > 1`` only), reduced as :meth:`scores`;
        counts the rows read."""
        return self._rescore(self.encode_query(query), blocks)

    def _rescore(self, enc: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """:meth:`rescore` of an encoded query ``enc [B, H, G, w]``."""
        if self.memory is None or self.memory.rows is None:
            raise KvprismError("rescore needs SelectionConfig.rerank > 1 and programmed signatures")
        r = self.rows_per_block
        ok = blocks >= 0
        rows_idx = (blocks.clamp_min(0)[..., None] * r + torch.arange(r, device=blocks.device)).flatten(-2)
        mem = self.memory.rows
        rows = torch.gather(mem, -2, rows_idx[..., None].expand(*rows_idx.shape, mem.shape[-1]).to(mem.device))
        self.rows_rescored += int(ok.sum()) * r
        candidates = ExactScorer(self.sel, rows=rows)  # the gathered rows [B, H, M*R, w], scored as the exact scorer
        return self._block_scores(candidates.scores, enc).masked_fill(~ok, -torch.inf)

    def logit_scale(self, group: int) -> float | torch.Tensor:
        """Factor turning a block score into a block-mass logit, for the adaptive budget: with the learned
        projection its fitted temperature (``τ · scaling`` on the summed group score, ``[B, H, 1]``); otherwise the
        softmax scale, divided by the group size ``G`` when the group's scores are summed."""
        if self.temperature is not None:
            tau = self.temperature[..., None] * self.scaling
            return tau if self.sel.gqa_reduce == "sum" else tau * group
        return self.scaling / group if self.sel.gqa_reduce == "sum" else self.scaling

    def select(self, query: torch.Tensor, candidates: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Top-k candidate blocks per bank.

        Args:
            query: ``[B, H, G, D]`` post-RoPE query group per KV head.
            candidates: ``[B, H, N]`` bool, the blocks that may be selected (N = blocks programmed).
            k: blocks to select (default ``sel.k``).

        Returns:
            ``[B, H, k]`` int64 block ids, best first (ties: the lower id), ``-1`` where fewer than k candidates
            exist (:func:`kvprism.layout.topk_blocks`).
        """
        k = self.sel.k if k is None else k
        b, h = query.shape[:2]
        self.selection_calls += 1
        if k == 0 or self.n_blocks == 0:
            return torch.full((b, h, k), -1, dtype=torch.long, device=query.device)
        cand = candidates & self.head_mask.to(candidates.device)[None, :, None]
        enc = self.encode_query(query)
        s = self._block_scores(self.scorer.scores, enc)
        if self.memory is not None:  # two stages: the scorer's rerank*k best, rescored exactly, keep k
            short = topk_blocks(s, cand, min(self.sel.rerank * k, self.n_blocks))
            exact = self._rescore(enc, short)
            s = torch.full_like(s, -torch.inf).scatter_reduce(-1, short.clamp_min(0), exact, reduce="amax")
            cand = cand & torch.isfinite(s)
        idx = topk_blocks(s, cand, k)
        if self.sel.budget == "topk":
            return idx
        # the adaptive budget keeps a best-first prefix of those ids (-1 after it and on missing candidates)
        masked = s.float().masked_fill(~cand | torch.isnan(s), -torch.inf)
        val = torch.gather(masked, -1, idx.clamp_min(0)).masked_fill(idx < 0, -torch.inf)
        return self.budget.trim(masked, val, idx, self.logit_scale(query.shape[2]))

    def select_range(self, query: torch.Tensor, lo: int, hi: int, k: int | None = None) -> torch.Tensor:
        """Top-k among the contiguous candidate blocks ``[lo, hi)`` of every bank, scored by the fused kernel of
        :func:`kvprism.kernels.score_topk` (Triton on CUDA, its torch reference elsewhere). Same contract as
        :meth:`select` for that candidate set; ``exact`` scorer only (the rows it scores are the programmed fp32
        signatures). Ties: the lower block id first.

        Args:
            query: ``[B, H, G, D]`` post-RoPE query group per KV head.
            lo, hi: candidate block ids ``lo <= j < hi`` (same for every bank); ``hi <= n_blocks``.
        """
        from kvprism.kernels import score_topk

        if self.sel.scorer != "exact":
            raise ConfigError(f"select_range scores the exact scorer's rows; scorer is {self.sel.scorer!r}")
        k = self.sel.k if k is None else k
        b, h, g, _ = query.shape
        if not 0 <= lo <= hi <= self.n_blocks:
            raise KvprismError(f"select_range: need 0 <= lo <= hi <= {self.n_blocks}, got lo={lo}, hi={hi}")
        if self.rows_per_block > 1 or self.sel.budget != "topk" or self.memory is not None:
            # multi-row signatures, adaptive budgets and rescoring are not in the fused kernel: the same selection
            # via select
            blk = torch.arange(self.n_blocks, device=query.device)
            cand = ((blk >= lo) & (blk < hi)).expand(b, h, -1)
            return self.select(query, cand, k)
        self.selection_calls += 1
        if k == 0 or hi == lo:
            return torch.full((b, h, k), -1, dtype=torch.long, device=query.device)
        enc = self.encode_query(query)  # [B, H, G, w] float32
        self.scorer.counters["evaluations"] += b * h * (1 if self.sel.gqa_reduce == "sum" else g)
        n_valid = torch.full((b,), hi - lo, dtype=torch.int32, device=query.device)
        rows = self.scorer.rows[:, :, lo:hi]
        idx = score_topk(enc.reshape(b, h * g, -1), rows, n_valid, k, self.sel.gqa_reduce)
        idx = torch.where(idx >= 0, idx + lo, idx)
        return idx.masked_fill(~self.head_mask.to(idx.device)[None, :, None], -1)

    def advance(self, steps: int = 1) -> None:
        self.scorer.advance(steps)


# the seed's simplified impairment model (kvprism.seed_published) registers itself as scorer "seed-as-published"
from kvprism.seed_published import register as _register_seed_published  # noqa: E402

_register_seed_published()
