import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.errors import KvprismError


def _stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n=st.integers(1, 40),
    d=st.integers(1, 16),
    g=st.one_of(st.none(), st.integers(1, 3)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_ideal_select_is_exact_topk(lead, n, d, g, dtype, ties, seed, data):
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, n, d)
    if ties:  # small integers: many exactly equal scores
        sig = torch.randint(-2, 3, shape, generator=gen).to(dtype)
    else:
        sig = (torch.randn(shape, generator=gen) * 10 ** data.draw(st.integers(-3, 3))).to(dtype)
    qshape = (*lead, d) if g is None else (*lead, g, d)
    q = torch.randint(-2, 3, qshape, generator=gen).to(dtype) if ties else torch.randn(qshape, generator=gen).to(dtype)
    k = data.draw(st.integers(1, n))
    eng = PhotonicEngine(PhotonicConfig.preset("ideal"), seed=0)
    eng.program(sig)
    idx = eng.select(q, k)
    ref = sig @ q.unsqueeze(-1) if g is None else sig @ q.transpose(-1, -2)
    ref = ref.squeeze(-1) if g is None else ref.transpose(-1, -2)  # [*L, N] or [*L, G, N], in the input dtype
    assert idx.dtype == torch.int64 and idx.shape == (*ref.shape[:-1], k)
    assert torch.equal(eng.scores(q), ref)
    assert torch.equal(ref.gather(-1, idx), torch.topk(ref, k, dim=-1).values)  # the top-k values, exactly
    assert torch.equal(idx, _stable_topk(ref, k))  # and ties broken by the lower index


def test_ideal_append_equals_program_of_all_rows():
    gen = torch.Generator().manual_seed(1)
    sig = torch.randn(2, 3, 20, 8, generator=gen)
    q = torch.randn(2, 3, 4, 8, generator=gen)
    a = PhotonicEngine(PhotonicConfig.preset("ideal"))
    a.program(sig[:, :, :12])
    a.append(sig[:, :, 12:17])
    a.append(sig[:, :, 17:])
    b = PhotonicEngine(PhotonicConfig.preset("ideal"))
    b.program(sig)
    assert a.n_rows == 20 and torch.equal(a.select(q, 5), b.select(q, 5))
    assert a.counters["row_programs"] == b.counters["row_programs"] == 2 * 3 * 20


def small(preset: str = "seed-nominal", **kw) -> PhotonicConfig:
    """A preset shrunk to a chip that holds the test banks (256 rows per bank)."""
    return PhotonicConfig.preset(preset).replace(**{"rows_per_bank": 256, **kw})


def clean(**kw) -> PhotonicConfig:
    """Physical path without impairments that limit precision: crosstalk and noise off, fine quantisation."""
    base = dict(crosstalk=False, noise=False, program_bits=16, query_bits=16, adc_bits=20, trim_sigma_m=0.0,
                drift_ring_sigma_m=0.0, drift_global_sigma_m=0.0, calibration_iters=0, coupler_gap_sigma_m=0.0)  # fmt: skip
    base.update(kw)
    return small("seed-nominal", **base)


@pytest.mark.parametrize("encoding", ["offset", "dual-rail"])
def test_physical_path_estimates_the_dot_product(encoding):
    gen = torch.Generator().manual_seed(2)
    sig = torch.randn(3, 50, 8, generator=gen)
    q = torch.randn(3, 2, 8, generator=gen)
    eng = PhotonicEngine(clean(encoding=encoding), seed=0)
    eng.program(sig)
    est = eng.scores(q)
    exact = (sig @ q.transpose(-1, -2)).transpose(-1, -2)
    assert est.shape == exact.shape == (3, 2, 50)
    assert (est - exact).abs().max() < 2e-3 * exact.abs().max()
    assert eng.counters["evaluations"] == 3 * 2 * (2 if encoding == "dual-rail" else 1)
    assert eng.counters["queries"] == 6


def test_mzm_without_predistortion_distorts():
    gen = torch.Generator().manual_seed(3)
    sig, q = torch.randn(1, 50, 8, generator=gen), torch.randn(1, 8, generator=gen)
    exact = (sig @ q.unsqueeze(-1)).squeeze(-1)
    errs = []
    for pre in (True, False):
        eng = PhotonicEngine(clean(mzm_predistortion=pre), seed=0)
        eng.program(sig)
        errs.append(float((eng.scores(q) - exact).abs().max()))
    assert errs[0] < 1e-2 * errs[1]


def test_determinism_for_a_fixed_seed():
    gen = torch.Generator().manual_seed(4)
    sig, q = torch.randn(2, 64, 16, generator=gen), torch.randn(2, 16, generator=gen)
    cfg = small("seed-nominal", n_lines=16)
    runs = []
    for seed in (0, 0, 1):
        eng = PhotonicEngine(cfg, seed=seed)
        eng.program(sig)
        eng.advance(3)
        runs.append(torch.stack([eng.scores(q), eng.scores(q)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0][0], runs[0][1])  # fresh noise per evaluation


def test_select_shapes_and_ties():
    eng = PhotonicEngine(PhotonicConfig.preset("ideal"))
    sig = torch.tensor([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    eng.program(sig)
    assert eng.select(torch.tensor([1.0, 0.0]), 2).tolist() == [1, 2]
    assert eng.select(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), 2).tolist() == [[1, 2], [3, 0]]
    with pytest.raises(KvprismError, match="k = 6"):
        eng.select(torch.tensor([1.0, 0.0]), 6)
    with pytest.raises(KvprismError, match="query has shape"):
        eng.scores(torch.ones(3))


def test_bad_inputs():
    eng = PhotonicEngine(small())
    with pytest.raises(KvprismError, match="no programmed rows"):
        eng.scores(torch.ones(4))
    with pytest.raises(KvprismError, match="NaN"):
        eng.program(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(KvprismError, match="float tensor"):
        eng.program(torch.ones(2, 3, dtype=torch.int64))
    eng.program(torch.randn(2, 5, 4))
    with pytest.raises(KvprismError, match="append"):
        eng.append(torch.randn(3, 1, 4))
    with pytest.raises(KvprismError, match="steps"):
        eng.advance(-1)


def test_append_counts_and_rescales():
    gen = torch.Generator().manual_seed(5)
    sig = torch.randn(3, 10, 8, generator=gen)
    eng = PhotonicEngine(clean(), seed=0)
    eng.program(sig)
    small_rows = sig[:, :2] * 0.1  # fits every bank's scale
    eng.append(small_rows)
    assert eng.n_rows == 12 and eng.counters["bank_rescales"] == 0
    big = torch.zeros(3, 1, 8)
    big[1, 0, 0] = 100.0  # only bank 1 must be rescaled
    eng.append(big)
    c = eng.counters
    assert eng.n_rows == 13 and c["bank_rescales"] == 1 and c["rescale_row_programs"] == 12
    assert c["row_programs"] == 3 * 13 + 12
    # after the rescale the estimates still follow the dot product
    allsig = torch.cat([sig, small_rows, big], 1)
    q = torch.randn(3, 8, generator=gen)
    exact = (allsig @ q.unsqueeze(-1)).squeeze(-1)
    unit = allsig.abs().amax(dim=(1, 2)) * q.abs().amax(-1)  # each bank's own scale: max|signature| · max|q|
    assert ((eng.scores(q) - exact).abs().amax(-1) < 2e-3 * unit).all()


def test_time_multiplexing_is_counted():
    cfg = clean(rows_per_bank=8, n_banks=2)  # 16 physical rows
    eng = PhotonicEngine(cfg)
    eng.program(torch.randn(2, 20, 4))  # 40 logical rows -> 3 pages
    eng.scores(torch.randn(2, 4))
    assert eng.counters["pages"] == 3 and eng.counters["page_row_programs"] == 40
    fits = PhotonicEngine(clean())
    fits.program(torch.randn(2, 20, 4))
    fits.scores(torch.randn(2, 4))
    assert fits.counters["pages"] == 1 and fits.counters["page_row_programs"] == 0


def test_calibration_reaches_targets_within_programming_quantisation():
    bits = 6
    cfg = clean(program_bits=bits)
    eng = PhotonicEngine(cfg)
    sig = torch.randn(1, 200, 8, generator=torch.Generator().manual_seed(6))
    eng.program(sig)
    target = sig[0] * eng.state.scale[0]
    err = (eng.state.w[0] - target).abs()
    # one voltage step moves a ring's weight by at most max|dw/dV|·ΔV; rounding costs at most half of that
    step_v = 2 * cfg.v_max_v / (2**bits - 1)
    opt = eng.optics(8)
    det = torch.linspace(0, 2 * cfg.tuning_m_per_v * cfg.v_max_v, 2001)
    w = opt.single_ring_weight(det.unsqueeze(-1).expand(-1, 8))
    slope = (w.diff(dim=0).abs() / (det[1] - det[0])).max() * cfg.tuning_m_per_v  # per volt
    bound = 0.5 * step_v * float(slope)
    assert float(err.max()) <= bound * 1.01
    assert float(err.max()) > 0.1 * bound  # quantisation is really applied
    fine = PhotonicEngine(clean(program_bits=0))
    fine.program(sig)
    assert float((fine.state.w[0] - target).abs().max()) < 5e-4  # float32 simulation floor (~13 bit)


def test_offset_subtraction_uses_believed_weights():
    # an unknown static trim error δw leaks into offset-encoded scores through the row constant the controller
    # subtracts (½ Σ_j δw_j, query independent); dual-rail only sees Σ_j δw_j u_j. For a one-hot query the offset
    # error is ~√(d+1)/2 times larger.
    d = 32
    gen = torch.Generator().manual_seed(7)
    sig = torch.randn(1, 400, d, generator=gen)
    q = torch.zeros(1, d)
    q[0, 3] = 1.0
    exact = (sig @ q.unsqueeze(-1)).squeeze(-1)
    err = {}
    for enc in ("offset", "dual-rail"):
        eng = PhotonicEngine(clean(encoding=enc, trim_sigma_m=5e-12, n_lines=d), seed=0)
        eng.program(sig)
        err[enc] = float((eng.scores(q) - exact).abs().mean())
    assert err["offset"] > 2.0 * err["dual-rail"]


def test_ideal_ignores_drift_and_noise_counters():
    eng = PhotonicEngine(PhotonicConfig.preset("ideal"))
    eng.program(torch.randn(4, 8))
    eng.advance(5)
    assert eng.counters["drift_steps"] == 5
    assert math.isclose(float(eng.scores(torch.ones(8))[0]), float(eng.state.sig[0, 0].sum()), rel_tol=1e-6)


@pytest.mark.parametrize("encoding", ["offset", "dual-rail"])
def test_select_ranks_like_scores_with_adc_ties(encoding):
    """select() ranks the raw ADC codes; that must equal the tie-aware top-k of the returned estimates."""
    gen = torch.Generator().manual_seed(8)
    sig, q = torch.randn(3, 300, 8, generator=gen), torch.randn(3, 8, generator=gen)
    cfg = small("seed-nominal", n_lines=8, adc_bits=4, encoding=encoding)  # coarse ADC: many exact ties
    a, b = PhotonicEngine(cfg, seed=5), PhotonicEngine(cfg, seed=5)
    a.program(sig)
    b.program(sig)
    idx = a.select(q, 10)
    s = b.scores(q)  # same seed, same call sequence: same noise
    assert torch.equal(idx, _stable_topk(s, 10))
    assert len(torch.unique(s[0])) < 40  # ties really occur


def test_adc_clips_are_counted():
    """Noise-free path with the ADC full scale at 30 % of the worst case: every score clearly beyond full scale
    (|exact| > 1.02 FS) is counted as a clip, none clearly inside (|exact| < 0.98 FS), per query."""
    gen = torch.Generator().manual_seed(9)
    sig, q = torch.randn(2, 200, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    eng = PhotonicEngine(clean(adc_bits=8, adc_headroom=0.3), seed=0)
    eng.program(sig)
    eng.scores(q)
    exact = (sig @ q.transpose(-1, -2)).transpose(-1, -2).abs()  # [2, 3, 200]
    fs = 0.3 * sig.abs().sum(-1).amax(-1)[:, None, None] * q.abs().amax(-1, keepdim=True)  # FS in score units
    surely, maybe = int((exact > 1.02 * fs).sum()), int((exact > 0.98 * fs).sum())
    assert 0 < surely <= eng.counters["adc_clips"] <= maybe
    clips = eng.counters["adc_clips"]
    eng.select(q, 5)
    assert eng.counters["adc_clips"] == 2 * clips  # the same evaluations again (noise off)


@pytest.mark.parametrize("encoding", ["offset", "dual-rail"])
def test_detection_in_bank_chunks_equals_one_pass(monkeypatch, encoding):
    """Detection runs over chunks of banks; without noise the chunking must not change scores, selection or clips."""
    import kvprism.photonics.detect as detect_mod

    gen = torch.Generator().manual_seed(10)
    sig, q = torch.randn(5, 40, 8, generator=gen), torch.randn(5, 2, 8, generator=gen)
    cfg = clean(adc_bits=6, adc_headroom=0.1, encoding=encoding)  # low full scale: some samples clip
    runs = []
    for chunk in (1 << 30, 2 * 40 * 2):  # all banks at once; two banks per chunk (last chunk partial)
        monkeypatch.setattr(detect_mod, "_CHUNK_DETECT", chunk)
        eng = PhotonicEngine(cfg, seed=0)
        eng.program(sig)
        runs.append((eng.scores(q), eng.select(q, 7), eng.counters["adc_clips"]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2] > 0


@pytest.mark.parametrize("preset", ["ideal", "seed-nominal"])
def test_bad_inputs_are_named_and_zero_banks_are_defined(preset):
    eng = PhotonicEngine(small(preset), seed=0)
    with pytest.raises(KvprismError, match="N = 0 rows"):
        eng.program(torch.zeros(2, 0, 4))
    eng.program(torch.zeros(2, 6, 4))  # all-zero banks are defined: finite scores (exact zeros on the ideal chip)
    s = eng.scores(torch.randn(2, 4))
    assert torch.isfinite(s).all() and (preset != "ideal" or not s.any())
    assert eng.select(torch.randn(2, 4), 3).shape == (2, 3)
    for bad in (float("nan"), float("inf")):
        q = torch.randn(2, 4)
        q[0, 1] = bad
        with pytest.raises(KvprismError, match="query contains NaN or inf"):
            eng.scores(q)
        with pytest.raises(KvprismError, match="query contains NaN or inf"):
            eng.select(q, 2)
    with pytest.raises(KvprismError, match=r"k = 2\.0 is invalid"):
        eng.select(torch.randn(2, 4), 2.0)
    with pytest.raises(KvprismError, match=r"steps = 1\.5 is invalid"):
        eng.advance(1.5)
    sig = torch.randn(2, 6, 4)
    sig[1, 2, 3] = float("nan")
    with pytest.raises(KvprismError, match="signatures contains NaN or inf"):
        eng.program(sig)
