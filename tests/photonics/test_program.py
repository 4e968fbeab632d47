"""``program``: signatures -> a calibrated state; append grows it; the same draws as the facade."""

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import program
from kvprism.photonics.design import ChipDesign

CFG = PhotonicConfig.preset("seed-nominal").replace(n_lines=8)


def test_init_equals_engine_program():
    sig = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1))
    eng = PhotonicEngine(CFG, seed=3)
    eng.program(sig)
    counters = dict.fromkeys(eng.counters, 0)
    state = program.init(ChipDesign.from_config(CFG, 8), sig, torch.Generator().manual_seed(3), counters)
    assert torch.equal(state.w, eng.state.w) and torch.equal(state.static, eng.state.static)
    assert counters["row_programs"] == 20 and counters["ring_updates"] == 160


def test_append_grows_rows_and_rescales_only_banks_that_need_it():
    des = ChipDesign.from_config(CFG, 8)
    gen, counters = torch.Generator().manual_seed(0), dict.fromkeys(PhotonicEngine(CFG).counters, 0)
    state = program.init(des, torch.randn(2, 10, 8, generator=gen), gen, counters)
    new = torch.zeros(2, 2, 8)
    new[1, 0, 0] = 100.0  # bank 1 no longer fits its scale
    scale0 = state.scale.clone()
    state = program.append(des, state, new, gen, counters)
    assert state.rows == 12 and state.w.shape == (2, 12, 8)
    assert state.scale[0] == scale0[0] and state.scale[1] < scale0[1]
    assert counters["bank_rescales"] == 1 and counters["rescale_row_programs"] == 10


def test_bank_scale_maps_the_largest_signature_to_the_weight_range():
    sig = torch.tensor([[[0.5, -2.0]], [[0.0, 0.0]]])
    assert torch.equal(program.bank_scale(0.4, sig), torch.tensor([0.2, 0.4]))
