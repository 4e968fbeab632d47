"""Resumable evaluation grid: prefill once per prompt, decode every configuration from a fork of that cache.

For each point (task, context, depth, seed) the prompt is built and all but its last token are prefilled ONCE, densely,
into a transformers ``DynamicCache``. Each configuration (dense; exact block selection; each photonic preset; each k)
then decodes from its own fork of that cache, starting with the prompt's last token — so the first answer token is
already produced under the configuration's attention, and its next-token distribution can be compared with dense (KL).

Results go to a :class:`kvprism.eval.store.ResultStore`: every finished cell (point × configuration) is appended as
one JSON line to ``results.jsonl`` and fsynced, under an exclusive lock (one writer per directory). A cell's key holds
a hash of every setting that can change its result (see :meth:`Runner.cell_settings`), so a rerun with the same
output directory skips exactly the cells finished under the same settings and refuses to mix in other settings of a
configuration already there. Killing the run at any moment loses at most the cell in flight and never computes a
finished cell twice; :attr:`Runner.summary` tells how far it got.

Each point is one *unit* of work (:class:`Unit`: the point and its missing cells), computed by a
:class:`PointEvaluator` -- in this process, or on Ray workers that each hold their own copy of the model
(``executor``: :mod:`kvprism.eval.executor`). Whatever computes a unit, its cells come back here and this process
alone writes them to the store, skipping any key already stored, so no cell is lost or stored twice.

This module orchestrates; the parts live beside it: :mod:`kvprism.eval.grid` (configurations, grid files),
:mod:`kvprism.eval.decode` (prefill and the greedy loop), :mod:`kvprism.eval.metrics` (per-cell trace metrics),
:mod:`kvprism.eval.store` (the store) and :mod:`kvprism.eval.report` (summaries and plots). Progress is reported to
an ``on_progress`` callback (:class:`Progress` events); the library draws nothing. CPU threads: call
:func:`kvprism.runtime.set_threads` (the CLI's ``--threads``) before running.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.eval import metrics as M
from kvprism.eval.decode import DecodeFn, DecodeOutput, default_decode, eos_ids, prefill
from kvprism.eval.executor import LocalExecutor
from kvprism.eval.grid import MODES, EvalConfig, Point
from kvprism.eval.metrics import first_step_blocks, trace_metrics
from kvprism.eval.store import ResultStore, cell_key, jsonable
from kvprism.eval.tasks import Sample, make_sample, string_match_fraction
from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.runtime import deferred_signals

__all__ = [
    "CellSpec",
    "EvalSettings",
    "PointEvaluator",
    "Progress",
    "ProgressFn",
    "RunSummary",
    "Runner",
    "Unit",
    "exact_reference",
    "iter_cells",
    "remote_evaluator",
]


@dataclass(frozen=True)
class Progress:
    """One progress event of :meth:`Runner.run`.

    ``kind``: ``"start"`` (before the first cell; ``total`` known), ``"prefill"`` (a prompt is about to be
    prefilled), ``"decode"`` (a configuration is about to decode ``point``) or ``"cell"`` (a cell was stored;
    ``record`` is what went into ``results.jsonl``). ``done`` / ``total`` count the cells of this invocation.
    """

    kind: str
    done: int
    total: int
    point: Point | None = None
    config: str | None = None
    record: dict[str, Any] | None = None


#: receives every :class:`Progress` event of a run (it must not raise)
ProgressFn = Callable[[Progress], None]


@dataclass
class RunSummary:
    """Counts and times of one :meth:`Runner.run` (``cells_done_before`` were found finished in the store)."""

    cells_total: int
    cells_done_before: int
    cells_run: int
    prefills: int
    prefill_s: float
    decode_s: float
    results: Path

    @property
    def cells_done(self) -> int:
        """Cells finished in the store now (before this run + by it)."""
        return self.cells_done_before + self.cells_run


def _check_unique(name: str, values: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise KvprismError(f"{name}: {v!r} is given twice; give every value once")
        seen.add(v)


#: the name a decoder is stored under where it differs from where it lives now (it was defined in this module
#: before the decode path moved to kvprism.eval.decode); keeps the keys of stored cells
_STORED_DECODER_NAMES = {default_decode: "kvprism.eval.runner.default_decode"}


def _callable_name(fn: Any) -> str:
    if fn in _STORED_DECODER_NAMES:
        return _STORED_DECODER_NAMES[fn]
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


@dataclass(frozen=True)
class CellSpec:
    """One cell of a unit: its configuration and the store key and settings hash the driver gave it."""

    config: EvalConfig
    key: str
    settings_hash: str


@dataclass(frozen=True)
class Unit:
    """One prefill unit: a point (one prompt, prefilled once) and the cells of it still missing."""

    point: Point
    cells: tuple[CellSpec, ...]


@dataclass(frozen=True)
class EvalSettings:
    """What computing a unit needs besides the model and tokenizer (picklable: Ray workers receive it)."""

    mode: str = "niah"
    haystack: str | None = None
    values: str | None = None
    max_new_tokens: int | None = None
    chat: bool = True
    decode_fn: DecodeFn = default_decode


#: events a :class:`PointEvaluator` reports while it computes: ``(kind, point, config name or None)`` with kind
#: ``"prefill"`` or ``"decode"``
EvalEventFn = Callable[[str, Point, "str | None"], None]


class PointEvaluator:
    """Computes the cells of one unit: prefill the prompt once, decode every configuration from a fork of it, and
    build each cell's record (metrics, answer, score). Stateless between units; a callable for the executors."""

    def __init__(self, model: Any, tokenizer: Any, settings: EvalSettings, on_event: EvalEventFn | None = None):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.on_event = on_event
        self.eos_ids = eos_ids(model, tokenizer)

    def task_defaults(self, task: str) -> tuple[str, str]:
        """Effective haystack and value kind of a task (its defaults unless overridden)."""
        from kvprism.eval.tasks import TASKS

        sig = inspect.signature(TASKS[task]).parameters
        return (self.settings.haystack or sig["haystack"].default, self.settings.values or sig["values"].default)

    def prefill(self, sample: Sample) -> tuple[Any, float]:
        """Dense prefill of all prompt tokens but the last into a fresh ``DynamicCache``; returns (cache, seconds)."""
        ids = torch.tensor([sample.input_ids[:-1]], device=self.model.device)
        t0 = time.perf_counter()
        cache = prefill(self.model, ids)
        return cache, time.perf_counter() - t0

    def _event(self, kind: str, point: Point, config: str | None = None) -> None:
        if self.on_event is not None:
            self.on_event(kind, point, config)

    def __call__(self, unit: Unit) -> Iterator[dict[str, Any]]:
        """The unit's cell records, one per configuration, each as soon as it is computed."""
        point, st = unit.point, self.settings
        hay, val = self.task_defaults(point.task)
        sample = make_sample(
            point.task, self.tokenizer, point.context, point.depth, point.seed, haystack=hay, values=val, chat=st.chat
        )
        self._event("prefill", point)
        prefilled, prefill_s = self.prefill(sample)
        prefill_id = f"{cell_key(point, hay, val, '', st.mode)}@{time.time_ns()}"
        n_new = 1 if st.mode == "recall" else (st.max_new_tokens or sample.meta["max_new_tokens"])
        last = torch.tensor([[sample.input_ids[-1]]])
        dense_logits: torch.Tensor | None = None
        # exact selection's first-step blocks (layer -> blocks), per exact SelectionConfig: the reference of a
        # photonic configuration is the exact scorer under that configuration's own selection settings
        exact_blocks: dict[Any, dict[int, torch.Tensor]] = {}
        decode = st.decode_fn
        for spec in unit.cells:
            cfg = spec.config
            self._event("decode", point, cfg.name)
            out = decode(self.model, prefilled, last, cfg, n_new, self.eos_ids)
            if cfg.method == "dense":
                dense_logits = out.first_logits
            elif cfg.method == "exact":
                exact_blocks[exact_reference(cfg.selection)] = first_step_blocks(out.trace)
            extra_s = 0.0
            if cfg.method != "dense" and dense_logits is None:
                # the dense cell was finished in an earlier run: one dense step gives the KL reference
                ref = decode(self.model, prefilled, last, EvalConfig("dense", "dense"), 1, self.eos_ids)
                dense_logits, extra_s = ref.first_logits, ref.decode_s
            reference = None
            if cfg.method == "photonic":
                ref_sel = exact_reference(cfg.selection)
                if ref_sel not in exact_blocks:
                    ex = EvalConfig(f"exact-k{cfg.k}", "exact", cfg.k, None, ref_sel)
                    ref = decode(self.model, prefilled, last, ex, 1, self.eos_ids)
                    exact_blocks[ref_sel] = first_step_blocks(ref.trace)
                    extra_s += ref.decode_s
                reference = exact_blocks[ref_sel]
            record = self._record(point, hay, val, sample, spec, out, prefilled, dense_logits, reference)
            record.update(prefill_s=round(prefill_s, 4), prefill_id=prefill_id, reference_s=round(extra_s, 4))
            yield record

    def _record(
        self,
        point: Point,
        hay: str,
        val: str,
        sample: Sample,
        spec: CellSpec,
        out: DecodeOutput,
        prefilled: Any,
        dense_logits: torch.Tensor | None,
        reference: dict[int, torch.Tensor] | None,
    ) -> dict[str, Any]:
        cfg, mode = spec.config, self.settings.mode
        answer = self.tokenizer.decode(out.tokens, skip_special_tokens=True)
        rec: dict[str, Any] = {
            "key": spec.key,
            "settings_hash": spec.settings_hash,
            "mode": mode,
            **asdict(point),
            "haystack": hay,
            "values": val,
            "depth_actual": round(sample.depth, 4),
            "needle_spans": sample.needle_spans,
            **cfg.describe(),
            "prefill_tokens": len(sample.input_ids) - 1,
            "decode_s": round(out.decode_s, 4),
            "decode_steps": len(out.tokens),
            "expected": sample.answers,
            "answer": answer if mode == "niah" else None,
            "answer_ids": [int(t) for t in out.tokens] if mode == "niah" else None,
            "correct": sample.score(answer) if mode == "niah" else None,
            "match_fraction": string_match_fraction(answer, sample.answers) if mode == "niah" else None,
            "kl_first_token": None,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        if cfg.method == "dense":
            rec.update(read_fraction_mean=1.0, read_fraction_max=1.0, restricted=False, can_restrict=False)
            return rec
        sel = cfg.selection_config()
        stats = dict(out.stats or {})
        n_tok = prefilled.get_seq_length()
        # candidates at the first decode step (prefill + the step's token), as selection sees them
        eligible = int(BlockLayout.from_lengths(n_tok + 1, BlockGeometry.of(sel)).candidates.sum())
        rf_mean = stats.get("read_fraction_mean")
        rf_max = stats.get("read_fraction_max")
        restricted = stats.get("restricted")
        if restricted is None and rf_max is not None:
            restricted = rf_max < 1.0
        rec.update(
            read_fraction_mean=rf_mean,
            read_fraction_max=rf_max,
            restricted=bool(restricted),
            can_restrict=eligible > sel.k,
            kl_first_token=float(M.kl_divergence(dense_logits, out.first_logits)) if dense_logits is not None else None,
            block_size=sel.block_size,
            stats={k: v for k, v in stats.items() if k != "per_layer_head"},
            stats_per_layer_head=stats.get("per_layer_head"),
        )
        if out.trace:
            rec.update(trace_metrics(out.trace, prefilled, sel, sample, reference))
        return rec


def exact_reference(sel: Any) -> Any:
    """The exact-scorer twin of a selection config: the same settings (block size, k, d_sig, projection, signature,
    sink, window, heads, seed, ...) scored exactly -- what a photonic configuration's signature recall is measured
    against. Hashable (a frozen SelectionConfig), so one reference decode serves every configuration sharing it."""
    from kvprism.selection import SelectionConfig

    return sel.replace(scorer="exact", photonic=SelectionConfig().photonic)


def remote_evaluator(model_factory: Callable[[], tuple[Any, Any]], settings: EvalSettings) -> PointEvaluator:
    """A Ray worker's evaluator: loads its own model once (``model_factory() -> (model, tokenizer)``)."""
    model, tokenizer = model_factory()
    from kvprism.hf.attention import use_kvprism_attention

    use_kvprism_attention(model)
    return PointEvaluator(model, tokenizer, settings)


class Runner:
    """The evaluation grid over tasks × contexts × depths × seeds × configurations (see module docstring).

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer.
        out_dir: results directory (``results.jsonl``, ``run.json``, ``.lock``; see :mod:`kvprism.eval.store`).
        tasks, contexts, depths, seeds: the grid axes; every value at most once.
        configs: from :func:`kvprism.eval.grid.build_configs`.
        mode: ``niah`` (greedy answer, scored) or ``recall`` (first decode step only, metrics, no answer).
        haystack, values: task overrides (default: each task's own).
        max_new_tokens: answer length; default: the task's suggestion (answer tokens + 8).
        chat: wrap prompts in the tokenizer's chat template.
        decode_fn: per-configuration decoder, :func:`kvprism.eval.decode.default_decode` by default.
        on_progress: receives a :class:`Progress` event before every prefill and decode (in-process) and after
            every stored cell.
        model_name: how the model was named (recorded in ``run.json``; the key uses the model's content hash).
        command_line: recorded in ``run.json`` (default: ``sys.argv``).
        executor: where the units run (:mod:`kvprism.eval.executor`; default in this process).
        model_factory: for an executor other than local: a picklable ``() -> (model, tokenizer)`` each worker calls
            once to load its own copy of this model (e.g. ``functools.partial(kvprism.load_model, "smollm2")``).

    Raises:
        KvprismError: invalid mode, depth, context, duplicate axis values or a head mask whose shape does not match
            the model -- all before any work.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        out_dir: str | Path,
        tasks: Sequence[str],
        contexts: Sequence[int],
        depths: Sequence[float],
        seeds: Sequence[int],
        configs: Sequence[EvalConfig],
        mode: str = "niah",
        haystack: str | None = None,
        values: str | None = None,
        max_new_tokens: int | None = None,
        chat: bool = True,
        decode_fn: DecodeFn = default_decode,
        model_name: str = "",
        on_progress: ProgressFn | None = None,
        command_line: Sequence[str] | None = None,
        executor: Any = None,
        model_factory: Callable[[], tuple[Any, Any]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise KvprismError(f"mode = {mode!r} is invalid; allowed: {', '.join(MODES)}")
        for d in depths:
            if not 0.0 <= d <= 1.0:
                raise KvprismError(f"depth = {d} is invalid; allowed range: [0, 1]")
        window = getattr(model.config, "max_position_embeddings", None)
        for c in contexts:
            if window is not None and c > window:
                raise KvprismError(f"context = {c} exceeds the model's window of {window} tokens")
        for name, axis in (("tasks", tasks), ("contexts", contexts), ("depths", depths), ("seeds", seeds)):
            _check_unique(name, list(axis))
        _check_unique("configs", [c.name for c in configs])
        self.model, self.tokenizer = model, tokenizer
        self.configs = list(configs)
        self._check_head_masks()
        self.store = ResultStore(out_dir)
        self.out = self.store.dir
        self.results = self.store.results
        self.points = [Point(t, c, d, s) for t in tasks for c in contexts for d in depths for s in seeds]
        self.model_name = model_name
        self.on_progress = on_progress
        self.command_line = list(sys.argv if command_line is None else command_line)
        self.executor = executor if executor is not None else LocalExecutor()
        if not isinstance(self.executor, LocalExecutor) and model_factory is None:
            raise KvprismError(
                f"executor {self.executor.name!r} runs units in other processes: pass model_factory, the picklable "
                "function that loads the model there"
            )
        self.model_factory = model_factory
        self.eval_settings = EvalSettings(mode, haystack, values, max_new_tokens, chat, decode_fn)
        self.evaluator = PointEvaluator(model, tokenizer, self.eval_settings, on_event=self._on_event)
        self._identity: dict[str, Any] | None = None
        self._settings: dict[str, tuple[dict[str, Any], str]] = {}
        #: progress of the current / last :meth:`run` (read it after an interrupt)
        self.summary: RunSummary | None = None
        self._todo = 0  # cells to run in the current run

    @property
    def mode(self) -> str:
        """``niah`` or ``recall`` (:attr:`eval_settings` holds it with the other decode settings)."""
        return self.eval_settings.mode

    def _check_head_masks(self) -> None:
        cfg = self.model.config
        layers = getattr(cfg, "num_hidden_layers", None)
        kv = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
        if layers is None or kv is None:
            return
        for c in self.configs:
            if c.selection is None:
                continue
            heads = c.selection.heads
            if isinstance(heads, str) and heads == "all":
                continue
            from kvprism.selection import resolve_heads

            try:
                resolve_heads(heads, layers, kv)
            except KvprismError as exc:
                raise KvprismError(f"configuration {c.name!r}: {exc}") from None

    # -- identity
    @property
    def model_identity(self) -> dict[str, Any]:
        """:func:`kvprism.eval.store.model_identity` of the model (computed once)."""
        if self._identity is None:
            from kvprism.eval.store import model_identity

            self._identity = model_identity(self.model)
        return self._identity

    def cell_settings(self, config: EvalConfig) -> dict[str, Any]:
        """Everything besides the grid coordinates that can change a cell's result under ``config``:

        - ``model``: content hashes of the model's config and weights, and the weights' dtype unless float32;
        - ``decode``: answer length (``"task default"`` when not given), chat template on/off, the decoder;
        - ``backend`` (the stored name of the method, kept so that stored keys stay valid): the method;
        - ``selection``: the resolved ``SelectionConfig`` (``None`` for dense): the photonic preset by content
          (for the photonic method only), a head-mask path by its mask.
        """
        return self._settings_and_hash(config)[0]

    def settings_hash(self, config: EvalConfig) -> str:
        """:func:`kvprism.eval.store.settings_digest` of :meth:`cell_settings`."""
        return self._settings_and_hash(config)[1]

    def _settings_and_hash(self, config: EvalConfig) -> tuple[dict[str, Any], str]:
        if config.name not in self._settings:
            from kvprism.eval.store import settings_digest

            ident = self.model_identity
            st = self.eval_settings
            n_new: Any = 1 if st.mode == "recall" else (st.max_new_tokens or "task default")
            model_settings = {"config_sha256": ident["config_sha256"], "weights_sha256": ident["weights_sha256"]}
            dtype = getattr(self.model, "dtype", torch.float32)
            if dtype != torch.float32:  # float32 is left out: cells stored before dtypes were recorded keep their keys
                model_settings["dtype"] = str(dtype).removeprefix("torch.")
            settings = {
                "model": model_settings,
                "decode": {"max_new_tokens": n_new, "chat": st.chat, "decoder": _callable_name(st.decode_fn)},
                # the evaluation method under its stored name "backend": this dict is hashed into every cell key, so
                # renaming the key would give every stored cell a new key (and recompute it); it stays as it is
                "backend": config.method,
                "selection": _selection_settings(config),
            }
            if st.mode == "recall" and settings["selection"] is not None:
                # one decode step carries nothing: recall cells keep their keys whatever SelectionConfig.carry is
                settings["selection"].pop("carry", None)
            if config.method == "photonic":
                # signature recall is against the exact scorer at the configuration's own selection settings (cells
                # stored before this was recorded compared with exact at the default d_sig: they get new keys)
                settings["reference"] = "exact scorer, same SelectionConfig"
            self._settings[config.name] = (settings, settings_digest(settings))
        return self._settings[config.name]

    def key(self, point: Point, hay: str, val: str, config: EvalConfig) -> str:
        """The store key of one cell (:func:`kvprism.eval.store.cell_key` with :meth:`settings_hash`)."""
        return cell_key(point, hay, val, config.name, self.mode, self.settings_hash(config))

    # -- bookkeeping
    def task_defaults(self, task: str) -> tuple[str, str]:
        """Effective haystack and value kind of a task (its defaults unless overridden)."""
        return self.evaluator.task_defaults(task)

    def units(self, done: set[str] | None = None) -> list[Unit]:
        """The pending work: one unit per point with cells not yet in the store (``done``: the stored keys, read
        from the store when not given), with their keys and settings hashes filled in."""
        done = self.store.done_keys() if done is None else done
        out = []
        for point in self.points:
            hay, val = self.task_defaults(point.task)
            specs = [CellSpec(c, self.key(point, hay, val, c), self.settings_hash(c)) for c in self.configs]
            missing = tuple(spec for spec in specs if spec.key not in done)
            if missing:
                out.append(Unit(point, missing))
        return out

    def pending(self) -> list[tuple[Point, list[EvalConfig]]]:
        """Points with at least one configuration not yet in the store, with those configurations."""
        return [(u.point, [spec.config for spec in u.cells]) for u in self.units()]

    # -- work
    def prefill(self, sample: Sample) -> tuple[Any, float]:
        """Dense prefill of all prompt tokens but the last into a fresh ``DynamicCache``; returns (cache, seconds)."""
        return self.evaluator.prefill(sample)

    def run(self) -> RunSummary:
        """Run (or resume) the grid under the store's write lock; returns counts and the prefill / decode time of
        this invocation (:attr:`summary` holds the same, also after an interrupt).

        Raises:
            StoreLockedError: another process is writing this directory.
            SettingsMismatchError: the directory holds cells of one of the configurations under other settings.
            CorruptStoreError: ``results.jsonl`` has a corrupt line that is not the last one.
        """
        with self.store.lock():
            return self._run_locked()

    def _run_locked(self) -> RunSummary:
        self.store.repair()
        settings = {f"{self.mode}/{c.name}": self.cell_settings(c) for c in self.configs}
        self.store.check_settings(settings)
        self.store.record_invocation(
            self.command_line, settings, model=self.model_name, model_identity=self.model_identity
        )
        self._stored = self.store.done_keys()
        units = self.units(self._stored)
        n_total = len(self.points) * len(self.configs)
        n_todo = sum(len(u.cells) for u in units)
        summary = RunSummary(n_total, n_total - n_todo, 0, 0, 0.0, 0.0, self.results)
        self.summary = summary
        self._todo = n_todo
        self._prefills_seen: set[str] = set()
        self._report(Progress("start", 0, n_todo))
        if isinstance(self.executor, LocalExecutor):  # this process's model, already loaded
            self.executor.run(lambda: self.evaluator, units, self._store_cells)
        else:  # each worker loads its own
            assert self.model_factory is not None
            make_worker = functools.partial(remote_evaluator, self.model_factory, self.eval_settings)
            self.executor.run(make_worker, units, self._store_cells)
        return summary

    def _report(self, event: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def _on_event(self, kind: str, point: Point, config: str | None) -> None:
        done = self.summary.cells_run if self.summary is not None else 0
        self._report(Progress(kind, done, self._todo, point, config))

    def _store_cells(self, unit: Unit, cells: Iterable[dict[str, Any]]) -> None:
        """Write the cells of ``unit`` as they arrive (from this process or a worker); a key already stored (a cell
        computed twice, e.g. by a retried unit) is not written again."""
        summary = self.summary
        assert summary is not None
        for record in cells:
            if record["key"] in self._stored:
                continue
            with deferred_signals():  # the stored cell and the count move together (an interrupt reports it)
                self.store.append(record)
                self._stored.add(record["key"])
                summary.cells_run += 1
                summary.decode_s += record["decode_s"]
                if record["prefill_id"] not in self._prefills_seen:
                    self._prefills_seen.add(record["prefill_id"])
                    summary.prefills += 1
                    summary.prefill_s += record["prefill_s"]
            self._report(Progress("cell", summary.cells_run, self._todo, unit.point, record["config"], record))


_PRESET_CONTENT: dict[str, dict[str, Any]] = {}


#: SelectionConfig fields added after cells were first stored, with the value that means "not used"
_LATER_FIELDS: dict[str, Any] = {"carry": 0}


def _selection_settings(config: EvalConfig) -> dict[str, Any] | None:
    """The resolved selection settings of a configuration, by content (``None`` for dense)."""
    sel = config.selection_config()
    if sel is None:
        return None
    if dataclasses.is_dataclass(sel):
        d = {f.name: getattr(sel, f.name) for f in dataclasses.fields(sel)}
    else:  # duck-typed configurations (tests)
        d = dict(vars(sel))
    if "scorer" in d:
        d["backend"] = d.pop("scorer")  # the field's stored name: cells stored before the rename keep their keys
    for name, off in _LATER_FIELDS.items():
        if name in d and d[name] == off:
            del d[name]  # a field added later, at its "off" value: cells stored before it existed keep their keys
    photonic = d.pop("photonic", None)
    if config.method == "photonic":
        if isinstance(photonic, str):
            if photonic not in _PRESET_CONTENT:
                from kvprism.photonics.config import PhotonicConfig

                _PRESET_CONTENT[photonic] = PhotonicConfig.preset(photonic).to_dict()
            d["photonic"] = _PRESET_CONTENT[photonic]
        else:
            d["photonic"] = jsonable(photonic)
    heads = d.get("heads")
    if isinstance(heads, str) and heads != "all":
        from kvprism.eval.heads import load_mask

        d["heads"] = load_mask(heads)
    return jsonable(d)


def iter_cells(results: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """Cells whose fields equal all ``match`` items."""
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]
