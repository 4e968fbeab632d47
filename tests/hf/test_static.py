"""The static decode path (kvprism.hf.static): fixed-shape step parts against kvprism.layout, the whole-model step
against the dynamic SparseCache, fullgraph compilation, host synchronisation, capacity errors, and (CUDA only) CUDA
graph replay with the Triton kernels."""

from __future__ import annotations

import itertools
from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from kvprism.errors import ConfigError, KvprismError
from kvprism.hf.attention import use_kvprism_attention
from kvprism.hf.cache import SparseCache, cache_kwargs, chunked_prefill
from kvprism.hf.static import StaticDecodeStep, StaticSparseCache, check_static_config
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model
from tests.hf.test_cache import decode_loop

CUDA = torch.cuda.is_available()
SEL = SelectionConfig(block_size=8, k=2, window=8, sink_blocks=1, projection="pca", d_sig=8)


def _prefill(family: str, batch: int = 2, n: int = 70, seed: int = 0, mask: torch.Tensor | None = None, **kw):
    model = tiny_model(family, **kw)
    use_kvprism_attention(model)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, n), generator=g)
    dense = DynamicCache()
    logits = chunked_prefill(model, ids, dense, attention_mask=mask)
    return model, ids, dense, logits


def _greedy(model, cache, logits, start, steps, step=None, mask=None):
    """Greedy tokens ``[B, steps + 1]`` from the prefill's last logits; ``step`` a StaticDecodeStep (else a plain
    model call with ``mask`` grown by one real token per step)."""
    b = logits.shape[0]
    tok = logits.argmax(-1, keepdim=True)
    out = [tok]
    pos = start if isinstance(start, torch.Tensor) else torch.full((b, 1), start)
    with torch.inference_mode():
        for s in range(steps):
            p = pos + s
            if step is not None:
                lg = step(tok, p)
            else:
                kw = {}
                if mask is not None:
                    kw["attention_mask"] = torch.cat([mask, torch.ones(b, s + 1, dtype=mask.dtype)], dim=1)
                lg = model(
                    input_ids=tok, position_ids=p, use_cache=True, logits_to_keep=1, **kw, **cache_kwargs(model, cache)
                ).logits[:, -1]
            tok = lg.argmax(-1, keepdim=True)
            out.append(tok)
    return torch.cat(out, 1)


# ------------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("scorer", ["photonic", "seed-as-published"])
def test_a_simulated_scorer_is_refused_with_one_line(scorer):
    sel = SEL.replace(scorer=scorer)
    with pytest.raises(ConfigError, match=f"SelectionConfig.scorer = {scorer!r} is not supported") as err:
        check_static_config(sel)
    assert "\n" not in str(err.value)
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="scorer"):
        StaticSparseCache(model, sel, max_cache_len=64)


def test_every_exact_setting_is_accepted():
    for sel in SETTINGS.values():
        check_static_config(sel)
    check_static_config(SelectionConfig())
    for carry in (1, 2, 3, 5):  # blocks carried between steps: a static per-layer buffer (above k: all k)
        check_static_config(SelectionConfig(k=3, carry=carry))


def test_sliding_window_model_is_refused():
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0)
    with pytest.raises(ConfigError, match="full-attention layers only"):
        StaticSparseCache(model, SEL, max_cache_len=64)


# ------------------------------------------------------------------------------------------------ every setting
def _prefill_both(family: str, sel: SelectionConfig, steps: int, n: int, pad: int):
    """Batch 2, the second row left-padded by ``pad`` tokens, prefilled through a dynamic SparseCache (traced) and a
    StaticSparseCache with room for ``steps`` decode steps: (model, mask, dynamic, static, last logits per cache,
    next positions)."""
    model = tiny_model(family)
    use_kvprism_attention(model)
    ids = torch.randint(3, 128, (2, n), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, :pad] = 0
    dyn = SparseCache(model, sel, trace=True, impl="torch")
    st = StaticSparseCache(model, sel, max_cache_len=n + steps, impl="torch")
    logits = {c: chunked_prefill(model, ids, c, attention_mask=mask) for c in (dyn, st)}
    pos = mask.sum(-1, keepdim=True).long()
    return model, mask, dyn, st, logits, pos


def _decode_both(family: str, sel: SelectionConfig, steps: int = 12, n: int = 70, pad: int = 13):
    """Batch 2, the second row left-padded by ``pad`` tokens: prefill through a dynamic SparseCache (traced) and
    through a StaticSparseCache (which prepares itself at its first decode step), then decode greedily from each,
    step by step. Returns per step the dynamic and the static selections of every layer, and both caches."""
    model, mask, dyn, st, logits, pos = _prefill_both(family, sel, steps, n, pad)
    toks = {c: [logits[c].argmax(-1, keepdim=True)] for c in (dyn, st)}
    sel_dyn, sel_st = [], []
    with torch.inference_mode():
        for s in range(steps):
            m = torch.cat([mask, torch.ones(2, s + 1, dtype=mask.dtype)], dim=1)
            for c in (dyn, st):
                out = model(
                    input_ids=toks[c][-1],
                    position_ids=pos + s,
                    attention_mask=m,
                    use_cache=True,
                    logits_to_keep=1,
                    **cache_kwargs(model, c),
                )
                toks[c].append(out.logits[:, -1].argmax(-1, keepdim=True))
            sel_dyn.append([dyn.trace[-1][i]["blocks"] for i in range(len(st.layers))])
            sel_st.append([layer.selected.clone() for layer in st.layers])
    return torch.cat(toks[dyn], 1), torch.cat(toks[st], 1), sel_dyn, sel_st, dyn, st


SETTINGS = {
    "learned": SelectionConfig(block_size=8, k=2, window=8, d_sig=8),
    "learned-top_p": SelectionConfig(block_size=8, k=4, window=8, d_sig=8, budget="top_p", top_p=0.3),
    "pca-relu": SelectionConfig(block_size=8, k=2, window=8, projection="pca", d_sig=6, sign="relu"),
    "none-minmax": SelectionConfig(block_size=8, k=3, window=5, sink_blocks=0, projection="none", signature="minmax"),
    "random-max": SelectionConfig(block_size=4, k=2, window=4, projection="random", d_sig=4, gqa_reduce="max"),
    "centroids": SelectionConfig(block_size=8, k=2, window=8, d_sig=8, signature="centroids", sig_rows=2),
    "reps": SelectionConfig(block_size=8, k=2, window=8, d_sig=8, signature="reps", sig_rows=3),
    "pca-top_p": SelectionConfig(block_size=8, k=4, window=8, projection="pca", d_sig=8, budget="top_p", top_p=0.5),
    "rerank": SelectionConfig(block_size=8, k=2, window=8, d_sig=8, rerank=3),
    "heads": SelectionConfig(block_size=8, k=2, window=8, d_sig=8, heads=[[True, False], [False, True]]),
    "carry": SelectionConfig(block_size=8, k=3, window=4, projection="random", d_sig=8, carry=2),
    "no-carry": SelectionConfig(block_size=8, k=3, window=4, projection="random", d_sig=8, carry=0),
}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_setting_selects_and_reads_as_the_dynamic_cache(family, name):
    want, got, sel_dyn, sel_st, dyn, st = _decode_both(family, SETTINGS[name])
    for step, (a, b) in enumerate(zip(sel_dyn, sel_st, strict=True)):
        for layer, (x, y) in enumerate(zip(a, b, strict=True)):
            assert torch.equal(x, y), f"step {step} layer {layer}: dynamic {x.tolist()} static {y.tolist()}"
    assert torch.equal(got, want)
    ref, summ = dyn.stats.summary(), st.stats_summary()
    assert summ["decode_steps"] == ref["decode_steps"] == len(sel_dyn)
    assert summ["tokens_attended"] == ref["tokens_attended"]
    assert summ["tokens_cached"] == ref["tokens_cached"]
    assert summ["read_fraction_mean"] == pytest.approx(ref["read_fraction_mean"], rel=1e-12)
    assert summ["read_fraction_max"] == pytest.approx(ref["read_fraction_max"], rel=1e-12)
    assert summ["read_fraction_mean"] < 0.9  # the selection restricted the reads
    assert any((x >= 0).any() for step in sel_st for x in step)  # and chose blocks


def test_top_p_budget_keeps_a_prefix_of_the_top_k():
    """The adaptive budget reads fewer blocks than the cap at some step, and always a best-first prefix."""
    *_, sel_st, _, _ = _decode_both("llama", SETTINGS["learned-top_p"], steps=10)
    kept = torch.stack([x for step in sel_st for x in step]) >= 0  # [steps*L, B, H, k]
    assert torch.equal(kept, kept.cummin(-1).values)  # -1 only after the kept prefix
    assert bool((~kept[..., 1:]).any())


# ------------------------------------------------------------------------------------------------ carry
SEL_CARRY = SelectionConfig(block_size=8, k=3, window=4, sink_blocks=1, projection="random", d_sig=8, carry=2)


def _decode_carry_both(family: str, sel: SelectionConfig, steps: int = 12, n: int = 70, pad: int = 13):
    """As :func:`_decode_both`, but both caches get the same tokens (the dynamic cache's greedy ones); returns per
    step the dynamic and static selections, carried blocks and last logits of every layer, and the static cache."""
    model, mask, dyn, st, logits, pos = _prefill_both(family, sel, steps, n, pad)
    tok = logits[dyn].argmax(-1, keepdim=True)
    steps_out = []
    with torch.inference_mode():
        for s in range(steps):
            m = torch.cat([mask, torch.ones(2, s + 1, dtype=mask.dtype)], dim=1)
            lg = {}
            for c in (dyn, st):
                out = model(
                    input_ids=tok,
                    position_ids=pos + s,
                    attention_mask=m,
                    use_cache=True,
                    logits_to_keep=1,
                    **cache_kwargs(model, c),
                )
                lg[c] = out.logits[:, -1].float()
            steps_out.append(
                {
                    "blocks": (
                        [dyn.trace[-1][i]["blocks"] for i in range(len(st.layers))],
                        [x.selected.clone() for x in st.layers],
                    ),
                    "carried": (
                        list(dyn.pipeline._carry),
                        [None if x.carried is None else x.carried.clone() for x in st.layers],
                    ),
                    "logits": (lg[dyn], lg[st]),
                }
            )
            tok = lg[dyn].argmax(-1, keepdim=True)
    return steps_out, st


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_carry_selects_carries_and_decodes_as_the_dynamic_cache(family):
    """carry = 2 of k = 3, left padding: every step, the static (torch) path selects the same blocks in the same
    order as the dynamic SparseCache, keeps the same blocks for the next step, and gives the same logits (fp32)."""
    steps, st = _decode_carry_both(family, SEL_CARRY)
    carried_any = False
    for s, rec in enumerate(steps):
        for layer, (x, y) in enumerate(zip(*rec["blocks"], strict=True)):
            assert torch.equal(x, y), f"step {s} layer {layer}: dynamic {x.tolist()} static {y.tolist()}"
        for layer, (x, y) in enumerate(zip(*rec["carried"], strict=True)):
            assert y.shape == (2, st.num_kv_heads, 2)
            assert torch.equal(x, y), f"step {s} layer {layer}: dynamic {x.tolist()} static {y.tolist()}"
            carried_any |= bool((y >= 0).any())
        torch.testing.assert_close(rec["logits"][1], rec["logits"][0], rtol=1e-5, atol=1e-5)
    assert carried_any
    # a carried block is selected at the next step while it is a candidate (here: always, blocks only complete)
    for prev, nxt in itertools.pairwise(steps):
        for kept, sel in zip(prev["carried"][1], nxt["blocks"][1], strict=True):
            assert bool(((kept[..., :, None] == sel[..., None, :]).any(-1) | (kept < 0)).all())
    with torch.inference_mode():  # the buffers were allocated under it (the prefill)
        st.reset()
    assert all(bool((layer.carried == -1).all()) for layer in st.layers)


@pytest.mark.parametrize("carry", [3, 5])
def test_carry_k_or_more_carries_k_minus_1_and_carry_0_is_the_plain_selection(carry):
    """carry = k or more carries k - 1 blocks (the scorer picks at least one every step), as on the dynamic path: the
    same buffer width and selections as carry = k - 1; carry = 0 keeps no buffer and selects as before."""
    over, st = _decode_carry_both("llama", SEL_CARRY.replace(carry=carry), steps=10)
    below, _ = _decode_carry_both("llama", SEL_CARRY.replace(carry=2), steps=10)
    assert all(layer.carried.shape[-1] == 2 for layer in st.layers)
    for rec, ref in zip(over, below, strict=True):
        for x, y, z in zip(rec["blocks"][0], rec["blocks"][1], ref["blocks"][1], strict=True):
            assert torch.equal(x, y) and torch.equal(y, z)
    plain, st0 = _decode_carry_both("llama", SEL_CARRY.replace(carry=0), steps=10)
    assert all(layer.carried is None for layer in st0.layers)
    for rec in plain:
        for x, y in zip(*rec["blocks"], strict=True):
            assert torch.equal(x, y)


def _reference_triton_module():
    """A stand-in for :mod:`kvprism.kernels.triton_decode` built on :mod:`kvprism.kernels.reference` (the kernels'
    contracts), so the static Triton path's wiring runs on the CPU; counts the launches."""
    import types

    from kvprism.kernels import reference as ref

    calls = {"score": 0, "attend": 0, "mass": 0}
    mod = types.ModuleType("kvprism.kernels.triton_decode")
    mod.score_plan = lambda n, d, g, k, tile: types.SimpleNamespace(n_tiles=1, k_pow2=1 << max(k - 1, 0).bit_length())
    mod.decode_plan = lambda *a, **kw: types.SimpleNamespace(sub=1)
    mod.decode_workspace = lambda *a, **kw: (torch.empty(0), torch.empty(0))
    mod.block_mass_workspace = lambda b, h, g, k, plan, dev: torch.empty(b * h * k * plan.sub * g, 2, device=dev)

    def score_topk_triton(q, signatures, n_valid, k, gqa_reduce="sum", *, out, cand, **kw):
        calls["score"] += 1
        return out.copy_(ref.score_topk_ref(q, signatures, n_valid, k, gqa_reduce))

    def sparse_decode_attention_triton(q, kc, vc, blocks, layout, scale, *, out, plan, workspace, **kw):
        calls["attend"] += 1
        if kw:
            calls["mass"] += 1
            mass, work = kw.pop("block_mass"), kw.pop("mass_workspace")
            assert not kw and work is not None and mass.dtype == torch.float32 and mass.is_contiguous()
            mass.copy_(ref.block_mass_ref(q, kc, vc, blocks, layout, scale))
        return out.copy_(ref.sparse_decode_attention_ref(q, kc, vc, blocks, layout, scale))

    mod.score_topk_triton = score_topk_triton
    mod.sparse_decode_attention_triton = sparse_decode_attention_triton
    return mod, calls


@pytest.mark.parametrize(
    "sel",
    [
        SEL_CARRY,
        SEL_CARRY.replace(projection="none", carry=5),
        SETTINGS["learned-top_p"].replace(carry=2),
        SEL.replace(carry=0),
    ],
    ids=["fused", "fused-carry-k", "top_p", "no-carry"],
)
def test_triton_path_carries_as_the_dynamic_cache_with_reference_kernels(sel, monkeypatch):
    """The static Triton path (fused score + top-k where the selection is plain top-k, then the attention kernel
    with ``block_mass``), its kernels replaced by their references: the same selections, carried blocks and
    logits as the dynamic torch path. (The kernels themselves: the CUDA tests below.)"""
    import sys

    mod, calls = _reference_triton_module()
    monkeypatch.setitem(sys.modules, "kvprism.kernels.triton_decode", mod)
    monkeypatch.setattr(StaticSparseCache, "_triton_ok", lambda self, plain, layer: self.impl == "triton" and plain)
    model, ids, dense, logits = _prefill("llama")
    n, steps = ids.shape[1], 10
    dyn = SparseCache.from_prefilled(model, dense, sel, trace=True, impl="torch")
    st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=n + steps, impl="torch")
    st.impl = "triton"
    with torch.inference_mode():
        st.prepare()
    assert st.use_triton
    tok = logits.argmax(-1, keepdim=True)
    with torch.inference_mode():
        for s in range(steps):
            lg = [
                model(
                    input_ids=tok,
                    position_ids=torch.full((2, 1), n + s),
                    use_cache=True,
                    logits_to_keep=1,
                    **cache_kwargs(model, c),
                )
                .logits[:, -1]
                .float()
                for c in (dyn, st)
            ]
            torch.testing.assert_close(lg[1], lg[0], rtol=1e-5, atol=1e-5)
            for i, layer in enumerate(st.layers):
                assert torch.equal(layer.selected, dyn.trace[-1][i]["blocks"]), (s, i)
                want = dyn.pipeline._carry[i]
                assert (layer.carried is None) if want is None else torch.equal(layer.carried, want), (s, i)
            tok = lg[0].argmax(-1, keepdim=True)
    launches = steps * len(st.layers)
    fused = sel.budget == "topk"
    assert calls == {"score": launches if fused else 0, "attend": launches, "mass": launches if sel.carry else 0}


def test_triton_path_carries_as_the_dynamic_cache_with_the_real_kernels(monkeypatch):
    """The same with the Triton kernels themselves (compiled on CUDA; on CPU under Triton's interpreter, which
    tests/conftest.py selects): one unpadded prompt, fp32, carry 2 -- the same tokens, logits, last selections and
    carried blocks as the dynamic torch path."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'kvprism[gpu]')")
    from kvprism.hf import static as static_mod

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":  # the kernels run on CPU tensors under the interpreter
        monkeypatch.setattr(static_mod, "triton_blocker", lambda *args, **kwargs: None)
    model = tiny_model("llama").to(dev)
    ids = torch.randint(3, 100, (1, 45), generator=torch.Generator().manual_seed(1)).to(dev)
    mask = torch.ones_like(ids)
    sel = SEL_CARRY
    dyn = SparseCache(model, sel, trace=True, impl="torch")
    dyn_logits, dyn_tokens = decode_loop(model, ids, mask, dyn, steps=6)
    st = StaticSparseCache(model, sel, max_cache_len=64, impl="auto")
    st_logits, st_tokens = decode_loop(model, ids, mask, st, steps=6)
    assert st.use_triton and st._fused_topk
    assert torch.equal(st_tokens, dyn_tokens)
    torch.testing.assert_close(st_logits, dyn_logits, rtol=1e-4, atol=1e-4)
    for i, layer in enumerate(st.layers):
        assert torch.equal(layer.selected, dyn.trace[-1][i]["blocks"]), i
        assert torch.equal(layer.carried, dyn.pipeline._carry[i]), i


# ------------------------------------------------------------------------------------------------ generate()
def test_generate_with_the_default_selection_gives_the_dynamic_tokens():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 400), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :21] = 0
    sel = SelectionConfig()
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    dyn = SparseCache(model, sel, impl="torch")
    want = model.generate(ids, **kw, **cache_kwargs(model, dyn))
    st = StaticSparseCache(model, sel, max_cache_len=ids.shape[1] + 12)
    got = model.generate(ids, **kw, **cache_kwargs(model, st))
    assert st.prepared
    assert torch.equal(got, want)
    summ = st.stats_summary()
    assert summ["decode_steps"] == 11  # the first new token comes from the prefill
    assert summ["read_fraction_mean"] == pytest.approx(dyn.stats.summary()["read_fraction_mean"], rel=1e-12)
    assert summ["read_fraction_mean"] < 0.9


def test_generate_reads_everything_and_decodes_as_dense_when_k_covers_every_block():
    model = tiny_model("qwen2")
    ids = torch.randint(3, 128, (2, 60), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=False)
    model.set_attn_implementation("sdpa")
    want = model.generate(ids, **kw)
    st = StaticSparseCache(model, SelectionConfig(block_size=8, k=16, window=4, d_sig=8), max_cache_len=80)
    got = model.generate(ids, **kw, **cache_kwargs(model, st))
    assert torch.equal(got, want)
    assert st.stats_summary()["read_fraction_mean"] == 1.0


# ------------------------------------------------------------------------------------------------ whole model
@pytest.mark.parametrize(
    ("family", "sel"),
    [
        ("llama", SEL),
        ("qwen2", SelectionConfig(block_size=8, k=3, window=5, sink_blocks=0, projection="none", signature="minmax")),
        ("llama", SelectionConfig(block_size=4, k=2, window=4, projection="random", d_sig=4, gqa_reduce="max")),
        ("qwen2", SelectionConfig(block_size=8, k=2, window=8, projection="pca", d_sig=6, sign="relu")),
        ("qwen2", SelectionConfig(block_size=8, k=2, window=8, d_sig=8)),  # learned: the prefill's queries copied
    ],
)
def test_same_tokens_and_reads_as_dynamic_sparse_cache(family, sel):
    model, ids, dense, logits = _prefill(family)
    dyn = SparseCache.from_prefilled(model, dense, sel, impl="torch")
    want = _greedy(model, dyn, logits, ids.shape[1], 30)
    st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=ids.shape[1] + 30, impl="torch")
    got = _greedy(model, st, logits, ids.shape[1], 30)
    assert torch.equal(got, want)
    ref, summ = dyn.stats.summary(), st.stats_summary()
    assert summ["decode_steps"] == ref["decode_steps"] == 30
    assert summ["read_fraction_mean"] == pytest.approx(ref["read_fraction_mean"], rel=1e-12)
    assert summ["read_fraction_max"] == pytest.approx(ref["read_fraction_max"], rel=1e-12)
    assert summ["tokens_attended"] == ref["tokens_attended"]
    assert summ["read_fraction_mean"] < 0.9  # the selection restricted the reads


def test_left_padding_same_tokens_as_dynamic():
    b, n = 2, 60
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, :13] = 0
    model, _, dense, logits = _prefill("llama", batch=b, n=n, mask=mask)
    start = mask.sum(-1, keepdim=True).long()  # next position per row (positions follow the mask)
    dyn = SparseCache.from_prefilled(model, dense, SEL, impl="torch", attention_mask=mask)
    want = _greedy(model, dyn, logits, start, 20, mask=mask)
    st = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=n + 24, impl="torch", attention_mask=mask)
    got = _greedy(model, st, logits, start, 20, step=StaticDecodeStep(model, st, attention_mask=mask))
    assert torch.equal(got, want)
    assert st.stats_summary()["read_fraction_mean"] == pytest.approx(dyn.stats.summary()["read_fraction_mean"])


def test_prefill_through_the_static_cache_decodes_like_from_prefilled():
    model, ids, dense, logits = _prefill("qwen2")
    ref = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=100, impl="torch")
    want = _greedy(model, ref, logits, ids.shape[1], 12)
    st = StaticSparseCache(model, SEL, max_cache_len=100, impl="torch")
    lg = chunked_prefill(model, ids, st, chunk_tokens=32)
    torch.testing.assert_close(lg, logits, rtol=1e-4, atol=1e-4)
    st.prepare()
    assert torch.equal(_greedy(model, st, lg, ids.shape[1], 12), want)


#: every fixed-shape form at once: learned projection and its temperature, multi-row signatures, the adaptive
#: budget, two-stage selection
SEL_LEARNED = SelectionConfig(
    block_size=8, k=3, window=8, d_sig=8, signature="centroids", sig_rows=2, budget="top_p", top_p=0.7
)
SEL_REPS = SelectionConfig(block_size=8, k=2, window=8, d_sig=8, signature="reps", sig_rows=2, rerank=2)


@pytest.mark.parametrize(
    ("family", "backend", "sel"),
    [
        ("llama", "eager", SEL),
        ("qwen2", "eager", SEL),
        ("llama", "aot_eager", SEL),
        ("qwen2", "eager", SEL_LEARNED),
        ("llama", "eager", SEL_REPS),
        ("qwen2", "eager", SEL_CARRY),
    ],
)
def test_fullgraph_compiled_step_same_tokens_without_recompiling(family, backend, sel):
    model, ids, dense, logits = _prefill(family)
    n = ids.shape[1]
    eager = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=n + 24, impl="torch")
    want = _greedy(model, eager, logits, n, 20, step=StaticDecodeStep(model, eager))
    torch._dynamo.reset()
    st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=n + 24, impl="torch")
    step = StaticDecodeStep(model, st).compile(backend=backend)
    # 20 steps cross two block boundaries (block_size 8): candidates and tail change on the device only
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = _greedy(model, st, logits, n, 20, step=step)
    assert torch.equal(got, want)
    assert st.host_length == n + 20
    assert int(st.layers[0].cumulative_length) == n + 20
    assert st.stats_summary()["read_fraction_mean"] == pytest.approx(eager.stats_summary()["read_fraction_mean"])


@pytest.mark.slow
def test_inductor_compiled_step_same_tokens():
    model, ids, dense, logits = _prefill("llama")
    n = ids.shape[1]
    eager = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=n + 12, impl="torch")
    want = _greedy(model, eager, logits, n, 10, step=StaticDecodeStep(model, eager))
    torch._dynamo.reset()
    st = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=n + 12, impl="torch")
    got = _greedy(model, st, logits, n, 10, step=StaticDecodeStep(model, st).compile(backend="inductor"))
    assert torch.equal(got, want)


class _HostSyncs(TorchDispatchMode):
    """Records the ops that read a tensor's value on the host or produce a data-dependent shape."""

    SYNC: ClassVar[set[str]] = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNC:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "sel",
    [SEL, SEL_LEARNED, SEL_REPS, SETTINGS["learned"], SETTINGS["heads"], SEL_CARRY],
    ids=lambda s: f"{s.signature}-carry{s.carry}",
)
def test_decode_step_has_no_host_sync(sel):
    model, ids, dense, logits = _prefill("llama")
    st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=ids.shape[1] + 4, impl="torch")
    step = StaticDecodeStep(model, st)
    tok = logits.argmax(-1, keepdim=True)
    with torch.inference_mode(), _HostSyncs() as mode:
        step(tok, torch.full((2, 1), ids.shape[1]))
    assert mode.seen == []
    # the probe is live: reading the device-side length on the host, or a data-dependent shape, is seen
    with _HostSyncs() as mode:
        int(st.layers[0].cumulative_length)
        st.layers[0].counters["attended"].nonzero()
    assert mode.seen == ["_local_scalar_dense", "nonzero"]


def test_overflow_is_an_error_not_a_wrap():
    model, ids, dense, logits = _prefill("llama", n=64)
    n = ids.shape[1]
    st = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=n + 2, impl="torch")
    assert st.max_cache_len == 72  # rounded up to whole blocks of 8
    step = StaticDecodeStep(model, st).compile(backend="eager")
    _greedy(model, st, logits, n, 8, step=step)  # fills the cache exactly
    keys_before = st.layers[0].keys.clone()
    with pytest.raises(KvprismError, match=r"max_cache_len = 72.*holds 72 tokens"):
        step(torch.zeros(2, 1, dtype=torch.long), torch.full((2, 1), n + 8))
    assert int(st.layers[0].cumulative_length) == 72
    assert torch.equal(st.layers[0].keys, keys_before)
    # eager update and prefill check too
    with pytest.raises(KvprismError, match="max_cache_len = 72"), torch.inference_mode():
        model(input_ids=torch.zeros(2, 1, dtype=torch.long), use_cache=True, **cache_kwargs(model, st))
    small = StaticSparseCache(model, SEL, max_cache_len=32, impl="torch")
    with pytest.raises(KvprismError, match=r"max_cache_len = 32.*cannot take 64 more"):
        chunked_prefill(model, ids, small)


def test_an_eager_decode_step_prepares_the_cache_a_compiled_step_needs_prepare():
    model, ids, dense, logits = _prefill("llama", n=20)
    want = StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=40, impl="torch")
    st = StaticSparseCache(model, SEL, max_cache_len=40, impl="torch")
    chunked_prefill(model, ids, st)
    with pytest.raises(KvprismError, match="prepare"):
        StaticDecodeStep(model, st)
    assert not st.prepared
    assert torch.equal(_greedy(model, st, logits, 20, 6), _greedy(model, want, logits, 20, 6))
    assert st.prepared
    for a, b in zip(st.layers, want.layers, strict=True):
        assert torch.equal(a.signatures, b.signatures)


def test_triton_impl_without_cuda_is_refused_at_prepare():
    from kvprism.kernels import triton_available

    model, _, dense, _ = _prefill("llama", n=20)
    if not triton_available():
        with pytest.raises(ConfigError, match="triton"):
            StaticSparseCache(model, SEL, max_cache_len=40, impl="triton")
    elif not CUDA:
        with pytest.raises(KvprismError, match="not cuda"):
            StaticSparseCache.from_prefilled(model, dense, SEL, max_cache_len=40, impl="triton")


# ------------------------------------------------------------------------------------------------ CUDA graphs
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("carry", [0, 2])
def test_cuda_graph_replay_same_tokens_as_eager(dtype, impl, carry):
    from kvprism.kernels import triton_available

    if impl == "triton" and not triton_available():
        pytest.skip("needs triton")
    dev = torch.device("cuda")
    model = tiny_model("qwen2", head_dim=16, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    model = model.to(device=dev, dtype=dtype)
    use_kvprism_attention(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 200), generator=g).to(dev)
    dense = DynamicCache()
    logits = chunked_prefill(model, ids, dense)
    sel = SelectionConfig(block_size=16, k=3, window=16, sink_blocks=1, projection="none", carry=carry)
    n = ids.shape[1]
    runs = []
    for graph in (False, True):
        st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=n + 40, impl=impl)
        assert st.use_triton == (impl == "triton")
        step = StaticDecodeStep(model, st)
        tok = logits.argmax(-1, keepdim=True)
        out = [tok]
        pos = torch.full((2, 1), n, device=dev)
        for s in range(36):
            lg = step.capture(tok, pos) if graph and s == 0 else step(tok, pos + s)
            tok = lg.argmax(-1, keepdim=True)
            out.append(tok)
        carried = [None if x.carried is None else x.carried.cpu() for x in st.layers]
        runs.append((torch.cat(out, 1).cpu(), st.stats_summary(), carried))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][2], runs[1][2], strict=True):  # the replayed graph carried as the eager steps did
        assert (a is None and b is None and not carry) or (torch.equal(a, b) and bool((b >= 0).any()))
    assert runs[1][1]["decode_steps"] == 36
    assert runs[0][1]["read_fraction_mean"] == pytest.approx(runs[1][1]["read_fraction_mean"])
    assert runs[1][1]["read_fraction_mean"] < 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("carry", [0, 2])
def test_cuda_triton_static_selects_like_torch_static_fp32(carry):
    """fp32: the Triton path (fused score + top-k, split-K attention; with ``carry`` the kernel's block masses)
    decodes the same tokens as the torch path."""
    from kvprism.kernels import triton_available

    if not triton_available():
        pytest.skip("needs triton")
    dev = torch.device("cuda")
    model = tiny_model("llama", head_dim=16).to(dev)
    use_kvprism_attention(model)
    ids = torch.randint(3, 128, (2, 150), generator=torch.Generator().manual_seed(1)).to(dev)
    dense = DynamicCache()
    logits = chunked_prefill(model, ids, dense)
    sel = SelectionConfig(block_size=16, k=2, window=16, projection="none", carry=carry)
    toks = []
    for impl in ("torch", "triton"):
        st = StaticSparseCache.from_prefilled(model, dense, sel, max_cache_len=200, impl=impl)
        toks.append(_greedy_cuda(model, st, logits, ids.shape[1], 30))
    assert torch.equal(toks[0], toks[1])


def _greedy_cuda(model, cache, logits, start, steps):
    step = StaticDecodeStep(model, cache)
    tok = logits.argmax(-1, keepdim=True)
    out = [tok]
    for s in range(steps):
        tok = step(tok, torch.full_like(tok, start + s)).argmax(-1, keepdim=True)
        out.append(tok)
    return torch.cat(out, 1).cpu()


def test_dense_static_cache_step_has_no_host_sync():
    """The dense baseline of benchmarks/gpu_e2e.py (transformers StaticCache + sdpa) is graph-capturable too."""
    from transformers import StaticCache

    model, ids, _, logits = _prefill("llama")
    model.set_attn_implementation("sdpa")
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 4)
    with torch.inference_mode():
        chunked_prefill(model, ids, cache)
    step = StaticDecodeStep(model, cache)
    tok = logits.argmax(-1, keepdim=True)
    step(tok, torch.full((2, 1), ids.shape[1]))  # the first call reads the cache length once
    with torch.inference_mode(), _HostSyncs() as mode:
        step(tok, torch.full((2, 1), ids.shape[1] + 1))
    assert mode.seen == []
    step(tok, torch.full((2, 1), ids.shape[1] + 2))
    step(tok, torch.full((2, 1), ids.shape[1] + 3))
    with pytest.raises(KvprismError, match="cannot take one more"):
        step(tok, torch.full((2, 1), ids.shape[1] + 4))
