"""Design-space search for the photonic selector.

- :mod:`kvprism.search.capture` — the *reference set*: from one real prefill on natural text, per (layer, KV head),
  block signatures, a sample of decode-time queries and their exact top-k (cached under the kvprism cache dir).
- :mod:`kvprism.search.objectives` — one design point evaluated: signature recall@k of the photonic engine on the
  reference set (noise on), energy per decode step for a model shape, chip area, added latency, feasibility.
- :mod:`kvprism.search.space` — the search space as a declarative table (parameter → config field, range, source).
- :mod:`kvprism.search.search` — multi-objective optuna study (NSGA-II, SQLite, resumable), Pareto outputs.
- :mod:`kvprism.search.claims` — the reproduction report of the PRISM abstract's claims (``kvprism claims``).

Submodules are imported on use (optuna and matplotlib are only needed by the search and the reports).
"""
