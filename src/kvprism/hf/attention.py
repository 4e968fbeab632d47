"""The ``"kvprism"`` attention function for Hugging Face models (Llama, Qwen2, Mistral families).

Importing this module registers ``"kvprism"`` in transformers' ``AttentionInterface`` and, with the same name, the
boolean (sdpa-style) mask in ``AttentionMaskInterface`` -- so causal masks, left padding and sliding windows are
built exactly as for ``sdpa`` and arrive here as ``[B, 1, q, T]`` bool masks (or None when nothing is masked).

Dispatch inside :func:`kvprism_attention`:

- the keys came from a :class:`kvprism.hf.cache.SparseCache` layer and this is a decode step (one query token):
  the layer selects the tokens to read and :func:`sparse_attend` computes exact attention over **only** those
  gathered tokens (true positions: keys are cached after RoPE);
- the keys came from a SparseCache layer and several query tokens arrive (prefill, possibly chunked): dense
  attention (sdpa); the layer may keep a sample of the prefill queries (``projection="learned"``);
- any other cache (e.g. a ``DynamicCache`` used as the dense baseline) or no cache: dense attention, as ``sdpa``.

:func:`sparse_attend` is the CPU / general path; on CUDA the SparseCache can attend with the Triton kernel of
:mod:`kvprism.kernels` instead (``SparseCache(attend=...)``), which reads the same tokens in place.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = [
    "ATTN_NAME",
    "key_validity",
    "kvprism_attention",
    "mark_update",
    "owner_of",
    "sparse_attend",
    "use_kvprism_attention",
]

ATTN_NAME = "kvprism"

_last = threading.local()


def use_kvprism_attention(model: Any) -> None:
    """Switch ``model`` to the ``"kvprism"`` attention (a no-op if it already uses it). On caches other than a
    SparseCache it computes dense sdpa and keeps a sample of the prefill queries, which forks of that cache need for
    ``projection="learned"``."""
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)


def mark_update(layer: Any, keys: torch.Tensor) -> None:
    """Record that ``layer`` (a SparseCache layer) just returned ``keys`` from ``update`` in this thread."""
    _last.entry = (weakref.ref(layer), weakref.ref(keys))


def owner_of(keys: torch.Tensor) -> Any | None:
    """The SparseCache layer whose latest ``update`` returned exactly this ``keys`` tensor, else None."""
    entry = getattr(_last, "entry", None)
    if entry is None:
        return None
    layer, ref = entry[0](), entry[1]()
    return layer if (layer is not None and ref is keys) else None


def key_validity(attention_mask: torch.Tensor | None, batch: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """``[B, T]`` bool: which cached keys the newest query may attend (padding and sliding window excluded), read
    from the last query row of a 4D mask (bool, or additive float); all True without a mask."""
    if attention_mask is None:
        return torch.ones(batch, kv_len, dtype=torch.bool, device=device)
    row = attention_mask[:, 0, -1, :kv_len]
    if row.dtype != torch.bool:
        row = row > torch.finfo(row.dtype).min / 2
    return row.expand(batch, kv_len)


def sparse_attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_idx: torch.Tensor,
    token_ok: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Exact attention of one decode query over gathered tokens only.

    Args:
        query: ``[B, Hq, D]`` post-RoPE query of the step.
        key: ``[B, H, T, D]`` cached post-RoPE keys (``H`` KV heads, ``Hq = G·H``); only the gathered rows are read.
        value: ``[B, H, T, Dv]`` cached values.
        token_idx: ``[B, H, M]`` int64 cache positions to read per KV head.
        token_ok: ``[B, H, M]`` bool; False slots are ignored (fixed-shape padding of the index list).
        scaling: softmax scale (``D**-0.5`` for these families).

    Returns:
        ``[B, Hq, Dv]`` attention output in the query dtype.
    """
    b, hq, d = query.shape
    h = key.shape[1]
    g = hq // h
    kg = _gather_rows(key, token_idx)  # [B, H, M, D]
    vg = _gather_rows(value, token_idx)
    q = query.reshape(b, h, g, d)
    s = torch.matmul(q, kg.transpose(-1, -2)).float() * scaling  # [B, H, G, M]
    s = s.masked_fill(~token_ok[:, :, None, :], -math.inf)
    p = torch.softmax(s, dim=-1).to(vg.dtype)
    out = torch.matmul(p, vg)  # [B, H, G, Dv]
    return out.reshape(b, hq, -1).to(query.dtype)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, h, idx[b, h, m], :]`` -> ``[B, H, M, D]``. When the token rows of ``x`` are evenly strided in memory
    (a cache buffer viewed up to its length) this is one ``index_select`` over the rows of that storage, which is
    much faster on CPU than ``torch.gather`` with a broadcast index."""
    b, h, _, d = x.shape
    s0, s1, s2, s3 = x.stride()
    if s3 == 1 and s2 == d and s0 % d == 0 and s1 % d == 0:
        rows = x.as_strided(((b - 1) * s0 // d + (h - 1) * s1 // d + x.shape[2], d), (d, 1))
        base = (torch.arange(b, device=x.device) * (s0 // d))[:, None, None] + (
            torch.arange(h, device=x.device) * (s1 // d)
        )[None, :, None]
        return rows.index_select(0, (base + idx).reshape(-1)).reshape(b, h, -1, d)
    return torch.gather(x, 2, idx.unsqueeze(-1).expand(-1, -1, -1, d))


#: prefill queries kept per layer for projection="learned" (the most recent ones)
PREFILL_QUERY_SAMPLES = 64


def remember_prefill_queries(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor) -> None:
    """Keep the last :data:`PREFILL_QUERY_SAMPLES` queries ``[B, Hq, n, D]`` of a dense prefill (any cache) on the
    attention module, tied by identity to the key tensor returned by the cache, so that
    ``SparseCache.from_prefilled`` can fit ``projection="learned"`` on a fork of that prefill. Chunks continue the
    previous record when the cache grew by exactly the chunk length."""
    n, t = query.shape[2], key.shape[2]
    pos = torch.arange(t - n, t, device=query.device)
    q = query.detach()
    prev = getattr(module, "_kvprism_prefill", None)
    if prev is not None and t > n and prev[3] == t - n:
        q = torch.cat([prev[1], q], dim=2)
        pos = torch.cat([prev[2], pos])
    module._kvprism_prefill = (
        weakref.ref(key),
        q[:, :, -PREFILL_QUERY_SAMPLES:].clone(),
        pos[-PREFILL_QUERY_SAMPLES:].clone(),
        t,
    )


def prefill_queries_for(model: torch.nn.Module, layer_idx: int, keys: torch.Tensor):
    """``(queries [B, Hq, n, D], positions [n])`` remembered for the prefill whose layer ``layer_idx`` keys are
    exactly ``keys``, else None."""
    for mod in model.modules():
        rec = getattr(mod, "_kvprism_prefill", None)
        if rec is not None and getattr(mod, "layer_idx", None) == layer_idx and rec[0]() is keys:
            return rec[1], rec[2]
    return None


def kvprism_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query [B, Hq, q, D]``, ``key/value [B, H, T, D]`` ->
    ``([B, q, Hq, D], None)``."""
    layer = owner_of(key)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if layer is None or query.shape[2] > 1:
        if layer is not None:
            layer.observe_prefill(query)
        elif query.shape[2] > 1:
            remember_prefill_queries(module, query, key)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out = layer.decode(query[:, :, 0], key, value, attention_mask, scaling)  # [B, Hq, D]
    return out.unsqueeze(1), None


AttentionInterface.register(ATTN_NAME, kvprism_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
