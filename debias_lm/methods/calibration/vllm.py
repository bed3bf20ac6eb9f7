"""The vLLM form of ``calibration``: the prior travels in the request, the processor adds label offsets at step 0.

A request carries ``debias_method="calibration"``, the config's wire fields (``debias_labels``, ``debias_mode``,
``debias_prior="given"``, ``debias_prior_probs``, ``debias_eps``) and the labels' token ids, which depend on the
tokenizer: ``debias_label_ids`` (every variant, label by label) and ``debias_label_sizes`` (how many per label).
Torch-free: it runs in vLLM's frontend at admission and in every worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import UserInputError
from ...labels import label_token_ids
from ...registry import VLLMMapping, VLLMRequest

LABEL_IDS_KEY = "debias_label_ids"
LABEL_SIZES_KEY = "debias_label_sizes"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse(config, keys: Mapping[str, Any], *, vocab_size: int | None = None, sampling_params: Any = None) -> VLLMRequest:
    """The step-0 label offsets of a request (``-log(p_cf + eps)`` per label, on every token variant)."""
    if config.prior != "given":
        raise UserInputError(
            f"calibration in a vLLM request needs the prior carried in the request: debias_prior='given' with "
            f"debias_prior_probs (got prior={config.prior!r}). Compute priors with vllm_debias.label_priors(...) "
            "(image-free / content-free prompts, max_tokens=1) or let vllm_debias.generate(...) do it"
        )
    if config.mode == "identity":
        raise UserInputError(
            "calibration mode 'identity' (p - p_cf) is not a logit offset; inside generation use mode "
            "'diagonal', or calibrate label scores on the client with vllm_debias.calibrate_labels(...)"
        )
    ids = keys.get(LABEL_IDS_KEY)
    sizes = keys.get(LABEL_SIZES_KEY)
    if ids is None or sizes is None:
        raise UserInputError(
            f"calibration needs {LABEL_IDS_KEY} and {LABEL_SIZES_KEY} (the labels' token ids, which depend on "
            "the tokenizer): build the request args with vllm_debias.request_args(config, tokenizer)"
        )
    if (not isinstance(ids, (list, tuple)) or not isinstance(sizes, (list, tuple))
            or not all(_is_int(i) and i >= 0 for i in ids) or not all(_is_int(s) and s >= 1 for s in sizes)):
        raise UserInputError(
            f"{LABEL_IDS_KEY} must be a list of token ids >= 0 and {LABEL_SIZES_KEY} a list of counts >= 1")
    if len(sizes) != len(config.labels) or sum(sizes) != len(ids):
        raise UserInputError(
            f"{LABEL_SIZES_KEY} must have one count per label ({len(config.labels)}) summing to "
            f"len({LABEL_IDS_KEY}) ({len(ids)})"
        )
    if len(set(ids)) != len(ids):
        raise UserInputError(f"{LABEL_IDS_KEY} has repeated token ids (labels must not share tokens)")
    if vocab_size:
        beyond = sorted(i for i in ids if i >= vocab_size)
        if beyond:
            raise UserInputError(f"{LABEL_IDS_KEY} {beyond[:8]} are beyond the model's vocabulary ({vocab_size} tokens); "
                        "build them with this model's tokenizer (vllm_debias.request_args(config, tokenizer))")
    total = math.fsum(float(p) for p in config.prior_probs)
    offsets: list[float] = []
    for p, n in zip(config.prior_probs, sizes):
        # same formula as debias_lm.core.contrast.calibration_offsets (kept torch-free here); the config's
        # validate() guarantees a finite positive total and p + eps > 0
        offsets.extend([-math.log(float(p) / total + config.eps)] * n)
    return VLLMRequest(method=config.method, behaviour="label_bias", label_ids=tuple(int(i) for i in ids), label_offsets=tuple(offsets))


def label_args(tokenizer, labels: Sequence[str]) -> dict[str, list[int]]:
    """``debias_label_ids`` / ``debias_label_sizes`` for ``labels`` with this (HF) tokenizer."""
    groups = label_token_ids(tokenizer, list(labels))
    return {LABEL_IDS_KEY: [i for g in groups for i in g], LABEL_SIZES_KEY: [len(g) for g in groups]}


def request_keys(config, tokenizer) -> dict[str, list[int]]:
    """The label token ids a client adds to a calibration request (they depend on the tokenizer)."""
    if tokenizer is None:
        raise UserInputError("request_args(calibration config) needs the model's tokenizer (label token ids)")
    return label_args(tokenizer, config.labels)


MAPPING = VLLMMapping(
    behaviour="label_bias",
    wire_fields=("labels", "mode", "prior", "prior_probs", "eps"),
    plugin_keys=(LABEL_IDS_KEY, LABEL_SIZES_KEY),
    parse=parse,
    request_keys=request_keys,
)

__all__ = ["LABEL_IDS_KEY", "LABEL_SIZES_KEY", "MAPPING", "label_args", "parse", "request_keys"]
