"""The photonic weight-bank chip: pure physics functions (ring, wdm, link, noise, drift, encoding) and one engine.

from kvprism.photonics import PhotonicConfig, PhotonicEngine
eng = PhotonicEngine(PhotonicConfig.preset("seed-nominal"), seed=0)
"""

from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.engine import PhotonicEngine
from kvprism.photonics.feasibility import FeasibilityReport, feasibility
from kvprism.photonics.group import EngineGroup

__all__ = ["EngineGroup", "FeasibilityReport", "PhotonicConfig", "PhotonicEngine", "feasibility"]
