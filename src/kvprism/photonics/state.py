"""``BankState``: every per-row tensor of a photonic engine's weight banks, in one record.

The chip follows the state-plus-stages pattern: :mod:`~kvprism.photonics.program` makes a state from signatures
(and appends rows to it), :mod:`~kvprism.photonics.drift` advances it through decode steps,
:mod:`~kvprism.photonics.weights` computes its effective weights and :mod:`~kvprism.photonics.detect` sends queries
through it; :class:`~kvprism.photonics.engine.PhotonicEngine` only holds the current state and the generator.

Shapes: ``B`` banks (the leading dims ``[*L]`` of the signatures, flattened), ``N`` programmed rows, ``d`` comb lines.
Every row tensor lives in a buffer ``[B, capacity, ...]`` with spare rows, so appending m rows during decode costs
O(m) amortised instead of a copy of all N; the record's row fields are views of the first N rows.

The record is frozen: a stage that changes the rows, the scales or a scalar (drift, pending steps) returns a new
record. Row values a stage computes are written into the buffers in place (a fresh ``[B, N, d]`` per decode step
would cost page faults and a copy of every row): a state handed to a stage is consumed by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

__all__ = ["ROW_FIELDS", "BankState", "DetectionConstants"]

#: Row fields of a bank state: name -> (shape, unit and meaning). Optional fields exist only when their model is on.
ROW_FIELDS: dict[str, str] = {
    "sig": "[B, N, d] signatures as given (input dtype)",
    "static": "[B, N, d] m: rest + EO shift of the quantised voltage + trim residual",
    "trim": "[B, N, d] m: static trim residual per ring",
    "ring_drift": "[B, N, d] m: per-ring drift process state",
    "w": "[B, N, d] effective weights thru − drop at the current detunings",
    "transmit": "[B, N] row mean of thru + drop (1 − absorption)",
    "const": "[B, N] believed row sum Σ_j w_nj (offset subtraction)",
    "abs_sum": "[B, N] believed Σ_j |w_nj| (ADC full scale)",
    "bus_phase": "[B, N, d] rad: static fabrication phase of each ring's drop path (coherent drop bus)",
    "k1dev": "[B, N, d] relative deviation of each input coupler's κ² (gap spread)",
    "k2dev": "[B, N, d] relative deviation of each drop coupler's κ²",
    "field_drift": "[B, N] m: spatially correlated drift along the bank's rows",
    "eo": "[B, N, d] m: programmed Pockels shift (held; relaxes with DC drift)",
    "age": "[B, N] decode steps since each row was programmed",
    "cal_drift": "[B, N, d] m: drift the rows' codes compensate (code_refresh 'every-step')",
}


def _row_view(name: str) -> property:
    def get(self: BankState) -> torch.Tensor | None:
        buf = self.buffers.get(name)
        return None if buf is None else buf[:, : self.rows]

    return property(get, doc=ROW_FIELDS[name])


@dataclasses.dataclass(frozen=True)
class DetectionConstants:
    """Query-independent constants of detection and ADC for one state, in "detector units" (W times ``gain`` per
    bank, ``gain`` = the ADC's codes per W, 1 W⁻¹ without ADC) so that noise, offset and the ADC's affine map fold
    into one pass before rounding. Shapes: per bank [B, 1, 1], per row [B, N, 1]."""

    p_row_w: float  # W per comb line at a row (link budget)
    unit_w: float  # W per unit score (weight units)
    levels: float  # ADC top code 2^bits − 1 (0: no ADC)
    offset: bool  # offset encoding (else dual-rail)
    per_unit_scale: torch.Tensor  # [B, 1, 1] signature·query units per (unit · bank scale)
    full_scale_w: torch.Tensor  # [B, 1, 1] W, fixed at programming (float64)
    gain: torch.Tensor  # [B, 1, 1] codes per W
    inv_gain: torch.Tensor  # [B, 1, 1] W per ADC step
    c0: torch.Tensor  # [B, N, 1] ADC mid code minus the believed row constant, detector units
    level_w: torch.Tensor | None = None  # [2^query_bits] W per line at the row for each DAC level
    var_const: torch.Tensor | None = None  # [B, 1, 1] dark + TIA + NEP variance, detector units² (noise on)
    g2: torch.Tensor | None = None  # [B, 1, 1] gain² (float64)
    var_transmit: torch.Tensor | None = None  # [B, N, 1] shot-noise factor per row, refreshed with W_eff
    shot_w2_per_w: float = 0.0  # W² of shot variance per W of total line power

    def with_transmit(self, transmit: torch.Tensor) -> DetectionConstants:
        """These constants for rows of mean transmission ``transmit`` [B, N] (the one constant W_eff changes)."""
        if self.var_transmit is None:
            return self
        return dataclasses.replace(self, var_transmit=transmit_variance(self.g2, transmit))


def transmit_variance(g2: torch.Tensor, transmit: torch.Tensor) -> torch.Tensor:
    """Per-row shot-noise factor [..., B, N, 1] in detector units: gain² [..., B, 1, 1] (float64) × row transmission
    [..., B, N]."""
    return (g2 * transmit.double().unsqueeze(-1)).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class BankState:
    """The rows of every bank of one engine (see the module docstring). ``buffers`` maps each row field of
    :data:`ROW_FIELDS` that exists to its buffer ``[B, capacity, ...]``; the properties of the same names are the
    views ``[B, N, ...]``. The ideal chip keeps only ``sig``."""

    lead: tuple[int, ...]  # leading dims [*L] of the signatures (B = their product)
    rows: int  # N: rows programmed in every bank
    buffers: Mapping[str, torch.Tensor]
    scale: torch.Tensor | None = None  # [B] w_r / max|signature| (float32)
    full_scale: torch.Tensor | None = None  # [B] ADC full scale in weight units (× adc_headroom)
    global_drift_m: float = 0.0  # m: the drift all rings share
    pending_steps: int = 0  # decode steps advanced since the last drift sample
    stale: bool = False  # drift sampled since W_eff was computed
    detection: DetectionConstants | None = None  # cached at the first query after programming
    calibration_residual: float | None = None  # RMS residual of the last programming's calibration
    calibration_mismatch: float | None = None  # model-based: RMS chip − controller model weights at programming

    sig = _row_view("sig")
    static = _row_view("static")
    trim = _row_view("trim")
    ring_drift = _row_view("ring_drift")
    w = _row_view("w")
    transmit = _row_view("transmit")
    const = _row_view("const")
    abs_sum = _row_view("abs_sum")
    bus_phase = _row_view("bus_phase")
    k1dev = _row_view("k1dev")
    k2dev = _row_view("k2dev")
    field_drift = _row_view("field_drift")
    eo = _row_view("eo")
    age = _row_view("age")
    cal_drift = _row_view("cal_drift")

    @property
    def banks(self) -> int:
        """B: the number of banks (product of :attr:`lead`)."""
        return int(self.buffers["sig"].shape[0])

    @property
    def dims(self) -> int:
        """d: comb lines (signature width)."""
        return int(self.buffers["sig"].shape[2])

    def has(self, name: str) -> bool:
        """True when the row field ``name`` is modelled (its buffer exists)."""
        return name in self.buffers

    def replace(self, **changes: object) -> BankState:
        return dataclasses.replace(self, **changes)

    def with_buffers(self, **buffers: torch.Tensor) -> BankState:
        """This state with the given buffers ``[B, capacity, ...]`` replacing (or adding) those of the same names."""
        return dataclasses.replace(self, buffers={**self.buffers, **buffers})

    def grown(self, rows: int) -> BankState:
        """This state with every buffer holding at least ``rows`` rows (capacity doubles; the N rows are kept) and
        N = ``rows`` (the new rows are zero until a stage writes them)."""
        bufs = dict(self.buffers)
        for name, buf in self.buffers.items():
            if buf.shape[1] >= rows:
                continue
            cap = max(rows, 2 * buf.shape[1], 16)
            new = torch.zeros((buf.shape[0], cap, *buf.shape[2:]), dtype=buf.dtype)
            new[:, : self.rows] = buf[:, : self.rows]
            bufs[name] = new
        return dataclasses.replace(self, buffers=bufs, rows=rows)
