"""The selection state of one layer (:class:`BlockSelector`): projection, signatures programmed into a scorer (one
weight bank per (batch row, KV head)), GQA reduction and top-k."""

from __future__ import annotations

from typing import Any

import torch

from kvprism.budgets import make_budget
from kvprism.errors import ConfigError, KvprismError
from kvprism.layout import topk_blocks
from kvprism.scorers import SCORERS, ExactScorer, Scorer
from kvprism.selection.config import SelectionConfig
from kvprism.selection.fit import derive_seed, fit_layer_projection, layer_probe
from kvprism.signatures import SIGNATURES, project

__all__ = ["BlockSelector"]


class BlockSelector:
    """Selection state of one layer: projection, signatures programmed into a scorer (one bank per (batch row,
    KV head)), GQA reduction and top-k. :attr:`scorer` is the scorer object. The rows it programs are
    :func:`~kvprism.selection.fit.block_signatures` of the fitted :attr:`proj` and :attr:`probe`.

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

    # ---------------------------------------------------------------- projection and signatures
    @property
    def fit_result(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(projection, temperature)`` as fitted (for :meth:`fit` ``fitted=`` on another selector)."""
        return self.proj, self.temperature

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
        (with their positions ``query_pos [n]``) are the prefill query sample of
        :func:`~kvprism.selection.fit.needs_queries`. ``fitted``:
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
