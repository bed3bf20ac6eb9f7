"""``debias-lm eval``: the evaluation harness (suites x methods), and ``eval occupational``, the older single suite."""

from __future__ import annotations

import argparse
import os

from ...errors import UserInputError
from ...utils.files import check_output_path, prepare_parent, read_text
from ..flags import Parser, add_model_flags, csv_list, int_csv, load_model_from_args, method_sets
from ..types import NON_NEGATIVE_INT, POSITIVE_INT, SEED, TEMPERATURE, TOP_P


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
    e.add_argument("--suite", metavar="S[,S]", help="comma-separated: toxicity, counterfactual, occupational, bbq-gender, "
                                   "pope-synthetic, fluency, overhead")
    e.add_argument("--method", dest="methods", default="none", metavar="M[,M]",
                   help="comma-separated: none, nbls, uddia, debias_sampling (pope-synthetic: none, calibration, "
                        "debias_sampling, debias_sampling+calibration); default none")
    e.add_argument("--model", dest="eval_model", default="default", metavar="M",
                   help="HF model id or local path (default: the embedded SmolLM2-135M-Instruct)")
    e.add_argument("--dtype", dest="eval_dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="generation engine (default hf)")
    e.add_argument("--out", dest="eval_out", metavar="DIR", help="run directory (a rerun resumes it)")
    e.add_argument("--limit", type=POSITIVE_INT, help="items per suite: prompts, pairs, occupations, questions")
    e.add_argument("--n-samples", dest="eval_n_samples", type=POSITIVE_INT, default=25, metavar="K", help="samples per prompt (default 25, the RTP protocol)")
    e.add_argument("--max-new-tokens", dest="eval_max_new_tokens", type=POSITIVE_INT, default=20, metavar="N")
    e.add_argument("--top-p", type=TOP_P, default=0.9)
    e.add_argument("--temperature", type=TEMPERATURE, default=1.0)
    e.add_argument("--seed", dest="eval_seed", type=SEED, default=0, metavar="S")
    e.add_argument("--batch-size", dest="eval_batch_size", type=POSITIVE_INT, default=16, metavar="B", help="rows per generate call")
    e.add_argument("--toxicity-scorer", default="hatesonar,profanity-check",
                   help="comma-separated toxicity scorers (see debias_lm.eval.scorers; e.g. detoxify:original, "
                        "hf:unitary/toxic-bert)")
    e.add_argument("--sentiment-scorer", default="vader")
    e.add_argument("--regard-scorer", default="", help="counterfactual suite: also the regard gap, e.g. regard "
                                                      "(sasha/regardv3) or regard:LOCAL_DIR")
    e.add_argument("--ppl-model", default="", help="scorer LM for perplexity (default: the evaluated model)")
    e.add_argument("--dataset", action="append", default=[], metavar="SUITE=SPEC",
                   help="dataset of a suite, e.g. toxicity=rtp:prompts.jsonl, bbq-gender=bbq:BBQ.jsonl, "
                        "counterfactual=pairs.jsonl")
    e.add_argument("--set", dest="eval_set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="method config override, e.g. --set uddia.layer_step=0")
    e.add_argument("--probe", dest="eval_probes", default="likelihood,generation", metavar="P[,P]", help="occupational probes")
    e.add_argument("--occupational-samples", type=POSITIVE_INT, default=10, help="generation probe samples per occupation")
    e.add_argument("--pope-model", default=None, help="biased synthetic VLM dir (default results/pope_synthetic/model)")
    e.add_argument("--bench-batch", default="1,8", help="overhead suite batch sizes")
    e.add_argument("--bench-new-tokens", type=POSITIVE_INT, default=32)
    e.add_argument("--threads", dest="eval_threads", type=NON_NEGATIVE_INT, default=0, metavar="T", help="torch CPU threads (0: default)")
    chat = e.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="eval_chat", action="store_true", default=None,
                      help="prompt bbq-gender / occupational through the chat template (default: when there is one)")
    chat.add_argument("--no-chat", dest="eval_chat", action="store_false")
    e.add_argument("--no-progress", dest="eval_no_progress", action="store_true")


def run(args) -> int:
    return run_occupational(args) if args.eval_command == "occupational" else run_harness(args)


def run_harness(args) -> int:
    from ...eval.harness import DEFAULT_POPE_MODEL, EvalSettings
    from ...eval.run import run_eval

    if not args.suite:
        raise UserInputError("debias-lm eval needs --suite NAME[,NAME] (or the 'occupational' subcommand)")
    if not args.eval_out:
        raise UserInputError("debias-lm eval needs --out DIR (the run directory; a rerun resumes it)")
    check_output_path(args.eval_out, kind="dir", flag="--out")
    datasets = {}
    for item in args.dataset:
        suite, eq, spec = item.partition("=")
        if not eq or not spec.strip():
            raise UserInputError(f"--dataset {item!r} is invalid: expected SUITE=SPEC, e.g. toxicity=rtp:FILE")
        datasets[suite.strip()] = spec.strip()
    if args.eval_threads:
        import torch

        torch.set_num_threads(args.eval_threads)
    settings = EvalSettings(
        suites=tuple(csv_list(args.suite)), methods=tuple(csv_list(args.methods)), model=args.eval_model,
        dtype=args.eval_dtype, backend=args.backend, out=args.eval_out, limit=args.limit, n_samples=args.eval_n_samples,
        max_new_tokens=args.eval_max_new_tokens, top_p=args.top_p, temperature=args.temperature,
        seed=args.eval_seed, batch_size=args.eval_batch_size, toxicity_scorers=tuple(csv_list(args.toxicity_scorer)),
        sentiment_scorer=args.sentiment_scorer, regard_scorer=args.regard_scorer, ppl_model=args.ppl_model, datasets=datasets,
        method_overrides=method_sets(args.eval_set), chat=args.eval_chat,
        occupational_probes=tuple(csv_list(args.eval_probes)), occupational_samples=args.occupational_samples,
        pope_model=args.pope_model or DEFAULT_POPE_MODEL, bench_batches=int_csv(args.bench_batch, "--bench-batch"),
        bench_new_tokens=args.bench_new_tokens, progress=not args.eval_no_progress,
    )
    payload = run_eval(settings)
    print(f"results: {args.eval_out}/results.json  report: {args.eval_out}/report.md  "
          f"samples: {args.eval_out}/samples.jsonl ({payload['counts']['rows']} rows)")
    return 0


def run_occupational(args) -> int:
    from ...eval.occupational import ARMS, PROBES, arm_config, read_occupations_file, resolve_occupations
    from ...eval.report import check_out_dir, run_occupational_suite

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
