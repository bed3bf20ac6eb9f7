"""Side-by-side sweep of UDDIA settings on the embedded model: the measurements behind the defaults in docs/uddia.md.

    # step-size rule (docs/uddia.md "Per-model statistics and the step-size rule"): variant t, no redo
    python eval/uddia/sweep.py --suite toxicity --variant t --configs \\
        '[{"layer_step": 0, "lr": 0.06}, {"layer_step": 0, "lr": 0.04}, {"layer_step": 0},
          {"layer_step": 0, "lr": 0.06, "kl_budget": 0.5}, {"layer_step": 0, "lr": 0.1, "kl_budget": 1.0},
          {"layer_step": 0, "lr": 0.06, "update": "gradient", "kl_budget": 1.0},
          {"layer_step": 0, "num_layers": 1.0}, {"layer_step": 0, "fusion": 1.0}, {}]'
    # opt-in cheaper gate and gradient path (docs/uddia.md "Cheaper gate and gradient path"): variant t, no redo
    python eval/uddia/sweep.py --configs '[{"layer_step": 0}, {"layer_step": 0, "gradient_path": "look_ahead"},
          {"layer_step": 0, "tox_gate": "last"}, {"layer_step": 0, "gradient_path": "look_ahead", "tox_gate": "last"}]'
    # debias term on the gender pairs: variant b, no redo
    python eval/uddia/sweep.py --suite gender --variant b --samples 2 --configs '[{"layer_step": 0}]'

Prompts: toxicity: every --every-th of the odd-indexed (unseen by the probe's data generator) prompts of
debias_lm/data/eval/toxicity_prompts.jsonl (--every 2: 26 prompts); gender: all 30 pairs of gender_pairs.jsonl
(both prompts). --samples samples per prompt, 20 new tokens, nucleus p = 0.9, no top-k, fp32, one thread.
Plain decoding and every config start from torch.manual_seed(0) on the same batch. Scores: hatesonar EMT,
toxicity probability and mean (the judge), median conditional perplexity under the plain model (circular when
redo is on), dist-2 and repetition rate; gender: gendered-word rates and both gaps (as score.py). UDDIA's own
counters: trigger rate, mean KL(tuned || base) per tuned token, passes per sample, decoding-loop
forward-equivalents per kept token, CPU seconds. One JSON line per config on stdout.
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
    ap.add_argument("--suite", choices=["toxicity", "gender"], default="toxicity")
    ap.add_argument("--variant", default="t")
    ap.add_argument("--configs", default="[{}]", help="JSON list of UDDIAConfig overrides, one run each")
    ap.add_argument("--every", type=int, default=2, help="toxicity: every k-th unseen prompt")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    import debias_lm as dl
    from debias_lm.evaluation.scorers import get_scorer
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.metrics.counterfactual import uses_words
    from debias_lm.metrics.fluency import (
        conditional_perplexities,
        mean_dist_n,
        mean_repetition_rate,
        median_perplexity,
    )
    from debias_lm.metrics.toxicity import toxicity_metrics
    from debias_lm.words import FEMALE_WORDS, MALE_WORDS

    model, tok = dl.load_default_model(dtype="float32")
    k = args.samples
    if args.suite == "toxicity":
        prompts = [json.loads(x)["prompt"] for x in (DATA / "toxicity_prompts.jsonl").open()][1::2][:: args.every]
        groups = [None] * len(prompts)
    else:
        pairs = [json.loads(x) for x in (DATA / "gender_pairs.jsonl").open()]
        prompts = [p[g] for p in pairs for g in ("female", "male")]
        groups = [g for _ in pairs for g in ("female", "male")]
    rows = [p for p in prompts for _ in range(k)]
    row_groups = [g for g in groups for _ in range(k)]
    enc = encode_left_padded(tok, rows)
    width = enc["input_ids"].shape[1]
    gen = {"do_sample": True, "top_p": 0.9, "top_k": 0, "max_new_tokens": args.max_new_tokens,
           "pad_token_id": tok.pad_token_id}
    hs = get_scorer("hatesonar")

    def report(name, seqs, extra):
        conts = [tok.decode(r[width:], skip_special_tokens=True) for r in seqs]
        ppl = conditional_perplexities(model, tok, rows, conts, batch_size=32)
        res = {"config": name, "n_prompts": len(prompts), "samples": k,
               "ppl_median": round(median_perplexity(ppl), 2), "rep2": round(mean_repetition_rate(conts, 2), 4),
               "dist2": round(mean_dist_n([conts[i * k:(i + 1) * k] for i in range(len(prompts))], 2), 4)}
        if args.suite == "toxicity":
            scores = hs.score_batch(conts)
            m = toxicity_metrics([scores[i * k:(i + 1) * k] for i in range(len(prompts))])
            res.update(emt=round(m["emt"], 4), tox_prob=round(m["toxicity_probability"], 3),
                       mean_tox=round(sum(scores) / len(scores), 4))
        else:
            def rate(group, words):
                sel = [c for c, g in zip(conts, row_groups) if g == group]
                return sum(uses_words(c, words) for c in sel) / len(sel)

            ff, fm = rate("female", FEMALE_WORDS), rate("male", FEMALE_WORDS)
            mm, mf = rate("male", MALE_WORDS), rate("female", MALE_WORDS)
            res.update(female_word_gap=round(ff - fm, 3), male_word_gap=round(mm - mf, 3),
                       female_word_rate={"female_prompts": round(ff, 3), "male_prompts": round(fm, 3)},
                       male_word_rate={"male_prompts": round(mm, 3), "female_prompts": round(mf, 3)})
        print(json.dumps({**res, **extra}), flush=True)

    torch.manual_seed(0)
    with torch.no_grad():
        report("plain", model.generate(**enc, **gen), {})
    for overrides in json.loads(args.configs):
        runner = dl.wrap(model, tok, dl.UDDIAConfig(**{"variant": args.variant, **overrides}))
        torch.manual_seed(0)
        c0 = time.process_time()
        seqs = runner.generate(**enc, **gen)
        cpu = time.process_time() - c0
        st = runner.impl.last_stats
        report(json.dumps({"variant": args.variant, **overrides}), seqs, {
            "trigger_rate": round(st["trigger_rate"], 3), "mean_kl_tuned": round(st["mean_kl_tuned"], 3),
            "passes_per_sample": round(sum(len(a) for a in st["attempt_log"]) / len(rows), 2),
            "redo_threshold": st["redo_threshold"],
            "loop_forward_equivalents": round((st["rows_forward"] + 2 * st["rows_backward"]) / st["kept_tokens"], 2),
            "cpu_seconds": round(cpu)})


if __name__ == "__main__":
    main()
