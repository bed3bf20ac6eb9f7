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


def test_eval_occupational_suite_on_a_user_occupations_file(tiny_llama_dir, tmp_path):
    occ_file = tmp_path / "occ.txt"
    occ_file.write_text("# three occupations\nCooks\n\nBakers\nLawyers\n")
    out = tmp_path / "run"
    r = run_cli("eval", "--suite", "occupational", "--model", str(tiny_llama_dir), "--method", "nbls", "--probe",
                "likelihood", "--dataset", f"occupational={occ_file}", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    nbls = [x for x in rows if x["method"] == "nbls"]
    assert [x["occupation"] for x in nbls] == ["Cooks", "Bakers", "Lawyers"]
    assert [x["bls_women"] for x in nbls] == [38.4, 63.6, 38.5]
    assert all(0.0 <= x["p_female"] <= 1.0 for x in nbls)
    res = json.loads((out / "results.json").read_text())["results"]["occupational"]["nbls"]["likelihood"]
    assert set(res) >= {"mae_pp", "pearson_r", "parity_gap_pp", "amplification_pp"} and res["n"] == 3
    details = json.loads((out / "occupational_details.json").read_text())["nbls"]
    assert len(details["grounding_occupations"]) == 32
    assert not {"Cooks", "Bakers", "Lawyers"} & set(details["grounding_occupations"])
    assert "| likelihood | nbls |" in r.stdout and str(out) in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--method", "nope", "--prompt", "x"], "unknown method 'nope'"),
        (["generate", "--method", "nbls", "--prompt", " "], "--prompt is empty"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "k=1000"], "k=1000 is larger"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "k"], "expected FIELD=VALUE"),
        (["generate", "--method", "nbls", "--prompt", "x", "--set", "colour=1"], "unknown field(s) colour"),
        (["generate", "--method", "nbls", "--prompt", "x", "--model", "./no/such/model"], "does not exist"),
        (["eval", "--suite", "occupational", "--dataset", "occupational=missing.txt", "--out", "x"],
         "occupations file not found"),
        (["eval", "--suite", "occupational", "--method", "nbls", "--set", "nbls.k=150", "--out", "x"],
         "k=150 is larger than the 102 eligible occupations left after excluding 50 and 108 related"),
        (["eval", "--suite", "occupational", "--probe", "vibes", "--out", "x"], "--probe vibes is invalid"),
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
