"""Block signatures and projections."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.signatures import SIGNATURES, fit_learned, fit_pca, fit_projection, project, random_projection


def _keys(seed: int, b=2, h=3, t=32, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_minmax_score_is_quest_bound(seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(5, 8, 6, generator=g)  # [n, B, d]
    valid = torch.rand(5, 8, generator=g) > 0.3
    valid[:, 0] = True
    q = torch.randn(6, generator=g)
    sig = SIGNATURES["minmax"].block(keys, valid)
    score = sig @ SIGNATURES["minmax"].encode_query(q)
    hi = keys.masked_fill(~valid[..., None], -torch.inf).amax(1)
    lo = keys.masked_fill(~valid[..., None], torch.inf).amin(1)
    quest = torch.maximum(q * lo, q * hi).sum(-1)
    torch.testing.assert_close(score, quest)
    # an upper bound of q·k over the real keys of each block
    qk = (keys @ q).masked_fill(~valid, -torch.inf).amax(1)
    assert (score >= qk - 1e-5).all()


def test_mean_signature_excludes_padding_and_is_linear_in_query():
    keys = torch.randn(3, 4, 5)
    valid = torch.tensor([[True] * 4, [False, False, True, True], [False] * 4])
    sig = SIGNATURES["mean"].block(keys, valid)
    torch.testing.assert_close(sig[0], keys[0].mean(0))
    torch.testing.assert_close(sig[1], keys[1, 2:].mean(0))
    assert torch.equal(sig[2], torch.zeros(5))
    q = torch.randn(5)
    torch.testing.assert_close(sig @ SIGNATURES["mean"].encode_query(q), sig @ q)


def test_random_projection_is_seeded_and_scaled():
    a = random_projection(2, 3, 64, 16, seed=7)
    b = random_projection(2, 3, 64, 16, seed=7)
    c = random_projection(2, 3, 64, 16, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], a[1])  # the same sketch for every batch row
    assert abs(a.pow(2).sum(-2).mean().item() - 64 / 16) < 0.5  # columns have E|p|^2 = D/d


def test_pca_is_orthonormal_and_captures_dominant_directions():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g)).Q
    coeff = torch.randn(1, 1, 200, 16, generator=g) * torch.tensor([10.0, 5.0] + [0.01] * 14)
    keys = coeff @ basis.T
    p = fit_pca(keys, torch.ones(1, 200, dtype=torch.bool), 2)
    torch.testing.assert_close(p[0, 0].T @ p[0, 0], torch.eye(2), atol=1e-5, rtol=0)
    # the span of the top-2 directions equals span(basis[:, :2])
    overlap = basis[:, :2].T @ p[0, 0]
    assert torch.allclose(torch.linalg.svdvals(overlap), torch.ones(2), atol=1e-3)
    # padding is ignored
    keys2 = keys.clone()
    keys2[0, 0, :50] = 1e3
    valid = torch.ones(1, 200, dtype=torch.bool)
    valid[0, :50] = False
    p2 = fit_pca(keys2, valid, 2)
    assert torch.allclose(torch.linalg.svdvals(basis[:, :2].T @ p2[0, 0]), torch.ones(2), atol=1e-3)


def test_pca_basis_is_signed_reproducibly():
    """Eigenvectors are defined up to sign; a perturbation at rounding level (another prefill chunking, another CPU)
    must not flip a column, so each column is signed by its largest-magnitude entry."""
    keys = _keys(3)
    valid = torch.ones(2, 32, dtype=torch.bool)
    p = fit_pca(keys, valid, 6)
    pivot = p.gather(-2, p.abs().argmax(-2, keepdim=True))
    assert bool((pivot > 0).all())
    g = torch.Generator().manual_seed(4)
    nudged = fit_pca(keys * (1 + 1e-6 * torch.randn(keys.shape, generator=g)), valid, 6)
    torch.testing.assert_close(nudged, p, atol=1e-3, rtol=0)
    torch.testing.assert_close(fit_pca(-keys, valid, 6), p)  # the same second moments: the same basis


def test_pca_pads_when_d_sig_exceeds_dim():
    p = fit_pca(_keys(1, d=4), torch.ones(2, 32, dtype=torch.bool), 6)
    assert p.shape == (2, 3, 4, 6) and torch.equal(p[..., 4:], torch.zeros(2, 3, 4, 2))


def test_project_and_none():
    keys = _keys(2)
    assert fit_projection("none", keys, torch.ones(2, 32, dtype=torch.bool), 8, seed=0, block_size=8) is None
    assert project(keys, None) is keys
    p = random_projection(2, 3, 16, 8, seed=0)
    torch.testing.assert_close(project(keys, p), torch.einsum("bhtd,bhde->bhte", keys, p))


def test_learned_improves_ranking_agreement_over_pca():
    """On keys whose attention-relevant direction has low variance, the learned projection ranks blocks (by the
    projected mean-key score) closer to true attention than PCA does."""
    g = torch.Generator().manual_seed(0)
    b, h, t, d, bs, gq = 1, 1, 128, 16, 8, 2
    keys = torch.randn(b, h, t, d, generator=g) * torch.tensor([4.0] * 4 + [1.0] * 12)
    hot = torch.randint(0, t // bs - 2, (4,), generator=g)
    signal = torch.zeros(d)
    signal[10] = 1.0
    for j in hot.tolist():
        keys[0, 0, j * bs : (j + 1) * bs] += 3.0 * signal
    queries = (signal * 4.0 + 0.3 * torch.randn(b, h, 16, gq, d, generator=g)).float()
    qpos = torch.arange(t - 16, t)
    valid = torch.ones(b, t, dtype=torch.bool)
    pca = fit_pca(keys, valid, 2)
    learned = fit_learned(keys, valid, queries, qpos, 2, bs, d**-0.5, steps=150)
    assert learned.shape == pca.shape

    def top_hits(p):
        kbar = keys[0, 0, : t // bs * bs].reshape(-1, bs, d).mean(1) @ p[0, 0]
        sc = kbar @ (queries[0, 0].sum(1) @ p[0, 0]).T  # [nb, n]
        top = sc.topk(4, dim=0).indices  # [4, n]
        return sum(int(x in hot.tolist()) for x in top.flatten().tolist())

    assert top_hits(learned) > top_hits(pca)
