"""The effective weights W_eff = thru − drop of a bank state's rows (PHYSICS.md §3–§5).

Two models of a row at given detunings: the *chip* (:func:`chip_fields`: every static fabrication effect the state
holds — per-ring coupler spread, drop-path phases on a coherent drop bus) and the *controller's model*
(:func:`controller_weights`: design couplings and designed bus phases only), which model-based calibration inverts.
:func:`refresh` recomputes W_eff and the mean ring transmission of a state's rows at its current drift; it runs when
rows are programmed and when the drift has moved, never per query.
"""

from __future__ import annotations

import dataclasses

import torch

from kvprism.photonics import drift, ring
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import BankState
from kvprism.photonics.wdm import cascade, cascade_coherent

__all__ = [
    "as_programmed",
    "cascade_weights",
    "chip_fields",
    "chip_weights",
    "chunk_rows",
    "controller_weights",
    "extras",
    "refresh",
]

_CHUNK_ELEMS = 1 << 22  # rows × d × d elements per cascade chunk (bounds memory of the O(d²) ring model)
_EXTRAS = ("bus_phase", "k1dev", "k2dev")  # per-ring physics beyond the detuning


def chunk_rows(design: ChipDesign) -> int:
    """Rows per cascade chunk for ``design.d`` lines (bounds the work tensors of the O(d²) ring model)."""
    d = design.d
    if design.coherent:  # complex work tensors [d, rows, d], several alive at once
        return max(1, _CHUNK_ELEMS // (4 * d * d))
    plan = design.cascade_plan
    k = plan.k if plan is not None else (d if design.config.crosstalk else 1)
    return max(1, _CHUNK_ELEMS // (d * k))


def extras(state: BankState, banks: torch.Tensor | None, r0: int, r1: int | None) -> dict[str, torch.Tensor]:
    """Per-ring physics of rows [r0, r1) of ``banks`` (None: all) beyond the detuning, flattened to [R, d]:
    drop-path fabrication phases and coupler deviations (only those that are modelled)."""
    out = {}
    for name in _EXTRAS:
        buf = state.buffers.get(name)
        if buf is not None:
            x = buf[:, r0 : (r1 if r1 is not None else state.rows)]
            x = x if banks is None else x[banks]
            out[name] = x.reshape(-1, x.shape[-1])
    return out


def _kappa_sq(design: ChipDesign, ex: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-ring power couplings (κ1², κ2²) [R, d] in float64 from the gap deviations in ``ex`` (None: the design
    couplers)."""
    if "k1dev" not in ex:
        return None
    k1 = (1.0 - design.r1 * design.r1) * (1.0 + ex["k1dev"].double())
    k2 = (1.0 - design.r2 * design.r2) * (1.0 + ex["k2dev"].double())
    return k1.clamp(max=1.0), k2.clamp(max=1.0)


def chip_fields(
    design: ChipDesign, det: torch.Tensor, ex: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Through and drop power fractions [R, d] of the chip's rows (all of its physics) at detunings ``det`` [R, d]
    (m) with per-ring ``ex`` [R, d] (:func:`extras`)."""
    opt = design.optics
    kappa_sq = _kappa_sq(design, ex)
    if design.coherent:
        couplers = None if kappa_sq is None else ring.Couplers.from_kappa_sq(*kappa_sq, design.a, torch.float32)
        return cascade_coherent(det, opt, couplers, ex.get("bus_phase"))
    crosstalk = design.config.crosstalk
    if kappa_sq is not None:  # incoherent model with per-ring couplings: the general (order-aware) path
        r1, r2 = ((1.0 - k).sqrt() for k in kappa_sq)
        if crosstalk:  # one value per ring j, broadcast over the lines i
            r1, r2 = r1.unsqueeze(-2), r2.unsqueeze(-2)
        thru, drop = cascade(det.double(), dataclasses.replace(opt, r1=r1, r2=r2), crosstalk)
        return thru.to(det.dtype), drop.to(det.dtype)
    return cascade(det, opt, crosstalk, design.cascade_plan)


def chip_weights(design: ChipDesign, det: torch.Tensor, ex: dict[str, torch.Tensor]) -> torch.Tensor:
    """W_eff = thru − drop [R, d] of the chip's rows at detunings ``det`` [R, d] (m)."""
    thru, drop = chip_fields(design, det, ex)
    return thru - drop


def controller_weights(design: ChipDesign, det: torch.Tensor) -> torch.Tensor:
    """The controller's model of a row [R, d] at detunings [R, d] (m): the chip's drop-bus model with the design
    couplings and the designed bus phases only (no fabrication phases, gap spread, trim or drift)."""
    if design.coherent:
        thru, drop = cascade_coherent(det, design.optics)
    else:
        thru, drop = cascade(det, design.optics, design.config.crosstalk, design.cascade_plan)
    return thru - drop


def cascade_weights(
    design: ChipDesign, det: torch.Tensor, w: torch.Tensor, transmit: torch.Tensor, step: int,
    ex: dict[str, torch.Tensor] | None = None,
) -> None:  # fmt: skip
    """W_eff = thru − drop into ``w`` [R, d] and the row mean of thru + drop (= 1 − Ā) into ``transmit`` [R] for
    detunings ``det`` [R, d] (m) and per-ring ``ex`` [R, d], ``step`` rows at a time."""
    ex = ex or {}
    for s in range(0, det.shape[0], step):
        part = {k: v[s : s + step] for k, v in ex.items()}
        thru, drop = chip_fields(design, det[s : s + step], part)
        torch.sub(thru, drop, out=w[s : s + step])
        torch.mean(thru.add_(drop), -1, out=transmit[s : s + step])


def refresh(
    design: ChipDesign, state: BankState, banks: torch.Tensor | None, r0: int, r1: int | None,
    generator: torch.Generator, *, rewritten: bool = False,
) -> BankState:  # fmt: skip
    """``state`` with W_eff and the mean ring transmission of rows [r0, r1) of ``banks`` (None: all banks, written
    in place) recomputed at the current drift, and its detection constants' transmission term with them.
    ``rewritten`` (code_refresh 'every-step', a later decode step): the rows hold codes calibrated
    ``calibration_age_s`` before now, so they see the drift since then (drawn backwards from the drift now, with
    ``generator``) instead of the drift since their first programming."""
    sl = slice(r0, r1)
    static = state.static[:, sl] if banks is None else state.static[banks, sl]
    if rewritten and design.refreshes_codes:
        idx = torch.arange(state.static.shape[0]) if banks is None else banks
        cal = state.cal_drift[:, sl] if banks is None else state.cal_drift[banks, sl]
        now = drift.now(state, banks, r0, r1)
        # the codes' compensation moves from the first calibration's drift to that of the rewrite's calibration
        then = drift.at_calibration(design, state, idx, r0, r1 if r1 is not None else state.rows, generator)
        det = static + cal + (now - then)
    else:
        det = drift.now(state, banks, r0, r1, static)
    nb, nr, d = det.shape
    flat = det.view(-1, d)
    # all banks: write straight into the state buffers where their rows are contiguous (one bank, or no spare
    # capacity); otherwise into new tensors that are copied in at the end
    w_dst = state.w[:, sl] if banks is None else None
    t_dst = state.transmit[:, sl] if banks is None else None
    w = w_dst if w_dst is not None and w_dst.is_contiguous() else torch.empty_like(det)  # [nb, nr, d]
    absorb = t_dst if t_dst is not None and t_dst.is_contiguous() else torch.empty((nb, nr), dtype=torch.float32)
    cascade_weights(design, flat, w.view(-1, d), absorb.view(-1), chunk_rows(design), extras(state, banks, r0, r1))
    if banks is not None:
        state.w[banks, sl] = w
        state.transmit[banks, sl] = absorb
    else:
        if w is not w_dst:
            w_dst.copy_(w)
        if absorb is not t_dst:
            t_dst.copy_(absorb)
    if state.detection is None:
        return state
    return state.replace(detection=state.detection.with_transmit(state.transmit))


def as_programmed(design: ChipDesign, state: BankState) -> torch.Tensor:
    """W_eff [B, N, d] of ``state`` as programmed: the chip's weights at the applied drive with the trim residual
    and every static fabrication effect; with in-situ calibration also the drift present at programming time (what
    the calibration compensated); drift and DC relaxation after programming are excluded."""
    c = design.config
    det = state.static
    if state.has("eo"):  # undo the relaxation since programming
        det = design.rest_detuning_m + state.eo + state.trim
    if c.feedback_calibration:
        det = det + drift.now(state, None, 0, None)
    _, n, d = det.shape
    thru, drop = chip_fields(design, det.reshape(-1, d), extras(state, None, 0, None))
    return (thru - drop).reshape(-1, n, d)
