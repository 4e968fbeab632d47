"""``weights``: W_eff of a state is the chip's cascade at the state's detunings; the controller's model is the chip
without fabrication effects."""

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import drift, weights


def _engine(**kw) -> PhotonicEngine:
    cfg = PhotonicConfig.preset("seed-nominal").replace(n_lines=8, **kw)
    eng = PhotonicEngine(cfg, seed=1)
    eng.program(torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(2)))
    return eng


def test_refresh_writes_the_cascade_of_static_plus_drift():
    eng = _engine()
    s, des = eng.state, eng.design()
    det = drift.now(s, None, 0, None, s.static).reshape(-1, 8)
    thru, drop = weights.chip_fields(des, det, weights.extras(s, None, 0, None))
    torch.testing.assert_close(s.w.reshape(-1, 8), thru - drop, rtol=0, atol=1e-6)
    assert torch.allclose(s.transmit.reshape(-1), (thru + drop).mean(-1))


def test_controller_model_equals_chip_without_fabrication_spread():
    eng = _engine()
    des = eng.design()
    det = eng.state.static.reshape(-1, 8)
    assert torch.equal(weights.controller_weights(des, det), weights.chip_weights(des, det, {}))
    spread = _engine(coupler_gap_sigma_m=2e-9)
    ex = weights.extras(spread.state, None, 0, None)
    assert {"k1dev", "k2dev"} <= set(ex)
    assert not torch.allclose(weights.chip_weights(des, det, ex), weights.controller_weights(des, det))


def test_as_programmed_is_the_facades_weights():
    eng = _engine()
    w = weights.as_programmed(eng.design(), eng.state)
    assert torch.equal(w.reshape(2, 12, 8), eng.weights_as_programmed())
