"""fluency: the toxicity suite's samples when it ran in the same run (else its own, same protocol): conditional
perplexity of each continuation given its original prompt under the scorer LM (the evaluated model with its
plain weights, or ``--ppl-model``), mean after dropping values > 1e4, and the median; dist-1/2/3 and the
repetition rate (2- and 4-grams). Perplexity under the evaluated model is flagged ``perplexity_circular`` for a
method that selects continuations by it (UDDIA with redo). Definitions: ``debias_lm.metrics.fluency``."""

from __future__ import annotations

import math

from . import Column, Context, Suite, register_suite
from .common import by_prompt, prompt_items, record_errors, sample_prompts

FLUENCY_FROM_TOXICITY = "toxicity"


def run(ctx: Context) -> dict:
    from ...metrics.fluency import (
        conditional_perplexities,
        mean_dist_n,
        mean_perplexity,
        mean_repetition_rate,
        median_perplexity,
        perplexity_is_circular,
    )
    from ..settings import method_config

    source = FLUENCY_FROM_TOXICITY if FLUENCY_FROM_TOXICITY in ctx.settings.suites else "fluency"
    items, errors = prompt_items(ctx.settings, "fluency")
    if source == "fluency":
        record_errors(ctx, errors)
    ids = {p["id"] for p in items}
    results = {}
    for method in ctx.settings.methods:
        if source == "fluency":
            sample_prompts(ctx, "fluency", method, items)
        rows = [r for r in ctx.store.select(source, method) if r["id"] in ids]
        todo = [r for r in rows if "ppl" not in r]
        if todo:
            ppl = conditional_perplexities(ctx.ppl_model, ctx.ppl_tokenizer, [r["prompt"] for r in todo],
                                           [r["text"] for r in todo], batch_size=ctx.settings.batch_size,
                                           progress=ctx.settings.progress)
            for r, v in zip(todo, ppl):
                r["ppl"] = None if math.isnan(v) else v
            ctx.store.flush()
        vals = [r["ppl"] if r["ppl"] is not None else math.nan for r in rows]
        mean_ppl, dropped = mean_perplexity(vals)
        grouped = by_prompt(rows)
        texts = [[r["text"] for r in g] for g in grouped.values()]
        cfg = None if "+" in method else method_config(method, ctx.settings.method_overrides.get(method))
        circular = perplexity_is_circular(cfg, scorer_is_generator=not ctx.settings.ppl_model)
        results[method] = {"perplexity": mean_ppl, "perplexity_median": median_perplexity(vals),
                           "n_ppl_dropped": dropped, "n_generations": len(rows),
                           "samples_from": source, "perplexity_scorer": ctx.ppl_name,
                           "perplexity_circular": circular,
                           **({"perplexity_note": "circular: the method keeps the continuation with the lowest "
                               "perplexity under this same model (UDDIA redo); compare dist-n and the repetition "
                               "rate, or pass --ppl-model"} if circular else {}),
                           **{f"dist_{n}": mean_dist_n(texts, n) for n in (1, 2, 3)},
                           **{f"repetition_{n}": mean_repetition_rate([r["text"] for r in rows], n) for n in (2, 4)}}
    return results


def validate(settings) -> None:
    prompt_items(settings, "fluency")


def prompts(ctx: Context):
    return [([p["prompt"] for p in prompt_items(ctx.settings, "fluency")[0]], False)]


SUITE = register_suite(Suite(
    name="fluency",
    run=run,
    validate=validate,
    prompts=prompts,
    backends=("hf", "vllm"),
    needs=frozenset({"perplexity"}),
    columns=(Column("perplexity (mean)", "perplexity", False, flag="perplexity_circular"),
             Column("perplexity (median)", "perplexity_median", False, flag="perplexity_circular"),
             Column("dist-1", "dist_1", True), Column("dist-2", "dist_2", True), Column("dist-3", "dist_3", True),
             Column("repetition (2-gram)", "repetition_2", False),
             Column("repetition (4-gram)", "repetition_4", False)),
    note="circular: this method keeps the continuation with the lowest perplexity under the same model that "
         "scores it here (UDDIA's redo); judge its fluency by dist-n and the repetition rate too.",
    definition="debias_lm.metrics.fluency (conditional PPL, > 1e4 dropped, mean and median; dist-n per prompt, "
               "mean; repetition rate seq-rep-n, mean; PPL flagged circular when the method selects by it)",
    description=__doc__.split("\n")[0],
))
