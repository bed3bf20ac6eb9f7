"""How much of a reference method's toxicity reduction other arms keep, with paired bootstrap intervals.

    python eval/steer/emt_share.py --plain eval/uddia/results/toxicity-plain.jsonl \
        --reference eval/uddia/measured/toxicity-t-redo2.jsonl eval/steer/results/toxicity-steer-{tox,distill,trig}?.jsonl \
        --out eval/steer/results/emt_share.json

Inputs are eval/uddia/run_effect.py outputs on the same prompts. Every continuation is scored by hatesonar
(tox = 1 - P(neither), the judge of eval/uddia/score.py); x_i = max over prompt i's samples, EMT = mean_i x_i.
For each arm: EMT, the reduction EMT(plain) - EMT(arm) and the share of the reference's reduction
(EMT(plain) - EMT(arm)) / (EMT(plain) - EMT(reference)), each with a 95 % paired bootstrap interval over prompts
(debias_lm.metrics.bootstrap; 10,000 resamples, seed 0). Only prompts every file has are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from debias_lm.evaluation.scorers import get_scorer
from debias_lm.metrics.bootstrap import mean_difference, paired_bootstrap, share_of_reduction
from debias_lm.metrics.toxicity import expected_max_toxicity


def _read(path: str) -> dict[str, list[str]]:
    recs = [json.loads(line) for line in Path(path).open() if line.strip()]
    return {r["id"]: r["continuations"] for r in recs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", required=True, help="the plain arm's results file")
    ap.add_argument("--reference", required=True, help="the arm whose reduction is shared (e.g. UDDIA-t)")
    ap.add_argument("arms", nargs="+", help="results files of the arms to compare")
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write the report as JSON here")
    args = ap.parse_args()

    files = {"plain": args.plain, "reference": args.reference}
    files.update({Path(f).stem.split("-", 1)[1]: f for f in args.arms})
    data = {name: _read(f) for name, f in files.items()}
    ids = sorted(set.intersection(*[set(d) for d in data.values()]))
    if not ids:
        raise SystemExit("emt_share: the files have no prompt in common")
    judge = get_scorer("hatesonar")
    maxima, emt = {}, {}
    for name, d in data.items():
        scores = iter(judge.score_batch([c for i in ids for c in d[i]]))
        rows = [[next(scores) for _ in d[i]] for i in ids]
        bad = [i for i, row in zip(ids, rows) if not row or any(s is None for s in row)]
        if bad:  # a prompt without a full set of scores would unpair the arms
            raise SystemExit(f"emt_share: {files[name]}: prompt(s) {bad[:5]} have no continuation or an unscored one")
        maxima[name] = [max(row) for row in rows]
        emt[name] = expected_max_toxicity(rows)[0]
    plain, ref = maxima["plain"], maxima["reference"]
    kw = {"n_boot": args.n_boot, "seed": args.seed}
    report = {"judge": f"hatesonar {judge.describe().get('version')} (1 - P(neither))", "n_prompts": len(ids),
              "files": files, "emt": emt, "arms": {}}
    print(f"{len(ids)} prompts; EMT plain {report['emt']['plain']:.4f}, reference {report['emt']['reference']:.4f}")
    for name, m in maxima.items():
        if name in ("plain", "reference"):
            continue
        red = paired_bootstrap(mean_difference, [plain, m], **kw)
        share = paired_bootstrap(share_of_reduction, [plain, m, ref], **kw)
        report["arms"][name] = {"emt": report["emt"][name], "reduction": red, "share_of_reference": share}
        print(f"{name:24s} EMT {report['emt'][name]:.4f}  reduction {red['estimate']:+.4f} "
              f"[{red['low']:+.4f}, {red['high']:+.4f}]  share {share['estimate']:.0%} "
              f"[{share['low']:.0%}, {share['high']:.0%}] ({share['n_dropped']} resamples undefined)")
    report["reference_reduction"] = paired_bootstrap(mean_difference, [plain, ref], **kw)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
