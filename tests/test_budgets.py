"""The adaptive top-p block budget (Twilight-style): capped at k, sink + tail always read, per-head read counted."""

from __future__ import annotations

import pytest
import torch

from kvprism.budgets import TopPBudget
from kvprism.errors import ConfigError
from kvprism.selection import SelectionConfig
from tests.support.sig_helpers import planted_cache, select_on


def test_trim_keeps_the_shortest_prefix_reaching_p():
    scores = torch.tensor([[[2.0, 0.0, 1.0, -torch.inf, 0.5]]])
    val, idx = scores.topk(4, dim=-1)
    est = torch.softmax(scores, -1)[0, 0]  # [0.52, 0.07, 0.19, 0, 0.12]
    assert est[0] < 0.6 < est[0] + est[2]
    out = TopPBudget(0.6).trim(scores, val, idx, 1.0)
    assert out.tolist() == [[[0, 2, -1, -1]]]
    assert TopPBudget(1.0).trim(scores, val, idx, 1.0)[0, 0, :3].tolist() == [0, 2, 4]
    assert TopPBudget(0.01).trim(scores, val, idx, 1.0).tolist() == [[[0, -1, -1, -1]]]  # at least one block


@pytest.mark.parametrize("seed", range(4))
def test_never_exceeds_cap_and_always_reads_sink_and_tail(seed):
    keys, query, probe, pos, _ = planted_cache(seed, n_blocks=30)
    for p in (0.5, 0.9, 0.999):
        _, blocks, layout = select_on(keys, query, probe, pos, projection="none", k=6, budget="top_p", top_p=p)
        assert blocks.shape[-1] == 6
        n_sel = (blocks >= 0).sum(-1)
        assert (n_sel >= 1).all() and (n_sel <= 6).all()
        plan = layout.gather_plan(blocks)
        mask = plan.token_mask(keys.shape[2])
        assert mask[:, :, :16].all()  # sink block
        tail_start = layout.tail_start_int
        assert mask[:, :, tail_start:].all()  # tail
        # the read count is what is gathered: sink + tail + 16 tokens per kept block, per head
        assert torch.equal(plan.n_attended[0], 16 + (keys.shape[2] - tail_start) + 16 * n_sel[0])
        assert (plan.n_attended < keys.shape[2]).all()


def test_concentrated_heads_read_fewer_blocks_than_the_cap():
    # a signature whose score estimates the block's largest logit (here representative tokens): one planted needle
    # carries most of the estimated mass. (A mean signature divides the needle's logit by the block size, so its
    # estimate is flat and the budget reads up to the cap.)
    keys, query, probe, pos, needle = planted_cache(1, n_blocks=30, strength=14.0)
    _, blocks, _ = select_on(
        keys, query, probe, pos, signature="reps", projection="none", k=8, budget="top_p", top_p=0.9
    )
    n_sel = (blocks >= 0).sum(-1)[0]
    assert (n_sel < 8).all()
    assert (blocks[0, :, 0] == needle).all()


def test_deterministic_and_topk_unchanged():
    keys, query, probe, pos, _ = planted_cache(2)
    a = select_on(keys, query, probe, pos, projection="pca", d_sig=8, k=5, budget="top_p")[1]
    b = select_on(keys, query, probe, pos, projection="pca", d_sig=8, k=5, budget="top_p")[1]
    c = select_on(keys, query, probe, pos, projection="pca", d_sig=8, k=5)[1]
    assert torch.equal(a, b)
    kept = a >= 0
    assert torch.equal(a[kept], c[kept])  # a prefix of the fixed top-k ranking


def test_config_range():
    with pytest.raises(ConfigError, match="top_p"):
        SelectionConfig(budget="top_p", top_p=0.0)
    with pytest.raises(ConfigError, match="budget"):
        SelectionConfig(budget="top_q")
