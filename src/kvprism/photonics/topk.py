"""Top-k with a defined tie rule: best first, ties broken by the lower index (ADC-quantised scores tie often)."""

from __future__ import annotations

import torch

__all__ = ["topk_codes", "topk_lowest_index"]


def _order(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sort k candidates by (value descending, index ascending); returns indices [M, k]."""
    o = idx.argsort(dim=-1)
    idx, vals = idx.gather(-1, o), vals.gather(-1, o)
    o = vals.argsort(dim=-1, descending=True, stable=True)
    return idx.gather(-1, o)


def topk_lowest_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [..., k] (int64) of the k largest entries of ``scores`` [..., N] along the last dim, best first; among
    equal values the lower index wins, both for membership (ties at the k-th place) and for order.

    Uses ``torch.topk`` on all rows and a tie-aware fix-up only on rows whose k-th and (k+1)-th values are equal."""
    n = scores.shape[-1]
    if not 0 < k <= n:
        raise ValueError(f"k = {k} is invalid; allowed range: [1, {n}] (number of rows)")
    lead = scores.shape[:-1]
    flat = scores.reshape(-1, n)
    kk = min(k + 1, n)
    vals, idx = flat.topk(kk, dim=-1, sorted=True)
    out = _order(vals[:, :k], idx[:, :k])
    if kk > k:
        rows = (vals[:, k - 1] == vals[:, k]).nonzero().squeeze(-1)
        if rows.numel():
            # rows where the k-th place is tied: keep the entries above the tied value v (they lead `out`, which is
            # sorted by value), then fill the remaining places with the lowest indices whose score equals v
            v = vals[rows, k - 1 : k]
            n_gt = (vals[rows, :k] > v).sum(-1)  # [R]
            eq = flat[rows] == v  # [R, N]
            r_id, col = eq.nonzero(as_tuple=True)  # row-major: columns ascending within each row
            counts = torch.bincount(r_id, minlength=rows.numel())
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(r_id.numel(), device=flat.device) - starts[r_id]
            take = rank < (k - n_gt)[r_id]
            sub = out[rows]
            sub[r_id[take], (n_gt[r_id] + rank)[take]] = col[take]
            out[rows] = sub
    return out.reshape(*lead, k)


#: Largest integer up to which every integer is exact in float32.
_F32_EXACT = 1 << 24


def topk_codes(codes: torch.Tensor, k: int, n_levels: int) -> torch.Tensor:
    """:func:`topk_lowest_index` for integer-valued float scores ``codes`` [..., N] in [0, n_levels − 1] (ADC codes),
    in one ``torch.topk`` without a tie fix-up: each entry gets the unique key code·N + (N − 1 − index), exact in
    float32 when n_levels·N ≤ 2^24, so the key order is (code descending, index ascending). **Overwrites**
    ``codes`` with the keys (it is meant for scratch buffers); falls back to :func:`topk_lowest_index` when the keys
    would not be exact."""
    n = codes.shape[-1]
    if not 0 < k <= n:
        raise ValueError(f"k = {k} is invalid; allowed range: [1, {n}] (number of rows)")
    if codes.dtype != torch.float32 or n_levels * n > _F32_EXACT:
        return topk_lowest_index(codes, k)
    rev = torch.arange(n - 1, -1, -1, dtype=codes.dtype, device=codes.device)
    keys = torch.add(rev, codes, alpha=float(n), out=codes)
    return keys.topk(k, dim=-1, sorted=True).indices
