"""Stored data written under older names, read in today's vocabulary.

Before the words settled (``scorer`` = what ranks the blocks, ``method`` = what an evaluation cell runs), both were
stored as ``backend``: the ``scorer`` of a selection file or a grid's ``[selection]`` table, and the ``method`` of a
cell in ``results.jsonl``. Everything that loads such data reads it through :func:`migrate_backend`; nothing else
accepts the old name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["OLD_BACKEND_KEY", "migrate_backend"]

#: the key stored data used for the scorer (selection settings) and the method (evaluation cells)
OLD_BACKEND_KEY = "backend"


def migrate_backend(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A copy of stored ``data`` with the old key ``backend`` renamed to ``key`` (``"scorer"`` for selection
    settings, ``"method"`` for an evaluation cell). Where ``key`` is present already, nothing is renamed: the
    loader's own check then sees both (a ``SelectionConfig`` names ``backend`` as a field it does not have)."""
    out = dict(data)
    if OLD_BACKEND_KEY in out and key not in out:
        out[key] = out.pop(OLD_BACKEND_KEY)
    return out
