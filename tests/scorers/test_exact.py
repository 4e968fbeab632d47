"""The ``exact`` scorer: fp32 dot products of the programmed rows with the query, per bank."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import KvprismError
from kvprism.scorers import ExactScorer
from kvprism.selection import SelectionConfig


def _rows_and_query(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 4, generator=g)  # [*L, N, w], [*L, w]


def test_scores_are_the_dot_products_of_each_bank():
    rows, q = _rows_and_query()
    sc = ExactScorer(SelectionConfig())
    sc.program(rows.double())
    got = sc.scores(q)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 5)
    assert torch.allclose(got, torch.einsum("lhnw,lhw->lhn", rows, q), atol=1e-6)
    group = torch.stack([q, -2 * q], dim=2)  # [*L, G, w] -> [*L, G, N]
    assert torch.allclose(sc.scores(group), torch.stack([got, -2 * got], dim=2), atol=1e-5)
    assert sc.counters == {"row_programs": 2 * 3 * 5, "evaluations": 2 * 3 + 2 * 3 * 2}


def test_append_extends_every_bank_and_program_copies():
    rows, _ = _rows_and_query(1)
    sc = ExactScorer(SelectionConfig())
    first = rows[..., :3, :].clone()
    sc.program(first)
    first.zero_()  # the scorer keeps its own copy
    sc.append(rows[..., 3:, :])
    assert sc.n_rows == 5 and torch.equal(sc.rows, rows)
    assert sc.counters["row_programs"] == 2 * 3 * 5
    sc.advance(4)  # nothing drifts
    assert torch.equal(sc.rows, rows) and sc.feasibility() is None


def test_scores_and_append_before_program_are_kvprism_errors():
    """Finding (issue 30, 1): scores before program was an ``AssertionError`` (gone under ``python -O``)."""
    sc = ExactScorer(SelectionConfig())
    assert sc.n_rows == 0
    with pytest.raises(KvprismError, match="scores before program: no programmed rows"):
        sc.scores(torch.zeros(1, 4))
    with pytest.raises(KvprismError, match="append before program"):
        sc.append(torch.zeros(1, 2, 4))
