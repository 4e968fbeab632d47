"""``SelectionConfig.carry``: blocks that took the most attention mass at one decode step stay selected at the next;
the scorer fills the rest of the k from the other candidates."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.hf import attention as A
from kvprism.hf.cache import SparseCache
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model
from tests.hf.test_cache import _batch, decode_loop

BASE = dict(block_size=8, k=3, d_sig=8, window=4, sink_blocks=1, projection="random")


def _trace(sel, steps=4):
    model = tiny_model("llama")
    ids, mask = _batch()
    cache = SparseCache(model, sel, trace=True, impl="torch")
    decode_loop(model, ids, mask, cache, steps=steps)
    return model, cache


def test_slot_mass_is_the_softmax_of_the_gathered_slots_summed_over_the_group():
    g = torch.Generator().manual_seed(0)
    b, h, grp, m, d = 2, 2, 3, 10, 8
    q = torch.randn(b, h * grp, d, generator=g)
    kg, vg = torch.randn(b, h, m, d, generator=g), torch.randn(b, h, m, d, generator=g)
    ok = torch.rand(b, h, m, generator=g) > 0.3
    ok[..., 0] = True
    out, mass = A.attend_gathered(q, kg, vg, ok, 0.5, slot_mass=True)
    assert torch.equal(out, A.attend_gathered(q, kg, vg, ok, 0.5))
    logits = torch.einsum("bhgd,bhmd->bhgm", q.reshape(b, h, grp, d), kg) * 0.5
    ref = torch.softmax(logits.masked_fill(~ok[:, :, None], -torch.inf), -1).sum(2)
    torch.testing.assert_close(mass, ref)
    assert torch.all(mass[~ok] == 0)


def test_carried_blocks_are_last_steps_selected_blocks_with_the_most_mass_and_stay_selected():
    sel = SelectionConfig(**BASE, carry=1)
    model, cache = _trace(sel)
    scaling = model.model.layers[0].self_attn.scaling
    kept_any = False
    for step in range(len(cache.trace) - 1):
        for layer in cache.trace[step]:
            rec, nxt = cache.trace[step][layer], cache.trace[step + 1][layer]
            blocks = rec["blocks"]  # [B, H, k]
            keys = cache.layers[layer].keys
            b, h, _ = blocks.shape
            # the mass of each selected block under this step's own sparse attention (independent recomputation)
            q = rec["query"].reshape(b, h, -1, keys.shape[-1])
            read = rec["token_mask"]  # [B, H, T]
            t = read.shape[-1]
            logits = torch.einsum("bhgd,bhtd->bhgt", q.float(), keys[:, :, :t].float()) * scaling
            p = torch.softmax(logits.masked_fill(~read[:, :, None], -torch.inf), -1).sum(2)  # [B, H, T]
            for bi in range(b):
                for hi in range(h):
                    ids = [int(x) for x in blocks[bi, hi] if x >= 0]
                    if not ids:
                        continue
                    # a block's own tokens, not those of the window it may overlap (read anyway, as the tail)
                    ts = t - sel.window
                    masses = [float(p[bi, hi, j * 8 : min((j + 1) * 8, ts)].sum()) for j in ids]
                    best = ids[max(range(len(ids)), key=masses.__getitem__)]
                    assert best in nxt["blocks"][bi, hi].tolist(), (step, layer, bi, hi)
                    kept_any = True
    assert kept_any


def test_the_default_carries_two_blocks_and_differs_from_plain_top_k():
    """The default (carry 2, benchmarks/measured/niah-single-qwen-carry.md, hard-tasks-qwen-carry-4k.md) on a tiny
    model: the same selections as carry = 2 written out, and not those of plain per-step top-k (carry 0)."""
    assert SelectionConfig().carry == 2
    _, default = _trace(SelectionConfig(**BASE), steps=4)
    _, two = _trace(SelectionConfig(**BASE, carry=2), steps=4)
    _, off = _trace(SelectionConfig(**BASE, carry=0), steps=4)
    differs = False
    for a, c, o in zip(default.trace, two.trace, off.trace, strict=True):
        for layer in a:
            assert torch.equal(a[layer]["blocks"], c[layer]["blocks"])
            differs |= not torch.equal(a[layer]["blocks"], o[layer]["blocks"])
    assert differs


def test_carry_reads_no_more_than_k_blocks_and_its_settings_are_checked():
    _, cache = _trace(SelectionConfig(**BASE, carry=2), steps=4)
    for step in cache.trace:
        for rec in step.values():
            blocks = rec["blocks"]
            assert blocks.shape[-1] == 3
            for row in blocks.reshape(-1, 3).tolist():
                ids = [x for x in row if x >= 0]
                assert len(ids) == len(set(ids))  # a carried block is never selected twice
    # carry k or more carries k - 1 (the scorer picks at least one block every step: a selection never freezes)
    _, below = _trace(SelectionConfig(**BASE, carry=2), steps=4)
    for carry in (3, 5):
        _, over = _trace(SelectionConfig(**BASE, carry=carry), steps=4)
        assert all(c.shape[-1] == 2 for c in over.pipeline._carry)
        for a, c in zip(over.trace, below.trace, strict=True):
            for layer in a:
                assert torch.equal(a[layer]["blocks"], c[layer]["blocks"])
    _, one = _trace(SelectionConfig(**{**BASE, "k": 1}, carry=2), steps=2)  # k 1 carries nothing
    assert all(c is None for c in one.pipeline._carry)
    with pytest.raises(ConfigError, match="carry"):
        SelectionConfig(**BASE, carry=-1)


@pytest.mark.parametrize(
    "extra", [{}, {"budget": "top_p", "top_p": 0.5, "k": 4}], ids=["topk-fused", "top_p-not-fused"]
)
def test_the_triton_kernel_carries_the_blocks_the_torch_path_carries(monkeypatch, extra):
    """impl 'auto' with the Triton kernels (on CPU under Triton's interpreter) against impl 'torch': the fused
    score + top-k with the carried blocks merged in, and the attention kernel's block masses, keep the same blocks
    at every step and give the same logits."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'kvprism[gpu]')")
    from kvprism.hf import pipeline as P

    if not torch.cuda.is_available():  # the kernels run on CPU tensors under the interpreter (tests/conftest.py)
        monkeypatch.setattr(P, "triton_blocker", lambda *args, **kwargs: None)
    model = tiny_model("llama")
    ids = torch.randint(3, 100, (1, 45), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)  # no padding: the kernels read a plain layout
    runs = {}
    for impl in ("torch", "auto"):
        cache = SparseCache(model, SelectionConfig(**{**BASE, **extra}, carry=2), trace=True, impl=impl)
        logits, _ = decode_loop(model, ids, mask, cache, steps=5)
        runs[impl] = (cache, logits)
    (torch_cache, torch_logits), (kernel_cache, kernel_logits) = runs["torch"], runs["auto"]
    assert kernel_cache.stats.attend_calls["torch"] == 0 and kernel_cache.stats.attend_calls["triton"] > 0
    # plain top-k: the fused score + top-k ran, the carried blocks merged in; a top-p budget selects on the torch
    # path (it must exclude the carried blocks before it normalises)
    assert (kernel_cache.stats.select_calls["kernel"] > 0) == (not extra)
    assert torch_cache.stats.attend_calls["triton"] == 0
    carried = 0
    for a, c in zip(torch_cache.trace, kernel_cache.trace, strict=True):
        for layer in a:
            assert torch.equal(a[layer]["blocks"], c[layer]["blocks"])
    for pa, pc in zip(torch_cache.pipeline._carry, kernel_cache.pipeline._carry, strict=True):
        assert torch.equal(pa, pc)
        carried += int((pc >= 0).sum())
    assert carried > 0  # blocks were carried (the comparison is not between two empty states)
    torch.testing.assert_close(kernel_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_an_empty_carried_slot_never_lets_a_carried_block_be_selected_twice():
    """A carried slot may be empty (-1) beside a carried block 0 (no sink block): block 0 stays excluded from the
    scorer's pick, so it is read once."""
    sel = SelectionConfig(**{**BASE, "sink_blocks": 0}, carry=2)
    _, cache = _trace(sel, steps=1)
    pipe = cache.pipeline
    layer = 0
    selector = pipe.selectors[layer]
    b, h = 2, selector.num_kv_heads
    cand = torch.ones(b, h, selector.n_blocks, dtype=torch.bool)
    pipe._carry[layer] = torch.tensor([[[0, -1]] * h] * b)
    q = cache.trace[-1][layer]["query"].reshape(b, h, -1, cache.layers[layer].keys.shape[-1])
    blocks, _ = pipe.select_with_carry(layer, q, cand)
    for row in blocks.reshape(-1, sel.k).tolist():
        ids = [x for x in row if x >= 0]
        assert ids[0] == 0 and len(ids) == len(set(ids)) == sel.k


def test_carry_helpers_on_edge_shapes():
    """No block slot at all (a cache shorter than one block): nothing is carried; -1 slots carry and drop nothing."""
    from kvprism.selection import carry as C

    prev = torch.tensor([[[0, -1]]])
    assert torch.equal(C.carried_candidates(prev, torch.zeros(1, 1, 0, dtype=torch.bool)), torch.tensor([[[-1, -1]]]))
    cand = torch.tensor([[[True, True, False]]])
    assert torch.equal(C.carried_candidates(torch.tensor([[[2, 1]]]), cand), torch.tensor([[[-1, 1]]]))
    assert torch.equal(C.without_carried(cand, torch.tensor([[[-1, 1]]])), torch.tensor([[[True, False, False]]]))
    assert torch.equal(
        C.drop_carried(torch.tensor([[[1, 0, -1]]]), torch.tensor([[[-1, 1]]])), torch.tensor([[[-1, 0, -1]]])
    )
    assert torch.equal(
        C.merge_carried(torch.tensor([[[-1, 1]]]), torch.tensor([[[-1, 0, -1]]]), 3), torch.tensor([[[1, 0, -1]]])
    )
    assert [C.effective_carry(2, k) for k in (0, 1, 2, 3, 6)] == [0, 0, 1, 2, 2]
