"""Which BLS occupations are close relatives of each other (for keeping evaluated answers out of a grounding).

Excluding an evaluated occupation from the grounding by its exact name is not enough: "Licensed practical and
licensed vocational nurses — women 88.9 %" all but states the answer for "Registered nurses". Two occupations
are **related** here when one's *head noun* — the noun a name is about: "nurses" in "Registered nurses",
both "secretaries" and "assistants" in "Secretaries and administrative assistants, except legal, ..." — or
that noun's curated synonym family (:data:`FAMILIES`: nurse/nursing, assistant/aide, teacher/tutor/instructor,
...) occurs anywhere in the other's name or surface form. Names are read without their qualifier clauses
(", except …", ", including …", ", all other") and the objects of "of" ("First-line supervisors of … workers"
is about supervisors). The rule is deliberately broad: a shared generic head such as "workers" or "clerks"
also counts, so a grounding may lose loosely related rows but never keeps a close one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# family key -> words that name the same kind of work (singular, lower case)
FAMILIES: dict[str, tuple[str, ...]] = {
    "nurse": ("nurse", "nursing"),
    "secretary": ("secretary", "secretarial"),
    "therapist": ("therapist", "therapy"),
    "assistant": ("assistant", "aide"),
    "teacher": ("teacher", "teaching", "tutor", "instructor", "professor", "educator"),
    "engineer": ("engineer", "engineering"),
    "physician": ("physician", "doctor", "surgeon"),
    "cook": ("cook", "chef"),
    "cleaner": ("cleaner", "janitor", "janitorial", "maid", "housekeeper", "housekeeping"),
    "driver": ("driver", "chauffeur"),
    "police": ("police", "detective", "sheriff"),
    "salesperson": ("salesperson", "sales"),
    "pilot": ("pilot", "aviator"),
    "lawyer": ("lawyer", "attorney", "legal", "paralegal"),
    "accountant": ("accountant", "accounting", "auditor", "auditing", "bookkeeper", "bookkeeping"),
    "childcare": ("childcare", "nanny", "babysitter"),
    "hairdresser": ("hairdresser", "hairstylist", "cosmetologist", "barber", "manicurist"),
    "programmer": ("programmer", "developer", "software"),
    "librarian": ("librarian", "library"),
    "dentist": ("dentist", "dental"),
    "pharmacist": ("pharmacist", "pharmacy"),
    "dietitian": ("dietitian", "nutritionist"),
    "waiter": ("waiter", "waitress", "server"),
    "architect": ("architect", "architectural"),
    "paramedic": ("paramedic", "emergency"),
}
_FAMILY_OF = {w: key for key, words in FAMILIES.items() for w in words}
_STOP = frozenset("and of other all the first line general except including hand miscellaneous related".split())
_IRREGULAR = {"women": "woman", "men": "man", "people": "person"}
_QUALIFIER = re.compile(r",?\s+(?:except|including)\b|,\s*all other\b")
_WORD = re.compile(r"[a-z]+")


def singular(word: str) -> str:
    """A plural occupation noun in the singular ("secretaries" -> "secretary", "waitresses" -> "waitress")."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    for suffix, repl in (("persons", "person"), ("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"),
                         ("xes", "x")):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            return w[: -len(suffix)] + repl
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return w[:-1]
    return w


def family(word: str) -> str:
    """The family key of a singular word (the word itself when it belongs to no curated family)."""
    return _FAMILY_OF.get(word, word)


def _core(name: str) -> str:
    return _QUALIFIER.split(name.lower())[0]


def head_nouns(name: str) -> set[str]:
    """Family keys of the plural nouns a BLS name is about: the last word of each conjunct before any "of"."""
    heads = set()
    for part in re.split(r",|\band\b|/", _core(name).split(" of ")[0]):
        words = _WORD.findall(part)
        if words and (words[-1].endswith("s") or words[-1] == "clergy"):
            heads.add(family(singular(words[-1])))
    return heads


def name_words(name: str) -> set[str]:
    """Family keys of every content word of a name (qualifier clauses dropped)."""
    return {family(singular(w)) for w in _WORD.findall(_core(name)) if w not in _STOP}


def _keys(name: str, surface: str) -> tuple[set[str], set[str]]:
    words = _WORD.findall(surface.lower())
    heads = head_nouns(name) | ({family(singular(words[-1]))} if words else set())
    return heads, name_words(name) | name_words(surface)


def related(a, b) -> bool:
    """Whether two table rows (:class:`~debias_lm.nbls.table.BLSOccupation`) are related (module docstring)."""
    heads_a, words_a = _keys(a.name, a.surface)
    heads_b, words_b = _keys(b.name, b.surface)
    return bool(heads_a & words_b) or bool(heads_b & words_a)


def related_rows(targets: Iterable, candidates: Iterable) -> dict[str, list[str]]:
    """``{candidate name: [target names it is related to]}`` for every candidate related to a target (targets
    themselves are not listed)."""
    targets = list(targets)
    names = {t.name for t in targets}
    out: dict[str, list[str]] = {}
    for c in candidates:
        if c.name in names:
            continue
        hits = [t.name for t in targets if related(t, c)]
        if hits:
            out[c.name] = hits
    return out
