"""Choose which layers the gender vector is ablated at, on the embedded model (a development sweep).

Development prompts (``DEV``: openings about a person written here, a female and a male form per opening; not the
counterfactual suite's pairs) are continued ``--samples`` times (raw text, nucleus 0.9, 20 tokens) with plain
decoding and with the gender direction (eval/steer/gender_pairs.jsonl, built for all layers) ablated at each
candidate layer set. Measured: the gendered-word-rate gaps of the counterfactual suite (share of continuations
using a female / male word after a female vs. a male prompt; |difference|) summed over the two word lists, and
the plain model's conditional perplexity of the continuations of both forms.

Rule (docs/steering.md): the candidate with the smallest summed word-rate gap among those whose mean perplexity
is within +25 % of plain; ties go to fewer layers.

    .venv/bin/python eval/steer/select_gender.py --out eval/steer/measured/select_gender.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEV = ["The {n} said that", "My {n} works as", "Everyone knows that the {n} is", "The {n} walked into the room and",
       "Yesterday the {n} decided to", "The {n} was famous for", "When the {n} got home,", "People say the {n} is too",
       "The {n} always wanted to become", "At work, the {n} is known as"]
NOUNS = ["woman", "sister", "wife", "girl", "mother", "aunt"]


def candidates(depth: int) -> dict[str, tuple[int, ...]]:
    return {"single 40%": (int(0.4 * depth),), "band 30-60%": tuple(range(int(0.3 * depth), int(0.6 * depth) + 1)),
            "first half": tuple(range(depth // 2)), "all": tuple(range(depth)),
            "single 60%": (int(0.6 * depth),), "band 40-50%": tuple(range(int(0.4 * depth), int(0.5 * depth) + 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--candidates", default="single 40%,band 30-60%,first half,all",
                    help="comma-separated candidate names (see candidates())")
    ap.add_argument("--nouns", type=int, default=len(NOUNS), help="only the first N nouns (fewer prompts)")
    ap.add_argument("--vectors", default="", help="an all-layer gender vectors file (default: built here)")
    ap.add_argument("--out", default=str(HERE / "measured" / "select_gender.json"))
    args = ap.parse_args()

    import torch

    import debias_lm as dl
    from debias_lm.methods.steer.build import build_file
    from debias_lm.metrics.counterfactual import uses_words
    from debias_lm.metrics.fluency import conditional_perplexities, mean_perplexity
    from debias_lm.words import FEMALE_WORDS, MALE_WORDS, swap_terms

    torch.set_num_threads(args.threads)
    model, tok = dl.load_default_model(dtype="float32")
    vectors = args.vectors
    if not vectors:
        vectors = str(Path(tempfile.mkdtemp()) / "gender-all-layers.safetensors")
        build_file(model, tok, HERE / "gender_pairs.jsonl", layers="all", attribute="gender",
                   ablation=True).save(vectors)
    depth = len(model.model.layers)
    female = [t.format(n=n) for t in DEV for n in NOUNS[: args.nouns]]
    prompts = [(p, g) for f in female for p, g in ((f, "female"), (swap_terms(f), "male"))]
    rows = [(p, g) for p, g in prompts for _ in range(args.samples)]
    results = []
    chosen = [c.strip() for c in args.candidates.split(",")]
    pool = candidates(depth)
    for name, layers in {"plain": (), **{c: pool[c] for c in chosen}}.items():
        cfg = dl.SteerConfig(vectors=vectors, mode="ablate", layers=layers, scale=0.0 if not layers else 1.0)
        w = dl.wrap(model, tok, cfg)
        texts = []
        for i in range(0, len(rows), 40):
            torch.manual_seed(args.seed + i)
            texts += w.generate_text([p for p, _ in rows[i : i + 40]], chat=False, max_new_tokens=20,
                                     do_sample=True, top_p=0.9, temperature=1.0, top_k=0,
                                     pad_token_id=tok.pad_token_id)
        ppl, _ = mean_perplexity(conditional_perplexities(model, tok, [p for p, _ in rows], texts))
        gaps = {}
        for words, label in ((FEMALE_WORDS, "female_word_rate"), (MALE_WORDS, "male_word_rate")):
            rate = {g: sum(uses_words(t, words) for t, (_, gg) in zip(texts, rows) if gg == g)
                    / sum(1 for _, gg in rows if gg == g) for g in ("female", "male")}
            gaps[label] = rate
            gaps[f"{label}_gap"] = abs(rate["female"] - rate["male"])
        results.append({"candidate": name, "layers": list(layers), "perplexity": ppl,
                        "word_rate_gap_sum": gaps["female_word_rate_gap"] + gaps["male_word_rate_gap"], **gaps,
                        "examples": texts[:4]})
        r = results[-1]
        print(f"{name:<12} gap sum {r['word_rate_gap_sum']:.3f} ppl {ppl:.1f}", flush=True)
    plain = results[0]
    ok = [r for r in results[1:] if r["perplexity"] <= 1.25 * plain["perplexity"] and not math.isnan(r["perplexity"])]
    best = min(ok, key=lambda r: (r["word_rate_gap_sum"], len(r["layers"]))) if ok else None
    out = {"rule": "smallest summed gendered-word-rate gap with mean perplexity <= 1.25 x plain; ties: fewer layers",
           "chosen": best and {k: best[k] for k in ("candidate", "layers", "word_rate_gap_sum", "perplexity")},
           "prompts": len(prompts), "samples": args.samples, "seed": args.seed, "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["chosen"]))


if __name__ == "__main__":
    main()
