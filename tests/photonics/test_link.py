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
    # per-line modulation: demux before and mux after the MZMs; crossings on the way to the row
    m = link.link_budget(laser_line_dbm=13.0, coupling_loss_db=1.5, mzm_insertion_loss_db=1.0, rows_per_bank=256,
                         splitter_excess_db_per_stage=0.2, waveguide_loss_db_per_m=20.0, waveguide_length_m=0.01,
                         ring_insertion_db=0.01, n_rings_passed=32, pd_coupling_loss_db=0.5, demux_loss_db=3.0,
                         mux_loss_db=2.5, crossings=4, crossing_loss_db=0.2)  # fmt: skip
    assert m.total_loss_db == pytest.approx(b.total_loss_db + 3.0 + 2.5 + 0.8)
    assert m.to_mzm_db == pytest.approx(1.5 + 3.0) and dict(m.items())["crossings"] == pytest.approx(0.8)


def test_routing_length_from_bank_geometry():
    from kvprism.photonics import PhotonicConfig
    from kvprism.photonics.design import ChipDesign

    cfg = PhotonicConfig.preset("seed-nominal")
    ds = ChipDesign.from_config(cfg, 32)
    assert ds.bank_height_m == pytest.approx(8192 * 50e-6)  # 41 cm tall
    assert ds.link.routing_length_m == pytest.approx(0.01 + 8192 * 50e-6)
    assert ds.link.waveguide_db == pytest.approx(20.0 * (0.01 + 0.4096))
    short = ChipDesign.from_config(cfg.replace(bank_routing_fraction=0.0, demux_loss_db=0, mux_loss_db=0), 32)
    assert ds.link.total_loss_db - short.link.total_loss_db == pytest.approx(6.0 + 20.0 * 0.4096)
    crossed = ChipDesign.from_config(cfg.replace(crossings_per_row=2), 32)
    assert crossed.link.total_loss_db - ds.link.total_loss_db == pytest.approx(2 * cfg.crossing_loss_db)


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


def test_tabulated_dac_levels_equal_encode():
    """``level_transmission()[dac_codes(f)]`` (the engine's look-up) is ``encode(f)``: same DAC level, same MZM
    transfer; every level appears for a dense sweep of f."""
    f = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    f[:2] = torch.tensor([0.0, 1.0])
    for bits, predistort in ((3, True), (8, True), (8, False)):
        kw = dict(v_pi_v=1.4, dac_bits=bits)
        codes = encoding.dac_codes(f.double(), predistort=predistort, **kw)
        assert codes.dtype == torch.int64 and int(codes.min()) == 0 and int(codes.max()) == 2**bits - 1
        table = encoding.level_transmission(extinction_db=25.0, dtype=torch.float64, **kw)
        ref = encoding.encode(f.double(), extinction_db=25.0, predistort=predistort, **kw)
        assert torch.allclose(table[codes], ref, rtol=0, atol=1e-12)
    assert (
        len(torch.unique(encoding.dac_codes(torch.linspace(0, 1, 5000), v_pi_v=1.4, dac_bits=3, predistort=True))) == 8
    )
