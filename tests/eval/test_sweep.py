"""``kvprism recall --sweep`` (kvprism.eval.sweep): methods × d_sig × k on one prefill per prompt."""

from __future__ import annotations

import json

import pytest
import torch

from kvprism.cli import main
from kvprism.errors import ConfigError, KvprismError
from kvprism.eval import sweep as S
from kvprism.eval.runner import Runner
from kvprism.eval.store import read_results
from tests.conftest import tiny_model, tiny_tokenizer


def test_parse_methods_and_overrides():
    ms = S.parse_methods("mean/learned, reps/none/top_p")
    assert [m.name for m in ms] == ["mean/learned", "reps/none/top_p"]
    with pytest.raises(KvprismError, match="signature 'avg' is invalid; allowed: mean"):
        S.parse_methods("avg/learned")
    with pytest.raises(KvprismError, match="budget 'top_q' is invalid"):
        S.parse_methods("mean/pca/top_q")
    with pytest.raises(KvprismError, match="write signature/projection"):
        S.parse_methods("mean")
    assert S.parse_overrides("d_sig=8, signature=minmax,top_p=0.5") == {"d_sig": 8, "signature": "minmax", "top_p": 0.5}
    assert S.parse_overrides(None) == {}
    with pytest.raises(KvprismError, match="--select: 'k=4' is invalid"):
        S.parse_overrides("k=4")
    with pytest.raises(ConfigError, match="d_sig"):
        S.parse_overrides("d_sig=0")


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model("llama"), tiny_tokenizer()


def _sample_and_prefill(model, tok, tmp_path):
    from kvprism.eval.tasks import make_sample

    sample = make_sample("niah_single", tok, 320, 0.5, 0, haystack="noise")
    runner = Runner(
        model,
        tok,
        out_dir=tmp_path,
        tasks=["niah_single"],
        contexts=[320],
        depths=[0.5],
        seeds=[0],
        configs=[],
    )
    prefilled, _ = runner.prefill(sample)
    return sample, prefilled


def test_sweep_step_matches_the_decode_path(model_tok, tmp_path):
    """Layer 0 sees the same query on the dense and the sparse path, so the blocks the sweep selects there and
    the read fraction it counts are exactly those of a SparseCache decode step with the same config."""
    from kvprism.eval.decode import greedy_decode
    from kvprism.hf.cache import SparseCache
    from kvprism.selection import SelectionConfig

    model, tok = model_tok
    sample, prefilled = _sample_and_prefill(model, tok, tmp_path)
    last = torch.tensor([[sample.input_ids[-1]]])
    cap = S.capture_step(model, prefilled, last)
    assert cap.keys[0].shape[2] == prefilled.get_seq_length() + 1
    base = {"block_size": 16, "window": 16}
    for method in ("mean/learned", "reps/pca", "centroids/learned/top_p"):
        (m,) = S.parse_methods(method)
        cells = S.evaluate_step(cap, [m], [4], [3], sample.target_spans, base)
        sel = SelectionConfig(signature=m.signature, projection=m.projection, budget=m.budget, d_sig=4, k=3, **base)
        cache = SparseCache.from_prefilled(model, prefilled, sel, impl="torch")
        greedy_decode(model, cache, last, 1, frozenset())
        per_head = cache.stats.summary()["per_layer_head"]
        assert cells[0]["read_fraction_head"][0] == pytest.approx(per_head[0], abs=1e-5), method
        assert 0 < cells[0]["read_fraction_mean"] < 1


def test_run_sweep_writes_table_plot_and_resumes(model_tok, tmp_path):
    model, tok = model_tok
    kw = dict(
        out_dir=tmp_path / "sw",
        tasks=["niah_single"],
        contexts=[320],
        depths=[0.2],
        seeds=[0],
        methods=S.parse_methods("mean/learned,minmax/none,reps/pca/top_p"),
        d_sigs=[4],
        ks=[2, 6],
        base={"block_size": 16, "window": 16},
        haystack="noise",
    )
    events = []
    files = S.run_sweep(model, tok, **kw, on_progress=events.append)
    assert [(e.kind, e.done, e.total) for e in events] == [("start", 0, 1), ("prefill", 0, 1), ("cell", 1, 1)]
    recs = read_results(files["results"])
    # 1 prompt × 3 methods (the unprojected one once) × 2 k
    assert len(recs) == 3 * 2
    for r in recs:
        heads = torch.tensor(r["read_fraction_head"])
        assert heads.shape == (2, 2) and (heads > 0).all() and (heads < 1).all()
        assert r["read_fraction_max"] == pytest.approx(float(heads.max()))
        assert r["blocks_read_mean"] <= r["k"]
    by = {(r["prompt"], r["method"], r["d_sig"], r["k"]): r for r in recs}
    for (p, m, d, k), r in by.items():
        if k == 2:
            assert by[(p, m, d, 6)]["read_fraction_mean"] >= r["read_fraction_mean"]
    table = files["table"].read_text()
    assert "| mean/learned | 4 | 2 |" in table and "reps/pca/top_p" in table
    assert files["plot"].stat().st_size > 1000
    rows = json.loads(files["summary"].read_text())
    assert {r["method"] for r in rows} == {"mean/learned", "minmax/none", "reps/pca/top_p"}
    events.clear()
    S.run_sweep(model, tok, **kw, on_progress=events.append)  # resume: nothing new
    assert [e.kind for e in events] == ["start", "cell"]
    assert len(read_results(files["results"])) == len(recs)


def test_cli_sweep_bad_method_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["recall", "--sweep", "--methods", "mean/learnt", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "projection 'learnt' is invalid" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_summarize_cells_means_per_method_d_sig_and_k_skipping_missing_values():
    recs = [
        dict(method="mean/learned", d_sig=4, k=2, row_width=4, bank_rows_per_block=1, read_fraction_max=0.5,
             block_recall=0.2, mass_captured=None, needle_hit=1.0),
        dict(method="mean/learned", d_sig=4, k=2, row_width=4, bank_rows_per_block=1, read_fraction_max=0.7,
             block_recall=0.4, mass_captured=0.9, needle_hit=0.0),
        dict(method="minmax/none", d_sig=None, k=2, row_width=16, bank_rows_per_block=1, read_fraction_max=0.3,
             block_recall=None, mass_captured=None, needle_hit=None),
    ]  # fmt: skip
    rows = S.summarize_cells(recs)
    assert [(r["method"], r["d_sig"], r["k"], r["prompts"]) for r in rows] == [
        ("mean/learned", 4, 2, 2),
        ("minmax/none", None, 2, 1),
    ]
    a, b = rows
    assert type(a["d_sig"]) is int and a["channels"] == 4 and b["channels"] == 16
    assert a["block_recall"] == pytest.approx(0.3) and a["mass_captured"] == pytest.approx(0.9)
    assert a["read_fraction_max"] == 0.7 and a["needle_hit"] == 0.5 and a["signature_s"] is None
    assert b["block_recall"] is None and b["read_fraction_max"] == 0.3
    assert S.summarize_cells([]) == []
