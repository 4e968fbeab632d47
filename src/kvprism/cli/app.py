"""The ``kvprism`` typer app and its entry point :func:`main`.

Exit statuses (README, "Exit codes"): 0 done; 1 the work failed (an error while running, or an infeasible design
under ``--strict``); 2 a bad usage or value (typer's checks and every check of :mod:`kvprism.cli.checks`, all made
before a model loads); 130 / 143 interrupted by SIGINT / SIGTERM (an evaluation grid first says how far it got;
rerunning the same command resumes it). Errors are one line; ``--debug`` shows the traceback. Heavy imports (torch,
transformers) happen inside the commands, so ``kvprism --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

import kvprism
from kvprism.cli import demo, energy, eval, hw, search, store
from kvprism.cli.checks import BadOption
from kvprism.cli.common import console, err_console, state

__all__ = ["app", "main"]

app = typer.Typer(
    name="kvprism",
    help="Photonic KV-cache block selection for long-context LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    state["debug"] = debug


@app.command()
def version() -> None:
    """Print the kvprism version."""
    console.print(f"kvprism {kvprism.__version__}")


for command in (demo.demo, hw.hw, energy.energy, eval.niah, eval.recall, eval.heads, eval.report):
    app.command()(command)
app.add_typer(search.design_app, name="design")
app.add_typer(search.claims_app, name="claims")
app.add_typer(store.store_app, name="store")


def _usage_line(exc: Any) -> str | None:
    """A click usage error as one line (None for the no-arguments help screen, shown as is)."""
    if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
        return None
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"error: {exc.format_message()}{hint}"


def _os_error_line(exc: OSError) -> str:
    """``<file>: <cause>`` of an OSError (disk full, read-only directory, permission)."""
    where = exc.filename if exc.filename is not None else "(file not named by the system)"
    cause = exc.strerror or type(exc).__name__
    return f"cannot write or read {where}: {cause}"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, tracebacks with ``--debug``; returns the exit status (see the
    module docstring)."""
    from rich.markup import escape

    from kvprism.runtime import Interrupted, interrupts_as_exceptions

    args = sys.argv[1:] if argv is None else argv
    state["argv"] = ["kvprism", *args]
    debug = "--debug" in args
    with interrupts_as_exceptions():
        try:
            rv = app(args=args, prog_name="kvprism", standalone_mode=False)
        except Interrupted as exc:
            if not getattr(exc, "reported", False):
                err_console.print(f"aborted ({exc})", highlight=False)
            return exc.exit_code
        except typer.Exit as exc:
            return exc.exit_code
        except typer.Abort:
            err_console.print("aborted")
            return 130
        except Exception as exc:
            # usage errors (typer vendors its own click; plain click's have the same interface)
            if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
                line = _usage_line(exc)
                if line is None:
                    exc.show()
                else:
                    err_console.print(line, highlight=False, markup=False, soft_wrap=True)
                return exc.exit_code
            if debug:
                raise
            if isinstance(exc, OSError):
                msg, prefix = _os_error_line(exc), "error"
            else:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                prefix = "error" if isinstance(exc, kvprism.KvprismError) else f"error ({type(exc).__name__})"
            hint = "" if isinstance(exc, BadOption) else "  [dim](--debug for the traceback)[/]"
            err_console.print(f"{escape(prefix)}: {escape(msg)}{hint}", highlight=False, soft_wrap=True)
            return BadOption.exit_code if isinstance(exc, BadOption) else 1
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
