"""report.md and PNG plots of a ``debias-lm eval`` run (from its results.json payload and samples)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _get(d: Any, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.{nd}f}"


def _placeholders(payload: dict) -> dict[str, list[str]]:
    """Values of the column placeholders of this run (each expands a column into one column per value)."""
    regard = (payload["scorers"].get("regard") or {}).get("name")
    return {"scorer": [s["name"] for s in payload["scorers"]["toxicity"]] or [""],
            "sent": [(payload["scorers"].get("sentiment") or {}).get("name", "vader")],
            "regard": [regard] if regard else [],
            "probe": list(payload["settings"].get("occupational_probes", []))}


def columns(suite, payload: dict) -> list[tuple[str, str, object]]:
    """(label, key, Column) per report column of ``suite``, placeholders expanded."""
    values = _placeholders(payload)
    out = []
    for col in suite.columns:
        names = [n for n in values if "{" + n + "}" in col.key or "{" + n + "}" in col.label]
        if not names:
            out.append((col.label, col.key, col))
            continue
        n = names[0]
        out += [(col.label.format(**{n: v}), col.key.format(**{n: v}), col) for v in values[n]]
    return out


def _baseline(by_method: dict) -> str | None:
    from .settings import is_baseline

    return next((m for m in by_method if is_baseline(m)), None)


def suite_table(suite, by_method: dict, payload: dict) -> str:
    """Markdown table: one row per method, each cell "value (change vs the baseline, relative change)"."""
    if isinstance(suite, str):
        from .suites import get_suite

        suite = get_suite(suite)
    if suite.table is not None:
        return suite.table(by_method, payload)
    cols = columns(suite, payload)
    base_name = _baseline(by_method)
    base = by_method.get(base_name, {}) if base_name else {}
    arrow = {True: " ↑", False: " ↓", None: ""}
    lines = ["| method | " + " | ".join(c[0] + arrow[c[2].higher_is_better] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    flagged = False
    for method, res in by_method.items():
        cells = []
        for _, key, col in cols:
            v, b = _get(res, key), _get(base, key)
            if isinstance(v, dict) and "not_applicable" in v:
                cells.append("n/a")
                continue
            cell = _fmt(v)
            if method != base_name and isinstance(v, (int, float)) and isinstance(b, (int, float)) and v is not None:
                d = v - b
                rel = f", {100 * d / abs(b):+.0f}%" if b not in (0, None) and not math.isnan(b) and not math.isnan(d) else ""
                cell += f" ({d:+d}{rel})" if isinstance(d, int) else f" ({d:+.3f}{rel})"
            if col.flag and res.get(col.flag):
                cell += " †"
                flagged = True
            cells.append(cell)
        na = [k for k, v in res.items() if isinstance(v, dict) and "not_applicable" in v]
        lines.append(f"| {method}{' (' + ', '.join(na) + ': n/a)' if na else ''} | " + " | ".join(cells) + " |")
    if flagged and suite.note:
        lines += ["", f"† {suite.note}"]
    return "\n".join(lines)


def write_report(out: Path, payload: dict, store) -> Path:
    from .suites import get_suite

    res = payload["results"]
    s = payload["settings"]
    lines = [
        "# debias-lm evaluation report", "",
        f"- model: `{payload['model']['name']}` ({payload['model']['dtype']}, backend {payload['model']['backend']})",
        f"- methods: {', '.join(s['methods'])}; suites: {', '.join(s['suites'])}",
        f"- sampling: {s['n_samples']} samples/prompt, {s['max_new_tokens']} new tokens, top-p {s['top_p']}, "
        f"temperature {s['temperature']}, seed {s['seed']}; limit {s['limit']}",
        f"- toxicity scorers: {', '.join(d['name'] + ' ' + d['version'] for d in payload['scorers']['toxicity']) or '—'}",
        f"- git commit {payload['git_commit']}; created {payload['created']}",
        f"- rows {payload['counts']['rows']}, malformed dataset rows {payload['counts']['malformed_rows']}, "
        f"scorer errors {payload['counts']['scorer_errors']}",
        "", "Cells: value (change vs `none`, relative change); ↑ higher is better, ↓ lower is better. "
        "Definitions: docs/metrics.md.", "",
    ]
    for suite, by_method in res.items():
        lines += [f"## {suite}", ""]
        lines.append(suite_table(get_suite(suite), by_method, payload))
        secs = payload["seconds"].get(suite)
        if secs is not None:
            lines += ["", f"_{secs:.0f} s in this invocation_"]
        lines.append("")
    plots = make_plots(out, payload, store)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_plots(out: Path, payload: dict, store) -> list[Path]:
    """The toxicity-vs-perplexity plot (when both suites ran), then each suite's own plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from .suites import get_suite
    from .suites.common import save_figure

    res = payload["results"]
    made = []
    tox, flu = res.get("toxicity"), res.get("fluency")
    if tox and flu:
        scorer = payload["scorers"]["toxicity"][0]["name"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in tox:
            x, y = _get(flu, f"{m}.perplexity"), _get(tox, f"{m}.{scorer}.emt")
            if x is not None and y is not None:
                ax.scatter([x], [y], s=60)
                ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel("conditional perplexity (lower = more fluent)")
        ax.set_ylabel(f"expected max toxicity [{scorer}]")
        ax.set_title("toxicity vs fluency per method")
        made.append(save_figure(fig, out / "toxicity_vs_perplexity.png", plt))
    for name, by_method in res.items():
        suite = get_suite(name)
        if by_method and suite.plot is not None:
            path = suite.plot(out, by_method, payload, store, plt)
            if path is not None:
                made.append(path)
    return made
