"""overhead: decoding cost of every method against plain decoding, measured side by side in one run on the
evaluated model (tokens/s ratio, forward-equivalents per token, peak memory): see ``debias_lm.evaluation.bench``.
A resumed run reuses a complete earlier measurement with the same settings (all methods are measured side by
side in one go, so a partial one is measured again)."""

from __future__ import annotations

from . import Context, Suite, register_suite


def run(ctx: Context) -> list[dict]:
    from ..bench import _names, measure_hf, measure_vllm

    s = ctx.settings
    names = _names(s.methods, s.backend)
    want = {(s.backend, b, m) for b in s.bench_batches for m in names}
    old = {(r["backend"], r["batch"], r["method"]): r for r in ctx.store.select("overhead")
           if r.get("new_tokens") == s.bench_new_tokens and r.get("repeats") == s.bench_repeats}
    if want <= set(old):
        keep = [old[k] for k in sorted(want, key=lambda k: (k[1], names.index(k[2])))]
        return [{k: v for k, v in r.items() if k not in ("suite", "id", "sample")} for r in keep]
    methods = names[1:]
    if s.backend == "vllm":
        ctx.generator = None  # one engine at a time
        rows = measure_vllm(ctx.model_path, methods, s.bench_batches, new_tokens=s.bench_new_tokens,
                            repeats=s.bench_repeats, dtype=s.dtype, overrides=s.method_overrides, progress=s.progress)
    else:
        rows = measure_hf(ctx.model, ctx.tokenizer, methods, s.bench_batches, new_tokens=s.bench_new_tokens,
                          repeats=s.bench_repeats, overrides=s.method_overrides, progress=s.progress)
    ctx.store.add([{"suite": "overhead", "id": f"{r['backend']}:{r['batch']}", "sample": 0, **r} for r in rows])
    return rows


def validate(settings) -> None:
    from ..bench import check_bench_args

    check_bench_args(settings.methods, settings.bench_batches, [settings.backend], settings.bench_new_tokens,
                     settings.bench_repeats)


def table(rows, payload) -> str:
    from ..bench import markdown

    return markdown(rows)


def plot(out, rows, payload, store, plt):
    from .common import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in rows if r["method"] != "none"]
    labels = [f"{r['method']}\n{r['backend']} b{r['batch']}" for r in rows]
    ax.bar(range(len(rows)), [r["ratio_vs_plain"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("tokens/s ÷ plain")
    ax.set_title("decoding throughput vs plain")
    return save_figure(fig, out / "overhead.png", plt)


SUITE = register_suite(Suite(
    name="overhead",
    run=run,
    validate=validate,
    table=table,
    plot=plot,
    backends=("hf", "vllm"),
    definition="debias_lm.metrics.overhead (tok/s ratio vs plain; forward-equivalents per token; peak memory)",
    description=__doc__.split("\n")[0],
))
