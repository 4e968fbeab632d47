"""The engine reproduces its recorded behaviour (tests/golden/engine.pt) in the legacy model settings.

The record was made before the physics-fidelity refactor; ``tests.support.golden_engine.LEGACY`` selects the old model
(incoherent drop bus, rest point at the centre of the EO range, ...). Numerics changed from the naive to the
cancellation-free ring forms, so W_eff agrees to float32 rounding, not bitwise: a score sitting on an ADC decision
threshold may move by one ADC step. Allowed: at most 2 % of the scores off by more than the rounding tolerance, none
by more than 5 % of the largest score; selections may differ only where such a flip changes the order; counters
exactly.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.golden_engine import GOLDEN, PRESETS, scenario


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


# tfln-literature (Q = 1e5) is not compared: its recorded float32 weights carry the cancellation error of the naive
# ring forms (the old numerics do not agree with the exact model there; tests/photonics/test_numerics.py pins the new ones).
@pytest.mark.parametrize("name", [p for p in PRESETS if p != "tfln-literature"])
def test_engine_matches_golden(golden, name):
    got, want = scenario(name), golden[name]
    for key in ("s0", "s1"):
        scale = float(want[key].abs().max())
        err = (got[key] - want[key]).abs()
        assert float((err > 2e-4 * scale).double().mean()) <= 0.02, key
        assert float(err.max()) <= 0.05 * scale, key
    for key in ("i0", "i1"):  # same sets of selected rows up to one flip per query
        same = [
            len(set(a.tolist()) & set(b.tolist()))
            for a, b in zip(got[key].flatten(0, -2), want[key].flatten(0, -2), strict=True)
        ]
        assert min(same) >= want[key].shape[-1] - 1, key
        assert float(torch.equal(got[key], want[key])) or sum(same) >= len(same) * want[key].shape[-1] - 1, key
    energy = "program_energy_j"
    assert {k: got["counters"][k] for k in want["counters"] if k != energy} == {
        k: v for k, v in want["counters"].items() if k != energy
    }
    assert got["counters"][energy] == pytest.approx(want["counters"][energy], rel=1e-3)
