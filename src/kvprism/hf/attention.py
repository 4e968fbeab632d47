"""The ``"kvprism"`` attention function for Hugging Face models (Llama, Qwen2, Mistral families).

Importing this module registers ``"kvprism"`` in transformers' ``AttentionInterface`` and, with the same name, the
boolean (sdpa-style) mask in ``AttentionMaskInterface`` -- so causal masks, left padding and sliding windows are
built exactly as for ``sdpa`` and arrive here as ``[B, 1, q, T]`` bool masks (or None when nothing is masked).

:func:`use_kvprism_attention` switches a model to it and puts a forward pre-hook on every attention module that hands
the cache passed to that module (``cache=`` / ``past_key_values=``, whichever the transformers release names it) to
the attention function as ``kvprism_cache``. Dispatch inside :func:`kvprism_attention`, by that cache and
``module.layer_idx`` (nothing is looked up by tensor identity):

- one query token and a cache with a ``decode_attention`` method (:class:`kvprism.hf.cache.SparseCache`, the static
  cache of :mod:`kvprism.hf.static`): the cache computes the step's attention over the tokens it selects
  (``decode_attention(layer_idx, query [B, Hq, D], key, value, attention_mask, scaling) -> [B, Hq, D]``);
- several query tokens (prefill, possibly chunked), through any cache: dense attention (sdpa), and the most recent
  queries are recorded for that cache and layer (:func:`record_prefill_queries`; ``projection="learned"`` and
  ``signature="reps"`` fit on them);
- any other cache (e.g. a ``DynamicCache`` used as the dense baseline) or no cache: dense attention, as ``sdpa``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = [
    "ATTN_NAME",
    "PREFILL_QUERY_SAMPLES",
    "PrefillQueries",
    "attend_gathered",
    "attention_modules",
    "copy_prefill_queries",
    "keep_prefill_queries",
    "key_validity",
    "kvprism_attention",
    "prefill_queries",
    "record_prefill_queries",
    "sparse_attend",
    "use_kvprism_attention",
]

ATTN_NAME = "kvprism"

#: prefill queries kept per (cache, layer) for projection="learned" / signature="reps" (the most recent ones)
PREFILL_QUERY_SAMPLES = 64


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's self-attention modules: those with a ``layer_idx`` and a ``q_proj`` (Llama, Qwen2, Mistral)."""
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]


def _pass_cache(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: hand the module's cache argument on to the attention function as ``kvprism_cache``."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return args, {**kwargs, "kvprism_cache": cache}


def use_kvprism_attention(model: Any) -> None:
    """Switch ``model`` to the ``"kvprism"`` attention and install the pre-hooks that pass each attention module's
    cache to it (both idempotent). On caches without ``decode_attention`` it computes dense sdpa and records the
    prefill queries, which forks of that cache need for ``projection="learned"``."""
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)
    for mod in attention_modules(model):
        if getattr(mod, "_kvprism_hook", None) is None:
            mod._kvprism_hook = mod.register_forward_pre_hook(_pass_cache, with_kwargs=True)


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
    *,
    slot_mass: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of one decode query over gathered tokens only.

    Args:
        query: ``[B, Hq, D]`` post-RoPE query of the step.
        key: ``[B, H, T, D]`` cached post-RoPE keys (``H`` KV heads, ``Hq = G·H``); only the gathered rows are read.
        value: ``[B, H, T, Dv]`` cached values.
        token_idx: ``[B, H, M]`` int64 cache positions to read per KV head.
        token_ok: ``[B, H, M]`` bool; False slots are ignored (fixed-shape padding of the index list).
        scaling: softmax scale (``D**-0.5`` for these families).
        slot_mass: also return the attention mass of every gathered slot summed over the GQA group (``[B, H, M]``
            fp32, 0 on False slots), from the same softmax.

    Returns:
        ``[B, Hq, Dv]`` attention output in the query dtype (with ``slot_mass``: ``(output, mass)``).
    """
    kg, vg = _gather_rows(key, token_idx), _gather_rows(value, token_idx)
    return attend_gathered(query, kg, vg, token_ok, scaling, slot_mass=slot_mass)


def attend_gathered(
    query: torch.Tensor,
    kg: torch.Tensor,
    vg: torch.Tensor,
    token_ok: torch.Tensor,
    scaling: float,
    *,
    slot_mass: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``query [B, Hq, D]`` over already gathered keys / values ``[B, H, M, D]`` (GQA: query
    head ``h·G + g`` reads KV head ``h``), False slots of ``token_ok [B, H, M]`` masked; fp32 scores and softmax.
    Returns ``[B, Hq, Dv]`` in the query dtype; with ``slot_mass`` also each slot's attention mass summed over the
    group, ``[B, H, M]`` fp32."""
    b, hq, d = query.shape
    h = kg.shape[1]
    q = query.reshape(b, h, hq // h, d)
    s = torch.matmul(q, kg.transpose(-1, -2)).float() * scaling  # [B, H, G, M]
    s = s.masked_fill(~token_ok[:, :, None, :], -math.inf)
    probs = torch.softmax(s, dim=-1)
    out = torch.matmul(probs.to(vg.dtype), vg).reshape(b, hq, -1).to(query.dtype)  # [B, Hq, Dv]
    return (out, probs.sum(2)) if slot_mass else out


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


# ---------------------------------------------------------------------------------------------- prefill queries
@dataclass(frozen=True)
class PrefillQueries:
    """The most recent prefill queries of one layer: ``queries [B, Hq, n, D]`` (post-RoPE) at cache positions
    ``positions [n]``, recorded when the cache held ``length`` tokens."""

    queries: torch.Tensor
    positions: torch.Tensor
    length: int

    def grouped(self, num_kv_heads: int) -> torch.Tensor:
        """The queries per KV head and GQA group, ``[B, H, n, G, D]`` (what the projection fit takes)."""
        b, hq, n, d = self.queries.shape
        return self.queries.reshape(b, num_kv_heads, hq // num_kv_heads, n, d).transpose(2, 3)


#: cache -> {layer_idx: PrefillQueries}; the one record of prefill queries, for any cache type
_PREFILL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: cache -> queries to keep per layer where more than :data:`PREFILL_QUERY_SAMPLES` are wanted
_SAMPLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _records(cache: Any, create: bool = False) -> dict[int, PrefillQueries] | None:
    """``cache``'s record (created when asked), or None: none yet, or a cache that refuses weak references (such a
    cache keeps no record)."""
    try:
        return _PREFILL.setdefault(cache, {}) if create else _PREFILL.get(cache)
    except TypeError:
        return None


def keep_prefill_queries(cache: Any, samples: int) -> None:
    """Record the last ``samples`` prefill queries per layer for ``cache`` (default :data:`PREFILL_QUERY_SAMPLES`);
    call it before the prefill."""
    if samples < 1:
        raise ValueError(f"keep_prefill_queries: samples = {samples} is invalid; allowed range: [1, inf)")
    _SAMPLES[cache] = int(samples)


def record_prefill_queries(cache: Any, layer_idx: int, query: torch.Tensor, kv_len: int) -> None:
    """Keep the last queries ``[B, Hq, n, D]`` of a dense prefill step of layer ``layer_idx`` whose cache now holds
    ``kv_len`` tokens (:func:`keep_prefill_queries` sets how many). A chunk continues the previous record when the
    cache grew by exactly the chunk length; any other step starts a new record."""
    n = query.shape[2]
    pos = torch.arange(kv_len - n, kv_len, device=query.device)
    q = query.detach()
    per_layer = _records(cache, create=True)
    if per_layer is None:
        return
    samples = _SAMPLES.get(cache, PREFILL_QUERY_SAMPLES)
    prev = per_layer.get(layer_idx)
    if prev is not None and kv_len > n and prev.length == kv_len - n:
        q = torch.cat([prev.queries, q], dim=2)
        pos = torch.cat([prev.positions, pos])
    per_layer[layer_idx] = PrefillQueries(q[:, :, -samples:].clone(), pos[-samples:].clone(), kv_len)


def prefill_queries(cache: Any, layer_idx: int) -> PrefillQueries | None:
    """The prefill queries recorded for ``cache``'s layer ``layer_idx``, else None."""
    return (_records(cache) or {}).get(layer_idx)


def copy_prefill_queries(src: Any, dst: Any) -> None:
    """Give ``dst`` (a fork of the prefilled cache ``src``) the prefill queries recorded for ``src``."""
    rec = _records(src)
    into = _records(dst, create=True) if rec else None
    if into is not None:
        into.update(rec)


def kvprism_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    kvprism_cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query [B, Hq, q, D]``, ``key/value [B, H, T, D]`` ->
    ``([B, q, Hq, D], None)``; ``kvprism_cache`` is the cache the attention module was given (see module doc)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    decode = getattr(kvprism_cache, "decode_attention", None)
    if query.shape[2] == 1 and decode is not None:
        out = decode(module.layer_idx, query[:, :, 0], key, value, attention_mask, scaling)  # [B, Hq, D]
        return out.unsqueeze(1), None
    if query.shape[2] > 1 and kvprism_cache is not None:
        # a static cache hands over its whole buffer: it says how many tokens it holds
        held = getattr(kvprism_cache, "held_tokens", None)
        kv_len = key.shape[2] if held is None else held(module.layer_idx)
        record_prefill_queries(kvprism_cache, module.layer_idx, query, kv_len)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(ATTN_NAME, kvprism_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
