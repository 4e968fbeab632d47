"""Quest min/max signatures through the selector: ranking, planted-needle recall and their cost at low d_sig."""

from __future__ import annotations

import torch

from kvprism.signatures import SIGNATURES
from tests.support.sig_helpers import needle_recall, planted_cache, select_on


def test_block_with_one_dominant_key_ranks_first():
    g = torch.Generator().manual_seed(6)
    keys = 0.5 * torch.randn(6, 16, 8, generator=g)
    q = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    keys[2, 0] = 6.0 * q
    sig = SIGNATURES["minmax"].block(keys, torch.ones(6, 16, dtype=torch.bool))
    assert int((sig @ SIGNATURES["minmax"].encode_query(q)).argmax()) == 2


def test_bank_rows_are_twice_as_wide():
    keys, query, probe, pos, _ = planted_cache(0, n_blocks=8)
    sel, _, _ = select_on(keys, query, probe, pos, signature="minmax", projection="pca", d_sig=4, k=2)
    assert sel.scorer.rows.shape[-1] == 8  # 2 * d_sig wavelength channels per row


def test_recall_on_planted_needles_above_floor():
    def recall(**kw):
        hits = []
        for seed in range(8):
            keys, query, probe, pos, needle = planted_cache(seed, strength=10.0)
            hits.append(needle_recall(select_on(keys, query, probe, pos, signature="minmax", k=2, **kw)[1], needle))
        return sum(hits) / len(hits)

    assert recall(projection="none") >= 0.9
    assert recall(projection="learned", d_sig=8) >= 0.9
