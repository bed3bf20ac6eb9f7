"""``debias-lm ches score|filter``: CHES scores of DPO preference pairs, and the filtered dataset."""

from __future__ import annotations

from ...errors import UserInputError
from ...utils.files import check_output_path
from ..flags import Parser, load_model_from_args
from ..types import FINITE, FRACTION, POSITIVE_INT, number


def register(sub) -> None:
    c = sub.add_parser("ches", help="score / filter DPO preference data by CHES (likelihood displacement)")
    c.set_defaults(run=run)
    csub = c.add_subparsers(dest="ches_command", metavar="ACTION", parser_class=Parser)
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


def run(args) -> int:
    from ... import ches
    from ...ches.selection import SCORES

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
    from ...ches.run import column_names

    ches.detect_columns(column_names(ds), args.prompt_col, args.chosen_col, args.rejected_col)  # before the model
    model, tok = load_model_from_args(args)
    from ...hf.base import context_length

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
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "run")}
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
