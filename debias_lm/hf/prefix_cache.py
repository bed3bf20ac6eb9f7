"""Shared-prefix KV caching: encode a prefix common to every row once and reuse its cache.

Prompt methods that put the same long text in front of every prompt (NBLS grounding: ~1.8k tokens for
k = 32) would otherwise prefill it again for every row of every batch. Rows are laid out
``prefix | padding | suffix`` with the padding masked; HF derives positions from the attention mask, so each
row sees exactly the positions (and attention) of its left-padded form.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

MIN_SHARED_PREFIX = 32  # below this, caching is not worth a deep copy of the cache


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``seqs`` (0 for none)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def prefix_cache(model, prefix: list[int]):
    """The KV cache of ``prefix`` (one row), or None for an empty prefix."""
    import torch

    if not prefix:
        return None
    ids = torch.tensor([prefix], device=model.device)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=True).past_key_values


def expand_cache(cache, n: int):
    """A copy of a one-row cache repeated for ``n`` rows (the original stays untouched for reuse)."""
    if cache is None:
        return None
    c = copy.deepcopy(cache)
    if n > 1:
        c.batch_repeat_interleave(n)
    return c


def split_layout(rows: Sequence[Sequence[int]], prefix_len: int, pad_id: int):
    """``(input_ids, attention_mask)`` laid out ``prefix | padding | suffix`` (the prefix being shared)."""
    import torch

    width = max(len(r) - prefix_len for r in rows)
    x = torch.full((len(rows), prefix_len + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):
        suffix = list(r[prefix_len:])
        x[i, :prefix_len] = torch.tensor(list(r[:prefix_len]), dtype=torch.long)
        mask[i, :prefix_len] = 1
        if suffix:
            x[i, prefix_len + width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[i, prefix_len + width - len(suffix) :] = 1
    return x, mask


# ----------------------------------------------------------------------------------------------------
# Shared-prefix attention: the prefix's keys / values stored ONCE and attended by every row
# ----------------------------------------------------------------------------------------------------
# Copying a long prefix's cache for every row (``expand_cache``) makes each decoding step read and append to
# B copies of it; for the 1.8k-token NBLS grounding that dominates the cost of sampling. Here the rows' own
# cache holds only their suffix (prompt remainder + generated tokens); an attention function registered with
# transformers' AttentionInterface attends each query to the one shared prefix (a broadcast matmul, no copy)
# and to the row's suffix, with one softmax over both:
#
#     softmax([q·K_prefixᵀ, q·K_suffixᵀ + mask] · scale) · [V_prefix; V_suffix]
#
# Positions continue after the prefix (``prefix_len + cumsum(mask) − 1``), so each row computes exactly what a
# plain forward of ``prefix + its suffix`` computes (tested on Llama- and GPT-2-style models).
SHARED_PREFIX_ATTENTION = "debias_lm_shared_prefix"
_PREFIX_ATTR = "_debias_lm_shared_prefix_kv"


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    import math

    import torch

    pk, pv = getattr(module, _PREFIX_ATTR)  # [Hkv, P, D] each
    b, h, q_len, d = query.shape
    hkv = key.shape[1]
    g = h // hkv
    scale = scaling if scaling is not None else 1.0 / math.sqrt(d)
    p_len, s_len = pk.shape[1], key.shape[2]
    # the prefix part as one GEMM per KV head over all rows / query heads / positions: [Hkv, B·G·Q, D]
    qh = query.reshape(b, hkv, g * q_len, d).transpose(0, 1).reshape(hkv, b * g * q_len, d)
    s_prefix = torch.bmm(qh, pk.to(qh.dtype).transpose(1, 2)).view(hkv, b, g, q_len, p_len).transpose(0, 1)
    q = query.reshape(b, hkv, g, q_len, d)
    s_suffix = torch.matmul(q, key.unsqueeze(2).transpose(-1, -2))  # [B, Hkv, G, Q, S]
    scores = torch.cat([s_prefix, s_suffix], -1).float() * scale
    if attention_mask is not None:  # [B, 1, Q, K_suffix] additive (eager-style) mask of the suffix part
        scores[..., p_len:] += attention_mask[..., :s_len].float().unsqueeze(2)
    probs = torch.softmax(scores, -1).to(value.dtype)
    pp = probs[..., :p_len].transpose(0, 1).reshape(hkv, b * g * q_len, p_len)
    out = torch.bmm(pp, pv.to(value.dtype)).view(hkv, b, g, q_len, d).transpose(0, 1)
    out = out + torch.matmul(probs[..., p_len:], value.unsqueeze(2))
    return out.reshape(b, h, q_len, d).transpose(1, 2).contiguous(), None


def _register_shared_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, _shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, eager_mask)


def supports_shared_prefix(model) -> bool:
    """Whether ``model`` routes attention through transformers' AttentionInterface with per-layer modules (most
    decoder-only models in transformers 5: Llama, Qwen2, Mistral, Gemma, GPT-2, ...)."""
    return bool(getattr(model, "_supports_attention_backend", False)) and hasattr(
        getattr(model, "config", None), "_attn_implementation")


class SharedPrefix:
    """Run batches of suffixes against one prefix stored once (see the section comment above).

    Usage::

        with SharedPrefix(model, prefix_ids) as sp:
            logits, cache = sp.forward(suffix_ids, suffix_mask)            # left-padded suffixes
            logits, cache = sp.forward(next_ids, mask_so_far, cache)        # one more token per row

    While the context is open the model uses the shared-prefix attention; it is restored on exit. Check
    :func:`supports_shared_prefix` first (other models: :func:`prefix_cache` + :func:`expand_cache`).
    """

    def __init__(self, model, prefix_ids: Sequence[int]) -> None:
        if not prefix_ids:
            raise ValueError("SharedPrefix needs a non-empty prefix")
        self.model = model
        self.prefix_ids = list(prefix_ids)
        self.prefix_len = len(self.prefix_ids)
        self._modules: list = []
        self._saved_impl = None
        import inspect

        # logits of the last position only (the LM head over a 49k vocabulary is costly): when the model can
        self.last_only = "logits_to_keep" in inspect.signature(model.forward).parameters

    # the keys / values of the last prefix encoded, per model: a run that scores one prefix twice in a row
    # (the likelihood, then the generation probe of one arm) encodes it once
    _last: tuple = (None, None, None)

    def _prefix_kv(self) -> list:
        import weakref

        first = next(self.model.parameters())
        key = (tuple(self.prefix_ids), first.dtype, first._version)  # weights updated in place: encode again
        ref, last_key, kv = SharedPrefix._last
        if ref is not None and ref() is self.model and last_key == key:
            return kv
        cache = prefix_cache(self.model, self.prefix_ids)
        layers = getattr(cache, "layers", None)
        if not layers:
            raise RuntimeError("SharedPrefix needs a cache with per-layer keys / values (transformers DynamicCache)")
        kv = [(layer.keys[0].detach(), layer.values[0].detach()) for layer in layers]
        SharedPrefix._last = (weakref.ref(self.model), key, kv)
        return kv

    def __enter__(self) -> SharedPrefix:
        kv = self._prefix_kv()
        self._modules = [m for m in self.model.modules() if isinstance(getattr(m, "layer_idx", None), int)
                         and m.layer_idx < len(kv) and hasattr(m, "config")]
        for m in self._modules:
            setattr(m, _PREFIX_ATTR, kv[m.layer_idx])
        _register_shared_prefix_attention()
        self._saved_impl = self.model.config._attn_implementation
        self.model.config._attn_implementation = SHARED_PREFIX_ATTENTION
        return self

    def __exit__(self, *exc) -> None:
        self.model.config._attn_implementation = self._saved_impl
        for m in self._modules:
            if hasattr(m, _PREFIX_ATTR):
                delattr(m, _PREFIX_ATTR)
        self._modules = []

    def forward(self, input_ids, attention_mask, cache=None):
        """Logits of ``input_ids`` (left-padded, mask ``[B, past + S]``) after the prefix — ``[B, 1, V]``, the
        last position only, when the model supports ``logits_to_keep`` (``[B, S, V]`` otherwise) — and the
        rows' own cache (their suffix tokens only; pass it back for the next step)."""
        import torch
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache()
        mask = attention_mask.to(self.model.device)
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -input_ids.shape[1] :] + self.prefix_len
        extra = {"logits_to_keep": 1} if self.last_only else {}
        with torch.no_grad():
            out = self.model(input_ids=input_ids.to(self.model.device), attention_mask=mask, position_ids=pos,
                             past_key_values=cache, use_cache=True, **extra)
        return out.logits, out.past_key_values


def sample_after_prefix(model, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], *, max_new_tokens: int,
                        pad_id: int, eos_ids: Sequence[int] = (), generator=None, do_sample: bool = True,
                        shared=None, repeats: Sequence[int] | None = None, first_logprobs: list | None = None
                        ) -> list[list[int]]:
    """New tokens for each ``prefix + suffix`` row: ancestral sampling at temperature 1 (no top-k / top-p), or
    greedy with ``do_sample=False``; a row stops at its first EOS (kept in its output) and leaves the batch, so
    finished rows cost nothing.

    ``repeats[i]``: how many samples suffix ``i`` gets (default 1 each); the suffix is encoded once and its cache
    row copied, and the output lists the samples of suffix 0, then of suffix 1, ... ``first_logprobs``: a list
    that receives the first step's log-probabilities ``[len(suffixes), V]`` (float32), i.e. what a next-token
    scoring of each ``prefix + suffix`` gives. ``shared``: an open :class:`SharedPrefix` of this prefix to reuse
    (one is opened and closed otherwise).
    """
    import contextlib

    import torch

    ctx = SharedPrefix(model, prefix_ids) if shared is None else contextlib.nullcontext(shared)
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(suffixes):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    reps = [1] * len(suffixes) if repeats is None else list(repeats)
    if len(reps) != len(suffixes) or any(r < 0 for r in reps):
        raise ValueError("repeats needs one count >= 0 per suffix")
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
    expand = torch.repeat_interleave(torch.arange(len(suffixes)), torch.tensor(reps, dtype=torch.long))
    out: list[list[int]] = [[] for _ in range(len(expand))]
    active = torch.arange(len(expand))  # sample index of each row still in the batch
    with ctx as sp:
        logits, cache = sp.forward(ids, mask)
        if first_logprobs is not None:
            first_logprobs.append(torch.log_softmax(logits[:, -1].float(), -1).cpu())
        if len(expand) == 0 or max_new_tokens < 1:
            return out
        if repeats is not None:  # one cache row per sample
            cache.batch_select_indices(expand.to(logits.device))
            logits, mask = logits[expand.to(logits.device)], mask[expand]
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()
            if do_sample:
                nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=generator).squeeze(1).cpu()
            else:
                nxt = last.argmax(-1).cpu()
            for i, t in zip(active.tolist(), nxt.tolist()):
                out[i].append(t)
            keep = ~torch.isin(nxt, eos)
            if not bool(keep.any()):
                break
            if not bool(keep.all()):  # finished rows leave the batch (their cache rows too)
                idx = torch.nonzero(keep).flatten()
                cache.batch_select_indices(idx.to(logits.device))
                active, nxt, mask = active[idx], nxt[idx], mask[idx]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            logits, cache = sp.forward(nxt.unsqueeze(1), mask, cache)
    return out
