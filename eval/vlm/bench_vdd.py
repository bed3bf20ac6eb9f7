"""Tokens/s of debias sampling (VDD) relative to plain greedy decoding, measured side by side in one run.

    python eval/vlm/bench_vdd.py [--model results/pope_synthetic/model] [--batch-sizes 1,8] [--new-tokens 32]

Model: the synthetic biased VLM when it has been trained (eval/vlm/pope_synthetic.py), otherwise the same
architecture with random weights (speed does not depend on the weights; ``min_new_tokens`` keeps lengths equal).
Each repeat runs plain, VDD via the two-forward logits processor, and VDD fused (both branches stacked in one
forward) back to back on the same inputs; the median over repeats is reported. torch threads: as torch sets
them (``--threads`` to change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import debias_lm as dl
from debias_lm.evaluation.suites.pope_synthetic import _encode_batch, build_model, load_biased_vlm, make_split
from debias_lm.methods.debias_sampling.processor import DebiasSamplingLogitsProcessor
from debias_lm.utils.timing import interleaved_rounds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/pope_synthetic/model")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if Path(args.model, "config.json").exists():
        model, proc = load_biased_vlm(args.model)
        source = f"trained synthetic VLM ({args.model})"
    else:
        model, proc = build_model(0)
        proc.tokenizer.padding_side = "left"
        source = "synthetic-VLM architecture, random weights"
    n = args.new_tokens
    kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
              pad_token_id=proc.tokenizer.pad_token_id)
    wrapped = dl.wrap(model, proc, dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, variant="none"))
    rows = []
    print(f"model: {source}; {n} new tokens; torch threads {torch.get_num_threads()}", file=sys.stderr)
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        inputs = _encode_batch(proc, make_split(bs, 4242), train=False)

        def plain(inputs=inputs):
            return model.generate(**inputs, **kw)

        def processor(inputs=inputs):
            p = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=1.0, beta=0.1)
            return model.generate(**inputs, logits_processor=[p], **kw)

        def fused(inputs=inputs):
            return wrapped.generate(**inputs, **kw)

        runs = {"plain": plain, "vdd_processor": processor, "vdd_fused": fused}
        with torch.no_grad():  # the project's one benchmark loop: warm-up, then interleaved rounds
            timing = interleaved_rounds(runs, args.repeats, warmup=True)
        width = inputs["input_ids"].shape[1] + n
        assert all(out.shape[1] == width for t in timing.values() for out in t.results)
        tps = {k: bs * n / t.wall_median for k, t in timing.items()}
        row = {"batch_size": bs, **{f"{k}_tok_s": round(v, 1) for k, v in tps.items()},
               "processor_ratio": round(tps["vdd_processor"] / tps["plain"], 3),
               "fused_ratio": round(tps["vdd_fused"] / tps["plain"], 3)}
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": source, "new_tokens": n, "rows": rows}, indent=2))
    print("| batch | plain tok/s | VDD processor tok/s (ratio) | VDD fused tok/s (ratio) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['plain_tok_s']} | {r['vdd_processor_tok_s']} ({r['processor_ratio']}x) | "
              f"{r['vdd_fused_tok_s']} ({r['fused_ratio']}x) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
