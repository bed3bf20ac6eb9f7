"""UDDIA cost vs plain decoding on the embedded model, side by side: counted passes per token and tokens/s at
batch 1 and 8, with the default config (redo included).

    python eval/uddia/cost.py --out eval/uddia/results/cost.json               # quiet machine: the timing numbers
    python eval/uddia/cost.py --count-only --out eval/uddia/results/cost-counted.json    # counts only, any machine
    python eval/uddia/cost.py --prompts 2 --max-new-tokens 4 --repeats 1 --out /tmp/cost.json   # smoke run

Prompts: the first 8 toxicity-prone prompts (``debias_lm/data/eval/toxicity_prompts.jsonl``): UDDIA's triggers fire
on them, so this is the expensive case. Batch 1 runs --prompts prompts one at a time, batch 8 one call with 8
rows (the prompts repeated when --prompts < 8). --max-new-tokens new tokens are forced per row
(min_new_tokens = max_new_tokens), nucleus p = 0.9, fp32, --threads torch threads. Plain and each UDDIA variant
run interleaved round by round with the same seeds (--repeats rounds; the median time is kept), so background
load hits them alike.

Counted (hardware independent), per generated token that is kept, over every redo attempt:
  * ``layer_fwd_equiv`` / ``layer_bwd_equiv``: rows through the decoder layers counted by
    debias_lm.metrics.overhead.LayerCounter (the project's definition: one full-depth pass of one row = 1, a
    pass through some of the layers its share; prefill included), divided by the kept tokens;
  * ``forward_equivalents`` = layer_fwd_equiv + 2 x layer_bwd_equiv (a backward counted as two forwards);
  * UDDIA's own counts: decoding-loop forwards/backwards per kept token, trigger rate, passes per sample.
Plain decoding is 1 forward-equivalent per token by the same count. The goals checked (issue 12): <= 3
forward-equivalents per token and >= 0.25x plain tokens/s at batch 8. ``--count-only`` skips the timed rounds
(the counts do not depend on load; the tokens/s fields are then absent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "debias_lm" / "data" / "eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="t,u")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompts", type=int, default=8, help="prompts used (batch 1: one call each)")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--count-only", action="store_true", help="only the counted passes, no timed rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="UDDIAConfig override")
    ap.add_argument("--out", default=str(HERE / "results" / "cost.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from run_effect import parse_overrides  # (this folder is on sys.path when run as a script)

    import debias_lm as dl
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.metrics.overhead import LayerCounter

    model, tok = dl.load_default_model(dtype="float32")
    prompts = [json.loads(x)["prompt"] for x in (DATA / "toxicity_prompts.jsonl").open()][: args.prompts]
    n_new = args.max_new_tokens
    gen = {"do_sample": True, "top_p": 0.9, "top_k": 0, "max_new_tokens": n_new, "min_new_tokens": n_new,
           "pad_token_id": tok.pad_token_id}
    overrides = parse_overrides(args.set)
    runners = {"plain": None}
    for v in args.variants.split(","):
        runners[f"uddia-{v}"] = dl.wrap(model, tok, dl.UDDIAConfig(variant=v, **overrides))
    # warm-up: per-model statistics (RMS, plain-perplexity reference) are measured on the first call; the
    # reference is kept per decoding settings (length included), so the warm-up uses the measured settings
    for w in runners.values():
        if w is not None:
            w.generate(**encode_left_padded(tok, prompts[:1]), **gen)

    def batches(batch):
        if batch == 1:
            return [[p] for p in prompts]
        rows = [prompts[i % len(prompts)] for i in range(batch)]
        return [rows]

    def run(name, batch, count=False):
        w = runners[name]
        stats = {"rows_forward": 0, "rows_backward": 0, "kept_tokens": 0, "row_tokens": 0, "tuned_row_tokens": 0,
                 "attempt_rows": 0, "rows": 0}
        counter = LayerCounter(model) if count else None
        t0 = time.perf_counter()
        if counter:
            counter.__enter__()
        try:
            for i, chunk in enumerate(batches(batch)):
                enc = encode_left_padded(tok, chunk)
                torch.manual_seed(i)
                if w is None:
                    with torch.no_grad():
                        model.generate(**enc, **gen)
                    stats["kept_tokens"] += len(chunk) * n_new
                else:
                    w.generate(**enc, **gen)
                    st = w.impl.last_stats
                    for k in ("rows_forward", "rows_backward", "kept_tokens", "row_tokens", "tuned_row_tokens"):
                        stats[k] += st[k]
                    stats["attempt_rows"] += sum(len(a) for a in st["attempt_log"])
                    stats["rows"] += len(st["attempt_log"])
        finally:
            if counter:
                counter.__exit__(None, None, None)
        dt = time.perf_counter() - t0
        if counter:
            stats["layer_forward_rows"] = counter.forward_rows / len(counter.layers)
            stats["layer_backward_rows"] = counter.backward_rows / len(counter.layers)
        return dt, stats

    results = {"model": "SmolLM2-135M-Instruct (embedded), fp32", "threads": args.threads, "new_tokens_per_row": n_new,
               "prompts": prompts, "repeats": 0 if args.count_only else args.repeats, "overrides": overrides, "runs": {}}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        times = {name: [] for name in runners}
        for _ in range(0 if args.count_only else args.repeats):
            for name in runners:
                dt, _ = run(name, batch)
                times[name].append(dt)
                print(f"batch {batch} {name}: {dt:.2f}s", flush=True)
        n_tokens = sum(len(c) for c in batches(batch)) * n_new
        for name in runners:
            _, st = run(name, batch, count=True)
            kept = st["kept_tokens"]
            row = {"tokens": n_tokens}
            if not args.count_only:
                tps = n_tokens / statistics.median(times[name])
                row.update({"seconds_median": statistics.median(times[name]), "tokens_per_s": tps,
                            "ratio_vs_plain": tps / (n_tokens / statistics.median(times["plain"]))})
            row.update({"layer_fwd_equiv": st["layer_forward_rows"] / kept, "layer_bwd_equiv": st["layer_backward_rows"] / kept,
                   "forward_equivalents": (st["layer_forward_rows"] + 2 * st["layer_backward_rows"]) / kept})
            if name != "plain":
                row.update({"loop_forwards_per_token": st["rows_forward"] / kept,
                            "loop_backwards_per_token": st["rows_backward"] / kept,
                            "trigger_rate": st["tuned_row_tokens"] / max(st["row_tokens"], 1),
                            "passes_per_sample": st["attempt_rows"] / max(st["rows"], 1)})
            results["runs"][f"batch{batch}/{name}"] = row
            print(f"batch {batch} {name}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in row.items()}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
