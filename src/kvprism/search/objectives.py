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
- **added latency per step** (minimise): the chip's time line over all layers + the selection's HBM reads (drive
  codes paged in, candidate signatures rescored): what the selection adds to a decode step (the fetch of the selected
  blocks is paid by every block-sparse method), checked against the latency budget.
- **constraints**: the number of violated feasibility constraints (``feasibility()``: authoritative), a graded margin
  of each of them (:func:`constraint_margins`: to guide the search and to name the binding constraint of an
  infeasible point; clipped to ≤ 0 when ``feasibility()`` passes) and the latency budget. A value > 0 means
  infeasible.

**The latency budget** (one definition). Timed (``tokens_per_s`` = R): the selection share of the decode step,
``selection_time_fraction / R`` — the same budget the timed ``feasibility()`` holds the chip's time line to. The
whole selection must fit it: the chip is timed (:func:`kvprism.photonics.design.decode_timing`) on the share less the
selection's HBM reads (code paging, rescoring reads; serial with the chip), so the chip's time line fits exactly when
the added latency does, and a point that needs more time violates both. There is no other latency budget when timed
(``latency_budget_s`` is rejected). Untimed: no decode rate defines a step, so the budget is an assumption,
``latency_budget_s`` or :func:`default_latency_budget_s` (10 % of a modelled GPU dense step); untimed points are not
feasibility verdicts.

**Sections.** A point is *one-stage* when the chip's top-k is the selection (``rerank = 1``, time-shared or resident
banks) and *two-stage* when the electronics rescores the chip's candidates exactly (``rerank > 1``, or any two-level
chip, whose block selection is always an exact rescoring inside the chosen super-blocks). Both are judged by the same
timed ``feasibility()`` constraints (:data:`ONE_STAGE_CRITERIA`, :data:`TWO_STAGE_CRITERIA`): rescoring relaxes no
chip requirement; it adds its HBM reads to the latency and its reads and FLOPs to the energy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.search.capture import ReferenceSet
from kvprism.search.space import leaf

__all__ = [
    "MARGIN_NAMES",
    "ONE_STAGE_CRITERIA",
    "TWO_STAGE_CRITERIA",
    "Margin",
    "ObjectiveSettings",
    "TrialResult",
    "configured_laser",
    "constraint_margins",
    "default_latency_budget_s",
    "evaluate",
    "exact_recall",
    "recall_at_k",
    "section_of",
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
    ``latency_budget_s`` must be None when ``tokens_per_s`` is given (the module docstring: one budget);
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
        if self.latency_budget_s is not None and self.tokens_per_s is not None:
            raise KvprismError(
                "latency_budget_s conflicts with tokens_per_s: a timed point's latency budget is the selection share "
                "of the decode step (selection_time_fraction / tokens_per_s, as the timed feasibility); change "
                "selection_time_fraction of the base preset instead"
            )
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
    #: graded margin of every feasibility constraint (:func:`constraint_margins`: name -> value, limit, unit, margin;
    #: margin > 0: violated) and of the latency budget
    margins: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    architecture: str = "time-shared"
    rerank: int = 1
    #: timed: the selection share of the step (s), the selection's HBM reads inside it (s) and the chip's share
    #: (the rest); untimed: 0
    selection_share_s: float = 0.0
    hbm_reads_s: float = 0.0
    #: rows the chip selects per bank and query (k, rerank·k, or super-blocks) over the rows it ranks on the
    #: reference set: 1.0 means the chip chose every row and the recall says nothing about the chip
    chip_choice_fraction: float = 0.0

    @property
    def section(self) -> str:
        """'one-stage' or 'two-stage' (:func:`section_of`)."""
        return section_of(self.architecture, self.rerank)

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
        out["section"] = self.section
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


ONE_STAGE_CRITERIA = (
    "one-stage: the chip's top-k is the selection (rerank 1; time-shared or resident banks). Feasible = every "
    "constraint of the timed feasibility() at (model shape, decode rate, context) holds — weights within the ring's "
    "reach, drive swing ≤ V_max, comb span ≤ FSR, neighbour leakage, trim residual and trim range, held trim-heater "
    "power, optical power caps, PD sensitivity, symbol ≥ photon lifetime, ADC rate, score ENOB ≥ "
    "required_score_enob, Monte Carlo recall ≥ required_recall, weight precision ≥ required_weight_bits, photonic and "
    "electronic area (die stacks per package when resident), the chip's time line within the selection share and "
    "the background work within the idle share — and the added latency (chip time line + HBM reads of paged drive "
    "codes) ≤ the selection share selection_time_fraction / R."
)
TWO_STAGE_CRITERIA = (
    "two-stage: the electronics rescores the chip's candidates exactly (rerank > 1: the chip proposes rerank·k "
    "blocks; two-level: the chip picks rerank·k super-blocks and every block inside them is rescored). Feasible = the "
    "same timed feasibility() constraints as one-stage, unchanged (no chip requirement is relaxed for rescoring), and "
    "the added latency (chip time line + HBM reads of paged codes and of the rescored signatures) ≤ the same "
    "selection share; the rescoring's reads and FLOPs are in the selection energy, and recall is measured after "
    "rescoring."
)


def section_of(architecture: str, rerank: int) -> str:
    """'two-stage' when the electronics rescores the chip's candidates (``rerank > 1`` or a two-level chip),
    else 'one-stage'."""
    return "two-stage" if rerank > 1 or str(architecture).startswith("two-level") else "one-stage"


@dataclasses.dataclass(frozen=True)
class Margin:
    """One constraint's graded margin: ``value`` against ``limit`` (in ``unit``, the sense ``"≤"`` or ``"≥"``);
    ``margin`` > 0 means violated: ``value / limit − 1`` (≤) or ``1 − value / limit`` (≥) for ratios, the
    difference / 10 dB for decibels."""

    name: str
    value: float
    limit: float
    unit: str
    sense: str
    margin: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "limit": self.limit, "unit": self.unit, "sense": self.sense,
                "margin": self.margin}  # fmt: skip


def _attr(obj: Any, *path: str) -> Any:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _ratio(name: str, value: Any, limit: Any, unit: str, sense: str = "≤", scale: float = 1.0) -> Margin | None:
    """Margin of ``value sense limit`` as a relative excess (shown ×``scale`` in ``unit``); None when unknown."""
    if value is None or limit is None or isinstance(value, bool):
        return None
    v, lim = float(value), float(limit)
    if lim == 0.0:
        m = (math.inf if v > 0 else -math.inf) if sense == "≤" else (math.inf if v < 0 else -math.inf)
    else:
        m = v / lim - 1.0 if sense == "≤" else 1.0 - v / lim
    if math.isnan(m):
        m = math.inf
    return Margin(name, v * scale, lim * scale, unit, sense, m)


def _db(name: str, value: Any, limit: Any, unit: str, sense: str) -> Margin | None:
    if value is None or limit is None:
        return None
    v, lim = float(value), float(limit)
    m = (v - lim) / 10.0 if sense == "≤" else (lim - v) / 10.0
    return Margin(name, v, lim, unit, sense, math.inf if math.isnan(m) else m)


#: every constraint name :func:`constraint_margins` may return (each trial records all of them: 0 where one does
#: not apply, e.g. the package checks of a time-shared chip)
MARGIN_NAMES = (
    "weight_reach", "drive_swing", "comb_span", "leakage", "trim_residual", "trim_range", "pd_power", "power_caps",
    "symbol_vs_photon_lifetime", "adc_rate", "score_enob", "recall_mc", "weight_bits", "time_line", "background",
    "dies_per_package", "heater_power", "photonic_area", "electronic_area",
)  # fmt: skip


def constraint_margins(report: Any, cfg: Any = None) -> dict[str, Margin]:
    """A graded :class:`Margin` for each constraint that ``feasibility()`` checks, from its report (the conditions
    of :func:`kvprism.photonics.feasibility.feasibility` restated as value against limit; ``cfg`` defaults to the
    report's timed config). A constraint whose quantities the report lacks is left out; ``violations`` stays the
    authoritative verdict."""
    ds = _attr(report, "design")
    c = _attr(ds, "config") or cfg
    out: list[Margin | None] = []
    w_min, w_max, target = _attr(ds, "w_min"), _attr(ds, "w_max"), _attr(c, "weight_range_target")
    if w_min is not None and w_max is not None:
        out.append(_ratio("weight_reach", min(-w_min, w_max), target, "", "≥"))
    out.append(_ratio("drive_swing", _attr(report, "required_swing_v"), _attr(report, "v_max_v"), "V"))
    out.append(_ratio("comb_span", _attr(report, "comb_span_m"), _attr(report, "fsr_m"), "nm", scale=1e9))
    out.append(_db("leakage", _attr(report, "worst_leakage_db"), _attr(report, "leakage_limit_db"), "dB", "≤"))
    sigma = _attr(c, "trim_sigma_m")
    if sigma is not None and ds is not None:
        if c.feedback_calibration:
            out.append(_ratio("trim_residual", 3.0 * sigma, 0.5 * ds.eo_range_m, "pm (3σ vs EO range / 2)", scale=1e12))
        else:
            out.append(_ratio("trim_residual", sigma, 0.25 * ds.fwhm_m, "pm (σ vs FWHM / 4)", scale=1e12))
    trim = _attr(report, "trim")
    if trim is not None:
        out.append(_ratio("trim_range", trim.needed_m, trim.range_m, "nm", scale=1e9))
    out.append(_db("pd_power", _attr(report, "received_pd_dbm"), _attr(ds, "pd_sensitivity_dbm"), "dBm", "≥"))
    caps = [_ratio("power_caps", lim.value, lim.cap, f"{'mW' if lim.unit == 'W' else 'mA'} ({lim.name})", scale=1e3)
            for lim in _attr(ds, "power_limits") or ()]  # fmt: skip
    out.append(max((m for m in caps if m is not None), key=lambda m: m.margin, default=None))  # the binding cap
    if ds is not None:
        out.append(_ratio("symbol_vs_photon_lifetime", ds.integration_time_s, ds.photon_lifetime_s, "ps", "≥",
                          scale=1e12))  # fmt: skip
        out.append(_ratio("adc_rate", ds.adc_rate_hz, _attr(c, "adc_sample_rate_hz"), "S/s"))
    out.append(_ratio("score_enob", _attr(report, "score_enob_bits"), _attr(c, "required_score_enob"), "bit", "≥"))
    out.append(_ratio("recall_mc", _attr(report, "recall_at_k"), _attr(c, "required_recall"), "", "≥"))
    out.append(_ratio("weight_bits", _attr(report, "weight_bits"), _attr(c, "required_weight_bits"), "bit", "≥"))
    timing = _attr(report, "timing")
    resident = timing is not None and bool(timing.chip_banks)
    if timing is not None and ds is not None:
        # the shortest time line: queries at the shortest symbol (fits exactly when this is within the budget)
        floor = max(ds.ring_settling_s(c.adc_bits), 1.0 / c.adc_sample_rate_hz)
        shortest = timing.query_s * min(1.0, floor / timing.integration_time_s) if timing.integration_time_s > 0 else 0
        out.append(_ratio("time_line", timing.write_s + timing.calibration_s + shortest, timing.budget_s, "ms",
                          scale=1e3))  # fmt: skip
        if resident:
            out.append(_ratio("background", timing.background_s, timing.idle_s, "ms", scale=1e3))
    if resident and ds is not None:
        dies = max(ds.photonic_area_m2 / c.max_chip_area_m2, ds.electronic_area_m2 / c.max_electronic_area_m2)
        out.append(_ratio("dies_per_package", dies, timing.max_dies, "reticle dies"))
        if trim is not None and trim.mechanism == "heater":
            p_dies = max(1, math.ceil(ds.photonic_area_m2 / c.max_chip_area_m2 - 1e-12))
            out.append(_ratio("heater_power", trim.chip_power_w / p_dies, c.trim_max_chip_power_w, "W per die"))
    elif ds is not None:
        if trim is not None and trim.mechanism == "heater":
            out.append(_ratio("heater_power", trim.chip_power_w, c.trim_max_chip_power_w, "W"))
        out.append(_ratio("photonic_area", ds.photonic_area_m2, c.max_chip_area_m2, "mm²", scale=1e6))
        out.append(_ratio("electronic_area", ds.electronic_area_m2, c.max_electronic_area_m2, "mm²", scale=1e6))
    return {m.name: m for m in out if m is not None}


def _finite(x: float) -> float:
    if math.isnan(x):
        return _CLIP
    return max(-_CLIP, min(_CLIP, x))


def constraint_values(report: Any, cfg: Any, added_latency_s: float, budget_s: float) -> dict[str, float]:
    """Every constraint of the search (> 0: violated; finite): ``violations`` = the number of violated
    feasibility constraints, the graded margin of each of :data:`MARGIN_NAMES` (0 where it does not apply; clipped to
    ≤ 0 when ``feasibility()`` passes, so that "feasible for the search" is exactly "``feasibility()`` passes and the
    latency budget holds") and ``latency_budget`` (added latency / budget − 1)."""
    n_viol = len(report.violations)
    margins = constraint_margins(report, cfg)
    out = {"violations": float(n_viol)}
    for name in MARGIN_NAMES:
        v = _finite(margins[name].margin) if name in margins else 0.0
        out[name] = v if n_viol else min(v, 0.0)
    out["latency_budget"] = _latency_margin(added_latency_s, budget_s)
    return out


def _latency_margin(added_s: float, budget_s: float) -> float:
    """added / budget − 1, with a relative tolerance of 1e-9 (a timed chip fills its share to rounding)."""
    m = added_s / budget_s - 1.0
    return _finite(min(m, 0.0) if m <= 1e-9 else m)


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
    base = ecfg or EnergyConfig()
    ecfg = base.replace(block_size=ref.params.block_size, k=s.k, d_sig=w, rerank=s.rerank, architecture=arch.kind,
                        superblock=arch.superblock)  # fmt: skip
    timing, timed = None, {}
    share = reads = 0.0
    if s.tokens_per_s is not None:
        from kvprism.photonics.design import decode_timing, timed_by_decode

        # one latency budget: the selection share of the step at this rate; the chip gets it less the selection's
        # HBM reads (code paging, rescoring), which are serial with it (the module docstring)
        ecfg = ecfg.replace(tokens_per_s=s.tokens_per_s)
        fraction = leaf(cfg, "selection_time_fraction")
        share = fraction / s.tokens_per_s
        lat = decode_step(cfg, ecfg, shape, s.contexts[0]).photonic_latency_s
        reads = lat.get("paging", 0.0) + lat.get("rerank", 0.0)
        untimed = cfg
        if reads > 0:
            cfg = cfg.replace(selection_time_fraction=max(fraction - reads * s.tokens_per_s, 1e-9 * fraction))
        queries = shape.group if ecfg.gqa_reduce == "max" else 1  # as decode_step times the chip
        timing = decode_timing(cfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=s.tokens_per_s,
                               context=s.contexts[0], block_size=ref.params.block_size, queries_per_head=queries,
                               batch=ecfg.batch, d=w, model=shape.name, architecture=arch)  # fmt: skip
        timed_cfg = timed_by_decode(cfg, timing)
        timed = {f: leaf(timed_cfg, f) for f in ("detection_bandwidth_hz", "calibration_age_s", "code_refresh",
                                                 "rows_per_bank", "n_banks", "selection_time_fraction")
                 if leaf(timed_cfg, f) != leaf(untimed, f)}  # fmt: skip
        cfg = timed_cfg
    t0 = time.perf_counter()
    sig, qry, top, att = _bank_data(ref, d_sig, s.max_banks)
    lo, hi = ref.candidate_range
    n = sig.shape[-2]
    eng = PhotonicEngine(cfg, seed=s.engine_seed)
    if arch.kind == "two-level":
        chosen = _two_level_select(eng, sig, qry, arch.superblock, s.k, s.rerank, lo, hi)
        n_sup = max(1, n // arch.superblock)
        choice = min(s.rerank * s.k, n_sup) / n_sup
        t1 = time.perf_counter()
    else:
        eng.program(sig)
        t1 = time.perf_counter()
        m = min(s.rerank * s.k, hi - lo)  # the chip's candidates (k, or rerank*k for two-stage selection)
        choice = m / (hi - lo)
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
    budget = (
        share if timing is not None else (s.latency_budget_s or default_latency_budget_s(shape, s.contexts[0], ecfg))
    )
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
    elif timing is not None:  # the latency constraint still holds the chip's time line and the reads to the share
        added = timing.needed_s + reads
    t4 = time.perf_counter()
    area = _get(rep, "area_m2")
    if area is not None:  # the whole chip: photonic die + its electronics
        area += _get(rep, "electronic_area_m2") or 0.0
    margins = {name: mg.to_json() for name, mg in constraint_margins(rep, cfg).items()}
    if math.isfinite(added):
        margins["latency_budget"] = Margin("latency_budget", added * 1e3, budget * 1e3, "ms", "≤",
                                           _latency_margin(added, budget)).to_json()  # fmt: skip
    return TrialResult(
        recall=recall, block_recall=block_recall, energy_j=energy.get(s.contexts[0], math.nan),
        selection_energy_j=sel_energy, energy_by_context_j=energy, area_m2=math.nan if area is None else area,
        added_latency_s=added, latency_budget_s=budget, violations=list(rep.violations),
        constraints=constraint_values(rep, cfg, added if math.isfinite(added) else 0.0, budget), d_sig=d_sig, k=s.k,
        seconds={"program": t1 - t0, "select": t2 - t1, "feasibility": t3 - t2, "energy": t4 - t3},
        counters=dict(eng.counters), timed_fields=timed, baseline_energy_j=baselines, margins=margins,
        architecture=arch.label, rerank=s.rerank, selection_share_s=share, hbm_reads_s=reads,
        chip_choice_fraction=choice,
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
