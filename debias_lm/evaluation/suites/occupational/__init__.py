"""occupational: gender bias of occupations against BLS CPS 2022 shares.

The likelihood probe (next-token pronoun probabilities; prompt methods: kinds ``none`` and ``prompt``) and the
generation probe for every method (decoding methods sample through their own ``generate``), p̂(F|o) against
BLS: MAE, Pearson r, parity gap, amplification (``debias_lm.metrics.occupational``). Every method of a probe
is scored on the occupations all of them resolved.

Modules: :mod:`.probes` (the probes, prompts and occupations), :mod:`.standalone` (``debias-lm eval
occupational``: the NBLS comparison arms with its own report files). This package registers the suite.
"""

from __future__ import annotations

from collections import defaultdict

from ...common import chunks, nan_to_none, progress_iter, seeded_subset
from .. import Column, Context, Suite, register_suite
from .probes import (  # noqa: F401  (public names of the probes)
    ARMS,
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
    arm_config,
    arm_name,
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


def _prompt_kind(method: str) -> bool:
    from ...settings import method_spec

    return method_spec(method).kind in ("none", "prompt")


def run(ctx: Context) -> dict:
    from ....errors import UserInputError
    from ....metrics.occupational import occupational_metrics
    from ...settings import method_config

    s = ctx.settings
    occs = seeded_subset(resolve_occupations(None), s.limit, s.seed)
    names = [o.name for o in occs]
    results: dict[str, dict] = {}
    for method in s.methods:
        cfg = method_config(method, s.method_overrides.get(method))
        prompt_method = _prompt_kind(method)
        res = {}
        for probe in s.occupational_probes:
            if probe not in PROBES:
                raise UserInputError(f"occupational probe {probe!r} is invalid: expected one of {', '.join(PROBES)}")
            if probe == "likelihood" and not prompt_method:
                res[probe] = {"not_applicable": "the likelihood probe reads next-token probabilities of the "
                                                "prompt; a decoding method is measured by the generation probe"}
                continue
            done = [r for r in ctx.store.select("occupational", method) if r.get("probe") == probe and r["id"].split(":", 1)[1] in names]
            if len(done) < len(names):
                if prompt_method:
                    out = evaluate_occupational(ctx.model, ctx.tokenizer, method=cfg, probe=probe, occupations=names,
                                                chat=s.chat, n_samples=s.occupational_samples,
                                                max_new_tokens=s.max_new_tokens, seed=s.seed,
                                                batch_size=s.batch_size, progress=s.progress)
                    rows = out.occupations
                else:
                    rows = decoding_generation_probe(ctx, method, occs)
                have = {r["id"] for r in done}
                new = [{"suite": "occupational", "method": method, "id": f"{probe}:{r['occupation']}", "sample": 0,
                        "probe": probe, **nan_to_none({k: v for k, v in r.items() if k != "p_female_per_template"})}
                       for r in rows if f"{probe}:{r['occupation']}" not in have]
                ctx.store.add(new)
                done = [r for r in ctx.store.select("occupational", method) if r.get("probe") == probe and r["id"].split(":", 1)[1] in names]
            done.sort(key=lambda r: names.index(r["id"].split(":", 1)[1]))
            res[probe] = done
        results[method] = res
    # every method of a probe is scored on the occupations all of them resolved (counts per method kept)
    for probe in s.occupational_probes:
        arms = [m for m in results if isinstance(results[m].get(probe), list)]
        common = set(names)
        for m in arms:
            common &= {r["id"].split(":", 1)[1] for r in results[m][probe] if r["p_female"] is not None}
        for m in arms:
            done = results[m][probe]
            rows = [r for r in done if r["id"].split(":", 1)[1] in common]
            metrics = occupational_metrics([r["p_female"] for r in rows], [r["bls_women"] for r in rows])
            resolved = sum(r["p_female"] is not None for r in done)
            results[m][probe] = {**metrics, "n_resolved": resolved, "n_unresolved": len(done) - resolved,
                                 "compared_on": "occupations every method resolved"}
    return results


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
    from ....errors import UserInputError

    bad = [p for p in settings.occupational_probes if p not in PROBES]
    if bad or not settings.occupational_probes:
        raise UserInputError(f"--probe {','.join(bad) or '(none)'} is invalid: expected {', '.join(PROBES)}")


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
    columns=(Column("{probe}: MAE (pp)", "{probe}.mae_pp", False),
             Column("{probe}: Pearson r", "{probe}.pearson_r", True),
             Column("{probe}: parity gap (pp)", "{probe}.parity_gap_pp", None),
             Column("{probe}: amplification (pp)", "{probe}.amplification_pp", None)),
    definition="debias_lm.metrics.occupational (MAE / Pearson r / parity gap / amplification vs BLS 2022)",
    description="occupational: p̂(female | occupation) of a likelihood and a generation probe against BLS 2022",
))
