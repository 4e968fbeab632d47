"""``EngineGroup``: one batched drift sample and W_eff refresh for engines that decode in lockstep (one per layer)
gives every member exactly what it gets alone (same draws, weights, scores and counters), keeps the members' drift
processes independent, and falls back to per-engine sampling where members are not at the same point."""

from __future__ import annotations

import math

import pytest
import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.errors import KvprismError
from kvprism.photonics import EngineGroup, weights
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import transmit_variance

L, B, N, D = 4, 2, 12, 16


def _cfg(**kw) -> PhotonicConfig:
    return PhotonicConfig.preset("seed-nominal").replace(**({"rows_per_bank": 64} | kw))


def _lockstep(cfg: PhotonicConfig, grouped: bool, steps: int = 9, seed: int = 0):
    """Program L engines, then per decode step and layer: append a row every third step (one of them large enough to
    rescale its bank), evaluate, advance. Returns the engines, every score tensor and the group."""
    gen = torch.Generator().manual_seed(seed)
    sigs = [torch.randn(B, N, D, generator=gen) for _ in range(L)]
    apps = [[torch.randn(B, 1, D, generator=gen) * (4.0 if s == 6 else 0.5) for _ in range(L)] for s in range(steps)]
    qs = [[torch.randn(B, 2, D, generator=gen) for _ in range(L)] for _ in range(steps)]
    engines = [PhotonicEngine(cfg, seed=100 + i) for i in range(L)]
    group = EngineGroup(engines) if grouped else None
    scores = []
    for s in range(steps):
        for i, e in enumerate(engines):
            if s == 0:
                e.program(sigs[i])
            elif s % 3 == 0:
                e.append(apps[s][i])
            scores.append(e.scores(qs[s][i]))
            e.advance(1)
    return engines, scores, group


@pytest.mark.parametrize(
    "kw",
    [
        {},  # seed-nominal: drift, noise, RIN, DAC/ADC, crosstalk cascade
        {"noise": False, "drift_global_sigma_m": 5e-12},  # global drift too
        {"drift_update_steps": 3},  # held drift: samples every third step
        {"noise": False, "drift_ring_sigma_m": 0.0},  # no drift: nothing to sample
        {"rows_per_bank": 8, "n_banks": 1},  # time multiplexing: every evaluation loads pages (counted per engine)
    ],
)
def test_group_equals_independent_engines(kw):
    cfg = _cfg(**kw)
    alone, s_alone, _ = _lockstep(cfg, grouped=False)
    grouped, s_grouped, group = _lockstep(cfg, grouped=True)
    for a, b in zip(s_alone, s_grouped, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(alone, grouped, strict=True):
        assert a.counters == b.counters
        assert torch.equal(a.state.w, b.state.w) and torch.equal(a.state.ring_drift, b.state.ring_drift)
        assert a.state.global_drift_m == b.state.global_drift_m
    assert sum(e.counters["bank_rescales"] for e in grouped) > 0  # the rescale path ran
    assert (grouped[0].counters["page_row_programs"] > 0) == (cfg.physical_rows < B * N)
    samples = 0 if cfg.drift_ring_sigma_m == 0 and cfg.drift_global_sigma_m == 0 else 8 // cfg.drift_update_steps
    assert group.batched_samples == samples
    assert all(e.counters["weight_refreshes"] == samples for e in grouped)


def test_group_refresh_is_the_cascade_of_each_members_detunings():
    cfg = _cfg(drift_global_sigma_m=5e-12)
    engines, _, _ = _lockstep(cfg, grouped=True, steps=4)
    for e in engines:
        e.advance(2)
    engines[0].scores(torch.randn(B, D))  # the first evaluation samples every member
    for e in engines:
        s = e.state
        assert s.pending_steps == 0 and not s.stale
        det = (s.static + s.ring_drift + s.global_drift_m).view(-1, D)
        thru, drop = weights.chip_fields(e.design(), det, weights.extras(s, None, 0, None))
        thru, drop = thru.view(s.w.shape), drop.view(s.w.shape)
        torch.testing.assert_close(s.w, thru - drop, rtol=0, atol=1e-6)
        assert torch.allclose(s.transmit, (thru + drop).mean(-1))
        assert torch.equal(s.detection.var_transmit, transmit_variance(s.detection.g2, s.transmit))
    assert len({e.state.global_drift_m for e in engines}) == L  # each member its own global drift


def test_group_keeps_members_drift_independent_and_stationary():
    """Seeded: 4 members × 2·256·32 rings, 60 steps: every member's ring drift stays N(0, σ²) (std within 3 %), the
    lag-20 autocorrelation is ρ^20 (±0.04), and members are uncorrelated (|r| < 0.04, 5 standard errors)."""
    cfg = _cfg(noise=False, drift_corr_time_s=0.4)
    gen = torch.Generator().manual_seed(3)
    engines = [PhotonicEngine(cfg, seed=i) for i in range(4)]
    group = EngineGroup(engines)
    for e in engines:
        e.program(torch.randn(2, 256, 32, generator=gen))
    q = torch.randn(2, 32, generator=gen)
    history = []
    for _ in range(60):
        for e in engines:
            e.advance(1)
        engines[0].scores(q)
        history.append(torch.stack([e.state.ring_drift.flatten().clone() for e in engines]))
    assert group.batched_samples == 60
    sigma = cfg.drift_ring_sigma_m
    last, lagged = history[-1], history[-21]
    for m in range(4):
        assert abs(float(last[m].std()) / sigma - 1) < 0.03
        r = float(torch.corrcoef(torch.stack([last[m], lagged[m]]))[0, 1])
        assert abs(r - math.exp(-20 / ChipDesign.from_config(cfg).drift_corr_steps)) < 0.04
    cross = torch.corrcoef(last)
    assert float((cross - torch.eye(4)).abs().max()) < 0.04


def test_members_out_of_step_sample_alone_with_the_same_results():
    """A member advanced more than the others, one with more rows, one reprogrammed with a new bank shape: each samples
    at its own point (batched only with members at the same point); the results stay those of independent engines,
    and the group restacks its state whenever its members change."""

    def run(grouped: bool):
        cfg = _cfg(noise=False)
        gen = torch.Generator().manual_seed(5)
        engines = [PhotonicEngine(cfg, seed=i) for i in range(L)]
        group = EngineGroup(engines) if grouped else None
        for e in engines:
            e.program(torch.randn(B, N, D, generator=gen))
        engines[1].append(torch.randn(B, 2, D, generator=gen) * 0.1)  # more rows
        engines[2].advance(1)  # one step ahead
        engines[3].program(torch.randn(B + 1, N + 3, D, generator=gen))  # new bank shape
        out, batched = [], []
        for _ in range(3):
            for e in engines:
                e.advance(1)
            for e in engines:
                out.append(e.scores(torch.randn(*e.bank_shape, D, generator=gen)))
            batched.append(group.batched_samples if grouped else 0)
        return engines, out, batched

    alone, s_alone, _ = run(False)
    grouped, s_grouped, batched = run(True)
    # step 1: nobody shares engine 0's point; engine 2 samples alone one step early and is in step with engine 0 from
    # step 2 on (same rows and banks): one batched sample of the two per step; engines 1 and 3 always sample alone
    assert batched == [0, 1, 2]
    for a, b in zip(s_alone, s_grouped, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(alone, grouped, strict=True):
        assert a.counters == b.counters and torch.equal(a.state.w, b.state.w)
        assert a.counters["weight_refreshes"] == 3


def test_group_bad_inputs_and_release():
    cfg = _cfg()
    a, b = PhotonicEngine(cfg, seed=0), PhotonicEngine(cfg, seed=1)
    with pytest.raises(KvprismError, match="different PhotonicConfig"):
        EngineGroup([a, PhotonicEngine(cfg.replace(noise=False))])
    with pytest.raises(KvprismError, match="more than once"):
        EngineGroup([a, a])
    with pytest.raises(KvprismError, match="one or more"):
        EngineGroup([])
    group = EngineGroup([a, b])
    with pytest.raises(KvprismError, match="already belongs"):
        EngineGroup([b])
    group.release()
    assert a.group is None and b.group is None
    EngineGroup([a, b])  # free again
