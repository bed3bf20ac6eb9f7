"""Answer-label calibration with vLLM: priors from ``max_tokens=1`` scoring requests, calibrated on the client.

``label_priors`` sends one request per prompt with ``max_tokens=1`` and ``logprob_token_ids`` = every token
variant of every label, and returns the label distribution of the next token (variants summed or maxed, then
renormalised over the labels). ``calibrate_labels`` scores prompts and their priors this way and applies
:func:`debias_lm.core.contrast.calibrate` (diagonal / identity / batch) on the client. For calibration
*inside* generation, carry the prior in the request (``CalibrationConfig(prior="given", prior_probs=...)``,
see :func:`vllm_debias.generate`), which the logits processor turns into label logit offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .lockstep import MAX_CANDIDATES


def _label_groups(tokenizer, labels: Sequence[str]) -> list[list[int]]:
    from debias_lm.labels import label_token_ids

    groups = label_token_ids(tokenizer, list(labels))
    if sum(len(g) for g in groups) > MAX_CANDIDATES:
        raise ValueError(f"the labels have more than {MAX_CANDIDATES} token variants (vLLM's logprob_token_ids cap)")
    return groups


def _reduce(lp: dict[int, float], groups: list[list[int]], reduce: str) -> list[float]:
    vals = []
    for g in groups:
        ps = [math.exp(lp[t]) for t in g if t in lp and lp[t] > -9999.0]
        vals.append((sum(ps) if reduce == "sum" else max(ps, default=0.0)) if ps else 0.0)
    z = sum(vals)
    return [v / z for v in vals] if z > 0 else [1.0 / len(vals)] * len(vals)


def _prompt(p):
    from vllm.inputs import TokensPrompt

    if isinstance(p, list) and p and isinstance(p[0], int):
        return TokensPrompt(prompt_token_ids=p)
    return p


def label_priors(llm, prompts, labels: Sequence[str], *, reduce: str = "sum", tokenizer=None,
                 use_tqdm: bool = False) -> list[list[float]]:
    """Next-token label distribution ``[len(prompts)][len(labels)]`` for each prompt (offline ``vllm.LLM``).

    ``prompts``: strings, token-id lists or vLLM prompt dicts (e.g. image-free or content-free versions of
    the real prompts). One scoring request each: ``max_tokens=1`` + ``logprob_token_ids``.
    """
    from vllm import SamplingParams

    if reduce not in ("sum", "max"):
        raise ValueError(f"reduce={reduce!r} is invalid: expected 'sum' or 'max'")
    tok = tokenizer or llm.get_tokenizer()
    groups = _label_groups(tok, labels)
    ids = [t for g in groups for t in g]
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids, logprobs=len(ids))
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    outs = llm.generate([_prompt(p) for p in prompts], sp, use_tqdm=use_tqdm)
    return [_reduce({int(t): float(v.logprob) for t, v in o.outputs[0].logprobs[0].items()}, groups, reduce)
            for o in outs]


def label_priors_http(base_url: str, model: str, prompts: Sequence[str], labels: Sequence[str], tokenizer, *,
                      reduce: str = "sum", timeout: float = 60.0) -> list[list[float]]:
    """:func:`label_priors` against an OpenAI-compatible vLLM server (``tokenizer``: the model's HF tokenizer)."""
    from .lockstep import LockstepClient

    client = LockstepClient(base_url, model, timeout=timeout)
    groups = _label_groups(tokenizer, labels)
    ids = [t for g in groups for t in g]
    out = []
    for p in prompts:
        body = {"model": model, "prompt": p, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                "logprob_token_ids": ids, "return_tokens_as_token_ids": True}
        r = client._post("/v1/completions", body)
        top = r["choices"][0]["logprobs"]["top_logprobs"][0] or {}
        out.append(_reduce({int(s.split(":", 1)[1]): float(v) for s, v in top.items()}, groups, reduce))
    return out


def calibrate_labels(llm, prompts, config, *, prior_prompts=None, tokenizer=None) -> tuple[list[str], list[list[float]]]:
    """Calibrated label choice per prompt (client-side): ``(labels, calibrated probabilities)``.

    ``config``: a :class:`debias_lm.CalibrationConfig`. ``prior="image_free"`` takes one prior prompt per prompt
    (``prior_prompts``: the image-free / content-free version of each); ``"dataset"`` averages the priors of
    ``prior_prompts``; ``"batch"`` uses the mean over ``prompts``; ``"given"`` uses ``config.prior_probs``.
    """
    import torch

    from debias_lm.core.contrast import calibrate

    config.validate()
    p = label_priors(llm, prompts, config.labels, reduce=config.reduce, tokenizer=tokenizer)
    pt = torch.tensor(p, dtype=torch.float64)
    prior = resolve_prior(llm, prompts, config, prior_prompts=prior_prompts, tokenizer=tokenizer, p=p)
    q = calibrate(pt, None if prior is None else torch.tensor(prior, dtype=torch.float64), config.mode, config.eps)
    picks = [config.labels[int(i)] for i in q.argmax(-1)]
    return picks, q.tolist()


def resolve_prior(llm, prompts, config, *, prior_prompts=None, tokenizer=None, p=None):
    """The prior ``[N][L]`` (per prompt) or ``[L]`` a calibration config asks for; None for ``batch`` mode."""
    n = len(prompts)
    if config.prior == "given":
        z = float(sum(config.prior_probs))
        return [float(x) / z for x in config.prior_probs]
    if config.prior == "batch":
        if config.mode == "batch":
            return None
        p = p if p is not None else label_priors(llm, prompts, config.labels, reduce=config.reduce, tokenizer=tokenizer)
        return [sum(r[j] for r in p) / n for j in range(len(config.labels))]
    if prior_prompts is None:
        raise ValueError(
            f"calibration prior={config.prior!r} in vLLM needs prior_prompts=: the image-free / content-free "
            "version of each prompt (image_free) or a set of content-free prompts (dataset)"
        )
    pri = label_priors(llm, list(prior_prompts), config.labels, reduce=config.reduce, tokenizer=tokenizer)
    if config.prior == "image_free":
        if len(pri) != n:
            raise ValueError(f"prior='image_free' needs one prior prompt per prompt ({n}), got {len(pri)}")
        return pri
    return [sum(r[j] for r in pri) / len(pri) for j in range(len(config.labels))]  # dataset
