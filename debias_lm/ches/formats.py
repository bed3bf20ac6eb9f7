"""Preference-dataset layouts (TRL's four) and TRL-aligned tokenisation of one pair.

Layouts (``trl`` docs, dataset formats): standard or conversational, with an explicit ``prompt`` column or an
implicit prompt (the common prefix of ``chosen`` and ``rejected``). Tokenisation mirrors TRL's
``DPOTrainer._prepare_dataset`` (trl 1.x):

* standard: EOS (the string) is appended to each completion unless present; ``prompt_ids = tok(prompt)``,
  ``prompt+chosen`` tokenised as one string;
* conversational: ``apply_chat_template(prompt, add_generation_prompt=True)`` for the prompt and
  ``apply_chat_template(prompt + chosen)`` for the full sequence (the template's closing tokens end it);
* the completion starts where the tokenised prompt and prompt+completion diverge (TRL's
  ``common_prefix_length``; a divergence before the end of the prompt is a *prefix mismatch*);
* ``max_length`` with ``keep_start``: the sequence is cut to ``max_length`` tokens; rows whose prompt alone
  reaches ``max_length`` are dropped by TRL (status ``too_long`` here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UserInputError

SKIP_REASONS = (
    "missing_field",
    "bad_type",
    "empty_prompt",
    "empty_response",
    "prefix_mismatch",
    "too_long",
    "tokenizer_error",
    "invalid_utf8",
)
UNDECODABLE = "__debias_lm_undecodable__"  # key of a placeholder row whose text was not valid UTF-8
UNKEEPABLE = ("invalid_utf8",)  # skip reasons whose rows cannot be written back as text (never kept)


@dataclasses.dataclass(frozen=True)
class Columns:
    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


def is_conversational_value(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and isinstance(v[0], Mapping) and "role" in v[0]


def detect_columns(column_names: Sequence[str], prompt_col: str | None = None, chosen_col: str | None = None,
                   rejected_col: str | None = None) -> Columns:
    """Pick the prompt/chosen/rejected columns (overrides win); no prompt column means an implicit prompt."""
    names = list(column_names)
    chosen = chosen_col or "chosen"
    rejected = rejected_col or "rejected"
    missing = [c for c in (chosen, rejected) if c not in names]
    if prompt_col and prompt_col not in names:
        missing.append(prompt_col)
    if missing:
        raise UserInputError(
            f"dataset has no column(s) {', '.join(repr(m) for m in missing)}; its columns are {names}. "
            "Pass --prompt-col/--chosen-col/--rejected-col to name them"
        )
    prompt = prompt_col or ("prompt" if "prompt" in names else None)
    return Columns(prompt=prompt, chosen=chosen, rejected=rejected)


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """TRL's ``extract_prompt``: the longest common prefix (characters or turns) becomes the prompt.

    Mirrors trl exactly, including its backing off one space before a string divergence.
    """
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclasses.dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    status: str = "ok"  # ok | skipped
    skip_reason: str = ""
    note: str = ""  # e.g. "prefix_mismatch" / "truncated" for rows scored like TRL would train on them


def _skip(reason: str, note: str = "") -> TokenizedPair:
    return TokenizedPair([], [], [], status="skipped", skip_reason=reason, note=note)


def _text_of(v: Any) -> str:
    if isinstance(v, str):
        return v
    if is_conversational_value(v):
        parts = []
        for m in v:
            c = m.get("content", "")
            parts.append(c if isinstance(c, str) else " ".join(str(p.get("text", "")) for p in c if isinstance(p, Mapping)))
        return " ".join(parts)
    return ""


def tokenize_pair(tokenizer, row: Mapping[str, Any], columns: Columns, *, max_length: int | None = 1024,
                  on_prefix_mismatch: str = "trl") -> TokenizedPair:
    """Tokenise one preference row exactly as TRL's DPOTrainer would; never raises for bad rows.

    ``on_prefix_mismatch``: ``"trl"`` scores from the divergence point (what TRL trains on) and notes it;
    ``"skip"`` skips the row with ``skip_reason="prefix_mismatch"``.
    """
    if UNDECODABLE in row:
        return _skip("invalid_utf8", str(row[UNDECODABLE])[:200])
    values = {}
    for key in ("prompt", "chosen", "rejected"):
        col = getattr(columns, key)
        if col is None:
            continue
        if col not in row or row[col] is None:
            return _skip("missing_field", f"{col} is missing")
        values[key] = row[col]
    chosen, rejected = values["chosen"], values["rejected"]
    if "prompt" in values:
        prompt = values["prompt"]
    else:
        if type(chosen) is not type(rejected) or not isinstance(chosen, (str, list)):
            return _skip("bad_type", "chosen and rejected must both be strings or message lists")
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    conv = is_conversational_value(prompt) or is_conversational_value(chosen)
    if conv:
        if not (isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list)):
            return _skip("bad_type", "conversational rows need message lists in prompt, chosen and rejected")
    elif not (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)):
        return _skip("bad_type", "standard rows need strings in prompt, chosen and rejected")
    if not _text_of(prompt).strip():
        return _skip("empty_prompt")
    if not _text_of(chosen).strip() or not _text_of(rejected).strip():
        return _skip("empty_response")
    try:
        if conv:
            def render(msgs, gen):
                out = tokenizer.apply_chat_template(list(msgs), tokenize=True, return_dict=True, add_generation_prompt=gen)
                return list(out["input_ids"])

            p_ids = render(prompt, True)
            pc_ids = render(list(prompt) + list(chosen), False)
            pr_ids = render(list(prompt) + list(rejected), False)
        else:
            eos = tokenizer.eos_token or ""
            c = chosen if chosen.endswith(eos) else chosen + eos
            r = rejected if rejected.endswith(eos) else rejected + eos
            p_ids = list(tokenizer(text=prompt)["input_ids"])
            pc_ids = list(tokenizer(text=prompt + c)["input_ids"])
            pr_ids = list(tokenizer(text=prompt + r)["input_ids"])
    except Exception as e:  # a template that rejects the messages, an odd value: recorded, not fatal
        return _skip("tokenizer_error", f"{type(e).__name__}: {e}"[:200])
    plen = min(common_prefix_length(p_ids, pc_ids), common_prefix_length(p_ids, pr_ids))
    notes = []
    if plen < len(p_ids):
        if on_prefix_mismatch == "skip":
            return _skip("prefix_mismatch", f"prompt tokens diverge at {plen} of {len(p_ids)}")
        notes.append("prefix_mismatch")
    pair = TokenizedPair(p_ids[:plen], pc_ids[plen:], pr_ids[plen:])
    if max_length is not None:
        if len(pair.prompt_ids) >= max_length:
            return _skip("too_long", f"prompt has {len(pair.prompt_ids)} tokens >= max_length {max_length}")
        room = max_length - len(pair.prompt_ids)
        if len(pair.chosen_ids) > room or len(pair.rejected_ids) > room:
            notes.append("truncated")
            pair.chosen_ids, pair.rejected_ids = pair.chosen_ids[:room], pair.rejected_ids[:room]
    if not pair.chosen_ids or not pair.rejected_ids:
        return _skip("empty_response", "no completion tokens after tokenisation")
    pair.note = ",".join(notes)
    return pair
