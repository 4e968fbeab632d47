"""``EngineGroup`` works on the members' public state: a grouped sample leaves each member as it would be alone."""

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import EngineGroup

CFG = PhotonicConfig.preset("seed-nominal").replace(n_lines=8, drift_global_sigma_m=5e-12)


def _run(grouped: bool) -> list[PhotonicEngine]:
    engines = [PhotonicEngine(CFG, seed=10 + i) for i in range(3)]
    group = EngineGroup(engines) if grouped else None
    gen = torch.Generator().manual_seed(1)
    for e in engines:
        e.program(torch.randn(2, 9, 8, generator=gen))
    for _ in range(3):
        for e in engines:
            e.advance(1)
        for e in engines:
            e.scores(torch.randn(2, 8, generator=gen))
    if group is not None:
        assert group.batched_samples == 3
        for e in engines:  # the members' states hold views of one stacked buffer per field
            assert e.state.buffers["w"]._base is engines[0].state.buffers["w"]._base
        group.release()
    return engines


def test_grouped_states_equal_states_alone():
    for a, b in zip(_run(False), _run(True), strict=True):
        assert torch.equal(a.state.w, b.state.w) and torch.equal(a.state.ring_drift, b.state.ring_drift)
        assert a.state.global_drift_m == b.state.global_drift_m and a.counters == b.counters
        assert b.group is None
