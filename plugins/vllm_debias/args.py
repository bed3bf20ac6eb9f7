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

This module imports neither torch nor vLLM: it runs in vLLM's frontend at admission (``validate_params``) and
in every worker.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "debias_"
METHOD_KEY = "debias_method"
OLD_METHOD_KEY = "method"
PAIR_KEY = "debias_pair"
ROLE_KEY = "debias_role"
LABEL_IDS_KEY = "debias_label_ids"
LABEL_SIZES_KEY = "debias_label_sizes"
# a pair's own sampling settings: vllm_debias.generate sends them and makes the rows greedy in vLLM (the
# processor forces one-hot rows anyway), so vLLM spends no sampling work on the two rows of a pair
SAMPLING_KEYS = ("debias_temperature", "debias_top_k", "debias_top_p", "debias_min_p", "debias_seed")
PLUGIN_KEYS = (PAIR_KEY, ROLE_KEY, LABEL_IDS_KEY, LABEL_SIZES_KEY) + SAMPLING_KEYS
VOCAB_ENV = "VLLM_DEBIAS_VOCAB_SIZE"
ROLES = ("main", "aux")
# methods the processor acts on; the others are rejected with a pointer to what works instead
LOGIT_METHODS = ("calibration", "debias_sampling")
STEER_METHOD = "steer"
# the config fields the processor reads; request_args sends only these (the rest are client-side settings)
WIRE_FIELDS = {
    "calibration": ("labels", "mode", "prior", "prior_probs", "eps"),
    "debias_sampling": ("alpha", "beta"),
    "identity": (),
    STEER_METHOD: ("vectors", "scale", "layers", "positions", "mode"),
}

UDDIA_MESSAGE = (
    "method 'uddia' cannot run in vLLM: it needs gradients (a backward pass through the model at every "
    "decoding step), and vLLM logits processors only see logits. Use the HF path instead: "
    "debias_lm.wrap(model, tokenizer, debias_lm.UDDIAConfig(...)).generate(...)"
)
NBLS_MESSAGE = (
    "method 'nbls' is a prompt transform, not a logits adjustment: ground the prompt on the client "
    "(vllm_debias.generate(llm, prompts, NBLSConfig()) or NBLSConfig().grounding().apply(prompt_or_messages)) "
    "or serve with 'debias-lm serve --model M --nbls' (a grounding chat template), and send the request "
    "without vllm_xargs"
)
STEER_ENGINE_MESSAGE = (
    "method 'steer' needs an engine started with steering vectors: 'debias-lm serve --model M --steer NAME=FILE' "
    "or LLM(model=M, **vllm_debias.steer_engine_args({NAME: FILE})); this engine has none"
)
OLD_KEY_MESSAGE = (
    "the opt-in key is 'debias_method' (and config fields are 'debias_<field>', e.g. debias_alpha); the "
    "generic key 'method' is no longer read. Build the arguments with vllm_debias.request_args(config, ...)"
)


class DebiasArgsError(ValueError):
    """Invalid debias arguments in a request (vLLM turns a ValueError from validate_params into HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """What the processor does for one request (parsed once, when the request enters the batch)."""

    method: str
    # calibration: label token ids (flat) and the additive offset of each id
    label_ids: tuple[int, ...] = ()
    label_offsets: tuple[float, ...] = ()
    # debias_sampling
    pair: str = ""
    role: str = ""
    alpha: float = 1.0
    beta: float = 0.1
    # (temperature, top_k, top_p, min_p, seed) carried in the request; None: the request's SamplingParams
    sampling: tuple | None = None
    # steer: the request's debias_lm.methods.steer.vllm.SteerSetting (the model applies it, not the processor)
    steer: Any = None


def _fail(msg: str) -> DebiasArgsError:
    return DebiasArgsError("vllm_debias: " + msg)


def _method_names() -> list[str]:
    from debias_lm.registry import list_methods

    return [s.name for s in list_methods()]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _config_dict(extra: Mapping[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict with ``"method"``, plugin keys) of an opted-in request's extra_args."""
    from debias_lm.registry import get_method

    cls = get_method(method).config_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    cfg: dict[str, Any] = {"method": method}
    plug: dict[str, Any] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not key.startswith(PREFIX) or key == METHOD_KEY:
            continue  # another plugin's key, or vLLM's own (kv_transfer_params, ...)
        if key in PLUGIN_KEYS:
            plug[key] = value
            continue
        name = key[len(PREFIX):]
        if name not in fields:
            known = ", ".join([PREFIX + n for n in fields] + list(PLUGIN_KEYS))
            raise _fail(f"unknown key {key!r} for method {method!r}; known keys: {known}")
        if isinstance(fields[name].default, bool) and _is_int(value) and value in (0, 1):
            value = bool(value)  # vLLM's request schema turns JSON true/false into 1/0
        cfg[name] = value
    return cfg, plug


def build_config(method: Any, extra: Mapping[str, Any]):
    """The debias-lm config a request carries; raises DebiasArgsError with the config's own message."""
    if not isinstance(method, str):
        raise _fail(f"'{METHOD_KEY}' must be a method name string, got {method!r}")
    if method == "uddia":
        raise _fail(UDDIA_MESSAGE)
    from debias_lm.registry import get_method

    try:
        spec = get_method(method)
    except ValueError:
        raise _fail(
            f"unknown method {method!r}; methods the vLLM plugin runs per request: {', '.join(LOGIT_METHODS)} "
            f"(and 'identity'); all registered methods: {', '.join(_method_names())}"
        ) from None
    if method == "nbls":
        raise _fail(NBLS_MESSAGE)
    if method not in LOGIT_METHODS and method not in ("identity", STEER_METHOD):
        why = "it needs gradients or model internals" if spec.vllm == "no" else "it has no per-request vLLM form"
        raise _fail(f"method {method!r} cannot run inside vLLM ({why}); use the HF path debias_lm.wrap(...)")
    cfg, plug = _config_dict(extra, method)
    try:
        return spec.config_cls.from_dict(cfg), plug
    except (ValueError, TypeError) as e:
        raise _fail(str(e)) from None


def _check_old_key(extra: Mapping[str, Any]) -> None:
    old = extra.get(OLD_METHOD_KEY)
    if isinstance(old, str) and old in _method_names():
        raise _fail(f"got 'method': {old!r}: {OLD_KEY_MESSAGE}")


def parse(extra: Mapping[str, Any] | None, sampling_params: Any = None, *,
          vocab_size: int | None = None, steer: bool = False) -> RequestSpec | None:
    """The :class:`RequestSpec` of a request, or None when it did not opt in. Raises DebiasArgsError.

    ``steer``: the engine serves steering vectors (else a ``steer`` request is refused); the vector name is
    checked by the caller, which knows the engine's vectors."""
    if not extra:
        return None
    if not isinstance(extra, Mapping):
        raise _fail("extra_args must be a flat dict")
    if METHOD_KEY not in extra:
        _check_old_key(extra)
        stray = [k for k in extra if k in PLUGIN_KEYS]
        if stray:
            raise _fail(f"{', '.join(stray)} given without '{METHOD_KEY}'; build the arguments with "
                        "vllm_debias.request_args(config, ...)")
        return None
    config, plug = build_config(extra[METHOD_KEY], extra)
    method = config.method
    if method == "identity":
        if plug:
            raise _fail(f"{', '.join(plug)} given with method 'identity'")
        return None
    if method == "calibration":
        return _parse_calibration(config, plug, vocab_size)
    if method == STEER_METHOD:
        return _parse_steer(config, plug, steer)
    return _parse_pair(config, plug, sampling_params)


def _parse_steer(config, plug: dict[str, Any], steer: bool) -> RequestSpec:
    if not steer:
        raise _fail(STEER_ENGINE_MESSAGE)
    if plug:
        raise _fail(f"{', '.join(plug)} do not apply to method 'steer'")
    from debias_lm.methods.steer.vllm import SteerSetting

    return RequestSpec(method=STEER_METHOD, steer=SteerSetting.from_config(config))


def _parse_calibration(config, plug: dict[str, Any], vocab_size: int | None) -> RequestSpec:
    extra_keys = [k for k in plug if k not in (LABEL_IDS_KEY, LABEL_SIZES_KEY)]
    if extra_keys:
        raise _fail(f"{', '.join(extra_keys)} do not apply to method 'calibration'")
    if config.prior != "given":
        raise _fail(
            f"calibration in a vLLM request needs the prior carried in the request: debias_prior='given' with "
            f"debias_prior_probs (got prior={config.prior!r}). Compute priors with vllm_debias.label_priors(...) "
            "(image-free / content-free prompts, max_tokens=1) or let vllm_debias.generate(...) do it"
        )
    if config.mode == "identity":
        raise _fail(
            "calibration mode 'identity' (p - p_cf) is not a logit offset; inside generation use mode "
            "'diagonal', or calibrate label scores on the client with vllm_debias.calibrate_labels(...)"
        )
    ids = plug.get(LABEL_IDS_KEY)
    sizes = plug.get(LABEL_SIZES_KEY)
    if ids is None or sizes is None:
        raise _fail(
            f"calibration needs {LABEL_IDS_KEY} and {LABEL_SIZES_KEY} (the labels' token ids, which depend on "
            "the tokenizer): build the request args with vllm_debias.request_args(config, tokenizer)"
        )
    if (not isinstance(ids, (list, tuple)) or not isinstance(sizes, (list, tuple))
            or not all(_is_int(i) and i >= 0 for i in ids) or not all(_is_int(s) and s >= 1 for s in sizes)):
        raise _fail(f"{LABEL_IDS_KEY} must be a list of token ids >= 0 and {LABEL_SIZES_KEY} a list of counts >= 1")
    if len(sizes) != len(config.labels) or sum(sizes) != len(ids):
        raise _fail(
            f"{LABEL_SIZES_KEY} must have one count per label ({len(config.labels)}) summing to "
            f"len({LABEL_IDS_KEY}) ({len(ids)})"
        )
    if len(set(ids)) != len(ids):
        raise _fail(f"{LABEL_IDS_KEY} has repeated token ids (labels must not share tokens)")
    if vocab_size:
        beyond = sorted(i for i in ids if i >= vocab_size)
        if beyond:
            raise _fail(f"{LABEL_IDS_KEY} {beyond[:8]} are beyond the model's vocabulary ({vocab_size} tokens); "
                        "build them with this model's tokenizer (vllm_debias.request_args(config, tokenizer))")
    total = math.fsum(float(p) for p in config.prior_probs)
    offsets: list[float] = []
    for p, n in zip(config.prior_probs, sizes):
        # same formula as debias_lm.core.contrast.calibration_offsets (kept torch-free here); the config's
        # validate() guarantees a finite positive total and p + eps > 0
        offsets.extend([-math.log(float(p) / total + config.eps)] * n)
    return RequestSpec(method="calibration", label_ids=tuple(int(i) for i in ids), label_offsets=tuple(offsets))


def _pair_sampling(plug: dict[str, Any]) -> tuple | None:
    """The pair's own sampling settings (SAMPLING_KEYS), checked; None when the request carries none."""
    if not any(k in plug for k in SAMPLING_KEYS):
        return None

    def number(key, default, lo, hi, integer=False):
        v = plug.get(key, default)
        ok = (_is_int(v) if integer else isinstance(v, (int, float)) and not isinstance(v, bool)) and \
            math.isfinite(v) and lo <= v <= hi
        if not ok:
            raise _fail(f"{key}={v!r} is invalid: expected {'an integer' if integer else 'a number'} in [{lo}, {hi}]")
        return v

    seed = plug.get("debias_seed")
    if seed is not None and not _is_int(seed):
        raise _fail(f"debias_seed={seed!r} is invalid: expected an integer")
    top_p = number("debias_top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise _fail("debias_top_p=0 is invalid: expected a number in (0, 1]")
    return (float(number("debias_temperature", 1.0, 0.0, 1e6)), int(number("debias_top_k", 0, -1, 2**31, True)),
            float(top_p), float(number("debias_min_p", 0.0, 0.0, 1.0)), seed)


def _parse_pair(config, plug: dict[str, Any], sampling_params: Any) -> RequestSpec:
    extra_keys = [k for k in plug if k not in (PAIR_KEY, ROLE_KEY) + SAMPLING_KEYS]
    if extra_keys:
        raise _fail(f"{', '.join(extra_keys)} do not apply to method 'debias_sampling'")
    pair = plug.get(PAIR_KEY)
    if pair is None or (isinstance(pair, str) and not pair) or not isinstance(pair, (str, int)) or isinstance(pair, bool):
        raise _fail(
            f"debias_sampling needs a pair id ({PAIR_KEY}: str or int) shared by the main request and its "
            f"counterfactual request, and {ROLE_KEY} 'main' or 'aux'. Offline, vllm_debias.generate(llm, prompts, "
            "config) builds both; with a server use vllm_debias.LockstepClient (paired HTTP requests are not "
            "co-scheduled)"
        )
    role = plug.get(ROLE_KEY)
    if role not in ROLES:
        raise _fail(f"{ROLE_KEY} must be 'main' or 'aux', got {role!r}")
    if sampling_params is not None:
        if getattr(sampling_params, "n", 1) != 1:
            raise _fail("debias_sampling twin rows need n=1 (one row per request)")
        for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            v = getattr(sampling_params, name, None)
            neutral = 1.0 if name == "repetition_penalty" else 0.0
            if v is not None and v != neutral:
                raise _fail(f"debias_sampling twin rows do not support {name} (the pair's rows are forced to "
                            "the contrasted token; penalties would act on one runner and not the other)")
    return RequestSpec(method="debias_sampling", pair=str(pair), role=role, alpha=float(config.alpha),
                       beta=float(config.beta), sampling=_pair_sampling(plug))


_SEEN_VOCAB: set[int] = set()  # vocabularies of processors built in this process (in-process engines)


def frontend_vocab_size() -> int | None:
    """The model's vocabulary size where the frontend can know it: ``VLLM_DEBIAS_VOCAB_SIZE``, else the one
    processor built in this same process (an in-process engine)."""
    raw = os.environ.get(VOCAB_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return next(iter(_SEEN_VOCAB)) if len(_SEEN_VOCAB) == 1 else None


def validate(sampling_params: Any, *, steer: bool = False) -> RequestSpec | None:
    """``validate_params`` body: raise DebiasArgsError (a ValueError) on bad args; cheap for plain requests."""
    extra = getattr(sampling_params, "extra_args", None)
    if not extra:
        return None
    return parse(extra, sampling_params, vocab_size=frontend_vocab_size(), steer=steer)


# -- building request args (client side) ----------------------------------------------------------------
def label_args(tokenizer, labels: Sequence[str]) -> dict[str, list[int]]:
    """``debias_label_ids`` / ``debias_label_sizes`` for ``labels`` with this (HF) tokenizer."""
    from debias_lm.labels import label_token_ids

    groups = label_token_ids(tokenizer, list(labels))
    return {LABEL_IDS_KEY: [i for g in groups for i in g], LABEL_SIZES_KEY: [len(g) for g in groups]}


def request_args(config, tokenizer=None, *, pair: str | int | None = None, role: str | None = None) -> dict[str, Any]:
    """The flat ``extra_args`` / ``vllm_xargs`` dict for one request with ``config``.

    ``config``: a debias-lm config, a method name, or a flat config dict (``config.to_dict()``). Only the fields
    the processor reads are sent, each as ``debias_<field>``. calibration needs ``tokenizer`` (label token ids);
    debias_sampling needs ``pair`` and ``role``. The result is validated like the server would.
    """
    from debias_lm.hf.wrap import resolve_config

    cfg = resolve_config(config)
    method = cfg.method
    build_config(method, {})  # refuses uddia / nbls / HF-only methods with the plugin's message
    data: dict[str, Any] = {METHOD_KEY: method}
    for name in WIRE_FIELDS.get(method, ()):
        value = getattr(cfg, name)
        data[PREFIX + name] = list(value) if isinstance(value, tuple) else value
    if method == "calibration":
        if tokenizer is None:
            raise _fail("request_args(calibration config) needs the model's tokenizer (label token ids)")
        data.update(label_args(tokenizer, cfg.labels))
    if pair is not None:
        data[PAIR_KEY] = pair
    if role is not None:
        data[ROLE_KEY] = role
    parse(data, steer=True)
    return data
