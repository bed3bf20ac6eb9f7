"""The ``debias_sampling`` method: contrastive decoding against an image-free (VLM) or counterfactual (LLM) context.

``DebiasSamplingConfig`` (config), ``counterfactual`` (the counterfactual texts of a prompt),
:class:`DebiasSamplingLogitsProcessor` (the two-forward HF processor with its own cache), ``twin_rows`` (both
branches in one forward), ``hf.DebiasSamplingHF`` (what ``wrap`` runs) and ``vllm`` (the per-request pair form
of the vLLM plugin). Torch loads with the processor.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...registry import _REGISTRY, register_method
from .config import (
    ALPHA_MAX,
    EVAL_COUNTERFACTUAL_PREFIX,
    IMAGE_FREE_VARIANTS,
    SEED_MAX,
    SWAPS,
    DebiasSamplingConfig,
    parse_variants,
)
from .counterfactual import counterfactual_texts

if DebiasSamplingConfig.method not in _REGISTRY:
    register_method(
        DebiasSamplingConfig,
        "debias_lm.methods.debias_sampling.hf:DebiasSamplingHF",
        kind="decoding",
        vllm="partial",
        vllm_mapping="debias_lm.methods.debias_sampling.vllm:MAPPING",
        unsupported={"vllm": "VLM image-free branches run in HF only; text counterfactual pairs run per request in vLLM"},
        modalities=("text", "vision"),
        eval_defaults={"counterfactual_prefix": EVAL_COUNTERFACTUAL_PREFIX, "counterfactual_swap": ""},
        description="contrastive decoding against an image-free (VLM) or counterfactual (LLM) context (VDD)",
    )

_LAZY = {
    "DebiasSamplingLogitsProcessor": ".processor",
    "TwinRowContrastProcessor": ".twin_rows",
    "DebiasSamplingHF": ".hf",
}

__all__ = ["ALPHA_MAX", "IMAGE_FREE_VARIANTS", "SEED_MAX", "SWAPS", "DebiasSamplingConfig", "counterfactual_texts",
           "parse_variants", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
