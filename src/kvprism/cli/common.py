"""What several commands share: the consoles, the invocation state, option types, the SelectionConfig options,
executors and the progress bar of a grid. Light: typer and rich only (``kvprism --help`` imports no torch)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "DTYPES",
    "SELECTION_OPTIONS",
    "AddressOpt",
    "DeviceOpt",
    "DtypeOpt",
    "ExecutorOpt",
    "GpusPerWorkerOpt",
    "ModelOpt",
    "PhotonicFileOpt",
    "SelectionFileOpt",
    "ThreadsOpt",
    "WorkersOpt",
    "console",
    "err_console",
    "executor_of",
    "given_on_command_line",
    "grid_progress",
    "model_factory",
    "note",
    "print_json",
    "selection_option",
    "set_threads",
    "state",
    "with_selection_options",
]

console = Console()
err_console = Console(stderr=True)
#: this invocation: ``debug`` (--debug) and ``argv`` (the command line, stored with every evaluation run)
state: dict[str, Any] = {"debug": False, "argv": []}

ModelOpt = Annotated[str, typer.Option(help="Model: 'smollm2', a .gguf file, a local directory or a cached hub id.")]
DeviceOpt = Annotated[str, typer.Option(help="torch device (cpu, cuda, cuda:1, mps).")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads for torch [default: $OMP_NUM_THREADS, else physical cores].", min=1),
]
DTYPES = ("float32", "bfloat16", "float16")
DtypeOpt = Annotated[str, typer.Option(help=f"Model weights dtype: {', '.join(DTYPES)}.")]
SelectionFileOpt = Annotated[
    str | None,
    typer.Option("--selection", help="SelectionConfig TOML file; options given explicitly override its fields."),
]
PhotonicFileOpt = Annotated[
    str | None, typer.Option("--photonic", help="Photonic preset file (PhotonicConfig TOML), run as a configuration.")
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="Where the work runs: 'local' (this process) or 'ray' (Ray actors, one loaded model each; "
        "pip install 'kvprism[ray]')."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="--executor ray: the cluster to join ('auto' = the one this node belongs to, or HOST:PORT); "
        "default: a local Ray instance for this run."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option(help="--executor ray: worker actors [default: the cluster's CPUs].", min=1)
]
GpusPerWorkerOpt = Annotated[float, typer.Option(help="--executor ray: GPUs each worker reserves.", min=0.0)]
ArchitectureOpt = Annotated[
    str | None,
    typer.Option(
        help="How the chip holds the rows: 'time-shared' (the preset's banks, rewritten every step; default), "
        "'resident' (append-only banks sized for the context: every (layer, KV head) keeps its rows) or 'two-level' "
        "(resident super-block rows + exact electronic rescoring inside; 'two-level:S' or --superblock S)."
    ),
]
SuperblockOpt = Annotated[
    int | None, typer.Option(help="Blocks per chip row of the two-level architecture (S ≥ 2).", min=1)
]

#: SelectionConfig fields given as options: field -> (option type, help). Ranges and choices are checked by
#: SelectionConfig itself (kvprism.selection), which the CLI imports only when a command runs (``--help`` stays fast).
SELECTION_OPTIONS: dict[str, tuple[type, str]] = {
    "block_size": (int, "Tokens per block."),
    "k": (int, "Blocks selected per (layer, KV head) and decode step."),
    "d_sig": (int, "Signature dimension (wavelength channels per bank row) [default: a preset's comb lines]."),
    "signature": (str, "Block signature: mean, minmax, centroids, reps."),
    "sig_rows": (int, "Bank rows per block of the multi-row signatures (centroids, reps)."),
    "budget": (str, "Blocks read out of the k best: topk (all k) or top_p (adaptive, k is the cap)."),
    "top_p": (float, "For --budget top_p: estimated attention mass to cover, in (0, 1]."),
    "projection": (str, "Projection of keys and query to d_sig dimensions: learned, pca, random, none."),
    "sign": (str, "signed (balanced photodetection) or relu (non-negative weights and inputs)."),
    "gqa_reduce": (str, "Combine the query heads of a KV head: sum (one evaluation) or max (one per query head)."),
    "rerank": (
        int,
        "Two-stage selection: the scorer proposes rerank×k blocks, exact rescoring keeps k (1 = one stage).",
    ),
    "carry": (
        int,
        "Blocks carried from one decode step to the next: the carry selected blocks with the most attention mass "
        "stay selected, the scorer picks the rest of the k (at most k - 1 carried; 0 = off).",
    ),
    "sink_blocks": (int, "First blocks always read (attention sinks)."),
    "window": (int, "Most recent tokens always read."),
    "seed": (int, "Seed of random projections and of the photonic engine's noise and fabrication draws."),
}
#: option names that differ from the field name
_SELECTION_OPTION_NAMES = {"seed": "--selection-seed"}


def selection_option(name: str) -> str:
    """The command-line option of SelectionConfig field ``name`` (e.g. ``--d-sig``)."""
    return _SELECTION_OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def _param_name(field: str) -> str:
    return selection_option(field).removeprefix("--").replace("-", "_")


def with_selection_options(*fields: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a command: adds one option per SelectionConfig field in ``fields`` (default None = not given)
    and passes the given ones as ``selection_fields: dict`` to the command, which checks them
    (:func:`kvprism.cli.checks.selection_fields`) before it loads anything."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        extra = [
            inspect.Parameter(
                _param_name(f),
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    SELECTION_OPTIONS[f][0] | None,
                    typer.Option(selection_option(f), help=f"{SELECTION_OPTIONS[f][1]} [default: SelectionConfig's]"),
                ],
            )
            for f in fields
        ]
        params = [p for p in sig.parameters.values() if p.name != "selection_fields"]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {f: kwargs.pop(_param_name(f)) for f in fields}
            kwargs["selection_fields"] = {f: v for f, v in given.items() if v is not None}
            return fn(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params + extra}
        return wrapper

    return deco


def given_on_command_line(name: str) -> bool:
    """Whether option ``--<name>`` was written on this invocation's command line."""
    opt = "--" + name.replace("_", "-")
    return any(a == opt or a.startswith(opt + "=") for a in state["argv"])


def executor_of(executor: str, address: str | None, workers: int | None, gpus_per_worker: float) -> Any:
    """The executor the options name (:func:`kvprism.eval.executor.make_executor`); a bad combination raises
    :class:`kvprism.errors.ConfigError` (a bad value: exit status 2 inside ``checks.checking()``)."""
    from kvprism.eval.executor import make_executor

    return make_executor(executor, address=address, workers=workers, gpus_per_worker=gpus_per_worker)


def model_factory(model: str, **load_kwargs: Any) -> Any:
    """What a Ray worker calls to load its own copy of the model the command names (picklable): every node needs
    the model at the same path, or the same shipped model (SmolLM2) / local cache."""
    from kvprism.hf.models import load_model

    return functools.partial(load_model, model, **load_kwargs)


@contextlib.contextmanager
def grid_progress(label: str) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on the console, driven by the :class:`kvprism.eval.runner.Progress` events of a run."""
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
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(label, total=None, cell="")

        def on_progress(event: Any) -> None:
            p = event.point
            where = f"{p.context} tok, depth {p.depth:g}" if p is not None else ""
            if event.kind == "start":
                progress.update(bar, total=event.total, completed=0)
            elif event.kind == "prefill":
                progress.update(bar, cell=f"prefill {p.task} {where}")
            elif event.kind == "decode":
                progress.update(bar, cell=f"{event.config} @ {where}")
            else:
                progress.update(bar, completed=event.done)

        yield on_progress


def set_threads(threads: int | None) -> None:
    from kvprism.runtime import set_threads as set_torch_threads

    set_torch_threads(threads)


def note(msg: str) -> None:
    err_console.print(f"note: {msg}", highlight=False, markup=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    from kvprism.eval.store import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")
    sys.stdout.flush()
