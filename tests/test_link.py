import math

import pytest
import torch

from kvprism.photonics import encoding, link


def test_splitter_and_budget():
    assert link.splitter_loss_db(1, 0.2) == 0.0
    assert link.splitter_loss_db(8192, 0.2) == pytest.approx(10 * math.log10(8192) + 0.2 * 13)
    assert link.splitter_loss_db(5, 0.1) == pytest.approx(10 * math.log10(5) + 0.3)
    b = link.link_budget(laser_line_dbm=13.0, coupling_loss_db=1.5, mzm_insertion_loss_db=1.0, rows_per_bank=256,
                         splitter_excess_db_per_stage=0.2, waveguide_loss_db_per_m=20.0, waveguide_length_m=0.01,
                         ring_insertion_db=0.01, n_rings_passed=32, pd_coupling_loss_db=0.5)  # fmt: skip
    assert b.total_loss_db == pytest.approx(1.5 + 1.0 + link.splitter_loss_db(256, 0.2) + 0.2 + 0.32 + 0.5)
    assert b.row_line_dbm == pytest.approx(13.0 - b.total_loss_db)
    assert link.w_to_dbm(link.dbm_to_w(-7.3)) == pytest.approx(-7.3)


def test_mzm_encoding():
    f = torch.linspace(0, 1, 11, dtype=torch.float64)
    tm = encoding.t_min(25.0)
    lin = encoding.encode(f, v_pi_v=1.4, extinction_db=25.0, dac_bits=0, predistort=True)
    assert torch.allclose(lin, tm + (1 - tm) * f)  # pre-distortion linearises
    raw = encoding.encode(f, v_pi_v=1.4, extinction_db=25.0, dac_bits=0, predistort=False)
    assert (raw - lin).abs().max() > 0.05  # the cos² transfer distorts without it
    q = encoding.encode(f, v_pi_v=1.4, extinction_db=25.0, dac_bits=3, predistort=True)
    assert 0 < (q - lin).abs().max() < 0.2 and len(torch.unique(q)) <= 8
    assert float(
        encoding.encode(torch.zeros(1), v_pi_v=1.4, extinction_db=25.0, dac_bits=8, predistort=True)
    ) == pytest.approx(tm)
