"""Energy, latency and scaling model of the photonic block-selection chip against GPU baselines.

Every figure is derived from component parameters stated once: the chip's in :class:`PhotonicConfig` (preset TOMLs,
each with its source), the GPU's and the workload's in :class:`EnergyConfig`.

* :mod:`kvprism.energy.chip` — one query on the chip: laser (power needed at the photodiodes for the score-SNR
  target, from the detection-noise model, back through the link budget and the wall-plug efficiency), query DACs and
  MZM drive (d per pass, two passes for dual-rail), TIA + ADC per row (Walden FoM × 2^bits per conversion), top-k
  comparisons, EO programming (C·V² per ring update, one row per bank every block_size tokens), paging, static
  power over a query rate; latency by stage (seed Table III values; the ring stage from Q).
* :mod:`kvprism.energy.gpu` — dense KV read, signature scan + fetch of the selected blocks, as HBM bytes × J/bit
  and bytes / bandwidth; measured times from a benchmark JSON.
* :mod:`kvprism.energy.compare` — decode-step comparison for a model shape, crossovers, ring count and area,
  thermo-optic heater reference.
* :mod:`kvprism.energy.report` — tables, plots and ``energy_summary.json`` of ``kvprism energy``.

Difference to the seed's quoted per-query energies (796–2290 pJ): they come from fixed per-device powers (e.g.
49 µW of TIA + ADC per photodiode, no laser wall-plug efficiency) times stage latencies. Here, at the seed design
point (N = 8192 rows, d = 32, 8-bit ADC), one query costs ~56 nJ: each of the N rows needs one ADC conversion per
query, and a Walden FoM of 25 fJ/step × 2^8 = 6.4 pJ per conversion alone gives N × 6.4 pJ = 52 nJ; the TIAs
(3 mW for one 0.1 ns sample period each) add 2.5 nJ, the laser sized for a 4-bit score SNR ~0.4 nJ. Energy grows
∝ N (PRISM is O(1) in latency, not in energy). ``tia_adc_power_seed_w`` (49 µW per diode) would be ~1000× below
the cited converters. The latency reproduces the seed: the stage values sum to 8.9 ns; with the ring stage derived
from Q (photon lifetime × ln 2^bits: 46 ps at Q = 1e4 instead of the quoted 100 ps) the total is 8.85 ns.
"""

from kvprism.energy.chip import ChipQuery, LaserSolution, chip_query, required_laser
from kvprism.energy.compare import StepComparison, crossover, decode_step, ring_inventory, thermo_optic_reference
from kvprism.energy.config import MODEL_SHAPES, EnergyConfig, ModelShape, model_shape
from kvprism.energy.gpu import GpuStep, gpu_step, load_gpu_times

__all__ = [
    "MODEL_SHAPES",
    "ChipQuery",
    "EnergyConfig",
    "GpuStep",
    "LaserSolution",
    "ModelShape",
    "StepComparison",
    "chip_query",
    "crossover",
    "decode_step",
    "gpu_step",
    "load_gpu_times",
    "model_shape",
    "required_laser",
    "ring_inventory",
    "thermo_optic_reference",
]
