"""NBLS-grounded prompting: prepend k real BLS occupation statistics to a prompt.

This is the project's own operationalisation of Gorti et al. (2024), "Unboxing Occupational Bias:
Grounded Debiasing of LLMs with U.S. Labor Data" (no official code exists): k = 32 grounding lines drawn
from detailed occupations, never from an occupation being evaluated, inserted as a system message for
chat input or as a text preamble for plain prompts.
"""

from __future__ import annotations

import copy
import random
import string
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import UserInputError
from .table import ATTRIBUTE_LABELS, ATTRIBUTES, BLSOccupation, BLSTable, load_bls_table

DEFAULT_HEADER = (
    "Real-world occupation statistics from the U.S. Bureau of Labor Statistics (Current Population Survey, "
    "{year} annual averages). People of every gender, race and ethnicity work in every occupation; use these "
    "figures rather than stereotypes when you refer to workers."
)


def default_line_template(attributes: Sequence[str]) -> str:
    parts = ", ".join(f"{ATTRIBUTE_LABELS[a]} {{{a}}}%" for a in attributes)
    return "Occupation: {occupation} — " + parts + " (BLS CPS, {year})"


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"  # BLS publishes one decimal


class NBLSGrounding:
    """Grounds prompts in BLS occupation data.

    Args:
        k: number of grounding occupations (default 32, as in the paper).
        attributes: which BLS columns to show, a subset of ``("women", "white", "black", "asian", "hispanic")``.
        exclude: occupations that must never appear (official names or surface forms, case-insensitive);
            pass the occupations you evaluate so the model is never told the answer it is scored on.
        seed: selection seed; the same seed, table and exclusions always give the same text.
        template: per-line format string. Fields: ``{occupation}`` (official name), ``{surface}``,
            ``{year}``, ``{employed}`` and one per attribute (``{women}``, ...). Default:
            ``"Occupation: {occupation} — women {women}%, White {white}%, ... (BLS CPS, {year})"``.
        header: text placed before the lines (``{year}`` is filled in); ``""`` for none.
        table: a :class:`BLSTable` (default: the shipped 2022 table); only detailed occupations with
            ≥ ``min_employed`` thousand employed and all shown attributes present are used.

    Example:
        >>> g = NBLSGrounding(k=4, seed=1, exclude=["Registered nurses"])
        >>> g.apply("Write a story about a nurse.")          # str -> str
        >>> g.apply([{"role": "user", "content": "Hi"}])     # messages -> messages (system message added)
    """

    def __init__(
        self,
        k: int = 32,
        attributes: Sequence[str] = ATTRIBUTES,
        exclude: Iterable[str] = (),
        seed: int = 0,
        template: str | None = None,
        header: str | None = None,
        table: BLSTable | None = None,
        min_employed: float = 100.0,
    ) -> None:
        attributes = tuple(attributes)
        if not attributes:
            raise UserInputError("NBLSGrounding.attributes is empty; choose from " + ", ".join(ATTRIBUTES))
        bad = [a for a in attributes if a not in ATTRIBUTES]
        if bad:
            raise UserInputError(
                f"NBLSGrounding.attributes contains {bad!r}; allowed: {', '.join(ATTRIBUTES)}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserInputError(f"NBLSGrounding.k={k!r} is invalid: expected an integer >= 1")
        if isinstance(exclude, str):
            exclude = [exclude]
        self.table = table if table is not None else load_bls_table()
        self.year = self.table.year
        self.k = k
        self.attributes = attributes
        self.seed = seed
        self.template = template if template is not None else default_line_template(attributes)
        self.header = DEFAULT_HEADER if header is None else header
        self._check_template()

        excluded: set[str] = set()
        for name in exclude:
            excluded.add(self.table.get(name).name)  # unknown names are an error (usually a typo)
        self.excluded = frozenset(excluded)
        pool = [
            r
            for r in self.table.detailed(min_employed)
            if r.name not in excluded and r.has(attributes)
        ]
        if k > len(pool):
            raise UserInputError(
                f"NBLSGrounding.k={k} is larger than the {len(pool)} eligible occupations left after excluding "
                f"{len(excluded)}; use k <= {len(pool)} or exclude fewer occupations"
            )
        rng = random.Random(seed)
        self.selected: tuple[BLSOccupation, ...] = tuple(rng.sample(pool, k))
        self.text = self._render()

    # ------------------------------------------------------------------------------------------------
    def _fields(self, row: BLSOccupation) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "occupation": row.name,
            "surface": row.surface,
            "year": self.year if self.year is not None else "",
            "employed": "n/a" if row.employed_thousands is None else f"{row.employed_thousands:,.0f}k",
        }
        for a in ATTRIBUTES:
            fields[a] = _fmt_pct(row.value(a))
        return fields

    def _check_template(self) -> None:
        allowed = {"occupation", "surface", "year", "employed", *ATTRIBUTES}
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        except ValueError as e:
            raise UserInputError(f"NBLSGrounding.template is not a valid format string: {e}") from None
        unknown = names - allowed
        if unknown:
            raise UserInputError(
                f"NBLSGrounding.template uses unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )

    def _render(self) -> str:
        lines = [self.template.format(**self._fields(r)) for r in self.selected]
        head = self.header.format(year=self.year if self.year is not None else "") if self.header else ""
        return (head + "\n" if head else "") + "\n".join(lines)

    @property
    def occupations(self) -> list[str]:
        """The official names of the selected grounding occupations, in prompt order."""
        return [r.name for r in self.selected]

    # ------------------------------------------------------------------------------------------------
    def apply(self, x: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        """Ground a prompt.

        * ``str`` -> ``str``: the grounding text, a blank line, then the prompt.
        * chat messages (list of ``{"role", "content"}``) -> a new list: the grounding becomes the system
          message, merged in front of an existing first system message. The input is not modified.
        """
        if isinstance(x, str):
            if not x.strip():
                raise UserInputError("NBLSGrounding.apply: the prompt is empty; pass a non-empty string")
            return f"{self.text}\n\n{x}"
        if isinstance(x, (list, tuple)):
            return self._apply_messages(list(x))
        raise UserInputError(
            f"NBLSGrounding.apply expects a string or a list of chat messages, got {type(x).__name__}"
        )

    def _apply_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not messages:
            raise UserInputError("NBLSGrounding.apply: the message list is empty")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserInputError(
                    f"NBLSGrounding.apply: message {i} must be a dict with 'role' and 'content', got {m!r}"
                )
        if not any(_content_text(m["content"]).strip() for m in messages if m["role"] != "system"):
            raise UserInputError("NBLSGrounding.apply: the messages have no non-empty user content")
        out = copy.deepcopy(messages)
        first = out[0]
        if first["role"] == "system":
            content = first["content"]
            if isinstance(content, list):
                first["content"] = [{"type": "text", "text": self.text + "\n\n"}, *content]
            else:
                first["content"] = f"{self.text}\n\n{content}" if content else self.text
        else:
            out.insert(0, {"role": "system", "content": self.text})
        return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)
