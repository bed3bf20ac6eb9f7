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
from ..utils.provenance import git_commit, package_versions
from .common import nan_to_none
from .settings import EvalSettings, method_config, method_spec
from .store import SampleStore

log = logging.getLogger(__name__)


def check_methods(settings: EvalSettings, suites) -> None:
    """Every (suite, method) pair must be runnable; fails before any model is loaded."""
    if not settings.methods:
        raise UserInputError("--method needs at least one method, e.g. --method none,nbls")
    specs = {m: [method_spec(p) for p in m.split("+")] for m in settings.methods}  # unknown names listed
    for m in settings.method_overrides:
        if m not in settings.methods:
            raise UserInputError(f"--set {m}.FIELD=... names method {m!r}, which is not in --method")
    for suite in suites:
        for m in settings.methods:
            if not suite.takes(m):
                taken = ", ".join(["none", *suite.methods_taken()] + (["a+b combinations"] if suite.combos else []))
                raise UserInputError(
                    f"method {m!r} does not apply to the {suite.name} suite (it takes {taken}); "
                    f"run that suite separately or drop the method")
            for spec in specs[m]:
                if not spec.supports(settings.backend):
                    raise UserInputError(f"method {m!r} runs on the HF backend only: use --backend hf "
                                         f"({spec.why_unsupported(settings.backend)})")
    bad = [s.name for s in suites if settings.backend not in s.backends]
    if bad:
        ok = [s.name for s in _all_suites() if settings.backend in s.backends]
        raise UserInputError(f"--backend {settings.backend} runs the generation suites ({', '.join(ok)}); "
                             f"run {', '.join(bad)} with --backend hf")
    for m in settings.methods:
        if "+" not in m:
            method_config(m, settings.method_overrides.get(m)).preflight()


def _all_suites():
    from .suites import list_suites

    return list_suites()


def selected_suites(settings: EvalSettings) -> list:
    """The suites of ``settings`` in run order (unknown names: one line naming the registered ones)."""
    from .suites import get_suite, suite_names

    names = suite_names()
    if not settings.suites:
        raise UserInputError(f"--suite needs at least one suite: {', '.join(names)}")
    for s in settings.suites:
        get_suite(s)
    return [get_suite(n) for n in names if n in settings.suites]


def validate(settings: EvalSettings) -> list:
    """Every user input is checked here, before a model is loaded; returns the suites to run."""
    from .suites import suite_names

    suites = selected_suites(settings)
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
        if suite not in suite_names():
            raise UserInputError(f"--dataset {suite}=... names an unknown suite (expected one of "
                                 f"{', '.join(suite_names())})")
    check_methods(settings, suites)
    for suite in suites:  # dataset files / specs, probes, model dirs: read once here, before the model
        if suite.validate is not None:
            suite.validate(settings)
    return suites


def _needs(settings: EvalSettings, what: str) -> bool:
    """Whether a selected suite declares it needs ``what`` (toxicity / sentiment / regard scorers, perplexity)."""
    from .suites import get_suite, suite_names

    return any(what in get_suite(n).needs for n in suite_names() if n in settings.suites)


def build_scorers(settings: EvalSettings) -> tuple[dict, Any]:
    from .scorers import get_scorer

    tox, sent = {}, None
    if _needs(settings, "toxicity"):
        for spec in settings.toxicity_scorers:
            sc = get_scorer(spec)
            if sc.kind != "toxicity":
                raise UserInputError(f"--toxicity-scorer {spec!r} is a {sc.kind} scorer, not a toxicity scorer")
            tox[sc.name] = sc
        if not tox:
            raise UserInputError("--toxicity-scorer needs at least one scorer, e.g. hatesonar")
    if _needs(settings, "sentiment"):
        sent = get_scorer(settings.sentiment_scorer)
        if sent.kind != "sentiment":
            raise UserInputError(f"--sentiment-scorer {settings.sentiment_scorer!r} is a {sent.kind} scorer")
    return tox, sent


def build_regard_scorer(settings: EvalSettings):
    if not settings.regard_scorer or not _needs(settings, "regard"):
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
    from .backends import make_generator, vllm_model_path
    from .suites import Context

    suites = validate(settings)
    tox_scorers, sent_scorer = build_scorers(settings)  # missing scorer packages fail here, before the model
    out = Path(settings.out)
    check_resume(settings, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_settings.json").write_text(json.dumps(_generation_settings(settings), indent=2) + "\n")
    store = SampleStore(out)
    ctx = Context(settings=settings, store=store, out=out, toxicity_scorers=tox_scorers,
                  sentiment_scorer=sent_scorer, regard_scorer=build_regard_scorer(settings))
    if any(s.text_model for s in suites):
        from ..models import load_model

        ctx.model, ctx.tokenizer = load_model(settings.model, dtype=settings.dtype)
        ctx.model.eval()
        if settings.backend == "vllm":
            ctx.model_path = vllm_model_path(settings.model)
        ctx.generator = make_generator(settings, ctx.model, ctx.tokenizer)
        if _needs(settings, "perplexity"):
            if settings.ppl_model:
                ctx.ppl_model, ctx.ppl_tokenizer = load_model(settings.ppl_model, dtype="float32")
                ctx.ppl_name = settings.ppl_model
            else:
                ctx.ppl_model, ctx.ppl_tokenizer = ctx.model, ctx.tokenizer
                ctx.ppl_name = f"{settings.model} (the evaluated model, plain weights, {settings.dtype})"
    precheck(ctx, suites)  # every method's input checks on every prompt set, before any generation
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for suite in suites:  # registry order: toxicity before fluency (fluency reuses its samples)
        t0 = time.perf_counter()
        log.info("suite %s", suite.name)
        results[suite.name] = suite.run(ctx)
        timing[suite.name] = time.perf_counter() - t0
        _write_results(ctx, suites, results, timing)  # after every suite: a partial run still has its numbers
    payload = _write_results(ctx, suites, results, timing)
    from .report import write_report

    write_report(out, payload, store)
    return payload


def precheck(ctx, suites) -> None:
    """Every method's input checks on every suite's prompts, before any generation starts."""
    if ctx.generator is None:
        return
    sets = [ps for suite in suites if suite.prompts is not None for ps in suite.prompts(ctx)]
    for method in ctx.settings.methods:
        for prompts, chat in sets:
            if prompts:
                ctx.generator.check(method, prompts, chat)


def _write_results(ctx, suites, results: dict, timing: dict) -> dict:
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
        "metric_definitions": {suite.name: suite.definition for suite in suites},
        "metric_columns": {suite.name: [{"label": c.label, "key": c.key, "higher_is_better": c.higher_is_better}
                                        for c in suite.columns] for suite in suites},
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
