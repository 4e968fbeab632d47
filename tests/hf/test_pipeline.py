"""The decode pipeline and how the "kvprism" attention function reaches it: through ``module.layer_idx`` and the
cache the attention module was given (no lookup by tensor identity); observers through hooks; one prefill-query
recorder for every cache type."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from kvprism.hf import attention as A
from kvprism.hf.cache import SparseCache, SparseLayer, cache_kwargs, chunked_prefill
from kvprism.hf.pipeline import DecodePipeline, StepEvent
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model
from tests.hf.test_cache import _batch, decode_loop

SEL = SelectionConfig(block_size=8, k=2, d_sig=8, window=4, sink_blocks=1, projection="random")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_each_attention_module_reaches_its_own_layer_of_the_cache_it_was_given(family, monkeypatch):
    model = tiny_model(family)
    ids, mask = _batch()
    cache = SparseCache(model, SEL)
    calls = []
    step = cache.pipeline.step

    def spy(layer_idx, query, key, value, *args, **kwargs):
        calls.append((layer_idx, key.data_ptr() == cache.layers[layer_idx].keys.data_ptr(), key.shape[2]))
        return step(layer_idx, query, key, value, *args, **kwargs)

    monkeypatch.setattr(cache.pipeline, "step", spy)
    decode_loop(model, ids, mask, cache, steps=2)
    n = model.config.num_hidden_layers
    assert [c[0] for c in calls] == list(range(n)) * 2  # every layer, in order, once per decode step
    assert all(c[1] for c in calls)  # the keys handed in are that layer's cached keys
    assert [c[2] for c in calls] == [ids.shape[1] + 1] * n + [ids.shape[1] + 2] * n


def test_two_caches_decoding_interleaved_on_one_model_equal_separate_runs():
    """Nothing is held between a cache update and the attention call but the call's own arguments: two sparse caches
    stepping alternately on one model give exactly what each gives alone."""
    model = tiny_model("llama")
    ids, mask = _batch()
    other = SelectionConfig(block_size=8, k=1, d_sig=8, window=4, sink_blocks=0, projection="random", seed=3)
    alone = [decode_loop(model, ids, mask, SparseCache(model, sel), steps=4)[0] for sel in (SEL, other)]
    caches = [SparseCache(model, SEL), SparseCache(model, other)]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits, masks, pos, seen = [], [mask, mask], [positions[:, -1:]] * 2, [[], []]
    with torch.inference_mode():
        for c in caches:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, c))
            logits.append(out.logits[:, -1])
        for _ in range(4):
            for j, c in enumerate(caches):
                seen[j].append(logits[j].float())
                nxt = logits[j].argmax(-1, keepdim=True)
                masks[j] = torch.cat([masks[j], torch.ones_like(nxt)], dim=-1)
                pos[j] = pos[j] + 1
                out = model(input_ids=nxt, attention_mask=masks[j], position_ids=pos[j], **cache_kwargs(model, c))
                logits[j] = out.logits[:, -1]
    for j in range(2):
        seen[j].append(logits[j].float())
        torch.testing.assert_close(torch.stack(seen[j]), alone[j], rtol=0, atol=0)


def test_hooks_observe_every_layer_step_and_stats_are_one_of_them():
    model = tiny_model("llama")
    ids, mask = _batch()
    cache = SparseCache(model, SEL)
    events: list[StepEvent] = []
    cache.pipeline.hooks.append(events.append)
    decode_loop(model, ids, mask, cache, steps=3)
    n = model.config.num_hidden_layers
    assert len(events) == 3 * n
    assert cache.stats.on_step in cache.pipeline.hooks
    att, _ = cache.stats.tensors()
    for i, ev in enumerate(events):
        assert ev.layer_idx == i % n and ev.attend_impl == "torch" and ev.select_impl == "torch"
        assert torch.equal(ev.plan.n_attended.cpu(), att[i // n, i % n])
        assert ev.select_s is None and ev.attend_s is None  # no profile: nothing timed


def test_profile_times_come_from_the_events():
    model = tiny_model("llama")
    ids, mask = _batch()
    cache = SparseCache(model, SEL, profile=True)
    events: list[StepEvent] = []
    cache.pipeline.hooks.append(events.append)
    decode_loop(model, ids, mask, cache, steps=2)
    assert cache.timings["select_s"] == pytest.approx(sum(e.select_s for e in events))
    assert cache.timings["attend_s"] == pytest.approx(sum(e.attend_s for e in events))
    assert all(e.select_s > 0 and e.attend_s > 0 for e in events)


def test_sparse_layer_only_stores():
    layer = SparseLayer()
    k = torch.randn(1, 2, 5, 4)
    v = torch.randn(1, 2, 5, 4)
    layer.update(k, v)
    keys2, _ = layer.update(k[:, :, :1], v[:, :, :1])
    assert torch.equal(keys2[:, :, :5], k) and torch.equal(keys2[:, :, 5], k[:, :, 0]) and layer.length == 6
    public = {n for n in vars(layer) if not n.startswith("_")}
    assert public <= {"keys", "values", "length", "device", "is_initialized"}, public


def test_pipeline_runs_without_a_model():
    """The pipeline is the decode step on its own: tensors in, attention out, equal to attention over exactly the
    tokens its gather plan lists."""
    b, h, g, d, t = 1, 2, 2, 8, 41
    gen = torch.Generator().manual_seed(0)
    key, value = torch.randn(b, h, t, d, generator=gen), torch.randn(b, h, t, d, generator=gen)
    query = torch.randn(b, h * g, d, generator=gen)
    pipe = DecodePipeline(SEL, 1, h, torch.ones(1, h, dtype=torch.bool), impl="torch")
    events: list[StepEvent] = []
    pipe.hooks.append(events.append)
    out = pipe.step(0, query, key, value, None, d**-0.5)
    mask = events[0].plan.token_mask(t)  # [B, H, T]
    assert mask.sum(-1).lt(t).all()  # restricted
    s = torch.einsum("bhgd,bhtd->bhgt", query.reshape(b, h, g, d), key) * d**-0.5
    p = torch.softmax(s.masked_fill(~mask[:, :, None], -torch.inf), -1)
    want = torch.einsum("bhgt,bhtd->bhgd", p, value).reshape(b, h * g, d)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [5, 16, 100])
def test_one_prefill_query_record_for_any_cache_and_chunking(chunk):
    model = tiny_model("llama")
    A.use_kvprism_attention(model)
    ids = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(2))
    whole, parts = DynamicCache(), DynamicCache()
    chunked_prefill(model, ids, whole, chunk_tokens=100)
    chunked_prefill(model, ids, parts, chunk_tokens=chunk)
    for layer in range(model.config.num_hidden_layers):
        a, b = A.prefill_queries(whole, layer), A.prefill_queries(parts, layer)
        assert a.queries.shape[2] == min(50, A.PREFILL_QUERY_SAMPLES)
        torch.testing.assert_close(a.queries, b.queries, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.positions, torch.arange(50)) and torch.equal(b.positions, a.positions)
    A.keep_prefill_queries(more := DynamicCache(), 7)
    chunked_prefill(model, ids, more, chunk_tokens=chunk)
    assert A.prefill_queries(more, 0).queries.shape[2] == 7
    with pytest.raises(ValueError, match="samples"):
        A.keep_prefill_queries(DynamicCache(), 0)


def test_a_fork_gets_the_prefill_record_of_its_source():
    model = tiny_model("llama")
    A.use_kvprism_attention(model)
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(4))
    dense = DynamicCache()
    chunked_prefill(model, ids, dense)
    fork = SparseCache.from_prefilled(model, dense, SelectionConfig(block_size=8, k=2, d_sig=8), prepare=False)
    assert A.prefill_queries(fork, 1) is A.prefill_queries(dense, 1)


def test_one_triton_check_for_both_caches():
    """The dynamic pipeline and the static cache decide the attention kernel with the same function."""
    from kvprism.hf.pipeline import triton_blocker

    cpu = torch.device("cpu")
    assert triton_blocker(cpu, 64, 64, torch.float32, (torch.float32,), True) == "tensors on cpu, not cuda"
    meta = torch.device("cuda") if torch.cuda.is_available() else None
    if meta is not None:
        assert "left padding" in triton_blocker(meta, 64, 64, torch.float16, (torch.float16,), False)
        assert "value head dim" in triton_blocker(meta, 64, 32, torch.float16, (torch.float16,), True)
