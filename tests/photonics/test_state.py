"""``BankState``: the record of every per-row tensor; row fields are views of buffers with spare capacity."""

import dataclasses

import pytest
import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics.state import ROW_FIELDS, BankState


def _state(rows: int = 3) -> BankState:
    buf = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    return BankState(lead=(2,), rows=rows, buffers={"sig": buf, "transmit": torch.ones(2, 4)})


def test_row_fields_are_views_of_the_first_rows():
    s = _state()
    assert s.sig.shape == (2, 3, 5) and s.transmit.shape == (2, 3)
    assert s.sig.data_ptr() == s.buffers["sig"].data_ptr()
    assert s.w is None and not s.has("w") and s.has("sig")
    assert (s.banks, s.dims) == (2, 5)


def test_record_is_frozen_and_replace_returns_a_new_one():
    s = _state()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rows = 4
    t = s.replace(pending_steps=3)
    assert t is not s and t.pending_steps == 3 and s.pending_steps == 0


def test_grown_keeps_rows_and_doubles_capacity():
    s = _state(rows=4)
    g = s.grown(6)
    assert g.rows == 6 and g.buffers["sig"].shape[1] == 16  # max(6, 2·4, 16)
    assert torch.equal(g.sig[:, :4], s.sig) and torch.equal(g.sig[:, 4:], torch.zeros(2, 2, 5))
    assert s.rows == 4  # the old record is unchanged


def test_engine_state_holds_every_modelled_field():
    cfg = PhotonicConfig.preset("seed-nominal").replace(n_lines=8, dc_relax_fraction=0.1, coupler_gap_sigma_m=1e-9)
    eng = PhotonicEngine(cfg, seed=0)
    assert eng.state is None
    eng.program(torch.randn(2, 5, 8))
    s = eng.state
    assert set(s.buffers) <= set(ROW_FIELDS)
    for name in ("sig", "static", "trim", "ring_drift", "w", "transmit", "const", "abs_sum", "eo", "age", "k1dev"):
        assert getattr(s, name).shape[:2] == (2, 5), name
    assert s.scale.shape == (2,) and s.full_scale.shape == (2,) and s.calibration_residual is not None
