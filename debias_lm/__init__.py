"""debias-lm: inference-time debiasing for LLMs and VLMs, inside Hugging Face ``generate`` and vLLM.

Quick tour::

    import debias_lm as dl

    model, tok = dl.load_default_model()                       # SmolLM2-135M-Instruct, offline
    grounded = dl.wrap(model, tok, dl.NBLSConfig(k=32))
    print(grounded.generate_text("Write one sentence about a surgeon.", max_new_tokens=40))

Heavy modules (torch, transformers) are imported lazily, so ``import debias_lm`` is cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "wrap": "debias_lm.hf.wrap",
    "DebiasedModel": "debias_lm.hf.wrap",
    "load_default_model": "debias_lm.models",
    "load_model": "debias_lm.models",
    "MethodConfig": "debias_lm.config",
    "IdentityConfig": "debias_lm.config",
    "NBLSConfig": "debias_lm.methods.nbls.config",
    "UDDIAConfig": "debias_lm.methods.uddia",
    "NBLSGrounding": "debias_lm.methods.nbls.grounding",
    "load_bls_table": "debias_lm.methods.nbls.table",
    "SteerConfig": "debias_lm.methods.steer",
    "register_method": "debias_lm.registry",
    "get_method": "debias_lm.registry",
    "list_methods": "debias_lm.registry",
    "config_from_dict": "debias_lm.registry",
    "UserInputError": "debias_lm.errors",
    "DebiasSamplingLogitsProcessor": "debias_lm.methods.debias_sampling.processor",
    "DebiasSamplingConfig": "debias_lm.methods.debias_sampling.config",
    "CalibrationConfig": "debias_lm.methods.calibration.config",
    "AnswerCalibrator": "debias_lm.methods.calibration.calibrator",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'debias_lm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
