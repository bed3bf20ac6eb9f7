"""The ``identity`` method: no change at all (the baseline, and a check of the wrapping machinery)."""

from __future__ import annotations

from ...config import IdentityConfig
from ...registry import _REGISTRY, register_method

if IdentityConfig.method not in _REGISTRY:
    register_method(
        IdentityConfig,
        "debias_lm.methods.identity.hf:IdentityHF",
        kind="none",
        vllm="yes",
        vllm_mapping="debias_lm.methods.identity.vllm:MAPPING",
        aliases=("none",),
        description="no-op baseline: the model's own generate, bit-identical",
    )

__all__ = ["IdentityConfig"]
