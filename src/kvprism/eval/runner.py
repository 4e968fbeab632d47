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

The per-configuration decode is a callable (:data:`DecodeFn`) so the bookkeeping can be tested with any decoder;
:func:`default_decode` uses a forked ``DynamicCache`` for ``dense`` and ``kvprism.hf.cache.SparseCache`` otherwise.
CPU threads: call :func:`kvprism.runtime.set_threads` (the CLI's ``--threads``) before running.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.eval import metrics as M
from kvprism.eval.store import (  # re-exported: the store's public API used to live here
    RESULTS_FILE,
    RUN_FILE,
    ResultStore,
    append_result,
    cell_key,
    check_out_dir,
    jsonable,
    read_results,
    repair_results,
)
from kvprism.eval.tasks import Sample, make_sample, string_match_fraction
from kvprism.layout import BlockGeometry, BlockLayout
from kvprism.runtime import deferred_signals

__all__ = [
    "MODES",
    "RESULTS_FILE",
    "RUN_FILE",
    "DecodeOutput",
    "EvalConfig",
    "Point",
    "RunSummary",
    "Runner",
    "append_result",
    "build_configs",
    "cell_key",
    "check_out_dir",
    "default_decode",
    "fork_dynamic_cache",
    "greedy_decode",
    "jsonable",
    "parse_list",
    "read_results",
    "repair_results",
    "validate_configs",
]

MODES = ("niah", "recall")


# -------------------------------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class EvalConfig:
    """One decode configuration of the grid.

    ``backend`` is ``dense`` (no selection), ``exact`` (block selection on exact signature scores) or ``photonic``
    (scores from the photonic engine with hardware ``preset``). ``selection`` holds extra ``SelectionConfig`` fields
    shared by all non-dense configurations (e.g. ``block_size``, ``heads``).
    """

    name: str
    backend: str
    k: int | None = None
    preset: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)

    def selection_config(self) -> Any:
        """The ``kvprism.selection.SelectionConfig`` of this configuration (``None`` for dense)."""
        if self.backend == "dense":
            return None
        from kvprism.selection import SelectionConfig

        kw: dict[str, Any] = {"k": self.k, "backend": self.backend, **self.selection}
        if self.backend == "photonic":
            kw["photonic"] = self.preset
        return SelectionConfig(**kw)

    def describe(self) -> dict[str, Any]:
        return {"config": self.name, "backend": self.backend, "k": self.k, "preset": self.preset}


def build_configs(names: Sequence[str], ks: Sequence[int], selection: dict[str, Any] | None = None) -> list[EvalConfig]:
    """Expand configuration names × k: ``dense`` once; ``exact`` and every photonic preset name once per k.
    Dense comes first (its step-0 logits are the KL reference)."""
    if not names:
        raise KvprismError("configs is empty; give at least one of: dense, exact, <photonic preset>")
    for k in ks:
        if k < 1:
            raise KvprismError(f"k = {k} is invalid; allowed range: k >= 1")
    selection = dict(selection or {})
    out: list[EvalConfig] = []
    seen: set[str] = set()
    for name in ["dense"] * ("dense" in names) + [n for n in names if n != "dense"]:
        if name == "dense":
            cfgs = [EvalConfig("dense", "dense")]
        else:
            if not ks:
                raise KvprismError("k is empty; give at least one k >= 1 for selection configurations")
            backend = "exact" if name == "exact" else "photonic"
            preset = None if backend == "exact" else name
            sel = selection
            if preset is not None and "d_sig" not in selection:  # one comb line per signature dimension
                from kvprism.photonics import PhotonicConfig

                if preset in PhotonicConfig.presets():
                    sel = {**selection, "d_sig": PhotonicConfig.preset(preset).n_lines}
            cfgs = [EvalConfig(f"{name}-k{k}", backend, k, preset, sel) for k in ks]
        for c in cfgs:
            if c.name not in seen:
                seen.add(c.name)
                out.append(c)
    return out


def validate_configs(configs: Sequence[EvalConfig]) -> None:
    """Fail early, before any work: every preset must be known and every selection configuration valid.

    Raises:
        KvprismError: one line naming the configuration and what is missing or allowed.
    """
    needs_selection = [c for c in configs if c.backend != "dense"]
    presets = sorted({c.preset for c in configs if c.backend == "photonic"})
    if presets:
        from kvprism.photonics import PhotonicConfig

        known = list(PhotonicConfig.presets())
        for p in presets:
            if p not in known:
                raise KvprismError(
                    f"configuration {p!r} is neither 'dense', 'exact' nor a photonic preset; presets: {', '.join(known)}"
                )
    for c in needs_selection:
        c.selection_config()  # ConfigError names the offending field


# ------------------------------------------------------------------------------------------------------- decoding
@dataclass
class DecodeOutput:
    """What one configuration's decode returns.

    ``tokens``: generated ids (the first one produced by the prompt's last token); ``first_logits``: ``[V]`` logits of
    the first answer token; ``stats``: ``SparseCache.stats.summary()`` (``None`` for dense); ``trace``: per decode step
    ``{layer: {"query": [B, Hq, D], "blocks": Long[B, Hkv, k], "token_mask": Bool[B, Hkv, T]}}`` (``None`` for dense);
    ``decode_s``: wall time of the decode in seconds.
    """

    tokens: list[int]
    first_logits: torch.Tensor
    stats: dict[str, Any] | None
    trace: list[dict[int, dict[str, torch.Tensor]]] | None
    decode_s: float


#: ``(model, prefilled_cache, last_ids [1, 1], config, max_new_tokens, eos_ids) -> DecodeOutput``; must not mutate
#: ``prefilled_cache``.
DecodeFn = Callable[[Any, Any, torch.Tensor, EvalConfig, int, frozenset[int]], DecodeOutput]


def fork_dynamic_cache(cache: Any) -> Any:
    """A fork of a ``DynamicCache`` that shares the prefilled tensors without copying them. Safe because dynamic
    layers append with ``torch.cat`` (new tensors, assigned to the fork only); the original is never written."""
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def greedy_decode(
    model: Any, cache: Any, last_ids: torch.Tensor, max_new_tokens: int, eos_ids: frozenset[int]
) -> tuple[list[int], torch.Tensor, float]:
    """Greedy decode from ``cache`` (which holds all prompt tokens but ``last_ids``). Returns (tokens, first-step
    logits ``[V]``, seconds)."""
    from kvprism.hf.cache import cache_kwargs

    pos = cache.get_seq_length()
    tok = last_ids.to(model.device)
    tokens: list[int] = []
    first_logits = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        for step in range(max_new_tokens):
            position_ids = torch.tensor([[pos + step]], device=model.device)
            out = model(input_ids=tok, position_ids=position_ids, use_cache=True, **cache_kwargs(model, cache))
            logits = out.logits[0, -1].float()
            if first_logits is None:
                first_logits = logits.cpu()
            nxt = int(logits.argmax())
            tokens.append(nxt)
            if nxt in eos_ids:
                break
            tok = torch.tensor([[nxt]], device=model.device)
    return tokens, first_logits, time.perf_counter() - t0


def default_decode(
    model: Any,
    prefilled: Any,
    last_ids: torch.Tensor,
    config: EvalConfig,
    max_new_tokens: int,
    eos_ids: frozenset[int],
) -> DecodeOutput:
    """Dense: greedy decode from a forked ``DynamicCache``. Selection configs: from
    ``SparseCache.from_prefilled(model, prefilled, sel, trace=True)`` (a fork by contract)."""
    if config.backend == "dense":
        tokens, logits, secs = greedy_decode(model, fork_dynamic_cache(prefilled), last_ids, max_new_tokens, eos_ids)
        return DecodeOutput(tokens, logits, None, None, secs)
    from kvprism.hf.cache import SparseCache

    cache = SparseCache.from_prefilled(model, prefilled, config.selection_config(), trace=True)
    tokens, logits, secs = greedy_decode(model, cache, last_ids, max_new_tokens, eos_ids)
    return DecodeOutput(tokens, logits, cache.stats.summary(), list(cache.trace), secs)


# ----------------------------------------------------------------------------------------------------- cell metrics
def _nan_to_none(x: float) -> float | None:
    return None if x != x else float(x)


def _mean(t: torch.Tensor) -> float | None:
    t = t.float()
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else None


def _table(t: torch.Tensor) -> list[list[float | None]]:
    """``[L, H]`` -> nested lists with NaN as None, 4 decimals."""
    return [[None if v != v else round(float(v), 4) for v in row] for row in t]


def trace_metrics(
    trace: list[dict[int, dict[str, torch.Tensor]]],
    prefilled: Any,
    sel: Any,
    sample: Sample,
    reference_blocks: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Selection metrics of one cell from its decode trace and the dense prefilled keys.

    Block recall@k and attention mass captured use the dense softmax of each step's traced (post-RoPE) query over the
    ``T`` prefilled keys (tokens generated during decode always lie in the recent window and are left out); they are
    averaged over decode steps. Recall is taken over the step's candidate blocks (:class:`kvprism.layout.BlockLayout`)
    with each block's mass over its tokens before the tail (:func:`kvprism.eval.metrics.selectable_block_mass`). Needle hit and signature recall are taken at the first decode step (the one that
    produces the first answer token). Heads that select no block at all (streaming heads of a head mask) count as
    not applicable (NaN) for the recall metrics.

    Returns:
        scalar means plus ``per_layer`` ``[L][Hkv]`` tables of the first-step values.
    """
    n_tok = prefilled.get_seq_length()
    geometry = BlockGeometry.of(sel)
    n_slots = -(-n_tok // sel.block_size)
    # the candidate set of the first decode step (its cache holds the prefill and the step's own token)
    eligible = BlockLayout.from_lengths(n_tok + 1, geometry).candidates[0, :n_slots]
    spans = sample.target_spans
    recall_steps, mass_steps = [], []
    first: dict[str, list[torch.Tensor]] = {"block_recall": [], "mass_captured": [], "needle_hit": [], "sig": []}
    layers = sorted(trace[0]) if trace else []
    for step, per_layer in enumerate(trace):
        step_recall, step_mass = [], []
        for layer in layers:
            rec = per_layer[layer]
            keys = prefilled.layers[layer].keys
            probs = M.attention_probs(rec["query"].float().cpu(), keys.float().cpu())
            # the step's own layout: the candidates selection chose from, the tokens read anyway
            layout = BlockLayout.from_lengths(rec["token_mask"].shape[-1], geometry)
            mask = rec["token_mask"][..., :n_tok].cpu()
            blocks = rec["blocks"].cpu()
            mass = M.selectable_block_mass(M.group_mean(probs, keys.shape[1]), layout)
            step_eligible = layout.candidates[0, :n_slots]
            recall = M.recall_at_k(blocks, mass, sel.k, step_eligible)
            recall = torch.where((blocks >= 0).any(-1), recall, torch.full_like(recall, float("nan")))
            captured = M.mass_captured(probs, mask)
            step_recall.append(recall[0])
            step_mass.append(captured[0])
            if step == 0:
                first["block_recall"].append(recall[0])
                first["mass_captured"].append(captured[0])
                if spans:
                    hits = torch.stack([M.needle_hit(mask, s)[0] for s in spans]).float()  # [n_spans, Hkv]
                    first["needle_hit"].append(hits.mean(0))
                if reference_blocks is not None and layer in reference_blocks:
                    first["sig"].append(M.selection_recall(blocks, reference_blocks[layer], eligible)[0])
        recall_steps.append(torch.stack(step_recall))
        mass_steps.append(torch.stack(step_mass))
    out: dict[str, Any] = {
        "eligible_blocks": int(eligible.sum()),
        "block_recall": _mean(torch.stack(recall_steps)) if recall_steps else None,
        "mass_captured": _mean(torch.stack(mass_steps)) if mass_steps else None,
        "block_recall_first": _mean(torch.stack(first["block_recall"])) if layers else None,
        "mass_captured_first": _mean(torch.stack(first["mass_captured"])) if layers else None,
        "needle_hit": _mean(torch.stack(first["needle_hit"])) if first["needle_hit"] else None,
        "signature_recall": _mean(torch.stack(first["sig"])) if first["sig"] else None,
        "signature_recall_layer0": _mean(first["sig"][0]) if first["sig"] else None,
        "per_layer": {
            name: _table(torch.stack(first[key]))
            for name, key in (
                ("block_recall", "block_recall"),
                ("mass_captured", "mass_captured"),
                ("needle_hit", "needle_hit"),
                ("signature_recall", "sig"),
            )
            if first[key]
        },
    }
    return out


def first_step_blocks(trace: list[dict[int, dict[str, torch.Tensor]]] | None) -> dict[int, torch.Tensor] | None:
    if not trace:
        return None
    return {layer: rec["blocks"].cpu() for layer, rec in trace[0].items()}


# ------------------------------------------------------------------------------------------------------------ runner
@dataclass(frozen=True)
class Point:
    task: str
    context: int
    depth: float
    seed: int


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


def _callable_name(fn: Any) -> str:
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


class Runner:
    """The evaluation grid over tasks × contexts × depths × seeds × configurations (see module docstring).

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer.
        out_dir: results directory (``results.jsonl``, ``run.json``, ``.lock``; see :mod:`kvprism.eval.store`).
        tasks, contexts, depths, seeds: the grid axes; every value at most once.
        configs: from :func:`build_configs`.
        mode: ``niah`` (greedy answer, scored) or ``recall`` (first decode step only, metrics, no answer).
        haystack, values: task overrides (default: each task's own).
        max_new_tokens: answer length; default: the task's suggestion (answer tokens + 8).
        chat: wrap prompts in the tokenizer's chat template.
        decode_fn: per-configuration decoder, :func:`default_decode` by default.
        model_name: how the model was named (recorded in ``run.json``; the key uses the model's content hash).
        command_line: recorded in ``run.json`` (default: ``sys.argv``).

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
        show_progress: bool = True,
        command_line: Sequence[str] | None = None,
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
        self.mode, self.haystack, self.values, self.chat = mode, haystack, values, chat
        self.max_new_tokens = max_new_tokens
        self.decode_fn = decode_fn
        self.model_name = model_name
        self.show_progress = show_progress
        self.command_line = list(sys.argv if command_line is None else command_line)
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        self.eos_ids = frozenset(e for e in eos if e is not None)
        self._identity: dict[str, Any] | None = None
        self._settings: dict[str, tuple[dict[str, Any], str]] = {}
        #: progress of the current / last :meth:`run` (read it after an interrupt)
        self.summary: RunSummary | None = None

    def _check_head_masks(self) -> None:
        cfg = self.model.config
        layers = getattr(cfg, "num_hidden_layers", None)
        kv = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
        if layers is None or kv is None:
            return
        for c in self.configs:
            heads = c.selection.get("heads", "all")
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

        - ``model``: content hashes of the model's config and weights;
        - ``decode``: answer length (``"task default"`` when not given), chat template on/off, the decoder;
        - ``selection``: the resolved ``SelectionConfig`` (``None`` for dense): the photonic preset by content
          (for the photonic backend only), a head-mask path by its mask.
        """
        return self._settings_and_hash(config)[0]

    def settings_hash(self, config: EvalConfig) -> str:
        """:func:`kvprism.eval.store.settings_digest` of :meth:`cell_settings`."""
        return self._settings_and_hash(config)[1]

    def _settings_and_hash(self, config: EvalConfig) -> tuple[dict[str, Any], str]:
        if config.name not in self._settings:
            from kvprism.eval.store import settings_digest

            ident = self.model_identity
            n_new: Any = 1 if self.mode == "recall" else (self.max_new_tokens or "task default")
            settings = {
                "model": {"config_sha256": ident["config_sha256"], "weights_sha256": ident["weights_sha256"]},
                "decode": {"max_new_tokens": n_new, "chat": self.chat, "decoder": _callable_name(self.decode_fn)},
                "backend": config.backend,
                "selection": _selection_settings(config),
            }
            self._settings[config.name] = (settings, settings_digest(settings))
        return self._settings[config.name]

    def key(self, point: Point, hay: str, val: str, config: EvalConfig) -> str:
        """The store key of one cell (:func:`kvprism.eval.store.cell_key` with :meth:`settings_hash`)."""
        return cell_key(point, hay, val, config.name, self.mode, self.settings_hash(config))

    # -- bookkeeping
    def _hv(self, task: str) -> tuple[str, str]:
        """Effective haystack and value kind of a task (its defaults unless overridden)."""
        from kvprism.eval.tasks import TASKS

        sig = inspect.signature(TASKS[task]).parameters
        return (self.haystack or sig["haystack"].default, self.values or sig["values"].default)

    def pending(self) -> list[tuple[Point, list[EvalConfig]]]:
        """Points with at least one configuration not yet in the store, with those configurations."""
        done = self.store.done_keys()
        todo = []
        for p in self.points:
            hay, val = self._hv(p.task)
            missing = [c for c in self.configs if self.key(p, hay, val, c) not in done]
            if missing:
                todo.append((p, missing))
        return todo

    # -- work
    def prefill(self, sample: Sample) -> tuple[Any, float]:
        """Dense prefill of all prompt tokens but the last into a fresh ``DynamicCache``; returns (cache, seconds)."""
        from transformers import DynamicCache

        from kvprism.hf.attention import use_kvprism_attention
        from kvprism.hf.cache import cache_kwargs

        use_kvprism_attention(self.model)  # dense on a DynamicCache; records the prefill queries forks need
        ids = torch.tensor([sample.input_ids[:-1]], device=self.model.device)
        cache = DynamicCache(config=self.model.config)
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(self.model, cache))
        return cache, time.perf_counter() - t0

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
        todo = self.pending()
        n_total = len(self.points) * len(self.configs)
        n_todo = sum(len(m) for _, m in todo)
        summary = RunSummary(n_total, n_total - n_todo, 0, 0, 0.0, 0.0, self.results)
        self.summary = summary
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[cell]}"),
        )
        with Progress(*columns, disable=not self.show_progress, transient=False) as progress:
            bar = progress.add_task(self.mode, total=n_todo, cell="")
            for point, missing in todo:
                self._run_point(point, missing, summary, progress, bar)
        return summary

    def _run_point(self, point: Point, missing: list[EvalConfig], summary: RunSummary, progress: Any, bar: Any) -> None:
        hay, val = self._hv(point.task)
        sample = make_sample(
            point.task, self.tokenizer, point.context, point.depth, point.seed, haystack=hay, values=val, chat=self.chat
        )
        progress.update(bar, cell=f"prefill {point.task} {point.context} tok, depth {point.depth:g}")
        prefilled, prefill_s = self.prefill(sample)
        summary.prefills += 1
        summary.prefill_s += prefill_s
        prefill_id = f"{cell_key(point, hay, val, '', self.mode)}@{time.time_ns()}"
        n_new = 1 if self.mode == "recall" else (self.max_new_tokens or sample.meta["max_new_tokens"])
        last = torch.tensor([[sample.input_ids[-1]]])
        dense_logits: torch.Tensor | None = None
        exact_blocks: dict[int, dict[int, torch.Tensor]] = {}  # k -> layer -> first-step blocks
        for cfg in missing:
            progress.update(bar, cell=f"{cfg.name} @ {point.context} tok, depth {point.depth:g}")
            out = self.decode_fn(self.model, prefilled, last, cfg, n_new, self.eos_ids)
            if cfg.backend == "dense":
                dense_logits = out.first_logits
            elif cfg.backend == "exact":
                exact_blocks[cfg.k] = first_step_blocks(out.trace)
            extra_s = 0.0
            if cfg.backend != "dense" and dense_logits is None:
                # the dense cell was finished in an earlier run: one dense step gives the KL reference
                ref = self.decode_fn(self.model, prefilled, last, EvalConfig("dense", "dense"), 1, self.eos_ids)
                dense_logits, extra_s = ref.first_logits, ref.decode_s
            reference = None
            if cfg.backend == "photonic":
                if cfg.k not in exact_blocks:
                    ex = EvalConfig(f"exact-k{cfg.k}", "exact", cfg.k, None, cfg.selection)
                    ref = self.decode_fn(self.model, prefilled, last, ex, 1, self.eos_ids)
                    exact_blocks[cfg.k] = first_step_blocks(ref.trace)
                    extra_s += ref.decode_s
                reference = exact_blocks[cfg.k]
            record = self._record(point, hay, val, sample, cfg, out, prefilled, dense_logits, reference)
            record.update(prefill_s=round(prefill_s, 4), prefill_id=prefill_id, reference_s=round(extra_s, 4))
            with deferred_signals():  # the stored cell and the count move together (an interrupt reports it)
                self.store.append(record)
                summary.cells_run += 1
                summary.decode_s += out.decode_s
            progress.advance(bar)

    def _record(
        self,
        point: Point,
        hay: str,
        val: str,
        sample: Sample,
        cfg: EvalConfig,
        out: DecodeOutput,
        prefilled: Any,
        dense_logits: torch.Tensor | None,
        reference: dict[int, torch.Tensor] | None,
    ) -> dict[str, Any]:
        answer = self.tokenizer.decode(out.tokens, skip_special_tokens=True)
        rec: dict[str, Any] = {
            "key": self.key(point, hay, val, cfg),
            "settings_hash": self.settings_hash(cfg),
            "mode": self.mode,
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
            "answer": answer if self.mode == "niah" else None,
            "correct": sample.score(answer) if self.mode == "niah" else None,
            "match_fraction": string_match_fraction(answer, sample.answers) if self.mode == "niah" else None,
            "kl_first_token": None,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        if cfg.backend == "dense":
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


_PRESET_CONTENT: dict[str, dict[str, Any]] = {}


def _selection_settings(config: EvalConfig) -> dict[str, Any] | None:
    """The resolved selection settings of a configuration, by content (``None`` for dense)."""
    sel = config.selection_config()
    if sel is None:
        return None
    if dataclasses.is_dataclass(sel):
        d = {f.name: getattr(sel, f.name) for f in dataclasses.fields(sel)}
    else:  # duck-typed configurations (tests)
        d = dict(vars(sel))
    photonic = d.pop("photonic", None)
    if config.backend == "photonic":
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


def parse_list(text: str, kind: Callable[[str], Any], name: str) -> list[Any]:
    """``"1,2,3"`` -> ``[kind("1"), ...]`` with a one-line error naming the option."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError as exc:
        raise KvprismError(f"--{name} = {text!r} is invalid ({exc})") from exc


def iter_cells(results: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """Cells whose fields equal all ``match`` items."""
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]
