"""Objectives of one design point: how well the chip selects on the reference set and what it costs.

:func:`evaluate` takes a :class:`~kvprism.photonics.PhotonicConfig` and a reference set
(:mod:`kvprism.search.capture`) and returns a :class:`TrialResult`:

- **signature recall@k** (maximise): one :class:`~kvprism.photonics.PhotonicEngine` holds every (layer, KV head) of
  the reference set as an independent weight bank (``program`` of ``[L·H, N, w]``: all ``N`` complete blocks, sink
  and tail blocks included, as in the loop); the reference queries are evaluated with every impairment of the config
  on (noise, crosstalk, quantisation, drift at the programming time); the selection among the candidate rows
  ``[lo, hi)`` is the engine's own ``select`` of ``k + m`` rows (``m`` = rows outside the candidates) with the
  non-candidates dropped — the exact top-k among candidates, as the loop's masked top-k (``rerank > 1``: the top
  ``rerank·k``, rescored exactly from the fp32 signatures, the best k kept, as the loop's two-stage selection).
  Recall = |selected ∩ exact top-k of the signatures| / k, averaged over banks and queries. *Block recall* (against the true attention mass)
  is reported beside it.
- **energy per decode step** (minimise) for a model shape at ``contexts[0]`` (default Qwen2.5-7B at 32K), from
  :func:`kvprism.energy.decode_step` with the laser the config *uses* (``laser_line_dbm``: the power whose noise the
  recall saw), whole step (selected-block fetch included); selection alone and other contexts beside it.
- **chip area** (minimise): the feasibility report's area.
- **added latency per step** (minimise): chip latency over all layers + paging (what the selection adds to a decode
  step; the fetch of the selected blocks is paid by every block-sparse method), checked against a budget.
- **constraints**: the number of violated feasibility constraints (``feasibility()``: authoritative), graded margins
  of the known ones (to guide the search; clipped to ≤ 0 when ``feasibility()`` passes) and the latency budget. A
  value > 0 means infeasible.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.search.capture import ReferenceSet
from kvprism.search.space import leaf

__all__ = [
    "CONSTRAINTS",
    "ObjectiveSettings",
    "TrialResult",
    "configured_laser",
    "default_latency_budget_s",
    "evaluate",
    "exact_recall",
    "recall_at_k",
    "select_candidates",
]

#: clip of constraint values (optuna needs finite numbers; ±inf margins become ±this)
_CLIP = 1e3


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """What a design point is judged on (the workload side).

    ``k``: blocks selected (≤ the reference set's ``k_max``); ``shape``: a name in
    :data:`kvprism.energy.MODEL_SHAPES`; ``contexts``: tokens per sequence for the energy model (the first is the
    objective); ``latency_budget_s``: added latency allowed per decode step (None: :func:`default_latency_budget_s`);
    ``engine_seed``: seed of the engine's draws (common to all trials: common random numbers); ``max_banks``: use only
    the first this many (layer, KV head) banks of the reference set (0 = all; for quick searches);
    ``tokens_per_s``: the decode rate of ``shape`` that times the chip (:func:`kvprism.photonics.design.decode_timing`:
    detection bandwidth, rewrite calibration, code age; None: untimed, the configured detection bandwidth);
    ``rerank``: two-stage selection (:attr:`kvprism.selection.SelectionConfig.rerank`): the chip proposes
    ``rerank·k`` candidates, exact fp32 rescoring of their signatures keeps ``k``; their HBM read is charged in the
    energy and latency (1 = the chip's top-k is the selection); ``architecture``: how the chip holds the rows
    (:class:`kvprism.photonics.architecture.Architecture` label: 'time-shared', 'resident', 'two-level:S'; resident
    ones need ``tokens_per_s``). Two-level: the engine holds the super-block signatures (the mean of S consecutive
    block signatures), selects ``min(rerank·k, super-blocks)`` of them, and exact scores of the candidate blocks inside
    them and in the open super-block keep ``k``."""

    k: int = 16
    shape: str = "qwen2.5-7b"
    contexts: tuple[int, ...] = (32768, 131072)
    latency_budget_s: float | None = None
    engine_seed: int = 0
    max_banks: int = 0
    tokens_per_s: float | None = None
    rerank: int = 1
    architecture: str = "time-shared"

    def __post_init__(self) -> None:
        object.__setattr__(self, "contexts", tuple(int(c) for c in self.contexts))
        if self.k < 1:
            raise KvprismError(f"k = {self.k} is invalid; allowed range: [1, inf)")
        if not self.contexts:
            raise KvprismError("contexts is empty; give at least one context for the energy model")
        if self.latency_budget_s is not None and not self.latency_budget_s > 0:
            raise KvprismError(f"latency_budget_s = {self.latency_budget_s} is invalid; allowed range: (0, inf)")
        if self.rerank < 1:
            raise KvprismError(f"rerank = {self.rerank} is invalid; allowed range: [1, inf)")
        if self.max_banks < 0:
            raise KvprismError(f"max_banks = {self.max_banks} is invalid; allowed range: [0, inf)")
        if self.tokens_per_s is not None and not (self.tokens_per_s > 0 and math.isfinite(self.tokens_per_s)):
            raise KvprismError(f"tokens_per_s = {self.tokens_per_s} is invalid; allowed range: (0, inf) or None")
        from kvprism.photonics.architecture import Architecture

        arch = Architecture.parse(self.architecture)
        object.__setattr__(self, "architecture", arch.label)
        if arch.resident and self.tokens_per_s is None:
            raise KvprismError(
                f"architecture = {arch.label!r} needs tokens_per_s: a resident chip is sized and timed for a decode"
            )


@dataclasses.dataclass
class TrialResult:
    """One evaluated design point (energies in J, latencies in s, area in m²)."""

    recall: float
    block_recall: float
    energy_j: float
    selection_energy_j: float
    energy_by_context_j: dict[int, float]
    area_m2: float
    added_latency_s: float
    latency_budget_s: float
    violations: list[str]
    constraints: dict[str, float]
    d_sig: int
    k: int
    seconds: dict[str, float]
    counters: dict[str, Any]
    #: config fields the decode timing set for this point (detection bandwidth, code age, code refresh); empty when
    #: untimed
    timed_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: selection energy per decode step [J] of each electronic selector (:func:`kvprism.energy.gpu.electronic_baselines`:
    #: bf16 / FP8 / FP4 mean and min/max block signatures, the FP8 DSA-style indexer) at the first context, for
    #: comparison with :attr:`selection_energy_j`; empty without energy
    baseline_energy_j: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def best_baseline(self) -> tuple[str, float] | None:
        """The electronic selector with the least selection energy per step: (name, J); None without energy."""
        if not self.baseline_energy_j:
            return None
        name = min(self.baseline_energy_j, key=self.baseline_energy_j.__getitem__)
        return name, self.baseline_energy_j[name]

    @property
    def chip_feasible(self) -> bool:
        """``feasibility()`` lists no violated constraint."""
        return not self.violations

    @property
    def feasible(self) -> bool:
        """Every constraint of the search holds (chip feasibility and the latency budget)."""
        return all(v <= 0.0 for v in self.constraints.values())

    def objectives(self) -> tuple[float, float, float, float]:
        """(recall ↑, energy ↓, area ↓, added latency ↓) for the optuna study."""
        return self.recall, self.energy_j, self.area_m2, self.added_latency_s

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["energy_by_context_j"] = {str(c): v for c, v in self.energy_by_context_j.items()}
        out["feasible"] = self.feasible
        out["chip_feasible"] = self.chip_feasible
        return out


OBJECTIVE_NAMES = ("recall", "energy_j", "area_m2", "added_latency_s")
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")


# ------------------------------------------------------------------------------------------------- constraints
def _get(obj: Any, *names: str) -> float | None:
    """The first of ``names`` that ``obj`` (a report or a config, nested sections included) holds as a number."""
    for n in names:
        try:
            v = leaf(obj, n)
        except (AttributeError, KvprismError):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _margin(rep: Any, cfg: Any, got: str, limit: str, sign: float, scale: float = 1.0) -> float | None:
    """``sign · (report.got − config.limit) / scale`` or None when either is missing."""
    v, lim = _get(rep, got), _get(cfg, limit)
    return None if v is None or lim is None else sign * (v - lim) / scale


def _ratio_margin(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den - 1.0


#: Graded constraint margins read from a feasibility report (> 0: violated), by name. Each returns None when the
#: report lacks the quantity (a chip model with other field names): the authoritative ``violations`` count still
#: decides. Add rows as the chip model gains constraints (power caps, trim range, ...).
CONSTRAINTS: dict[str, Callable[[Any, Any], float | None]] = {
    "drive_swing": lambda r, c: _ratio_margin(_get(r, "required_swing_v"), _get(r, "v_max_v")),
    "comb_span": lambda r, c: _ratio_margin(_get(r, "comb_span_m"), _get(r, "fsr_m")),
    "leakage_db": lambda r, c: _margin(r, c, "worst_leakage_db", "leakage_limit_db", 1.0, 10.0),
    "pd_power_db": lambda r, c: _margin(r, c, "received_pd_dbm", "pd_sensitivity_dbm", -1.0, 10.0),
    "score_enob_bits": lambda r, c: _margin(r, c, "score_enob_bits", "required_score_enob", -1.0),
    "weight_bits": lambda r, c: _margin(r, c, "weight_bits", "required_weight_bits", -1.0),
    "weight_range": lambda r, c: _margin(r, c, "weight_range", "weight_range_target", -1.0),
    "area": lambda r, c: _ratio_margin(_get(r, "chip_area_m2", "area_m2"), _get(c, "max_chip_area_m2")),
}  # fmt: skip


def _finite(x: float) -> float:
    if math.isnan(x):
        return _CLIP
    return max(-_CLIP, min(_CLIP, x))


def constraint_values(report: Any, cfg: Any, added_latency_s: float, budget_s: float) -> dict[str, float]:
    """Every constraint of the search (> 0: violated; finite). ``violations`` = the number of violated
    feasibility constraints; the graded margins are clipped to ≤ 0 when there is none, so that "feasible for the
    search" is exactly "``feasibility()`` passes and the latency budget holds"."""
    n_viol = len(report.violations)
    out = {"violations": float(n_viol)}
    for name, fn in CONSTRAINTS.items():
        v = fn(report, cfg)
        v = 0.0 if v is None else _finite(v)
        out[name] = v if n_viol else min(v, 0.0)
    out["latency_budget"] = _finite(added_latency_s / budget_s - 1.0)
    return out


# ------------------------------------------------------------------------------------------------- helpers
def configured_laser(cfg: Any, d: int) -> Any:
    """The :class:`kvprism.energy.LaserSolution` of the laser the config uses (``laser_line_dbm`` per line at the
    chip input, through the engine's link budget), for the energy model: the scores' noise was that of this power."""
    from kvprism.energy import LaserSolution
    from kvprism.energy.chip import enob_to_snr_db
    from kvprism.photonics import link
    from kvprism.photonics.design import ChipDesign, score_snr_db

    design = ChipDesign.from_config(cfg, d)
    budget = design.link
    line_dbm = leaf(cfg, "laser_line_dbm")
    laser_w = link.dbm_to_w(line_dbm)
    row_w = laser_w / 10.0 ** (budget.total_loss_db / 10.0)
    cap_w = design.laser_cap_w
    return LaserSolution(
        target_snr_db=enob_to_snr_db(leaf(cfg, "required_score_enob")), snr_ceiling_db=math.nan,
        limited_by="configured", row_line_w=row_w, link_loss_db=budget.total_loss_db, laser_line_w=laser_w,
        configured_laser_line_dbm=line_dbm, d=d, wall_plug_efficiency=leaf(cfg, "laser_wall_plug_efficiency"),
        cap_laser_line_w=cap_w, achieved_snr_db=score_snr_db(cfg, design, row_w), feasible=laser_w <= cap_w,
        reason="" if laser_w <= cap_w else f"{line_dbm:g} dBm per line exceeds the power caps",
    )  # fmt: skip


def default_latency_budget_s(shape: Any, context: int, ecfg: Any) -> float:
    """Added latency allowed per decode step [s] — assumption: 10 % of the modelled dense decode step (model
    weights + the whole KV cache read once from HBM, :func:`kvprism.energy.gpu_step`) at ``context``."""
    from kvprism.energy import gpu_step

    g = gpu_step(shape, context, ecfg)
    return 0.1 * g.time_s(g.weight_bytes + g.dense_bytes)


def select_candidates(idx: torch.Tensor, lo: int, hi: int, k: int) -> torch.Tensor:
    """From ``idx [..., k + m]`` (best first) keep the first ``k`` rows inside ``[lo, hi)`` -> ``[..., k]``."""
    ok = (idx >= lo) & (idx < hi)
    order = torch.sort((~ok).to(torch.int8), dim=-1, stable=True).indices[..., :k]
    out = torch.gather(idx, -1, order)
    if not bool(torch.gather(ok, -1, order).all()):
        raise KvprismError("fewer than k candidate rows among the selected rows")
    return out


def recall_at_k(selected: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean of |selected ∩ reference| / k over the leading dims; ``selected``, ``reference`` ``[..., k]``."""
    k = reference.shape[-1]
    hits = (selected.unsqueeze(-1) == reference.unsqueeze(-2)).any(-1).sum(-1).float()
    return float(hits.mean() / k)


def _bank_data(ref: ReferenceSet, d_sig: int, max_banks: int) -> tuple[torch.Tensor, ...]:
    sig = ref.signatures[d_sig].flatten(0, 1)
    qry = ref.queries[d_sig].flatten(0, 1)
    top = ref.topk[d_sig].flatten(0, 1)
    att = ref.attn_topk.flatten(0, 1)
    if max_banks:
        sig, qry, top, att = sig[:max_banks], qry[:max_banks], top[:max_banks], att[:max_banks]
    return sig, qry, top, att


# ------------------------------------------------------------------------------------------------- evaluate
def evaluate(
    cfg: Any,
    ref: ReferenceSet,
    d_sig: int | None = None,
    settings: ObjectiveSettings | None = None,
    ecfg: Any = None,
    *,
    with_energy: bool = True,
) -> TrialResult:
    """Evaluate the design point ``cfg`` on ``ref`` (see the module docstring). ``d_sig`` picks the reference
    signatures (default: the one whose width equals ``cfg.n_lines``); ``cfg.n_lines`` is set to that width.
    ``ecfg``: an :class:`kvprism.energy.EnergyConfig` whose block size, k and d_sig are replaced by the reference
    set's and this call's."""
    from kvprism.energy import EnergyConfig, decode_step, model_shape
    from kvprism.photonics import PhotonicEngine

    s = settings or ObjectiveSettings()
    if d_sig is None:
        match = [d for d in ref.d_sigs if ref.width(d) == leaf(cfg, "n_lines")]
        if not match:
            raise KvprismError(
                f"n_lines = {leaf(cfg, 'n_lines')} matches no signature width of the reference set "
                f"({', '.join(str(ref.width(d)) for d in ref.d_sigs)}); pass d_sig"
            )
        d_sig = match[0]
    ref.check_d(d_sig)
    if s.k > ref.params.k_max:
        raise KvprismError(f"k = {s.k} exceeds the reference set's k_max = {ref.params.k_max}")
    w = ref.width(d_sig)
    if leaf(cfg, "n_lines") != w:
        cfg = cfg.replace(n_lines=w)
    shape = model_shape(s.shape)
    from kvprism.photonics.architecture import Architecture

    arch = Architecture.parse(s.architecture)
    timing, timed = None, {}
    if s.tokens_per_s is not None:
        from kvprism.photonics.design import decode_timing, timed_by_decode

        timing = decode_timing(cfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=s.tokens_per_s,
                               context=s.contexts[0], block_size=ref.params.block_size, d=w,
                               model=shape.name, architecture=arch)  # fmt: skip
        timed_cfg = timed_by_decode(cfg, timing)
        timed = {f: leaf(timed_cfg, f) for f in ("detection_bandwidth_hz", "calibration_age_s", "code_refresh",
                                                 "rows_per_bank", "n_banks")
                 if leaf(timed_cfg, f) != leaf(cfg, f)}  # fmt: skip
        cfg = timed_cfg
    t0 = time.perf_counter()
    sig, qry, top, att = _bank_data(ref, d_sig, s.max_banks)
    lo, hi = ref.candidate_range
    n = sig.shape[-2]
    eng = PhotonicEngine(cfg, seed=s.engine_seed)
    if arch.kind == "two-level":
        chosen = _two_level_select(eng, sig, qry, arch.superblock, s.k, s.rerank, lo, hi)
        t1 = time.perf_counter()
    else:
        eng.program(sig)
        t1 = time.perf_counter()
        m = min(s.rerank * s.k, hi - lo)  # the chip's candidates (k, or rerank*k for two-stage selection)
        idx = eng.select(qry, min(n, m + n - (hi - lo)))  # [B, n_q, m + rows outside the candidates]
        chosen = select_candidates(idx, lo, hi, m)
        if m > s.k:  # the electronics rescores the chip's candidates exactly from the signatures in memory
            exact = torch.gather(qry @ sig.transpose(-1, -2), -1, chosen)
            order = torch.sort(exact, dim=-1, descending=True, stable=True).indices[..., : s.k]
            chosen = torch.gather(chosen, -1, order)
    recall = recall_at_k(chosen, top[..., : s.k])
    block_recall = recall_at_k(chosen, att[..., : s.k])
    t2 = time.perf_counter()
    from kvprism.photonics.feasibility import feasibility, report

    rep = report(eng) if timing is None else feasibility(cfg, d=w, seed=s.engine_seed, timing=timing)
    t3 = time.perf_counter()
    base = ecfg or EnergyConfig()
    ecfg = base.replace(block_size=ref.params.block_size, k=s.k, d_sig=w, rerank=s.rerank, architecture=arch.kind,
                        superblock=arch.superblock)  # fmt: skip
    if s.tokens_per_s is not None:  # the energy's time line at the same decode rate as the chip's timing
        ecfg = ecfg.replace(tokens_per_s=s.tokens_per_s)
    budget = s.latency_budget_s or default_latency_budget_s(shape, s.contexts[0], ecfg)
    energy: dict[int, float] = {}
    baselines: dict[str, float] = {}
    sel_energy = added = math.nan
    if with_energy:
        from kvprism.energy.gpu import electronic_baselines

        baselines = {n: b.energy_j for n, b in electronic_baselines(shape, s.contexts[0], ecfg).items()}
        laser = configured_laser(cfg, w)
        for c in s.contexts:
            step = decode_step(cfg, ecfg, shape, c, laser=laser)
            energy[c] = step.photonic_total_energy_j
            if c == s.contexts[0]:
                sel_energy = step.photonic_total_energy_j - step.photonic_energy_j["kv_fetch"]
                added = step.added_latency_s
    t4 = time.perf_counter()
    area = _get(rep, "area_m2")
    if area is not None:  # the whole chip: photonic die + its electronics
        area += _get(rep, "electronic_area_m2") or 0.0
    return TrialResult(
        recall=recall, block_recall=block_recall, energy_j=energy.get(s.contexts[0], math.nan),
        selection_energy_j=sel_energy, energy_by_context_j=energy, area_m2=math.nan if area is None else area,
        added_latency_s=added, latency_budget_s=budget, violations=list(rep.violations),
        constraints=constraint_values(rep, cfg, added if with_energy else 0.0, budget), d_sig=d_sig, k=s.k,
        seconds={"program": t1 - t0, "select": t2 - t1, "feasibility": t3 - t2, "energy": t4 - t3},
        counters=dict(eng.counters), timed_fields=timed, baseline_energy_j=baselines,
    )  # fmt: skip


def _two_level_select(
    eng: Any, sig: torch.Tensor, qry: torch.Tensor, s: int, k: int, rerank: int, lo: int, hi: int
) -> torch.Tensor:
    """Two-level selection on ``eng``: program the super-block signatures (mean of ``s`` consecutive block
    signatures of ``sig [B, N, w]``), let the chip pick ``min(rerank·k, super-blocks)`` super-blocks per query
    (``qry [B, n_q, w]``), then keep the ``k`` best candidate blocks (``[lo, hi)``) by exact score among the blocks of
    the chosen super-blocks and of the open super-block -> ``[B, n_q, k]`` block indices (a slot with fewer than k
    such blocks repeats an index outside the candidates: a miss)."""
    bk, n, w = sig.shape
    n_sup = max(1, n // s)
    full = min(n, n_sup * s)
    sup = sig[:, :full].reshape(bk, n_sup, -1, w).mean(dim=2)
    eng.program(sup)
    picked = eng.select(qry, min(rerank * k, n_sup))  # [B, n_q, m] super-block indices
    owner = torch.arange(n) // s  # super-block of each block (blocks ≥ full: the open one)
    inside = (owner.view(1, 1, 1, n) == picked.unsqueeze(-1)).any(-2) | (torch.arange(n) >= full)
    blocks = torch.arange(n)
    ok = inside & (blocks >= lo) & (blocks < hi)
    exact = (qry @ sig.transpose(-1, -2)).masked_fill(~ok, -math.inf)
    return exact.topk(k, dim=-1).indices


def exact_recall(ref: ReferenceSet, d_sig: int, k: int, max_banks: int = 0) -> float:
    """Recall@k of exact fp32 scoring through the same candidate selection (1.0 unless exact scores tie across
    the k-th place): the check that the reference and the selection agree."""
    from kvprism.search.capture import exact_topk

    sig, qry, top, _ = _bank_data(ref, d_sig, max_banks)
    lo, hi = ref.candidate_range
    scores = qry @ sig.transpose(-1, -2)
    return recall_at_k(exact_topk(scores, lo, hi, k), top[..., :k])
