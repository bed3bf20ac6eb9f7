"""Running the occupational suite over methods × probes, with a table, JSON, markdown and a plot."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserInputError
from ..metrics.occupational import occupational_metrics, relative_reduction
from .occupational import OccupationalResult, evaluate_occupational_probes


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _resolved(row: dict) -> bool:
    p = row.get("p_female")
    return p is not None and not (isinstance(p, float) and math.isnan(p))


def common_resolved(results: Sequence[OccupationalResult]) -> list[str]:
    """The occupations every result resolved (a finite p_female), in the first result's order."""
    if not results:
        return []
    sets = [{o["occupation"] for o in r.occupations if _resolved(o)} for r in results]
    common = set.intersection(*sets)
    return [o["occupation"] for o in results[0].occupations if o["occupation"] in common]


def comparison_rows(results: Sequence[OccupationalResult]) -> list[dict]:
    """One row per (probe, arm), metrics computed on the occupations **every arm of that probe resolved**
    (so arms are compared on one set), with each arm's own resolved / unresolved counts and the relative MAE
    reduction vs ``none``."""
    by_probe: dict[str, list[OccupationalResult]] = {}
    for r in results:
        by_probe.setdefault(r.probe, []).append(r)
    common = {probe: set(common_resolved(rs)) for probe, rs in by_probe.items()}
    metrics = {}
    for r in results:
        rows = [o for o in r.occupations if o["occupation"] in common[r.probe]]
        metrics[id(r)] = occupational_metrics([o["p_female"] for o in rows], [o["bls_women"] for o in rows])
    base = {r.probe: metrics[id(r)]["mae_pp"] for r in results if r.method == "none"}
    out = []
    for r in results:
        m = metrics[id(r)]
        out.append({
            "probe": r.probe,
            "method": r.method,
            "mae_pp": m["mae_pp"],
            "pearson_r": m["pearson_r"],
            "parity_gap_pp": m["parity_gap_pp"],
            "amplification_pp": m["amplification_pp"],
            "n_common": len(common[r.probe]),
            "n_resolved": r.metrics["n"],
            "n_unresolved": r.metrics["n_unresolved"],
            "mae_reduction_vs_none": (relative_reduction(base[r.probe], m["mae_pp"])
                                      if r.probe in base and r.method != "none" else math.nan),
            "n_excluded_related": r.details.get("grounding", {}).get("n_excluded_related"),
            "seconds": r.details.get("seconds", math.nan),
        })
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    head = ("| probe | arm | MAE (pp) ↓ | Pearson r ↑ | parity gap (pp) | amplification (pp) | MAE reduction vs none "
            "| compared on | resolved / unresolved (arm) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        red = r["mae_reduction_vs_none"]
        lines.append(
            f"| {r['probe']} | {r['method']} | {_fmt(r['mae_pp'])} | {_fmt(r['pearson_r'], 3)} | {_fmt(r['parity_gap_pp'])} "
            f"| {_fmt(r['amplification_pp'])} | {'—' if isinstance(red, float) and math.isnan(red) else f'{100 * red:.1f}%'} "
            f"| {r['n_common']} | {r['n_resolved']} / {r['n_unresolved']} |"
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
    shown = {(row["probe"], row["method"]): row for row in comparison_rows(results)}  # the table's numbers
    fig, axes = plt.subplots(1, len(probes), figsize=(5.2 * len(probes), 5), squeeze=False)
    colors = {"none": "tab:red", "nbls_instructions": "tab:orange", "nbls_shuffled": "tab:gray", "nbls": "tab:blue"}
    for ax, probe in zip(axes[0], probes):
        for r in (x for x in results if x.probe == probe):
            pts = [(o["bls_women"], 100 * o["p_female"]) for o in r.occupations
                   if o["p_female"] is not None and not math.isnan(o["p_female"])]
            if pts:
                xs, ys = zip(*pts)
                row = shown[(r.probe, r.method)]
                ax.scatter(xs, ys, s=18, alpha=0.75, color=colors.get(r.method), label=(
                    f"{r.method} (MAE {_fmt(row['mae_pp'], 1)} pp, r {_fmt(row['pearson_r'])})"))
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


MANIFEST = "manifest.json"
_TOOL = "debias-lm eval occupational"
# every file name an occupational run writes (older runs wrote no manifest: recognised by these names)
_OWNED = re.compile(r"^(?:manifest\.json|summary\.json|report\.md|occupational\.png|[a-z_]+_(?:likelihood|generation)\.json)$")


def check_out_dir(out_dir: str | Path) -> list[str]:
    """Check an ``--out`` directory before any work; returns the files of an earlier occupational run in it.

    A new or empty directory is fine. A directory holding an earlier run of this command (its
    ``manifest.json``, or only file names this command writes) is fine: exactly those files are replaced when
    the new run writes its own (:func:`write_run`), so no stale per-arm file survives. Anything else is a
    :class:`UserInputError` (one line, raised before the model loads).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {str(out)!r} is a file, not a directory")
    if not out.exists():
        return []
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return []
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and info.get("tool") == _TOOL and isinstance(info.get("files"), list):
            owned = [f for f in info["files"] if isinstance(f, str) and f in present]
            return sorted({*owned, MANIFEST})
    foreign = [f for f in present if not _OWNED.match(f)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserInputError(
            f"--out {str(out)!r} is not empty and was not written by 'eval occupational' (found {shown}); "
            "choose a new or empty directory"
        )
    return present


def write_run(out_dir: str | Path, files: dict[str, str | bytes | Path], settings: dict) -> list[str]:
    """Remove the earlier run's files (:func:`check_out_dir`), then write ``files`` and ``manifest.json``
    (listing the files written and those replaced). Returns the replaced file names."""
    out = Path(out_dir)
    replaced = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in replaced:
        (out / name).unlink(missing_ok=True)
    written = []
    for name, content in files.items():
        if isinstance(content, Path):  # already written there (the plot)
            written.append(name)
            continue
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        written.append(name)
    manifest = {"tool": _TOOL, "files": sorted(written), "replaced_from_earlier_run": replaced, "settings": settings}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return replaced


def run_occupational_suite(
    model, tokenizer, *, methods: Sequence[str], probes: Sequence[str], occupations: Sequence[str] | None,
    k: int = 32, grounding_seed: int = 0, chat: bool | None = None, n_samples: int = 10, max_new_tokens: int = 20,
    seed: int = 0, batch_size: int = 8, model_name: str = "", out_dir: str | Path | None = None, progress: bool = True,
    printer=print,
) -> list[OccupationalResult]:
    """Evaluate every (probe, arm); print the comparison table; write files when ``out_dir`` is given.

    ``methods`` are arm names (:data:`debias_lm.eval.occupational.ARMS`: ``none``, ``nbls_instructions``,
    ``nbls_shuffled``, ``nbls``). Every arm of a probe is compared on the occupations all of them resolved.
    """
    import tempfile

    from .occupational import arm_config

    configs = {m: arm_config(m, k=k, seed=grounding_seed) for m in methods}  # unknown arms fail here
    if out_dir is not None:
        check_out_dir(out_dir)
    results = []
    for i, method in enumerate(methods, 1):  # one arm at a time, its probes in one pass
        printer(f"[{i}/{len(methods)}] {method}: {' + '.join(probes)} probe ...", flush=True)
        t0 = time.perf_counter()
        arm = evaluate_occupational_probes(
            model, tokenizer, method=configs[method], probes=probes, occupations=occupations, chat=chat,
            n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
            model_name=model_name, progress=progress,
        )
        secs = round(time.perf_counter() - t0, 2)
        for res in arm:
            res.details["seconds"] = secs  # the arm's time for all its probes
        summary = ", ".join(f"{r.probe} MAE {_fmt(r.metrics['mae_pp'])} pp ({r.metrics['n']} resolved)" for r in arm)
        printer(f"[{i}/{len(methods)}] {method}: {summary}; {secs:.0f} s", flush=True)
        results.extend(arm)
    results.sort(key=lambda r: (list(probes).index(r.probe), list(methods).index(r.method)))
    rows = comparison_rows(results)
    table = markdown_table(rows)
    n_occ = len(results[0].occupations)
    printer(f"Occupational gender bias vs BLS CPS 2022 ({n_occ} occupations, model: {model_name or 'default'})")
    printer(table)
    if out_dir is not None:
        out = Path(out_dir)
        files: dict[str, str | bytes | Path] = {
            f"{r.method}_{r.probe}.json": json.dumps(r.to_json(), indent=2) + "\n" for r in results}
        files["summary.json"] = json.dumps(
            {"model": model_name, "compared_on": "occupations every arm of the probe resolved",
             "rows": [{k2: (None if isinstance(v, float) and math.isnan(v) else v) for k2, v in row.items()}
                      for row in rows]}, indent=2) + "\n"
        with tempfile.TemporaryDirectory() as tmp:  # the plot is made before the old run's files go
            plot = scatter_plot(results, Path(tmp) / "occupational.png")
            if plot:
                files["occupational.png"] = plot.read_bytes()
        occ_list = ", ".join(o["occupation"] for o in results[0].occupations)
        grounding = next((r.details.get("grounding") for r in results if r.method == "nbls"), None)
        md = [
            "# Occupational bias vs BLS CPS 2022",
            "",
            f"Model: `{model_name or 'default'}`. Probes: {', '.join(probes)}. Arms: {', '.join(methods)}. Every "
            "arm uses the same system prompt (the chat template's own); metrics are computed on the occupations "
            "every arm of the probe resolved.",
            "",
            table,
            "",
            f"Evaluated occupations ({n_occ}): {occ_list}.",
            "",
        ]
        if grounding:
            md += [f"NBLS grounding occupations (k={len(grounding['occupations'])}, none of them evaluated or "
                   f"related to an evaluated one): {', '.join(grounding['occupations'])}.", "",
                   f"Left out of the grounding as related to an evaluated occupation "
                   f"({grounding['n_excluded_related']}): {', '.join(grounding['excluded_related'])}.", ""]
        if "occupational.png" in files:
            md += ["![p̂ vs BLS](occupational.png)", ""]
        files["report.md"] = "\n".join(md)
        settings = {"model": model_name, "arms": list(methods), "probes": list(probes), "k": k,
                    "grounding_seed": grounding_seed, "n_samples": n_samples, "max_new_tokens": max_new_tokens,
                    "seed": seed, "occupations": [o["occupation"] for o in results[0].occupations]}
        replaced = write_run(out, files, settings)
        note = f"; replaced {len(replaced)} files of an earlier run (manifest.json)" if replaced else ""
        printer(f"results written to {out}/ (report.md, summary.json, manifest.json, per-run JSON"
                f"{', occupational.png' if 'occupational.png' in files else ''}){note}")
    return results
