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

__all__ = ["BASELINES", "Baseline", "GpuStep", "electronic_baselines", "gpu_step", "load_gpu_times", "selected_tokens"]


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


#: Electronic selectors a reader would pick instead of the chip: (name, description with source). Block signatures
#: are ``d`` = d_sig (or head_dim, ``scan_dims``) elements per block and KV head; "minmax" stores two vectors.
BASELINES = (
    ("bf16-mean", "bf16 block signatures, d elements of 2 B (the scan kvprism's exact scorer does)"),
    ("fp8-mean", "FP8 block signatures, d elements of 1 B + one fp32 scale per signature"),
    ("fp4-mean", "FP4 block signatures (NVFP4: 0.5 B per element + one FP8 scale per 16 elements)"),
    ("fp8-minmax", "FP8 min/max block signatures (Quest-style), 2d elements of 1 B + one fp32 scale"),
    ("fp4-minmax", "FP4 min/max block signatures (NVFP4), 2d elements"),
    ("fp8-indexer", "DSA-style lightning indexer (DeepSeek-V3.2): per token and layer 132 B read (FP8 key + fp32 "
     "scale) and 16.4 kFLOP (PHYSICS §12)"),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One electronic selector's work per decode step: bytes read from HBM and arithmetic; energy [J] and time [s]."""

    name: str
    description: str
    read_bytes: float
    flops: float
    energy_j: float
    time_s: float


def electronic_baselines(shape: ModelShape, context: int, ecfg: EnergyConfig) -> dict[str, Baseline]:
    """The selection work of each of :data:`BASELINES` for one decode step at ``context`` tokens: energy = bytes ×
    HBM J/byte + FLOPs × ``gpu_energy_per_flop_j``; time = max(bytes / bandwidth, FLOPs / ``gpu_flops_per_s``)
    (memory and arithmetic overlap). Signature scans score every complete block of every (sequence, layer, KV
    head) once per query (``gqa_reduce = 'max'``: once per query head, 2·d FLOPs each); the indexer scores every
    cached token of every (sequence, layer). The fetch of the selected tokens is not included (every selector pays
    it)."""
    b = ecfg.batch
    d = ecfg.d_sig if ecfg.scan_dims == "d_sig" else shape.head_dim
    blocks = b * shape.n_layers * shape.kv_heads * (context // ecfg.block_size)
    queries = shape.group if ecfg.gqa_reduce == "max" else 1
    per_block = {
        "bf16-mean": (2.0 * d, d),
        "fp8-mean": (1.0 * d + 4.0, d),
        "fp4-mean": (0.5 * d + math.ceil(d / 16), d),
        "fp8-minmax": (2.0 * d + 4.0, 2 * d),
        "fp4-minmax": (1.0 * d + math.ceil(2 * d / 16), 2 * d),
    }
    work: dict[str, tuple[float, float]] = {
        name: (blocks * nbytes, blocks * queries * 2.0 * elems) for name, (nbytes, elems) in per_block.items()
    }
    tokens = b * shape.n_layers * context
    work["fp8-indexer"] = (tokens * ecfg.indexer_bytes_per_token_layer, tokens * ecfg.indexer_flops_per_token_layer)
    e_byte = 8.0 * ecfg.hbm_energy_per_bit_j
    out = {}
    for name, desc in BASELINES:
        nbytes, flops = work[name]
        out[name] = Baseline(
            name, desc, nbytes, flops, nbytes * e_byte + flops * ecfg.gpu_energy_per_flop_j,
            max(nbytes / ecfg.hbm_bandwidth_bytes_per_s, flops / ecfg.gpu_flops_per_s),
        )  # fmt: skip
    return out


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
