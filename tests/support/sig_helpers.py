"""Synthetic caches with planted needles for the signature / budget tests."""

from __future__ import annotations

import torch

from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures


def planted_cache(
    seed: int,
    *,
    heads: int = 4,
    group: int = 2,
    n_blocks: int = 24,
    bs: int = 16,
    dim: int = 32,
    strength: float = 6.0,
    n_probe: int = 8,
):
    """Filler keys ``N(0, 1)``; per KV head one *needle* key ``strength · u`` (``u`` a random unit vector) at a random
    position of a random eligible block; the query group and the probe queries are ``u`` plus small noise.

    Returns ``(keys [1, H, T, D], query [1, H, G, D], probe [1, H, P, G, D], probe_pos [P], needle_block [H])``."""
    g = torch.Generator().manual_seed(seed)
    t = n_blocks * bs
    keys = torch.randn(1, heads, t, dim, generator=g)
    u = torch.nn.functional.normalize(torch.randn(heads, dim, generator=g), dim=-1)
    blocks = torch.randint(1, n_blocks - 2, (heads,), generator=g)  # not the sink, not the tail
    for h in range(heads):
        pos = int(blocks[h]) * bs + int(torch.randint(0, bs, (1,), generator=g))
        keys[0, h, pos] = strength * u[h] + 0.1 * torch.randn(dim, generator=g)
    query = u[None, :, None, :] * 3.0 + 0.1 * torch.randn(1, heads, group, dim, generator=g)
    probe = u[None, :, None, None, :] * 3.0 + 0.3 * torch.randn(1, heads, n_probe, group, dim, generator=g)
    probe_pos = torch.arange(t - n_probe, t)
    return keys, query, probe, probe_pos, blocks


def select_on(keys, query, probe, probe_pos, **sel_kw):
    """Fit / program / select as the decode path does; returns ``(selector, blocks [1, H, k])``."""
    bs = sel_kw.setdefault("block_size", 16)
    sel_kw.setdefault("window", bs)
    sel = SelectionConfig(**sel_kw)
    _, h, t, _ = keys.shape
    valid = torch.ones(1, t, dtype=torch.bool)
    selector = BlockSelector(sel, 0, h, torch.ones(h, dtype=torch.bool))
    selector.fit(keys, valid, scaling=keys.shape[-1] ** -0.5, queries=probe, query_pos=probe_pos)
    nb = t // bs
    selector.program(
        block_signatures(
            sel, selector.proj, keys[:, :, : nb * bs], valid[:, : nb * bs], layer_idx=0, probe=selector.probe
        )
    )
    layout = BlockLayout.from_valid(valid, BlockGeometry.of(sel))
    cand = layout.candidate_mask(torch.ones(h, dtype=torch.bool), selector.n_blocks)
    return selector, selector.select(query, cand), layout


def needle_recall(blocks: torch.Tensor, needle_block: torch.Tensor) -> float:
    """Fraction of heads whose needle block is selected."""
    return float((blocks[0] == needle_block[:, None]).any(-1).float().mean())
