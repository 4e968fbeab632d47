"""SelectionConfig validation, the exact scorer's top-k, candidate blocks and gather plans."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.hf.cache import SparseCache, cache_kwargs
from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.selection import BlockSelector, SelectionConfig, resolve_heads
from tests.conftest import tiny_model
from tests.hf.test_cache import _batch, decode_loop


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match=r"SelectionConfig.block_size = 0 .*\[1, inf\)"):
        SelectionConfig(block_size=0)
    with pytest.raises(ConfigError, match=r"SelectionConfig\.signature = 'avg'"):
        SelectionConfig(signature="avg")
    with pytest.raises(ConfigError, match=r"SelectionConfig\.scorer = 'magic'.*'exact'"):
        SelectionConfig(scorer="magic")
    with pytest.raises(ConfigError, match=r"SelectionConfig\.heads"):
        SelectionConfig(heads=[[1, 0]])
    with pytest.raises(ConfigError, match=r"SelectionConfig\.photonic"):
        SelectionConfig(photonic=3)
    assert SelectionConfig(heads=[[True, False]]).heads == ((True, False),)


def test_heads_from_json(tmp_path):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"mask": [[True, False], [False, True]]}))
    mask = resolve_heads(str(path), 2, 2)
    assert mask.tolist() == [[True, False], [False, True]]
    with pytest.raises(ConfigError, match=r"shape \(2, 2\); the model needs \(3, 2\)"):
        resolve_heads(str(path), 3, 2)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_heads(str(tmp_path / "nope.json"), 2, 2)


def test_exact_scorer_selects_true_topk_with_mask():
    g = torch.Generator().manual_seed(0)
    sel = SelectionConfig(block_size=4, k=3, d_sig=6, projection="none", gqa_reduce="sum")
    s = BlockSelector(sel, 0, 2, torch.tensor([True, True]))
    s.fitted = True
    sig = torch.randn(2, 2, 10, 6, generator=g)
    s.program(sig)
    q = torch.randn(2, 2, 3, 6, generator=g)
    cand = torch.rand(2, 2, 10, generator=g) > 0.3
    got = s.select(q, cand)
    ref = (sig @ q.sum(2).unsqueeze(-1)).squeeze(-1).masked_fill(~cand, -math.inf)
    for b in range(2):
        for h in range(2):
            n = int(cand[b, h].sum())
            want = ref[b, h].topk(min(3, n)).indices.tolist()
            assert got[b, h, : len(want)].tolist() == want
            assert (got[b, h, len(want) :] == -1).all()
    # max reduction scores every query head and takes the max
    s2 = BlockSelector(sel.replace(gqa_reduce="max"), 0, 2, torch.tensor([True, True]))
    s2.fitted = True
    s2.program(sig)
    all_cand = torch.ones(2, 2, 10, dtype=torch.bool)
    want = torch.einsum("bhnd,bhgd->bhgn", sig, q).amax(2).topk(3).indices
    assert torch.equal(s2.select(q, all_cand), want)


def test_exact_selection_in_model_is_topk_of_projected_signatures():
    """Recompute, from the cached keys and the fitted projection, the projected block signatures and the exact top-k
    at a decode step; the model's selection must equal it."""
    model = tiny_model("llama")
    ids, mask = _batch(11)
    sel = SelectionConfig(block_size=4, k=3, d_sig=5, window=2, sink_blocks=1, projection="pca")
    cache = SparseCache(model, sel, trace=True)
    decode_loop(model, ids, mask, cache, steps=1)
    t = ids.shape[1] + 1
    for layer_idx, layer in enumerate(cache.layers):
        rec = cache.trace[0][layer_idx]
        p = cache.selectors[layer_idx].proj  # [B, H, D, d]
        keys = layer.keys.float()  # [B, H, T, D]
        nb = t // 4
        pk = torch.einsum("bhtd,bhde->bhte", keys[:, :, : nb * 4], p).reshape(2, 2, nb, 4, -1)
        valid = mask.bool().clone()
        valid = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool)], -1)[:, : nb * 4].reshape(2, 1, nb, 4, 1)
        sig = (pk * valid).sum(3) / valid.sum(3).clamp_min(1)
        q = rec["query"].reshape(2, 2, 2, -1).float()
        qs = torch.einsum("bhgd,bhde->bhe", q, p)
        score = torch.einsum("bhne,bhe->bhn", sig, qs)
        tail = min(nb * 4, t - 2)
        first_blk = torch.tensor([0, 6 // 4])
        blk = torch.arange(nb)
        cand = (blk[None] >= first_blk[:, None] + 1) & (blk[None] * 4 < tail)
        score = score.masked_fill(~cand[:, None], -math.inf)
        # ties: the lower block id first (a stable descending sort)
        want = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :3]
        assert torch.equal(rec["blocks"], want), layer_idx


def test_candidates_and_plan_cover_everything_once():
    valid = torch.ones(2, 23, dtype=torch.bool)
    valid[1, :5] = False
    layout = BlockLayout.from_valid(valid, BlockGeometry(4, 1, 3))
    cand = layout.candidates
    assert layout.tail_start.tolist() == [20, 20] and cand.shape == (2, 6)  # 6 slots: the last is incomplete
    assert cand[0].tolist() == [False, True, True, True, True, False]
    assert cand[1].tolist() == [False, False, True, True, True, False]
    sink_read = [(layout.token_roles[i] == 1).nonzero().flatten().tolist() for i in range(2)]
    assert sink_read == [[0, 1, 2, 3], [5, 6, 7]]  # sink block = the block of the first real token
    blocks = torch.tensor([[[1, 2, 3, 4]], [[2, 3, 4, -1]]])
    plan = layout.gather_plan(blocks)
    tm = plan.token_mask(23)
    assert tm[0, 0].all()  # every real token read exactly once ...
    assert tm[1, 0].tolist() == [False] * 5 + [True] * 18
    ok_pos = [p for p, o in zip(plan.token_idx[0, 0].tolist(), plan.token_ok[0, 0].tolist(), strict=True) if o]
    assert sorted(ok_pos) == list(range(23))  # ... and never twice
    assert plan.n_attended.tolist() == [[23], [18]] and plan.n_cached.tolist() == [23, 18]


def needle_run_2k(model, tok, sel):
    """Generate the answer to one 2K needle sample (dense and exact selection both answer it correctly) through a
    SparseCache with ``sel``; returns (sample, answer, stats summary)."""
    from kvprism.eval.tasks import niah_single

    sample = niah_single(tok, 2048, 0.25, 1)
    cache = SparseCache(model, sel)
    ids = torch.tensor([sample.input_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            **cache_kwargs(model, cache),
            max_new_tokens=12,
            do_sample=False,
        )
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return sample, answer, cache.stats.summary()


@pytest.mark.slow
def test_smollm2_needle_2k_exact_learned(smollm2):
    """Exact selection with the default (learned) projection finds a 2K needle reading 4 blocks of 64."""
    model, tok = smollm2
    sample, answer, s = needle_run_2k(model, tok, SelectionConfig(block_size=64, k=4))
    assert s["restricted"] and s["read_fraction_max"] < 0.25
    assert sample.score(answer), answer


def test_relu_variant_programs_non_negative_rows_and_inputs():
    model = tiny_model("llama")
    ids, mask = _batch(12)
    sel = SelectionConfig(block_size=4, k=2, d_sig=6, projection="random", sign="relu", signature="minmax")
    cache = SparseCache(model, sel, trace=True)
    decode_loop(model, ids, mask, cache, steps=2)
    for layer_idx, selector in enumerate(cache.selectors):
        rows = selector.scorer.rows
        assert rows.shape[-1] == 12 and (rows >= 0).all() and (rows > 0).any()
        enc = selector.encode_query(cache.trace[-1][layer_idx]["query"].reshape(2, 2, 2, -1))
        assert (enc >= 0).all()


def test_a_stored_backend_key_loads_as_scorer(tmp_path):
    """Selection files written before the scorer vocabulary name the scorer ``backend``: they still load (through
    kvprism.migrate.migrate_backend); nothing else accepts the old name."""
    path = tmp_path / "sel.toml"
    path.write_text('backend = "photonic"\nk = 3\n')
    assert SelectionConfig.from_toml(path) == SelectionConfig(scorer="photonic", k=3)
    assert SelectionConfig.from_dict({"backend": "exact"}).scorer == "exact"
    with pytest.raises(ConfigError, match="no field 'backend'"):
        SelectionConfig.from_dict({"backend": "exact", "scorer": "photonic"})
    with pytest.raises(ConfigError, match="no field 'backend'"):
        SelectionConfig(backend="photonic")
    with pytest.raises(ConfigError, match="no field 'backend'"):
        SelectionConfig().replace(backend="exact")
    assert not hasattr(SelectionConfig(), "backend")
    selector = BlockSelector(SelectionConfig(), 0, 2, torch.ones(2, dtype=torch.bool))
    assert not hasattr(selector, "backend") and not hasattr(selector, "needs_queries")
