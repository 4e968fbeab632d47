"""Pure-torch references for the sparse decode kernels (run on any device, CPU included).

These define the semantics that the Triton kernels in :mod:`kvprism.kernels.triton_decode` must reproduce.

Sparse decode attention, for batch row ``b`` with ``L = seq_lens[b]`` valid tokens and KV head ``h``, attends to the
union (each token counted once) of

* the selected *complete* blocks ``j`` in ``block_idx[b, h]`` (``-1`` = unused slot), tokens ``[j*B, (j+1)*B)``,
* the first ``sink_tokens`` tokens,
* the last ``window_tokens`` tokens ``[L - window_tokens, L)``,
* the incomplete last block ``[(L // B) * B, L)`` (tokens not yet covered by a signature),

always restricted to ``[0, L)``. All query heads of a GQA group (query head ``q`` uses KV head ``q // (Hq // Hkv)``)
share their KV head's selection.
"""

from __future__ import annotations

import math

import torch

from kvprism.errors import KvprismError

GQA_REDUCTIONS = ("sum", "max")


def check_decode_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    block_size: int,
    sink_tokens: int,
    window_tokens: int,
    seq_lens: torch.Tensor,
) -> None:
    """Shape / dtype / range checks shared by every backend (no device synchronisation)."""
    if q.dim() != 3:
        raise KvprismError(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise KvprismError(
            f"k_cache and v_cache must both be [B, Hkv, T, D], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    b, hq, d = q.shape
    bk, hkv, _t, dk = k_cache.shape
    if bk != b or dk != d:
        raise KvprismError(f"k_cache {tuple(k_cache.shape)} does not match q {tuple(q.shape)} in B or D")
    if hkv < 1 or hq % hkv != 0:
        raise KvprismError(f"query heads Hq={hq} must be a multiple of KV heads Hkv={hkv}")
    if block_idx.dim() != 3 or tuple(block_idx.shape[:2]) != (b, hkv):
        raise KvprismError(f"block_idx must be [B={b}, Hkv={hkv}, K], got {tuple(block_idx.shape)}")
    if block_idx.dtype.is_floating_point or block_idx.dtype == torch.bool:
        raise KvprismError(f"block_idx must be an integer tensor, got {block_idx.dtype}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != b:
        raise KvprismError(f"seq_lens must be [B={b}], got {tuple(seq_lens.shape)}")
    if block_size < 1:
        raise KvprismError(f"block_size must be >= 1, got {block_size}")
    if sink_tokens < 0:
        raise KvprismError(f"sink_tokens must be >= 0, got {sink_tokens}")
    if window_tokens < 0:
        raise KvprismError(f"window_tokens must be >= 0, got {window_tokens}")
    devs = {t.device for t in (q, k_cache, v_cache, block_idx, seq_lens)}
    if len(devs) != 1:
        raise KvprismError(f"all inputs must be on one device, got {sorted(str(x) for x in devs)}")


def _check_values(block_idx: torch.Tensor, seq_lens: torch.Tensor, t_cap: int, block_size: int) -> None:
    """Value checks (these synchronise with the device; the reference can afford it)."""
    lmin, lmax = int(seq_lens.min()), int(seq_lens.max())
    if lmin < 1 or lmax > t_cap:
        raise KvprismError(f"seq_lens must lie in [1, T={t_cap}], got values in [{lmin}, {lmax}]")
    if block_idx.numel():
        n_blocks = -(-t_cap // block_size)
        imin, imax = int(block_idx.min()), int(block_idx.max())
        if imin < -1 or imax >= n_blocks:
            raise KvprismError(
                f"block_idx values must be -1 (unused) or in [0, {n_blocks - 1}], got values in [{imin}, {imax}]"
            )


def attended_mask(
    block_idx: torch.Tensor,
    block_size: int,
    sink_tokens: int,
    window_tokens: int,
    seq_lens: torch.Tensor,
    t_cap: int,
) -> torch.Tensor:
    """Boolean mask ``[B, Hkv, T]`` of the tokens that sparse decode attends to (see the module docstring)."""
    b, hkv, _k = block_idx.shape
    dev = block_idx.device
    t = torch.arange(t_cap, device=dev)
    lens = seq_lens.to(device=dev, dtype=torch.long).view(b, 1, 1)
    n_full = lens // block_size
    always = (t < sink_tokens) | (t >= lens - window_tokens) | (t >= n_full * block_size)  # [B, 1, T]
    n_blocks = -(-t_cap // block_size)
    sel = torch.zeros(b, hkv, n_blocks + 1, dtype=torch.bool, device=dev)  # last column swallows the -1 slots
    idx = block_idx.to(torch.long)
    idx = torch.where(idx < 0, torch.full_like(idx, n_blocks), idx)
    sel.scatter_(2, idx, True)
    selected = sel[:, :, :n_blocks].repeat_interleave(block_size, dim=2)[:, :, :t_cap]
    return (selected | always) & (t < lens)


def sparse_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    block_size: int,
    sink_tokens: int,
    window_tokens: int,
    seq_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-sparse single-token decode attention, reference implementation.

    Args:
        q: queries ``[B, Hq, D]``.
        k_cache, v_cache: caches ``[B, Hkv, T, D]`` (``T`` = capacity; only ``[0, seq_lens[b])`` is read).
        block_idx: selected block indices ``[B, Hkv, K]`` (any integer dtype), ``-1`` marks an unused slot;
            duplicates and overlaps with sink / window / incomplete block are counted once.
        block_size: tokens per block ``B``.
        sink_tokens: leading tokens always attended.
        window_tokens: trailing tokens always attended.
        seq_lens: valid length per batch row ``[B]``, each in ``[1, T]``.
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``[B, Hq, D]`` in ``q``'s dtype. Computed by gathering the attended tokens of each (batch, KV head) and
        running an exact softmax in ``float32`` (``float64`` if the inputs are ``float64``).
    """
    check_decode_inputs(q, k_cache, v_cache, block_idx, block_size, sink_tokens, window_tokens, seq_lens)
    b, hq, d = q.shape
    _, hkv, t_cap, _ = k_cache.shape
    _check_values(block_idx, seq_lens, t_cap, block_size)
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    mask = attended_mask(block_idx, block_size, sink_tokens, window_tokens, seq_lens, t_cap)
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    for bi in range(b):
        for h in range(hkv):
            tok = mask[bi, h].nonzero().squeeze(1)
            k = k_cache[bi, h].index_select(0, tok).to(acc_dtype)  # [n, D]
            v = v_cache[bi, h].index_select(0, tok).to(acc_dtype)
            qg = q[bi, h * g : (h + 1) * g].to(acc_dtype)  # [G, D]
            p = torch.softmax((qg @ k.T) * scale, dim=-1)
            out[bi, h * g : (h + 1) * g] = (p @ v).to(q.dtype)
    return out


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


def candidate_blocks(seq_lens: torch.Tensor, block_size: int, window_tokens: int) -> torch.Tensor:
    """Blocks worth scoring per batch row ``[B]``: complete blocks not entirely inside the trailing window.

    ``min(ceil(max(L - window, 0) / B), L // B)``; the window is attended anyway, so spending one of the ``k`` slots
    on a block it covers would be wasted. A block that the window covers only partly stays a candidate.
    """
    lens = seq_lens.to(torch.int64)
    return torch.minimum((lens - window_tokens).clamp(min=0).add(block_size - 1) // block_size, lens // block_size)


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
    b, hkv, n, _ = signatures.shape
    s = score_blocks_ref(q, signatures, gqa_reduce)
    if n_valid is not None:
        valid = torch.arange(n, device=s.device) < n_valid.to(s.device).view(b, 1, 1)
        s = s.masked_fill(~valid, float("-inf"))
    else:
        valid = torch.ones(1, 1, n, dtype=torch.bool, device=s.device).expand(b, hkv, n)
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices  # stable: ties keep the lower index first
    kk = min(k, n)
    idx = order[..., :kk]
    ok = torch.gather(valid.expand(b, hkv, n), 2, idx)
    idx = torch.where(ok, idx, torch.full_like(idx, -1))
    if kk < k:
        idx = torch.cat([idx, idx.new_full((b, hkv, k - kk), -1)], dim=-1)
    return idx
