"""Exception types. Every error a user can cause is a :class:`KvprismError` with a one-line message."""

from __future__ import annotations


class KvprismError(Exception):
    """Base class for errors caused by input or environment (shown as one line by the CLI)."""


class ConfigError(KvprismError, ValueError):
    """A configuration field is missing, unknown, of the wrong type or out of its allowed range."""


class ModelNotFoundError(KvprismError, FileNotFoundError):
    """A model could not be found locally (kvprism never downloads at run time)."""
