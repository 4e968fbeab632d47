"""GPU baselines (HBM traffic), the decode-step comparison with crossovers, measured-times files and the
``kvprism energy`` command."""

from __future__ import annotations

import json

import pytest

from kvprism.cli import main
from kvprism.energy.compare import crossover, decode_step, min_context, ring_inventory, thermo_optic_reference
from kvprism.energy.config import EnergyConfig, model_shape
from kvprism.energy.gpu import gpu_step, load_gpu_times, selected_tokens
from kvprism.errors import ConfigError, KvprismError
from kvprism.photonics import PhotonicConfig

QWEN = model_shape("qwen2.5-7b")
# The geometry the hand counts below are written for (k 8, sink 1, window 64, B 64), independent of the defaults.
B64 = EnergyConfig(block_size=64, k=8, window=64)


@pytest.fixture(scope="module")
def seed() -> PhotonicConfig:
    return PhotonicConfig.preset("seed-nominal")


def test_bytes_scale_with_context_and_dims():
    e = EnergyConfig()
    a, b = gpu_step(QWEN, 1 << 15, e), gpu_step(QWEN, 1 << 17, e)
    assert b.scan_bytes == 4 * a.scan_bytes
    assert b.dense_bytes == 4 * a.dense_bytes
    assert b.fetch_bytes == a.fetch_bytes  # k blocks + sink + window: independent of the context
    # dense: context × 2 (K, V) × layers × KV heads × d_head × 2 bytes
    assert gpu_step(QWEN, 4096, e).dense_bytes == 4096 * 2 * 28 * 4 * 128 * 2
    assert gpu_step(QWEN, 4096, e).scan_bytes == 28 * 4 * (4096 // e.block_size) * 32 * 2
    wide = gpu_step(QWEN, 1 << 15, e.replace(scan_dims="d_head"))
    assert wide.scan_bytes == 4 * a.scan_bytes  # 128 vs 32 dimensions
    assert gpu_step(QWEN, 1 << 15, e.replace(batch=3)).scan_bytes == 3 * a.scan_bytes


def test_energy_and_time_units():
    e = EnergyConfig()
    g = gpu_step(QWEN, 4096, e)
    assert g.dense_energy_j == pytest.approx(g.dense_bytes * 8 * 3.9e-12, rel=1e-12)
    assert g.dense_latency_s == pytest.approx(g.dense_bytes / 3.35e12, rel=1e-12)
    assert 1e-3 < g.dense_energy_j < 1e-2  # 235 MB at 31.2 pJ/B = 7.3 mJ
    assert 1e-5 < g.dense_latency_s < 1e-4  # 70 µs


def test_selected_tokens():
    e = B64
    # the incomplete last block (32 tokens) lies inside the 64-token window: the tail is 64 tokens, counted once
    assert selected_tokens(100_000, e) == 9 * 64 + 64
    assert selected_tokens(100_000 - 32 + 100, B64.replace(window=16)) == 9 * 64 + 100 % 64  # tail = incomplete
    assert selected_tokens(300, e) == 300  # fewer blocks than k + sink: everything is read


def test_crossover_finds_every_regime_change():
    assert crossover(lambda c: 5000 - c, 100, 10**6) == [(5001, "photonic better")]
    assert crossover(lambda c: -1.0, 100, 10**6) == [(100, "photonic better")]
    assert crossover(lambda c: 1.0, 100, 10**6) == []
    two = crossover(lambda c: (c - 2000) * (c - 300_000), 100, 10**6)
    assert two == [(2001, "photonic better"), (300_000, "photonic worse")]


def test_decode_step_terms_and_static_accounting(seed):
    e = EnergyConfig()
    s = decode_step(seed, e, QWEN, 1 << 17)
    assert s.photonic_total_energy_j == pytest.approx(sum(s.photonic_energy_j.values()))
    assert s.photonic_energy_j["kv_fetch"] == pytest.approx(s.gpu.energy_j(s.gpu.fetch_bytes))
    assert s.banks == 28 * 4 and s.pages == 1
    att = decode_step(seed, e.replace(static_accounting="attention"), QWEN, 1 << 17)
    assert att.photonic_energy_j["static"] == pytest.approx(seed.static_power_w * att.photonic_total_latency_s)
    assert s.photonic_energy_j["static"] == pytest.approx(seed.static_power_w / e.tokens_per_s)  # the whole step
    # gqa_reduce='max' queries each of the 7 query heads of a KV head
    mx = decode_step(seed, e.replace(gqa_reduce="max"), QWEN, 1 << 17)
    assert mx.photonic_energy_j["adc"] == pytest.approx(7 * s.photonic_energy_j["adc"], rel=1e-12)


def test_paging_when_rows_exceed_chip(seed):
    e = B64
    fits = decode_step(seed, e, QWEN, 1 << 19)  # 112 banks × 8192 rows = the whole chip
    over = decode_step(seed, e, QWEN, (1 << 19) + 64)
    assert fits.pages == 1 and over.pages == 2
    assert over.photonic_latency_s["paging"] > 0 and over.photonic_energy_j["paging_reads"] > 0
    assert fits.photonic_latency_s["paging"] == 0
    batch = decode_step(seed, e.replace(batch=2), QWEN, 1 << 19)
    assert batch.pages == 2  # every sequence needs its own rows


def test_min_context_and_rings(seed):
    e = B64
    with pytest.raises(KvprismError, match="context"):
        decode_step(seed, e, QWEN, min_context(e) - 1)
    inv = ring_inventory(seed, e, QWEN, 1 << 17)
    assert inv["mrr_needed"] == 28 * 4 * 2048 * 32
    assert inv["area_needed_m2"] == pytest.approx(inv["mrr_needed"] * (50e-6) ** 2)


def test_thermo_optic_reference(seed):
    th = thermo_optic_reference(seed, EnergyConfig())
    # one FWHM (155 pm at Q 1e4) of an 8.3 nm FSR needs 2·FWHM/FSR of P_π = 24.77 mW: ~0.92 mW per ring
    assert th["heater_w_per_ring_fwhm"] == pytest.approx(24.77e-3 * 2 * th["fwhm_m"] / th["fsr_m"], rel=1e-12)
    assert 0.5e-3 < th["heater_w_per_ring_fwhm"] < 1.5e-3


def test_model_shapes_and_config_errors():
    assert (QWEN.n_layers, QWEN.q_heads, QWEN.kv_heads, QWEN.head_dim) == (28, 28, 4, 128)
    smol = model_shape("SmolLM2-135M")
    assert (smol.n_layers, smol.q_heads, smol.kv_heads, smol.head_dim) == (30, 9, 3, 64)
    llama = model_shape("llama-3.1-8b")
    assert (llama.n_layers, llama.q_heads, llama.kv_heads, llama.head_dim) == (32, 32, 8, 128)
    with pytest.raises(KvprismError, match="known"):
        model_shape("gpt-5")
    with pytest.raises(ConfigError, match=r"EnergyConfig\.gqa_reduce"):
        EnergyConfig(gqa_reduce="mean")


def test_load_gpu_times_both_schemas(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([{"batch": 1, "context": 4096, "method": "dense", "us": 10.0}]))
    assert load_gpu_times(flat, QWEN) == {(1, 4096, "dense"): pytest.approx(10e-6 * 28)}
    bench = tmp_path / "bench.json"
    doc = {"layer": {"q_heads": 28, "kv_heads": 4, "head_dim": 128},
           "rows": [{"batch": 1, "context": 4096, "us": {"dense": 20.0, "kvprism_graph": 5.0}}]}  # fmt: skip
    bench.write_text(json.dumps(doc))
    t = load_gpu_times(bench, QWEN)
    assert t[(1, 4096, "kvprism_graph")] == pytest.approx(5e-6 * 28)
    with pytest.raises(KvprismError, match="measured on a layer"):
        load_gpu_times(bench, model_shape("smollm2-135m"))
    with pytest.raises(KvprismError, match="does not exist"):
        load_gpu_times(tmp_path / "missing.json", QWEN)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"batch": 1}]))
    with pytest.raises(KvprismError, match="malformed"):
        load_gpu_times(bad, QWEN)


def test_cli_energy_writes_plots_and_summary(tmp_path, capsys):
    times = tmp_path / "t.json"
    times.write_text(json.dumps([
        {"batch": 1, "context": 4096, "method": m, "us": us}
        for m, us in (("dense", 30.0), ("kvprism_graph", 12.0), ("kvprism_attend", 8.0))
    ]))  # fmt: skip
    out = tmp_path / "out"
    rc = main(["energy", "--preset", "tfln-literature", "--model-shape", "smollm2-135m", "--contexts", "4k,32k",
               "--out", str(out), "--gpu-times", str(times)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "crossovers" in text and "one query" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == ["energy_breakdown.png", "energy_summary.json", "energy_vs_context.png", "latency_vs_context.png"]
    summary = json.loads((out / "energy_summary.json").read_text())
    assert [s["context"] for s in summary["steps"]] == [4096, 32768]
    assert summary["plots"] == ["energy_vs_context.png", "latency_vs_context.png", "energy_breakdown.png"]
    assert summary["measured"][0]["dense_s"] == pytest.approx(30e-6 * 30)
    assert summary["measured"][1]["dense_s"] is None  # 32k was not measured: no extrapolation
    assert set(summary["crossovers"]) == {"energy_vs_gpu_sparse", "latency_vs_gpu_sparse", "energy_vs_dense",
                                          "latency_vs_dense"}  # fmt: skip


def test_cli_energy_bad_input(capsys):
    assert main(["energy", "--contexts", "4k,lots"]) == 2  # a bad value (kvprism.cli exit statuses)
    assert "--contexts" in capsys.readouterr().err
    too_short = min_context(EnergyConfig()) - 1  # selection needs (k + sink + 1) complete blocks
    assert main(["energy", "--contexts", str(too_short)]) in (1, 2)
    assert "context" in capsys.readouterr().err
    assert main(["energy", "--model-shape", "nope"]) == 2


def test_light_source_modes(seed):
    """A CW comb's pump (default) and CW lasers burn for the whole step; gated lasers only while the banks work."""
    e = EnergyConfig()
    comb = decode_step(seed, e, QWEN, 1 << 17)
    cw = decode_step(seed, e.replace(laser_mode="cw"), QWEN, 1 << 17)
    gated = decode_step(seed, e.replace(laser_mode="gated"), QWEN, 1 << 17)
    lines_w = seed.n_banks * 32 * 10 ** (seed.laser_line_dbm / 10) * 1e-3
    assert cw.photonic_energy_j["laser"] == pytest.approx(lines_w / 0.2 / e.tokens_per_s, rel=1e-12)
    assert comb.photonic_energy_j["laser"] == pytest.approx(cw.photonic_energy_j["laser"] / 0.1, rel=1e-12)
    assert gated.photonic_energy_j["laser"] == pytest.approx(lines_w / 0.2 * gated.timing.query_s, rel=1e-12)
    assert {t: v for t, v in cw.photonic_energy_j.items() if t != "laser"} == {
        t: v for t, v in comb.photonic_energy_j.items() if t != "laser"
    }


def test_electronic_baselines_against_a_hand_count():
    """Bytes and FLOPs of each electronic selector for Qwen2.5-7B at 32K (d_sig 16, blocks of 32, GQA sum)."""
    from kvprism.energy.gpu import electronic_baselines

    e = EnergyConfig(d_sig=16, block_size=32)
    b = electronic_baselines(QWEN, 32768, e)
    blocks = 28 * 4 * 1024
    assert b["bf16-mean"].read_bytes == blocks * 16 * 2
    assert b["fp8-mean"].read_bytes == blocks * (16 + 4)
    assert b["fp4-mean"].read_bytes == blocks * (8 + 1)
    assert b["fp8-minmax"].read_bytes == blocks * (32 + 4) and b["fp4-minmax"].read_bytes == blocks * (16 + 2)
    assert b["fp8-indexer"].read_bytes == 28 * 32768 * 132 and b["fp8-indexer"].flops == 28 * 32768 * 16.4e3
    per_byte = 8 * 3.9e-12
    assert b["fp8-indexer"].energy_j == pytest.approx(28 * 32768 * (132 * per_byte + 16.4e3 * 0.354e-12))
    assert b["bf16-mean"].energy_j == pytest.approx(blocks * 32 * per_byte + blocks * 32 * 0.354e-12)
    assert b["fp8-indexer"].time_s == pytest.approx(28 * 32768 * 132 / 3.35e12)  # memory-bound
    step = decode_step(PhotonicConfig.preset("tfln-timeshared"), e, QWEN, 32768)
    assert step.best_baseline.name == "fp4-mean" and set(step.baselines) == set(b)


def test_parse_contexts():
    from kvprism.energy.report import parse_contexts

    assert parse_contexts("4k,32k,128k,1m") == [4096, 32768, 131072, 1 << 20]
    assert parse_contexts("1m, 5000") == [5000, 1 << 20]
    with pytest.raises(KvprismError, match="not a context length"):
        parse_contexts("4kb")
