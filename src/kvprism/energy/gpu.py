"""GPU baselines of one decode step, as HBM traffic: bytes → energy (J/bit) and time (bandwidth), and measured times.

Three reads per decode step (all layers, all KV heads, ``batch`` sequences), elements of ``kv_bytes_per_element``:

* dense: every cached token's K and V;
* block-selection scan: the signature of every complete block (``d_sig`` or ``head_dim`` dimensions);
* fetch of the selected tokens: k candidate blocks + sink blocks + the tail (the recent window and the incomplete last
  block), each token once (:class:`kvprism.layout.BlockLayout`) (K and V).

Compute, kernel launches and the query/output traffic are not modelled (decode attention is memory-bound; the
measured times of ``benchmarks/gpu_decode.py`` include everything and can replace the modelled times).

Measured-times file (JSON), either of:

* a list of records ``{"batch": int, "context": int, "method": str, "us": float}``;
* the output of ``benchmarks/gpu_decode.py``: ``{"layer": {"q_heads", "kv_heads", "head_dim", ...},
  "rows": [{"batch", "context", "us": {method: us}}, ...]}``.

``us`` is the time of one decode step of ONE attention layer [µs]; it is multiplied by the model's layer count.
When the file states its layer shape it must match the model shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from kvprism.energy.config import EnergyConfig, ModelShape
from kvprism.errors import KvprismError
from kvprism.layout import BlockGeometry, BlockLayout

__all__ = ["GpuStep", "gpu_step", "load_gpu_times", "selected_tokens"]


def selected_tokens(context: int, ecfg: EnergyConfig) -> int:
    """Tokens read per (sequence, layer, KV head) by block-sparse decode at ``context`` cached tokens: the sink blocks,
    the tail (the window and the incomplete last block) and ``k`` candidate blocks, as
    :meth:`kvprism.layout.BlockLayout.tokens_read_max` counts them (each token once)."""
    layout = BlockLayout.from_lengths(context, BlockGeometry(ecfg.block_size, ecfg.sink_blocks, ecfg.window))
    return int(layout.tokens_read_max(ecfg.k)[0])


@dataclasses.dataclass(frozen=True)
class GpuStep:
    """HBM bytes of one decode step of the whole model; energy [J] and time [s] from the :class:`EnergyConfig`."""

    context: int
    dense_bytes: int
    scan_bytes: int
    fetch_bytes: int
    weight_bytes: int  # model weights read once per step (not part of any attention comparison)
    energy_per_byte_j: float
    bandwidth_bytes_per_s: float

    def energy_j(self, n_bytes: float) -> float:
        return n_bytes * self.energy_per_byte_j

    def time_s(self, n_bytes: float) -> float:
        return n_bytes / self.bandwidth_bytes_per_s

    @property
    def dense_energy_j(self) -> float:
        return self.energy_j(self.dense_bytes)

    @property
    def dense_latency_s(self) -> float:
        return self.time_s(self.dense_bytes)

    @property
    def sparse_energy_j(self) -> float:
        """Signature scan + fetch of the selected tokens [J]."""
        return self.energy_j(self.scan_bytes + self.fetch_bytes)

    @property
    def sparse_latency_s(self) -> float:
        return self.time_s(self.scan_bytes + self.fetch_bytes)


def gpu_step(shape: ModelShape, context: int, ecfg: EnergyConfig) -> GpuStep:
    """HBM traffic of one decode step at ``context`` cached tokens per sequence."""
    if context < 1:
        raise KvprismError(f"context = {context} is invalid; allowed range: [1, inf)")
    e = ecfg.kv_bytes_per_element
    b = ecfg.batch
    d_scan = ecfg.d_sig if ecfg.scan_dims == "d_sig" else shape.head_dim
    n_blocks = context // ecfg.block_size
    return GpuStep(
        context=context,
        dense_bytes=b * context * shape.kv_bytes_per_token * e,
        scan_bytes=b * shape.n_layers * shape.kv_heads * n_blocks * d_scan * e,
        fetch_bytes=b * selected_tokens(context, ecfg) * shape.kv_bytes_per_token * e,
        weight_bytes=int(shape.n_params * e),
        energy_per_byte_j=8.0 * ecfg.hbm_energy_per_bit_j,
        bandwidth_bytes_per_s=ecfg.hbm_bandwidth_bytes_per_s,
    )


def load_gpu_times(path: str | Path, shape: ModelShape) -> dict[tuple[int, int, str], float]:
    """Measured decode-step times of the whole model [s] keyed by (batch, context, method), from a JSON file in
    one of the two schemas of the module docstring (per-layer µs × ``shape.n_layers``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KvprismError(f"GPU times file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise KvprismError(f"GPU times file {path} is not valid JSON: {exc}") from None
    records: list[tuple[int, int, str, float]] = []
    try:
        if isinstance(data, list):
            for r in data:
                records.append((int(r["batch"]), int(r["context"]), str(r["method"]), float(r["us"])))
        elif isinstance(data, dict) and "rows" in data:
            layer = data.get("layer") or {}
            want = {"q_heads": shape.q_heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim}
            bad = {k: layer[k] for k in want if k in layer and int(layer[k]) != want[k]}
            if bad:
                raise KvprismError(
                    f"GPU times file {path} was measured on a layer with {bad}, but model shape {shape.name} has "
                    f"{ {k: want[k] for k in bad} }"
                )
            for r in data["rows"]:
                for method, us in (r.get("us") or {}).items():
                    records.append((int(r["batch"]), int(r["context"]), str(method), float(us)))
        else:
            raise KvprismError(f"GPU times file {path}: expected a list of records or an object with 'rows'")
    except (KeyError, TypeError, ValueError) as exc:
        raise KvprismError(f"GPU times file {path}: malformed record ({type(exc).__name__}: {exc})") from None
    return {(b, c, m): us * 1e-6 * shape.n_layers for b, c, m, us in records if math.isfinite(us) and us > 0}
