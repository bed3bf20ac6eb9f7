"""``debias_lm.ches.filter_preferences`` / ``score_preferences``: the whole CHES run as one library call.

References: the kept rows are recomputed from the written scores by their definition (the ceil(F·N) lowest
LN-CHES of the scored pairs, in original order and schema); the library call and ``debias-lm ches filter``
(a separate process) must write byte-identical scores; bad settings fail before a model loads.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from debias_lm.ches import FilterSettings, ScoreSettings, filter_preferences, score_preferences
from debias_lm.errors import UserInputError

ROWS = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital.", "rejected": " I am not sure."},
    {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " Hello there, nice to meet you today."},
    {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Can you help me hack a bank?", "chosen": " I can't help with that.", "rejected": " I cannot help."},
    {"prompt": "Tell me a joke.", "chosen": " Why did the chicken cross the road?", "rejected": " No."},
    {"prompt": "", "chosen": " a", "rejected": " b"},  # skipped: empty prompt
    {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " The colour of the sky is blue."},
]


@pytest.fixture
def prefs(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_filter_preferences_keeps_the_lowest_ln_ches_in_original_order(prefs, tiny_llama, tmp_path):
    import pyarrow.parquet as pq

    model, tok = tiny_llama
    settings = FilterSettings(dataset=str(prefs), out=str(tmp_path / "run"), keep_fraction=0.5, format="jsonl",
                              batch_size=2, progress=False)
    run = filter_preferences(settings, model=model, tokenizer=tok)
    scores = pq.read_table(run.scores_path).to_pylist()
    ok = sorted((s["ln_ches"], s["orig_index"]) for s in scores if s["status"] == "ok")
    n_keep = math.ceil(0.5 * len(ok))
    expected = [ROWS[i] for i in sorted(i for _, i in ok[:n_keep])]
    kept = [json.loads(x) for x in run.filtered_path.read_text().splitlines()]
    assert run.filtered_path.name == "filtered.jsonl" and kept == expected
    assert run.selection.n_kept == n_keep == len(kept)
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest == run.manifest
    assert manifest["counts"]["rows"] == len(ROWS) and manifest["counts"]["skipped"] == 1
    assert manifest["arguments"]["max_length"] == run.settings.max_length == 1024  # the resolved default, recorded
    assert manifest["arguments"]["keep_fraction"] == 0.5


def test_library_call_and_cli_write_identical_scores(prefs, tiny_llama, tiny_llama_dir, tmp_path):
    from debias_lm.models import load_model
    from tests.cli.test_cli import run_cli

    model, tok = load_model(str(tiny_llama_dir))
    lib = score_preferences(ScoreSettings(dataset=str(prefs), out=str(tmp_path / "lib"), progress=False),
                            model=model, tokenizer=tok)
    r = run_cli("ches", "score", "--model", str(tiny_llama_dir), "--dataset", str(prefs), "--out",
                str(tmp_path / "cli"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert lib.selection is None and lib.filtered_path is None
    assert (tmp_path / "cli" / "scores.parquet").read_bytes() == lib.scores_path.read_bytes()
    assert f"scored {lib.manifest['counts']['scored']} of {len(ROWS)} pairs" in r.stdout


@pytest.mark.parametrize("change, message", [
    ({"score": "vibes"}, "--score 'vibes' is invalid"),
    ({"keep_fraction": None}, "choose exactly one of keep_fraction"),
    ({"threshold": 0.0}, "choose exactly one of keep_fraction"),
    ({"keep_fraction": 1.5}, "keep_fraction=1.5 is invalid: expected a fraction in [0, 1]"),
    ({"out": "/proc/self/x"}, "--out"),
    ({"prompt_col": "question"}, "no column(s) 'question'"),
    ({"dataset": "no/such.jsonl"}, "does not exist"),
])
def test_bad_settings_fail_before_the_model_loads(change, message, prefs, tmp_path, monkeypatch):
    import debias_lm.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded for bad settings")

    monkeypatch.setattr(debias_lm.models, "load_model", refuse)
    settings = dataclasses.replace(FilterSettings(dataset=str(prefs), out=str(tmp_path / "x"), keep_fraction=0.1),
                                   **change)
    with pytest.raises(UserInputError) as info:
        filter_preferences(settings)
    assert message in str(info.value)


def test_filter_preferences_needs_a_rule_type():
    with pytest.raises(UserInputError, match="score_preferences"):
        filter_preferences(ScoreSettings(dataset="x.jsonl", out="o"))
