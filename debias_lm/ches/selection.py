"""Deterministic selection of pairs by score (ascending; ties broken by original index)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UserInputError
from .formats import UNKEEPABLE

SCORES = ("ln_ches", "ches", "neg_norm_edit_distance", "last_hidden_inner", "reward_margin")


@dataclasses.dataclass
class Selection:
    keep: list[int]  # original indices kept, in original order
    cut_value: float  # largest kept score (keep/drop fractions) or the threshold
    rule: dict[str, Any]
    n_total: int
    n_scored: int
    n_skipped: int

    @property
    def n_kept(self) -> int:
        return len(self.keep)

    def counts(self) -> dict[str, int]:
        """Row counts: ``scored + skipped == total`` and ``kept + dropped == total`` (kept skipped rows included)."""
        return {"total": self.n_total, "scored": self.n_scored, "skipped": self.n_skipped, "kept": self.n_kept,
                "dropped": self.n_total - self.n_kept}


def check_rule(*, keep_fraction: float | None = None, drop_top_fraction: float | None = None,
               threshold: float | None = None, score: str = "ln_ches") -> None:
    """Raise a ``UserInputError`` unless exactly one valid rule and a known score are given (no scores needed)."""
    rules = [r for r in (keep_fraction, drop_top_fraction, threshold) if r is not None]
    if len(rules) != 1:
        raise UserInputError("choose exactly one of keep_fraction, drop_top_fraction, threshold")
    if score not in SCORES:
        raise UserInputError(f"score={score!r} is invalid: expected one of {', '.join(SCORES)}")
    for name, v in (("keep_fraction", keep_fraction), ("drop_top_fraction", drop_top_fraction)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
            raise UserInputError(f"{name}={v!r} is invalid: expected a fraction in [0, 1]")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or math.isnan(threshold)):
        raise UserInputError(f"threshold={threshold!r} is invalid: expected a number")


def select(
    scores: Sequence[Mapping[str, Any]],
    *,
    keep_fraction: float | None = None,
    drop_top_fraction: float | None = None,
    threshold: float | None = None,
    score: str = "ln_ches",
    keep_skipped: bool = False,
) -> Selection:
    """Keep the lowest-scoring pairs (the paper keeps the lowest 5 % LN-CHES: ``keep_fraction=0.05``).

    Exactly one rule: ``keep_fraction`` F keeps ceil(F·N) of the N scored pairs; ``drop_top_fraction`` F drops
    the ceil(F·N) highest; ``threshold`` T keeps pairs with score <= T. Skipped rows (no score) are dropped
    unless ``keep_skipped``; they stay listed in the scores with their reason either way. Rows skipped as
    ``invalid_utf8`` are never kept: their text cannot be written back.
    """
    check_rule(keep_fraction=keep_fraction, drop_top_fraction=drop_top_fraction, threshold=threshold, score=score)
    scored = [(float(r[score]), int(r["orig_index"])) for r in scores
              if r["status"] == "ok" and r[score] is not None and not math.isnan(float(r[score]))]
    skipped = [int(r["orig_index"]) for r in scores if r["status"] != "ok"]
    keepable = [int(r["orig_index"]) for r in scores if r["status"] != "ok" and r.get("skip_reason") not in UNKEEPABLE]
    unscored_ok = [int(r["orig_index"]) for r in scores if r["status"] == "ok"
                   and (r[score] is None or math.isnan(float(r[score])))]
    scored.sort()
    n = len(scored)
    if keep_fraction is not None:
        kept = scored[: math.ceil(keep_fraction * n - 1e-9)]
        cut = kept[-1][0] if kept else math.nan
    elif drop_top_fraction is not None:
        kept = scored[: n - math.ceil(drop_top_fraction * n - 1e-9)]
        cut = kept[-1][0] if kept else math.nan
    else:
        kept = [s for s in scored if s[0] <= threshold]
        cut = float(threshold)
    keep = sorted([i for _, i in kept] + (keepable + unscored_ok if keep_skipped else []))
    rule = {"score": score, "keep_fraction": keep_fraction, "drop_top_fraction": drop_top_fraction,
            "threshold": threshold, "keep_skipped": keep_skipped}
    return Selection(keep=keep, cut_value=cut, rule=rule, n_total=len(scores), n_scored=n,
                     n_skipped=len(skipped) + len(unscored_ok))
