"""Fluency and diversity of continuations (DExperts' ``evaluate_generations.py`` definitions).

* **Conditional perplexity** (``conditional_perplexities``): for a prompt x and continuation y,
  PPL = exp((L(x ⊕ y) − L(x)) / |y|), where L is the summed token negative log-likelihood under a scorer LM and
  |y| the number of continuation tokens, i.e. the exp of the mean NLL of y's tokens given x. The scorer is
  recorded with the result. An empty continuation has no perplexity (``nan``).
* **Mean perplexity** (``mean_perplexity``): values > 10^4 (and nan) are dropped, then the mean over
  generations; the number dropped is reported.
* **Median perplexity** (``median_perplexity``): the median over generations (no cap), reported beside the mean.
* **dist-n** (``dist_n`` / ``mean_dist_n``): per prompt, the number of unique n-grams across its k samples
  divided by the total number of whitespace tokens in those samples; then the mean over prompts. It measures
  diversity *across* a prompt's samples.
* **Repetition rate** (``repetition_rate`` / ``mean_repetition_rate``; "seq-rep-n" of Welleck et al., ICLR 2020,
  arXiv 1908.04319): per continuation, the share of its whitespace n-grams that repeat an n-gram seen earlier
  in the same continuation, 1 − unique / total; then the mean over continuations that have at least one
  n-gram. It measures degenerate loops *within* one text (0 = no repeat).
* **Self-perplexity is circular** for methods that select continuations by it: UDDIA's redo keeps the attempt
  with the lowest perplexity under the generator itself, so perplexity under that same model is partly the
  selection criterion (``perplexity_is_circular``); report it labelled, beside dist-n and the repetition rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PPL_CAP = 1e4


def dist_n(samples: Sequence[str], n: int) -> float:
    """Unique n-grams across ``samples`` ÷ total whitespace tokens in them (0 when there are no tokens)."""
    if n < 1:
        raise ValueError(f"n={n} is invalid: expected >= 1")
    total, grams = 0, set()
    for s in samples:
        total += len(s.split())
        grams.update(_ngrams(s, n))
    return len(grams) / total if total else 0.0


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    toks = text.split()
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def repetition_rate(text: str, n: int = 2) -> float:
    """1 − unique n-grams / n-grams of one text (whitespace tokens); nan when it has no n-gram."""
    if n < 1:
        raise ValueError(f"n={n} is invalid: expected >= 1")
    grams = _ngrams(text, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else math.nan


def mean_repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """``repetition_rate`` averaged over the texts that have at least one n-gram (nan when none has)."""
    vals = [v for v in (repetition_rate(t, n) for t in texts) if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def perplexity_is_circular(method_config, scorer_is_generator: bool) -> bool:
    """True when the perplexity scorer is the generating model itself and the method picks continuations by
    that model's perplexity (UDDIA with redo on and a non-zero step)."""
    if not scorer_is_generator or method_config is None or getattr(method_config, "method", None) != "uddia":
        return False
    return bool(getattr(method_config, "layer_step", 0)) and float(getattr(method_config, "lr", 0)) > 0


def mean_dist_n(samples_by_prompt: Sequence[Sequence[str]], n: int) -> float:
    """dist-n per prompt, averaged over prompts (prompts without samples are skipped)."""
    vals = [dist_n(s, n) for s in samples_by_prompt if len(s)]
    return sum(vals) / len(vals) if vals else math.nan


def mean_perplexity(ppls: Sequence[float], cap: float = PPL_CAP) -> tuple[float, int]:
    """Mean of the perplexities <= ``cap`` (nan dropped too) and how many were dropped."""
    kept = [p for p in ppls if p is not None and not math.isnan(p) and p <= cap]
    return (sum(kept) / len(kept) if kept else math.nan), len(ppls) - len(kept)


def median_perplexity(ppls: Sequence[float]) -> float:
    """Median of the finite perplexities (no cap): robust to the few degenerate continuations that dominate
    the mean."""
    kept = sorted(p for p in ppls if p is not None and not math.isnan(p))
    if not kept:
        return math.nan
    mid = len(kept) // 2
    return kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2


def conditional_perplexities(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                             batch_size: int = 16, progress: bool = False) -> list[float]:
    """PPL of each continuation given its prompt under ``model`` (a causal LM), batched with left padding.

    Prompts are tokenized with the tokenizer's special tokens, continuations without; the continuation's
    tokens are the ones scored. Returns ``nan`` for an empty continuation.
    """
    import torch

    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out: list[float] = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    for i in starts:
        rows, n_cont = [], []
        for p, c in zip(prompts[i : i + batch_size], continuations[i : i + batch_size]):
            pi = tokenizer(p)["input_ids"]
            ci = tokenizer(c, add_special_tokens=False)["input_ids"] if c else []
            if not pi:  # nothing to condition the first token on: score from the second
                pi, ci = ci[:1], ci[1:]
            rows.append(pi + ci)
            n_cont.append(len(ci))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device)).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        for j, n in enumerate(n_cont):
            if n == 0:
                out.append(math.nan)
                continue
            tgt = ids[j, width - n :]
            nll = -logp[j, width - n - 1 : width - 1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            out.append(float(torch.exp(nll.mean())))
    return out
