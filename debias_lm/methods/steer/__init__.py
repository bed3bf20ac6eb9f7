"""Activation steering (``steer``): static vectors added to chosen activations by forward hooks.

Two kinds of vectors, one file format (``debias_lm.utils.steer_file``): contrastive activation addition vectors
built from contrast pairs (``debias-lm steer build``; ``build.py``) and UDDIA's per-token offsets distilled into
static bias-site offsets (``debias-lm uddia distill``). ``SteerConfig`` imports without torch; the HF
implementation (``SteerHF``) and the builder load on first use. Registered here.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...registry import _REGISTRY, register_method
from .config import SteerConfig, shipped_names

_LAZY = {"SteerHF": ".hf", "build_vectors": ".build", "last_token_activations": ".build", "read_pairs": ".build"}

if "steer" not in _REGISTRY:
    register_method(
        SteerConfig,
        "debias_lm.methods.steer.hf:SteerHF",
        kind="activation",
        vllm="yes",
        vllm_mapping="debias_lm.methods.steer.vllm:MAPPING",
        unsupported={"vllm": "needs an engine started with the vectors (debias-lm serve --steer NAME=FILE); "
                             "Llama-family models"},
        description="activation steering: CAA vectors / distilled UDDIA offsets added by hooks, per row "
                    "(vLLM: per request, the vLLM steering plugin: debias-lm serve --steer)",
    )

__all__ = ["SteerConfig", "shipped_names", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
