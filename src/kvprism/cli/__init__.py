"""The ``kvprism`` command line: a typer app (:mod:`kvprism.cli.app`), one module per command group.

``common`` (consoles, shared options, progress bar), ``checks`` (every option check, run before any model loads),
``demo``, ``hw``, ``energy``, ``eval`` (niah, recall, heads, report), ``search`` (design, claims), ``store``.
Exit statuses: 0 done, 1 the work failed (or an infeasible design under ``--strict``), 2 a bad usage or value,
130 / 143 interrupted (SIGINT / SIGTERM).
"""

from kvprism.cli.app import main

__all__ = ["main"]
