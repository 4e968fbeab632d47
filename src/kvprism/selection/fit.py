"""What fitting a layer on its prefill produces, as functions of a :class:`SelectionConfig`: the projection and its
score temperature, the probe of representative-token signatures, and the signature rows of whole blocks. The
:class:`~kvprism.selection.selector.BlockSelector` holds their results for one layer; a prefill shared by several
configurations computes them once (:func:`signature_settings` says which configurations may share them)."""

from __future__ import annotations

import torch

from kvprism.errors import ConfigError
from kvprism.selection.config import SelectionConfig
from kvprism.signatures import SIGNATURES, fit_projection, project

__all__ = [
    "block_signatures",
    "derive_seed",
    "fit_layer_projection",
    "fit_uses_queries",
    "layer_probe",
    "needs_queries",
    "signature_settings",
]


def derive_seed(seed: int, layer_idx: int, salt: int = 0) -> int:
    """A distinct, deterministic seed per (config seed, layer, purpose)."""
    return (seed * 1_000_003 + layer_idx * 7919 + salt * 104_729) % (2**63 - 1)


def signature_settings(sel: SelectionConfig) -> tuple:
    """The fields that decide a layer's projection, temperature, probe and signatures (configurations equal in these
    share them)."""
    return (sel.block_size, sel.d_sig, sel.signature, sel.sig_rows, sel.projection, sel.sign, sel.seed)


def needs_queries(sel: SelectionConfig) -> bool:
    """Whether fitting a layer needs the prefill queries (learned projection, representative-token signatures)."""
    return sel.projection == "learned" or SIGNATURES[sel.signature].needs_probe


def fit_uses_queries(sel: SelectionConfig, n_blocks: int) -> bool:
    """Whether fitting a layer on a prefill of ``n_blocks`` complete blocks reads the prefill queries: with fewer than
    two blocks the learned projection is PCA anyway; representative-token signatures always need their probe."""
    return needs_queries(sel) and (n_blocks >= 2 or SIGNATURES[sel.signature].needs_probe)


def fit_layer_projection(
    sel: SelectionConfig,
    layer_idx: int,
    keys: torch.Tensor,
    valid: torch.Tensor,
    *,
    scaling: float = 1.0,
    queries: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The projection of layer ``layer_idx`` fitted on its prefill keys ``[B, H, T, D]`` (``valid [B, T]``) and its
    fitted score temperature: ``(projection [B, H, D, d_sig] or None, temperature [B, H] or None)`` (a temperature
    only for ``projection='learned'``; see :func:`kvprism.signatures.fit_learned`)."""
    return fit_projection(
        sel.projection,
        keys,
        valid,
        sel.d_sig,
        seed=derive_seed(sel.seed, layer_idx, 2),
        block_size=sel.block_size,
        scaling=scaling,
        queries=queries,
        query_pos=query_pos,
        return_temperature=True,
    )


def layer_probe(sel: SelectionConfig, proj: torch.Tensor | None, queries: torch.Tensor | None) -> torch.Tensor | None:
    """The projected prefill queries ``[B, H, n*G, d_sig]`` a probe-based signature ('reps') ranks tokens by, from
    ``queries [B, H, n, G, D]``; None for signatures without a probe."""
    if not SIGNATURES[sel.signature].needs_probe:
        return None
    if queries is None:
        raise ConfigError(f"SelectionConfig.signature = {sel.signature!r} needs the prefill queries")
    b, h, n, g, d = queries.shape
    return project(queries.float().reshape(b, h, n * g, d), proj)


def block_signatures(
    sel: SelectionConfig,
    proj: torch.Tensor | None,
    keys: torch.Tensor,
    valid: torch.Tensor,
    *,
    layer_idx: int,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Signatures of whole blocks of layer ``layer_idx``: ``keys [B, H, n*bs, D]`` (block-aligned), ``valid
    [B, n*bs]`` -> bank rows ``[B, H, n*R, w]`` float32 (``R`` = the signature's rows per block, consecutive rows per
    block); ``probe``: :func:`layer_probe` for signatures that need one."""
    b, h, t, _ = keys.shape
    bs = sel.block_size
    n = t // bs
    signature = SIGNATURES[sel.signature]
    rows = signature.rows_per_block(sel.sig_rows)
    pk = project(keys.float(), proj).reshape(b, h, n, bs, -1)
    v = valid.reshape(b, 1, n, bs).expand(b, h, n, bs)
    if probe is not None:
        probe = probe.to(pk.device)
    sig = signature.block(pk, v, rows=rows, seed=derive_seed(sel.seed, layer_idx, 3), probe=probe)
    if sel.sign == "relu":
        sig = sig.clamp_min(0)
    return sig.reshape(b, h, n * rows, -1)
