"""The block layout (sink / candidate / tail / padding) against a brute-force reference, one case table for the
layout itself, selection, the metrics, the kernels' reference and the energy model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.energy.config import EnergyConfig
from kvprism.energy.gpu import selected_tokens
from kvprism.eval import metrics as M
from kvprism.kernels import candidate_blocks, score_topk_ref, sparse_decode_attention_ref
from kvprism.kernels.reference import attended_mask
from kvprism.layout import CANDIDATE, PAD, SINK, TAIL, BlockGeometry, BlockLayout, topk_blocks
from kvprism.selection import BlockSelector, SelectionConfig, block_signatures

# (context, block, sink, window, padding): cache positions, block size, sink blocks, window tokens, left-padding tokens
CASES = [
    (64, 16, 1, 16, 0),  # window = one block: no partly covered block
    (70, 16, 1, 16, 0),  # incomplete last block longer than... shorter than the window
    (75, 16, 1, 20, 0),  # a block the window covers partly (block 3: 48..63, window from 55)
    (100, 8, 2, 5, 0),  # window inside the incomplete block
    (37, 8, 0, 0, 0),  # no sink, no window: only the incomplete block is tail
    (40, 8, 3, 100, 0),  # window longer than the cache: everything is tail
    (48, 16, 5, 0, 0),  # more sink blocks than blocks
    (8, 8, 1, 7, 0),  # one block, mostly window
    (1, 4, 1, 0, 0),  # one token
    (96, 16, 1, 24, 20),  # left padding ending inside block 1 (sink starts there)
    (96, 16, 0, 24, 20),  # padding, no sink: the partly padded block is a candidate
    (96, 16, 2, 8, 32),  # padding that ends on a block boundary
    (130, 10, 1, 33, 7),  # block size not a power of two
    (64, 16, 1, 16, 63),  # one real token
]
IDS = [f"T{c}-B{b}-S{s}-W{w}-P{p}" for c, b, s, w, p in CASES]


def brute_force(context: int, bs: int, sink: int, window: int, padding: int) -> dict:
    """Roles and candidate / sink blocks from the rules as stated, position by position (python sets)."""
    real = {t for t in range(context) if t >= padding}
    n_complete = context // bs
    tail = {t for t in real if t >= context - window} | {t for t in real if t >= n_complete * bs}
    blocks_with_real = [j for j in range(-(-context // bs)) if any(j * bs <= t < (j + 1) * bs for t in real)]
    sink_blocks = set(blocks_with_real[:sink])
    cands = set()
    for j in range(n_complete):
        toks = set(range(j * bs, (j + 1) * bs))
        if j not in sink_blocks and j >= (blocks_with_real[0] if blocks_with_real else 0) and (toks & real) - tail:
            cands.add(j)
    roles = []
    for t in range(context):
        if t not in real:
            roles.append(PAD)
        elif t in tail:
            roles.append(TAIL)
        elif t // bs in sink_blocks:
            roles.append(SINK)
        else:
            assert t // bs in cands, (t, "a real token with no role")
            roles.append(CANDIDATE)
    sink_read = {j for j in sink_blocks if any(roles[t] == SINK for t in range(j * bs, min(context, (j + 1) * bs)))}
    return {"roles": roles, "candidates": cands, "sink": sink_read, "real": real, "tail": tail}


def read_set(bf: dict, chosen: set[int], bs: int) -> set[int]:
    """Tokens a step reads for the chosen candidate blocks."""
    always = {t for t, r in enumerate(bf["roles"]) if r in (SINK, TAIL)}
    return always | {t for t, r in enumerate(bf["roles"]) if r == CANDIDATE and t // bs in chosen}


def make_layout(context: int, bs: int, sink: int, window: int, padding: int, batch: int = 2) -> BlockLayout:
    valid = torch.arange(context)[None].expand(batch, -1) >= padding
    return BlockLayout.from_valid(valid, BlockGeometry(bs, sink, window))


def as_set(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().flatten().tolist())


# --------------------------------------------------------------------------------------------- the layout itself
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layout_matches_brute_force(case):
    context, bs, sink, window, padding = case
    bf = brute_force(*case)
    for layout in [make_layout(*case)] + ([BlockGeometry(bs, sink, window).at(context)] if padding == 0 else []):
        assert layout.token_roles[0].tolist() == bf["roles"]
        assert as_set(layout.candidates[0]) == bf["candidates"]
        assert as_set(layout.sink[0]) == bf["sink"]
        if layout.plain:
            lo, hi = layout.candidate_range()
            assert set(range(lo, hi)) == bf["candidates"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gather_plan_and_read_mask_read_sink_tail_and_the_chosen_blocks(case):
    context, bs, _sink, _window, _padding = case
    bf = brute_force(*case)
    layout = make_layout(*case, batch=1)
    cands = sorted(bf["candidates"])
    chosen = set(cands[::2])
    blocks = torch.tensor([[[*sorted(chosen), -1]]])
    want = read_set(bf, chosen, bs)
    plan = layout.gather_plan(blocks)
    assert as_set(plan.token_mask(context)[0, 0]) == want
    assert int(plan.n_attended[0, 0]) == len(want)  # each token once
    assert int(plan.n_cached[0]) == len(bf["real"])
    assert as_set(layout.read_mask(blocks)[0, 0]) == want


# --------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_selector_chooses_among_the_candidates_only(case):
    context, bs, sink, window, _padding = case
    bf = brute_force(*case)
    layout = make_layout(*case)
    n_blocks = context // bs
    sel = SelectionConfig(block_size=bs, k=3, d_sig=4, sink_blocks=sink, window=window, projection="random")
    selector = BlockSelector(sel, 0, 2, torch.tensor([True, False]))
    g = torch.Generator().manual_seed(context)
    keys = torch.randn(2, 2, n_blocks * bs, 8, generator=g)
    valid = layout.valid if layout.valid is not None else torch.ones(2, context, dtype=torch.bool)
    selector.fit(keys, valid[:, : n_blocks * bs])
    if n_blocks:
        selector.program(block_signatures(sel, selector.proj, keys, valid[:, : n_blocks * bs], layer_idx=0))
    query = torch.randn(2, 2, 3, 8, generator=g)
    got = selector.select(query, layout.candidate_mask(n=n_blocks).expand(2, 2, -1), k=len(bf["candidates"]) + 2)
    assert set(got[0, 0].tolist()) - {-1} == bf["candidates"]  # k >= #candidates: all of them, nothing else
    assert (got[:, 1] == -1).all()  # streaming head


# --------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_metrics_eligible_blocks_are_the_candidates(case):
    context, bs, sink, window, padding = case
    bf = brute_force(*case)
    if padding == 0:
        assert as_set(M.eligible_blocks(context, bs, sink, window)) == bf["candidates"]
    layout = make_layout(*case, batch=1)
    mass = torch.rand(1, 1, context, generator=torch.Generator().manual_seed(1))
    per_block = M.selectable_block_mass(mass, layout)[0, 0]
    for j in bf["candidates"]:
        toks = [t for t in range(j * bs, (j + 1) * bs) if bf["roles"][t] == CANDIDATE]
        assert math.isclose(float(per_block[j]), float(mass[0, 0, toks].sum()), rel_tol=1e-5)
    k = 2
    top = sorted(bf["candidates"], key=lambda j: (-float(per_block[j]), j))[:k]
    r = M.recall_at_k(torch.tensor([[[*top, -1]]]), per_block[None, None], k, layout.candidates[0])
    assert (r.isnan().all() and not bf["candidates"]) or float(r[0, 0]) == 1.0


# --------------------------------------------------------------------------------------------- kernels' reference
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernel_reference_attends_to_the_layouts_tokens(case):
    context, bs, sink, window, padding = case
    bf = brute_force(*case)
    layout = make_layout(*case, batch=1)
    if padding == 0:
        plain = BlockGeometry(bs, sink, window).at(torch.tensor([context]))
        # the scoring kernels count from block 0 the complete blocks holding a token before the tail
        before_tail = [j for j in range(context // bs) if any(t not in bf["tail"] for t in range(j * bs, (j + 1) * bs))]
        assert int(candidate_blocks(plain)[0]) == len(before_tail)
    chosen = set(sorted(bf["candidates"])[-2:])
    others = [j for j in range(-(-context // bs)) if j not in bf["candidates"]][:1]
    idx = torch.tensor([[[*sorted(chosen), -1, *others]]])  # a -1 slot and a non-candidate id add nothing
    want = read_set(bf, chosen, bs)
    assert as_set(attended_mask(idx, layout)[0, 0]) == want
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, context, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, context, 8, generator=g, dtype=torch.float64)
    out = sparse_decode_attention_ref(q, k, v, idx, layout)
    tok = sorted(want)
    p = torch.softmax(q[0] @ k[0, 0, tok].T / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out[0], p @ v[0, 0, tok])


# --------------------------------------------------------------------------------------------- energy model
@pytest.mark.parametrize(
    "case", [c for c in CASES if c[4] == 0], ids=[i for i, c in zip(IDS, CASES, strict=False) if c[4] == 0]
)
@pytest.mark.parametrize("k", [1, 3, 50])
def test_energy_selected_tokens_is_the_most_a_step_reads(case, k):
    context, bs, sink, window, _ = case
    bf = brute_force(*case)
    gain = sorted(sum(1 for t in range(j * bs, (j + 1) * bs) if bf["roles"][t] == CANDIDATE) for j in bf["candidates"])
    always = sum(1 for r in bf["roles"] if r in (SINK, TAIL))
    ecfg = EnergyConfig(block_size=bs, k=k, sink_blocks=sink, window=window)
    assert selected_tokens(context, ecfg) == always + sum(gain[::-1][:k])


# --------------------------------------------------------------------------------------------- random cases
@settings(max_examples=150, deadline=None)
@given(
    context=st.integers(1, 200),
    bs=st.integers(1, 33),
    sink=st.integers(0, 4),
    window=st.integers(0, 90),
    pad_frac=st.floats(0, 0.99),
)
def test_random_layouts_match_brute_force(context, bs, sink, window, pad_frac):
    padding = int(pad_frac * context)
    case = (context, bs, sink, window, padding)
    bf = brute_force(*case)
    layout = make_layout(*case, batch=1)
    assert layout.token_roles[0].tolist() == bf["roles"]
    assert as_set(layout.candidates[0]) == bf["candidates"]
    chosen = set(sorted(bf["candidates"])[1::2])
    blocks = torch.tensor([[[*sorted(chosen), -1]]])
    want = read_set(bf, chosen, bs)
    assert as_set(layout.gather_plan(blocks).token_mask(context)[0, 0]) == want
    assert as_set(layout.read_mask(blocks)[0, 0]) == want
    if padding == 0:
        assert as_set(M.eligible_blocks(context, bs, sink, window)) == bf["candidates"]


# --------------------------------------------------------------------------------------------- top-k
def brute_topk(scores: list[float], cand: list[bool], k: int) -> list[int]:
    order = sorted((i for i in range(len(scores)) if cand[i]), key=lambda i: (-scores[i], i))
    return (order + [-1] * k)[:k]


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.integers(-3, 3), min_size=0, max_size=40),
    data=st.data(),
    k=st.integers(0, 12),
)
def test_topk_blocks_ties_resolve_to_the_lowest_index(scores, data, k):
    cand = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    s = torch.tensor(scores, dtype=torch.float32)
    c = torch.tensor(cand, dtype=torch.bool)
    assert topk_blocks(s, c, k).tolist() == brute_topk(scores, cand, k)


def test_topk_blocks_every_user_agrees_on_ties():
    """selection, the metrics and the kernels' reference take one top-k: on all-equal scores each returns the lowest
    candidate ids."""
    n, k = 12, 4
    cand = torch.zeros(1, 1, n, dtype=torch.bool)
    cand[..., 3:11] = True
    want = [3, 4, 5, 6]
    assert topk_blocks(torch.zeros(1, 1, n), cand, k)[0, 0].tolist() == want
    assert as_set(M.top_k_mask(torch.zeros(1, 1, n), k, cand[0, 0])[0, 0]) == set(want)
    q, sig = torch.ones(1, 2, 4), torch.ones(1, 1, n, 4)
    assert score_topk_ref(q, sig, torch.tensor([n]), k)[0, 0].tolist() == [0, 1, 2, 3]
    sel = SelectionConfig(block_size=4, k=k, d_sig=4, projection="none")
    selector = BlockSelector(sel, 0, 1, torch.tensor([True]))
    keys = torch.ones(1, 1, n * 4, 4)
    valid = torch.ones(1, n * 4, dtype=torch.bool)
    selector.fit(keys, valid)
    selector.program(block_signatures(sel, selector.proj, keys, valid, layer_idx=0))
    assert selector.select(torch.ones(1, 1, 2, 4), cand)[0, 0].tolist() == want


def test_topk_blocks_nan_and_inf_candidates_rank_last_but_are_chosen():
    s = torch.tensor([float("nan"), 1.0, -float("inf"), 2.0])
    assert topk_blocks(s, torch.tensor([True, True, True, False]), 4).tolist() == [1, 0, 2, -1]


# --------------------------------------------------------------------------------------------- the fixed-shape layout
def fixed_layout(context: int, bs: int, sink: int, window: int, padding: int, capacity: int) -> BlockLayout:
    """The static cache's view of the same cache: ``capacity`` positions, the length on the device, no padding mask
    when there is no padding."""
    t = torch.arange(capacity)[None].expand(2, -1)
    valid = (t >= padding) & (t < context) if padding else None
    lens = torch.tensor(context).reshape(1).expand(2)
    return BlockLayout.fixed(BlockGeometry(bs, sink, window), lens, capacity, valid)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixed_layout_reads_what_the_brute_force_reads(case):
    context, bs, sink, _window, _padding = case
    bf = brute_force(*case)
    capacity = -(-(context + 2 * bs) // bs) * bs  # unused capacity after the length
    layout = fixed_layout(*case, capacity=capacity)
    assert layout.token_roles[0].tolist() == bf["roles"] + [PAD] * (capacity - context)
    assert as_set(layout.candidates[0]) == bf["candidates"]
    chosen = set(sorted(bf["candidates"])[::2])
    blocks = torch.tensor([[*sorted(chosen), -1]] * 2)[:, None]
    plan = layout.gather_plan(blocks)
    # the fixed size depends on the geometry and the capacity only
    assert plan.token_idx.shape[-1] == sink * bs + layout.tail_bound + blocks.shape[-1] * bs
    assert as_set(plan.token_mask(capacity)[0, 0]) == read_set(bf, chosen, bs)
    assert int(plan.n_attended[0, 0]) == len(read_set(bf, chosen, bs))
    assert int(plan.n_cached[0]) == len(bf["real"])
    assert torch.equal(layout.tokens_read(blocks), plan.n_attended)


def test_fixed_layout_traces_whole_without_host_syncs():
    """The static decode step builds its layout inside one compiled graph: no graph break, no recompilation when the
    device-side length changes."""
    geometry = BlockGeometry(8, 1, 5)

    def plan(length: torch.Tensor, valid: torch.Tensor, blocks: torch.Tensor):
        layout = BlockLayout.fixed(geometry, length.reshape(1).expand(2), 64, valid)
        p = layout.gather_plan(blocks)
        return layout.candidates, p.token_idx, p.token_ok, p.n_attended, p.n_cached

    compiled = torch.compile(plan, fullgraph=True, backend="eager")
    valid = torch.arange(64)[None].expand(2, -1) >= torch.tensor([[0], [11]])
    blocks = torch.tensor([[[2, 4], [3, -1]], [[5, 2], [-1, -1]]])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (20, 31, 40):
            length = torch.tensor(n)
            want = plan(length, valid & (torch.arange(64) < n), blocks)
            got = compiled(length, valid & (torch.arange(64) < n), blocks)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b)
