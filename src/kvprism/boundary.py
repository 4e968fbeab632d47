"""The boundary check: what every scorer, the :class:`~kvprism.selection.BlockSelector` and the
:class:`~kvprism.photonics.PhotonicEngine` accept at their public methods, checked by the same functions.

- rows (``program`` / ``append``): a float tensor ``[*L, N, w]`` with ``w ≥ 1``, no empty bank dimension, ``N ≥ 1``
  at ``program``; on ``append`` the leading dims ``[*L]`` and the width ``w`` of the programmed rows; every value
  finite;
- a query (``scores`` / ``select``): a float tensor ``[*L, w]`` or ``[*L, G, w]`` (``G ≥ 1``) of the programmed
  banks' ``[*L]`` and ``w``, after ``program``; every value finite.

Every violation is a :class:`~kvprism.errors.KvprismError` naming the call, the tensor, its shape and the shape
expected. Valid input passes unchanged (the checks only read it).

An all-zero bank is valid: every exact score is 0 and top-k returns the lowest ids first (``0, 1, …``: ties go to
the lower id); a noisy scorer returns its noise around 0.

Cost. On the CPU a finiteness check is one reduction (the sum of the tensor; NaN or inf make it non-finite, and an
overflow of finite values is told apart by :func:`torch.isfinite` on that rare path) and one read of its value
(``benchmarks/boundary_check.py`` measures it). On CUDA a read would be a host synchronisation per call, so the flag
is *deferred*: ``isfinite(x).all()`` is queued on the device and kept in :data:`DEFERRED`; :meth:`Deferred.step` (called by :meth:`BlockSelector.advance
<kvprism.selection.BlockSelector.advance>`) reads every queued flag at once, one read per decode step whatever the
number of layers, and raises for the first non-finite tensor, naming it — one decode step after the call that got
it. :func:`check_pending` reads them now (e.g. at the end of a generation); more than :data:`Deferred.limit` queued
flags are read at once as well (a scorer used alone, with no decode steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kvprism.errors import KvprismError

__all__ = ["DEFERRED", "Deferred", "check_finite", "check_pending", "check_query", "check_rows"]

#: device types whose finiteness flags are read once per decode step instead of at the call (no host sync)
DEFER_DEVICES: frozenset[str] = frozenset({"cuda"})


def _shape(x: torch.Tensor | Sequence[int]) -> str:
    return "[" + ", ".join(map(str, x.shape if isinstance(x, torch.Tensor) else x)) + "]"


def _dims(*parts: object) -> str:
    return "[" + ", ".join(str(p) for p in parts) + "]"


class Deferred:
    """Finiteness flags queued on a device, read together (one host synchronisation) at :meth:`read`."""

    #: queued flags read at once beyond this many (bounds the queue of a scorer used without decode steps)
    limit = 256

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, str]] = []  # (all finite? on the tensor's device, error message)
        self._stepped: set[int] = set()  # owners that advanced since the last read
        self.reads = 0  # host reads made (each one synchronisation)

    def add(self, x: torch.Tensor, message: str) -> None:
        self.pending.append((torch.isfinite(x.detach()).all(), message))
        if len(self.pending) > self.limit:
            self.read()

    def step(self, owner: object) -> None:
        """A decode step of ``owner`` (a selector) ended. Reads the queued flags when ``owner`` already stepped since
        the last read: once per round of the selectors that decode in lockstep (the layers of a model)."""
        if not self.pending:
            return
        key = id(owner)
        if key in self._stepped:
            self.read()
            self._stepped = {key}
        else:
            self._stepped.add(key)

    def read(self) -> None:
        """Read every queued flag (one synchronisation; none when nothing is queued) and raise for the first
        non-finite tensor."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        self._stepped = set()
        self.reads += 1
        by_device: dict[torch.device, list[int]] = {}
        for i, (flag, _) in enumerate(pending):
            by_device.setdefault(flag.device, []).append(i)
        bad: list[int] = []
        for idx in by_device.values():
            finite = torch.stack([pending[i][0] for i in idx]).cpu().tolist()
            bad += [i for i, ok in zip(idx, finite, strict=True) if not ok]
        if bad:
            raise KvprismError(f"{pending[min(bad)][1]} (read by the check of a later decode step)")


#: the queue of deferred finiteness flags (shared by every selector and scorer in the process)
DEFERRED = Deferred()


def check_pending() -> None:
    """Read the deferred finiteness flags now (CUDA; see the module docstring) and raise for a non-finite tensor."""
    DEFERRED.read()


def check_finite(x: torch.Tensor, where: str, name: str) -> None:
    """Raise a :class:`KvprismError` naming ``where``, ``name`` and the shape if ``x`` holds a NaN or an inf
    (deferred on CUDA: module docstring). Inside ``torch.compile`` tracing and CUDA graph capture nothing is checked
    (the host sees no values there)."""
    if torch.compiler.is_compiling():
        return
    if x.device.type in DEFER_DEVICES:
        if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            DEFERRED.add(x, _non_finite(x, where, name))
        return
    if math.isfinite(x.sum()):  # one reduction and one read (0 for an empty tensor)
        return
    if not bool(torch.isfinite(x).all()):  # else the sum of finite values overflowed
        raise KvprismError(_non_finite(x, where, name))


def _non_finite(x: torch.Tensor, where: str, name: str) -> str:
    return f"{where}: {name} contains NaN or inf (shape {_shape(x)})"


def _float_tensor(x: object, where: str, name: str, want: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise KvprismError(f"{where}: {name} must be a float tensor {want}; got {got}")
    return x


def check_rows(
    rows: object,
    *,
    where: str = "program",
    name: str = "signatures",
    lead: Sequence[int] | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Check the rows given to ``program`` / ``append``: ``rows [*L, N, w]``. ``lead`` / ``width``: those of the
    programmed banks (an ``append``; then ``N = 0`` is allowed), None at ``program`` (``N ≥ 1``). Returns ``rows``."""
    x = _float_tensor(rows, where, name, "[*L, N, w]")
    shape = _shape(x)
    if x.dim() < 2 or x.shape[-1] == 0:
        raise KvprismError(f"{where}: {name} has shape {shape}; expected [*L, N, w] with w ≥ 1")
    if any(s == 0 for s in x.shape[:-2]):
        raise KvprismError(f"{where}: {name} has shape {shape}: an empty bank dimension; expected [*L, N, w]")
    if lead is None:
        if x.shape[-2] == 0:
            raise KvprismError(f"{where}: {name} has shape {shape}: N = 0 rows; a bank needs at least one row")
    elif tuple(x.shape[:-2]) != tuple(lead) or x.shape[-1] != width:
        raise KvprismError(
            f"{where}: {name} has shape {shape}; expected {_dims(*lead, 'm', width)} to match the programmed banks"
        )
    check_finite(x, where, name)
    return x


def check_query(
    query: object,
    *,
    lead: Sequence[int] | None,
    width: int | None,
    where: str = "scores",
    name: str = "query",
) -> bool:
    """Check a query of the programmed banks ``[*L, N, w]`` (``lead``, ``width``; None before ``program``):
    ``[*L, w]`` (returns True) or ``[*L, G, w]`` with ``G ≥ 1`` (returns False)."""
    if lead is None or width is None:
        raise KvprismError(f"{where} before program: no programmed rows; call program(signatures) first")
    x = _float_tensor(query, where, name, "[*L, w] or [*L, G, w]")
    lead = tuple(lead)
    n = len(lead)
    single = tuple(x.shape) == (*lead, width)
    group = x.dim() == n + 2 and tuple(x.shape[:n]) == lead and x.shape[-1] == width and x.shape[-2] > 0
    if not (single or group):
        raise KvprismError(
            f"{where}: {name} has shape {_shape(x)}; expected {_dims(*lead, width)} or {_dims(*lead, 'G', width)} "
            "(G ≥ 1) for the programmed banks"
        )
    check_finite(x, where, name)
    return single
