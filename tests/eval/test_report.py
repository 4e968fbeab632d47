import json

import pytest

from kvprism.errors import KvprismError
from kvprism.eval import report as Rep
from kvprism.eval.store import RESULTS_FILE, append_result


def _cell(config, method, k, ctx, depth, correct, prefill_id, **kw):
    base = dict(
        key=f"{config}|{ctx}|{depth}",
        mode="niah",
        config=config,
        method=method,
        k=k,
        preset=kw.pop("preset", None),
        context=ctx,
        depth=depth,
        correct=correct,
        match_fraction=1.0 if correct else 0.0,
        prefill_id=prefill_id,
        prefill_s=10.0,
        decode_s=2.0,
        decode_steps=4,
        reference_s=0.0,
        read_fraction_mean=1.0 if method == "dense" else 0.25,
        read_fraction_max=1.0 if method == "dense" else 0.3,
        restricted=method != "dense",
        can_restrict=method != "dense",
        needle_hit=None,
        block_recall=None,
        signature_recall=None,
        mass_captured=None,
        kl_first_token=None,
    )
    base.update(kw)
    return base


def _rows():
    rows = []
    for i, (ctx, depth) in enumerate([(1024, 0.0), (1024, 1.0), (2048, 0.0), (2048, 1.0)]):
        pid = f"p{i}"
        rows.append(_cell("dense", "dense", None, ctx, depth, True, pid))
        rows.append(
            _cell("exact-k4", "exact", 4, ctx, depth, depth == 0.0, pid, block_recall=0.5 + 0.1 * i, needle_hit=1.0)
        )
        # the 2048 cells of k16 read everything: not restricted
        unrestricted = ctx == 2048
        rows.append(
            _cell(
                "exact-k16",
                "exact",
                16,
                ctx,
                depth,
                True,
                pid,
                block_recall=float("nan") if unrestricted else 0.9,
                restricted=not unrestricted,
                can_restrict=not unrestricted,
                read_fraction_max=1.0 if unrestricted else 0.5,
            )
        )
    return rows


def test_summary_numbers():
    s = Rep.summarize(_rows())
    # prefill counted once per prompt (4 prompts x 10 s), decode for all 12 cells (12 x 2 s)
    assert s["time"]["prefill_s"] == 40.0 and s["time"]["prefills"] == 4 and s["time"]["decode_s"] == 24.0
    assert s["time"]["prefill_share"] == pytest.approx(40 / 64, abs=1e-4)
    assert s["time"]["decode_s_per_token"]["dense"] == 0.5
    cfgs = s["modes"]["niah"]
    assert cfgs["dense"]["correct"]["mean"] == 1.0
    assert cfgs["exact-k4"]["correct"]["mean"] == 0.5
    assert cfgs["exact-k4"]["block_recall"]["mean"] == pytest.approx(0.65)
    assert cfgs["exact-k16"]["not_restricted"] == 2 and cfgs["exact-k16"]["cannot_restrict"] == 2
    assert cfgs["exact-k16"]["block_recall"]["n"] == 2 and cfgs["exact-k16"]["block_recall"]["n_nan"] == 2
    assert cfgs["exact-k4"]["grid"] == {"1024": {"0": 1.0, "1": 0.0}, "2048": {"0": 1.0, "1": 0.0}}
    assert s["presets"] == {}
    assert cfgs["exact-k4"]["per_layer_head"] == {}


def test_per_layer_tables_are_averaged_over_cells():
    rows = [
        _cell("exact-k4", "exact", 4, 1024, 0.0, True, "p0", per_layer={"block_recall": [[1.0, None], [0.5, 0.0]]}),
        _cell("exact-k4", "exact", 4, 1024, 1.0, True, "p1", per_layer={"block_recall": [[0.0, None], [1.0, None]]}),
    ]
    table = Rep.summarize(rows)["modes"]["niah"]["exact-k4"]["per_layer_head"]["block_recall"]
    assert table == [[0.5, None], [0.75, 0.0]]


def test_write_report(tmp_path):
    for r in _rows():
        append_result(tmp_path / RESULTS_FILE, r)
    out = Rep.write_report(tmp_path)
    summary = json.loads(out["summary"].read_text())
    assert summary["cells"] == 12
    for name in ("heatmap_niah_dense", "heatmap_niah_exact-k4", "heatmap_niah_exact-k16", "ksweep_niah"):
        assert out[name].read_bytes()[:4] == b"\x89PNG"
    md = out["report"].read_text()
    assert "| exact-k16 | 4 |" in md and "not restricted" in md and "prefill 40.0 s over 4 prompts" in md


def test_feasibility_verdict_of_presets(tmp_path):
    photonics = pytest.importorskip("kvprism.photonics")
    preset = next(iter(photonics.PhotonicConfig.presets()))
    rows = [_cell(f"{preset}-k4", "photonic", 4, 1024, 0.0, True, "p", preset=preset)]
    s = Rep.summarize(rows)
    assert s["presets"][preset]["feasible"] in (True, False)


def test_empty_dir_is_clear_error(tmp_path):
    with pytest.raises(KvprismError, match=r"results\.jsonl does not exist"):
        Rep.write_report(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("")
    with pytest.raises(KvprismError, match="holds no finished cell"):
        Rep.write_report(tmp_path)


def test_accuracy_carries_n_and_a_wilson_interval_and_comparisons_are_paired(tmp_path):
    from kvprism.eval import metrics as M

    rows = _rows()
    # a chip at k 4, paired with exact-k4 and dense on the same four prompts
    for i, (ctx, depth) in enumerate([(1024, 0.0), (1024, 1.0), (2048, 0.0), (2048, 1.0)]):
        rows.append(_cell("chip-k4", "photonic", 4, ctx, depth, i in (1, 2), f"p{i}", preset="chip"))
    s = Rep.summarize(rows)
    cfgs = s["modes"]["niah"]
    acc = cfgs["exact-k4"]["accuracy"]
    assert (acc["k"], acc["n"], acc["rate"]) == (2, 4, 0.5)
    assert acc["ci95"] == pytest.approx(list(M.wilson_interval(2, 4)))
    assert cfgs["dense"]["paired"] == {}
    assert list(cfgs["exact-k4"]["paired"]) == ["dense"]  # exact is compared with dense only
    assert list(cfgs["chip-k4"]["paired"]) == ["dense", "exact-k4"]  # a chip also with exact at its k
    vs_exact = cfgs["chip-k4"]["paired"]["exact-k4"]
    # exact-k4 right at depth 0 (prompts 0, 2); the chip at prompts 1, 2
    assert (vs_exact["both"], vs_exact["only_a"], vs_exact["only_b"], vs_exact["neither"]) == (1, 1, 1, 1)
    vs_dense = cfgs["chip-k4"]["paired"]["dense"]
    assert (vs_dense["n"], vs_dense["both"], vs_dense["only_a"], vs_dense["only_b"]) == (4, 2, 0, 2)
    lines = Rep.accuracy_lines(s)
    assert "niah exact-k4: 0.50 (2/4, 95 % CI 0.15–0.85); vs dense: 4 paired: both 2" in lines[1]
    for r in rows:
        append_result(tmp_path / RESULTS_FILE, r)
    md = Rep.write_report(tmp_path)["report"].read_text()
    assert "| exact-k4 | 4 | 0.50 (2/4, 95 % CI 0.15–0.85) |" in md
    assert "| chip-k4 | exact-k4 | 4 | 1 | 1 | 1 | 1 |" in md


def test_recall_cells_have_no_accuracy():
    rows = [_cell("exact-k4", "exact", 4, 1024, 0.0, None, "p0", mode="recall")]
    e = Rep.summarize(rows)["modes"]["recall"]["exact-k4"]
    assert e["accuracy"]["n"] == 0 and Rep.accuracy_lines(Rep.summarize(rows)) == []
