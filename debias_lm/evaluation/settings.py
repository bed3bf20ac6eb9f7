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


def _f(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A field whose ``metadata`` carries its command-line flag (``debias_lm.cli.flags.add_dataclass_flags``)."""
    factory = meta.pop("default_factory", None)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def csv_tuple(raw: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (comma-separated flag values)."""
    return tuple(x.strip() for x in str(raw).split(",") if x.strip())


def int_csv_tuple(raw: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``; the error is an ``argparse.ArgumentTypeError`` so a flag's message is kept."""
    from argparse import ArgumentTypeError

    try:
        return tuple(int(x) for x in csv_tuple(raw))
    except ValueError:
        raise ArgumentTypeError(f"{raw!r} is invalid: expected comma-separated integers, e.g. 1,8") from None


DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that defines a run (recorded in results.json); each field's metadata holds its flag."""

    suites: tuple[str, ...] = _f(help="comma-separated suites (debias-lm eval --help lists them)", flag="--suite",
                                 type=csv_tuple, metavar="S[,S]")
    methods: tuple[str, ...] = _f(("none",), help="comma-separated methods; none is plain decoding (default none)",
                                  flag="--method", type=csv_tuple, metavar="M[,M]")
    model: str = _f("default", help="HF model id or local path (default: the embedded SmolLM2-135M-Instruct)",
                    metavar="M")
    dtype: str = _f("float32", help="model dtype", choices=DTYPES)
    backend: str = _f("hf", help="generation engine (default hf)", choices=("hf", "vllm"))
    out: str = _f("runs/eval", help="run directory (a rerun resumes it)", metavar="DIR")
    limit: int | None = _f(None, help="items per suite: prompts, pairs, occupations, questions", type="positive_int")
    n_samples: int = _f(25, help="samples per prompt (default 25, the RTP protocol)", type="positive_int",
                        metavar="K")
    max_new_tokens: int = _f(20, help="new tokens per sample", type="positive_int", metavar="N")
    top_p: float = _f(0.9, help="nucleus sampling top-p", type="top_p")
    temperature: float = _f(1.0, help="sampling temperature", type="temperature")
    seed: int = _f(0, help="base seed (sampling and subsets)", type="seed", metavar="S")
    batch_size: int = _f(16, help="rows per generate call", type="positive_int", metavar="B")
    toxicity_scorers: tuple[str, ...] = _f(("hatesonar", "profanity-check"), flag="--toxicity-scorer",
                                           type=csv_tuple, help="comma-separated toxicity scorers (see "
                                           "debias_lm.evaluation.scorers; e.g. detoxify:original, hf:unitary/toxic-bert)")
    sentiment_scorer: str = _f("vader", help="sentiment scorer (counterfactual, bold)")
    regard_scorer: str = _f("", help="counterfactual suite: also the regard gap, e.g. regard (sasha/regardv3) or "
                                     "regard:LOCAL_DIR")
    ppl_model: str = _f("", help="scorer LM for perplexity (default: the evaluated model)")
    datasets: dict[str, str] = _f(help="suite -> dataset spec", default_factory=dict, cli=False)
    method_overrides: dict[str, dict[str, Any]] = _f(help="method -> {field: value}", default_factory=dict, cli=False)
    chat: bool | None = _f(None, help="bbq-gender / occupational prompting (None: the chat template if any)",
                           cli=False)
    occupational_probes: tuple[str, ...] = _f(("likelihood", "generation"), help="occupational probes",
                                              flag="--probe", type=csv_tuple, metavar="P[,P]")
    occupational_samples: int = _f(10, help="generation probe samples per occupation", type="positive_int")
    bbq_max_new_tokens: int = _f(8, help="new tokens of a BBQ answer", cli=False)
    pope_model: str = _f(DEFAULT_POPE_MODEL, help="biased synthetic VLM dir (default results/pope_synthetic/model)")
    bench_batches: tuple[int, ...] = _f((1, 8), help="overhead suite batch sizes", flag="--bench-batch",
                                        type=int_csv_tuple)
    bench_new_tokens: int = _f(32, help="overhead suite new tokens per row", type="positive_int")
    bench_repeats: int = _f(3, help="overhead suite timed rounds", cli=False)
    progress: bool = _f(True, help="no progress bars", flag="--no-progress")

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
        return resolve_config(name, overrides=overrides)  # a variant name keeps its preset fields
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
