"""``PhotonicEngine``: a simulated TFLN microring broadcast-and-weight chip with the physics in the loop.

State per logical weight bank (leading dims ``[*L]`` of the signatures, flattened to ``B`` banks internally):
the signatures [B, N, d], one scale per bank, each ring's static detuning (rest point + quantised EO shift + trim
residual) [B, N, d], the per-ring and global drift processes, and the effective weights W_eff = thru − drop [B, N, d]
that the cascade model gives for the current detunings. W_eff is recomputed when rows are programmed and when the
drift has moved (lazily, at the next evaluation), never per query. A query then costs: encoding → one batched matmul
→ Gaussian noise with per-row variances derived from the photocurrents → ADC → top-k.

Time multiplexing: the chip holds ``rows_per_bank · n_banks`` rows; when the programmed rows exceed that, each
evaluation loads the rows in pages, and every page load is counted as reprogramming (``pages``,
``page_row_programs``). Physics is identical for every page (same splitter, same rings).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.photonics import drift as drift_mod
from kvprism.photonics import encoding, link, noise, ring
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.select import topk_lowest_index
from kvprism.photonics.wdm import RowOptics, calibrate, cascade

__all__ = ["PhotonicEngine"]

_COUNTERS = (
    "row_programs",  # rows written by program()/append() (new rows), incl. the rows of rescaled banks
    "ring_updates",  # ring drive-voltage writes (rows × d), for C·V² energy
    "bank_rescales",  # banks whose single scale had to change on append (all their rows reprogrammed)
    "rescale_row_programs",  # rows rewritten because of bank rescales (subset of row_programs)
    "queries",  # query vectors evaluated (one per bank and G entry)
    "evaluations",  # optical passes of a logical bank (queries × 2 for dual-rail)
    "pages",  # chip page loads (> 1 per evaluation batch when rows exceed the physical rows)
    "page_row_programs",  # rows reloaded because of time multiplexing
    "dac_samples",  # query DAC conversions (evaluations × d)
    "adc_conversions",  # ADC conversions (evaluations × N)
    "adc_clips",  # ADC samples beyond full scale
    "drift_steps",  # decode steps the drift process was advanced
    "weight_refreshes",  # recomputations of W_eff for drifted rings (full cascade over all rows)
)
_CHUNK_ELEMS = 1 << 22  # rows × d × d elements per cascade chunk (bounds memory of the O(d²) ring model)


class PhotonicEngine:
    """Photonic block-selection engine. See the module docstring for the model; shapes in the method docstrings.

    ``seed`` seeds the one ``torch.Generator`` from which every random draw (trim residual, drift, RIN, detection
    noise, feasibility Monte Carlo) is taken, in call order."""

    def __init__(self, config: PhotonicConfig, seed: int = 0) -> None:
        if not isinstance(config, PhotonicConfig):
            raise KvprismError(f"PhotonicEngine needs a PhotonicConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self.counters: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        self.counters["program_energy_j"] = 0.0  # Σ C·V² over ring drive writes
        self._lead: tuple[int, ...] | None = None
        self._sig: torch.Tensor | None = None
        self._optics: RowOptics | None = None
        self._pending_steps = 0
        self._stale = False
        self.last_calibration_residual: float | None = None
        c = config
        self._r1, self._r2 = c.couplings
        self._a = float(ring.round_trip_amplitude(c.loss_db_per_m, c.ring_radius_m))
        self._dtype = torch.float32
        self._tmin = encoding.t_min(c.mzm_extinction_db)
        self._rin = noise.rin_sigma(c.rin_db_per_hz, c.detection_bandwidth_hz) if c.noise else 0.0

    # ------------------------------------------------------------------ public state
    @property
    def n_rows(self) -> int:
        """Rows N currently programmed in every bank (0 before :meth:`program`)."""
        return 0 if self._sig is None else int(self._sig.shape[1])

    @property
    def n_dims(self) -> int | None:
        return None if self._sig is None else int(self._sig.shape[2])

    @property
    def bank_shape(self) -> tuple[int, ...] | None:
        """Leading dims ``[*L]`` of the programmed signatures."""
        return self._lead

    def link_budget(self, d: int | None = None) -> link.LinkBudget:
        c = self.config
        d = d or self.n_dims or c.n_lines
        return link.link_budget(
            laser_line_dbm=c.laser_line_dbm,
            coupling_loss_db=c.coupling_loss_db,
            mzm_insertion_loss_db=c.mzm_insertion_loss_db,
            rows_per_bank=c.rows_per_bank,
            splitter_excess_db_per_stage=c.splitter_excess_db_per_stage,
            waveguide_loss_db_per_m=c.waveguide_loss_db_per_m,
            waveguide_length_m=c.waveguide_length_m,
            ring_insertion_db=c.ring_insertion_db,
            n_rings_passed=d,
            pd_coupling_loss_db=c.pd_coupling_loss_db,
        )

    def optics(self, d: int) -> RowOptics:
        """The row optics for ``d`` comb lines (cached)."""
        if self._optics is None or self._optics.n_lines != d:
            c = self.config
            self._optics = RowOptics.build(
                d, c.channel_spacing_m, c.wavelength_center_m, c.ring_radius_m, c.n_eff, c.n_g,
                self._r1, self._r2, self._a, c.bus_order, self._dtype,
            )  # fmt: skip
        return self._optics

    def detuning_range_m(self) -> tuple[float, float]:
        """Detunings [m] the calibration may aim for: [0, 2·tuning·V_max − 2·margin] (``compensation_margin_m`` of the
        config: swing kept for the closed loop's compensation of trim residual and drift; 0 open loop). What the
        compensation needs beyond the margin is clipped by the voltage quantiser."""
        c = self.config
        return 0.0, 2.0 * (c.tuning_m_per_v * c.v_max_v - c.compensation_margin_m)

    def weight_range(self, d: int | None = None) -> float:
        """Half-width w_r of the symmetric weight interval used for every bank: the wanted
        ``weight_range_target`` limited by what one ring reaches inside :meth:`detuning_range_m`."""
        opt = self.optics(d or self.n_dims or self.config.n_lines)
        lo_m, hi_m = self.detuning_range_m()
        per_m = opt.phase_per_m.double()  # the weakest ring (line with the smallest phase per metre) limits w_hi
        w_lo = float(ring.single_ring_weight(lo_m * per_m, self._r1, self._r2, self._a).max())
        w_hi = float(ring.single_ring_weight(hi_m * per_m, self._r1, self._r2, self._a).min())
        return max(1e-3, min(self.config.weight_range_target, -w_lo, w_hi))

    # ------------------------------------------------------------------ programming
    def program(self, signatures: torch.Tensor) -> None:
        """Program all banks: ``signatures`` [*L, N, d] (float). Replaces any previous content.

        Maps each bank into [−w_r, w_r] with one scale per bank, calibrates the ring detunings against the cascade
        model, quantises the drive voltages (``program_bits`` over ±V_max) and applies the trim residual."""
        sig = self._check_sig(signatures, "signatures")
        self._lead = tuple(sig.shape[:-2])
        n, d = sig.shape[-2:]
        b = math.prod(self._lead)
        self._sig = sig.reshape(b, n, d)
        self._pending_steps = 0
        self._stale = False
        self.counters["row_programs"] += b * n
        self.counters["ring_updates"] += b * n * d
        if self.config.is_ideal:
            return
        c = self.config
        self._wr = self.weight_range(d)
        self._scale = self._bank_scale(self._sig)
        shape = (b, n, d)
        self._static = torch.zeros(shape, dtype=self._dtype)
        self._trim = drift_mod.trim_residual(shape, c.trim_sigma_m, self._gen, self._dtype)
        self._ring_drift = drift_mod.stationary_draw(shape, c.drift_ring_sigma_m, self._gen, self._dtype)
        self._global_drift = float(drift_mod.stationary_draw((1,), c.drift_global_sigma_m, self._gen)[0])
        self._w = torch.zeros(shape, dtype=self._dtype)
        self._absorb = torch.zeros((b, n), dtype=self._dtype)
        self._const = torch.zeros((b, n), dtype=self._dtype)
        self._abs_sum = torch.zeros((b, n), dtype=self._dtype)
        self._program_rows(torch.arange(b), 0, n)

    def append(self, signatures: torch.Tensor) -> None:
        """Program ``m`` new rows after the existing N in every bank: ``signatures`` [*L, m, d].

        A bank whose new rows do not fit its current scale is rescaled: all its rows are reprogrammed
        (counted in ``bank_rescales`` and ``rescale_row_programs``)."""
        if self._sig is None:
            self.program(signatures)
            return
        sig = self._check_sig(signatures, "signatures")
        if tuple(sig.shape[:-2]) != self._lead or sig.shape[-1] != self._sig.shape[-1]:
            raise KvprismError(
                f"append: signatures have shape {list(sig.shape)}; expected [{', '.join(map(str, self._lead))}, m, "
                f"{self._sig.shape[-1]}] to match the programmed banks"
            )
        b, n0, d = self._sig.shape
        m = sig.shape[-2]
        if m == 0:
            return
        new = sig.reshape(b, m, d).to(self._sig.dtype)
        self._sig = torch.cat([self._sig, new], dim=1)
        self.counters["row_programs"] += b * m
        self.counters["ring_updates"] += b * m * d
        if self.config.is_ideal:
            return
        c = self.config
        extra = (b, m, d)
        self._static = torch.cat([self._static, torch.zeros(extra, dtype=self._dtype)], 1)
        self._trim = torch.cat([self._trim, drift_mod.trim_residual(extra, c.trim_sigma_m, self._gen, self._dtype)], 1)
        fresh = drift_mod.stationary_draw(extra, c.drift_ring_sigma_m, self._gen, self._dtype)
        self._ring_drift = torch.cat([self._ring_drift, fresh], 1)
        self._w = torch.cat([self._w, torch.zeros(extra, dtype=self._dtype)], 1)
        for name in ("_absorb", "_const", "_abs_sum"):
            setattr(self, name, torch.cat([getattr(self, name), torch.zeros((b, m), dtype=self._dtype)], 1))
        # rows keep their programmed weights; only the pending drift is applied before the new rows see it
        self._apply_pending_drift()
        new_max = new.abs().amax(dim=(1, 2)).to(self._dtype) * self._scale
        rescale = new_max > self._wr * (1.0 + 1e-6)
        resc = rescale.nonzero().squeeze(-1)
        keep = (~rescale).nonzero().squeeze(-1)
        if keep.numel():
            self._program_rows(keep, n0, n0 + m)
        if resc.numel():
            self._scale[resc] = self._bank_scale(self._sig[resc])
            self.counters["bank_rescales"] += int(resc.numel())
            self.counters["rescale_row_programs"] += int(resc.numel()) * n0
            self.counters["row_programs"] += int(resc.numel()) * n0
            self.counters["ring_updates"] += int(resc.numel()) * n0 * d
            self._program_rows(resc, 0, n0 + m)

    def advance(self, steps: int = 1) -> None:
        """Move the thermal-drift process forward by ``steps`` decode steps (call once per decode step). The draw
        is deferred to the next evaluation (exact in distribution for any number of accumulated steps)."""
        if steps < 0:
            raise KvprismError(f"advance: steps = {steps} is invalid; allowed range: [0, inf)")
        self.counters["drift_steps"] += steps
        if self._sig is not None and not self.config.is_ideal:
            self._pending_steps += steps

    # ------------------------------------------------------------------ evaluation
    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Score estimates [*L, N] for ``query`` [*L, d], or [*L, G, N] for ``query`` [*L, G, d] (G evaluations on
        the same banks), in units of ``signatures @ query`` (noisy, quantised; exact for the ideal preset)."""
        q, squeeze = self._check_query(query)
        b, n, d = self._sig.shape
        g = q.shape[1]
        self._count_evaluations(b, g, n, d)
        if self.config.is_ideal:
            # the exact dot product in the input dtype, as ``signatures @ query[..., None]`` (or ``@ query.mT`` for
            # [*L, G, d]) on the caller's shapes, so the result is bitwise that of the plain torch expression
            sig = self._sig.reshape(*self._lead, n, d)
            qq = query.detach().cpu().to(sig.dtype)
            if squeeze:
                return (sig @ qq.unsqueeze(-1)).squeeze(-1)
            return (sig @ qq.transpose(-1, -2)).transpose(-1, -2)
        out = self._physical_scores(q).reshape(*self._lead, g, n)
        return out.squeeze(-2) if squeeze else out

    def select(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """Indices [..., k] (int64) of the k best rows for ``query`` ([*L, d] or [*L, G, d]); best first, ties broken
        by the lower index."""
        if self._sig is not None and not 0 < k <= self.n_rows:
            raise KvprismError(f"select: k = {k} is invalid; allowed range: [1, {self.n_rows}] (programmed rows)")
        return topk_lowest_index(self.scores(query), k)

    def feasibility(self, mc_rows: int = 256, mc_queries: int = 64):
        """Feasibility report of this configuration (see :func:`kvprism.photonics.feasibility.feasibility`)."""
        from kvprism.photonics.feasibility import feasibility

        return feasibility(self.config, d=self.n_dims, seed=self.seed, mc_rows=mc_rows, mc_queries=mc_queries)

    # ------------------------------------------------------------------ internals
    def _check_sig(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise KvprismError(f"{name} must be a float tensor [*L, N, d]")
        if x.dim() < 2 or x.shape[-1] == 0:
            raise KvprismError(f"{name} has shape {list(x.shape)}; expected [*L, N, d] with d ≥ 1")
        if not bool(torch.isfinite(x).all()):
            raise KvprismError(f"{name} contains NaN or inf")
        return x.detach().cpu()

    def _check_query(self, query: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if self._sig is None:
            raise KvprismError("the engine has no programmed rows; call program(signatures) first")
        if not isinstance(query, torch.Tensor) or not query.is_floating_point():
            raise KvprismError("query must be a float tensor [*L, d] or [*L, G, d]")
        lead, d = self._lead, self._sig.shape[-1]
        q = query.detach().cpu()
        if tuple(q.shape) == (*lead, d):
            return q.reshape(-1, 1, d), True
        if q.dim() == len(lead) + 2 and tuple(q.shape[: len(lead)]) == lead and q.shape[-1] == d:
            return q.reshape(-1, q.shape[-2], d), False
        want = ", ".join(map(str, lead))
        raise KvprismError(f"query has shape {list(q.shape)}; expected [{want}, {d}] or [{want}, G, {d}]")

    def _count_evaluations(self, b: int, g: int, n: int, d: int) -> None:
        c, cnt = self.config, self.counters
        passes = 2 if c.encoding == "dual-rail" and not c.is_ideal else 1
        cnt["queries"] += b * g
        cnt["evaluations"] += b * g * passes
        cnt["dac_samples"] += b * g * passes * d
        cnt["adc_conversions"] += b * g * passes * n
        pages = math.ceil(b * n / c.physical_rows)
        cnt["pages"] += pages
        if pages > 1:
            cnt["page_row_programs"] += b * n

    def _bank_scale(self, sig: torch.Tensor) -> torch.Tensor:
        """One scale per bank [B]: w_r / max|signature| (1/unit for an all-zero bank)."""
        mx = sig.abs().amax(dim=(1, 2)).to(torch.float64)
        return (self._wr / torch.where(mx > 0, mx, torch.ones_like(mx))).to(self._dtype)

    def _chunk_rows(self, d: int) -> int:
        return max(1, _CHUNK_ELEMS // (d * d))

    def _program_rows(self, banks: torch.Tensor, r0: int, r1: int) -> None:
        """Calibrate, quantise and write rows [r0, r1) of ``banks`` (1-D index tensor) into the state tensors."""
        c = self.config
        opt = self.optics(self._sig.shape[-1])
        lo_m, hi_m = self.detuning_range_m()
        sig = self._sig[banks, r0:r1].to(self._dtype)
        target = sig * self._scale[banks, None, None]
        nb, nr, d = target.shape
        flat = target.reshape(-1, d)
        det = torch.empty_like(flat)
        step = self._chunk_rows(d)
        sq_err, count = 0.0, 0
        for s in range(0, flat.shape[0], step):
            res = calibrate(flat[s : s + step], opt, lo_m, hi_m, c.calibration_iters, c.crosstalk)
            det[s : s + step] = res.detuning_m
            sq_err += res.residual**2 * res.detuning_m.numel()
            count += res.detuning_m.numel()
        self.last_calibration_residual = math.sqrt(sq_err / max(count, 1))
        det = det.reshape(nb, nr, d)
        trim = self._trim[banks, r0:r1]
        known = torch.zeros_like(det)
        if c.feedback_calibration:  # the closed loop sees the trim residual and the drift present now
            known = trim + self._ring_drift[banks, r0:r1] + self._global_drift
        volts = (det - c.rest_detuning_m - known) / c.tuning_m_per_v
        volts = encoding.quantize_uniform(volts, -c.v_max_v, c.v_max_v, c.program_bits)
        self.counters["program_energy_j"] += c.ring_capacitance_f * float(volts.double().pow(2).sum())
        static = c.rest_detuning_m + c.tuning_m_per_v * volts + trim
        self._static[banks, r0:r1] = static
        self._const[banks, r0:r1] = target.sum(-1)  # the controller's belief: the target weights
        self._abs_sum[banks, r0:r1] = target.abs().sum(-1)
        self._full_scale = self._abs_sum.amax(dim=1) * c.adc_headroom  # [B] in weight units (|Σ w u| ≤ Σ|w|)
        self._update_weights(banks, r0, r1)

    def _update_weights(self, banks: torch.Tensor | None, r0: int, r1: int | None) -> None:
        """Recompute W_eff and the mean ring absorption for the given rows at the current drift."""
        opt = self.optics(self._sig.shape[-1])
        sl = slice(r0, r1)
        if banks is None:
            det = self._static[:, sl] + self._ring_drift[:, sl] + self._global_drift
        else:
            det = self._static[banks, sl] + self._ring_drift[banks, sl] + self._global_drift
        nb, nr, d = det.shape
        flat = det.reshape(-1, d)
        w = torch.empty_like(flat)
        absorb = torch.empty(flat.shape[0], dtype=self._dtype)
        step = self._chunk_rows(d)
        for s in range(0, flat.shape[0], step):
            thru, drop = cascade(flat[s : s + step], opt, self.config.crosstalk)
            w[s : s + step] = thru - drop
            absorb[s : s + step] = (1.0 - thru - drop).mean(-1)
        if banks is None:
            self._w[:, sl] = w.reshape(nb, nr, d)
            self._absorb[:, sl] = absorb.reshape(nb, nr)
        else:
            self._w[banks, sl] = w.reshape(nb, nr, d)
            self._absorb[banks, sl] = absorb.reshape(nb, nr)

    def _apply_pending_drift(self) -> None:
        c = self.config
        if self._pending_steps == 0:
            return
        k, self._pending_steps = self._pending_steps, 0
        if c.drift_ring_sigma_m == 0.0 and c.drift_global_sigma_m == 0.0:
            return
        self._ring_drift = drift_mod.ar1_advance(
            self._ring_drift, k, c.drift_corr_steps, c.drift_ring_sigma_m, self._gen
        )
        g = torch.tensor([self._global_drift], dtype=torch.float64)
        self._global_drift = float(
            drift_mod.ar1_advance(g, k, c.drift_corr_steps, c.drift_global_sigma_m, self._gen)[0]
        )
        self._stale = True

    def _refresh(self) -> None:
        self._apply_pending_drift()
        if self._stale:
            self._update_weights(None, 0, None)
            self.counters["weight_refreshes"] += 1
            self._stale = False

    def _physical_scores(self, q: torch.Tensor) -> torch.Tensor:
        """[B, G, N] score estimates in signature·query units for q [B, G, d]."""
        c = self.config
        self._refresh()
        b, g, d = q.shape
        q = q.to(self._dtype)
        qmax = q.abs().amax(dim=-1, keepdim=True)
        qmax = torch.where(qmax > 0, qmax, torch.ones_like(qmax))
        u = q / qmax  # [B, G, d] in [−1, 1]
        frac = (1.0 + u) * 0.5 if c.encoding == "offset" else torch.cat([u.clamp_min(0.0), (-u).clamp_min(0.0)], 1)
        t = encoding.encode(
            frac, v_pi_v=c.mzm_v_pi_v, extinction_db=c.mzm_extinction_db, dac_bits=c.query_bits,
            predistort=c.mzm_predistortion,
        )  # fmt: skip
        p_row = self.link_budget(d).row_line_w
        resp = c.pd_responsivity_a_per_w
        power = t * p_row  # [B, E, d] W per line at the row (MZM transmission × budget)
        if self._rin > 0.0:  # RIN: one draw per line and evaluation, shared by every row of the bank
            power = power * (1.0 + self._rin * torch.randn(power.shape, generator=self._gen, dtype=self._dtype))
        current = torch.bmm(power, self._w.transpose(1, 2)).mul_(resp)  # [B, E, N] balanced current, A
        if c.noise:
            # shot noise needs I_thru + I_drop = R Σ_j P_j (1 − A_nj); the row-mean absorption Ā_n stands in for
            # A_nj (ring absorption is ≤ a few % and nearly uniform along a row: the variance error is ≪ 1 %)
            i_tot = (power.sum(-1, keepdim=True) * resp) * (1.0 - self._absorb).unsqueeze(1)
            var = i_tot.mul_(2.0 * noise.ELEMENTARY_CHARGE_C * c.detection_bandwidth_hz).add_(
                noise.ELEMENTARY_CHARGE_C * 4.0 * c.dark_current_a * c.detection_bandwidth_hz
                + noise.tia_variance_a2(c.tia_noise_a_per_rthz, c.detection_bandwidth_hz)
                + noise.nep_variance_a2(c.nep_w_per_rthz, resp, c.detection_bandwidth_hz)
            )
            current.addcmul_(var.sqrt_(), torch.randn(current.shape, generator=self._gen, dtype=self._dtype))
        lin = (1.0 - self._tmin) * p_row * resp  # A per unit of Σ w·f (the believed linear MZM response)
        if c.encoding == "offset":
            # subtract the row constant the controller believes in: R Σ_j P_j(u=0) w_believed_nj
            believed_zero = (self._tmin + (1.0 - self._tmin) * 0.5) * p_row * resp
            current.sub_(self._const.unsqueeze(1) * believed_zero)
            fs = (self._full_scale * (0.5 * lin)).view(b, 1, 1)
            current, clips = noise.adc_quantize(current, fs, c.adc_bits)
            est = current.mul_(1.0 / (0.5 * lin))
        else:
            fs = ((self._full_scale + self._tmin / (1.0 - self._tmin) * self._full_scale) * lin).view(b, 1, 1)
            current, clips = noise.adc_quantize(current, fs, c.adc_bits)
            est = (current[:, :g] - current[:, g:]).mul_(1.0 / lin)
        self.counters["adc_clips"] += clips
        return est.div_(self._scale.view(b, 1, 1)).mul_(qmax)
