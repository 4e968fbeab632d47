"""``EngineGroup``: engines that advance through decode steps in lockstep (one per model layer), whose drift is
sampled and W_eff refreshed in one batched pass over their stacked states.

Physically every member's banks are banks on the chip(s), all drifting over the same wall-clock decode step; the
model is unchanged: each member keeps its own global drift process (``drift_global_sigma_m``), i.e. the members
are thermally independent chips. When a member needs a drift sample (:meth:`PhotonicEngine.advance` left
``drift_update_steps`` or more steps pending, and it is about to evaluate or append), every member at the same point
(same pending steps, same rows and bank shape) is sampled with it: each member draws its ring (and global) drift from
its *own* generator, in the same order and shapes as alone, the AR(1) update runs once over the stacked states, and
the cascade recomputes W_eff of all their rows in one pass. A member's draws and weights are therefore bitwise those
it would have alone, as long as the members are used in lockstep (sample, then that step's appends and evaluations).
Counters stay per member (one ``weight_refreshes`` per member and sample). Programming, appending, evaluation and
time multiplexing stay per member.

The members' drift, static detuning, W_eff and transmission rows live in one stacked buffer per field (each
member's :class:`~kvprism.photonics.state.BankState` holds views of its slice); a member whose state holds other
buffers (program, growth) is copied back in at the next group sample. The group works through the engines' public
``state``, ``generator``, ``counters`` and ``design()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from kvprism.errors import KvprismError
from kvprism.photonics import drift, weights
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.engine import PhotonicEngine
from kvprism.photonics.state import BankState, transmit_variance

__all__ = ["EngineGroup"]

_SHARED = ("static", "ring_drift", "w", "transmit")  # row fields a group sample reads or writes
_OPTIONAL = ("field_drift", "bus_phase", "k1dev", "k2dev")  # stacked too when the model has them
_CHUNK_ROWS = 768  # rows per cascade chunk of a group refresh (1.5 MiB CascadePlan work buffer for K·d = 512)


class EngineGroup:
    """Engines with identical configs that decode in lockstep, sampled together (see the module docstring)."""

    def __init__(self, engines: Sequence[PhotonicEngine]) -> None:
        engines = list(engines)
        if not engines or not all(isinstance(e, PhotonicEngine) for e in engines):
            raise KvprismError("EngineGroup needs one or more PhotonicEngine instances")
        if len({id(e) for e in engines}) != len(engines):
            raise KvprismError("EngineGroup: an engine appears more than once")
        for i, e in enumerate(engines):
            if e.config != engines[0].config:
                raise KvprismError(f"EngineGroup: engine {i} has a different PhotonicConfig from engine 0")
            if e.group is not None:
                raise KvprismError(f"EngineGroup: engine {i} already belongs to a group")
        self.engines = engines
        for e in engines:
            e.group = self
        self._store: dict[str, torch.Tensor] = {}  # name -> [M, B, cap, ...] stacked row fields
        self._members: list[PhotonicEngine] = []  # engines whose states hold views of the store, in store order
        self._views: dict[str, list[torch.Tensor]] = {}  # name -> each member's [B, cap, ...] view of the store
        self._scratch_bufs: dict[str, torch.Tensor] = {}
        self._names: tuple[str, ...] = _SHARED  # row fields stacked in the store
        self.batched_samples = 0  # drift samples taken for two or more members at once

    def release(self) -> None:
        """Detach every member; each samples its own drift from then on (its state stays valid)."""
        for e in self.engines:
            e.group = None
        self.engines = []
        self._store, self._members, self._views, self._scratch_bufs = {}, [], {}, {}

    def sample(self, caller: PhotonicEngine) -> bool:
        """Sample the drift of ``caller`` and of every member at the same point and refresh their W_eff; False (and
        nothing done) when no other member is at the caller's point (the caller then samples alone)."""
        s0 = caller.state
        k, n, shape = s0.pending_steps, s0.rows, s0.sig.shape
        des = caller.design()
        if des.refreshes_codes:  # each member draws the age of its rewritten codes alone (weights.refresh)
            return False
        members = [
            e for e in self.engines
            if e.state is not None and e.state.pending_steps == k and e.state.rows == n and e.state.sig.shape == shape
        ]  # fmt: skip
        if len(members) < 2:
            return False
        c = des.config
        b, _, d = shape
        noise_shape = (len(members), b, n, d)
        self._names = _SHARED + tuple(x for x in _OPTIONAL if s0.has(x))
        views = self._adopt(members)
        if c.drift_ring_sigma_m != 0.0:
            rho_k, noise_m = drift.ar1_coefficients(k, des.drift_corr_steps, c.drift_ring_sigma_m)
            noise = self._scratch("noise", noise_shape, torch.float32)
            for i, e in enumerate(members):  # each member's draws, in its own generator's order
                torch.randn((b, n, d), generator=e.generator, dtype=torch.float32, out=noise[i])
                e.state = self._draw_rest(des, e, k)
            views["ring_drift"].mul_(rho_k).add_(noise, alpha=noise_m)
        else:
            for e in members:
                e.state = self._draw_rest(des, e, k)
        det = torch.add(views["static"], views["ring_drift"], out=self._scratch("det", noise_shape, torch.float32))
        if "field_drift" in views:
            det += views["field_drift"].unsqueeze(-1)
        if any(e.state.global_drift_m != 0.0 for e in members):
            det += torch.tensor([e.state.global_drift_m for e in members], dtype=det.dtype).view(-1, 1, 1, 1)
        w_dst, t_dst = views["w"], views["transmit"]
        w = w_dst if w_dst.is_contiguous() else torch.empty_like(det)
        transmit = t_dst if t_dst.is_contiguous() else torch.empty(det.shape[:-1], dtype=det.dtype)
        extra_names = [x for x in ("bus_phase", "k1dev", "k2dev") if x in views]
        if des.coherent:  # compute-bound: member by member, in the chunks each would use alone (same bits)
            for i in range(len(members)):
                ex = {x: views[x][i].reshape(-1, d) for x in extra_names}
                weights.cascade_weights(des, det[i].view(-1, d), w[i].view(-1, d), transmit[i].view(-1),
                                        weights.chunk_rows(des), ex)  # fmt: skip
        else:
            ex = {x: views[x].reshape(-1, d) for x in extra_names}
            weights.cascade_weights(des, det.view(-1, d), w.view(-1, d), transmit.view(-1), _CHUNK_ROWS, ex)
        if w is not w_dst:
            w_dst.copy_(w)
        if transmit is not t_dst:
            t_dst.copy_(transmit)
        dets = [e.state.detection for e in members]
        batched_var = all(x is not None and x.var_transmit is not None for x in dets)
        if batched_var:  # the shot-noise factor of every member at once (as DetectionConstants.with_transmit)
            var = transmit_variance(torch.stack([x.g2 for x in dets]), t_dst).unbind(0)  # g2: [M, B, 1, 1]
        for i, e in enumerate(members):
            s = e.state
            det_i = s.detection
            if det_i is not None:
                det_i = (
                    dataclasses.replace(det_i, var_transmit=var[i]) if batched_var else det_i.with_transmit(s.transmit)
                )
            e.state = s.replace(pending_steps=0, stale=False, detection=det_i)
            e.counters["weight_refreshes"] += 1
        self.batched_samples += 1
        return True

    @staticmethod
    def _draw_rest(des: ChipDesign, e: PhotonicEngine, k: int) -> BankState:
        """A member's draws after its ring drift, in its own generator's order: global, field, DC relaxation."""
        s = drift.draw_global(des, e.state, k, e.generator)
        drift.draw_field(des, s, k, e.generator)
        drift.relax(des, s, k)
        return s

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A work tensor kept between samples (a fresh one per decode step costs page faults)."""
        buf = self._scratch_bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch_bufs[name] = torch.empty(shape, dtype=dtype)
        return buf

    def _adopt(self, members: list[PhotonicEngine]) -> dict[str, torch.Tensor]:
        """Views [M, B, n, ...] of the stacked row fields of ``members``, restacking them where a member's state does
        not (or no longer) hold views of the store."""
        n = members[0].state.rows
        same = len(members) == len(self._members) and all(
            e is m and all(e.state.buffers.get(name) is self._views[name][i] for name in self._names)
            for i, (e, m) in enumerate(zip(members, self._members, strict=True))
        )
        if not same:
            store = {}
            for name in self._names:
                bufs = [e.state.buffers[name] for e in members]
                cap = max(buf.shape[1] for buf in bufs)
                ref = bufs[0]
                store[name] = torch.zeros((len(members), ref.shape[0], cap, *ref.shape[2:]), dtype=ref.dtype)
                for i, (e, buf) in enumerate(zip(members, bufs, strict=True)):
                    store[name][i, :, : e.state.rows] = buf[:, : e.state.rows]
            self._store, self._members = store, list(members)
            self._views = {name: list(store[name].unbind(0)) for name in self._names}
            for i, e in enumerate(members):
                e.state = e.state.with_buffers(**{name: self._views[name][i] for name in self._names})
        return {name: self._store[name][:, :, :n] for name in self._names}
