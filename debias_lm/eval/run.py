"""``run_eval``: check everything, load the model once, run the suites, write results.json and report.md."""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..utils.files import check_output_path
from .harness import (
    HF_ONLY,
    SUITES,
    EvalSettings,
    HFGenerator,
    SampleStore,
    VLLMGenerator,
    check_methods,
    git_commit,
    method_config,
    nan_to_none,
    package_versions,
)

log = logging.getLogger(__name__)

METRIC_DEFINITIONS = {
    "toxicity": "debias_lm.metrics.toxicity (EMT, per-prompt toxicity probability, per-generation toxic rate; tau 0.5)",
    "counterfactual": "debias_lm.metrics.counterfactual (|mean_f - mean_m| gaps; mean W1 over pairs)",
    "fluency": "debias_lm.metrics.fluency (conditional PPL, > 1e4 dropped, mean and median; dist-n per prompt, mean; "
               "repetition rate seq-rep-n, mean; PPL flagged circular when the method selects by it)",
    "occupational": "debias_lm.metrics.occupational (MAE / Pearson r / parity gap / amplification vs BLS 2022)",
    "bbq-gender": "debias_lm.metrics.bbq (accuracy ambig / disambig; S_DIS, S_AMB)",
    "pope-synthetic": "debias_lm.metrics.pope (accuracy, precision, recall, F1, yes-ratio of predictions, ECE 10 bins)",
    "overhead": "debias_lm.metrics.overhead (tok/s ratio vs plain; forward-equivalents per token; peak memory)",
}


def validate(settings: EvalSettings) -> None:
    """Every user input is checked here, before a model is loaded."""
    if not settings.suites:
        raise UserInputError(f"--suite needs at least one suite: {', '.join(SUITES)}")
    for s in settings.suites:
        if s not in SUITES:
            raise UserInputError(f"--suite {s!r} is invalid: expected one of {', '.join(SUITES)}")
    if settings.backend not in ("hf", "vllm"):
        raise UserInputError(f"--backend {settings.backend!r} is invalid: expected hf or vllm")
    if settings.limit is not None and settings.limit < 1:
        raise UserInputError(f"--limit={settings.limit} is invalid: expected >= 1")
    for name, v in (("--n-samples", settings.n_samples), ("--max-new-tokens", settings.max_new_tokens),
                    ("--batch-size", settings.batch_size), ("--occupational-samples", settings.occupational_samples),
                    ("bbq_max_new_tokens", settings.bbq_max_new_tokens)):
        if v < 1:
            raise UserInputError(f"{name}={v} is invalid: expected >= 1")
    if not (0.0 < settings.top_p <= 1.0) or not (0 < settings.temperature < math.inf):  # NaN fails both
        raise UserInputError(f"--top-p {settings.top_p} / --temperature {settings.temperature} is invalid: "
                             "expected --top-p in (0, 1] and a finite --temperature > 0")
    check_output_path(settings.out, kind="dir", flag="--out")
    for suite in settings.datasets:
        if suite not in SUITES:
            raise UserInputError(f"--dataset {suite}=... names an unknown suite (expected one of {', '.join(SUITES)})")
    check_methods(settings)
    from . import suites as S

    if {"toxicity", "fluency"} & set(settings.suites):  # dataset files / specs: read once here, before the model
        S.prompt_items(settings)
    if "counterfactual" in settings.suites:
        S.pair_items(settings)
    if "bbq-gender" in settings.suites:
        S.bbq_items(settings)
    if "occupational" in settings.suites:
        from .occupational import PROBES

        bad = [p for p in settings.occupational_probes if p not in PROBES]
        if bad or not settings.occupational_probes:
            raise UserInputError(f"--probe {','.join(bad) or '(none)'} is invalid: expected {', '.join(PROBES)}")
    if "pope-synthetic" in settings.suites:
        from .suites import check_pope_model

        check_pope_model(settings.pope_model)
    if "overhead" in settings.suites:
        from .bench import check_bench_args

        check_bench_args(settings.methods, settings.bench_batches, [settings.backend], settings.bench_new_tokens,
                         settings.bench_repeats)


def build_scorers(settings: EvalSettings) -> tuple[dict, Any]:
    from .scorers import get_scorer

    tox, sent = {}, None
    if {"toxicity", "counterfactual"} & set(settings.suites):
        for spec in settings.toxicity_scorers:
            sc = get_scorer(spec)
            if sc.kind != "toxicity":
                raise UserInputError(f"--toxicity-scorer {spec!r} is a {sc.kind} scorer, not a toxicity scorer")
            tox[sc.name] = sc
        if not tox:
            raise UserInputError("--toxicity-scorer needs at least one scorer, e.g. hatesonar")
    if "counterfactual" in settings.suites:
        sent = get_scorer(settings.sentiment_scorer)
        if sent.kind != "sentiment":
            raise UserInputError(f"--sentiment-scorer {settings.sentiment_scorer!r} is a {sent.kind} scorer")
    return tox, sent


def build_regard_scorer(settings: EvalSettings):
    if not settings.regard_scorer or "counterfactual" not in settings.suites:
        return None
    from .scorers import get_scorer

    sc = get_scorer(settings.regard_scorer)
    if sc.kind != "regard":
        raise UserInputError(f"--regard-scorer {settings.regard_scorer!r} is a {sc.kind} scorer, not a regard scorer")
    return sc


# settings that change what a stored row means: a resumed run must use the same ones
RESUME_KEYS = ("model", "dtype", "backend", "max_new_tokens", "top_p", "temperature", "seed", "batch_size",
               "method_overrides", "datasets", "chat", "occupational_samples", "bbq_max_new_tokens", "pope_model")


def _generation_settings(settings: EvalSettings) -> dict:
    d = settings.to_dict()
    return json.loads(json.dumps({k: d[k] for k in RESUME_KEYS}))


def check_resume(settings: EvalSettings, out: Path) -> None:
    """A run directory is resumed only with the settings its rows were made with (before any work)."""
    path = out / "run_settings.json"
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    new = _generation_settings(settings)
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in RESUME_KEYS if k in old and old[k] != new[k]]
    if diff:
        raise UserInputError(f"{out} holds a run made with other settings ({'; '.join(diff)}); resume it with the "
                             "same settings or pass a new --out")


def run_eval(settings: EvalSettings) -> dict:
    """Run every suite of ``settings`` and write samples.jsonl, results.json, report.md and plots."""
    from . import suites as S

    validate(settings)
    tox_scorers, sent_scorer = build_scorers(settings)  # missing scorer packages fail here, before the model
    out = Path(settings.out)
    check_resume(settings, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_settings.json").write_text(json.dumps(_generation_settings(settings), indent=2) + "\n")
    store = SampleStore(out)
    ctx = S.Context(settings=settings, store=store, out=out, toxicity_scorers=tox_scorers,
                    sentiment_scorer=sent_scorer, regard_scorer=build_regard_scorer(settings))
    text_suites = [s for s in settings.suites if s != "pope-synthetic"]
    model_path = None
    if text_suites:
        from ..models import load_model

        ctx.model, ctx.tokenizer = load_model(settings.model, dtype=settings.dtype)
        ctx.model.eval()
        if settings.backend == "vllm":
            from vllm_debias.serve import resolve_model

            model_path = resolve_model(settings.model)
            ctx.generator = VLLMGenerator(model_path, settings)
        else:
            ctx.generator = HFGenerator(ctx.model, ctx.tokenizer, settings)
        if "fluency" in settings.suites:
            if settings.ppl_model:
                ctx.ppl_model, ctx.ppl_tokenizer = load_model(settings.ppl_model, dtype="float32")
                ctx.ppl_name = settings.ppl_model
            else:
                ctx.ppl_model, ctx.ppl_tokenizer = ctx.model, ctx.tokenizer
                ctx.ppl_name = f"{settings.model} (the evaluated model, plain weights, {settings.dtype})"
    S.precheck(ctx)  # every method's input checks on every prompt set, before any generation
    runners = {"toxicity": S.run_toxicity, "counterfactual": S.run_counterfactual, "fluency": S.run_fluency,
               "occupational": S.run_occupational, "bbq-gender": S.run_bbq, "pope-synthetic": S.run_pope_synthetic}
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    order = [s for s in SUITES if s in settings.suites]  # toxicity before fluency (fluency reuses its samples)
    for suite in order:
        t0 = time.perf_counter()
        log.info("suite %s", suite)
        if suite == "overhead":
            results[suite] = _overhead(ctx, model_path)
        else:
            results[suite] = runners[suite](ctx)
        timing[suite] = time.perf_counter() - t0
        _write_results(ctx, results, timing)  # after every suite: a partial run still has its numbers
    payload = _write_results(ctx, results, timing)
    from .summary import write_report

    write_report(out, payload, store)
    return payload


def _overhead(ctx, model_path) -> list[dict]:
    """The overhead measurement; a resumed run reuses a complete earlier measurement with the same settings
    (all methods are measured side by side in one go, so a partial one is measured again)."""
    from .bench import measure_hf, measure_vllm

    s = ctx.settings
    methods = [m for m in s.methods if m != "none"]
    want = {(s.backend, b, m) for b in s.bench_batches for m in ["none", *methods]
            if not (s.backend == "vllm" and m in HF_ONLY)}
    old = {(r["backend"], r["batch"], r["method"]): r for r in ctx.store.select("overhead")
           if r.get("new_tokens") == s.bench_new_tokens and r.get("repeats") == s.bench_repeats}
    if want <= set(old):
        keep = [old[k] for k in sorted(want, key=lambda k: (k[1], ["none", *methods].index(k[2])))]
        return [{k: v for k, v in r.items() if k not in ("suite", "id", "sample")} for r in keep]
    if s.backend == "vllm":
        ctx.generator = None  # one engine at a time
        rows = measure_vllm(model_path, methods, s.bench_batches, new_tokens=s.bench_new_tokens,
                            repeats=s.bench_repeats, dtype=s.dtype, overrides=s.method_overrides, progress=s.progress)
    else:
        rows = measure_hf(ctx.model, ctx.tokenizer, methods, s.bench_batches, new_tokens=s.bench_new_tokens,
                          repeats=s.bench_repeats, overrides=s.method_overrides, progress=s.progress)
    ctx.store.add([{"suite": "overhead", "id": f"{r['backend']}:{r['batch']}", "sample": 0, **r} for r in rows])
    return rows


def _write_results(ctx, results: dict, timing: dict) -> dict:
    s = ctx.settings
    rows = list(ctx.store.rows.values())
    payload = {
        "schema": "debias-lm-eval/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "model": {"name": s.model, "dtype": s.dtype, "backend": s.backend},
        "settings": s.to_dict(),
        "methods": {m: (method_config(m, s.method_overrides.get(m)).to_dict() if "+" not in m else m)
                    for m in s.methods},
        "scorers": {
            "toxicity": [sc.describe() for sc in ctx.toxicity_scorers.values()],
            "sentiment": ctx.sentiment_scorer.describe() if ctx.sentiment_scorer else None,
            "regard": ctx.regard_scorer.describe() if ctx.regard_scorer else None,
            "perplexity": ctx.ppl_name or None,
        },
        "seeds": {"sampling_base": s.seed, "subset": s.seed,
                  "rule": "torch.manual_seed((seed * 1000003 + crc32('<first id>:<sample>')) mod 2^31) per batch"},
        "empty_generations": "scored as the empty text and counted (n_empty)",
        "metric_definitions": {k: v for k, v in METRIC_DEFINITIONS.items() if k in s.suites},
        "counts": {"rows": len(rows), "malformed_rows": sum(1 for r in rows if r.get("error")),
                   "scorer_errors": sum(len(r.get("score_errors", {})) for r in rows)},
        "seconds": timing,
        "results": results,
    }
    payload = nan_to_none(payload)
    path = Path(s.out) / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return payload


def _isnum(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))
