"""Fluency beside perplexity: the repetition rate (seq-rep-n) by hand, the circular-perplexity rule, and the
harness's fluency columns recomputed from its own sample rows (tiny Llama, plain vs UDDIA-b)."""

from __future__ import annotations

import json
import math

import pytest

import debias_lm as dl
from debias_lm.eval.harness import EvalSettings
from debias_lm.metrics.fluency import dist_n, mean_repetition_rate, perplexity_is_circular, repetition_rate


def test_repetition_rate_by_hand():
    # "a b a b a": bigrams ab ba ab ba -> 2 unique of 4 -> 0.5 repeated
    assert repetition_rate("a b a b a", 2) == pytest.approx(0.5)
    # unigrams of "x y x x": 2 unique of 4
    assert repetition_rate("x y x x", 1) == pytest.approx(0.5)
    assert repetition_rate("one two three four five", 2) == 0.0
    assert math.isnan(repetition_rate("single", 2))  # no bigram: not counted
    # mean over texts that have an n-gram: (0.5 + 0.0) / 2, the one-word text skipped
    assert mean_repetition_rate(["a b a b a", "c d e", "z"], 2) == pytest.approx(0.25)
    assert math.isnan(mean_repetition_rate(["z", ""], 2))
    with pytest.raises(ValueError):
        repetition_rate("a b", 0)
    # within-text repetition and cross-sample diversity are different things: two identical loop-free texts
    assert repetition_rate("the cat sat", 2) == 0.0 and dist_n(["the cat sat", "the cat sat"], 2) == pytest.approx(2 / 6)


def test_perplexity_is_circular_only_when_redo_selects_by_it():
    assert perplexity_is_circular(dl.UDDIAConfig(), scorer_is_generator=True)
    assert not perplexity_is_circular(dl.UDDIAConfig(), scorer_is_generator=False)  # another scorer LM
    assert not perplexity_is_circular(dl.UDDIAConfig(layer_step=0), scorer_is_generator=True)  # no redo
    assert not perplexity_is_circular(dl.UDDIAConfig(lr=0.0), scorer_is_generator=True)  # nothing tuned
    assert not perplexity_is_circular(dl.DebiasSamplingConfig(), scorer_is_generator=True)
    assert not perplexity_is_circular(None, scorer_is_generator=True)


def test_harness_fluency_reports_repetition_and_labels_circular_perplexity(tiny_llama_dir, tmp_path):
    from debias_lm.eval.run import run_eval

    out = tmp_path / "run"
    settings = EvalSettings(suites=("fluency",), methods=("none", "uddia"), model=str(tiny_llama_dir), out=str(out),
                            limit=3, n_samples=2, max_new_tokens=6, batch_size=6,
                            toxicity_scorers=("profanity-check",), progress=False,
                            method_overrides={"uddia": {"variant": "b", "trigger": 0.0}})
    payload = run_eval(settings)
    res = payload["results"]["fluency"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]
    for method in ("none", "uddia"):
        texts = [r["text"] for r in rows if r["suite"] == "fluency" and r["method"] == method]
        assert len(texts) == 6
        for n in (2, 4):
            vals = []
            for t in texts:  # seq-rep-n written out again
                toks = t.split()
                grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
                if grams:
                    vals.append(1 - len(set(grams)) / len(grams))
            want = sum(vals) / len(vals) if vals else None
            assert res[method][f"repetition_{n}"] == (pytest.approx(want) if want is not None else None)
    assert res["uddia"]["perplexity_circular"] is True and "circular" in res["uddia"]["perplexity_note"]
    assert res["none"]["perplexity_circular"] is False
    report = (out / "report.md").read_text()
    assert "repetition (2-gram)" in report and "† circular" in report
    line = next(x for x in report.splitlines() if x.startswith("| uddia |") and "†" in x)
    assert line.count("†") == 2  # mean and median perplexity cells
