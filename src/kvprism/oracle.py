"""The oracle selection of a decode step: per (batch row, KV head), the ``k`` candidate blocks that hold the most
attention mass of the step's own query, computed densely.

It is a reference, not a method: it reads every key to decide what to read, so it saves no traffic. It answers one
question of an evaluation: when a selector misses, does the budget (``k`` blocks at this block size, sink and window)
suffice for the query at all? If the oracle at the same ``k`` holds and the selector does not, the signature is at
fault; if the oracle fails too, the budget is.

The mass of a block is what selecting it adds: the dense softmax weights (mean over the KV head's query group, as in
Hugging Face GQA) of its tokens before the tail (:data:`kvprism.layout.CANDIDATE` roles), normalised over every
cached key of the step (the prefill, the tokens generated so far and the step's own). Padding keys get no weight.
Ties: :func:`kvprism.layout.topk_blocks`. Against the same reference (:func:`kvprism.eval.metrics.selectable_block_mass`
over all keys) its block recall is 1; the evaluation's per-cell block recall normalises over the prefill keys only
(:func:`kvprism.eval.metrics.trace_metrics`), which changes the weight of each query head in the group mean, so the
oracle scores slightly below 1 there (about 0.9 on Qwen2.5-Coder-0.5B at 4K).
"""

from __future__ import annotations

import torch

from kvprism.layout import CANDIDATE, PAD, BlockLayout, topk_blocks

__all__ = ["block_mass", "group_attention", "oracle_blocks"]


def group_attention(query: torch.Tensor, key: torch.Tensor, layout: BlockLayout, scaling: float) -> torch.Tensor:
    """Dense softmax weights of a decode step's query, averaged over each KV head's query group.

    Args:
        query: ``[B, H, G, D]`` the query heads grouped by KV head.
        key: ``[B, H, T, D]`` cached (post-RoPE) keys, ``T <= layout.capacity``.
        layout: the step's layout (padding keys get zero weight).
        scaling: logit scale (the attention module's ``scaling``).

    Returns:
        ``[B, H, T]`` float32, each row summing to 1 over the valid keys.
    """
    t = key.shape[2]
    logits = torch.einsum("bhgd,bhtd->bhgt", query.float(), key.float()) * scaling
    pad = (layout.token_roles[:, :t] == PAD)[:, None, None, :]
    return logits.masked_fill(pad, -torch.inf).softmax(dim=-1).mean(dim=2)


def block_mass(token_mass: torch.Tensor, layout: BlockLayout, n_blocks: int) -> torch.Tensor:
    """Mass per block of its candidate-role tokens: ``token_mass [B, H, T]`` -> ``[B, H, n_blocks]`` (the first
    ``n_blocks`` blocks; tokens past ``n_blocks * block_size`` are left out)."""
    bs = layout.block_size
    t = min(token_mass.shape[-1], n_blocks * bs)
    role = layout.token_roles[:, None, :t]
    x = token_mass[..., :t].float() * (role == CANDIDATE)
    if t < n_blocks * bs:
        x = torch.nn.functional.pad(x, (0, n_blocks * bs - t))
    return x.reshape(*x.shape[:-1], n_blocks, bs).sum(dim=-1)


def oracle_blocks(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: BlockLayout,
    scaling: float,
    k: int,
    n_blocks: int | None = None,
    heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """The oracle's ``Long[B, H, k]`` block ids (best first, ``-1`` where fewer candidates exist) for ``query [B, H,
    G, D]`` over ``key [B, H, T, D]``; ``n_blocks``: complete blocks that may be chosen (default ``T //
    block_size``); ``heads``: ``Bool[H]``, False = a streaming head, which selects nothing."""
    nb = key.shape[2] // layout.block_size if n_blocks is None else n_blocks
    mass = block_mass(group_attention(query, key, layout, scaling), layout, nb)
    return topk_blocks(mass, layout.candidate_mask(heads, n=nb), k)
