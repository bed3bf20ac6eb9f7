"""Method registry: name -> config class -> HF implementation -> vLLM support.

The CLI, :func:`debias_lm.wrap`, the vLLM plugin and the evaluation harness look methods up here, so a
new method is one module plus one :func:`register_method` call.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from .config import MethodConfig
from .errors import UserInputError


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: registry name (``config_cls.method``).
        config_cls: the frozen config dataclass.
        hf_impl: ``"module:Class"`` path (imported lazily) or the class itself; the class is constructed
            as ``hf_impl(model, tokenizer_or_processor, config)`` and must provide ``generate(**kwargs)``.
        vllm: ``"yes"``, ``"partial"`` or ``"no"``: what the vLLM plugin supports for this method.
        description: one line for ``debias-lm methods`` / ``--help``.
    """

    name: str
    config_cls: type[MethodConfig]
    hf_impl: Any
    vllm: str = "no"
    description: str = ""

    def load_hf_impl(self) -> type:
        if isinstance(self.hf_impl, str):
            module, _, attr = self.hf_impl.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.hf_impl


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    config_cls: type[MethodConfig], hf_impl: Any, *, vllm: str = "no", description: str = "", overwrite: bool = False
) -> MethodSpec:
    """Register a method under ``config_cls.method``."""
    name = config_cls.method
    if not name:
        raise ValueError(f"{config_cls.__name__} has no `method` name")
    if vllm not in ("yes", "partial", "no"):
        raise ValueError(f"vllm must be 'yes', 'partial' or 'no', got {vllm!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"method {name!r} is already registered; pass overwrite=True to replace it")
    spec = MethodSpec(name=name, config_cls=config_cls, hf_impl=hf_impl, vllm=vllm, description=description)
    _REGISTRY[name] = spec
    return spec


def _ensure_builtins() -> None:
    from . import methods  # noqa: F401  (registers the built-in methods)


def get_method(name: str) -> MethodSpec:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserInputError(
            f"unknown method {name!r}; available methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_methods() -> list[MethodSpec]:
    _ensure_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def config_from_dict(data: Mapping[str, Any]) -> MethodConfig:
    """Build any registered config from its flat dict (``{"method": name, ...}``)."""
    if not isinstance(data, Mapping):
        raise UserInputError(f"a config must be a dict like {{'method': 'nbls', 'k': 32}}, got {type(data).__name__}")
    if "method" not in data:
        raise UserInputError("config dict has no 'method' key; expected e.g. {'method': 'nbls', 'k': 32}")
    if not isinstance(data["method"], str):
        raise UserInputError(f"config 'method' must be a method name (a string), got {data['method']!r}")
    return get_method(data["method"]).config_cls.from_dict(data)


def default_config(name: str) -> MethodConfig:
    """The default config of a method (what ``--method NAME`` uses)."""
    return get_method(name).config_cls()
