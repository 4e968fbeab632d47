"""The behaviour pinned by ``tests/test_pipeline_golden.py`` before the chip/scorer redesign: engine scores,
selections and counters for every shipped preset (current model), an EngineGroup in lockstep, feasibility numbers,
and greedy decode through SparseCache with every scorer on tiny random Llama and Qwen2 models.

Run ``python -m tests.support.golden_pipeline`` to rewrite ``tests/golden/pipeline.pt`` — only when a change of behaviour is
intended and explained in the commit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kvprism.photonics import EngineGroup, PhotonicConfig, PhotonicEngine
from kvprism.photonics.feasibility import report

GOLDEN = Path(__file__).resolve().parent / "golden" / "pipeline.pt"
PRESETS = (
    "ideal",
    "seed-nominal",
    "seed-pessimistic",
    "seed-optimistic",
    "tfln-literature",
    "tfln-timeshared",
    "tfln-timeshared-32",
)
#: (name, SelectionConfig overrides) decoded greedily through SparseCache
DECODES = (
    ("exact", {"scorer": "exact"}),
    ("exact-pca", {"scorer": "exact", "projection": "pca"}),
    ("exact-centroids", {"scorer": "exact", "signature": "centroids", "sig_rows": 2}),
    ("seed-nominal", {"scorer": "photonic", "photonic": "seed-nominal"}),
    ("tfln-timeshared", {"scorer": "photonic", "photonic": "tfln-timeshared", "d_sig": 16}),
    ("tfln-timeshared-rerank", {"scorer": "photonic", "photonic": "tfln-timeshared", "d_sig": 16, "rerank": 2}),
    ("seed-as-published", {"scorer": "seed-as-published"}),
)


def _plain(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    return repr(x)


def engine_scenario(name: str) -> dict:
    """Program 2 banks × 40 rows × d=16, score and select, append 6 rows, drift 3 steps, score and select again."""
    gen = torch.Generator().manual_seed(4321)
    sig = torch.randn(2, 40, 16, generator=gen)
    extra = torch.randn(2, 6, 16, generator=gen)
    q = torch.randn(2, 3, 16, generator=gen)
    eng = PhotonicEngine(PhotonicConfig.preset(name).replace(rows_per_bank=64, n_banks=4), seed=11)
    eng.program(sig)
    s0 = eng.scores(q)
    i0 = eng.select(q, 5)
    eng.append(extra)
    eng.advance(3)
    s1 = eng.scores(q)
    i1 = eng.select(q, 6)
    return {
        "s0": s0.double(),
        "i0": i0,
        "s1": s1.double(),
        "i1": i1,
        "counters": {k: float(v) for k, v in eng.counters.items()},
        "weights": eng.weights_as_programmed().double(),
    }


def group_scenario() -> list[torch.Tensor]:
    """Three seed-nominal engines in an EngineGroup: program, then 5 steps of append / score / advance."""
    gen = torch.Generator().manual_seed(99)
    cfg = PhotonicConfig.preset("seed-nominal").replace(rows_per_bank=64)
    engines = [PhotonicEngine(cfg, seed=50 + i) for i in range(3)]
    group = EngineGroup(engines)
    out = []
    for s in range(5):
        for e in engines:
            if s == 0:
                e.program(torch.randn(2, 10, 16, generator=gen))
            elif s % 2 == 0:
                e.append(torch.randn(2, 1, 16, generator=gen))
            out.append(e.scores(torch.randn(2, 2, 16, generator=gen)).double())
            e.advance(1)
    group.release()
    return out


def feasibility_scenario(name: str) -> dict:
    rep = report(PhotonicEngine(PhotonicConfig.preset(name), seed=0), mc_rows=64, mc_queries=16)
    return _plain(rep)


def decode_scenario(family: str, overrides: dict) -> dict:
    from kvprism.hf.cache import SparseCache, cache_kwargs
    from kvprism.selection import SelectionConfig
    from tests.conftest import tiny_model

    model = tiny_model(family, seed=3)
    # pinned to the per-step top-k the records were made with (carry 0); carried blocks have their own tests
    sel = SelectionConfig(block_size=8, k=2, window=8, d_sig=16, carry=0).replace(**overrides)
    cache = SparseCache(model, sel)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (1, 70), generator=gen)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            **cache_kwargs(model, cache),
            max_new_tokens=12,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    summary = cache.stats.summary()
    return {
        "tokens": out.sequences[0, ids.shape[1] :].clone(),
        "logits": torch.stack([s[0] for s in out.scores]).double(),
        "summary": _plain(summary),
    }


def record() -> dict:
    return {
        "engine": {name: engine_scenario(name) for name in PRESETS},
        "group": group_scenario(),
        "feasibility": {name: feasibility_scenario(name) for name in PRESETS},
        "decode": {
            f"{family}/{name}": decode_scenario(family, kw) for family in ("llama", "qwen2") for name, kw in DECODES
        },
    }


def main() -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(record(), GOLDEN)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
