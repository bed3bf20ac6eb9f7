"""stereoset: StereoSet (Nadeem et al. 2021) intrasentence items on the file you provide
(``--dataset stereoset=dev.json``, the published JSON). For every well-formed item the summed log-likelihood of
its stereotype, anti-stereotype and unrelated sentence under the evaluated model (read after a prompt method's
transform); LMS, SS (50 ideal) and ICAT, macro-averaged over target terms as the official scorer does.
Definitions: ``debias_lm.metrics.stereotype``."""

from __future__ import annotations

from ..common import seeded_subset
from . import Column, Context, Suite, register_suite
from .common import likelihood_method, record_errors, sentence_scores, user_dataset

NAME = "stereoset"
WHERE = "dev.json from https://github.com/moinnadeem/StereoSet (data/)"
KEYS = ("stereotype", "anti_stereotype", "unrelated")


def _load(settings):
    return user_dataset(settings, NAME, "stereoset", WHERE)


def run(ctx: Context) -> dict:
    from ...metrics.stereotype import stereoset_metrics

    s = ctx.settings
    loaded = _load(s)
    record_errors(ctx, [{"suite": NAME, "method": "-", "id": r.id, "error": r.error} for r in loaded.records if r.error])
    items = seeded_subset([r for r in loaded.records if not r.error], s.limit, s.seed)
    results = {}
    for method in s.methods:
        todo = [r for r in items if not ctx.store.has(NAME, method, r.id)]
        if todo:
            ll = sentence_scores(ctx, method, [r.data[k] for r in todo for k in KEYS])
            ctx.store.add([{"suite": NAME, "method": method, "id": r.id, "sample": 0, "target": r.data["target"],
                            "bias_type": r.data["bias_type"], **{f"ll_{k}": ll[3 * i + j] for j, k in enumerate(KEYS)}}
                           for i, r in enumerate(todo)])
        rows = {r["id"]: r for r in ctx.store.select(NAME, method)}
        done = [rows[r.id] for r in items if r.id in rows]
        results[method] = stereoset_metrics(*([r[f"ll_{k}"] for r in done] for k in KEYS),
                                            targets=[r["target"] for r in done])
    return results


SUITE = register_suite(Suite(
    name=NAME,
    run=run,
    accepts=likelihood_method,
    validate=_load,
    columns=(Column("LMS", "lms", True), Column("SS (50 ideal)", "ss", None), Column("ICAT", "icat", True),
             Column("items", "n", None)),
    definition="debias_lm.metrics.stereotype.stereoset_metrics (LMS, SS, ICAT; macro over target terms)",
    description=__doc__.split("\n")[0],
))
