"""Per-request arguments of the vLLM plugin: parse and validate ``SamplingParams.extra_args`` / ``vllm_xargs``.

Every key the plugin reads starts with ``debias_``, so it cannot collide with another plugin's ``extra_args``:

``debias_method`` (str)
    the opt-in: ``"calibration"``, ``"debias_sampling"`` (or ``"identity"``). Requests without it are never
    touched.
``debias_<field>``
    a field of that method's debias-lm config (``debias_alpha``, ``debias_beta``, ``debias_labels``,
    ``debias_prior``, ``debias_prior_probs``, ``debias_eps``, ...); missing fields take the config's defaults
    and the config's own ``validate()`` judges them. Client-only fields (e.g. ``debias_fused``) are accepted and
    ignored; booleans may arrive as ``1`` / ``0`` (vLLM's request schema turns JSON ``true`` into ``1``).
``debias_pair`` (str | int) and ``debias_role`` (``"main"`` | ``"aux"``)
    debias_sampling: the id shared by a main request and its counterfactual ("aux") request, and which one
    this is.
``debias_label_ids`` (list[int]) and ``debias_label_sizes`` (list[int])
    calibration: the token ids of every label variant, concatenated label by label, and how many belong to
    each label (``label_token_ids(tokenizer, labels)`` flattened).
``debias_vectors``, ``debias_scale``, ``debias_layers``, ``debias_positions``, ``debias_mode``
    steer (``debias_lm.methods.steer.vllm``): only on an engine started with steering vectors; the name must be
    one the engine registered (checked by ``vllm_debias.steer.SteerLogitsProcessor``).

:func:`request_args` builds all of this from a config. The generic key ``method`` of versions before 0.2 is
refused with a pointer to ``debias_method`` when its value names a debias-lm method, and ignored otherwise (it
may be another plugin's). Label ids are checked against the model's vocabulary when it is known: in the worker
always; in the server's frontend when ``VLLM_DEBIAS_VOCAB_SIZE`` is set (``debias-lm serve`` sets it).

What each method reads and checks is declared by the method itself, in ``debias_lm/methods/<name>/vllm.py``
(a :class:`debias_lm.registry.VLLMMapping`, found through the registry): this module knows no method by name.
It imports neither vLLM nor the HF adapter: it runs in vLLM's frontend at admission (``validate_params``) and in
every worker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from debias_lm.errors import UserInputError
from debias_lm.methods.calibration.vllm import LABEL_IDS_KEY, LABEL_SIZES_KEY, label_args
from debias_lm.methods.debias_sampling.vllm import PAIR_KEY, ROLE_KEY, ROLES, SAMPLING_KEYS
from debias_lm.registry import VLLM_PREFIX, VLLMMapping, VLLMRequest, get_method, list_methods, resolve_config

PREFIX = VLLM_PREFIX
METHOD_KEY = "debias_method"
OLD_METHOD_KEY = "method"
VOCAB_ENV = "VLLM_DEBIAS_VOCAB_SIZE"
RequestSpec = VLLMRequest  # the name this module used before the record moved to the registry
PER_REQUEST = ("label_bias", "pair", "activation")  # behaviours a request opts in to
STEER_ENGINE_MESSAGE = (
    "method 'steer' needs an engine started with steering vectors: 'debias-lm serve --model M --steer NAME=FILE' "
    "or LLM(model=M, **vllm_debias.steer_engine_args({NAME: FILE})); this engine has none, or this server's "
    "frontend does not know which steering vectors its engine serves (a server started by hand: set "
    "VLLM_DEBIAS_STEER_VECTORS to the same JSON as hf_overrides['debias_steer_vectors'])"
)

OLD_KEY_MESSAGE = (
    "the opt-in key is 'debias_method' (and config fields are 'debias_<field>', e.g. debias_alpha); the "
    "generic key 'method' is no longer read. Build the arguments with vllm_debias.request_args(config, ...)"
)


class DebiasArgsError(ValueError):
    """Invalid debias arguments in a request (vLLM turns a ValueError from validate_params into HTTP 400)."""


def _fail(msg: str) -> DebiasArgsError:
    return DebiasArgsError("vllm_debias: " + msg)


def _method_names() -> list[str]:
    return [s.name for s in list_methods()]


def plugin_keys() -> tuple[str, ...]:
    """Every ``debias_*`` key besides config fields that some registered method's vLLM form reads."""
    keys: list[str] = []
    for spec in list_methods():
        if spec.vllm_mapping is not None:
            keys += [k for k in spec.load_vllm_mapping().plugin_keys if k not in keys]
    return tuple(keys)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def method_mapping(method: Any) -> tuple[str, VLLMMapping]:
    """``(registry name, vLLM mapping)`` of a method a request or a client names; raises DebiasArgsError with
    what works instead when the method has no per-request vLLM form."""
    if not isinstance(method, str):
        raise _fail(f"'{METHOD_KEY}' must be a method name string, got {method!r}")
    try:
        spec = get_method(method)
    except ValueError:
        runs = [s.name for s in list_methods()
                if s.vllm_mapping is not None and s.load_vllm_mapping().behaviour in PER_REQUEST]
        plain = [s.name for s in list_methods()
                 if s.vllm_mapping is not None and s.load_vllm_mapping().behaviour == "none"]
        raise _fail(
            f"unknown method {method!r}; methods the vLLM plugin runs per request: {', '.join(runs)} "
            f"(and {', '.join(repr(n) for n in plain)}); all registered methods: {', '.join(_method_names())}"
        ) from None
    if spec.vllm_mapping is None:
        raise _fail(f"method {spec.name!r} cannot run in vLLM: {spec.why_unsupported('vllm')}")
    return spec.name, spec.load_vllm_mapping()


def _config_dict(extra: Mapping[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict with ``"method"``, plugin keys) of an opted-in request's extra_args."""
    cls = get_method(method).config_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    cfg: dict[str, Any] = {"method": method}
    plug: dict[str, Any] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not key.startswith(PREFIX) or key == METHOD_KEY:
            continue  # another plugin's key, or vLLM's own (kv_transfer_params, ...)
        if key in plugin_keys():
            plug[key] = value
            continue
        name = key[len(PREFIX):]
        if name not in fields:
            known = ", ".join([PREFIX + n for n in fields] + list(plugin_keys()))
            raise _fail(f"unknown key {key!r} for method {method!r}; known keys: {known}")
        if isinstance(fields[name].default, bool) and _is_int(value) and value in (0, 1):
            value = bool(value)  # vLLM's request schema turns JSON true/false into 1/0
        cfg[name] = value
    return cfg, plug


def build_config(method: Any, extra: Mapping[str, Any]):
    """``(config, plugin keys)`` a request carries; raises DebiasArgsError with the config's own message."""
    name, mapping = method_mapping(method)
    if mapping.behaviour == "prompt":
        raise _fail(mapping.refusal)
    cfg, plug = _config_dict(extra, name)
    try:
        return resolve_config(cfg), plug
    except (ValueError, TypeError) as e:
        raise _fail(str(e)) from None


def _check_old_key(extra: Mapping[str, Any]) -> None:
    old = extra.get(OLD_METHOD_KEY)
    if isinstance(old, str) and old in _method_names():
        raise _fail(f"got 'method': {old!r}: {OLD_KEY_MESSAGE}")


def parse(extra: Mapping[str, Any] | None, sampling_params: Any = None, *,
          vocab_size: int | None = None, steer: bool = False, only: str | None = None) -> VLLMRequest | None:
    """The :class:`~debias_lm.registry.VLLMRequest` of a request, or None when it did not opt in (or opted in to
    plain generation). Raises DebiasArgsError.

    ``steer``: the engine serves steering vectors (else an ``activation`` request is refused); the vector name is
    checked by the caller, which knows the engine's vectors.

    ``only``: a behaviour (``label_bias``, ``pair``, ``activation``): what every processor class checks (the
    method is known, has a per-request vLLM form, steering needs a steering engine) is checked for every request,
    but a request for another behaviour then returns None unjudged: the class serving that behaviour judges its
    fields. Without ``only``, every request is judged in full."""
    if not extra:
        return None
    if not isinstance(extra, Mapping):
        raise _fail("extra_args must be a flat dict")
    if METHOD_KEY not in extra:
        _check_old_key(extra)
        stray = [k for k in extra if k in plugin_keys()]
        if stray:
            raise _fail(f"{', '.join(stray)} given without '{METHOD_KEY}'; build the arguments with "
                        "vllm_debias.request_args(config, ...)")
        return None
    mapping = method_mapping(extra[METHOD_KEY])[1]
    if mapping.behaviour == "prompt":
        raise _fail(mapping.refusal)
    if mapping.behaviour == "activation" and not steer:
        raise _fail(STEER_ENGINE_MESSAGE)
    if only is not None and mapping.behaviour not in (only, "none"):
        return None
    config, plug = build_config(extra[METHOD_KEY], extra)
    if mapping.behaviour == "none":
        if plug:
            raise _fail(f"{', '.join(plug)} given with method {config.method!r}")
        return None
    foreign = [k for k in plug if k not in mapping.plugin_keys]
    if foreign:
        raise _fail(f"{', '.join(foreign)} do not apply to method {config.method!r}")
    try:
        return mapping.parse(config, plug, vocab_size=vocab_size, sampling_params=sampling_params)
    except UserInputError as e:
        raise _fail(str(e)) from None


def behaviour_of(extra: Mapping[str, Any] | None) -> str | None:
    """The behaviour a request opted in to (``label_bias``, ``pair``, ``activation``, ``none``), or None when it
    did not opt in or names no method with a per-request vLLM form: a cheap look-up for the workers, which
    admission already judged (:func:`parse` refuses what this cannot place)."""
    if not extra or not isinstance(extra, Mapping):
        return None
    method = extra.get(METHOD_KEY)
    if not isinstance(method, str):
        return None
    try:
        return method_mapping(method)[1].behaviour
    except DebiasArgsError:
        return None


_SEEN_VOCAB: set[int] = set()  # vocabularies of processors built in this process (in-process engines)


def frontend_vocab_size() -> int | None:
    """The model's vocabulary size where the frontend can know it: ``VLLM_DEBIAS_VOCAB_SIZE``, else the one
    processor built in this same process (an in-process engine)."""
    raw = os.environ.get(VOCAB_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return next(iter(_SEEN_VOCAB)) if len(_SEEN_VOCAB) == 1 else None


def frontend_steers() -> bool:
    """Whether this frontend knows steering vectors (``debias-lm serve --steer`` / ``steer_engine_args``): a
    ``steer`` request is refused at admission otherwise, whichever processor classes the engine loads."""
    from .steer.vectors import frontend_vectors

    return frontend_vectors() is not None


def validate(sampling_params: Any, *, only: str | None = None) -> RequestSpec | None:
    """``validate_params`` body: raise DebiasArgsError (a ValueError) on bad args; cheap for plain requests.

    ``only``: the behaviour of the calling processor class (see :func:`parse`); requests for other behaviours pass
    once the checks every class shares are done."""
    extra = getattr(sampling_params, "extra_args", None)
    if not extra:
        return None
    steer = isinstance(extra, Mapping) and behaviour_of(extra) == "activation" and frontend_steers()
    return parse(extra, sampling_params, vocab_size=frontend_vocab_size(), steer=steer, only=only)


# -- building request args (client side) ----------------------------------------------------------------
def request_args(config, tokenizer=None, *, pair: str | int | None = None, role: str | None = None) -> dict[str, Any]:
    """The flat ``extra_args`` / ``vllm_xargs`` dict for one request with ``config``.

    ``config``: a debias-lm config, a method name, or a flat config dict (``config.to_dict()``). Only the fields
    the processor reads are sent, each as ``debias_<field>``. calibration needs ``tokenizer`` (label token ids);
    debias_sampling needs ``pair`` and ``role``. The result is validated like the server would.
    """
    cfg = resolve_config(config)
    name, mapping = method_mapping(cfg.method)
    if mapping.behaviour == "prompt":
        raise _fail(mapping.refusal)
    data: dict[str, Any] = {METHOD_KEY: name}
    for field in mapping.wire_fields:
        value = getattr(cfg, field)
        data[PREFIX + field] = list(value) if isinstance(value, tuple) else value
    if mapping.request_keys is not None:
        try:
            data.update(mapping.request_keys(cfg, tokenizer))
        except UserInputError as e:
            raise _fail(str(e)) from None
    if pair is not None:
        data[PAIR_KEY] = pair
    if role is not None:
        data[ROLE_KEY] = role
    parse(data, steer=True)
    return data


__all__ = ["METHOD_KEY", "PAIR_KEY", "PREFIX", "ROLE_KEY", "ROLES", "SAMPLING_KEYS", "LABEL_IDS_KEY",
           "LABEL_SIZES_KEY", "DebiasArgsError", "RequestSpec", "build_config", "label_args", "method_mapping",
           "parse", "plugin_keys", "request_args", "validate"]
