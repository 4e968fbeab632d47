"""Drive codes refreshed every decode step (``code_refresh = "every-step"``): time-shared banks rewrite their rows
every round, so the drift since the codes' calibration is stationary (none at age 0, ``calibration_age_s`` when
replayed) instead of growing from the prefill on, as it does for codes held since programming (``"hold"``)."""

import math

import pytest
import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.config import ConfigError
from kvprism.photonics import drift
from kvprism.photonics.design import ChipDesign

# strong, fast drift so that holding the codes over a few hundred steps matters: σ 0.26 linewidths per ring, 0.13
# global (4 pm / 2 pm at the 15.5 pm FWHM of Q 1e5), correlation time 10 steps
_FWHM_M = ChipDesign.from_config(PhotonicConfig.preset("tfln-timeshared")).fwhm_m
DRIFTY = PhotonicConfig.preset("tfln-timeshared").replace(
    drift_model="fixed",
    drift_ring_sigma_m=4e-12 / 15.5e-12 * _FWHM_M,
    drift_global_sigma_m=2e-12 / 15.5e-12 * _FWHM_M,
    drift_corr_time_s=0.2,
    decode_step_time_s=0.02,
    code_refresh="hold",
)


def _sig(rows: int = 64, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, rows, d, generator=torch.Generator().manual_seed(seed))


def _weight_error_by_step(cfg: PhotonicConfig, steps: tuple[int, ...], seed: int = 2) -> list[float]:
    """RMS of W_eff − target weights after each number of decode steps (one engine, advanced in order)."""
    sig = _sig()
    eng = PhotonicEngine(cfg, seed=seed)
    eng.program(sig)
    target = sig * (eng.weight_range(sig.shape[-1]) / sig.abs().amax(dim=(1, 2), keepdim=True))
    out, done = [], 0
    q = torch.randn(2, sig.shape[-1], generator=torch.Generator().manual_seed(9))
    for s in steps:
        eng.advance(s - done)
        done = s
        eng.scores(q)  # an evaluation samples the pending drift and refreshes W_eff
        out.append(float((eng.state.w - target).pow(2).mean().sqrt()))
    return out


def test_every_step_needs_in_situ_calibration():
    with pytest.raises(ConfigError, match="code_refresh"):
        DRIFTY.replace(feedback_calibration=False, code_refresh="every-step")


def test_held_codes_age_and_refreshed_codes_do_not():
    """Holding the codes, the error grows with the steps since programming (toward the stationary drift);
    refreshed at age 0 it stays the programming error exactly; refreshed with an age it stays at the error of that
    age at every step."""
    steps = (0, 1, 50, 300)
    hold = _weight_error_by_step(DRIFTY, steps)
    assert hold[0] < hold[1] < hold[2] and hold[3] > 3 * hold[0]

    fresh = _weight_error_by_step(DRIFTY.replace(code_refresh="every-step"), steps)
    assert fresh == [fresh[0]] * len(steps) and fresh[0] == pytest.approx(hold[0])

    aged_cfg = DRIFTY.replace(rewrite_calibration="replay", calibration_age_s=0.04, code_refresh="every-step")
    aged = _weight_error_by_step(aged_cfg, steps)
    held_aged = _weight_error_by_step(aged_cfg.replace(code_refresh="hold"), steps)
    assert aged[0] == pytest.approx(held_aged[0])  # at programming both see the drift since the calibration
    assert max(aged[1:]) < 1.3 * aged[0] and min(aged[1:]) > 0.7 * aged[0]
    assert held_aged[3] > 1.5 * aged[3]


def test_refreshed_codes_keep_their_first_residual_and_draw_only_their_age():
    """Rewrites keep the drive codes' residual of the first calibration (static detuning and the compensated drift
    are not touched by decode steps); after 20 correlation times the held codes would see the full 2σ² spread of
    the drift, the refreshed ones only the drift of their age."""
    age_steps = 2.0
    cfg = DRIFTY.replace(drift_global_sigma_m=0.0, rewrite_calibration="replay", code_refresh="every-step",
                         calibration_age_s=age_steps * DRIFTY.decode_step_time_s)  # fmt: skip
    eng = PhotonicEngine(cfg, seed=0)
    eng.program(torch.randn(1, 512, 16, generator=torch.Generator().manual_seed(0)))
    static, cal = eng.state.static.clone(), eng.state.cal_drift.clone()
    eng.advance(200)
    eng.scores(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(eng.state.static, static) and torch.equal(eng.state.cal_drift, cal)
    now = drift.now(eng.state, None, 0, None)
    held = now - cal
    assert float(held.std()) == pytest.approx(cfg.drift_ring_sigma_m * math.sqrt(2.0), rel=0.05)
    fresh = now - drift.at_calibration(eng.design(), eng.state, torch.arange(1), 0, 512, eng.generator)
    rho_k = math.exp(-age_steps / eng.design().drift_corr_steps)
    assert float(fresh.std()) == pytest.approx(cfg.drift_ring_sigma_m * math.sqrt(2.0 * (1.0 - rho_k)), rel=0.05)


def test_refreshed_codes_in_an_engine_group_equal_the_engines_alone():
    """EngineGroup leaves refreshed engines to sample alone: the scores are those of ungrouped engines."""
    from kvprism.photonics import EngineGroup

    cfg = DRIFTY.replace(rewrite_calibration="replay", calibration_age_s=0.04, code_refresh="every-step")
    q = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    runs = []
    for grouped in (True, False):
        engines = [PhotonicEngine(cfg, seed=s) for s in (0, 1)]
        for e in engines:
            e.program(_sig())
        if grouped:
            EngineGroup(engines)
        out = []
        for _ in range(3):
            for e in engines:
                e.advance(1)
            out.append([e.scores(q) for e in engines])
        runs.append(out)
    for a, b in zip(*runs, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_shipped_time_shared_preset_refreshes_its_codes():
    """tfln-timeshared time-shares 4 physical banks over every (layer, KV head): its rows are rewritten each step."""
    cfg = PhotonicConfig.preset("tfln-timeshared")
    assert cfg.code_refresh == "every-step" and cfg.feedback_calibration


def test_trace_metrics_measure_a_noisy_scorer_at_every_step():
    """signature_recall_steps: a photonic scorer's recall of the exact selection of each step's own query, over all
    decode steps. With the ideal preset it is 1; with a chip whose codes are held while the drift moves, it falls
    below the first step's recall as the decode goes on, and refreshing the codes keeps it there."""
    from kvprism.eval.metrics import trace_metrics
    from kvprism.hf.cache import SparseCache
    from kvprism.selection import SelectionConfig
    from tests.conftest import tiny_model
    from tests.hf.test_cache import _batch, decode_loop

    model = tiny_model("llama")
    ids, mask = _batch(40)
    ids, mask = ids[:1], mask[:1]
    # plain per-step top-k (carry 0): with k 2 the default's two carried blocks would leave the scorer no choice
    base = SelectionConfig(block_size=4, k=2, d_sig=16, window=2, projection="random", scorer="photonic", carry=0)

    def steps_recall(chip, steps=12, carry=0):
        cache = SparseCache(model, base.replace(photonic=chip, carry=carry), trace=True)
        decode_loop(model, ids, mask, cache, steps=steps)
        assert all("exact_scores" in rec for step in cache.trace for rec in step.values())
        sample = type("S", (), {"target_spans": []})()
        return trace_metrics(cache.trace, _prefilled(model, ids, mask), cache.selectors[0].sel, sample)

    assert steps_recall("ideal")["signature_recall_steps"] == 1.0
    # with a carried block the reference is exact scoring's pick beside the same carried block: the ideal chip is 1
    assert steps_recall("ideal", carry=1)["signature_recall_steps"] == 1.0
    held = DRIFTY.replace(drift_corr_time_s=0.1, decode_step_time_s=0.05)
    a = steps_recall(held)["signature_recall_steps"]
    b = steps_recall(held.replace(code_refresh="every-step"))["signature_recall_steps"]
    assert 0.0 <= a < b <= 1.0


def _prefilled(model, ids, mask):
    from transformers import DynamicCache

    from kvprism import cache_kwargs

    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache), use_cache=True)
    return cache
