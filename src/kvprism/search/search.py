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
from kvprism.search.objectives import DIRECTIONS, OBJECTIVE_NAMES, ObjectiveSettings, evaluate
from kvprism.search.space import ARCHITECTURE, D_SIG, SPACE, Dim, active_space, space_table

__all__ = [
    "SearchResult",
    "base_config",
    "config_of",
    "pareto_table",
    "pareto_trials",
    "preset_toml",
    "run_search",
    "write_outputs",
    "write_preset",
]

STUDY_NAME = "kvprism-design"


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


def _fields(dims: Sequence[Dim], params: dict[str, Any], ref: ReferenceSet) -> dict[str, Any]:
    out = {}
    for d in dims:
        if d.name == ARCHITECTURE:  # not a config field: passed to the objectives beside the config
            continue
        v = params[d.name]
        out[d.field] = ref.width(v) if d.name == D_SIG else d.field_value(v)
    return out


def _base_params(dims: Sequence[Dim], cfg: Any, ref: ReferenceSet) -> dict[str, Any] | None:
    """The base config as trial parameters, or None when a value is outside the space."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.name == ARCHITECTURE:
            out[d.name] = "time-shared"  # the base preset's banks
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
        else:
            x = v / d.to_si if d.kind == "float" else v
            if not d.low * (1 - 1e-9) <= x <= d.high * (1 + 1e-9):
                return None
            out[d.name] = min(max(x, d.low), d.high) if d.kind == "float" else int(x)
    return out


def evaluate_trial(ref: ReferenceSet, settings: ObjectiveSettings, unit: tuple[Any, ...]) -> list[dict]:
    """Evaluate one asked trial ``(number, config, d_sig[, architecture])``: ``[{"result": ...}]`` or
    ``[{"error": ...}]`` when the chip model failed on the point (recorded and reported, never scored). Runs wherever
    the executor puts it."""
    _, cfg, d_sig, *rest = unit
    if rest and rest[0] is not None:  # the searched architecture replaces the settings' one
        settings = dataclasses.replace(settings, architecture=rest[0])
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
) -> SearchResult:
    """Run (or resume) the search until the study holds ``n_trials`` finished trials (see the module docstring).
    ``storage``: an optuna storage URL (``sqlite:///path.db``) or None (in memory). ``executor``: where trials are
    evaluated (:mod:`kvprism.eval.executor`; default in this process); ``batch``: trials asked before the results
    are told (default 1 in process, the worker count on Ray) -- the search is reproducible for a seed and a batch
    size, whichever executor evaluates it."""
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
    dims, left_out = active_space(space, type(base_cfg), fixed)
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
                    params = {d.name: d.suggest(trial, ref.d_sigs if d.name == D_SIG else None) for d in dims}
                    fields = _fields(dims, params, ref)
                    trial.set_user_attr("fields", fields)
                    try:
                        cfg = base_cfg.replace(**fields)
                    except ConfigError as exc:  # no unit: told pruned below, the reason in 'invalid'
                        trial.set_user_attr("invalid", str(exc))
                        continue
                    if ARCHITECTURE in params:
                        trial.set_user_attr("architecture", params[ARCHITECTURE])
                    units.append((trial.number, cfg, params.get(D_SIG), params.get(ARCHITECTURE)))
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


def pareto_trials(study: Any) -> list[Any]:
    """Feasible, non-dominated complete trials, best recall first (optuna's ``best_trials`` re-checked)."""
    return sorted((t for t in study.best_trials if trial_feasible(t)), key=lambda t: -t.values[0])


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
        "objectives": dict(zip(OBJECTIVE_NAMES, t.values, strict=True)) if t.values else None,
        "constraints": _constraints(t),
        "feasible": trial_feasible(t) if t.values else False,
        "pareto": t.number in pareto_ids,
        "violations": res.get("violations"),
        "block_recall": res.get("block_recall"),
        "selection_energy_j": res.get("selection_energy_j"),
        "baseline_energy_j": res.get("baseline_energy_j"),
        "energy_by_context_j": res.get("energy_by_context_j"),
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
    """Write ``pareto.json``, ``pareto.png`` and up to ``n_presets`` TOML presets (Pareto points, best recall first)."""
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
            "description": f"design search Pareto point {i + 1}: recall@{res['k']} {t.values[0]:.4f}, "
            f"{t.values[1] * 1e3:.3g} mJ/step, {t.values[2] * 1e6:.4g} mm², {t.values[3] * 1e6:.4g} µs added",
            "source": f"kvprism design search, study {study.study_name!r}, trial {t.number}, base {result.base!r}",
            "recall": float(t.values[0]),
            "d_sig": int(res["d_sig"]),
            "k": int(res["k"]),
            "rerank": int(result.settings.rerank),
            "architecture": t.user_attrs.get("architecture", result.settings.architecture),
            "engine_seed": int(result.settings.engine_seed),
            "max_banks": int(result.settings.max_banks),
            "reference_model": result.reference["model"],
            "reference_context": int(result.reference["context"]),
            "reference_key": result.reference["key"],
        }
        # the point as evaluated: with a decode timing, the detection bandwidth and code age it set
        cfg = config_of(t, result.base_config).replace(**res.get("timed_fields", {}))
        path = write_preset(cfg, out / f"preset-{i + 1}-trial{t.number}.toml", meta)
        presets.append(str(path))
        written[f"preset {i + 1}"] = path
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
        "least_infeasible": [t.number for t in least_infeasible(study)] if not pareto else [],
        "presets": presets,
        "trials": [_trial_record(t, ids) for t in study.trials],
    }
    p = out / "pareto.json"
    atomic_write(p, lambda q: q.write_text(json.dumps(summary, indent=1, default=float) + "\n"))
    written["json"] = p
    written["plot"] = _plot(study, pareto, out / "pareto.png")
    return written


def _plot(study: Any, pareto: list[Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.values]
    feas = [t for t in done if trial_feasible(t)]
    infeas = [t for t in done if not trial_feasible(t)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if infeas:
        ax.scatter([t.values[1] for t in infeas], [t.values[0] for t in infeas], c="0.7", marker="x", s=18,
                   label=f"infeasible ({len(infeas)})")  # fmt: skip
    if feas:
        sc = ax.scatter([t.values[1] for t in feas], [t.values[0] for t in feas],
                        c=[math.log10(max(t.values[2] * 1e6, 1e-9)) for t in feas], cmap="viridis", s=22,
                        label=f"feasible ({len(feas)})")  # fmt: skip
        fig.colorbar(sc, ax=ax, label="log10 chip area [mm²]")
    if pareto:
        ax.scatter([t.values[1] for t in pareto], [t.values[0] for t in pareto], facecolors="none",
                   edgecolors="red", s=70, label=f"Pareto ({len(pareto)})")  # fmt: skip
    energies = [t.values[1] for t in done]
    if energies and min(energies) > 0 and max(energies) / min(energies) > 10:
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("energy per decode step [J]")
    ax.set_ylabel("signature recall@k vs exact")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"design search: {len(done)} trials", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def _versus_best(tr: Any) -> str:
    """The chip's selection energy over the best electronic selector's (``name``), e.g. ``4.7e+05× fp4-mean``."""
    res = tr.user_attrs.get("result", {})
    base, chip = res.get("baseline_energy_j") or {}, res.get("selection_energy_j")
    if not base or chip is None or not math.isfinite(chip):
        return "–"
    name = min(base, key=base.__getitem__)
    return f"{chip / base[name]:.2g}× {name}" if base[name] > 0 else "–"


def pareto_table(result: SearchResult, limit: int = 20) -> Any:
    """A rich Table of the Pareto set (or, when it is empty, of the least infeasible trials with their violations)."""
    from rich.table import Table

    pareto = pareto_trials(result.study)
    rows = pareto or least_infeasible(result.study)
    rate = result.settings.tokens_per_s
    checks = f"timed at {rate:g} tokens/s" if rate is not None else "untimed checks only: not a feasibility verdict"
    title = (f"Pareto set ({len(pareto)} points passing every constraint; {checks})" if pareto
             else f"no point passes every constraint ({checks}): least infeasible trials")  # fmt: skip
    t = Table(title=title)
    cols = ("trial", "recall", "energy/step", "selection ÷ best electronic", "area", "added latency", "d", "Q",
            "banks×rows", "Δf", "bits a/q/p")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    if not pareto:
        t.add_column("violations", justify="left")
    for tr in rows[:limit]:
        f = tr.user_attrs.get("fields", {})
        cells = [
            str(tr.number), f"{tr.values[0]:.3f}", f"{tr.values[1] * 1e3:.3g} mJ", _versus_best(tr),
            f"{tr.values[2] * 1e6:.4g} mm²",
            f"{tr.values[3] * 1e6:.3g} µs", str(f.get("n_lines", "")), f"{f.get('q_loaded', math.nan):.3g}",
            f"{f.get('n_banks', '')}×{f.get('rows_per_bank', '')}", f"{f.get('detection_bandwidth_hz', math.nan):.2g} Hz",
            f"{f.get('adc_bits', '')}/{f.get('query_bits', '')}/{f.get('program_bits', '')}",
        ]  # fmt: skip
        if not pareto:
            c = _constraints(tr)
            cells.append(
                f"{int(c.get('violations', 0))}: " + ", ".join(k for k, v in c.items() if v > 0 and k != "violations")
            )
        t.add_row(*cells)
    return t
