"""``EnergyConfig``: the GPU side and the workload of the decode-step comparison, and model shapes."""

from __future__ import annotations

import dataclasses
from typing import Any

from kvprism.config import ConfigBase, param
from kvprism.errors import KvprismError
from kvprism.photonics.architecture import ARCHITECTURES, Architecture
from kvprism.selection import SelectionConfig

# The selection workload's defaults are SelectionConfig's, read from its fields so the two cannot drift apart.
_SEL = {f.name: f.default for f in dataclasses.fields(SelectionConfig)}

__all__ = ["MODEL_SHAPES", "EnergyConfig", "ModelShape", "model_shape"]


@dataclasses.dataclass(frozen=True)
class EnergyConfig(ConfigBase):
    """GPU memory parameters, the selection workload (names and defaults as in ``SelectionConfig``) and the
    thermo-optic reference used for comparison."""

    hbm_energy_per_bit_j: float = param(
        3.9e-12, doc="HBM read energy per bit", unit="J/bit", gt=0.0, source="O'Connor et al., MICRO'17 (PHYSICS §10)"
    )
    hbm_bandwidth_bytes_per_s: float = param(
        3.35e12, doc="HBM bandwidth", unit="B/s", gt=0.0, source="NVIDIA H100 SXM datasheet (PHYSICS §10)"
    )
    kv_bytes_per_element: int = param(2, doc="bytes per K/V/signature element (bf16)", unit="B", ge=1, le=8)
    batch: int = param(1, doc="sequences decoded together (each has its own KV cache and chip rows)", ge=1)
    block_size: int = param(
        _SEL["block_size"], doc="tokens per block (one signature / one chip row)", unit="tokens", ge=1
    )
    k: int = param(_SEL["k"], doc="blocks selected per (layer, KV head) and step", unit="blocks", ge=1)
    d_sig: int = param(_SEL["d_sig"], doc="signature dimension = comb lines used", ge=1)
    sink_blocks: int = param(_SEL["sink_blocks"], doc="first blocks always read", unit="blocks", ge=0)
    window: int = param(_SEL["window"], doc="most recent tokens always read", unit="tokens", ge=0)
    rerank: int = param(
        _SEL["rerank"],
        doc="two-stage selection: the chip proposes rerank*k blocks per bank, the GPU reads their d_sig-wide "
        "signatures from HBM and rescores them exactly (1 = the chip's top-k is the selection, nothing read)",
        unit="x k",
        ge=1,
    )
    architecture: str = param(
        "time-shared",
        doc="how the chip holds the rows (kvprism.photonics.architecture): 'time-shared' (the preset's banks, rewritten "
        "every step), 'resident' (append-only banks: every (layer, KV head) keeps its rows) or 'two-level' (resident "
        "super-block rows, exact electronic rescoring of the blocks inside the chosen super-blocks)",
        choices=ARCHITECTURES,
        source="PHYSICS §11: resident signatures vs time-shared banks is the central trade-off",
    )
    superblock: int = param(
        1,
        doc="blocks per chip row of the two-level architecture (S ≥ 2; 1 for the others)",
        unit="blocks",
        ge=1,
    )
    gqa_reduce: str = param(
        _SEL["gqa_reduce"],
        doc="'sum': one chip query per KV head (summed query); 'max': one per query head",
        choices=("sum", "max"),
    )
    scan_dims: str = param(
        "d_sig",
        doc="dimensions of the signatures the GPU scans: 'd_sig' (projected) or 'd_head' (unprojected mean keys)",
        choices=("d_sig", "d_head"),
    )
    target_enob: float = param(
        -1.0,
        doc="score ENOB the laser is sized for (< 0: the preset's required_score_enob)",
        unit="bit",
        le=24.0,
    )
    static_accounting: str = param(
        "full-step",
        doc="time over which the chip's static power is charged per decode step: 'full-step' (the whole decode step "
        "1/tokens_per_s: the chip stays powered) or 'attention' (only the photonic attention step, best case)",
        choices=("full-step", "attention"),
    )
    laser_mode: str = param(
        "comb",
        doc="light source: 'comb' (default): a CW comb whose pump runs for the whole decode step at the wall plug "
        "(comb_conversion_efficiency × laser_wall_plug_efficiency; a CW comb cannot be gated); 'cw': lasers without "
        "comb conversion on for the whole step; 'gated': on only while the banks probe or query (best case)",
        choices=("comb", "cw", "gated"),
        source="PHYSICS §12: a CW comb's pump cannot be gated",
    )
    tokens_per_s: float = param(
        20.0,
        doc="decode rate of the step: the chip's time line (design.decode_timing at the model shape and context) and "
        "every term held for the whole step (comb pump, ring drivers, trim heaters) follow from it",
        unit="tokens/s",
        gt=0.0,
        source="issue 25: verdicts at 20 and 200 tokens/s",
    )
    gpu_energy_per_flop_j: float = param(
        0.354e-12,
        doc="GPU energy per FP8 operation of an electronic indexer (board power over dense FP8 throughput)",
        unit="J/FLOP",
        gt=0.0,
        source="NVIDIA H100 SXM datasheet: 700 W, 1,979 TFLOPS dense FP8",
    )
    gpu_flops_per_s: float = param(
        1.979e15,
        doc="GPU dense FP8 throughput (time of an electronic indexer's arithmetic)",
        unit="FLOP/s",
        gt=0.0,
        source="NVIDIA H100 SXM datasheet: 1,979 TFLOPS dense FP8",
    )
    indexer_bytes_per_token_layer: float = param(
        132.0,
        doc="bytes a DSA-style lightning indexer reads per cached token and layer (FP8 key of 128 + fp32 scale)",
        unit="B",
        gt=0.0,
        source="DeepSeek-V3.2 lightning indexer (PHYSICS §12)",
    )
    indexer_flops_per_token_layer: float = param(
        16.4e3,
        doc="arithmetic of a DSA-style lightning indexer per cached token and layer (64 heads × 128, ReLU-weighted "
        "sum)",
        unit="FLOP",
        gt=0.0,
        source="DeepSeek-V3.2 lightning indexer (PHYSICS §12)",
    )
    thermo_optic_p_pi_w: float = param(
        24.77e-3,
        doc="SOI thermo-optic heater power per π phase shift (comparison only)",
        unit="W",
        gt=0.0,
        source="Harris et al., Opt. Express 22, 10487 (2014): 24.77 mW per π",
    )

    @property
    def chip_architecture(self) -> Architecture:
        """The :class:`~kvprism.photonics.architecture.Architecture` of ``architecture`` and ``superblock``."""
        return Architecture(self.architecture, self.superblock)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Attention shape of a decoder: layers, query heads, KV heads, head dimension, parameter count."""

    name: str
    n_layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    n_params: float  # total parameters (weights read once per decode step, shared by the batch)
    source: str

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.q_heads // self.kv_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V elements per token over all layers (multiply by bytes per element)."""
        return 2 * self.n_layers * self.kv_heads * self.head_dim

    @classmethod
    def of_model(cls, model: Any, name: str = "") -> ModelShape:
        """The shape of a loaded Hugging Face causal LM: its config's layers and heads, its parameter count."""
        cfg = model.config.get_text_config(decoder=True)
        hq = cfg.num_attention_heads
        hkv = getattr(cfg, "num_key_value_heads", None) or hq
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
        n_params = float(sum(p.numel() for p in model.parameters()))
        return cls(name or getattr(cfg, "model_type", "model"), cfg.num_hidden_layers, hq, hkv, head_dim, n_params,
                   "the loaded model's config and parameters")  # fmt: skip


MODEL_SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("qwen2.5-7b", 28, 28, 4, 128, 7.61e9, "Qwen/Qwen2.5-7B config.json, model card (7.61 B)"),
        ModelShape("smollm2-135m", 30, 9, 3, 64, 1.35e8, "HuggingFaceTB/SmolLM2-135M config.json, model card"),
        ModelShape(
            "qwen2.5-coder-0.5b",
            24,
            14,
            2,
            64,
            4.94e8,
            "Qwen/Qwen2.5-Coder-0.5B-Instruct config.json, model card (0.49 B)",
        ),
        ModelShape("llama-3.1-8b", 32, 32, 8, 128, 8.03e9, "meta-llama/Llama-3.1-8B config.json, model card (8.03 B)"),
    )
}


def model_shape(name: str) -> ModelShape:
    """A named model shape (case-insensitive); :class:`KvprismError` lists the known names otherwise."""
    key = name.lower()
    if key not in MODEL_SHAPES:
        raise KvprismError(f"unknown model shape {name!r}; known: {', '.join(MODEL_SHAPES)}")
    return MODEL_SHAPES[key]
