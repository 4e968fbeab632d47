"""The global timed design search: every returned point passes the timed feasibility() at the searched rate and
context; a search where nothing passes names the binding constraints with value, limit and margin; one-stage and
two-stage points are reported apart with their own criteria."""

from __future__ import annotations

import json
import math

import pytest

optuna = pytest.importorskip("optuna")

from kvprism.cli import main  # noqa: E402
from kvprism.photonics import PhotonicConfig, feasibility  # noqa: E402
from kvprism.photonics.design import ChipDesign, decode_timing  # noqa: E402
from kvprism.search.objectives import (  # noqa: E402
    MARGIN_NAMES,
    ONE_STAGE_CRITERIA,
    TWO_STAGE_CRITERIA,
    ObjectiveSettings,
    evaluate,
    section_of,
)
from kvprism.search.search import (  # noqa: E402
    _fields,
    config_of,
    pareto_trials,
    run_search,
    trial_section,
    write_outputs,
)
from kvprism.search.space import (  # noqa: E402
    ARCHITECTURE,
    RERANK,
    SPACE,
    Dim,
    buildable_space,
    q_in_reach,
    reachable_q_max,
)
from tests.support.design_fixtures import one_thread, tiny_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

RATE, CONTEXT, SHAPE = 20.0, 4096, "qwen2.5-7b"
TIMED = ObjectiveSettings(k=4, shape=SHAPE, contexts=(CONTEXT,), tokens_per_s=RATE)
# a corner that today's chip model passes timed for d = 8 (ideal impairments, short comb, a small chip)
FEASIBLE_BASE = dict(
    channel_spacing_m=0.4e-9, rows_per_bank=128, n_banks=4, v_max_v=10.0, n_lines=8, laser_line_dbm=6.0,
    trim_mechanism="one-time", fab_sigma_m=0.3e-9,
)  # fmt: skip
ROWS = {d.name: d for d in SPACE}
SMALL_TIMED_SPACE = (
    Dim("laser_line_dbm", "laser_line_dbm", "float", low=-10.0, high=20.0, unit="dBm", source="test"),
    Dim("n_banks", "n_banks", "int", low=1, high=8, source="test"),
    Dim("d_sig", "n_lines", "categorical", source="test"),
    ROWS[ARCHITECTURE],
    ROWS[RERANK],
)


def _timed_report(t, base):
    """feasibility() of a finished trial, timed independently at the searched shape, rate and context (the chip on
    the share the trial was timed on: the selection share less the selection's HBM reads)."""
    res = t.user_attrs["result"]
    cfg = config_of(t, base)
    frac = res["timed_fields"].get("selection_time_fraction", cfg.selection_time_fraction)
    assert frac <= cfg.selection_time_fraction  # the chip never gets more than the selection share
    cfg = cfg.replace(selection_time_fraction=frac)
    w = t.user_attrs["fields"]["n_lines"]
    timing = decode_timing(cfg, n_layers=28, kv_heads=4, tokens_per_s=RATE, context=CONTEXT,
                           block_size=tiny_reference().params.block_size, d=w,
                           architecture=t.user_attrs["architecture"])  # fmt: skip
    return feasibility(cfg, d=w, seed=TIMED.engine_seed, timing=timing)


def test_timed_search_returns_only_points_passing_the_timed_feasibility(tmp_path):
    ref = tiny_reference()
    base = PhotonicConfig.preset("ideal").replace(**FEASIBLE_BASE)
    res = run_search(ref, 10, seed=3, base=base, space=SMALL_TIMED_SPACE, settings=TIMED, population_size=5)
    pareto = pareto_trials(res.study)
    assert pareto, "the ideal corner must leave feasible points"
    for t in pareto:
        rep = _timed_report(t, base)
        assert rep.timed and rep.feasible, rep.violations
        r = t.user_attrs["result"]
        assert r["latency_budget_s"] == pytest.approx(base.selection_time_fraction / RATE)  # one budget
        assert r["added_latency_s"] <= r["latency_budget_s"] * (1 + 1e-9)
    # every scored point: feasible for the search exactly when the timed feasibility passes and the budget holds
    for t in res.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        r = t.user_attrs["result"]
        assert t.user_attrs["feasible"] == (not r["violations"] and r["constraints"]["latency_budget"] <= 0)
    data = json.loads(write_outputs(res, tmp_path)["json"].read_text())
    assert set(data["pareto"]) == {t.number for t in pareto}


def test_one_stage_and_two_stage_points_are_reported_apart(tmp_path):
    ref = tiny_reference()
    base = PhotonicConfig.preset("ideal").replace(**FEASIBLE_BASE)
    res = run_search(ref, 14, seed=5, base=base, space=SMALL_TIMED_SPACE, settings=TIMED, population_size=7)
    secs = {t.number: trial_section(t) for t in res.study.trials if t.values}
    for t in res.study.trials:
        if t.values:
            want = section_of(t.user_attrs["architecture"], t.user_attrs["rerank"])
            assert secs[t.number] == want == t.user_attrs["result"]["section"]
    assert set(secs.values()) == {"one-stage", "two-stage"}
    for sec in ("one-stage", "two-stage"):  # each section's Pareto set holds its own points only
        assert all(trial_section(t) == sec for t in pareto_trials(res.study, sec))
    one = pareto_trials(res.study, "one-stage")
    assert all(t.user_attrs["rerank"] == 1 and not t.user_attrs["architecture"].startswith("two-level") for t in one)
    written = write_outputs(res, tmp_path)
    data = json.loads(written["json"].read_text())
    assert data["sections"]["one-stage"]["criteria"] == ONE_STAGE_CRITERIA
    assert data["sections"]["two-stage"]["criteria"] == TWO_STAGE_CRITERIA
    assert set(data["sections"]["one-stage"]["pareto"]).isdisjoint(data["sections"]["two-stage"]["pareto"])
    md = written["markdown"].read_text()
    assert md.index("### one-stage") < md.index("### two-stage")
    assert ONE_STAGE_CRITERIA in md and TWO_STAGE_CRITERIA in md
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_search_where_nothing_passes_reports_the_binding_constraint_with_its_margin(tmp_path):
    ref = tiny_reference()
    # the same corner on a chip limit nothing meets (a 1 µm² die): every point violates its area
    base = PhotonicConfig.preset("ideal").replace(**FEASIBLE_BASE, max_chip_area_m2=1e-12)
    res = run_search(ref, 10, seed=3, base=base, space=SMALL_TIMED_SPACE, settings=TIMED, population_size=5)
    assert not pareto_trials(res.study)
    written = write_outputs(res, tmp_path)
    data = json.loads(written["json"].read_text())
    archs = {t.user_attrs["architecture"] for t in res.study.trials if t.values}
    assert set(data["closest"]) == archs  # one closest point per architecture searched
    for arch, c in data["closest"].items():
        assert c["violated"], arch
        for v in c["violated"]:
            assert v["margin"] > 0 and math.isfinite(v["value"]) and math.isfinite(v["limit"])
            assert (v["value"] > v["limit"]) if v["sense"] == "≤" else (v["value"] < v["limit"])
        names = {v["constraint"] for v in c["violated"]}
        assert names & {"photonic_area", "dies_per_package"}, names
        binds = [r for r in data["binding"][arch] if r["binds"]]
        assert binds and all(r["violated_by"] == r["trials"] and r["best_margin"] > 0 for r in binds)
    md = written["markdown"].read_text()
    assert "Closest points" in md and "No feasible point in this section." in md


def test_margins_agree_with_the_feasibility_verdict():
    """A point's graded margins are positive exactly when feasibility() lists a violation (timed and untimed)."""
    ref = tiny_reference()
    cfgs = [PhotonicConfig.preset("ideal").replace(**FEASIBLE_BASE), PhotonicConfig.preset("seed-nominal"),
            PhotonicConfig.preset("tfln-timeshared")]  # fmt: skip
    for cfg in cfgs:
        for arch in ("time-shared", "resident", "two-level:4"):
            st = ObjectiveSettings(k=4, contexts=(CONTEXT,), tokens_per_s=200.0, architecture=arch)
            r = evaluate(cfg, ref, 8, st, with_energy=False)
            positive = [n for n in MARGIN_NAMES if r.margins.get(n, {}).get("margin", 0) > 0]
            assert bool(positive) == bool(r.violations), (cfg.name if hasattr(cfg, "name") else "", arch, positive)


def test_conditional_rows_and_the_reachable_q():
    base = PhotonicConfig.preset("tfln-literature")
    dims = [ROWS["feedback_calibration"], ROWS["rewrite_calibration"], ROWS["calibration_iters"]]
    assert _fields(dims, {"feedback_calibration": False}, None, base) == {
        "feedback_calibration": False, "rewrite_calibration": "recalibrate"}  # fmt: skip
    radius = _fields([ROWS["ring_radius_um"]], {"ring_radius_um": 40.0}, None, base)  # pitch, capacitance follow
    assert radius == pytest.approx({"ring_radius_m": 40e-6, "ring_pitch_m": 100e-6,
                                    "ring_capacitance_f": 0.3e-15 * math.pi * 40.0})  # fmt: skip
    q_row = ROWS["q_loaded"]
    for radius_um in (30.0, 75.0):
        q_max = reachable_q_max(base, radius_um * 1e-6)
        q = q_in_reach(q_row, 1.0, q_max)
        assert q == pytest.approx(min(q_row.high, q_max))
        base.replace(ring_radius_m=radius_um * 1e-6, q_loaded=q)  # reachable: the config accepts it
    assert q_in_reach(q_row, 0.5, 1e3) is None  # a ring whose bend loss leaves no Q in [3e3, 1e6]
    comb = [ROWS["ring_radius_um"], ROWS["d_sig"], ROWS["channel_spacing_nm"]]
    widest = _fields(comb, {"ring_radius_um": 75.0, "d_sig": 16, "channel_spacing_nm_in_reach": 1.0},
                     tiny_reference(), base)  # fmt: skip
    span = widest["n_lines"] * widest["channel_spacing_m"]
    assert span == pytest.approx(0.999 * ChipDesign.from_config(base.replace(**widest)).fsr_m)  # the comb fits
    cut = {d.name: d for d in buildable_space(SPACE, base)}["ring_radius_um"]
    assert cut.low > ROWS["ring_radius_um"].low and reachable_q_max(base, cut.low * 1e-6) >= q_row.low


def test_cli_global_search_on_a_reference_file(tmp_path, capsys):
    path = tiny_reference().save(tmp_path / "ref.safetensors")
    out = tmp_path / "run"
    args = ["design", "search", "--reference", str(path), "--trials", "4", "--k", "4", "--population", "3",
            "--model-shape", SHAPE, "--tokens-per-s", "200", "--context", "4k", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "one-stage" in text and "two-stage" in text
    data = json.loads((out / "pareto.json").read_text())
    assert data["settings"]["contexts"] == [4096] and data["settings"]["tokens_per_s"] == 200.0
    assert {"architecture", "rerank", "q_loaded"} <= {r["parameter"] for r in data["space"]}
    assert (out / "summary.md").is_file() and (out / "pareto.png").is_file()
    assert main([*args, "--latency-budget-s", "0.001"]) == 2  # a timed search has one budget: the selection share
    assert "selection share" in capsys.readouterr().err
