"""``PhotonicEngine``: a simulated TFLN microring broadcast-and-weight chip with the physics in the loop.

The engine is a thin facade over explicit state and pure stages: it holds the chip's :class:`ChipDesign` (every
number derived from the config), the current :class:`~kvprism.photonics.state.BankState` (every per-row tensor of
the logical weight banks: leading dims ``[*L]`` of the signatures, flattened to ``B`` banks), one ``torch.Generator``
and the counters, and passes them through the stages:

- :mod:`~kvprism.photonics.program`: signatures → calibrated, quantised ring detunings (program, append);
- :mod:`~kvprism.photonics.drift`: the drift processes, sampled every ``drift_update_steps`` decode steps (1: every
  step; between samples the rings hold the last sample), lazily at the next evaluation or append;
- :mod:`~kvprism.photonics.weights`: W_eff = thru − drop at the current detunings, recomputed when rows are
  programmed and when the drift has moved, never per query;
- :mod:`~kvprism.photonics.detect`: a query batch → encoding, one batched matmul, Gaussian noise with per-row
  variances from the photocurrents, ADC → estimates or top-k.

Time multiplexing: the chip holds ``rows_per_bank · n_banks`` rows; when the programmed rows exceed that, each
evaluation loads the rows in pages, and every page load is counted as reprogramming (``pages``,
``page_row_programs``). Physics is identical for every page (same splitter, same rings).
"""

from __future__ import annotations

from typing import Any

import torch

from kvprism.boundary import check_query, check_rows
from kvprism.errors import KvprismError
from kvprism.photonics import detect, drift, link, program, weights
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import BankState
from kvprism.photonics.topk import topk_lowest_index
from kvprism.photonics.wdm import CascadePlan, RowOptics

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
    "calibration_probes",  # in-situ calibration: comb-line probes per bank (all rows of a bank read in parallel)
)


class PhotonicEngine:
    """Photonic block-selection engine. See the module docstring for the model; shapes in the method docstrings.

    ``seed`` seeds the one ``torch.Generator`` from which every random draw (trim residual, drift, RIN, detection
    noise) is taken, in call order. ``state`` is the current :class:`BankState` (None before :meth:`program`);
    ``group`` the :class:`~kvprism.photonics.group.EngineGroup` the engine belongs to (None: alone)."""

    def __init__(self, config: PhotonicConfig, seed: int = 0) -> None:
        if not isinstance(config, PhotonicConfig):
            raise KvprismError(f"PhotonicEngine needs a PhotonicConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.counters: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        self.counters["program_energy_j"] = 0.0  # Σ C·V² over ring drive writes
        self.counters["calibration_time_s"] = 0.0  # in-situ calibration: probes × integration time
        self.state: BankState | None = None
        self.group: Any = None  # an EngineGroup (group.py imports this module, not the reverse)
        self._designs: dict[int, ChipDesign] = {}  # ChipDesign per comb-line count (see design())
        self._work = detect.Workspace()

    # ------------------------------------------------------------------ public state
    @property
    def n_rows(self) -> int:
        """Rows N currently programmed in every bank (0 before :meth:`program`)."""
        return 0 if self.state is None else self.state.rows

    @property
    def n_dims(self) -> int | None:
        return None if self.state is None else self.state.dims

    @property
    def signatures(self) -> torch.Tensor | None:
        """The programmed signatures as given, ``[*L, N, d]`` (None before :meth:`program`)."""
        if self.state is None:
            return None
        return self.state.sig.reshape(*self.state.lead, *self.state.sig.shape[1:])

    @property
    def bank_shape(self) -> tuple[int, ...] | None:
        """Leading dims ``[*L]`` of the programmed signatures."""
        return None if self.state is None else self.state.lead

    @property
    def last_calibration_residual(self) -> float | None:
        """RMS residual of the last programming's calibration (None before, and for the ideal chip)."""
        return None if self.state is None else self.state.calibration_residual

    @property
    def last_calibration_mismatch(self) -> float | None:
        """Model-based programming: RMS of chip − controller model weights at the applied drive (None in-situ)."""
        return None if self.state is None else self.state.calibration_mismatch

    def design(self, d: int | None = None) -> ChipDesign:
        """The :class:`~kvprism.photonics.design.ChipDesign` of this engine's config for ``d`` lines (default: the
        programmed width, else ``n_lines``); built once per width."""
        d = d or self.n_dims or self.config.n_lines
        if d not in self._designs:
            self._designs[d] = ChipDesign.from_config(self.config, d)
        return self._designs[d]

    def link_budget(self, d: int | None = None) -> link.LinkBudget:
        """The optical link of the design for ``d`` lines."""
        return self.design(d).link

    def optics(self, d: int) -> RowOptics:
        """The row optics for ``d`` comb lines (the design's, with its :attr:`cascade_plan`)."""
        return self.design(d).optics

    @property
    def cascade_plan(self) -> CascadePlan | None:
        """The near/far cascade approximation in use (None: closed form for every ring)."""
        return self.design().cascade_plan

    def detuning_range_m(self) -> tuple[float, float]:
        """Detunings [m] the calibration may aim for: the drive's reach rest ± (tuning·V_max − margin), above 0
        (``ChipDesign.compensation_margin_m``: swing kept for the closed loop's compensation of trim residual and
        drift; 0 open loop). With ``rest_point = "eo-centre"`` this is [0, 2·tuning·V_max − 2·margin]."""
        return self.design().detuning_range_m

    def weight_range(self, d: int | None = None) -> float:
        """Half-width w_r of the symmetric weight interval used for every bank: the wanted
        ``weight_range_target`` limited by what one ring reaches inside :meth:`detuning_range_m` (the design's)."""
        return self.design(d).weight_range

    def weights_as_programmed(self) -> torch.Tensor:
        """W_eff [*L, N, d] as programmed: the chip's weights at the applied drive with the trim residual and every
        static fabrication effect (bus phases, coupling spread); with in-situ calibration (``feedback_calibration``,
        which measured and compensated it) also the drift present at programming time — for codes calibrated
        ``calibration_age_s`` earlier, the drift then is what was compensated, so the drift since then shows here as
        programming error; drift and DC relaxation after programming are excluded. Equal to the signatures for the
        ideal preset."""
        s = self._programmed()
        if self.config.is_ideal:
            return self.signatures.clone()
        return weights.as_programmed(self.design(), s).reshape(*s.lead, s.rows, s.dims)

    # ------------------------------------------------------------------ programming
    def program(self, signatures: torch.Tensor) -> None:
        """Program all banks: ``signatures`` [*L, N, d] (float). Replaces any previous content.

        Maps each bank into [−w_r, w_r] with one scale per bank, calibrates the ring detunings against the cascade
        model, quantises the drive voltages (``program_bits`` over ±V_max) and applies the trim residual."""
        sig = self._check_sig(signatures, "signatures")
        self.state = None
        self.state = program.init(self.design(sig.shape[-1]), sig, self.generator, self.counters)

    def append(self, signatures: torch.Tensor) -> None:
        """Program ``m`` new rows after the existing N in every bank: ``signatures`` [*L, m, d].

        A bank whose new rows do not fit its current scale is rescaled: all its rows are reprogrammed
        (counted in ``bank_rescales`` and ``rescale_row_programs``)."""
        if self.state is None:
            self.program(signatures)
            return
        sig = self._check_sig(signatures, "signatures", "append")
        s = self.state
        m = sig.shape[-2]
        if m == 0:
            return
        new = sig.reshape(s.banks, m, s.dims).to(s.sig.dtype)
        # the pending drift is sampled before the new rows exist (they start from the stationary distribution);
        # programmed rows keep their programmed weights and see the drift from the next sample on
        self._sample_drift()
        self.state = program.append(self.design(), self.state, new, self.generator, self.counters)

    def advance(self, steps: int = 1) -> None:
        """Move the thermal-drift process forward by ``steps`` decode steps (call once per decode step). The draw
        is deferred to the next evaluation (exact in distribution for any number of accumulated steps) and made once
        at least ``drift_update_steps`` steps have accumulated; until then the rings hold the last drift sample."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise KvprismError(f"advance: steps = {steps!r} is invalid; allowed: an int in [0, inf)")
        self.counters["drift_steps"] += steps
        if self.state is not None and not self.config.is_ideal:
            self.state = self.state.replace(pending_steps=self.state.pending_steps + steps)

    def refresh(self) -> None:
        """Bring the state up to date now, as the next evaluation would: take a pending drift sample and recompute
        W_eff of drifted rings (for timing a decode step's drift work apart from its queries)."""
        s = self._programmed()
        if self.config.is_ideal:
            return
        self._sample_drift()
        s = self.state
        if s.stale:
            s = weights.refresh(self.design(), s, None, 0, None, self.generator, rewritten=True)
            self.counters["weight_refreshes"] += 1
            self.state = s.replace(stale=False)

    # ------------------------------------------------------------------ evaluation
    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Score estimates [*L, N] for ``query`` [*L, d], or [*L, G, N] for ``query`` [*L, G, d] (G evaluations on
        the same banks), in units of ``signatures @ query`` (noisy, quantised; exact for the ideal preset).
        The simulation runs on the CPU; the result is returned on ``query``'s device."""
        q, squeeze = self._check_query(query)
        s = self.state
        g = q.shape[1]
        detect.count_evaluations(self.design(), self.counters, s.banks, g, s.rows)
        if self.config.is_ideal:
            # the exact dot product in the input dtype, as ``signatures @ query[..., None]`` (or ``@ query.mT`` for
            # [*L, G, d]) on the caller's shapes, so the result is bitwise that of the plain torch expression
            sig = self.signatures
            qq = query.detach().cpu().to(sig.dtype)
            if squeeze:
                return (sig @ qq.unsqueeze(-1)).squeeze(-1).to(query.device)
            return (sig @ qq.transpose(-1, -2)).transpose(-1, -2).to(query.device)
        out = self._physical(q, None).reshape(*s.lead, g, s.rows)
        return (out.squeeze(-2) if squeeze else out).to(query.device)

    def select(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """Indices [..., k] (int64) of the k best rows for ``query`` ([*L, d] or [*L, G, d]); best first, ties broken
        by the lower index."""
        if not isinstance(k, int) or isinstance(k, bool):
            raise KvprismError(f"select: k = {k!r} is invalid; allowed: an int in [1, programmed rows]")
        if self.state is not None and not 0 < k <= self.n_rows:
            raise KvprismError(f"select: k = {k} is invalid; allowed range: [1, {self.n_rows}] (programmed rows)")
        if self.state is None or self.config.is_ideal:
            return topk_lowest_index(self.scores(query), k).to(query.device)
        q, squeeze = self._check_query(query, "select")
        s = self.state
        g = q.shape[1]
        detect.count_evaluations(self.design(), self.counters, s.banks, g, s.rows)
        out = self._physical(q, k).reshape(*s.lead, g, k)
        return (out.squeeze(-2) if squeeze else out).to(query.device)

    # ------------------------------------------------------------------ internals
    def _physical(self, q: torch.Tensor, k: int | None) -> torch.Tensor:
        """Estimates [B, G, N] (or top-k indices [B, G, k]) for q [B, G, d] through the up-to-date state."""
        self.refresh()
        des = self.design()
        self.state = detect.prepared(des, self.state)
        return detect.scores(des, self.state, q, k, self.generator, self.counters, self._work)

    def _sample_drift(self) -> None:
        """Sample the drift processes (and age the held EO shifts) if ``drift_update_steps`` or more steps are
        pending (else keep holding). In an :class:`EngineGroup` the sample is taken for every member at the same
        point in one batched pass, which also refreshes W_eff."""
        des, s = self.design(), self.state
        if not drift.due(des, s):
            return
        if not des.time_varying:
            self.state = s.replace(pending_steps=0)
            return
        if self.group is not None and self.group.sample(self):
            return
        self.state = drift.advance(des, s.replace(pending_steps=0), s.pending_steps, self.generator)

    def _programmed(self) -> BankState:
        if self.state is None:
            raise KvprismError("the engine has no programmed rows; call program(signatures) first")
        return self.state

    def _check_sig(self, x: torch.Tensor, name: str, where: str = "program") -> torch.Tensor:
        """The shared boundary check of rows (:func:`kvprism.boundary.check_rows`); returns them on the CPU."""
        s = self.state if where == "append" else None
        check_rows(x, where=where, name=name, lead=None if s is None else s.lead, width=None if s is None else s.dims)
        return x.detach().cpu()

    def _check_query(self, query: torch.Tensor, where: str = "scores") -> tuple[torch.Tensor, bool]:
        """The shared boundary check of a query (:func:`kvprism.boundary.check_query`) -> ``([B, G, d] on the
        CPU, whether the query was [*L, d])``."""
        s = self.state
        q = query.detach().cpu() if isinstance(query, torch.Tensor) else query
        squeeze = check_query(q, lead=None if s is None else s.lead, width=None if s is None else s.dims, where=where)
        return q.reshape(-1, 1 if squeeze else q.shape[-2], s.dims), squeeze
