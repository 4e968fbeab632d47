"""One sparse decode step of one layer, top to bottom: layout -> sign -> score and select -> plan -> attend.

    pipe = DecodePipeline(sel, num_layers, num_kv_heads, head_mask)      # SparseCache builds one
    out = pipe.step(layer_idx, query, key, value, attention_mask, scaling, prefill=record)

:meth:`DecodePipeline.step` is the whole decode step of a layer, in the order a reader follows it:

1. **layout** -- the step's :class:`~kvprism.layout.BlockLayout` (padding, sink blocks, candidate blocks, tail), built
   once per step from the attention mask and shared by every layer;
2. **sign** -- the layer's projection is fitted on the prefill once (or adopted from :func:`prepare_prefill
   <kvprism.hf.cache.prepare_prefill>`), and the signatures of blocks completed since the last step are programmed
   into the layer's scorer (:class:`~kvprism.selection.BlockSelector`);
3. **score and select** -- the scorer scores the candidate blocks against the query; tie-aware top-k
   (:func:`kvprism.layout.topk_blocks`), in the fused score + top-k kernel where it applies;
4. **plan** -- the tokens to read: :meth:`BlockLayout.gather_plan`;
5. **attend** -- exact attention over those tokens only: the torch gather path (any device, any mask) or the Triton
   kernel reading the selected blocks in place (CUDA, plain layout; ``impl``).

Nothing is recorded inside the step: observers (read statistics, traces, timings) subscribe to :attr:`hooks` and get
a :class:`StepEvent` after each layer-step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from kvprism import kernels as _kernels
from kvprism.errors import ConfigError, KvprismError
from kvprism.hf.attention import PrefillQueries, key_validity, sparse_attend
from kvprism.kernels import IMPLS, resolve_impl
from kvprism.layout import BlockGeometry, BlockLayout, GatherPlan
from kvprism.oracle import oracle_blocks
from kvprism.scorers import group_scorers
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures, fit_uses_queries
from kvprism.selection import carry as _carry

__all__ = [
    "IMPLS",
    "DecodePipeline",
    "PreparedLayer",
    "StepEvent",
    "fit_on_prefill",
    "resolve_impl",
    "triton_blocker",
]


def triton_blocker(
    device: torch.device,
    head_dim: int,
    value_dim: int,
    dtype: torch.dtype,
    cache_dtypes: tuple[torch.dtype, ...],
    plain: bool,
) -> str | None:
    """Why the Triton attention kernel cannot run a step with these tensors (None: it can): CUDA tensors, the
    ``triton`` package, no masked cached key (``plain``), a supported head dim and dtype, equal key / value head dims
    and cache dtypes equal to the query's. The dynamic and the static caches decide with it."""
    if device.type != "cuda":
        return f"tensors on {device.type}, not cuda"
    if not _kernels.triton_available():
        return "the 'triton' package is not installed"
    if not plain:
        return "the step masks some cached keys (left padding or a sliding window)"
    if head_dim not in _kernels.TRITON_HEAD_DIMS or dtype not in _kernels.TRITON_DTYPES:
        return f"head dim {head_dim} / dtype {dtype} (needs {_kernels.TRITON_HEAD_DIMS}, fp16/bf16/fp32)"
    if value_dim != head_dim:
        return f"value head dim {value_dim} differs from the query head dim {head_dim}"
    if any(d != dtype for d in cache_dtypes):
        return f"cache dtypes {'/'.join(map(str, cache_dtypes))} differ from the query dtype {dtype}"
    return None


def fit_on_prefill(
    selector: BlockSelector,
    keys: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    prefill: PrefillQueries | None,
    owner: str,
) -> None:
    """Fit ``selector``'s projection (and probe) on a prefill's keys ``[B, H, n, D]`` (``valid [B, n]``), with its
    recorded queries where the settings need them (:func:`~kvprism.selection.fit_uses_queries`): the one fit of the
    dynamic pipeline and of the static cache. ``owner`` names the cache in the error when the queries are missing."""
    sel = selector.sel
    queries = query_pos = None
    if fit_uses_queries(sel, keys.shape[2] // sel.block_size):
        if prefill is None:
            raise ConfigError(
                f"SelectionConfig projection = {sel.projection!r} / signature = {sel.signature!r} needs the "
                f"prefill queries: prefill through the {owner}, or prefill the dense cache with the "
                "model's attention set to 'kvprism' (constructing any SparseCache does that) before "
                f"{owner}.from_prefilled"
            )
        queries, query_pos = prefill.grouped(keys.shape[1]), prefill.positions
    selector.fit(keys, valid, scaling=scaling, queries=queries, query_pos=query_pos)


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


@dataclasses.dataclass(frozen=True)
class StepEvent:
    """One layer-step, as observers see it: the query ``[B, Hq, D]``, the selected blocks ``[B, H, k]`` (``-1``
    unused), the gather plan (tokens read), the cached length, which top-k path (``"torch"`` / ``"kernel"``) and
    attention kernel (``"torch"`` / ``"triton"``) ran, and with ``profile`` the wall seconds of selection (layout
    to plan) and attention; with ``SelectionConfig.carry``, ``carried [B, H, c]``: the blocks carried into this
    step's selection (``-1`` = none), None without carry."""

    layer_idx: int
    query: torch.Tensor
    blocks: torch.Tensor
    plan: GatherPlan
    kv_len: int
    select_impl: str
    attend_impl: str
    select_s: float | None = None
    attend_s: float | None = None
    carried: torch.Tensor | None = None


class DecodePipeline:
    """The sparse decode step of every layer of one cache (see module doc).

    Args:
        sel: the selection config.
        num_layers, num_kv_heads: the model's shape.
        head_mask: ``[L, H]`` bool, False = streaming head (sink + tail only).
        impl: attention kernel (:data:`IMPLS`).
        profile: time selection and attention per layer-step (synchronises the GPU) into :attr:`StepEvent.select_s`
            / ``attend_s``.
        oracle: select by the dense attention mass of each step's query instead of the scorer
            (:func:`kvprism.oracle.oracle_blocks`): the reference row of an evaluation, never a method.
    """

    def __init__(
        self,
        sel: SelectionConfig,
        num_layers: int,
        num_kv_heads: int,
        head_mask: torch.Tensor,
        impl: str = "auto",
        profile: bool = False,
        oracle: bool = False,
    ) -> None:
        self.sel = sel
        self.oracle = oracle
        self.impl = resolve_impl(impl, owner="DecodePipeline")
        self.profile = profile
        self.geometry = BlockGeometry.of(sel)
        self.selectors = [BlockSelector(sel, i, num_kv_heads, head_mask[i]) for i in range(num_layers)]
        # photonic layers: one drift sample and W_eff refresh per decode step for all layers (same physics and draws)
        self.engine_group = group_scorers(self.selectors)
        self.prepared: list[PreparedLayer | None] = [None] * num_layers
        self.hooks: list[Callable[[StepEvent], Any]] = []
        self._carry: list[torch.Tensor | None] = [None] * num_layers  # [B, H, carry] blocks kept for the next step
        self._layout_key: tuple | None = None
        self._layout: BlockLayout | None = None
        self._valid: torch.Tensor | None = None  # [B, T] key validity of the current step
        self._plain = False  # the step's keys are all real and unmasked (no padding / sliding window)
        # Triton launch geometry + fp32 workspace per problem shape, shared by the layers
        self._kernel_plans: dict[tuple, tuple[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
        # per shape: the selected blocks' masses [B, H, k] and the kernel's per-tile (max, sum) pairs (carry)
        self._mass_buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------------ the step
    def step(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        prefill: PrefillQueries | None = None,
    ) -> torch.Tensor:
        """One decode step of layer ``layer_idx``: ``query [B, Hq, D]`` -> attention output ``[B, Hq, D]`` over the
        selected tokens only. ``key/value [B, H, T, D]``: everything cached (post-RoPE; the prefill is ``T - 1``
        tokens at the first step); ``attention_mask``: the step's 4D mask or None; ``prefill``: the prefill queries
        recorded for this layer (needed once, by ``projection='learned'`` / ``signature='reps'``)."""
        t0 = time.perf_counter() if self.profile else 0.0
        b, hq, d = query.shape
        h = key.shape[1]
        selector = self.selectors[layer_idx]
        layout = self.layout(attention_mask, b, key.shape[2], key.device)  # 1. layout
        self.sign(layer_idx, key, scaling, prefill)  # 2. sign
        triton = self.attends_with_triton(query, key, value)
        carry = _carry.effective_carry(self.sel.carry, self.sel.k) > 0 and not self.oracle
        # plain top-k over one-row signatures: what the fused score + top-k kernel computes (select_range falls back to
        # select otherwise, which with carried blocks must exclude them before a top-p budget normalises)
        fused = selector.sel.budget == "topk" and selector.rows_per_block == 1 and selector.memory is None
        carried = None  # the blocks carried into this step's selection (None: none kept, or no carry)
        group = query.reshape(b, h, hq // h, d)
        if self.oracle:  # 3. the reference: top-k by the dense attention mass of this query (reads every key)
            k = selector.sel.k
            blocks = oracle_blocks(group, key, layout, scaling, k, selector.n_blocks, selector.head_mask)
            select_impl = "oracle"
        elif triton and selector.sel.scorer == "exact" and selector.n_blocks and not (carry and not fused):
            # 3. score and select
            # fused score + top-k kernel: without padding the candidates are one contiguous range of blocks
            lo, hi = layout.candidate_range(selector.n_blocks)
            blocks, select_impl = selector.select_range(group, lo, hi), "kernel"
            if carry:
                blocks, carried = self.carry_into_kernel_selection(layer_idx, blocks, layout)
        else:
            cand = layout.candidate_mask(n=selector.n_blocks).expand(b, h, -1)
            (blocks, carried), select_impl = self.select_with_carry(layer_idx, group, cand), "torch"
        plan = layout.gather_plan(blocks)  # 4. plan
        t1 = _now(query.device) if self.profile else 0.0
        if triton:  # 5. attend
            out = self.attend_triton(
                query, key, value, blocks, layout, scaling, carry_layer=layer_idx if carry else None
            )
        elif carry:
            out, mass = sparse_attend(query, key, value, plan.token_idx, plan.token_ok, scaling, slot_mass=True)
            self.keep_carry(
                layer_idx, blocks, _carry.block_mass_from_slots(mass, blocks.shape[-1], self.sel.block_size)
            )
        else:
            out = sparse_attend(query, key, value, plan.token_idx, plan.token_ok, scaling)
        t2 = _now(query.device) if self.profile else 0.0
        selector.advance(1)
        event = StepEvent(
            layer_idx,
            query,
            blocks,
            plan,
            key.shape[2],
            select_impl,
            "triton" if triton else "torch",
            (t1 - t0) if self.profile else None,
            (t2 - t1) if self.profile else None,
            carried,
        )
        for hook in self.hooks:
            hook(event)
        return out

    # ------------------------------------------------------------------------------------------------ 3. carry
    def select_with_carry(
        self, layer_idx: int, group: torch.Tensor, cand: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``SelectionConfig.carry``: the blocks kept from the previous step (:meth:`keep_carry`) that are still
        candidates, first, then the scorer's best of the other candidates; ``[B, H, k]`` (-1 = none), the carried
        blocks filling their slots only where they exist. Without carried blocks (``carry`` 0, or the first step)
        this is the scorer's selection, :meth:`BlockSelector.select`. Returns (selection, the carried blocks
        ``[B, H, c]`` or None)."""
        selector = self.selectors[layer_idx]
        prev = self._carry[layer_idx]
        if prev is None or selector.n_blocks == 0:
            return selector.select(group, cand), None
        carried = _carry.carried_candidates(prev, cand)
        rest = selector.select(group, _carry.without_carried(cand, carried))
        return _carry.merge_carried(carried, rest, self.sel.k), carried

    def carry_into_kernel_selection(
        self, layer_idx: int, blocks: torch.Tensor, layout: BlockLayout
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`select_with_carry` for the fused score + top-k kernel's ``blocks [B, H, k]`` (its top-k over
        every candidate): the carried blocks first, then the kernel's best without them."""
        prev = self._carry[layer_idx]
        if prev is None:
            return blocks, None
        b, h, _ = blocks.shape
        cand = layout.candidate_mask(n=self.selectors[layer_idx].n_blocks).expand(b, h, -1)
        carried = _carry.carried_candidates(prev, cand)
        return _carry.merge_carried(carried, _carry.drop_carried(blocks, carried), self.sel.k), carried

    def keep_carry(self, layer_idx: int, blocks: torch.Tensor, block_mass: torch.Tensor) -> None:
        """Remember, for the next step of layer ``layer_idx``, the ``carry`` selected ``blocks [B, H, k]`` that
        took the most attention mass (``block_mass [B, H, k]``, summed over the query group)."""
        self._carry[layer_idx] = _carry.kept_blocks(
            blocks, block_mass, _carry.effective_carry(self.sel.carry, self.sel.k)
        )

    # ------------------------------------------------------------------------------------------------ 1. layout
    def layout(self, attention_mask: torch.Tensor | None, batch: int, kv_len: int, device: torch.device) -> BlockLayout:
        """The step's :class:`~kvprism.layout.BlockLayout`, built once per decode step (every layer gets the same mask
        object). Without masked keys the layout is plain (what the Triton kernels take)."""
        key = (None if attention_mask is None else id(attention_mask), batch, kv_len)
        if self._layout_key != key:
            valid = key_validity(attention_mask, batch, kv_len, device)
            # one host sync per step (none without a mask)
            plain = attention_mask is None or bool(valid.all())
            self._layout = BlockLayout.uniform(batch, kv_len, self.geometry, device, None if plain else valid)
            self._valid = valid
            self._layout_key = key
            self._plain = plain
        assert self._layout is not None
        return self._layout

    # ------------------------------------------------------------------------------------------------ 2. sign
    def sign(self, layer_idx: int, key: torch.Tensor, scaling: float, prefill: PrefillQueries | None) -> None:
        """Fit the layer's projection on the prefill (once; or adopt the one :func:`prepare_prefill` computed) and
        program the signatures of all complete blocks not yet programmed. Uses the current step's key validity."""
        selector = self.selectors[layer_idx]
        sel = selector.sel
        valid = self._valid
        assert valid is not None, "layout() runs before sign()"
        bs = sel.block_size
        length = key.shape[2]
        nb = length // bs
        prep, self.prepared[layer_idx] = self.prepared[layer_idx], None
        if not selector.fitted and prep is not None:
            n_prep = prep.valid.shape[-1] // bs  # complete blocks signed at the prefill
            if n_prep <= nb and torch.equal(prep.valid, valid[:, : n_prep * bs]):
                selector.adopt(
                    prep.proj, prep.signatures, temperature=prep.temperature, probe=prep.probe, scaling=scaling
                )
        if not selector.fitted:
            n_pre = length - 1  # the prefill: the cache before this decode step's own token
            # fitted on the prefill only (as prepare_prefill does)
            fit_on_prefill(selector, key[:, :, :n_pre], valid[:, :n_pre], scaling, prefill, "SparseCache")
        done = selector.n_blocks
        if nb > done:
            sig = block_signatures(
                sel,
                selector.proj,
                key[:, :, done * bs : nb * bs],
                valid[:, done * bs : nb * bs],
                layer_idx=layer_idx,
                probe=selector.probe,
            )
            if done == 0:
                selector.program(sig)
            else:
                selector.append(sig)

    # ------------------------------------------------------------------------------------------------ 5. attend
    def attends_with_triton(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Whether this layer-step attends with the Triton kernel (see ``impl``); raises where ``"triton"`` was
        asked for and cannot run."""
        if self.impl == "torch":
            return False
        why = triton_blocker(
            query.device, query.shape[-1], value.shape[-1], query.dtype, (key.dtype, value.dtype), self._plain
        )
        if why is None:
            return True
        if self.impl == "triton":
            raise KvprismError(f"impl='triton' cannot run this step: {why}")
        return False

    def attend_triton(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocks: torch.Tensor,
        layout: BlockLayout,
        scaling: float,
        carry_layer: int | None = None,
    ) -> torch.Tensor:
        """Attention of ``query [B, Hq, D]`` over ``blocks [B, H, k]`` + sink + tail with the Triton kernel of
        :mod:`kvprism.kernels`, reading the tokens :meth:`BlockLayout.gather_plan` lists in place. Its launch
        geometry and fp32 workspaces are built once per shape and reused by every layer. ``carry_layer``: also take
        the selected blocks' attention masses from the kernel and keep that layer's carried blocks
        (:meth:`keep_carry`)."""
        from kvprism.kernels.triton_decode import (
            block_mass_workspace,
            decode_plan,
            decode_workspace,
            sparse_decode_attention_triton,
        )

        b, hq, d = query.shape
        h = key.shape[1]
        k = blocks.shape[-1]
        shape = (b, hq, h, d, k, query.device)
        if shape not in self._kernel_plans:
            plan = decode_plan(b, hq, h, d, k, layout.geometry, query.device)
            self._kernel_plans[shape] = (plan, decode_workspace(b, h, hq // h, d, plan, query.device))
        plan, workspace = self._kernel_plans[shape]
        if carry_layer is None:
            return sparse_decode_attention_triton(
                query, key, value, blocks, layout, scaling, plan=plan, workspace=workspace
            )
        if shape not in self._mass_buffers:
            self._mass_buffers[shape] = (
                torch.empty(b, h, k, dtype=torch.float32, device=query.device),
                block_mass_workspace(b, h, hq // h, k, plan, query.device),
            )
        mass, mass_workspace = self._mass_buffers[shape]
        out = sparse_decode_attention_triton(
            query,
            key,
            value,
            blocks,
            layout,
            scaling,
            plan=plan,
            workspace=workspace,
            block_mass=mass,
            mass_workspace=mass_workspace,
        )
        self.keep_carry(carry_layer, blocks, mass)
        return out


def _now(device: torch.device) -> float:
    """Wall time after the device's queued work finished (profiling only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
