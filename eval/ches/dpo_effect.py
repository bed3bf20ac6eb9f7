"""Likelihood displacement after DPO on the highest- vs the lowest-CHES pairs (Razin et al. 2025, §5-6).

1. Score eval/ches/prefs.jsonl with LN-CHES on the model (default: the embedded SmolLM2-135M-Instruct).
2. Take the N pairs with the highest and the N with the lowest LN-CHES.
3. Train DPO (trl, CPU) separately on each subset, from the same starting model, same settings.
4. Report, per subset, the change in the mean log-probability of the preferred (and dispreferred) responses
   of the training pairs: the paper's likelihood displacement is a *drop* of the preferred log-prob.

    python eval/ches/dpo_effect.py [--model M] [--n 32] [--epochs 2] [--lr 1e-5] [--out eval/ches/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import debias_lm as dl  # noqa: E402
import debias_lm.ches as ches  # noqa: E402
from debias_lm.ches.formats import Columns, tokenize_pair  # noqa: E402

HERE = Path(__file__).parent


def response_logprobs(model, tok, rows, max_length=256):
    """Sum of log p(response token | prefix) for chosen and rejected, tokenised exactly as TRL trains on them."""
    out = []
    model.eval()
    with torch.no_grad():
        for r in rows:
            p = tokenize_pair(tok, r, Columns(), max_length=max_length)
            vals = []
            for resp in (p.chosen_ids, p.rejected_ids):
                ids = torch.tensor([p.prompt_ids + resp])
                logits = model(input_ids=ids).logits[0, len(p.prompt_ids) - 1 : -1].float()
                lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None]).sum()
                vals.append(float(lp))
            out.append(vals)
    return out


def run_dpo(model, tok, rows, args, tag):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    cfg = DPOConfig(output_dir=str(Path(args.out) / f"dpo-{tag}"), report_to=[], use_cpu=True,
                    per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                    num_train_epochs=args.epochs, learning_rate=args.lr, beta=0.1, optim="rmsprop",
                    lr_scheduler_type="constant", max_length=256, logging_steps=1000, save_strategy="no",
                    seed=args.seed, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg,
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                          for r in rows]),
                         processing_class=tok)
    trainer.train()
    return trainer.state.global_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(HERE / "prefs.jsonl"))
    ap.add_argument("--n", type=int, default=32, help="pairs per subset")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    base, tok = dl.load_model(args.model, dtype="float32")
    t0 = time.perf_counter()
    scores = ches.score(base, tok, rows, batch_size=8, max_length=256)
    score_s = time.perf_counter() - t0
    ok = sorted((s["ln_ches"], s["orig_index"]) for s in scores if s["status"] == "ok")
    subsets = {"lowest_ln_ches": [i for _, i in ok[: args.n]], "highest_ln_ches": [i for _, i in ok[-args.n:]]}
    report = {"model": args.model, "data": os.path.relpath(args.data), "n_pairs_scored": len(ok), "n_per_subset": args.n,
              "scoring_seconds": round(score_s, 1),
              "dpo": {"epochs": args.epochs, "lr": args.lr, "beta": 0.1, "optim": "rmsprop", "batch_size": args.batch_size},
              "subsets": {}}
    for tag, idx in subsets.items():
        sub = [rows[i] for i in idx]
        kinds = {k: sum(r["kind"] == k for r in sub) for k in sorted({r["kind"] for r in rows})}
        before = response_logprobs(base, tok, sub)
        model = copy.deepcopy(base)
        t1 = time.perf_counter()
        steps = run_dpo(model, tok, sub, args, tag)
        train_s = time.perf_counter() - t1
        after = response_logprobs(model, tok, sub)
        d_ch = [a[0] - b[0] for a, b in zip(after, before)]
        d_rj = [a[1] - b[1] for a, b in zip(after, before)]
        report["subsets"][tag] = {
            "mean_ln_ches": sum(scores[i]["ln_ches"] for i in idx) / len(idx),
            "kinds": kinds,
            "mean_delta_logp_chosen": sum(d_ch) / len(d_ch),
            "mean_delta_logp_rejected": sum(d_rj) / len(d_rj),
            "frac_pairs_chosen_logp_dropped": sum(d < 0 for d in d_ch) / len(d_ch),
            "mean_logp_chosen_before": sum(b[0] for b in before) / len(before),
            "dpo_steps": steps,
            "train_seconds": round(train_s, 1),
        }
        print(tag, json.dumps(report["subsets"][tag]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_effect.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
