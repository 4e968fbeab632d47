"""The chip and scorer redesign changes no behaviour: engine, group, feasibility and decode through every scorer
reproduce ``tests/golden/pipeline.pt``, recorded from the code before the redesign (``tests/support/golden_pipeline.py``).

Indices, tokens and counters must be equal; scores and logits may differ only by float rounding (a pure move of code
keeps them bitwise, a reordered sum may not)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support import golden_pipeline as gp


@pytest.fixture(scope="module")
def golden():
    return torch.load(gp.GOLDEN, weights_only=False)


def _same(got, want, path="", rtol=1e-6):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.shape == want.shape and got.dtype == want.dtype, path
        if want.is_floating_point():
            scale = float(want.abs().max()) if want.numel() else 0.0
            torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, msg=path)
        else:
            assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _same(got[k], want[k], f"{path}/{k}", rtol)
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{path}[{i}]", rtol)
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=rtol, abs=1e-300) or (math.isnan(want) and math.isnan(got)), path
    else:
        assert got == want, path


@pytest.mark.parametrize("name", gp.PRESETS)
def test_engine_matches_golden(golden, name):
    _same(gp.engine_scenario(name), golden["engine"][name], name)


def test_engine_group_matches_golden(golden):
    _same(gp.group_scenario(), golden["group"], "group")


@pytest.mark.parametrize("name", gp.PRESETS)
def test_feasibility_matches_golden(golden, name):
    _same(gp.feasibility_scenario(name), golden["feasibility"][name], name, rtol=1e-9)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name", [n for n, _ in gp.DECODES])
def test_decode_matches_golden(golden, family, name):
    _same(gp.decode_scenario(family, dict(gp.DECODES)[name]), golden["decode"][f"{family}/{name}"], name, rtol=1e-5)
