"""Built-in methods. Importing this package registers them in :mod:`debias_lm.registry`."""

from ..config import IdentityConfig
from ..registry import _REGISTRY, register_method
from .nbls import NBLSConfig

if "identity" not in _REGISTRY:
    register_method(
        IdentityConfig,
        "debias_lm.methods.identity:IdentityHF",
        vllm="yes",
        description="no-op baseline: the model's own generate, bit-identical",
    )
if "nbls" not in _REGISTRY:
    register_method(
        NBLSConfig,
        "debias_lm.methods.nbls:NBLSHF",
        vllm="yes",
        description="ground prompts in U.S. BLS occupation statistics (k=32 instances, system message)",
    )

__all__ = ["IdentityConfig", "NBLSConfig"]
