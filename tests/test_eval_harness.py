"""``debias-lm eval`` / ``debias-lm bench`` end to end: files, recomputed metrics, resume, malformed rows,
scorer failures, bad input before any work; the smoke version of the acceptance command on the embedded model."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from debias_lm.errors import UserInputError
from debias_lm.eval.harness import EvalSettings
from debias_lm.eval.suites import parse_choice
from tests.test_cli import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]


def _settings(out, model_dir, **kw) -> EvalSettings:
    base = dict(suites=("toxicity",), methods=("none",), model=str(model_dir), out=str(out), limit=3, n_samples=2,
                max_new_tokens=4, batch_size=4, toxicity_scorers=("profanity-check",), progress=False)
    base.update(kw)
    return EvalSettings(**base)


# ------------------------------------------------------------------------------------------------------
def test_parse_choice_rule():
    ans = ["The man", "Not enough information", "The woman"]
    assert parse_choice("A", ans) == 0
    assert parse_choice(" (b) because", ans) == 1
    assert parse_choice("c. The woman", ans) == 2
    assert parse_choice("Answer: B", ans) == 1
    assert parse_choice("I think the woman did it", ans) == 2      # option text, exactly one match
    assert parse_choice("the man or the woman", ans) is None        # two options named
    assert parse_choice("Absolutely", ans) is None                  # a word starting with A is not a letter
    assert parse_choice("", ans) is None


# ------------------------------------------------------------------------------------------------------
def test_eval_files_metrics_recomputed_from_samples(tiny_llama_dir, tmp_path):
    from debias_lm.eval.run import run_eval
    from debias_lm.metrics.toxicity import toxicity_metrics

    out = tmp_path / "run"
    payload = run_eval(_settings(out, tiny_llama_dir, suites=("toxicity", "counterfactual", "fluency"),
                                 methods=("none", "debias_sampling"), sentiment_scorer="vader"))
    rows = _rows(out)
    tox = [r for r in rows if r["suite"] == "toxicity"]
    assert len(tox) == 2 * 3 * 2  # methods x prompts x samples
    assert len([r for r in rows if r["suite"] == "counterfactual"]) == 2 * 3 * 2 * 2  # x 2 sides
    res = json.loads((out / "results.json").read_text())
    assert res == json.loads(json.dumps(payload))
    for key in ("git_commit", "packages", "seeds", "methods", "scorers", "metric_definitions", "settings"):
        assert key in res
    assert res["scorers"]["toxicity"][0]["name"] == "profanity-check"
    assert res["scorers"]["toxicity"][0]["version"].startswith("alt-profanity-check")
    assert res["methods"]["debias_sampling"]["counterfactual_prefix"]
    # EMT recomputed from the rows with an independent loop
    for method in ("none", "debias_sampling"):
        maxima = {}
        for r in tox:
            if r["method"] == method:
                maxima[r["id"]] = max(maxima.get(r["id"], 0.0), r["scores"]["profanity-check"])
        emt = sum(maxima.values()) / len(maxima)
        assert res["results"]["toxicity"][method]["profanity-check"]["emt"] == pytest.approx(emt)
        per_gen = [r["scores"]["profanity-check"] >= 0.5 for r in tox if r["method"] == method]
        assert res["results"]["toxicity"][method]["profanity-check"]["toxic_rate"] == pytest.approx(
            sum(per_gen) / len(per_gen))
    assert all("ppl" in r for r in tox)  # fluency reused the toxicity samples
    assert res["results"]["fluency"]["none"]["samples_from"] == "toxicity"
    cf = res["results"]["counterfactual"]["none"]
    assert 0.0 <= cf["female_word_rate_gap"] <= 1.0 and "sentiment_gap[vader]" in cf
    report = (out / "report.md").read_text()
    assert "## toxicity" in report and "| debias_sampling |" in report and "toxicity_vs_perplexity.png" in report
    assert (out / "toxicity_vs_perplexity.png").stat().st_size > 1000
    # the same numbers straight from the metrics module
    groups = {}
    for r in tox:
        if r["method"] == "none":
            groups.setdefault(r["id"], []).append(r["scores"]["profanity-check"])
    assert toxicity_metrics(list(groups.values()))["toxicity_probability"] == pytest.approx(
        res["results"]["toxicity"]["none"]["profanity-check"]["toxicity_probability"])


def test_occupational_methods_are_compared_on_the_occupations_all_resolved(tiny_llama_dir, tmp_path):
    from debias_lm.eval.run import run_eval
    from debias_lm.metrics.occupational import mae_pp

    out = tmp_path / "run"
    res = run_eval(_settings(out, tiny_llama_dir, suites=("occupational",), methods=("none", "nbls"), limit=6,
                             max_new_tokens=12, occupational_samples=4))["results"]["occupational"]
    rows = [r for r in _rows(out) if r["suite"] == "occupational" and r["probe"] == "generation"]
    by = {m: {r["id"]: r for r in rows if r["method"] == m} for m in ("none", "nbls")}
    common = [i for i in by["none"] if by["none"][i]["p_female"] is not None
              and by["nbls"].get(i, {}).get("p_female") is not None]
    for m in ("none", "nbls"):
        got = res[m]["generation"]
        resolved = sum(r["p_female"] is not None for r in by[m].values())
        assert (got["n"], got["n_resolved"], got["n_unresolved"]) == (len(common), resolved, 6 - resolved)
        want = mae_pp([by[m][i]["p_female"] for i in common], [by[m][i]["bls_women"] for i in common])
        assert got["mae_pp"] == pytest.approx(want)
    assert 0 < len(common) < 6 and any(res[m]["generation"]["n_resolved"] > len(common) for m in ("none", "nbls"))


def test_counterfactual_regard_gap_from_a_local_regard_classifier(tiny_llama_dir, tmp_path):
    from debias_lm.eval.run import run_eval
    from tests.test_scorers import _save_classifier

    regard = _save_classifier(tmp_path / "regard", {0: "Negative", 1: "Neutral", 2: "Positive", 3: "Other"}, seed=3)
    out = tmp_path / "run"
    payload = run_eval(_settings(out, tiny_llama_dir, suites=("counterfactual",), regard_scorer=f"regard:{regard}",
                                 limit=2))
    name = f"regard:{regard}"
    rows = [r for r in _rows(out) if r["suite"] == "counterfactual"]
    labels = {g: [max(r["scores"][name], key=r["scores"][name].get) for r in rows if r["group"] == g]
              for g in ("female", "male")}
    neg = abs(labels["female"].count("negative") / len(labels["female"])
              - labels["male"].count("negative") / len(labels["male"]))
    res = payload["results"]["counterfactual"]["none"]
    assert res[f"regard_gap_negative[{name}]"] == pytest.approx(neg)
    assert payload["scorers"]["regard"]["name"] == name
    assert f"regard gap mean [{name}]" in (out / "report.md").read_text()


def test_interrupted_run_resumes_without_redoing_rows(tiny_llama_dir, tmp_path):
    from debias_lm.eval.run import run_eval

    out = tmp_path / "run"
    settings = _settings(out, tiny_llama_dir)
    run_eval(settings)
    full = _rows(out)
    assert len(full) == 6
    # simulate an interruption: keep 2 complete rows and half of a third line
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    kept = {(r["id"], r["sample"]): r["text"] for r in full[:2]}
    run_eval(settings)
    again = _rows(out)
    assert len(again) == 6 and len({(r["id"], r["sample"]) for r in again}) == 6
    for r in again:
        if (r["id"], r["sample"]) in kept:
            assert r["text"] == kept[(r["id"], r["sample"])]  # not regenerated
        assert "profanity-check" in r["scores"]
    # the same directory with other generation settings is refused before any work
    with pytest.raises(UserInputError, match="max_new_tokens: 4 -> 9"):
        run_eval(dataclasses.replace(settings, max_new_tokens=9))


def test_malformed_rows_and_scorer_failures_are_recorded(tiny_llama_dir, tmp_path, monkeypatch):
    from debias_lm.eval import scorers
    from debias_lm.eval.run import run_eval

    class Flaky(scorers.Scorer):
        name, kind, definition = "flaky", "toxicity", "fails on texts of odd length"

        def version(self) -> str:
            return "test"

        def score_batch(self, texts):
            if any(len(t) % 2 for t in texts):
                raise RuntimeError("odd length")
            return [0.25 for _ in texts]

    monkeypatch.setitem(scorers.SCORERS, "flaky", lambda arg=None, **kw: Flaky())
    out = tmp_path / "run"
    payload = run_eval(_settings(out, tiny_llama_dir, limit=None, toxicity_scorers=("flaky",),
                                 datasets={"toxicity": f"rtp:{FIXTURES / 'rtp_prompts.jsonl'}"}))
    rows = _rows(out)
    bad = [r for r in rows if r.get("error")]
    good = [r for r in rows if not r.get("error")]
    assert len(bad) >= 2 and all(r["suite"] == "toxicity" and r["id"] for r in bad)
    assert payload["counts"]["malformed_rows"] == len(bad)
    failed = [r for r in good if "flaky" in r["score_errors"]]
    scored = [r for r in good if "flaky" in r["scores"]]
    assert len(failed) + len(scored) == len(good)
    assert all(len(r["text"]) % 2 for r in failed) and all(len(r["text"]) % 2 == 0 for r in scored)
    assert all("odd length" in r["score_errors"]["flaky"] for r in failed)
    m = payload["results"]["toxicity"]["none"]["flaky"]
    assert m["n_scored"] == len(scored) and m["n_scorer_errors"] == len(failed)
    if scored:
        assert m["emt"] == pytest.approx(0.25)


@pytest.mark.parametrize("args, message", [
    (["--suite", "toxicity,nope"], "--suite 'nope' is invalid"),
    (["--suite", "toxicity", "--method", "none,calibration"], "does not apply to the toxicity suite"),
    (["--suite", "toxicity", "--method", "none,nosuch"], "nosuch"),
    (["--suite", "toxicity", "--method", "uddia", "--backend", "vllm"], "HF backend only"),
    (["--suite", "bbq-gender", "--backend", "vllm"], "--backend vllm runs the generation suites"),
    (["--suite", "pope-synthetic", "--pope-model", "no/such/dir"], "eval/vlm/pope_synthetic.py"),
    (["--suite", "toxicity", "--set", "uddia.lr=0.1"], "not in --method"),
    (["--suite", "toxicity", "--set", "lr=0.1"], "METHOD.FIELD=VALUE"),
    (["--suite", "toxicity", "--method", "uddia", "--set", "uddia.lr=-1"], "lr"),
    (["--suite", "toxicity", "--toxicity-scorer", "vader"], "not a toxicity scorer"),
    (["--suite", "toxicity", "--toxicity-scorer", "nosuch"], "nosuch"),
    (["--suite", "counterfactual", "--regard-scorer", "vader"], "not a regard scorer"),
    (["--suite", "toxicity", "--limit", "0"], "--limit: '0' is invalid"),
    (["--suite", "occupational", "--occupational-samples", "0"], "--occupational-samples: '0' is invalid"),
    (["--suite", "toxicity,occupational", "--probe", "likelihood,nope"], "--probe nope is invalid"),
    (["--suite", "toxicity", "--dataset", "toxicity=rtp:no/such.jsonl"], "such"),
    (["--suite", "overhead", "--bench-batch", "1,x"], "comma-separated integers"),
    (["--method", "none"], "needs --suite"),
])
def test_bad_input_fails_before_the_model_loads(args, message, tmp_path, monkeypatch, capsys):
    import debias_lm.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    from debias_lm.cli.main import main

    monkeypatch.setattr(debias_lm.models, "load_model", no_load)
    code = main(["eval", *args, "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bench_forward_equivalents_and_ratio(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--model", str(tiny_llama_dir), "--backend", "hf", "--batch", "1,2",
                                "--method", "debias_sampling,nbls", "--max-new-tokens", "3", "--repeats", "1",
                "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["method"]) for r in rows] == [(b, m) for b in (1, 2) for m in ("none", "debias_sampling", "nbls")]
    for row in rows:
        assert row["tokens_per_s"] > 0 and math.isfinite(row["ratio_vs_plain"])
        want = {"none": 1.0, "debias_sampling": 2.0, "nbls": 1.0}[row["method"]]
        assert row["forward_equiv_per_token"] == pytest.approx(want)
        if row["method"] == "none":
            assert row["ratio_vs_plain"] == 1.0
    assert "| hf | 2 | debias_sampling |" in r.stdout


def test_bench_on_vllm_skips_hf_only_methods(tiny_llama_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--model", str(tiny_llama_dir), "--backend", "vllm", "--batch", "2",
                "--method", "nbls,debias_sampling,uddia", "--set", "nbls.k=2", "--max-new-tokens", "3",
                "--repeats", "1", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["backend"], row["method"]) for row in rows] == [("vllm", "none"), ("vllm", "nbls"),
                                                                  ("vllm", "debias_sampling")]
    assert all(row["tokens_per_s"] > 0 and row["forward_equiv_per_token"] is None for row in rows)


def test_overhead_suite_resumes_a_complete_measurement(tiny_llama_dir, tmp_path, monkeypatch):
    from debias_lm.eval import bench
    from debias_lm.eval.run import run_eval

    settings = _settings(tmp_path / "run", tiny_llama_dir, suites=("overhead",), methods=("none", "debias_sampling"),
                         bench_batches=(1, 2), bench_new_tokens=2, bench_repeats=1)
    first = run_eval(settings)["results"]["overhead"]
    assert [(r["batch"], r["method"]) for r in first] == [(1, "none"), (1, "debias_sampling"), (2, "none"),
                                                          (2, "debias_sampling")]

    def boom(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(bench, "measure_hf", boom)
    assert run_eval(settings)["results"]["overhead"] == first
    with pytest.raises(AssertionError, match="measured again"):  # other settings: a new measurement
        run_eval(dataclasses.replace(settings, bench_new_tokens=3))


def test_vllm_backend_toxicity(tiny_llama_dir, tmp_path):
    pytest.importorskip("vllm")
    from debias_lm.eval.run import run_eval

    out = tmp_path / "run"
    payload = run_eval(_settings(out, tiny_llama_dir, backend="vllm", methods=("none", "nbls"), limit=2,
                                 method_overrides={"nbls": {"k": 2}}))
    rows = [r for r in _rows(out) if r["suite"] == "toxicity"]
    assert len(rows) == 2 * 2 * 2
    assert payload["model"]["backend"] == "vllm"
    assert set(payload["results"]["toxicity"]) == {"none", "nbls"}


def test_acceptance_command_smoke_on_the_embedded_model(tmp_path):
    """The acceptance command with a small --limit (the full run is in docs/results.md)."""
    out = tmp_path / "x"
    r = run_cli(
        "eval", "--suite", "toxicity,occupational,bbq-gender,fluency", "--method", "none,nbls,uddia",
        "--limit", "2", "--n-samples", "2", "--max-new-tokens", "4", "--occupational-samples", "2",
        "--out", str(out), "--no-progress", timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"toxicity", "occupational", "bbq-gender", "fluency"}
    for suite in res:
        assert set(res[suite]) == {"none", "nbls", "uddia"}
    assert res["occupational"]["uddia"]["likelihood"]["not_applicable"]
    assert res["occupational"]["nbls"]["likelihood"]["n"] == 2
    rows = _rows(out)
    bbq = [r for r in rows if r["suite"] == "bbq-gender"]
    assert len(bbq) == 3 * 2 and all("prediction" in r for r in bbq)
    assert len([r for r in rows if r["suite"] == "toxicity"]) == 3 * 2 * 2
    report = (out / "report.md").read_text()
    for suite in res:
        assert f"## {suite}" in report
