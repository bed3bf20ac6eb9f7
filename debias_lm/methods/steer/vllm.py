"""``steer`` in vLLM requests: the wire keys, their validation against an engine's vectors, the prefix-cache salt.

A vLLM engine with steering loads its vectors once, by name (``debias-lm serve --steer NAME=FILE``,
``vllm_debias.steer_engine_args({NAME: FILE})``); a request opts in with flat keys in ``extra_args`` /
``vllm_xargs`` (the vLLM plugin's namespaced convention), one per :class:`SteerConfig` field::

    {"debias_method": "steer", "debias_vectors": NAME, "debias_scale": 4.0, "debias_positions": "all",
     "debias_layers": [10, 12], "debias_mode": "add"}

Missing fields take :class:`SteerConfig`'s defaults and its own ``validate()`` judges them; the name must be one
the engine registered and the layers a subset of that file's layers (:func:`check_setting`).

**Prefix cache.** A steered request's prompt tokens produce other keys and values than the same tokens of a plain
request (with ``positions="generated"`` its generated tokens do), so vLLM must never share KV-cache blocks between
them. vLLM keys blocks by the token ids plus the request's ``cache_salt``; :func:`cache_salt` derives one from the
setting (name, scale, layers, positions, mode and the client's own salt), so equal settings still share blocks and
different ones never do.

This module imports neither torch nor vLLM: it runs in the server's frontend at admission.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ...errors import UserInputError
from ...registry import VLLMMapping, VLLMRequest
from .config import SteerConfig, resolve_vectors  # noqa: F401  (the plugin resolves shipped names through here)

METHOD = "steer"
WIRE_FIELDS = ("vectors", "scale", "layers", "positions", "mode")
SALT_PREFIX = "debias-steer-"


@dataclasses.dataclass(frozen=True)
class VectorInfo:
    """What admission needs to know about a registered vector file (no tensors)."""

    layers: tuple[int, ...]  # residual: the file's layers; uddia_sites: every block 0..num_layers (final norm)
    num_layers: int
    path: str = ""
    site_kind: str = "residual"


@dataclasses.dataclass(frozen=True)
class SteerSetting:
    """One request's steering: the registered vector ``name`` and the :class:`SteerConfig` fields."""

    name: str
    scale: float
    layers: tuple[int, ...] = ()
    positions: str = "all"
    mode: str = "add"

    @classmethod
    def from_config(cls, config: SteerConfig, name: str | None = None) -> SteerSetting:
        """The setting of ``config``, with ``name`` (the engine's name for the file) instead of ``config.vectors``."""
        return cls(name=name or config.vectors, scale=float(config.scale), layers=tuple(config.layers),
                   positions=config.positions, mode=config.mode)

    @property
    def steers(self) -> bool:
        """False when the request is plain after all (scale 0; also in ``ablate`` mode, as in the HF path)."""
        return self.scale != 0.0

    def wire(self) -> dict[str, Any]:
        """The flat ``extra_args`` / ``vllm_xargs`` keys."""
        return {"debias_method": METHOD, "debias_vectors": self.name, "debias_scale": self.scale,
                "debias_layers": list(self.layers), "debias_positions": self.positions, "debias_mode": self.mode}


def setting_from_config(config: SteerConfig) -> SteerSetting:
    """Validate ``config`` (its own ``validate()`` ran at construction) and return its setting."""
    if not isinstance(config, SteerConfig):
        raise UserInputError(f"expected a SteerConfig, got {type(config).__name__}")
    return SteerSetting.from_config(config)


def check_setting(setting: SteerSetting, known: Mapping[str, VectorInfo], where: str = "this engine") -> None:
    """The vector name must be registered, and the layers a subset of its file's layers."""
    info = known.get(setting.name)
    if info is None:
        names = ", ".join(sorted(known)) or "none"
        raise UserInputError(f"unknown steering vectors {setting.name!r}; {where} serves: {names} "
                             "(register files with 'debias-lm serve --steer NAME=FILE')")
    if info.site_kind != "residual":
        if setting.mode == "ablate":
            raise UserInputError(f"debias_mode='ablate' needs residual-stream vectors; {setting.name!r} holds "
                                 f"{info.site_kind!r} offsets (use mode 'add')")
        beyond = sorted(b for b in setting.layers if b > info.num_layers)
        if beyond:
            raise UserInputError(f"debias_layers={list(setting.layers)!r}: blocks {beyond} do not exist; the vectors "
                                 f"{setting.name!r} have blocks 0..{info.num_layers - 1} and the final norm "
                                 f"{info.num_layers}")
        return
    missing = sorted(set(setting.layers) - set(info.layers))
    if missing:
        raise UserInputError(f"debias_layers={list(setting.layers)!r}: layer(s) {missing} are not in the vectors "
                             f"{setting.name!r} (layers {list(info.layers)})")


def cache_salt(setting: SteerSetting | None, user_salt: str | None = None) -> str | None:
    """The ``cache_salt`` of a request: ``user_salt`` for a plain request, else a hash of the setting and it.

    The result is short (45 characters) and uses only ``[a-z0-9-]`` (vLLM refuses ``/``, ``@``, ``\\`` and long
    salts)."""
    if setting is None or not setting.steers:
        return user_salt
    key = json.dumps([setting.name, repr(float(setting.scale)), list(setting.layers), setting.positions,
                      setting.mode, user_salt])
    return SALT_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


def parse(config: SteerConfig, keys: Mapping[str, Any], *, vocab_size: int | None = None,
          sampling_params: Any = None) -> VLLMRequest:
    """The request's steering (the engine's hooks apply it; the vector name is checked against the engine's vectors
    by ``vllm_debias.steer.SteerLogitsProcessor``)."""
    return VLLMRequest(method=METHOD, behaviour="activation", steer=SteerSetting.from_config(config))


MAPPING = VLLMMapping(behaviour="activation", wire_fields=WIRE_FIELDS, parse=parse)
