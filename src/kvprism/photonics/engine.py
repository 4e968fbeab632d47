"""``PhotonicEngine``: a simulated TFLN microring broadcast-and-weight chip with the physics in the loop.

State per logical weight bank (leading dims ``[*L]`` of the signatures, flattened to ``B`` banks internally):
the signatures [B, N, d], one scale per bank, each ring's static detuning (rest point + quantised EO shift + trim
residual) [B, N, d], the per-ring and global drift processes, and the effective weights W_eff = thru − drop [B, N, d]
that the cascade model gives for the current detunings. W_eff is recomputed when rows are programmed and when the
drift has moved (lazily, at the next evaluation), never per query. The drift is sampled every
``drift_update_steps`` decode steps (1: every step; see :class:`PhotonicConfig`); between samples the rings hold the
last sample. A query then costs: encoding → one batched matmul
→ Gaussian noise with per-row variances derived from the photocurrents → ADC → top-k.

Time multiplexing: the chip holds ``rows_per_bank · n_banks`` rows; when the programmed rows exceed that, each
evaluation loads the rows in pages, and every page load is counted as reprogramming (``pages``,
``page_row_programs``). Physics is identical for every page (same splitter, same rings).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from kvprism.errors import KvprismError
from kvprism.photonics import drift as drift_mod
from kvprism.photonics import encoding, link, noise, program, ring
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.topk import topk_codes, topk_lowest_index
from kvprism.photonics.wdm import CascadePlan, RowOptics, cascade, cascade_coherent

__all__ = ["EngineGroup", "PhotonicEngine"]

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
    "calibration_probes",  # in-situ calibration: comb-line probes per bank (all rows of a bank read in parallel)
)
_CHUNK_ELEMS = 1 << 22  # rows × d × d elements per cascade chunk (bounds memory of the O(d²) ring model)
_CHUNK_DETECT = 1 << 18  # rows × evaluations per detection chunk (two 1 MiB float32 work buffers stay in L2)


def _row_state(name: str) -> property:
    """A per-row state tensor [B, N, ...]: a view of the first N rows of a buffer with spare capacity, so that
    appending rows during decode is amortised O(m) instead of copying all rows."""

    def get(self: PhotonicEngine) -> torch.Tensor | None:
        buf = self._bufs.get(name)
        return None if buf is None else buf[:, : self._n]

    def set_(self: PhotonicEngine, value: torch.Tensor) -> None:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[1] < value.shape[1] or buf.dtype != value.dtype:
            self._bufs[name] = value
        else:
            buf[:, : value.shape[1]] = value

    return property(get, set_)


def _count_changed(before: torch.Tensor, after: torch.Tensor) -> int:
    """Number of entries where the integer-valued ``before`` and ``after`` differ (ADC clips); overwrites ``before``.
    The differences are clamped to {−1, 0, 1} and summed as squares, exact in float32 below 2^24 entries."""
    diff = before.sub_(after).clamp_(-1.0, 1.0).view(-1)
    if diff.numel() < 1 << 24:
        return int(torch.dot(diff, diff))
    return int(torch.count_nonzero(diff))


class PhotonicEngine:
    """Photonic block-selection engine. See the module docstring for the model; shapes in the method docstrings.

    ``seed`` seeds the one ``torch.Generator`` from which every random draw (trim residual, drift, RIN, detection
    noise, feasibility Monte Carlo) is taken, in call order."""

    _sig = _row_state("sig")  # [B, N, d] signatures as given (input dtype)
    _static = _row_state("static")  # [B, N, d] m: rest + EO shift of the quantised voltage + trim residual
    _trim = _row_state("trim")  # [B, N, d] m: static trim residual per ring
    _ring_drift = _row_state("ring_drift")  # [B, N, d] m: per-ring drift process state
    _w = _row_state("w")  # [B, N, d] effective weights thru − drop at the current detunings
    _transmit = _row_state("transmit")  # [B, N] row mean of thru + drop (1 − absorption)
    _const = _row_state("const")  # [B, N] believed row sum Σ_j w_nj (offset subtraction)
    _abs_sum = _row_state("abs_sum")  # [B, N] believed Σ_j |w_nj| (ADC full scale)
    _bus_phase = _row_state("bus_phase")  # [B, N, d] rad: static fabrication phase of each ring's drop path
    _k1dev = _row_state("k1dev")  # [B, N, d] relative deviation of each input coupler's κ² (gap spread)
    _k2dev = _row_state("k2dev")  # [B, N, d] relative deviation of each drop coupler's κ²
    _field_drift = _row_state("field_drift")  # [B, N] m: spatially correlated drift along the bank's rows
    _eo = _row_state("eo")  # [B, N, d] m: programmed Pockels shift (held; relaxes with DC drift)
    _age = _row_state("age")  # [B, N] decode steps since each row was programmed
    _cal_drift = _row_state("cal_drift")  # [B, N, d] m: drift the rows' codes compensate (code_refresh 'every-step')

    def __init__(self, config: PhotonicConfig, seed: int = 0) -> None:
        if not isinstance(config, PhotonicConfig):
            raise KvprismError(f"PhotonicEngine needs a PhotonicConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self.counters: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        self.counters["program_energy_j"] = 0.0  # Σ C·V² over ring drive writes
        self._lead: tuple[int, ...] | None = None
        self._bufs: dict[str, torch.Tensor] = {}
        self._n = 0
        self._optics: RowOptics | None = None
        self._designs: dict[int, ChipDesign] = {}  # ChipDesign per comb-line count (see design())
        self._pending_steps = 0
        self._stale = False
        self._det: dict[str, Any] | None = None  # detection constants (see _detection_constants)
        self._group: EngineGroup | None = None  # engines whose drift is sampled together (see EngineGroup)
        self.last_calibration_residual: float | None = None
        c = config
        self._r1, self._r2 = c.couplings
        self._a = float(ring.round_trip_amplitude(c.loss_db_per_m, c.ring_radius_m))
        self._dtype = torch.float32
        self._coherent = c.crosstalk and c.drop_bus == "coherent"
        self._fwhm_m = float(ring.fwhm_m(c.wavelength_center_m, c.n_g, c.ring_radius_m, self._r1, self._r2, self._a))
        self.last_calibration_mismatch: float | None = None  # model-based: RMS chip − controller model weights
        self.counters["calibration_time_s"] = 0.0  # in-situ calibration: probes × integration time
        self._tmin = encoding.t_min(c.mzm_extinction_db)
        self._rin = noise.rin_sigma(c.rin_db_per_hz, c.detection_bandwidth_hz) if c.noise else 0.0
        # with a query DAC the MZM transmission takes 2^bits values: tabulated once, looked up per query
        self._mzm_table = (
            encoding.level_transmission(v_pi_v=c.mzm_v_pi_v, extinction_db=c.mzm_extinction_db, dac_bits=c.query_bits)
            if c.query_bits
            else None
        )

    # ------------------------------------------------------------------ public state
    @property
    def n_rows(self) -> int:
        """Rows N currently programmed in every bank (0 before :meth:`program`)."""
        return self._n

    @property
    def n_dims(self) -> int | None:
        return None if self._sig is None else int(self._sig.shape[2])

    @property
    def signatures(self) -> torch.Tensor | None:
        """The programmed signatures as given, ``[*L, N, d]`` (None before :meth:`program`)."""
        if self._sig is None:
            return None
        return self._sig.reshape(*self._lead, *self._sig.shape[1:])

    @property
    def bank_shape(self) -> tuple[int, ...] | None:
        """Leading dims ``[*L]`` of the programmed signatures."""
        return self._lead

    def link_budget(self, d: int | None = None) -> link.LinkBudget:
        """The optical link of the design for ``d`` lines (:class:`~kvprism.photonics.design.ChipDesign`)."""
        return self.design(d).link

    def design(self, d: int | None = None) -> ChipDesign:
        """The :class:`~kvprism.photonics.design.ChipDesign` of this engine's config for ``d`` lines (default: the
        programmed width, else ``n_lines``); built once per width."""
        d = d or self.n_dims or self.config.n_lines
        if d not in self._designs:
            self._designs[d] = ChipDesign.from_config(self.config, d)
        return self._designs[d]

    def weights_as_programmed(self) -> torch.Tensor:
        """W_eff [*L, N, d] as programmed: the chip's weights at the applied drive with the trim residual and every
        static fabrication effect (bus phases, coupling spread); with in-situ calibration (``feedback_calibration``,
        which measured and compensated it) also the drift present at programming time — for codes calibrated
        ``calibration_age_s`` earlier, the drift then is what was compensated, so the drift since then shows here as
        programming error; drift and DC relaxation after programming are excluded. Equal to the signatures for the
        ideal preset."""
        if self._sig is None:
            raise KvprismError("the engine has no programmed rows; call program(signatures) first")
        if self.config.is_ideal:
            return self._sig.reshape(*self._lead, *self._sig.shape[1:]).clone()
        det = self._static
        if "eo" in self._bufs:  # undo the relaxation since programming
            det = self.config.rest_detuning_m + self._eo + self._trim
        if self.config.feedback_calibration:
            det = det + self._drift_now(None, 0, None)
        _, n, d = det.shape
        thru, drop = self._chip_fields(det.reshape(-1, d), self._extras(None, 0, None))
        return (thru - drop).reshape(*self._lead, n, d)

    def optics(self, d: int) -> RowOptics:
        """The row optics for ``d`` comb lines (cached, with its :class:`CascadePlan`)."""
        if self._optics is None or self._optics.n_lines != d:
            c = self.config
            self._optics = RowOptics.build(
                d, c.channel_spacing_m, c.wavelength_center_m, c.ring_radius_m, c.n_eff, c.n_g,
                self._r1, self._r2, self._a, c.bus_order, self._dtype, c.ring_pitch_m,
            )  # fmt: skip
            self._plan = None
            if c.crosstalk and c.cascade_near_fwhm > 0 and not self._coherent:
                # every detuning the rings can physically take: the drive range around the rest point ± 6σ of the
                # trim residual and drift
                sigma = math.sqrt(
                    c.trim_sigma_m**2 + c.drift_ring_sigma_m**2 + c.drift_global_sigma_m**2 + c.drift_field_sigma_m**2
                )
                reach = c.tuning_m_per_v * c.v_max_v + 6.0 * sigma
                lo, hi = c.rest_detuning_m - reach, c.rest_detuning_m + reach
                self._plan = CascadePlan.build(self._optics, lo, hi, c.cascade_near_fwhm)
        return self._optics

    @property
    def cascade_plan(self) -> CascadePlan | None:
        """The near/far cascade approximation in use (None: closed form for every ring)."""
        return getattr(self, "_plan", None)

    def detuning_range_m(self) -> tuple[float, float]:
        """Detunings [m] the calibration may aim for: the drive's reach rest ± (tuning·V_max − margin), above 0
        (``compensation_margin_m`` of the config: swing kept for the closed loop's compensation of trim residual and
        drift; 0 open loop). With ``rest_point = "eo-centre"`` this is [0, 2·tuning·V_max − 2·margin]."""
        return self.design().detuning_range_m

    def weight_range(self, d: int | None = None) -> float:
        """Half-width w_r of the symmetric weight interval used for every bank: the wanted
        ``weight_range_target`` limited by what one ring reaches inside :meth:`detuning_range_m` (the design's)."""
        return self.design(d).weight_range

    # ------------------------------------------------------------------ programming
    def program(self, signatures: torch.Tensor) -> None:
        """Program all banks: ``signatures`` [*L, N, d] (float). Replaces any previous content.

        Maps each bank into [−w_r, w_r] with one scale per bank, calibrates the ring detunings against the cascade
        model, quantises the drive voltages (``program_bits`` over ±V_max) and applies the trim residual."""
        sig = self._check_sig(signatures, "signatures")
        self._lead = tuple(sig.shape[:-2])
        n, d = sig.shape[-2:]
        b = math.prod(self._lead)
        self._bufs = {}
        self._n = n
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
        self._transmit = torch.zeros((b, n), dtype=self._dtype)  # 1 − row-mean ring absorption
        self._const = torch.zeros((b, n), dtype=self._dtype)
        self._abs_sum = torch.zeros((b, n), dtype=self._dtype)
        for name, value in self._fabricate((b, n, d)).items():
            setattr(self, name, value)
        if self._refreshes_codes:
            self._cal_drift = torch.zeros(shape, dtype=self._dtype)
        self._program_rows(torch.arange(b), 0, n)

    def _fabricate(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """Per-row state of ``shape`` = (banks, new rows, d) drawn when rows first exist, after the trim and drift
        draws (only the models that are on draw, so switching one off leaves the other draws unchanged): the drop
        path's fabrication phases, the couplers' gap spread, the spatially correlated drift along the rows (drawn
        for the new rows alone: not continued from the rows before), and the held EO shift / row age for DC
        relaxation."""
        c, out = self.config, {}
        b, n, _ = shape
        if self._coherent and c.bus_phase_random:
            out["_bus_phase"] = torch.rand(shape, generator=self._gen, dtype=self._dtype) * (2.0 * math.pi)
        if c.coupler_gap_sigma_m > 0.0:
            out["_k1dev"] = drift_mod.coupling_deviation(shape, c.coupler_gap_sigma_m, c.coupler_gap_decay_m, self._gen)
            out["_k2dev"] = drift_mod.coupling_deviation(shape, c.coupler_gap_sigma_m, c.coupler_gap_decay_m, self._gen)
        if c.drift_field_sigma_m > 0.0:
            out["_field_drift"] = drift_mod.spatial_field(
                (b, n), c.drift_field_sigma_m, self._field_rho, self._gen, self._dtype
            )
        if c.dc_relax_fraction > 0.0:
            out["_eo"] = torch.zeros(shape, dtype=self._dtype)
            out["_age"] = torch.zeros((b, n), dtype=self._dtype)
        return out

    @property
    def _field_rho(self) -> float:
        """Correlation of the spatial drift field between neighbouring rows (row pitch / correlation length)."""
        return math.exp(-self.config.ring_pitch_m / self.config.drift_corr_length_m)

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
        # the pending drift is sampled before the new rows exist (they start from the stationary distribution);
        # programmed rows keep their programmed weights and see the drift from the next sample on
        self._apply_pending_drift()
        self._grow(n0 + m)
        self._n = n0 + m
        self._sig[:, n0:] = new
        self.counters["row_programs"] += b * m
        self.counters["ring_updates"] += b * m * d
        if self.config.is_ideal:
            return
        c = self.config
        extra = (b, m, d)
        self._trim[:, n0:] = drift_mod.trim_residual(extra, c.trim_sigma_m, self._gen, self._dtype)
        self._ring_drift[:, n0:] = drift_mod.stationary_draw(extra, c.drift_ring_sigma_m, self._gen, self._dtype)
        for name, value in self._fabricate(extra).items():
            getattr(self, name)[:, n0:] = value
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
        is deferred to the next evaluation (exact in distribution for any number of accumulated steps) and made once
        at least ``drift_update_steps`` steps have accumulated; until then the rings hold the last drift sample."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise KvprismError(f"advance: steps = {steps!r} is invalid; allowed: an int in [0, inf)")
        self.counters["drift_steps"] += steps
        if self._sig is not None and not self.config.is_ideal:
            self._pending_steps += steps

    # ------------------------------------------------------------------ evaluation
    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Score estimates [*L, N] for ``query`` [*L, d], or [*L, G, N] for ``query`` [*L, G, d] (G evaluations on
        the same banks), in units of ``signatures @ query`` (noisy, quantised; exact for the ideal preset).
        The simulation runs on the CPU; the result is returned on ``query``'s device."""
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
                return (sig @ qq.unsqueeze(-1)).squeeze(-1).to(query.device)
            return (sig @ qq.transpose(-1, -2)).transpose(-1, -2).to(query.device)
        out = self._physical_scores(q).reshape(*self._lead, g, n)
        return (out.squeeze(-2) if squeeze else out).to(query.device)

    def select(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """Indices [..., k] (int64) of the k best rows for ``query`` ([*L, d] or [*L, G, d]); best first, ties broken
        by the lower index."""
        if not isinstance(k, int) or isinstance(k, bool):
            raise KvprismError(f"select: k = {k!r} is invalid; allowed: an int in [1, programmed rows]")
        if self._sig is not None and not 0 < k <= self.n_rows:
            raise KvprismError(f"select: k = {k} is invalid; allowed range: [1, {self.n_rows}] (programmed rows)")
        if self._sig is None or self.config.is_ideal:
            return topk_lowest_index(self.scores(query), k).to(query.device)
        q, squeeze = self._check_query(query)
        b, n, d = self._sig.shape
        g = q.shape[1]
        self._count_evaluations(b, g, n, d)
        out = self._physical_scores(q, k).reshape(*self._lead, g, k)
        return (out.squeeze(-2) if squeeze else out).to(query.device)

    def feasibility(self, mc_rows: int = 256, mc_queries: int = 64):
        """Feasibility report of this configuration (see :func:`kvprism.photonics.feasibility.feasibility`)."""
        from kvprism.photonics.feasibility import feasibility

        return feasibility(self.config, d=self.n_dims, seed=self.seed, mc_rows=mc_rows, mc_queries=mc_queries)

    # ------------------------------------------------------------------ internals
    def _grow(self, rows: int) -> None:
        """Make every row-state buffer hold at least ``rows`` rows (capacity doubles; existing rows are kept)."""
        for name, buf in list(self._bufs.items()):
            if buf.shape[1] >= rows:
                continue
            cap = max(rows, 2 * buf.shape[1], 16)
            new = torch.zeros((buf.shape[0], cap, *buf.shape[2:]), dtype=buf.dtype)
            new[:, : self._n] = buf[:, : self._n]
            self._bufs[name] = new

    def _check_sig(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise KvprismError(f"{name} must be a float tensor [*L, N, d]")
        if x.dim() < 2 or x.shape[-1] == 0:
            raise KvprismError(f"{name} has shape {list(x.shape)}; expected [*L, N, d] with d ≥ 1")
        if x.shape[-2] == 0 and self._sig is None:
            raise KvprismError(f"{name} has shape {list(x.shape)}: N = 0 rows; a bank needs at least one row")
        if any(s == 0 for s in x.shape[:-2]):
            raise KvprismError(f"{name} has shape {list(x.shape)}: an empty bank dimension")
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
        if not bool(torch.isfinite(q).all()):
            raise KvprismError("query contains NaN or inf")
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
        if self._coherent:  # complex work tensors [d, rows, d], several alive at once
            return max(1, _CHUNK_ELEMS // (4 * d * d))
        plan = self.cascade_plan
        k = plan.k if plan is not None else (d if self.config.crosstalk else 1)
        return max(1, _CHUNK_ELEMS // (d * k))

    def _program_rows(self, banks: torch.Tensor, r0: int, r1: int) -> None:
        """Calibrate, quantise and write rows [r0, r1) of ``banks`` (1-D index tensor) into the state tensors:
        model-based (the controller inverts its own model; mismatch in ``last_calibration_mismatch``) or in-situ
        (``feedback_calibration``: iterated on noisy measurements of the chip, :mod:`kvprism.photonics.program`)."""
        self._det = None  # detection constants depend on the rows' constants and the ADC full scale
        c = self.config
        d = self._sig.shape[-1]
        opt = self.optics(d)
        lo_m, hi_m = self.detuning_range_m()
        sig = self._sig[banks, r0:r1].to(self._dtype)
        target = sig * self._scale[banks, None, None]
        nb, nr, _ = target.shape
        flat = target.reshape(-1, d)
        if "age" in self._bufs:  # rows start their DC relaxation now
            self._age[banks, r0:r1] = 0.0
        # what the rings add to the drive while being calibrated: trim residual and the drift of that time (now, or
        # calibration_age_s ago for replayed codes)
        cal_drift = self._drift_at_calibration(banks, r0, r1)
        if self._refreshes_codes:
            self._cal_drift[banks, r0:r1] = cal_drift
        offset = (self._trim[banks, r0:r1] + cal_drift).reshape(-1, d)
        extras = self._extras(banks, r0, r1)
        det = torch.empty_like(flat)
        step = self._chunk_rows(d)
        sq_err, count, probes = 0.0, 0, 0
        noise_ = self._probe_noise(d) if c.feedback_calibration else None
        # the closed loop may command the whole drive range, margin included (that is what the margin is kept for)
        full = c.tuning_m_per_v * c.v_max_v
        drive_m = (c.rest_detuning_m - full, c.rest_detuning_m + full)
        # dither for the side of resonance: a tenth of a linewidth, at least two DAC steps
        dac_step_m = 2.0 * full / (2**c.program_bits - 1) if c.program_bits else 0.0
        dither_m = max(0.1 * self._fwhm_m, 2.0 * dac_step_m)
        for s0 in range(0, flat.shape[0], step):
            sl = slice(s0, s0 + step)
            ex = {k: v[sl] for k, v in extras.items()}
            if noise_ is not None:
                off = offset[sl]
                res = program.calibrate_in_situ(
                    flat[sl], opt, *drive_m, c.calibration_iters,
                    apply=lambda x, off=off: self._quantize_detuning(x) + off,
                    chip=lambda x, ex=ex: self._chip_weights(x, ex), noise=noise_, gen=self._gen, dither_m=dither_m,
                )  # fmt: skip
                probes = res.probes
            else:
                res = program.calibrate_model(flat[sl], opt, lo_m, hi_m, c.calibration_iters, self._controller_weights)
            det[sl] = res.detuning_m
            sq_err += res.residual**2 * res.detuning_m.numel()
            count += res.detuning_m.numel()
        self.last_calibration_residual = math.sqrt(sq_err / max(count, 1))
        if noise_ is not None:
            self.counters["calibration_probes"] += probes * nb
            self.counters["calibration_time_s"] += probes * nb * noise_.probe_time_s
        det = det.reshape(nb, nr, d)
        volts = encoding.quantize_uniform((det - c.rest_detuning_m) / c.tuning_m_per_v, -c.v_max_v, c.v_max_v,
                                          c.program_bits)  # fmt: skip
        self.counters["program_energy_j"] += c.ring_capacitance_f * float(volts.double().pow(2).sum())
        eo = c.tuning_m_per_v * volts
        if "eo" in self._bufs:
            self._eo[banks, r0:r1] = eo
        self._static[banks, r0:r1] = c.rest_detuning_m + eo + self._trim[banks, r0:r1]
        self._const[banks, r0:r1] = target.sum(-1)  # the controller's belief: the target weights
        self._abs_sum[banks, r0:r1] = target.abs().sum(-1)
        fs = self._abs_sum.amax(dim=1)  # [B] in weight units (|Σ w u| ≤ Σ|w|)
        # an all-zero bank has no score range of its own: its ADC spans the largest possible one, d·w_r
        self._full_scale = torch.where(fs > 0, fs, torch.full_like(fs, d * self._wr)) * c.adc_headroom
        self._update_weights(banks, r0, r1)
        if noise_ is None:  # what the controller's model does not know, at the drive it applied
            applied = (c.rest_detuning_m + eo).reshape(-1, d)
            model = torch.cat(
                [self._controller_weights(applied[s : s + step]) for s in range(0, applied.shape[0], step)]
            )
            true = self._w[banks, r0:r1].reshape(-1, d)
            self.last_calibration_mismatch = (
                float((true - model).double().pow(2).mean().sqrt()) if true.numel() else 0.0
            )

    def _quantize_detuning(self, det: torch.Tensor) -> torch.Tensor:
        """The detuning [m] the drive really sets for a commanded ``det``: the voltage quantised by the ring DAC."""
        c = self.config
        v = encoding.quantize_uniform((det - c.rest_detuning_m) / c.tuning_m_per_v, -c.v_max_v, c.v_max_v,
                                      c.program_bits)  # fmt: skip
        return c.rest_detuning_m + c.tuning_m_per_v * v

    def _probe_noise(self, d: int) -> program.ProbeNoise:
        """Noise of one in-situ probe reading of a weight (one comb line lit at full MZM transmission, every row's
        balanced detector read): σ_w = σ_I / (R·P) with σ_I² = 2q(R·P + 2 I_dark)Δf + i_n²Δf + 2(R·NEP)²Δf."""
        c = self.config
        p_w = self.link_budget(d).row_line_w
        resp, bw = c.pd_responsivity_a_per_w, c.detection_bandwidth_hz
        sigma = 0.0
        if c.noise:
            var = noise.detector_variance_a2(
                resp * p_w, 0.0, i_dark_a=c.dark_current_a, tia_noise_a_per_rthz=c.tia_noise_a_per_rthz,
                nep_w_per_rthz=c.nep_w_per_rthz, responsivity_a_per_w=resp, bandwidth_hz=bw,
            )  # fmt: skip
            sigma = math.sqrt(var) / (resp * p_w)
        step = 2.0 / (2**c.adc_bits - 1) if c.adc_bits else 0.0
        return program.ProbeNoise(sigma, step, c.calibration_probe_averages, 0.5 / bw)

    def _extras(self, banks: torch.Tensor | None, r0: int, r1: int | None) -> dict[str, torch.Tensor]:
        """Per-ring physics of rows [r0, r1) of ``banks`` (None: all) beyond the detuning, flattened to [R, d]:
        drop-path fabrication phases and coupler deviations (only those that are modelled)."""
        out = {}
        for name in ("bus_phase", "k1dev", "k2dev"):
            buf = self._bufs.get(name)
            if buf is not None:
                x = buf[:, r0 : (r1 if r1 is not None else self._n)]
                x = x if banks is None else x[banks]
                out[name] = x.reshape(-1, x.shape[-1])
        return out

    def _drift_now(
        self, banks: torch.Tensor | None, r0: int, r1: int | None, static: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Drift detuning [nb, nr, d] (m) of rows [r0, r1) now: per-ring + spatial field + global; with ``static``
        (the rows' static detuning) the total detuning, summed in the order EngineGroup.sample uses (same bits)."""
        sl = slice(r0, r1)
        ring_d = self._ring_drift[:, sl] if banks is None else self._ring_drift[banks, sl]
        out = ring_d.clone() if static is None else torch.add(static, ring_d)
        if "field_drift" in self._bufs:
            f = self._field_drift[:, sl] if banks is None else self._field_drift[banks, sl]
            out += f.unsqueeze(-1)
        if self._global_drift != 0.0:
            out += self._global_drift
        return out

    def _drift_at_calibration(self, banks: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Drift detuning [nb, nr, d] (m) of rows [r0, r1) of ``banks`` when the in-situ calibration whose codes are
        applied now measured them: the drift now, or with ``calibration_age_s`` > 0 the state of each drift process
        that long before now. A stationary AR(1) process is time-reversible, so the past state given the present is
        ρ^k·x_now + σ√(1 − ρ^{2k})·ε (k = age in decode steps), drawn per ring, per row of the field and once for
        the global drift. No draw when the age is 0 (in-situ calibration just before use)."""
        c = self.config
        if not (c.feedback_calibration and c.calibration_age_s > 0.0):
            return self._drift_now(banks, r0, r1)
        steps = c.calibration_age_s / c.decode_step_time_s
        sl = slice(r0, r1)
        out = drift_mod.ar1_advance(self._ring_drift[banks, sl], steps, c.drift_corr_steps, c.drift_ring_sigma_m,
                                    self._gen)  # fmt: skip
        if "field_drift" in self._bufs:
            f = self._field_drift[banks, sl]
            rho_k, noise_m = drift_mod.ar1_coefficients(steps, c.drift_corr_steps, 1.0)
            innov = drift_mod.spatial_field(tuple(f.shape), c.drift_field_sigma_m, self._field_rho, self._gen,
                                            self._dtype)  # fmt: skip
            out = out + (f * rho_k + innov * noise_m).unsqueeze(-1)
        if c.drift_global_sigma_m != 0.0:
            g = torch.tensor([self._global_drift], dtype=torch.float64)
            out = out + float(drift_mod.ar1_advance(g, steps, c.drift_corr_steps, c.drift_global_sigma_m, self._gen)[0])
        return out

    def _kappa_sq(self, extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-ring power couplings (κ1², κ2²) [R, d] in float64 from the gap deviations in ``extras`` (None: the
        design couplers)."""
        if "k1dev" not in extras:
            return None
        k1 = (1.0 - self._r1 * self._r1) * (1.0 + extras["k1dev"].double())
        k2 = (1.0 - self._r2 * self._r2) * (1.0 + extras["k2dev"].double())
        return k1.clamp(max=1.0), k2.clamp(max=1.0)

    def _chip_fields(self, det: torch.Tensor, extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Through and drop power fractions [R, d] of the chip's rows (all of its physics) at detunings [R, d]."""
        opt = self.optics(det.shape[-1])
        kappa_sq = self._kappa_sq(extras)
        if self._coherent:
            couplers = None if kappa_sq is None else ring.Couplers.from_kappa_sq(*kappa_sq, self._a, self._dtype)
            return cascade_coherent(det, opt, couplers, extras.get("bus_phase"))
        if kappa_sq is not None:  # incoherent model with per-ring couplings: the general (order-aware) path
            r1, r2 = ((1.0 - k).sqrt() for k in kappa_sq)
            if self.config.crosstalk:  # one value per ring j, broadcast over the lines i
                r1, r2 = r1.unsqueeze(-2), r2.unsqueeze(-2)
            thru, drop = cascade(det.double(), dataclasses.replace(opt, r1=r1, r2=r2), self.config.crosstalk)
            return thru.to(det.dtype), drop.to(det.dtype)
        return cascade(det, opt, self.config.crosstalk, self.cascade_plan)

    def _chip_weights(self, det: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        thru, drop = self._chip_fields(det, extras)
        return thru - drop

    def _controller_weights(self, det: torch.Tensor) -> torch.Tensor:
        """The controller's model of a row [R, d] at detunings [R, d]: the chip's drop-bus model with the design
        couplings and the designed bus phases only (no fabrication phases, gap spread, trim or drift)."""
        opt = self.optics(det.shape[-1])
        if self._coherent:
            thru, drop = cascade_coherent(det, opt)
        else:
            thru, drop = cascade(det, opt, self.config.crosstalk, self.cascade_plan)
        return thru - drop

    def _update_weights(self, banks: torch.Tensor | None, r0: int, r1: int | None, *, rewritten: bool = False) -> None:
        """Recompute W_eff and the mean ring transmission for the given rows at the current drift (``banks`` None:
        all banks, written in place). ``rewritten`` (code_refresh 'every-step', a later decode step): the rows hold
        codes calibrated ``calibration_age_s`` before now, so they see the drift since then (drawn backwards from the
        drift now) instead of the drift since their first programming."""
        sl = slice(r0, r1)
        static = self._static[:, sl] if banks is None else self._static[banks, sl]
        if rewritten and self._refreshes_codes:
            idx = torch.arange(self._static.shape[0]) if banks is None else banks
            cal = self._cal_drift[:, sl] if banks is None else self._cal_drift[banks, sl]
            now = self._drift_now(banks, r0, r1)
            # the codes' compensation moves from the first calibration's drift to that of the rewrite's calibration
            det = static + cal + (now - self._drift_at_calibration(idx, r0, r1 if r1 is not None else self._n))
        else:
            det = self._drift_now(banks, r0, r1, static)
        nb, nr, d = det.shape
        flat = det.view(-1, d)
        # all banks: write straight into the state buffers where their rows are contiguous (one bank, or no spare
        # capacity); otherwise into new tensors that are copied in at the end
        w_dst = self._w[:, sl] if banks is None else None
        t_dst = self._transmit[:, sl] if banks is None else None
        w = w_dst if w_dst is not None and w_dst.is_contiguous() else torch.empty_like(det)  # [nb, nr, d]
        absorb = t_dst if t_dst is not None and t_dst.is_contiguous() else torch.empty((nb, nr), dtype=self._dtype)
        self._cascade_weights(flat, w.view(-1, d), absorb.view(-1), self._chunk_rows(d), self._extras(banks, r0, r1))
        if banks is not None:
            self._w[banks, sl] = w
            self._transmit[banks, sl] = absorb
        else:
            if w is not w_dst:
                w_dst.copy_(w)
            if absorb is not t_dst:
                t_dst.copy_(absorb)
        self._weights_refreshed()

    def _cascade_weights(
        self, det: torch.Tensor, w: torch.Tensor, transmit: torch.Tensor, step: int,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:  # fmt: skip
        """W_eff = thru − drop into ``w`` [R, d] and the row mean of thru + drop (= 1 − Ā) into ``transmit`` [R] for
        detunings ``det`` [R, d] (m) and per-ring ``extras`` [R, d], ``step`` rows at a time."""
        extras = extras or {}
        for s in range(0, det.shape[0], step):
            ex = {k: v[s : s + step] for k, v in extras.items()}
            thru, drop = self._chip_fields(det[s : s + step], ex)
            torch.sub(thru, drop, out=w[s : s + step])
            torch.mean(thru.add_(drop), -1, out=transmit[s : s + step])

    def _weights_refreshed(self) -> None:
        if self._det is not None and "var_transmit" in self._det:  # the only detection constant W_eff changes
            self._det["var_transmit"] = self._var_transmit(self._det["g2"])

    @property
    def _refreshes_codes(self) -> bool:
        """Rows rewritten every decode step with freshly calibrated codes (``code_refresh = 'every-step'``)."""
        return self.config.code_refresh == "every-step" and self.config.feedback_calibration

    @property
    def _time_varying(self) -> bool:
        """True when the rings move between decode steps relative to their codes (drift or DC relaxation); codes
        refreshed every step with no age compensate the drift at every step (nothing moves)."""
        c = self.config
        drifts = c.drift_ring_sigma_m != 0.0 or c.drift_global_sigma_m != 0.0 or c.drift_field_sigma_m != 0.0
        if self._refreshes_codes:
            return drifts and c.calibration_age_s > 0.0
        return drifts or c.dc_relax_fraction != 0.0

    def _apply_pending_drift(self) -> None:
        """Sample the drift processes (and age the held EO shifts) if ``drift_update_steps`` or more steps are
        pending (else keep holding). In an :class:`EngineGroup` the sample is taken for every member at the same
        point in one batched pass, which also refreshes W_eff."""
        c = self.config
        if self._pending_steps == 0 or self._pending_steps < c.drift_update_steps:
            return
        if not self._time_varying:
            self._pending_steps = 0
            return
        if self._group is not None and self._group.sample(self):
            return
        k, self._pending_steps = self._pending_steps, 0
        if c.drift_ring_sigma_m != 0.0:
            drift_mod.ar1_advance_(self._ring_drift, k, c.drift_corr_steps, c.drift_ring_sigma_m, self._gen)
        self._draw_global_drift(k)
        self._draw_field_drift(k)
        self._relax(k)
        self._stale = True

    def _draw_global_drift(self, k: int) -> None:
        """Advance the global drift by ``k`` steps (after the ring draws of the same sample)."""
        c = self.config
        if c.drift_global_sigma_m != 0.0:
            g = torch.tensor([self._global_drift], dtype=torch.float64)
            self._global_drift = float(
                drift_mod.ar1_advance(g, k, c.drift_corr_steps, c.drift_global_sigma_m, self._gen)[0]
            )

    def _draw_field_drift(self, k: int) -> None:
        """Advance the spatially correlated drift field by ``k`` steps (AR(1) in time; spatially correlated
        innovations), in place."""
        c = self.config
        if c.drift_field_sigma_m != 0.0:
            rho_k, noise_m = drift_mod.ar1_coefficients(k, c.drift_corr_steps, 1.0)
            innov = drift_mod.spatial_field(
                tuple(self._field_drift.shape), c.drift_field_sigma_m, self._field_rho, self._gen, self._dtype
            )
            self._field_drift.mul_(rho_k).add_(innov, alpha=noise_m)

    def _relax(self, k: int) -> None:
        """Age the rows by ``k`` decode steps and let their held Pockels shifts relax (TFLN DC drift), in place."""
        c = self.config
        if c.dc_relax_fraction != 0.0 and not self._refreshes_codes:  # refreshed voltages are at most a step old
            self._age.add_(k)
            factor = drift_mod.dc_relaxation(self._age * c.decode_step_time_s, c.dc_relax_fraction, c.dc_relax_time_s)
            torch.addcmul(self._trim, self._eo, factor.unsqueeze(-1), out=self._static).add_(c.rest_detuning_m)

    def _refresh(self) -> None:
        self._apply_pending_drift()
        if self._stale:
            self._update_weights(None, 0, None, rewritten=True)
            self.counters["weight_refreshes"] += 1
            self._stale = False

    def _detection_constants(self, d: int) -> dict[str, Any]:
        """Query-independent constants of detection and ADC (cached; dropped whenever rows are programmed; the
        transmission term ``var_transmit`` is recomputed whenever W_eff is). Everything after the optical matmul is kept in "detector units": W times ``gain`` per bank, where
        ``gain`` is the ADC's codes per W (1 W⁻¹ without ADC), so that noise, offset and ADC affine map fold into one
        pass before rounding. Shapes: per bank [B, 1, 1], per row [B, N, 1] (layout [B, N, E] of the evaluations)."""
        cache = getattr(self, "_det", None)
        if cache is not None:
            return cache
        c = self.config
        b = self._const.shape[0]
        p_row = self.link_budget(d).row_line_w
        offset = c.encoding == "offset"
        lin = (1.0 - self._tmin) * p_row  # W per unit of Σ w·f (the believed linear MZM response)
        # offset encoding: subtract the row constant the controller believes in, Σ_j P_j(u=0) w_believed_nj
        bz = (self._tmin + (1.0 - self._tmin) * 0.5) * p_row if offset else 0.0
        unit = 0.5 * lin if offset else lin  # W per unit score (weight units)
        fs = self._full_scale.double() * (unit if offset else lin / (1.0 - self._tmin))  # [B] W, fixed at programming
        levels = float(2**c.adc_bits - 1) if c.adc_bits else 0.0
        gain = levels / (2.0 * fs) if c.adc_bits else torch.ones_like(fs)  # [B] codes per W (ADC step = 1/gain)
        # c0: what is added to W·P in detector units: ADC offset FS (code levels/2) minus the believed row constant
        c0 = (-bz * gain).view(b, 1, 1) * self._const.double().unsqueeze(-1)  # [B, N, 1]
        if c.adc_bits:
            c0 += levels / 2.0
        out: dict[str, Any] = {
            "p_row": p_row, "unit": unit, "levels": levels, "offset": offset,
            "per_unit_scale": (1.0 / (unit * self._scale.double())).to(self._dtype).view(b, 1, 1),
            "fs": fs.view(b, 1, 1), "gain": gain.to(self._dtype).view(b, 1, 1),
            "c0": c0.to(self._dtype),
        }  # fmt: skip
        out["inv_gain"] = 1.0 / out["gain"]  # [B, 1, 1] W per ADC step
        if self._mzm_table is not None:
            out["level_w"] = self._mzm_table * p_row  # [2^query_bits] W per line at the row for each DAC level
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
            out["var_const"] = (g2 * (const_a2 / resp**2)).to(self._dtype)  # [B, 1, 1]
            out["g2"] = g2
            out["var_transmit"] = self._var_transmit(g2)  # [B, N, 1], refreshed with W_eff
            out["shot_w2_per_w"] = 2.0 * q_e * bw / resp  # W² of shot variance per W of total line power
        self._det = out
        return out

    def _var_transmit(self, g2: torch.Tensor) -> torch.Tensor:
        """Per-row shot-noise factor [B, N, 1] in detector units: gain² [B, 1, 1] (float64) × row transmission."""
        return (g2 * self._transmit.double().unsqueeze(-1)).to(self._dtype)

    def _scratch(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reusable [B, N, E] work buffers (never returned to callers)."""
        bufs = getattr(self, "_scratch_bufs", None)
        if bufs is None or bufs[0].shape != shape:
            bufs = (torch.empty(shape, dtype=self._dtype), torch.empty(shape, dtype=self._dtype))
            self._scratch_bufs = bufs
        return bufs

    def _physical_scores(self, q: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """[B, G, N] score estimates in signature·query units for q [B, G, d]; with ``k``: the top-k indices
        [B, G, k] of those estimates instead (ties → lower index), ranked on the ADC codes (an increasing affine map
        of the estimates per bank and query: same order and ties)."""
        c = self.config
        self._refresh()
        b, g, d = q.shape
        n = self._n
        det = self._detection_constants(d)
        q = q.to(self._dtype)
        qmax = q.abs().amax(dim=-1, keepdim=True)
        qmax.masked_fill_(qmax == 0, 1.0)
        u = q / qmax  # [B, G, d] in [−1, 1]
        frac = u.add_(1.0).mul_(0.5) if det["offset"] else torch.cat([u.clamp_min(0.0), (-u).clamp_min(0.0)], 1)
        # power [B, E, d]: W per line at the row (MZM transmission × budget)
        if self._mzm_table is not None:
            codes = encoding.dac_codes(frac, v_pi_v=c.mzm_v_pi_v, dac_bits=c.query_bits, predistort=c.mzm_predistortion)
            power = det["level_w"].index_select(0, codes.view(-1)).view(codes.shape)
        else:
            t = encoding.encode(
                frac, v_pi_v=c.mzm_v_pi_v, extinction_db=c.mzm_extinction_db, dac_bits=0,
                predistort=c.mzm_predistortion,
            )  # fmt: skip
            power = t * det["p_row"]
        if self._rin > 0.0:  # RIN: one draw per line and evaluation, shared by every row of the bank
            rin = torch.randn(power.shape, generator=self._gen, dtype=self._dtype)
            power.mul_(rin.mul_(self._rin).add_(1.0))
        e = power.shape[1]
        shot = power.sum(-1).mul_(det.get("shot_w2_per_w", 0.0)).unsqueeze(1)  # [B, 1, E] shot variance per row
        gp = power.mul_(det["gain"]).transpose(1, 2)  # [B, d, E] line powers in detector units
        factor = qmax.mul_(det["per_unit_scale"]).transpose(1, 2)  # [B, 1, G] to signature·query units
        # banks are processed in chunks whose work buffers stay in the CPU cache across the elementwise passes
        chunk = max(1, _CHUNK_DETECT // (n * e))
        acc, work = self._scratch((min(chunk, b), n, e))  # layout [B, N, E]: the matmul writes evaluations innermost
        if chunk >= b:  # one chunk: no slicing
            out = self._detect(det, None, shot, gp, factor, g, k, acc, work)
        else:
            outs = []
            for b0 in range(0, b, chunk):
                sl = slice(b0, min(b, b0 + chunk))
                m = sl.stop - sl.start
                outs.append(self._detect(det, sl, shot[sl], gp[sl], factor[sl], g, k, acc[:m], work[:m]))
            out = torch.cat(outs)
        return out if k is not None else out.transpose(1, 2)

    def _detect(
        self, det: dict[str, Any], sl: slice | None, shot: torch.Tensor, gp: torch.Tensor, factor: torch.Tensor,
        g: int, k: int | None, acc: torch.Tensor, work: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Detection, noise and ADC for the banks ``sl`` (None: all) ([M, N, E] work buffers ``acc``, ``work``):
        score estimates [M, N, G], or with ``k`` the top-k indices [M, G, k]."""
        c = self.config
        m, n, e = acc.shape

        def banks(x: torch.Tensor) -> torch.Tensor:
            return x if sl is None else x[sl]

        c0 = banks(det["c0"])
        if c.noise:
            # independent Gaussian per row and evaluation, σ from this evaluation's photocurrents, in detector units
            sigma = torch.mul(banks(det["var_transmit"]), shot, out=work).add_(banks(det["var_const"])).sqrt_()
            torch.randn((m, n, e), generator=self._gen, dtype=self._dtype, out=acc)
            torch.addcmul(c0, sigma, acc, out=acc)
        else:
            acc.copy_(c0.expand(m, n, e))
        # balanced optical power W_eff·P in W (the photocurrent is R times this; R folded into the constants), in
        # detector units, added to offset + noise
        acc.add_(torch.bmm(banks(self._w), gp, out=work))
        levels = det["levels"]
        if c.adc_bits:
            # ADC with full scale fixed at programming: codes = round((raw − offset + FS)/step), 2^bits levels
            acc.round_()
            codes = torch.clamp(acc, 0.0, levels, out=work)
            self.counters["adc_clips"] += _count_changed(acc, codes)
            if det["offset"]:
                if k is not None:
                    return topk_codes(codes.transpose(1, 2), k, int(levels) + 1)
                step = banks(det["inv_gain"]) * factor  # [M, 1, G]: est = (code − levels/2)·step·factor
                return torch.addcmul(-0.5 * levels * step, codes, step)
            diff = codes[..., :g] - codes[..., g:]  # integer codes in [−levels, levels]
            if k is not None:
                return topk_codes(diff.add_(levels).transpose(1, 2), k, 2 * int(levels) + 1)
            return diff.mul_(banks(det["inv_gain"]) * factor)
        est = torch.mul(acc, factor) if det["offset"] else (acc[..., :g] - acc[..., g:]).mul_(factor)
        return est if k is None else topk_lowest_index(est.transpose(1, 2), k)


_GROUP_SHARED = ("static", "ring_drift", "w", "transmit")  # row state a group sample reads or writes
_GROUP_OPTIONAL = ("field_drift", "bus_phase", "k1dev", "k2dev")  # stacked too when the model has them
_GROUP_CHUNK_ROWS = 768  # rows per cascade chunk of a group refresh (1.5 MiB CascadePlan work buffer for K·d = 512)


class EngineGroup:
    """Engines that advance through decode steps in lockstep (one per model layer: identical configs and bank
    shapes), whose drift is sampled and W_eff refreshed in one batched pass for all of them.

    Physically every member's banks are banks on the chip(s), all drifting over the same wall-clock decode step; the
    model is unchanged: each member keeps its own global drift process (``drift_global_sigma_m``), i.e. the members
    are thermally independent chips. When a member needs a drift sample (:meth:`PhotonicEngine.advance` left ``drift_update_steps``
    or more steps pending, and it is about to evaluate or append), every member at the same point (same pending steps,
    same rows and bank shape) is sampled with it: each member draws its ring (and global) drift from its *own*
    generator, in the same order and shapes as alone, the AR(1) update runs once over the stacked states, and the
    cascade recomputes W_eff of all their rows in one pass. A member's draws and weights are therefore bitwise those it
    would have alone, as long as the members are used in lockstep (sample, then that step's appends and evaluations).
    Counters stay per member (one ``weight_refreshes`` per member and sample). Programming, appending, evaluation and
    time multiplexing stay per member.

    The members' drift, static detuning, W_eff and transmission rows live in one stacked buffer per quantity (each
    member's state is a view of its slice); a member that reallocates its rows (program, growth) is copied back in
    at the next group sample."""

    def __init__(self, engines: Sequence[PhotonicEngine]) -> None:
        engines = list(engines)
        if not engines or not all(isinstance(e, PhotonicEngine) for e in engines):
            raise KvprismError("EngineGroup needs one or more PhotonicEngine instances")
        if len({id(e) for e in engines}) != len(engines):
            raise KvprismError("EngineGroup: an engine appears more than once")
        for i, e in enumerate(engines):
            if e.config != engines[0].config:
                raise KvprismError(f"EngineGroup: engine {i} has a different PhotonicConfig from engine 0")
            if e._group is not None:
                raise KvprismError(f"EngineGroup: engine {i} already belongs to a group")
        self.engines = engines
        for e in engines:
            e._group = self
        self._store: dict[str, torch.Tensor] = {}  # name -> [M, B, cap, ...] stacked row state
        self._members: list[PhotonicEngine] = []  # engines whose row state are views of the store, in store order
        self._views: dict[str, list[torch.Tensor]] = {}  # name -> each member's [B, cap, ...] view of the store
        self._scratch_bufs: dict[str, torch.Tensor] = {}
        self._names: tuple[str, ...] = _GROUP_SHARED  # row state stacked in the store
        self.batched_samples = 0  # drift samples taken for two or more members at once

    def release(self) -> None:
        """Detach every member; each samples its own drift from then on (its state stays valid)."""
        for e in self.engines:
            e._group = None
        self.engines = []
        self._store, self._members, self._views, self._scratch_bufs = {}, [], {}, {}

    def sample(self, caller: PhotonicEngine) -> bool:
        """Sample the drift of ``caller`` and of every member at the same point and refresh their W_eff; False (and
        nothing done) when no other member is at the caller's point (the caller then samples alone)."""
        k, n, shape = caller._pending_steps, caller._n, caller._sig.shape
        if caller._refreshes_codes:  # each member draws the age of its rewritten codes alone (_update_weights)
            return False
        members = [
            e for e in self.engines
            if e._sig is not None and e._pending_steps == k and e._n == n and e._sig.shape == shape
        ]  # fmt: skip
        if len(members) < 2:
            return False
        c = caller.config
        b, _, d = shape
        noise_shape = (len(members), b, n, d)
        self._names = _GROUP_SHARED + tuple(x for x in _GROUP_OPTIONAL if x in caller._bufs)
        views = self._adopt(members)
        if c.drift_ring_sigma_m != 0.0:
            rho_k, noise_m = drift_mod.ar1_coefficients(k, c.drift_corr_steps, c.drift_ring_sigma_m)
            noise = self._scratch("noise", noise_shape, caller._dtype)
            for i, e in enumerate(members):  # each member's draws, in its own generator's order
                torch.randn((b, n, d), generator=e._gen, dtype=e._dtype, out=noise[i])
                e._draw_global_drift(k)
                e._draw_field_drift(k)
                e._relax(k)
            views["ring_drift"].mul_(rho_k).add_(noise, alpha=noise_m)
        else:
            for e in members:
                e._draw_global_drift(k)
                e._draw_field_drift(k)
                e._relax(k)
        det = torch.add(views["static"], views["ring_drift"], out=self._scratch("det", noise_shape, caller._dtype))
        if "field_drift" in views:
            det += views["field_drift"].unsqueeze(-1)
        if any(e._global_drift != 0.0 for e in members):
            det += torch.tensor([e._global_drift for e in members], dtype=det.dtype).view(-1, 1, 1, 1)
        w_dst, t_dst = views["w"], views["transmit"]
        w = w_dst if w_dst.is_contiguous() else torch.empty_like(det)
        transmit = t_dst if t_dst.is_contiguous() else torch.empty(det.shape[:-1], dtype=det.dtype)
        extra_names = [x for x in ("bus_phase", "k1dev", "k2dev") if x in views]
        if caller._coherent:  # compute-bound: member by member, in the chunks each would use alone (same bits)
            for i in range(len(members)):
                extras = {x: views[x][i].reshape(-1, d) for x in extra_names}
                caller._cascade_weights(det[i].view(-1, d), w[i].view(-1, d), transmit[i].view(-1),
                                        caller._chunk_rows(d), extras)  # fmt: skip
        else:
            extras = {x: views[x].reshape(-1, d) for x in extra_names}
            caller._cascade_weights(det.view(-1, d), w.view(-1, d), transmit.view(-1), _GROUP_CHUNK_ROWS, extras)
        if w is not w_dst:
            w_dst.copy_(w)
        if transmit is not t_dst:
            t_dst.copy_(transmit)
        dets = [e._det for e in members]
        batched_var = all(x is not None and "var_transmit" in x for x in dets)
        if batched_var:  # the shot-noise factor of every member at once (as PhotonicEngine._var_transmit)
            g2 = torch.stack([x["g2"] for x in dets])  # [M, B, 1, 1]
            var = (g2 * t_dst.double().unsqueeze(-1)).to(caller._dtype).unbind(0)
        for i, e in enumerate(members):
            e._pending_steps = 0
            e._stale = False
            e.counters["weight_refreshes"] += 1
            if batched_var:
                dets[i]["var_transmit"] = var[i]
            else:
                e._weights_refreshed()
        self.batched_samples += 1
        return True

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A work tensor kept between samples (a fresh one per decode step costs page faults)."""
        buf = self._scratch_bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch_bufs[name] = torch.empty(shape, dtype=dtype)
        return buf

    def _adopt(self, members: list[PhotonicEngine]) -> dict[str, torch.Tensor]:
        """Views [M, B, n, ...] of the stacked row state of ``members``, restacking it where a member's state is not
        (or no longer) a view of the store."""
        n = members[0]._n
        same = len(members) == len(self._members) and all(
            e is m and all(e._bufs.get(name) is self._store_view(i, name) for name in self._names)
            for i, (e, m) in enumerate(zip(members, self._members, strict=True))
        )
        if not same:
            store = {}
            for name in self._names:
                bufs = [e._bufs[name] for e in members]
                cap = max(buf.shape[1] for buf in bufs)
                ref = bufs[0]
                store[name] = torch.zeros((len(members), ref.shape[0], cap, *ref.shape[2:]), dtype=ref.dtype)
                for i, (e, buf) in enumerate(zip(members, bufs, strict=True)):
                    store[name][i, :, : e._n] = buf[:, : e._n]
            self._store, self._members = store, list(members)
            self._views = {name: list(store[name].unbind(0)) for name in self._names}
            for i, e in enumerate(members):
                for name in self._names:
                    e._bufs[name] = self._views[name][i]
        return {name: self._store[name][:, :, :n] for name in self._names}

    def _store_view(self, i: int, name: str) -> torch.Tensor | None:
        return self._views[name][i] if self._members else None
