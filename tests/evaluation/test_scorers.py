"""debias_lm.evaluation.scorers against direct calls of the underlying packages and hand-computed references."""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path

import pytest

from debias_lm.errors import UserInputError
from debias_lm.evaluation import scorers as S

TEXTS = [
    "you are a stupid idiot",
    "Have a nice day",
    "The nurse said that she would be late because the engineer was busy.",
    "",
    "He and she went to the store.",
]


# ----------------------------------------------------------------------------------------------- offline


def test_profanity_check_matches_predict_prob():
    from profanity_check import predict_prob

    sc = S.get_scorer("profanity-check")
    assert sc.kind == "toxicity" and sc.name == "profanity-check"
    scores, errors = S.score_texts(sc, TEXTS, batch_size=2)
    assert errors == [None] * len(TEXTS)
    assert scores[0] > 0.5 and scores[1] < 0.5
    direct = predict_prob([t if t else " " for t in TEXTS])
    assert scores == pytest.approx([float(x) for x in direct], abs=1e-12)
    d = sc.describe()
    assert set(d) == {"name", "kind", "version", "definition"}
    assert d["version"] == "alt-profanity-check==1.9.1"


def test_hatesonar_is_one_minus_neither():
    S.ensure_utf8_locale()
    from hatesonar import Sonar

    sonar = Sonar()
    sc = S.get_scorer("hatesonar")
    scores, errors = S.score_texts(sc, TEXTS, batch_size=3)
    assert errors == [None] * len(TEXTS)
    for text, got in zip(TEXTS, scores):
        classes = {c["class_name"]: float(c["confidence"]) for c in sonar.ping(text=text or " ")["classes"]}
        assert got == pytest.approx(1.0 - classes["neither"], abs=1e-9)
        assert got == pytest.approx(classes["hate_speech"] + classes["offensive_language"], abs=1e-5)
    assert sc.version() == "hatesonar==0.1.0"


def test_ensure_utf8_locale_generates_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIAS_LM_CACHE", str(tmp_path))
    monkeypatch.delenv("LOCPATH", raising=False)
    system_has_it = S._locale_available()
    got = S.ensure_utf8_locale()
    if system_has_it:
        assert got is None
    else:
        assert got == tmp_path / "locale"
        assert (tmp_path / "locale" / "en_US.UTF-8" / "LC_CTYPE").is_file()
        assert os.environ["LOCPATH"].split(":")[0] == str(tmp_path / "locale")
        assert not [p for p in got.iterdir() if p.name.startswith(".tmp-")]
    assert S._locale_available()


def test_ensure_utf8_locale_without_localedef(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIAS_LM_CACHE", str(tmp_path))
    monkeypatch.setattr(S, "_locale_available", lambda name=S.UTF8_LOCALE: False)
    monkeypatch.setattr(S.shutil, "which", lambda exe: None)
    with pytest.raises(UserInputError, match="localedef.*locales"):
        S.ensure_utf8_locale()


def _vader_lexicon_valence(word: str) -> float:
    import vaderSentiment

    lex = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    for line in lex.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if cols[0] == word:
            return float(cols[1])
    raise AssertionError(f"{word!r} not in the VADER lexicon")


def test_vader_compound_by_hand_and_direct():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sc = S.get_scorer("vader")
    assert sc.kind == "sentiment"
    v = _vader_lexicon_valence("good")
    assert v == 1.9
    (got,), _ = S.score_texts(sc, ["good"])
    assert got == pytest.approx(v / math.sqrt(v * v + 15), abs=5e-5)  # VADER rounds compound to 4 decimals
    assert got == pytest.approx(0.4404, abs=1e-12)
    sentences = ["The food was not good at all, and the service was really terrible!", "",
                 "kind of okay I guess", "She is a brilliant and caring doctor."]
    scores, errors = S.score_texts(sc, sentences, batch_size=3)
    sia = SentimentIntensityAnalyzer()
    assert errors == [None] * len(sentences)
    assert scores == [sia.polarity_scores(t)["compound"] for t in sentences]
    assert scores[0] < -0.5 and scores[1] == 0.0 and scores[3] > 0.5


# ------------------------------------------------------------------------------------- failure capture


class BoomVader(S.VaderScorer):
    name = "boom-vader"

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def score_batch(self, texts):
        self.calls.append(list(texts))
        if any("BOOM" in t for t in texts):
            raise RuntimeError("BOOM found")
        return super().score_batch(texts)


def test_score_texts_isolates_failing_text():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["a lovely day", "terrible awful news", "BOOM goes the scorer", "fine", "great work", "bad"]
    sc = BoomVader()
    scores, errors = S.score_texts(sc, texts, batch_size=4)
    sia = SentimentIntensityAnalyzer()
    assert scores[2] is None
    assert errors == [None, None, "RuntimeError: BOOM found", None, None, None]
    for i in (0, 1, 3, 4, 5):
        assert scores[i] == sia.polarity_scores(texts[i])["compound"]
    # the failing batch was retried text by text; the second batch ran once
    assert sc.calls == [texts[:4], *[[t] for t in texts[:4]], texts[4:]]


def test_score_texts_wrong_length_and_bad_input():
    class Short(S.VaderScorer):
        def score_batch(self, texts):
            return super().score_batch(texts)[:1]

    scores, errors = S.score_texts(Short(), ["good", "bad"], batch_size=2)
    # retried alone, a one-text batch returns its one score
    assert scores == [0.4404, -0.5423] and errors == [None, None]
    with pytest.raises(UserInputError, match="strings"):
        S.score_texts(S.get_scorer("vader"), ["ok", None])
    with pytest.raises(UserInputError, match="single string"):
        S.score_texts(S.get_scorer("vader"), "ok")
    with pytest.raises(UserInputError, match="batch_size"):
        S.score_texts(S.get_scorer("vader"), ["ok"], batch_size=0)


# ----------------------------------------------------------------------------------- registry / errors


def test_registry_and_errors(monkeypatch):
    assert S.list_scorers() == ["detoxify", "hatesonar", "hf", "profanity-check", "regard", "vader"]
    assert set(S.SCORERS) == set(S.list_scorers())
    with pytest.raises(UserInputError) as e:
        S.get_scorer("perspective")
    for name in S.list_scorers():
        assert name in str(e.value)
    monkeypatch.setitem(sys.modules, "detoxify", None)  # not installed here; make sure even if it were
    for spec in ("detoxify", "detoxify:unbiased"):
        with pytest.raises(UserInputError, match="pip install detoxify"):
            S.get_scorer(spec)
    with pytest.raises(UserInputError, match="original, unbiased, multilingual"):
        S.get_scorer("detoxify:small")
    with pytest.raises(UserInputError, match="takes no argument"):
        S.get_scorer("vader:xyz")
    with pytest.raises(UserInputError, match="does not take option.*batch"):
        S.get_scorer("vader", batch=3)
    with pytest.raises(UserInputError, match="needs a model"):
        S.get_scorer("hf")


def test_unloadable_hf_model(tmp_path):
    with pytest.raises(UserInputError, match="debias-lm-test/no-such-model.*local directory"):
        S.get_scorer("hf:debias-lm-test/no-such-model")
    with pytest.raises(UserInputError, match="local directory"):
        S.get_scorer(f"regard:{tmp_path / 'missing'}")


# --------------------------------------------------------------------------------- tiny HF classifiers


def _save_classifier(path: Path, id2label: dict[int, str], arch: str = "bert", problem_type: str | None = None,
                     seed: int = 0) -> Path:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from debias_lm.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()  # left padding by default: the scorer must pad on the right itself
    common = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "id2label": id2label,
              "label2id": {v: k for k, v in id2label.items()}}
    if problem_type:
        common["problem_type"] = problem_type
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128, **common)
        model = BertForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=32, max_position_embeddings=128, **common)
        model = LlamaForSequenceClassification(cfg)
    # random init gives near-uniform outputs; widen the head so probabilities differ visibly between texts
    with torch.no_grad():
        head = model.classifier if arch == "bert" else model.score
        head.weight.mul_(20.0)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _manual_logits(path: Path, text: str):
    """Forward of one text alone (no padding) through freshly loaded files."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = tok(text or " ")["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


HF_TEXTS = [
    "The doctor told me that they had finished the work because it was urgent.",
    "Yes.",
    "",
    "Women and men work in every occupation: carpenters, cashiers, surgeons, pilots.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def binary_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    labels = {0: "non-toxic", 1: "toxic"}
    return {arch: _save_classifier(root / arch, labels, arch) for arch in ("bert", "llama")}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_hf_scorer_matches_manual_softmax(binary_dirs, arch):
    path = binary_dirs[arch]
    sc = S.get_scorer(f"hf:{path}")
    assert sc.label == "toxic" and sc.kind == "toxicity" and not sc.multi_label
    scores, errors = S.score_texts(sc, HF_TEXTS, batch_size=3)  # padded batches of mixed lengths
    assert errors == [None] * len(HF_TEXTS)
    refs = []
    for text in HF_TEXTS:
        z = _manual_logits(path, text)
        refs.append(math.exp(z[1]) / (math.exp(z[0]) + math.exp(z[1])))
    assert scores == pytest.approx(refs, abs=1e-5)
    assert max(refs) - min(refs) > 1e-3  # the check can tell texts apart

    other = S.get_scorer(f"hf:{path}@non-toxic")
    assert other.label == "non-toxic"
    assert S.score_texts(other, HF_TEXTS)[0] == pytest.approx([1 - r for r in refs], abs=1e-5)
    assert S.get_scorer(f"hf:{path}", label="NON-TOXIC").label_index == 0


def test_hf_label_errors_and_version(binary_dirs, tmp_path):
    path = binary_dirs["bert"]
    with pytest.raises(UserInputError, match="'non-toxic', 'toxic'"):
        S.get_scorer(f"hf:{path}@insult")
    with pytest.raises(UserInputError, match="two different labels"):
        S.get_scorer(f"hf:{path}@toxic", label="non-toxic")
    no_default = _save_classifier(tmp_path / "abc", {0: "a", 1: "b", 2: "c"})
    with pytest.raises(UserInputError, match="'a', 'b', 'c'"):
        S.get_scorer(f"hf:{no_default}")
    sc = S.get_scorer(f"hf:{path}")
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert sc.version().startswith(f"{path} (local, sha256 {digest[:16]}); transformers==")
    d = sc.describe()
    assert d["name"] == f"hf:{path}@toxic" and "softmax" in d["definition"]


def test_hf_multi_label_uses_sigmoid(tmp_path):
    path = _save_classifier(tmp_path / "ml", {0: "insult", 1: "toxic", 2: "threat"},
                            problem_type="multi_label_classification", seed=1)
    sc = S.get_scorer(f"hf:{path}")
    assert sc.multi_label and sc.label == "toxic"
    scores, errors = S.score_texts(sc, HF_TEXTS, batch_size=2)
    assert errors == [None] * len(HF_TEXTS)
    refs = [1 / (1 + math.exp(-_manual_logits(path, t)[1])) for t in HF_TEXTS]
    assert scores == pytest.approx(refs, abs=1e-5)
    assert "sigmoid" in sc.describe()["definition"]


def test_regard_scorer(tmp_path):
    labels = {0: "Negative", 1: "Neutral", 2: "Positive", 3: "Other"}
    path = _save_classifier(tmp_path / "regard", labels, seed=2)
    sc = S.get_scorer(f"regard:{path}")
    assert sc.kind == "regard" and sc.name == f"regard:{path}"
    scores, errors = S.score_texts(sc, HF_TEXTS, batch_size=4)
    assert errors == [None] * len(HF_TEXTS)
    for text, got in zip(HF_TEXTS, scores):
        assert list(got) == ["negative", "neutral", "positive", "other"]
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-6)
        z = [math.exp(x) for x in _manual_logits(path, text).tolist()]
        ref = {labels[i].lower(): z[i] / sum(z) for i in range(4)}
        assert got == pytest.approx(ref, abs=1e-5)
    bad = _save_classifier(tmp_path / "notregard", {0: "non-toxic", 1: "toxic"})
    with pytest.raises(UserInputError, match="not a regard classifier.*'non-toxic', 'toxic'"):
        S.get_scorer(f"regard:{bad}")
