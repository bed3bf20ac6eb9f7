"""counterfactual: gender-swapped prompt pairs (default: the 30 pairs in ``debias_lm/data/eval``), the toxicity
suite's sampling; per side the mean toxicity (each scorer), the sentiment (VADER) and the rate of female / male
words; gaps = |female - male|, and the counterfactual sentiment gap (mean W1 over pairs); with a regard scorer,
the regard gap. Definitions: ``debias_lm.metrics.counterfactual``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import Column, Context, Suite, register_suite
from .common import mean, pair_items, record_errors, sample_prompts, score_list, score_rows


def run(ctx: Context) -> dict:
    from ...metrics.counterfactual import counterfactual_gap, group_gap, regard_gap, uses_words
    from ...words import FEMALE_WORDS, MALE_WORDS

    pairs, errors = pair_items(ctx.settings)
    record_errors(ctx, errors)
    prompts = [{"id": f"{p['id']}:{g}", "prompt": p[g], "pair": p["id"], "group": g}
               for p in pairs for g in ("female", "male")]
    scorers = {**ctx.toxicity_scorers, ctx.sentiment_scorer.name: ctx.sentiment_scorer}
    if ctx.regard_scorer is not None:
        scorers[ctx.regard_scorer.name] = ctx.regard_scorer
    sent = ctx.sentiment_scorer.name
    results = {}
    for method in ctx.settings.methods:
        sample_prompts(ctx, "counterfactual", method, prompts)
        ids = {p["id"] for p in prompts}
        rows = [r for r in ctx.store.select("counterfactual", method) if r["id"] in ids]
        score_rows(ctx, rows, scorers)
        side = {g: [r for r in rows if r["group"] == g] for g in ("female", "male")}
        res: dict[str, Any] = {"n_pairs": len(pairs), "n_generations": len(rows)}
        for name in ctx.toxicity_scorers:
            means = {g: mean(score_list(side[g], name)) for g in side}
            res[f"toxicity_gap[{name}]"] = group_gap(score_list(side["female"], name), score_list(side["male"], name))
            res[f"toxicity_female[{name}]"], res[f"toxicity_male[{name}]"] = means["female"], means["male"]
        res[f"sentiment_female[{sent}]"] = mean(score_list(side["female"], sent))
        res[f"sentiment_male[{sent}]"] = mean(score_list(side["male"], sent))
        res[f"sentiment_gap[{sent}]"] = group_gap(score_list(side["female"], sent), score_list(side["male"], sent))
        by_pair = defaultdict(dict)
        for r in rows:
            by_pair[r["pair"]].setdefault(r["group"], []).append(r.get("scores", {}).get(sent))
        res[f"counterfactual_sentiment_w1[{sent}]"] = counterfactual_gap(
            (d.get("female", []), d.get("male", [])) for d in by_pair.values())
        if ctx.regard_scorer is not None:
            rn = ctx.regard_scorer.name
            gaps = regard_gap(score_list(side["female"], rn), score_list(side["male"], rn))
            res.update({f"regard_gap_{k}[{rn}]": v for k, v in gaps.items()})
        for words, label in ((FEMALE_WORDS, "female_word_rate"), (MALE_WORDS, "male_word_rate")):
            rates = {g: mean([float(uses_words(r["text"], words)) for r in side[g]]) for g in side}
            res[f"{label}_female_prompts"], res[f"{label}_male_prompts"] = rates["female"], rates["male"]
            res[f"{label}_gap"] = abs(rates["female"] - rates["male"])
        results[method] = res
    return results


def validate(settings) -> None:
    pair_items(settings)


def prompts(ctx: Context):
    return [([p[g] for p in pair_items(ctx.settings)[0] for g in ("female", "male")], False)]


SUITE = register_suite(Suite(
    name="counterfactual",
    run=run,
    validate=validate,
    prompts=prompts,
    backends=("hf", "vllm"),
    needs=frozenset({"toxicity", "sentiment", "regard"}),
    columns=(Column("tox. gap [{scorer}]", "toxicity_gap[{scorer}]", False),
             Column("sentiment gap [{sent}]", "sentiment_gap[{sent}]", False),
             Column("sentiment W1 [{sent}]", "counterfactual_sentiment_w1[{sent}]", False),
             Column("regard gap mean [{regard}]", "regard_gap_mean[{regard}]", False),
             Column("female-word-rate gap", "female_word_rate_gap", False),
             Column("male-word-rate gap", "male_word_rate_gap", False)),
    definition="debias_lm.metrics.counterfactual (|mean_f - mean_m| gaps; mean W1 over pairs)",
    description=__doc__.split("\n")[0],
))
