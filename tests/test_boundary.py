"""The boundary check shared by every scorer and the PhotonicEngine (kvprism.boundary): issue 30, finding 1."""

from __future__ import annotations

import pytest
import torch

from kvprism import boundary as C
from kvprism.errors import KvprismError
from kvprism.photonics import PhotonicConfig, PhotonicEngine
from kvprism.scorers import ExactScorer, PhotonicScorer, SeedPublishedConfig, SeedPublishedScorer
from kvprism.selection import SelectionConfig

NAN, INF = float("nan"), float("inf")


def _scorers():
    sel = SelectionConfig(photonic="ideal")
    return {
        "exact": ExactScorer(sel),
        "photonic": PhotonicScorer(sel),
        "seed-as-published": SeedPublishedScorer(sel, config=SeedPublishedConfig(weight_sigma=0, detector_sigma=0)),
    }


@pytest.mark.parametrize("name", ["exact", "photonic", "seed-as-published"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_every_scorer_refuses_a_non_finite_query_or_row(name, bad):
    """Before: the exact scorer turned a NaN/inf query or row into NaN scores without an error."""
    sc = _scorers()[name]
    rows = torch.randn(2, 3, 5, 4)
    broken = rows.clone()
    broken[1, 2, 3, 0] = bad
    with pytest.raises(KvprismError, match=r"program: signatures contains NaN or inf \(shape \[2, 3, 5, 4\]\)"):
        sc.program(broken)
    sc.program(rows)
    with pytest.raises(KvprismError, match=r"append: signatures contains NaN or inf \(shape \[2, 3, 5, 4\]\)"):
        sc.append(broken)
    q = torch.randn(2, 3, 4)
    q[0, 1, 2] = bad
    with pytest.raises(KvprismError, match=r"scores: query contains NaN or inf \(shape \[2, 3, 4\]\)"):
        sc.scores(q)
    with pytest.raises(KvprismError, match=r"query contains NaN or inf \(shape \[2, 3, 2, 4\]\)"):
        sc.scores(torch.stack([q, q], dim=2))
    assert sc.n_rows == 5  # refused rows were not added


@pytest.mark.parametrize("name", ["exact", "photonic", "seed-as-published"])
def test_every_scorer_names_a_shape_mismatch(name):
    """Before: a query/row width mismatch was a raw torch RuntimeError, scores before program an AssertionError."""
    sc = _scorers()[name]
    with pytest.raises(KvprismError, match="scores before program: no programmed rows"):
        sc.scores(torch.ones(2, 3, 4))
    sc.program(torch.randn(2, 3, 5, 4))
    cases = {
        (2, 3, 6): r"query has shape \[2, 3, 6\]; expected \[2, 3, 4\] or \[2, 3, G, 4\]",  # width
        (2, 4, 4): r"query has shape \[2, 4, 4\]; expected \[2, 3, 4\]",  # bank leading dims
        (3, 4): r"query has shape \[3, 4\]",
        (2, 3, 0, 4): r"query has shape \[2, 3, 0, 4\].*G ≥ 1",
    }
    for shape, msg in cases.items():
        with pytest.raises(KvprismError, match=msg):
            sc.scores(torch.ones(shape))
    with pytest.raises(KvprismError, match=r"append: signatures has shape \[2, 3, 1, 6\]; expected \[2, 3, m, 4\]"):
        sc.append(torch.ones(2, 3, 1, 6))
    with pytest.raises(KvprismError, match=r"append: signatures has shape \[3, 1, 4\]; expected \[2, 3, m, 4\]"):
        sc.append(torch.ones(3, 1, 4))
    with pytest.raises(KvprismError, match="must be a float tensor"):
        sc.scores(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(KvprismError, match="N = 0 rows"):
        sc.program(torch.ones(2, 3, 0, 4))
    with pytest.raises(KvprismError, match="an empty bank dimension"):
        sc.program(torch.ones(2, 0, 5, 4))


@pytest.mark.parametrize("name", ["exact", "photonic", "seed-as-published"])
def test_an_all_zero_bank_scores_zero_and_ties_go_to_the_lower_id(name):
    sc = _scorers()[name]
    sc.program(torch.zeros(2, 6, 4))
    s = sc.scores(torch.randn(2, 4))
    assert s.shape == (2, 6) and not s.any()
    assert torch.sort(s, descending=True, stable=True).indices[:, :3].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_the_engine_all_zero_bank_selects_the_lowest_ids():
    eng = PhotonicEngine(PhotonicConfig.preset("ideal"))
    eng.program(torch.zeros(2, 6, 4))
    assert eng.select(torch.randn(2, 4), 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_valid_input_passes_unchanged_in_every_float_dtype():
    sc = ExactScorer(SelectionConfig())
    rows = torch.randn(2, 5, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        sc.program(rows.to(dtype))
        q = torch.randn(2, 4).to(dtype)
        assert torch.equal(sc.scores(q), (rows.to(dtype).float() @ q.float().unsqueeze(-1)).squeeze(-1))
    # a finite tensor whose sum overflows is finite: no error
    sc.program(torch.full((1, 2, 2), 3e38))
    assert sc.scores(torch.zeros(1, 2)).tolist() == [[0.0, 0.0]]


def test_deferred_flags_are_read_once_per_round_and_name_the_tensor(monkeypatch):
    """CUDA: the finiteness flag stays on the device and is read once per decode step for all selectors (exercised
    here on CPU tensors by treating the CPU as a deferring device)."""
    monkeypatch.setattr(C, "DEFER_DEVICES", frozenset({"cpu"}))
    deferred = C.Deferred()
    monkeypatch.setattr(C, "DEFERRED", deferred)
    owners = [object(), object(), object()]  # three layers
    for _ in range(4):
        for layer, owner in enumerate(owners):
            q = torch.randn(3)
            C.check_finite(q, "select", f"query of layer {layer}")
            deferred.step(owner)
    assert deferred.reads == 3  # rounds 1-3 were read when layer 0 stepped again; round 4 is still queued
    C.check_pending()
    assert deferred.reads == 4 and not deferred.pending
    C.check_finite(torch.tensor([1.0, NAN]), "select", "query of layer 1")  # no error yet: nothing is read
    deferred.step(owners[0])
    deferred.step(owners[1])
    with pytest.raises(KvprismError, match=r"select: query of layer 1 contains NaN or inf \(shape \[2\]\)"):
        deferred.step(owners[0])
    assert not deferred.pending


def test_deferred_flags_are_bounded_without_decode_steps(monkeypatch):
    monkeypatch.setattr(C, "DEFER_DEVICES", frozenset({"cpu"}))
    deferred = C.Deferred()
    monkeypatch.setattr(C, "DEFERRED", deferred)
    for _ in range(deferred.limit + 1):
        C.check_finite(torch.ones(2), "scores", "query")
    assert deferred.reads == 1 and not deferred.pending


def test_stats_summary_reads_the_flags_the_last_step_left_queued():
    """A CUDA decode step's finiteness flags are read one step late; the summary of the run reads the last ones."""
    from kvprism.hf.cache import SparseStats

    stats = SparseStats(num_layers=1, num_kv_heads=1)
    C.DEFERRED.add(torch.tensor([1.0, float("nan")]), "scores: query holds a non-finite value")
    with pytest.raises(KvprismError, match=r"non-finite value \(read by the check of a later decode step\)"):
        stats.summary()
    assert not C.DEFERRED.pending
    assert stats.summary()["decode_steps"] == 0  # nothing queued: no error
