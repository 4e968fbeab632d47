"""Block-sparse decode kernels: Triton on CUDA, pure-torch references everywhere else.

Stable entry points (the sparse attention path calls these):

* :func:`sparse_decode_attention` — attention of one decode token over selected blocks + sink + window + the
  incomplete last block (contract in :func:`kvprism.kernels.reference.sparse_decode_attention_ref`).
* :func:`score_topk` — top-k blocks per (batch, KV head) by signature score.
* ``SparseDecodeStep`` (Triton only) — score -> select -> attend with static buffers, capturable in a CUDA graph.

``impl`` (:data:`IMPLS`, the one tuple of kernel implementations): ``"auto"`` picks the Triton kernels for CUDA
tensors when ``triton`` imports, else ``"torch"`` (the pure-torch references of :mod:`kvprism.kernels.reference`).
Both are sparse: neither falls back to dense attention.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

import torch

from kvprism.errors import ConfigError, KvprismError
from kvprism.kernels.reference import candidate_blocks, score_topk_ref, sparse_decode_attention_ref
from kvprism.layout import BlockLayout

#: the attention / scoring implementations (``impl``), the one tuple of the package: ``"auto"`` (Triton where it can
#: run, else torch), ``"torch"`` (index gather + matmul/softmax, the references; any device) or ``"triton"`` (the
#: split-K sparse kernels reading the selected blocks in place; CUDA only)
IMPLS = ("auto", "torch", "triton")
#: head dims and input dtypes the Triton decode kernel takes (the reference takes any)
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = [
    "IMPLS",
    "TRITON_DTYPES",
    "TRITON_HEAD_DIMS",
    "SparseDecodeStep",
    "candidate_blocks",
    "resolve_impl",
    "score_topk",
    "score_topk_ref",
    "sparse_decode_attention",
    "sparse_decode_attention_ref",
    "triton_available",
]


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package is installed (CUDA itself is checked per call).

    Only looks the package up: importing triton here would fix its interpreter mode before a caller could choose it.
    """
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str | None, *, owner: str = "kvprism.kernels") -> str:
    """Validate the implementation ``impl`` (:data:`IMPLS`; None = ``"auto"``); returns it (still ``"auto"``).

    Raises:
        ConfigError: not in :data:`IMPLS`, or ``"triton"`` without the package (naming ``owner``).
    """
    impl = "auto" if impl is None else impl
    if impl not in IMPLS:
        raise ConfigError(f"{owner}.impl = {impl!r} is invalid; allowed: {', '.join(IMPLS)}")
    if impl == "triton" and not triton_available():
        raise ConfigError(f"{owner}.impl = 'triton' needs the 'triton' package (pip install 'kvprism[gpu]')")
    return impl


def _resolve(impl: str, device: torch.device) -> str:
    impl = resolve_impl(impl)
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return impl


def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_idx: torch.Tensor,
    layout: BlockLayout,
    scale: float | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Block-sparse decode attention ``[B, Hq, D]``.

    Args:
        q: ``[B, Hq, D]``; k_cache, v_cache: ``[B, Hkv, T, D]`` (same dtype as ``q``; bf16/fp16/fp32 on Triton).
        block_idx: ``[B, Hkv, K]`` integer block indices, ``-1`` = unused slot.
        layout: the step's :class:`~kvprism.layout.BlockLayout` (block size, sink blocks, window, ``seq_lens [B]``
            in ``[1, T]``); the Triton kernel needs a plain one (no masked key).
        scale: softmax scale (default ``1/sqrt(D)``).
        impl: ``"auto"`` (Triton on CUDA when available, else torch), ``"torch"`` or ``"triton"`` (:data:`IMPLS`).
    """
    which = _resolve(impl, q.device)
    if which == "triton":
        from kvprism.kernels.triton_decode import sparse_decode_attention_triton

        return sparse_decode_attention_triton(q, k_cache, v_cache, block_idx, layout, scale)
    return sparse_decode_attention_ref(q, k_cache, v_cache, block_idx, layout, scale)


def score_topk(
    q: torch.Tensor,
    signatures: torch.Tensor,
    n_valid: torch.Tensor | None,
    k: int,
    gqa_reduce: str = "sum",
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Top-k block indices ``[B, Hkv, k]`` (int64, best first, ties to the lower index, ``-1`` padding).

    Args:
        q: ``[B, Hq, d]`` query sketches; signatures: ``[B, Hkv, N, d]``; n_valid: ``[B]`` or None.
        k: blocks per (batch, KV head); gqa_reduce: ``"sum"`` or ``"max"`` over a GQA group.
        impl: as in :func:`sparse_decode_attention`.
    """
    which = _resolve(impl, q.device)
    if which == "triton":
        from kvprism.kernels.triton_decode import score_topk_triton

        return score_topk_triton(q, signatures, n_valid, k, gqa_reduce)
    return score_topk_ref(q, signatures, n_valid, k, gqa_reduce)


def __getattr__(name: str) -> Any:
    if name == "SparseDecodeStep":
        if not triton_available():
            raise KvprismError("SparseDecodeStep needs the 'triton' package (pip install 'kvprism[gpu]')")
        from kvprism.kernels.triton_decode import SparseDecodeStep

        return SparseDecodeStep
    raise AttributeError(f"module 'kvprism.kernels' has no attribute {name!r}")
