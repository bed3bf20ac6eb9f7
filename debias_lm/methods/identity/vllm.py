"""The vLLM form of ``identity``: plain generation (a request carrying it is not touched by the processor)."""

from __future__ import annotations

from ...registry import VLLMMapping

MAPPING = VLLMMapping(behaviour="none")

__all__ = ["MAPPING"]
