"""Optical link budget from the laser to one photodiode of one row (PHYSICS.md §6). All losses in dB (positive).

Path of one comb line: fibre-chip coupler → demux → the line's MZM → mux → 1×N splitter of the bank → routing
(chip input → bank, plus the route inside the bank to its farthest row) → crossings → the row's rings → photodiode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LinkBudget", "dbm_to_w", "link_budget", "splitter_loss_db", "w_to_dbm"]


def dbm_to_w(p_dbm: float) -> float:
    """Power in W from dBm."""
    return 1e-3 * 10.0 ** (p_dbm / 10.0)


def w_to_dbm(p_w: float) -> float:
    """Power in dBm from W (−inf for 0 W)."""
    return -math.inf if p_w <= 0 else 10.0 * math.log10(p_w / 1e-3)


def splitter_loss_db(n_outputs: int, excess_db_per_stage: float) -> float:
    """1×N splitter tree: 10·log10(N) + excess_db_per_stage · ⌈log2 N⌉ [dB]."""
    if n_outputs <= 1:
        return 0.0
    return 10.0 * math.log10(n_outputs) + excess_db_per_stage * math.ceil(math.log2(n_outputs))


@dataclass(frozen=True)
class LinkBudget:
    """Per-comb-line power budget from the laser line to one photodiode pair of one row (MZM fully open)."""

    laser_line_dbm: float
    coupling_db: float
    mzm_db: float
    splitter_db: float
    waveguide_db: float
    ring_insertion_db: float
    pd_coupling_db: float
    demux_db: float = 0.0
    mux_db: float = 0.0
    crossing_db: float = 0.0
    routing_length_m: float = 0.0  # the waveguide length behind ``waveguide_db`` (information)

    @property
    def total_loss_db(self) -> float:
        return (
            self.coupling_db
            + self.demux_db
            + self.mzm_db
            + self.mux_db
            + self.splitter_db
            + self.waveguide_db
            + self.crossing_db
            + self.ring_insertion_db
            + self.pd_coupling_db
        )

    @property
    def to_mzm_db(self) -> float:
        """Loss from the laser line to the input of its MZM [dB] (coupler + demux)."""
        return self.coupling_db + self.demux_db

    @property
    def row_line_dbm(self) -> float:
        """Power of one comb line arriving at a row's photodiodes [dBm] (before the ring weights act)."""
        return self.laser_line_dbm - self.total_loss_db

    @property
    def row_line_w(self) -> float:
        return dbm_to_w(self.row_line_dbm)

    def items(self) -> list[tuple[str, float]]:
        return [
            ("fibre-chip coupling", self.coupling_db),
            ("demux", self.demux_db),
            ("MZM insertion", self.mzm_db),
            ("mux", self.mux_db),
            ("1×N splitter", self.splitter_db),
            ("waveguide", self.waveguide_db),
            ("crossings", self.crossing_db),
            ("ring insertion (excess, all rings)", self.ring_insertion_db),
            ("PD coupling", self.pd_coupling_db),
        ]


def link_budget(
    *,
    laser_line_dbm: float,
    coupling_loss_db: float,
    mzm_insertion_loss_db: float,
    rows_per_bank: int,
    splitter_excess_db_per_stage: float,
    waveguide_loss_db_per_m: float,
    waveguide_length_m: float,
    ring_insertion_db: float,
    n_rings_passed: int,
    pd_coupling_loss_db: float,
    demux_loss_db: float = 0.0,
    mux_loss_db: float = 0.0,
    crossings: int = 0,
    crossing_loss_db: float = 0.0,
) -> LinkBudget:
    """Budget of one comb line to one row: each bank's light is split 1×``rows_per_bank``; the line passes
    ``n_rings_passed`` rings of its own row, each with an excess insertion loss ``ring_insertion_db`` on top of the
    ring transfer that the cascade model computes. Per-line modulation puts a demux before and a mux after the MZMs
    (``demux_loss_db``, ``mux_loss_db``); ``crossings`` waveguide crossings of ``crossing_loss_db`` each lie on the
    way to the row; ``waveguide_length_m`` is the whole routing length (see :class:`~kvprism.photonics.design.
    ChipDesign` for the length from the bank geometry)."""
    return LinkBudget(
        laser_line_dbm=laser_line_dbm,
        coupling_db=coupling_loss_db,
        mzm_db=mzm_insertion_loss_db,
        splitter_db=splitter_loss_db(rows_per_bank, splitter_excess_db_per_stage),
        waveguide_db=waveguide_loss_db_per_m * waveguide_length_m,
        ring_insertion_db=ring_insertion_db * n_rings_passed,
        pd_coupling_db=pd_coupling_loss_db,
        demux_db=demux_loss_db,
        mux_db=mux_loss_db,
        crossing_db=crossing_loss_db * crossings,
        routing_length_m=waveguide_length_m,
    )
