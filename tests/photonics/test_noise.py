import math

import pytest
import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import encoding, noise

Q = noise.ELEMENTARY_CHARGE_C


def test_formulas():
    assert noise.shot_variance_a2(1e-3, 0.0, 0.0, 1e9) == pytest.approx(2 * Q * 1e-3 * 1e9)
    assert noise.shot_variance_a2(0.5e-3, 0.5e-3, 1e-9, 1e9) == pytest.approx(2 * Q * (1e-3 + 2e-9) * 1e9)
    assert noise.tia_variance_a2(3e-12, 1e9) == pytest.approx(9e-24 * 1e9)
    assert noise.nep_variance_a2(1e-12, 1.0, 1e9) == pytest.approx(2 * 1e-24 * 1e9)
    assert noise.rin_sigma(-140.0, 1e10) == pytest.approx(math.sqrt(1e-14 * 1e10))


def test_adc_quantisation_and_clipping():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.26, 1.0, 3.0])
    y, clipped = noise.adc_quantize(x, 1.0, 2)  # 4 levels: -1, -1/3, 1/3, 1
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert clipped == 2
    assert all(bool((levels - v).abs().min() < 1e-6) for v in y)
    assert y[0] == -1.0 and y[-1] == 1.0 and y[2] == pytest.approx(-1 / 3)
    same, none = noise.adc_quantize(x, 1.0, 0)
    assert torch.equal(same, x) and none == 0


def _noise_only(**kw) -> PhotonicConfig:
    base = dict(crosstalk=False, program_bits=0, query_bits=0, adc_bits=0, trim_sigma_m=0.0, drift_ring_sigma_m=0.0,
                drift_global_sigma_m=0.0, rows_per_bank=64, rin_db_per_hz=-250.0)  # fmt: skip
    base.update(kw)
    return PhotonicConfig.preset("seed-nominal").replace(**base)


@pytest.mark.parametrize(
    "kw",
    [
        dict(tia_noise_a_per_rthz=0.0, nep_w_per_rthz=0.0, dark_current_a=0.0, laser_line_dbm=20.0),  # shot only
        dict(tia_noise_a_per_rthz=5e-12, nep_w_per_rthz=2e-12, dark_current_a=1e-6),  # all row noise
    ],
)
def test_row_noise_variance_matches_formula(kw):
    """Seeded statistical test: 4000 evaluations of one query; sample variance of each row's score vs the formula
    (converted to score units). Relative s.d. of a variance estimate is √(2/4000) ≈ 2.2 %: tolerance 10 %."""
    cfg = _noise_only(**kw)
    d, n, reps = 8, 6, 4000
    gen = torch.Generator().manual_seed(0)
    sig = torch.randn(1, n, d, generator=gen)
    q = torch.randn(1, d, generator=gen)
    eng = PhotonicEngine(cfg, seed=1)
    eng.program(sig)
    samples = eng.scores(q.unsqueeze(1).expand(1, reps, d).contiguous())[0]  # [reps, n]
    var_scores = samples.double().var(dim=0)
    # prediction from the photocurrents: I_thru + I_drop = R Σ_j P_j (thru_j + drop_j)
    p_row = eng.link_budget(d).row_line_w
    qmax = float(q.abs().max())
    frac = (1 + q[0] / qmax) / 2
    power = encoding.encode(frac, v_pi_v=cfg.mzm_v_pi_v, extinction_db=cfg.mzm_extinction_db, dac_bits=0,
                            predistort=True) * p_row  # fmt: skip
    from kvprism.photonics.wdm import cascade

    thru, drop = cascade(eng.state.static[0].double(), eng.optics(d), crosstalk=False)
    r = cfg.pd_responsivity_a_per_w
    i_tot = r * (thru + drop) @ power.double()
    var_a = noise.detector_variance_a2(
        i_tot, 0.0, i_dark_a=cfg.dark_current_a, tia_noise_a_per_rthz=cfg.tia_noise_a_per_rthz,
        nep_w_per_rthz=cfg.nep_w_per_rthz, responsivity_a_per_w=r, bandwidth_hz=cfg.detection_bandwidth_hz,
    )  # fmt: skip
    lin = 0.5 * (1 - encoding.t_min(cfg.mzm_extinction_db)) * p_row * r  # A per unit Σ w u (offset encoding)
    to_score = (qmax / (lin * float(eng.state.scale[0]))) ** 2
    predicted = var_a * to_score
    assert torch.allclose(var_scores, predicted, rtol=0.10)


def test_rin_is_common_to_rows():
    """With RIN dominant, two identical rows see the same fluctuation (correlation ≈ 1); with RIN off their noise is
    independent (correlation ≈ 0, |r| < 0.1 for 2000 samples, 4.5 s.d.)."""
    d, reps = 8, 2000
    gen = torch.Generator().manual_seed(2)
    row = torch.rand(1, 1, d, generator=gen) * 0.5 + 0.5
    sig = row.expand(1, 2, d).contiguous()
    q = (torch.rand(1, reps, d, generator=gen) * 0 + 1.0).contiguous()  # all lines fully on: RIN acts on the signal
    corr = {}
    for rin in (-100.0, -250.0):
        cfg = _noise_only(rin_db_per_hz=rin, laser_line_dbm=20.0)
        eng = PhotonicEngine(cfg, seed=3)
        eng.program(sig)
        s = eng.scores(q)[0].double()
        corr[rin] = float(torch.corrcoef(s.T)[0, 1])
    assert corr[-100.0] > 0.95
    assert abs(corr[-250.0]) < 0.1


def test_noise_switch_off_is_deterministic_per_query():
    cfg = _noise_only(noise=False)
    eng = PhotonicEngine(cfg)
    eng.program(torch.randn(1, 5, 8))
    q = torch.randn(1, 8)
    assert torch.equal(eng.scores(q), eng.scores(q))
