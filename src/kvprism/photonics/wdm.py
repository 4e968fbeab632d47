"""WDM weight-bank row: comb grid, cascade (crosstalk) model and calibration (PHYSICS.md §2, §4).

One row of a weight bank is d rings on one bus; ring j is designed with a resonance on comb line j and is detuned
from it by ``detuning_m[..., j]`` (resonance minus line wavelength, metres). Every ring acts on every line at every
FSR order, because the closed-form ring transfer is periodic in the round-trip phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kvprism.photonics import ring

__all__ = [
    "CascadePlan",
    "RowOptics",
    "cascade",
    "cascade_coherent",
    "comb_grid_m",
    "exclusive_cumprod",
]


def comb_grid_m(n_lines: int, spacing_m: float, center_m: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Comb line wavelengths [d] in metres, centred on ``center_m``, spacing ``spacing_m``, ascending."""
    j = torch.arange(n_lines, dtype=dtype)
    return center_m + (j - (n_lines - 1) / 2.0) * spacing_m


@dataclass(frozen=True)
class RowOptics:
    """Derived optics of one weight-bank row (shared by all rows of all banks).

    ``phase0[i, j]`` [rad]: round-trip phase of ring j at line i when ring j sits exactly on line j (its design
    resonance), relative to the rings' common resonance order and reduced modulo 4π to [−2π, 2π) (the drop field's
    half phase e^{iφ/2} is 4π-periodic); ``phase_per_m[i]`` [rad/m]: 2π n_g L / λ_i², the phase added per metre of
    resonance shift at line i. ``r1``, ``r2``, ``a``: couplings and single-pass amplitude (dimensionless).
    ``order``: ring index at each bus position, first ring first (``None`` = ascending)."""

    lines_m: torch.Tensor
    phase0: torch.Tensor
    phase_per_m: torch.Tensor
    r1: float | torch.Tensor
    r2: float | torch.Tensor
    a: float | torch.Tensor
    order: torch.Tensor | None = None
    bus_phase0: torch.Tensor | None = None  # [d, d] rad: designed path phase of line i via ring j (coherent drop bus)

    @classmethod
    def build(
        cls,
        n_lines: int,
        spacing_m: float,
        center_m: float,
        radius_m: float,
        n_eff: float,
        n_g: float,
        r1: float,
        r2: float,
        a: float,
        order: str = "ascending",
        dtype: torch.dtype = torch.float64,
        ring_spacing_m: float = 0.0,
    ) -> RowOptics:
        """Optics for ``n_lines`` lines; ``order`` is ``"ascending"`` (ring 0 first on the bus) or ``"descending"``.
        ``ring_spacing_m``: distance between neighbouring rings along the bus; it sets the designed phase of the path
        input bus → ring → drop bus → drop photodiode, 2 β_i z (z = bus position × spacing, β_i = 2π n_eff(λ_i)/λ_i;
        the light goes to the ring on the input bus and back on the counter-propagating drop bus)."""
        lines = comb_grid_m(n_lines, spacing_m, center_m, torch.float64)
        phi = ring.round_trip_phase(lines, radius_m, n_eff, n_g, center_m)
        # reduced in float64 before any cast (a float32 phase of hundreds of rad would carry an error of ~1e-5 rad, a
        # sizeable fraction of a linewidth at Q ≥ 1e5) — modulo 4π, to [−2π, 2π): the powers are 2π-periodic, but
        # the drop field carries e^{iφ/2} (ring.ring_fields), which a 2π reduction flips for ring/line pairs more
        # than half an FSR apart. Rings of one row share their resonance order, so the continuous difference
        # φ_i − φ_j is the phase (it already lies in (−2π, 2π) when the comb fits one FSR); a 4π reduction leaves
        # e^{iφ/2} unchanged when it aliases
        phase0 = torch.remainder(phi[:, None] - phi[None, :] + 2.0 * math.pi, 4.0 * math.pi) - 2.0 * math.pi
        per_m = 2.0 * math.pi * n_g * ring.ring_length_m(radius_m) / lines**2
        perm = None if order == "ascending" else torch.arange(n_lines - 1, -1, -1)
        if order not in ("ascending", "descending"):
            raise ValueError(f"order = {order!r} is invalid; allowed: 'ascending', 'descending'")
        beta = 2.0 * math.pi * ring.n_eff_at(lines, n_eff, n_g, center_m) / lines  # [d] rad/m
        pos = torch.arange(n_lines, dtype=torch.float64) if perm is None else torch.argsort(perm).double()
        path = 2.0 * beta[:, None] * (pos[None, :] * ring_spacing_m)  # [i, j]: line i via ring j
        bus = torch.remainder(path + math.pi, 2.0 * math.pi) - math.pi
        return cls(lines.to(dtype), phase0.to(dtype), per_m.to(dtype), r1, r2, a, perm, bus.to(dtype))

    @property
    def n_lines(self) -> int:
        return int(self.lines_m.shape[0])

    @property
    def own_phase_per_m(self) -> torch.Tensor:
        """[d] phase per metre of shift at each ring's own line."""
        return self.phase_per_m

    def single_ring_weight(self, detuning_m: torch.Tensor) -> torch.Tensor:
        """Weight of each ring on its own line alone, [..., d] from detunings [..., d] (m)."""
        return ring.single_ring_weight(detuning_m * self.phase_per_m, self.r1, self.r2, self.a)

    def single_ring_inverse(self, w: torch.Tensor, det_min_m: float, det_max_m: float) -> torch.Tensor:
        """Detuning [..., d] (m, in [det_min_m, det_max_m], det_min_m ≥ 0) at which each ring alone has weight ``w``;
        weights outside the reachable interval are clamped to it."""
        lo = self.single_ring_weight(torch.full_like(self.phase_per_m, det_min_m))
        hi = self.single_ring_weight(torch.full_like(self.phase_per_m, det_max_m))
        w = torch.minimum(torch.maximum(w, lo), hi)
        s = ring.single_ring_weight_inverse_sin2(w, self.r1, self.r2, self.a).clamp(0.0, 1.0)
        return (2.0 * torch.asin(s.sqrt()) / self.phase_per_m).clamp(det_min_m, det_max_m)


def exclusive_cumprod(x: torch.Tensor) -> torch.Tensor:
    """Π_{m<j} x[..., m] along the last dim (1 for j = 0)."""
    cp = torch.cumprod(x, dim=-1)
    return torch.cat([torch.ones_like(x[..., :1]), cp[..., :-1]], dim=-1)


def _identical_rings(optics: RowOptics) -> bool:
    return not any(isinstance(x, torch.Tensor) for x in (optics.r1, optics.r2, optics.a))


def _drop_fraction(optics: RowOptics) -> float:
    """κ with D = κ(1 − T) for one ring: κ = (1 − r1²)(1 − r2²) a / ((1 − p)² − (r1 − r2 a)²), p = r1 r2 a."""
    r1, r2, a = optics.r1, optics.r2, optics.a
    p = r1 * r2 * a
    return (1.0 - r1 * r1) * (1.0 - r2 * r2) * a / ((1.0 - p) ** 2 - (r1 - r2 * a) ** 2)


def _thru_constants(optics: RowOptics) -> tuple[float, float]:
    """(c, K) with T = 1 − K / (c + sin²(φ/2)) for identical rings (cancellation-free, float64 constants):
    1 − T = ((1 − p)² − (r1 − r2 a)²) / D and D = (1 − p)² + 4 p sin²(φ/2), so c = (1 − p)²/4p and
    K = ((1 − p)² − (r1 − r2 a)²)/4p."""
    r1, r2, a = optics.r1, optics.r2, optics.a
    p = r1 * r2 * a
    return (1.0 - p) ** 2 / (4.0 * p), ((1.0 - p) ** 2 - (r1 - r2 * a) ** 2) / (4.0 * p)


def cascade_coherent(
    detuning_m: torch.Tensor,
    optics: RowOptics,
    couplers: ring.Couplers | None = None,
    bus_phase_rad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Through and drop power fractions [..., d] of every line with the drop bus adding in *field* (PHYSICS.md §4).

    Each ring is a 2×2 scattering block on the wave pair (input bus forward, drop bus backward) — both couple to the
    same circulating mode: [a_out, b_out] = [[t, k], [k, t']] [a_in, b_in] (:func:`ring.ring_fields`; k is both the
    input → drop and the add → through coupling), and the rings are chained along the bus by the Redheffer star
    product, one ring at a time. This is exact for that mode pair, to every order: light dropped by ring j runs back
    on the drop bus, is attenuated by the rings before it (t'), and what they re-couple goes forward on the input bus
    to the through port, where it adds in field. Different lines add in power at the photodiodes, so each line is
    solved on its own. The path to ring j carries the phase ``optics.bus_phase0[i, j]`` (designed: 2 β_i z_j, only
    the round trip input + drop bus matters) plus ``bus_phase_rad[..., j]`` (static fabrication phase of that path,
    per ring); the segment before ring j adds the difference to the path of the ring before it. ``couplers``: per-ring constants [..., d] (coupling spread), None for the design couplings.
    Cost: d passes over [..., d] complex tensors."""
    # layout [j, ..., i] (ring first): each step of the chain reads one contiguous [..., i] slice
    lead = detuning_m.shape[:-1]
    det_j = detuning_m.movedim(-1, 0).unsqueeze(-1)  # [j, ..., 1]
    view = (optics.n_lines,) + (1,) * len(lead) + (optics.n_lines,)
    phi = torch.addcmul(optics.phase0.t().reshape(view), det_j, optics.phase_per_m)  # [j, ..., i]
    c = couplers if couplers is not None else ring.Couplers.from_r(optics.r1, optics.r2, optics.a)
    t, k, tb = ring.ring_fields(phi, c.per_ring(lambda x: x.movedim(-1, 0).unsqueeze(-1)))
    psi = optics.bus_phase0.t().reshape(view) if optics.bus_phase0 is not None else torch.zeros(view, dtype=phi.dtype)
    if bus_phase_rad is not None:
        psi = psi + bus_phase_rad.movedim(-1, 0).unsqueeze(-1)
    order = optics.order.tolist() if optics.order is not None else list(range(optics.n_lines))
    # psi is the phase of the whole path to ring j (bus position p): the segment before it adds the increment
    # psi_j − psi_(ring at p − 1)
    inc = psi.clone() if psi.shape[0] == optics.n_lines else psi.expand(optics.n_lines, *psi.shape[1:]).clone()
    for p in range(len(order) - 1, 0, -1):
        inc[order[p]] = psi[order[p]] - psi[order[p - 1]]
    seg = torch.polar(torch.ones_like(inc), inc)  # [j, ..., i] (or [j, 1.., i])
    shape = (*lead, optics.n_lines)
    c11 = torch.ones(shape, dtype=t.dtype)  # laser → right end of the chain (through)
    c12 = torch.zeros(shape, dtype=t.dtype)  # add (right) → right end
    c21 = torch.zeros(shape, dtype=t.dtype)  # laser → left end of the drop bus (drop photodiode)
    c22 = torch.ones(shape, dtype=t.dtype)  # drop bus from the right → left end
    for j in order:
        e = seg[j]
        c11, c12 = c11 * e, c12 * e
        tj, kj, tbj = t[j], k[j], tb[j]
        inv = 1.0 / (1.0 - c12 * kj)
        c11, c12, c21, c22 = c11 * tj * inv, kj + tj * c12 * tbj * inv, c21 + c22 * kj * c11 * inv, c22 * tbj * inv
    return c11.real.square() + c11.imag.square(), c21.real.square() + c21.imag.square()


def cascade(
    detuning_m: torch.Tensor, optics: RowOptics, crosstalk: bool = True, plan: CascadePlan | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Through and drop power fractions of every line after the row's rings, ``thru[..., i]``, ``drop[..., i]``
    (PHYSICS.md §4): thru_i = Π_j T_j(λ_i), drop_i = Σ_j D_j(λ_i) Π_{m before j on the bus} T_m(λ_i).

    ``detuning_m`` [..., d] (ring j's resonance minus line j, metres). With ``crosstalk=False`` line i sees ring i
    only (the idealisation used by the ``ideal`` preset and by tests). Memory: O(prod(...)·d²), or O(prod(...)·d·K)
    with a :class:`CascadePlan`.

    The order on the bus enters through the partial products. For identical rings the drop port is a fixed fraction
    κ of the light a ring removes (D_j = κ(1 − T_j), κ independent of φ), so the drop sum telescopes to
    κ(1 − Π_j T_j) and the order cancels; it matters as soon as the rings' couplings differ (``r1``/``r2`` may be
    tensors [d], one value per ring), which takes the general path."""
    if not crosstalk:
        return ring.add_drop(detuning_m * optics.phase_per_m, optics.r1, optics.r2, optics.a)
    if not _identical_rings(optics):
        # phi[..., i, j]: phase of ring j at line i
        phi = optics.phase0 + detuning_m.unsqueeze(-2) * optics.phase_per_m.unsqueeze(-1)
        t, d = ring.add_drop(phi, optics.r1, optics.r2, optics.a)
        if optics.order is not None:
            t = t[..., optics.order]
            d = d[..., optics.order]
        thru = torch.prod(t, dim=-1)
        drop = (d * exclusive_cumprod(t)).sum(dim=-1)
        return thru, drop
    if plan is not None:
        thru = plan.thru(detuning_m)
    else:
        thru = torch.prod(
            _ring_thru(optics.phase0, detuning_m.unsqueeze(-2), optics.phase_per_m.unsqueeze(-1), optics), -1
        )
    return thru, (1.0 - thru).mul_(_drop_fraction(optics))


def _ring_thru(phase0: torch.Tensor, det: torch.Tensor, per_m: torch.Tensor, optics: RowOptics) -> torch.Tensor:
    """T of identical rings: T = 1 − K / (c + sin²(φ/2)) (:func:`_thru_constants`), φ = phase0 + det·per_m
    (broadcast), computed in place."""
    c, k = _thru_constants(optics)
    x = torch.addcmul(phase0, det, per_m).mul_(0.5).sin_().square_()
    return x.add_(c).reciprocal_().mul_(-k).add_(1.0)


_WORK_KEEP_ELEMS = 1 << 20  # CascadePlan.thru keeps its work buffer up to this size (4 MiB float32)


@dataclass
class CascadePlan:
    """Fast, controlled approximation of the cascade of identical rings for detunings in a known interval.

    For line i, the rings whose resonance (any FSR order) comes within ``near_fwhm`` linewidths of the line anywhere
    in the interval are evaluated in closed form ("near", gathered, K per line). Every other ring's log T_ij is a
    smooth function of its detuning there and enters through a least-squares quadratic in the detuning, fitted on a
    grid over the interval; ``max_fit_error`` is the largest error of that fit in log T summed over the far rings of
    a line (so the relative error of thru_i is at most ≈ max_fit_error inside the interval)."""

    optics: RowOptics
    near_idx: torch.Tensor  # [d, K] ring indices (padding repeats ring i with weight 0)
    near_mask: torch.Tensor  # [d, K] 1 for a real near ring, 0 for padding
    center_m: float
    half_m: float
    coef: torch.Tensor  # [3, d_rings, d_lines]: Σ over far rings of a0 + a1 x + a2 x², x = (det − center)/half
    max_fit_error: float
    near_phase0: torch.Tensor  # [d, K] phase0 of the near rings at each line
    far_const: torch.Tensor  # [d] Σ_j a0 over far rings

    def __post_init__(self) -> None:
        # constants of :meth:`thru` in its layout: near entries k-major ([K·d], entry k·d + i = near ring k of line
        # i) as columns over the rows, so every elementwise pass runs along contiguous rows with one scalar per entry
        opt, k = self.optics, self.near_idx.shape[1]
        self._idx_km = self.near_idx.t().reshape(-1).contiguous()  # [K·d]
        # half phases: T = 1 − K / (c + sin²(φ/2)) with φ/2 = phase0/2 + det·per_m/2 (cancellation-free)
        self._phase0_km = (0.5 * self.near_phase0).t().reshape(-1, 1).contiguous()  # [K·d, 1] rad
        self._per_m_km = (0.5 * opt.phase_per_m).repeat(k).unsqueeze(-1)  # [K·d, 1] rad/m (line i's phase per m)
        c, kk = _thru_constants(opt)
        self._neg_k_km = (-kk * self.near_mask).t().reshape(-1, 1).contiguous()  # [K·d, 1]; 0: padding
        self._c = c
        self._coef_t = self.coef[1:].transpose(1, 2).contiguous()  # [2, lines, rings] for x and x² (column layout)
        self._work: torch.Tensor | None = None  # reused flat work buffer for [K·d, R] (a fresh one costs page faults)

    @classmethod
    def build(cls, optics: RowOptics, lo_m: float, hi_m: float, near_fwhm: float, n_fit: int = 41) -> CascadePlan:
        d = optics.n_lines
        dt = optics.phase0.dtype
        p = optics.r1 * optics.r2 * optics.a
        fwhm_phase = 2.0 * (1.0 - p) / math.sqrt(p)  # FWHM in round-trip phase (2π / finesse)
        grid = torch.linspace(lo_m, hi_m, n_fit, dtype=torch.float64)
        phase0 = optics.phase0.double()
        per_m = optics.phase_per_m.double()
        phi = phase0.unsqueeze(0) + grid.view(-1, 1, 1) * per_m.view(1, -1, 1)  # [G, i, j]
        dist = torch.remainder(phi + math.pi, 2 * math.pi) - math.pi
        near = dist.abs().amin(0) <= near_fwhm * fwhm_phase
        near |= torch.eye(d, dtype=torch.bool)
        k = int(near.sum(-1).max())
        order = torch.argsort((~near).to(torch.int8), dim=-1, stable=True)[:, :k]  # near rings first
        mask = near.gather(-1, order)
        idx = torch.where(mask, order, torch.arange(d).unsqueeze(-1).expand(d, k))
        # quadratic fit of log T over the grid for the far rings
        thru = _ring_thru(phase0.unsqueeze(0), grid.view(-1, 1, 1), per_m.view(1, -1, 1), optics)  # [G, i, j]
        logt = thru.log().masked_fill(near.unsqueeze(0), 0.0)
        center, half = (lo_m + hi_m) / 2.0, max((hi_m - lo_m) / 2.0, 1e-18)
        x = (grid - center) / half
        basis = torch.stack([torch.ones_like(x), x, x * x], -1)  # [G, 3]
        sol = torch.linalg.lstsq(basis, logt.reshape(n_fit, -1)).solution  # [3, i·j]
        fit = (basis @ sol).reshape(n_fit, d, d)
        err = float((fit - logt).sum(-1).abs().max())
        coef = sol.reshape(3, d, d).transpose(1, 2).contiguous()  # [3, j, i]
        coef = coef.to(dt)
        near_phase0 = optics.phase0.gather(1, idx)
        return cls(optics, idx, mask.to(dt), center, half, coef, err, near_phase0, coef[0].sum(0))

    @property
    def k(self) -> int:
        return int(self.near_idx.shape[1])

    def thru(self, detuning_m: torch.Tensor) -> torch.Tensor:
        """Through fraction Π_j T_j(λ_i) [..., d] for detunings [..., d] (m): the same model as
        ``log_thru(detuning_m).exp()``, with the near rings multiplied instead of summed in log (one exp per line
        instead of a log per near ring) and the rows as the contiguous dimension. A ring exactly on resonance at
        critical coupling (T = 0) gives thru = 0 here and ≈ 1e-30 in :meth:`log_thru` (which floors each T)."""
        d, k = self.near_idx.shape
        lead = detuning_m.shape[:-1]
        det_t = detuning_m.reshape(-1, d).t().contiguous()  # [d, R]
        rows = det_t.shape[1]
        t = self._work_buffer(k * d, rows, det_t.dtype)
        torch.index_select(det_t, 0, self._idx_km, out=t)  # [K·d, R] detuning of near ring k of line i
        t.mul_(self._per_m_km).add_(self._phase0_km).sin_().square_()  # sin²(φ/2)
        torch.div(self._neg_k_km, t.add_(self._c), out=t).add_(1.0)  # T (1 for padding)
        out = t.view(k, d, rows).prod(0)  # [d, R] near rings
        x = det_t.sub(self.center_m).div_(self.half_m)  # [d, R] (det_t may be a view of the input when R = 1)
        far = torch.addmm(self.far_const.unsqueeze(-1), self._coef_t[0], x)
        far.addmm_(self._coef_t[1], x.mul_(x))
        return out.mul_(far.exp_()).t().reshape(*lead, d)

    def _work_buffer(self, n: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """An [n, rows] work tensor (contiguous), the front of a flat buffer kept between calls when it is small
        (decode-time refreshes of few rows; the chunks of a batched refresh share it)."""
        w = self._work
        if w is not None and w.numel() >= n * rows and w.dtype == dtype:
            return w[: n * rows].view(n, rows)
        w = torch.empty(n * rows, dtype=dtype)
        self._work = w if n * rows <= _WORK_KEEP_ELEMS else None
        return w.view(n, rows)

    def log_thru(self, detuning_m: torch.Tensor) -> torch.Tensor:
        """Σ_j log T_j(λ_i) [..., d] for detunings [..., d] (the reference form of :meth:`thru`, one log per near
        ring; kept for tests and for callers that need the log)."""
        opt = self.optics
        # index_select on a flat index is several times faster than advanced indexing with a [d, K] index
        det_near = detuning_m.index_select(-1, self.near_idx.reshape(-1)).unflatten(-1, self.near_idx.shape)
        t = _ring_thru(self.near_phase0, det_near, opt.phase_per_m.unsqueeze(-1), opt)
        out = (t.clamp_min_(1e-30).log_() * self.near_mask).sum(-1)
        x = (detuning_m - self.center_m) / self.half_m
        out += self.far_const
        out += x @ self.coef[1]
        out += (x * x) @ self.coef[2]
        return out
