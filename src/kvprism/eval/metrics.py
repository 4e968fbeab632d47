"""Selection-quality metrics as pure tensor functions.

Shapes: ``B`` batch, ``Hq`` query heads, ``Hkv`` KV heads (``Hq = G·Hkv``; query head ``h`` reads KV head
``h // G`` as in Hugging Face GQA), ``T`` cached tokens, ``D`` head dim, ``nb = ceil(T / block_size)`` blocks, ``V``
vocabulary. Keys are post-RoPE, as stored in the KV cache.

The recall metrics count only the blocks selection decides about: the candidate blocks of the step's
:class:`kvprism.layout.BlockLayout` (:func:`eligible_blocks`; the same set selection chooses from -- sink blocks,
blocks starting in the tail and the incomplete last block are not candidates, a block that the window covers only
partly is). The reference score of a candidate is the attention mass of its tokens before the tail
(:func:`selectable_block_mass`: what selecting it adds). When no block is eligible, the recall metrics are NaN: the
cell cannot restrict attention and must be reported as such, not as a perfect score.
"""

from __future__ import annotations

import math

import torch

from kvprism.layout import CANDIDATE, BlockGeometry, BlockLayout, ids_to_mask, topk_mask


def attention_probs(query: torch.Tensor, keys: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Dense softmax attention weights of one decode step.

    Args:
        query: ``[B, Hq, D]`` post-RoPE query of the step.
        keys: ``[B, Hkv, T, D]`` post-RoPE cached keys.
        scale: logit scale; default ``1/sqrt(D)``.

    Returns:
        ``[B, Hq, T]`` float32 probabilities (each row sums to 1).
    """
    b, hq, d = query.shape
    hkv = keys.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q = query.float().view(b, hkv, hq // hkv, d)
    logits = torch.einsum("bhgd,bhtd->bhgt", q, keys.float()) * scale
    return logits.softmax(dim=-1).reshape(b, hq, -1)


def group_mean(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Average ``[B, Hq, ...]`` over each KV head's query group -> ``[B, Hkv, ...]``."""
    b, hq = x.shape[:2]
    return x.reshape(b, kv_heads, hq // kv_heads, *x.shape[2:]).mean(dim=2)


def block_sums(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum ``[..., T]`` over consecutive blocks of ``block_size`` tokens -> ``[..., ceil(T / block_size)]`` (the last
    block may be partial)."""
    t = x.shape[-1]
    nb = -(-t // block_size)
    pad = nb * block_size - t
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], nb, block_size).sum(dim=-1)


def true_block_mass(
    query: torch.Tensor, keys: torch.Tensor, block_size: int, scale: float | None = None
) -> torch.Tensor:
    """True attention mass per block: dense softmax of the query group (mean over the group's query heads) summed
    per block. ``query`` ``[B, Hq, D]``, ``keys`` ``[B, Hkv, T, D]`` -> ``[B, Hkv, nb]`` (sums to 1 over blocks)."""
    probs = attention_probs(query, keys, scale)
    return block_sums(group_mean(probs, keys.shape[1]), block_size)


def eligible_blocks(n_tokens: int, block_size: int, sink_blocks: int, window: int) -> torch.Tensor:
    """The candidate blocks of a cache of ``n_tokens`` real tokens (no padding): ``Bool[ceil(n_tokens / block_size)]``
    (:attr:`kvprism.layout.BlockLayout.candidates`)."""
    return BlockLayout.from_lengths(n_tokens, BlockGeometry(block_size, sink_blocks, window)).candidates[0]


def selectable_block_mass(token_mass: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Per-block attention mass of the tokens selecting a block adds: ``token_mass [B, H, T']`` (``T' <=
    layout.capacity``; later positions count as zero) summed per block over candidate-role tokens only ->
    ``[B, H, ceil(T' / B)]``. Sink and tail tokens (read anyway) count zero."""
    t = token_mass.shape[-1]
    role = layout.token_roles[:, None, :t]
    return block_sums(token_mass.float() * (role == CANDIDATE), layout.block_size)


def top_k_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
    """``Bool[..., nb]``: the ``min(k, #eligible)`` eligible blocks with the highest ``scores`` (ties: lower id;
    :func:`kvprism.layout.topk_blocks`)."""
    return topk_mask(scores, eligible, k)


def recall_at_k(selected: torch.Tensor, scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
    """|selected ∩ top-k(scores)| / k over eligible blocks only.

    Args:
        selected: ``Long[B, H, k']`` selected block ids (-1 = none; ids outside ``[0, nb)`` ignored).
        scores: ``[B, H, nb]`` reference scores (true attention mass for block recall, ideal signature scores for
            signature recall).
        k: number of blocks selection may choose (must be >= 1).
        eligible: ``Bool[nb]`` from :func:`eligible_blocks`, or any shape broadcasting to ``scores`` (e.g. a
            layout's ``candidate_mask``).

    Returns:
        ``[B, H]`` float in [0, 1]; NaN where no block is eligible (selection could not restrict anything).
    """
    if k < 1:
        raise ValueError(f"k = {k} is invalid; allowed range: k >= 1")
    nb = scores.shape[-1]
    eligible = eligible.to(scores.device).expand_as(scores)
    k_eff = eligible.sum(-1).clamp(max=k).float()
    top = top_k_mask(scores, k, eligible)
    sel = ids_to_mask(selected, nb) & eligible
    out = (sel & top).sum(-1).float() / k_eff.clamp(min=1)
    return torch.where(k_eff > 0, out, torch.full_like(out, float("nan")))


def selection_recall(selected: torch.Tensor, reference: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """|selected ∩ reference| / |reference| over eligible blocks; both ``Long[B, H, k]`` (-1 = none). Used for
    signature recall when the reference is the exact (ideal-signature) selection of the same step. NaN where the
    reference holds no eligible block. Returns ``[B, H]``."""
    nb = eligible.shape[-1]
    ref = ids_to_mask(reference, nb) & eligible
    sel = ids_to_mask(selected, nb) & eligible
    n_ref = ref.sum(-1).float()
    out = (sel & ref).sum(-1).float() / n_ref.clamp(min=1)
    return torch.where(n_ref > 0, out, torch.full_like(out, float("nan")))


def mass_captured(probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Dense attention mass on the tokens actually read: Σ softmax weights over attended tokens, averaged over each
    KV head's query group. ``probs`` ``[B, Hq, T]``, ``token_mask`` ``Bool[B, Hkv, T]`` -> ``[B, Hkv]`` in [0, 1]."""
    hkv = token_mask.shape[1]
    return group_mean(probs.float(), hkv).mul(token_mask.float()).sum(-1)


def read_fraction(token_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of cached tokens attended: ``Bool[..., T]`` -> ``[...]``."""
    return token_mask.float().mean(-1)


def needle_hit(token_mask: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Whether every token of the needle span ``[start, end)`` was attended: ``Bool[..., T]`` -> ``Bool[...]``
    (equivalently: all of the needle's blocks were selected or lie in the sink/window)."""
    start, end = span
    return token_mask[..., start:end].all(dim=-1)


def kl_divergence(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> torch.Tensor:
    """KL(dense ‖ sparse) in nats of the next-token distributions: ``[..., V]`` each -> ``[...]`` (>= 0)."""
    p_log = dense_logits.float().log_softmax(-1)
    q_log = sparse_logits.float().log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0.0)


def summarize(values: list[float] | torch.Tensor) -> dict[str, float | int | None]:
    """mean / min / max / count of the finite values (NaN = not applicable is skipped; ``n_nan`` counts them)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = t[torch.isfinite(t)]
    if finite.numel() == 0:
        return {"mean": None, "min": None, "max": None, "n": 0, "n_nan": int(t.numel())}
    return {
        "mean": float(finite.mean()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.numel()),
        "n_nan": int(t.numel() - finite.numel()),
    }
