"""``debias-lm eval``: the evaluation harness (suites x methods); prints each suite's table and writes the run."""

from __future__ import annotations

import argparse

from ...errors import UserInputError
from ...evaluation.settings import csv_tuple
from ...utils.files import check_output_path
from ..flags import (
    add_dataclass_flags,
    method_sets,
    settings_from_args,
)
from ..types import NON_NEGATIVE_INT


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluation harness: suites x methods, samples/results/report/plots",
                       description="debias-lm eval --suite toxicity,occupational --method none,nbls --out DIR")
    _add_eval_args(e)
    e.set_defaults(run=run)


def _add_eval_args(e: argparse.ArgumentParser) -> None:
    """The harness flags: generated from the fields of ``EvalSettings`` (flag and help live on each field), plus
    the few that are not one field each."""
    from ...evaluation.settings import EvalSettings
    from ...evaluation.suites import suite_names

    e.add_argument("--suite", dest="suites", metavar="S[,S]", help="comma-separated: " + ", ".join(suite_names()))
    e.add_argument("--out", metavar="DIR", help="run directory (a rerun resumes it)")
    add_dataclass_flags(e, EvalSettings, exclude=("suites", "out"))
    e.add_argument("--dataset", action="append", default=[], metavar="SUITE=SPEC",
                   help="dataset of a suite, e.g. toxicity=rtp:prompts.jsonl, bbq-gender=bbq:BBQ.jsonl, "
                        "counterfactual=pairs.jsonl, crows-pairs=crows_pairs_anonymized.csv, stereoset=dev.json, "
                        "bold=prompts/")
    e.add_argument("--set", dest="eval_set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="method config override, e.g. --set uddia.layer_step=0")
    e.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, metavar="T", help="torch CPU threads (0: default)")
    chat = e.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="prompt bbq-gender / occupational through the chat template (default: when there is one)")
    chat.add_argument("--no-chat", dest="chat", action="store_false")


def run(args) -> int:
    from ...evaluation.report import suite_table
    from ...evaluation.runner import run_eval
    from ...evaluation.settings import EvalSettings
    from ...evaluation.suites import get_suite

    if not args.suites:
        raise UserInputError("debias-lm eval needs --suite NAME[,NAME]")
    if not args.out:
        raise UserInputError("debias-lm eval needs --out DIR (the run directory; a rerun resumes it)")
    check_output_path(args.out, kind="dir", flag="--out")
    datasets = {}
    for item in args.dataset:
        suite, eq, spec = item.partition("=")
        if not eq or not spec.strip():
            raise UserInputError(f"--dataset {item!r} is invalid: expected SUITE=SPEC, e.g. toxicity=rtp:FILE")
        datasets[suite.strip()] = spec.strip()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = settings_from_args(EvalSettings, args, suites=csv_tuple(args.suites), datasets=datasets,
                                  method_overrides=method_sets(args.eval_set))
    payload = run_eval(settings)
    for name, by_method in payload["results"].items():  # each suite's table, as in report.md
        suite = get_suite(name)
        print(("" if suite.table else f"{name}:\n") + suite_table(suite, by_method, payload))
    print(f"results: {args.out}/results.json  report: {args.out}/report.md  "
          f"samples: {args.out}/samples.jsonl ({payload['counts']['rows']} rows)")
    return 0
