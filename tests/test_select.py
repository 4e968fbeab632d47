import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.photonics.select import topk_lowest_index


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
