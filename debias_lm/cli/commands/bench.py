"""``debias-lm bench``: decoding overhead of every method vs plain decoding, side by side."""

from __future__ import annotations

import json

from ...utils.files import check_output_path, prepare_parent
from ..flags import csv_list, int_csv, load_model_from_args, method_sets
from ..types import NON_NEGATIVE_INT, POSITIVE_INT


def register(sub) -> None:
    b = sub.add_parser("bench", help="decoding overhead of every method vs plain decoding, side by side")
    b.add_argument("--method", default=None,
                   help="comma-separated methods compared with plain decoding (default: every registered method that "
                        "generates text)")
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
    b.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ...evaluation.backends import vllm_model_path
    from ...evaluation.bench import check_bench_args, markdown, measure_hf, measure_vllm
    from ...evaluation.settings import is_baseline, method_config, text_methods

    methods = text_methods() if args.method is None else csv_list(args.method)
    backends = csv_list(args.backend)
    batches = int_csv(args.batch, "--batch")
    overrides = method_sets(args.set)
    check_bench_args(methods, batches, backends, args.max_new_tokens, args.repeats)
    check_output_path(args.out, kind="file", flag="--out")
    for m in methods:
        if not is_baseline(m):
            method_config(m, overrides.get(m)).preflight()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if "hf" in backends:
        model, tok = load_model_from_args(args)
        rows += measure_hf(model, tok, methods, batches, new_tokens=args.max_new_tokens, repeats=args.repeats,
                           overrides=overrides, progress=not args.no_progress)
        del model
    if "vllm" in backends:
        rows += measure_vllm(vllm_model_path(args.model), methods, batches, new_tokens=args.max_new_tokens,
                             repeats=args.repeats, dtype=args.dtype, overrides=overrides, progress=not args.no_progress)
    print(markdown(rows))
    if args.out:
        from ...utils.provenance import package_versions

        with open(prepare_parent(args.out), "w", encoding="utf-8") as fh:
            json.dump({"model": args.model, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
                       "packages": package_versions(), "rows": rows}, fh, indent=2)
            fh.write("\n")
    return 0
