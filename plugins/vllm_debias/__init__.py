"""vllm_debias: the debias-lm plugin for vLLM (offline ``LLM`` and the OpenAI-compatible server).

Register the logits processor (it is inert for requests that do not opt in)::

    llm = LLM(model=M, logits_processors=["vllm_debias:DebiasLogitsProcessor"])
    python -m vllm.entrypoints.openai.api_server --model M --logits-processors vllm_debias:DebiasLogitsProcessor
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

_LAZY = {
    "DebiasLogitsProcessor": "vllm_debias.processor",
    "request_args": "vllm_debias.args",
    "label_args": "debias_lm.methods.calibration.vllm",
    "DebiasArgsError": "vllm_debias.args",
    "generate": "vllm_debias.offline",
    "PairCheckError": "vllm_debias.offline",
    "DebiasStatus": "vllm_debias.offline",
    "statuses": "vllm_debias.offline",
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

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vllm_debias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
