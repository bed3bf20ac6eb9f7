"""NBLS-grounded prompting: prepend k real BLS occupation statistics to a prompt.

This is the project's own operationalisation of Gorti et al. (2024), "Unboxing Occupational Bias:
Grounded Debiasing of LLMs with U.S. Labor Data" (no official code exists): k = 32 grounding lines drawn
from detailed occupations, never from an occupation being evaluated nor a close relative of one
(:mod:`debias_lm.nbls.related`), inserted as a system message for chat input or as a text preamble for plain
prompts.

Two controls isolate what the real figures add (``control=``): ``"instructions"`` keeps only the grounding's
wording (the header, no statistics) and ``"shuffled"`` keeps the same k lines with every line's figures taken
from another of the k occupations (a seeded derangement), so the prompt has the same length, format and
instruction but figures that are wrong for each occupation.
"""

from __future__ import annotations

import copy
import random
import string
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import UserInputError
from .related import related_rows
from .table import ATTRIBUTE_LABELS, ATTRIBUTES, BLSOccupation, BLSTable, load_bls_table

CONTROLS = ("", "instructions", "shuffled")

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
        exclude_related: also leave out every occupation related to an excluded one (a shared head noun or
            synonym family, :func:`debias_lm.nbls.related.related`: "Registered nurses" excludes "Licensed
            practical and licensed vocational nurses" and "Nurse practitioners"); listed in ``excluded_related``.
        control: ``""`` (the real grounding), ``"instructions"`` (the header alone, no statistics) or
            ``"shuffled"`` (the same k lines, each with the figures of another selected occupation).
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
        exclude_related: bool = True,
        control: str = "",
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

        if control not in CONTROLS:
            raise UserInputError(f"NBLSGrounding.control={control!r} is invalid: expected one of "
                                 + ", ".join(repr(c) for c in CONTROLS))
        if control == "instructions" and not self.header:
            raise UserInputError("NBLSGrounding(control='instructions') keeps only the header, which is empty")
        if control == "shuffled" and k < 2:
            raise UserInputError("NBLSGrounding(control='shuffled') needs k >= 2 (figures move between lines)")
        self.control = control
        excluded_rows = [self.table.get(name) for name in exclude]  # unknown names are an error (usually a typo)
        self.excluded = frozenset(r.name for r in excluded_rows)
        candidates = [r for r in self.table.detailed(min_employed) if r.has(attributes)]
        #: related occupations left out as well: {name: [the excluded occupations it is related to]}
        self.excluded_related: dict[str, list[str]] = (
            related_rows(excluded_rows, candidates) if exclude_related else {})
        pool = [r for r in candidates if r.name not in self.excluded and r.name not in self.excluded_related]
        if k > len(pool):
            raise UserInputError(
                f"NBLSGrounding.k={k} is larger than the {len(pool)} eligible occupations left after excluding "
                f"{len(self.excluded)} and {len(self.excluded_related)} related to them; use k <= {len(pool)} or "
                "exclude fewer occupations"
            )
        rng = random.Random(seed)
        self.selected: tuple[BLSOccupation, ...] = tuple(rng.sample(pool, k))
        #: per line, the row whose figures it shows (the line's own row unless control="shuffled")
        self.figures_from: tuple[BLSOccupation, ...] = (
            _derange(self.selected, random.Random(f"nbls-shuffle-{seed}")) if control == "shuffled" else self.selected)
        self.text = self._render()

    # ------------------------------------------------------------------------------------------------
    def _fields(self, row: BLSOccupation, figures: BLSOccupation | None = None) -> dict[str, Any]:
        fig = row if figures is None else figures
        fields: dict[str, Any] = {
            "occupation": row.name,
            "surface": row.surface,
            "year": self.year if self.year is not None else "",
            "employed": "n/a" if fig.employed_thousands is None else f"{fig.employed_thousands:,.0f}k",
        }
        for a in ATTRIBUTES:
            fields[a] = _fmt_pct(fig.value(a))
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
        head = self.header.format(year=self.year if self.year is not None else "") if self.header else ""
        if self.control == "instructions":
            return head
        lines = [self.template.format(**self._fields(r, f)) for r, f in zip(self.selected, self.figures_from)]
        return (head + "\n" if head else "") + "\n".join(lines)

    @property
    def occupations(self) -> list[str]:
        """The official names of the occupations named in the grounding, in prompt order (none for the
        ``instructions`` control)."""
        return [] if self.control == "instructions" else [r.name for r in self.selected]

    def record(self) -> dict[str, Any]:
        """What a run should store about this grounding: control, shown occupations, exclusions, shuffling."""
        out: dict[str, Any] = {
            "control": self.control or "none",
            "k": self.k,
            "seed": self.seed,
            "year": self.year,
            "occupations": self.occupations,
            "excluded": sorted(self.excluded),
            "excluded_related": dict(sorted(self.excluded_related.items())),
            "n_excluded_related": len(self.excluded_related),
        }
        if self.control == "shuffled":
            out["figures_from"] = {r.name: f.name for r, f in zip(self.selected, self.figures_from)}
        return out

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


def _derange(rows: tuple[BLSOccupation, ...], rng: random.Random) -> tuple[BLSOccupation, ...]:
    """A seeded permutation of ``rows`` in which no row stays in its place (len(rows) >= 2)."""
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return tuple(rows[j] for j in order)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)
