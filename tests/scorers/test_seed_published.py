"""seed-as-published: the seed's simplified impairment model as a scorer."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.scorers import SCORERS
from kvprism.scorers.seed_published import SeedPublishedConfig, SeedPublishedScorer, seed_published_weights
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures

# one bank, N = 3 rows, w = 2: min -1, max 7 -> U = [[1/8, 2/8], [3/8, 5/8], [0, 1]]; 2 bits (3 steps):
# 3U = [[.375, .75], [1.125, 1.875], [0, 3]] -> rounded [[0, 1], [1, 2], [0, 3]] / 3
SIG = torch.tensor([[[0.0, 1.0], [2.0, 4.0], [-1.0, 7.0]]])
W_2BIT = torch.tensor([[[0.0, 1 / 3], [1 / 3, 2 / 3], [0.0, 1.0]]])
Q = torch.tensor([[1.0, -2.0]])


def test_weights_follow_min_max_and_rounding():
    assert torch.allclose(seed_published_weights(SIG, 2), W_2BIT)
    assert torch.allclose(seed_published_weights(SIG, 0), (SIG + 1) / 8)
    # a constant bank has no span: all weights 0
    assert torch.equal(seed_published_weights(torch.full((1, 2, 2), 3.0), 4), torch.zeros(1, 2, 2))


def test_noise_free_scores_equal_the_formula():
    sc = SeedPublishedScorer(config=SeedPublishedConfig(bits=2, weight_sigma=0.0, detector_sigma=0.0))
    sc.program(SIG)
    assert torch.allclose(sc.scores(Q), torch.tensor([[-2 / 3, -1.0, -2.0]]))
    assert sc.counters == {"row_programs": 3, "evaluations": 1}


def test_noisy_scores_equal_the_formula_with_the_same_draws():
    cfg = SeedPublishedConfig(bits=2, weight_sigma=0.1, detector_sigma=0.01)
    sc = SeedPublishedScorer(config=cfg, seed=7)
    sc.program(SIG)
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):  # fresh draws at every evaluation, in the documented order
        e = torch.randn((1, 3, 2), generator=gen)
        eps = torch.randn((1, 3), generator=gen)
        s = ((W_2BIT + 0.1 * e) @ Q[0]).reshape(1, 3)
        expected = s + 0.01 * s.abs().amax(-1, keepdim=True) * eps
        assert torch.allclose(sc.scores(Q), expected, atol=1e-6)
    grouped = SeedPublishedScorer(config=cfg, seed=7)
    grouped.program(SIG)
    assert grouped.scores(torch.stack([Q, 2 * Q], dim=1)).shape == (1, 2, 3)


def test_append_rescales_the_whole_bank():
    sc = SeedPublishedScorer(config=SeedPublishedConfig(bits=0, weight_sigma=0.0, detector_sigma=0.0))
    sc.program(SIG[:, :2])
    sc.append(SIG[:, 2:])
    assert sc.n_rows == 3
    assert torch.allclose(sc.weights, (SIG + 1) / 8)


def test_registered_scorer_selects_like_exact_without_impairments():
    assert SCORERS["seed-as-published"] is SeedPublishedScorer
    quiet = SeedPublishedConfig(bits=0, weight_sigma=0.0, detector_sigma=0.0)
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 8 * 16, 32, generator=gen)
    valid = torch.ones(1, 8 * 16, dtype=torch.bool)
    query = torch.randn(1, 2, 2, 32, generator=gen)
    cand = torch.ones(1, 2, 8, dtype=torch.bool)
    picks = {}
    for scorer, photonic in (("exact", "seed-nominal"), ("seed-as-published", quiet)):
        sel = SelectionConfig(block_size=16, k=3, d_sig=8, projection="random", scorer=scorer, photonic=photonic)
        s = BlockSelector(sel, 0, 2, torch.ones(2, dtype=torch.bool))
        s.fit(keys, valid)
        s.program(block_signatures(sel, s.proj, keys, valid, layer_idx=0))
        picks[scorer] = s.select(query, cand)
    assert isinstance(s.scorer, SeedPublishedScorer) and s.scorer.config is quiet
    assert torch.equal(picks["exact"], picks["seed-as-published"])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="bits"):
        SeedPublishedConfig(bits=-1)
    with pytest.raises(ConfigError, match="photonic"):
        SelectionConfig(scorer="seed-as-published", photonic=3.0)
