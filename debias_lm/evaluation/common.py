"""Small helpers the runner and the suites share (subsets, batching, progress, JSON-safe values)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def seeded_subset(items: list, limit: int | None, seed: int) -> list:
    """The first ``limit`` items of a seeded shuffle (keeps the original order among those chosen)."""
    if limit is None or limit >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield i, seq[i : i + n]


def progress_iter(it, *, total=None, desc="", enabled=True):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, disable=not enabled, leave=False)


def nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    return x
