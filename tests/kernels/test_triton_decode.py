"""Triton kernels vs the torch references.

On a CUDA machine the kernels run compiled; without CUDA they run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set here before the kernels are defined). Without ``triton`` the module is skipped.
The interpreter mishandles bf16 dot products, so bf16 is checked on CUDA only (fp16 and fp32 run everywhere).
"""

from __future__ import annotations

import importlib
import math
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "no CUDA, and triton was imported before TRITON_INTERPRET=1 could be set: run with TRITON_INTERPRET=1",
            allow_module_level=True,
        )
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
pytest.importorskip("triton", reason="triton is not installed (pip install 'kvprism[gpu]')")
if not CUDA and "kvprism.kernels.triton_decode" in sys.modules:
    importlib.reload(sys.modules["kvprism.kernels.triton_decode"])

from kvprism.errors import KvprismError  # noqa: E402
from kvprism.kernels import sparse_decode_attention  # noqa: E402
from kvprism.kernels.reference import (  # noqa: E402
    block_mass_ref,
    candidate_blocks,
    score_topk_ref,
    sparse_decode_attention_ref,
)
from kvprism.kernels.triton_decode import (  # noqa: E402
    SparseDecodeStep,
    score_topk_triton,
    sparse_decode_attention_triton,
)
from kvprism.layout import CANDIDATE, BlockGeometry, BlockLayout  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")
# fp32 inputs use exact ("ieee") fp32 dots; fp16/bf16 products are exact with fp32 accumulation, but the softmax
# weights are rounded to the input dtype before the second dot (as in flash attention)
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def lay(block_size, sink_blocks, window, seq_lens, t_cap):
    """The plain layout of rows of ``seq_lens`` positions in a cache of ``t_cap``."""
    return BlockLayout.from_lengths(seq_lens, BlockGeometry(block_size, sink_blocks, window), t_cap)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN (unwritten or non-finite)"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_case(seed, b, hq, hkv, t_cap, d, block_size, n_sel, dtype, idx_mode="random"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, t_cap, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, t_cap, d, generator=g).to(dtype)
    seq_lens = torch.randint(1, t_cap + 1, (b,), generator=g)
    seq_lens[0] = t_cap
    n_blocks = -(-t_cap // block_size)
    if idx_mode == "random":  # -1 slots, duplicates, blocks past seq_lens, blocks inside sink/window
        idx = torch.randint(-1, n_blocks, (b, hkv, n_sel), generator=g)
    else:  # duplicate-free selection among complete blocks, -1 padded
        idx = torch.full((b, hkv, n_sel), -1, dtype=torch.int64)
        for bi in range(b):
            n_full = int(seq_lens[bi]) // block_size
            for h in range(hkv):
                pick = torch.randperm(n_full, generator=g)[:n_sel]
                idx[bi, h, : len(pick)] = pick
    return [x.to(DEV) for x in (q, k, v, idx, seq_lens)]


CASES = [
    # (b, hq, hkv, t_cap, d, block_size, n_sel, sink blocks, window, idx_mode)
    (2, 8, 2, 150, 32, 16, 4, 1, 8, "random"),  # ragged capacity and last blocks
    (2, 6, 2, 97, 16, 8, 6, 0, 0, "unique"),  # G = 3; block smaller than the 16-token tile
    (1, 4, 4, 64, 32, 32, 2, 2, 40, "random"),  # sink and window overlap each other and the blocks
    (2, 7, 1, 200, 16, 10, 5, 1, 250, "unique"),  # block size not a power of two; window longer than any sequence
    (2, 28, 4, 320, 64, 64, 3, 0, 20, "unique"),  # Qwen2.5-7B head grouping (G = 7), 64-token blocks
    (1, 4, 2, 300, 16, 128, 2, 1, 9, "random"),  # 128-token blocks split into two 64-token tiles
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_decode_matches_reference(case, dtype):
    b, hq, hkv, t_cap, d, bs, n_sel, sink, window, mode = case
    q, k, v, idx, seq_lens = make_case(hash(case) % 1000, b, hq, hkv, t_cap, d, bs, n_sel, dtype, mode)
    out = torch.full_like(q, float("nan"))
    sparse_decode_attention_triton(q, k, v, idx, lay(bs, sink, window, seq_lens, k.shape[2]), out=out)
    ref = sparse_decode_attention_ref(
        q.double(), k.double(), v.double(), idx, lay(bs, sink, window, seq_lens, k.shape[2])
    )
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("num_splits", [1, 3, 1000])
def test_split_count_does_not_change_the_result(num_splits):
    q, k, v, idx, seq_lens = make_case(11, 2, 8, 2, 256, 32, 16, 6, torch.float32)
    ref = sparse_decode_attention_ref(q.double(), k.double(), v.double(), idx, lay(16, 3, 20, seq_lens, k.shape[2]))
    out = torch.full_like(q, float("nan"))
    sparse_decode_attention_triton(q, k, v, idx, lay(16, 3, 20, seq_lens, k.shape[2]), out=out, num_splits=num_splits)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_duplicates_and_padding_count_once():
    q, k, v, _, _ = make_case(12, 1, 4, 2, 128, 16, 16, 4, torch.float32)
    seq_lens = torch.tensor([128], device=DEV)
    once = torch.tensor([[[1, 4, -1, -1], [0, 2, -1, -1]]], device=DEV)
    twice = torch.tensor([[[4, 1, 4, 1], [2, -1, 0, 2]]], device=DEV, dtype=torch.int32)
    a = sparse_decode_attention_triton(q, k, v, once, lay(16, 0, 0, seq_lens, k.shape[2]))
    b = sparse_decode_attention_triton(q, k, v, twice, lay(16, 0, 0, seq_lens, k.shape[2]))
    assert rel_err(b, a) < TOL[torch.float32]


def test_strided_cache_views_and_length_one():
    """Caches that are views of a larger buffer (capacity beyond T) and a one-token sequence."""
    q, k_big, v_big, idx, _ = make_case(13, 2, 4, 2, 192, 16, 16, 3, torch.float16)
    k, v = k_big[:, :, :100], v_big[:, :, :100]
    idx = idx.clamp(max=6)
    seq_lens = torch.tensor([100, 1], device=DEV)
    out = sparse_decode_attention_triton(q, k, v, idx, lay(16, 2, 5, seq_lens, k.shape[2]))
    ref = sparse_decode_attention_ref(q.double(), k.double(), v.double(), idx, lay(16, 2, 5, seq_lens, k.shape[2]))
    assert rel_err(out, ref) < TOL[torch.float16]


def test_dispatcher_triton_backend():
    q, k, v, idx, seq_lens = make_case(14, 1, 4, 2, 64, 16, 16, 2, torch.float32)
    out = sparse_decode_attention(q, k, v, idx, lay(16, 1, 4, seq_lens, k.shape[2]), impl="triton")
    ref = sparse_decode_attention_ref(q.double(), k.double(), v.double(), idx, lay(16, 1, 4, seq_lens, k.shape[2]))
    assert rel_err(out, ref) < TOL[torch.float32]


# ---------------------------------------------------------------------------------------------------------------------
# block masses (what SelectionConfig.carry ranks the selected blocks by)
# ---------------------------------------------------------------------------------------------------------------------

MASS_TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("num_splits", [None, 1, 1000])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_block_mass_matches_reference(case, dtype, num_splits):
    """Per selected slot, the mass of the block's attended tokens summed over the group: -1 slots, repeated ids,
    blocks inside the sink or the tail, blocks split into several tiles, any split count."""
    b, hq, hkv, t_cap, d, bs, n_sel, sink, window, mode = case
    q, k, v, idx, seq_lens = make_case(100 + CASES.index(case), b, hq, hkv, t_cap, d, bs, n_sel, dtype, mode)
    layout = lay(bs, sink, window, seq_lens, k.shape[2])
    mass = torch.full((b, hkv, n_sel), float("nan"), device=DEV)
    plain = sparse_decode_attention_triton(q, k, v, idx, layout, num_splits=num_splits)
    out = sparse_decode_attention_triton(q, k, v, idx, layout, num_splits=num_splits, block_mass=mass)
    assert torch.equal(out, plain)  # the masses come from the same pass; the attention is unchanged
    ref = block_mass_ref(q.double(), k.double(), v.double(), idx, layout)
    torch.testing.assert_close(mass.double().cpu(), ref.cpu(), rtol=0, atol=MASS_TOL[dtype])
    assert (ref[idx < 0] == 0).all()
    cand = layout.token_roles.eq(CANDIDATE).cpu()
    hit = [cand[bi, j * bs : (j + 1) * bs].any() for bi in range(b) for j in idx[bi].flatten().tolist() if j >= 0]
    if any(hit):  # a selected block has candidate tokens: it holds a real share of the mass (the check is not vacuous)
        assert (ref > 1e-3).any()


def test_block_mass_of_a_hand_built_step():
    """One KV head, one query head, keys = 0 except block 2, which the query sees strongly: block 2's slot holds
    almost all the mass, a -1 slot none, a repeat of block 2 none, and the masses with sink + tail sum to G = 1."""
    d, bs, t = 16, 8, 64
    q = torch.zeros(1, 1, d, device=DEV)
    q[0, 0, 0] = 1.0
    k = torch.zeros(1, 1, t, d, device=DEV)
    k[0, 0, 16:24, 0] = 40.0  # block 2
    v = torch.randn(1, 1, t, d, generator=torch.Generator().manual_seed(0)).to(DEV)
    idx = torch.tensor([[[5, 2, -1, 2]]], device=DEV)
    layout = lay(bs, 1, 8, torch.tensor([t], device=DEV), t)
    mass = torch.empty(1, 1, 4, device=DEV)
    sparse_decode_attention_triton(q, k, v, idx, layout, block_mass=mass)
    assert mass[0, 0, 1] > 0.999 and mass[0, 0, 2] == 0 and mass[0, 0, 3] == 0
    # block 5 (8 tokens of score 0) against block 2 (8 tokens of score 40 / 4 = 10 after scaling); sink and tail
    # hold 16 more tokens of score 0
    other = 8 * math.exp(-10) / (8 + 24 * math.exp(-10))
    assert mass[0, 0, 0].item() == pytest.approx(other, rel=1e-4)


def test_block_mass_buffer_is_checked():
    q, k, v, idx, seq_lens = make_case(15, 1, 4, 2, 64, 16, 16, 2, torch.float32)
    layout = lay(16, 1, 4, seq_lens, k.shape[2])
    with pytest.raises(KvprismError, match=r"block_mass must be a contiguous float32 tensor of shape \(1, 2, 2\)"):
        sparse_decode_attention_triton(q, k, v, idx, layout, block_mass=torch.empty(1, 2, 3, device=DEV))
    with pytest.raises(KvprismError, match="mass_workspace must be a contiguous float32 tensor of at least"):
        sparse_decode_attention_triton(
            q, k, v, idx, layout, block_mass=torch.empty(1, 2, 2, device=DEV), mass_workspace=torch.empty(3, device=DEV)
        )


# ---------------------------------------------------------------------------------------------------------------------
# score + top-k
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("n, k, tile", [(40, 8, 16), (130, 5, 64), (33, 40, 16), (130, 5, 16)])
def test_score_topk_exact_with_ties(dtype, reduce, n, k, tile):
    """Small integers: every score is exact in both paths, ties are frequent, so indices must agree exactly."""
    g = torch.Generator().manual_seed(n + k)
    q = torch.randint(-2, 3, (3, 6, 16), generator=g).to(dtype).to(DEV)
    sig = torch.randint(-2, 3, (3, 2, n, 16), generator=g).to(dtype).to(DEV)
    n_valid = torch.tensor([n, n // 3, 1], device=DEV)
    got = torch.full((3, 2, k), -7, dtype=torch.int64, device=DEV)
    score_topk_triton(q, sig, n_valid, k, reduce, tile=tile, out=got)
    assert torch.equal(got.cpu(), score_topk_ref(q, sig, n_valid, k, reduce).cpu())


def test_score_topk_random_floats_select_the_best_scores():
    """Random floats: the chosen set's scores equal the reference top-k scores (tie order aside)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 32, generator=g).to(DEV)
    sig = torch.randn(2, 2, 500, 32, generator=g).to(DEV)
    got = score_topk_triton(q, sig, None, 16, "sum")
    ref = score_topk_ref(q, sig, None, 16, "sum")
    scores = torch.einsum("bhgd,bhnd->bhn", q.double().view(2, 2, 4, 32), sig.double())
    torch.testing.assert_close(torch.gather(scores, 2, got), torch.gather(scores, 2, ref), rtol=1e-5, atol=1e-5)
    assert (got.diff(dim=-1) != 0).all()  # distinct


@pytest.mark.parametrize("window", [0, 20, 32, 500])
def test_score_topk_counts_candidate_blocks_from_seq_lens(window):
    g = torch.Generator().manual_seed(6)
    q = torch.randint(-2, 3, (3, 4, 16), generator=g).float().to(DEV)
    sig = torch.randint(-2, 3, (3, 2, 20, 16), generator=g).float().to(DEV)
    seq_lens = torch.tensor([20 * 16, 5 * 16 + 7, 9], device=DEV)
    n_cand = candidate_blocks(lay(16, 0, window, seq_lens, 320))
    want = {0: [20, 5, 0], 20: [19, 5, 0], 32: [18, 4, 0], 500: [0, 0, 0]}[window]
    assert n_cand.tolist() == want
    got = score_topk_triton(q, sig, seq_lens, 6, "max", n_valid_div=16, n_valid_window=window, tile=16)
    assert torch.equal(got.cpu(), score_topk_ref(q, sig, n_cand, 6, "max").cpu())


# ---------------------------------------------------------------------------------------------------------------------
# whole decode step
# ---------------------------------------------------------------------------------------------------------------------


def step_reference(step: SparseDecodeStep) -> tuple[torch.Tensor, torch.Tensor]:
    n_cand = candidate_blocks(step.layout())
    idx = score_topk_ref(step.q_sig, step.signatures, n_cand, step.k, step.gqa_reduce)
    out = sparse_decode_attention_ref(step.q.double(), step.k_cache.double(), step.v_cache.double(), idx, step.layout())
    return idx, out


def fill_step(step: SparseDecodeStep, seed: int, lens: list[int]) -> None:
    g = torch.Generator().manual_seed(seed)
    step.q.copy_(torch.randn(step.q.shape, generator=g))
    step.q_sig.copy_(torch.randint(-2, 3, step.q_sig.shape, generator=g))  # exact scores: selection must agree
    step.seq_lens.copy_(torch.tensor(lens))


def make_step(dtype, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    b, hkv, t_cap, d, bs = 2, 2, 256, 32, 16
    k = torch.randn(b, hkv, t_cap, d, generator=g).to(dtype).to(DEV)
    v = torch.randn(b, hkv, t_cap, d, generator=g).to(dtype).to(DEV)
    sig = torch.randint(-2, 3, (b, hkv, t_cap // bs, 16), generator=g).to(dtype).to(DEV)
    return SparseDecodeStep(k, v, sig, q_heads=8, k=4, geometry=BlockGeometry(bs, 1, 24), **kw)


@pytest.mark.parametrize("merge_in_attention", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "max"])
def test_decode_step_eager_matches_reference(reduce, merge_in_attention):
    step = make_step(torch.float16, gqa_reduce=reduce, score_tile=16, merge_in_attention=merge_in_attention)
    fill_step(step, 1, [256, 150])
    step.out.fill_(float("nan"))
    out = step()
    idx, ref = step_reference(step)
    assert torch.equal(step.block_idx.cpu(), idx.cpu())
    assert rel_err(out, ref) < TOL[torch.float16]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("merge_in_attention", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_step_cuda_graph_replay_follows_new_inputs(dtype, merge_in_attention):
    step = make_step(dtype, score_tile=64, merge_in_attention=merge_in_attention)
    fill_step(step, 2, [256, 100])
    step.capture()
    for seed, lens in [(3, [256, 120]), (4, [17, 255]), (5, [1, 64])]:
        fill_step(step, seed, lens)
        step.out.fill_(float("nan"))
        step()
        torch.cuda.synchronize()
        idx, ref = step_reference(step)
        assert torch.equal(step.block_idx.cpu(), idx.cpu())
        assert rel_err(step.out, ref) < TOL[dtype]


@pytest.mark.parametrize("k_sel, tile", [(4, 16), (3, 64), (20, 16)])
def test_merging_in_attention_gives_the_same_step_bit_for_bit(k_sel, tile):
    """3 launches (candidates merged inside the attention kernel) vs 4 (separate merge): same selection, same
    arithmetic in the same order, so identical outputs."""
    outs = []
    for merge_in_attention in (False, True):
        g = torch.Generator().manual_seed(9)
        b, hkv, t_cap, d, bs = 2, 2, 256, 32, 16
        k = torch.randn(b, hkv, t_cap, d, generator=g).half().to(DEV)
        v = torch.randn(b, hkv, t_cap, d, generator=g).half().to(DEV)
        sig = torch.randn(b, hkv, t_cap // bs, 16, generator=g).half().to(DEV)
        step = SparseDecodeStep(
            k,
            v,
            sig,
            q_heads=8,
            k=k_sel,
            geometry=BlockGeometry(bs, 1, 20),
            score_tile=tile,
            merge_in_attention=merge_in_attention,
        )
        fill_step(step, 6, [256, 131])
        step.q_sig.copy_(torch.randn(step.q_sig.shape, generator=g))
        step.out.fill_(float("nan"))
        step.block_idx.fill_(-7)
        step()
        outs.append((step.out.clone(), step.block_idx.clone()))
    assert torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][0], outs[1][0])
