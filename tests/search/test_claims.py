"""kvprism claims: every claim of the PRISM abstract gets a section, measured on a tiny random model."""

from __future__ import annotations

import json

import pytest

from kvprism.search.claims import CLAIMS, SEED, ClaimsSettings, run_claims
from tests.conftest import tiny_model
from tests.support.design_fixtures import one_thread, text_tokenizer, tiny_reference

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_claims_on_a_tiny_model_write_every_section(tmp_path):
    s = ClaimsSettings(model_name="tiny", contexts=(256, 4096), depths=(0.5,), k=2, block_size=16,
                       energy_contexts=(4096, 16384, 65536), bits=(3, 5), bits_d_sig=8, max_new_tokens=2)  # fmt: skip
    written = run_claims(tiny_model(), text_tokenizer(), tmp_path, s, reference=tiny_reference())
    data = json.loads(written["json"].read_text())
    sections = data["sections"]
    assert list(sections) == list(CLAIMS)
    md = written["markdown"].read_text()
    for i, (cid, (claim, _, _)) in enumerate(CLAIMS.items(), 1):
        assert f"## {i}. {claim}" in md
        sec = sections[cid]
        assert sec["verdict"] and sec["measured"] and sec["claim"] == claim
        assert (tmp_path / sec["plot"]).read_bytes()[:4] == b"\x89PNG"
    niah = sections["niah"]["measured"]
    assert niah["contexts"] == [256] and niah["contexts_skipped"] == [4096]  # beyond the 1024-token window
    by = niah["by_config"]
    assert {"dense", "exact-k2", f"{SEED}-k2", "seed-nominal-k2"} <= set(by)
    assert by["dense"]["256"]["read_fraction"] == 1.0
    assert 0 < by[f"{SEED}-k2"]["256"]["read_fraction"] < 1.0  # the seed model really restricts the reads
    traffic = sections["traffic"]["measured"]
    assert traffic["attention_reads_in_the_loop"]["exact-k2"]["reduction"] > 1.0
    assert traffic["model_qwen2.5_7b"]["whole_step"]["gpu_sparse_reduction"] > 1.0
    scaling = sections["scaling"]["measured"]
    assert len(scaling["gpu_scan_s"]) == 3 and "gpu scan" in sections["scaling"]["verdict"]
    bits = sections["bits"]["measured"]["recall_vs_bits"]
    assert set(bits) >= {SEED, "ideal (quantisation only)", "seed-nominal"}
    assert all(0.0 <= r <= 1.0 for c in bits.values() for r in c.values())
    assert (tmp_path / "niah" / "results.jsonl").is_file()


def test_claims_cli_on_a_tiny_model_dir(tmp_path, monkeypatch, capsys):
    from kvprism.cli import main

    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path / "cache"))  # the reference set is captured on first use
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    text_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "claims"
    args = ["claims", "--model", str(model_dir), "--out", str(out), "--contexts", "256", "--k", "2"]
    assert main(args) == 0
    data = json.loads((out / "claims.json").read_text())
    assert list(data["sections"]) == list(CLAIMS)
    assert data["sections"]["bits"]["measured"]["reference"]["context"] == 1024  # the tiny model's window
    assert list((tmp_path / "cache" / "design").glob("ref-*.safetensors"))
    assert "claims.md" in capsys.readouterr().out


def test_each_chip_of_the_niah_claim_runs_at_its_own_width():
    from kvprism.photonics import PhotonicConfig
    from kvprism.search.claims import ClaimsSettings, niah_configs

    chips = [c for c in niah_configs(ClaimsSettings()) if c.method == "photonic"]
    assert chips, "no shipped chip in the NIAH claim"
    for c in chips:
        assert c.selection.d_sig == PhotonicConfig.preset(c.preset).n_lines


def test_claims_on_a_tiny_qwen2_carry_n_and_wilson_intervals(tmp_path):
    from kvprism.eval import metrics as M
    from kvprism.eval.grid import sample_seeds

    s = ClaimsSettings(model_name="tiny-qwen2", contexts=(256,), depths=(0.5,), k=2, block_size=16, samples=3,
                       energy_contexts=(4096, 16384), bits=(3, 5), bits_d_sig=8, max_new_tokens=2)  # fmt: skip
    written = run_claims(tiny_model("qwen2"), text_tokenizer(), tmp_path, s, reference=tiny_reference())
    data = json.loads(written["json"].read_text())
    assert list(data["sections"]) == list(CLAIMS)
    niah = data["sections"]["niah"]["measured"]
    assert niah["seeds"] == sample_seeds([0], 3) and niah["samples"] == 3
    for name, per_ctx in niah["by_config"].items():
        v = per_ctx["256"]
        assert v["n"] == 3 and 0 <= v["correct"] <= 3
        assert v["ci95"] == pytest.approx(list(M.wilson_interval(v["correct"], 3)))
        overall = niah["overall"][name]
        assert overall["accuracy"]["n"] == 3
        refs = set(overall["paired"])
        assert refs == (set() if name == "dense" else {"dense"} if name.startswith("exact") else {"dense", "exact-k2"})
        for counts in overall["paired"].values():
            assert counts["n"] == 3 and counts["both"] + counts["only_a"] + counts["only_b"] + counts["neither"] == 3
    md = written["markdown"].read_text()
    verdicts = data["sections"]["niah"]["verdict"]
    assert all("/3, 95 % CI " in v for v in verdicts.values())
    assert "vs exact-k2: 3 paired: both " in verdicts[f"{SEED}-k2"]
    assert md.count("/3, 95 % CI ") >= len(verdicts) and "Wilson" in md
    rows = [json.loads(line) for line in (tmp_path / "niah" / "results.jsonl").read_text().splitlines()]
    assert len({r["seed"] for r in rows}) == 3 and len({tuple(r["expected"]) for r in rows}) == 3  # 3 needles


def test_the_niah_claim_also_runs_kvprisms_own_defaults_beside_the_papers_k():
    from kvprism.search.claims import ClaimsSettings, niah_configs
    from kvprism.selection import SelectionConfig

    d = SelectionConfig()
    names = {c.name: c for c in niah_configs(ClaimsSettings())}
    own = names[f"exact-defaults-k{d.k}"]
    assert (own.method, own.k, own.selection.block_size, own.selection.window) == ("exact", d.k, d.block_size, d.window)
    same = ClaimsSettings(k=d.k, block_size=d.block_size, window=d.window)
    assert not any(n.startswith("exact-defaults") for n in (c.name for c in niah_configs(same)))
