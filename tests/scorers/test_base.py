"""The scorer registry: the built-in scorers register themselves on import, a plugin registers with a decorator."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import ConfigError
from kvprism.scorers import SCORERS, ExactScorer, PhotonicScorer, SeedPublishedScorer, register_scorer
from kvprism.selection import BlockSelector, SelectionConfig, derive_seed


def test_built_in_scorers_are_registered_in_order():
    assert list(SCORERS)[:3] == ["exact", "photonic", "seed-as-published"]
    assert SCORERS["exact"] is ExactScorer and SCORERS["photonic"] is PhotonicScorer
    assert SCORERS["seed-as-published"] is SeedPublishedScorer
    assert [SCORERS[n].name for n in ("exact", "photonic", "seed-as-published")] == list(SCORERS)[:3]


def test_a_registered_plugin_scorer_is_built_by_the_selector(monkeypatch):
    monkeypatch.setitem(SCORERS, "__probe__", None)  # restores the registry afterwards
    seen = []

    @register_scorer("__probe__")
    class Probe(ExactScorer):
        def __init__(self, sel: SelectionConfig, seed: int = 0) -> None:
            super().__init__(sel, seed)
            seen.append((sel.scorer, seed))

    assert SCORERS["__probe__"] is Probe and Probe.name == "__probe__"
    sel = SelectionConfig(scorer="__probe__", k=1, projection="none")
    selector = BlockSelector(sel, 3, 2, torch.ones(2, dtype=torch.bool))
    assert isinstance(selector.scorer, Probe) and seen == [("__probe__", derive_seed(sel.seed, 3, 1))]
    monkeypatch.delitem(SCORERS, "__probe__")
    with pytest.raises(ConfigError, match=r"SelectionConfig\.scorer = '__probe__'"):
        SelectionConfig(scorer="__probe__")
