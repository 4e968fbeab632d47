"""Two-stage selection (``SelectionConfig.rerank``): the scorer proposes ``rerank·k`` candidate blocks, exact fp32
rescoring of their signatures keeps ``k``. Its definition against hand-made inputs and the real photonic engine,
the counters, the configuration errors, the energy term it adds and the design objective that uses it."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.layout import topk_blocks
from kvprism.selection import BlockSelector, SelectionConfig


def _selector(sel: SelectionConfig, heads: int = 2) -> BlockSelector:
    return BlockSelector(sel, 0, heads, torch.ones(heads, dtype=torch.bool))


def _inputs(n: int, w: int, rows: int = 1, seed: int = 0, heads: int = 2, group: int = 3):
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(1, heads, n * rows, w, generator=g)
    query = torch.randn(1, heads, group, w, generator=g)
    cand = torch.ones(1, heads, n, dtype=torch.bool)
    cand[..., 3:6] = False  # some blocks are not candidates (sink / tail / window in the loop)
    return sig, query, cand


@pytest.mark.parametrize("gqa_reduce", ["sum", "max"])
@pytest.mark.parametrize("signature", ["mean", "centroids"])
def test_exact_scorer_with_rerank_selects_as_one_stage(gqa_reduce, signature):
    """Rescoring exact candidates exactly cannot change the exact top-k."""
    base = SelectionConfig(k=4, projection="none", signature=signature, sig_rows=3, gqa_reduce=gqa_reduce)
    one, two = _selector(base), _selector(base.replace(rerank=3))
    sig, query, cand = _inputs(24, 8, rows=one.rows_per_block)
    one.program(sig)
    two.program(sig)
    assert torch.equal(one.select(query, cand), two.select(query, cand))
    # 3 * 4 candidates per bank, each read with all its rows, 2 banks
    assert two.rows_rescored == 2 * 12 * one.rows_per_block
    assert one.rows_rescored == 0 and one.memory is None


@pytest.mark.parametrize("gqa_reduce", ["sum", "max"])
def test_photonic_rerank_is_the_exact_top_k_of_the_chips_candidates(gqa_reduce):
    """The defining formula against the real (noisy, seed-nominal) engine: the chip's top rerank·k candidates —
    drawn by a twin selector with the same seed, so the same noise — rescored with fp32 dot products of the
    programmed signatures; the selection is their k best."""
    pytest.importorskip("kvprism.photonics")
    k, rerank = 3, 2
    base = SelectionConfig(k=k, d_sig=8, projection="none", scorer="photonic", photonic="seed-nominal",
                           gqa_reduce=gqa_reduce)  # fmt: skip
    two, twin = _selector(base.replace(rerank=rerank)), _selector(base)
    sig, query, cand = _inputs(40, 8)
    two.program(sig)
    twin.program(sig)
    got = two.select(query, cand)
    short = twin.select(query, cand, k=rerank * k)  # [1, H, 6], best first by the chip
    q = query.sum(2, keepdim=True) if gqa_reduce == "sum" else query
    exact = (q @ sig.transpose(-1, -2)).amax(2)  # [1, H, N]
    want = topk_blocks(torch.gather(exact, -1, short), None, k)
    assert torch.equal(got, torch.gather(short, -1, want))
    assert set(got.flatten().tolist()) <= set(short.flatten().tolist())


def test_rerank_covering_every_candidate_is_exact_selection():
    """With rerank·k at least the number of candidates the chip's ranking no longer matters: the selection is the
    exact one, even from a chip that selects at chance (seed-nominal)."""
    pytest.importorskip("kvprism.photonics")
    base = SelectionConfig(k=3, d_sig=8, projection="none")
    exact, chip = _selector(base), _selector(base.replace(scorer="photonic", photonic="seed-nominal", rerank=12))
    sig, query, cand = _inputs(30, 8)
    exact.program(sig)
    chip.program(sig)
    assert torch.equal(exact.select(query, cand), chip.select(query, cand))


def test_rerank_improves_a_feasible_chip_toward_exact():
    """tfln-timeshared on Gaussian signatures: one stage misses some of the exact top-k, rerank 2 recovers more of
    them (same seed, same draws)."""
    pytest.importorskip("kvprism.photonics")
    k, n = 8, 128
    base = SelectionConfig(k=k, d_sig=16, projection="none", scorer="photonic", photonic="tfln-timeshared")
    g = torch.Generator().manual_seed(1)
    sig = torch.randn(1, 8, n, 16, generator=g)
    query = torch.randn(1, 8, 1, 16, generator=g)
    cand = torch.ones(1, 8, n, dtype=torch.bool)
    ref = topk_blocks((query @ sig.transpose(-1, -2))[:, :, 0], None, k)
    recalls = []
    for rerank in (1, 2):
        s = _selector(base.replace(rerank=rerank), heads=8)
        s.program(sig)
        got = s.select(query, cand)
        recalls.append(float((got.unsqueeze(-1) == ref.unsqueeze(-2)).any(-1).float().mean()))
    assert recalls[1] > recalls[0], recalls
    assert recalls[1] >= 0.95, recalls


def test_rerank_fewer_candidates_than_k_fills_with_minus_one():
    base = SelectionConfig(k=4, d_sig=8, projection="none", rerank=2)
    s = _selector(base)
    sig, query, _ = _inputs(6, 8)
    s.program(sig)
    cand = torch.zeros(1, 2, 6, dtype=torch.bool)
    cand[..., :2] = True
    got = s.select(query, cand)
    assert (got[..., 2:] == -1).all() and set(got[..., :2].flatten().tolist()) <= {0, 1}
    assert s.rows_rescored == 2 * 2  # only the two real candidates of each bank were read


def test_rerank_keeps_the_memory_copy_in_step_with_appends():
    base = SelectionConfig(k=2, d_sig=8, projection="none", rerank=2)
    s = _selector(base)
    sig, query, _ = _inputs(10, 8)
    s.program(sig[..., :6, :])
    s.append(sig[..., 6:, :])
    assert torch.equal(s.memory.rows, sig)
    assert s.select(query, torch.ones(1, 2, 10, dtype=torch.bool)).shape == (1, 2, 2)


def test_rerank_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rerank"):
        SelectionConfig(rerank=0)
    with pytest.raises(ConfigError, match=r"rerank.*budget='topk'"):
        SelectionConfig(rerank=2, budget="top_p")


def test_static_cache_takes_rerank_with_the_exact_scorer():
    from kvprism.hf.static import check_static_config

    check_static_config(SelectionConfig(rerank=2))  # the static cache rescores from its own signature rows
    with pytest.raises(ConfigError, match="scorer"):
        check_static_config(SelectionConfig(rerank=2, scorer="photonic"))


def test_sparse_cache_counts_the_rescored_rows():
    from kvprism.hf.cache import SparseCache
    from tests.conftest import tiny_model
    from tests.hf.test_cache import _batch, decode_loop

    model = tiny_model("llama")
    ids, mask = _batch(22)
    base = SelectionConfig(block_size=4, k=2, d_sig=8, window=2)
    runs = []
    for sel in (base, base.replace(rerank=2)):
        cache = SparseCache(model, sel, trace=True)
        decode_loop(model, ids, mask, cache, steps=4)
        runs.append(cache)
    for a, b in zip(runs[0].trace, runs[1].trace, strict=True):  # exact scorer: rescoring changes nothing
        for layer in a:
            assert torch.equal(a[layer]["blocks"], b[layer]["blocks"]), layer
    assert runs[0].stats.summary()["rows_rescored"] == 0
    assert runs[1].stats.summary()["rows_rescored"] > 0


# ----------------------------------------------------------------------------------------------------- energy
def test_energy_charges_the_candidate_signature_read():
    from kvprism.energy import EnergyConfig, decode_step, model_shape
    from kvprism.energy.compare import rerank_read_bytes
    from kvprism.photonics import PhotonicConfig

    cfg = PhotonicConfig.preset("tfln-timeshared")
    shape = model_shape("qwen2.5-7b")
    one = EnergyConfig(k=8, d_sig=16)
    two = one.replace(rerank=4)
    banks = shape.n_layers * shape.kv_heads
    assert rerank_read_bytes(one, banks, 1024) == 0.0
    assert rerank_read_bytes(two, banks, 1024) == banks * 32 * 16 * 2
    assert rerank_read_bytes(two, banks, 20) == banks * 20 * 16 * 2  # never more candidates than blocks
    a, b = decode_step(cfg, one, shape, 32768), decode_step(cfg, two, shape, 32768)
    assert a.photonic_energy_j["rerank_reads"] == 0.0 and a.photonic_latency_s["rerank"] == 0.0
    # the rescored signatures are read from HBM and scored exactly: 2·d FLOPs per candidate and query (one summed
    # query per KV head with gqa_reduce 'sum'), charged like the electronic baselines
    rescored = min(two.rerank * two.k, 32768 // one.block_size)
    flops = 2.0 * two.d_sig * banks * 1 * rescored
    assert two.gqa_reduce == "sum"
    assert b.photonic_energy_j["rerank_reads"] == pytest.approx(
        rerank_read_bytes(two, banks, 32768 // one.block_size) * 8 * one.hbm_energy_per_bit_j
        + flops * one.gpu_energy_per_flop_j
    )
    assert b.photonic_total_energy_j > a.photonic_total_energy_j
    assert b.photonic_latency_s["rerank"] == pytest.approx(
        max(rerank_read_bytes(two, banks, 32768 // one.block_size) / one.hbm_bandwidth_bytes_per_s,
            flops / one.gpu_flops_per_s)
    )  # fmt: skip
    assert b.photonic_latency_s["rerank"] > 0.0
    assert b.added_latency_s == pytest.approx(a.added_latency_s + b.photonic_latency_s["rerank"])


def test_design_objective_with_rerank():
    """On a reference set, rerank 2 keeps the recall at least that of one stage for the same chip and draws, and
    rerank covering every candidate gives recall 1 (the exact top-k)."""
    from kvprism.photonics import PhotonicConfig
    from kvprism.search.objectives import ObjectiveSettings, evaluate
    from tests.support.design_fixtures import tiny_reference

    ref = tiny_reference()
    cfg = PhotonicConfig.preset("seed-nominal")
    d = ref.d_sigs[0]
    lo, hi = ref.candidate_range
    k = 2
    r1 = evaluate(cfg, ref, d, ObjectiveSettings(k=k, contexts=(4096,)), with_energy=False)
    r2 = evaluate(cfg, ref, d, ObjectiveSettings(k=k, contexts=(4096,), rerank=2), with_energy=False)
    full = evaluate(cfg, ref, d, ObjectiveSettings(k=k, contexts=(4096,), rerank=hi - lo), with_energy=False)
    assert r2.recall >= r1.recall and r1.recall < 1.0
    assert full.recall == pytest.approx(1.0)


def test_cli_design_evaluate_on_a_reference_file(tmp_path, capsys):
    """`kvprism design evaluate` scores presets on a reference file per k and rerank factor; its JSON rows agree
    with evaluate() and a rerank covering every candidate recalls everything."""
    import json

    from kvprism.cli import main
    from kvprism.photonics import PhotonicConfig
    from kvprism.search.objectives import ObjectiveSettings, evaluate
    from tests.support.design_fixtures import tiny_reference

    ref = tiny_reference()
    path = ref.save(tmp_path / "ref.safetensors")
    lo, hi = ref.candidate_range
    out = tmp_path / "rows.json"
    args = ["design", "evaluate", "--reference", str(path), "--configs", "seed-nominal", "--k", "2",
            "--rerank", f"1,{hi - lo}", "--energy-context", "4096", "--d-sig", "8", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "design points on the reference set" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["k"], r["rerank"]) for r in rows] == [(2, 1), (2, hi - lo)]
    want = evaluate(PhotonicConfig.preset("seed-nominal"), ref, 8, ObjectiveSettings(k=2, contexts=(4096,)))
    assert rows[0]["recall"] == want.recall and rows[0]["rescored_fraction"] == 0.0
    assert rows[1]["recall"] == pytest.approx(1.0) and rows[1]["rescored_fraction"] == 1.0
    assert rows[1]["energy_j"] > rows[0]["energy_j"]  # the candidate signature reads are charged
    assert main([*args[:4], "--configs", "no-such-preset"]) != 0
