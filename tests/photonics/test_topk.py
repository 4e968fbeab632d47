import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.photonics.topk import topk_codes, topk_lowest_index


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 4), n=st.integers(1, 60), levels=st.integers(1, 5), seed=st.integers(0, 10**6), data=st.data()
)
def test_matches_stable_sort(rows, n, levels, seed, data):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, n), generator=gen).float()
    k = data.draw(st.integers(1, n))
    ref = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(topk_lowest_index(scores, k), ref)


def test_leading_dims_kept():
    s = torch.randn(2, 3, 4, 10)
    assert topk_lowest_index(s, 3).shape == (2, 3, 4, 3)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 4), n=st.integers(1, 60), levels=st.integers(1, 6), seed=st.integers(0, 10**6), data=st.data()
)
def test_codes_match_stable_sort(rows, n, levels, seed, data):
    """The composite-key top-k on integer codes: same members, order and tie rule as a stable descending sort."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, levels, (rows, n), generator=gen).float()
    k = data.draw(st.integers(1, n))
    ref = torch.sort(codes, dim=-1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(topk_codes(codes.clone(), k, levels), ref)
    # a transposed (non-contiguous) view, as the engine passes it, and the fallback for keys beyond float32
    assert torch.equal(topk_codes(codes.T.contiguous().T, k, levels), ref)
    assert torch.equal(topk_codes(codes.clone(), k, 1 << 24), ref)


def test_codes_keys_stay_exact_at_the_float32_limit():
    """255 codes × 8192 rows (the benchmark's ADC and N): the highest code ties across the far ends of the row."""
    n = 8192
    codes = torch.zeros(1, n)
    codes[0, [5, n - 1, n - 2]] = 255.0
    codes[0, 0] = 254.0
    assert topk_codes(codes, 4, 256).tolist() == [[5, n - 2, n - 1, 0]]
