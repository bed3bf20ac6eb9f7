"""UDDIA (unified detoxifying and debiasing by inference-time adaptive optimisation) for HF decoders.

``UDDIAConfig`` is importable without torch; the HF implementation (``UDDIAHF``), the probe tools and the
debias objective load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...registry import _REGISTRY, register_method
from .config import VARIANTS, UDDIAConfig

if UDDIAConfig.method not in _REGISTRY:
    register_method(
        UDDIAConfig,
        "debias_lm.methods.uddia.hf:UDDIAHF",
        kind="decoding",
        vllm="no",
        unsupported={"vllm": (
            "it needs gradients (a backward pass through the model at every decoding step), and vLLM logits "
            "processors only see logits. Use the HF path instead: "
            "debias_lm.wrap(model, tokenizer, debias_lm.UDDIAConfig(...)).generate(...)")},
        description="UDDIA: per-token gradient steps on bias-site offsets (detox probe + group debias), HF only",
    )

_LAZY = {
    "UDDIAHF": ".hf",
    "ToxicityProbe": ".probe",
    "train_probe": ".probe",
    "model_fingerprint": ".probe",
    "mean_pooled_states": ".probe",
    "read_labeled_jsonl": ".probe",
    "embedded_probe_path": ".probe",
    "GroupDebias": ".debias",
}

__all__ = ["UDDIAConfig", "VARIANTS", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
