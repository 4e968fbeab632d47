"""``SparseCache``: a transformers ``Cache`` that decodes with query-aware block-sparse attention.

    sel = SelectionConfig(block_size=64, k=8, d_sig=32, scorer="exact")
    cache = SparseCache(model, sel)                      # switches the model to attn_implementation "kvprism"
    out = model.generate(**inputs, **cache_kwargs(model, cache), max_new_tokens=32)
    cache.stats.summary()                                # read fraction, programming events, selection calls, ...

Keys are cached after RoPE, so a gathered key keeps its true position. Prefill is dense. The cache's layers
(:class:`SparseLayer`) only store keys and values, like transformers' ``DynamicLayer``; the decode step itself is
:class:`kvprism.hf.pipeline.DecodePipeline` (layout -> sign -> score and select -> plan -> attend), which the
``"kvprism"`` attention function reaches through :meth:`SparseCache.decode_attention` with the layer index of the
attention module. At the first decode step every layer fits its projection on the prefill keys, computes the
signatures of all complete blocks and programs them into its scorer (one bank per (batch row, KV head)); whenever a
block completes later its signature is appended (counted). Read statistics (:class:`SparseStats`), traces and
timings observe the pipeline through its hooks.

The block grid is aligned to cache position 0 for every batch row; with left padding the leading blocks of a
shorter row hold padding, which is never signed, selected nor read (sink blocks start at the first real token).
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvprism.boundary import check_pending
from kvprism.errors import ConfigError, KvprismError
from kvprism.hf import attention as _attn
from kvprism.hf.pipeline import IMPLS, DecodePipeline, PreparedLayer, StepEvent, resolve_impl
from kvprism.selection import (
    BlockSelector,
    SelectionConfig,
    block_signatures,
    fit_layer_projection,
    fit_uses_queries,
    layer_probe,
    needs_queries,
    resolve_heads,
    signature_settings,
)

__all__ = [
    "ATTEND_KERNELS",
    "PreparedLayer",
    "SparseCache",
    "SparseLayer",
    "SparseStats",
    "cache_kwargs",
    "chunked_prefill",
    "prepare_prefill",
]

#: decode tokens a loaded (forked) layer can take before its buffers grow (growth copies the whole layer)
LOAD_HEADROOM_TOKENS = 256

#: the attention kernels a SparseCache can use (``impl``; see :data:`kvprism.hf.pipeline.IMPLS`)
ATTEND_KERNELS = IMPLS


def cache_kwargs(model: Any, cache: Cache) -> dict[str, Cache]:
    """``{name: cache}`` for ``model(...)`` / ``model.generate(...)``: earlier transformers 5 releases (5.17 for one)
    name the argument ``past_key_values`` and silently ignore ``cache=``; later ones name it ``cache``."""
    return {_cache_arg_name(type(model)): cache}


@functools.cache
def _cache_arg_name(model_cls: type) -> str:
    """The cache argument's name of a model class's ``forward`` (looked up once per class: callers pass the cache
    every decode step)."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


#: dense prefill cache -> {(signature settings, tokens): [PreparedLayer per layer]}; every fork of one prefill and
#: every configuration with the same signature settings reuses one entry (the fit is deterministic: sharing it
#: changes no result)
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_scaling(model: torch.nn.Module, layer_idx: int, head_dim: int | None = None) -> float:
    """The softmax scale of layer ``layer_idx``'s attention: its module's ``scaling``, else ``head_dim ** -0.5``
    (``head_dim`` default: the model config's)."""
    for mod in _attn.attention_modules(model):
        if mod.layer_idx == layer_idx and hasattr(mod, "scaling"):
            return float(mod.scaling)
    if head_dim is None:
        cfg = model.config.get_text_config(decoder=True)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return head_dim**-0.5


def prepare_prefill(
    model: torch.nn.Module, dense_cache: Cache, sel: SelectionConfig, attention_mask: torch.Tensor | None = None
) -> list[PreparedLayer]:
    """Fit every layer's projection on a prefill and sign its complete blocks, once per (prefill, signature
    settings): :meth:`SparseCache.from_prefilled` calls it, so every fork of the prefill and every configuration
    sharing :func:`~kvprism.selection.signature_settings` (any ``k``, scorer, photonic preset or head mask) reuses
    the result and its first decode step only programs the signatures. Call it right after the prefill to take the
    fit out of the first decode step of the first fork.

    Args:
        model: the model that prefilled ``dense_cache`` (with ``projection="learned"`` or ``signature="reps"`` its
            attention must have been ``"kvprism"`` during the prefill, which records the queries).
        dense_cache: the prefilled cache (e.g. a ``DynamicCache``); not modified.
        sel: the selection config.
        attention_mask: the prefill's ``[B, T]`` mask (0 = padding); default: every token real.
    """
    n_tok = dense_cache.get_seq_length()
    key = (signature_settings(sel), n_tok)
    try:
        per_cache = _PREPARED.setdefault(dense_cache, {})
    except TypeError:  # a cache type that refuses weak references: nothing is shared
        per_cache = {}
    first = dense_cache.layers[0].keys
    valid = (
        torch.ones(first.shape[0], n_tok, dtype=torch.bool, device=first.device)
        if attention_mask is None
        else attention_mask[:, -n_tok:].to(device=first.device, dtype=torch.bool)
    )
    hit = per_cache.get(key)
    bs = sel.block_size
    nb = n_tok // bs
    if hit is not None and torch.equal(hit[0].valid, valid[:, : nb * bs]):
        return hit
    out = []
    with torch.inference_mode():
        for i, layer in enumerate(dense_cache.layers):
            keys = layer.keys
            queries = query_pos = None
            if fit_uses_queries(sel, nb):
                found = _attn.prefill_queries(dense_cache, i)
                if found is None:
                    raise ConfigError(
                        f"SelectionConfig projection = {sel.projection!r} / signature = {sel.signature!r} needs the "
                        "prefill queries: prefill the dense cache with the model's attention set to 'kvprism' "
                        "(constructing any SparseCache does that)"
                    )
                queries, query_pos = found.grouped(keys.shape[1]), found.positions
            scaling = _layer_scaling(model, i, keys.shape[-1])
            proj, temperature = fit_layer_projection(
                sel, i, keys, valid, scaling=scaling, queries=queries, query_pos=query_pos
            )
            probe = layer_probe(sel, proj, queries)
            sig = block_signatures(sel, proj, keys[:, :, : nb * bs], valid[:, : nb * bs], layer_idx=i, probe=probe)
            out.append(PreparedLayer(proj, sig, valid[:, : nb * bs].clone(), temperature, probe))
    per_cache[key] = out
    return out


class SparseStats:
    """What decode read: per decode step, layer and KV head, tokens attended vs tokens cached. A hook of the
    decode pipeline (:meth:`on_step`)."""

    def __init__(self, num_layers: int, num_kv_heads: int, selectors: list[BlockSelector] | None = None) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.steps: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []  # step -> layer -> ([B,H], [B])
        self.selectors: list[BlockSelector] = list(selectors or [])
        self.attend_calls: dict[str, int] = {"torch": 0, "triton": 0}  # layer-steps per attention kernel
        self.select_calls: dict[str, int] = {"torch": 0, "kernel": 0}  # layer-steps per top-k path (+ "oracle")
        self.cached_tokens = lambda: 0  # tokens the owning cache holds (set by SparseCache)

    def on_step(self, event: StepEvent) -> None:
        """Pipeline hook: count one layer-step."""
        self.attend_calls[event.attend_impl] += 1
        self.select_calls[event.select_impl] = self.select_calls.get(event.select_impl, 0) + 1
        self.record(event.layer_idx, event.plan.n_attended, event.plan.n_cached, new_step=event.layer_idx == 0)

    def record(self, layer_idx: int, n_attended: torch.Tensor, n_cached: torch.Tensor, new_step: bool) -> None:
        if new_step or not self.steps:
            self.steps.append({})
        self.steps[-1][layer_idx] = (n_attended.detach(), n_cached.detach())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attended [S, L, B, H], cached [S, L, B])`` over complete decode steps (all layers present)."""
        steps = [s for s in self.steps if len(s) == self.num_layers]
        if not steps:
            return torch.zeros(0, self.num_layers, 0, self.num_kv_heads), torch.zeros(0, self.num_layers, 0)
        att = torch.stack([torch.stack([s[i][0] for i in range(self.num_layers)]) for s in steps]).cpu()
        cac = torch.stack([torch.stack([s[i][1] for i in range(self.num_layers)]) for s in steps]).cpu()
        return att, cac

    def summary(self) -> dict[str, Any]:
        """Read fraction (mean and max over decode steps, layers, KV heads and batch rows), totals, engine
        programming events (signature rows written), selection calls, signature rows read by the rescoring stage
        (``rerank > 1``), and ``restricted``: whether any bank at any step read fewer tokens than it had cached
        (False means selection could not restrict anything). First reads the finiteness flags the last decode step
        left queued on a CUDA device (:func:`kvprism.boundary.check_pending`): a non-finite query of that step is a
        :class:`~kvprism.errors.KvprismError` here, not a silent result."""
        check_pending()
        att, cac = self.tensors()
        att = att.double()
        cac = cac.double()[..., None].expand_as(att)
        counters: dict[str, float] = {}
        for s in self.selectors:
            for name, val in s.scorer.counters.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):  # numeric counters add over layers
                    counters[name] = counters.get(name, 0) + val
        out: dict[str, Any] = {
            "decode_steps": int(att.shape[0]),
            "programming_events": sum(s.rows_programmed for s in self.selectors),
            "selection_calls": sum(s.selection_calls for s in self.selectors),
            "rows_rescored": sum(s.rows_rescored for s in self.selectors),
            "attend_calls": dict(self.attend_calls),
            "select_calls": dict(self.select_calls),
            "engine_counters": counters,
        }
        if out["decode_steps"] == 0 and (held := self.cached_tokens()) > 0:
            msg = (
                f"no decode step ran through this SparseCache although it holds {held} tokens: if the model decoded, "
                "it used another cache (pass the cache with kvprism.cache_kwargs(model, cache); transformers "
                "releases differ in the argument's name and ignore the other one)"
            )
            warnings.warn(msg, stacklevel=2)
            out["warning"] = msg
        if att.numel() == 0:
            out.update(
                read_fraction_mean=None,
                read_fraction_max=None,
                tokens_attended=0,
                tokens_cached=0,
                restricted=False,
                restricted_fraction=0.0,
                per_layer_head=[],
            )
            return out
        frac = att / cac.clamp_min(1)
        out.update(
            read_fraction_mean=float(frac.mean()),
            read_fraction_max=float(frac.max()),
            tokens_attended=int(att.sum()),
            tokens_cached=int(cac.sum()),
            restricted=bool((att < cac).any()),
            restricted_fraction=float((att < cac).double().mean()),
            per_layer_head=frac.mean(dim=(0, 2)).tolist(),
        )
        return out


class SparseLayer(CacheLayerMixin):
    """One layer's post-RoPE keys/values in amortised-growth buffers, returned as views. Storage only: the decode
    step is the cache's :class:`~kvprism.hf.pipeline.DecodePipeline`."""

    is_sliding = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, new_len: int) -> None:
        if self._kbuf is not None and new_len <= self._kbuf.shape[2]:
            return
        cap = max(new_len, 2 * (self._kbuf.shape[2] if self._kbuf is not None else 0), 256)
        b, h, _, d = key_states.shape
        kb = key_states.new_empty(b, h, cap, d)
        vb = value_states.new_empty(b, h, cap, value_states.shape[-1])
        if self._kbuf is not None and self.length:
            kb[:, :, : self.length] = self._kbuf[:, :, : self.length]
            vb[:, :, : self.length] = self._vbuf[:, :, : self.length]
        self._kbuf, self._vbuf = kb, vb

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        q = key_states.shape[2]
        self._kbuf[:, :, self.length : self.length + q] = key_states
        self._vbuf[:, :, self.length : self.length + q] = value_states
        self.length += q
        self.keys = self._kbuf[:, :, : self.length]
        self.values = self._vbuf[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[B, H, q, D]`` keys/values; return views of all cached keys/values ``[B, H, T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._reserve(key_states, value_states, self.length + key_states.shape[2])
        self._write(key_states, value_states)
        return self.keys, self.values

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill an empty layer with already computed post-RoPE ``keys/values [B, H, T, D]`` (copied), with room for
        :data:`LOAD_HEADROOM_TOKENS` decode steps (the first one must not reallocate and copy the whole cache)."""
        if self.length:
            raise KvprismError("SparseLayer.load needs an empty layer")
        self.lazy_initialization(keys, values)
        self._reserve(keys, values, keys.shape[2] + LOAD_HEADROOM_TOKENS)
        self._write(keys, values)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise KvprismError("SparseCache cannot be reset; build a new one (SparseCache.from_prefilled forks a prefill)")

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise KvprismError("SparseCache does not support cropping (assisted / speculative decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise KvprismError("SparseCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length or repeats != 1:
            raise KvprismError("SparseCache does not support expanding the batch (num_return_sequences > 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise KvprismError("SparseCache does not support selecting batch rows")


class SparseCache(Cache):
    """A transformers ``Cache`` whose decode steps read only query-selected blocks (see module docstring).

    Args:
        model: a Llama / Qwen2 / Mistral-family causal LM; its attention implementation is switched to ``"kvprism"``
            (which behaves like ``sdpa`` for any other cache, so dense baselines keep working on the same model).
        sel: the selection config.
        trace: keep, per decode step and layer, the query, the selected blocks and the token mask read (and, for a
            scorer other than ``exact``, the exact block scores of the same query, ``exact_scores [B, H, N]``).
        profile: accumulate wall time of the selection machinery (signatures, scoring, top-k, gather plan) and of
            the sparse attention in ``cache.timings`` (seconds, summed over layers and steps; synchronises the GPU).
        impl: how a decode step attends to the selected tokens (:data:`ATTEND_KERNELS`). ``"triton"``: the
            split-K kernel of :mod:`kvprism.kernels` reads the selected blocks, sink and tail straight from the cache
            (CUDA tensors, no left padding or sliding window in the step, head dim a power of two in [16, 256]);
            asking for it where it cannot run is an error. ``"torch"``: gather the selected token rows, then matmul +
            softmax (any device, any mask). ``"auto"`` (default): ``"triton"`` where it can run, else ``"torch"``.
            For the same selected blocks both read the same tokens; ``cache.stats.summary()["attend_calls"]``
            counts the layer-steps of each. With ``"triton"`` attention and the ``exact`` scorer the top-k also runs
            in the fused score + top-k kernel (``BlockSelector.select_range``; counted in ``"select_calls"``), which
            sums the GQA group's query sketches before the dot product, so exact near-ties may resolve differently
            from the torch path.
        oracle: select, at every step, layer and KV head, the ``sel.k`` candidate blocks with the most dense
            attention mass of the step's own query (:mod:`kvprism.oracle`): a reference that reads every key to
            decide, so it separates a signature's misses from the budget's; never a method.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sel: SelectionConfig,
        trace: bool = False,
        profile: bool = False,
        impl: str | None = None,
        *,
        oracle: bool = False,
    ) -> None:
        if not isinstance(sel, SelectionConfig):
            raise ConfigError(f"SparseCache needs a SelectionConfig, got {type(sel).__name__}")
        impl = resolve_impl(impl)
        cfg = model.config.get_text_config(decoder=True)
        n_layers = cfg.num_hidden_layers
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        heads = resolve_heads(sel.heads, n_layers, n_kv)
        _attn.use_kvprism_attention(model)
        self.model_config = model.config
        self.sel = sel
        self.head_mask = heads
        self.pipeline = DecodePipeline(sel, n_layers, n_kv, heads, impl=impl, profile=profile, oracle=oracle)
        self.stats = SparseStats(n_layers, n_kv, self.pipeline.selectors)
        self.pipeline.hooks.append(self.stats.on_step)
        self.trace: list[dict[int, dict[str, torch.Tensor]]] | None = None
        if trace:
            self.trace = []
            self.pipeline.hooks.append(self._trace_step)
        self.timings: dict[str, float] | None = None
        if profile:
            self.timings = {"select_s": 0.0, "attend_s": 0.0}
            self.pipeline.hooks.append(self._time_step)
        super().__init__(layers=[SparseLayer() for _ in range(n_layers)])
        ref = weakref.ref(self)
        self.stats.cached_tokens = lambda: c.get_seq_length() if (c := ref()) is not None else 0

    @property
    def impl(self) -> str:
        return self.pipeline.impl

    @property
    def selectors(self) -> list[BlockSelector]:
        return self.pipeline.selectors

    @property
    def engine_group(self) -> Any:
        return self.pipeline.engine_group

    # ------------------------------------------------------------------ the two entry points of a step
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append to layer ``layer_idx`` (transformers' ``Cache.update``), after checking that the model still
        attends through ``"kvprism"`` (any other attention would silently read the whole cache)."""
        impl = getattr(self.model_config, "_attn_implementation", None)
        if impl != _attn.ATTN_NAME:
            raise KvprismError(
                f"SparseCache needs attn_implementation '{_attn.ATTN_NAME}' but the model uses {impl!r}; "
                "construct the SparseCache from the model (it switches the model) and do not change it afterwards"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def decode_attention(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor:
        """One decode step of layer ``layer_idx`` (called by the ``"kvprism"`` attention function): ``query
        [B, Hq, D]`` -> ``[B, Hq, D]`` over the selected tokens only (:meth:`DecodePipeline.step`)."""
        prefill = None if self.selectors[layer_idx].fitted else _attn.prefill_queries(self, layer_idx)
        return self.pipeline.step(layer_idx, query, key, value, attention_mask, scaling, prefill=prefill)

    # ------------------------------------------------------------------ observers (pipeline hooks)
    def _trace_step(self, event: StepEvent) -> None:
        assert self.trace is not None
        if event.layer_idx == 0 or not self.trace:
            self.trace.append({})
        rec = {
            "query": event.query.detach().clone(),
            "blocks": event.blocks.detach().clone(),
            "token_mask": event.plan.token_mask(event.kv_len),
        }
        selector = self.selectors[event.layer_idx]
        if selector.sel.scorer != "exact" and selector.n_blocks:
            # a noisy scorer: the exact block scores of the same query, to measure its selection at every step
            b, _, d = event.query.shape
            with torch.no_grad():
                exact = selector.exact_scores(event.query.reshape(b, selector.num_kv_heads, -1, d))
            if exact is not None:
                rec["exact_scores"] = exact
                if event.carried is not None:  # the exact selection of this step keeps the same carried blocks
                    rec["carried"] = event.carried.detach().clone()
        self.trace[-1][event.layer_idx] = rec

    def _time_step(self, event: StepEvent) -> None:
        assert self.timings is not None
        self.timings["select_s"] += event.select_s or 0.0
        self.timings["attend_s"] += event.attend_s or 0.0

    @classmethod
    def from_prefilled(
        cls,
        model: torch.nn.Module,
        dense_cache: Cache,
        sel: SelectionConfig,
        trace: bool = False,
        profile: bool = False,
        impl: str | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        prepare: bool = True,
        oracle: bool = False,
    ) -> SparseCache:
        """A SparseCache holding copies of the keys/values of an already prefilled cache (e.g. a ``DynamicCache``),
        which is left untouched: prefill once, decode many configurations. ``projection="learned"`` also needs the
        prefill's queries, which the ``"kvprism"`` attention records for any cache it prefilled.

        With ``prepare`` (default) the projections and the signatures of the prefill's complete blocks come from
        :func:`prepare_prefill`, computed once per prefill and signature settings and shared by every fork, so the
        first decode step only programs them; ``attention_mask`` is the prefill's ``[B, T]`` mask (default: no
        padding; a first decode step whose key validity differs fits afresh, as without ``prepare``)."""
        cache = cls(model, sel, trace=trace, profile=profile, impl=impl, oracle=oracle)
        if len(dense_cache.layers) != len(cache.layers):
            raise KvprismError(
                f"the prefilled cache has {len(dense_cache.layers)} layers; the model has {len(cache.layers)}"
            )
        for i, src in enumerate(dense_cache.layers):
            keys = getattr(src, "keys", None)
            if keys is None or keys.numel() == 0:
                raise KvprismError(f"layer {i} of the prefilled cache is empty")
            if keys.shape[2] != src.get_seq_length():
                raise KvprismError(
                    f"layer {i} of the prefilled cache holds {keys.shape[2]} of {src.get_seq_length()} tokens "
                    "(sliding-window layer); SparseCache needs the full prefill"
                )
        if prepare:
            cache.pipeline.prepared = list(prepare_prefill(model, dense_cache, sel, attention_mask))
        for src, dst in zip(dense_cache.layers, cache.layers, strict=True):
            dst.load(src.keys, src.values)  # copies into the layer's own buffers
        if needs_queries(sel):
            _attn.copy_prefill_queries(dense_cache, cache)
        return cache


def chunked_prefill(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache: Cache,
    attention_mask: torch.Tensor | None = None,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Dense prefill in chunks of ``chunk_tokens`` (bounds activation memory); returns the logits of the last
    position ``[B, vocab]``. Positions follow the attention mask (left padding), as in ``generate``."""
    if chunk_tokens < 1:
        raise ConfigError(f"chunked_prefill: chunk_tokens = {chunk_tokens} is invalid; allowed range: [1, inf)")
    t = input_ids.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = None
    with torch.inference_mode():
        for start in range(0, t, chunk_tokens):
            end = min(t, start + chunk_tokens)
            out = model(
                input_ids=input_ids[:, start:end],
                attention_mask=attention_mask[:, :end],
                position_ids=positions[:, start:end],
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(model, cache),
            )
            logits = out.logits[:, -1]
    assert logits is not None
    return logits
