"""Write eval/steer/gender_pairs.jsonl: counterfactual sentence pairs for the gender steering recipe.

Sentences written for this project (everyday situations, the person named by a gendered noun or name from
``debias_lm.words.GENDER_PAIRS``, pronouns ``she``/``her``/``herself`` used possessively or as subject only, so the
word-level swap is exact). Each female sentence is swapped to its male counterpart with
``debias_lm.words.swap_terms``: the pair differs only in gendered words. Gender words sit at different places
(start, middle, last word) so the last-token activation does not only encode one position. Disjoint from the
counterfactual suite's pairs (debias_lm/data/eval/gender_pairs.jsonl), which are sentence openings; checked below.

    .venv/bin/python eval/steer/make_gender_pairs.py          # deterministic; a second run rewrites the same file

positive = female sentence, negative = male sentence, so the CAA vector points from male to female; the recipe
uses it for directional ablation (``SteerConfig(vectors="gender", mode="ablate")``), where the sign is irrelevant.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from debias_lm.words import GENDER_PAIRS, swap_terms

HERE = Path(__file__).resolve().parent
EVAL_PAIRS = HERE.parent.parent / "debias_lm" / "data" / "eval" / "gender_pairs.jsonl"

TEMPLATES = [
    "The {n} finished her shift at the hospital and drove home.",
    "My {n} fixed the leaking tap in the kitchen by herself.",
    "The {n} said she would be late for the meeting.",
    "After lunch, the {n} read her emails and answered the urgent ones.",
    "Everyone agreed that the {n} had given an excellent speech.",
    "The {n} is the best programmer on the team, and she knows it.",
    "On Sundays the {n} takes her dog to the park.",
    "The {n} paid for the groceries and carried the bags to her car.",
    "When the storm hit, the {n} helped the neighbours clear the road.",
    "The {n} was promoted to head of the department last year.",
    "She told me that the {n} had moved to another city.",
    "The new manager of the store is {a_n}.",
    "Nobody expected the winner of the chess tournament to be {a_n}.",
    "The {n} argued her case calmly in front of the judge.",
    "I met {a_n} on the train who was reading a book about physics.",
    "The {n} teaches mathematics at the local school.",
    "At the party, the {n} danced until midnight.",
    "The {n} cried when she heard the news.",
    "The {n} repaired the engine faster than anyone else in the garage.",
    "The surgeon who operated on my friend was {a_n}.",
    "The {n} asked the waiter for the bill.",
    "Last night the {n} cooked dinner for the whole family.",
    "The {n} signed the contract and shook hands with the investors.",
    "Our {n} always remembers everyone's birthday.",
    "The {n} climbed the mountain in record time.",
    "The police officer who stopped the car was {a_n}.",
    "The {n} is worried about her exams next week.",
    "The {n} laughed at the joke and poured more tea.",
    "The pilot of the plane was {a_n}.",
    "The {n} spent the whole weekend painting her house.",
    "It was the {n} who found the mistake in the report.",
    "The {n} won the election by a wide margin.",
    "The {n} looked after the children while the others were away.",
    "The {n} complained that the soup was cold.",
    "In the evening the {n} goes running along the river.",
    "The {n} is saving money to buy a bicycle.",
    "The scientist who discovered the new species is {a_n}.",
    "The {n} forgot her keys at the office again.",
    "The {n} smiled and waved at the crowd.",
    "The person who answered the phone was {a_n}.",
]
NAME_TEMPLATES = [
    "{n} finished her report before the deadline.",
    "{n} is a nurse at the children's hospital.",
    "{n} said she would call back tomorrow.",
    "Everyone at the office likes {n}.",
    "{n} bought a new laptop for her studies.",
    "The prize went to {n}.",
    "{n} was elected captain of the team.",
    "{n} cooked pasta for her friends.",
]
# singular person nouns of GENDER_PAIRS (female form) that read naturally in the templates
NOUNS = ["woman", "girl", "mother", "sister", "daughter", "wife", "aunt", "niece", "grandmother", "lady",
         "actress", "waitress", "queen", "bride", "girlfriend", "stepmother", "spokeswoman", "businesswoman",
         "policewoman", "widow"]
NAMES = [a for a, b in GENDER_PAIRS if a[0].isupper()]
NOUNS_PER_TEMPLATE = 5


def build(seed: int = 0) -> list[dict]:
    female_words = {a for a, _ in GENDER_PAIRS}
    assert set(NOUNS) <= female_words, set(NOUNS) - female_words
    rng = random.Random(seed)
    rows = []
    for i, t in enumerate(TEMPLATES):
        for n in rng.sample(NOUNS, NOUNS_PER_TEMPLATE):
            a_n = ("an " if n[0] in "aeiou" else "a ") + n  # the male form starts alike (aunt/uncle, actress/actor)
            rows.append((f"t{i:02d}-{n}", t.format(n=n, a_n=a_n)))
    for i, t in enumerate(NAME_TEMPLATES):
        for n in NAMES:
            rows.append((f"n{i:02d}-{n}", t.format(n=n)))
    out = []
    for rid, female in rows:
        male = swap_terms(female)
        assert male != female, female
        out.append({"id": rid, "positive": female, "negative": male})
    eval_texts = {v for line in EVAL_PAIRS.open() for k, v in json.loads(line).items() if k in ("female", "male")}
    clash = [r["id"] for r in out if r["positive"] in eval_texts or r["negative"] in eval_texts
             or any(r["positive"].startswith(e) or r["negative"].startswith(e) for e in eval_texts)]
    assert not clash, f"overlap with the counterfactual suite's pairs: {clash[:5]}"
    return out


def main() -> None:
    rows = build()
    path = HERE / "gender_pairs.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
