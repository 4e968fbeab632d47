"""One query batch through a bank state: encoding, the optical matmul, detection noise, ADC, counters (PHYSICS.md
§6–§7, §9).

A query costs: MZM encoding of each line (offset: one pass; dual-rail: a positive and a negative pass) → the
balanced power W_eff·P of every row (one batched matmul) → Gaussian noise with per-row variances from the
photocurrents → ADC with the full scale fixed at programming → estimates in signature·query units, or the top-k
rows ranked on the ADC codes. The query-independent constants (:func:`constants`) are computed once per programming
and cached in the state.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import torch

from kvprism.photonics import encoding, noise
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import BankState, DetectionConstants, transmit_variance
from kvprism.photonics.topk import topk_codes, topk_lowest_index

__all__ = ["Workspace", "constants", "count_evaluations", "prepared", "scores"]

_CHUNK_DETECT = 1 << 18  # rows × evaluations per detection chunk (two 1 MiB float32 work buffers stay in L2)


class Workspace:
    """Two reusable [B, N, E] float32 work buffers for detection (a fresh pair per query costs page faults); never
    returned to callers."""

    def __init__(self) -> None:
        self._bufs: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bufs is None or self._bufs[0].shape != shape:
            self._bufs = (torch.empty(shape, dtype=torch.float32), torch.empty(shape, dtype=torch.float32))
        return self._bufs


def count_evaluations(design: ChipDesign, counters: MutableMapping[str, Any], b: int, g: int, n: int) -> None:
    """Count ``g`` queries on each of ``b`` banks of ``n`` rows: passes, DAC samples, ADC conversions and the page
    loads of time multiplexing (when the rows exceed the chip's physical rows)."""
    c, d = design.config, design.d
    passes = 2 if c.encoding == "dual-rail" and not c.is_ideal else 1
    counters["queries"] += b * g
    counters["evaluations"] += b * g * passes
    counters["dac_samples"] += b * g * passes * d
    counters["adc_conversions"] += b * g * passes * n
    pages = math.ceil(b * n / design.rows)
    counters["pages"] += pages
    if pages > 1:
        counters["page_row_programs"] += b * n


def constants(design: ChipDesign, state: BankState) -> DetectionConstants:
    """The query-independent detection and ADC constants of ``state`` (see :class:`DetectionConstants`)."""
    c = design.config
    b = state.const.shape[0]
    tmin = design.mzm_t_min
    p_row = design.link.row_line_w
    offset = c.encoding == "offset"
    lin = (1.0 - tmin) * p_row  # W per unit of Σ w·f (the believed linear MZM response)
    # offset encoding: subtract the row constant the controller believes in, Σ_j P_j(u=0) w_believed_nj
    bz = (tmin + (1.0 - tmin) * 0.5) * p_row if offset else 0.0
    unit = 0.5 * lin if offset else lin  # W per unit score (weight units)
    fs = state.full_scale.double() * (unit if offset else lin / (1.0 - tmin))  # [B] W, fixed at programming
    levels = float(2**c.adc_bits - 1) if c.adc_bits else 0.0
    gain = levels / (2.0 * fs) if c.adc_bits else torch.ones_like(fs)  # [B] codes per W (ADC step = 1/gain)
    # c0: what is added to W·P in detector units: ADC offset FS (code levels/2) minus the believed row constant
    c0 = (-bz * gain).view(b, 1, 1) * state.const.double().unsqueeze(-1)  # [B, N, 1]
    if c.adc_bits:
        c0 += levels / 2.0
    gain32 = gain.to(torch.float32).view(b, 1, 1)
    out: dict[str, Any] = {}
    if c.noise:
        # row noise in A²: 2q(I_thru + I_drop + 2 I_dark)Δf + i_n²Δf + 2(R·NEP)²Δf, with I_thru + I_drop =
        # R Σ_j P_j (1 − A_nj); the row-mean absorption Ā_n stands in for A_nj (ring absorption is ≤ a few % and
        # nearly uniform along a row: the variance error is ≪ 1 %). Divided by R² to stay in optical watts, times
        # gain² for detector units: σ²_n = var_const + shot_q · transmit_n, shot_q = 2qΔf/R · Σ_j P_j per query.
        bw, q_e, resp = c.detection_bandwidth_hz, noise.ELEMENTARY_CHARGE_C, c.pd_responsivity_a_per_w
        const_a2 = (
            2.0 * q_e * 2.0 * c.dark_current_a * bw
            + noise.tia_variance_a2(c.tia_noise_a_per_rthz, bw)
            + noise.nep_variance_a2(c.nep_w_per_rthz, resp, bw)
        )
        g2 = gain.square().view(b, 1, 1)
        out["var_const"] = (g2 * (const_a2 / resp**2)).to(torch.float32)  # [B, 1, 1]
        out["g2"] = g2
        out["var_transmit"] = transmit_variance(g2, state.transmit)  # [B, N, 1], refreshed with W_eff
        out["shot_w2_per_w"] = 2.0 * q_e * bw / resp  # W² of shot variance per W of total line power
    return DetectionConstants(
        p_row_w=p_row, unit_w=unit, levels=levels, offset=offset,
        per_unit_scale=(1.0 / (unit * state.scale.double())).to(torch.float32).view(b, 1, 1),
        full_scale_w=fs.view(b, 1, 1), gain=gain32, inv_gain=1.0 / gain32, c0=c0.to(torch.float32),
        level_w=None if design.mzm_levels is None else design.mzm_levels * p_row, **out,
    )  # fmt: skip


def prepared(design: ChipDesign, state: BankState) -> BankState:
    """``state`` with its detection constants computed (they are cached until the rows are programmed again)."""
    if state.detection is not None:
        return state
    return state.replace(detection=constants(design, state))


def scores(
    design: ChipDesign, state: BankState, q: torch.Tensor, k: int | None, generator: torch.Generator,
    counters: MutableMapping[str, Any], work: Workspace,
) -> torch.Tensor:  # fmt: skip
    """[B, G, N] score estimates in signature·query units for queries ``q`` [B, G, d] through ``state`` (with its
    detection constants, :func:`prepared`); with ``k``: the top-k indices [B, G, k] of those estimates instead
    (ties → lower index), ranked on the ADC codes (an increasing affine map of the estimates per bank and query:
    same order and ties). Noise is drawn from ``generator``; ADC clips are counted in ``counters``."""
    c, det = design.config, state.detection
    b, g, _ = q.shape
    n = state.rows
    q = q.to(torch.float32)
    qmax = q.abs().amax(dim=-1, keepdim=True)
    qmax.masked_fill_(qmax == 0, 1.0)
    u = q / qmax  # [B, G, d] in [−1, 1]
    frac = u.add_(1.0).mul_(0.5) if det.offset else torch.cat([u.clamp_min(0.0), (-u).clamp_min(0.0)], 1)
    # power [B, E, d]: W per line at the row (MZM transmission × budget)
    if det.level_w is not None:
        codes = encoding.dac_codes(frac, v_pi_v=c.mzm_v_pi_v, dac_bits=c.query_bits, predistort=c.mzm_predistortion)
        power = det.level_w.index_select(0, codes.view(-1)).view(codes.shape)
    else:
        t = encoding.encode(
            frac, v_pi_v=c.mzm_v_pi_v, extinction_db=c.mzm_extinction_db, dac_bits=0,
            predistort=c.mzm_predistortion,
        )  # fmt: skip
        power = t * det.p_row_w
    if design.rin_sigma > 0.0:  # RIN: one draw per line and evaluation, shared by every row of the bank
        rin = torch.randn(power.shape, generator=generator, dtype=torch.float32)
        power.mul_(rin.mul_(design.rin_sigma).add_(1.0))
    e = power.shape[1]
    shot = power.sum(-1).mul_(det.shot_w2_per_w).unsqueeze(1)  # [B, 1, E] shot variance per row
    gp = power.mul_(det.gain).transpose(1, 2)  # [B, d, E] line powers in detector units
    factor = qmax.mul_(det.per_unit_scale).transpose(1, 2)  # [B, 1, G] to signature·query units
    # banks are processed in chunks whose work buffers stay in the CPU cache across the elementwise passes
    chunk = max(1, _CHUNK_DETECT // (n * e))
    acc, buf = work.get((min(chunk, b), n, e))  # layout [B, N, E]: the matmul writes evaluations innermost
    if chunk >= b:  # one chunk: no slicing
        out = _detect(design, state, None, shot, gp, factor, g, k, acc, buf, generator, counters)
    else:
        outs = []
        for b0 in range(0, b, chunk):
            sl = slice(b0, min(b, b0 + chunk))
            m = sl.stop - sl.start
            outs.append(
                _detect(design, state, sl, shot[sl], gp[sl], factor[sl], g, k, acc[:m], buf[:m], generator, counters)
            )
        out = torch.cat(outs)
    return out if k is not None else out.transpose(1, 2)


def _detect(
    design: ChipDesign, state: BankState, sl: slice | None, shot: torch.Tensor, gp: torch.Tensor,
    factor: torch.Tensor, g: int, k: int | None, acc: torch.Tensor, work: torch.Tensor, generator: torch.Generator,
    counters: MutableMapping[str, Any],
) -> torch.Tensor:  # fmt: skip
    """Detection, noise and ADC for the banks ``sl`` (None: all) ([M, N, E] work buffers ``acc``, ``work``):
    score estimates [M, N, G], or with ``k`` the top-k indices [M, G, k]."""
    c, det = design.config, state.detection
    m, n, e = acc.shape

    def banks(x: torch.Tensor) -> torch.Tensor:
        return x if sl is None else x[sl]

    c0 = banks(det.c0)
    if c.noise:
        # independent Gaussian per row and evaluation, σ from this evaluation's photocurrents, in detector units
        sigma = torch.mul(banks(det.var_transmit), shot, out=work).add_(banks(det.var_const)).sqrt_()
        torch.randn((m, n, e), generator=generator, dtype=torch.float32, out=acc)
        torch.addcmul(c0, sigma, acc, out=acc)
    else:
        acc.copy_(c0.expand(m, n, e))
    # balanced optical power W_eff·P in W (the photocurrent is R times this; R folded into the constants), in
    # detector units, added to offset + noise
    acc.add_(torch.bmm(banks(state.w), gp, out=work))
    levels = det.levels
    if c.adc_bits:
        # ADC with full scale fixed at programming: codes = round((raw − offset + FS)/step), 2^bits levels
        acc.round_()
        codes = torch.clamp(acc, 0.0, levels, out=work)
        counters["adc_clips"] += _count_changed(acc, codes)
        if det.offset:
            if k is not None:
                return topk_codes(codes.transpose(1, 2), k, int(levels) + 1)
            step = banks(det.inv_gain) * factor  # [M, 1, G]: est = (code − levels/2)·step·factor
            return torch.addcmul(-0.5 * levels * step, codes, step)
        diff = codes[..., :g] - codes[..., g:]  # integer codes in [−levels, levels]
        if k is not None:
            return topk_codes(diff.add_(levels).transpose(1, 2), k, 2 * int(levels) + 1)
        return diff.mul_(banks(det.inv_gain) * factor)
    est = torch.mul(acc, factor) if det.offset else (acc[..., :g] - acc[..., g:]).mul_(factor)
    return est if k is None else topk_lowest_index(est.transpose(1, 2), k)


def _count_changed(before: torch.Tensor, after: torch.Tensor) -> int:
    """Number of entries where the integer-valued ``before`` and ``after`` differ (ADC clips); overwrites ``before``.
    The differences are clamped to {−1, 0, 1} and summed as squares, exact in float32 below 2^24 entries."""
    diff = before.sub_(after).clamp_(-1.0, 1.0).view(-1)
    if diff.numel() < 1 << 24:
        return int(torch.dot(diff, diff))
    return int(torch.count_nonzero(diff))
