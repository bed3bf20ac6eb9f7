"""Gendered word lists live only in ``debias_lm/words.py`` (issue 14: one definition of each idea).

An AST walk over the project's Python code finds every literal collection of words (a tuple / list / set /
frozenset / dict keys of strings, or a string that is ``.split()`` into words) of at least four entries, nearly
all of them gendered words; outside ``words.py`` each is a second copy of a list that belongs there.
"""

from __future__ import annotations

import ast
from pathlib import Path

from debias_lm import words

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("debias_lm", "plugins", "eval", "examples")
VOCAB = {w.lower() for pair in words.GENDER_PAIRS for w in pair} | set(words.FEMALE_WORDS) | set(words.MALE_WORDS)

ALLOWED = {
    # BBQ's own annotation vocabulary (its stereotyped_groups labels -> BBQ's answer-info codes), part of the
    # dataset format, not a list for finding gender in text; metrics/ imports nothing of the project but core/.
    "debias_lm/metrics/bbq.py",
    # the steering recipe's data generators pick template nouns from words.GENDER_PAIRS (make_gender_pairs asserts
    # it): a selection of sentence subjects, not a list for finding gender in text
    "eval/steer/make_gender_pairs.py",
    "eval/steer/select_gender.py",
}


def _word_lists(tree: ast.AST):
    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "split"
              and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)):
            items = [ast.Constant(w) for w in node.func.value.value.split()]
        if not items or len(items) < 4:
            continue
        texts = [x.value for x in items if isinstance(x, ast.Constant) and isinstance(x.value, str)]
        if len(texts) != len(items) or any(len(t.split()) != 1 for t in texts):
            continue
        gendered = sum(t.strip().lower() in VOCAB for t in texts)
        if gendered >= 4 and gendered >= 0.75 * len(texts):
            yield node.lineno, texts[:6]


def test_gendered_word_lists_only_in_words_py():
    found = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "debias_lm/words.py" or rel in ALLOWED:
                continue
            for line, sample in _word_lists(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(f"{rel}:{line}: {sample}")
    assert not found, "gendered word lists outside debias_lm/words.py:\n" + "\n".join(found)


def test_the_check_finds_a_copy():
    copy = 'FEMALE = frozenset("she her woman women girl".split())\nPRONOUNS = (" he", " his", " him", " He")\n'
    assert sorted(line for line, _ in _word_lists(ast.parse(copy))) == [1, 2]
    assert list(_word_lists(ast.parse('PROMPTS = ("The nurse said", "she", "a", "b")'))) == []
