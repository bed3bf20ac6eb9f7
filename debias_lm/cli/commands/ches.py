"""``debias-lm ches score|filter``: CHES scores of DPO preference pairs, and the filtered dataset.

The flags are generated from :class:`debias_lm.ches.ScoreSettings` / :class:`~debias_lm.ches.FilterSettings`;
the run is :func:`debias_lm.ches.score_preferences` / :func:`~debias_lm.ches.filter_preferences`.
"""

from __future__ import annotations

from ..flags import Parser, add_dataclass_flags, settings_from_args

ACTIONS = {"score": "score every pair; writes scores.parquet and manifest.json",
           "filter": "score, then keep the lowest-scoring pairs; writes the filtered dataset too"}


def register(sub) -> None:
    from ...ches.pipeline import FilterSettings, ScoreSettings

    c = sub.add_parser("ches", help="score / filter DPO preference data by CHES (likelihood displacement)")
    c.set_defaults(run=run)
    csub = c.add_subparsers(dest="ches_command", metavar="ACTION", parser_class=Parser)
    csub.required = True
    for name, helptext in ACTIONS.items():
        add_dataclass_flags(csub.add_parser(name, help=helptext), FilterSettings if name == "filter" else ScoreSettings)


def run(args) -> int:
    from ...ches.pipeline import FilterSettings, ScoreSettings, filter_preferences, score_preferences

    if args.ches_command == "filter":
        result = filter_preferences(settings_from_args(FilterSettings, args))
    else:
        result = score_preferences(settings_from_args(ScoreSettings, args))
    if not result.written:  # a non-zero rank of a data-parallel launch: rank 0 reports
        return 0
    counts = result.manifest["counts"]
    print(f"scored {counts['scored']} of {counts['rows']} pairs ({counts['skipped']} skipped: "
          f"{ {k: v for k, v in counts['by_status'].items() if k != 'ok'} })")
    if result.selection is not None:
        print(f"kept {result.selection.n_kept} pairs ({result.settings.score} <= {result.selection.cut_value:.6g}); "
              f"filtered dataset: {result.filtered_path}")
    print(f"scores: {result.scores_path}  manifest: {result.manifest_path}")
    return 0
