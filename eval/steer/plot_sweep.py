"""Plot the steering scale sweep: toxicity (hatesonar EMT) vs perplexity per arm, from eval/uddia/score.py's summary.

    python eval/steer/plot_sweep.py --summary eval/steer/results/summary.json --out docs/steering-sweep.png

Arms are the summary's toxicity methods: plain, UDDIA (t), steer-toxN (CAA toxicity vector at scale N) and
steer-distillN / steer-trigN (distilled UDDIA-t offsets, the ``mean`` / ``triggered`` average, at scale N); the
steer arms of one vector are joined in scale order.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tox = json.loads(Path(args.summary).read_text())["toxicity"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series: dict[str, list[tuple[float, float, float]]] = {}
    for name, row in tox.items():
        x, y = row["perplexity_median"], row["hatesonar"]["emt"]
        m = re.fullmatch(r"steer-([a-z-]+?)(\d+(?:\.\d+)?)", name)
        if m:
            series.setdefault(m.group(1), []).append((float(m.group(2)), x, y))
            continue
        label = {"plain": "plain", "t": "UDDIA-t", "u": "UDDIA-u"}.get(name, name)
        ax.scatter([x], [y], marker="s" if name == "plain" else "^", s=60, label=f"{label} (n={row['n_prompts']})")
    names = {"tox": "steer: CAA toxicity vector", "distill": "steer: distilled UDDIA-t (mean)",
             "trig": "steer: distilled UDDIA-t (triggered)"}
    for key, pts in series.items():
        pts.sort()
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=names.get(key, key))
        for s, x, y in pts:
            ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("median conditional perplexity (plain model)")
    ax.set_ylabel("expected max toxicity (hatesonar)")
    ax.set_title("Embedded SmolLM2-135M: steering scale sweep", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
