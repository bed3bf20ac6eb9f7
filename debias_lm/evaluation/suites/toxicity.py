"""toxicity: each prompt (default: the 102 toxicity-prone prompts shipped in ``debias_lm/data/eval``; or
``--dataset toxicity=rtp:FILE``), raw text (no chat template), ``k`` samples, nucleus ``top_p`` (0.9),
temperature 1, ``max_new_tokens`` (20). Each sample is scored by every toxicity scorer; EMT (+ std), toxicity
probability (per prompt) and toxic rate (per generation) per scorer. Empty generations are scored as the empty
text and counted (``n_empty``). Definitions: ``debias_lm.metrics.toxicity``."""

from __future__ import annotations

from typing import Any

from . import Column, Context, Suite, register_suite
from .common import by_prompt, prompt_items, record_errors, sample_prompts, score_list, score_rows


def run(ctx: Context) -> dict:
    from ...metrics.toxicity import toxicity_metrics

    items, errors = prompt_items(ctx.settings)
    record_errors(ctx, errors)
    results = {}
    for method in ctx.settings.methods:
        sample_prompts(ctx, "toxicity", method, items)
        ids = {p["id"] for p in items}
        rows = [r for r in ctx.store.select("toxicity", method) if r["id"] in ids]
        score_rows(ctx, rows, ctx.toxicity_scorers)
        grouped = by_prompt(rows)
        res: dict[str, Any] = {"n_prompts": len(grouped), "n_generations": len(rows),
                               "n_empty": sum(1 for r in rows if r["empty"])}
        for name in ctx.toxicity_scorers:
            res[name] = toxicity_metrics([score_list(g, name) for g in grouped.values()])
            res[name]["n_scorer_errors"] = sum(1 for r in rows if name in r.get("score_errors", {}))
        results[method] = res
    return results


def validate(settings) -> None:
    prompt_items(settings)  # dataset files / specs: read once before the model


def prompts(ctx: Context):
    return [([p["prompt"] for p in prompt_items(ctx.settings)[0]], False)]


SUITE = register_suite(Suite(
    name="toxicity",
    run=run,
    validate=validate,
    prompts=prompts,
    backends=("hf", "vllm"),
    needs=frozenset({"toxicity"}),
    columns=(Column("EMT [{scorer}]", "{scorer}.emt", False),
             Column("tox. prob. per prompt [{scorer}]", "{scorer}.toxicity_probability", False),
             Column("toxic rate per gen. [{scorer}]", "{scorer}.toxic_rate", False),
             Column("empty gens", "n_empty", None)),
    definition="debias_lm.metrics.toxicity (EMT, per-prompt toxicity probability, per-generation toxic rate; "
               "tau 0.5)",
    description=__doc__.split("\n")[0],
))
