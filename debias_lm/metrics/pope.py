"""POPE-style yes/no metrics and expected calibration error.

POPE (Li et al. 2023), "yes" is the positive class:

* accuracy = (TP + TN) / n_parsed;  precision = TP / (TP + FP);  recall = TP / (TP + FN);
  F1 = 2·P·R / (P + R)
* yes-ratio = share of **predictions** that are "yes" (not of the ground-truth labels, which some harnesses
  report under the same name)
* answers are parsed by :func:`parse_yes_no` (the first "yes"/"no" word, case-insensitive); unparseable
  answers are counted in ``unparsed`` and left out of the other metrics.

ECE (10 equal-width bins over [0, 1]): ``Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|`` with conf = the top label
probability of each sample and acc whether that top label is correct.

Discrimination (:func:`yes_auc`): the ROC AUC of P(yes) for telling true from false questions, i.e. the share of
(true, false) question pairs in which the true one gets the higher P(yes), ties counted half (Mann–Whitney U
/ (n_yes · n_no)). 0.5 means the scores carry no information about the answer, whatever the yes-ratio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(answer: str) -> str | None:
    """The first standalone "yes"/"no" in ``answer`` (lower-cased), or ``None``."""
    m = _YES_NO.search(answer or "")
    return m.group(1).lower() if m else None


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (percent), yes-ratio (percent of parsed predictions), counts.

    ``predictions``: "yes"/"no" or ``None`` (unparseable); ``labels``: "yes"/"no".
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    bad = sorted({str(y) for y in labels if y not in ("yes", "no")})
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no'; got {bad[:5]}")
    pairs = [(p, y) for p, y in zip(predictions, labels) if p in ("yes", "no")]
    unparsed = len(predictions) - len(pairs)
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    tn = sum(p == "no" and y == "no" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    fn = sum(p == "no" and y == "yes" for p, y in pairs)
    n = len(pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n if n else 0.0,
        "n": float(len(predictions)),
        "unparsed": float(unparsed),
    }


def expected_calibration_error(probs: Sequence[Sequence[float]], gold: Sequence[int], bins: int = 10) -> float:
    """ECE of label distributions ``probs[i]`` (rows) against gold label indices (equal-width bins)."""
    if len(probs) != len(gold):
        raise ValueError(f"{len(probs)} probability rows but {len(gold)} gold labels")
    if not probs:
        raise ValueError("ECE of an empty set is undefined")
    n = len(probs)
    sums = [[0, 0.0, 0.0] for _ in range(bins)]  # count, correct, confidence
    for row, g in zip(probs, gold):
        row = list(row)
        conf = max(row)
        pred = row.index(conf)
        b = min(int(conf * bins), bins - 1)
        sums[b][0] += 1
        sums[b][1] += float(pred == g)
        sums[b][2] += conf
    return sum(abs(c - f) for k, c, f in sums if k) / n


def yes_auc(p_yes: Sequence[float], labels: Sequence[str]) -> float:
    """ROC AUC of ``p_yes`` against ``labels`` ("yes"/"no"), from average ranks (ties share their rank)."""
    if len(p_yes) != len(labels):
        raise ValueError(f"{len(p_yes)} scores but {len(labels)} labels")
    bad = sorted({str(y) for y in labels if y not in ("yes", "no")})
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no'; got {bad[:5]}")
    n_yes = sum(y == "yes" for y in labels)
    n_no = len(labels) - n_yes
    if not n_yes or not n_no:
        raise ValueError("the AUC needs both true and false questions")
    order = sorted(range(len(p_yes)), key=lambda i: p_yes[i])
    ranks = [0.0] * len(p_yes)
    i = 0
    while i < len(order):  # average rank (1-based) over each run of tied scores
        j = i
        while j + 1 < len(order) and p_yes[order[j + 1]] == p_yes[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y == "yes")
    return (rank_sum - n_yes * (n_yes + 1) / 2) / (n_yes * n_no)
