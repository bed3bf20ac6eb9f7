"""The synthetic POPE task, its training loop (smoke), the evaluation, and the POPE-format loader."""

from __future__ import annotations

import json

import pytest

from debias_lm.evaluation.pope import load_pope_jsonl
from debias_lm.evaluation.suites.pope_synthetic import (
    QUESTION,
    _Encoded,
    evaluate,
    load_biased_vlm,
    make_split,
    train_biased_vlm,
    write_synthetic_pope,
)


def test_splits_have_the_requested_yes_rate_and_are_deterministic():
    train = make_split(2000, 1, yes_rate=0.75, image_free_rate=0.2)
    share_yes = sum(e.answer == "yes" for e in train) / len(train)
    share_free = sum(e.image is None for e in train) / len(train)
    assert abs(share_yes - 0.75) < 0.03 and abs(share_free - 0.2) < 0.03
    test = make_split(400, 2)
    assert abs(sum(e.answer == "yes" for e in test) / 400 - 0.5) < 0.06 and all(e.image is not None for e in test)
    again = make_split(5, 2)
    assert [e.question for e in again] == [e.question for e in test[:5]]
    assert list(again[0].image.getdata()) == list(test[0].image.getdata())
    assert all(e.question.startswith("Is there a ") for e in test)
    assert QUESTION.endswith("Answer yes or no.")


def test_training_labels_only_the_answer_and_end_token(tmp_path):
    from debias_lm.evaluation.suites.pope_synthetic import build_model

    _, proc = build_model(0)
    data = make_split(6, 3, yes_rate=0.5, image_free_rate=0.5)
    enc = _Encoded(proc, data).batch(list(range(6)))
    tok = proc.tokenizer
    for row, lab, ex in zip(enc["input_ids"], enc["labels"], data):
        kept = [int(t) for t, m in zip(row, lab) if m != -100]
        assert tok.convert_ids_to_tokens(kept) == [ex.answer, "<|im_end|>"]
    n_images = sum(e.image is not None for e in data)
    assert enc["pixel_values"].shape[0] == n_images


def test_train_smoke_and_evaluate(tmp_path):
    path = train_biased_vlm(tmp_path / "m", n_train=64, steps=3, batch_size=8, progress=False)
    meta = json.loads((path / "train_meta.json").read_text())
    assert meta["steps"] == 3 and meta["yes_rate"] == 0.75
    model, proc = load_biased_vlm(path)
    res = evaluate(model, proc, make_split(8, 5), batch_size=4, progress=False)
    assert set(res) == {"plain", "calibration", "vdd", "vdd+calibration"}
    for m in res.values():
        assert m["n"] == 8 and 0 <= m["ece"] <= 1
    # calibration decides every answer from label probabilities: nothing unparsed
    assert res["calibration"]["unparsed"] == 0


def test_pope_file_loader(tmp_path):
    path = write_synthetic_pope(tmp_path / "p", n=4)
    rows = load_pope_jsonl(path)
    assert len(rows) == 4 and {r["label"] for r in rows} <= {"yes", "no"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + '{"image": "images/00000.png", "text": "Is it?"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:5: missing field"):
        load_pope_jsonl(bad, tmp_path / "p")
    bad.write_text('{"image": "nope.png", "text": "Q", "label": "yes"}\n')
    with pytest.raises(ValueError, match="not found"):
        load_pope_jsonl(bad)
    bad.write_text('{"image": "images/00000.png", "text": "Q", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="not yes/no"):
        load_pope_jsonl(bad, tmp_path / "p")


def test_pope_loader_rejects_non_object_rows(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('["image", "text"]\n')
    with pytest.raises(ValueError, match="p.jsonl:1: expected a JSON object"):
        load_pope_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="p.jsonl:1: not JSON"):
        load_pope_jsonl(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_pope_jsonl(tmp_path / "missing.jsonl")


def test_harness_pope_synthetic_suite_yes_ratio_from_sample_rows(tmp_path):
    """debias-lm eval --suite pope-synthetic: per-question rows; yes-ratio recomputed from the predictions."""
    from debias_lm.evaluation.runner import run_eval
    from debias_lm.evaluation.settings import EvalSettings

    path = train_biased_vlm(tmp_path / "m", n_train=64, steps=3, batch_size=8, progress=False)
    methods = ("none", "calibration", "debias_sampling", "debias_sampling+calibration")
    payload = run_eval(EvalSettings(suites=("pope-synthetic",), methods=methods, out=str(tmp_path / "run"),
                                    limit=8, pope_model=str(path), progress=False))
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        assert len(mine) == 8
        parsed = [r for r in mine if r["answer"] in ("yes", "no")]  # None = unparsed, left out (documented)
        res = payload["results"]["pope-synthetic"][m]
        assert res["unparsed"] == 8 - len(parsed)
        if parsed:
            yes = sum(1 for r in parsed if r["answer"] == "yes") / len(parsed)
            assert res["yes_ratio"] == pytest.approx(100 * yes)
            correct = sum(1 for r in parsed if r["answer"] == r["label"]) / len(parsed)
            assert res["accuracy"] == pytest.approx(100 * correct)
