"""The ``debias-lm`` command line.

Subcommands: ``generate``, ``eval`` (the harness; ``eval occupational`` for the older single suite),
``bench``, ``ches``, ``uddia``, ``steer``, ``methods``, ``env``, ``serve``. Bad user input prints one line
(``debias-lm: error: ...``) and exits with code 2; it never prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import DebiasLMError, UserInputError
from ..utils.files import check_output_path, check_utf8_text, prepare_parent, read_text
from .types import FINITE, FRACTION, NON_NEGATIVE_INT, PORT, POSITIVE_INT, SEED, TEMPERATURE, TOP_P, number

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        raise UserInputError(f"{message} (see '{self.prog} --help')")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_config(method: str, sets: Sequence[str] = (), config_json: str | None = None):
    """A method config from its name plus ``--config JSON`` and ``--set field=value`` overrides."""
    from ..registry import get_method

    spec = get_method(method)
    data: dict[str, Any] = {}
    if config_json:
        if os.path.isfile(config_json):
            config_json = read_text(config_json, what="--config file")
        try:
            loaded = json.loads(config_json)
        except json.JSONDecodeError as e:
            raise UserInputError(f"--config is neither a JSON file nor JSON text: {e}") from None
        if not isinstance(loaded, dict):
            raise UserInputError("--config must be a JSON object")
        data.update(loaded)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserInputError(f"--set {item!r} is invalid: expected FIELD=VALUE, e.g. --set k=16")
        data[key.strip()] = _parse_value(value)
    data.setdefault("method", spec.name)
    try:
        return spec.config_cls.from_dict(data)
    except TypeError as e:
        raise UserInputError(f"invalid config for {spec.name!r}: {e}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="HF model id or local path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="use the tokenizer's chat template (default: when it has one)")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="prompt with raw text")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="debias-lm", description="Inference-time debiasing for LLMs and VLMs.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    g = sub.add_parser("generate", help="generate with a method, side by side with plain decoding")
    g.add_argument("--method", required=True, help="registered method name (see 'debias-lm methods')")
    _add_model_args(g)
    g.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    g.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=TEMPERATURE, default=1.0, help="sampling temperature (> 0)")
    g.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--top-k", type=NON_NEGATIVE_INT, default=None,
                   help="sample from the K most likely tokens (0: no top-k; default: the model's generation config)")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    g.add_argument("--config", help="method config as a JSON object or a JSON file")
    g.add_argument("--no-baseline", action="store_true", help="only the debiased output")
    g.add_argument("--json", metavar="OUT", help="also write the outputs to this JSON file")

    e = sub.add_parser("eval", help="evaluation harness: suites x methods, samples/results/report/plots",
                       description="debias-lm eval --suite toxicity,occupational --method none,nbls --out DIR "
                                   "(or the older 'debias-lm eval occupational ...')")
    _add_eval_args(e)
    esub = e.add_subparsers(dest="eval_command", metavar="SUITE", parser_class=_Parser)
    esub.required = False
    o = esub.add_parser("occupational", help="occupational gender bias vs U.S. BLS shares")
    _add_model_args(o)
    o.add_argument("--method", default="none", help="comma-separated: none, nbls (default none)")
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

    c = sub.add_parser("ches", help="score / filter DPO preference data by CHES (likelihood displacement)")
    csub = c.add_subparsers(dest="ches_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    for name, helptext in (("score", "score every pair; writes scores.parquet and manifest.json"),
                           ("filter", "score, then keep the lowest-scoring pairs; writes the filtered dataset too")):
        cp = csub.add_parser(name, help=helptext)
        cp.add_argument("--model", default="default", help="HF model id or local path (default: embedded model)")
        cp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model dtype (sums are accumulated in float32 either way)")
        cp.add_argument("--dataset", required=True, help="hub id, json/jsonl/parquet file or save_to_disk folder")
        cp.add_argument("--config", help="dataset config name (hub datasets)")
        cp.add_argument("--split", help="dataset split (default: train)")
        cp.add_argument("--revision", help="dataset revision (hub datasets)")
        cp.add_argument("--prompt-col")
        cp.add_argument("--chosen-col")
        cp.add_argument("--rejected-col")
        cp.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="pairs per forward pass")
        cp.add_argument("--max-length", type=number(int, lo=2), default=None,
                        help="TRL's max_length, keep_start truncation (default 1024, or the model's context length if smaller)")
        cp.add_argument("--on-prefix-mismatch", default="trl", choices=["trl", "skip"])
        cp.add_argument("--shard-size", type=POSITIVE_INT, default=512, help="rows per resumable shard")
        cp.add_argument("--streaming", action="store_true", help="read the dataset row by row (larger than memory)")
        cp.add_argument("--edit-distance", action="store_true",
                        help="also compute the normalised token edit-distance baseline (slow for long responses)")
        cp.add_argument("--out", required=True, metavar="DIR")
        cp.add_argument("--no-progress", action="store_true")
        if name == "filter":
            rule = cp.add_mutually_exclusive_group(required=True)
            rule.add_argument("--keep-fraction", type=FRACTION, help="keep this fraction with the lowest score (paper: 0.05)")
            rule.add_argument("--drop-top-fraction", type=FRACTION, help="drop this fraction with the highest score")
            rule.add_argument("--threshold", type=FINITE, help="keep pairs with score <= this value")
            cp.add_argument("--score", default="ln_ches", help="ln_ches (default), ches, neg_norm_edit_distance, "
                                                              "last_hidden_inner, reward_margin")
            cp.add_argument("--format", default="save_to_disk", choices=["save_to_disk", "parquet", "jsonl"])
            cp.add_argument("--keep-skipped", action="store_true", help="keep rows that could not be scored")

    b = sub.add_parser("bench", help="decoding overhead of every method vs plain decoding, side by side")
    b.add_argument("--method", default="nbls,uddia,debias_sampling",
                   help="comma-separated methods compared with plain decoding (default nbls,uddia,debias_sampling)")
    b.add_argument("--model", default="default", help="HF model id or local path (default: the embedded model)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.add_argument("--backend", default="hf,vllm", help="comma-separated: hf, vllm (default both)")
    b.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    b.add_argument("--max-new-tokens", type=POSITIVE_INT, default=32, help="generated tokens per row (fixed length)")
    b.add_argument("--repeats", type=POSITIVE_INT, default=3, help="interleaved rounds; the median time is reported")
    b.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="torch CPU threads (0: torch's default)")
    b.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="method config override, e.g. --set uddia.layer_step=0")
    b.add_argument("--out", metavar="FILE", help="also write the rows as JSON here")
    b.add_argument("--no-progress", action="store_true")

    from ..methods.uddia.cli import add_uddia_parser

    add_uddia_parser(sub, _Parser)
    from ..methods.steer.cli import register as register_steer

    register_steer(sub, _Parser)
    sub.add_parser("methods", help="list the registered methods")
    sub.add_parser("env", help="versions, device and which extras work")
    sv = sub.add_parser("serve", help="vLLM OpenAI-compatible server with the vllm_debias plugin loaded")
    sv.add_argument("--model", default="default", help="model path or id (default: the embedded SmolLM2-135M)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=PORT, default=8000)
    sv.add_argument("--dtype", default=None, help="vLLM --dtype (default: vLLM's choice)")
    sv.add_argument("--max-model-len", type=POSITIVE_INT, default=None)
    sv.add_argument("--nbls", action="store_true", help="ground every chat request (NBLS chat template)")
    sv.add_argument("--nbls-k", type=POSITIVE_INT, default=32, help="occupations in the NBLS grounding (default 32)")
    sv.add_argument("--steer", action="append", default=[], metavar="NAME=FILE",
                    help="serve steering vectors under NAME (repeatable; FILE may be a shipped short name); requests "
                         "opt in with vllm_xargs {\"debias_method\": \"steer\", \"debias_vectors\": NAME, ...}")
    sv.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    sv.add_argument("vllm_args", nargs=argparse.REMAINDER, help="further vLLM server arguments, after --")
    return p


def _add_eval_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--suite", metavar="S[,S]", help="comma-separated: toxicity, counterfactual, occupational, bbq-gender, "
                                   "pope-synthetic, fluency, overhead")
    e.add_argument("--method", dest="methods", default="none", metavar="M[,M]",
                   help="comma-separated: none, nbls, uddia, debias_sampling, steer (pope-synthetic: none, calibration, "
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


def _csv(raw: str | None) -> list[str]:
    return [x.strip() for x in (raw or "").split(",") if x.strip()]


def _int_csv(raw: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(raw))
    except ValueError:
        raise UserInputError(f"{flag} {raw!r} is invalid: expected comma-separated integers, e.g. 1,8") from None


def _method_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, field = key.strip().partition(".")
        if not eq or not dot or not method or not field:
            raise UserInputError(f"--set {item!r} is invalid: expected METHOD.FIELD=VALUE, e.g. uddia.layer_step=0")
        out.setdefault(method, {})[field] = _parse_value(value)
    return out


def cmd_eval(args) -> int:
    from ..eval.harness import DEFAULT_POPE_MODEL, EvalSettings
    from ..eval.run import run_eval

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
        suites=tuple(_csv(args.suite)), methods=tuple(_csv(args.methods)), model=args.eval_model,
        dtype=args.eval_dtype, backend=args.backend, out=args.eval_out, limit=args.limit, n_samples=args.eval_n_samples,
        max_new_tokens=args.eval_max_new_tokens, top_p=args.top_p, temperature=args.temperature,
        seed=args.eval_seed, batch_size=args.eval_batch_size, toxicity_scorers=tuple(_csv(args.toxicity_scorer)),
        sentiment_scorer=args.sentiment_scorer, regard_scorer=args.regard_scorer, ppl_model=args.ppl_model, datasets=datasets,
        method_overrides=_method_sets(args.eval_set), chat=args.eval_chat,
        occupational_probes=tuple(_csv(args.eval_probes)), occupational_samples=args.occupational_samples,
        pope_model=args.pope_model or DEFAULT_POPE_MODEL, bench_batches=_int_csv(args.bench_batch, "--bench-batch"),
        bench_new_tokens=args.bench_new_tokens, progress=not args.eval_no_progress,
    )
    payload = run_eval(settings)
    print(f"results: {args.eval_out}/results.json  report: {args.eval_out}/report.md  "
          f"samples: {args.eval_out}/samples.jsonl ({payload['counts']['rows']} rows)")
    return 0


def cmd_bench(args) -> int:
    import torch

    from ..eval.bench import check_bench_args, markdown, measure_hf, measure_vllm
    from ..eval.harness import method_config

    methods = _csv(args.method)
    backends = _csv(args.backend)
    batches = _int_csv(args.batch, "--batch")
    overrides = _method_sets(args.set)
    check_bench_args(methods, batches, backends, args.max_new_tokens, args.repeats)
    check_output_path(args.out, kind="file", flag="--out")
    for m in methods:
        if m != "none":
            method_config(m, overrides.get(m)).preflight()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if "hf" in backends:
        model, tok = __import__("debias_lm.models", fromlist=["load_model"]).load_model(args.model, dtype=args.dtype)
        rows += measure_hf(model, tok, methods, batches, new_tokens=args.max_new_tokens, repeats=args.repeats,
                           overrides=overrides, progress=not args.no_progress)
        del model
    if "vllm" in backends:
        from vllm_debias.serve import resolve_model

        rows += measure_vllm(resolve_model(args.model), methods, batches, new_tokens=args.max_new_tokens,
                             repeats=args.repeats, dtype=args.dtype, overrides=overrides, progress=not args.no_progress)
    print(markdown(rows))
    if args.out:
        from ..eval.harness import package_versions

        with open(prepare_parent(args.out), "w", encoding="utf-8") as fh:
            json.dump({"model": args.model, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
                       "packages": package_versions(), "rows": rows}, fh, indent=2)
            fh.write("\n")
    return 0


# ------------------------------------------------------------------------------------------------------
def _load(args):
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype)


def cmd_generate(args) -> int:
    import torch

    from ..hf.wrap import wrap

    if any(not p.strip() for p in args.prompt):
        raise UserInputError("--prompt is empty; pass the text to continue")
    for i, p in enumerate(args.prompt):
        check_utf8_text(p, f"--prompt {i + 1}" if len(args.prompt) > 1 else "--prompt")
    gen_kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        gen_kwargs.update(temperature=args.temperature, top_p=args.top_p)
        if args.top_k is not None:
            gen_kwargs["top_k"] = args.top_k
    elif args.top_k is not None or args.temperature != 1.0 or args.top_p != 1.0:
        raise UserInputError("--temperature, --top-p and --top-k apply to sampling: add --sample")
    config = build_config(args.method, args.set, args.config)
    config.preflight()
    check_output_path(args.json, kind="file", flag="--json")
    model, tok = _load(args)
    debiased = wrap(model, tok, config)  # validates method-specific inputs before any generation
    debiased.impl.check_prompts(list(args.prompt))
    plain = wrap(model, tok, "identity")
    for w in ([plain] if not args.no_baseline else []) + [debiased]:  # prompt + new tokens fit the model
        w.check_length(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens)
    results = {"model": args.model, "config": config.to_dict(), "generation": gen_kwargs, "outputs": []}
    base_out = None
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        base_out = plain.generate_text(args.prompt, chat=args.chat, **gen_kwargs)
    torch.manual_seed(args.seed)
    deb_out = debiased.generate_text(args.prompt, chat=args.chat, **gen_kwargs)
    for i, prompt in enumerate(args.prompt):
        row = {"prompt": prompt, "debiased": deb_out[i]}
        print(f"=== prompt: {prompt}")
        if base_out is not None:
            row["plain"] = base_out[i]
            print(f"--- plain:\n{base_out[i].strip()}")
        print(f"--- {config.method}:\n{deb_out[i].strip()}\n")
        results["outputs"].append(row)
    if args.json:
        with open(prepare_parent(args.json), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
    return 0


def cmd_eval_occupational(args) -> int:
    from ..eval.occupational import PROBES, read_occupations_file, resolve_occupations
    from ..eval.report import run_occupational_suite

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    probes = [p.strip() for p in args.probe.split(",") if p.strip()]
    for m in methods:
        if m not in ("none", "nbls"):
            raise UserInputError(f"--method {m!r} is not supported by the occupational suite: use none, nbls")
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
    if "nbls" in methods:  # k too large for what is left after excluding the evaluated set: fail early
        from ..methods.nbls import NBLSConfig

        NBLSConfig(k=args.k, seed=args.grounding_seed, exclude=tuple(o.name for o in occs)).grounding()
    model, tok = _load(args)
    results = run_occupational_suite(
        model, tok, methods=methods, probes=probes, occupations=[o.name for o in occs], k=args.k,
        grounding_seed=args.grounding_seed, chat=args.chat, n_samples=args.n_samples,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        model_name=args.model, out_dir=args.out, progress=not args.no_progress,
    )
    if args.json:
        results[0].save(prepare_parent(args.json))
    return 0


def cmd_ches(args) -> int:
    from .. import ches
    from ..ches.selection import SCORES

    out_dir = check_output_path(args.out, kind="dir", flag="--out")
    selection_args = {}
    if args.ches_command == "filter":
        if args.score not in SCORES:
            raise UserInputError(f"--score {args.score!r} is invalid: expected one of {', '.join(SCORES)}")
        target_name = {"save_to_disk": "filtered", "parquet": "filtered.parquet", "jsonl": "filtered.jsonl"}[args.format]
        check_output_path(out_dir / target_name, kind="dir" if args.format == "save_to_disk" else "file",
                          flag=f"--out (its {target_name})")
        selection_args = {"keep_fraction": args.keep_fraction, "drop_top_fraction": args.drop_top_fraction,
                          "threshold": args.threshold, "score": args.score, "keep_skipped": args.keep_skipped}
    ds = ches.load_preference_dataset(args.dataset, args.config, args.split, args.revision, streaming=args.streaming,
                                      progress=not args.no_progress)
    from ..ches.run import column_names

    ches.detect_columns(column_names(ds), args.prompt_col, args.chosen_col, args.rejected_col)  # before the model
    model, tok = _load(args)
    from ..hf.base import context_length

    ctx = context_length(model)
    max_length = args.max_length if args.max_length is not None else min(1024, ctx or 1024)
    args.max_length = max_length  # recorded in the manifest as used
    fingerprint = (ches.source_fingerprint(args.dataset, args.config, args.split, args.revision)
                   if args.streaming else None)
    scores = ches.score_dataset(
        model, tok, ds, prompt_col=args.prompt_col, chosen_col=args.chosen_col, rejected_col=args.rejected_col,
        batch_size=args.batch_size, max_length=max_length, on_prefix_mismatch=args.on_prefix_mismatch,
        out_dir=args.out, shard_size=args.shard_size, model_name=args.model, dtype=args.dtype,
        fingerprint=fingerprint, edit_distance=args.edit_distance, progress=not args.no_progress,
    )
    rank, _ = ches.dist_info()
    if rank != 0:  # data-parallel: process 0 writes the merged outputs
        return 0
    arguments = {k: v for k, v in vars(args).items() if k not in ("func",)}
    sel = ches.select(scores, **selection_args) if selection_args else None
    manifest = ches.build_manifest(arguments=arguments, dataset=ds, model_name=args.model, dtype=args.dtype,
                                   tokenizer=tok, scores=scores, selection=sel)
    out = ches.write_scores(args.out, scores, manifest)
    counts = manifest["counts"]
    print(f"scored {counts['scored']} of {counts['rows']} pairs ({counts['skipped']} skipped: "
          f"{ {k: v for k, v in counts['by_status'].items() if k != 'ok'} })")
    if sel is not None:
        target = out / target_name
        if args.streaming:
            ches.save_filtered_stream(ds, set(sel.keep), target, args.format)
        else:
            ches.save_dataset(ches.filter_dataset(ds, sel), target, args.format)
        print(f"kept {sel.n_kept} pairs ({args.score} <= {sel.cut_value:.6g}); filtered dataset: {target}")
    print(f"scores: {out / 'scores.parquet'}  manifest: {out / 'manifest.json'}")
    return 0


def cmd_methods(args) -> int:
    from ..registry import list_methods

    print(f"{'method':<18}{'vllm':<9}description")
    for spec in list_methods():
        print(f"{spec.name:<18}{spec.vllm:<9}{spec.description}")
    return 0


def cmd_serve(args) -> int:
    """Run vLLM's OpenAI-compatible server with the plugin (see plugins/vllm_debias/serve.py)."""
    import shlex
    import subprocess

    from vllm_debias.serve import server_command, server_env

    from ..methods.nbls import NBLSConfig

    extra = [a for a in args.vllm_args if a != "--"] if args.vllm_args else []
    steer = None
    if args.steer:  # every file checked against the model before the server starts
        from vllm_debias.steer.vectors import check_served_model, parse_specs

        steer = parse_specs(args.steer)
        check_served_model(steer, args.model)
    cmd = server_command(args.model, host=args.host, port=args.port, dtype=args.dtype,
                         max_model_len=args.max_model_len,
                         nbls_config=NBLSConfig(k=args.nbls_k) if args.nbls else None, extra=extra, steer=steer)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd, env=server_env(model=args.model, steer=steer))


def cmd_env(args) -> int:
    from ..utils.env import environment_report

    for key, value in environment_report().items():
        print(f"{key:<22}{value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "eval":
            return cmd_eval_occupational(args) if args.eval_command == "occupational" else cmd_eval(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "ches":
            return cmd_ches(args)
        if args.command == "uddia":
            from ..methods.uddia.cli import cmd_uddia

            return cmd_uddia(args)
        if args.command == "steer":
            from ..methods.steer.cli import run as run_steer

            return run_steer(args)
        if args.command == "methods":
            return cmd_methods(args)
        if args.command == "env":
            return cmd_env(args)
        if args.command == "serve":
            return cmd_serve(args)
        raise UserInputError(f"unknown command {args.command!r}")
    except (DebiasLMError, ValueError) as e:
        msg = " ".join(str(e).split())
        print(f"debias-lm: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("debias-lm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
