"""Multi-objective design search with optuna: NSGA-II (seeded), SQLite storage (an interrupted search resumes),
the space of :mod:`kvprism.search.space`, the objectives and constraints of :mod:`kvprism.search.objectives`.

Each trial draws the searched parameters, sets them on a base preset (default ``tfln-literature``: every value not
searched keeps its sourced value), evaluates the point on the reference set and records four objectives — signature
recall@k (↑), energy per decode step (↓), chip area (↓), added latency per step (↓) — and every constraint with
``Trial.set_constraint`` (> 0: infeasible; optuna's NSGA-II ranks feasible points first and ``best_trials`` holds
only feasible ones). A parameter combination the config rejects (e.g. a Q above the intrinsic Q) is a *pruned*
trial with the reason in its ``invalid`` attribute.

Resuming: ``run_search`` with the same storage and study name runs until the study holds ``n_trials`` finished
trials; trials left *running* by a killed process are marked failed first (one process per study). The sampler is
seeded, so a search that is not interrupted is reproducible; a resumed one continues from the stored population.

Outputs (:func:`write_outputs`): ``pareto.json`` (every trial: parameters, objectives, constraints, feasibility,
Pareto membership), ``pareto.png`` (recall vs energy, area as colour, infeasible points grey), one TOML preset per
chosen Pareto point (loads with ``PhotonicConfig.from_toml``; ``[meta]`` says where it came from and its recall),
and a rich table (:func:`pareto_table`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvprism.atomic import atomic_write
from kvprism.errors import ConfigError, KvprismError
from kvprism.eval.executor import LocalExecutor
from kvprism.search.capture import ReferenceSet
from kvprism.search.objectives import (
    DIRECTIONS,
    OBJECTIVE_NAMES,
    ONE_STAGE_CRITERIA,
    TWO_STAGE_CRITERIA,
    ObjectiveSettings,
    evaluate,
    section_of,
)
from kvprism.search.space import ARCHITECTURE, D_SIG, RERANK, SPACE, Dim, active_space, space_table

__all__ = [
    "SECTIONS",
    "SearchResult",
    "base_config",
    "binding_constraints",
    "closest_points",
    "config_of",
    "markdown_report",
    "pareto_table",
    "pareto_trials",
    "preset_toml",
    "run_search",
    "write_outputs",
    "write_preset",
]

STUDY_NAME = "kvprism-design"
#: the report's sections and their criteria (:mod:`kvprism.search.objectives`)
SECTIONS = {"one-stage": ONE_STAGE_CRITERIA, "two-stage": TWO_STAGE_CRITERIA}


def _optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise KvprismError(f"kvprism design search needs optuna ({exc}); pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclasses.dataclass
class SearchResult:
    """A finished (or resumed) search: the optuna study and what it was run with."""

    study: Any
    base: str
    base_config: Any
    settings: ObjectiveSettings
    space: list[Dim]
    left_out: list[Dim]
    reference: dict[str, Any]

    @property
    def pareto(self) -> list[Any]:
        return pareto_trials(self.study)


def base_config(base: Any) -> tuple[Any, str]:
    """``(PhotonicConfig, label)`` of ``--base``: a config, a preset TOML file or a shipped preset name."""
    from kvprism.photonics import PhotonicConfig

    if isinstance(base, PhotonicConfig):
        return base, "custom"
    if Path(str(base)).suffix == ".toml":
        return PhotonicConfig.from_toml(base), str(base)
    return PhotonicConfig.preset(str(base)), str(base)


def config_of(trial: Any, base: Any) -> Any:
    """The :class:`PhotonicConfig` of a finished trial: the base (a config, preset name or TOML file) with the
    trial's field values."""
    cfg, _ = base_config(base)
    return cfg.replace(**trial.user_attrs["fields"])


def _active(d: Dim, params: dict[str, Any], base_cfg: Any) -> bool:
    """A conditional row (``when``) is drawn only when its condition holds (the other row as drawn, else the
    base's value)."""
    if d.when is None:
        return True
    name, want = d.when
    if name in params:
        return params[name] == want
    row = next((r for r in SPACE if r.name == name), None)
    return base_cfg is not None and row is not None and getattr(base_cfg, row.field, None) == want


def _fields(dims: Sequence[Dim], params: dict[str, Any], ref: ReferenceSet, base_cfg: Any = None) -> dict[str, Any]:
    """Config field values of drawn ``params`` (keyed by optuna parameter name). Raises ConfigError when a row
    cut to its reach (``Dim.reach``) has no reachable value."""
    from kvprism.search.space import comb_spacing_max_m, q_in_reach, reachable_q_max

    out = {}
    for d in dims:
        if d.name in (ARCHITECTURE, RERANK):  # not config fields: passed to the objectives beside the config
            continue
        if d.param_name not in params:  # a conditional row not drawn
            if d.when is not None and d.otherwise is not None:
                out[d.field] = d.otherwise
            continue
        v = params[d.param_name]
        if d.reach:
            radius = out.get("ring_radius_m", getattr(base_cfg, "ring_radius_m", None))
            if d.reach == "q":
                top, why = reachable_q_max(base_cfg, radius), "the bend loss at that radius"
            else:
                lines = out.get("n_lines", getattr(base_cfg, "n_lines", 1))
                top, why = comb_spacing_max_m(base_cfg, radius, lines) / d.to_si, f"{lines} lines within one FSR"
            x = q_in_reach(d, v, top)
            if x is None:
                raise ConfigError(
                    f"{d.field}: no value in [{d.low:g}, {d.high:g}] {d.unit} is allowed at ring radius "
                    f"{radius * 1e6:.3g} µm (at most {top:.3g}: {why})"
                )
            out[d.field] = x * (d.to_si if d.kind == "float" else 1.0)
            continue
        out[d.field] = ref.width(v) if d.name == D_SIG else d.field_value(v)
        if d.field == "ring_radius_m":  # pitch and electrode capacitance follow the ring drawn
            from kvprism.search.space import radius_fields

            out.update(radius_fields(out[d.field], type(base_cfg) if base_cfg is not None else None))
    return out


def _base_params(dims: Sequence[Dim], cfg: Any, ref: ReferenceSet) -> dict[str, Any] | None:
    """The base config as trial parameters (keyed by optuna parameter name), or None when a value is outside the
    space."""
    import math

    from kvprism.search.space import comb_spacing_max_m, reachable_q_max

    out: dict[str, Any] = {}
    for d in dims:
        if d.name == ARCHITECTURE:
            out[d.name] = "time-shared"  # the base preset's banks
            continue
        if d.name == RERANK:
            out[d.name] = 1  # one-stage
            continue
        if not _active(d, {k: v for k, v in out.items()}, cfg):
            continue
        v = getattr(cfg, d.field)
        if d.name == D_SIG:
            match = [s for s in ref.d_sigs if ref.width(s) == v]
            if not match:
                return None
            out[d.name] = match[0]
        elif d.kind == "categorical":
            if v not in (d.choices or ()):
                return None
            out[d.name] = v
        elif d.reach:
            if d.reach == "q":
                hi = min(d.high, reachable_q_max(cfg, cfg.ring_radius_m))
            else:
                hi = min(d.high, comb_spacing_max_m(cfg, cfg.ring_radius_m, cfg.n_lines) / d.to_si)
            x = v / d.to_si if d.kind == "float" else v
            if not d.low <= x <= hi or hi <= d.low:
                return None
            out[d.param_name] = (math.log(x) - math.log(d.low)) / (math.log(hi) - math.log(d.low))
        else:
            x = v / d.to_si if d.kind == "float" else v
            if not d.low * (1 - 1e-9) <= x <= d.high * (1 + 1e-9):
                return None
            out[d.name] = min(max(x, d.low), d.high) if d.kind == "float" else int(x)
    return out


def evaluate_trial(ref: ReferenceSet, settings: ObjectiveSettings, unit: tuple[Any, ...]) -> list[dict]:
    """Evaluate one asked trial ``(number, config, d_sig[, architecture[, rerank]])``: ``[{"result": ...}]`` or
    ``[{"error": ...}]`` when the chip model failed on the point (recorded and reported, never scored). Runs wherever
    the executor puts it."""
    _, cfg, d_sig, *rest = unit
    if rest and rest[0] is not None:  # the searched architecture replaces the settings' one
        settings = dataclasses.replace(settings, architecture=rest[0])
    if len(rest) > 1 and rest[1] is not None:  # the searched rerank factor
        settings = dataclasses.replace(settings, rerank=int(rest[1]))
    try:
        res = evaluate(cfg, ref, d_sig, settings)
    except Exception as exc:
        return [{"error": f"{type(exc).__name__}: {exc}"}]
    return [{"result": res}]


def _trial_worker(ref: ReferenceSet, settings: ObjectiveSettings) -> Any:
    """A worker's trial evaluator (built once per worker by the executor; picklable for Ray)."""
    return functools.partial(evaluate_trial, ref, settings)


def _collect(results: dict[int, dict[str, Any]], unit: tuple[int, Any, Any], out: list[dict[str, Any]]) -> None:
    results[unit[0]] = out[0]


def _tell(study: Any, trial: Any, out: dict[str, Any] | None, optuna: Any) -> None:
    """Record one evaluated (or invalid) trial in the study."""
    from optuna.trial import TrialState

    if out is None:  # rejected by the config: pruned, the reason is its 'invalid' attribute
        study.tell(trial, state=TrialState.PRUNED)
        return
    if "error" in out:
        trial.set_user_attr("error", out["error"])
        study.tell(trial, state=TrialState.PRUNED)
        return
    res = out["result"]
    for name, value in res.constraints.items():
        trial.set_constraint(name, value)
    trial.set_user_attr("result", json.loads(json.dumps(res.to_json(), default=float)))
    trial.set_user_attr("feasible", res.feasible)
    study.tell(trial, res.objectives())


def run_search(
    ref: ReferenceSet,
    n_trials: int,
    *,
    seed: int = 0,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    base: Any = "tfln-literature",
    settings: ObjectiveSettings | None = None,
    space: Sequence[Dim] = SPACE,
    fixed: Sequence[str] = (),
    population_size: int = 24,
    enqueue_base: bool = True,
    show_progress: bool = False,
    executor: Any = None,
    batch: int | None = None,
    reranks: Sequence[int] | None = None,
) -> SearchResult:
    """Run (or resume) the search until the study holds ``n_trials`` finished trials (see the module docstring).
    ``storage``: an optuna storage URL (``sqlite:///path.db``) or None (in memory). ``executor``: where trials are
    evaluated (:mod:`kvprism.eval.executor`; default in this process); ``batch``: trials asked before the results
    are told (default 1 in process, the worker count on Ray) -- the search is reproducible for a seed and a batch
    size, whichever executor evaluates it. ``reranks``: the rerank factors searched (the space's row, default 1, 2,
    4); one factor, or a space without the row, or ``rerank`` in ``fixed``: ``settings.rerank`` for every point."""
    optuna = _optuna()
    from optuna.trial import TrialState

    if n_trials < 1:
        raise KvprismError(f"--trials = {n_trials} is invalid; allowed range: [1, inf)")
    if population_size < 2:
        raise KvprismError(f"population_size = {population_size} is invalid; allowed range: [2, inf)")
    s = settings or ObjectiveSettings()
    base_cfg, base_name = base_config(base)
    if s.tokens_per_s is not None and any(d.name == "detection_bandwidth_hz" for d in space):
        # the decode timing sets the detection bandwidth of every point: nothing to search
        fixed = (*fixed, "detection_bandwidth_hz")
    if s.tokens_per_s is None and any(d.name == ARCHITECTURE for d in space):
        # a resident chip is sized and timed for a decode: untimed searches keep the settings' architecture
        fixed = (*fixed, ARCHITECTURE)
    if reranks is not None:
        choices = tuple(sorted({int(r) for r in reranks}))
        if not choices or choices[0] < 1:
            raise KvprismError(f"reranks = {reranks!r} is invalid; allowed: factors in [1, inf)")
        if len(choices) == 1:
            s = dataclasses.replace(s, rerank=choices[0])
            if any(d.name == RERANK for d in space):
                fixed = (*fixed, RERANK)
        else:
            space = [dataclasses.replace(d, choices=choices) if d.name == RERANK else d for d in space]
    from kvprism.search.space import buildable_space

    dims, left_out = active_space(buildable_space(space, base_cfg), type(base_cfg), fixed)
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    store = optuna.storages.RDBStorage(storage) if storage else optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        study_name=study_name, storage=store, directions=list(DIRECTIONS), sampler=sampler, load_if_exists=True
    )
    ref_info = {"model": ref.params.model, "context": ref.params.context, "key": ref.params.key()}
    meta = {
        "base": base_name,
        "base_config": _config_tree(base_cfg),
        "space": [d.name for d in dims],
        "settings": dataclasses.asdict(s),
        "reference": ref_info,
        "seed": seed,
    }
    old = study.user_attrs.get("kvprism")
    meta = json.loads(json.dumps(meta))
    if old is None:
        study.set_user_attr("kvprism", meta)
    elif old != meta:
        differ = sorted(k for k in meta if old.get(k) != meta[k])
        raise KvprismError(
            f"study {study_name!r} in {storage or 'memory'} was run with other {', '.join(differ)}; "
            "use another --storage or --study"
        )
    study_id = store.get_study_id_from_name(study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed process
        store.set_trial_state_values(store.get_trial_id_from_study_id_trial_number(study_id, t.number), TrialState.FAIL)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if enqueue_base and not study.trials:
        params = _base_params(dims, base_cfg, ref)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"enqueued": "base"})

    remaining = max(0, n_trials - done)
    if remaining:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        ex = executor if executor is not None else LocalExecutor()
        batch_size = batch if batch is not None else (1 if isinstance(ex, LocalExecutor) else (ex.workers or 2))
        if batch_size < 1:
            raise KvprismError(f"batch = {batch_size} is invalid; allowed range: [1, inf)")
        cols = (TextColumn("[bold]design search"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[best]}"))  # fmt: skip
        make_worker = functools.partial(_trial_worker, ref, s)  # one object: the session keeps its workers
        with Progress(*cols, disable=not show_progress) as progress, ex.session():
            bar = progress.add_task("search", total=n_trials, completed=done, best="")
            while remaining:
                # ask a batch in trial order, evaluate it anywhere, tell it in trial order: the sampler's state only
                # moves here, so a seed and a batch size fix the whole search whoever evaluates the trials
                asked, units = [], []
                for _ in range(min(batch_size, remaining)):
                    trial = study.ask()
                    asked.append(trial)
                    params: dict[str, Any] = {}
                    for d in dims:  # in the space's order: a conditional row after the row it depends on
                        if _active(d, params, base_cfg):
                            params[d.param_name] = d.suggest(trial, ref.d_sigs if d.name == D_SIG else None)
                    try:
                        fields = _fields(dims, params, ref, base_cfg)
                        trial.set_user_attr("fields", fields)
                        cfg = base_cfg.replace(**fields)
                    except ConfigError as exc:  # no unit: told pruned below, the reason in 'invalid'
                        trial.set_user_attr("invalid", str(exc))
                        continue
                    arch, rr = params.get(ARCHITECTURE, s.architecture), params.get(RERANK, s.rerank)
                    trial.set_user_attr("architecture", arch)
                    trial.set_user_attr("rerank", int(rr))
                    trial.set_user_attr("section", section_of(arch, int(rr)))
                    units.append((trial.number, cfg, params.get(D_SIG), params.get(ARCHITECTURE), params.get(RERANK)))
                results: dict[int, dict[str, Any]] = {}
                ex.run(make_worker, units, functools.partial(_collect, results))
                for trial in asked:
                    _tell(study, trial, results.get(trial.number), optuna)
                    remaining -= 1
                    feas = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                            if t.user_attrs.get("feasible")]  # fmt: skip
                    best = max((t.values[0] for t in feas), default=None)
                    progress.update(
                        bar,
                        advance=1,
                        best="no feasible point yet" if best is None else f"best feasible recall {best:.3f}",
                    )
    return SearchResult(study, base_name, base_cfg, s, dims, left_out, ref_info)


# ---------------------------------------------------------------------------------------------------- results
def _constraints(trial: Any) -> dict[str, float]:
    return {k.split(":", 1)[1]: float(v) for k, v in trial.system_attrs.items() if k.startswith("constraints:")} or {
        f"c{i}": float(v) for i, v in enumerate(trial.system_attrs.get("constraints", ()))
    }


def trial_feasible(trial: Any) -> bool:
    """All constraints of a finished trial ≤ 0 (and at least one recorded)."""
    c = _constraints(trial)
    return bool(c) and all(v <= 0.0 for v in c.values())


def trial_section(trial: Any) -> str:
    """'one-stage' or 'two-stage' (:func:`kvprism.search.objectives.section_of`) of a trial."""
    ua = trial.user_attrs
    return ua.get("section") or section_of(ua.get("architecture") or "time-shared", int(ua.get("rerank") or 1))


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` in every objective (:data:`DIRECTIONS`) and better in one."""
    ge = [(x >= y) if d == "maximize" else (x <= y) for x, y, d in zip(a, b, DIRECTIONS, strict=True)]
    gt = [(x > y) if d == "maximize" else (x < y) for x, y, d in zip(a, b, DIRECTIONS, strict=True)]
    return all(ge) and any(gt)


def _scored(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]


def pareto_trials(study: Any, section: str | None = None) -> list[Any]:
    """Feasible complete trials that no feasible trial of their own section dominates (one-stage and two-stage
    points are judged apart, :data:`SECTIONS`), best recall first; ``section``: only that section's."""
    feas = [t for t in _scored(study) if trial_feasible(t)]
    out = []
    for sec in SECTIONS if section is None else (section,):
        group = [t for t in feas if trial_section(t) == sec]
        out += [t for t in group if not any(_dominates(o.values, t.values) for o in group if o is not t)]
    return sorted(out, key=lambda t: (-t.values[0], t.number))


def _violation_key(t: Any) -> tuple[float, float, float]:
    """(violated feasibility constraints, sum of the positive margins, −recall): smaller is closer to feasible."""
    c = _constraints(t)
    return (c.get("violations", 0.0), sum(max(v, 0.0) for k, v in c.items() if k != "violations"), -t.values[0])


def _margins(t: Any) -> dict[str, dict[str, Any]]:
    return (t.user_attrs.get("result") or {}).get("margins") or {}


def _violated(t: Any) -> list[tuple[str, dict[str, Any]]]:
    """The trial's violated constraints (margin > 0), smallest margin first."""
    out = [(k, m) for k, m in _margins(t).items() if m.get("margin", 0.0) > 0]
    return sorted(out, key=lambda km: km[1]["margin"])


def _architectures(study: Any) -> list[str]:
    seen: dict[str, None] = {}
    for t in _scored(study):
        seen.setdefault(t.user_attrs.get("architecture") or "time-shared")
    order = ("time-shared", "resident", "two-level:4", "two-level:8", "two-level:16")
    return sorted(seen, key=lambda a: (order.index(a) if a in order else len(order), a))


def closest_points(study: Any) -> dict[str, Any]:
    """For each architecture without a feasible trial: its infeasible trial closest to feasible (fewest violated
    feasibility constraints, then the least sum of positive margins, then the best recall)."""
    feas_arch = {t.user_attrs.get("architecture") for t in _scored(study) if trial_feasible(t)}
    out = {}
    for arch in _architectures(study):
        if arch in feas_arch:
            continue
        group = [t for t in _scored(study) if (t.user_attrs.get("architecture") or "time-shared") == arch]
        if group:
            out[arch] = min(group, key=_violation_key)
    return out


def binding_constraints(study: Any) -> dict[str, list[dict[str, Any]]]:
    """For each architecture: every constraint some scored trial violates — how many of the architecture's trials
    violate it, and the smallest margin it reached (with that trial's value and limit). A constraint violated by
    every trial of an architecture binds it: no point searched satisfies it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for arch in _architectures(study):
        group = [t for t in _scored(study) if (t.user_attrs.get("architecture") or "time-shared") == arch]
        names = sorted({k for t in group for k in _margins(t)})
        rows = []
        for name in names:
            have = [(t, _margins(t)[name]) for t in group if name in _margins(t)]
            bad = [tm for tm in have if tm[1].get("margin", 0.0) > 0]
            if not bad:
                continue
            best_t, best = min(have, key=lambda tm: tm[1].get("margin", math.inf))
            rows.append({"constraint": name, "violated_by": len(bad), "trials": len(group),
                         "binds": len(bad) == len(group), "best_margin": best["margin"], "value": best["value"],
                         "limit": best["limit"], "unit": best["unit"], "sense": best["sense"],
                         "trial": best_t.number})  # fmt: skip
        out[arch] = sorted(rows, key=lambda r: (not r["binds"], -r["best_margin"]))
    return out


def least_infeasible(study: Any, n: int = 3) -> list[Any]:
    """The ``n`` complete trials with the fewest violated constraints (then highest recall): the honest answer when
    no point is feasible."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def key(t: Any) -> tuple[float, float, float]:
        c = _constraints(t)
        return (c.get("violations", 0.0), sum(max(v, 0.0) for v in c.values()), -t.values[0])

    return sorted((t for t in done if not trial_feasible(t)), key=key)[:n]


def _trial_record(t: Any, pareto_ids: set[int]) -> dict[str, Any]:
    res = t.user_attrs.get("result", {})
    return {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "fields": t.user_attrs.get("fields"),
        "architecture": t.user_attrs.get("architecture"),
        "rerank": t.user_attrs.get("rerank"),
        "section": trial_section(t) if t.values else None,
        "objectives": dict(zip(OBJECTIVE_NAMES, t.values, strict=True)) if t.values else None,
        "constraints": _constraints(t),
        "feasible": trial_feasible(t) if t.values else False,
        "pareto": t.number in pareto_ids,
        "violations": res.get("violations"),
        "block_recall": res.get("block_recall"),
        "selection_energy_j": res.get("selection_energy_j"),
        "baseline_energy_j": res.get("baseline_energy_j"),
        "energy_by_context_j": res.get("energy_by_context_j"),
        "recall_after": "rescoring" if t.values and trial_section(t) == "two-stage" else "the chip's top-k",
        "chip_choice_fraction": res.get("chip_choice_fraction"),
        "selection_share_s": res.get("selection_share_s"),
        "hbm_reads_s": res.get("hbm_reads_s"),
        "timed_fields": res.get("timed_fields"),
        "margins": res.get("margins"),
        "invalid": t.user_attrs.get("invalid"),
        "error": t.user_attrs.get("error"),
        "enqueued": t.user_attrs.get("enqueued"),
    }


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    raise KvprismError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def _config_tree(cfg: Any) -> dict[str, Any]:
    """Every field of a config as a TOML tree: a dataclass field with a ``section`` in its metadata goes into that
    table; a nested config (dataclass or pydantic model) becomes its own table."""
    if dataclasses.is_dataclass(cfg):
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            v = _config_tree(v) if dataclasses.is_dataclass(v) or hasattr(v, "model_dump") else v
            sec = (f.metadata or {}).get("section", "")
            (tree.setdefault(sec, {}) if sec else tree)[f.name] = v
        return tree
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump()
    raise KvprismError(f"cannot write a {type(cfg).__name__} as a TOML preset")


def _toml_lines(tree: dict[str, Any], prefix: str = "") -> list[str]:
    flat = [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and flat else []) + flat
    for k, v in tree.items():
        if isinstance(v, dict):
            out += ["", *_toml_lines(v, f"{prefix}.{k}" if prefix else k)]
    return out


def preset_toml(cfg: Any, meta: dict[str, Any]) -> str:
    """TOML text of every field of ``cfg`` (sections as tables, see :func:`_config_tree`) and a ``[meta]`` table."""
    parts = ["# written by kvprism (design search or hw --write-timed)", *_toml_lines(_config_tree(cfg))]
    parts += ["", "[meta]", *(f"{k} = {_toml_value(v)}" for k, v in meta.items())]
    return "\n".join(parts) + "\n"


def write_preset(cfg: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write :func:`preset_toml` atomically."""
    path = Path(path)
    text = preset_toml(cfg, meta)
    atomic_write(path, lambda p: p.write_text(text))
    return path


def write_outputs(result: SearchResult, out_dir: str | Path, n_presets: int = 3) -> dict[str, Path]:
    """Write ``pareto.json``, ``summary.md`` (:func:`markdown_report`), ``pareto.png`` and up to ``n_presets`` TOML
    presets (Pareto points, best recall first)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = result.study
    pareto = pareto_trials(study)
    ids = {t.number for t in pareto}
    written: dict[str, Path] = {}
    presets = []
    for i, t in enumerate(pareto[:n_presets]):
        res = t.user_attrs["result"]
        meta = {
            "description": f"design search Pareto point {i + 1} ({trial_section(t)}): recall@{res['k']} "
            f"{t.values[0]:.4f}, {t.values[1] * 1e3:.3g} mJ/step, {t.values[2] * 1e6:.4g} mm², "
            f"{t.values[3] * 1e6:.4g} µs added",
            "source": f"kvprism design search, study {study.study_name!r}, trial {t.number}, base {result.base!r}",
            "recall": float(t.values[0]),
            "d_sig": int(res["d_sig"]),
            "k": int(res["k"]),
            "rerank": int(t.user_attrs.get("rerank", result.settings.rerank)),
            "architecture": t.user_attrs.get("architecture", result.settings.architecture),
            "engine_seed": int(result.settings.engine_seed),
            "max_banks": int(result.settings.max_banks),
            "reference_model": result.reference["model"],
            "reference_context": int(result.reference["context"]),
            "reference_key": result.reference["key"],
        }
        # the point as evaluated: with a decode timing, the detection bandwidth, code age and chip share it set
        cfg = config_of(t, result.base_config).replace(**res.get("timed_fields", {}))
        path = write_preset(cfg, out / f"preset-{i + 1}-trial{t.number}.toml", meta)
        presets.append(str(path))
        written[f"preset {i + 1}"] = path
    scored = _scored(study)
    closest = closest_points(study)
    summary = {
        "study": study.study_name,
        "base": result.base,
        "settings": dataclasses.asdict(result.settings),
        "reference": result.reference,
        "objectives": dict(zip(OBJECTIVE_NAMES, DIRECTIONS, strict=True)),
        "space": space_table(result.space),
        "left_out": [d.name for d in result.left_out],
        "n_trials": len(study.trials),
        "n_feasible": sum(1 for t in study.trials if t.values and trial_feasible(t)),
        "n_invalid": sum(1 for t in study.trials if t.user_attrs.get("invalid")),
        "n_errors": sum(1 for t in study.trials if t.user_attrs.get("error")),
        "pareto": [t.number for t in pareto],
        "sections": {
            sec: {
                "criteria": crit,
                "scored": sum(1 for t in scored if trial_section(t) == sec),
                "feasible": sum(1 for t in scored if trial_section(t) == sec and trial_feasible(t)),
                "pareto": [t.number for t in pareto if trial_section(t) == sec],
            }
            for sec, crit in SECTIONS.items()
        },
        "best_baseline": _best_baseline(scored),
        "closest": {
            arch: {
                "trial": t.number,
                "section": trial_section(t),
                "recall": t.values[0],
                "violated": [{"constraint": k, **m} for k, m in _violated(t)],
            }
            for arch, t in closest.items()
        },
        "binding": binding_constraints(study),
        "least_infeasible": [t.number for t in least_infeasible(study)] if not pareto else [],
        "presets": presets,
        "trials": [_trial_record(t, ids) for t in study.trials],
    }
    p = out / "pareto.json"
    atomic_write(p, lambda q: q.write_text(json.dumps(summary, indent=1, default=float) + "\n"))
    written["json"] = p
    md = out / "summary.md"
    text = markdown_report(result)
    atomic_write(md, lambda q: q.write_text(text))
    written["markdown"] = md
    written["plot"] = _plot(result, out / "pareto.png")
    return written


def _best_baseline(trials: Sequence[Any]) -> dict[str, Any] | None:
    """The cheapest electronic selector at the searched context (the same for every trial of a search with one
    k, block size and context; the least over the trials' records otherwise)."""
    best = None
    for t in trials:
        base = (t.user_attrs.get("result") or {}).get("baseline_energy_j") or {}
        for name, joules in base.items():
            if best is None or joules < best["energy_j"]:
                best = {"name": name, "energy_j": float(joules)}
    return best


_ARCH_COLOURS = {"time-shared": "tab:blue", "resident": "tab:red", "two-level:4": "tab:green",
                 "two-level:8": "tab:olive", "two-level:16": "tab:purple"}  # fmt: skip


def _plot(result: SearchResult, path: Path, title: str | None = None) -> Path:
    """Left: selection energy per decode step vs recall of every scored trial, coloured by architecture (filled:
    feasible, ×: infeasible; circles one-stage, triangles two-stage), the best electronic selector as a vertical
    line. Right: the violated constraints of each architecture's closest point (margin > 0: how far over its limit),
    or the Pareto points' count when every architecture has a feasible point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = result.study
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.1, 1.0]})
    plot_trials(ax, study)
    plot_margins(bx, study)
    rate = result.settings.tokens_per_s
    where = f"{result.settings.shape}, {result.settings.contexts[0]:,} tokens" + (
        f", {rate:g} tokens/s" if rate is not None else ", untimed"
    )
    fig.suptitle(title or f"design search: {where} ({len(_scored(study))} scored trials)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_trials(ax: Any, study: Any) -> None:
    """Selection energy per step vs recall of every scored trial on ``ax`` (see :func:`_plot`)."""
    done = [t for t in _scored(study) if math.isfinite(_selection_energy(t))]
    for arch in _architectures(study):
        col = _ARCH_COLOURS.get(arch, "0.3")
        for sec, marker in (("one-stage", "o"), ("two-stage", "^")):
            group = [t for t in done if (t.user_attrs.get("architecture") or "time-shared") == arch
                     and trial_section(t) == sec]  # fmt: skip
            feas = [t for t in group if trial_feasible(t)]
            infeas = [t for t in group if not trial_feasible(t)]
            if infeas:
                ax.scatter([_selection_energy(t) for t in infeas], [t.values[0] for t in infeas], s=16, alpha=0.55,
                           marker="x" if marker == "o" else "1", c=col)  # fmt: skip
            if feas:
                ax.scatter([_selection_energy(t) for t in feas], [t.values[0] for t in feas], s=40, marker=marker,
                           c=col, edgecolors="k", linewidths=0.6)  # fmt: skip
            if group:
                ax.scatter([], [], c=col, marker=marker, s=30, label=f"{arch}, {sec} ({len(feas)}/{len(group)})")
    best = _best_baseline(done)
    if best is not None:
        ax.axvline(best["energy_j"], color="k", ls="--", lw=1.0)
        ax.text(best["energy_j"], 1.0, f" best electronic\n ({best['name']})", fontsize=7, va="top")
    energies = [_selection_energy(t) for t in done] + ([best["energy_j"]] if best else [])
    if energies and min(energies) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("selection energy per decode step [J]")
    ax.set_ylabel("recall@k vs exact (reference set)")
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=6, loc="lower left", title="feasible / scored", title_fontsize=6)


def plot_margins(ax: Any, study: Any) -> None:
    """The violated constraints of each architecture's closest point as horizontal bars of their margin (log)."""
    closest = closest_points(study)
    labels, values, colours = [], [], []
    for arch, t in closest.items():
        for name, m in _violated(t):
            labels.append(f"{arch} #{t.number}: {name}")
            values.append(max(m["margin"], 1e-3))
            colours.append(_ARCH_COLOURS.get(arch, "0.3"))
    if not labels:
        ax.text(0.5, 0.5, "every architecture searched has a feasible point", ha="center", va="center", fontsize=8)
        ax.set_axis_off()
        return
    y = list(range(len(labels)))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("violation margin (value/limit − 1, or dB/10): closest point of each architecture", fontsize=8)


def _selection_energy(t: Any) -> float:
    v = (t.user_attrs.get("result") or {}).get("selection_energy_j")
    return float(v) if v is not None else math.nan


def _versus_best(tr: Any) -> str:
    """The chip's selection energy over the best electronic selector's (``name``), e.g. ``4.7e+05× fp4-mean``."""
    res = tr.user_attrs.get("result", {})
    base, chip = res.get("baseline_energy_j") or {}, res.get("selection_energy_j")
    if not base or chip is None or not math.isfinite(chip):
        return "–"
    name = min(base, key=base.__getitem__)
    return f"{chip / base[name]:.2g}× {name}" if base[name] > 0 else "–"


def _fmt_margin(name: str, m: dict[str, Any]) -> str:
    """``name value ≤ limit unit (+margin)``."""
    unit = f" {m['unit']}" if m.get("unit") else ""
    return (
        f"{name} {m['value']:.3g} {'>' if m['sense'] == '≤' else '<'} {m['limit']:.3g}{unit} (margin {m['margin']:.3g})"
    )


def _point_cells(t: Any) -> list[str]:
    """Table cells of one trial: what it is and what it scores."""
    f = t.user_attrs.get("fields", {})
    res = t.user_attrs.get("result", {})
    timed = res.get("timed_fields") or {}
    banks = f"{timed.get('n_banks', f.get('n_banks', ''))}×{timed.get('rows_per_bank', f.get('rows_per_bank', ''))}"
    return [
        str(t.number), t.user_attrs.get("architecture") or "time-shared", str(t.user_attrs.get("rerank", 1)),
        f"{t.values[0]:.3f}", f"{res.get('block_recall', math.nan):.3f}",
        f"{_selection_energy(t):.3g} J", _versus_best(t), f"{t.values[2] * 1e6:.4g} mm²",
        f"{t.values[3] * 1e6:.4g} / {res.get('latency_budget_s', math.nan) * 1e6:.4g} µs",
        str(f.get("n_lines", "")), f"{f.get('ring_radius_m', math.nan) * 1e6:.3g} µm",
        f"{f.get('q_loaded', math.nan):.3g}", f"{f.get('channel_spacing_m', math.nan) * 1e9:.3g} nm", banks,
        f"{f.get('laser_line_dbm', math.nan):.3g} dBm",
        f"{f.get('adc_bits', '')}/{f.get('query_bits', '')}/{f.get('program_bits', '')}",
    ]  # fmt: skip


_POINT_COLS = ("trial", "architecture", "rerank", "recall", "block recall", "selection energy/step",
               "÷ best electronic", "area", "added latency / share", "d", "ring radius", "Q", "Δλ",
               "banks×rows", "laser/line", "bits a/q/p")  # fmt: skip


def _md_table(cols: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown_report(result: SearchResult, limit: int = 20, heading: str = "##") -> str:
    """The search as markdown: settings, one-stage and two-stage sections (criteria, Pareto set against the best
    electronic selector), and for each architecture without a feasible point its closest point (violated
    constraints with value, limit and margin) and the constraints that bind it."""
    study, st = result.study, result.settings
    scored = _scored(study)
    rate = st.tokens_per_s
    timed = f"timed at {rate:g} tokens/s" if rate is not None else "untimed (not a feasibility verdict)"
    best = _best_baseline(scored)
    lines = [
        f"{heading} {st.shape}, {st.contexts[0]:,} tokens, {timed}",
        "",
        f"{len(study.trials)} trials ({len(scored)} scored), {sum(1 for t in scored if trial_feasible(t))} feasible; "
        f"k = {st.k}; reference set {result.reference['model']} at {result.reference['context']:,} tokens"
        + (f" (first {st.max_banks} banks)" if st.max_banks else "") + f"; base preset {result.base}. "
        + ("Latency budget: the selection share of the step, selection_time_fraction / R = "
           f"{scored[0].user_attrs['result']['latency_budget_s'] * 1e3:.3g} ms. " if rate is not None and scored else "")
        + (f"Best electronic selector at {st.contexts[0]:,} tokens: {best['name']}, {best['energy_j']:.3g} J per "
           "decode step." if best else ""),
        "",
    ]  # fmt: skip
    for sec, crit in SECTIONS.items():
        group = [t for t in scored if trial_section(t) == sec]
        pareto = pareto_trials(study, sec)
        lines += [f"{heading}# {sec} ({len(group)} scored, {sum(1 for t in group if trial_feasible(t))} feasible)",
                  "", f"Criteria — {crit}", ""]  # fmt: skip
        if pareto:
            lines += ["Pareto set (recall ↑, energy ↓, area ↓, added latency ↓):", ""]
            lines += _md_table(_POINT_COLS, [_point_cells(t) for t in pareto[:limit]])
        else:
            lines.append("No feasible point in this section.")
        lines.append("")
    closest = closest_points(study)
    if closest:
        lines += [f"{heading}# Closest points (architectures without a feasible point)", "",
                  "Per architecture, the scored trial closest to feasible (fewest violated feasibility constraints, "
                  "then the least sum of margins) and each constraint it violates: value against limit, margin = "
                  "value/limit − 1 (or 1 − value/limit for a lower bound, the difference/10 for dB).", ""]  # fmt: skip
        rows = [[arch, str(t.number), trial_section(t), f"{t.values[0]:.3f}",
                 "; ".join(_fmt_margin(k, m) for k, m in _violated(t)) or "latency budget only"]
                for arch, t in closest.items()]  # fmt: skip
        lines += _md_table(("architecture", "trial", "section", "recall", "violated constraints"), rows)
        lines += ["", "Constraints violated by every scored trial of an architecture (binding), with the smallest "
                  "margin any trial reached:", ""]  # fmt: skip
        binding = binding_constraints(study)
        rows = [[arch, r["constraint"], f"{r['violated_by']}/{r['trials']}",
                 f"{r['value']:.3g} {'>' if r['sense'] == '≤' else '<'} {r['limit']:.3g} {r['unit']}".strip(),
                 f"{r['best_margin']:.3g}", str(r["trial"])]
                for arch in closest for r in binding.get(arch, []) if r["binds"]]  # fmt: skip
        lines += _md_table(("architecture", "constraint", "violated by", "best value vs limit", "margin", "trial"),
                           rows) if rows else ["(none: each constraint is met by some trial; they fail in combination)"]  # fmt: skip
        lines.append("")
    two_level = [t for t in scored if str(t.user_attrs.get("architecture", "")).startswith("two-level")]
    trivial = [t for t in two_level if (t.user_attrs.get("result") or {}).get("chip_choice_fraction", 0) >= 1.0]
    if trivial:
        lines += [f"Note: in {len(trivial)} of {len(two_level)} two-level trials the chip chose every super-block "
                  f"of the {result.reference['context']:,}-token reference set (rerank·k ≥ super-blocks): their recall "
                  "is that of exact rescoring and says nothing about the chip.", ""]  # fmt: skip
    return "\n".join(lines)


def pareto_table(result: SearchResult, limit: int = 20) -> Any:
    """Rich tables: the Pareto set of each section (one-stage, two-stage) with its criteria, and — for each
    architecture without a feasible point — its closest point with the violated constraints' values and limits."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    study = result.study
    rate = result.settings.tokens_per_s
    checks = f"timed at {rate:g} tokens/s" if rate is not None else "untimed checks only: not a feasibility verdict"
    parts: list[Any] = []
    for sec, crit in SECTIONS.items():
        pareto = pareto_trials(study, sec)
        t = Table(title=f"{sec}: Pareto set ({len(pareto)} points passing every constraint; {checks})" if pareto
                  else f"{sec}: no feasible point ({checks})", caption=crit, caption_justify="left")  # fmt: skip
        for col in _POINT_COLS:
            t.add_column(col, justify="right")
        for tr in pareto[:limit]:
            t.add_row(*_point_cells(tr))
        parts.append(t)
    closest = closest_points(study)
    if closest:
        t = Table(title=f"closest point of each architecture without a feasible point ({checks})")
        for col in ("architecture", "trial", "section", "recall", "violated constraints: value vs limit (margin)"):
            t.add_column(col, justify="left")
        for arch, tr in closest.items():
            t.add_row(arch, str(tr.number), trial_section(tr), f"{tr.values[0]:.3f}",
                      "\n".join(_fmt_margin(k, m) for k, m in _violated(tr)) or "latency budget only")  # fmt: skip
        parts.append(t)
    if not pareto_trials(study):
        parts.append(Text(f"no feasible design point ({checks})"))
    return Group(*parts)
