"""Scorers: what ranks the blocks of a weight bank against the query, one small class per module.

- ``exact`` (:mod:`.exact`): fp32 dot products of the programmed signatures with the encoded query (the ideal
  selector).
- ``photonic`` (:mod:`.photonic`): the :class:`kvprism.photonics.PhotonicEngine`, a physical model of a microring
  weight bank; its scores are noisy estimates.
- ``seed-as-published`` (:mod:`.seed_published`): the PRISM seed's own simplified impairment model.

Importing this package registers the built-in scorers in :data:`SCORERS` (:mod:`.base`); a scorer of a plugin
registers itself with :func:`register_scorer`.
"""

from kvprism.scorers.base import SCORERS, Scorer, register_scorer
from kvprism.scorers.exact import ExactScorer
from kvprism.scorers.photonic import PhotonicScorer, group_scorers
from kvprism.scorers.seed_published import SeedPublishedConfig, SeedPublishedScorer, seed_published_weights

__all__ = [
    "SCORERS",
    "ExactScorer",
    "PhotonicScorer",
    "Scorer",
    "SeedPublishedConfig",
    "SeedPublishedScorer",
    "group_scorers",
    "register_scorer",
    "seed_published_weights",
]
