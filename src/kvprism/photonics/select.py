"""Top-k with a defined tie rule: best first, ties broken by the lower index (ADC-quantised scores tie often)."""

from __future__ import annotations

import torch

__all__ = ["topk_lowest_index"]


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
            sub = flat[rows]
            v = vals[rows, k - 1 : k]
            ar = torch.arange(n, device=flat.device).expand_as(sub)
            key = torch.where(sub > v, torch.full_like(ar, -1), torch.where(sub == v, ar, torch.full_like(ar, n)))
            cand = key.topk(k, dim=-1, largest=False, sorted=True).indices
            out[rows] = _order(sub.gather(-1, cand), cand)
    return out.reshape(*lead, k)
