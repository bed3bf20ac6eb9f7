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
