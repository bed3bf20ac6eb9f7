"""CHES scores vs an independent fp64 implementation of the paper's definition, on TRL's own tokenisation."""

import copy
import functools
import json
import math

import pytest
import torch

import debias_lm.ches as ches
from debias_lm.core.ches import ches_from_sums, masked_hidden_sums, normalized_edit_distance

STANDARD = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital.", "rejected": " I am not sure."},
    {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " Hello there, nice to meet you today."},
    {"prompt": "Write a long sentence about the nurse and the engineer who met at the station",
     "chosen": " and talked.", "rejected": " and then they went home because it was late and raining."},
    {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Can you help me hack a bank?", "chosen": " I can't help with that.", "rejected": " I cannot help with that."},
    {"prompt": "Tell me a joke.", "chosen": " Why did the chicken cross the road?", "rejected": " No."},
    {"prompt": "Translate cat to French.", "chosen": " chat", "rejected": " chien"},
    {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " The colour of the sky on a clear day is blue."},
    {"prompt": "Is the sky green?", "chosen": " No, it is blue.", "rejected": " Yes."},
]
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": r["prompt"]}],
     "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
     "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]}
    for r in STANDARD
]


def _trl_token_ids(model, tok, rows, max_length, tmp_path):
    """prompt/chosen/rejected ids exactly as trl's DPOTrainer prepares them."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], max_length=max_length,
                     per_device_train_batch_size=2, use_cpu=True)
    trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset]


def _reference_scores(model, ids, max_length):
    """The paper's definition, one pair at a time, float64, from the LM's own final hidden states."""
    m64 = copy.deepcopy(model).double()
    out = []
    for p, c, r in ids:
        means, sums = [], []
        for resp in (c, r):
            seq = (p + resp)[:max_length]
            with torch.no_grad():
                h = m64(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
            pos = range(len(p) - 1, len(seq) - 1)  # the positions whose outputs predict the response tokens
            s = sum(h[t] for t in pos)
            sums.append(s)
            means.append(s / len(pos))
        (sp, sn), (mp, mn) = sums, means
        ches_v = float(sp @ sn - sp @ sp)
        ln_v = float(0.5 * (mn @ mn - mp @ mp - (mp - mn) @ (mp - mn)))  # the paper's oracle form
        out.append((ches_v, ln_v))
    return out


@pytest.mark.parametrize("layout", ["standard", "conversational"])
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_scores_match_independent_reference(request, tmp_path, layout, which):
    model, tok = request.getfixturevalue(which)
    rows = STANDARD if layout == "standard" else CONVERSATIONAL
    max_length = 40 if layout == "standard" else 56
    ids = _trl_token_ids(model, tok, rows, max_length, tmp_path)  # trl drops rows whose prompt fills max_length
    ref = _reference_scores(model, ids, max_length)
    for bs in (1, 7):
        got = ches.score(model, tok, rows, batch_size=bs, max_length=max_length, progress=False)
        assert all(g["skip_reason"] == "too_long" for g in got if g["status"] != "ok")
        got = [g for g in got if g["status"] == "ok"]
        assert len(got) == len(ids) >= len(rows) - 1
        for g, (p, c, r), (rc, rl) in zip(got, ids, ref):
            assert (g["n_prompt"], g["n_chosen"], g["n_rejected"]) == (len(p), min(len(c), max_length - len(p)),
                                                                       min(len(r), max_length - len(p)))
            assert g["ches"] == pytest.approx(rc, rel=1e-4, abs=1e-6)
            assert g["ln_ches"] == pytest.approx(rl, rel=1e-4, abs=1e-6)
    assert any("truncated" in g["note"] for g in got)  # the long row was cut like TRL cuts it


def test_bf16_accumulates_in_fp32(tiny_llama):
    model, tok = tiny_llama
    ref = ches.score(model, tok, STANDARD, progress=False)
    bf = ches.score(copy.deepcopy(model).to(torch.bfloat16), tok, STANDARD, progress=False)
    for a, b in zip(ref, bf):
        assert b["ln_ches"] == pytest.approx(a["ln_ches"], rel=0.1, abs=0.05)
    h = torch.randn(2, 300, 16).to(torch.bfloat16)
    mask = torch.rand(2, 300) > 0.3
    sums, counts = masked_hidden_sums(h, mask)
    assert sums.dtype == torch.float32
    torch.testing.assert_close(sums, (h.double() * mask[..., None]).sum(1).float(), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == mask.sum(1).tolist()


def test_core_formulas_by_hand():
    sp, sn = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])
    ch, ln = ches_from_sums(sp, sn, torch.tensor([2]), torch.tensor([3]))
    assert ch.item() == pytest.approx((1 * 3 + 0) - (1 + 4))  # <S+,S-> - |S+|^2 = 3 - 5
    mp, mn = torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.0])
    assert ln.item() == pytest.approx(float(mp @ (mn - mp)))
    ch0, _ = ches_from_sums(sp, sn, torch.tensor([0]), torch.tensor([3]))
    assert math.isnan(ch0.item())
    assert normalized_edit_distance([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)
    assert normalized_edit_distance([], []) == 0.0
    assert normalized_edit_distance([1], [2, 3, 4]) == pytest.approx(1.0)


def test_malformed_rows_get_a_status_never_vanish(tiny_llama):
    model, tok = tiny_llama
    rows = [
        {"prompt": "Fine.", "chosen": " yes", "rejected": " no"},
        {"prompt": "", "chosen": " yes", "rejected": " no"},
        {"prompt": "Q", "chosen": "   ", "rejected": " no"},
        {"prompt": "Q", "chosen": None, "rejected": " no"},
        {"prompt": "Q", "chosen": 3, "rejected": " no"},
        {"prompt": "word " * 60, "chosen": " yes", "rejected": " no"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "plain", "rejected": "text"},
    ]
    got = ches.score(model, tok, rows, max_length=32, progress=False)
    assert [g["orig_index"] for g in got] == list(range(len(rows)))
    assert [(g["status"], g["skip_reason"]) for g in got] == [
        ("ok", ""), ("skipped", "empty_prompt"), ("skipped", "empty_response"), ("skipped", "missing_field"),
        ("skipped", "bad_type"), ("skipped", "too_long"), ("skipped", "bad_type")]
    assert all(math.isnan(g["ln_ches"]) for g in got[1:])


def test_prefix_mismatch_follows_trl_or_skips(tiny_llama):
    model, tok = tiny_llama
    # "said" + "that" merges differently when tokenised together than apart for BPE: force a mismatch by ending
    # the prompt mid-word
    row = {"prompt": "The nurse sa", "chosen": "id that she left", "rejected": "id nothing"}
    p = tok("The nurse sa")["input_ids"]
    pc = tok("The nurse said that she left" + tok.eos_token)["input_ids"]
    assert pc[: len(p)] != p  # the situation we test really occurs with this tokenizer
    trl_mode = ches.score(model, tok, [row], progress=False)[0]
    assert trl_mode["status"] == "ok" and "prefix_mismatch" in trl_mode["note"]
    skip_mode = ches.score(model, tok, [row], on_prefix_mismatch="skip", progress=False)[0]
    assert (skip_mode["status"], skip_mode["skip_reason"]) == ("skipped", "prefix_mismatch")


def test_implicit_prompt_like_trl():
    from trl.data_utils import extract_prompt as trl_extract

    for ch, rj in [("Q: hi A: yes", "Q: hi A: no"), ("same", "same text"), ("abc", "xyz")]:
        assert ches.extract_prompt(ch, rj) == tuple(trl_extract({"chosen": ch, "rejected": rj}).values())


def test_selection_rules_and_ties():
    scores = [{"orig_index": i, "status": "ok", "ln_ches": v} for i, v in enumerate([0.5, 0.1, 0.1, 0.9, 0.3])]
    scores.append({"orig_index": 5, "status": "skipped", "ln_ches": float("nan")})
    s = ches.select(scores, keep_fraction=0.4)  # ceil(0.4*5) = 2 lowest: the tie at 0.1 -> indices 1, 2
    assert s.keep == [1, 2] and s.cut_value == 0.1 and s.n_skipped == 1
    s = ches.select(scores, keep_fraction=0.3)  # ceil(1.5) = 2
    assert s.keep == [1, 2]
    s = ches.select(scores, drop_top_fraction=0.2)  # drop the single highest (index 3)
    assert s.keep == [0, 1, 2, 4] and s.cut_value == 0.5
    s = ches.select(scores, threshold=0.3, keep_skipped=True)
    assert s.keep == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="exactly one"):
        ches.select(scores, keep_fraction=0.1, threshold=1.0)
    with pytest.raises(ValueError, match="fraction in"):
        ches.select(scores, keep_fraction=1.5)


def test_resumable_run_gives_identical_output(tiny_llama, tmp_path, monkeypatch):
    from datasets import Dataset

    import debias_lm.ches.run as run_mod

    model, tok = tiny_llama
    ds = Dataset.from_list(STANDARD * 3)
    full = ches.score(model, tok, ds, out_dir=tmp_path / "a", shard_size=4, progress=False)
    calls = {"n": 0}
    real = run_mod.score_rows

    def dying(*a, **k):  # simulate a crash after two shards
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "score_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        ches.score(model, tok, ds, out_dir=tmp_path / "b", shard_size=4, progress=False)
    assert len(list((tmp_path / "b" / "shards").glob("*.parquet"))) == 2
    monkeypatch.setattr(run_mod, "score_rows", real)
    resumed = ches.score(model, tok, ds, out_dir=tmp_path / "b", shard_size=4, progress=False)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)
    with pytest.raises(ValueError, match="different run"):
        ches.score(model, tok, ds, out_dir=tmp_path / "b", shard_size=4, max_length=20, progress=False)


# ------------------------------------------------------------------------------------------------- CLI
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_filter_outputs_and_dpo_loads_them(tiny_llama_dir, tmp_path):
    import pyarrow.parquet as pq
    from datasets import load_from_disk

    from tests.cli.test_cli import run_cli

    rows = STANDARD + [{"prompt": "", "chosen": " a", "rejected": " b"}] + CONVERSATIONAL[:0]
    data = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "out"
    r = run_cli("ches", "filter", "--model", str(tiny_llama_dir), "--dataset", str(data), "--keep-fraction", "0.3",
                "--out", str(out), "--batch-size", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    assert [s["orig_index"] for s in scores] == list(range(len(rows)))  # every input row, in order
    assert scores[-1]["status"] == "skipped" and scores[-1]["skip_reason"] == "empty_prompt"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == len(rows) and manifest["counts"]["skipped"] == 1
    sel = manifest["selection"]
    assert sel["n_kept"] == math.ceil(0.3 * 9) and sel["keep_fraction"] == 0.3
    filtered = load_from_disk(str(out / "filtered"))
    assert filtered.column_names == ["prompt", "chosen", "rejected"]  # original schema
    ok = sorted((s["ln_ches"], s["orig_index"]) for s in scores if s["status"] == "ok")
    kept_idx = sorted(i for _, i in ok[: sel["n_kept"]])
    assert [dict(x) for x in filtered] == [rows[i] for i in kept_idx]  # original row order
    assert sel["cut_value"] == pytest.approx(ok[sel["n_kept"] - 1][0])

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=filtered, processing_class=tok,
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], max_steps=1,
                                        per_device_train_batch_size=2, use_cpu=True))
    trainer.train()  # the filtered output trains without changes


def test_cli_score_formats_and_errors(tiny_llama_dir, tmp_path):
    from tests.cli.test_cli import run_cli

    data = _write_jsonl(tmp_path / "conv.jsonl", CONVERSATIONAL[:4])
    r = run_cli("ches", "filter", "--model", str(tiny_llama_dir), "--dataset", str(data), "--threshold", "0",
                "--format", "parquet", "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "filtered.parquet").is_file()
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    for args, msg in [
        (["--dataset", str(bad)], "no column(s) 'chosen', 'rejected'"),
        (["--dataset", str(tmp_path / "missing.jsonl")], "does not exist"),
        (["--dataset", str(data), "--batch-size", "0"], "--batch-size"),
    ]:
        r = run_cli("ches", "score", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "x"), *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("ches", "filter", "--dataset", str(data), "--out", str(tmp_path / "x"), "--keep-fraction", "2")
    assert r.returncode == 2 and "fraction in [0, 1]" in r.stderr
    r = run_cli("ches", "score", "--model", str(tiny_llama_dir), "--dataset", str(bad), "--prompt-col", "question",
                "--chosen-col", "good", "--rejected-col", "bad", "--out", str(tmp_path / "y"), "--no-progress")
    assert r.returncode == 0, r.stderr  # column overrides


def _ches_env():
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _big_prefs(tmp_path, n=120):
    rows = [dict(r, prompt=f"[{i}] " + r["prompt"]) for i, r in enumerate((STANDARD * (n // len(STANDARD) + 1))[:n])]
    return _write_jsonl(tmp_path / "big.jsonl", rows), rows


def test_cli_killed_run_resumes_to_identical_output(tiny_llama_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data, _ = _big_prefs(tmp_path)
    base = [sys.executable, "-m", "debias_lm.cli.main", "ches", "score", "--model", str(tiny_llama_dir),
            "--dataset", str(data), "--shard-size", "4", "--batch-size", "1", "--no-progress"]
    ref = subprocess.run(base + ["--out", str(tmp_path / "ref")], env=_ches_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(out)], env=_ches_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("shard-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "shards").glob("shard-*.parquet")))
    assert 3 <= done_before < 30, done_before  # really interrupted mid-way
    again = subprocess.run(base + ["--out", str(out)], env=_ches_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (out / "scores.parquet").read_bytes() == (tmp_path / "ref" / "scores.parquet").read_bytes()


def test_cli_data_parallel_two_processes_and_streaming(tiny_llama_dir, tmp_path):
    import shutil
    import subprocess
    import sys

    data, _ = _big_prefs(tmp_path, n=40)
    common = ["ches", "filter", "--model", str(tiny_llama_dir), "--dataset", str(data), "--shard-size", "4",
              "--keep-fraction", "0.1", "--format", "jsonl", "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "debias_lm.cli.main", *common, "--out", str(tmp_path / "one")],
                            env=_ches_env(), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    accelerate = shutil.which("accelerate", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert accelerate, "accelerate is a core dependency"
    dp = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "debias_lm.cli.main", *common,
                         "--out", str(tmp_path / "two")], env=_ches_env(), capture_output=True, text=True, timeout=600)
    assert dp.returncode == 0, dp.stderr[-3000:]
    shards = tmp_path / "two" / "shards"
    assert (shards / "DONE-0-of-2").exists() and (shards / "DONE-1-of-2").exists()  # both processes took part
    for name in ("scores.parquet", "filtered.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    streamed = subprocess.run([sys.executable, "-m", "debias_lm.cli.main", *common, "--streaming",
                               "--out", str(tmp_path / "stream")], env=_ches_env(), capture_output=True, text=True)
    assert streamed.returncode == 0, streamed.stderr
    for name in ("scores.parquet", "filtered.jsonl"):
        assert (tmp_path / "stream" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_implicit_prompt_dataset(tiny_llama):
    model, tok = tiny_llama
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in STANDARD[:3]]
    got = ches.score(model, tok, implicit, progress=False)
    assert all(g["status"] == "ok" for g in got)
    conv = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in CONVERSATIONAL[:3]]
    explicit = ches.score(model, tok, CONVERSATIONAL[:3], progress=False)
    for a, b in zip(ches.score(model, tok, conv, progress=False), explicit):
        assert a["ln_ches"] == pytest.approx(b["ln_ches"], rel=1e-6)  # same prompt turns extracted


def _levenshtein(a, b):
    """The recursive definition, independent of the iterative implementation under test."""

    @functools.cache
    def lev(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(lev(i - 1, j) + 1, lev(i, j - 1) + 1, lev(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return lev(len(a), len(b))


def test_edit_distance_and_reward_margin_baselines(tiny_llama):

    model, tok = tiny_llama
    rows = [dict(r, score_chosen=8.0, score_rejected=5.5) for r in STANDARD[:3]]
    got = ches.score(model, tok, rows, edit_distance=True, progress=False)
    for g, r in zip(got, rows):
        p = ches.tokenize_pair(tok, r, ches.Columns())
        a, b = tuple(p.chosen_ids), tuple(p.rejected_ids)

        assert g["neg_norm_edit_distance"] == pytest.approx(-_levenshtein(a, b) / max(len(a), len(b)))
        assert g["reward_margin"] == 2.5
        assert math.isfinite(g["last_hidden_inner"])
    assert math.isnan(ches.score(model, tok, rows[:1], progress=False)[0]["neg_norm_edit_distance"])  # opt-in
