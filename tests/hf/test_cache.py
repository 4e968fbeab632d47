"""SparseCache + "kvprism" attention on tiny random models: dense equivalence, independent masked reference,
signature updates, streaming heads, padding, forking a prefilled dense cache, statistics."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kvprism.errors import ConfigError, KvprismError
from kvprism.hf.cache import SparseCache, cache_kwargs, chunked_prefill
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model

PROMPT = 37  # prompt length: blocks of 8 complete during decode (40, 48)
PAD = 6  # left padding of batch row 1
STEPS = 14


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :PAD] = 0
    mask[1, :PAD] = 0
    return ids, mask


def decode_loop(model, ids, mask, cache, steps=STEPS, tokens=None):
    """Greedy decode (or teacher-forced on ``tokens [B, steps]``); returns logits [steps+1, B, V] and tokens."""
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out_logits, toks = [], []
    with torch.inference_mode():
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache), use_cache=True
        )
        logits = out.logits[:, -1]
        pos = positions[:, -1:]
        for s in range(steps + 1):
            out_logits.append(logits.float())
            if s == steps:
                break
            nxt = logits.argmax(-1, keepdim=True) if tokens is None else tokens[:, s : s + 1]
            toks.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=-1)
            pos = pos + 1
            out = model(
                input_ids=nxt, attention_mask=mask, position_ids=pos, **cache_kwargs(model, cache), use_cache=True
            )
            logits = out.logits[:, -1]
    return torch.stack(out_logits), torch.cat(toks, dim=-1)


def dense_run(model, ids, mask, tokens=None):
    model.set_attn_implementation("sdpa")
    return decode_loop(model, ids, mask, DynamicCache(), tokens=tokens)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_covering_k_equals_dense(family):
    model = tiny_model(family)
    ids, mask = _batch()
    ref, ref_tok = dense_run(model, ids, mask)
    sel = SelectionConfig(block_size=8, k=64, d_sig=8, window=4, sink_blocks=1)
    cache = SparseCache(model, sel)
    got, tok = decode_loop(model, ids, mask, cache)
    assert torch.equal(tok, ref_tok)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    s = cache.stats.summary()
    assert s["decode_steps"] == STEPS
    assert s["restricted"] is False and s["read_fraction_mean"] == 1.0
    # blocks completed during decode were programmed: (PROMPT + STEPS) // 8 rows per bank at the end
    n_final = (PROMPT + STEPS) // 8
    assert all(sl.n_blocks == n_final for sl in cache.selectors)
    assert s["programming_events"] == model.config.num_hidden_layers * 2 * 2 * n_final


def _register_reference(trace_holder: dict) -> str:
    """An independent reference: eager attention over ALL cached keys with a -inf additive mask on the tokens the
    sparse run did not read (taken from its trace)."""

    def ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        if query.shape[2] > 1:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kw)
        step = trace_holder["step"]
        if module.layer_idx == module.config.num_hidden_layers - 1:
            trace_holder["step"] += 1
        tm = trace_holder["trace"][step][module.layer_idx]["token_mask"]  # [B, Hkv, T]
        g = query.shape[1] // key.shape[1]
        tm = tm.repeat_interleave(g, dim=1)[:, :, None, :]  # [B, Hq, 1, T]
        k = key.repeat_interleave(g, dim=1)
        v = value.repeat_interleave(g, dim=1)
        w = torch.matmul(query, k.transpose(-1, -2)) * scaling
        w = w.masked_fill(~tm, -math.inf)
        out = torch.matmul(torch.softmax(w, -1), v)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("kvprism_test_ref", ref_attention)
    AttentionMaskInterface.register("kvprism_test_ref", sdpa_mask)
    return "kvprism_test_ref"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("signature", ["mean", "minmax"])
def test_small_k_matches_masked_reference(family, signature):
    model = tiny_model(family)
    ids, mask = _batch(1)
    sel = SelectionConfig(block_size=4, k=2, d_sig=8, window=3, sink_blocks=1, signature=signature)
    cache = SparseCache(model, sel, trace=True)
    got, tok = decode_loop(model, ids, mask, cache)
    s = cache.stats.summary()
    assert s["restricted"] is True and s["read_fraction_max"] < 0.6
    holder = {"step": 0, "trace": cache.trace}
    model.set_attn_implementation(_register_reference(holder))
    ref, _ = decode_loop(model, ids, mask, DynamicCache(), tokens=tok)
    assert holder["step"] == STEPS
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the sparse output differs from dense attention (the selection restricted something that matters)
    dense, _ = dense_run(model, ids, mask, tokens=tok)
    assert (dense - got).abs().max() > 1e-4


def test_trace_contents_and_padding_never_read():
    model = tiny_model("llama")
    ids, mask = _batch(2)
    sel = SelectionConfig(block_size=4, k=3, d_sig=8, window=2, sink_blocks=1)
    cache = SparseCache(model, sel, trace=True)
    decode_loop(model, ids, mask, cache, steps=5)
    assert len(cache.trace) == 5
    hq = model.config.num_attention_heads
    for s, step in enumerate(cache.trace):
        t = PROMPT + s + 1
        for layer in range(model.config.num_hidden_layers):
            rec = step[layer]
            assert rec["query"].shape == (2, hq, 16)
            assert rec["blocks"].shape == (2, 2, 3) and rec["blocks"].dtype == torch.long
            tm = rec["token_mask"]
            assert tm.shape == (2, 2, t)
            assert not tm[1, :, :PAD].any()  # padding never read
            assert tm[:, :, -2:].all()  # window
            assert tm[0, :, :4].all() and tm[1, :, PAD : PAD + 2].all()  # sink block of the first real tokens
            # selected blocks are read in full (before the tail), and nothing else outside sink/tail
            for b in range(2):
                for h in range(2):
                    expect = torch.zeros(t, dtype=torch.bool)
                    first_blk = 0 if b == 0 else PAD // 4
                    tail = max(0, min(t // 4 * 4, t - 2))
                    for blk in [first_blk, *rec["blocks"][b, h].tolist()]:
                        if blk >= 0:
                            expect[blk * 4 : min(blk * 4 + 4, tail)] = True
                    expect[tail:] = True
                    if b == 1:
                        expect[:PAD] = False
                    assert torch.equal(tm[b, h], expect)


def test_streaming_heads_read_sink_and_window_only():
    model = tiny_model("llama")
    ids, mask = _batch(3)
    heads = [[True, False], [False, False]]
    sel = SelectionConfig(block_size=4, k=3, d_sig=8, window=5, sink_blocks=1, heads=heads)
    cache = SparseCache(model, sel, trace=True)
    decode_loop(model, ids, mask, cache, steps=3)
    for s, step in enumerate(cache.trace):
        t = PROMPT + s + 1
        tail = max(0, min(t // 4 * 4, t - 5))
        for layer, row in enumerate(heads):
            for h, selecting in enumerate(row):
                blocks = step[layer]["blocks"][:, h]
                tm = step[layer]["token_mask"][:, h]
                if selecting:
                    assert (blocks >= 0).all()
                    continue
                assert (blocks == -1).all()
                assert torch.equal(tm[0].nonzero().flatten(), torch.cat([torch.arange(4), torch.arange(tail, t)]))
                assert tm[1].sum() == 2 + (t - tail)  # sink block of row 1 = tokens 6, 7 (block 1 holds 4..7)


def test_signatures_programmed_when_blocks_complete():
    model = tiny_model("llama")
    ids, mask = _batch(4)
    sel = SelectionConfig(block_size=8, k=2, d_sig=8, projection="random", window=0, sink_blocks=0)
    cache = SparseCache(model, sel)
    decode_loop(model, ids, mask, cache, steps=3)  # T = 40 at the last step: block 4 (32..39) just completed
    layer = cache.layers[0]
    sl = cache.selectors[0]
    assert sl.n_blocks == 5 and layer.length == 40
    rows = sl.scorer.rows  # [B, H, N, d]
    proj_keys = torch.matmul(layer.keys.float(), sl.proj)  # [B, H, T, d]
    expect_last = proj_keys[:, :, 32:40].mean(2)
    torch.testing.assert_close(rows[:, :, 4], expect_last, rtol=1e-5, atol=1e-6)
    # padded row: the first block's signature is the mean over real tokens 6, 7 only
    torch.testing.assert_close(rows[1, :, 0], proj_keys[1, :, PAD:8].mean(1), rtol=1e-5, atol=1e-6)
    layers, banks = model.config.num_hidden_layers, 2 * 2
    assert cache.stats.summary()["programming_events"] == layers * banks * 5


def test_from_prefilled_copies_and_matches():
    model = tiny_model("qwen2")
    ids, mask = _batch(5)
    model.set_attn_implementation("sdpa")
    dense = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, dense), use_cache=True)
    before = [(lay.keys.clone(), lay.values.clone()) for lay in dense.layers]
    sel = SelectionConfig(block_size=4, k=2, d_sig=8, window=3, projection="pca")
    forked = SparseCache.from_prefilled(model, dense, sel, trace=True)
    direct = SparseCache(model, sel, trace=True)
    # decode from the fork: feed one token per step after the prompt
    nxt = torch.tensor([[5], [9]])
    outs = []
    for cache in (forked, direct):
        m = mask
        with torch.inference_mode():
            if cache is direct:
                model(
                    input_ids=ids,
                    attention_mask=m,
                    position_ids=positions,
                    **cache_kwargs(model, cache),
                    use_cache=True,
                )
            m = torch.cat([m, torch.ones_like(nxt)], -1)
            outs.append(
                model(
                    input_ids=nxt, attention_mask=m, position_ids=positions[:, -1:] + 1, **cache_kwargs(model, cache)
                ).logits
            )
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(forked.trace[0][0]["blocks"], direct.trace[0][0]["blocks"])
    for (k0, v0), lay in zip(before, dense.layers, strict=True):  # the dense cache was not mutated
        assert lay.keys.shape == k0.shape and torch.equal(lay.keys, k0) and torch.equal(lay.values, v0)


def test_chunked_prefill_equals_one_shot():
    model = tiny_model("llama")
    ids, mask = _batch(6)
    sel = SelectionConfig(block_size=4, k=2, d_sig=8)
    a, b = SparseCache(model, sel), SparseCache(model, sel)
    la = chunked_prefill(model, ids, a, mask, chunk_tokens=10)
    lb = chunked_prefill(model, ids, b, mask, chunk_tokens=1000)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert a.get_seq_length() == PROMPT


def test_generate_works_and_unrestricted_context_is_reported():
    model = tiny_model("llama")
    ids, mask = _batch(7)
    sel = SelectionConfig(block_size=16, k=8, d_sig=8)  # k*B covers the whole context
    cache = SparseCache(model, sel)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache), max_new_tokens=4, do_sample=False
        )
    assert out.shape == (2, PROMPT + 4)
    s = cache.stats.summary()
    assert s["restricted"] is False and s["restricted_fraction"] == 0.0
    assert s["selection_calls"] == 3 * model.config.num_hidden_layers
    assert len(s["per_layer_head"]) == model.config.num_hidden_layers


def test_switching_attention_away_is_an_error():
    model = tiny_model("llama")
    ids, mask = _batch(8)
    cache = SparseCache(model, SelectionConfig(block_size=4, k=1, d_sig=4))
    model.set_attn_implementation("sdpa")
    with pytest.raises(KvprismError, match="attn_implementation 'kvprism'"), torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))


@pytest.mark.slow
def test_smollm2_covering_k_equals_dense(smollm2):
    model, tok = smollm2
    text = "The quick brown fox jumps over the lazy dog. " * 40
    ids = tok([text, text[: len(text) // 2]], return_tensors="pt", padding=True, padding_side="left")
    ref, ref_tok = dense_run(model, ids.input_ids, ids.attention_mask)
    cache = SparseCache(model, SelectionConfig(block_size=64, k=64))
    got, tok_ids = decode_loop(model, ids.input_ids, ids.attention_mask, cache)
    assert torch.equal(tok_ids, ref_tok)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert cache.stats.summary()["restricted"] is False


def test_learned_projection_from_prefilled_matches_direct_prefill():
    model = tiny_model("llama")
    ids, mask = _batch(9)
    sel = SelectionConfig(block_size=4, k=2, d_sig=6, projection="learned")
    direct = SparseCache(model, sel, trace=True)  # also switches the model to the "kvprism" dispatcher
    direct_logits, tok = decode_loop(model, ids, mask, direct, steps=3)
    dense = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        model(
            input_ids=ids[:, :20],
            attention_mask=mask[:, :20],
            position_ids=positions[:, :20],
            **cache_kwargs(model, dense),
        )
        model(
            input_ids=ids[:, 20:], attention_mask=mask, position_ids=positions[:, 20:], **cache_kwargs(model, dense)
        )  # 2 chunks
    forked = SparseCache.from_prefilled(model, dense, sel, trace=True)
    got, _ = decode_loop_from(model, forked, tok, mask, positions)
    for layer in range(model.config.num_hidden_layers):
        p_fork, p_direct = forked.selectors[layer].proj, direct.selectors[layer].proj
        torch.testing.assert_close(p_fork, p_direct, rtol=1e-3, atol=1e-4)  # chunked vs one-shot prefill rounding
    for a, b in zip(direct.trace, forked.trace, strict=True):
        assert torch.equal(a[0]["blocks"], b[0]["blocks"])
    torch.testing.assert_close(got.float(), direct_logits[1:], rtol=1e-5, atol=1e-5)
    # without remembered queries the fork cannot fit a learned projection: a clear error, not a silent substitute
    model.set_attn_implementation("sdpa")
    plain = DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, plain))
    with pytest.raises(ConfigError, match="learned"):
        SparseCache.from_prefilled(model, plain, sel)  # the prefill's fit runs at the fork
    bare = SparseCache.from_prefilled(model, plain, sel, prepare=False)
    with pytest.raises(ConfigError, match="learned"):
        decode_loop_from(model, bare, tok, mask, positions)


@pytest.mark.parametrize(
    ("projection", "signature", "budget"),
    [
        ("learned", "mean", "topk"),
        ("pca", "mean", "topk"),
        ("learned", "reps", "top_p"),
        ("pca", "reps", "topk"),
        ("learned", "centroids", "top_p"),
    ],
)
def test_the_prefill_fit_is_shared_by_forks_and_changes_no_result(projection, signature, budget):
    """from_prefilled reuses one projection fit (with its temperature), one probe and one set of block signatures
    per prefill and signature settings; decoding from it gives exactly what a fork that fits at its first decode
    step gives (multi-row signatures and the adaptive budget included)."""
    from kvprism.hf.cache import prepare_prefill

    model = tiny_model("qwen2")
    ids, mask = _batch(13)
    sel = SelectionConfig(
        block_size=4, k=2, d_sig=6, projection=projection, window=4, signature=signature, sig_rows=2, budget=budget
    )
    SparseCache(model, sel)  # the "kvprism" dispatcher remembers the prefill queries
    dense = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, dense))
    tok = torch.randint(0, model.config.vocab_size, (ids.shape[0], 3), generator=torch.Generator().manual_seed(1))
    lazy = SparseCache.from_prefilled(model, dense, sel, trace=True, prepare=False)
    shared = SparseCache.from_prefilled(model, dense, sel, trace=True, attention_mask=mask)
    prepared = prepare_prefill(model, dense, sel, mask)
    assert prepare_prefill(model, dense, sel.replace(k=5, scorer="photonic"), mask) is prepared  # shared
    assert prepare_prefill(model, dense, sel.replace(d_sig=4), mask) is not prepared
    assert prepare_prefill(model, dense, sel.replace(sig_rows=3), mask) is not prepared
    got_lazy, _ = decode_loop_from(model, lazy, tok, mask, positions)
    got_shared, _ = decode_loop_from(model, shared, tok, mask, positions)
    for layer, prep in enumerate(prepared):
        assert shared.selectors[layer].proj is prep.proj  # adopted, not refitted
        a, b = shared.selectors[layer], lazy.selectors[layer]
        torch.testing.assert_close(a.proj, b.proj)
        torch.testing.assert_close(a.temperature, b.temperature)
        torch.testing.assert_close(a.probe, b.probe)
        assert a.scaling == b.scaling and a.n_blocks == b.n_blocks
        assert (a.temperature is not None) == (projection == "learned")
        assert (a.probe is not None) == (signature == "reps")
    for a, b in zip(lazy.trace, shared.trace, strict=True):
        for layer in a:
            assert torch.equal(a[layer]["blocks"], b[layer]["blocks"])
    torch.testing.assert_close(got_shared, got_lazy, rtol=0, atol=0)


def decode_loop_from(model, cache, tokens, mask, positions):
    """Decode teacher-forced ``tokens [B, S]`` on an already prefilled cache."""
    pos = positions[:, -1:]
    logits = []
    with torch.inference_mode():
        for s in range(tokens.shape[1]):
            mask = torch.cat([mask, torch.ones_like(tokens[:, :1])], -1)
            pos = pos + 1
            out = model(
                input_ids=tokens[:, s : s + 1], attention_mask=mask, position_ids=pos, **cache_kwargs(model, cache)
            )
            logits.append(out.logits[:, -1])
    return torch.stack(logits), tokens
