"""Choosing the next token from scores: the one place sampling is written.

Two semantics, because each backend must match its engine exactly: :func:`filter_scores` + :func:`draw` are HF
``generate``'s (temperature -> top-k -> top-p warpers, then ``torch.multinomial``), used by the project's own HF
decoding loops (UDDIA, the shared-prefix sampler, the fused twin rows of debias sampling); :func:`pick_tokens`
is vLLM's sampler, used by the vLLM plugin's twin-row processor and the lockstep client.

**vLLM semantics** (:func:`pick_tokens`): the token choice of a debias-sampling pair, batched, on the device,
without host syncs.

One definition for every vLLM path: the twin-row logits processor (all pairs of a step at once, full vocabulary)
and the lockstep driver (main's top-k candidates, in token-id order). Both feed it the scores of
:func:`debias_lm.core.contrast.contrast` and get the same token for the same seeded draw.

Semantics follow vLLM's sampler for one row:

* greedy (``temperature < 1e-5``): ``argmax`` (ties to the smallest token id);
* sampling: ``scores / temperature`` → ``min_p`` (drop tokens with ``p < min_p · max p``) → ``top_k`` → ``top_p``
  (keep the smallest most-probable prefix whose mass reaches ``top_p``; ties broken by token id), each
  renormalised, then **one inverse-CDF draw in token-id order** with a uniform ``u`` per pair: the first token
  whose cumulative probability exceeds ``u`` (on unnormalised ``exp(x − max x)``: fewer passes over the
  vocabulary, the same distribution). Tokens outside the plausible set have probability 0, so the
  draw over main's candidates (lockstep) equals the draw over the whole vocabulary (twin rows).

Randomness (:func:`seeded_uniform`): a request with a ``seed`` draws ``u = H(seed, position)``, a counter-based
hash of the seed and the index of the generated token, the same on every backend and independent of the batch;
an unseeded pair draws ``u`` from the caller's ``torch.Generator`` (the processor keeps one per engine, seeded
from the engine seed), so different pairs get independent draws while the main and counterfactual rows of one
pair share one.
"""

from __future__ import annotations

import torch

GREEDY_EPS = 1e-5  # vLLM's threshold below which a temperature means greedy
_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two xor-shift-multiply rounds), in int64 arithmetic that cannot overflow."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def seeded_uniform(seed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``u ∈ [0, 1)`` (float64, 53 random bits) from int64 ``seed`` and ``position`` tensors of the same shape."""
    seed = seed.to(torch.int64)
    position = position.to(torch.int64)
    k = _mix32(seed & _M32)
    k = _mix32(k ^ ((seed >> 32) & _M32) ^ 0x6A09E667)
    k = _mix32(k ^ (position & _M32) ^ 0xBB67AE85)
    hi = _mix32(k ^ 0x3C6EF372) >> 5  # 27 bits
    lo = _mix32(k ^ 0xA54FF53A) >> 6  # 26 bits
    return (hi * 67108864 + lo).to(torch.float64) * (1.0 / 9007199254740992.0)


def pick_tokens(scores: torch.Tensor, temperature: torch.Tensor, u: torch.Tensor | None = None, *,
                top_k: torch.Tensor | None = None, top_p: torch.Tensor | None = None,
                min_p: torch.Tensor | None = None, all_greedy: bool = False,
                any_greedy: bool = True, top_k_max: int | None = None) -> torch.Tensor:
    """Column index chosen in each row of ``scores`` ``[N, V]`` (int64 ``[N]``).

    ``temperature`` ``[N]`` (below 1e-5: greedy); ``u`` ``[N]`` uniforms for the sampled rows; ``top_k`` ``[N]``
    (0 = off), ``top_p`` ``[N]`` (1 = off), ``min_p`` ``[N]`` (0 = off): pass ``None`` when no row uses the filter
    (the caller knows this on the host, so no work is spent and nothing is read back). ``all_greedy`` skips the
    sampling path, ``any_greedy=False`` the argmax. ``top_k_max`` (the largest ``top_k``, known on the host) lets
    top-k without top-p use ``torch.topk`` instead of sorting the vocabulary (a token tied with the k-th is then
    kept too). Rows with no finite score come back as some index without raising.
    """
    if all_greedy:
        return scores.argmax(-1)
    assert u is not None, "sampled rows need u"
    v = scores.shape[-1]
    temp = temperature.to(scores.device, torch.float32).unsqueeze(-1)
    x = scores.float() / temp.clamp_min(GREEDY_EPS)
    e = (x - x.amax(-1, keepdim=True)).exp_()  # unnormalised probabilities, the largest is 1; -inf -> 0
    if min_p is not None:  # p < min_p · max p  <=>  e < min_p
        e = torch.where(e < min_p.to(e).unsqueeze(-1), 0.0, e)
    if top_k is not None and top_p is None and top_k_max is not None and 0 < top_k_max < v:
        kth = e.topk(top_k_max, dim=-1).values  # descending
        k = top_k.to(device=e.device, dtype=torch.int64).unsqueeze(-1)
        floor = kth.gather(-1, (k.clamp(1, top_k_max) - 1))
        e = torch.where((k > 0) & (e < floor), 0.0, e)
    elif top_k is not None or top_p is not None:
        se, order = torch.sort(e, dim=-1, descending=True, stable=True)
        if top_k is not None:
            k = top_k.to(device=e.device, dtype=torch.int64)
            k = torch.where(k > 0, k, torch.full_like(k, v)).unsqueeze(-1)
            se = se.masked_fill(torch.arange(v, device=e.device) >= k, 0.0)
        if top_p is not None:
            cum = se.cumsum(-1)
            tp = top_p.to(se).unsqueeze(-1)
            # keep a token while the mass of the more probable ones is below top_p (off: keep all)
            se = se.masked_fill(((cum - se) >= tp * cum[:, -1:]) & (tp < 1.0), 0.0)
        e = torch.zeros_like(e).scatter_(-1, order, se)
    cum = e.double().cumsum(-1)
    drawn = torch.searchsorted(cum, u.to(cum).unsqueeze(-1) * cum[:, -1:], right=True).squeeze(-1).clamp_max(v - 1)
    if not any_greedy:
        return drawn
    return torch.where(temp.squeeze(-1) < GREEDY_EPS, scores.argmax(-1), drawn)


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as HF's ``TopPLogitsWarper`` (keeps at least one token): masked -> -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_scores(scores: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """HF ``generate``'s sampling warpers in HF's order: ``scores / temperature``, then top-k (0 = off; tokens
    below the k-th score -> -inf), then top-p (:func:`top_p_mask`)."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return top_p_mask(scores, top_p)


def draw(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``softmax(scores)`` with ``torch.multinomial`` (what HF ``generate`` samples with):
    int64 ``[N]``."""
    return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(1)


__all__ = ["GREEDY_EPS", "draw", "filter_scores", "pick_tokens", "seeded_uniform", "top_p_mask"]
