"""Block signatures: one short vector per block of B cached keys, compared with the query at every decode step.

A signature is computed from the post-RoPE keys of one block of one KV head, after an optional projection from the
head dimension ``D`` to ``d_sig`` dimensions. The query is projected the same way and *encoded* so that the block
score is always a plain dot product ``signature · encoded_query`` -- exactly what a weight bank computes when the
signature is programmed as ring weights and the encoded query drives the wavelength channels.

Signatures (registry :data:`SIGNATURES`):

- ``mean``: the mean key of the block; encoded query = projected query. Width ``d``.
- ``minmax``: Quest-style elementwise bounds ``(max_i, min_i)`` of the block's projected keys; the score
  ``Σ_i max(q_i·min_i, q_i·max_i)`` is an upper bound of ``q·k`` over the block and equals
  ``relu(q)·max + min(q, 0)·min`` -- a dot product of width ``2d`` with the encoded query ``[relu(q), min(q, 0)]``.
- ``centroids``: ``R`` centroids of the block's projected keys (seeded k-means, :class:`CentroidSignature`); the block
  score is the max over its ``R`` rows (``R = SelectionConfig.sig_rows``). Width ``d`` per row.
- ``reps``: InfLLM-style representative tokens (:class:`RepresentativeSignature`): the block's ``R`` keys most
  attended by the prefill's last queries; scored by the max over its ``R`` rows. Width ``d`` per row.

A signature with ``R`` rows per block returns ``[..., n, R*w]`` from ``block`` (its rows side by side); the selector
programs them as ``R`` consecutive bank rows per block and reduces their scores with a max (:attr:`rows_per_block`).

Projections (registry :data:`PROJECTIONS`), each a ``[B, H, D, d_sig]`` matrix per (batch row, KV head) or ``None``:

- ``none``: no projection (signatures keep the head dimension ``D``).
- ``random``: seeded Gaussian Johnson-Lindenstrauss sketch with entries ``N(0, 1/d_sig)``, one per (layer, KV head).
- ``pca``: the top ``d_sig`` principal directions of that head's prefill keys (uncentred, i.e. the right singular
  vectors of the key matrix, since scores are raw dot products).
- ``learned``: starts from ``pca`` and is fitted on the prefill to maximise block-ranking agreement with true
  attention; see :func:`fit_learned`.

``sign="relu"`` (non-balanced hardware: one photodiode per row, non-negative weights and intensities) clips both the
signature and the encoded query at zero; the default ``"signed"`` keeps signs (balanced photodetection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = [
    "PROJECTIONS",
    "SIGNATURES",
    "CentroidSignature",
    "MeanSignature",
    "MinMaxSignature",
    "RepresentativeSignature",
    "fit_learned",
    "fit_pca",
    "fit_projection",
    "project",
    "random_projection",
]


@dataclass(frozen=True)
class MeanSignature:
    """Mean key of the block (padding tokens excluded). Width ``d``."""

    name: ClassVar[str] = "mean"
    needs_probe: ClassVar[bool] = False

    def width(self, d: int) -> int:
        return d

    def rows_per_block(self, sig_rows: int) -> int:
        return 1

    def block(self, keys: torch.Tensor, valid: torch.Tensor, **_: object) -> torch.Tensor:
        """``keys [..., n, B, d]``, ``valid [..., n, B]`` bool -> ``[..., n, d]`` (zero for an all-padding block)."""
        w = valid.to(keys.dtype).unsqueeze(-1)
        return (keys * w).sum(-2) / w.sum(-2).clamp_min(1.0)

    def encode_query(self, q: torch.Tensor) -> torch.Tensor:
        """``q [..., d]`` -> ``[..., d]``."""
        return q


@dataclass(frozen=True)
class MinMaxSignature:
    """Quest-style elementwise ``[max, min]`` of the block's keys (padding excluded). Width ``2d``."""

    name: ClassVar[str] = "minmax"
    needs_probe: ClassVar[bool] = False

    def width(self, d: int) -> int:
        return 2 * d

    def rows_per_block(self, sig_rows: int) -> int:
        return 1

    def block(self, keys: torch.Tensor, valid: torch.Tensor, **_: object) -> torch.Tensor:
        """``keys [..., n, B, d]``, ``valid [..., n, B]`` -> ``[..., n, 2d]`` (zero for an all-padding block)."""
        v = valid.unsqueeze(-1)
        hi = keys.masked_fill(~v, -math.inf).amax(-2)
        lo = keys.masked_fill(~v, math.inf).amin(-2)
        out = torch.cat([hi, lo], dim=-1)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))

    def encode_query(self, q: torch.Tensor) -> torch.Tensor:
        """``q [..., d]`` -> ``[..., 2d]`` = ``[relu(q), min(q, 0)]`` so that the dot product with ``[max, min]`` is
        ``Σ max(q·min, q·max)``."""
        return torch.cat([q.clamp_min(0), q.clamp_max(0)], dim=-1)


#: (block size, seed, device) -> the k-means initialisation order of :class:`CentroidSignature`
_INIT_RANKS: dict[tuple[int, int, str], torch.Tensor] = {}


@torch.compiler.assume_constant_result
def _init_rank(block_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``[block_size]`` int64 rank of every position in one seeded permutation, on ``device``: drawn on the CPU once
    per (block size, seed, device) and kept, so a decode step that signs a block reads no generator (a constant for
    ``torch.compile``; no host-to-device copy inside a CUDA graph capture after the first call)."""
    key = (block_size, seed, str(device))
    rank = _INIT_RANKS.get(key)
    if rank is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        perm = torch.randperm(block_size, generator=gen)
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(block_size)
        rank = _INIT_RANKS[key] = rank.to(device)
    return rank


def _gather_tokens(keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``keys [M, B, d]``, ``idx [M, R]`` token ids -> ``[M, R, d]``."""
    return torch.gather(keys, 1, idx.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))


@dataclass(frozen=True)
class CentroidSignature:
    """``R`` centroids of the block's keys by seeded k-means (Lloyd, squared Euclidean distance), scored by the max
    over the ``R`` rows: a block holding a few distinct keys (a needle among filler) keeps one row close to each.

    Initial centroids: the first ``R`` valid tokens of one seeded permutation of the ``B`` positions (the same for
    every block, so a block's signature does not depend on how many blocks are computed together); an empty
    cluster keeps its previous centroid. Cost per block: ``iters · B · R · d`` multiply-adds. Width ``d`` per row.
    """

    name: ClassVar[str] = "centroids"
    needs_probe: ClassVar[bool] = False
    iters: int = 8

    def width(self, d: int) -> int:
        return d

    def rows_per_block(self, sig_rows: int) -> int:
        return sig_rows

    def block(
        self, keys: torch.Tensor, valid: torch.Tensor, *, rows: int = 4, seed: int = 0, **_: object
    ) -> torch.Tensor:
        """``keys [..., n, B, d]``, ``valid [..., n, B]`` -> ``[..., n, rows*d]`` (zero for an all-padding block)."""
        *lead, bs, d = keys.shape
        x = keys.reshape(-1, bs, d).float()
        v = valid.reshape(-1, bs)
        # rank of every position in the permutation; invalid tokens go last
        rank = _init_rank(bs, seed, keys.device)
        prio = torch.where(v, rank[None], rank[None] + bs)
        first = prio.argsort(-1)[:, : min(rows, bs)]
        if rows > bs:
            first = first[:, torch.arange(rows, device=keys.device) % bs]
        cent = _gather_tokens(x, first)  # [M, R, d]
        w = v.to(x.dtype)
        x2 = (x * x).sum(-1, keepdim=True)
        for _ in range(self.iters):
            d2 = x2 - 2 * torch.matmul(x, cent.transpose(-1, -2)) + (cent * cent).sum(-1)[:, None, :]  # [M, B, R]
            # one-hot of the nearest centroid (a comparison: F.one_hot reads its input's range on the host)
            onehot = (d2.argmin(-1)[..., None] == torch.arange(rows, device=x.device)).to(x.dtype) * w[..., None]
            cnt = onehot.sum(1)  # [M, R]
            new = torch.matmul(onehot.transpose(-1, -2), x) / cnt.clamp_min(1.0)[..., None]
            cent = torch.where(cnt[..., None] > 0, new, cent)
        cent = cent * v.any(-1).to(x.dtype)[:, None, None]
        return cent.reshape(*lead[:-1], lead[-1], rows * d).to(keys.dtype)

    def encode_query(self, q: torch.Tensor) -> torch.Tensor:
        """``q [..., d]`` -> ``[..., d]`` (the same query drives every row)."""
        return q


@dataclass(frozen=True)
class RepresentativeSignature:
    """InfLLM-style representative tokens: the block's ``R`` keys with the largest summed attention logit from the
    *probe* -- the prefill's most recent queries of the head's query group (the question, at the end of a prompt) --
    stored as ``R`` rows and scored by the max over them. Needs the probe (``probe [..., P, d]``, projected like
    the keys); blocks completed during decode use the same probe. Cost per block: ``P · B · d`` multiply-adds once.
    Width ``d`` per row.

    Reference: Xiao et al., "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient Context
    Memory", 2024 (representative score of a token = sum of the local queries' attention logits to it).
    """

    name: ClassVar[str] = "reps"
    needs_probe: ClassVar[bool] = True

    def width(self, d: int) -> int:
        return d

    def rows_per_block(self, sig_rows: int) -> int:
        return sig_rows

    def block(
        self,
        keys: torch.Tensor,
        valid: torch.Tensor,
        *,
        rows: int = 4,
        probe: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        """``keys [..., n, B, d]``, ``valid [..., n, B]``, ``probe [..., P, d]`` -> ``[..., n, rows*d]``."""
        if probe is None:
            raise ValueError("signature 'reps' needs the probe queries (the prefill's last queries)")
        *lead, bs, d = keys.shape
        score = torch.einsum("...nbd,...pd->...nb", keys.float(), probe.float())
        score = score.masked_fill(~valid, -math.inf).reshape(-1, bs)
        r = min(rows, bs)
        val, idx = score.topk(r, dim=-1)  # [M, r]
        idx = torch.where(torch.isfinite(val), idx, idx[:, :1])  # fewer valid tokens than rows: repeat the best
        if rows > bs:
            idx = idx[:, torch.arange(rows, device=keys.device) % bs]
        x = keys.reshape(-1, bs, d)
        reps = _gather_tokens(x, idx) * valid.reshape(-1, bs).any(-1).to(x.dtype)[:, None, None]
        return reps.reshape(*lead[:-1], lead[-1], rows * d)

    def encode_query(self, q: torch.Tensor) -> torch.Tensor:
        """``q [..., d]`` -> ``[..., d]``."""
        return q


#: signature name -> signature object
SIGNATURES: dict[str, MeanSignature | MinMaxSignature | CentroidSignature | RepresentativeSignature] = {
    "mean": MeanSignature(),
    "minmax": MinMaxSignature(),
    "centroids": CentroidSignature(),
    "reps": RepresentativeSignature(),
}


# ---------------------------------------------------------------------------------------------------- projections
def project(x: torch.Tensor, proj: torch.Tensor | None) -> torch.Tensor:
    """Project ``x [B, H, ..., D]`` with ``proj [B, H, D, d]`` -> ``[B, H, ..., d]`` (identity when ``proj`` is None)."""
    if proj is None:
        return x
    shape = x.shape
    flat = x.reshape(shape[0], shape[1], -1, shape[-1])
    out = torch.matmul(flat, proj.to(x.dtype))
    return out.reshape(*shape[:-1], proj.shape[-1])


def random_projection(
    batch: int, heads: int, dim: int, d_sig: int, *, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Seeded Gaussian JL sketch ``[batch, heads, dim, d_sig]``, entries ``N(0, 1/d_sig)``; identical over the batch
    (it depends on the seed and the head only)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.randn(heads, dim, d_sig, generator=gen, dtype=torch.float32) / math.sqrt(d_sig)
    return p.to(device).unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def fit_pca(keys: torch.Tensor, valid: torch.Tensor, d_sig: int) -> torch.Tensor:
    """Top ``d_sig`` right singular vectors of each head's (uncentred) key matrix.

    Args:
        keys: ``[B, H, T, D]`` post-RoPE keys.
        valid: ``[B, T]`` bool, False on padding.
        d_sig: output dimension; if ``d_sig > D`` the extra columns are zero.

    Returns:
        ``[B, H, D, d_sig]`` float32 with orthonormal columns (zero columns beyond the rank), each column signed so
        that its largest-magnitude entry is positive.
    """
    b, h, _, d = keys.shape
    x = keys.float() * valid[:, None, :, None].float()
    # eigenvectors of the D x D second-moment matrix == right singular vectors of x (cheap: D is small)
    gram = torch.matmul(x.transpose(-1, -2), x)  # [B, H, D, D]
    _, evecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    top = evecs.flip(-1)[..., : min(d_sig, d)]
    # eigenvectors are defined up to sign, and rounding (chunked vs one-shot prefill, another CPU) can flip one:
    # make each column's largest-magnitude entry positive so the basis is reproducible
    pivot = top.gather(-2, top.abs().argmax(-2, keepdim=True))
    top = top * torch.where(pivot < 0, -1.0, 1.0)
    if d_sig > d:
        top = torch.cat([top, top.new_zeros(b, h, d, d_sig - d)], dim=-1)
    return top.contiguous()


def fit_learned(
    keys: torch.Tensor,
    valid: torch.Tensor,
    queries: torch.Tensor,
    query_pos: torch.Tensor,
    d_sig: int,
    block_size: int,
    scaling: float,
    *,
    steps: int = 60,
    lr: float = 0.02,
    return_temperature: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fit a projection on the prefill so that projected mean-key block scores rank blocks like true attention.

    Objective (ListNet-style listwise cross-entropy, averaged over the sampled prefill queries and KV heads): for a
    prefill query group ``q_g`` (the ``G`` query heads sharing a KV head) at position ``t``, the target distribution
    over the complete blocks ``j`` that end before ``t`` is the true attention mass ``p_j = Σ_g Σ_{i∈j} softmax(s·q_g·k_i)``
    (normalised over those blocks); the model distribution is ``softmax_j(τ · (Σ_g P^T q_g) · (P^T k̄_j))`` with
    ``k̄_j`` the mean key of block j and a learned temperature ``τ``. We minimise ``KL(p ‖ model)`` over ``P`` (and
    ``τ``) with Adam, starting from the PCA basis. Deterministic (no random draws).

    Args:
        keys: ``[B, H, T, D]`` prefill keys; ``valid``: ``[B, T]``.
        queries: ``[B, H, n, G, D]`` sampled prefill queries (post-RoPE) grouped per KV head; ``query_pos``: ``[n]``
            their cache positions.
        d_sig: output dimension; ``block_size``: tokens per block; ``scaling``: the model's softmax scale.

    Fitting cost: ``steps`` Adam steps over ``B·H·n·nb·d`` score terms, plus one dense ``B·H·n·G·T·D`` pass for
    the targets (SmolLM2 at 4K tokens, 30 layers, n = 64: about 2 s on one CPU thread).

    Returns:
        ``[B, H, D, d_sig]`` float32; with ``return_temperature`` also ``τ [B, H]``, so that
        ``softmax_j(τ · scaling · (Σ_g P^T q_g)·(P^T k̄_j))`` estimates the block masses (1 where nothing was fitted).
    """
    p0 = fit_pca(keys, valid, d_sig)
    b, h, t, d = keys.shape
    nb = t // block_size
    if nb < 2 or queries.shape[2] == 0:
        return (p0, torch.ones(b, h, device=keys.device)) if return_temperature else p0
    with torch.inference_mode(False), torch.enable_grad():
        k = keys.float().clone()
        vmask = valid.clone()
        q = queries.float().clone()
        qpos = query_pos.clone()
        # target block masses, computed once
        logits = torch.einsum("bhngd,bhtd->bhngt", q, k) * scaling
        causal = torch.arange(t, device=k.device)[None, :] <= qpos[:, None]  # [n, T]
        allowed = causal[None, None, :, None, :] & vmask[:, None, None, None, :]
        probs = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1).sum(3)  # [B, H, n, T]
        mass = probs[..., : nb * block_size].reshape(b, h, -1, nb, block_size).sum(-1)  # [B, H, n, nb]
        block_end = (torch.arange(nb, device=k.device) + 1) * block_size - 1
        blk_ok = block_end[None, :] < qpos[:, None]  # [n, nb] block complete before the query
        bvalid = vmask[:, : nb * block_size].reshape(b, nb, block_size)
        blk_ok = blk_ok[None, None] & bvalid.any(-1)[:, None, None, :]
        target = mass.masked_fill(~blk_ok, 0.0)
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        kb = k[:, :, : nb * block_size].reshape(b, h, nb, block_size, d)
        kbar = MeanSignature().block(kb, bvalid[:, None].expand(b, h, nb, block_size))  # [B, H, nb, D]
        qsum = q.sum(3)  # [B, H, n, D]
        proj = torch.nn.Parameter(p0.clone())
        log_tau = torch.nn.Parameter(torch.zeros(b, h, 1, 1, device=k.device))
        opt = torch.optim.Adam([proj, log_tau], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            qs = torch.matmul(qsum, proj)  # [B, H, n, d]
            ks = torch.matmul(kbar, proj)  # [B, H, nb, d]
            sc = torch.matmul(qs, ks.transpose(-1, -2)) * scaling * log_tau.exp()
            logq = torch.log_softmax(sc.masked_fill(~blk_ok, -1e9), dim=-1)
            loss = -(target * logq.masked_fill(~blk_ok, 0.0)).sum(-1).mean()
            loss.backward()
            opt.step()
        if return_temperature:
            return proj.detach().clone(), log_tau.detach().exp().reshape(b, h).clone()
        return proj.detach().clone()


#: projection names; ``fit_projection`` dispatches on them
PROJECTIONS: tuple[str, ...] = ("none", "random", "pca", "learned")


def fit_projection(
    kind: str,
    keys: torch.Tensor,
    valid: torch.Tensor,
    d_sig: int,
    *,
    seed: int,
    block_size: int,
    scaling: float = 1.0,
    queries: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
    return_temperature: bool = False,
) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """The projection ``[B, H, D, d_sig]`` of one layer (``None`` for ``kind="none"``). ``keys [B, H, T, D]`` are the
    prefill keys, ``valid [B, T]`` the non-padding mask; ``learned`` also needs the sampled prefill ``queries``.
    ``return_temperature``: return ``(projection, τ [B, H] or None)``, ``τ`` being the fitted score temperature of
    ``learned`` (see :func:`fit_learned`; None for the other kinds)."""
    b, h, _, d = keys.shape
    tau = None
    if kind == "none":
        proj = None
    elif kind == "random":
        proj = random_projection(b, h, d, d_sig, seed=seed, device=keys.device)
    elif kind == "pca":
        proj = fit_pca(keys, valid, d_sig)
    elif kind == "learned":
        if queries is None or query_pos is None:
            if keys.shape[2] // block_size >= 2:
                raise ValueError("projection 'learned' needs the prefill queries")
            proj = fit_pca(keys, valid, d_sig)  # nothing to rank yet: fit_learned would return PCA as well
        else:
            proj, tau = fit_learned(
                keys, valid, queries, query_pos, d_sig, block_size, scaling, return_temperature=True
            )
    else:
        raise ValueError(f"unknown projection {kind!r}; allowed: {', '.join(PROJECTIONS)}")
    return (proj, tau) if return_temperature else proj
