"""Metrics on hand-made attention tensors whose answers are known in closed form."""

import math

import pytest
import torch

from kvprism.eval import metrics as M


def _keys_for_weights(weights: list[float]) -> torch.Tensor:
    """D = 1 keys whose softmax (query 1, scale 1) equals weights / sum(weights): ``[1, 1, T, 1]``."""
    return torch.tensor(weights).log().view(1, 1, -1, 1)


def test_attention_probs_known_softmax():
    w = [1.0, 1.0, 4.0, 4.0, 2.0, 0.0001, 1.0, 1.0]
    p = M.attention_probs(torch.ones(1, 1, 1), _keys_for_weights(w), scale=1.0)
    expect = torch.tensor(w) / sum(w)
    assert torch.allclose(p[0, 0], expect, atol=1e-6)
    # default scale is 1/sqrt(D)
    q = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]])
    k = torch.tensor([[[[1.0, 0, 0, 0], [0.0, 0, 0, 0]]]])
    p2 = M.attention_probs(q, k)
    assert torch.allclose(p2[0, 0], torch.tensor([math.e, 1.0]) / (math.e + 1.0), atol=1e-6)


def test_true_block_mass_group_mean_and_blocks():
    # two query heads in one group; head 0 looks at token 0, head 1 at token 3 (D = 2 one-hot keys, big logit)
    keys = torch.zeros(1, 1, 4, 2)
    keys[0, 0, 0] = torch.tensor([1.0, 0.0])
    keys[0, 0, 3] = torch.tensor([0.0, 1.0])
    q = torch.tensor([[[100.0, 0.0], [0.0, 100.0]]])
    mass = M.true_block_mass(q, keys, block_size=2, scale=1.0)
    assert mass.shape == (1, 1, 2)
    assert torch.allclose(mass[0, 0], torch.tensor([0.5, 0.5]), atol=1e-6)
    # block sums with a partial last block
    assert M.block_sums(torch.arange(5.0), 2).tolist() == [1.0, 5.0, 4.0]


def test_eligible_blocks_are_the_selection_candidates():
    # 10 tokens, B = 2 -> blocks 0..4; sink 1 block; the window (tokens 7, 8, 9) covers block 3 partly, 4 wholly
    e = M.eligible_blocks(10, 2, sink_blocks=1, window=3)
    # candidates start before the tail (position 7) and are not sinks -> blocks 1, 2 and the partly covered 3
    assert e.tolist() == [False, True, True, True, False]
    # partial trailing block excluded
    assert M.eligible_blocks(9, 2, 0, 0).tolist() == [True, True, True, True, False]


def test_block_recall_known_answer():
    # token weights -> block masses (B = 2): b0 .1, b1 .4, b2 .05, b3 .3, b4 .15
    w = [0.05, 0.05, 0.2, 0.2, 0.025, 0.025, 0.15, 0.15, 0.1, 0.05]
    mass = M.true_block_mass(torch.ones(1, 1, 1), _keys_for_weights(w), 2, scale=1.0)
    assert torch.allclose(mass[0, 0], torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15]), atol=1e-6)
    eligible = M.eligible_blocks(10, 2, sink_blocks=1, window=2)  # blocks 1, 2, 3
    # top-2 eligible by mass: {1, 3}
    sel = torch.tensor([[[1, 2]]])
    assert M.recall_at_k(sel, mass, 2, eligible).item() == pytest.approx(0.5)
    # selecting the sink block does not count; -1 entries are ignored
    assert M.recall_at_k(torch.tensor([[[0, 3, -1]]]), mass, 2, eligible).item() == pytest.approx(0.5)
    assert M.recall_at_k(torch.tensor([[[3, 1]]]), mass, 2, eligible).item() == 1.0
    # k larger than the eligible set: recall against all eligible blocks
    assert M.recall_at_k(torch.tensor([[[1, 3]]]), mass, 5, eligible).item() == pytest.approx(2 / 3)


def test_recall_nan_when_nothing_eligible():
    mass = torch.rand(1, 2, 3)
    eligible = M.eligible_blocks(6, 2, sink_blocks=1, window=4)
    assert not eligible.any()
    assert torch.isnan(M.recall_at_k(torch.tensor([[[1], [2]]]), mass, 1, eligible)).all()
    with pytest.raises(ValueError, match="k = 0"):
        M.recall_at_k(torch.tensor([[[1]]]), mass[:, :1], 0, eligible)


def test_signature_recall_against_reference_selection():
    eligible = torch.tensor([False, True, True, True, True, False])
    ref = torch.tensor([[[1, 2, 3], [4, 3, 0]]])  # head 1's reference has an ineligible block (0)
    sel = torch.tensor([[[3, 1, 5], [4, 1, 2]]])
    r = M.selection_recall(sel, ref, eligible)
    assert r[0, 0].item() == pytest.approx(2 / 3) and r[0, 1].item() == pytest.approx(1 / 2)
    # the ideal-score form: recall_at_k on ideal signature scores
    scores = torch.tensor([[[9.0, 5.0, 4.0, 3.0, 1.0, 8.0]]])
    assert M.recall_at_k(torch.tensor([[[1, 2]]]), scores, 2, eligible).item() == 1.0


def test_mass_captured_and_read_fraction():
    w = [0.1, 0.2, 0.3, 0.4]
    probs = M.attention_probs(torch.ones(1, 1, 1), _keys_for_weights(w), scale=1.0)
    mask = torch.tensor([[[True, False, True, False]]])
    assert M.mass_captured(probs, mask).item() == pytest.approx(0.4, abs=1e-6)
    assert M.read_fraction(mask).item() == 0.5
    # group mean over 2 query heads of one KV head
    probs2 = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    assert M.mass_captured(probs2, mask).item() == pytest.approx(0.5)
    assert M.mass_captured(probs2, torch.ones(1, 1, 4, dtype=torch.bool)).item() == pytest.approx(1.0)


def test_needle_hit_requires_whole_span():
    mask = torch.zeros(2, 3, 10, dtype=torch.bool)
    mask[0, 0, 4:8] = True
    mask[0, 1, 5:8] = True
    mask[1, 2, :] = True
    hit = M.needle_hit(mask, (4, 8))
    assert hit.tolist() == [[True, False, False], [False, False, True]]


def test_kl_divergence_known_value():
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.25, 0.75])
    expect = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert M.kl_divergence(p.log(), q.log()).item() == pytest.approx(expect, rel=1e-5)
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(M.kl_divergence(logits, logits + 7.0), torch.zeros(3), atol=1e-6)  # shift-invariant


def test_summarize_skips_nan():
    s = M.summarize([0.5, float("nan"), 1.0])
    assert s == {"mean": 0.75, "min": 0.5, "max": 1.0, "n": 2, "n_nan": 1}
    assert M.summarize([float("nan")])["mean"] is None


# ------------------------------------------------------------------------------------------ Wilson score intervals
def _wilson_by_roots(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval as the two roots p of (k/n - p)^2 = z^2 p (1 - p) / n (the score test's acceptance
    bounds), solved with the quadratic formula -- independent of the closed form in kvprism."""
    ph = k / n
    a = 1 + z * z / n
    b = -(2 * ph + z * z / n)
    c = ph * ph
    disc = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        # 40-digit decimal evaluations of the closed form with z = 1.959963984540054
        (0, 10, (0.0, 0.2775327998628892)),
        (5, 10, (0.236593090512564, 0.763406909487436)),
        (10, 10, (0.7224672001371107, 1.0)),
        (1, 3, (0.06149194472039624, 0.7923403991979523)),
        (6, 10, (0.3126737697336583, 0.8318196702937639)),
    ],
)
def test_wilson_interval_known_values(k, n, expected):
    lo, hi = M.wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-12) and hi == pytest.approx(expected[1], abs=1e-12)
    ref = _wilson_by_roots(k, n)
    assert lo == pytest.approx(max(ref[0], 0.0), abs=1e-12) and hi == pytest.approx(min(ref[1], 1.0), abs=1e-12)


def test_wilson_interval_edges_and_errors():
    assert M.wilson_interval(0, 0) == (0.0, 1.0)  # nothing scored: no information
    assert M.wilson_interval(0, 5)[0] == 0.0 and M.wilson_interval(5, 5)[1] == 1.0
    lo, hi = M.wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo < M.wilson_interval(5, 10)[1] - M.wilson_interval(5, 10)[0]  # narrows with n
    for k, n in ((-1, 3), (4, 3), (0, -1)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            M.wilson_interval(k, n)


def test_proportion_and_its_format():
    p = M.count_true([True, False, None, True, True, False, True, False, True, False, True])
    assert (p["k"], p["n"], p["rate"]) == (6, 10, 0.6)
    assert M.format_proportion(p) == "0.60 (6/10, 95 % CI 0.31–0.83)"
    assert M.format_proportion(M.count_true([None, None])) == "–"


def test_paired_counts_and_mcnemar():
    a = [True, True, True, False, False, True]
    b = [True, False, False, False, True, True]
    c = M.paired_counts(a, b)
    assert (c["n"], c["both"], c["only_a"], c["only_b"], c["neither"]) == (6, 2, 2, 1, 1)
    assert c["mcnemar_p"] == pytest.approx(1.0)  # 2 vs 1 discordant: 2 * P[X <= 1], X ~ Bin(3, 1/2) = 2 * 4/8
    assert M.mcnemar_exact(0, 0) == 1.0
    assert M.mcnemar_exact(8, 0) == pytest.approx(2 / 2**8)
    assert M.mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    assert "only chip 2, only exact 1, neither 1" in M.format_paired(c, "chip", "exact")
    with pytest.raises(ValueError, match="outcomes"):
        M.paired_counts([True], [True, False])


def test_per_token_needle_hits_of_a_hand_built_trace():
    """Three answer tokens: the needle's block is read at the first and third step, not at the second; mass captured
    follows the hand-built key weights (the needle's four keys hold 0.8 of the mass)."""
    from types import SimpleNamespace

    from kvprism.selection import SelectionConfig

    sel = SelectionConfig(block_size=4, k=1, window=4, sink_blocks=1, projection="none")
    n_tok = 24  # prefill: blocks 0..5; the needle is block 2 (tokens 8..11)
    w = [1.0] * n_tok
    for t in range(8, 12):
        w[t] = 20.0  # 80 of the 100 units of weight
    prefilled = SimpleNamespace(get_seq_length=lambda: n_tok, layers=[SimpleNamespace(keys=_keys_for_weights(w))])
    trace = []
    for step, block in enumerate([2, 3, 2]):
        t = n_tok + 1 + step
        mask = torch.zeros(1, 1, t, dtype=torch.bool)
        mask[..., :4] = True  # sink
        mask[..., t - 4 :] = True  # window
        mask[..., block * 4 : block * 4 + 4] = True
        trace.append({0: {"query": torch.ones(1, 1, 1), "blocks": torch.tensor([[[block]]]), "token_mask": mask}})
    out = M.trace_metrics(trace, prefilled, sel, SimpleNamespace(target_spans=[(8, 12)]))
    assert out["steps"]["needle_hit"] == [1.0, 0.0, 1.0]
    assert out["needle_hit"] == 1.0  # the first step's
    # mass captured over the prefill keys: sink 4 + window's prefill part + the block read, out of 100
    masses = out["steps"]["mass_captured"]
    assert masses[0] == pytest.approx((4 + 80 + 3) / 100, abs=1e-4)  # window of step 0 holds prefill tokens 21..23
    assert masses[1] == pytest.approx((4 + 4 + 2) / 100, abs=1e-4)  # block 3, window tokens 22..23
    assert masses[2] == pytest.approx((4 + 80 + 1) / 100, abs=1e-4)  # window token 23
