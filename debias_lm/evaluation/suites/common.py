"""What the generation suites share: their prompt sets, sampling what is missing, scoring, grouping."""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from importlib import resources
from pathlib import Path

from ...errors import UserInputError
from ..common import chunks, progress_iter, seeded_subset
from ..settings import EvalSettings
from . import Context


def bundled(name: str) -> list[dict]:
    """Rows of a JSONL file shipped in ``debias_lm/data/eval``."""
    from ...utils.jsonl import read_jsonl_objects

    with resources.as_file(resources.files("debias_lm") / "data" / "eval" / name) as p:
        return [row for _, row in read_jsonl_objects(p)]


def prompt_items(settings: EvalSettings, suite: str = "toxicity") -> tuple[list[dict], list[dict]]:
    """(items, error rows) for the toxicity/fluency prompt set: items are {"id", "prompt"}."""
    spec = settings.datasets.get(suite) or settings.datasets.get("toxicity")
    errors = []
    if spec:
        from ..datasets import load_dataset_spec

        res = load_dataset_spec(spec)
        items = []
        for r in res.records:
            if r.error or not str(r.data.get("prompt", "")).strip():
                errors.append({"suite": suite, "method": "-", "id": r.id, "error": r.error or "empty prompt"})
            else:
                items.append({"id": r.id, "prompt": r.data["prompt"]})
    else:
        items = [{"id": r["id"], "prompt": r["prompt"]} for r in bundled("toxicity_prompts.jsonl")]
    return seeded_subset(items, settings.limit, settings.seed), errors


def pair_items(settings: EvalSettings) -> tuple[list[dict], list[dict]]:
    """Counterfactual pairs {"id", "female", "male"} (default: the bundled gender pairs)."""
    spec = settings.datasets.get("counterfactual")
    errors, items = [], []
    if spec:
        from ...utils.jsonl import read_jsonl_objects

        if not Path(spec).is_file():
            raise UserInputError(f"--dataset counterfactual={spec}: no such file (JSONL rows with id, female, male)")
        raw = [row for _, row in read_jsonl_objects(spec, what="counterfactual pairs file")]
    else:
        raw = bundled("gender_pairs.jsonl")
    for n, r in enumerate(raw):
        rid = str(r.get("id", f"pair-{n}"))
        if not all(isinstance(r.get(k), str) and r[k].strip() for k in ("female", "male")):
            errors.append({"suite": "counterfactual", "method": "-", "id": rid,
                           "error": "malformed pair: needs non-empty 'female' and 'male' strings"})
        else:
            items.append({"id": rid, "female": r["female"], "male": r["male"]})
    return seeded_subset(items, settings.limit, settings.seed), errors


def batch_seed(base: int, key: str) -> int:
    return (base * 1_000_003 + zlib.crc32(key.encode())) % (2**31)


def sample_prompts(ctx: Context, suite: str, method: str, prompts: list[dict], *, chat: bool = False) -> None:
    """Generate ``n_samples`` continuations per prompt row ({"id", "prompt", ...extra}) that are missing."""
    s = ctx.settings
    todo = [(p, j) for p in prompts for j in range(s.n_samples) if not ctx.store.has(suite, method, p["id"], j)]
    if not todo:
        return
    ctx.generator.check(method, [p["prompt"] for p in prompts], chat)
    batches = list(chunks(todo, s.batch_size))
    for _, batch in progress_iter(batches, desc=f"{suite}/{method}", enabled=s.progress):
        seed = batch_seed(s.seed, f"{batch[0][0]['id']}:{batch[0][1]}")
        texts = ctx.generator.generate(method, [p["prompt"] for p, _ in batch], chat=chat, seed=seed,
                                       max_new_tokens=s.max_new_tokens)
        rows = []
        for (p, j), text in zip(batch, texts):
            extra = {k: v for k, v in p.items() if k not in ("id", "prompt")}
            rows.append({"suite": suite, "method": method, "id": p["id"], "sample": j, "prompt": p["prompt"],
                         "text": text, "empty": not text.strip(), "seed": seed, **extra, "scores": {},
                         "score_errors": {}})
        ctx.store.add(rows)


def score_rows(ctx: Context, rows: list[dict], scorers: dict) -> None:
    """Fill ``row["scores"][name]`` for every scorer that has not scored the row yet (errors recorded)."""
    from ..scorers import score_texts

    for name, scorer in scorers.items():
        todo = [r for r in rows if name not in r.get("scores", {}) and name not in r.get("score_errors", {})]
        if not todo:
            continue
        scores, errors = score_texts(scorer, [r["text"] for r in todo], progress=ctx.settings.progress)
        for r, sc, err in zip(todo, scores, errors):
            r.setdefault("scores", {})
            r.setdefault("score_errors", {})
            if err is None:
                r["scores"][name] = sc
            else:
                r["score_errors"][name] = err
    ctx.store.flush()


def by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (str(r["id"]), r["sample"])):
        out[str(r["id"])].append(r)
    return out


def score_list(rows: list[dict], name: str) -> list[float | None]:
    return [r.get("scores", {}).get(name) for r in rows]


def record_errors(ctx: Context, errors: list[dict]) -> None:
    """Malformed dataset rows become rows with an ``error`` (nothing is dropped silently)."""
    new = [e for e in errors if not ctx.store.has(e["suite"], e["method"], e["id"])]
    if new:
        ctx.store.add(new)


def mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def bar_plot(by_method: dict, keys, title: str, path: Path, plt) -> Path:
    """Grouped bars: one group per metric key, one bar per method."""
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
    return save_figure(fig, path, plt)


def save_figure(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------
# Suites on a file the user provides (CrowS-Pairs, StereoSet, BOLD)
# ------------------------------------------------------------------------------------------------------
def user_dataset(settings: EvalSettings, suite: str, loader: str, where: str):
    """The records of ``--dataset SUITE=FILE`` (the dataset's published format); without one, a clear refusal
    naming where to get the file (these sets are not shipped with the package)."""
    from ..datasets import load_dataset_spec

    spec = settings.datasets.get(suite)
    if not spec:
        raise UserInputError(f"the {suite} suite runs on a file you provide: pass --dataset {suite}=FILE ({where})")
    source = spec.split(":", 1)[1] if spec.lower().startswith(loader + ":") else spec
    return load_dataset_spec(f"{loader}:{source}")


def likelihood_method(spec) -> bool:
    """Likelihood suites score fixed sentences: the baseline and prompt methods (which only change the text the
    sentence is read after); decoding methods change nothing a likelihood reads."""
    return spec.kind == "prompt"


def sentence_scores(ctx: Context, method: str, texts: list[str]) -> list[float]:
    """Summed log-likelihood of each text under the evaluated model, read after the method's prompt transform
    (a prefix shared by every sentence, so it cancels in every comparison the suites make)."""
    from ...metrics.stereotype import sentence_logliks
    from ..backends import hf_runner
    from ..settings import method_config

    impl = hf_runner(ctx.model, ctx.tokenizer, method_config(method, ctx.settings.method_overrides.get(method))).impl
    full = [impl.transform_prompt(t) for t in texts]
    ll_full = sentence_logliks(ctx.model, ctx.tokenizer, full, batch_size=ctx.settings.batch_size)
    prefixes = {f[: len(f) - len(t)] for f, t in zip(full, texts) if f.endswith(t)}
    if len(prefixes) != 1 or not all(f.endswith(t) for f, t in zip(full, texts)):
        return ll_full  # not a shared prefix: comparisons between sentences are still on equal terms
    prefix = prefixes.pop()
    if not prefix.strip():
        return ll_full
    ll_prefix = sentence_logliks(ctx.model, ctx.tokenizer, [prefix], batch_size=1)[0]
    return [v - ll_prefix for v in ll_full]  # LL(sentence | prefix) = LL(prefix + sentence) - LL(prefix)


def user_records(settings: EvalSettings, suite: str, where: str) -> tuple[list, list[dict]]:
    """The well-formed records of ``--dataset SUITE=FILE`` cut to ``--limit`` (seeded), and an error row for each
    malformed one (for :func:`record_errors`): the start every suite on a user-provided file shares."""
    loaded = user_dataset(settings, suite, suite, where)
    errors = [{"suite": suite, "method": "-", "id": r.id, "error": r.error} for r in loaded.records if r.error]
    return seeded_subset([r for r in loaded.records if not r.error], settings.limit, settings.seed), errors


def sentence_likelihood_rows(ctx: Context, suite: str, where: str, sentences: dict[str, str],
                             fields) -> dict[str, list[dict]]:
    """The likelihood suites' loop (CrowS-Pairs, StereoSet): for every method, the summed log-likelihood of each
    item's sentences (``sentences``: row field -> the record's data key, e.g. ``{"ll_more": "sent_more"}``) for
    the items samples.jsonl lacks, stored with ``fields(record)``; returns ``{method: rows in item order}``."""
    items, errors = user_records(ctx.settings, suite, where)
    record_errors(ctx, errors)
    n = len(sentences)
    out = {}
    for method in ctx.settings.methods:
        todo = [r for r in items if not ctx.store.has(suite, method, r.id)]
        if todo:
            ll = sentence_scores(ctx, method, [r.data[key] for r in todo for key in sentences.values()])
            ctx.store.add([{"suite": suite, "method": method, "id": r.id, "sample": 0, **fields(r),
                            **{name: ll[n * i + j] for j, name in enumerate(sentences)}} for i, r in enumerate(todo)])
        rows = {r["id"]: r for r in ctx.store.select(suite, method)}
        out[method] = [rows[r.id] for r in items if r.id in rows]
    return out
