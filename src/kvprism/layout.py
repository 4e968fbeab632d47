"""The block layout of a decode step: the one definition of which cached tokens are sink, candidate, tail or padding.

For a cache of ``T`` positions (capacity), batch row ``b`` holding ``L = seq_lens[b]`` positions (the rest is unused
capacity) of which ``valid[b]`` marks the real ones (False = left padding or a key masked by a sliding window), and a
:class:`BlockGeometry` ``(block_size B, sink_blocks S, window W)``:

* blocks are aligned to position 0: block ``j`` holds positions ``[j*B, (j+1)*B)``; it is *complete* when
  ``(j+1)*B <= L``; ``n_blocks = L // B`` complete blocks exist (only those have signatures);
* ``tail_start = max(0, min(n_blocks*B, L - W))``: the *tail* ``[tail_start, L)`` — the ``W`` most recent tokens
  together with the incomplete last block — is always read;
* *sink* blocks: the ``S`` blocks starting at the block of the row's first real token (``first_block``); their tokens
  before ``tail_start`` are always read;
* *candidate* blocks: complete blocks ``j`` with ``first_block + S <= j`` that hold a real token before the tail
  (so they start before it, ``j*B < tail_start``); top-k selection chooses among them and reads a chosen block's tokens before ``tail_start``
  (its other tokens lie in the tail and are read anyway);
* *padding*: positions that are not valid or lie at or past ``L``; never read.

**A block that partly overlaps the window is a candidate.** Its tokens before ``tail_start`` belong to no sink and
to no tail, so excluding it would leave up to ``B - 1`` real tokens that no step can ever read. With this rule every
real token has exactly one role (sink, candidate-block token or tail), selection, the recall metrics, the kernels and
the energy model all count the same candidate set, and a block's reference score for the recall metrics is the
attention mass of its tokens before the tail (what selecting it adds).

Ties of top-k (:func:`topk_blocks`, used everywhere a top-k over blocks is taken): best score first; equal scores
resolve to the lower block id; NaN scores rank last among candidates; non-candidates are never returned (``-1``).

**Two constructions, one definition.** A dynamic cache's step knows its length on the host (:meth:`BlockLayout.uniform`,
:meth:`BlockLayout.from_lengths`): the gather plan lists exactly the tail it has. A static cache
(:mod:`kvprism.hf.static`) keeps its length on the device: :meth:`BlockLayout.fixed` builds the same roles with no host
synchronisation and fixed shapes (the gather plan's tail part padded to its bound ``max(W, B - 1)``), so a whole decode
step traces with ``torch.compile(fullgraph=True)`` and replays from a CUDA graph. Both read the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvprism.errors import KvprismError

__all__ = [
    "CANDIDATE",
    "DEFAULT_BLOCK_SIZE",
    "PAD",
    "SINK",
    "TAIL",
    "BlockGeometry",
    "BlockLayout",
    "GatherPlan",
    "candidate_blocks",
    "row_bounds",
    "topk_blocks",
    "topk_mask",
]

#: tokens per block of the default selection (``SelectionConfig.block_size``; also the default of the chip's decode
#: timing, which sizes its banks by blocks)
DEFAULT_BLOCK_SIZE = 32

#: token roles of :meth:`BlockLayout.token_roles`
PAD, SINK, CANDIDATE, TAIL = 0, 1, 2, 3


class _memo:
    """A property computed on first use and kept in the instance (as ``functools.cached_property``, without its
    lock, which ``torch.compile`` cannot trace on Python 3.11)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value  # a non-data descriptor: the instance's value wins from now on
        return value


def topk_blocks(scores: torch.Tensor, candidates: torch.Tensor | None, k: int) -> torch.Tensor:
    """The tie-aware top-k over blocks: ``[..., N]`` scores -> ``[..., k]`` int64 block ids, best first.

    Args:
        scores: ``[..., N]`` block scores (any float dtype; NaN ranks below every finite score).
        candidates: ``[..., N]`` bool (broadcast against ``scores``), the blocks that may be chosen; None = all.
        k: ids to return (``k >= 0``).

    Returns:
        ``[..., k]`` int64: the ``min(k, #candidates)`` best candidates, best first, equal scores in increasing id
        order; ``-1`` fills the remaining slots.
    """
    if k < 0:
        raise KvprismError(f"k = {k} is invalid; allowed range: k >= 0")
    s = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
    lead, n = s.shape[:-1], s.shape[-1]
    if k == 0 or n == 0:
        return torch.full((*lead, k), -1, dtype=torch.long, device=s.device)
    low = torch.finfo(s.dtype).min
    # candidates rank strictly above non-candidates: -inf / NaN candidate scores become the lowest finite value
    s = torch.where(torch.isnan(s) | (s == -torch.inf), torch.full_like(s, low), s)
    if candidates is not None:
        cand = candidates.expand_as(s)
        s = s.masked_fill(~cand, -torch.inf)
    kk = min(k, n)
    # a stable descending sort keeps equal scores in increasing index order (torch.topk leaves ties undefined)
    idx = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :kk]
    if candidates is not None:
        idx = idx.masked_fill(~torch.gather(cand, -1, idx), -1)
    if kk < k:
        idx = torch.cat([idx, idx.new_full((*lead, k - kk), -1)], dim=-1)
    return idx


def topk_mask(scores: torch.Tensor, candidates: torch.Tensor | None, k: int) -> torch.Tensor:
    """``[..., N]`` bool: the blocks :func:`topk_blocks` chooses."""
    return ids_to_mask(topk_blocks(scores, candidates, k), scores.shape[-1])


def ids_to_mask(ids: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., k]`` block ids (-1 or ids outside ``[0, n)`` ignored) -> ``[..., n]`` bool."""
    mask = torch.zeros(*ids.shape[:-1], n + 1, dtype=torch.bool, device=ids.device)
    ids = ids.long()
    ids = torch.where((ids >= 0) & (ids < n), ids, torch.full_like(ids, n))
    mask.scatter_(-1, ids, True)
    return mask[..., :n]


@dataclass(frozen=True)
class BlockGeometry:
    """The configuration part of a layout (no lengths): block size, sink blocks and window, all in tokens/blocks."""

    block_size: int
    sink_blocks: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise KvprismError(f"block_size = {self.block_size} is invalid; allowed range: >= 1 token")
        if self.sink_blocks < 0:
            raise KvprismError(f"sink_blocks = {self.sink_blocks} is invalid; allowed range: >= 0 blocks")
        if self.window < 0:
            raise KvprismError(f"window = {self.window} is invalid; allowed range: >= 0 tokens")

    @classmethod
    def of(cls, sel: Any) -> BlockGeometry:
        """The geometry of a ``SelectionConfig`` (or anything with ``block_size``, ``sink_blocks``, ``window``)."""
        return cls(int(sel.block_size), int(sel.sink_blocks), int(sel.window))

    @property
    def sink_tokens(self) -> int:
        """Positions ``[0, sink_tokens)`` the sink blocks span when the first real token is at position 0."""
        return self.sink_blocks * self.block_size

    def at(self, seq_lens: torch.Tensor | int, capacity: int | None = None) -> BlockLayout:
        """The layout of rows of ``seq_lens`` positions, all real (no padding); ``capacity`` default ``max(L)``."""
        return BlockLayout.from_lengths(seq_lens, self, capacity)

    def masked(self, valid: torch.Tensor) -> BlockLayout:
        """The layout of a cache whose rows all hold ``T = valid.shape[1]`` positions, ``valid [B, T]``."""
        return BlockLayout.from_valid(valid, self)


def row_bounds(lens: torch.Tensor, geometry: BlockGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n_blocks, tail_start, candidate_end)`` of rows holding ``lens`` positions (tensors shaped like ``lens``):
    complete blocks ``L // B``, the first tail position ``max(0, min(n_blocks*B, L - W))`` and one past the last
    candidate block id, ``ceil(tail_start / B)`` (blocks that start before the tail; never above ``n_blocks``).
    Plain tensor arithmetic on the device (no host synchronisation)."""
    bs = geometry.block_size
    lens = lens.long()
    n_blocks = torch.div(lens, bs, rounding_mode="floor")
    tail_start = torch.minimum(n_blocks * bs, lens - geometry.window).clamp_min(0)
    return n_blocks, tail_start, torch.div(tail_start + bs - 1, bs, rounding_mode="floor")


def candidate_blocks(
    first_block: torch.Tensor,
    candidate_end: torch.Tensor,
    tail_start: torch.Tensor,
    valid: torch.Tensor | None,
    n_slots: int,
    geometry: BlockGeometry,
) -> torch.Tensor:
    """``[B, n_slots]`` bool: the candidate blocks (complete, not sink, holding a real token before the tail) of rows
    with the given ``first_block``, ``candidate_end`` and ``tail_start`` (``[B]``, or ``[1]`` shared by the rows) and
    key validity ``valid [B, T]`` (None: every position before the tail is real)."""
    j = torch.arange(n_slots, device=candidate_end.device)[None]
    cand = (j >= (first_block + geometry.sink_blocks)[:, None]) & (j < candidate_end[:, None])
    if valid is None:  # every position before the tail is real: each such block holds one
        return cand
    b, t = valid.shape
    real = valid & (torch.arange(t, device=valid.device)[None] < tail_start[:, None])
    real = torch.nn.functional.pad(real, (0, n_slots * geometry.block_size - t))
    return cand & real.reshape(b, n_slots, geometry.block_size).any(-1)


class BlockLayout:
    """What a decode step's cache holds, per batch row (and per KV head through :meth:`candidate_mask`): padding,
    sink blocks, candidate blocks and the tail (see the module docstring for the rules).

    Build with :meth:`from_lengths` (rows of different lengths, no padding: the kernels' view) or :meth:`from_valid`
    (rows of one length with a validity mask: a Hugging Face decode step). Derived tensors are computed once, on
    first use; a layout is immutable (build a new one per step).

    Attributes:
        geometry: the :class:`BlockGeometry`.
        seq_lens: ``[B]`` positions per row (dtype as given; int32 from :meth:`from_valid`).
        capacity: ``T``, positions of the cache tensors.
        valid: ``[B, T]`` bool or None (None: every position below ``seq_lens`` is real).
        uniform_len: the common row length when all rows are known to have one (python int, no device sync), else
            None.
        fixed_shape: every shape derives from the geometry, the batch and the capacity only, never from the lengths
            (:meth:`fixed`); nothing reads a length on the host.
    """

    def __init__(
        self,
        geometry: BlockGeometry,
        seq_lens: torch.Tensor,
        capacity: int,
        valid: torch.Tensor | None = None,
        uniform_len: int | None = None,
        fixed_shape: bool = False,
    ) -> None:
        if seq_lens.dim() != 1:
            raise KvprismError(f"seq_lens must be [B], got shape {tuple(seq_lens.shape)}")
        if valid is not None and (valid.dim() != 2 or tuple(valid.shape) != (seq_lens.shape[0], capacity)):
            raise KvprismError(f"valid must be [B={seq_lens.shape[0]}, T={capacity}], got {tuple(valid.shape)}")
        self.geometry = geometry
        self.seq_lens = seq_lens
        self.capacity = int(capacity)
        self.valid = valid
        self.uniform_len = None if fixed_shape else uniform_len
        self.fixed_shape = fixed_shape

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lengths(
        cls, seq_lens: torch.Tensor | int, geometry: BlockGeometry, capacity: int | None = None
    ) -> BlockLayout:
        """Rows ``b`` holding positions ``[0, seq_lens[b])``, all real; ``capacity`` default ``max(seq_lens)``."""
        uniform = None
        if isinstance(seq_lens, int):
            uniform = seq_lens
            seq_lens = torch.tensor([seq_lens], dtype=torch.long)
        if capacity is None:
            capacity = int(seq_lens.max()) if seq_lens.numel() else 0
        return cls(geometry, seq_lens, capacity, None, uniform)

    @classmethod
    def from_valid(cls, valid: torch.Tensor, geometry: BlockGeometry) -> BlockLayout:
        """Rows of ``T = valid.shape[1]`` positions; ``valid [B, T]`` bool (False = padding / masked key)."""
        b, t = valid.shape
        return cls.uniform(b, t, geometry, valid.device, valid.bool())

    @classmethod
    def fixed(
        cls, geometry: BlockGeometry, seq_lens: torch.Tensor, capacity: int, valid: torch.Tensor | None = None
    ) -> BlockLayout:
        """The fixed-shape layout of a static cache: ``seq_lens [B]`` stay on the device (its length counter), the
        cache has ``capacity`` positions and ``valid [B, capacity]`` (or None: every position below ``seq_lens`` is
        real). Same roles as the other constructions; no host synchronisation, no shape that depends on a length
        (the gather plan's tail part has :attr:`tail_bound` slots), so ``torch.compile(fullgraph=True)`` traces it."""
        return cls(geometry, seq_lens, capacity, valid, fixed_shape=True)

    @classmethod
    def uniform(
        cls,
        batch: int,
        seq_len: int,
        geometry: BlockGeometry,
        device: torch.device | str = "cpu",
        valid: torch.Tensor | None = None,
    ) -> BlockLayout:
        """``batch`` rows of ``seq_len`` positions each (``seq_lens`` int32); ``valid [B, T]`` or None (all real)."""
        lens = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
        return cls(geometry, lens, seq_len, valid, seq_len)

    # ------------------------------------------------------------------ geometry shortcuts
    @property
    def block_size(self) -> int:
        return self.geometry.block_size

    @property
    def sink_blocks(self) -> int:
        return self.geometry.sink_blocks

    @property
    def window(self) -> int:
        return self.geometry.window

    @property
    def batch(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seq_lens.device

    @property
    def plain(self) -> bool:
        """No position below ``seq_lens`` is masked (what the Triton kernels require)."""
        return self.valid is None

    @property
    def tail_bound(self) -> int:
        """The most tail positions a row can hold: ``min(max(W, B - 1, 1), T)`` (the window, or the incomplete last
        block when that is longer); the tail part of a fixed-shape gather plan has this many slots."""
        return min(max(self.window, self.block_size - 1, 1), self.capacity)

    @property
    def n_slots(self) -> int:
        """Block ids ``0 .. n_slots - 1`` cover the capacity: ``ceil(T / B)`` (the last may be incomplete)."""
        return -(-self.capacity // self.block_size)

    # ------------------------------------------------------------------ per-row scalars (tensors [B])
    @_memo
    def _lens(self) -> torch.Tensor:
        return self.seq_lens.to(torch.long)

    @_memo
    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return row_bounds(self._lens, self.geometry)

    @property
    def n_blocks(self) -> torch.Tensor:
        """``[B]`` complete blocks per row (``L // B``)."""
        return self._bounds[0]

    @property
    def tail_start(self) -> torch.Tensor:
        """``[B]`` first tail position: ``max(0, min(n_blocks*B, L - W))``."""
        return self._bounds[1]

    @property
    def tail_start_int(self) -> int | None:
        """``tail_start`` as a python int when all rows share one length (no device sync), else None."""
        if self.uniform_len is None:
            return None
        n = self.uniform_len
        return max(0, min((n // self.block_size) * self.block_size, n - self.window))

    @_memo
    def first_block(self) -> torch.Tensor:
        """``[B]`` block of each row's first real token (0 without a validity mask)."""
        if self.valid is None:
            return torch.zeros_like(self._lens)
        first = self.valid.int().argmax(-1).to(torch.long)
        return torch.div(first, self.block_size, rounding_mode="floor")

    @property
    def candidate_end(self) -> torch.Tensor:
        """``[B]`` one past the last candidate block id: blocks that start before the tail, ``ceil(tail_start / B)``
        (which never exceeds ``n_blocks``)."""
        return self._bounds[2]

    # ------------------------------------------------------------------ per-block masks [B, n_slots]
    @_memo
    def _blk(self) -> torch.Tensor:
        return torch.arange(self.n_slots, device=self.device)

    @_memo
    def sink(self) -> torch.Tensor:
        """``[B, n_slots]`` bool: sink blocks holding at least one token before the tail."""
        j, first = self._blk[None], self.first_block[:, None]
        return (j >= first) & (j < first + self.sink_blocks) & (j * self.block_size < self.tail_start[:, None])

    @_memo
    def candidates(self) -> torch.Tensor:
        """``[B, n_slots]`` bool: candidate blocks (complete, not sink, holding a real token before the tail)."""
        return candidate_blocks(
            self.first_block, self.candidate_end, self.tail_start, self.valid, self.n_slots, self.geometry
        )

    def candidate_mask(self, heads: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
        """``[B, H, n]`` candidates per (batch row, KV head): a streaming head (``heads[h]`` False) has none.

        Args:
            heads: ``[H]`` bool (True = the head selects); None = one selecting head.
            n: block ids kept (default ``n_slots``; e.g. the rows programmed into a selector, which are the complete
                blocks, so every candidate id is below it).
        """
        cand = self.candidates[:, None, : self.n_slots if n is None else n]
        if heads is None:
            return cand
        return cand & heads.to(device=cand.device, dtype=torch.bool)[None, :, None]

    def candidate_range(self, n_programmed: int | None = None) -> tuple[int, int]:
        """``(lo, hi)``: the candidates as one range of block ids ``lo <= j < hi``, the same for every row, with
        ``hi`` capped at ``n_programmed``. Valid when the rows share one length and no key is masked (no left
        padding, no sliding window: then ``candidates[b, j]`` is exactly ``lo <= j < hi``). No device sync."""
        ts = self.tail_start_int
        if ts is None:
            raise KvprismError("candidate_range needs rows of one length")
        n = self.n_slots if n_programmed is None else n_programmed
        lo = min(self.sink_blocks, n)
        return lo, max(lo, min(-(-ts // self.block_size), n))

    # ------------------------------------------------------------------ per-token views [B, T]
    @_memo
    def token_roles(self) -> torch.Tensor:
        """``[B, T]`` int8 role of every position: :data:`PAD`, :data:`SINK`, :data:`CANDIDATE` (a token of a
        candidate block, before the tail) or :data:`TAIL`."""
        t = torch.arange(self.capacity, device=self.device)[None]
        real = t < self._lens[:, None]
        if self.valid is not None:
            real = real & self.valid
        blk = torch.div(t, self.block_size, rounding_mode="floor").clamp_max(max(self.n_slots - 1, 0))
        in_sink = torch.gather(self.sink, 1, blk.expand(self.batch, -1)) if self.n_slots else torch.zeros_like(real)
        tail = t >= self.tail_start[:, None]
        roles = torch.full(real.shape, CANDIDATE, dtype=torch.int8, device=self.device)
        roles = torch.where(in_sink, torch.full_like(roles, SINK), roles)
        roles = torch.where(tail, torch.full_like(roles, TAIL), roles)
        return torch.where(real, roles, torch.full_like(roles, PAD))

    def read_mask(self, blocks: torch.Tensor) -> torch.Tensor:
        """``[B, H, T]`` bool: the tokens a step reads for the selected ``blocks [B, H, k]`` (ids ``-1`` unused;
        duplicates, ids of sink / tail / padding blocks add nothing): sink and tail tokens, and the candidate-role
        tokens of the selected blocks."""
        roles = self.token_roles[:, None]  # [B, 1, T]
        always = (roles == SINK) | (roles == TAIL)
        sel = ids_to_mask(blocks, self.n_slots)  # [B, H, n_slots]
        per_tok = sel.repeat_interleave(self.block_size, dim=-1)[..., : self.capacity]
        return always | (per_tok & (roles == CANDIDATE))

    # ------------------------------------------------------------------ counts
    def tokens_read_max(self, k: int) -> torch.Tensor:
        """``[B]`` the most tokens a step reads per KV head with ``k`` selected blocks: sink + tail tokens and the
        candidate-role tokens of the ``k`` largest candidate blocks (every candidate but the last complete block
        before the tail is whole). Exact for a plain layout."""
        roles = self.token_roles
        fixed = ((roles == SINK) | (roles == TAIL)).sum(-1)
        cand_tokens = (roles == CANDIDATE).sum(-1)
        n_cand = self.candidates.sum(-1)
        k_eff = torch.minimum(n_cand, torch.full_like(n_cand, k))
        return fixed + torch.minimum(cand_tokens, k_eff * self.block_size)

    # ------------------------------------------------------------------ gather plan
    @_memo
    def _always(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx, ok) [B, Mf]``: the sink blocks' token positions, then the tail's (padded to the longest tail, or
        to :attr:`tail_bound` in a fixed-shape layout); the part of every gather plan that does not depend on the
        selection (built once per layout)."""
        bs = self.block_size
        dev = self.device
        roles = self.token_roles
        is_sink = roles == SINK
        sink_ids = self.first_block[:, None] + torch.arange(self.sink_blocks, device=dev)[None]  # [B, S]
        pos_s = (sink_ids[..., None] * bs + torch.arange(bs, device=dev)).flatten(1)  # [B, S*bs]
        inside = pos_s < self.capacity
        pos_s = torch.where(inside, pos_s, torch.zeros_like(pos_s))
        ok_s = inside & torch.gather(is_sink, 1, pos_s) if pos_s.numel() else pos_s.bool()
        n_tail = self._lens - self.tail_start
        if self.fixed_shape:
            m_tail = self.tail_bound
        elif self.tail_start_int is not None:
            m_tail = self.capacity - self.tail_start_int
        else:
            m_tail = int(n_tail.max())
        off = torch.arange(max(m_tail, 0), device=dev)
        pos_t = self.tail_start[:, None] + off[None]
        ok_t = off[None] < n_tail[:, None]
        pos_t = torch.where(ok_t, pos_t, torch.zeros_like(pos_t))
        ok_t = ok_t & torch.gather(roles, 1, pos_t).eq(TAIL)
        idx = torch.cat([torch.where(ok_s, pos_s, torch.zeros_like(pos_s)), pos_t], dim=-1)
        return idx, torch.cat([ok_s, ok_t], dim=-1)

    @_memo
    def n_cached(self) -> torch.Tensor:
        """``[B]`` real (non-padding) tokens."""
        if self.valid is None:  # every position below the length is real
            return self._lens.clamp_max(self.capacity)
        return self.token_roles.ne(PAD).sum(-1)

    def tokens_read(self, blocks: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` tokens a step reads for ``blocks [B, H, k]`` (distinct candidate ids, ``-1`` unused): the
        ``n_attended`` of :meth:`gather_plan`, counted without building the plan where the layout is plain (sink
        tokens before the tail, the tail, each selected block's tokens before the tail)."""
        if self.valid is not None:
            return self.gather_plan(blocks).n_attended
        bs = self.block_size
        ts = self.tail_start[:, None]
        fixed = torch.minimum(ts, torch.full_like(ts, self.geometry.sink_tokens)) + (self._lens[:, None] - ts)
        per_block = (ts[..., None] - blocks.long() * bs).clamp(0, bs)
        return fixed + torch.where(blocks >= 0, per_block, torch.zeros_like(per_block)).sum(-1)

    def gather_plan(self, blocks: torch.Tensor) -> GatherPlan:
        """Token positions one layer reads for ``blocks [B, H, k]`` (selected candidate ids, -1 = none), as a
        fixed-shape list: the sink blocks' tokens and the tail first, then the selected blocks' tokens (each clipped
        to its candidate-role tokens). Reads exactly :meth:`read_mask` for blocks that are distinct candidates."""
        b, h, k = blocks.shape
        bs = self.block_size
        dev = blocks.device
        roles = self.token_roles
        fixed_idx, fixed_ok = self._always
        # selected blocks
        pos = (blocks[..., None].long() * bs + torch.arange(bs, device=dev)).reshape(b, h, k * bs)
        ok = (pos >= 0) & (pos < self.capacity)
        pos = torch.where(ok, pos, torch.zeros_like(pos))
        ok = ok & torch.gather(roles, 1, pos.reshape(b, h * k * bs)).reshape(b, h, k * bs).eq(CANDIDATE)
        mf = fixed_idx.shape[1]
        idx = torch.cat([fixed_idx[:, None].expand(b, h, mf), pos], dim=-1)
        ok = torch.cat([fixed_ok[:, None].expand(b, h, mf), ok], dim=-1)
        return GatherPlan(token_idx=idx, token_ok=ok, blocks=blocks, n_attended=ok.sum(-1), n_cached=self.n_cached)


@dataclass
class GatherPlan:
    """The tokens one decode step reads, per (batch row, KV head).

    ``token_idx [B, H, M]`` int64 cache positions (a fixed-shape list, padded with position 0 where ``token_ok`` is
    False); ``token_ok [B, H, M]`` bool; ``blocks [B, H, k]`` selected complete-block ids (-1 = none);
    ``n_attended [B, H]`` tokens actually read; ``n_cached [B]`` real (non-padding) tokens in the cache.
    """

    token_idx: torch.Tensor
    token_ok: torch.Tensor
    blocks: torch.Tensor
    n_attended: torch.Tensor
    n_cached: torch.Tensor

    def token_mask(self, seq_len: int) -> torch.Tensor:
        """``[B, H, T]`` bool: the tokens read."""
        b, h, _ = self.token_idx.shape
        out = torch.zeros(b, h, seq_len, dtype=torch.uint8, device=self.token_idx.device)
        out.scatter_reduce_(-1, self.token_idx, self.token_ok.to(torch.uint8), reduce="amax")
        return out.bool()
