"""occupational: gender bias of occupations against BLS CPS 2022 shares.

The likelihood probe (next-token pronoun probabilities; prompt methods: kinds ``none`` and ``prompt``) and the
generation probe for every method (decoding methods sample through their own ``generate``), p̂(F|o) against
BLS: MAE, Pearson r, parity gap, amplification (``debias_lm.metrics.occupational``). Every method of a probe
is scored on the occupations all of them resolved, and its MAE reduction is taken against the baseline
(``none``) on that set. A prompt method runs both probes in one pass (:func:`.probes.run_probes`).

The NBLS comparison of ``make run`` is this suite with NBLS and its two registered controls::

    debias-lm eval --suite occupational --method none,nbls_instructions,nbls_shuffled,nbls \
        --probe likelihood,generation --occupational-samples 8 --max-new-tokens 16 --batch-size 64 --out DIR

Occupations: the 50 held-out :data:`DEFAULT_OCCUPATIONS`, or ``--dataset occupational=FILE`` (one BLS
occupation name per line, ``#`` comments), cut to ``--limit`` by a seeded subset. Module :mod:`.probes`
holds the probes, prompts and occupations; this module registers the suite.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict

from ...common import chunks, nan_to_none, progress_iter, seeded_subset
from .. import Column, Context, Suite, register_suite
from .probes import (  # noqa: F401  (public names of the probes)
    CHAT_INSTRUCTION,
    DEFAULT_OCCUPATIONS,
    FEMALE_PRONOUNS,
    FEMALE_WORDS,
    MALE_PRONOUNS,
    MALE_WORDS,
    PROBES,
    TEMPLATES,
    OccupationalResult,
    PromptBuilder,
    count_gendered,
    evaluate_occupational,
    evaluate_occupational_probes,
    generation_probe,
    generation_rows,
    likelihood_probe,
    pronoun_token_ids,
    read_occupations_file,
    resolve_occupations,
    run_probes,
)

DETAILS = "occupational_details.json"  # per method: config, chat template, system prompt, grounding record


def _prompt_kind(method: str) -> bool:
    from ...settings import method_spec

    return method_spec(method).kind in ("none", "prompt")


def suite_occupations(settings) -> list:
    """The evaluated occupations: ``--dataset occupational=FILE`` or the defaults, cut to ``--limit`` (seeded)."""
    from ....utils.files import read_text

    path = settings.datasets.get("occupational")
    names = None
    if path:
        if os.path.isfile(path):
            read_text(path, what="occupations file")  # bytes that are not UTF-8: the file and line
        names = read_occupations_file(path)
    return seeded_subset(resolve_occupations(names), settings.limit, settings.seed)


def _say(settings, text: str) -> None:
    """A progress line per method (beside the progress bars; ``--no-progress`` silences both)."""
    if settings.progress:
        from tqdm.auto import tqdm

        tqdm.write(text)


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def run(ctx: Context) -> dict:
    from ....metrics.occupational import occupational_metrics, relative_reduction
    from ...settings import is_baseline, method_config

    s = ctx.settings
    occs = suite_occupations(s)
    names = [o.name for o in occs]
    probes = list(s.occupational_probes)
    details_path = ctx.out / DETAILS
    details = json.loads(details_path.read_text(encoding="utf-8")) if details_path.is_file() else {}

    def done(method, probe):
        rows = [r for r in ctx.store.select("occupational", method)
                if r.get("probe") == probe and r["id"].split(":", 1)[1] in names]
        return sorted(rows, key=lambda r: names.index(r["id"].split(":", 1)[1]))

    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    n = len(s.methods)
    for i, method in enumerate(s.methods, 1):
        prompt_method = _prompt_kind(method)
        res: dict = {}
        wanted = []
        for probe in probes:
            if probe == "likelihood" and not prompt_method:
                res[probe] = {"not_applicable": "the likelihood probe reads next-token probabilities of the "
                                                "prompt; a decoding method is measured by the generation probe"}
            else:
                wanted.append(probe)
        missing = [p for p in wanted if len(done(method, p)) < len(names)]
        if missing:
            _say(s, f"[{i}/{n}] {method}: {' + '.join(missing)} probe ...")
            t0 = time.perf_counter()
            if prompt_method:  # every missing probe in one pass
                cfg = method_config(method, s.method_overrides.get(method))
                out = evaluate_occupational_probes(
                    ctx.model, ctx.tokenizer, method=cfg, probes=missing, occupations=names, chat=s.chat,
                    n_samples=s.occupational_samples, max_new_tokens=s.max_new_tokens, seed=s.seed,
                    batch_size=s.batch_size, progress=s.progress)
                rows_by_probe = {r.probe: r.occupations for r in out}
                details[method] = {k: v for k, v in out[0].details.items()
                                   if k not in ("n_samples", "max_new_tokens", "seed", "temperature", "top_p")}
            else:
                rows_by_probe = {"generation": decoding_generation_probe(ctx, method, occs)}
            seconds[method] = round(time.perf_counter() - t0, 2)
            for probe, rows in rows_by_probe.items():
                have = {r["id"] for r in done(method, probe)}
                ctx.store.add([{"suite": "occupational", "method": method, "id": f"{probe}:{r['occupation']}",
                                "sample": 0, "probe": probe,
                                **nan_to_none({k: v for k, v in r.items() if k != "p_female_per_template"})}
                               for r in rows if f"{probe}:{r['occupation']}" not in have])
            own = []
            for probe, rows in rows_by_probe.items():
                m = occupational_metrics([r["p_female"] for r in rows], [r["bls_women"] for r in rows])
                own.append(f"{probe} MAE {_fmt(m['mae_pp'])} pp ({m['n']} resolved)")
            _say(s, f"[{i}/{n}] {method}: {', '.join(own)}; {seconds[method]:.0f} s")
        else:
            _say(s, f"[{i}/{n}] {method}: {' + '.join(wanted)} probe resumed from samples.jsonl")
        for probe in wanted:
            res[probe] = done(method, probe)
        results[method] = res
    if details:
        details_path.write_text(json.dumps(nan_to_none(details), indent=2) + "\n", encoding="utf-8")
    # every method of a probe is scored on the occupations all of them resolved (counts per method kept);
    # the MAE reduction is the baseline's on that same set
    base = next((m for m in results if is_baseline(m)), None)
    for probe in probes:
        arms = [m for m in results if isinstance(results[m].get(probe), list)]
        common = set(names)
        for m in arms:
            common &= {r["id"].split(":", 1)[1] for r in results[m][probe] if r["p_female"] is not None}
        for m in arms:
            rows_m = results[m][probe]
            rows = [r for r in rows_m if r["id"].split(":", 1)[1] in common]
            metrics = occupational_metrics([r["p_female"] for r in rows], [r["bls_women"] for r in rows])
            resolved = sum(r["p_female"] is not None for r in rows_m)
            results[m][probe] = {**metrics, "n_resolved": resolved, "n_unresolved": len(rows_m) - resolved,
                                 "compared_on": "occupations every method resolved"}
        if base in arms:
            for m in arms:
                if m != base:
                    results[m][probe]["mae_reduction_vs_none"] = relative_reduction(
                        results[base][probe]["mae_pp"], results[m][probe]["mae_pp"])
    for m, secs in seconds.items():
        results[m]["seconds"] = secs
    return results


def table(by_method: dict, payload: dict) -> str:
    """A title line and the comparison table: one row per (probe, method), every method of a probe scored on
    one set of occupations (column "compared on"), each method's own resolved / unresolved counts."""
    probes = list(payload["settings"].get("occupational_probes", PROBES))
    head = ("| probe | arm | MAE (pp) ↓ | Pearson r ↑ | parity gap (pp) | amplification (pp) | MAE reduction vs none "
            "| compared on | resolved / unresolved (arm) |")
    lines, skipped = [head, "|" + "---|" * 9], []
    for probe in probes:
        for method, res in by_method.items():
            r = res.get(probe)
            if not isinstance(r, dict) or "not_applicable" in r:
                skipped.append(f"{probe} probe: not applicable to {method}" + (f" ({r['not_applicable']})"
                                                                               if isinstance(r, dict) else ""))
                continue
            red = r.get("mae_reduction_vs_none")
            red = "—" if red is None or (isinstance(red, float) and math.isnan(red)) else f"{100 * red:.1f}%"
            lines.append(f"| {probe} | {method} | {_fmt(r['mae_pp'])} | {_fmt(r['pearson_r'], 3)} "
                         f"| {_fmt(r['parity_gap_pp'])} | {_fmt(r['amplification_pp'])} | {red} | {r['n']} "
                         f"| {r['n_resolved']} / {r['n_unresolved']} |")
    n = next((r["n_resolved"] + r["n_unresolved"] for res in by_method.values() for r in res.values()
              if isinstance(r, dict) and "n_resolved" in r), 0)
    title = f"Occupational gender bias vs BLS CPS 2022 ({n} occupations, model: {payload['model']['name']})"
    return "\n".join([title, "", *lines] + ([""] + skipped if skipped else []))


def decoding_generation_probe(ctx: Context, method: str, occs) -> list[dict]:
    """The occupational generation probe for decoding methods: the same prompts as for plain decoding
    (``PromptBuilder`` with no prompt method), sampled through the method's own ``generate``."""
    import torch

    from ....hf.base import encode_left_padded
    from ...settings import method_config

    s = ctx.settings
    builder = PromptBuilder(ctx.model, ctx.tokenizer, method_config("none"), s.chat)
    runner = ctx.generator.runner(method)
    rows_in = [(oi, builder.text(TEMPLATES[j % len(TEMPLATES)].format(occupation=o.surface)))
               for oi, o in enumerate(occs) for j in range(s.occupational_samples)]
    texts: dict[int, list[str]] = defaultdict(list)
    tok = ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for b, batch in progress_iter(list(chunks(rows_in, s.batch_size)), desc=f"occupational/{method}",
                                  enabled=s.progress):
        enc = encode_left_padded(tok, [t for _, t in batch], add_special_tokens=not builder.chat)
        torch.manual_seed(s.seed * 1_000_003 + b)
        out = runner.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=True,
                              temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=s.max_new_tokens, pad_token_id=pad)
        seqs = out.sequences if hasattr(out, "sequences") else out
        width = enc["input_ids"].shape[1]
        for (oi, _), row in zip(batch, seqs[:, width:]):
            texts[oi].append(tok.decode(row, skip_special_tokens=True))
    return generation_rows(occs, texts)


def validate(settings) -> None:
    """Probes, the occupations (file, names) and each prompt method's config with the evaluated occupations
    excluded (e.g. NBLS's k against what is left), before any model loads."""
    from ....errors import UserInputError
    from ...settings import method_config
    from .probes import _method_config

    bad = [p for p in settings.occupational_probes if p not in PROBES]
    if bad or not settings.occupational_probes:
        raise UserInputError(f"--probe {','.join(bad) or '(none)'} is invalid: expected {', '.join(PROBES)}")
    occs = suite_occupations(settings)
    for m in settings.methods:
        if "+" not in m and _prompt_kind(m):
            _method_config(method_config(m, settings.method_overrides.get(m)), occs).preflight()


def plot(out, by_method, payload, store, plt):
    from ..common import save_figure

    rows = store.select("occupational")
    probes = sorted({r.get("probe") for r in rows if r.get("probe")})
    if not probes:
        return None
    fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 4.5), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        for m in by_method:
            pts = [(r["bls_women"], 100 * r["p_female"]) for r in rows
                   if r.get("probe") == probe and r["method"] == m and r.get("p_female") is not None]
            if pts:
                ax.scatter(*zip(*pts), s=14, label=m, alpha=0.7)
        ax.plot([0, 100], [0, 100], "k--", lw=0.8)
        ax.set_xlabel("BLS 2022 % women")
        ax.set_ylabel("model p̂(female) %")
        ax.set_title(f"occupational ({probe} probe)")
        ax.legend(fontsize=8)
    return save_figure(fig, out / "occupational_vs_bls.png", plt)


SUITE = register_suite(Suite(
    name="occupational",
    run=run,
    validate=validate,
    plot=plot,
    table=table,
    columns=(Column("{probe}: MAE (pp)", "{probe}.mae_pp", False),
             Column("{probe}: Pearson r", "{probe}.pearson_r", True),
             Column("{probe}: parity gap (pp)", "{probe}.parity_gap_pp", None),
             Column("{probe}: amplification (pp)", "{probe}.amplification_pp", None)),
    definition="debias_lm.metrics.occupational (MAE / Pearson r / parity gap / amplification vs BLS 2022)",
    description="occupational: p̂(female | occupation) of a likelihood and a generation probe against BLS 2022",
))
