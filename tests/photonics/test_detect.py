"""``detect``: one query batch through a state, with its counters and cached constants."""

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import detect


def _programmed(**kw) -> PhotonicEngine:
    eng = PhotonicEngine(PhotonicConfig.preset("seed-nominal").replace(n_lines=8, **kw), seed=0)
    eng.program(torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(4)))
    return eng


def test_scores_through_a_state_equal_the_facade():
    a, b = _programmed(), _programmed()
    q = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(5))
    want = a.scores(q)
    des = b.design()
    state = detect.prepared(des, b.state)
    counters = dict.fromkeys(b.counters, 0)
    got = detect.scores(des, state, q, None, b.generator, counters, detect.Workspace())
    assert torch.equal(got.reshape(3, 2, 20), want)
    assert counters["adc_clips"] == a.counters["adc_clips"]


def test_constants_are_cached_until_the_rows_change():
    eng = _programmed()
    assert eng.state.detection is None
    eng.scores(torch.randn(3, 8))
    cached = eng.state.detection
    assert cached is not None and cached.c0.shape == (3, 20, 1) and cached.gain.shape == (3, 1, 1)
    eng.scores(torch.randn(3, 8))
    assert eng.state.detection is cached
    eng.append(torch.randn(3, 1, 8) * 0.01)
    assert eng.state.detection is None


def test_count_evaluations_counts_passes_and_pages():
    eng = _programmed(encoding="dual-rail", rows_per_bank=16, n_banks=2)
    counters = dict.fromkeys(eng.counters, 0)
    detect.count_evaluations(eng.design(), counters, 3, 2, 20)
    assert counters["queries"] == 6 and counters["evaluations"] == 12
    assert counters["adc_conversions"] == 12 * 20 and counters["dac_samples"] == 12 * 8
    assert counters["pages"] == 2 and counters["page_row_programs"] == 60  # 60 rows on a 32-row chip
