"""The debias-lm command end to end on a tiny saved model; bad input gives one line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "debias_lm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_generate_side_by_side_with_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "gen.json"
    r = run_cli("generate", "--method", "nbls", "--model", str(tiny_llama_dir), "--prompt", "The nurse said",
                "--prompt", "A pilot", "--max-new-tokens", "4", "--set", "k=3", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("=== prompt:") == 2 and "--- plain:" in r.stdout and "--- nbls:" in r.stdout
    data = json.loads(out.read_text())
    assert data["config"]["k"] == 3 and data["config"]["method"] == "nbls"
    assert [o["prompt"] for o in data["outputs"]] == ["The nurse said", "A pilot"]
    assert all("plain" in o and "debiased" in o for o in data["outputs"])


def test_generate_no_baseline(tiny_llama_dir):
    r = run_cli("generate", "--method", "identity", "--model", str(tiny_llama_dir), "--prompt", "Hello",
                "--max-new-tokens", "3", "--no-baseline")
    assert r.returncode == 0, r.stderr
    assert "--- plain:" not in r.stdout and "--- identity:" in r.stdout


def test_eval_occupational_json_schema(tiny_llama_dir, tmp_path):
    occ_file = tmp_path / "occ.txt"
    occ_file.write_text("# two occupations\nCooks\n\nBakers\n")
    out = tmp_path / "res.json"
    r = run_cli("eval", "occupational", "--model", str(tiny_llama_dir), "--method", "nbls", "--probe", "likelihood",
                "--occupations", str(occ_file), "--occupation", "Lawyers", "--json", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["method"] == "nbls" and data["probe"] == "likelihood"
    assert [o["occupation"] for o in data["occupations"]] == ["Cooks", "Bakers", "Lawyers"]
    assert [o["bls_women"] for o in data["occupations"]] == [38.4, 63.6, 38.5]
    assert all(0.0 <= o["p_female"] <= 1.0 for o in data["occupations"])
    assert set(data["metrics"]) >= {"mae_pp", "pearson_r", "parity_gap_pp", "amplification_pp"}
    assert not {"Cooks", "Bakers", "Lawyers"} & set(data["details"]["grounding_occupations"])
    assert "| likelihood | nbls |" in r.stdout


def test_eval_occupational_out_dir(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli("eval", "occupational", "--model", str(tiny_llama_dir), "--method", "none,nbls", "--probe",
                "likelihood", "--occupation", "Cooks", "--occupation", "Electricians", "--k", "4", "--out", str(out),
                "--no-progress")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} >= {"none_likelihood.json", "nbls_likelihood.json", "summary.json",
                                                "report.md", "occupational.png", "manifest.json"}
    summary = json.loads((out / "summary.json").read_text())
    none, nbls = summary["rows"]
    base, new = none["mae_pp"], nbls["mae_pp"]
    assert nbls["mae_reduction_vs_none"] == pytest.approx((base - new) / base)
    assert str(out) in r.stdout
    # the four-arm comparison into the same directory: the earlier run's files are replaced, none left stale
    r = run_cli("eval", "occupational", "--model", str(tiny_llama_dir), "--method",
                "none,nbls_instructions,nbls_shuffled,nbls", "--probe", "likelihood", "--occupation", "Cooks",
                "--occupation", "Electricians", "--k", "4", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [x["method"] for x in rows] == ["none", "nbls_instructions", "nbls_shuffled", "nbls"]
    assert all(x["n_common"] == 2 for x in rows)
    shuffled = json.loads((out / "nbls_shuffled_likelihood.json").read_text())
    assert shuffled["details"]["grounding"]["control"] == "shuffled"
    assert "figures_from" in shuffled["details"]["grounding"]
    assert "replaced 6 files of an earlier run" in r.stdout
    # the shorter run after it: nothing of the four-arm run survives
    r = run_cli("eval", "occupational", "--model", str(tiny_llama_dir), "--method", "none", "--probe", "likelihood",
                "--occupation", "Cooks", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "none_likelihood.json", "occupational.png",
                                                      "report.md", "summary.json"]


def test_eval_occupational_refuses_a_foreign_out_dir_before_loading_the_model(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    r = run_cli("eval", "occupational", "--model", str(tmp_path / "no-such-model"), "--out", str(out), timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not written by 'eval occupational'" in lines[0] and "thesis.tex" in lines[0]
    assert (out / "thesis.tex").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--method", "nope", "--prompt", "x"], "unknown method 'nope'"),
        (["generate", "--method", "nbls", "--prompt", " "], "--prompt is empty"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "k=1000"], "k=1000 is larger"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "k"], "expected FIELD=VALUE"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "colour=1"], "unknown field(s) colour"),
        (["generate", "--method", "nbls", "--prompt", "x", "--model", "./no/such/model"], "does not exist"),
        (["eval", "occupational", "--occupation", "wizard"], "unknown occupation 'wizard'"),
        (["eval", "occupational", "--occupations", "missing.txt"], "occupations file not found"),
        (["eval", "occupational", "--method", "nbls", "--k", "300"], "k=300 is larger than the 102 eligible occupations left after excluding 50 and 108 related"),
        (["eval", "occupational", "--probe", "vibes"], "--probe 'vibes' is invalid"),
        (["eval", "occupational", "--method", "none,nbls", "--json", "x.json"], "--json takes one method"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    r = run_cli(*args, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("debias-lm: error:") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_methods_and_env():
    r = run_cli("methods")
    assert r.returncode == 0 and "nbls" in r.stdout and "identity" in r.stdout
    r = run_cli("env")
    assert r.returncode == 0, r.stderr
    for key in ("torch", "transformers", "vllm", "bitsandbytes", "device", "embedded model"):
        assert key in r.stdout


def test_generate_debias_sampling_gender_swap(tiny_llama_dir, tmp_path):
    out = tmp_path / "g.json"
    r = run_cli("generate", "--model", str(tiny_llama_dir), "--method", "debias_sampling",
                "--set", "counterfactual_swap=gender", "--set", "alpha=2.0", "--prompt", "The nurse said that she",
                "--max-new-tokens", "6", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["config"]["counterfactual_swap"] == "gender" and res["config"]["alpha"] == 2.0
    bad = run_cli("generate", "--model", str(tiny_llama_dir), "--method", "debias_sampling",
                  "--prompt", "The nurse said that she", "--max-new-tokens", "4")
    assert bad.returncode == 2 and "counterfactual" in bad.stderr
