"""Representative-token signatures (InfLLM-style: the block's keys most attended by the prefill's last queries)."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.selection import BlockSelector, SelectionConfig, needs_queries
from kvprism.signatures import SIGNATURES
from tests.support.sig_helpers import needle_recall, planted_cache, select_on

SIG = SIGNATURES["reps"]


def test_block_with_one_dominant_key_ranks_first():
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(6, 16, 8, generator=g)
    q = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    keys[4, 9] = 6.0 * q
    valid = torch.ones(6, 16, dtype=torch.bool)
    probe = q[None] + 0.1 * torch.randn(5, 8, generator=g)  # [P, d]
    rows = SIG.block(keys, valid, rows=2, probe=probe).reshape(6, 2, 8)
    assert torch.equal(rows[4, 0], keys[4, 9])  # the most attended key is the first representative
    assert int((rows @ q).amax(-1).argmax()) == 4


def test_representatives_are_real_keys_of_the_block_and_padding_is_skipped():
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(3, 8, 4, generator=g)
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[1, 1:] = False  # one real token: repeated
    valid[2] = False
    probe = torch.randn(3, 4, generator=g)
    rows = SIG.block(keys, valid, rows=3, probe=probe).reshape(3, 3, 4)
    for r in rows[0]:
        assert (keys[0] == r).all(-1).any()
    assert torch.equal(rows[1], keys[1, 0].expand(3, 4))
    assert torch.equal(rows[2], torch.zeros(3, 4))


def test_deterministic():
    keys, query, probe, pos, _ = planted_cache(5)
    a = select_on(keys, query, probe, pos, signature="reps", projection="pca", d_sig=8, k=3)[1]
    b = select_on(keys, query, probe, pos, signature="reps", projection="pca", d_sig=8, k=3)[1]
    assert torch.equal(a, b)


def test_needs_the_probe():
    sel = BlockSelector(SelectionConfig(signature="reps", projection="none", block_size=16), 0, 2, torch.ones(2).bool())
    assert needs_queries(sel.sel)
    with pytest.raises(ConfigError, match="signature = 'reps' needs the prefill queries"):
        sel.fit(torch.randn(1, 2, 64, 8), torch.ones(1, 64, dtype=torch.bool))


@pytest.mark.parametrize(("projection", "d_sig", "floor"), [("none", 32, 0.95), ("pca", 8, 0.9), ("learned", 4, 0.8)])
def test_recall_on_planted_needles_above_floor(projection, d_sig, floor):
    hits = []
    for seed in range(8):
        keys, query, probe, pos, needle = planted_cache(seed)
        _, blocks, _ = select_on(keys, query, probe, pos, signature="reps", projection=projection, d_sig=d_sig, k=2)
        hits.append(needle_recall(blocks, needle))
    assert sum(hits) / len(hits) >= floor
