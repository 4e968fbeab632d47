"""Pure-torch references for the sparse decode kernels (run on any device, CPU included).

These define the semantics that the Triton kernels in :mod:`kvprism.kernels.triton_decode` must reproduce.

The cache geometry comes as one :class:`kvprism.layout.BlockLayout` (block size, sink blocks, window, ``seq_lens``):
sparse decode attention, for batch row ``b`` and KV head ``h``, attends to :meth:`BlockLayout.read_mask` -- the
union (each token counted once) of the sink blocks' tokens, the tail (the ``window`` most recent tokens and the
incomplete last block) and the candidate-role tokens of the blocks ``j`` in ``block_idx[b, h]`` (``-1`` = unused
slot), always restricted to ``[0, seq_lens[b])``. All query heads of a GQA group (query head ``q`` uses KV head
``q // (Hq // Hkv)``) share their KV head's selection. The Triton kernels take plain layouts (no masked key).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from kvprism.errors import KvprismError
from kvprism.layout import CANDIDATE, BlockLayout, topk_blocks

GQA_REDUCTIONS = ("sum", "max")


def check_decode_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
) -> None:
    """Shape / dtype / range checks shared by every implementation (no device synchronisation)."""
    if not isinstance(layout, BlockLayout):
        raise KvprismError(f"layout must be a kvprism.layout.BlockLayout, got {type(layout).__name__}")
    if q.dim() != 3:
        raise KvprismError(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise KvprismError(
            f"k_cache and v_cache must both be [B, Hkv, T, D], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    b, hq, d = q.shape
    bk, hkv, t_cap, dk = k_cache.shape
    if bk != b or dk != d:
        raise KvprismError(f"k_cache {tuple(k_cache.shape)} does not match q {tuple(q.shape)} in B or D")
    if hkv < 1 or hq % hkv != 0:
        raise KvprismError(f"query heads Hq={hq} must be a multiple of KV heads Hkv={hkv}")
    if block_idx.dim() != 3 or tuple(block_idx.shape[:2]) != (b, hkv):
        raise KvprismError(f"block_idx must be [B={b}, Hkv={hkv}, K], got {tuple(block_idx.shape)}")
    if block_idx.dtype.is_floating_point or block_idx.dtype == torch.bool:
        raise KvprismError(f"block_idx must be an integer tensor, got {block_idx.dtype}")
    if layout.batch != b:
        raise KvprismError(f"layout.seq_lens must be [B={b}], got {tuple(layout.seq_lens.shape)}")
    if layout.capacity != t_cap:
        raise KvprismError(f"layout.capacity = {layout.capacity} differs from the cache's T = {t_cap}")
    devs = {t.device for t in (q, k_cache, v_cache, block_idx, layout.seq_lens)}
    if len(devs) != 1:
        raise KvprismError(f"all inputs must be on one device, got {sorted(str(x) for x in devs)}")


def _check_values(block_idx: torch.Tensor, layout: BlockLayout) -> None:
    """Value checks (these synchronise with the device; the reference can afford it)."""
    t_cap = layout.capacity
    lmin, lmax = int(layout.seq_lens.min()), int(layout.seq_lens.max())
    if lmin < 1 or lmax > t_cap:
        raise KvprismError(f"seq_lens must lie in [1, T={t_cap}], got values in [{lmin}, {lmax}]")
    if block_idx.numel():
        imin, imax = int(block_idx.min()), int(block_idx.max())
        if imin < -1 or imax >= layout.n_slots:
            raise KvprismError(
                f"block_idx values must be -1 (unused) or in [0, {layout.n_slots - 1}], got values in [{imin}, {imax}]"
            )


def attended_mask(block_idx: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Boolean mask ``[B, Hkv, T]`` of the tokens that sparse decode attends to: :meth:`BlockLayout.read_mask`."""
    return layout.read_mask(block_idx)


def sparse_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-sparse single-token decode attention, reference implementation.

    Args:
        q: queries ``[B, Hq, D]``.
        k_cache, v_cache: caches ``[B, Hkv, T, D]`` (``T`` = capacity; only ``[0, seq_lens[b])`` is read).
        block_idx: selected block indices ``[B, Hkv, K]`` (any integer dtype), ``-1`` marks an unused slot;
            duplicates and overlaps with sink / window / incomplete block are counted once.
        layout: the step's :class:`~kvprism.layout.BlockLayout` (``capacity == T``, ``seq_lens`` each in
            ``[1, T]``); a validity mask, if it has one, is honoured.
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``[B, Hq, D]`` in ``q``'s dtype. Computed by gathering the attended tokens of each (batch, KV head) and
        running an exact softmax in ``float32`` (``float64`` if the inputs are ``float64``).
    """
    softmaxes = _attended_softmax(q, k_cache, v_cache, block_idx, layout, scale)  # checks the inputs first
    g = q.shape[1] // k_cache.shape[1]
    out = torch.empty_like(q)
    for bi, h, tok, p in softmaxes:
        v = v_cache[bi, h].index_select(0, tok).to(p.dtype)
        out[bi, h * g : (h + 1) * g] = (p @ v).to(q.dtype)
    return out


def _attended_softmax(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
    scale: float | None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Check the inputs (at the call, not at the first iteration), then per (batch row, KV head) yield
    ``(b, h, tok, p)``: the attended positions ``tok [n]`` (:func:`attended_mask`) and the exact softmax ``p [G, n]``
    of the group's queries over them, in ``float32`` (``float64`` for ``float64`` inputs)."""
    check_decode_inputs(q, k_cache, v_cache, block_idx, layout)
    _check_values(block_idx, layout)
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    mask = attended_mask(block_idx, layout)

    def rows() -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        for bi in range(b):
            for h in range(hkv):
                tok = mask[bi, h].nonzero().squeeze(1)
                k = k_cache[bi, h].index_select(0, tok).to(acc_dtype)  # [n, D]
                qg = q[bi, h * g : (h + 1) * g].to(acc_dtype)  # [G, D]
                yield bi, h, tok, torch.softmax((qg @ k.T) * scale, dim=-1)

    return rows()


def check_score_inputs(
    q: torch.Tensor, signatures: torch.Tensor, n_valid: torch.Tensor | None, k: int, gqa_reduce: str
) -> None:
    """Shape checks for the scoring + top-k path (no device synchronisation)."""
    if q.dim() != 3 or signatures.dim() != 4:
        raise KvprismError(
            f"q must be [B, Hq, d] and signatures [B, Hkv, N, d], got {tuple(q.shape)} and {tuple(signatures.shape)}"
        )
    b, hq, d = q.shape
    bs, hkv, _n, ds = signatures.shape
    if bs != b or ds != d:
        raise KvprismError(f"signatures {tuple(signatures.shape)} do not match q {tuple(q.shape)} in B or d")
    if hkv < 1 or hq % hkv != 0:
        raise KvprismError(f"query heads Hq={hq} must be a multiple of KV heads Hkv={hkv}")
    if k < 1:
        raise KvprismError(f"k must be >= 1, got {k}")
    if gqa_reduce not in GQA_REDUCTIONS:
        raise KvprismError(f"gqa_reduce must be one of {GQA_REDUCTIONS}, got {gqa_reduce!r}")
    if n_valid is not None and (n_valid.dim() != 1 or n_valid.shape[0] != b):
        raise KvprismError(f"n_valid must be [B={b}] or None, got {tuple(n_valid.shape)}")


def score_blocks_ref(q: torch.Tensor, signatures: torch.Tensor, gqa_reduce: str = "sum") -> torch.Tensor:
    """Block scores ``[B, Hkv, N]``: per query head ``q @ sig``, reduced over the GQA group by sum or max.

    Computed in ``float32`` (``float64`` for ``float64`` inputs).
    """
    b, hq, d = q.shape
    hkv = signatures.shape[1]
    acc = torch.promote_types(torch.promote_types(q.dtype, signatures.dtype), torch.float32)
    qg = q.to(acc).view(b, hkv, hq // hkv, d)
    s = torch.einsum("bhgd,bhnd->bhgn", qg, signatures.to(acc))
    return s.sum(dim=2) if gqa_reduce == "sum" else s.amax(dim=2)


def candidate_blocks(layout: BlockLayout) -> torch.Tensor:
    """``[B]`` blocks worth scoring per batch row, counted from block 0: the blocks that start before the tail,
    ``ceil(tail_start / B)`` (:attr:`BlockLayout.candidate_end`). The candidates themselves are the ids from
    ``first_block + sink_blocks`` up to this; a block that the window covers only partly is one of them (see
    :mod:`kvprism.layout`)."""
    return layout.candidate_end


def score_topk_ref(
    q: torch.Tensor,
    signatures: torch.Tensor,
    n_valid: torch.Tensor | None,
    k: int,
    gqa_reduce: str = "sum",
) -> torch.Tensor:
    """Top-k blocks per (batch, KV head) by signature score, reference implementation.

    Args:
        q: query sketches ``[B, Hq, d]``.
        signatures: block signatures ``[B, Hkv, N, d]`` (N = capacity).
        n_valid: number of valid signatures per batch row ``[B]`` (rows ``>= n_valid[b]`` are ignored), or None for all.
        k: blocks to return.
        gqa_reduce: ``"sum"`` or ``"max"`` of the per-query-head scores over a GQA group.

    Returns:
        ``[B, Hkv, k]`` int64 block indices, best first, ties broken towards the lower index; ``-1`` pads the
        slots when fewer than ``k`` blocks are valid.
    """
    check_score_inputs(q, signatures, n_valid, k, gqa_reduce)
    b, _hkv, n, _ = signatures.shape
    s = score_blocks_ref(q, signatures, gqa_reduce)
    valid = None
    if n_valid is not None:
        valid = torch.arange(n, device=s.device) < n_valid.to(s.device).view(b, 1, 1)
    return topk_blocks(s, valid, k)


def block_mass_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
    scale: float | None = None,
) -> torch.Tensor:
    """Per selected slot ``[B, Hkv, K]`` (in the accumulation dtype of :func:`sparse_decode_attention_ref`): the
    attention mass, in that function's softmax, of the slot's block tokens that are read as a selected block (the
    block's candidate tokens, not the sink's or the tail's), summed over the GQA group's query heads. ``-1`` slots and
    a repeated id after its first slot get 0. This is what ``SelectionConfig.carry`` ranks the selected blocks by."""
    softmaxes = _attended_softmax(q, k_cache, v_cache, block_idx, layout, scale)  # checks the inputs first
    bs = layout.block_size
    is_cand = layout.token_roles.eq(CANDIDATE)  # [B, T]
    out = torch.zeros(block_idx.shape, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    for bi, h, tok, p in softmaxes:
        mass = p.sum(0)  # [n]: mass per attended token, summed over G
        seen: set[int] = set()
        for j, blk in enumerate(block_idx[bi, h].tolist()):
            if blk < 0 or blk in seen:
                continue
            seen.add(blk)
            own = (tok >= blk * bs) & (tok < blk * bs + bs) & is_cand[bi, tok]
            out[bi, h, j] = mass[own].sum()
    return out
