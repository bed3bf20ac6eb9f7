"""Exceptions raised by debias-lm.

Bad user input always raises :class:`ValueError` (or a subclass) *before* any model work starts, with a
message that names the offending field or value and how to fix it. The CLI turns these into a single
readable line and exit code 2.
"""

from __future__ import annotations


class DebiasLMError(Exception):
    """Base class for errors specific to debias-lm."""


class UserInputError(DebiasLMError, ValueError):
    """Invalid input supplied by the user (config value, file, model name, prompt...)."""


class MissingDependencyError(DebiasLMError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""
