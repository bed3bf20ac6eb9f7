"""Built-in methods. Importing this package registers them in :mod:`debias_lm.registry`."""

from ..config import IdentityConfig
from ..registry import _REGISTRY, register_method
from .calibration import CalibrationConfig
from .debias_sampling import DebiasSamplingConfig
from .nbls import NBLSConfig
from .steer import SteerConfig  # registers itself
from .uddia import UDDIAConfig

if "identity" not in _REGISTRY:
    register_method(
        IdentityConfig,
        "debias_lm.methods.identity:IdentityHF",
        kind="none",
        vllm="yes",
        aliases=("none",),
        description="no-op baseline: the model's own generate, bit-identical",
    )
if "nbls" not in _REGISTRY:
    register_method(
        NBLSConfig,
        "debias_lm.methods.nbls:NBLSHF",
        kind="prompt",
        vllm="yes",
        description="ground prompts in U.S. BLS occupation statistics (k=32 instances, system message)",
    )

if "debias_sampling" not in _REGISTRY:
    register_method(
        DebiasSamplingConfig,
        "debias_lm.methods.debias_sampling:DebiasSamplingHF",
        kind="decoding",
        vllm="partial",
        unsupported={"vllm": "VLM image-free branches run in HF only; text counterfactual pairs run per request in vLLM"},
        modalities=("text", "vision"),
        description="contrastive decoding against an image-free (VLM) or counterfactual (LLM) context (VDD)",
    )
if "calibration" not in _REGISTRY:
    register_method(
        CalibrationConfig,
        "debias_lm.methods.calibration:CalibrationHF",
        kind="answer",
        vllm="yes",
        modalities=("text", "vision"),
        description="post-hoc calibration of answer labels against an image-free / content-free prior",
    )

if "uddia" not in _REGISTRY:
    register_method(
        UDDIAConfig,
        "debias_lm.methods.uddia.hf:UDDIAHF",
        kind="decoding",
        vllm="no",
        unsupported={"vllm": "UDDIA takes a gradient step per token; serve its distilled offsets with 'steer'"},
        description="UDDIA: per-token gradient steps on bias-site offsets (detox probe + group debias), HF only",
    )

__all__ = ["CalibrationConfig", "DebiasSamplingConfig", "IdentityConfig", "NBLSConfig", "SteerConfig", "UDDIAConfig"]
