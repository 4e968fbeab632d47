"""Runner bookkeeping: prefill once per point, resumable JSONL, no duplicates, metrics plumbing."""

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from kvprism.errors import KvprismError
from kvprism.eval import runner as R
from kvprism.eval.decode import DecodeOutput, default_decode, fork_dynamic_cache, greedy_decode
from kvprism.eval.grid import EvalConfig, build_configs, validate_configs
from kvprism.eval.store import RESULTS_FILE, jsonable, read_results, repair_results
from kvprism.hf.cache import cache_kwargs
from tests.conftest import tiny_model, tiny_tokenizer

GRID = dict(tasks=["niah_single"], contexts=[120, 160], depths=[0.0, 0.5, 1.0], seeds=[0], haystack="noise")


def _runner(tmp_path, configs, decode_fn=default_decode, model=None, **kw):
    args = {**GRID, **kw}
    return R.Runner(
        model or tiny_model("llama"),
        tiny_tokenizer(),
        out_dir=tmp_path / "out",
        configs=configs,
        decode_fn=decode_fn,
        max_new_tokens=4,
        model_name="tiny",
        **args,
    )


class Counting:
    """Wraps a decode function, counts calls per config and can crash after ``crash_after`` calls."""

    def __init__(self, inner=default_decode, crash_after=None):
        self.inner, self.crash_after, self.calls = inner, crash_after, []

    def __call__(self, model, cache, last, cfg, n, eos):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(cfg.name)
        return self.inner(model, cache, last, cfg, n, eos)


@dataclass(frozen=True)
class FakeSelConfig(EvalConfig):
    """A selection configuration that needs no kvprism.selection (for plumbing tests); the fake decoder selects
    ``fake_blocks`` in every (layer, KV head)."""

    fake_blocks: tuple[int, ...] = (2, 3)

    def selection_config(self):
        return SimpleNamespace(block_size=8, k=self.k, sink_blocks=1, window=16)


def fake_sparse_decode(model, cache, last, cfg, n, eos):
    """Dense tokens + a hand-made trace: every (layer, KV head) reads ``cfg.fake_blocks`` plus sink and window."""
    out = default_decode(model, cache, last, EvalConfig("dense", "dense"), n, eos)
    if cfg.method == "dense":
        return out
    sel = cfg.selection_config()
    n_tok = cache.get_seq_length()
    g = torch.Generator().manual_seed(0)
    trace = []
    for step in range(len(out.tokens)):
        t = n_tok + 1 + step
        per_layer = {}
        for layer in range(model.config.num_hidden_layers):
            blocks = torch.tensor(cfg.fake_blocks).view(1, 1, -1).expand(1, 2, -1).clone()
            mask = torch.zeros(1, 2, t, dtype=torch.bool)
            mask[..., : sel.sink_blocks * sel.block_size] = True
            mask[..., t - sel.window :] = True
            for b in cfg.fake_blocks:
                mask[..., b * sel.block_size : (b + 1) * sel.block_size] = True
            per_layer[layer] = {"query": torch.randn(1, 4, 16, generator=g), "blocks": blocks, "token_mask": mask}
        trace.append(per_layer)
    rf = float(trace[0][0]["token_mask"].float().mean())
    stats = {"read_fraction_mean": rf, "read_fraction_max": rf, "restricted": rf < 1.0, "selection_calls": 2}
    return DecodeOutput(out.tokens, out.first_logits + 0.1 * torch.arange(out.first_logits.numel()), stats, trace, 0.0)


def test_fork_does_not_touch_prefilled_cache():
    model = tiny_model("llama")
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.arange(3, 30).unsqueeze(0), **cache_kwargs(model, cache), use_cache=True)
    keys0 = [layer.keys.clone() for layer in cache.layers]
    fork = fork_dynamic_cache(cache)
    greedy_decode(model, fork, torch.tensor([[5]]), 3, frozenset())
    assert fork.get_seq_length() == 30 and cache.get_seq_length() == 27
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys0, cache.layers, strict=True))


def test_build_configs_and_errors():
    cfgs = build_configs(["exact", "dense", "seed-nominal"], [4, 8])
    assert [c.name for c in cfgs] == ["dense", "exact-k4", "exact-k8", "seed-nominal-k4", "seed-nominal-k8"]
    assert cfgs[3].method == "photonic" and cfgs[3].preset == "seed-nominal"
    with pytest.raises(KvprismError, match="k = 0 is invalid"):
        build_configs(["exact"], [0])
    with pytest.raises(KvprismError, match="configs is empty"):
        build_configs([], [8])


def test_tiny_grid_end_to_end_dense(tmp_path):
    dec = Counting()
    r = _runner(tmp_path, build_configs(["dense"], []), dec)
    summary = r.run()
    rows = read_results(r.results)
    assert summary.cells_run == len(rows) == 6 and summary.prefills == 6
    assert summary.prefill_s > 0 and summary.decode_s > 0
    for row in rows:
        assert row["config"] == "dense" and row["read_fraction_mean"] == 1.0 and row["restricted"] is False
        assert row["prefill_tokens"] == row["context"] - 1 and 1 <= row["decode_steps"] <= 4
        assert isinstance(row["correct"], bool) and row["prefill_s"] > 0
    assert {(row["context"], row["depth"]) for row in rows} == {(c, d) for c in (120, 160) for d in (0.0, 0.5, 1.0)}
    # a rerun does nothing
    again = _runner(tmp_path, build_configs(["dense"], []), dec).run()
    assert again.cells_run == 0 and again.prefills == 0 and len(dec.calls) == 6


def test_resume_after_crash_no_duplicates(tmp_path):
    configs = [EvalConfig("dense", "dense"), FakeSelConfig("fake-k2", "exact", 2)]
    crashing = Counting(fake_sparse_decode, crash_after=7)
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path, configs, crashing).run()
    path = tmp_path / "out" / RESULTS_FILE
    first = read_results(path)
    assert len(first) == 7  # every finished cell was on disk when the kill came
    # simulate a kill in the middle of a write as well: a partial last line
    with open(path, "a") as fh:
        fh.write('{"key": "niah_single|noise|numbers|160|0.5')
    resumed = Counting(fake_sparse_decode)
    summary = _runner(tmp_path, configs, resumed).run()
    rows = read_results(path)
    keys = [row["key"] for row in rows]
    assert len(rows) == 12 and len(set(keys)) == 12  # complete, no duplicates
    assert summary.cells_done_before == 7 and summary.cells_run == 5
    # nothing computed twice: the resumed run decoded exactly the missing cells (plus, for the point whose dense
    # cell was done before the crash, one dense reference step for KL)
    done_before = {(r["context"], r["depth"], r["config"]) for r in first}
    redone = [
        (r["context"], r["depth"], r["config"])
        for r in rows[7:]
        if (r["context"], r["depth"], r["config"]) in done_before
    ]
    assert redone == []
    fake_before = sum(r["config"] == "fake-k2" for r in first)
    assert resumed.calls.count("fake-k2") == 6 - fake_before
    # remaining dense cells + one dense reference step for the point whose dense cell finished before the kill
    assert resumed.calls.count("dense") == (6 - (7 - fake_before)) + 1
    assert path.read_text().endswith("\n") and all(json.loads(line) for line in path.read_text().splitlines())


def test_selection_metrics_plumbing(tmp_path):
    from kvprism.eval.tasks import make_sample

    sample = make_sample("niah_single", tiny_tokenizer(), 160, 0.5, 0, haystack="noise")
    start, end = sample.needle_spans[0]
    needle_blocks = tuple(range(start // 8, (end - 1) // 8 + 1))
    other = tuple(b for b in range(1, 17) if b not in needle_blocks)[: len(needle_blocks)]
    k = len(needle_blocks)
    configs = [
        EvalConfig("dense", "dense"),
        FakeSelConfig("hit", "exact", k, fake_blocks=needle_blocks),
        FakeSelConfig("miss", "exact", k, fake_blocks=other),
    ]
    r = _runner(tmp_path, configs, fake_sparse_decode, contexts=[160], depths=[0.5])
    r.run()
    dense, hit, miss = read_results(r.results)
    assert dense["config"] == "dense" and dense["kl_first_token"] is None and dense["needle_spans"][0] == [start, end]
    # first decode step: 159 prefilled tokens + the step's own = 160, B = 8: 20 complete blocks; sink 1 block; window
    # 16 tokens -> the tail starts at 144 -> candidate blocks 1..17 (the layout selection chose from)
    assert hit["eligible_blocks"] == 17 and hit["can_restrict"] is True and hit["restricted"] is True
    assert hit["needle_hit"] == 1.0 and miss["needle_hit"] == 0.0
    for row in (hit, miss):
        assert 0.0 <= row["block_recall"] <= 1.0 and 0.0 < row["mass_captured"] < 1.0
        assert row["kl_first_token"] > 0.0  # the fake perturbs the logits
        assert len(row["per_layer"]["block_recall"]) == 2 and len(row["per_layer"]["block_recall"][0]) == 2
    # the two selections are disjoint, so their first-step recalls cannot both be perfect
    assert hit["block_recall_first"] + miss["block_recall_first"] <= 1.0 + 1e-9


def test_recall_mode_decodes_one_step(tmp_path):
    configs = [EvalConfig("dense", "dense"), FakeSelConfig("fake-k2", "exact", 2)]
    r = _runner(tmp_path, configs, fake_sparse_decode, contexts=[160], depths=[0.5], mode="recall")
    r.run()
    rows = read_results(r.results)
    assert all(row["decode_steps"] == 1 and row["correct"] is None and row["answer"] is None for row in rows)


def test_bad_inputs_fail_before_work(tmp_path):
    dec = Counting()
    with pytest.raises(KvprismError, match=r"depth = 1.5 is invalid"):
        _runner(tmp_path, build_configs(["dense"], []), dec, depths=[1.5])
    with pytest.raises(KvprismError, match="exceeds the model's window of 1024"):
        _runner(tmp_path, build_configs(["dense"], []), dec, contexts=[2048])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KvprismError, match="not a writable directory"):
        R.Runner(
            tiny_model(),
            tiny_tokenizer(),
            out_dir=blocker / "sub",
            configs=build_configs(["dense"], []),
            **{k: v for k, v in GRID.items() if k != "haystack"},
        )
    assert dec.calls == []
    # another model (other weights) into the same directory is refused, naming the differing field; the same
    # weights under another name are the same cells
    _runner(tmp_path, build_configs(["dense"], []), dec, contexts=[120], depths=[0.0]).run()
    r = _runner(tmp_path, build_configs(["dense"], []), dec, contexts=[120], depths=[0.0])
    r.model_name = "other"
    assert r.run().cells_run == 0
    r = _runner(tmp_path, build_configs(["dense"], []), dec, contexts=[120], depths=[0.0], model=tiny_model(seed=1))
    with pytest.raises(KvprismError, match=r"computed under other settings \(model.weights_sha256"):
        r.run()


def test_validate_configs_without_sparse_modules():
    try:
        import kvprism.hf.cache  # noqa: F401
    except ImportError:
        with pytest.raises(KvprismError, match="needs sparse decode"):
            validate_configs(build_configs(["exact"], [8]))
    validate_configs(build_configs(["dense"], []))  # always fine


def test_unknown_preset_is_one_clear_error():
    pytest.importorskip("kvprism.hf.cache")
    pytest.importorskip("kvprism.photonics")
    with pytest.raises(KvprismError, match="'no-such-preset' is neither"):
        validate_configs(build_configs(["no-such-preset"], [8]))


def test_tiny_grid_with_sparse_cache(tmp_path):
    pytest.importorskip("kvprism.hf.cache")
    configs = build_configs(["dense", "exact"], [2], {"block_size": 16})
    validate_configs(configs)
    r = _runner(tmp_path, configs, contexts=[400], depths=[0.5], haystack="noise")
    r.run()
    dense, exact = read_results(r.results)
    assert exact["can_restrict"] and exact["restricted"] and exact["read_fraction_mean"] < 1.0
    assert 0.0 <= exact["block_recall"] <= 1.0 and 0.0 < exact["mass_captured"] <= 1.0
    assert exact["kl_first_token"] >= 0.0 and dense["read_fraction_mean"] == 1.0


def test_tiny_grid_with_photonic_preset(tmp_path):
    pytest.importorskip("kvprism.hf.cache")
    photonics = pytest.importorskip("kvprism.photonics")
    preset = next(iter(photonics.PhotonicConfig.presets()))
    configs = build_configs(["dense", "exact", preset], [2], {"block_size": 16})
    validate_configs(configs)
    r = _runner(tmp_path, configs, contexts=[400], depths=[0.5], haystack="noise")
    r.run()
    photo = read_results(r.results)[-1]
    assert photo["method"] == "photonic" and 0.0 <= photo["signature_recall"] <= 1.0


def test_signature_recall_is_against_exact_at_the_same_selection_settings(tmp_path):
    """A photonic configuration's reference is the exact scorer under its own SelectionConfig, not another exact
    configuration of the grid that shares only k: the ideal chip (an exact scorer in hardware) at d_sig 4 recalls
    exact@d_sig 4 fully, next to an exact configuration at d_sig 8 with the same k."""
    pytest.importorskip("kvprism.photonics")
    exact8 = EvalConfig("exact-d8-k2", "exact", 2, None, {"block_size": 8, "d_sig": 8})
    ideal4 = EvalConfig("ideal-d4-k2", "photonic", 2, "ideal", {"block_size": 8, "d_sig": 4})
    r = _runner(tmp_path, [exact8, ideal4], contexts=[400], depths=[0.5], haystack="noise")
    r.run()
    _, photo = read_results(r.results)
    assert photo["config"] == "ideal-d4-k2" and photo["signature_recall"] == 1.0
    assert photo["reference_s"] > 0  # its own reference decode (exact at d_sig 4) ran
    assert r.cell_settings(ideal4)["reference"] == "exact scorer, same SelectionConfig"
    assert "reference" not in r.cell_settings(exact8)  # exact and dense keys are unchanged


def test_repair_results_refuses_corrupt_middle(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(KvprismError, match="line 2 is corrupt"):
        repair_results(p)
    p.write_text('{"a": 1}\n{"b": ')
    repair_results(p)
    assert p.read_text() == '{"a": 1}\n'


def test_jsonable():
    assert jsonable({"x": torch.tensor([1.0, float("nan")]), 2: (1, float("inf"))}) == {
        "x": [1.0, None],
        "2": [1, None],
    }


def test_a_cell_key_holds_carry_except_in_recall_mode_and_at_carry_0(tmp_path):
    """niah cells: carry 2 and carry 0 are different settings (so a new default never reuses a stored cell); carry 0
    leaves the key as before the field existed. recall cells decode one step, which carries nothing: their key is
    the same at any carry."""
    from kvprism.selection import SelectionConfig

    def digest(mode, carry):
        sel = SelectionConfig(block_size=8, k=2, window=8, carry=carry)
        cfg = EvalConfig("exact-k2", "exact", 2, None, sel)
        runner = _runner(tmp_path / f"{mode}-{carry}", [cfg], mode=mode)
        settings, digest = runner._settings_and_hash(cfg)
        return settings["selection"], digest

    niah0, niah2 = digest("niah", 0), digest("niah", 2)
    assert "carry" not in niah0[0] and niah2[0]["carry"] == 2 and niah0[1] != niah2[1]
    rec0, rec2 = digest("recall", 0), digest("recall", 2)
    assert "carry" not in rec2[0] and rec0[1] == rec2[1]
