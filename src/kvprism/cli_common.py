"""Command-line options shared by several commands (typer annotations), so each is declared once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

__all__ = ["AddressOpt", "ExecutorOpt", "GpusPerWorkerOpt", "WorkersOpt", "executor_of", "model_factory"]

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


def executor_of(executor: str, address: str | None, workers: int | None, gpus_per_worker: float) -> Any:
    """The executor the options name (:func:`kvprism.eval.executor.make_executor`); a bad combination is a usage
    error (one line, exit code 2) before any work."""
    from kvprism.errors import ConfigError
    from kvprism.eval.executor import make_executor

    try:
        return make_executor(executor, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def model_factory(model: str, **load_kwargs: Any) -> Any:
    """What a Ray worker calls to load its own copy of the model the command names (picklable): every node needs
    the model at the same path, or the same shipped model (SmolLM2) / local cache."""
    import functools

    from kvprism.hf.models import load_model

    return functools.partial(load_model, model, **load_kwargs)
