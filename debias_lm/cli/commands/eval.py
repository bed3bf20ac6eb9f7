"""``debias-lm eval``: the evaluation harness (suites x methods), and ``eval occupational``, the older single suite."""

from __future__ import annotations

import argparse
import os

from ...errors import UserInputError
from ...evaluation.settings import csv_tuple
from ...utils.files import check_output_path, prepare_parent, read_text
from ..flags import (
    Parser,
    add_dataclass_flags,
    add_model_flags,
    load_model_from_args,
    method_sets,
    settings_from_args,
)
from ..types import NON_NEGATIVE_INT, POSITIVE_INT, SEED


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluation harness: suites x methods, samples/results/report/plots",
                       description="debias-lm eval --suite toxicity,occupational --method none,nbls --out DIR "
                                   "(or the older 'debias-lm eval occupational ...')")
    _add_eval_args(e)
    e.set_defaults(run=run)
    esub = e.add_subparsers(dest="eval_command", metavar="SUITE", parser_class=Parser)
    esub.required = False
    o = esub.add_parser("occupational", help="occupational gender bias vs U.S. BLS shares")
    add_model_flags(o)
    o.add_argument("--method", default="none",
                   help="comma-separated arms: none, nbls_instructions (the grounding's wording, no figures), "
                        "nbls_shuffled (figures permuted across occupations), nbls (default none)")
    o.add_argument("--probe", default="likelihood", help="comma-separated: likelihood, generation")
    o.add_argument("--occupations", metavar="FILE", help="one BLS occupation name per line")
    o.add_argument("--occupation", action="append", default=[], metavar="NAME", help="an occupation (repeatable)")
    o.add_argument("--k", type=POSITIVE_INT, default=32, help="NBLS grounding instances (default 32)")
    o.add_argument("--grounding-seed", type=SEED, default=0, help="NBLS instance-selection seed")
    o.add_argument("--n-samples", type=POSITIVE_INT, default=10, help="generation probe: samples per occupation")
    o.add_argument("--max-new-tokens", type=POSITIVE_INT, default=20, help="generation probe: tokens per sample")
    o.add_argument("--seed", type=SEED, default=0, help="generation probe sampling seed")
    o.add_argument("--batch-size", type=POSITIVE_INT, default=8)
    o.add_argument("--json", metavar="OUT", help="write the result JSON (one method and one probe)")
    o.add_argument("--out", metavar="DIR", help="write every result, report.md and a scatter plot here")
    o.add_argument("--no-progress", action="store_true")


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
    return run_occupational(args) if args.eval_command == "occupational" else run_harness(args)


def run_harness(args) -> int:
    from ...evaluation.runner import run_eval
    from ...evaluation.settings import EvalSettings

    if not args.suites:
        raise UserInputError("debias-lm eval needs --suite NAME[,NAME] (or the 'occupational' subcommand)")
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
    print(f"results: {args.out}/results.json  report: {args.out}/report.md  "
          f"samples: {args.out}/samples.jsonl ({payload['counts']['rows']} rows)")
    return 0


def run_occupational(args) -> int:
    from ...evaluation.suites.occupational import (
        ARMS,
        PROBES,
        arm_config,
        read_occupations_file,
        resolve_occupations,
    )
    from ...evaluation.suites.occupational.standalone import check_out_dir, run_occupational_suite

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    probes = [p.strip() for p in args.probe.split(",") if p.strip()]
    for m in methods:
        arm_config(m)  # unknown arms: one line naming the valid ones
    if len(set(methods)) != len(methods):
        raise UserInputError(f"--method lists an arm twice: {args.method!r}")
    for p in probes:
        if p not in PROBES:
            raise UserInputError(f"--probe {p!r} is invalid: expected one of {', '.join(PROBES)}")
    if not methods or not probes:
        raise UserInputError("--method and --probe need at least one value")
    if args.json and (len(methods) > 1 or len(probes) > 1):
        raise UserInputError("--json takes one method and one probe; use --out DIR for several")
    check_output_path(args.json, kind="file", flag="--json")
    check_output_path(args.out, kind="dir", flag="--out")
    names = list(args.occupation)
    if args.occupations:
        if os.path.isfile(args.occupations):
            read_text(args.occupations, what="occupations file")  # bytes that are not UTF-8: file and line
        names = read_occupations_file(args.occupations) + names
    occs = resolve_occupations(names or None)  # unknown names fail here, before the model loads
    for m in methods:  # k too large for what is left after excluding the evaluated set (and relatives): fail early
        if ARMS[m] is not None:
            cfg = arm_config(m, k=args.k, seed=args.grounding_seed)
            cfg.replace(exclude=tuple(o.name for o in occs)).grounding()
    if args.out:
        check_out_dir(args.out)  # a directory of another run: refused before the model loads
    model, tok = load_model_from_args(args)
    results = run_occupational_suite(
        model, tok, methods=methods, probes=probes, occupations=[o.name for o in occs], k=args.k,
        grounding_seed=args.grounding_seed, chat=args.chat, n_samples=args.n_samples,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        model_name=args.model, out_dir=args.out, progress=not args.no_progress,
    )
    if args.json:
        results[0].save(prepare_parent(args.json))
    return 0
