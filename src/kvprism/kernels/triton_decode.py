"""Triton kernels for block-sparse decode: fused score + top-k, split-K sparse attention, a CUDA-graph decode step.

Semantics are those of :mod:`kvprism.kernels.reference` (the tests compare the two). Importing this module needs
``triton``; the kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set
before the first import), which is how they are tested without a GPU.

Kernels (all shapes static for a given model / capacity, so one decode step can be captured in a CUDA graph):

* ``_score_tile_topk_kernel`` — grid ``(B*Hkv, N/TILE)``: scores one tile of signatures against all query heads of a
  GQA group (tensor-core dot, fp32 accumulation), reduces over the group (sum or max), packs (score, index) into one
  sortable int64 key and keeps the tile's best ``K_POW2`` keys (bitonic top-k in registers).
* ``_topk_merge_kernel`` — grid ``(B*Hkv,)``: merges the per-tile candidates and decodes the best ``k`` indices.
* ``_sparse_decode_partial_kernel`` — grid ``(B*Hkv, S)``: flash-decoding over a static list of work tiles per
  (batch, KV head) — the ``K`` selected blocks, the sink tiles and the tail tiles (window + incomplete block) — each
  program walks a contiguous range of tiles with an online (log-sum-exp) softmax for all ``G`` query heads of the
  group at once, and writes an unnormalised partial result with its running max and sum.
* ``_combine_kernel`` — grid ``(B*Hq,)``: numerically stable merge of the ``S`` partials.

Duplicate-free attention (each attended token counted once) is enforced inside the attention kernel: a selected
block's tokens are restricted to ``[sink_tokens, tail_start)`` where ``tail_start = max(min(L - window, (L // B) * B), 0)``,
the sink tiles to ``[0, min(sink_tokens, tail_start))``, the tail tiles to ``[tail_start, L)``, and a block index
repeated in a list is processed only at its first occurrence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kvprism.errors import KvprismError
from kvprism.kernels import TRITON_DTYPES, TRITON_HEAD_DIMS
from kvprism.kernels.reference import check_decode_inputs, check_score_inputs
from kvprism.layout import BlockGeometry, BlockLayout

_HAS_TL_TOPK = hasattr(tl, "topk")
_INT32_MIN = -(2**31)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a handful of programs keeps the split logic exercised


# ---------------------------------------------------------------------------------------------------------------------
# score + top-k
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _score_tile_topk_kernel(
    Q,
    SIG,
    NV,
    CAND,
    stride_qb,
    stride_qh,
    stride_sb,
    stride_sh,
    stride_sn,
    n_sig,
    nv_div,
    nv_window,
    HKV: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    DS: tl.constexpr,
    DS_CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    K_POW2: tl.constexpr,
    N_TILES: tl.constexpr,
    REDUCE_MAX: tl.constexpr,
    HAS_NV: tl.constexpr,
    IEEE: tl.constexpr,
    USE_TL_TOPK: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    tile = tl.program_id(1)
    b = pid_bh // HKV
    h = pid_bh % HKV
    sig_base = SIG + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
    offs_n = tile * TILE + tl.arange(0, TILE)
    offs_g = tl.arange(0, G_PAD)
    if HAS_NV:
        raw = tl.load(NV + b).to(tl.int32)
        nv = tl.minimum((tl.maximum(raw - nv_window, 0) + nv_div - 1) // nv_div, raw // nv_div)
        nv = tl.minimum(nv, n_sig)
    else:
        nv = n_sig
    valid = offs_n < nv

    scores = tl.zeros([G_PAD, TILE], dtype=tl.float32)
    for d0 in tl.static_range(0, DS, DS_CHUNK):
        offs_d = d0 + tl.arange(0, DS_CHUNK)
        dmask = offs_d < DS
        q = tl.load(
            Q + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
            mask=(offs_g[:, None] < G) & dmask[None, :],
            other=0.0,
        )
        sig = tl.load(
            sig_base + offs_n[:, None] * stride_sn + offs_d[None, :],
            mask=valid[:, None] & dmask[None, :],
            other=0.0,
        )
        if IEEE:
            scores += tl.dot(q, tl.trans(sig), input_precision="ieee")
        else:
            scores += tl.dot(q.to(sig.dtype), tl.trans(sig))
    if REDUCE_MAX:  # noqa: SIM108 (constexpr branch)
        s = tl.max(tl.where(offs_g[:, None] < G, scores, float("-inf")), axis=0)
    else:
        s = tl.sum(scores, axis=0)  # padded query rows are zero

    # (score, index) -> one int64 key: order-preserving int32 image of the float in the high word, (2^31-1-index) in
    # the low word, so the largest key is the best score and, among equal scores, the lowest index.
    bits = s.to(tl.int32, bitcast=True)
    key32 = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key32 = tl.where(valid, key32, -2147483648)
    low = tl.where(valid, 2147483647 - offs_n, 0)
    key = (key32.to(tl.int64) << 32) | low.to(tl.int64)
    if USE_TL_TOPK:
        best = tl.topk(key, K_POW2)
        offs_c = tl.arange(0, K_POW2)
        tl.store(CAND + (pid_bh * N_TILES + tile) * K_POW2 + offs_c, best)
    else:
        best = tl.sort(key, descending=True)
        offs_c = tl.arange(0, TILE)
        tl.store(CAND + (pid_bh * N_TILES + tile) * K_POW2 + offs_c, best, mask=offs_c < K_POW2)


@triton.jit
def _merge_candidates(
    CAND, OUT, pid_bh, k, N_CAND: tl.constexpr, C_PAD: tl.constexpr, K_POW2: tl.constexpr, USE_TL_TOPK: tl.constexpr
):
    """Best ``k`` of one (batch, KV head)'s ``N_CAND`` candidate keys -> block indices (``-1`` for invalid)."""
    offs = tl.arange(0, C_PAD)
    m = offs < N_CAND
    sentinel = tl.full([C_PAD], -2147483648, tl.int64) << 32
    key = tl.load(CAND + pid_bh * N_CAND + offs, mask=m, other=0)
    key = tl.where(m, key, sentinel)
    if USE_TL_TOPK:
        best = tl.topk(key, K_POW2)
        offs_k = tl.arange(0, K_POW2)
    else:
        best = tl.sort(key, descending=True)
        offs_k = tl.arange(0, C_PAD)
    hi = best >> 32
    idx = tl.where(hi == -2147483648, -1, 2147483647 - (best & 2147483647))
    tl.store(OUT + pid_bh * k + offs_k, idx, mask=offs_k < k)


@triton.jit
def _topk_merge_kernel(
    CAND,
    OUT,
    k,
    N_CAND: tl.constexpr,
    C_PAD: tl.constexpr,
    K_POW2: tl.constexpr,
    USE_TL_TOPK: tl.constexpr,
):
    _merge_candidates(CAND, OUT, tl.program_id(0), k, N_CAND, C_PAD, K_POW2, USE_TL_TOPK)


@dataclass(frozen=True)
class ScorePlan:
    tile: int
    n_tiles: int
    k_pow2: int
    g_pad: int
    ds_chunk: int
    c_pad: int


def score_plan(n: int, d: int, g: int, k: int, tile: int | None) -> ScorePlan:
    """Launch geometry of the fused score + top-k kernel for ``n`` rows of width ``d``, GQA group ``g``, top ``k``
    (``tile``: rows per program; None = the measured default)."""
    k_pow2 = _next_pow2(k)
    if tile is None:
        tile = 128  # H200 sweep at 128K: 128 within noise of the best at batch 1 and 8 (256: +2.5 / +1.7 us)
    tile = max(_next_pow2(tile), k_pow2, 16)
    n_tiles = max(1, -(-n // tile))
    return ScorePlan(
        tile=tile,
        n_tiles=n_tiles,
        k_pow2=k_pow2,
        g_pad=max(16, _next_pow2(g)),
        ds_chunk=max(16, min(64, _next_pow2(d))),
        c_pad=max(_next_pow2(n_tiles * k_pow2), k_pow2),
    )


def score_topk_triton(
    q: torch.Tensor,
    signatures: torch.Tensor,
    n_valid: torch.Tensor | None,
    k: int,
    gqa_reduce: str = "sum",
    *,
    n_valid_div: int = 1,
    n_valid_window: int = 0,
    out: torch.Tensor | None = None,
    cand: torch.Tensor | None = None,
    tile: int | None = None,
    merge: bool = True,
) -> torch.Tensor:
    """Fused block scoring + top-k (see :func:`kvprism.kernels.reference.score_topk_ref` for the contract).

    Args:
        q: ``[B, Hq, d]``; signatures: ``[B, Hkv, N, d]`` (last dim contiguous); bf16 / fp16 use the tensor cores,
            fp32 is computed exactly (``ieee``).
        n_valid: ``[B]`` integer tensor or None. With ``x = n_valid[b]``, ``div = n_valid_div`` and
            ``w = n_valid_window`` the valid count is ``min(ceil(max(x - w, 0) / div), x // div)`` — plain ``x`` by
            default; pass ``seq_lens`` with ``div = block_size`` and ``w = window_tokens`` to score the complete blocks
            that are not entirely inside the window, without an extra launch (see :func:`~kvprism.kernels.reference.candidate_blocks`).
        out: optional preallocated ``[B, Hkv, k]`` int64 result; cand: optional ``[B*Hkv*n_tiles*K_POW2]`` int64
            workspace (both let a CUDA graph reuse memory).
        tile: signatures per program (power of two, default 128).
        merge: launch the merge of the per-tile candidates (default). With False only the scoring kernel runs and
            ``cand`` (the per-tile best keys) is returned, for the attention kernel to merge.

    Returns:
        ``[B, Hkv, k]`` int64, best first, ties towards the lower index, ``-1`` where fewer than ``k`` are valid.
    """
    check_score_inputs(q, signatures, n_valid, k, gqa_reduce)
    if n_valid_div < 1 or n_valid_window < 0:
        raise KvprismError(f"need n_valid_div >= 1 and n_valid_window >= 0, got {n_valid_div}, {n_valid_window}")
    b, hq, d = q.shape
    _, hkv, n, _ = signatures.shape
    if q.stride(-1) != 1 or signatures.stride(-1) != 1:
        raise KvprismError("q and signatures must be contiguous in their last dimension")
    plan = score_plan(n, d, hq // hkv, k, tile)
    if plan.c_pad > 1 << 14:
        raise KvprismError(f"too many top-k candidates ({plan.n_tiles} tiles x {plan.k_pow2}); raise tile or lower N")
    if out is None:
        out = torch.empty(b, hkv, k, dtype=torch.int64, device=q.device)
    n_cand = plan.n_tiles * plan.k_pow2
    if cand is None:
        cand = torch.empty(b * hkv * n_cand, dtype=torch.int64, device=q.device)
    ieee = signatures.dtype == torch.float32 or q.dtype == torch.float32
    if ieee:
        q_in, s_in = q.float(), signatures.float()
    else:
        q_in, s_in = q.to(signatures.dtype), signatures
    _score_tile_topk_kernel[(b * hkv, plan.n_tiles)](
        q_in,
        s_in,
        n_valid if n_valid is not None else q_in,
        cand,
        q_in.stride(0),
        q_in.stride(1),
        s_in.stride(0),
        s_in.stride(1),
        s_in.stride(2),
        n,
        n_valid_div,
        n_valid_window,
        HKV=hkv,
        G=hq // hkv,
        G_PAD=plan.g_pad,
        DS=d,
        DS_CHUNK=plan.ds_chunk,
        TILE=plan.tile,
        K_POW2=plan.k_pow2,
        N_TILES=plan.n_tiles,
        REDUCE_MAX=gqa_reduce == "max",
        HAS_NV=n_valid is not None,
        IEEE=ieee,
        USE_TL_TOPK=_HAS_TL_TOPK,
    )
    if not merge:
        return cand
    _topk_merge_kernel[(b * hkv,)](
        cand, out, k, N_CAND=n_cand, C_PAD=plan.c_pad, K_POW2=plan.k_pow2, USE_TL_TOPK=_HAS_TL_TOPK
    )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# sparse decode attention
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _sparse_decode_partial_kernel(
    Q,
    K,
    V,
    IDX,
    LENS,
    O_PART,
    ML_PART,
    CAND,
    SEL_ML,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ib,
    stride_ih,
    stride_ik,
    scale_log2e,
    sink_tokens,
    window_tokens,
    tiles_per_split,
    N_SEL: tl.constexpr,
    K_PAD: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SUB: tl.constexpr,
    N_SINK_TILES: tl.constexpr,
    N_TAIL_TILES: tl.constexpr,
    N_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
    FROM_CAND: tl.constexpr,
    N_CAND: tl.constexpr,
    C_PAD: tl.constexpr,
    WANT_MASS: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // HKV
    h = pid_bh % HKV
    b64 = b.to(tl.int64)  # base offsets in int64: B * Hkv * T * D can pass 2^31 elements
    h64 = h.to(tl.int64)
    seq_len = tl.load(LENS + b).to(tl.int32)
    n_full = seq_len // BLOCK_SIZE
    tail_start = tl.maximum(tl.minimum(seq_len - window_tokens, n_full * BLOCK_SIZE), 0)
    sink_end = tl.minimum(sink_tokens, tail_start)

    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, K_PAD)
    q = tl.load(
        Q + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :], mask=offs_g[:, None] < G, other=0.0
    )
    if FROM_CAND:
        # merge the scoring kernel's per-tile candidates here (every split of this (batch, KV head) computes the same
        # top N_SEL; split 0 also writes them out), saving the separate merge launch
        offs_c = tl.arange(0, C_PAD)
        cm = offs_c < N_CAND
        key = tl.load(CAND + pid_bh * N_CAND + offs_c, mask=cm, other=0)
        key = tl.where(cm, key, tl.full([C_PAD], -2147483648, tl.int64) << 32)
        best = tl.topk(key, K_PAD)
        idx_row = tl.where(best >> 32 == -2147483648, -1, 2147483647 - (best & 2147483647))
        idx_row = tl.where(offs_k < N_SEL, idx_row, -1)
        if split == 0:
            tl.store(IDX + b * stride_ib + h * stride_ih + offs_k * stride_ik, idx_row, mask=offs_k < N_SEL)
    else:
        idx_row = tl.load(IDX + b * stride_ib + h * stride_ih + offs_k * stride_ik, mask=offs_k < N_SEL, other=-1)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh

    m_i = tl.full([G_PAD], -1.0e30, dtype=tl.float32)  # finite: an all-masked tile then leaves the state unchanged
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, D], dtype=tl.float32)

    n_sel_tiles = N_SEL * SUB
    total = n_sel_tiles + N_SINK_TILES + N_TAIL_TILES
    e_lo = split * tiles_per_split
    e_hi = tl.minimum(e_lo + tiles_per_split, total)
    for e in range(e_lo, e_hi):
        is_sel = e < n_sel_tiles
        is_sink = (e >= n_sel_tiles) & (e < n_sel_tiles + N_SINK_TILES)
        slot = e // SUB
        # this tile's block id, taken from the index row already in registers (no dependent global load per tile)
        blk = tl.sum(tl.where((offs_k == slot) & is_sel, idx_row, 0), axis=0).to(tl.int32)
        blk = tl.where(is_sel, blk, -1)
        first = tl.sum(((idx_row == blk) & (offs_k < slot)).to(tl.int32), axis=0) == 0
        use_blk = is_sel & (blk >= 0) & first
        sel_start = blk * BLOCK_SIZE + (e % SUB) * BLOCK_N
        sink_start = (e - n_sel_tiles) * BLOCK_N
        tail_s = tail_start + (e - n_sel_tiles - N_SINK_TILES) * BLOCK_N
        start = tl.where(is_sel, sel_start, tl.where(is_sink, sink_start, tail_s))
        lo = tl.where(is_sel, sink_tokens, 0)
        hi = tl.where(
            is_sel,
            tl.where(use_blk, tl.minimum(tail_start, blk * BLOCK_SIZE + BLOCK_SIZE), 0),
            tl.where(is_sink, sink_end, seq_len),
        )
        t = start + offs_n
        tok = (t >= lo) & (t < hi)
        k = tl.load(k_base + t[:, None] * stride_kt + offs_d[None, :], mask=tok[:, None], other=0.0)
        v = tl.load(v_base + t[:, None] * stride_vt + offs_d[None, :], mask=tok[:, None], other=0.0)  # both in flight
        if IEEE:  # fp32 inputs: exact fp32 products instead of tf32
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2e
        else:
            s = tl.dot(q, tl.trans(k)) * scale_log2e
        s = tl.where(tok[None, :], s, float("-inf"))
        if WANT_MASS:  # a selected tile's own (max, sum) per query head, for the block masses
            m_t = tl.maximum(tl.max(s, axis=1), -1.0e30)
            l_t = tl.sum(tl.exp2(s - m_t[:, None]), axis=1)
            sel_row = (pid_bh * n_sel_tiles + e) * G + offs_g
            sel_ok = (offs_g < G) & (offs_g * 0 + e < n_sel_tiles)  # a vector mask (is_sel may be a scalar)
            tl.store(SEL_ML + sel_row * 2, m_t, mask=sel_ok)
            tl.store(SEL_ML + sel_row * 2 + 1, l_t, mask=sel_ok)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    row = (pid_bh * N_SPLITS + split) * G + offs_g
    gm = offs_g < G
    tl.store(O_PART + row[:, None] * D + offs_d[None, :], acc, mask=gm[:, None])
    tl.store(ML_PART + row * 2, m_i, mask=gm)
    tl.store(ML_PART + row * 2 + 1, l_i, mask=gm)


@triton.jit
def _merge_splits(
    O_PART, ML_PART, out_ptr, bh, g, G: tl.constexpr, D: tl.constexpr, N_SPLITS: tl.constexpr, S_PAD: tl.constexpr
):
    """Log-sum-exp merge of the ``N_SPLITS`` partials of query head ``g`` of (batch, KV head) ``bh`` -> ``out_ptr``."""
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.arange(0, D)
    sm = offs_s < N_SPLITS
    row = (bh * N_SPLITS + offs_s) * G + g
    m = tl.load(ML_PART + row * 2, mask=sm, other=-1.0e30)
    l_part = tl.load(ML_PART + row * 2 + 1, mask=sm, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(sm, tl.exp2(m - m_max), 0.0)
    acc = tl.load(O_PART + row[:, None] * D + offs_d[None, :], mask=sm[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l_part * w, axis=0)
    tl.store(out_ptr + offs_d, (num / den).to(out_ptr.dtype.element_ty))


@triton.jit
def _combine_kernel(
    O_PART,
    ML_PART,
    OUT,
    stride_ob,
    stride_oh,
    HQ: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    N_SPLITS: tl.constexpr,
    S_PAD: tl.constexpr,
):
    pid = tl.program_id(0)  # b * HQ + query head
    b = pid // HQ
    hq = pid % HQ
    out_ptr = OUT + b.to(tl.int64) * stride_ob + hq.to(tl.int64) * stride_oh
    _merge_splits(O_PART, ML_PART, out_ptr, b * (HQ // G) + hq // G, hq % G, G, D, N_SPLITS, S_PAD)


@triton.jit
def _block_mass_kernel(
    ML_PART,
    SEL_ML,
    MASS,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    N_SEL: tl.constexpr,
    K_PAD: tl.constexpr,
    SUB: tl.constexpr,
    N_SPLITS: tl.constexpr,
    S_PAD: tl.constexpr,
):
    """Grid ``(B*Hkv,)``: each selected block's attention mass summed over the group's query heads, from the
    per-split (max, sum) pairs (the softmax's normaliser per head) and the selected tiles' own (max, sum) pairs."""
    bh = tl.program_id(0)
    offs_s = tl.arange(0, S_PAD)
    offs_g = tl.arange(0, G_PAD)
    offs_k = tl.arange(0, K_PAD)
    gm = offs_g < G
    sg = (offs_s < N_SPLITS)[:, None] & gm[None, :]
    row = (bh * N_SPLITS + offs_s)[:, None] * G + offs_g[None, :]
    m = tl.load(ML_PART + row * 2, mask=sg, other=-1.0e30)
    l_part = tl.load(ML_PART + row * 2 + 1, mask=sg, other=0.0)
    m_max = tl.max(m, axis=0)  # [G_PAD]
    den = tl.sum(l_part * tl.exp2(m - m_max[None, :]), axis=0)
    den = tl.where(gm & (den > 0), den, 1.0)
    kg = (offs_k < N_SEL)[:, None] & gm[None, :]
    mass = tl.zeros([K_PAD], dtype=tl.float32)
    for sub in tl.static_range(SUB):
        r = (bh * N_SEL * SUB + offs_k * SUB + sub)[:, None] * G + offs_g[None, :]
        m_t = tl.load(SEL_ML + r * 2, mask=kg, other=-1.0e30)
        l_t = tl.load(SEL_ML + r * 2 + 1, mask=kg, other=0.0)
        mass += tl.sum(l_t * tl.exp2(m_t - m_max[None, :]) / den[None, :], axis=1)
    tl.store(MASS + bh * N_SEL + offs_k, mass, mask=offs_k < N_SEL)


@dataclass(frozen=True)
class DecodePlan:
    """Static launch geometry of the sparse attention kernels for one problem shape."""

    block_n: int
    sub: int
    n_sink_tiles: int
    n_tail_tiles: int
    n_splits: int
    tiles_per_split: int
    g_pad: int
    k_pad: int

    @property
    def total_tiles(self) -> int:
        return self.n_splits * self.tiles_per_split


def decode_plan(
    batch: int,
    hq: int,
    hkv: int,
    head_dim: int,
    n_sel: int,
    geometry: BlockGeometry,
    device: torch.device,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> DecodePlan:
    """Work decomposition: tiles of ``block_n`` tokens, split over ``n_splits`` programs per (batch, KV head).

    The tile list has a static length (``n_sel * sub`` selected tiles, then sink tiles, then tail tiles covering the
    longest possible tail ``max(window, block_size - 1)``), so the geometry depends only on the configuration and a
    CUDA graph stays valid while ``seq_lens`` grows. ``geometry``: block size, sink blocks and window of the layouts
    the plan serves.
    """
    block_size, sink_tokens, window_tokens = geometry.block_size, geometry.sink_tokens, geometry.window
    if head_dim not in TRITON_HEAD_DIMS:
        raise KvprismError(f"head_dim must be a power of two in [16, 256] for the Triton kernel, got {head_dim}")
    if block_n is None:
        block_n = 64
    block_n = max(16, min(_next_pow2(block_n), _next_pow2(block_size)))
    sub = -(-block_size // block_n)
    n_sink_tiles = -(-sink_tokens // block_n)
    n_tail_tiles = -(-max(window_tokens, block_size - 1, 1) // block_n)
    total = n_sel * sub + n_sink_tiles + n_tail_tiles
    if num_splits is None:
        # aim at ~4 programs per multiprocessor, at least one tile each (H200, Qwen2.5-7B layer at 128K: batch 1 ran
        # fastest with one tile per program, batch 8 within noise of the best; benchmarks/NOTES-gpu.md)
        target = 4 * _num_sms(device)
        num_splits = max(1, min(-(-target // (batch * hkv)), total))
    num_splits = max(1, min(int(num_splits), total))
    tiles_per_split = -(-total // num_splits)
    num_splits = -(-total // tiles_per_split)  # drop splits that would be empty
    return DecodePlan(
        block_n=block_n,
        sub=sub,
        n_sink_tiles=n_sink_tiles,
        n_tail_tiles=n_tail_tiles,
        n_splits=num_splits,
        tiles_per_split=tiles_per_split,
        g_pad=max(16, _next_pow2(hq // hkv)),
        k_pad=max(16, _next_pow2(n_sel)),
    )


def sparse_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    plan: DecodePlan | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    candidates: tuple[torch.Tensor, int] | None = None,
    block_mass: torch.Tensor | None = None,
    mass_workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse decode attention on the GPU (contract: :func:`~kvprism.kernels.reference.sparse_decode_attention_ref`).

    ``layout`` must be plain (no masked key: the kernel reads sink, tail and blocks by position). Requires
    ``layout.seq_lens[b]`` in ``[1, T]`` and ``block_idx`` values in ``[-1, ceil(T / block_size))`` — not checked
    here (that would synchronise the device); the reference checks them. Caches may be views into larger buffers
    (any strides, last dimension contiguous). ``out`` / ``plan`` / ``workspace`` allow static reuse in a CUDA graph.
    bf16 / fp16 inputs run on the tensor cores with fp32 accumulation; fp32 inputs use exact fp32 dots (slower).
    ``candidates = (cand, n_cand)``: take the selection from the scoring kernel's per-tile candidate keys ``cand``
    (``n_cand`` per (batch, KV head), from ``score_topk_triton(..., merge=False)``) instead of reading ``block_idx``;
    the top ``block_idx.shape[2]`` are merged inside this kernel and written to ``block_idx``.
    ``block_mass``: an optional contiguous fp32 ``[B, Hkv, K]`` that receives, per selected slot, the attention mass
    of the block's attended tokens summed over the group's query heads (0 for ``-1``, a repeated id after its first
    slot, and tokens of the sink or the tail; :func:`~kvprism.kernels.reference.block_mass_ref`), from the same
    softmax at the cost of one small launch; ``mass_workspace`` (:func:`block_mass_workspace`) lets a CUDA graph reuse its
    per-tile scratch.
    """
    check_decode_inputs(q, k_cache, v_cache, block_idx, layout)
    if not layout.plain:
        raise KvprismError("the Triton decode kernel needs a layout without masked keys (no padding mask)")
    geometry, seq_lens = layout.geometry, layout.seq_lens
    block_size, sink_tokens, window_tokens = geometry.block_size, geometry.sink_tokens, geometry.window
    b, hq, d = q.shape
    _, hkv, _t, _ = k_cache.shape
    if q.dtype not in TRITON_DTYPES:
        raise KvprismError(f"q must be bf16, fp16 or fp32, got {q.dtype}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise KvprismError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise KvprismError("q, k_cache and v_cache must be contiguous in their last dimension")
    n_sel = block_idx.shape[2]
    g = hq // hkv
    if plan is None:
        plan = decode_plan(b, hq, hkv, d, n_sel, geometry, q.device, num_splits, block_n)
    if out is None:
        out = torch.empty_like(q)
    if workspace is None:
        workspace = decode_workspace(b, hkv, g, d, plan, q.device)
    o_part, ml_part = workspace
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    s_pad = _next_pow2(plan.n_splits)
    if candidates is not None and not _HAS_TL_TOPK:
        raise KvprismError("merging candidates in the attention kernel needs tl.topk (Triton >= 3.2)")
    cand, n_cand = candidates if candidates is not None else (ml_part, 1)
    want_mass = block_mass is not None
    if want_mass:
        if block_mass.shape != (b, hkv, n_sel) or block_mass.dtype != torch.float32 or not block_mass.is_contiguous():
            raise KvprismError(
                f"block_mass must be a contiguous float32 tensor of shape {(b, hkv, n_sel)}, got "
                f"{block_mass.dtype} {tuple(block_mass.shape)}"
            )
        need = b * hkv * n_sel * plan.sub * g * 2
        if mass_workspace is None:
            mass_workspace = block_mass_workspace(b, hkv, g, n_sel, plan, q.device)
        elif (
            mass_workspace.dtype != torch.float32 or mass_workspace.numel() < need or not mass_workspace.is_contiguous()
        ):
            raise KvprismError(
                f"mass_workspace must be a contiguous float32 tensor of at least {need} elements (block_mass_workspace "
                f"for this plan), got {mass_workspace.dtype} with {mass_workspace.numel()}"
            )
    sel_ml = mass_workspace if want_mass else ml_part
    _sparse_decode_partial_kernel[(b * hkv, plan.n_splits)](
        q,
        k_cache,
        v_cache,
        block_idx,
        seq_lens,
        o_part,
        ml_part,
        cand,
        sel_ml,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_idx.stride(0),
        block_idx.stride(1),
        block_idx.stride(2),
        scale * math.log2(math.e),
        sink_tokens,
        window_tokens,
        plan.tiles_per_split,
        N_SEL=n_sel,
        K_PAD=plan.k_pad,
        HKV=hkv,
        G=g,
        G_PAD=plan.g_pad,
        D=d,
        BLOCK_SIZE=block_size,
        BLOCK_N=plan.block_n,
        SUB=plan.sub,
        N_SINK_TILES=plan.n_sink_tiles,
        N_TAIL_TILES=plan.n_tail_tiles,
        N_SPLITS=plan.n_splits,
        IEEE=q.dtype == torch.float32,
        FROM_CAND=candidates is not None,
        N_CAND=n_cand,
        C_PAD=max(_next_pow2(n_cand), plan.k_pad),
        WANT_MASS=want_mass,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    _combine_kernel[(b * hq,)](
        o_part,
        ml_part,
        out,
        out.stride(0),
        out.stride(1),
        HQ=hq,
        G=g,
        D=d,
        N_SPLITS=plan.n_splits,
        S_PAD=s_pad,
    )
    if want_mass:
        _block_mass_kernel[(b * hkv,)](
            ml_part,
            sel_ml,
            block_mass,
            G=g,
            G_PAD=plan.g_pad,
            N_SEL=n_sel,
            K_PAD=plan.k_pad,
            SUB=plan.sub,
            N_SPLITS=plan.n_splits,
            S_PAD=s_pad,
        )
    return out


def decode_workspace(
    batch: int, hkv: int, g: int, head_dim: int, plan: DecodePlan, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 partial outputs ``[B*Hkv*S*G, D]`` and (max, sum) pairs ``[B*Hkv*S*G, 2]`` for the split-K merge."""
    rows = batch * hkv * plan.n_splits * g
    return (
        torch.empty(rows, head_dim, dtype=torch.float32, device=device),
        torch.empty(rows, 2, dtype=torch.float32, device=device),
    )


def block_mass_workspace(
    batch: int, hkv: int, g: int, n_sel: int, plan: DecodePlan, device: torch.device
) -> torch.Tensor:
    """fp32 (max, sum) pairs of every selected tile and query head, ``[B*Hkv*n_sel*sub*G, 2]``, for ``block_mass``."""
    return torch.empty(batch * hkv * n_sel * plan.sub * g, 2, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# one whole decode step (score -> select -> attend), CUDA-graph capturable
# ---------------------------------------------------------------------------------------------------------------------


class SparseDecodeStep:
    """Score -> top-k -> sparse attention for one layer, with static buffers so it can be replayed as a CUDA graph.

    The caches and signatures are bound at construction (a graph bakes in their addresses); per step, write the new
    inputs into the static buffers ``q`` ``[B, Hq, D]``, ``q_sig`` ``[B, Hq, d]`` and ``seq_lens`` ``[B]`` (int32), then
    call :meth:`__call__` — it replays the captured graph if :meth:`capture` was called, else launches eagerly. The
    result lands in ``out`` ``[B, Hq, D]`` and the selection in ``block_idx`` ``[B, Hkv, k]``. The blocks scored are
    :func:`~kvprism.kernels.reference.candidate_blocks` of :meth:`layout` (computed inside the scoring kernel from
    ``seq_lens``, counted from block 0: unlike :class:`~kvprism.layout.BlockLayout`'s candidates they include the
    sink blocks, which the kernel reads anyway), so growing
    sequences need no re-capture as long as they stay within the caches' capacity ``T``.

    Args:
        k_cache, v_cache: ``[B, Hkv, T, D]`` bf16/fp16 (views of larger buffers are fine).
        signatures: ``[B, Hkv, N, d]`` with ``N >= T // block_size``.
        q_heads: query heads ``Hq`` (a multiple of ``Hkv``).
        k: selected blocks per (batch, KV head).
        geometry: block size, sink blocks and window (:class:`~kvprism.layout.BlockGeometry`).
        scale: as in the reference.
        gqa_reduce: ``"sum"`` or ``"max"`` over the query heads of a group.
        num_splits, block_n, score_tile, num_warps, num_stages: launch geometry of the attention / scoring kernels
            (None = heuristics).
        merge_in_attention: merge the top-k candidates inside the attention kernel (3 launches per step instead of
            4; same selection and the same attention arithmetic, so the same output bit for bit).
    """

    def __init__(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        signatures: torch.Tensor,
        *,
        q_heads: int,
        k: int,
        geometry: BlockGeometry,
        gqa_reduce: str = "sum",
        scale: float | None = None,
        num_splits: int | None = None,
        block_n: int | None = None,
        score_tile: int | None = None,
        num_warps: int = 4,
        num_stages: int = 2,
        merge_in_attention: bool = False,
    ) -> None:
        b, hkv, t_cap, d = k_cache.shape
        dev = k_cache.device
        block_size = geometry.block_size
        if signatures.shape[0] != b or signatures.shape[1] != hkv:
            raise KvprismError(f"signatures {tuple(signatures.shape)} must be [B={b}, Hkv={hkv}, N, d]")
        if signatures.shape[2] < t_cap // block_size:
            raise KvprismError(
                f"signatures hold N={signatures.shape[2]} blocks, fewer than T // block_size = {t_cap // block_size}"
            )
        self.k_cache, self.v_cache, self.signatures = k_cache, v_cache, signatures
        self.k, self.geometry = k, geometry
        self.block_size, self.window_tokens = block_size, geometry.window
        self.gqa_reduce, self.scale = gqa_reduce, scale
        self.q = torch.zeros(b, q_heads, d, dtype=k_cache.dtype, device=dev)
        self.q_sig = torch.zeros(b, q_heads, signatures.shape[3], dtype=signatures.dtype, device=dev)
        self.seq_lens = torch.ones(b, dtype=torch.int32, device=dev)
        self.block_idx = torch.full((b, hkv, k), -1, dtype=torch.int64, device=dev)
        self.out = torch.zeros(b, q_heads, d, dtype=k_cache.dtype, device=dev)
        self.score_tile, self.num_warps, self.num_stages = score_tile, num_warps, num_stages
        splan = score_plan(signatures.shape[2], signatures.shape[3], q_heads // hkv, k, score_tile)
        self._cand = torch.empty(b * hkv * splan.n_tiles * splan.k_pow2, dtype=torch.int64, device=dev)
        self.plan = decode_plan(b, q_heads, hkv, d, k, geometry, dev, num_splits=num_splits, block_n=block_n)
        self._workspace = decode_workspace(b, hkv, q_heads // hkv, d, self.plan, dev)
        self.merge_in_attention = merge_in_attention
        self._n_cand = splan.n_tiles * splan.k_pow2
        self.graph: torch.cuda.CUDAGraph | None = None

    def select(self) -> torch.Tensor:
        """The scoring stage alone: score + top-k and the candidate merge into ``block_idx`` (2 launches); with
        ``merge_in_attention`` only the scoring kernel runs and :meth:`attend` merges, so the returned
        ``block_idx`` still holds the previous step's selection until :meth:`attend` has run."""
        score_topk_triton(
            self.q_sig,
            self.signatures,
            self.seq_lens,
            self.k,
            self.gqa_reduce,
            n_valid_div=self.block_size,
            n_valid_window=self.window_tokens,
            out=self.block_idx,
            cand=self._cand,
            tile=self.score_tile,
            merge=not self.merge_in_attention,
        )
        return self.block_idx

    def attend(self, block_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The attention stage alone (split-K kernel + combine) over ``block_idx`` (default: the step's own
        selection, merged here from the candidates with ``merge_in_attention``). Returns ``out``."""
        merge = self.merge_in_attention and block_idx is None
        sparse_decode_attention_triton(
            self.q,
            self.k_cache,
            self.v_cache,
            self.block_idx if block_idx is None else block_idx,
            self.layout(),
            self.scale,
            out=self.out,
            plan=self.plan,
            workspace=self._workspace,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
            candidates=(self._cand, self._n_cand) if merge else None,
        )
        return self.out

    def layout(self) -> BlockLayout:
        """The layout of the static ``seq_lens`` buffer (a view of it: build it after writing the step's lengths)."""
        return BlockLayout.from_lengths(self.seq_lens, self.geometry, self.k_cache.shape[2])

    def launch(self) -> torch.Tensor:
        """Run the step eagerly (4 kernel launches, 3 with ``merge_in_attention``) from the static buffers; returns
        ``out``."""
        self.select()
        return self.attend()

    def capture(self) -> None:
        """Compile (warm-up launches on a side stream) and capture the step into a CUDA graph."""
        if not self.q.is_cuda:
            raise KvprismError("CUDA graph capture needs CUDA tensors")
        stream = torch.cuda.Stream(device=self.q.device)
        stream.wait_stream(torch.cuda.current_stream(self.q.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.launch()
        torch.cuda.current_stream(self.q.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.launch()
        self.graph = graph

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.out
        return self.launch()
