"""``kvprism store repair OUT``: move the corrupt lines of a results directory aside and keep the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvprism.cli import checks
from kvprism.cli.common import console

__all__ = ["store_app"]

store_app = typer.Typer(
    name="store",
    help="Maintenance of a results directory (results.jsonl).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@store_app.command()
def repair(
    results_dir: Annotated[str, typer.Argument(help="Directory holding results.jsonl.")],
) -> None:
    """Move every corrupt line of results.jsonl (not JSON, a required field missing or mistyped) to
    results.jsonl.corrupt and keep the rest; a torn last line is cut. Refused while a run holds the store."""
    from kvprism.eval.store import CORRUPT_SUFFIX, RESULTS_FILE, ResultStore, repair_store

    with checks.checking():
        p = Path(results_dir)
        if not p.is_dir():
            raise checks.BadOption(f"results directory {results_dir} {'is a file' if p.exists() else 'does not exist'}")
        checks.input_file(str(p / RESULTS_FILE), "results directory", what="results.jsonl file")
    store = ResultStore(p, create=False)
    with store.lock():
        moved = repair_store(p)
    if not moved:
        console.print(f"{p / RESULTS_FILE}: every line reads; nothing moved", highlight=False)
        return
    for line, why in moved:
        console.print(f"  line {line}: {why}", highlight=False, markup=False)
    console.print(f"moved {len(moved)} line(s) to {p / (RESULTS_FILE + CORRUPT_SUFFIX)}", highlight=False)
