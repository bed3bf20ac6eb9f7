"""Lockstep debias sampling (Design B): one token per step from two plain scoring requests.

Each step sends the main context (prompt + tokens so far) with ``max_tokens=1, logprobs=K`` and the
counterfactual context with ``max_tokens=1, logprob_token_ids=<main's candidates>``, combines the two with the
same functions as the twin-row processor (:func:`debias_lm.core.contrast.contrast` over the candidates in
token-id order, then :func:`debias_lm.core.sampling.pick_tokens`), appends the token to both contexts, and stops
by the engine's rules. It needs no logits processor, so it works against any vLLM server (prefix caching makes
each step cost about one token of prefill), and it is the fallback of :func:`vllm_debias.generate` for twin-row
pairs that drifted apart.

Same semantics as twin rows: greedy or temperature / min-p / top-k / top-p sampling; a request ``seed`` gives
the same draws as the twin rows (the counter-based draw of :mod:`debias_lm.core.sampling`), an unseeded pair
draws independently; ``min_tokens`` keeps stop tokens out; EOS (unless ``ignore_eos``), ``stop_token_ids``
and the model's generation-config EOS ids stop; ``stop`` strings stop (checked on the decoded text after
``min_tokens``, the text cut before them unless ``include_stop_str_in_output``); ``max_tokens=None`` means up
to the context limit. Offline these rules come from the engine (its generation config and tokenizer); against
a server the client asks the server itself whether a token stops a request (one tiny probe per distinct token).

Exactness: the plausibility cutoff only keeps tokens with ``p_main >= beta * max p_main``; when all of them
are among main's top ``K`` the result is exactly the contrast over the full vocabulary (logprobs differ from
raw logits by one constant per row, which changes neither the choice nor the cutoff). If the K-th candidate
still passes the cutoff the step may be truncated: it is counted in ``LockstepResult.truncated_steps`` and
logged; raise ``K`` (server ``--max-logprobs``; at most 128 because of ``logprob_token_ids``) or ``beta``.
One more difference from twin rows: a counterfactual logprob of −inf is replaced by the lowest finite one
among the candidates (twin rows: among the whole vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("vllm_debias")

MAX_CANDIDATES = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS

TopFn = Callable[[list[list[int]], int], list[dict[int, float]]]
ScoreFn = Callable[[list[list[int]], list[list[int]]], list[dict[int, float]]]


@dataclasses.dataclass
class PairJob:
    """One main / counterfactual context pair and the sampling rules of its request."""

    main_ids: list[int]
    aux_ids: list[int]
    alpha: float = 1.0
    beta: float = 0.1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()  # tokens that end the request (EOS included unless ignore_eos)
    eos_token_id: int | None = None  # the primary EOS (vLLM reports stop_reason None for it)
    min_tokens_block: frozenset[int] = frozenset()  # tokens kept out before min_tokens (vLLM: all stop ids)
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    is_stop: Callable[[int], bool] | None = None  # server: ask the engine (overrides stop_token_ids)


@dataclasses.dataclass
class LockstepResult:
    """Generated token ids of one pair, why it stopped, and whether the contrast ran at every step."""

    token_ids: list[int]
    finish_reason: str
    truncated_steps: int = 0
    text: str = ""
    stop_reason: int | str | None = None  # like vLLM: a stop string, a stop token id, or None (EOS / length)
    fallback_steps: int = 0  # steps whose contrast had no usable score (decoded plainly)
    status: str = "lockstep"  # or "not_applied"
    reason: str = ""


def lockstep_decode(top_fn: TopFn, score_fn: ScoreFn, jobs: Sequence[PairJob], *, k: int = 20,
                    detokenize: Callable[[list[int]], str] | None = None, rng=None) -> list[LockstepResult]:
    """Decode every pair in lockstep; all active pairs are scored together each step.

    ``top_fn(contexts, k)`` returns main's top-k ``{token_id: logprob}`` per context; ``score_fn(contexts,
    token_ids)`` the logprobs of the given tokens per context. ``detokenize`` is needed for ``stop`` strings.
    ``rng``: a ``torch.Generator`` for unseeded sampled pairs (default: a fresh one from OS entropy).
    """
    import torch

    from debias_lm.core.contrast import contrast
    from debias_lm.core.sampling import GREEDY_EPS, pick_tokens, seeded_uniform

    k = max(1, min(int(k), MAX_CANDIDATES))
    if rng is None:
        rng = torch.Generator()
        rng.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    results = [LockstepResult([], "length") for _ in jobs]
    checked = [0] * len(jobs)  # characters of decoded text already searched for stop strings
    active = [i for i, j in enumerate(jobs) if j.max_tokens > 0]
    step = 0
    while active:
        ctx_m = [list(jobs[i].main_ids) + results[i].token_ids for i in active]
        ctx_a = [list(jobs[i].aux_ids) + results[i].token_ids for i in active]
        tops = top_fn(ctx_m, k)
        cands = [sorted(_allowed(jobs[i], lp, len(results[i].token_ids))) for i, lp in zip(active, tops)]
        auxs = score_fn(ctx_a, [c if c else [next(iter(lp))] for c, lp in zip(cands, tops)])
        width = max(1, max(len(c) for c in cands))
        n = len(active)
        lc = torch.full((n, width), -math.inf)
        lu = torch.full((n, width), -math.inf)
        for r, (c, lp, la) in enumerate(zip(cands, tops, auxs)):
            if c:
                lc[r, :len(c)] = torch.tensor([lp[t] for t in c])
                lu[r, :len(c)] = torch.tensor([la.get(t, -math.inf) for t in c])
        js = [jobs[i] for i in active]
        s, fell_back = contrast(lc, lu, torch.tensor([j.alpha for j in js]), torch.tensor([j.beta for j in js]),
                                return_fallback=True)
        temp = torch.tensor([j.temperature for j in js], dtype=torch.float32)
        u = torch.rand(n, generator=rng, dtype=torch.float64)
        seeded = torch.tensor([j.seed is not None for j in js])
        pos = torch.tensor([len(results[i].token_ids) for i in active])
        u = torch.where(seeded, seeded_uniform(torch.tensor([j.seed or 0 for j in js]) & 0x7FFFFFFFFFFFFFFF, pos), u)
        picked = pick_tokens(
            s, temp, u, all_greedy=bool((temp < GREEDY_EPS).all()),
            top_k=torch.tensor([max(j.top_k, 0) for j in js]) if any(j.top_k > 0 for j in js) else None,
            top_k_max=max(max(j.top_k, 0) for j in js),
            top_p=torch.tensor([j.top_p for j in js]) if any(j.top_p < 1.0 for j in js) else None,
            min_p=torch.tensor([j.min_p for j in js]) if any(j.min_p > 0 for j in js) else None).tolist()
        still = []
        for r, i in enumerate(active):
            job, res, c = jobs[i], results[i], cands[r]
            lp = tops[r]
            if not c:  # every candidate is blocked: nothing to contrast (the server would sample outside them)
                res.fallback_steps += 1
                c = sorted(lp)
            vals = [lp[t] for t in c]
            if len(lp) >= k and vals and min(vals) >= math.log(job.beta) + max(vals):
                res.truncated_steps += 1
            if bool(fell_back[r]):
                res.fallback_steps += 1
            t = c[min(int(picked[r]), len(c) - 1)]
            res.token_ids.append(t)
            if _stops(job, res, t, detokenize, checked, i):
                continue
            if len(res.token_ids) >= job.max_tokens:
                res.finish_reason = "length"
                continue
            still.append(i)
        active = still
        step += 1
    for res in results:
        if res.fallback_steps:
            res.status, res.reason = "not_applied", (
                f"{res.fallback_steps} step(s) had no usable contrasted score (non-finite logits); decoded plainly")
        elif res.truncated_steps:
            res.reason = (f"{res.truncated_steps} step(s) had more plausible tokens than the {k} candidates "
                          "(raise k / --max-logprobs or beta for an exact result)")
    n_trunc = sum(r.truncated_steps for r in results)
    if n_trunc:
        log.warning("vllm_debias lockstep: %d step(s) had more plausible tokens than the %d candidates; raise "
                    "k (and --max-logprobs) or beta for an exact result", n_trunc, k)
    return results


def _allowed(job: PairJob, lp: dict[int, float], n_done: int) -> dict[int, float]:
    """Main's candidates minus the stop tokens vLLM masks before ``min_tokens`` (ahead of any processor, so
    the plausibility cutoff is taken over what remains). Against a server the stop tokens are asked of it, but
    only for candidates that would be plausible."""
    c = {t: v for t, v in lp.items() if v > -math.inf}
    if n_done >= job.min_tokens:
        return c
    c = {t: v for t, v in c.items() if t not in job.min_tokens_block}
    if job.is_stop is not None:
        while c:
            cut = math.log(job.beta) + max(c.values())
            stops = [t for t, v in c.items() if v >= cut and job.is_stop(t)]
            if not stops:
                break
            for t in stops:
                del c[t]
    return c


def _stops(job: PairJob, res: LockstepResult, t: int, detokenize, checked: list[int], i: int) -> bool:
    """Apply the engine's stop rules after ``t`` was appended; True when the pair is finished."""
    n = len(res.token_ids)
    stop_now = job.is_stop(t) if job.is_stop is not None else t in job.stop_token_ids
    if stop_now:
        res.finish_reason = "stop"
        res.stop_reason = None if t == job.eos_token_id else t
        return True
    if job.stop and detokenize is not None and n > job.min_tokens:
        text = detokenize(res.token_ids)
        start = max(0, checked[i] - max(len(s) for s in job.stop) + 1)
        hits = [(text.find(s, start), s) for s in job.stop if text.find(s, start) >= 0]
        checked[i] = len(text)
        if hits:
            at, s = min(hits)
            res.finish_reason, res.stop_reason = "stop", s
            res.text = text[:at + len(s)] if job.include_stop_str_in_output else text[:at]
            return True
    return False


# -- offline backend (vllm.LLM) -------------------------------------------------------------------------
def llm_backend(llm) -> tuple[TopFn, ScoreFn]:
    """``top_fn`` / ``score_fn`` over an offline ``vllm.LLM`` (plain requests: no processor involved)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def top_fn(contexts, k):
        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
        outs = llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts], sp, use_tqdm=False)
        return [{int(t): float(v.logprob) for t, v in o.outputs[0].logprobs[0].items()} for o in outs]

    def score_fn(contexts, token_ids):
        sps = [SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(ids), logprobs=len(ids))
               for ids in token_ids]
        outs = llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts], sps, use_tqdm=False)
        return [{int(t): float(v.logprob) for t, v in o.outputs[0].logprobs[0].items()} for o in outs]

    return top_fn, score_fn


def engine_stop_rules(llm, sp) -> tuple[frozenset[int], frozenset[int], int | None]:
    """(tokens that stop, tokens blocked before ``min_tokens``, the primary EOS or None) for ``sp`` as the
    offline engine applies them: the tokenizer's EOS unless ``ignore_eos``, ``stop_token_ids`` and the
    generation-config EOS ids (vLLM's ``SamplingParams.update_from_generation_config``)."""
    params = sp.clone()
    gen = llm.llm_engine.model_config.try_get_generation_config()
    params.update_from_generation_config(gen or {}, llm.get_tokenizer().eos_token_id)
    stops = set(params.stop_token_ids or ())
    eos = params.eos_token_id
    if eos is not None:
        stops.add(int(eos))
    return frozenset(stops), frozenset(int(t) for t in params.all_stop_token_ids), eos


# -- server backend (OpenAI-compatible HTTP) -------------------------------------------------------------
class LockstepClient:
    """Debias sampling against a running vLLM OpenAI-compatible server (no plugin needed on the server).

    >>> client = LockstepClient("http://127.0.0.1:8000", model="M")
    >>> client.generate(["The nurse said that"], DebiasSamplingConfig(counterfactual_swap="gender"), max_tokens=20)

    Paired HTTP requests are not co-scheduled by vLLM, so twin rows cannot work online; this client drives
    both contexts itself, one token per step (two round trips per token; prefix caching keeps each cheap).
    Prompts are tokenised by the server's ``/tokenize`` (``add_special_tokens=True``, like a text prompt).
    Whether a token stops a request (EOS, the model's generation-config EOS ids) is asked of the server once per
    token id, so a stock vLLM server works as well as ``debias-lm serve``.
    """

    def __init__(self, base_url: str, model: str, *, k: int = 20, timeout: float = 60.0,
                 max_workers: int = 8, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.model = model
        self.k = k
        self.timeout = timeout
        self.max_workers = max_workers
        self.api_key = api_key
        self._stop_cache: dict[int, bool] = {}
        self._eos: int | None = None
        self._max_model_len: int | None = None

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise RuntimeError(f"{path} -> HTTP {e.code}: {detail}") from None

    def tokenize(self, text: str) -> list[int]:
        return list(self._post("/tokenize", {"model": self.model, "prompt": text})["tokens"])

    def detokenize(self, ids: list[int]) -> str:
        return self._post("/detokenize", {"model": self.model, "tokens": ids})["prompt"]

    def max_model_len(self) -> int:
        """The served model's context length (``GET /v1/models``)."""
        if self._max_model_len is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            req = urllib.request.Request(self.base_url + "/v1/models", headers=headers)
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                cards = json.loads(r.read())["data"]
            card = next((c for c in cards if c.get("id") == self.model), cards[0])
            self._max_model_len = int(card["max_model_len"])
        return self._max_model_len

    def is_stop(self, token: int) -> bool:
        """Whether the server's own rules end a request at ``token`` (its EOS or generation-config EOS ids):
        a one-token request restricted to ``token``, asked once per id."""
        if token not in self._stop_cache:
            out = self._post("/v1/completions", {"model": self.model, "prompt": [int(token)], "max_tokens": 1,
                                                 "temperature": 0.0, "allowed_token_ids": [int(token)]})
            choice = out["choices"][0]
            self._stop_cache[token] = choice.get("finish_reason") == "stop"
            if self._stop_cache[token] and choice.get("stop_reason") is None:
                self._eos = int(token)  # the server reports EOS with stop_reason None, other stop ids by id
        return self._stop_cache[token]

    def _complete(self, ids: list[int], **kw) -> dict[int, float]:
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                "return_tokens_as_token_ids": True, **kw}
        out = self._post("/v1/completions", body)
        top = out["choices"][0]["logprobs"]["top_logprobs"][0] or {}
        return {int(s.split(":", 1)[1]): float(v) for s, v in top.items()}

    def _map(self, fn, items):
        if len(items) == 1:
            return [fn(items[0])]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items))) as ex:
            return list(ex.map(fn, items))

    def backend(self) -> tuple[TopFn, ScoreFn]:
        def top_fn(contexts, k):
            return self._map(lambda c: self._complete(c, logprobs=k), contexts)

        def score_fn(contexts, token_ids):
            return self._map(lambda ct: self._complete(ct[0], logprobs=1, logprob_token_ids=list(ct[1])),
                             list(zip(contexts, token_ids)))

        return top_fn, score_fn

    def generate(self, prompts: str | list[str], config, *, counterfactual: list[str] | None = None,
                 max_tokens: int | None = 16, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
                 ignore_eos: bool = False, include_stop_str_in_output: bool = False) -> list[LockstepResult]:
        """Debias-sample ``prompts`` with a :class:`debias_lm.DebiasSamplingConfig`; one result per prompt.

        The sampling arguments mean what they mean in a vLLM completions request (``max_tokens`` defaults to 16
        as there; ``None`` = up to the context limit of the longer of the two prompts; a larger value is cut to
        it, noted in ``reason``). ``seed=None`` draws independently per prompt; a seed gives the draws the
        twin-row processor gives a request with that seed. ``counterfactual``: one context per prompt (default:
        built from the config, e.g. gender swap).
        """
        from debias_lm.methods.debias_sampling.vllm import counterfactual_texts

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        config.validate()
        cf = list(counterfactual) if counterfactual is not None else counterfactual_texts(config, prompts)
        if len(cf) != len(prompts):
            raise ValueError("counterfactual must have one text per prompt")
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        main = self._map(self.tokenize, prompts)
        aux = self._map(self.tokenize, cf)
        limit = self.max_model_len()
        jobs, notes = [], []
        user_stops = frozenset(int(t) for t in (stop_token_ids or ()))
        for i, (m, a) in enumerate(zip(main, aux)):
            room = limit - max(len(m), len(a))
            if room < 1:
                raise ValueError(f"prompt {i}: the main ({len(m)} tokens) or counterfactual ({len(a)} tokens) "
                                 f"prompt leaves no room for a token within max_model_len={limit}")
            n = room if max_tokens is None else min(int(max_tokens), room)
            notes.append("" if max_tokens is None or max_tokens <= room else
                         f"max_tokens cut from {max_tokens} to {room}: the longer prompt has "
                         f"{max(len(m), len(a))} tokens and max_model_len is {limit}")

            def is_stop(t, user_stops=user_stops):
                return t in user_stops or (not ignore_eos and self.is_stop(t))

            jobs.append(PairJob(m, a, alpha=config.alpha, beta=config.beta, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, seed=seed, max_tokens=n, min_tokens=min(min_tokens, n),
                                stop_token_ids=user_stops, stop=stop, is_stop=is_stop,
                                include_stop_str_in_output=include_stop_str_in_output))
        top_fn, score_fn = self.backend()
        res = lockstep_decode(top_fn, score_fn, jobs, k=self.k, detokenize=self.detokenize if stop else None)
        for r, note in zip(res, notes):
            if r.finish_reason == "stop" and r.stop_reason == self._eos and self._eos is not None:
                r.stop_reason = None  # as the server reports EOS
            # like vLLM's detokenizer: a stop token is in token_ids but not in the text
            ids = r.token_ids[:-1] if r.finish_reason == "stop" and not isinstance(r.stop_reason, str) else r.token_ids
            if not r.text:
                r.text = self.detokenize(ids) if ids else ""
            if note:
                r.reason = "; ".join(x for x in (r.reason, note) if x)
        return res
