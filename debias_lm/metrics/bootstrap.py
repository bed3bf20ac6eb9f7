"""Paired bootstrap over prompts: a confidence interval for a statistic of several arms scored on the same prompts.

Notation: arms a = 1..A, each a vector x_a of N per-prompt values (e.g. max_j tox(y_ij), so mean(x_a) is the arm's
EMT), aligned by prompt. A statistic s(x_1, ..., x_A) -> float (e.g. mean(x_plain) - mean(x_method), or the
share of a reference arm's reduction: (mean(x_plain) - mean(x_m)) / (mean(x_plain) - mean(x_ref))).

* Resample b = 1..B draws N prompt indices i_1..i_N uniformly with replacement, the *same* indices for every
  arm (paired: a prompt's difficulty cancels), and evaluates s_b = s(x_1[i], ..., x_A[i]).
* The interval is the percentile interval [q_{alpha/2}, q_{1-alpha/2}] of {s_b} (linear interpolation,
  ``torch.quantile``); resamples where s is not finite (e.g. a share whose denominator is 0) are dropped and
  counted.

The point estimate is s on the original vectors. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import UserInputError

Statistic = Callable[..., torch.Tensor]


def paired_bootstrap(stat: Statistic, arms: Sequence[Sequence[float]], *, n_boot: int = 10_000,
                     alpha: float = 0.05, seed: int = 0) -> dict:
    """``stat`` takes A tensors of shape ``[B, N]`` (B resamples of each arm) and returns ``[B]``.

    Returns ``{"estimate", "low", "high", "n_prompts", "n_boot", "n_dropped", "alpha"}``."""
    if not arms:
        raise UserInputError("paired_bootstrap needs at least one arm")
    n = len(arms[0])
    if n == 0 or any(len(a) != n for a in arms):
        raise UserInputError(f"paired_bootstrap: every arm needs the same, non-zero number of prompts, got "
                             f"{[len(a) for a in arms]}")
    if not 0.0 < alpha < 1.0 or n_boot < 1:
        raise UserInputError(f"paired_bootstrap: alpha in (0, 1) and n_boot >= 1 needed, got {alpha}, {n_boot}")
    x = [torch.as_tensor(a, dtype=torch.float64) for a in arms]
    estimate = float(stat(*[a[None] for a in x])[0])
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    s = stat(*[a[idx] for a in x])
    ok = torch.isfinite(s)
    s = s[ok]
    low, high = ((float(q) for q in torch.quantile(s, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=s.dtype)))
                 if s.numel() else (math.nan, math.nan))
    return {"estimate": estimate, "low": low, "high": high, "n_prompts": n, "n_boot": n_boot,
            "n_dropped": int((~ok).sum()), "alpha": alpha}


def mean_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean(a) - mean(b) per resample (rows)."""
    return a.mean(-1) - b.mean(-1)


def share_of_reduction(base: torch.Tensor, method: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(mean(base) - mean(method)) / (mean(base) - mean(reference)) per resample: the share of the reference arm's
    reduction that the method keeps (1 = all of it)."""
    return (base.mean(-1) - method.mean(-1)) / (base.mean(-1) - reference.mean(-1))
