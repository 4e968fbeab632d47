"""SparseCache's choice of attention kernel (``impl=``): the Triton kernel on CUDA reads the same tokens as the
torch gather path and gives the same logits; without CUDA / triton the torch path runs and says so in the stats."""

from __future__ import annotations

import warnings

import pytest
import torch

from kvprism.errors import ConfigError, KvprismError
from kvprism.hf.cache import SparseCache
from kvprism.kernels import sparse_decode_attention, triton_available
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures
from tests.conftest import tiny_model
from tests.hf.test_cache import STEPS, _batch, decode_loop

CUDA_TRITON = torch.cuda.is_available() and triton_available()
# small k: the selection restricts what is read (blocks of 8, 37 + 14 tokens)
SEL = SelectionConfig(block_size=8, k=2, d_sig=8, window=4, sink_blocks=1, scorer="exact")


def test_attend_choice_is_validated():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="impl"):
        SparseCache(model, SEL, impl="cuda")
    if not triton_available():
        with pytest.raises(ConfigError, match="triton"):
            SparseCache(model, SEL, impl="triton")
    assert SparseCache(model, SEL, impl="torch").impl == "torch"
    with pytest.raises(TypeError, match="attend"):  # the former name of impl is gone
        SparseCache(model, SEL, attend="torch")


def test_cpu_decode_uses_the_torch_path_and_counts_it():
    model = tiny_model("llama")
    ids, mask = _batch()
    cache = SparseCache(model, SEL)
    decode_loop(model, ids, mask, cache)
    calls = cache.stats.summary()["attend_calls"]
    assert calls == {"torch": STEPS * model.config.num_hidden_layers, "triton": 0}
    assert cache.stats.summary()["restricted"] is True


@pytest.mark.skipif(not triton_available() or torch.cuda.is_available(), reason="needs triton without CUDA")
def test_asking_for_triton_on_cpu_tensors_is_an_error():
    model = tiny_model("llama")
    ids, mask = _batch()
    with pytest.raises(KvprismError, match="not cuda"):
        decode_loop(model, ids, mask, SparseCache(model, SEL, impl="triton"), steps=1)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_attend_equals_torch_attend_on_cuda(family, dtype):
    model = tiny_model(family).to("cuda", dtype)
    ids, _ = _batch()
    ids = ids.cuda()
    mask = torch.ones_like(ids)  # no padding: the Triton kernel runs every layer-step
    g = torch.Generator().manual_seed(1)
    forced = torch.randint(3, 128, (2, STEPS), generator=g).cuda()
    runs = {}
    for attend in ("torch", "triton"):
        cache = SparseCache(model, SEL, trace=True, impl=attend)
        logits, _ = decode_loop(model, ids, mask, cache, tokens=forced)
        runs[attend] = (logits, cache)
    (ref, c_ref), (got, c_tri) = runs["torch"], runs["triton"]
    n = STEPS * model.config.num_hidden_layers
    assert c_tri.stats.summary()["attend_calls"] == {"torch": 0, "triton": n}
    assert c_ref.stats.summary()["attend_calls"] == {"torch": n, "triton": 0}
    assert c_tri.stats.summary()["select_calls"] == {"torch": 0, "kernel": n}  # fused score + top-k kernel too
    assert c_ref.stats.summary()["select_calls"] == {"torch": n, "kernel": 0}
    assert c_tri.stats.summary()["restricted"] is True
    # same selections at every layer of the first decode step (identical inputs there; later steps see the other
    # path's rounding, so they are compared through the logits)
    first_ref, first_tri = c_ref.trace[0], c_tri.trace[0]
    for layer in first_ref:  # same sets (order among exactly tied scores may differ)
        assert torch.equal(first_ref[layer]["blocks"].sort(-1).values, first_tri[layer]["blocks"].sort(-1).values)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    err = (got - ref).norm() / ref.norm()
    assert err < tol, f"relative logits error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_TRITON, reason="needs a CUDA device and triton")
def test_left_padding_falls_to_the_torch_path_under_auto_and_errors_under_triton():
    model = tiny_model("llama").cuda()
    ids, mask = _batch()  # row 1 is left-padded
    ids, mask = ids.cuda(), mask.cuda()
    cache = SparseCache(model, SEL)
    decode_loop(model, ids, mask, cache, steps=2)
    assert cache.stats.summary()["attend_calls"] == {"torch": 2 * model.config.num_hidden_layers, "triton": 0}
    with pytest.raises(KvprismError, match="padding"):
        decode_loop(model, ids, mask, SparseCache(model, SEL, impl="triton"), steps=1)


@pytest.mark.parametrize("reduce", ["sum", "max"])
def test_select_range_equals_select_on_the_same_candidates(reduce):
    """The fused-kernel top-k path (reference implementation on CPU) picks the blocks the torch path picks."""
    sel = SelectionConfig(
        block_size=8, k=3, d_sig=8, window=4, sink_blocks=1, scorer="exact", gqa_reduce=reduce, projection="random"
    )
    g = torch.Generator().manual_seed(3)
    b, h, gq, d, nb = 2, 2, 3, 16, 12
    heads = torch.tensor([True, False])  # head 1 streams: selects nothing
    selector = BlockSelector(sel, 0, h, heads)
    keys = torch.randn(b, h, nb * 8, d, generator=g)
    valid = torch.ones(b, nb * 8, dtype=torch.bool)
    selector.fit(keys, valid)
    selector.program(block_signatures(sel, selector.proj, keys, valid, layer_idx=0))
    query = torch.randn(b, h, gq, d, generator=g)
    for lo, hi in [(1, 10), (0, 12), (4, 6), (3, 3)]:
        cand = torch.zeros(b, h, nb, dtype=torch.bool)
        cand[..., lo:hi] = True
        want = selector.select(query, cand)
        got = selector.select_range(query, lo, hi)
        assert torch.equal(got.sort(-1).values, want.sort(-1).values), (lo, hi)
        assert (got[:, 1] == -1).all()
    with pytest.raises(KvprismError, match="lo"):
        selector.select_range(query, 5, 13)


def test_select_range_needs_the_exact_scorer():
    sel = SelectionConfig(block_size=8, k=3, d_sig=8, scorer="photonic", photonic="ideal")
    selector = BlockSelector(sel, 0, 2, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="exact"):
        selector.select_range(torch.zeros(1, 2, 2, 16), 0, 0)


@pytest.mark.parametrize("sink_blocks, window, t", [(1, 4, 51), (0, 0, 48), (2, 20, 37), (3, 100, 40), (1, 7, 8)])
def test_candidate_range_is_the_candidate_mask_without_padding(sink_blocks, window, t):
    from kvprism.layout import BlockGeometry, BlockLayout

    layout = BlockLayout.from_valid(torch.ones(2, t, dtype=torch.bool), BlockGeometry(8, sink_blocks, window))
    n_blocks = t // 8
    lo, hi = layout.candidate_range(n_blocks)
    want = torch.zeros(2, n_blocks, dtype=torch.bool)
    want[:, lo:hi] = True
    assert torch.equal(layout.candidates[:, :n_blocks], want)


@pytest.mark.parametrize(
    "impl",
    ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="needs triton"))],
)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_kernel_attention_arguments_read_the_gathered_tokens(family, impl):
    """The arguments the CUDA path hands to the kernels (run through the torch reference, or the Triton kernel under
    Triton's interpreter on CPU) give what the gather path computes for the same selected blocks."""
    model = tiny_model(family)
    ids, _ = _batch()
    mask = torch.ones_like(ids)
    cache = SparseCache(model, SEL, trace=True)
    decode_loop(model, ids, mask, cache, steps=3)
    layer = cache.layers[1]
    key, value = layer.keys, layer.values
    step = cache.trace[-1][1]
    query, blocks = step["query"], step["blocks"]
    layout = cache.pipeline.layout(None, key.shape[0], key.shape[2], key.device)
    from kvprism.hf.attention import sparse_attend

    plan = layout.gather_plan(blocks)
    scaling = query.shape[-1] ** -0.5
    want = sparse_attend(query, key, value, plan.token_idx, plan.token_ok, scaling)
    if impl == "torch":
        got = sparse_decode_attention(query, key, value, blocks, layout, scaling, impl="torch")
    else:  # Triton: interpreter on CPU
        got = cache.pipeline.attend_triton(query, key, value, blocks, layout, scaling)
        got = cache.pipeline.attend_triton(query, key, value, blocks, layout, scaling)  # 2nd call: cached plan
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (blocks >= 0).any() and layout.tail_start_int > SEL.sink_blocks * SEL.block_size  # a restricted step


def test_summary_warns_when_no_decode_step_went_through_the_cache():
    model = tiny_model("llama")
    ids, mask = _batch()
    cache = SparseCache(model, SEL)
    from kvprism.hf.cache import cache_kwargs

    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, use_cache=True, **cache_kwargs(model, cache))  # prefill only
    with pytest.warns(UserWarning, match="no decode step"):
        s = cache.stats.summary()
    assert "cache_kwargs" in s["warning"]
    decoded = SparseCache(model, SEL)
    decode_loop(model, ids, mask, decoded, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a decoded cache does not warn
        assert "warning" not in decoded.stats.summary()
