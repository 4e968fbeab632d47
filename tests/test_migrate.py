"""Stored data under the older key ``backend`` reads in today's vocabulary through one function."""

from __future__ import annotations

from kvprism.migrate import migrate_backend


def test_backend_is_renamed_to_the_given_key_in_a_copy():
    stored = {"config": "exact-k4", "backend": "exact"}
    assert migrate_backend(stored, "method") == {"config": "exact-k4", "method": "exact"}
    assert migrate_backend(stored, "scorer") == {"config": "exact-k4", "scorer": "exact"}
    assert stored == {"config": "exact-k4", "backend": "exact"}  # not modified


def test_data_in_todays_vocabulary_is_left_as_it_is():
    assert migrate_backend({"method": "dense"}, "method") == {"method": "dense"}
    both = {"method": "photonic", "backend": "exact"}  # the current key wins; the loader's own check sees the rest
    assert migrate_backend(both, "method") == both
