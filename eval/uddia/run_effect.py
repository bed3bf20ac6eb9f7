"""Generate continuations for the UDDIA effect measurement (plain vs UDDIA variants) on the embedded model.

Writes one JSONL per (suite, method) under --out, appending prompt by prompt, so a long run can be stopped and
resumed (finished prompts are skipped). Score them with eval/uddia/score.py.

    nice -n 10 .venv/bin/python eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples 10
    nice -n 10 .venv/bin/python eval/uddia/run_effect.py --suite gender --methods plain,b,u --n-samples 10

Sampling: nucleus p = 0.9, temperature 1, --max-new-tokens (20) new tokens, raw text prompts (no chat template),
fp32, one torch thread (the machine's two cores are shared). Seeds: torch.manual_seed(seed + prompt index).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "debias_lm" / "data" / "eval"


def load_prompts(suite: str) -> list[dict]:
    if suite == "toxicity":
        rows = [json.loads(line) for line in (DATA / "toxicity_prompts.jsonl").open()]
        return [{"id": r["id"], "prompt": r["prompt"]} for r in rows]
    rows = [json.loads(line) for line in (DATA / "gender_pairs.jsonl").open()]
    out = []
    for r in rows:
        out.append({"id": r["id"] + "-f", "pair": r["id"], "group": "female", "prompt": r["female"]})
        out.append({"id": r["id"] + "-m", "pair": r["id"], "group": "male", "prompt": r["male"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["toxicity", "gender"], required=True)
    ap.add_argument("--methods", default="plain,t,u", help="comma-separated: plain, t, b, u")
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--prompts-per-batch", type=int, default=4)
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="UDDIAConfig override")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import debias_lm as dl

    prompts = load_prompts(args.suite)
    if args.limit:
        prompts = prompts[: args.limit]
    model, tok = dl.load_default_model(dtype="float32")
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        path = out_dir / f"{args.suite}-{method}.jsonl"
        done = set()
        if path.exists():
            done = {json.loads(line)["id"] for line in path.open() if line.strip()}
        todo = [p for p in prompts if p["id"] not in done]
        if method == "plain":
            runner = None
            cfg = None
        else:
            cfg = dl.UDDIAConfig(variant=method, **overrides)
            runner = dl.wrap(model, tok, cfg)
        t_start = time.time()
        for i in range(0, len(todo), args.prompts_per_batch):
            chunk = todo[i : i + args.prompts_per_batch]
            texts = [p["prompt"] for p in chunk for _ in range(args.n_samples)]
            enc = tok(texts, return_tensors="pt", padding=True)
            torch.manual_seed(args.seed + prompts.index(chunk[0]))
            gen = {"do_sample": True, "top_p": 0.9, "temperature": 1.0, "top_k": 0, "max_new_tokens": args.max_new_tokens,
                   "pad_token_id": tok.pad_token_id}
            t0 = time.time()
            if runner is None:
                with torch.no_grad():
                    seqs = model.generate(**enc, **gen)
                stats = None
            else:
                seqs = runner.generate(**enc, **gen)
                stats = runner.impl.last_stats
            dt = time.time() - t0
            width = enc["input_ids"].shape[1]
            conts = [tok.decode(r[width:], skip_special_tokens=True) for r in seqs]
            with path.open("a", encoding="utf-8") as fh:
                for j, p in enumerate(chunk):
                    rows = range(j * args.n_samples, (j + 1) * args.n_samples)
                    rec = {**p, "method": method, "continuations": [conts[r] for r in rows],
                           "config": cfg.to_dict() if cfg else None, "seconds_batch": dt}
                    if stats is not None:
                        rec["attempts"] = [[a["T"] for a in stats["attempt_log"][r]] for r in rows]
                        rec["redo_ppl"] = [stats["perplexity"][r] for r in rows]
                        rec["counts"] = {k: stats[k] for k in ("forward", "backward", "tokens", "attempts",
                                                                  "kept_tokens", "rows_forward", "rows_backward")}
                    fh.write(json.dumps(rec) + "\n")
            n_done = i + len(chunk)
            print(f"[{args.suite}/{method}] {n_done}/{len(todo)} prompts, {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
