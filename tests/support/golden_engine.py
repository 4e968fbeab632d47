"""The engine scenario pinned by ``tests/photonics/test_engine_golden.py`` (selections, scores and counters at fixed seeds).

Run ``python -m tests.support.golden_engine`` to rewrite ``tests/golden/engine.pt`` — only when a change of the model is
intended and explained (the file records the behaviour of the engine before the physics-fidelity refactor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kvprism.photonics import PhotonicConfig, PhotonicEngine

GOLDEN = Path(__file__).resolve().parent / "golden" / "engine.pt"
PRESETS = ("ideal", "seed-nominal", "seed-pessimistic", "seed-optimistic", "tfln-literature")
#: fields that select the pre-refactor model in the refactored engine (empty before the refactor)
LEGACY: dict[str, object] = {
    "drop_bus": "incoherent",
    "rest_point": "eo-centre",
    "coupler_gap_sigma_m": 0.0,
    "demux_loss_db": 0.0,
    "mux_loss_db": 0.0,
    "bank_routing_fraction": 0.0,
}


def legacy_config(name: str) -> PhotonicConfig:
    cfg = PhotonicConfig.preset(name).replace(rows_per_bank=64, n_banks=4)
    return cfg.replace(**{k: v for k, v in LEGACY.items() if k in {f["name"] for f in cfg.describe()}})


def scenario(name: str) -> dict[str, torch.Tensor | dict[str, float]]:
    """Program 2 banks × 48 rows × d=8, score and select 3 queries, append 8 rows, drift 3 steps, score again."""
    gen = torch.Generator().manual_seed(1234)
    sig = torch.randn(2, 48, 8, generator=gen)
    extra = torch.randn(2, 8, 8, generator=gen)
    q = torch.randn(2, 3, 8, generator=gen)
    eng = PhotonicEngine(legacy_config(name), seed=7)
    eng.program(sig)
    s0 = eng.scores(q)
    i0 = eng.select(q, 5)
    eng.append(extra)
    eng.advance(3)
    s1 = eng.scores(q)
    i1 = eng.select(q, 6)
    counters = {k: float(v) for k, v in eng.counters.items()}
    return {"s0": s0.double(), "i0": i0, "s1": s1.double(), "i1": i1, "counters": counters}


def main() -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: scenario(name) for name in PRESETS}, GOLDEN)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
