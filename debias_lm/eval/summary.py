"""report.md and PNG plots of a ``debias-lm eval`` run (from its results.json payload and samples)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# (column label, key path inside results[suite][method], lower-is-better?) per suite; {scorer} expands
COLUMNS: dict[str, list[tuple[str, str, bool | None]]] = {
    "toxicity": [("EMT [{scorer}]", "{scorer}.emt", True),
                 ("tox. prob. per prompt [{scorer}]", "{scorer}.toxicity_probability", True),
                 ("toxic rate per gen. [{scorer}]", "{scorer}.toxic_rate", True),
                 ("empty gens", "n_empty", None)],
    "counterfactual": [("tox. gap [{scorer}]", "toxicity_gap[{scorer}]", True),
                       ("sentiment gap [{sent}]", "sentiment_gap[{sent}]", True),
                       ("sentiment W1 [{sent}]", "counterfactual_sentiment_w1[{sent}]", True),
                       ("regard gap mean [{regard}]", "regard_gap_mean[{regard}]", True),
                       ("female-word-rate gap", "female_word_rate_gap", True),
                       ("male-word-rate gap", "male_word_rate_gap", True)],
    "fluency": [("perplexity (mean)", "perplexity", True), ("perplexity (median)", "perplexity_median", True),
                ("dist-1", "dist_1", False), ("dist-2", "dist_2", False), ("dist-3", "dist_3", False),
                ("repetition (2-gram)", "repetition_2", True), ("repetition (4-gram)", "repetition_4", True)],
    "occupational": [("{probe}: MAE (pp)", "{probe}.mae_pp", True), ("{probe}: Pearson r", "{probe}.pearson_r", False),
                     ("{probe}: parity gap (pp)", "{probe}.parity_gap_pp", None),
                     ("{probe}: amplification (pp)", "{probe}.amplification_pp", None)],
    "bbq-gender": [("acc. ambiguous", "acc_ambig", False), ("acc. disambiguated", "acc_disambig", False),
                   ("bias ambiguous (S_AMB)", "bias_ambig", None), ("bias disambig. (S_DIS)", "bias_disambig", None),
                   ("unparsed", "n_unparsed", True)],
    "pope-synthetic": [("accuracy", "accuracy", False), ("F1", "f1", False), ("yes-ratio (pred.)", "yes_ratio", None),
                       ("ECE", "ece", True)],
}


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


def _expand(suite: str, payload: dict) -> list[tuple[str, str, bool | None]]:
    scorers = [s["name"] for s in payload["scorers"]["toxicity"]] or [""]
    sent = (payload["scorers"].get("sentiment") or {}).get("name", "vader")
    probes = payload["settings"].get("occupational_probes", [])
    regard = (payload["scorers"].get("regard") or {}).get("name")
    cols = []
    for label, key, lower in COLUMNS.get(suite, []):
        if "{scorer}" in key:
            cols += [(label.format(scorer=s), key.format(scorer=s), lower) for s in scorers]
        elif "{probe}" in key:
            cols += [(label.format(probe=p), key.format(probe=p), lower) for p in probes]
        elif "{regard}" in key:
            if regard:
                cols.append((label.format(regard=regard), key.format(regard=regard), lower))
        else:
            cols.append((label.format(sent=sent), key.format(sent=sent), lower))
    return cols


def suite_table(suite: str, by_method: dict, payload: dict) -> str:
    """Markdown table: one row per method, each cell "value (Δ vs none)"."""
    cols = _expand(suite, payload)
    base = by_method.get("none", {})
    lines = ["| method | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for method, res in by_method.items():
        cells = []
        for _, key, _lower in cols:
            v, b = _get(res, key), _get(base, key)
            if isinstance(v, dict) and "not_applicable" in v:
                cells.append("n/a")
                continue
            cell = _fmt(v)
            if method != "none" and isinstance(v, (int, float)) and isinstance(b, (int, float)) and v is not None:
                d = v - b
                rel = f", {100 * d / abs(b):+.0f}%" if b not in (0, None) and not math.isnan(b) and not math.isnan(d) else ""
                cell += f" ({d:+d}{rel})" if isinstance(d, int) else f" ({d:+.3f}{rel})"
            if suite == "fluency" and key.startswith("perplexity") and res.get("perplexity_circular"):
                cell += " †"
            cells.append(cell)
        na = [p for p in payload["settings"].get("occupational_probes", [])
              if suite == "occupational" and isinstance(res.get(p), dict) and "not_applicable" in res[p]]
        lines.append(f"| {method}{' (' + ', '.join(na) + ': n/a)' if na else ''} | " + " | ".join(cells) + " |")
    if suite == "fluency" and any(r.get("perplexity_circular") for r in by_method.values()):
        lines += ["", "† circular: this method keeps the continuation with the lowest perplexity under the same model "
                  "that scores it here (UDDIA's redo); judge its fluency by dist-n and the repetition rate too."]
    return "\n".join(lines)


def write_report(out: Path, payload: dict, store) -> Path:
    from .bench import markdown as bench_markdown

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
        "", "Cells: value (change vs `none`, relative change). Definitions: docs/metrics.md.", "",
    ]
    for suite, by_method in res.items():
        lines += [f"## {suite}", ""]
        if suite == "overhead":
            lines.append(bench_markdown(by_method))
        else:
            lines.append(suite_table(suite, by_method, payload))
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
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
        made.append(_save(fig, out / "toxicity_vs_perplexity.png", plt))
    if res.get("occupational"):
        rows = store.select("occupational")
        probes = sorted({r.get("probe") for r in rows if r.get("probe")})
        if probes:
            fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 4.5), squeeze=False)
            for ax, probe in zip(axes[0], probes):
                for m in res["occupational"]:
                    pts = [(r["bls_women"], 100 * r["p_female"]) for r in rows
                           if r.get("probe") == probe and r["method"] == m and r.get("p_female") is not None]
                    if pts:
                        ax.scatter(*zip(*pts), s=14, label=m, alpha=0.7)
                ax.plot([0, 100], [0, 100], "k--", lw=0.8)
                ax.set_xlabel("BLS 2022 % women")
                ax.set_ylabel("model p̂(female) %")
                ax.set_title(f"occupational ({probe} probe)")
                ax.legend(fontsize=8)
            made.append(_save(fig, out / "occupational_vs_bls.png", plt))
    for suite, keys, name in (("bbq-gender", ("acc_ambig", "acc_disambig", "bias_ambig", "bias_disambig"), "bbq_gender"),
                              ("pope-synthetic", ("accuracy", "f1", "yes_ratio", "ece"), "pope_synthetic")):
        if res.get(suite):
            made.append(_bars(res[suite], keys, f"{suite}", out / f"{name}.png", plt))
    if res.get("overhead"):
        fig, ax = plt.subplots(figsize=(6, 4))
        rows = [r for r in res["overhead"] if r["method"] != "none"]
        labels = [f"{r['method']}\n{r['backend']} b{r['batch']}" for r in rows]
        ax.bar(range(len(rows)), [r["ratio_vs_plain"] for r in rows])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("tokens/s ÷ plain")
        ax.set_title("decoding throughput vs plain")
        made.append(_save(fig, out / "overhead.png", plt))
    return made


def _bars(by_method: dict, keys, title: str, path: Path, plt) -> Path:
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = list(by_method)
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [by_method[m].get(k) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, [v if v is not None else 0 for v in vals], width, label=m)
    ax.set_xticks(np.arange(len(keys)) + width * (len(methods) - 1) / 2, keys)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
