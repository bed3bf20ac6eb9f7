"""The ``calibration`` method: post-hoc calibration of answer labels against an image-free / content-free prior.

``CalibrationConfig`` (config), :class:`AnswerCalibrator` (label distributions before / after calibration),
:class:`CalibrationLogitsProcessor` (the calibration inside HF ``generate``), ``hf.CalibrationHF`` (what
``wrap`` runs) and ``vllm`` (the per-request form of the vLLM plugin). Torch loads with the calibrator.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...registry import _REGISTRY, register_method
from .config import PRIORS, REDUCTIONS, CalibrationConfig

if CalibrationConfig.method not in _REGISTRY:
    register_method(
        CalibrationConfig,
        "debias_lm.methods.calibration.hf:CalibrationHF",
        kind="answer",
        vllm="yes",
        vllm_mapping="debias_lm.methods.calibration.vllm:MAPPING",
        modalities=("text", "vision"),
        description="post-hoc calibration of answer labels against an image-free / content-free prior",
    )

_LAZY = {
    "AnswerCalibrator": ".calibrator",
    "CalibrationResult": ".calibrator",
    "CalibrationLogitsProcessor": ".processor",
    "CalibrationHF": ".hf",
}

__all__ = ["PRIORS", "REDUCTIONS", "CalibrationConfig", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
