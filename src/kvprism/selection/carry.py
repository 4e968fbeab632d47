"""``SelectionConfig.carry``: blocks that served one decode step stay selected at the next.

Fixed-shape tensor functions (no host synchronisation, so the static path can capture them in a CUDA graph), shared by
the dynamic :class:`~kvprism.hf.pipeline.DecodePipeline` and the static :class:`~kvprism.hf.static.StaticSparseCache`:

1. :func:`carried_candidates` -- the ids kept from the previous step that are still candidates (``-1`` elsewhere);
2. the scorer selects the other blocks, either over the candidates without the carried ones
   (:func:`without_carried`) or, where a kernel ranks every candidate, by dropping the carried ids from its top-k
   (:func:`drop_carried`: the same blocks in the same order, since at most ``carry`` ids drop out of the top ``k``);
3. :func:`merge_carried` -- carried first, then the scorer's best, the first ``k`` that exist;
4. after attending: :func:`kept_blocks` -- of the step's selected blocks, the ``carry`` with the most attention mass
   (summed over the query group: :func:`block_mass_from_slots` for the torch path's per-token masses, the Triton
   kernel's ``block_mass`` directly).
"""

from __future__ import annotations

import torch

__all__ = [
    "block_mass_from_slots",
    "carried_candidates",
    "drop_carried",
    "effective_carry",
    "kept_blocks",
    "merge_carried",
    "without_carried",
]


def effective_carry(carry: int, k: int) -> int:
    """Blocks actually carried: ``min(carry, k - 1)`` (at least one of the k is the scorer's pick at every step, so
    a selection never freezes), 0 for ``k <= 1``."""
    return max(0, min(int(carry), int(k) - 1))


def carried_candidates(prev: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """The ids of ``prev [B, H, c]`` (``-1`` = none) that are candidates of ``cand [B, H, N]`` (bool); ``-1``
    elsewhere. Blocks are only ever appended, so a kept id is programmed; it may have left the candidates (e.g. into
    the window of a shrinking layout)."""
    if cand.shape[-1] == 0:  # no block slot at all (a cache shorter than one block): nothing is a candidate
        return torch.full_like(prev, -1)
    ok = (prev >= 0) & torch.gather(cand, -1, prev.clamp_min(0))
    return torch.where(ok, prev, torch.full_like(prev, -1))


def without_carried(cand: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """``cand [B, H, N]`` with the ids of ``carried [B, H, c]`` removed (``-1`` entries remove nothing)."""
    taken = (carried[..., None] == torch.arange(cand.shape[-1], device=cand.device)).any(-2)
    return cand & ~taken


def drop_carried(selection: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """``selection [B, H, k]`` with the ids that ``carried [B, H, c]`` holds set to ``-1``."""
    dup = (selection[..., :, None] == carried[..., None, :]) & (carried[..., None, :] >= 0)
    return selection.masked_fill(dup.any(-1), -1)


def merge_carried(carried: torch.Tensor, rest: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, H, k]``: the existing ids of ``carried [B, H, c]`` first, then those of ``rest [B, H, r]`` (the scorer's
    selection without the carried ids, best first), order kept, ``-1`` after them."""
    merged = torch.cat([carried, rest.to(carried.dtype)], dim=-1)
    order = torch.sort((merged < 0).to(torch.int8), dim=-1, stable=True).indices  # -1 slots last, order kept
    return torch.gather(merged, -1, order)[..., :k]


def block_mass_from_slots(slot_mass: torch.Tensor, k: int, block_size: int) -> torch.Tensor:
    """Per selected block ``[B, H, k]`` the attention mass of its tokens, from the per-slot masses ``[B, H, M]`` of a
    :meth:`~kvprism.layout.BlockLayout.gather_plan` (whose last ``k * block_size`` slots are the selected blocks'
    tokens, in selection order)."""
    b, h, m = slot_mass.shape
    return slot_mass[..., m - k * block_size :].reshape(b, h, k, block_size).sum(-1)


def kept_blocks(blocks: torch.Tensor, block_mass: torch.Tensor, carry: int) -> torch.Tensor:
    """The ``min(carry, k)`` ids of ``blocks [B, H, k]`` (``-1`` = none) with the largest ``block_mass [B, H, k]``,
    ``-1`` where fewer blocks were selected: what the next step carries (callers pass :func:`effective_carry`)."""
    mass = block_mass.float().masked_fill(blocks < 0, -1.0)
    top = torch.topk(mass, min(carry, blocks.shape[-1]), dim=-1).indices
    kept = torch.gather(blocks, -1, top)
    return kept.masked_fill(torch.gather(mass, -1, top) < 0, -1)
