"""``StaticSparseCache``: block-sparse decode with fixed shapes, for ``torch.compile`` and CUDA graphs.

    cache = StaticSparseCache(model, SelectionConfig(), max_cache_len=4096)    # switches the model to "kvprism"
    out = model.generate(ids, attention_mask=mask, **cache_kwargs(model, cache), max_new_tokens=32)

    # or the explicit route, for torch.compile / CUDA graphs:
    logits = chunked_prefill(model, prompt_ids, cache, attention_mask=mask)   # dense prefill through the cache
    cache.prepare(mask)                                 # fit the projection, sign the prefill's blocks (eager, once)
    step = StaticDecodeStep(model, cache, attention_mask=mask).compile()     # or step.capture(...) on CUDA
    logits = step(next_ids, positions)                  # [B, vocab]
    cache.stats_summary()                               # read fraction (reads the device counters)

Everything a decode step touches is allocated once, up to ``max_cache_len`` tokens (rounded up to whole blocks) and
the prefill's batch: keys/values ``[B, H, T, D]``, the signature rows of every block slot ``[B, H, N*R, w]`` (fp32,
``R`` rows per block), the read counters and the last selection. The layers only store; the step is the dynamic
:class:`~kvprism.hf.pipeline.DecodePipeline`'s, stage for stage, through the same objects, with fixed shapes:

1. **layout** -- :meth:`BlockLayout.fixed <kvprism.layout.BlockLayout.fixed>` of the device-side length and the step's
   key validity (sink blocks, candidates, tail, padding; no host synchronisation);
2. **sign** -- the block holding the newest token is signed again (:func:`~kvprism.selection.block_signatures` with
   the layer's fitted projection and probe) and its rows overwritten; a block becomes a candidate once it is complete;
3. **score and select** -- the layer's :class:`~kvprism.selection.BlockSelector` (fitted on the prefill by the
   dynamic pipeline's fit, :func:`~kvprism.hf.pipeline.fit_on_prefill`) scores every slot as the
   :class:`~kvprism.scorers.ExactScorer` does and applies rerank, top-k and the budget
   (:meth:`BlockSelector.select_fixed <kvprism.selection.BlockSelector.select_fixed>`);
4. **plan** -- :meth:`BlockLayout.gather_plan <kvprism.layout.BlockLayout.gather_plan>`;
5. **attend** -- :func:`~kvprism.hf.attention.sparse_attend` (``impl="torch"``, any device, left padding allowed) or,
   on CUDA, the split-K sparse-attention Triton kernel (``impl="triton"``, no padding), with the fused score + top-k
   kernel where the selection is plain top-k over one-row signatures.

With the exact scorer every :class:`~kvprism.selection.SelectionConfig` setting has this fixed-shape form (projections
``none`` / ``random`` / ``pca`` / ``learned`` with its temperature, all signatures, budgets ``topk`` / ``top_p``,
``rerank``, ``sign``, ``gqa_reduce``, ``heads``, ``carry``), and a decode step selects and reads the same tokens as
the dynamic :class:`~kvprism.hf.cache.SparseCache` (``impl="torch"``). The photonic scorers simulate the chip step by
step (noise, drift, programming events): :func:`check_static_config` refuses them at construction.

Carry. With ``SelectionConfig.carry`` each layer keeps, in a static ``[B, H, effective carry]`` buffer (``-1`` = none),
the selected blocks of its last step with the most attention mass (:func:`~kvprism.selection.carry.kept_blocks`, from
the torch path's per-slot masses or the Triton kernel's ``block_mass``); the next step selects those that are still
candidates first and the scorer's best of the others after them (:mod:`kvprism.selection.carry`), as the dynamic
pipeline does. The buffer is updated in place, so a captured CUDA graph carries from replay to replay.

Preparing. ``model.generate`` (or any eager decode call) prepares the cache at its first decode step when nobody
did; compiling or capturing a step (:class:`StaticDecodeStep`) needs :meth:`StaticSparseCache.prepare` first.

Overflow. The keys/values hold at most :attr:`StaticSparseCache.max_cache_len` tokens; an update beyond that raises
a :class:`~kvprism.errors.KvprismError` before anything is written. The check is on the host: eager ``update`` makes
it, and :class:`StaticDecodeStep` makes it before every compiled call or graph replay (inside a graph the host sees
nothing, so a graph replayed by other means is not checked).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, StaticLayer

from kvprism.errors import ConfigError, KvprismError
from kvprism.hf import attention as _attn
from kvprism.hf.cache import _layer_scaling
from kvprism.hf.pipeline import fit_on_prefill, resolve_impl, triton_blocker
from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures, needs_queries, resolve_heads
from kvprism.selection import carry as _carry
from kvprism.signatures import SIGNATURES

__all__ = ["StaticDecodeStep", "StaticSparseCache", "StaticSparseLayer", "check_static_config", "step_validity"]


def check_static_config(sel: SelectionConfig) -> None:
    """Raise :class:`ConfigError` for a selection the static path does not implement: a scorer other than
    ``exact`` (its per-step simulation has no fixed-shape form). Every other setting, ``carry`` included, is
    implemented."""
    if not isinstance(sel, SelectionConfig):
        raise ConfigError(f"StaticSparseCache needs a SelectionConfig, got {type(sel).__name__}")
    if sel.scorer != "exact":
        raise ConfigError(
            f"SelectionConfig.scorer = {sel.scorer!r} is not supported by StaticSparseCache; allowed: 'exact' "
            "(a photonic scorer simulates the chip step by step: use the dynamic kvprism.SparseCache)"
        )


def step_validity(attention_mask: torch.Tensor | None, length: torch.Tensor, batch: int, capacity: int) -> torch.Tensor:
    """``[B, T]`` bool: the cached keys the step's query may attend -- the last query row of the step's 4D mask
    (padding excluded) and, in any case, positions below the device-side ``length``."""
    t = torch.arange(capacity, device=length.device)
    held = (t < length)[None].expand(batch, capacity)
    if attention_mask is None:
        return held
    return _attn.key_validity(attention_mask, batch, capacity, length.device) & held


# ------------------------------------------------------------------------------------------------------- the cache
class StaticSparseLayer(StaticLayer):
    """One layer's storage: transformers' static keys/values (``[B, H, T, D]``, device-side length), the signature
    rows of every block slot, the read counters, the last selection and (``carry``) the blocks the next step
    carries, all allocated once."""

    def __init__(self, cache: StaticSparseCache, layer_idx: int, max_cache_len: int) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.cache = cache
        self.layer_idx = layer_idx
        self.host_length = 0  # tokens written, as the host counts them (the overflow check)
        self.signatures: torch.Tensor | None = None  # [B, H, N*R, w] float32
        self.selected: torch.Tensor | None = None  # [B, H, k] int64, the blocks of the last decode step (-1 = none)
        self.carried: torch.Tensor | None = None  # [B, H, effective carry] int64, kept for the next step (-1 = none)
        self.counters: dict[str, torch.Tensor] = {}

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        sel = self.cache.sel
        b, h = key_states.shape[:2]
        d = key_states.shape[-1]
        signature = SIGNATURES[sel.signature]
        width = signature.width(d if sel.projection == "none" else sel.d_sig)
        rows = self.max_cache_len // sel.block_size * signature.rows_per_block(sel.sig_rows)
        dev = key_states.device
        self.signatures = torch.zeros(b, h, rows, width, dtype=torch.float32, device=dev)
        self.selected = torch.full((b, h, sel.k), -1, dtype=torch.int64, device=dev)
        c = _carry.effective_carry(sel.carry, sel.k)
        self.carried = torch.full((b, h, c), -1, dtype=torch.int64, device=dev) if c > 0 else None
        # read counters, summed over decode steps on the device
        self.counters = {
            "steps": torch.zeros((), dtype=torch.int64, device=dev),
            "attended": torch.zeros(b, h, dtype=torch.int64, device=dev),
            "cached": torch.zeros(b, dtype=torch.int64, device=dev),
            "fraction_sum": torch.zeros(b, h, dtype=torch.float64, device=dev),
            "fraction_max": torch.zeros(b, h, dtype=torch.float64, device=dev),
        }
        if not torch.compiler.is_compiling():
            for t in (self.signatures, self.selected, self.carried, *self.counters.values()):
                if t is not None:
                    torch._dynamo.mark_static_address(t)

    def claim(self, n: int) -> None:
        """Count ``n`` tokens about to be written; raise before anything is written if they do not fit."""
        if self.host_length + n > self.max_cache_len:
            raise KvprismError(
                f"StaticSparseCache.max_cache_len = {self.max_cache_len}: layer {self.layer_idx} holds "
                f"{self.host_length} tokens and cannot take {n} more (allowed total: [1, {self.max_cache_len}]); "
                "build the cache with a larger max_cache_len"
            )
        self.host_length += n

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[B, H, q, D]`` at the device-side length; return the whole buffers ``[B, H, T, D]``. In eager
        mode the host checks the capacity first (under tracing / capture :class:`StaticDecodeStep` does)."""
        if self.is_initialized and key_states.shape[0] != self.batch_size:
            raise KvprismError(
                f"StaticSparseCache: batch {key_states.shape[0]} differs from the {self.batch_size} rows allocated "
                "at the prefill"
            )
        if not (torch.compiler.is_compiling() or _capturing()):
            self.claim(key_states.shape[2])
        return super().update(key_states, value_states, *args, **kwargs)

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill an empty layer with already computed post-RoPE ``keys/values [B, H, n, D]`` (copied)."""
        if self.host_length:
            raise KvprismError("StaticSparseLayer.load needs an empty layer")
        self.update(keys, values)

    def write_rows(self, rows: torch.Tensor, signatures: torch.Tensor) -> None:
        """Overwrite the signature rows ``rows [m]`` with ``signatures [B, H, m, w]`` (in place, no host sync)."""
        self.signatures.index_copy_(2, rows, signatures)

    def record(self, blocks: torch.Tensor, attended: torch.Tensor, cached: torch.Tensor) -> None:
        """Keep one step's ``blocks [B, H, k]`` and add its ``attended [B, H]`` / ``cached [B]`` token counts to the
        device counters."""
        c = self.counters
        frac = attended.double() / cached.clamp_min(1).double()[:, None]
        self.selected.copy_(blocks)
        c["steps"].add_(1)
        c["attended"].add_(attended)
        c["cached"].add_(cached)
        c["fraction_sum"].add_(frac)
        c["fraction_max"].copy_(torch.maximum(c["fraction_max"], frac))

    def keep_carried(self, blocks: torch.Tensor, block_mass: torch.Tensor) -> None:
        """Keep, for the next decode step, the effective ``carry`` of this step's ``blocks [B, H, k]`` with the most
        attention mass (``block_mass [B, H, k]``, summed over the query group); in place, no host sync."""
        self.carried.copy_(_carry.kept_blocks(blocks, block_mass, self.carried.shape[-1]))

    def reset(self) -> None:
        super().reset()
        self.host_length = 0
        for t in (self.signatures, *self.counters.values()):
            if t is not None:
                t.zero_()
        for t in (self.selected, self.carried):
            if t is not None:
                t.fill_(-1)

    def crop(self, tokens_to_remove: int) -> None:
        raise KvprismError("StaticSparseCache does not support cropping (assisted / speculative decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise KvprismError("StaticSparseCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise KvprismError("StaticSparseCache does not support expanding the batch (num_return_sequences > 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise KvprismError("StaticSparseCache does not support selecting batch rows")


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class StaticSparseCache(Cache):
    """A transformers ``Cache`` with preallocated buffers whose decode step has fixed shapes (module docstring).

    Args:
        model: a Llama / Qwen2 / Mistral-family causal LM without sliding-window layers; its attention is switched
            to ``"kvprism"`` (prefill steps through this cache are dense sdpa, decode steps call
            :meth:`decode_attention`).
        sel: the selection config (any, with the ``exact`` scorer: :func:`check_static_config`).
        max_cache_len: tokens the cache can hold (prefill + decode), rounded up to a whole number of blocks.
        impl: ``"torch"`` (fixed-size gather + masked softmax, any device, left padding allowed), ``"triton"``
            (split-K attention kernel, with the fused score + top-k kernel for plain top-k over one-row signatures:
            CUDA, no padding) or ``"auto"`` (Triton where it can run, decided once by :meth:`prepare`).
    """

    def __init__(self, model: torch.nn.Module, sel: SelectionConfig, max_cache_len: int, impl: str = "auto") -> None:
        check_static_config(sel)
        if int(max_cache_len) < 1:
            raise ConfigError(f"StaticSparseCache.max_cache_len = {max_cache_len} is invalid; allowed range: >= 1")
        self.impl = resolve_impl(impl, owner="StaticSparseCache")
        cfg = model.config.get_text_config(decoder=True)
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        if any(t != "full_attention" for t in types):
            raise ConfigError(
                f"StaticSparseCache needs full-attention layers only; the model has layer types {sorted(set(types))}"
            )
        n_layers = cfg.num_hidden_layers
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.num_query_heads = cfg.num_attention_heads
        self.sel = sel
        self.geometry = BlockGeometry.of(sel)
        self.head_mask = resolve_heads(sel.heads, n_layers, self.num_kv_heads)
        bs = sel.block_size
        cap = -(-int(max_cache_len) // bs) * bs
        _attn.use_kvprism_attention(model)
        self.model_config = model.config
        self.prepared = False
        self.use_triton = False
        self.selectors: list[BlockSelector] = []
        self._triton_state: dict[str, Any] = {}
        super().__init__(layers=[StaticSparseLayer(self, i, cap) for i in range(n_layers)])
        self._scalings = [_layer_scaling(model, i) for i in range(n_layers)]
        self._new_selectors()

    def _new_selectors(self) -> None:
        n_layers = len(self.layers)
        self.selectors = [BlockSelector(self.sel, i, self.num_kv_heads, self.head_mask[i]) for i in range(n_layers)]

    @property
    def is_compileable(self) -> bool:
        """False: ``generate`` runs this cache's steps eagerly (the first one prepares it); compiled and
        graph-captured steps go through :class:`StaticDecodeStep`."""
        return False

    @property
    def max_cache_len(self) -> int:
        return self.layers[0].max_cache_len

    @property
    def host_length(self) -> int:
        """Tokens in the cache as the host counts them (layer 0)."""
        return self.layers[0].host_length

    def held_tokens(self, layer_idx: int) -> int:
        """Tokens layer ``layer_idx`` holds, as the host counts them (the ``"kvprism"`` attention records the prefill
        queries at these positions)."""
        return self.layers[layer_idx].host_length

    def claim(self, n: int) -> None:
        """Count ``n`` tokens about to be written by a compiled or captured step in every layer; raises
        :class:`KvprismError` before anything is written when they do not fit."""
        for layer in self.layers:
            if layer.host_length + n > layer.max_cache_len:
                layer.claim(n)  # raises
        for layer in self.layers:
            layer.claim(n)

    # ---------------------------------------------------------------- building from a prefill
    @classmethod
    def from_prefilled(
        cls,
        model: torch.nn.Module,
        dense_cache: Cache,
        sel: SelectionConfig,
        max_cache_len: int,
        impl: str = "auto",
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> StaticSparseCache:
        """A prepared StaticSparseCache holding copies of an already prefilled cache's keys/values (e.g. a
        ``DynamicCache``, left untouched); ``attention_mask`` is the prefill's ``[B, n]`` mask (0 = padding).
        ``projection="learned"`` / ``signature="reps"`` also take the prefill's queries, which the ``"kvprism"``
        attention records for any cache it prefilled."""
        cache = cls(model, sel, max_cache_len, impl)
        if len(dense_cache.layers) != len(cache.layers):
            raise KvprismError(
                f"the prefilled cache has {len(dense_cache.layers)} layers; the model has {len(cache.layers)}"
            )
        for i, (src, dst) in enumerate(zip(dense_cache.layers, cache.layers, strict=True)):
            keys = getattr(src, "keys", None)
            if keys is None or keys.numel() == 0:
                raise KvprismError(f"layer {i} of the prefilled cache is empty")
            dst.load(keys, src.values)
        if needs_queries(sel):
            _attn.copy_prefill_queries(dense_cache, cache)
        cache.prepare(attention_mask)
        return cache

    def prepare(self, attention_mask: torch.Tensor | None = None) -> None:
        """After the prefill, before the first decode step (and before compiling or capturing it): fit every layer's
        projection on the prefill, sign its complete blocks, and decide the kernel path (eager; synchronises). An
        eager decode step calls it by itself when nobody did.

        Args:
            attention_mask: the prefill's ``[B, n]`` mask (0 = left padding), or a longer ``[B, >= n]`` one whose
                first ``n`` columns are used; default: no padding.
        """
        first = self.layers[0]
        if not first.is_initialized or first.host_length == 0:
            raise KvprismError("StaticSparseCache.prepare needs a prefilled cache (run the prefill through it first)")
        n = first.host_length
        b = first.batch_size
        dev = first.device
        if attention_mask is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=dev)
        else:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] < n:
                raise KvprismError(
                    f"StaticSparseCache.prepare: attention_mask must be [B={b}, >= {n}], got "
                    f"{tuple(attention_mask.shape)}"
                )
            valid = attention_mask[:, :n].to(device=dev, dtype=torch.bool)
        self._prepare(valid)

    def _prepare(self, valid: torch.Tensor) -> None:
        """Fit and sign every layer on its first ``n = valid.shape[1]`` tokens (the prefill), through the dynamic
        pipeline's fit (:func:`~kvprism.hf.pipeline.fit_on_prefill`) and :func:`~kvprism.selection.block_signatures`."""
        sel = self.sel
        n = valid.shape[1]
        nb = n // sel.block_size
        end = nb * sel.block_size
        self._new_selectors()
        with torch.inference_mode():
            for layer, selector in zip(self.layers, self.selectors, strict=True):
                i = layer.layer_idx
                keys = layer.keys[:, :, :n]
                prefill = _attn.prefill_queries(self, i)
                fit_on_prefill(selector, keys, valid, self._scalings[i], prefill, "StaticSparseCache")
                layer.signatures.zero_()
                if layer.carried is not None:
                    layer.carried.fill_(-1)  # a fresh fit carries nothing
                if nb:
                    sig = block_signatures(
                        sel, selector.proj, keys[:, :, :end], valid[:, :end], layer_idx=i, probe=selector.probe
                    )
                    layer.signatures[:, :, : sig.shape[2]] = sig
        first = self.layers[0]
        self.use_triton = self._triton_ok(bool(valid.all()), first)
        if self.use_triton:
            self._build_triton_state(first)
        self.prepared = True

    def _prepare_at_first_step(self, layer_idx: int, attention_mask: torch.Tensor | None) -> None:
        """An eager decode step reached an unprepared cache: prepare it on the prefill, whose key validity is the
        step's (the step's own token is already written into layer ``layer_idx``, not yet into the later layers)."""
        if torch.compiler.is_compiling() or _capturing():
            raise KvprismError(
                "StaticSparseCache: call cache.prepare() after the prefill, before compiling or capturing a decode step"
            )
        if layer_idx != 0:
            raise KvprismError("StaticSparseCache: a decode step began at a layer other than the first")
        layer = self.layers[0]
        n = layer.host_length - 1
        if n < 1:
            raise KvprismError("StaticSparseCache: a decode step needs a prefilled cache")
        valid = step_validity(attention_mask, layer.cumulative_length, layer.batch_size, layer.max_cache_len)
        self._prepare(valid[:, :n])

    def _triton_ok(self, plain: bool, layer: StaticSparseLayer) -> bool:
        if self.impl == "torch":
            return False
        dtype = layer.keys.dtype
        why = triton_blocker(layer.device, layer.k_head_dim, layer.v_head_dim, dtype, (layer.values.dtype,), plain)
        if why is None:
            return True
        if self.impl == "triton":
            raise KvprismError(f"StaticSparseCache(impl='triton') cannot run: {why}")
        return False

    @property
    def _fused_topk(self) -> bool:
        """The selection is plain top-k over one-row signatures: the fused score + top-k kernel computes it."""
        sel = self.sel
        return sel.budget == "topk" and sel.rerank == 1 and SIGNATURES[sel.signature].rows_per_block(sel.sig_rows) == 1

    def _build_triton_state(self, layer: StaticSparseLayer) -> None:
        """Launch geometry, workspaces and length buffers of the Triton kernels, shared by the layers."""
        from kvprism.kernels.triton_decode import block_mass_workspace, decode_plan, decode_workspace, score_plan

        sel = self.sel
        b, h, d = layer.batch_size, layer.num_heads, layer.k_head_dim
        hq = self.num_query_heads
        n_rows = layer.signatures.shape[2] - sel.sink_blocks
        dev = layer.device
        splan = score_plan(max(n_rows, 1), layer.signatures.shape[3], hq // h, max(sel.k, 1), None)
        plan = decode_plan(b, hq, h, d, sel.k, self.geometry, dev)
        self._triton_state = {
            "plan": plan,
            "workspace": decode_workspace(b, h, hq // h, d, plan, dev),
            "cand": torch.empty(b * h * splan.n_tiles * splan.k_pow2, dtype=torch.int64, device=dev),
            "seq_lens": torch.zeros(b, dtype=torch.int32, device=dev),
            "n_valid": torch.zeros(b, dtype=torch.int32, device=dev),
            "blocks": torch.full((b, h, sel.k), -1, dtype=torch.int64, device=dev),
            "out": [torch.zeros(b, hq, d, dtype=layer.keys.dtype, device=dev) for _ in self.layers],
        }
        if layer.carried is not None:  # the selected blocks' attention masses, for the carried blocks
            self._triton_state["block_mass"] = torch.zeros(b, h, sel.k, dtype=torch.float32, device=dev)
            self._triton_state["mass_workspace"] = block_mass_workspace(b, h, hq // h, sel.k, plan, dev)

    # ---------------------------------------------------------------- the decode step of one layer
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
        [B, Hq, D]`` -> ``[B, Hq, D]`` over the selected tokens only; fixed shapes, no host synchronisation (once
        prepared)."""
        if not self.prepared:
            self._prepare_at_first_step(layer_idx, attention_mask)
        layer: StaticSparseLayer = self.layers[layer_idx]
        selector = self.selectors[layer_idx]
        b, hq, d = query.shape
        h = key.shape[1]
        cap = layer.max_cache_len
        length = layer.cumulative_length  # includes this step's token
        valid = step_validity(attention_mask, length, b, cap)
        self._sign_newest(layer, selector, valid, length)  # 2. sign
        group = query.reshape(b, h, hq // h, d)
        if self.use_triton:  # 1. layout (plain: the lengths say everything)
            st = self._triton_state
            st["seq_lens"].copy_(length.expand(b))
            layout = BlockLayout.fixed(self.geometry, st["seq_lens"], cap)
        else:
            layout = BlockLayout.fixed(self.geometry, length.reshape(1).expand(b), cap, valid)
        cand = layout.candidate_mask().expand(b, h, -1)
        carried = None  # carry: last step's kept blocks that are still candidates (-1 = none; all -1 at first)
        if layer.carried is not None:
            carried = _carry.carried_candidates(layer.carried, cand)
        if self.use_triton and self._fused_topk:  # 3. score and select
            blocks = self._fused_select(layer, selector, group, layout, carried)
        elif carried is None:
            blocks = selector.select_fixed(group, cand, layer.signatures)
        else:  # the carried blocks first, then the scorer's best of the other candidates
            rest = selector.select_fixed(group, _carry.without_carried(cand, carried), layer.signatures)
            blocks = _carry.merge_carried(carried, rest, self.sel.k)
        if self.use_triton:  # 4. plan (the kernel reads it from the layout) and 5. attend
            out = self._triton_attend(layer, query, key, value, blocks, layout, scaling)
            attended = layout.tokens_read(blocks)
        else:
            plan = layout.gather_plan(blocks)
            if carried is None:
                out = _attn.sparse_attend(query, key, value, plan.token_idx, plan.token_ok, scaling)
            else:
                out, mass = _attn.sparse_attend(
                    query, key, value, plan.token_idx, plan.token_ok, scaling, slot_mass=True
                )
                layer.keep_carried(blocks, _carry.block_mass_from_slots(mass, blocks.shape[-1], self.sel.block_size))
            attended = plan.n_attended
        layer.record(blocks, attended, layout.n_cached)
        return out

    def _sign_newest(
        self, layer: StaticSparseLayer, selector: BlockSelector, valid: torch.Tensor, length: torch.Tensor
    ) -> None:
        """Sign the block holding the newest token and overwrite its rows (the block is a candidate only once it is
        complete, which the layout decides)."""
        bs = self.sel.block_size
        r = selector.rows_per_block
        j = torch.div(length.long() - 1, bs, rounding_mode="floor").reshape(1)
        pos = j * bs + torch.arange(bs, device=j.device)
        sig = block_signatures(
            self.sel,
            selector.proj,
            layer.keys.index_select(2, pos),
            valid.index_select(1, pos),
            layer_idx=layer.layer_idx,
            probe=selector.probe,
        )  # [B, H, R, w]
        layer.write_rows(j * r + torch.arange(r, device=j.device), sig)

    def _fused_select(
        self,
        layer: StaticSparseLayer,
        selector: BlockSelector,
        group: torch.Tensor,
        layout: BlockLayout,
        carried: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Top-k by the fused score + top-k Triton kernel over the candidate range ``[sink_blocks, candidate_end)``
        of a plain layout (the selector's encoded query against the layer's rows; into a static buffer). With
        ``carried [B, H, c]`` (absolute ids, -1 = none) those come first, then the kernel's best without them."""
        from kvprism.kernels.triton_decode import score_topk_triton

        st = self._triton_state
        sel = self.sel
        blocks = st["blocks"]
        if not sel.k:
            return blocks
        b, h, g, _ = group.shape
        s = sel.sink_blocks
        enc = selector.encode_query(group)  # [B, H, G, w]
        st["n_valid"].copy_((layout.candidate_end - s).clamp_min(0))
        q_sig = enc.reshape(b, h * g, enc.shape[-1]).contiguous()
        score_topk_triton(
            q_sig, layer.signatures[:, :, s:], st["n_valid"], sel.k, sel.gqa_reduce, out=blocks, cand=st["cand"]
        )
        heads = selector.head_mask.to(blocks.device)[None, :, None]
        blocks.copy_(torch.where(blocks >= 0, blocks + s, blocks).masked_fill(~heads, -1))
        if carried is not None:  # absolute ids on both sides (the sink offset is added above)
            blocks.copy_(_carry.merge_carried(carried, _carry.drop_carried(blocks, carried), sel.k))
        return blocks

    def _triton_attend(self, layer, query, key, value, blocks, layout, scaling) -> torch.Tensor:
        from kvprism.kernels.triton_decode import sparse_decode_attention_triton

        st = self._triton_state
        carry = layer.carried is not None
        out = sparse_decode_attention_triton(
            query.contiguous(),
            key,
            value,
            blocks,
            layout,
            scaling,
            out=st["out"][layer.layer_idx],
            plan=st["plan"],
            workspace=st["workspace"],
            **({"block_mass": st["block_mass"], "mass_workspace": st["mass_workspace"]} if carry else {}),
        )
        if carry:
            layer.keep_carried(blocks, st["block_mass"])
        return out

    # ---------------------------------------------------------------- statistics (read on demand)
    def stats_summary(self) -> dict[str, Any]:
        """Read fraction over decode steps, layers, KV heads and batch rows (mean of per-step fractions and max),
        token totals and the kernel path; reads the device counters (synchronises)."""
        steps = [int(layer.counters["steps"]) if layer.counters else 0 for layer in self.layers]
        out: dict[str, Any] = {
            "decode_steps": min(steps) if steps else 0,
            "impl": "triton" if self.use_triton else "torch",
            "max_cache_len": self.max_cache_len,
            "cached_tokens": self.host_length,
        }
        if out["decode_steps"] == 0:
            out.update(read_fraction_mean=None, read_fraction_max=None, tokens_attended=0, tokens_cached=0)
            return out
        frac_sum = torch.stack([layer.counters["fraction_sum"] for layer in self.layers]).cpu()  # [L, B, H]
        frac_max = torch.stack([layer.counters["fraction_max"] for layer in self.layers]).cpu()
        att = sum(int(layer.counters["attended"].sum()) for layer in self.layers)
        cac = sum(int(layer.counters["cached"].sum()) * layer.num_heads for layer in self.layers)
        n = torch.tensor(steps, dtype=torch.float64)[:, None, None]
        out.update(
            read_fraction_mean=float((frac_sum / n).mean()),
            read_fraction_max=float(frac_max.max()),
            tokens_attended=att,
            tokens_cached=cac,
            per_layer_head=(frac_sum / n).mean(1).tolist(),
        )
        return out

    def reset(self) -> None:
        super().reset()
        self.prepared = False
        self._new_selectors()


# ------------------------------------------------------------------------------------------- the whole-model step
class StaticDecodeStep:
    """One decode step of the whole model from static input buffers: eager, compiled (:meth:`compile`) or replayed
    from a CUDA graph (:meth:`capture`). Works with a :class:`StaticSparseCache` or transformers' ``StaticCache``
    (the dense baseline).

    Args:
        model: the causal LM.
        cache: a prefilled static cache (a :class:`StaticSparseCache` must be prepared: :meth:`StaticSparseCache.
            prepare`, which compiling or capturing cannot do).
        attention_mask: ``[B, n]`` mask of the prefill (0 = left padding) or None (no padding); it is padded to the
            cache's capacity with ones and kept in a static buffer (decode tokens are real).

    Call with ``input_ids [B, 1]`` and ``position_ids [B, 1]``; returns the last position's logits ``[B, vocab]``
    (a static buffer when replayed from a graph: copy it to keep it across steps).
    """

    def __init__(self, model: torch.nn.Module, cache: Cache, attention_mask: torch.Tensor | None = None) -> None:
        self.model = model
        self.cache = cache
        layer = cache.layers[0]
        if not getattr(layer, "is_initialized", False):
            raise KvprismError("StaticDecodeStep needs a prefilled cache")
        if isinstance(cache, StaticSparseCache) and not cache.prepared:
            raise KvprismError("StaticDecodeStep: call cache.prepare() after the prefill first")
        b, dev = layer.batch_size, layer.device
        self.input_ids = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.position_ids = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.attention_mask: torch.Tensor | None = None
        if attention_mask is not None:
            cap = layer.max_cache_len
            mask = torch.ones(b, cap, dtype=torch.long, device=dev)
            mask[:, : attention_mask.shape[1]] = attention_mask.to(dev)
            self.attention_mask = mask
        self._fn = self._forward
        self.graph: Any = None
        self._graph_out: torch.Tensor | None = None
        self.compiled = False
        self._dense_len: int | None = None
        from kvprism.hf.cache import cache_kwargs

        self._cache_kwargs = cache_kwargs(model, cache)  # looked up outside any compiled region

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.attention_mask,
            use_cache=True,
            logits_to_keep=1,
            **self._cache_kwargs,
        )
        return out.logits[:, -1]

    def compile(self, **kwargs: Any) -> StaticDecodeStep:
        """Compile the step with ``torch.compile(fullgraph=True, **kwargs)`` (a graph break is an error)."""
        self._fn = torch.compile(self._forward, fullgraph=True, **kwargs)
        self.compiled = True
        return self

    def _claim(self, eager: bool) -> None:
        """The host-side capacity check of one step. An eager step through a StaticSparseCache counts itself (in
        ``update``); a compiled or replayed step runs no Python, so it is counted here."""
        if isinstance(self.cache, StaticSparseCache):
            if not eager:
                self.cache.claim(1)
            return
        # transformers' StaticCache: the host cannot see its device-side length; count it here (one sync, once)
        layer = self.cache.layers[0]
        if self._dense_len is None:
            self._dense_len = int(layer.cumulative_length)
        if self._dense_len + 1 > layer.max_cache_len:
            raise KvprismError(
                f"StaticCache max_cache_len = {layer.max_cache_len}: it holds {self._dense_len} tokens and cannot "
                "take one more"
            )
        self._dense_len += 1

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        self._claim(eager=self.graph is None and not self.compiled)
        if self.graph is not None:
            self.input_ids.copy_(input_ids)
            self.position_ids.copy_(position_ids)
            self.graph.replay()
            return self._graph_out
        if self.compiled:
            self.input_ids.copy_(input_ids)
            self.position_ids.copy_(position_ids)
            return self._fn(self.input_ids, self.position_ids)
        return self._fn(input_ids, position_ids)

    @torch.inference_mode()
    def capture(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Run one real decode step eagerly on a side stream (warm-up: Triton compilation, cuBLAS workspaces), then
        capture the step into a CUDA graph that later calls replay; returns the warm-up step's logits (a copy)."""
        if not torch.cuda.is_available() or self.input_ids.device.type != "cuda":
            raise KvprismError("StaticDecodeStep.capture needs a CUDA device and a cache on it")
        self._claim(eager=True)  # the warm-up step; the capture itself writes nothing
        self.input_ids.copy_(input_ids)
        self.position_ids.copy_(position_ids)
        stream = torch.cuda.Stream(device=self.input_ids.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            first = self._forward(self.input_ids, self.position_ids).clone()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_out = self._forward(self.input_ids, self.position_ids)
        self.graph = graph
        return first
