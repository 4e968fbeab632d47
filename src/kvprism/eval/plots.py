"""The one heatmap helper of the evaluation plots (``kvprism report`` grids, ``kvprism heads`` R_h maps)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvprism.atomic import AtomicBatch, atomic_write

__all__ = ["heatmap", "pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    data: Any,
    path: str | Path,
    *,
    xticks: Sequence[Any],
    yticks: Sequence[Any],
    xlabel: str,
    ylabel: str,
    title: str,
    colorbar: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
    marks: tuple[Sequence[int], Sequence[int]] | None = None,
    marks_label: str = "",
    figsize: tuple[float, float] | None = None,
    dpi: int = 110,
    batch: AtomicBatch | None = None,
) -> Path:
    """Write a heatmap PNG of ``data [rows, cols]`` (NaN cells blank; row 0 at the bottom).

    Args:
        xticks, yticks: labels of the columns and rows.
        annotate: print each finite value (2 decimals) in its cell.
        marks: ``(rows, cols)`` of cells marked with a white dot, labelled ``marks_label`` in a legend.
        figsize: default grows with the grid.
        batch: stage the file in this :class:`kvprism.atomic.AtomicBatch`; else it is written atomically at once.
    """
    import numpy as np

    plt = pyplot()
    values = np.asarray(data, dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=figsize or (1.6 + 0.9 * cols, 1.4 + 0.55 * rows))
    try:
        im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto", origin="lower")
        if annotate:
            for i in range(rows):
                for j in range(cols):
                    if not np.isnan(values[i, j]):
                        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
        if marks is not None:
            ax.scatter(list(marks[1]), list(marks[0]), s=10, c="white", marker="o", label=marks_label)
            ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
        ax.set_xticks(range(cols), list(xticks))
        ax.set_yticks(range(rows), list(yticks))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label=colorbar)
        fig.tight_layout()
        path = Path(path)

        def write(p: Path) -> None:
            fig.savefig(p, dpi=dpi, format="png")

        if batch is None:
            atomic_write(path, write)
        else:
            batch.write(path, write)
    finally:
        plt.close(fig)
    return path
