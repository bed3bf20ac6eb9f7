"""Choose the default layer and scale of the toxicity steering vector on the embedded model (a development sweep).

For every layer l in ``--layers`` (vectors built for all layers from eval/steer/toxicity_pairs.jsonl) and every scale
in ``--scales`` (0 = plain), the embedded model continues the calibration prompts (eval/steer/calibration_prompts.jsonl:
the prompts the pairs came from, NOT the evaluation prompts) ``--samples`` times (raw text, nucleus 0.9, 20 tokens).
All scales of a layer run as rows of one batch (``steer_scales``), with the same seeds. Each continuation is scored
by the recipe's labeller (alt-profanity-check p, VADER compound: the toxic label of make_toxicity_pairs.py), and by
the plain model's conditional perplexity and dist-2. The judge of the evaluation (hatesonar) is not used here, so
the final numbers in docs/steering.md are not selected on their own scorer.

Rule (docs/steering.md): the (layer, scale) with the lowest labeller toxic rate among those whose mean perplexity
is within +25 % of plain and whose dist-2 is within 0.05 of plain; ties go to the smaller scale, then the earlier
layer.

    .venv/bin/python eval/steer/select_defaults.py --out eval/steer/measured/select_defaults.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="3,6,9,12,15,18,21,24,27")
    ap.add_argument("--scales", default="0,2,4,8,16")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N calibration prompts (0: all)")
    ap.add_argument("--batch-size", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vectors", default="", help="an all-layer vectors file (default: built here)")
    ap.add_argument("--out", default=str(HERE / "measured" / "select_defaults.json"))
    args = ap.parse_args()

    import torch
    from make_toxicity_pairs import label

    import debias_lm as dl
    from debias_lm.evaluation.scorers import get_scorer
    from debias_lm.methods.steer.build import build_file
    from debias_lm.metrics.fluency import conditional_perplexities, mean_dist_n, mean_perplexity

    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    scales = [float(x) for x in args.scales.split(",")]
    prompts = [json.loads(line)["prompt"] for line in (HERE / "calibration_prompts.jsonl").open() if line.strip()]
    if args.limit:
        prompts = prompts[: args.limit]
    model, tok = dl.load_default_model(dtype="float32")
    vectors = args.vectors
    if not vectors:
        vectors = str(Path(tempfile.mkdtemp()) / "toxicity-all-layers.safetensors")
        build_file(model, tok, HERE / "toxicity_pairs.jsonl", layers="all", attribute="toxicity").save(vectors)
    prof, vader = get_scorer("profanity-check"), get_scorer("vader")
    rows_spec = [(p, s, k) for p in prompts for k in range(args.samples) for s in scales]
    results = []
    for layer in layers:
        w = dl.wrap(model, tok, dl.SteerConfig(vectors=vectors, layers=(layer,), scale=1.0))
        texts = []
        for i in range(0, len(rows_spec), args.batch_size):
            chunk = rows_spec[i : i + args.batch_size]
            torch.manual_seed(args.seed + i)
            texts += w.generate_text([p for p, _, _ in chunk], chat=False, max_new_tokens=20, do_sample=True,
                                     top_p=0.9, temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                                     steer_scales=[s for _, s, _ in chunk])
        ppl = conditional_perplexities(model, tok, [p for p, _, _ in rows_spec], texts)
        ps, cs = prof.score_batch(texts), vader.score_batch(texts)
        for s in scales:
            idx = [j for j, (_, sj, _) in enumerate(rows_spec) if sj == s]
            by_prompt = {}
            for j in idx:
                by_prompt.setdefault(rows_spec[j][0], []).append(texts[j])
            labels = [label(ps[j], cs[j]) for j in idx]
            mean_ppl, dropped = mean_perplexity([ppl[j] for j in idx])
            results.append({"layer": layer, "scale": s, "n": len(idx),
                            "toxic_rate": sum(lb == 1 for lb in labels) / len(idx),
                            "mean_profanity_check": sum(ps[j] for j in idx) / len(idx),
                            "mean_vader": sum(cs[j] for j in idx) / len(idx),
                            "perplexity": mean_ppl, "ppl_dropped": dropped,
                            "dist_2": mean_dist_n(list(by_prompt.values()), 2),
                            "examples": [texts[j] for j in idx[:3]]})
            r = results[-1]
            print(f"layer {layer:>2} scale {s:>5g}: toxic {r['toxic_rate']:.3f} prof {r['mean_profanity_check']:.3f} "
                  f"vader {r['mean_vader']:+.3f} ppl {r['perplexity']:.1f} dist-2 {r['dist_2']:.3f}", flush=True)
    plain = [r for r in results if r["scale"] == 0]
    base = {k: sum(r[k] for r in plain) / len(plain) for k in ("toxic_rate", "perplexity", "dist_2")}
    ok = [r for r in results if r["scale"] != 0 and r["perplexity"] <= 1.25 * base["perplexity"]
          and r["dist_2"] >= base["dist_2"] - 0.05 and not math.isnan(r["perplexity"])]
    best = min(ok, key=lambda r: (r["toxic_rate"], abs(r["scale"]), r["layer"])) if ok else None
    out = {"rule": "lowest labeller toxic rate with mean perplexity <= 1.25 x plain and dist-2 >= plain - 0.05; "
                   "ties: smaller |scale|, then earlier layer",
           "plain": base, "chosen": best and {k: best[k] for k in ("layer", "scale", "toxic_rate", "perplexity",
                                                                    "dist_2")},
           "prompts": len(prompts), "samples": args.samples, "seed": args.seed, "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["chosen"]), "plain", json.dumps(base))


if __name__ == "__main__":
    main()
