"""Method registry: name -> config class -> HF implementation -> vLLM support.

The CLI, :func:`debias_lm.wrap`, the vLLM plugin and the evaluation harness look methods up here, so a
new method is one package plus one :func:`register_method` call (in the package's ``__init__``, as the
built-in ones under ``debias_lm/methods/`` do).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import MethodConfig
from .errors import UserInputError

KINDS = ("none", "prompt", "decoding", "answer", "activation")
SUPPORT = ("yes", "partial", "no")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Everything the project knows about one method; nothing outside the method's package tests its name.

    Attributes:
        name: registry name (``config_cls.method``).
        config_cls: the frozen config dataclass.
        hf_impl: ``"module:Class"`` path (imported lazily) or the class itself; the class is constructed
            as ``hf_impl(model, tokenizer_or_processor, config)`` and must provide ``generate(**kwargs)``.
        kind: where the method acts: ``"none"`` (the identity baseline), ``"prompt"`` (rewrites the input),
            ``"decoding"`` (changes next-token scores while decoding), ``"answer"`` (re-scores fixed answer
            labels) or ``"activation"`` (edits hidden states).
        backends: backend -> ``"yes"`` / ``"partial"`` / ``"no"`` (``"hf"`` and ``"vllm"`` today).
        unsupported: backend -> why it is not (fully) supported, shown to users who ask for it.
        vllm_mapping: ``"module:attr"`` of the method's vLLM request mapping (imported lazily), or ``None``.
        aliases: other names users may type (``"none"`` for the identity method).
        modalities: inputs the method handles: ``("text",)`` or ``("text", "vision")``.
        eval_defaults: config fields the evaluation harness sets when the user did not (e.g. the counterfactual
            context of debias sampling on text suites).
        variants: named presets of the method: variant name -> config fields (e.g. NBLS's controls
            ``nbls_shuffled`` -> ``{"control": "shuffled"}``). A variant name works wherever a method name does
            (``get_method`` gives this spec, ``resolve_config`` the config with those fields set), so an
            evaluation can compare a method with its controls side by side, each row labelled by its name.
        description: one line for ``debias-lm methods`` / ``--help``.
    """

    name: str
    config_cls: type[MethodConfig]
    hf_impl: Any
    kind: str = "decoding"
    backends: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"hf": "yes", "vllm": "no"})
    unsupported: Mapping[str, str] = dataclasses.field(default_factory=dict)
    vllm_mapping: str | None = None
    aliases: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ("text",)
    eval_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    description: str = ""

    @property
    def vllm(self) -> str:
        """``"yes"``, ``"partial"`` or ``"no"``: what the vLLM plugin supports for this method."""
        return self.backends.get("vllm", "no")

    def supports(self, backend: str) -> bool:
        return self.backends.get(backend, "no") != "no"

    def why_unsupported(self, backend: str) -> str:
        return self.unsupported.get(backend, f"method {self.name!r} has no {backend} backend")

    def load_hf_impl(self) -> type:
        return _load(self.hf_impl)

    def load_vllm_mapping(self) -> Any:
        if self.vllm_mapping is None:
            raise UserInputError(f"method {self.name!r} does not run in vLLM: {self.why_unsupported('vllm')}")
        return _load(self.vllm_mapping)


def _load(target: Any) -> Any:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


# -- the vLLM form of a method: what a method package's ``vllm.py`` declares as ``MAPPING`` ----------------------
VLLM_BEHAVIOURS = ("none", "prompt", "label_bias", "pair", "activation")
VLLM_PREFIX = "debias_"  # every request key the vLLM plugin reads starts with it (``debias_method``, ``debias_<field>``)


@dataclasses.dataclass(frozen=True)
class VLLMRequest:
    """What the vLLM plugin's processor does for one opted-in request (parsed once, when it enters the batch).

    ``behaviour`` ``"label_bias"``: add ``label_offsets`` to the logits of ``label_ids`` at the first generated
    token. ``"pair"``: contrast the ``role`` ``"main"`` row with the ``"aux"`` row of the same ``pair`` id,
    ``(1+alpha)·l_main − alpha·l_aux`` under the ``beta`` cutoff, and force both rows to the chosen token;
    ``sampling`` is the pair's own ``(temperature, top_k, top_p, min_p, seed)`` or ``None`` (the request's).
    ``"activation"``: the model's hooks add ``steer`` (the method's per-request setting) to hidden states; the
    logits processor does nothing for it.
    """

    method: str
    behaviour: str
    label_ids: tuple[int, ...] = ()
    label_offsets: tuple[float, ...] = ()
    pair: str = ""
    role: str = ""
    alpha: float = 1.0
    beta: float = 0.1
    sampling: tuple | None = None
    steer: Any = None


@dataclasses.dataclass(frozen=True)
class VLLMMapping:
    """How one method runs with the vLLM plugin (torch-free: it runs in vLLM's frontend and in every worker).

    Attributes:
        behaviour: ``"none"`` (plain generation), ``"prompt"`` (the client transforms prompts; requests cannot opt
            in per request), ``"label_bias"`` (step-0 label offsets), ``"pair"`` (twin-row contrast) or ``"activation"`` (hidden-state offsets applied by
            the model's hooks on an engine started with them).
        wire_fields: config fields a request carries as ``debias_<field>`` (the rest are client-side settings).
        plugin_keys: the other ``debias_*`` keys the method reads (label ids, pair id, ...).
        parse: ``parse(config, keys, *, vocab_size, sampling_params) -> VLLMRequest``: checks the request's
            ``plugin_keys`` (``keys``) against the validated config; raises ``UserInputError``.
        request_keys: ``request_keys(config, tokenizer) -> dict``: the plugin keys a client adds for a config
            (e.g. the labels' token ids), or ``None``.
        transform: behaviour ``"prompt"``: ``transform(config) -> (prompt or chat -> prompt or chat)``.
        refusal: behaviour ``"prompt"``: why a request cannot carry the method, and what to do instead.
    """

    behaviour: str
    wire_fields: tuple[str, ...] = ()
    plugin_keys: tuple[str, ...] = ()
    parse: Callable[..., VLLMRequest] | None = None
    request_keys: Callable[..., dict] | None = None
    transform: Callable[..., Callable] | None = None
    refusal: str = ""

    def __post_init__(self) -> None:
        if self.behaviour not in VLLM_BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {VLLM_BEHAVIOURS}, got {self.behaviour!r}")
        if self.behaviour in ("label_bias", "pair", "activation") and self.parse is None:
            raise ValueError(f"a {self.behaviour!r} mapping needs parse=")
        if self.behaviour == "prompt" and (self.transform is None or not self.refusal):
            raise ValueError("a 'prompt' mapping needs transform= and refusal=")


_REGISTRY: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(
    config_cls: type[MethodConfig],
    hf_impl: Any,
    *,
    kind: str = "decoding",
    vllm: str = "no",
    hf: str = "yes",
    unsupported: Mapping[str, str] | None = None,
    vllm_mapping: str | None = None,
    aliases: tuple[str, ...] = (),
    modalities: tuple[str, ...] = ("text",),
    eval_defaults: Mapping[str, Any] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> MethodSpec:
    """Register a method under ``config_cls.method`` (a method package calls this in its ``__init__``)."""
    name = config_cls.method
    if not name:
        raise ValueError(f"{config_cls.__name__} has no `method` name")
    for label, value in (("vllm", vllm), ("hf", hf)):
        if value not in SUPPORT:
            raise ValueError(f"{label} must be one of {SUPPORT}, got {value!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (name in _REGISTRY or name in _ALIASES) and not overwrite:
        raise ValueError(f"method {name!r} is already registered; pass overwrite=True to replace it")
    for alias in (*aliases, *(variants or {})):
        owner = _ALIASES.get(alias, name if alias not in _REGISTRY else alias)
        if owner != name and not overwrite:
            raise ValueError(f"alias {alias!r} already names method {owner!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for variant, preset in (variants or {}).items():
        unknown = sorted(set(preset) - fields)
        if unknown or "method" in preset:
            raise ValueError(f"variant {variant!r} sets {unknown or ['method']}, not fields of {config_cls.__name__}")
    spec = MethodSpec(
        name=name, config_cls=config_cls, hf_impl=hf_impl, kind=kind, backends={"hf": hf, "vllm": vllm},
        unsupported=dict(unsupported or {}), vllm_mapping=vllm_mapping, aliases=tuple(aliases),
        modalities=tuple(modalities), eval_defaults=dict(eval_defaults or {}),
        variants={v: dict(p) for v, p in (variants or {}).items()}, description=description,
    )
    _REGISTRY[name] = spec
    for alias in (*aliases, *spec.variants):
        _ALIASES[alias] = name
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (and its aliases); for tests and plugins that replace a method."""
    spec = _REGISTRY.pop(name, None)
    for alias in (*spec.aliases, *spec.variants) if spec else ():
        _ALIASES.pop(alias, None)


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    from .methods import load_builtin_methods  # lazy: each method package imports this module to register

    load_builtin_methods()
    _BUILTINS_LOADED = True


def get_method(name: str) -> MethodSpec:
    """The spec of a method by name, alias (``"none"`` -> identity) or variant (``"nbls_shuffled"`` -> nbls)."""
    _ensure_builtins()
    if not isinstance(name, str):
        raise UserInputError(f"a method name must be a string, got {name!r}")
    key = _ALIASES.get(name, name)
    try:
        return _REGISTRY[key]
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
    spec = get_method(data["method"])
    return spec.config_cls.from_dict({**spec.variants.get(data["method"], {}), **data, "method": spec.name})


def default_config(name: str) -> MethodConfig:
    """The default config of a method (what ``--method NAME`` uses)."""
    return get_method(name).config_cls()


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _json_object(config_json: str) -> dict[str, Any]:
    from .utils.files import read_text

    if os.path.isfile(config_json):
        config_json = read_text(config_json, what="--config file")
    try:
        loaded = json.loads(config_json)
    except json.JSONDecodeError as e:
        raise UserInputError(f"--config is neither a JSON file nor JSON text: {e}") from None
    if not isinstance(loaded, dict):
        raise UserInputError("--config must be a JSON object")
    return loaded


def resolve_config(
    value: MethodConfig | str | Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    config_json: str | None = None,
) -> MethodConfig:
    """THE one path from user input to a validated config (CLI, ``wrap``, the harness, the vLLM plugin).

    ``value``: a config (returned as is, re-validated), a method name, alias or variant (``"nbls"``, ``"none"``,
    ``"nbls_shuffled"``: the variant's fields come first), a flat dict with a ``"method"`` key, or ``None``
    (identity). ``config_json`` (a JSON object or a file holding one),
    ``overrides`` (field -> value) and ``sets`` (``"field=value"`` strings, values parsed as JSON when they
    are JSON) are applied on top, in that order. Validation happens once, in the config's ``__post_init__``.
    """
    if isinstance(value, MethodConfig):
        if not (overrides or sets or config_json):
            value.validate()
            return value
        data: dict[str, Any] = value.to_dict()
    elif value is None or isinstance(value, str):
        name = value if value is not None else "identity"
        data = {"method": name, **get_method(name).variants.get(name, {})}
    elif isinstance(value, Mapping):
        data = dict(value)
        if "method" not in data:
            raise UserInputError("config dict has no 'method' key; expected e.g. {'method': 'nbls', 'k': 32}")
    else:
        raise UserInputError(
            "config must be a debias_lm config (e.g. dl.NBLSConfig()), a method name or a dict, "
            f"got {type(value).__name__}"
        )
    if config_json:
        data.update(_json_object(config_json))
    data.update(overrides or {})
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise UserInputError(f"--set {item!r} is invalid: expected FIELD=VALUE, e.g. --set k=16")
        data[key.strip()] = _parse_value(raw)
    try:
        if isinstance(value, (MethodConfig, str)) or value is None:
            # The method is fixed by ``value``: a "method" key in the JSON / overrides / sets naming another
            # method is an error from the config class ("expected 'nbls'"), never a silent switch of method.
            name = value.method if isinstance(value, MethodConfig) else value
            spec = get_method(name if name is not None else "identity")
            if data.get("method") in (spec.name, *spec.aliases, *spec.variants):
                data["method"] = spec.name
            return spec.config_cls.from_dict(data)
        return config_from_dict(data)
    except TypeError as e:
        raise UserInputError(f"invalid config for {data.get('method')!r}: {e}") from None
