"""The suite registry of ``debias-lm eval`` (lm-eval's task registry is the model).

A suite is one module that declares one :class:`Suite` record and registers it: its items and their
validation (``validate``, run before any model is loaded), the prompt sets every method is checked on before
generation (``prompts``), which methods it takes (``accepts``, asked of the method's registry spec: kind,
modalities, backends — never its name), ``run`` (generate what is missing from samples.jsonl, score it,
return ``{method: metrics}``), its metric ``columns`` (with higher-is-better) and its metric ``definition``.
The runner and the report iterate the registry; adding a suite is one module plus :func:`register_suite`.

Built-in suites (run in this order: fluency reuses the toxicity suite's samples when both run):
toxicity, counterfactual, occupational, bbq-gender, pope-synthetic, fluency, overhead; and on files the user
provides in the datasets' published formats: crows-pairs, stereoset, bold.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserInputError
from ..settings import EvalSettings
from ..store import SampleStore

BUILTIN = ("toxicity", "counterfactual", "occupational", "bbq_gender", "pope_synthetic", "fluency", "overhead",
           "crows_pairs", "stereoset", "bold")


@dataclass(frozen=True)
class Column:
    """One metric column of a suite's report table.

    ``key`` is a dotted path into ``results[suite][method]``; ``label`` and ``key`` may hold the placeholders
    ``{scorer}`` (each toxicity scorer), ``{sent}`` (the sentiment scorer), ``{regard}`` (the regard scorer,
    the column is dropped without one) and ``{probe}`` (each occupational probe). ``higher_is_better``:
    True / False, or None where neither direction is better (e.g. a signed bias score)."""

    label: str
    key: str
    higher_is_better: bool | None = None
    flag: str | None = None        # a boolean result field that marks the cell with a dagger (see ``Suite.note``)


@dataclass
class Context:
    """What a suite's ``run`` gets: the settings, the sample store, the loaded model and scorers."""

    settings: EvalSettings
    store: SampleStore
    out: Path
    generator: Any = None          # backends.HFGenerator / VLLMGenerator
    model: Any = None              # HF model (likelihood probes, perplexity)
    tokenizer: Any = None
    model_path: str | None = None  # what vLLM loads (backend vllm)
    toxicity_scorers: dict = field(default_factory=dict)
    sentiment_scorer: Any = None
    regard_scorer: Any = None
    ppl_model: Any = None
    ppl_tokenizer: Any = None
    ppl_name: str = ""
    notes: dict = field(default_factory=dict)


def _takes_text_methods(spec) -> bool:
    from ..settings import generates_text

    return generates_text(spec)


@dataclass(frozen=True)
class Suite:
    """One evaluation suite (see the module docstring)."""

    name: str
    run: Callable[[Context], Any]
    columns: tuple[Column, ...] = ()
    definition: str = ""
    description: str = ""
    accepts: Callable[[Any], bool] = _takes_text_methods      # MethodSpec -> bool (the baseline always runs)
    combos: bool = False                                      # takes "a+b" method combinations
    text_model: bool = True                                   # loads the evaluated text model
    backends: tuple[str, ...] = ("hf",)
    needs: frozenset[str] = frozenset()                       # "toxicity" / "sentiment" / "regard" scorers, "perplexity"
    validate: Callable[[EvalSettings], None] | None = None
    prompts: Callable[[Context], Sequence[tuple[list[str], bool]]] | None = None
    table: Callable[[dict, dict], str] | None = None          # replaces the column table (by_method, payload)
    plot: Callable[..., Path | None] | None = None            # (out, by_method, payload, store, plt) -> png
    note: str = ""                                            # footnote of a flagged cell

    def takes(self, method: str) -> bool:
        """Whether the suite runs ``method`` (a name, alias or ``a+b`` combination)."""
        from ..settings import method_spec

        parts = method.split("+")
        if len(parts) > 1 and not self.combos:
            return False
        specs = [method_spec(p) for p in parts]
        if len(specs) == 1 and specs[0].kind == "none":
            return True
        return all(s.kind != "none" and self.accepts(s) for s in specs)

    def methods_taken(self) -> list[str]:
        from ...registry import list_methods

        return [s.name for s in list_methods() if s.kind != "none" and self.accepts(s)]


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite, *, overwrite: bool = False) -> Suite:
    """Register a suite under ``suite.name`` (a suite module calls this at import)."""
    if suite.name in _SUITES and not overwrite:
        raise ValueError(f"suite {suite.name!r} is already registered; pass overwrite=True to replace it")
    _SUITES[suite.name] = suite
    return suite


def unregister_suite(name: str) -> None:
    _SUITES.pop(name, None)


def _ensure_builtins() -> None:
    for mod in BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


# run order of the built-in suites (whatever order their modules were imported in): fluency after toxicity
BUILTIN_ORDER = ("toxicity", "counterfactual", "occupational", "bbq-gender", "pope-synthetic", "fluency", "overhead",
                 "crows-pairs", "stereoset", "bold")


def list_suites() -> list[Suite]:
    """Registered suites in run order (built-ins in :data:`BUILTIN_ORDER`, then others in registration order)."""
    _ensure_builtins()
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    names = list(_SUITES)
    return [_SUITES[n] for n in sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))]


def suite_names() -> list[str]:
    return [s.name for s in list_suites()]


def get_suite(name: str) -> Suite:
    _ensure_builtins()
    try:
        return _SUITES[name]
    except KeyError:
        raise UserInputError(f"--suite {name!r} is invalid: expected one of {', '.join(_SUITES)}") from None
