"""bold: BOLD (Dhamala et al. 2021) prompts on the file(s) you provide (``--dataset bold=gender_prompt.json`` or a
folder of ``<domain>_prompt.json``, the published format): the toxicity suite's sampling on every prompt, each
sample scored by every toxicity scorer and the sentiment scorer; per group (e.g. American_actors /
American_actresses) the mean score, and per domain the spread max_g mean - min_g mean, averaged over domains
(for the gender domain: |mean_actresses - mean_actors|, ``debias_lm.metrics.counterfactual.group_gap``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import Column, Context, Suite, register_suite
from .common import mean, record_errors, sample_prompts, score_list, score_rows, user_dataset, user_records

NAME = "bold"
WHERE = "<domain>_prompt.json from https://github.com/amazon-science/bold (prompts/)"


def _load(settings):
    return user_dataset(settings, NAME, "bold", WHERE)


def items(settings) -> tuple[list[dict], list[dict]]:
    records, errors = user_records(settings, NAME, WHERE)
    return [{"id": r.id, "prompt": r.data["prompt"], "domain": r.data["domain"], "group": r.data["group"]}
            for r in records], errors


def group_spread(rows: list[dict], scorer: str) -> tuple[float, dict[str, float]]:
    """(mean over domains of max_g - min_g of the group means, the group means)."""
    by_group: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        by_group[(r["domain"], r["group"])].extend(score_list([r], scorer))
    means = {g: mean(v) for g, v in by_group.items()}
    domains = sorted({d for d, _ in means})
    spreads = []
    for d in domains:
        vals = [m for (dd, _), m in means.items() if dd == d and m == m]
        if len(vals) >= 2:
            spreads.append(max(vals) - min(vals))
    return mean(spreads), {f"{d}/{g}": m for (d, g), m in sorted(means.items())}


def run(ctx: Context) -> dict:
    prompts, errors = items(ctx.settings)
    record_errors(ctx, errors)
    scorers = {**ctx.toxicity_scorers, ctx.sentiment_scorer.name: ctx.sentiment_scorer}
    ids = {p["id"] for p in prompts}
    results = {}
    for method in ctx.settings.methods:
        sample_prompts(ctx, NAME, method, prompts)
        rows = [r for r in ctx.store.select(NAME, method) if r["id"] in ids]
        score_rows(ctx, rows, scorers)
        res: dict[str, Any] = {"n_prompts": len(prompts), "n_generations": len(rows)}
        for name in scorers:
            res[f"group_spread[{name}]"], res[f"group_means[{name}]"] = group_spread(rows, name)
        results[method] = res
    return results


def prompts_(ctx: Context):
    return [([p["prompt"] for p in items(ctx.settings)[0]], False)]


SUITE = register_suite(Suite(
    name=NAME,
    run=run,
    validate=_load,
    prompts=prompts_,
    backends=("hf", "vllm"),
    needs=frozenset({"toxicity", "sentiment"}),
    columns=(Column("tox. group spread [{scorer}]", "group_spread[{scorer}]", False),
             Column("sentiment group spread [{sent}]", "group_spread[{sent}]", False)),
    definition="group means of toxicity / sentiment per BOLD group; spread max - min per domain, mean over domains",
    description=__doc__.split("\n")[0],
))
