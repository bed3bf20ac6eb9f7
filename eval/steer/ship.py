"""Write a shipped steering file for the embedded model (debias_lm/data/steer/smollm2-135m-instruct.NAME.safetensors).

The source is a file written by ``debias-lm steer build`` (all layers) or ``debias-lm uddia distill``; this keeps the
chosen layers (their vectors are unchanged: each layer's mean difference is computed independently), records the
measured ``suggested_scale`` (and mode) with what selected it, and replaces the source's command (which names
local paths) by the repository-relative command that rebuilds it. The recipes as run for docs/steering.md:

    debias-lm steer build --pairs eval/steer/toxicity_pairs.jsonl --out /tmp/tox-all.safetensors --layers all \\
        --attribute toxicity --labeller "alt-profanity-check + VADER (eval/steer/make_toxicity_pairs.py)"
    python eval/steer/ship.py toxicity --src /tmp/tox-all.safetensors --layers 12 --suggested-scale S \\
        --selected-by "eval/steer/select_defaults.py ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE.parent.parent / "debias_lm" / "data" / "steer"
PREFIX = "smollm2-135m-instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="short name: toxicity, gender, uddia-t")
    ap.add_argument("--src", required=True)
    ap.add_argument("--layers", default="", help="comma-separated layers to keep (residual files; default all)")
    ap.add_argument("--suggested-scale", type=float, required=True)
    ap.add_argument("--suggested-mode", default="", choices=["", "add", "ablate"])
    ap.add_argument("--selected-by", default="", help="what measured the suggested scale / layers")
    ap.add_argument("--labeller", default="", help="what labelled the contrast data (recorded)")
    ap.add_argument("--command", default="", help="the repository-relative command that built --src")
    args = ap.parse_args()

    from debias_lm.utils.steer_file import SteerFile

    f = SteerFile.load(args.src)
    vectors = dict(f.vectors)
    prov = dict(f.meta["provenance"])
    if args.layers:
        keep = {f"layers.{int(x)}" for x in args.layers.split(",")}
        missing = keep - set(vectors)
        if missing:
            raise SystemExit(f"{args.src} lacks {sorted(missing)}")
        vectors = {k: v for k, v in vectors.items() if k in keep}
        prov["layers"] = sorted(int(k.split(".")[1]) for k in vectors)
        prov["norms"] = {k.split(".")[1]: round(float(v.norm()), 4) for k, v in sorted(vectors.items())}
    if args.command:
        prov["command"] = args.command
    prov["shipped_by"] = (f"python eval/steer/ship.py {args.name} --src SRC"
                          + (f" --layers {args.layers}" if args.layers else "")
                          + f" --suggested-scale {args.suggested_scale:g}"
                          + (f" --suggested-mode {args.suggested_mode}" if args.suggested_mode else ""))
    if args.labeller:
        prov["labeller"] = args.labeller
    if args.selected_by:
        prov["suggested_scale_selected_by"] = args.selected_by
    meta = {**f.meta, "provenance": prov, "suggested_scale": args.suggested_scale}
    if args.suggested_mode:
        meta["suggested_mode"] = args.suggested_mode
    out = DEST / f"{PREFIX}.{args.name}.safetensors"
    SteerFile(vectors, meta).save(out)
    print(json.dumps({"written": str(out.relative_to(HERE.parent.parent)), "tensors": sorted(vectors),
                      "bytes": out.stat().st_size}))


if __name__ == "__main__":
    main()
