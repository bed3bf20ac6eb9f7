"""UDDIA cost vs plain decoding on the embedded model: counted passes per token and tokens/s at batch 1 and 8.

    nice -n 10 .venv/bin/python eval/uddia/cost.py --out eval/uddia/results/cost.json

The first 8 toxicity-prone prompts (batch 1: the first --prompts-bs1, one at a time), 20 new tokens forced (min_new_tokens = max_new_tokens, so every run generates
the same number of tokens), nucleus p = 0.9, fp32, one torch thread. Runs are interleaved (plain, UDDIA,
plain, UDDIA, ...) and the best of --repeats is kept for each, so background load hits both alike.
Counted per *kept* generated token (row level): forward passes of the decoding loop and backward passes,
over all redo attempts; forward-equivalents = forwards + 2 x backwards (a backward counted as two forwards,
an upper bound since it only covers the tuned path). Prefill and the one perplexity pass per attempt (a
single parallel forward over prompt + continuation) are reported separately. Plain decoding is 1 forward
per token by the same count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "debias_lm" / "data" / "eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="t,u")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prompts-bs1", type=int, default=4, help="prompts for the batch-1 runs (one at a time)")
    ap.add_argument("--no-redo-variants", default="t", help="variants also measured with redo off")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "cost.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import debias_lm as dl

    model, tok = dl.load_default_model(dtype="float32")
    all_prompts = [json.loads(x)["prompt"] for x in (DATA / "toxicity_prompts.jsonl").open()][:8]
    n_new = args.max_new_tokens
    gen = {"do_sample": True, "top_p": 0.9, "top_k": 0, "max_new_tokens": n_new, "min_new_tokens": n_new,
           "pad_token_id": tok.pad_token_id}
    configs = {"plain": None}
    for v in args.variants.split(","):
        configs[f"uddia-{v}"] = dl.UDDIAConfig(variant=v)
    for v in [x for x in args.no_redo_variants.split(",") if x]:
        configs[f"uddia-{v} (no redo)"] = dl.UDDIAConfig(variant=v, layer_step=0)
    wrapped = {k: (dl.wrap(model, tok, c) if c else None) for k, c in configs.items()}
    results = {"model": "SmolLM2-135M-Instruct (embedded), fp32", "threads": args.threads,
               "new_tokens_per_row": n_new, "prompts": all_prompts, "runs": {}}

    def run(name, batch):
        w = wrapped[name]
        prompts = all_prompts[: args.prompts_bs1] if batch == 1 else all_prompts
        counts = {"rows_forward": 0, "rows_backward": 0, "kept_tokens": 0, "attempts": 0, "rows": 0,
                  "ppl_passes": 0, "attempts_rows": 0}
        t0 = time.perf_counter()
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
            torch.manual_seed(i)
            if w is None:
                with torch.no_grad():
                    model.generate(**enc, **gen)
            else:
                w.generate(**enc, **gen)
                st = w.impl.last_stats
                for k in ("rows_forward", "rows_backward", "kept_tokens", "ppl_passes"):
                    counts[k] += st[k]
                counts["attempts_rows"] += sum(len(a) for a in st["attempt_log"])
                counts["rows"] += len(st["attempt_log"])
        dt = time.perf_counter() - t0
        return dt, counts

    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        best: dict[str, tuple] = {}
        for _ in range(args.repeats):
            for name in configs:
                dt, counts = run(name, batch)
                if name not in best or dt < best[name][0]:
                    best[name] = (dt, counts)
                print(f"batch {batch} {name}: {dt:.1f}s", flush=True)
        tokens = (args.prompts_bs1 if batch == 1 else len(all_prompts)) * n_new
        plain_tps = tokens / best["plain"][0]
        for name, (dt, c) in best.items():
            row = {"seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt, "ratio_vs_plain": tokens / dt / plain_tps}
            if name != "plain":
                kept = c["kept_tokens"]
                row.update({
                    "forwards_per_token": c["rows_forward"] / kept, "backwards_per_token": c["rows_backward"] / kept,
                    "forward_equivalents_per_token": (c["rows_forward"] + 2 * c["rows_backward"]) / kept,
                    "attempts_per_sample": c["attempts_rows"] / c["rows"],
                })
            else:
                row.update({"forwards_per_token": 1.0, "backwards_per_token": 0.0, "forward_equivalents_per_token": 1.0})
            results["runs"][f"batch{batch}/{name}"] = row
            print(f"batch {batch} {name}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in row.items()}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
