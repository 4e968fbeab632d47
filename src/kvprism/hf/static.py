"""``StaticSparseCache``: block-sparse decode with fixed shapes, for ``torch.compile`` and CUDA graphs.

    sel = SelectionConfig(block_size=128, k=32, window=256, projection="none", scorer="exact")
    cache = StaticSparseCache(model, sel, max_cache_len=32768 + 256)   # switches the model to "kvprism" attention
    logits = chunked_prefill(model, prompt_ids, cache)                  # dense prefill through the cache
    cache.prepare()                                                     # fit the projection, sign the prefill blocks
    step = StaticDecodeStep(model, cache)                               # static input buffers
    step.capture()                                                      # one CUDA graph per decode step (CUDA only)
    logits = step(next_ids, positions)                                  # replays the graph; [B, vocab]
    cache.stats_summary()                                               # read fraction (reads the device counters)

Everything a decode step touches is allocated once, up to ``max_cache_len`` tokens (rounded up to whole blocks) and
the prefill's batch: keys/values ``[B, H, T, D]``, one signature slot per block ``[B, H, T / block_size, w]`` (fp32),
the projection, the read counters. A step has no data-dependent shape, no host synchronisation and no Python state
that changes with the tokens, so one decode step of the whole model (projections, selection, sparse attention of
every layer) is one static graph:

1. the new key/value is written at the cache's device-side length (``index_copy_``, as transformers' ``StaticCache``);
2. the block holding the new token is signed again and its slot overwritten (a block becomes a candidate only once it
   is complete, which the device-side length decides);
3. every signature slot is scored against the encoded query; non-candidates are masked; fixed-size top-k with the
   ties of :func:`kvprism.layout.topk_blocks` (the lower block id first);
4. the tokens read are the sink blocks, the ``k`` selected blocks and the tail (window + incomplete last block), as
   a fixed-size index list with a validity mask (the roles of :mod:`kvprism.layout`);
5. attention over those tokens: a fixed-size gather + masked softmax (``impl="torch"``, any device, left padding
   allowed), or on CUDA the fused score + top-k and split-K sparse-attention Triton kernels of
   :mod:`kvprism.kernels` (``impl="triton"``, no padding), which take the device-side lengths.

Read counters are accumulated on the device and read on demand (:meth:`StaticSparseCache.stats_summary`).

Scope. The static path uses the ``exact`` scorer only: the photonic scorer (noise, drift, programming events) runs
on the dynamic :class:`kvprism.hf.cache.SparseCache`. Projections ``none``, ``random`` and ``pca`` (fitted once on
the prefill by :meth:`StaticSparseCache.prepare`, outside any graph); signatures ``mean`` and ``minmax``; budget
``topk``; one-stage selection (``rerank = 1``). Anything else is a :class:`~kvprism.errors.ConfigError` naming the
field. With these settings a decode step selects and reads the same tokens as
:class:`~kvprism.hf.cache.SparseCache` (``impl="torch"``).

Overflow. The keys/values hold at most :attr:`StaticSparseCache.max_cache_len` tokens; an update beyond that raises
a :class:`~kvprism.errors.KvprismError` before anything is written. The check is on the host: eager ``update`` makes
it, and :class:`StaticDecodeStep` makes it before every compiled call or graph replay (inside a graph the host sees
nothing, so a graph replayed by other means is not checked).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, StaticLayer

from kvprism import kernels as _kernels
from kvprism.errors import ConfigError, KvprismError
from kvprism.hf import attention as _attn
from kvprism.hf.pipeline import resolve_impl
from kvprism.layout import BlockGeometry, BlockLayout, candidate_blocks, row_bounds, topk_blocks
from kvprism.selection import (
    SelectionConfig,
    block_signatures,
    fit_layer_projection,
    resolve_heads,
)
from kvprism.signatures import SIGNATURES, project

__all__ = [
    "STATIC_PROJECTIONS",
    "STATIC_SIGNATURES",
    "StaticDecodeStep",
    "StaticSparseCache",
    "StaticSparseLayer",
    "check_static_config",
    "plain_tokens_read",
    "static_attend",
    "static_candidates",
    "static_gather_plan",
    "static_geometry",
    "step_validity",
]

#: projections the static path fits (once, at :meth:`StaticSparseCache.prepare`)
STATIC_PROJECTIONS = ("none", "random", "pca")
#: signatures the static path computes inside the step
STATIC_SIGNATURES = ("mean", "minmax")


def check_static_config(sel: SelectionConfig) -> None:
    """Raise :class:`ConfigError` for a selection the static path does not implement (see the module docstring)."""
    if not isinstance(sel, SelectionConfig):
        raise ConfigError(f"StaticSparseCache needs a SelectionConfig, got {type(sel).__name__}")
    if sel.scorer != "exact":
        raise ConfigError(
            f"SelectionConfig.scorer = {sel.scorer!r} is not supported by StaticSparseCache; allowed: 'exact' "
            "(the photonic scorer runs on the dynamic kvprism.SparseCache)"
        )
    if sel.projection not in STATIC_PROJECTIONS:
        raise ConfigError(
            f"SelectionConfig.projection = {sel.projection!r} is not supported by StaticSparseCache; allowed: "
            f"{', '.join(map(repr, STATIC_PROJECTIONS))} (use the dynamic kvprism.SparseCache for the others)"
        )
    if sel.signature not in STATIC_SIGNATURES:
        raise ConfigError(
            f"SelectionConfig.signature = {sel.signature!r} is not supported by StaticSparseCache; allowed: "
            f"{', '.join(map(repr, STATIC_SIGNATURES))}"
        )
    if sel.budget != "topk":
        raise ConfigError(
            f"SelectionConfig.budget = {sel.budget!r} is not supported by StaticSparseCache; allowed: 'topk'"
        )
    if sel.rerank != 1:
        raise ConfigError(
            f"SelectionConfig.rerank = {sel.rerank} is not supported by StaticSparseCache; allowed: 1 (two-stage "
            "selection rescores a photonic scorer's candidates: use the dynamic kvprism.SparseCache)"
        )


# ------------------------------------------------------------------------------------------ fixed-shape step parts
def static_geometry(length: torch.Tensor, geometry: BlockGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n_full, tail_start, candidate_end)`` of a cache holding ``length`` tokens (tensors shaped like ``length``):
    complete blocks ``L // B``, first tail position ``max(0, min(n_full*B, L - W))`` and one past the last block that
    starts before the tail, ``ceil(tail_start / B)`` (:func:`kvprism.layout.row_bounds`)."""
    return row_bounds(length, geometry)


def step_validity(attention_mask: torch.Tensor | None, length: torch.Tensor, batch: int, capacity: int) -> torch.Tensor:
    """``[B, T]`` bool: the cached keys the step's query may attend -- the last query row of the step's 4D mask
    (padding excluded) and, in any case, positions below the device-side ``length``."""
    t = torch.arange(capacity, device=length.device)
    held = (t < length)[None].expand(batch, capacity)
    if attention_mask is None:
        return held
    return _attn.key_validity(attention_mask, batch, capacity, length.device) & held


def static_candidates(
    valid: torch.Tensor, length: torch.Tensor, geometry: BlockGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(candidates [B, N], first_block [B])`` for ``valid [B, T]`` (``T = N * block_size``): complete blocks from
    ``first_block + sink_blocks`` on that start before the tail and hold a real token before it; ``first_block`` is
    the block of each row's first real token. Same set as :attr:`kvprism.layout.BlockLayout.candidates`."""
    _, tail_start, cand_end = static_geometry(length.reshape(1), geometry)
    first_block = torch.div(valid.int().argmax(-1), geometry.block_size, rounding_mode="floor")  # [B]
    n = valid.shape[1] // geometry.block_size
    return candidate_blocks(first_block, cand_end, tail_start, valid, n, geometry), first_block


def static_gather_plan(
    blocks: torch.Tensor,
    valid: torch.Tensor,
    length: torch.Tensor,
    first_block: torch.Tensor,
    geometry: BlockGeometry,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens one layer reads, as a fixed-size list per (batch row, KV head): ``(token_idx, token_ok)``, both
    ``[B, H, M]`` with ``M = sink_blocks*B + max(W, B - 1, 1) + k*B`` -- the sink blocks' tokens before the tail, the
    tail ``[tail_start, L)``, then the candidate-role tokens of the selected ``blocks [B, H, k]`` (``-1`` = none).
    Padding slots point at position 0 with ``token_ok`` False. Reads :meth:`BlockLayout.read_mask` for distinct
    candidate blocks."""
    b, h, k = blocks.shape
    t = valid.shape[1]
    bs = geometry.block_size
    dev = blocks.device
    _, tail_start, _ = static_geometry(length, geometry)
    lens = length.long()
    ar = torch.arange(bs, device=dev)
    # sink blocks (their tokens before the tail)
    sink_pos = (first_block[:, None] + torch.arange(geometry.sink_blocks, device=dev)[None])[..., None] * bs + ar
    sink_pos = sink_pos.reshape(b, -1)  # [B, S*bs]
    sink_ok = (sink_pos < tail_start).expand(b, -1)
    # tail: the window and the incomplete last block
    m_tail = min(max(geometry.window, bs - 1, 1), t)
    off = torch.arange(m_tail, device=dev)
    tail_pos = tail_start + off[None].expand(b, m_tail)
    tail_ok = (off[None] < (lens - tail_start)).expand(b, m_tail)
    fixed_pos = torch.cat([sink_pos, tail_pos], dim=-1)
    fixed_ok = torch.cat([sink_ok, tail_ok], dim=-1) & (fixed_pos < t)
    fixed_pos = torch.where(fixed_ok, fixed_pos, torch.zeros_like(fixed_pos))
    fixed_ok = fixed_ok & torch.gather(valid, 1, fixed_pos)
    # selected blocks: their tokens before the tail
    sel_pos = (blocks[..., None].long() * bs + ar).reshape(b, h, k * bs)
    sel_ok = (blocks[..., None] >= 0).expand(b, h, k, bs).reshape(b, h, k * bs) & (sel_pos < tail_start)
    sel_pos = torch.where(sel_ok, sel_pos, torch.zeros_like(sel_pos))
    sel_ok = sel_ok & torch.gather(valid[:, None].expand(b, h, t), 2, sel_pos)
    mf = fixed_pos.shape[1]
    idx = torch.cat([fixed_pos[:, None].expand(b, h, mf), sel_pos], dim=-1)
    ok = torch.cat([fixed_ok[:, None].expand(b, h, mf), sel_ok], dim=-1)
    return idx, ok


def static_attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_idx: torch.Tensor,
    token_ok: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Exact attention of ``query [B, Hq, D]`` over the listed tokens only (fixed-size gather + masked softmax;
    the arithmetic of :func:`kvprism.hf.attention.sparse_attend`): ``[B, Hq, Dv]`` in the query dtype."""
    kg = torch.gather(key, 2, token_idx[..., None].expand(-1, -1, -1, key.shape[-1]))  # [B, H, M, D]
    vg = torch.gather(value, 2, token_idx[..., None].expand(-1, -1, -1, value.shape[-1]))
    return _attn.attend_gathered(query, kg, vg, token_ok, scaling)


def plain_tokens_read(blocks: torch.Tensor, length: torch.Tensor, geometry: BlockGeometry) -> torch.Tensor:
    """``[B, H]`` tokens a step reads without padding (what the Triton kernel reads): sink tokens before the tail,
    the tail, and each selected block's tokens before the tail. Equals ``token_ok.sum(-1)`` of
    :func:`static_gather_plan` for a padding-free cache."""
    bs = geometry.block_size
    _, tail_start, _ = static_geometry(length, geometry)
    lens = length.long()
    fixed = torch.minimum(tail_start, torch.full_like(tail_start, geometry.sink_tokens)) + (lens - tail_start)
    per_block = (tail_start - blocks.long() * bs).clamp(0, bs)
    per_block = torch.where(blocks >= 0, per_block, torch.zeros_like(per_block))
    return fixed + per_block.sum(-1)


# ------------------------------------------------------------------------------------------------------- the cache
class StaticSparseLayer(StaticLayer):
    """One layer: transformers' static keys/values (``[B, H, T, D]``, device-side length) plus one signature slot
    per block, the projection and the layer's read counters, all allocated once."""

    def __init__(self, cache: StaticSparseCache, layer_idx: int, max_cache_len: int) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.cache = cache
        self.layer_idx = layer_idx
        self.host_length = 0  # tokens written, as the host counts them (the overflow check)
        self.signatures: torch.Tensor | None = None  # [B, H, N, w] float32
        self.proj: torch.Tensor | None = None  # [B, H, D, d_sig] float32, or None (projection 'none')
        self.counters: dict[str, torch.Tensor] = {}

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        sel = self.cache.sel
        b, h = key_states.shape[:2]
        d = key_states.shape[-1]
        width = SIGNATURES[sel.signature].width(d if sel.projection == "none" else sel.d_sig)
        n = self.max_cache_len // sel.block_size
        dev = key_states.device
        self.signatures = torch.zeros(b, h, n, width, dtype=torch.float32, device=dev)
        # read counters, summed over decode steps on the device
        self.counters = {
            "steps": torch.zeros((), dtype=torch.int64, device=dev),
            "attended": torch.zeros(b, h, dtype=torch.int64, device=dev),
            "cached": torch.zeros(b, dtype=torch.int64, device=dev),
            "fraction_sum": torch.zeros(b, h, dtype=torch.float64, device=dev),
            "fraction_max": torch.zeros(b, h, dtype=torch.float64, device=dev),
        }
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.signatures)
            for t in self.counters.values():
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

    def reset(self) -> None:
        super().reset()
        self.host_length = 0
        if self.signatures is not None:
            self.signatures.zero_()
        for t in self.counters.values():
            t.zero_()

    def crop(self, tokens_to_remove: int) -> None:
        raise KvprismError("StaticSparseCache does not support cropping (assisted / speculative decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise KvprismError("StaticSparseCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise KvprismError("StaticSparseCache does not support expanding the batch (num_return_sequences > 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise KvprismError("StaticSparseCache does not support selecting batch rows")

    # ---------------------------------------------------------------- prefill
    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill an empty layer with already computed post-RoPE ``keys/values [B, H, n, D]`` (copied)."""
        if self.host_length:
            raise KvprismError("StaticSparseLayer.load needs an empty layer")
        self.update(keys, values)

    def prepare(self, valid: torch.Tensor, scaling: float) -> None:
        """Fit the projection on the ``n`` cached prefill tokens (``valid [B, n]``) and sign their complete blocks
        (eager, once, before the first decode step)."""
        sel = self.cache.sel
        n = self.host_length
        keys = self.keys[:, :, :n]
        proj, _ = fit_layer_projection(sel, self.layer_idx, keys, valid, scaling=scaling)
        self.proj = None if proj is None else proj.float().contiguous()
        nb = n // sel.block_size
        self.signatures.zero_()
        if nb:
            end = nb * sel.block_size
            sig = block_signatures(sel, self.proj, keys[:, :, :end], valid[:, :end], layer_idx=self.layer_idx)
            self.signatures[:, :, :nb] = sig

    # ---------------------------------------------------------------- one decode step (fixed shapes)
    def sign_current_block(self, valid: torch.Tensor) -> None:
        """Sign the block holding the newest token and overwrite its slot (the block is a candidate only once it is
        complete: :func:`static_candidates`)."""
        bs = self.cache.sel.block_size
        j = torch.div(self.cumulative_length.long() - 1, bs, rounding_mode="floor").reshape(1)
        pos = j * bs + torch.arange(bs, device=j.device)
        kb = self.keys.index_select(2, pos)  # [B, H, bs, D]
        vb = valid.index_select(1, pos)  # [B, bs]
        sig = block_signatures(self.cache.sel, self.proj, kb, vb, layer_idx=self.layer_idx)  # [B, H, 1, w]
        self.signatures.index_copy_(2, j, sig)

    def encode_query(self, query: torch.Tensor) -> torch.Tensor:
        """``query [B, H, G, D]`` -> encoded ``[B, H, G, w]`` (as :meth:`BlockSelector.encode_query`)."""
        sel = self.cache.sel
        enc = SIGNATURES[sel.signature].encode_query(project(query.float(), self.proj))
        return enc.clamp_min(0) if sel.sign == "relu" else enc

    def scores(self, enc: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, H, N]`` of every signature slot (as the exact backend: GQA sum of the encoded queries, or the
        max over the group's heads)."""
        if self.cache.sel.gqa_reduce == "sum":
            return torch.matmul(self.signatures, enc.sum(2).unsqueeze(-1)).squeeze(-1)
        return torch.matmul(enc, self.signatures.transpose(-1, -2)).amax(2)

    def record(self, attended: torch.Tensor, cached: torch.Tensor) -> None:
        """Add one step's ``attended [B, H]`` / ``cached [B]`` token counts to the device counters."""
        c = self.counters
        frac = attended.double() / cached.clamp_min(1).double()[:, None]
        c["steps"].add_(1)
        c["attended"].add_(attended)
        c["cached"].add_(cached)
        c["fraction_sum"].add_(frac)
        c["fraction_max"].copy_(torch.maximum(c["fraction_max"], frac))


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class StaticSparseCache(Cache):
    """A transformers ``Cache`` with preallocated buffers whose decode step has fixed shapes (module docstring).

    Args:
        model: a Llama / Qwen2 / Mistral-family causal LM without sliding-window layers; its attention is switched
            to ``"kvprism"`` (prefill steps through this cache are dense sdpa, decode steps call
            :meth:`decode_attention`).
        sel: the selection config (:func:`check_static_config` lists what the static path supports).
        max_cache_len: tokens the cache can hold (prefill + decode), rounded up to a whole number of blocks.
        impl: ``"torch"`` (fixed-size gather + masked softmax, any device, left padding allowed), ``"triton"``
            (fused score + top-k and split-K attention kernels: CUDA, no padding) or ``"auto"`` (Triton where it
            can run, decided once by :meth:`prepare`).
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
        self.sel = sel
        self.geometry = BlockGeometry.of(sel)
        self.head_mask = resolve_heads(sel.heads, n_layers, self.num_kv_heads)
        bs = sel.block_size
        cap = -(-int(max_cache_len) // bs) * bs
        _attn.use_kvprism_attention(model)
        self.model_config = model.config
        self.prepared = False
        self.use_triton = False
        self._head_masks: list[torch.Tensor] = []
        self._triton_state: dict[str, Any] = {}
        super().__init__(layers=[StaticSparseLayer(self, i, cap) for i in range(n_layers)])
        self._scalings = [_layer_scaling(model, i) for i in range(n_layers)]

    @property
    def max_cache_len(self) -> int:
        return self.layers[0].max_cache_len

    @property
    def host_length(self) -> int:
        """Tokens in the cache as the host counts them (layer 0)."""
        return self.layers[0].host_length

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
        ``DynamicCache``, left untouched); ``attention_mask`` is the prefill's ``[B, n]`` mask (0 = padding)."""
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
        cache.prepare(attention_mask)
        return cache

    def prepare(self, attention_mask: torch.Tensor | None = None) -> None:
        """After the prefill, before the first decode step (and before compiling or capturing it): fit every layer's
        projection on the prefill, sign its complete blocks, and decide the kernel path (eager; synchronises).

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
        plain = bool(valid.all())
        with torch.inference_mode():
            for layer in self.layers:
                layer.prepare(valid, self._scalings[layer.layer_idx])
        self._head_masks = [m.to(dev) for m in self.head_mask]
        self.use_triton = self._triton_ok(plain, first)
        if self.use_triton:
            self._build_triton_state(first)
        self.prepared = True

    def _triton_ok(self, plain: bool, layer: StaticSparseLayer) -> bool:
        if self.impl == "torch":
            return False
        why = None
        if layer.device.type != "cuda":
            why = f"tensors on {layer.device.type}, not cuda"
        elif not _kernels.triton_available():
            why = "the 'triton' package is not installed"
        elif not plain:
            why = "the prefill has left padding"
        elif layer.k_head_dim not in _kernels.TRITON_HEAD_DIMS or layer.keys.dtype not in _kernels.TRITON_DTYPES:
            why = f"head dim {layer.k_head_dim} / dtype {layer.keys.dtype}"
        elif layer.v_head_dim != layer.k_head_dim:
            why = f"value head dim {layer.v_head_dim} differs from the key head dim {layer.k_head_dim}"
        if why is None:
            return True
        if self.impl == "triton":
            raise KvprismError(f"StaticSparseCache(impl='triton') cannot run: {why}")
        return False

    def _build_triton_state(self, layer: StaticSparseLayer) -> None:
        """Launch geometry, workspaces and length buffers of the Triton kernels, shared by the layers."""
        from kvprism.kernels.triton_decode import decode_plan, decode_workspace, score_plan

        sel = self.sel
        b, h, d = layer.batch_size, layer.num_heads, layer.k_head_dim
        hq = self._num_query_heads()
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

    def _num_query_heads(self) -> int:
        cfg = self.model_config.get_text_config(decoder=True)
        return cfg.num_attention_heads

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
        [B, Hq, D]`` -> ``[B, Hq, D]`` over the selected tokens only; fixed shapes, no host synchronisation."""
        if not self.prepared:
            raise KvprismError(
                "StaticSparseCache: call cache.prepare() after the prefill, before the first decode step "
                "(and before compiling or capturing it)"
            )
        layer: StaticSparseLayer = self.layers[layer_idx]
        sel = self.sel
        b, hq, d = query.shape
        h = key.shape[1]
        length = layer.cumulative_length  # includes this step's token
        valid = step_validity(attention_mask, length, b, layer.max_cache_len)
        layer.sign_current_block(valid)
        enc = layer.encode_query(query.reshape(b, h, hq // h, d))  # [B, H, G, w]
        heads = self._head_masks[layer_idx]
        if self.use_triton:
            out, blocks = self._triton_step(layer, query, key, value, enc, length, scaling, heads)
            attended = plain_tokens_read(blocks, length, self.geometry).expand(b, h)
        else:
            cand, first_block = static_candidates(valid, length, self.geometry)
            cand = cand[:, None] & heads[None, :, None]
            blocks = topk_blocks(layer.scores(enc), cand, sel.k)
            idx, ok = static_gather_plan(blocks, valid, length, first_block, self.geometry)
            out = static_attend(query, key, value, idx, ok, scaling)
            attended = ok.sum(-1)
        layer.record(attended, valid.sum(-1))
        return out

    def _triton_step(self, layer, query, key, value, enc, length, scaling, heads):
        from kvprism.kernels.triton_decode import score_topk_triton, sparse_decode_attention_triton

        st = self._triton_state
        sel = self.sel
        b, h, g, w = enc.shape
        s = sel.sink_blocks
        _, _, cand_end = static_geometry(length, self.geometry)
        st["n_valid"].copy_((cand_end - s).clamp_min(0).expand(b))
        st["seq_lens"].copy_(length.expand(b))
        blocks = st["blocks"]
        if sel.k:
            rows = layer.signatures[:, :, s:]
            q_sig = enc.reshape(b, h * g, w).contiguous()
            score_topk_triton(q_sig, rows, st["n_valid"], sel.k, sel.gqa_reduce, out=blocks, cand=st["cand"])
            blocks.copy_(torch.where(blocks >= 0, blocks + s, blocks).masked_fill(~heads[None, :, None], -1))
        layout = BlockLayout(self.geometry, st["seq_lens"], layer.max_cache_len)
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
        )
        return out, blocks

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


def _layer_scaling(model: torch.nn.Module, layer_idx: int) -> float:
    for mod in _attn.attention_modules(model):
        if mod.layer_idx == layer_idx and hasattr(mod, "scaling"):
            return float(mod.scaling)
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return head_dim**-0.5


# ------------------------------------------------------------------------------------------- the whole-model step
class StaticDecodeStep:
    """One decode step of the whole model from static input buffers: eager, compiled (:meth:`compile`) or replayed
    from a CUDA graph (:meth:`capture`). Works with a :class:`StaticSparseCache` or transformers' ``StaticCache``
    (the dense baseline).

    Args:
        model: the causal LM.
        cache: a prefilled static cache (a :class:`StaticSparseCache` must be prepared).
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
