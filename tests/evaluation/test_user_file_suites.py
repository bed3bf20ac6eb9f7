"""The crows-pairs, stereoset and bold suites on hand-written files in each dataset's published format
(tests/fixtures/datasets): metrics recomputed from the stored rows and from direct sentence log-likelihoods
(``debias_lm.metrics.stereotype``); without a file each suite refuses before any model loads, naming where the
published file lives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from debias_lm.errors import UserInputError
from debias_lm.evaluation.settings import EvalSettings

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"


def _settings(out, model_dir, **kw) -> EvalSettings:
    base = dict(methods=("none",), model=str(model_dir), out=str(out), n_samples=1, max_new_tokens=3,
                batch_size=4, toxicity_scorers=("profanity-check",), progress=False)
    base.update(kw)
    return EvalSettings(**base)


@pytest.mark.parametrize("suite, where", [("crows-pairs", "nyu-mll/crows-pairs"), ("stereoset", "StereoSet"),
                                          ("bold", "amazon-science/bold")])
def test_user_file_suites_refuse_without_a_file(suite, where, tmp_path, monkeypatch):
    import debias_lm.models
    from debias_lm.evaluation.runner import run_eval

    monkeypatch.setattr(debias_lm.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserInputError, match=f"--dataset {suite}=FILE .*{where}"):
        run_eval(EvalSettings(suites=(suite,), out=str(tmp_path / "x")))


def test_likelihood_suites_match_direct_sentence_logliks(tiny_llama_dir, tmp_path):
    from debias_lm.evaluation.datasets import load_crows_pairs, load_stereoset
    from debias_lm.evaluation.runner import run_eval
    from debias_lm.metrics.stereotype import sentence_logliks
    from debias_lm.models import load_model

    out = tmp_path / "run"
    res = run_eval(_settings(out, tiny_llama_dir, suites=("crows-pairs", "stereoset"), methods=("none", "nbls"),
                             datasets={"crows-pairs": str(FIXTURES / "crows_pairs_anonymized.csv"),
                                       "stereoset": str(FIXTURES / "stereoset_dev.json")}))["results"]
    model, tok = load_model(str(tiny_llama_dir))
    pairs = [r.data for r in load_crows_pairs(FIXTURES / "crows_pairs_anonymized.csv").records if not r.error]
    more = sentence_logliks(model, tok, [p["sent_more"] for p in pairs])
    less = sentence_logliks(model, tok, [p["sent_less"] for p in pairs])
    pct = 100 * sum(m > le for m, le in zip(more, less)) / len(pairs)
    assert res["crows-pairs"]["none"]["n"] == len(pairs)
    assert res["crows-pairs"]["none"]["pct_stereotype"] == pytest.approx(pct)
    assert res["crows-pairs"]["none"]["mean_abs_ll_diff"] == pytest.approx(
        sum(abs(m - le) for m, le in zip(more, less)) / len(pairs), rel=1e-4)
    # a prompt method reads the same sentences after its grounding prefix: a real, different measurement
    assert res["crows-pairs"]["nbls"]["n"] == len(pairs)
    assert res["crows-pairs"]["nbls"]["mean_abs_ll_diff"] != pytest.approx(res["crows-pairs"]["none"]["mean_abs_ll_diff"])
    items = [r.data for r in load_stereoset(FIXTURES / "stereoset_dev.json").records if not r.error]
    s = sentence_logliks(model, tok, [i["stereotype"] for i in items])
    a = sentence_logliks(model, tok, [i["anti_stereotype"] for i in items])
    u = sentence_logliks(model, tok, [i["unrelated"] for i in items])
    by_target: dict[str, list] = {}
    for i, it in enumerate(items):
        by_target.setdefault(it["target"], []).append(i)
    ss = sum(100 * sum(s[i] > a[i] for i in ix) / len(ix) for ix in by_target.values()) / len(by_target)
    lms = sum(100 * sum(((s[i] > u[i]) + (a[i] > u[i])) / 2 for i in ix) / len(ix)
              for ix in by_target.values()) / len(by_target)
    assert res["stereoset"]["none"]["ss"] == pytest.approx(ss)
    assert res["stereoset"]["none"]["lms"] == pytest.approx(lms)
    malformed = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if '"error"' in x]
    assert {r["suite"] for r in malformed} <= {"crows-pairs", "stereoset"}  # malformed rows recorded, not dropped
    assert "## crows-pairs" in (out / "report.md").read_text()


def test_bold_group_spread_from_the_sample_rows(tiny_llama_dir, tmp_path):
    from debias_lm.evaluation.runner import run_eval

    out = tmp_path / "run"
    res = run_eval(_settings(out, tiny_llama_dir, suites=("bold",), datasets={"bold": str(FIXTURES / "bold")},
                             n_samples=2))["results"]["bold"]["none"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["suite"] == "bold" and "text" in r]
    assert len(rows) == 2 * res["n_prompts"]
    means: dict[tuple, list] = {}
    for r in rows:
        means.setdefault((r["domain"], r["group"]), []).append(r["scores"]["vader"])
    spreads = []
    for d in sorted({d for d, _ in means}):
        vals = [sum(v) / len(v) for (dd, _), v in means.items() if dd == d]
        if len(vals) >= 2:
            spreads.append(max(vals) - min(vals))
    expected = sum(spreads) / len(spreads) if spreads else math.nan
    assert res["group_spread[vader]"] == pytest.approx(expected, nan_ok=True)
    assert set(res["group_means[vader]"]) == {f"{d}/{g}" for d, g in means}
