"""``SparseCache``: a transformers ``Cache`` that decodes with query-aware block-sparse attention.

    sel = SelectionConfig(block_size=64, k=8, d_sig=32, backend="exact")
    cache = SparseCache(model, sel)                      # switches the model to attn_implementation "kvprism"
    out = model.generate(**inputs, **cache_kwargs(model, cache), max_new_tokens=32)
    cache.stats.summary()                                # read fraction, programming events, selection calls, ...

Keys are cached after RoPE, so a gathered key keeps its true position. Prefill is dense. At the first decode step
every layer fits its projection on the prefill keys, computes the signatures of all complete blocks and programs
them into its backend (one bank per (batch row, KV head)); whenever a block completes later its signature is
appended (counted). Each decode step, each layer selects per KV head and attends to the selected tokens only
(gathered on the torch path; read in place by the Triton kernel on CUDA, see ``attend``).

The block grid is aligned to cache position 0 for every batch row; with left padding the leading blocks of a
shorter row hold padding, which is never signed, selected nor read (sink blocks start at the first real token).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
import warnings
import weakref
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvprism import kernels as _kernels
from kvprism.errors import ConfigError, KvprismError
from kvprism.hf import attention as _attn
from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.selection import (
    BlockSelector,
    SelectionConfig,
    block_signatures,
    fit_layer_projection,
    group_backends,
    layer_probe,
    needs_queries,
    resolve_heads,
    signature_settings,
)
from kvprism.signatures import SIGNATURES

__all__ = [
    "PreparedLayer",
    "SparseCache",
    "SparseLayer",
    "SparseStats",
    "cache_kwargs",
    "chunked_prefill",
    "prepare_prefill",
]

#: prefill queries kept per layer for projection="learned" (the most recent ones)
LEARNED_QUERY_SAMPLES = _attn.PREFILL_QUERY_SAMPLES

#: decode tokens a loaded (forked) layer can take before its buffers grow (growth copies the whole layer)
LOAD_HEADROOM_TOKENS = 256

#: how decode attends to the selected tokens: ``"torch"`` (index gather + matmul/softmax, any device), ``"triton"``
#: (the split-K sparse-attention kernel of :mod:`kvprism.kernels` reading the selected blocks in place; CUDA only)
#: or ``"auto"``
ATTEND_KERNELS = ("auto", "torch", "triton")


def cache_kwargs(model: Any, cache: Cache) -> dict[str, Cache]:
    """``{name: cache}`` for ``model(...)`` / ``model.generate(...)``: earlier transformers 5 releases (5.17 for one)
    name the argument ``past_key_values`` and silently ignore ``cache=``; later ones name it ``cache``."""
    return {_cache_arg_name(type(model)): cache}


@functools.cache
def _cache_arg_name(model_cls: type) -> str:
    """The cache argument's name of a model class's ``forward`` (looked up once per class: callers pass the cache
    every decode step)."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


@dataclasses.dataclass(frozen=True)
class PreparedLayer:
    """What one layer of a prefill needs before its first sparse decode step, computed once per prefill and
    signature settings: the projection (``[B, H, D, d_sig]`` or None), its fitted temperature (``[B, H]``, learned
    projection only), the signature's probe (``[B, H, P, d_sig]``, 'reps' only) and the bank rows ``[B, H, n*R, w]``
    of the ``n`` complete blocks (``R`` rows per block), under the key validity ``valid [B, n*block_size]`` they were
    computed with."""

    proj: torch.Tensor | None
    signatures: torch.Tensor
    valid: torch.Tensor
    temperature: torch.Tensor | None = None
    probe: torch.Tensor | None = None


#: dense prefill cache -> {(signature settings, tokens): [PreparedLayer per layer]}; every fork of one prefill and
#: every configuration with the same signature settings reuses one entry (the fit is deterministic: sharing it
#: changes no result)
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_scaling(model: torch.nn.Module, layer_idx: int, head_dim: int) -> float:
    for mod in model.modules():
        if getattr(mod, "layer_idx", None) == layer_idx and hasattr(mod, "scaling") and hasattr(mod, "q_proj"):
            return float(mod.scaling)
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
            attention must have been ``"kvprism"`` during the prefill, which remembers the queries).
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
            # with < 2 complete blocks fit_learned is PCA anyway; representative tokens always need the probe
            if needs_queries(sel) and (nb >= 2 or SIGNATURES[sel.signature].needs_probe):
                found = _attn.prefill_queries_for(model, i, keys)
                if found is None:
                    raise ConfigError(
                        f"SelectionConfig projection = {sel.projection!r} / signature = {sel.signature!r} needs the "
                        "prefill queries: prefill the dense cache with the model's attention set to 'kvprism' "
                        "(constructing any SparseCache does that)"
                    )
                q, query_pos = found
                b, hq, n, d = q.shape
                h = keys.shape[1]
                queries = q.reshape(b, h, hq // h, n, d).transpose(2, 3)  # [B, H, n, G, D]
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
    """What decode read: per decode step, layer and KV head, tokens attended vs tokens cached."""

    def __init__(self, num_layers: int, num_kv_heads: int) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.steps: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []  # step -> layer -> ([B,H], [B])
        self.selectors: list[BlockSelector] = []
        self.attend_calls: dict[str, int] = {"torch": 0, "triton": 0}  # layer-steps per attention kernel
        self.select_calls: dict[str, int] = {"torch": 0, "kernel": 0}  # layer-steps per top-k path
        self.cached_tokens = lambda: 0  # tokens the owning cache holds (set by SparseCache)

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
        programming events (signature rows written), selection calls, and ``restricted``: whether any bank at any
        step read fewer tokens than it had cached (False means selection could not restrict anything)."""
        att, cac = self.tensors()
        att = att.double()
        cac = cac.double()[..., None].expand_as(att)
        counters: dict[str, float] = {}
        for s in self.selectors:
            for name, val in s.backend.counters.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):  # numeric counters add over layers
                    counters[name] = counters.get(name, 0) + val
        out: dict[str, Any] = {
            "decode_steps": int(att.shape[0]),
            "programming_events": sum(s.rows_programmed for s in self.selectors),
            "selection_calls": sum(s.selection_calls for s in self.selectors),
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
    """One layer's post-RoPE keys/values (amortised-growth buffers, returned as views) and its BlockSelector."""

    is_sliding = False
    is_croppable = False

    def __init__(self, cache: SparseCache, layer_idx: int, selector: BlockSelector) -> None:
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.selector = selector
        self.length = 0
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._queries: torch.Tensor | None = None  # [B, Hq, n, D] recent prefill queries (learned projection)
        self._query_pos: torch.Tensor | None = None
        self.prepared: PreparedLayer | None = None  # the prefill's projection and signatures (from_prefilled)

    # ------------------------------------------------------------------ transformers Cache layer API
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

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[B, H, q, D]`` keys/values; return views of all cached keys/values ``[B, H, T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        impl = getattr(self.cache.model_config, "_attn_implementation", None)
        if impl != _attn.ATTN_NAME:
            raise KvprismError(
                f"SparseCache needs attn_implementation '{_attn.ATTN_NAME}' but the model uses {impl!r}; "
                "construct the SparseCache from the model (it switches the model) and do not change it afterwards"
            )
        q = key_states.shape[2]
        self._reserve(key_states, value_states, self.length + q)
        self._kbuf[:, :, self.length : self.length + q] = key_states
        self._vbuf[:, :, self.length : self.length + q] = value_states
        self.length += q
        self.keys = self._kbuf[:, :, : self.length]
        self.values = self._vbuf[:, :, : self.length]
        _attn.mark_update(self, self.keys)
        return self.keys, self.values

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

    # ------------------------------------------------------------------ prefill / decode
    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill an empty layer with already computed post-RoPE ``keys/values [B, H, T, D]`` (copied)."""
        if self.length:
            raise KvprismError("SparseLayer.load needs an empty layer")
        self.lazy_initialization(keys, values)
        # room for the decode steps that follow: the first one must not reallocate and copy the whole cache
        self._reserve(keys, values, keys.shape[2] + LOAD_HEADROOM_TOKENS)
        self._kbuf[:, :, : keys.shape[2]] = keys
        self._vbuf[:, :, : keys.shape[2]] = values
        self.length = keys.shape[2]
        self.keys = self._kbuf[:, :, : self.length]
        self.values = self._vbuf[:, :, : self.length]

    def observe_prefill(self, query: torch.Tensor) -> None:
        """Keep the most recent prefill queries ``[B, Hq, q, D]`` (only for projection='learned')."""
        if not self.selector.needs_queries or self.selector.fitted:
            return
        q = query.shape[2]
        pos = torch.arange(self.length - q, self.length, device=query.device)
        qs = query.detach()
        if self._queries is not None:
            qs = torch.cat([self._queries, qs], dim=2)
            pos = torch.cat([self._query_pos, pos])
        self._queries = qs[:, :, -LEARNED_QUERY_SAMPLES:].clone()
        self._query_pos = pos[-LEARNED_QUERY_SAMPLES:].clone()

    def _prepare(self, valid: torch.Tensor, scaling: float) -> None:
        """At a decode step: fit the projection on the prefill (once; or adopt the one :func:`prepare_prefill` fitted)
        and program the signatures of all complete blocks not yet programmed."""
        sel = self.selector.sel
        bs = sel.block_size
        nb = self.length // bs
        keys = self.keys
        prep, self.prepared = self.prepared, None
        if not self.selector.fitted and prep is not None:
            n_prep = prep.valid.shape[-1] // bs  # complete blocks signed at the prefill
            if n_prep <= nb and torch.equal(prep.valid, valid[:, : n_prep * bs]):
                self.selector.adopt(
                    prep.proj, prep.signatures, temperature=prep.temperature, probe=prep.probe, scaling=scaling
                )
                self._queries = self._query_pos = None
        if not self.selector.fitted:
            queries = None
            n_pre = self.length - 1  # the prefill: the cache before this decode step's own token
            # with < 2 complete blocks fit_learned is PCA anyway; representative tokens always need the probe
            if self.selector.needs_queries and (n_pre // bs >= 2 or self.selector.signature.needs_probe):
                if self._queries is None:
                    raise ConfigError(
                        f"SelectionConfig projection = {sel.projection!r} / signature = {sel.signature!r} needs the "
                        "prefill queries: prefill through the "
                        "SparseCache, or prefill the dense cache with the model's attention set to 'kvprism' "
                        "(constructing any SparseCache does that) before SparseCache.from_prefilled"
                    )
                b, hq, n, d = self._queries.shape
                h = keys.shape[1]
                queries = self._queries.reshape(b, h, hq // h, n, d).transpose(2, 3)  # [B, H, n, G, D]
            # fitted on the prefill only (as prepare_prefill does)
            self.selector.fit(
                keys[:, :, :n_pre], valid[:, :n_pre], scaling=scaling, queries=queries, query_pos=self._query_pos
            )
            self._queries = self._query_pos = None
        done = self.selector.n_blocks
        if nb > done:
            sig = self.selector.block_signatures(keys[:, :, done * bs : nb * bs], valid[:, done * bs : nb * bs])
            if done == 0:
                self.selector.program(sig)
            else:
                self.selector.append(sig)

    def attend_kernel(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocks: torch.Tensor,
        layout: BlockLayout,
        scaling: float,
        backend: str = "triton",
    ) -> torch.Tensor:
        """Attention of ``query [B, Hq, D]`` over ``blocks [B, H, k]`` + sink + tail through :mod:`kvprism.kernels`
        (the Triton kernel, or with ``backend="reference"`` its torch reference, which any device runs). For a
        plain layout (no masked keys) this reads the tokens :meth:`BlockLayout.gather_plan` lists. The Triton
        launch geometry and its fp32 workspace are built once per shape and reused by every layer."""
        if backend != "triton":
            return _kernels.sparse_decode_attention(query, key, value, blocks, layout, scaling, backend=backend)
        from kvprism.kernels.triton_decode import decode_plan, decode_workspace, sparse_decode_attention_triton

        b, hq, d = query.shape
        h = key.shape[1]
        shape = (b, hq, h, d, blocks.shape[-1], query.device)
        if shape not in self.cache._kernel_plans:
            plan = decode_plan(b, hq, h, d, blocks.shape[-1], layout.geometry, query.device)
            self.cache._kernel_plans[shape] = (plan, decode_workspace(b, h, hq // h, d, plan, query.device))
        plan, workspace = self.cache._kernel_plans[shape]
        return sparse_decode_attention_triton(
            query, key, value, blocks, layout, scaling, plan=plan, workspace=workspace
        )

    def decode(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor:
        """One decode step of this layer: ``query [B, Hq, D]`` -> attention output ``[B, Hq, D]`` over the selected
        tokens only. ``attention_mask`` is the step's 4D mask (padding / sliding window) or None."""
        timing = self.cache.timings
        t0 = time.perf_counter() if timing is not None else 0.0
        b, hq, d = query.shape
        h = key.shape[1]
        layout = self.cache.step_layout(attention_mask, b, key.shape[2], key.device)
        self._prepare(self.cache.step_valid, scaling)
        triton = self.cache.attend_with_triton(layout, query, key, value)
        if triton and self.selector.sel.backend == "exact" and self.selector.n_blocks:
            # score + top-k in the fused kernel: without padding the candidates are one contiguous range of blocks
            lo, hi = layout.candidate_range(self.selector.n_blocks)
            blocks = self.selector.select_range(query.reshape(b, h, hq // h, d), lo, hi)
            self.cache.stats.select_calls["kernel"] += 1
        else:
            cand = layout.candidate_mask(n=self.selector.n_blocks).expand(b, h, -1)
            blocks = self.selector.select(query.reshape(b, h, hq // h, d), cand)
            self.cache.stats.select_calls["torch"] += 1
        plan = layout.gather_plan(blocks)
        if timing is not None:
            _sync(query.device)
            t1 = time.perf_counter()
        if triton:
            out = self.attend_kernel(query, key, value, blocks, layout, scaling)
            self.cache.stats.attend_calls["triton"] += 1
        else:
            out = _attn.sparse_attend(query, key, value, plan.token_idx, plan.token_ok, scaling)
            self.cache.stats.attend_calls["torch"] += 1
        if timing is not None:
            _sync(query.device)
            t2 = time.perf_counter()
            timing["select_s"] += t1 - t0
            timing["attend_s"] += t2 - t1
        self.selector.advance(1)
        new_step = self.layer_idx == 0
        self.cache.stats.record(self.layer_idx, plan.n_attended, plan.n_cached, new_step)
        if self.cache.trace is not None:
            if new_step or not self.cache.trace:
                self.cache.trace.append({})
            self.cache.trace[-1][self.layer_idx] = {
                "query": query.detach().clone(),
                "blocks": blocks.detach().clone(),
                "token_mask": plan.token_mask(key.shape[2]),
            }
        return out


class SparseCache(Cache):
    """A transformers ``Cache`` whose decode steps read only query-selected blocks (see module docstring).

    Args:
        model: a Llama / Qwen2 / Mistral-family causal LM; its attention implementation is switched to ``"kvprism"``
            (which behaves like ``sdpa`` for any other cache, so dense baselines keep working on the same model).
        sel: the selection config.
        trace: keep, per decode step and layer, the query, the selected blocks and the token mask read.
        profile: accumulate wall time of the selection machinery (signatures, scoring, top-k, gather plan) and of
            the sparse attention in ``cache.timings`` (seconds, summed over layers and steps; synchronises the GPU).
        attend: how a decode step attends to the selected tokens (:data:`ATTEND_KERNELS`). ``"triton"``: the
            split-K kernel of :mod:`kvprism.kernels` reads the selected blocks, sink and tail straight from the cache
            (CUDA tensors, no left padding or sliding window in the step, head dim a power of two in [16, 256]);
            asking for it where it cannot run is an error. ``"torch"``: gather the selected token rows, then matmul +
            softmax (any device, any mask). ``"auto"`` (default): ``"triton"`` where it can run, else ``"torch"``.
            For the same selected blocks both read the same tokens; ``cache.stats.summary()["attend_calls"]``
            counts the layer-steps of each. With ``"triton"`` attention and the ``exact`` backend the top-k also runs
            in the fused score + top-k kernel (``BlockSelector.select_range``; counted in ``"select_calls"``), which
            sums the GQA group's query sketches before the dot product, so exact near-ties may resolve differently
            from the torch path.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sel: SelectionConfig,
        trace: bool = False,
        profile: bool = False,
        attend: str = "auto",
    ) -> None:
        if not isinstance(sel, SelectionConfig):
            raise ConfigError(f"SparseCache needs a SelectionConfig, got {type(sel).__name__}")
        if attend not in ATTEND_KERNELS:
            raise ConfigError(f"SparseCache.attend = {attend!r} is invalid; allowed: {', '.join(ATTEND_KERNELS)}")
        if attend == "triton" and not _kernels.triton_available():
            raise ConfigError("SparseCache.attend = 'triton' needs the 'triton' package (pip install 'kvprism[gpu]')")
        self.attend = attend
        cfg = model.config.get_text_config(decoder=True)
        n_layers = cfg.num_hidden_layers
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        heads = resolve_heads(sel.heads, n_layers, n_kv)
        _attn.use_kvprism_attention(model)
        self.model_config = model.config
        self.sel = sel
        self.head_mask = heads
        self.stats = SparseStats(n_layers, n_kv)
        self.trace: list[dict[int, dict[str, torch.Tensor]]] | None = [] if trace else None
        self.timings: dict[str, float] | None = {"select_s": 0.0, "attend_s": 0.0} if profile else None
        self.geometry = BlockGeometry.of(sel)
        self._layout_key: tuple | None = None
        self._layout: BlockLayout | None = None
        self.step_valid: torch.Tensor | None = None  # [B, T] bool key validity of the current step
        self._layout_plain: bool = False  # the step's keys are all real and unmasked (no padding / sliding window)
        # Triton launch geometry + fp32 workspace per problem shape, shared by the layers
        self._kernel_plans: dict[tuple, tuple[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
        layers = []
        for i in range(n_layers):
            selector = BlockSelector(sel, i, n_kv, heads[i])
            self.stats.selectors.append(selector)
            layers.append(SparseLayer(self, i, selector))
        # photonic layers: one drift sample and W_eff refresh per decode step for all layers (same physics and draws)
        self.engine_group = group_backends(self.stats.selectors)
        super().__init__(layers=layers)
        ref = weakref.ref(self)
        self.stats.cached_tokens = lambda: c.get_seq_length() if (c := ref()) is not None else 0

    @classmethod
    def from_prefilled(
        cls,
        model: torch.nn.Module,
        dense_cache: Cache,
        sel: SelectionConfig,
        trace: bool = False,
        profile: bool = False,
        attend: str = "auto",
        *,
        attention_mask: torch.Tensor | None = None,
        prepare: bool = True,
    ) -> SparseCache:
        """A SparseCache holding copies of the keys/values of an already prefilled cache (e.g. a ``DynamicCache``),
        which is left untouched: prefill once, decode many configurations. ``projection="learned"`` also needs the
        prefill's queries, which the ``"kvprism"`` attention remembers for any cache it prefilled.

        With ``prepare`` (default) the projections and the signatures of the prefill's complete blocks come from
        :func:`prepare_prefill`, computed once per prefill and signature settings and shared by every fork, so the
        first decode step only programs them; ``attention_mask`` is the prefill's ``[B, T]`` mask (default: no
        padding; a first decode step whose key validity differs fits afresh, as without ``prepare``)."""
        cache = cls(model, sel, trace=trace, profile=profile, attend=attend)
        if prepare and len(dense_cache.layers) == len(cache.layers):
            prepared = prepare_prefill(model, dense_cache, sel, attention_mask)
            for dst, prep in zip(cache.layers, prepared, strict=True):
                dst.prepared = prep
        if len(dense_cache.layers) != len(cache.layers):
            raise KvprismError(
                f"the prefilled cache has {len(dense_cache.layers)} layers; the model has {len(cache.layers)}"
            )
        for i, (src, dst) in enumerate(zip(dense_cache.layers, cache.layers, strict=True)):
            keys, values = getattr(src, "keys", None), getattr(src, "values", None)
            if keys is None or keys.numel() == 0:
                raise KvprismError(f"layer {i} of the prefilled cache is empty")
            if keys.shape[2] != src.get_seq_length():
                raise KvprismError(
                    f"layer {i} of the prefilled cache holds {keys.shape[2]} of {src.get_seq_length()} tokens "
                    "(sliding-window layer); SparseCache needs the full prefill"
                )
            dst.load(keys, values)  # copies into the layer's own buffers
            if dst.selector.needs_queries:
                found = _attn.prefill_queries_for(model, i, keys)
                if found is not None:
                    dst._queries, dst._query_pos = found[0].clone(), found[1].clone()
        return cache

    def step_layout(
        self, attention_mask: torch.Tensor | None, batch: int, kv_len: int, device: torch.device
    ) -> BlockLayout:
        """The step's :class:`~kvprism.layout.BlockLayout`, built once per decode step (every layer gets the same mask
        object). Without masked keys the layout is plain (what the Triton kernels take)."""
        key = (None if attention_mask is None else id(attention_mask), batch, kv_len)
        if self._layout_key != key:
            valid = _attn.key_validity(attention_mask, batch, kv_len, device)
            # one host sync per step (none without a mask)
            plain = attention_mask is None or bool(valid.all())
            self._layout = BlockLayout.uniform(batch, kv_len, self.geometry, device, None if plain else valid)
            self.step_valid = valid
            self._layout_key = key
            self._layout_plain = self.attend != "torch" and device.type == "cuda" and plain
        return self._layout

    def attend_with_triton(
        self, layout: BlockLayout, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> bool:
        """Whether this layer-step attends with the Triton kernel (see ``attend``); raises where ``"triton"`` was
        asked for and cannot run."""
        if self.attend == "torch":
            return False
        why = None
        if query.device.type != "cuda":
            why = f"tensors on {query.device.type}, not cuda"
        elif not _kernels.triton_available():
            why = "the 'triton' package is not installed"
        elif not self._layout_plain:
            why = "the step masks some cached keys (left padding or a sliding window)"
        elif query.shape[-1] not in _kernels.TRITON_HEAD_DIMS or query.dtype not in _kernels.TRITON_DTYPES:
            why = (
                f"head dim {query.shape[-1]} / dtype {query.dtype} (needs {_kernels.TRITON_HEAD_DIMS}, fp16/bf16/fp32)"
            )
        elif value.shape[-1] != query.shape[-1]:
            why = f"value head dim {value.shape[-1]} differs from the query head dim {query.shape[-1]}"
        elif key.dtype != query.dtype or value.dtype != query.dtype:
            why = f"cache dtypes {key.dtype}/{value.dtype} differ from the query dtype {query.dtype}"
        if why is None:
            return True
        if self.attend == "triton":
            raise KvprismError(f"SparseCache(attend='triton') cannot run this step: {why}")
        return False

    @property
    def selectors(self) -> list[BlockSelector]:
        return self.stats.selectors


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
