"""crows-pairs: CrowS-Pairs (Nangia et al. 2020) on the file you provide
(``--dataset crows-pairs=crows_pairs_anonymized.csv``, the published CSV). For every well-formed pair the
summed log-likelihood of the more and of the less stereotypical sentence under the evaluated model (read after
a prompt method's transform); pct_stereotype (50 ideal) and mean |LL difference|, overall and per direction.
Definitions: ``debias_lm.metrics.stereotype`` (lm-eval's causal-LM variant, not the paper's masked-LM score)."""

from __future__ import annotations

from ..common import seeded_subset
from . import Column, Context, Suite, register_suite
from .common import likelihood_method, record_errors, sentence_scores, user_dataset

NAME = "crows-pairs"
WHERE = "crows_pairs_anonymized.csv from https://github.com/nyu-mll/crows-pairs (data/)"


def _load(settings):
    return user_dataset(settings, NAME, "crows-pairs", WHERE)


def run(ctx: Context) -> dict:
    from ...metrics.stereotype import crows_pairs_metrics

    s = ctx.settings
    loaded = _load(s)
    record_errors(ctx, [{"suite": NAME, "method": "-", "id": r.id, "error": r.error} for r in loaded.records if r.error])
    items = seeded_subset([r for r in loaded.records if not r.error], s.limit, s.seed)
    results = {}
    for method in s.methods:
        todo = [r for r in items if not ctx.store.has(NAME, method, r.id)]
        if todo:
            ll = sentence_scores(ctx, method, [t for r in todo for t in (r.data["sent_more"], r.data["sent_less"])])
            ctx.store.add([{"suite": NAME, "method": method, "id": r.id, "sample": 0, "ll_more": ll[2 * i],
                            "ll_less": ll[2 * i + 1], "direction": r.data["direction"],
                            "bias_type": r.data["bias_type"]} for i, r in enumerate(todo)])
        rows = {r["id"]: r for r in ctx.store.select(NAME, method)}
        done = [rows[r.id] for r in items if r.id in rows]
        results[method] = crows_pairs_metrics([r["ll_more"] for r in done], [r["ll_less"] for r in done],
                                              direction=[r["direction"] for r in done])
    return results


SUITE = register_suite(Suite(
    name=NAME,
    run=run,
    accepts=likelihood_method,
    validate=_load,
    columns=(Column("% stereotypical preferred (50 ideal)", "pct_stereotype", None),
             Column("mean |LL diff|", "mean_abs_ll_diff", None), Column("pairs", "n", None)),
    definition="debias_lm.metrics.stereotype.crows_pairs_metrics (pct LL(more) > LL(less); mean |diff|)",
    description=__doc__.split("\n")[0],
))
