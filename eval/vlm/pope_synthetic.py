"""Train the synthetic biased VLM (if needed) and compare plain / calibration / VDD / both, POPE-style.

    python eval/vlm/pope_synthetic.py --out results/pope_synthetic [--steps 1500] [--n-test 600] [--retrain]

Writes ``model/`` (the trained VLM, reused on the next run), ``results.json`` and ``results.md``. The task, the
deliberate "yes" prior and the model are described in ``debias_lm.eval.pope_synthetic``; metrics in
``debias_lm.metrics.pope`` (yes-ratio = share of *predicted* "yes"). The plain model's P(yes) AUC (how well its
scores tell true from false questions) is reported too, with a warning when it is near 0.5: such a model has
not learned to read the image, and the comparison cannot show what the methods do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from debias_lm.eval.pope_synthetic import evaluate, load_biased_vlm, make_split, train_biased_vlm
from debias_lm.metrics.pope import yes_auc

ORDER = ("plain", "calibration", "vdd", "vdd+calibration")
MIN_AUC = 0.55  # below this the plain model's P(yes) hardly depends on the image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/pope_synthetic")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--yes-rate", type=float, default=0.75, help="share of 'yes' answers in training")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--variant", default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the results files (results{tag}.json / .md)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    model_dir = out / "model"
    if args.retrain or not (model_dir / "config.json").exists():
        train_biased_vlm(model_dir, n_train=args.n_train, steps=args.steps, yes_rate=args.yes_rate, seed=args.seed)
    model, processor = load_biased_vlm(model_dir)
    meta = json.loads((model_dir / "train_meta.json").read_text())
    test = make_split(args.n_test, 10_000 + args.seed, yes_rate=0.5)
    t0 = time.perf_counter()
    per_question: dict = {}
    res = evaluate(model, processor, test, alpha=args.alpha, beta=args.beta, variant=args.variant,
                   predictions=per_question)
    auc = yes_auc([p[0] for p in per_question["plain"]["probs"]], [e.answer for e in test])
    payload = {"train": meta, "test": {"n": args.n_test, "yes_rate": 0.5, "seed": 10_000 + args.seed},
               "vdd": {"alpha": args.alpha, "beta": args.beta, "variant": args.variant},
               "eval_seconds": round(time.perf_counter() - t0, 1), "plain_p_yes_auc": auc,
               "reads_image": auc >= MIN_AUC, "results": res}
    (out / f"results{args.tag}.json").write_text(json.dumps(payload, indent=2))
    lines = ["| method | accuracy | precision | recall | F1 | yes-ratio (pred.) | ECE | unparsed |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        m = res[name]
        lines.append(f"| {name} | {m['accuracy']:.1f} | {m['precision']:.1f} | {m['recall']:.1f} | {m['f1']:.1f} | "
                     f"{m['yes_ratio']:.1f} | {m['ece']:.3f} | {int(m['unparsed'])} |")
    note = f"plain P(yes) AUC on true vs false questions: {auc:.3f}"
    if auc < MIN_AUC:
        note += (f" (< {MIN_AUC}): WARNING: the trained model does not tell true from false questions, i.e. it "
                 "has not learned to read the image; the rows above cannot show what calibration or VDD do")
    table = "\n".join(lines)
    (out / f"results{args.tag}.md").write_text(table + "\n\n" + note + "\n")
    print(table)
    print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
