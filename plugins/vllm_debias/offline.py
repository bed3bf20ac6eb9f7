"""``vllm_debias.generate``: run any debias-lm config on an offline ``vllm.LLM``.

* ``identity``: plain ``llm.generate``.
* ``nbls``: the grounding is applied on the client (strings: the grounding text then the prompt; chat
  messages: the grounding as the system message, rendered with the tokenizer's chat template and
  tokenised without special tokens), the same text the HF path builds.
* ``calibration``: the prior is resolved on the client (``given``; or scored with ``max_tokens=1`` requests
  from ``prior_prompts``; or the batch mean) and carried in each request; the logits processor adds the
  label offsets at the first generated token.
* ``debias_sampling``: twin rows. Each prompt becomes a main request and a counterfactual ("aux") request,
  submitted together (main first) in waves that fit the scheduler's token budget so both prefill in the same
  step; the processor contrasts and forces both rows to the same token. Afterwards every pair is checked
  (main and aux token ids must be identical); pairs that drifted apart are re-run alone, then, if still out
  of step, with the exact lockstep driver (``fallback="lockstep"``).

Every request that uses the processor needs ``LLM(..., logits_processors=[DebiasLogitsProcessor])``.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from .args import PAIR_KEY, ROLE_KEY, request_args

log = logging.getLogger("vllm_debias")

FALLBACKS = ("lockstep", "rerun", "raise", "none")


class PairCheckError(RuntimeError):
    """A debias-sampling pair drifted apart and ``fallback="raise"`` was asked for."""


def _resolve(config):
    from collections.abc import Mapping

    from debias_lm.hf.wrap import resolve_config

    from .args import UDDIA_MESSAGE, DebiasArgsError

    name = config if isinstance(config, str) else (
        config.get("method") if isinstance(config, Mapping) else getattr(config, "method", None))
    if name == "uddia":
        raise DebiasArgsError("vllm_debias: " + UDDIA_MESSAGE)
    return resolve_config(config)


def _is_chat(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and isinstance(p[0], dict)


def _has_processor(llm) -> bool:
    procs = getattr(llm.llm_engine.vllm_config.model_config, "logits_processors", None) or []
    names = {p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}" for p in procs}
    return any(n.endswith(":DebiasLogitsProcessor") for n in names)


def _with_args(sp, extra: dict[str, Any], **changes):
    sp = sp.clone() if hasattr(sp, "clone") else copy.deepcopy(sp)
    sp.extra_args = {**(sp.extra_args or {}), **extra}
    for k, v in changes.items():
        setattr(sp, k, v)
    return sp


def _sp_list(sampling_params, n: int) -> list:
    from vllm import SamplingParams

    if sampling_params is None:
        sampling_params = SamplingParams()
    if isinstance(sampling_params, (list, tuple)):
        if len(sampling_params) != n:
            raise ValueError(f"sampling_params has {len(sampling_params)} entries for {n} prompts")
        return list(sampling_params)
    return [sampling_params] * n


def _render_chat(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _to_prompt(tok, p):
    """A vLLM prompt: chat messages are rendered and tokenised exactly like the HF path does."""
    from vllm.inputs import TokensPrompt

    if _is_chat(p):
        return TokensPrompt(prompt_token_ids=_render_chat(tok, p))
    return p


def generate(llm, prompts, config=None, sampling_params=None, *, counterfactual: Sequence[Any] | None = None,
             prior_prompts: Sequence[Any] | None = None, chat: bool = False, fallback: str = "lockstep",
             lockstep_k: int = 20, use_tqdm: bool = False) -> list:
    """Generate with a debias-lm ``config`` on an offline ``vllm.LLM``; one ``RequestOutput`` per prompt.

    Args:
        llm: a ``vllm.LLM`` built with ``logits_processors=[vllm_debias.DebiasLogitsProcessor]`` (not needed
            for ``identity`` / ``nbls``).
        prompts: a string, a list of strings, one chat (list of message dicts) or a list of chats, token-id
            lists or vLLM prompt dicts.
        config: a debias-lm config (``dl.CalibrationConfig(...)``), a method name or a flat dict: the same
            object the HF path (``dl.wrap``) takes.
        sampling_params: one ``SamplingParams`` for all prompts or one per prompt (``n`` must be 1).
        counterfactual: debias_sampling: the counterfactual context of each prompt (default: from the config,
            e.g. ``counterfactual_prefix`` / ``counterfactual_swap``).
        prior_prompts: calibration with ``prior="image_free"`` (one per prompt) or ``"dataset"``.
        chat: wrap plain string prompts as one user message and use the chat template (as HF
            ``generate_text(chat=True)``).
        fallback: what to do with a twin-row pair that drifted apart: ``"lockstep"`` (re-run it alone, then
            with the exact lockstep driver), ``"rerun"`` (re-run it alone only), ``"raise"``, ``"none"``.
        lockstep_k: candidates per step for the lockstep fallback (at most the engine's ``max_logprobs``).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is invalid: expected one of {', '.join(FALLBACKS)}")
    cfg = _resolve(config)
    single = isinstance(prompts, str) or _is_chat(prompts) or isinstance(prompts, dict)
    items = [prompts] if single else list(prompts)
    if not items:
        return []
    if chat:
        items = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in items]
    sps = _sp_list(sampling_params, len(items))
    for sp in sps:
        if getattr(sp, "n", 1) != 1:
            raise ValueError("vllm_debias.generate needs n=1 per prompt (repeat the prompt for more samples)")
    tok = llm.get_tokenizer()
    method = cfg.method
    if method not in ("identity", "nbls") and not _has_processor(llm):
        raise ValueError(
            f"method {method!r} needs the logits processor: LLM(..., logits_processors=["
            "'vllm_debias:DebiasLogitsProcessor'])"
        )
    if method == "identity":
        return llm.generate([_to_prompt(tok, p) for p in items], sps, use_tqdm=use_tqdm)
    if method == "nbls":
        g = cfg.grounding()
        grounded = [g.apply(p) if isinstance(p, str) or _is_chat(p) else _unsupported(p, "nbls") for p in items]
        return llm.generate([_to_prompt(tok, p) for p in grounded], sps, use_tqdm=use_tqdm)
    if method == "calibration":
        return _calibration(llm, tok, items, cfg, sps, prior_prompts, use_tqdm)
    if method == "debias_sampling":
        return _debias_sampling(llm, tok, items, cfg, sps, counterfactual, fallback, lockstep_k, use_tqdm)
    from .args import build_config

    build_config(cfg.to_dict())  # raises the plugin's message (uddia, unsupported)
    raise ValueError(f"method {method!r} is not supported by vllm_debias.generate")


def _unsupported(p, method):
    raise ValueError(f"{method}: prompts must be strings or chat messages, got {type(p).__name__}")


# -- calibration -------------------------------------------------------------------------------------------
def _calibration(llm, tok, items, cfg, sps, prior_prompts, use_tqdm):
    from debias_lm.methods.calibration import CalibrationConfig

    from .calibration import label_priors, resolve_prior

    if cfg.mode == "identity":
        raise ValueError("calibration mode 'identity' is not a logit offset; use vllm_debias.calibrate_labels "
                         "for label scoring, or mode='diagonal' inside generation")
    prompts = [_to_prompt(tok, p) for p in items]
    pri = (None if prior_prompts is None else [_to_prompt(tok, p) for p in prior_prompts])
    prior = resolve_prior(llm, prompts, cfg, prior_prompts=pri)
    if prior is None:  # batch calibration: the mean label distribution over these prompts
        p = label_priors(llm, prompts, cfg.labels, reduce=cfg.reduce)
        prior = [sum(r[j] for r in p) / len(p) for j in range(len(cfg.labels))]
    per_prompt = prior if isinstance(prior[0], (list, tuple)) else [prior] * len(prompts)
    reqs = []
    for pp, sp in zip(per_prompt, sps):
        given = CalibrationConfig(labels=cfg.labels, mode="diagonal", prior="given", reduce=cfg.reduce,
                                  eps=cfg.eps, prior_probs=tuple(float(x) for x in pp), variant=cfg.variant)
        reqs.append(_with_args(sp, request_args(given, tok)))
    return llm.generate(prompts, reqs, use_tqdm=use_tqdm)


# -- debias sampling (twin rows) ---------------------------------------------------------------------------
def _prompt_len(tok, p) -> int:
    if isinstance(p, dict) and "prompt_token_ids" in p:
        return len(p["prompt_token_ids"])
    if isinstance(p, dict):
        p = p.get("prompt", "")
    return len(tok(p)["input_ids"]) if isinstance(p, str) else len(p)


def _waves(lengths: list[int], budget: int, max_seqs: int) -> list[list[int]]:
    """Split pair indices into waves whose prompts (main + aux) all fit one scheduler step."""
    waves, cur, used = [], [], 0
    for i, n in enumerate(lengths):
        if cur and (used + n > budget or 2 * (len(cur) + 1) > max_seqs):
            waves.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        waves.append(cur)
    return waves


def _debias_sampling(llm, tok, items, cfg, sps, counterfactual, fallback, lockstep_k, use_tqdm):
    from debias_lm.methods.debias_sampling import counterfactual_texts

    if counterfactual is None:
        if not all(isinstance(p, str) for p in items):
            raise ValueError("debias_sampling with chat / token / dict prompts needs counterfactual= (one per prompt)")
        counterfactual = counterfactual_texts(cfg, list(items))
    cf = list(counterfactual)
    if len(cf) != len(items):
        raise ValueError(f"counterfactual has {len(cf)} entries for {len(items)} prompts")
    mains = [_to_prompt(tok, p) for p in items]
    auxs = [_to_prompt(tok, p) for p in cf]
    sched = llm.llm_engine.vllm_config.scheduler_config
    budget = int(getattr(sched, "max_num_batched_tokens", 0) or 1 << 30)
    max_seqs = int(getattr(sched, "max_num_seqs", 0) or 1 << 30)
    lengths = [_prompt_len(tok, m) + _prompt_len(tok, a) for m, a in zip(mains, auxs)]
    too_long = [i for i, n in enumerate(lengths) if n > budget]
    if too_long:
        log.warning("vllm_debias: pair(s) %s exceed max_num_batched_tokens=%d (chunked prefill would split them); "
                    "they go straight to the fallback", too_long[:5], budget)
    results: list = [None] * len(items)
    ok_idx = [i for i in range(len(items)) if i not in set(too_long)]
    bad: list[int] = list(too_long)
    for wave in _waves([lengths[i] for i in ok_idx], budget, max_seqs):
        idx = [ok_idx[j] for j in wave]
        bad += _run_pairs(llm, idx, mains, auxs, sps, cfg, results, use_tqdm)
    if bad:
        log.warning("vllm_debias: %d debias-sampling pair(s) drifted apart (not co-scheduled)", len(bad))
        if fallback == "raise":
            raise PairCheckError(f"debias-sampling pairs {sorted(bad)[:10]} drifted apart")
        if fallback == "none":
            return results
        still = []
        for i in bad:  # alone: two requests always fit one step unless the pair exceeds the budget
            if lengths[i] <= budget:
                still += _run_pairs(llm, [i], mains, auxs, sps, cfg, results, use_tqdm)
            else:
                still.append(i)
        if still and fallback == "lockstep":
            _lockstep_fallback(llm, tok, still, mains, auxs, sps, cfg, results, lockstep_k)
        elif still:
            raise PairCheckError(f"debias-sampling pairs {still[:10]} drifted apart again when re-run alone")
    return results


def _generate_together(llm, prompts, params, use_tqdm):
    """``llm.generate`` with every request queued before the first step.

    With the engine in its own process (vLLM's default), ``LLM.generate`` sends requests one by one and the
    engine may start a step after the first arrives, so a main row could sample before its aux row exists.
    vLLM's documented remedy: pause scheduling (``sleep(level=0)``), ``enqueue``, resume
    (``wake_up(tags=["scheduling"])``), ``wait_for_completion``.
    """
    try:
        llm.sleep(level=0, mode="keep")
    except Exception as e:  # noqa: BLE001 - engine without pause support: best effort
        log.warning("vllm_debias: could not pause scheduling (%s); pairs may start apart", e)
        return llm.generate(prompts, params, use_tqdm=use_tqdm)
    try:
        ids = llm.enqueue(prompts, params, use_tqdm=False)
    finally:
        llm.wake_up(tags=["scheduling"])
    outs = {o.request_id: o for o in llm.wait_for_completion(use_tqdm=use_tqdm)}
    # enqueue returns the engine's ids ("<n>-<suffix>"); outputs may carry the user-facing "<n>"
    return [outs[i] if i in outs else outs[i.split("-", 1)[0]] for i in ids]


def _run_pairs(llm, idx, mains, auxs, sps, cfg, results, use_tqdm) -> list[int]:
    """Submit the pairs ``idx`` (main first, then aux) in one call; fill ``results``; return drifted pairs."""
    prompts, params, tags = [], [], []
    for i in idx:
        pair = uuid.uuid4().hex
        base = sps[i]
        main_sp = _with_args(base, request_args(cfg, pair=pair, role="main"))
        aux_sp = _with_args(base, request_args(cfg, pair=pair, role="aux"), logprobs=None, prompt_logprobs=None)
        prompts += [mains[i], auxs[i]]
        params += [main_sp, aux_sp]
        tags.append(i)
    outs = _generate_together(llm, prompts, params, use_tqdm)
    bad = []
    for j, i in enumerate(tags):
        m, a = outs[2 * j], outs[2 * j + 1]
        results[i] = m
        if list(m.outputs[0].token_ids) != list(a.outputs[0].token_ids):
            bad.append(i)
    return bad


def _lockstep_fallback(llm, tok, idx, mains, auxs, sps, cfg, results, k) -> None:
    from vllm.outputs import CompletionOutput, RequestOutput

    from .lockstep import llm_backend, lockstep_decode

    top_fn, score_fn = llm_backend(llm)
    k = min(k, int(llm.llm_engine.vllm_config.model_config.max_logprobs) or k)

    def ids(p):
        if isinstance(p, dict) and "prompt_token_ids" in p:
            return list(p["prompt_token_ids"])
        return list(tok(p if isinstance(p, str) else p.get("prompt", ""))["input_ids"])

    for i in idx:
        sp = sps[i]
        stops = list(sp.all_stop_token_ids or []) if not sp.ignore_eos else []
        if not stops and tok.eos_token_id is not None and not sp.ignore_eos:
            stops = [tok.eos_token_id]
        r = lockstep_decode(top_fn, score_fn, [ids(mains[i])], [ids(auxs[i])], alpha=cfg.alpha, beta=cfg.beta,
                            max_tokens=sp.max_tokens or 16, min_tokens=sp.min_tokens, stop_token_ids=stops, k=k,
                            temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                            seed=sp.seed if sp.seed is not None else cfg.seed)[0]
        text = tok.decode(r.token_ids, skip_special_tokens=sp.skip_special_tokens)
        comp = CompletionOutput(index=0, text=text, token_ids=r.token_ids, cumulative_logprob=None, logprobs=None,
                                finish_reason=r.finish_reason)
        old = results[i]
        pid = ids(mains[i])
        results[i] = RequestOutput(request_id=getattr(old, "request_id", f"lockstep-{i}"),
                                   prompt=getattr(old, "prompt", None), prompt_token_ids=pid,
                                   prompt_logprobs=None, outputs=[comp], finished=True)
        log.info("vllm_debias: pair %d re-decoded in lockstep (%d truncated steps)", i, r.truncated_steps)


__all__ = ["FALLBACKS", "PAIR_KEY", "PairCheckError", "ROLE_KEY", "generate"]
