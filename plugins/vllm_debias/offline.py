"""``vllm_debias.generate``: run any debias-lm config on an offline ``vllm.LLM``.

* ``identity``: plain ``llm.generate``.
* ``nbls``: the grounding is applied on the client (strings: the grounding text then the prompt; chat
  messages: the grounding as the system message, rendered with the tokenizer's chat template and
  tokenised without special tokens), the same text the HF path builds.
* ``calibration``: the prior is resolved on the client (``given``; or scored with ``max_tokens=1`` requests
  from ``prior_prompts``; or the batch mean) and carried in each request; the logits processor adds the
  label offsets at the first generated token.
* ``debias_sampling``: twin rows. Each prompt becomes a main request and a counterfactual ("aux") request,
  submitted together (main first) in waves that fit the scheduler's token budget, its sequence limit and the KV
  cache, so both prefill in the same step and neither is preempted; the processor contrasts and forces both
  rows to the same token. Afterwards every pair is checked: main and aux token ids are identical exactly when
  every step was contrasted (the processor makes a broken pair's outputs differ). Pairs that drifted apart are
  re-run in batched waves, then (``fallback="lockstep"``) decoded with the exact lockstep driver.
* ``steer``: on an engine built with ``vllm_debias.steer_engine_args``, every request carries the setting (the
  engine's vector name for ``config.vectors``) and a ``cache_salt`` derived from it; the model's layer hooks
  steer it (:mod:`vllm_debias.steer`).

Every returned ``RequestOutput`` carries ``debias_status`` (:class:`DebiasStatus`): ``applied`` (every step
debiased in the first pass), ``recomputed`` (debiased in a re-run), ``lockstep`` (decoded by the lockstep
driver), or ``not_applied`` with the reason. :func:`statuses` lists them.

calibration and debias_sampling need an engine that loads the processor serving their behaviour
(:data:`vllm_debias.LOGITS_PROCESSORS`: the installed ``vllm.logits_processors`` entry points, or passed to
``LLM(..., logits_processors=...)``); ``generate`` checks before any work.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

from .args import PAIR_KEY, ROLE_KEY, request_args

log = logging.getLogger("vllm_debias")

FALLBACKS = ("lockstep", "rerun", "raise", "none")
STATUSES = ("applied", "recomputed", "lockstep", "not_applied")


@dataclasses.dataclass(frozen=True)
class DebiasStatus:
    """What happened to one prompt: ``status`` is one of :data:`STATUSES`; ``reason`` says why (or notes a
    documented change, e.g. ``max_tokens`` cut to the context limit)."""

    status: str
    reason: str = ""

    @property
    def debiased(self) -> bool:
        """True when the method ran at every generated token."""
        return self.status != "not_applied"


class PairCheckError(RuntimeError):
    """A debias-sampling pair drifted apart and ``fallback="raise"`` was asked for."""


def shutdown(llm) -> None:
    """Stop an offline engine's core now (its busy loop, workers and KV cache) instead of at garbage collection, so
    the next engine in the same process starts clean; an engine that is already stopped is left as it is."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - a stopped or half-built engine has nothing left to stop
        pass


def statuses(outputs: Sequence[Any]) -> list[DebiasStatus]:
    """The :class:`DebiasStatus` of each output of :func:`generate` (parallel list)."""
    return [getattr(o, "debias_status", None) or DebiasStatus("not_applied", "not produced by vllm_debias.generate")
            for o in outputs]


def _label(outputs, status: str, reasons: Sequence[str] | None = None) -> list:
    for i, o in enumerate(outputs):
        o.debias_status = DebiasStatus(status, reasons[i] if reasons else "")
    return outputs


def _resolve(config):
    """``(config, its vLLM mapping)``; a method without a vLLM form is refused before its config is built."""
    from collections.abc import Mapping

    from debias_lm.registry import resolve_config

    from .args import method_mapping

    name = config if isinstance(config, str) else (
        config.get("method") if isinstance(config, Mapping) else getattr(config, "method", None))
    if isinstance(name, str):
        method_mapping(name)  # raises the plugin's message (e.g. uddia needs gradients) before anything else
    cfg = resolve_config(config)
    return cfg, method_mapping(cfg.method)[1]


def _is_chat(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and isinstance(p[0], dict)


def _behaviour_served(obj) -> str | None:
    """The behaviour a logits-processor entry (a class or a ``"module:Class"`` string) serves, if it is ours."""
    if isinstance(obj, str):
        module, _, qualname = obj.partition(":")
        if not module.startswith("vllm_debias") or not qualname:
            return None
        try:
            obj = importlib.import_module(module)
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except (ImportError, AttributeError):
            return None
    from .processors.base import DebiasProcessorBase

    return obj.BEHAVIOUR if isinstance(obj, type) and issubclass(obj, DebiasProcessorBase) else None


def _installed_processors() -> list:
    """The classes vLLM loads into every engine (its own loader of the ``vllm.logits_processors`` entry point)."""
    from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

    try:
        return list(_load_logitsprocs_plugins())
    except RuntimeError:  # a broken third-party entry point: the engine would not have started with it
        return []


def _has_processor(llm, behaviour: str) -> bool:
    """The engine loads a processor serving ``behaviour``: passed to ``LLM(logits_processors=...)`` or installed
    under vLLM's ``vllm.logits_processors`` entry point (which vLLM loads into every engine). The V1 runner loads
    none under speculative decoding (entry-point classes are skipped silently)."""
    cfg = llm.llm_engine.vllm_config
    if getattr(cfg, "speculative_config", None) is not None and not getattr(cfg, "use_v2_model_runner", False):
        return False
    procs = getattr(cfg.model_config, "logits_processors", None) or []
    return any(_behaviour_served(p) == behaviour for p in [*procs, *_installed_processors()])


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
    """Generate with a debias-lm ``config`` on an offline ``vllm.LLM``; one ``RequestOutput`` per prompt, each
    with ``.debias_status`` (:class:`DebiasStatus`; :func:`statuses` gives the parallel list).

    Args:
        llm: a ``vllm.LLM`` that loads :data:`vllm_debias.LOGITS_PROCESSORS` (the installed entry points,
            or ``logits_processors=list(vllm_debias.LOGITS_PROCESSORS)``; not needed for ``identity`` / ``nbls``); for ``steer``, with ``**vllm_debias.steer_engine_args({NAME: FILE})``.
        prompts: a string, a list of strings, one chat (list of message dicts) or a list of chats, token-id
            lists or vLLM prompt dicts.
        config: a debias-lm config (``dl.CalibrationConfig(...)``), a method name or a flat dict: the same
            object the HF path (``dl.wrap``) takes.
        sampling_params: one ``SamplingParams`` for all prompts or one per prompt (``n`` must be 1). Sampled
            debias-sampling requests without a ``seed`` draw independently (like plain vLLM requests); with a
            ``seed`` they are reproducible.
        counterfactual: debias_sampling: the counterfactual context of each prompt (default: from the config,
            e.g. ``counterfactual_prefix`` / ``counterfactual_swap``).
        prior_prompts: calibration with ``prior="image_free"`` (one per prompt) or ``"dataset"``.
        chat: wrap plain string prompts as one user message and use the chat template (as HF
            ``generate_text(chat=True)``).
        fallback: debias_sampling pairs that drifted apart: ``"lockstep"`` (re-run them in batched waves, then
            decode the rest with the exact lockstep driver), ``"rerun"`` (re-run only; the rest are returned as
            ``not_applied``), ``"raise"`` (:class:`PairCheckError`), ``"none"`` (returned as ``not_applied``).
        lockstep_k: candidates per step for the lockstep fallback (at most the engine's ``max_logprobs``).

    Prompts whose counterfactual leaves no room in ``max_model_len`` are refused before any work; a
    ``max_tokens`` beyond the room of the longer prompt of a pair (or ``None``) becomes that room for both
    rows (noted in the status reason), so the pair ends together.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is invalid: expected one of {', '.join(FALLBACKS)}")
    cfg, mapping = _resolve(config)
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
    if mapping.behaviour == "activation":  # the engine's own vectors say whether it steers (its processor comes with them)
        return _label(_steer(llm, tok, items, cfg, sps, use_tqdm), "applied")
    if mapping.behaviour not in ("none", "prompt") and not _has_processor(llm, mapping.behaviour):
        raise ValueError(
            f"method {method!r} needs the vllm_debias logits processor serving {mapping.behaviour!r}, which this "
            "engine does not load: install debias-lm (its entry points load the processors into every engine) or "
            "pass LLM(..., logits_processors=list(vllm_debias.LOGITS_PROCESSORS)); vLLM's V1 runner loads none "
            "under speculative decoding"
        )
    if mapping.behaviour == "prompt":  # the method rewrites prompts on the client (e.g. nbls grounding)
        apply = mapping.transform(cfg)
        items = [apply(p) if isinstance(p, str) or _is_chat(p) else _unsupported(p, method) for p in items]
    if mapping.behaviour in ("none", "prompt"):
        return _label(llm.generate([_to_prompt(tok, p) for p in items], sps, use_tqdm=use_tqdm), "applied")
    if mapping.behaviour == "label_bias":
        return _label(_calibration(llm, tok, items, cfg, sps, prior_prompts, use_tqdm), "applied")
    return _debias_sampling(llm, tok, items, cfg, sps, counterfactual, fallback, lockstep_k, use_tqdm)


def _unsupported(p, method):
    raise ValueError(f"{method}: prompts must be strings or chat messages, got {type(p).__name__}")


# -- steer -----------------------------------------------------------------------------------------------
def steer_request(llm, config) -> tuple[dict[str, Any], Any]:
    """(``extra_args``, setting) of a ``SteerConfig`` on this engine: ``config.vectors`` is one of the engine's
    vector names, or a file (or shipped short name) the engine serves under some name."""
    import os

    from debias_lm.errors import UserInputError
    from debias_lm.methods.steer.vllm import SteerSetting, check_setting, resolve_vectors

    from .steer import engine_vectors
    from .steer.vectors import infos

    served = engine_vectors(llm)
    if not served:
        raise ValueError("method 'steer' needs an engine with steering vectors: "
                         "LLM(model=M, **vllm_debias.steer_engine_args({NAME: FILE}))")
    name = config.vectors if config.vectors in served else None
    if name is None:
        path = os.path.abspath(resolve_vectors(config.vectors))
        name = next((n for n, f in sorted(served.items()) if os.path.exists(f) and os.path.samefile(f, path)), None)
        if name is None:
            raise UserInputError(f"SteerConfig.vectors={config.vectors!r} is not served by this engine (it serves "
                                 f"{', '.join(f'{n}={f}' for n, f in sorted(served.items()))}); add it to "
                                 "steer_engine_args")
    setting = SteerSetting.from_config(config, name)
    check_setting(setting, infos(served))
    return setting.wire(), setting


def _salted(tok, p, salt):
    """The vLLM prompt for ``p`` with ``cache_salt`` (combined with a salt the prompt dict already has)."""

    if _is_chat(p):
        p = {"prompt_token_ids": _render_chat(tok, p)}
    elif isinstance(p, str):
        p = {"prompt": p}
    elif isinstance(p, (list, tuple)):
        p = {"prompt_token_ids": list(p)}
    elif isinstance(p, dict):
        p = dict(p)
    else:
        raise ValueError(f"steer: prompts must be strings, chats, token-id lists or prompt dicts, got {type(p).__name__}")
    s = salt(p.get("cache_salt"))
    if s is not None:
        p["cache_salt"] = s
    return p


def _steer(llm, tok, items, cfg, sps, use_tqdm):
    from debias_lm.methods.steer.vllm import cache_salt

    extra, setting = steer_request(llm, cfg)
    prompts = [_salted(tok, p, lambda user: cache_salt(setting, user)) for p in items]
    return llm.generate(prompts, [_with_args(sp, extra) for sp in sps], use_tqdm=use_tqdm)


# -- calibration -------------------------------------------------------------------------------------------
def _calibration(llm, tok, items, cfg, sps, prior_prompts, use_tqdm):
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
        given = cfg.replace(mode="diagonal", prior="given", prior_probs=tuple(float(x) for x in pp))
        reqs.append(_with_args(sp, request_args(given, tok)))
    return llm.generate(prompts, reqs, use_tqdm=use_tqdm)


# -- debias sampling (twin rows) ---------------------------------------------------------------------------
def _prompt_ids(tok, p) -> list[int]:
    if isinstance(p, dict) and "prompt_token_ids" in p:
        return list(p["prompt_token_ids"])
    if isinstance(p, dict):
        p = p.get("prompt", "")
    return list(tok(p)["input_ids"]) if isinstance(p, str) else list(p)


@dataclasses.dataclass
class _Pair:
    """One prompt's main / counterfactual requests and what the engine will do with them."""

    index: int
    main: Any
    aux: Any
    main_len: int
    aux_len: int
    params: Any  # the caller's SamplingParams with max_tokens / min_tokens made explicit for both rows
    note: str = ""

    @property
    def prefill(self) -> int:
        return self.main_len + self.aux_len


def _capacity(llm) -> tuple[int, int, int, int]:
    """(max_num_batched_tokens, max_num_seqs, KV-cache tokens, block size) of the engine."""
    cfg = llm.llm_engine.vllm_config
    sched = cfg.scheduler_config
    budget = int(getattr(sched, "max_num_batched_tokens", 0) or 1 << 30)
    max_seqs = int(getattr(sched, "max_num_seqs", 0) or 1 << 30)
    block = int(getattr(cfg.cache_config, "block_size", 0) or 16)
    blocks = int(getattr(cfg.cache_config, "num_gpu_blocks", 0) or 0)
    # vLLM's block pool keeps one block aside (the null block)
    return budget, max_seqs, ((blocks - 1) * block if blocks > 1 else 1 << 40), block


def _kv_tokens(pair: _Pair, block: int) -> int:
    """KV-cache tokens a pair can occupy at its end (both rows, whole blocks)."""
    n = pair.params.max_tokens
    return sum(math.ceil((length + n) / block) * block for length in (pair.main_len, pair.aux_len))


def _waves(pairs: list[_Pair], budget: int, max_seqs: int, kv: int, block: int) -> list[list[_Pair]]:
    """Batches of pairs whose prompts (main + aux) all prefill in one scheduler step (``budget`` tokens, two
    rows per pair within ``max_seqs``) and whose rows fit the KV cache to their last token (``kv`` tokens), so
    the scheduler never preempts one row of a pair."""
    waves: list[list[_Pair]] = []
    cur: list[_Pair] = []
    used = kv_used = 0
    for p in pairs:
        need = _kv_tokens(p, block)
        if cur and (used + p.prefill > budget or 2 * (len(cur) + 1) > max_seqs or kv_used + need > kv):
            waves.append(cur)
            cur, used, kv_used = [], 0, 0
        cur.append(p)
        used += p.prefill
        kv_used += need
    if cur:
        waves.append(cur)
    return waves


def _plan(llm, tok, items, cf, sps) -> list[_Pair]:
    """Main / aux prompts, lengths and explicit limits of every pair; refuses prompts that cannot fit."""
    limit = int(llm.llm_engine.vllm_config.model_config.max_model_len)
    pairs, too_long = [], []
    for i, (p, c, sp) in enumerate(zip(items, cf, sps)):
        main, aux = _to_prompt(tok, p), _to_prompt(tok, c)
        m, a = len(_prompt_ids(tok, main)), len(_prompt_ids(tok, aux))
        room = limit - max(m, a)
        if room < 1:
            too_long.append(f"prompt {i} ({m} tokens, counterfactual {a} tokens)")
            continue
        note = ""
        n = room if sp.max_tokens is None else int(sp.max_tokens)
        if n > room:
            note = (f"max_tokens cut from {n} to {room}: the {'counterfactual' if a > m else 'main'} prompt has "
                    f"{max(m, a)} tokens and max_model_len is {limit}")
            n = room
        params = sp.clone()
        params.max_tokens = n
        params.min_tokens = min(int(sp.min_tokens or 0), n)
        pairs.append(_Pair(i, main, aux, m, a, params, note))
    if too_long:
        raise ValueError(f"debias_sampling: {', '.join(too_long[:5])} leave no room for a generated token "
                         f"within max_model_len={limit}; shorten them or raise max_model_len (nothing was run)")
    return pairs


def _debias_sampling(llm, tok, items, cfg, sps, counterfactual, fallback, lockstep_k, use_tqdm):
    from debias_lm.methods.debias_sampling.vllm import counterfactual_texts

    if counterfactual is None:
        if not all(isinstance(p, str) for p in items):
            raise ValueError("debias_sampling with chat / token / dict prompts needs counterfactual= (one per prompt)")
        counterfactual = counterfactual_texts(cfg, list(items))
    cf = list(counterfactual)
    if len(cf) != len(items):
        raise ValueError(f"counterfactual has {len(cf)} entries for {len(items)} prompts")
    pairs = _plan(llm, tok, items, cf, sps)
    budget, max_seqs, kv, block = _capacity(llm)
    results: list = [None] * len(items)
    status: dict[int, DebiasStatus] = {}
    alone = [p for p in pairs if p.prefill > budget or _kv_tokens(p, block) > kv]
    if alone:
        log.warning("vllm_debias: %d pair(s) exceed one scheduler step (max_num_batched_tokens=%d) or the KV cache "
                    "(%d tokens); they go straight to the fallback", len(alone), budget, kv)
    todo = [p for p in pairs if p not in alone]
    drifted = list(alone)
    for wave in _waves(todo, budget, max_seqs, kv, block):
        drifted += _run_wave(llm, wave, cfg, results, status, "applied", use_tqdm)
    if drifted and fallback == "raise":
        raise PairCheckError(f"debias-sampling pairs {sorted(p.index for p in drifted)[:10]} drifted apart")
    if drifted and fallback in ("lockstep", "rerun"):
        log.warning("vllm_debias: %d debias-sampling pair(s) drifted apart; re-running them", len(drifted))
        rerun = [p for p in drifted if p not in alone]
        still = [p for p in drifted if p in alone]
        for wave in _waves(rerun, budget, max_seqs, kv // 2, block):  # half the cache: room for the unexpected
            still += _run_wave(llm, wave, cfg, results, status, "recomputed", use_tqdm)
        drifted = still
        if drifted and fallback == "lockstep":
            _lockstep_fallback(llm, tok, drifted, cfg, results, status, lockstep_k)
            drifted = []
    for p in drifted:
        status[p.index] = DebiasStatus("not_applied", "the pair drifted apart (not co-scheduled, or preempted) "
                                                      f"and fallback={fallback!r}")
        if results[p.index] is None:  # never ran (too large for twin rows)
            results[p.index] = llm.generate([p.main], [p.params], use_tqdm=False)[0]
    for p in pairs:
        st = status[p.index]
        if p.note:
            st = DebiasStatus(st.status, "; ".join(x for x in (st.reason, p.note) if x))
        results[p.index].debias_status = st
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


def _run_wave(llm, wave: list[_Pair], cfg, results, status, label: str, use_tqdm) -> list[_Pair]:
    """Submit the pairs of one wave (main first, then aux) together; record results; return drifted pairs."""
    prompts, params = [], []
    for p in wave:
        pair_id = uuid.uuid4().hex
        sp = p.params
        # the processor draws the pair's token itself and forces both rows to it: the rows go to vLLM as greedy
        # (no sampling work there) and the pair's own sampling settings travel in the request
        own = {"debias_temperature": float(sp.temperature), "debias_top_k": int(sp.top_k or 0),
               "debias_top_p": float(sp.top_p), "debias_min_p": float(sp.min_p or 0.0)}
        if sp.seed is not None:
            own["debias_seed"] = int(sp.seed)
        greedy = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=None)
        params.append(_with_args(sp, {**request_args(cfg, pair=pair_id, role="main"), **own}, **greedy))
        params.append(_with_args(sp, {**request_args(cfg, pair=pair_id, role="aux"), **own}, logprobs=None,
                                 prompt_logprobs=None, **greedy))
        prompts += [p.main, p.aux]
    outs = _generate_together(llm, prompts, params, use_tqdm)
    bad = []
    for j, p in enumerate(wave):
        m, a = outs[2 * j], outs[2 * j + 1]
        results[p.index] = m
        # the processor makes a broken pair's outputs differ, so equality means every step was contrasted
        if list(m.outputs[0].token_ids) == list(a.outputs[0].token_ids):
            status[p.index] = DebiasStatus(label)
        else:
            bad.append(p)
    return bad


def _lockstep_fallback(llm, tok, pairs: list[_Pair], cfg, results, status, k) -> None:
    """Decode the pairs with the lockstep driver, all at once, under the engine's own stop rules."""
    from vllm.outputs import CompletionOutput, RequestOutput

    from .lockstep import PairJob, engine_stop_rules, llm_backend, lockstep_decode

    top_fn, score_fn = llm_backend(llm)
    k = min(k, int(llm.llm_engine.vllm_config.model_config.max_logprobs) or k)
    jobs = []
    for p in pairs:
        sp = p.params
        stops, block, eos = engine_stop_rules(llm, sp)
        stop = (sp.stop,) if isinstance(sp.stop, str) else tuple(sp.stop or ())
        jobs.append(PairJob(_prompt_ids(tok, p.main), _prompt_ids(tok, p.aux), alpha=cfg.alpha, beta=cfg.beta,
                            temperature=float(sp.temperature), top_k=max(int(sp.top_k or 0), 0),
                            top_p=float(sp.top_p if sp.top_p is not None else 1.0), min_p=float(sp.min_p or 0.0),
                            seed=sp.seed, max_tokens=sp.max_tokens, min_tokens=sp.min_tokens, stop_token_ids=stops,
                            min_tokens_block=block, stop=stop, eos_token_id=eos,
                            include_stop_str_in_output=bool(sp.include_stop_str_in_output)))
    skip = {p.index: p.params.skip_special_tokens for p in pairs}
    try:
        res = lockstep_decode(top_fn, score_fn, jobs, k=k,
                              detokenize=lambda ids: tok.decode(ids, skip_special_tokens=True))
    except Exception as e:  # noqa: BLE001 - never lose the other prompts' results
        log.error("vllm_debias: lockstep fallback failed: %s", e)
        for p in pairs:
            status[p.index] = DebiasStatus("not_applied", f"the pair drifted apart and the lockstep fallback "
                                                          f"failed: {e}")
            if results[p.index] is None:
                results[p.index] = llm.generate([p.main], [p.params], use_tqdm=False)[0]
        return
    for p, job, r in zip(pairs, jobs, res):
        ids = r.token_ids
        # like vLLM's detokenizer: a stop *token* is in token_ids but not in the text
        shown = ids[:-1] if (r.finish_reason == "stop" and not isinstance(r.stop_reason, str)
                             and not p.params.include_stop_str_in_output) else ids
        text = r.text or tok.decode(shown, skip_special_tokens=skip[p.index])
        comp = CompletionOutput(index=0, text=text, token_ids=ids, cumulative_logprob=None, logprobs=None,
                                finish_reason=r.finish_reason, stop_reason=r.stop_reason)
        old = results[p.index]
        results[p.index] = RequestOutput(request_id=getattr(old, "request_id", f"lockstep-{p.index}"),
                                         prompt=getattr(old, "prompt", None), prompt_token_ids=job.main_ids,
                                         prompt_logprobs=None, outputs=[comp], finished=True)
        status[p.index] = DebiasStatus(r.status, r.reason)
        log.info("vllm_debias: pair %d re-decoded in lockstep (%d truncated steps)", p.index, r.truncated_steps)


__all__ = ["DebiasStatus", "FALLBACKS", "PAIR_KEY", "PairCheckError", "ROLE_KEY", "STATUSES", "generate",
           "statuses"]
