"""Lockstep debias sampling (Design B): one token per step from two plain scoring requests.

Each step sends the main context (prompt + tokens so far) with ``max_tokens=1, logprobs=K`` and the
counterfactual context with ``max_tokens=1, logprob_token_ids=<main's candidates>``, combines the two with
the debias-lm contrast and plausibility cutoff, picks the token and appends it to both contexts. It needs no
logits processor, so it works against any vLLM server (prefix caching makes each step cost about one token of
prefill), and it is the fallback of :func:`vllm_debias.generate` for twin-row pairs that drifted apart.

Exactness: the plausibility cutoff only keeps tokens with ``p_main >= beta * max p_main``; when all of them
are among main's top ``K`` the result is exactly the contrast over the full vocabulary (logprobs differ from
raw logits by one constant per row, which changes neither the argmax nor the cutoff). If the K-th candidate
still passes the cutoff the step may be truncated: it is counted in ``LockstepResult.truncated_steps`` and
logged; raise ``K`` (server ``--max-logprobs``; at most 128 because of ``logprob_token_ids``) or ``beta``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("vllm_debias")

MAX_CANDIDATES = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS

TopFn = Callable[[list[list[int]], int], list[dict[int, float]]]
ScoreFn = Callable[[list[list[int]], list[list[int]]], list[dict[int, float]]]


@dataclasses.dataclass
class LockstepResult:
    """Generated token ids of one prompt, why it stopped, and how many steps may have been truncated."""

    token_ids: list[int]
    finish_reason: str
    truncated_steps: int = 0
    text: str = ""


def choose_token(main_lp: dict[int, float], aux_lp: dict[int, float], alpha: float, beta: float, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng: random.Random | None = None,
                 banned: Sequence[int] = ()) -> int:
    """The contrasted choice among main's candidates (``debias_lm.core.contrast`` restricted to them).

    Ties go to the smallest token id, like ``torch.argmax`` over the vocabulary.
    """
    cand = {t: lp for t, lp in main_lp.items() if t not in banned and lp > -9999.0}
    if not cand:
        cand = {t: lp for t, lp in main_lp.items() if t not in banned} or dict(main_lp)
    top = max(cand.values())
    cut = math.log(beta) + top
    kept = {t: lp for t, lp in cand.items() if lp >= cut}
    finite_aux = [v for v in aux_lp.values() if v > -9999.0]
    floor = min(finite_aux) if finite_aux else 0.0
    scores = {t: (1.0 + alpha) * lp - alpha * (aux_lp[t] if aux_lp.get(t, -1e9) > -9999.0 else floor) if alpha
              else lp for t, lp in kept.items()}
    if temperature < 1e-5 or rng is None:
        best = max(scores.values())
        return min(t for t, s in scores.items() if s == best)
    items = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    if top_k and top_k > 0:
        items = items[:top_k]
    m = items[0][1]
    w = [math.exp((s - m) / temperature) for _, s in items]
    z = sum(w)
    probs = [x / z for x in w]
    if top_p is not None and top_p < 1.0:
        keep, acc = [], 0.0
        for (t, _), p in zip(items, probs):
            keep.append((t, p))
            acc += p
            if acc >= top_p:
                break
        items = [(t, 0.0) for t, _ in keep]
        probs = [p for _, p in keep]
    return rng.choices([t for t, _ in items], weights=probs, k=1)[0]


def lockstep_decode(top_fn: TopFn, score_fn: ScoreFn, main_ids: list[list[int]], aux_ids: list[list[int]], *,
                    alpha: float = 1.0, beta: float = 0.1, max_tokens: int = 16, min_tokens: int = 0,
                    stop_token_ids: Sequence[int] = (), k: int = 20, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[LockstepResult]:
    """Decode every (main, aux) context pair in lockstep; all active pairs are scored together each step.

    ``top_fn(contexts, k)`` returns main's top-k ``{token_id: logprob}`` per context; ``score_fn(contexts,
    token_ids)`` returns the logprobs of the given tokens per context.
    """
    if len(main_ids) != len(aux_ids):
        raise ValueError("main_ids and aux_ids must have one context each per prompt")
    k = max(1, min(int(k), MAX_CANDIDATES))
    stops = set(int(t) for t in stop_token_ids)
    results = [LockstepResult([], "length") for _ in main_ids]
    rngs = [random.Random(seed + i) for i in range(len(main_ids))]
    active = list(range(len(main_ids)))
    for step in range(max_tokens):
        if not active:
            break
        ctx_m = [list(main_ids[i]) + results[i].token_ids for i in active]
        ctx_a = [list(aux_ids[i]) + results[i].token_ids for i in active]
        tops = top_fn(ctx_m, k)
        banned = tuple(stops) if step < min_tokens else ()
        cands = []
        for lp in tops:
            c = {t: v for t, v in lp.items() if t not in banned}
            cands.append(sorted(c, key=lambda t: -c[t])[:MAX_CANDIDATES])
        auxs = score_fn(ctx_a, cands)
        still = []
        for j, i in enumerate(active):
            lp = tops[j]
            c = {t: lp[t] for t in cands[j]}
            if len(lp) >= k and c and min(c.values()) >= math.log(beta) + max(c.values()):
                results[i].truncated_steps += 1
            t = choose_token(c, auxs[j], alpha, beta, temperature=temperature, top_k=top_k, top_p=top_p,
                             rng=rngs[i] if temperature >= 1e-5 else None)
            results[i].token_ids.append(t)
            if t in stops:
                results[i].finish_reason = "stop"
            else:
                still.append(i)
        active = still
    n_trunc = sum(r.truncated_steps for r in results)
    if n_trunc:
        log.warning("vllm_debias lockstep: %d step(s) had more plausible tokens than the %d candidates; raise "
                    "k (and --max-logprobs) or beta for an exact result", n_trunc, k)
    return results


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


# -- server backend (OpenAI-compatible HTTP) -------------------------------------------------------------
class LockstepClient:
    """Debias sampling against a running vLLM OpenAI-compatible server (no plugin needed on the server).

    >>> client = LockstepClient("http://127.0.0.1:8000", model="M")
    >>> client.generate(["The nurse said that"], DebiasSamplingConfig(counterfactual_swap="gender"), max_tokens=20)

    Paired HTTP requests are not co-scheduled by vLLM, so twin rows cannot work online; this client drives
    both contexts itself, one token per step (two round trips per token; prefix caching keeps each cheap).
    Prompts are tokenised by the server's ``/tokenize`` (``add_special_tokens=True``, like a text prompt).
    """

    def __init__(self, base_url: str, model: str, *, k: int = 20, timeout: float = 60.0,
                 max_workers: int = 8, api_key: str | None = None, tokenizer=None) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.model = model
        self.k = k
        self.timeout = timeout
        self.max_workers = max_workers
        self.api_key = api_key
        self.tokenizer = tokenizer  # optional HF tokenizer: only its EOS id is used

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
                 max_tokens: int = 16, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, stop_token_ids: Sequence[int] | None = None,
                 seed: int | None = None) -> list[LockstepResult]:
        """Debias-sample ``prompts`` with a :class:`debias_lm.DebiasSamplingConfig`; one result per prompt.

        ``counterfactual``: one context per prompt (default: built from the config, e.g. gender swap).
        ``stop_token_ids``: default the EOS of ``tokenizer`` (constructor) or of the server's tokenizer (its
        ``/tokenizer_info``, enabled by ``debias-lm serve``); without either, decoding runs to ``max_tokens``.
        """
        from debias_lm.methods.debias_sampling import counterfactual_texts

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        config.validate()
        cf = list(counterfactual) if counterfactual is not None else counterfactual_texts(config, prompts)
        if len(cf) != len(prompts):
            raise ValueError("counterfactual must have one text per prompt")
        if stop_token_ids is None:
            stop_token_ids = self._eos_ids()
        main = self._map(self.tokenize, prompts)
        aux = self._map(self.tokenize, cf)
        top_fn, score_fn = self.backend()
        res = lockstep_decode(top_fn, score_fn, main, aux, alpha=config.alpha, beta=config.beta,
                              max_tokens=max_tokens, min_tokens=min_tokens, stop_token_ids=stop_token_ids,
                              k=self.k, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=config.seed if seed is None else seed)
        for r in res:
            r.text = self.detokenize([t for t in r.token_ids if t not in set(stop_token_ids)])
        return res

    def _eos_ids(self) -> list[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None:
            return [int(eos)]
        ids = self._eos_ids_from_server()
        if not ids:
            log.warning("vllm_debias lockstep: no EOS token known (pass stop_token_ids= or tokenizer=, or start the "
                        "server with --enable-tokenizer-info-endpoint); decoding runs to max_tokens")
        return ids

    def _eos_ids_from_server(self) -> list[int]:
        try:
            with urllib.request.urlopen(self.base_url + "/tokenizer_info", timeout=self.timeout) as r:
                info = json.loads(r.read())
            eos = info.get("eos_token_id")
            tok = info.get("eos_token")
            if isinstance(tok, dict):  # AddedToken serialised
                tok = tok.get("content")
            if eos is None and tok:
                eos = self.tokenize(tok)[-1]
            return [int(eos)] if eos is not None else []
        except Exception:  # noqa: BLE001 - endpoint disabled: no implicit stop token
            return []
