"""CHES scoring speed: batched scorer vs a batch-1 fp32 loop like the reference script vs a plain batched forward.

All three run side by side in one process on the same pairs and the same model:
  * reference-like: one pair at a time, two CausalLM forwards with output_hidden_states=True (logits included)
  * debias-lm:      debias_lm.ches.score_rows (batched, right padding, base model, fp32 sums)
  * plain forward:  the same batches through the base model and nothing else (the floor)

    python eval/ches/bench.py [--model M] [--pairs 96] [--batch-size 16] [--dtype float32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import debias_lm as dl  # noqa: E402
from debias_lm.ches.formats import Columns, tokenize_pair  # noqa: E402
from debias_lm.ches.scoring import base_model_of, score_rows  # noqa: E402

HERE = Path(__file__).parent


def reference_loop(model, pairs):
    out = []
    with torch.no_grad():
        for p in pairs:
            sums = []
            for resp in (p.chosen_ids, p.rejected_ids):
                seq = p.prompt_ids + resp
                h = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
                sums.append(h[len(p.prompt_ids) - 1 : len(seq) - 1].sum(0))
            out.append(float(sums[0] @ sums[1] - sums[0] @ sums[0]))
    return out


def plain_forward(model, tok, pairs, batch_size):
    base = base_model_of(model)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i].prompt_ids) + max(len(pairs[i].chosen_ids),
                                                                                    len(pairs[i].rejected_ids))))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            seqs = [pairs[i].prompt_ids + getattr(pairs[i], k) for k in ("chosen_ids", "rejected_ids")
                    for i in order[s : s + batch_size]]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for j, x in enumerate(seqs):
                ids[j, : len(x)] = torch.tensor(x)
                attn[j, : len(x)] = 1
            base(input_ids=ids, attention_mask=attn, use_cache=False)


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(HERE / "prefs.jsonl"))
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()][: args.pairs]
    model, tok = dl.load_model(args.model, dtype=args.dtype)
    ref_model = model if args.dtype == "float32" else dl.load_model(args.model, dtype="float32")[0]
    pairs = [tokenize_pair(tok, r, Columns()) for r in rows]
    n = len(pairs)
    score_rows(model, tok, rows[:4], Columns(), batch_size=args.batch_size)  # warm-up
    t_ours = timed(lambda: score_rows(model, tok, rows, Columns(), batch_size=args.batch_size), args.repeats)
    t_plain = timed(lambda: plain_forward(model, tok, pairs, args.batch_size), args.repeats)
    t_ref = timed(lambda: reference_loop(ref_model, pairs), 1)
    res = {
        "model": args.model, "dtype": args.dtype, "pairs": n, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "pairs_per_s": {"reference_batch1_fp32": n / t_ref, "debias_lm": n / t_ours, "plain_batched_forward": n / t_plain},
        "speedup_vs_reference": t_ref / t_ours,
        "overhead_vs_plain_forward": t_ours / t_plain - 1.0,
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
