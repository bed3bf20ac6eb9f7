"""vllm_debias: the debias-lm plugin for vLLM (offline ``LLM`` and the OpenAI-compatible server).

The logits processors, one class per behaviour (each inert for requests that do not opt in to it), are the
package's ``vllm.logits_processors`` entry points: an installed debias-lm puts them in every vLLM engine. From a
source tree (or to be explicit; loading them twice is harmless) register them yourself::

    llm = LLM(model=M, logits_processors=list(vllm_debias.LOGITS_PROCESSORS))
    python -m vllm.entrypoints.openai.api_server --model M --logits-processors \
        vllm_debias.processors.calibration:CalibrationLogitsProcessor \
        vllm_debias.processors.contrast:ContrastLogitsProcessor
    debias-lm serve --model M                      # the same, plus sensible defaults

then use any debias-lm config::

    import debias_lm as dl, vllm_debias
    outs = vllm_debias.generate(llm, prompts, dl.DebiasSamplingConfig(counterfactual_swap="gender"), params)
    [o.debias_status.status for o in outs]   # "applied", "recomputed", "lockstep" or "not_applied"

Steering (per-request activation offsets; vectors loaded once per engine)::

    llm = LLM(model=M, **vllm_debias.steer_engine_args({"tox": "tox.safetensors"}))
    outs = vllm_debias.generate(llm, prompts, dl.SteerConfig(vectors="tox", scale=4.0), params)
    debias-lm serve --model M --steer tox=tox.safetensors

Importing this package is light (no torch, no vLLM); the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .processors import LOGITS_PROCESSORS as LOGITS_PROCESSORS

_LAZY = {
    "CalibrationLogitsProcessor": "vllm_debias.processors.calibration",
    "ContrastLogitsProcessor": "vllm_debias.processors.contrast",
    "request_args": "vllm_debias.args",
    "label_args": "debias_lm.methods.calibration.vllm",
    "DebiasArgsError": "vllm_debias.args",
    "generate": "vllm_debias.offline",
    "PairCheckError": "vllm_debias.offline",
    "DebiasStatus": "vllm_debias.offline",
    "statuses": "vllm_debias.offline",
    "shutdown": "vllm_debias.offline",
    "label_priors": "vllm_debias.calibration",
    "calibrate_labels": "vllm_debias.calibration",
    "LockstepClient": "vllm_debias.lockstep",
    "lockstep_decode": "vllm_debias.lockstep",
    "PairJob": "vllm_debias.lockstep",
    "nbls_chat_template": "debias_lm.methods.nbls.vllm",
    "server_command": "vllm_debias.serve",
    "steer_engine_args": "vllm_debias.steer",
    "SteerLogitsProcessor": "vllm_debias.steer.processor",
}

__all__ = sorted([*_LAZY, "LOGITS_PROCESSORS"])
_GONE = {"DebiasLogitsProcessor": "the one processor class of versions before 0.2 is split by behaviour: register "
                                  "vllm_debias.LOGITS_PROCESSORS (or rely on the installed entry points)"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _GONE:
        raise AttributeError(f"vllm_debias.{name} is gone: {_GONE[name]}")
    raise AttributeError(f"module 'vllm_debias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
