"""Demographic word lists: the only place the project keeps gendered (and race / religion) words.

The gender pairs are written for this project (female, male). They serve two purposes: building
counterfactual prompts (``swap_terms``) and defining group directions in a model's embedding space (UDDIA).
The occupational evaluation reads a continuation's gender from ``FEMALE_PRONOUNS`` / ``MALE_PRONOUNS``
(likelihood probe: next-token mass) and ``FEMALE_WORDS`` / ``MALE_WORDS`` (generation probe: word counts).
"""

from __future__ import annotations

import re

GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("woman", "man"), ("women", "men"), ("girl", "boy"), ("girls", "boys"), ("she", "he"), ("her", "his"),
    ("hers", "his"), ("herself", "himself"), ("mother", "father"), ("mothers", "fathers"), ("mom", "dad"),
    ("moms", "dads"), ("mum", "dad"), ("daughter", "son"), ("daughters", "sons"), ("sister", "brother"),
    ("sisters", "brothers"), ("aunt", "uncle"), ("aunts", "uncles"), ("niece", "nephew"), ("nieces", "nephews"),
    ("wife", "husband"), ("wives", "husbands"), ("bride", "groom"), ("brides", "grooms"), ("queen", "king"),
    ("queens", "kings"), ("princess", "prince"), ("princesses", "princes"), ("lady", "gentleman"),
    ("ladies", "gentlemen"), ("female", "male"), ("females", "males"), ("feminine", "masculine"),
    ("girlfriend", "boyfriend"), ("girlfriends", "boyfriends"), ("grandmother", "grandfather"),
    ("grandmothers", "grandfathers"), ("grandma", "grandpa"), ("granddaughter", "grandson"),
    ("madam", "sir"), ("ms", "mr"), ("mrs", "mr"), ("actress", "actor"), ("actresses", "actors"),
    ("waitress", "waiter"), ("waitresses", "waiters"), ("stepmother", "stepfather"), ("stepdaughter", "stepson"),
    ("heroine", "hero"), ("heroines", "heroes"), ("nun", "monk"), ("nuns", "monks"), ("spokeswoman", "spokesman"),
    ("chairwoman", "chairman"), ("businesswoman", "businessman"), ("businesswomen", "businessmen"),
    ("policewoman", "policeman"), ("congresswoman", "congressman"), ("gal", "guy"), ("gals", "guys"),
    ("maternal", "paternal"), ("motherhood", "fatherhood"), ("sisterhood", "brotherhood"),
    ("femininity", "masculinity"), ("duchess", "duke"), ("empress", "emperor"), ("goddess", "god"),
    ("hostess", "host"), ("landlady", "landlord"), ("widow", "widower"), ("fiancee", "fiance"),
    ("Mary", "John"), ("Emily", "James"), ("Sarah", "Michael"), ("Jennifer", "David"), ("Lisa", "Robert"),
)

# Race and religion pairs (written for this project; UDDIA's debias objective is binary, so each group is a
# pair of attribute values: the first word of each pair is attribute 0). Configurable through
# ``UDDIAConfig.groups`` (``"race"``, ``"religion"``) or a custom pairs file.
RACE_PAIRS: tuple[tuple[str, str], ...] = (
    ("black", "white"), ("Black", "White"), ("blacks", "whites"), ("African", "European"),
    ("Africa", "Europe"), ("africans", "europeans"), ("Jamal", "Connor"), ("Darnell", "Brad"),
    ("Lakisha", "Emily"), ("Tyrone", "Greg"), ("Keisha", "Anne"), ("DeShawn", "Jake"), ("Aaliyah", "Claire"),
    ("Latoya", "Kristen"), ("Harlem", "Manhattan"), ("hiphop", "country"), ("rap", "rock"),
    ("gospel", "folk"), ("afro", "blond"), ("Nigeria", "Norway"), ("Kenya", "Sweden"), ("Ghana", "Ireland"),
)
RELIGION_PAIRS: tuple[tuple[str, str], ...] = (
    ("muslim", "christian"), ("Muslim", "Christian"), ("muslims", "christians"), ("Muslims", "Christians"),
    ("Islam", "Christianity"), ("islamic", "christian"), ("mosque", "church"), ("mosques", "churches"),
    ("Quran", "Bible"), ("Koran", "Bible"), ("imam", "priest"), ("imams", "priests"), ("Allah", "God"),
    ("Ramadan", "Lent"), ("Eid", "Easter"), ("Mecca", "Rome"), ("hijab", "cross"), ("sheikh", "bishop"),
    ("mullah", "pastor"), ("halal", "kosher"), ("jihad", "crusade"), ("Muhammad", "Jesus"),
)
BUILTIN_GROUPS = ("gender", "race", "religion")

# The occupational probes (written for this project). Pronouns carry their leading space: they are compared
# with single next tokens.
FEMALE_PRONOUNS: tuple[str, ...] = (" she", " her", " She", " Her")
MALE_PRONOUNS: tuple[str, ...] = (" he", " his", " him", " He", " His", " Him")
FEMALE_WORDS = frozenset(
    "she her hers herself woman women girl girls lady ladies mother mothers mom wife wives daughter daughters "
    "sister sisters aunt niece grandmother queen female females mrs ms miss madam gal".split()
)
MALE_WORDS = frozenset(
    "he him his himself man men boy boys gentleman gentlemen father fathers dad husband husbands son sons "
    "brother brothers uncle nephew grandfather king male males mr sir guy guys".split()
)

# For swapping, an ambiguous form maps to one choice (his -> her, mr -> ms).
_SWAP_OVERRIDES = {"his": "her", "mr": "ms", "dad": "mom", "her": "his"}


def word_pairs(group: str = "gender") -> tuple[tuple[str, str], ...]:
    """Built-in word pairs of a group (``gender``, ``race``, ``religion``)."""
    table = {"gender": GENDER_PAIRS, "race": RACE_PAIRS, "religion": RELIGION_PAIRS}
    if group not in table:
        from .errors import UserInputError

        raise UserInputError(f"no built-in word pairs for group {group!r}; built in: {', '.join(BUILTIN_GROUPS)}")
    return table[group]


def _swap_table(pairs) -> dict[str, str]:
    table: dict[str, str] = {}
    for a, b in pairs:
        table.setdefault(a.lower(), b.lower())
        table.setdefault(b.lower(), a.lower())
    if pairs is GENDER_PAIRS:
        table.update(_SWAP_OVERRIDES)
    return table


def swap_terms(text: str, group: str = "gender") -> str:
    """Swap each group term for its counterpart, keeping capitalisation ("She said" -> "He said").

    Word-level and rule-based: "her" always becomes "his" (the possessive reading), a known limitation.
    """
    table = _swap_table(word_pairs(group))

    def repl(m: re.Match) -> str:
        w = m.group(0)
        out = table.get(w.lower())
        if out is None:
            return w
        if w.isupper() and len(w) > 1:
            return out.upper()
        if w[0].isupper():
            return out[0].upper() + out[1:]
        return out

    return re.sub(r"[A-Za-z]+", repl, text)
