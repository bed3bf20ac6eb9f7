"""stereoset: StereoSet (Nadeem et al. 2021) intrasentence items on the file you provide
(``--dataset stereoset=dev.json``, the published JSON). For every well-formed item the summed log-likelihood of
its stereotype, anti-stereotype and unrelated sentence under the evaluated model (read after a prompt method's
transform); LMS, SS (50 ideal) and ICAT, macro-averaged over target terms as the official scorer does.
Definitions: ``debias_lm.metrics.stereotype``."""

from __future__ import annotations

from . import Column, Context, Suite, register_suite
from .common import likelihood_method, sentence_likelihood_rows, user_dataset

NAME = "stereoset"
WHERE = "dev.json from https://github.com/moinnadeem/StereoSet (data/)"
KEYS = ("stereotype", "anti_stereotype", "unrelated")


def _load(settings):
    return user_dataset(settings, NAME, NAME, WHERE)


def run(ctx: Context) -> dict:
    from ...metrics.stereotype import stereoset_metrics

    rows = sentence_likelihood_rows(ctx, NAME, WHERE, {f"ll_{k}": k for k in KEYS},
                                    lambda r: {"target": r.data["target"], "bias_type": r.data["bias_type"]})
    return {method: stereoset_metrics(*([r[f"ll_{k}"] for r in done] for k in KEYS),
                                      targets=[r["target"] for r in done])
            for method, done in rows.items()}


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
