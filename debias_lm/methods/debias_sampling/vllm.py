"""The vLLM form of ``debias_sampling``: a main request and its counterfactual ("aux") request contrasted as a pair.

Both requests carry ``debias_method="debias_sampling"``, the contrast strength (``debias_alpha``, ``debias_beta``),
the pair id ``debias_pair`` and their ``debias_role`` (``"main"`` / ``"aux"``); :func:`vllm_debias.generate` also
sends the pair's own sampling settings (``debias_temperature``, ``debias_top_k``, ``debias_top_p``,
``debias_min_p``, ``debias_seed``) and makes both rows greedy in vLLM (the processor forces one-hot rows anyway).
Torch-free: it runs in vLLM's frontend at admission and in every worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...errors import UserInputError
from ...registry import VLLMMapping, VLLMRequest
from .counterfactual import counterfactual_texts

PAIR_KEY = "debias_pair"
ROLE_KEY = "debias_role"
ROLES = ("main", "aux")
SAMPLING_KEYS = ("debias_temperature", "debias_top_k", "debias_top_p", "debias_min_p", "debias_seed")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pair_sampling(plug: dict[str, Any]) -> tuple | None:
    """The pair's own sampling settings (SAMPLING_KEYS), checked; None when the request carries none."""
    if not any(k in plug for k in SAMPLING_KEYS):
        return None

    def number(key, default, lo, hi, integer=False):
        v = plug.get(key, default)
        ok = (_is_int(v) if integer else isinstance(v, (int, float)) and not isinstance(v, bool)) and \
            math.isfinite(v) and lo <= v <= hi
        if not ok:
            raise UserInputError(f"{key}={v!r} is invalid: expected {'an integer' if integer else 'a number'} in [{lo}, {hi}]")
        return v

    seed = plug.get("debias_seed")
    if seed is not None and not _is_int(seed):
        raise UserInputError(f"debias_seed={seed!r} is invalid: expected an integer")
    top_p = number("debias_top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise UserInputError("debias_top_p=0 is invalid: expected a number in (0, 1]")
    return (float(number("debias_temperature", 1.0, 0.0, 1e6)), int(number("debias_top_k", 0, -1, 2**31, True)),
            float(top_p), float(number("debias_min_p", 0.0, 0.0, 1.0)), seed)


def parse(config, keys: Mapping[str, Any], *, vocab_size: int | None = None, sampling_params: Any = None) -> VLLMRequest:
    """The pair (id, role, contrast strength and the pair's own sampling settings) of a request."""
    pair = keys.get(PAIR_KEY)
    if pair is None or (isinstance(pair, str) and not pair) or not isinstance(pair, (str, int)) or isinstance(pair, bool):
        raise UserInputError(
            f"debias_sampling needs a pair id ({PAIR_KEY}: str or int) shared by the main request and its "
            f"counterfactual request, and {ROLE_KEY} 'main' or 'aux'. Offline, vllm_debias.generate(llm, prompts, "
            "config) builds both; with a server use vllm_debias.LockstepClient (paired HTTP requests are not "
            "co-scheduled)"
        )
    role = keys.get(ROLE_KEY)
    if role not in ROLES:
        raise UserInputError(f"{ROLE_KEY} must be 'main' or 'aux', got {role!r}")
    if sampling_params is not None:
        if getattr(sampling_params, "n", 1) != 1:
            raise UserInputError("debias_sampling twin rows need n=1 (one row per request)")
        for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            v = getattr(sampling_params, name, None)
            neutral = 1.0 if name == "repetition_penalty" else 0.0
            if v is not None and v != neutral:
                raise UserInputError(f"debias_sampling twin rows do not support {name} (the pair's rows are forced "
                                     "to the contrasted token; penalties would act on one runner and not the other)")
    return VLLMRequest(method=config.method, behaviour="pair", pair=str(pair), role=role, alpha=float(config.alpha),
                       beta=float(config.beta), sampling=_pair_sampling(keys))


MAPPING = VLLMMapping(
    behaviour="pair",
    wire_fields=("alpha", "beta"),
    plugin_keys=(PAIR_KEY, ROLE_KEY, *SAMPLING_KEYS),
    parse=parse,
)

__all__ = ["MAPPING", "PAIR_KEY", "ROLES", "ROLE_KEY", "SAMPLING_KEYS", "counterfactual_texts", "parse"]
