"""BlockSelector at its boundary (issue 30, finding 1): every scorer's input is checked once by the selector; a bad
query, row, candidate set or k is a KvprismError naming the tensor, its shape and the one expected."""

from __future__ import annotations

import pytest
import torch

from kvprism import boundary as C
from kvprism.errors import KvprismError
from kvprism.scorers import SCORERS, SeedPublishedConfig, SeedPublishedScorer, register_scorer
from kvprism.selection import BlockSelector, SelectionConfig

NAN, INF = float("nan"), float("inf")


def _selector(scorer: str = "exact", h: int = 2, **kw) -> BlockSelector:
    sel = SelectionConfig(block_size=4, k=2, d_sig=4, projection="none", scorer=scorer, photonic="ideal", **kw)
    s = BlockSelector(sel, 0, h, torch.ones(h, dtype=torch.bool))
    s.fitted = True
    return s


def _programmed(scorer: str = "exact", **kw) -> BlockSelector:
    s = _selector(scorer, **kw)
    s.program(torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(0)))
    return s


CAND = torch.ones(1, 2, 6, dtype=torch.bool)


@pytest.mark.parametrize("scorer", ["exact", "photonic", "seed-as-published"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_query_is_refused_not_selected(scorer, bad):
    """Before: the exact scorer turned a NaN/inf query into all-NaN scores and selected blocks [0, 1] anyway."""
    s = _programmed(scorer)
    q = torch.randn(1, 2, 3, 4)
    q[0, 1, 2, 0] = bad
    for call in (lambda: s.select(q, CAND), lambda: s.scores(q), lambda: s.exact_scores(q)):
        with pytest.raises(KvprismError, match=r"query contains NaN or inf \(shape \[1, 2, 3, 4\]\)"):
            call()


@pytest.mark.parametrize("scorer", ["exact", "photonic", "seed-as-published"])
def test_non_finite_rows_are_refused_at_program_and_append(scorer):
    s = _selector(scorer)
    rows = torch.randn(1, 2, 6, 4)
    rows[0, 0, 5, 1] = NAN
    with pytest.raises(KvprismError, match=r"program: signatures contains NaN or inf \(shape \[1, 2, 6, 4\]\)"):
        s.program(rows)
    assert s.n_blocks == 0
    s.program(torch.randn(1, 2, 6, 4))
    with pytest.raises(KvprismError, match=r"append: signatures contains NaN or inf"):
        s.append(rows[..., 4:, :])
    assert s.n_blocks == 6


def test_shape_mismatches_name_the_tensor_and_the_expected_shape():
    """Before: a query/row width mismatch was a raw torch RuntimeError."""
    s = _programmed()
    cases = {
        (1, 2, 3, 5): r"select: query has shape \[1, 2, 3, 5\]; expected \[1, 2, G, 4\]",  # head dim vs row width
        (1, 3, 3, 4): r"select: query has shape \[1, 3, 3, 4\]; expected \[1, 2, G, 4\]",  # KV heads
        (2, 2, 3, 4): r"select: query has shape \[2, 2, 3, 4\]; expected \[1, 2, G, 4\]",  # batch of the banks
        (1, 2, 0, 4): r"select: query has shape \[1, 2, 0, 4\]; expected \[1, 2, G, 4\]",  # empty group
        (2, 3, 4): r"select: query has shape \[2, 3, 4\]",
    }
    for shape, msg in cases.items():
        with pytest.raises(KvprismError, match=msg):
            s.select(torch.ones(shape), CAND)
    with pytest.raises(KvprismError, match=r"append: signatures has shape \[1, 2, 1, 5\]; expected \[1, 2, m, 4\]"):
        s.append(torch.ones(1, 2, 1, 5))
    with pytest.raises(KvprismError, match=r"program: signatures have shape \[1, 3, 6, 4\]; expected \[B, 2, N\*1"):
        _selector().program(torch.ones(1, 3, 6, 4))
    with pytest.raises(KvprismError, match=r"candidates has shape \[1, 2, 5\] torch.bool; expected .*\[1, 2, 6\]"):
        s.select(torch.ones(1, 2, 3, 4), CAND[..., :5])
    with pytest.raises(KvprismError, match=r"candidates has shape \[1, 2, 6\] torch.int64"):
        s.select(torch.ones(1, 2, 3, 4), CAND.long())
    for k in (-1, 1.5, True):
        with pytest.raises(KvprismError, match=r"select: k = .* is invalid"):
            s.select(torch.ones(1, 2, 3, 4), CAND, k=k)
    with pytest.raises(KvprismError, match="select: query must be a float tensor"):
        s.select(torch.ones(1, 2, 3, 4, dtype=torch.int64), CAND)
    with pytest.raises(KvprismError, match=r"rescore: blocks holds ids outside \[-1, 6\)"):
        _programmed(rerank=2).rescore(torch.ones(1, 2, 3, 4), torch.full((1, 2, 1), 6))


def test_scores_before_program_is_a_kvprism_error():
    with pytest.raises(KvprismError, match="scores before program"):
        _selector().scores(torch.ones(1, 2, 3, 4))
    # select before any block is complete is defined: no block
    assert _selector().select(torch.ones(1, 2, 3, 4), CAND[..., :0]).tolist() == [[[-1, -1], [-1, -1]]]


@pytest.mark.parametrize("scorer", ["exact", "photonic", "seed-as-published"])
def test_an_all_zero_bank_selects_the_lowest_candidate_ids(scorer):
    s = _selector(scorer)
    if scorer == "seed-as-published":  # its noise off: the all-zero bank scores exactly 0
        s.scorer = SeedPublishedScorer(config=SeedPublishedConfig(weight_sigma=0, detector_sigma=0))
    s.program(torch.zeros(1, 2, 6, 4))
    q = torch.randn(1, 2, 3, 4)
    assert not s.scores(q).any()
    cand = CAND.clone()
    cand[0, 1, 0] = False
    assert s.select(q, cand, k=3).tolist() == [[[0, 1, 2], [1, 2, 3]]]


def test_a_plugin_scorer_is_checked_by_the_selector(monkeypatch):
    """A scorer of a plugin that checks nothing gets the same boundary through the selector."""
    monkeypatch.setitem(SCORERS, "__unchecked__", None)
    seen = []

    @register_scorer("__unchecked__")
    class Unchecked:
        def __init__(self, sel, seed=0):
            self.counters = {}

        def program(self, signatures):
            seen.append("program")
            self.rows = signatures.float()

        def append(self, signatures):
            seen.append("append")

        def scores(self, query):
            seen.append("scores")
            return torch.matmul(self.rows, query.unsqueeze(-1)).squeeze(-1)

        def advance(self, steps):
            pass

        def feasibility(self):
            return None

    s = _selector("__unchecked__")
    rows = torch.randn(1, 2, 6, 4)
    with pytest.raises(KvprismError, match="program: signatures contains NaN"):
        s.program(rows.masked_fill(rows > 1, NAN))
    s.program(rows)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(KvprismError, match="select: query contains NaN"):
        s.select(q.masked_fill(q > 1, INF), CAND)
    assert s.select(q, CAND).shape == (1, 2, 2)
    assert seen == ["program", "scores"]  # refused input never reached the plugin


def test_valid_selection_is_unchanged_by_the_check():
    """The check reads the input only: the same selection with the check replaced by no-ops."""
    s = _programmed(signature="minmax")
    s2 = _selector(signature="minmax")
    s2.program(torch.randn(1, 2, 6, 8, generator=torch.Generator().manual_seed(0)))
    q = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    assert s.bank_shape == (1, 2, 4) and s2.bank_shape == (1, 2, 8)
    got = s2.select(q, CAND)
    want = torch.einsum("bhnw,bhw->bhn", s2.scorer.rows, s2.encode_query(q).sum(2))
    assert torch.equal(got, torch.sort(want, descending=True, stable=True).indices[..., :2])


def test_the_selector_reads_deferred_flags_at_advance(monkeypatch):
    """CUDA path (CPU tensors treated as deferring): select does not read the flag; the next round of advance does,
    naming the query — once per round of the layers, not once per layer."""
    monkeypatch.setattr(C, "DEFER_DEVICES", frozenset({"cpu"}))
    deferred = C.Deferred()
    monkeypatch.setattr(C, "DEFERRED", deferred)
    import kvprism.selection.selector as selector_mod

    monkeypatch.setattr(selector_mod, "DEFERRED", deferred)
    layers = [_programmed() for _ in range(3)]
    q = torch.randn(1, 2, 3, 4)
    for _ in range(3):
        for s in layers:
            s.select(q, CAND)
            s.advance(1)
    assert deferred.reads == 2
    bad = q.clone()
    bad[0, 0, 0, 0] = NAN
    layers[0].select(q, CAND)
    layers[0].advance(1)  # layer 0 opens a new round: reads the earlier one (all finite)
    assert deferred.reads == 3
    layers[1].select(bad, CAND)  # no error at the call: nothing is read there
    for s in layers[1:]:
        s.advance(1)
    layers[2].select(q, CAND)
    layers[0].select(q, CAND)
    with pytest.raises(KvprismError, match=r"select: query contains NaN or inf \(shape \[1, 2, 3, 4\]\)"):
        layers[0].advance(1)
