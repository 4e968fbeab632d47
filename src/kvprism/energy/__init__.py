"""Energy, latency and scaling model of the photonic block-selection chip against GPU baselines.

Every figure is derived from component parameters stated once: the chip's in :class:`PhotonicConfig` (preset TOMLs,
each with its source), the GPU's and the workload's in :class:`EnergyConfig`.

* :mod:`kvprism.energy.chip` — one query on the chip: laser (power needed at the photodiodes for the score-referred
  SNR target, from the detection-noise model, back through the link budget and the wall-plug efficiency, never above
  the optical power caps — infeasible otherwise), query DACs and MZM drive (d per pass, two passes for dual-rail),
  TIA + ADC per row (Walden FoM × 2^bits per conversion; TIAs powered for one integration time T_int), top-k
  comparisons, EO programming (C·V² per ring update, one row per bank every block_size tokens), paging (time-shared
  banks), static power over a query rate; latency by stage (seed Table III values; the ring stage from Q, the
  integration stage T_int = 1/(2·detection_bandwidth_hz)). Design quantities come from
  :class:`~kvprism.photonics.design.ChipDesign`.
* :mod:`kvprism.energy.gpu` — dense KV read, signature scan + fetch of the selected blocks, as HBM bytes × J/bit
  and bytes / bandwidth; measured times from a benchmark JSON.
* :mod:`kvprism.energy.compare` — decode-step comparison for a model shape, crossovers, ring count and area (rings,
  PD pairs, MZMs; TIAs and ADCs), resident vs time-shared banks (:func:`bank_sharing`), thermo-optic heater
  reference.
* :mod:`kvprism.energy.report` — tables, plots and ``energy_summary.json`` of ``kvprism energy``.

Difference to the seed's quoted per-query energies (796–2290 pJ): the seed multiplies fixed per-device powers
(49 µW of TIA + ADC per photodiode, laser power without a wall-plug efficiency, 0.5 mW per DAC channel) by stage
latencies. Here every term follows from a cited component: at the seed design point (N = 8192 rows, d = 32, 8-bit
ADC) one query costs ~56 nJ. Each of the N rows needs one ADC conversion per query, and the Walden FoM of
25 fJ/step × 2^8 = 6.4 pJ per conversion gives N × 6.4 pJ = 52 nJ (93 %); the TIAs (3 mW for one 0.1 ns sample
period each) add 2.5 nJ, the top-k 1 nJ, the laser — sized for a 4-bit score-referred SNR, which at 5 GHz and the
59 dB link (demux, mux, 1×8192 splitter, 42 cm of routing down the bank) it cannot reach within the power caps, so
it is capped at 6.4 dBm per line and reported infeasible — 0.07 nJ, DACs and MZM drive 0.15 nJ. For reference
(printed, not added): the cited converter's own measured 1.48 pJ/conversion would give 12 nJ for the ADCs, and the
seed's 49 µW per diode over its 2 ns TIA+ADC stage gives 1.6 nJ — two orders of magnitude below the cited TIA and
ADC. Energy grows ∝ N: PRISM is O(1) in latency, not in energy. The latency reproduces the seed: its stage values
sum to 8.9 ns; with the ring stage derived from Q (photon lifetime × ln 2^adc_bits: 46 ps at Q = 1e4 instead of the
quoted 100 ps) and the 0.1 ns integration of one symbol at 5 GHz the total is 8.95 ns.

At the system level (:mod:`kvprism.energy.compare`) the chip's dynamic energy is small next to the HBM traffic it
saves; what decides the comparison is the chip's static power over the whole decode step, the laser mode (gated vs
CW), paging once the rows exceed the chip, and the fetch of the selected blocks that both systems pay.
"""

from kvprism.energy.chip import ChipQuery, LaserSolution, chip_query, required_laser
from kvprism.energy.compare import (
    StepComparison,
    bank_sharing,
    crossover,
    decode_step,
    ring_inventory,
    thermo_optic_reference,
)
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
    "bank_sharing",
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
