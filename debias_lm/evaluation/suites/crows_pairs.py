"""crows-pairs: CrowS-Pairs (Nangia et al. 2020) on the file you provide
(``--dataset crows-pairs=crows_pairs_anonymized.csv``, the published CSV). For every well-formed pair the
summed log-likelihood of the more and of the less stereotypical sentence under the evaluated model (read after
a prompt method's transform); pct_stereotype (50 ideal) and mean |LL difference|, overall and per direction.
Definitions: ``debias_lm.metrics.stereotype`` (lm-eval's causal-LM variant, not the paper's masked-LM score)."""

from __future__ import annotations

from . import Column, Context, Suite, register_suite
from .common import likelihood_method, sentence_likelihood_rows, user_dataset

NAME = "crows-pairs"
WHERE = "crows_pairs_anonymized.csv from https://github.com/nyu-mll/crows-pairs (data/)"


def _load(settings):
    return user_dataset(settings, NAME, NAME, WHERE)


def run(ctx: Context) -> dict:
    from ...metrics.stereotype import crows_pairs_metrics

    rows = sentence_likelihood_rows(ctx, NAME, WHERE, {"ll_more": "sent_more", "ll_less": "sent_less"},
                                    lambda r: {"direction": r.data["direction"], "bias_type": r.data["bias_type"]})
    return {method: crows_pairs_metrics([r["ll_more"] for r in done], [r["ll_less"] for r in done],
                                        direction=[r["direction"] for r in done])
            for method, done in rows.items()}


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
