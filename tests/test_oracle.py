"""The oracle reference selection (:mod:`kvprism.oracle`, ``SparseCache(..., oracle=True)``): at every decode step,
layer and KV head it selects the top-k candidate blocks by the dense attention mass of the step's own query, which
the evaluation metrics compute independently (so its block recall is 1), and with k covering every block it decodes
as dense attention does."""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache

from kvprism.eval.metrics import attention_probs, group_mean, recall_at_k, selectable_block_mass
from kvprism.hf.cache import SparseCache, cache_kwargs
from kvprism.layout import BlockGeometry, BlockLayout, topk_blocks
from kvprism.oracle import block_mass, group_attention, oracle_blocks
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model

SEL = SelectionConfig(block_size=8, k=2, window=8, d_sig=16, sink_blocks=1)


def _decode(model, cache, ids, steps):
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            **cache_kwargs(model, cache),
            max_new_tokens=steps,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, ids.shape[1] :], torch.stack([s[0] for s in out.scores])


def test_oracle_selects_the_top_k_blocks_by_true_attention_mass_at_every_step():
    model = tiny_model("qwen2", seed=1)
    ids = torch.randint(3, 128, (1, 75), generator=torch.Generator().manual_seed(2))
    cache = SparseCache(model, SEL, trace=True, oracle=True)
    _decode(model, cache, ids, 6)
    geometry = BlockGeometry.of(SEL)
    checked = 0
    for per_layer in cache.trace:
        for layer, rec in per_layer.items():
            t = rec["token_mask"].shape[-1]
            keys = cache.layers[layer].keys[:, :, :t]
            layout = BlockLayout.from_lengths(t, geometry)
            # the metrics' own reference: dense softmax, group mean, candidate-token mass per block
            mass = selectable_block_mass(group_mean(attention_probs(rec["query"], keys), keys.shape[1]), layout)
            nb = t // SEL.block_size
            want = topk_blocks(mass[..., :nb], layout.candidate_mask(n=nb), SEL.k)
            assert torch.equal(rec["blocks"], want)
            recall = recall_at_k(rec["blocks"], mass, SEL.k, layout.candidates[0, : mass.shape[-1]])
            assert bool((recall == 1).all())
            checked += 1
    assert checked == 5 * model.config.num_hidden_layers  # 6 tokens: the first comes from the prefill
    assert cache.stats.summary()["select_calls"]["oracle"] == checked
    assert cache.stats.summary()["restricted"]


def test_oracle_with_every_block_decodes_as_dense():
    model = tiny_model("llama", seed=4)
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(3))
    dense_tokens, dense_logits = _decode(model, DynamicCache(), ids, 5)
    cache = SparseCache(model, SEL.replace(k=64), oracle=True)
    tokens, logits = _decode(model, cache, ids, 5)
    assert torch.equal(tokens, dense_tokens)
    torch.testing.assert_close(logits, dense_logits, rtol=1e-4, atol=1e-4)
    assert not cache.stats.summary()["restricted"]


def test_padding_keys_get_no_weight_and_streaming_heads_select_nothing():
    g = torch.Generator().manual_seed(0)
    b, h, gq, t, d = 2, 2, 3, 40, 8
    q, key = torch.randn(b, h, gq, d, generator=g), torch.randn(b, h, t, d, generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, :9] = False  # left padding of row 1
    layout = BlockLayout.from_valid(valid, BlockGeometry(8, 1, 8))
    w = group_attention(q, key, layout, 1 / math.sqrt(d))
    assert torch.allclose(w.sum(-1), torch.ones(b, h))
    assert bool((w[1, :, :9] == 0).all())
    # independent: softmax over the valid keys only, by hand
    logits = torch.einsum("hgd,htd->hgt", q[1], key[1, :, 9:]) / math.sqrt(d)
    torch.testing.assert_close(w[1, :, 9:], logits.softmax(-1).mean(1))
    mass = block_mass(w, layout, t // 8)
    idx = oracle_blocks(q, key, layout, 1 / math.sqrt(d), 2, heads=torch.tensor([True, False]))
    assert bool((idx[:, 1] == -1).all())
    cand = layout.candidate_mask(n=t // 8)
    assert torch.equal(idx[:, 0], topk_blocks(mass[:, 0], cand[:, 0], 2))


def test_oracle_is_a_reference_row_of_the_grid_with_per_step_diagnosis(tmp_path):
    from kvprism.eval import runner as R
    from kvprism.eval.grid import EvalConfig, build_configs
    from kvprism.eval.report import summarize, write_report
    from kvprism.eval.store import read_results
    from tests.conftest import tiny_tokenizer

    configs = build_configs(["dense", "oracle", "exact"], [2], {"block_size": 16})
    assert [(c.name, c.method) for c in configs] == [("dense", "dense"), ("oracle-k2", "oracle"), ("exact-k2", "exact")]
    assert configs[1].selection.k == 2 and configs[1].selection.scorer == "exact"
    assert EvalConfig("o", "oracle", 3).selection.k == 3
    r = R.Runner(
        tiny_model("llama", seed=7),
        tiny_tokenizer(),
        out_dir=tmp_path / "out",
        configs=configs,
        tasks=["niah_single", "niah_multikey_2"],
        contexts=[400],
        depths=[0.5],
        seeds=[0],
        haystack="noise",
        max_new_tokens=4,
        model_name="tiny",
    )
    r.run()
    rows = read_results(r.results)
    oracle = [x for x in rows if x["method"] == "oracle"]
    assert len(oracle) == 2
    for x in oracle:
        assert x["restricted"] and x["read_fraction_mean"] < 1.0
        assert x["block_recall"] == 1.0  # the oracle ranks by the metric's own reference
        assert x["stats"]["select_calls"]["oracle"] > 0
        steps = x["steps"]
        # one entry per decode step; step i produces answer token i (the prefill stops before the prompt's last
        # token, which the first decode step feeds)
        assert len(steps["needle_hit"]) == len(steps["mass_captured"]) == len(x["answer_ids"])
        assert all(v is None or 0.0 <= v <= 1.0 for v in steps["needle_hit"] + steps["mass_captured"])
    s = summarize(rows)["modes"]["niah"]
    assert set(s["exact-k2"]["paired"]) == {"dense", "oracle-k2"}  # exact is compared with the oracle at its k
    assert set(s["oracle-k2"]["paired"]) == {"dense"}
    assert set(s["exact-k2"]["by_task"]) == {"niah_multikey_2 @ 400", "niah_single @ 400"}
    assert s["exact-k2"]["by_task"]["niah_single @ 400"]["n"] == 1
    assert s["dense"]["drift"] is None and s["exact-k2"]["drift"]["oracle"] == "oracle-k2"
    assert s["oracle-k2"]["drift"]["oracle"] is None  # never compared with itself
    report = write_report(r.results.parent)["report"].read_text()
    assert "Accuracy per task and context" in report and "| oracle-k2 |" in report


def test_first_answer_divergence():
    from kvprism.eval.metrics import first_answer_divergence

    assert first_answer_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_answer_divergence([1, 5, 3], [1, 2, 3]) == 1
    assert first_answer_divergence([1, 2], [1, 2, 3]) == 2
    assert first_answer_divergence(None, [1]) is None
