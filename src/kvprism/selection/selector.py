"""The selection state of one layer (:class:`BlockSelector`): projection, signatures programmed into a scorer (one
weight bank per (batch row, KV head)), GQA reduction and top-k."""

from __future__ import annotations

from typing import Any

import torch

from kvprism.boundary import DEFERRED, check_finite, check_rows
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

    Every public method checks what it is given with :mod:`kvprism.boundary` (for every scorer, a plugin's
    included): rows ``[B, H, N*R, w]`` with ``H`` KV heads, whole blocks of ``R`` rows, the projection's ``B`` and
    width, the programmed ``[B, H]`` and ``w`` on append; a query group ``[B, H, G, D]`` (``G, D ≥ 1``) of the
    programmed ``B`` and the projection's (or the rows') ``D``; finite values; ``k`` an int ≥ 0. A violation is a
    :class:`~kvprism.errors.KvprismError` naming the tensor, its shape and the shape expected. An all-zero bank is
    valid: every exact score is 0 and the selection takes the lowest candidate ids (ties go to the lower id).
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
        self.bank_shape: tuple[int, int, int] | None = None  # (B, H, w) of the programmed rows
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
        self._check_rows(signatures, "program")
        self.scorer.program(signatures)
        if self.memory is not None:
            self.memory.program(signatures)
        self.n_blocks = signatures.shape[-2] // self.rows_per_block
        self.bank_shape = (signatures.shape[0], signatures.shape[1], signatures.shape[-1])
        self.rows_programmed += signatures[..., 0].numel()

    def append(self, signatures: torch.Tensor) -> None:
        """Program the rows ``[B, H, m*R, w]`` of ``m`` newly completed blocks after the existing rows."""
        if self.n_blocks == 0:
            if isinstance(signatures, torch.Tensor) and signatures.dim() >= 2 and signatures.shape[-2] == 0:
                return
            self.program(signatures)
            return
        self._check_rows(signatures, "append")
        if signatures.shape[-2] == 0:
            return
        self.scorer.append(signatures)
        if self.memory is not None:
            self.memory.append(signatures)
        self.n_blocks += signatures.shape[-2] // self.rows_per_block
        self.rows_programmed += signatures[..., 0].numel()

    def _check_rows(self, signatures: object, where: str) -> None:
        """The boundary check of rows given to :meth:`program` / :meth:`append` (class docstring)."""
        bank = self.bank_shape
        lead = None if where == "program" or bank is None else bank[:2]
        x = check_rows(signatures, where=where, lead=lead, width=None if lead is None else bank[2])
        b, h = (self.proj.shape[0], self.num_kv_heads) if self.proj is not None else ("B", self.num_kv_heads)
        w = self.signature.width(self.proj.shape[-1]) if self.proj is not None else "w"
        r = self.rows_per_block
        if (
            x.dim() != 4
            or x.shape[1] != h
            or x.shape[2] % r
            or (self.proj is not None and (x.shape[0] != b or x.shape[3] != w))
        ):
            raise KvprismError(
                f"{where}: signatures have shape {list(x.shape)}; expected [{b}, {h}, N*{r}, {w}] (batch, KV heads, "
                f"{r} row(s) per block, signature width)"
            )

    def _query_dim(self) -> int | None:
        """Width ``D`` a query must have: the projection's input, or (no projection) the width whose encoding has the
        programmed rows' width (None before either is known)."""
        if self.proj is not None:
            return int(self.proj.shape[-2])
        bank = self.bank_shape
        if bank is None:
            return None
        return next((d for d in (bank[2], bank[2] // 2) if d and self.signature.width(d) == bank[2]), bank[2])

    def _check_query(self, query: object, where: str, k: object = 0) -> None:
        """The boundary check of a query group ``[B, H, G, D]`` and of ``k`` (class docstring)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise KvprismError(f"{where}: k = {k!r} is invalid; allowed: an int >= 0")
        if not isinstance(query, torch.Tensor) or not query.is_floating_point():
            got = f"a {query.dtype} tensor" if isinstance(query, torch.Tensor) else type(query).__name__
            raise KvprismError(f"{where}: query must be a float tensor [B, H, G, D]; got {got}")
        bank, d = self.bank_shape, self._query_dim()
        b = bank[0] if bank is not None else (self.proj.shape[0] if self.proj is not None else None)
        shape = query.shape
        if (
            query.dim() != 4
            or 0 in shape
            or shape[1] != self.num_kv_heads
            or (b is not None and shape[0] != b)
            or (d is not None and shape[3] != d)
        ):
            raise KvprismError(
                f"{where}: query has shape {list(shape)}; expected [{'B' if b is None else b}, {self.num_kv_heads}, "
                f"G, {'D' if d is None else d}] (batch, KV heads, query group G >= 1, head dim)"
            )
        check_finite(query, where, "query")

    def _check_candidates(self, candidates: object, b: int, h: int) -> None:
        """``candidates``: a bool tensor ``[B, H, N]`` of the programmed ``N`` (size-1 or missing leading dims
        broadcast)."""
        want = (b, h, self.n_blocks)
        ok = isinstance(candidates, torch.Tensor) and candidates.dtype == torch.bool and 1 <= candidates.dim() <= 3
        if (
            not ok
            or candidates.shape[-1] != self.n_blocks
            or any(c not in (1, w) for c, w in zip(candidates.shape[:-1], want[3 - candidates.dim() : 2], strict=True))
        ):
            got = list(candidates.shape) if isinstance(candidates, torch.Tensor) else type(candidates).__name__
            dtype = f" {candidates.dtype}" if isinstance(candidates, torch.Tensor) else ""
            raise KvprismError(
                f"select: candidates has shape {got}{dtype}; expected a bool tensor [{b}, {h}, {self.n_blocks}] "
                "(batch, KV heads, programmed blocks; size-1 dims broadcast)"
            )

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
        self._check_query(query, "scores")
        if self.n_blocks == 0:
            raise KvprismError("scores before program: no programmed rows; call program(signatures) first")
        return self._block_scores(self._scorer_scores, self.encode_query(query))

    @property
    def _scorer_scores(self) -> Any:
        """The scorer's scores of an encoded query the selector has checked: its ``scores_unchecked`` where it has
        one (the exact scorer: the query's finiteness is read once per step, not twice), else its ``scores``."""
        return getattr(self.scorer, "scores_unchecked", None) or self.scorer.scores

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
        self._check_query(query, "exact_scores")
        if self.memory is not None and self.memory.rows is not None:
            rows = self.memory.rows
        elif getattr(self.scorer, "rows", None) is not None:
            rows = self.scorer.rows
        elif getattr(getattr(self.scorer, "engine", None), "signatures", None) is not None:
            rows = self.scorer.engine.signatures.float()
        else:
            return None
        twin = ExactScorer(self.sel, rows=rows.to(query.device))
        return self._block_scores(twin.scores_unchecked, self.encode_query(query))

    def rescore(self, query: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Exact scores ``[B, H, M]`` of the candidate ``blocks [B, H, M]`` (``-1`` = none: ``-inf``) of the query
        group ``[B, H, G, D]`` from the fp32 signatures in memory (``rerank > 1`` only), reduced as :meth:`scores`;
        counts the rows read."""
        self._check_query(query, "rescore")
        bank = self.bank_shape
        if (
            not isinstance(blocks, torch.Tensor)
            or blocks.is_floating_point()
            or blocks.is_complex()
            or blocks.dim() != 3
            or (bank is not None and tuple(blocks.shape[:2]) != bank[:2])
        ):
            want = "[B, H, M]" if bank is None else f"[{bank[0]}, {bank[1]}, M]"
            got = list(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
            raise KvprismError(f"rescore: blocks must be an integer tensor {want} of block ids; got {got}")
        if blocks.numel() and not -1 <= int(blocks.min()) <= int(blocks.max()) < self.n_blocks:
            raise KvprismError(f"rescore: blocks holds ids outside [-1, {self.n_blocks}) (-1 = none)")
        return self._rescore(self.encode_query(query), blocks)

    def _rescore(self, enc: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """:meth:`rescore` of an encoded query ``enc [B, H, G, w]``."""
        if self.memory is None or self.memory.rows is None:
            raise KvprismError("rescore needs SelectionConfig.rerank > 1 and programmed signatures")
        self.rows_rescored += int((blocks >= 0).sum()) * self.rows_per_block
        return self._rescore_rows(enc, blocks, self.memory.rows)

    def _rescore_rows(self, enc: torch.Tensor, blocks: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Exact scores ``[B, H, M]`` of ``blocks [B, H, M]`` (``-1``: ``-inf``) from the signature rows ``mem
        [B, H, N*R, w]`` (counts nothing; fixed shapes)."""
        r = self.rows_per_block
        ok = blocks >= 0
        rows_idx = (blocks.clamp_min(0)[..., None] * r + torch.arange(r, device=blocks.device)).flatten(-2)
        rows = torch.gather(mem, -2, rows_idx[..., None].expand(*rows_idx.shape, mem.shape[-1]).to(mem.device))
        candidates = ExactScorer(self.sel, rows=rows)  # the gathered rows [B, H, M*R, w], scored as the exact scorer
        return self._block_scores(candidates.scores_unchecked, enc).masked_fill(~ok, -torch.inf)

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
        self._check_query(query, "select", k)
        b, h = query.shape[:2]
        self.selection_calls += 1
        if k == 0 or self.n_blocks == 0:
            return torch.full((b, h, k), -1, dtype=torch.long, device=query.device)
        self._check_candidates(candidates, b, h)
        enc = self.encode_query(query)
        s = self._block_scores(self._scorer_scores, enc)
        mem = None if self.memory is None else self.memory.rows
        idx, short = self._rank(enc, s, candidates, k, query.shape[2], mem, self.n_blocks)
        if short is not None:
            self.rows_rescored += int((short >= 0).sum()) * self.rows_per_block
        return idx

    def select_fixed(
        self, query: torch.Tensor, candidates: torch.Tensor, rows: torch.Tensor, k: int | None = None
    ) -> torch.Tensor:
        """:meth:`select` with fixed shapes, for a static cache: the signature ``rows [B, H, N*R, w]`` of every block
        slot the cache can hold (a slot that is not in ``candidates [B, H, N]`` may hold anything) are scored as the
        :class:`~kvprism.scorers.ExactScorer` scores them, ``rerank > 1`` rescores from the same rows, then the same
        top-k and budget as :meth:`select`. No host synchronisation, no shape that depends on the data and no Python
        state changed (nothing is counted here: the static cache counts its reads on the device), so
        ``torch.compile(fullgraph=True)`` traces it and a CUDA graph replays it. Returns ``[B, H, k]`` as
        :meth:`select`."""
        k = self.sel.k if k is None else k
        enc = self.encode_query(query)
        s = self._block_scores(ExactScorer(self.sel, rows=rows).scores_unchecked, enc)
        mem = rows if self.sel.rerank > 1 else None
        return self._rank(enc, s, candidates, k, query.shape[2], mem, s.shape[-1])[0]

    def _rank(
        self,
        enc: torch.Tensor,
        s: torch.Tensor,
        candidates: torch.Tensor,
        k: int,
        group: int,
        mem: torch.Tensor | None,
        n_blocks: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The selection from block scores ``s [B, H, N]`` of the encoded query ``enc``: streaming heads masked,
        with ``mem`` (the fp32 rows in memory, ``rerank > 1``) the ``rerank*k`` best (at most ``n_blocks``)
        rescored exactly, top-k, then the budget. Returns ``(blocks [B, H, k], the rescored candidates or None)``;
        counts nothing, no host synchronisation."""
        cand = candidates & self.head_mask.to(candidates.device)[None, :, None]
        short = None
        if mem is not None:  # two stages: the scorer's rerank*k best, rescored exactly, keep k
            short = topk_blocks(s, cand, min(self.sel.rerank * k, n_blocks))
            exact = self._rescore_rows(enc, short, mem)
            s = torch.full_like(s, -torch.inf).scatter_reduce(-1, short.clamp_min(0), exact, reduce="amax")
            cand = cand & torch.isfinite(s)
        idx = topk_blocks(s, cand, k)
        if self.sel.budget == "topk":
            return idx, short
        # the adaptive budget keeps a best-first prefix of those ids (-1 after it and on missing candidates)
        masked = s.float().masked_fill(~cand | torch.isnan(s), -torch.inf)
        val = torch.gather(masked, -1, idx.clamp_min(0)).masked_fill(idx < 0, -torch.inf)
        return self.budget.trim(masked, val, idx, self.logit_scale(group)), short

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
        self._check_query(query, "select_range", k)
        b, h, g, _ = query.shape
        if (
            not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi))
            or not 0 <= lo <= hi <= self.n_blocks
        ):
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
        """Move the scorer on by ``steps`` decode steps (once per decode step); reads the deferred finiteness checks
        of the step's layers (CUDA: once per round of the selectors that decode together, see
        :mod:`kvprism.boundary`)."""
        self.scorer.advance(steps)
        DEFERRED.step(self)
