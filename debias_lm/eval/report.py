"""Running the occupational suite over methods × probes, with a table, JSON, markdown and a plot."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from ..metrics.occupational import relative_reduction
from .occupational import OccupationalResult, evaluate_occupational


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def comparison_rows(results: Sequence[OccupationalResult]) -> list[dict]:
    """One row per (probe, method) with the metrics and the relative MAE reduction vs ``none``."""
    base = {r.probe: r.metrics["mae_pp"] for r in results if r.method == "none"}
    rows = []
    for r in results:
        m = r.metrics
        rows.append({
            "probe": r.probe,
            "method": r.method,
            "mae_pp": m["mae_pp"],
            "pearson_r": m["pearson_r"],
            "parity_gap_pp": m["parity_gap_pp"],
            "amplification_pp": m["amplification_pp"],
            "n": m["n"],
            "n_unresolved": m["n_unresolved"],
            "mae_reduction_vs_none": relative_reduction(base[r.probe], m["mae_pp"]) if r.probe in base and r.method != "none" else math.nan,
            "seconds": r.details.get("seconds", math.nan),
        })
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    head = "| probe | method | MAE (pp) ↓ | Pearson r ↑ | parity gap (pp) | amplification (pp) | MAE reduction vs none | scored / unresolved |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        red = r["mae_reduction_vs_none"]
        lines.append(
            f"| {r['probe']} | {r['method']} | {_fmt(r['mae_pp'])} | {_fmt(r['pearson_r'], 3)} | {_fmt(r['parity_gap_pp'])} "
            f"| {_fmt(r['amplification_pp'])} | {'—' if isinstance(red, float) and math.isnan(red) else f'{100 * red:.1f}%'} "
            f"| {r['n']} / {r['n_unresolved']} |"
        )
    return "\n".join(lines)


def scatter_plot(results: Sequence[OccupationalResult], path: Path) -> Path | None:
    """p̂ (percent women) vs BLS % women, one panel per probe, one colour per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    probes = list(dict.fromkeys(r.probe for r in results))
    fig, axes = plt.subplots(1, len(probes), figsize=(5.2 * len(probes), 5), squeeze=False)
    colors = {"none": "tab:red", "nbls": "tab:blue"}
    for ax, probe in zip(axes[0], probes):
        for r in (x for x in results if x.probe == probe):
            pts = [(o["bls_women"], 100 * o["p_female"]) for o in r.occupations
                   if o["p_female"] is not None and not math.isnan(o["p_female"])]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=18, alpha=0.75, color=colors.get(r.method), label=(
                    f"{r.method} (MAE {_fmt(r.metrics['mae_pp'], 1)} pp, r {_fmt(r.metrics['pearson_r'])})"))
        ax.plot([0, 100], [0, 100], color="gray", lw=1, ls="--", label="BLS (y = x)")
        ax.axhline(50, color="lightgray", lw=0.8)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("BLS 2022: % women in occupation")
        ax.set_ylabel("model: % female (p̂ × 100)")
        ax.set_title(f"{probe} probe")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_occupational_suite(
    model, tokenizer, *, methods: Sequence[str], probes: Sequence[str], occupations: Sequence[str] | None,
    k: int = 32, grounding_seed: int = 0, chat: bool | None = None, n_samples: int = 10, max_new_tokens: int = 20,
    seed: int = 0, batch_size: int = 8, model_name: str = "", out_dir: str | Path | None = None, progress: bool = True,
    printer=print,
) -> list[OccupationalResult]:
    """Evaluate every (probe, method); print the comparison table; write files when ``out_dir`` is given."""
    from ..methods.nbls import NBLSConfig

    results = []
    for probe in probes:
        for method in methods:
            cfg = NBLSConfig(k=k, seed=grounding_seed) if method == "nbls" else "none"
            t0 = time.perf_counter()
            res = evaluate_occupational(
                model, tokenizer, method=cfg, probe=probe, occupations=occupations, chat=chat, n_samples=n_samples,
                max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, model_name=model_name,
                progress=progress,
            )
            res.details["seconds"] = round(time.perf_counter() - t0, 2)
            results.append(res)
    rows = comparison_rows(results)
    table = markdown_table(rows)
    n_occ = len(results[0].occupations)
    printer(f"Occupational gender bias vs BLS CPS 2022 ({n_occ} occupations, model: {model_name or 'default'})")
    printer(table)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            r.save(out / f"{r.method}_{r.probe}.json")
        (out / "summary.json").write_text(json.dumps(
            {"model": model_name, "rows": [{k2: (None if isinstance(v, float) and math.isnan(v) else v)
                                            for k2, v in row.items()} for row in rows]}, indent=2) + "\n")
        plot = scatter_plot(results, out / "occupational.png")
        occ_list = ", ".join(o["occupation"] for o in results[0].occupations)
        grounding = next((r.details["grounding_occupations"] for r in results if r.method == "nbls"), [])
        md = [
            "# Occupational bias vs BLS CPS 2022",
            "",
            f"Model: `{model_name or 'default'}`. Probes: {', '.join(probes)}. Methods: {', '.join(methods)}.",
            "",
            table,
            "",
            f"Evaluated occupations ({n_occ}): {occ_list}.",
            "",
        ]
        if grounding:
            md += [f"NBLS grounding occupations (k={len(grounding)}, none of them evaluated): {', '.join(grounding)}.", ""]
        if plot:
            md += ["![p̂ vs BLS](occupational.png)", ""]
        (out / "report.md").write_text("\n".join(md), encoding="utf-8")
        printer(f"results written to {out}/ (report.md, summary.json, per-run JSON{', occupational.png' if plot else ''})")
    return results
