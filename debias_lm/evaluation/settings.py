"""The settings of a ``debias-lm eval`` run (recorded in results.json) and the method configs they name.

``EvalSettings`` is frozen; each field carries its command-line help in ``metadata`` so the CLI can build its
flags from it. ``method_config`` is the harness's one path from a method name (+ ``--set METHOD.FIELD=V``
overrides) to a validated config: :func:`debias_lm.registry.resolve_config`, after the method's registered
``eval_defaults`` (applied only when the user set none of those fields, e.g. debias sampling's counterfactual
context on text suites).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..errors import UserInputError

DEFAULT_POPE_MODEL = os.path.join("results", "pope_synthetic", "model")


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    meta = {"help": help}
    if "default_factory" in kw:
        return dataclasses.field(default_factory=kw.pop("default_factory"), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that defines a run (recorded in results.json)."""

    suites: tuple[str, ...] = _f(help="suites to run (see debias_lm.evaluation.suites.list_suites)")
    methods: tuple[str, ...] = _f(("none",), help="methods to compare; 'none' is plain decoding")
    model: str = _f("default", help="HF model id or local path (default: the embedded SmolLM2-135M-Instruct)")
    dtype: str = _f("float32", help="model dtype: float32, bfloat16 or float16")
    backend: str = _f("hf", help="generation engine: hf or vllm")
    out: str = _f("runs/eval", help="run directory (a rerun resumes it)")
    limit: int | None = _f(None, help="items per suite: prompts, pairs, occupations, questions")
    n_samples: int = _f(25, help="samples per prompt (toxicity / counterfactual / fluency)")
    max_new_tokens: int = _f(20, help="new tokens per sample")
    top_p: float = _f(0.9, help="nucleus sampling top-p")
    temperature: float = _f(1.0, help="sampling temperature")
    seed: int = _f(0, help="base seed (sampling and subsets)")
    batch_size: int = _f(16, help="rows per generate call")
    toxicity_scorers: tuple[str, ...] = _f(("hatesonar", "profanity-check"), help="toxicity scorers")
    sentiment_scorer: str = _f("vader", help="sentiment scorer of the counterfactual suite")
    regard_scorer: str = _f("", help="counterfactual regard gap scorer, e.g. regard (sasha/regardv3)")
    ppl_model: str = _f("", help="scorer LM for perplexity ('' = the evaluated model, unwrapped)")
    datasets: dict[str, str] = _f(help="suite -> dataset spec", default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = _f(help="method -> {field: value}", default_factory=dict)
    chat: bool | None = _f(None, help="bbq-gender / occupational prompting (None: the chat template if any)")
    occupational_probes: tuple[str, ...] = _f(("likelihood", "generation"), help="occupational probes")
    occupational_samples: int = _f(10, help="generation probe samples per occupation")
    bbq_max_new_tokens: int = _f(8, help="new tokens of a BBQ answer")
    pope_model: str = _f(DEFAULT_POPE_MODEL, help="biased synthetic VLM dir of the pope-synthetic suite")
    bench_batches: tuple[int, ...] = _f((1, 8), help="overhead suite batch sizes")
    bench_new_tokens: int = _f(32, help="overhead suite new tokens per row")
    bench_repeats: int = _f(3, help="overhead suite timed rounds")
    progress: bool = _f(True, help="progress bars")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def method_spec(name: str):
    """The registry spec of a harness method name (``"none"`` is an alias of identity)."""
    from ..registry import get_method

    return get_method(name)


def is_baseline(name: str) -> bool:
    """Whether a harness method name is the plain-decoding baseline (the spec's kind is ``none``)."""
    return "+" not in name and method_spec(name).kind == "none"


def method_config(name: str, overrides: dict[str, Any] | None = None):
    """The config of a method name as the harness uses it.

    The method's registered ``eval_defaults`` are one group: applied when the user set none of its fields (so a
    user who sets ``counterfactual_swap`` gets no default ``counterfactual_prefix`` beside it)."""
    from ..registry import resolve_config

    spec = method_spec(name)
    overrides = dict(overrides or {})
    if spec.eval_defaults and not any(overrides.get(k) for k in spec.eval_defaults):
        overrides = {**spec.eval_defaults, **overrides}
    try:
        return resolve_config(spec.name, overrides=overrides)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"invalid settings for method {name!r}: {e}") from None


def generates_text(spec) -> bool:
    """Whether a method runs on free text generation (the text suites and the overhead benchmark): every kind
    but ``answer`` (which re-scores fixed answer labels)."""
    return "text" in spec.modalities and spec.kind != "answer"


def text_methods() -> list[str]:
    """Registered methods the text suites take besides the baseline, in registry order."""
    from ..registry import list_methods

    return [s.name for s in list_methods() if s.kind != "none" and generates_text(s)]
