"""The chip architecture is a searched categorical parameter (kvprism.search.space.ARCHITECTURE)."""

from __future__ import annotations

import pytest

from kvprism.errors import KvprismError
from kvprism.photonics.architecture import Architecture
from kvprism.search.objectives import ObjectiveSettings
from kvprism.search.space import ARCHITECTURE, SPACE, active_space


def test_space_searches_the_architecture_with_superblock_sizes():
    row = next(d for d in SPACE if d.name == ARCHITECTURE)
    assert row.kind == "categorical"
    assert {"time-shared", "resident"} <= set(row.choices)
    sizes = [Architecture.parse(c).superblock for c in row.choices if c.startswith("two-level")]
    assert sizes and all(s >= 2 for s in sizes)
    searched, left_out = active_space()
    assert ARCHITECTURE in [d.name for d in searched] and ARCHITECTURE not in [d.name for d in left_out]
    searched, _ = active_space(fixed=(ARCHITECTURE,))
    assert ARCHITECTURE not in [d.name for d in searched]


def test_search_fields_leave_the_architecture_out_of_the_config():
    from kvprism.search.search import _base_params, _fields

    arch_row = [d for d in SPACE if d.name == ARCHITECTURE]
    assert _fields(arch_row, {ARCHITECTURE: "resident"}, ref=None) == {}
    from kvprism.photonics.config import PhotonicConfig

    assert _base_params(arch_row, PhotonicConfig.preset("tfln-timeshared"), ref=None) == {ARCHITECTURE: "time-shared"}


def test_objective_settings_take_the_architecture():
    assert ObjectiveSettings().architecture == "time-shared"
    assert ObjectiveSettings(architecture="two-level:8", tokens_per_s=20.0).architecture == "two-level:8"
    with pytest.raises(KvprismError, match="needs tokens_per_s"):
        ObjectiveSettings(architecture="resident")
    with pytest.raises(KvprismError):
        ObjectiveSettings(architecture="two-level:1", tokens_per_s=20.0)


def test_two_level_selection_is_exact_when_every_superblock_is_chosen():
    import torch

    from kvprism.photonics import PhotonicEngine
    from kvprism.photonics.config import PhotonicConfig
    from kvprism.search.objectives import _two_level_select

    g = torch.Generator().manual_seed(0)
    sig, qry = torch.randn(2, 18, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    eng = PhotonicEngine(PhotonicConfig.preset("ideal").replace(n_lines=8), seed=0)
    # 18 blocks, S = 4: 4 super-blocks (all chosen with rerank·k = 4) + the open one's 2 blocks; candidates [1, 18)
    got = _two_level_select(eng, sig, qry, 4, 2, 2, 1, 18)
    exact = qry @ sig.transpose(-1, -2)
    exact[..., 0] = -float("inf")
    assert torch.equal(got.sort(-1).values, exact.topk(2, dim=-1).indices.sort(-1).values)
    # one super-block only: the k best come from it or from the open super-block
    one = _two_level_select(eng, sig, qry, 4, 1, 1, 1, 18)
    assert one.shape == (2, 3, 1)
