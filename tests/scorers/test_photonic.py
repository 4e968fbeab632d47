"""The ``photonic`` scorer: the adapter contract (against a stand-in engine with the documented API) and,
when the photonic engine is installed, the real engine in the loop (ideal preset == exact; SmolLM2 needle)."""

from __future__ import annotations

import sys
import types
import typing

import pytest
import torch

from kvprism.hf.cache import SparseCache
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model
from tests.hf.test_cache import _batch, decode_loop
from tests.selection.test_selector import needle_run_2k


class _StandInEngine:
    """Implements the documented PhotonicEngine API with exact arithmetic and records the calls."""

    instances: typing.ClassVar[list[_StandInEngine]] = []

    def __init__(self, cfg, seed=0):
        self.cfg, self.seed, self.rows, self.steps = cfg, seed, None, 0
        self.counters = {"row_programs": 0, "evaluations": 0}
        self.calls: list[str] = []
        _StandInEngine.instances.append(self)

    @property
    def n_rows(self):
        return 0 if self.rows is None else self.rows.shape[-2]

    def program(self, sig):
        self.calls.append("program")
        self.rows = sig.clone()
        self.counters["row_programs"] += sig[..., 0].numel()

    def append(self, sig):
        self.calls.append("append")
        self.rows = torch.cat([self.rows, sig], -2)
        self.counters["row_programs"] += sig[..., 0].numel()

    def scores(self, q):
        self.counters["evaluations"] += q[..., 0].numel()
        if q.dim() == self.rows.dim() - 1:
            return 3.0 * (self.rows @ q.unsqueeze(-1)).squeeze(-1)  # positive scale, as documented
        return 3.0 * q @ self.rows.transpose(-1, -2)

    def advance(self, n):
        self.steps += n

    def feasibility(self):
        return types.SimpleNamespace(violations=[])


@pytest.fixture
def stand_in_engine(monkeypatch):
    import kvprism.photonics.config  # noqa: F401  (preset names are validated against the real shipped presets)

    class PhotonicConfig:
        @classmethod
        def preset(cls, name):
            return types.SimpleNamespace(name=name)

    class EngineGroup:  # the stand-in engines sample no drift: a group that only holds them
        def __init__(self, engines):
            self.engines, self.batched_samples = list(engines), 0

        def release(self):
            self.engines = []

    mod = types.ModuleType("kvprism.photonics")
    mod.PhotonicConfig, mod.PhotonicEngine, mod.EngineGroup = PhotonicConfig, _StandInEngine, EngineGroup
    monkeypatch.setitem(sys.modules, "kvprism.photonics", mod)
    _StandInEngine.instances.clear()
    return _StandInEngine


def test_adapter_contract_with_stand_in_engine(stand_in_engine):
    model = tiny_model("llama")
    ids, mask = _batch(21)
    base = SelectionConfig(block_size=4, k=2, d_sig=6, window=2)
    exact = SparseCache(model, base, trace=True)
    decode_loop(model, ids, mask, exact, steps=6)
    phot = SparseCache(model, base.replace(scorer="photonic", photonic="seed-nominal"), trace=True)
    decode_loop(model, ids, mask, phot, steps=6)
    engines = stand_in_engine.instances
    assert len(engines) == model.config.num_hidden_layers
    assert len({e.seed for e in engines}) == len(engines)  # one seeded engine per layer
    for e in engines:
        assert e.cfg.name == "seed-nominal"
        assert e.steps == 6  # advanced once per decode step
        assert e.calls[0] == "program" and e.calls.count("append") == 1  # block 10 completes at T = 44
        assert e.rows.shape[:2] == (2, 2)  # banks = [batch, KV heads]
    for a, b in zip(exact.trace, phot.trace, strict=True):
        for layer in a:
            assert torch.equal(a[layer]["blocks"], b[layer]["blocks"])
    s = phot.stats.summary()
    assert s["engine_counters"]["row_programs"] == s["programming_events"]


# ----------------------------------------------------------------------------------- the real engine, when present
def test_ideal_preset_selects_like_exact():
    pytest.importorskip("kvprism.photonics")
    model = tiny_model("qwen2")
    ids, mask = _batch(22)
    base = SelectionConfig(block_size=4, k=3, d_sig=8, window=2)
    runs = []
    for sel in (base, base.replace(scorer="photonic", photonic="ideal")):
        cache = SparseCache(model, sel, trace=True)
        decode_loop(model, ids, mask, cache, steps=6)
        runs.append(cache.trace)
    for a, b in zip(*runs, strict=True):
        for layer in a:
            assert torch.equal(a[layer]["blocks"], b[layer]["blocks"]), layer


def test_sparse_cache_groups_layer_engines_with_the_same_results():
    """SparseCache samples the drift of all layers' engines in one batched pass per decode step; with the group
    released (each layer samples alone) the selected blocks, logits and engine counters are identical (seed-nominal:
    drift, noise, ADC), over decode steps that complete a block (append) with batch 2 and left padding."""
    pytest.importorskip("kvprism.photonics")
    model = tiny_model("llama")
    ids, mask = _batch(23)
    sel = SelectionConfig(block_size=4, k=2, d_sig=6, window=2, scorer="photonic", photonic="seed-nominal")
    runs = []
    for grouped in (True, False):
        cache = SparseCache(model, sel, trace=True)
        assert cache.engine_group is not None and len(cache.engine_group.engines) == model.config.num_hidden_layers
        if not grouped:
            cache.engine_group.release()
        logits, _ = decode_loop(model, ids, mask, cache, steps=6)
        runs.append((cache, logits))
    (a, la), (b, lb) = runs
    assert a.engine_group.batched_samples == 5  # steps 2..6 (step 1 programs every layer, nothing drifted yet)
    assert torch.equal(la, lb)
    for sa, sb in zip(a.trace, b.trace, strict=True):
        for layer in sa:
            assert torch.equal(sa[layer]["blocks"], sb[layer]["blocks"]), layer
    ca, cb = a.stats.summary(), b.stats.summary()
    assert ca["engine_counters"] == cb["engine_counters"]
    assert ca["engine_counters"]["weight_refreshes"] == 5 * model.config.num_hidden_layers
    rows = ca["engine_counters"]["row_programs"] - ca["engine_counters"]["rescale_row_programs"]  # rescales rewrite
    assert rows == ca["programming_events"] == cb["programming_events"]
    assert a.selectors[0].n_blocks > (ids.shape[1] + 1) // 4  # blocks completed after the first step: appended
    assert SparseCache(model, sel.replace(scorer="exact")).engine_group is None  # nothing to share


@pytest.mark.slow
def test_smollm2_needle_2k_photonic_feasible_bank(smollm2):
    """The time-shared TFLN bank (tfln-timeshared: coherent drop bus, in-situ calibration with noisy probes, drift;
    not feasible timed — its trim heaters exceed the cap) finds the needle (one seeded sample) while reading under
    half the cache."""
    pytest.importorskip("kvprism.photonics")
    from kvprism.photonics import PhotonicConfig
    from kvprism.photonics.feasibility import feasibility

    model, tok = smollm2
    cfg = PhotonicConfig.preset("tfln-timeshared")
    assert not feasibility(cfg, seed=0).feasible  # untimed reports are never feasible
    sel = SelectionConfig(block_size=64, k=8, d_sig=cfg.n_lines, scorer="photonic", photonic="tfln-timeshared")
    sample, answer, s = needle_run_2k(model, tok, sel)
    assert s["restricted"] and s["read_fraction_max"] < 0.5
    assert s["programming_events"] > 0
    assert sample.score(answer), answer


@pytest.mark.slow
def test_smollm2_seed_nominal_is_restricted_and_flagged(smollm2):
    """The seed design point really runs in the loop (restricted reads, programming counted) and its feasibility
    verdict says why its selection is unreliable: weight errors from drift and quantisation swamp the differences
    between block signatures (score SNR < 0 dB), so the needle answer is not asserted here."""
    pytest.importorskip("kvprism.photonics")
    from kvprism.photonics import PhotonicConfig
    from kvprism.photonics.feasibility import feasibility

    model, tok = smollm2
    rep = feasibility(PhotonicConfig.preset("seed-nominal").replace(n_lines=5), seed=0)
    assert any("ENOB" in v for v in rep.violations), rep.violations
    sel = SelectionConfig(block_size=64, k=4, d_sig=5, scorer="photonic", photonic="seed-nominal")
    _, _, s = needle_run_2k(model, tok, sel)
    assert s["restricted"] and s["read_fraction_max"] < 0.5
    assert s["programming_events"] > 0 and s["selection_calls"] > 0
