"""Adding a method is one package and one registration (issue 14): a toy method written here, as a package in a
temporary folder, is found by ``wrap``, by ``debias-lm generate`` and ``debias-lm methods``, and by the harness.

The toy method bans one token while decoding (a logits processor setting its score to -inf). The reference for
what it must produce is computed independently: greedy decoding is the argmax of the model's next-token logits,
so with the token banned the first new token is the argmax over the other tokens of a plain forward pass.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

TOY_PACKAGE = textwrap.dedent('''
    """A toy method: never emit one token (test of the extension points; not a debiasing method)."""

    from dataclasses import dataclass

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from debias_lm.config import MethodConfig
    from debias_lm.hf.base import HFMethod
    from debias_lm.registry import register_method


    @dataclass(frozen=True)
    class ToyConfig(MethodConfig):
        method = "toy"
        banned_token: int = 0

        def validate(self):
            super().validate()
            self._check_number("banned_token", lo=0, integer=True)


    class _Ban(LogitsProcessor):
        def __init__(self, token):
            self.token = token

        def __call__(self, input_ids, scores):
            scores[:, self.token] = -torch.inf
            return scores


    class ToyHF(HFMethod):
        def _generate(self, *args, **kwargs):
            procs = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
            procs.append(_Ban(self.config.banned_token))
            return self.model.generate(*args, logits_processor=procs, **kwargs)


    register_method(ToyConfig, ToyHF, kind="decoding", description="toy: never emit one token")
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy package on ``sys.path``, imported (which registers it); unregistered afterwards."""
    from debias_lm.registry import unregister_method

    pkg = tmp_path / "toy_debias_method"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(TOY_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_debias_method")
    yield module
    unregister_method("toy")
    sys.modules.pop("toy_debias_method", None)


def _plain_greedy_first_tokens(model, tok, prompt: str, k: int = 2) -> list[int]:
    """The k most likely next tokens after ``prompt`` by one plain forward pass (the reference)."""
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return torch.topk(logits, k).indices.tolist()


def test_toy_method_is_found_by_wrap(toy, tiny_llama):
    import debias_lm as dl

    model, tok = tiny_llama
    prompt = "The nurse said"
    top, second = _plain_greedy_first_tokens(model, tok, prompt)
    enc = tok(prompt, return_tensors="pt")
    n = enc.input_ids.shape[1]
    plain = dl.wrap(model, tok, "identity").generate(**enc, max_new_tokens=1, do_sample=False)
    banned = dl.wrap(model, tok, {"method": "toy", "banned_token": top}).generate(**enc, max_new_tokens=1,
                                                                                  do_sample=False)
    assert plain[0, n].item() == top
    assert banned[0, n].item() == second
    assert isinstance(dl.wrap(model, tok, "toy").config, toy.ToyConfig)


def test_toy_method_bad_value_is_a_user_input_error(toy):
    from debias_lm.errors import UserInputError
    from debias_lm.registry import resolve_config

    with pytest.raises(UserInputError, match="banned_token"):
        resolve_config("toy", sets=["banned_token=-1"])


def test_toy_method_is_listed_by_debias_lm_methods(toy, capsys):
    from debias_lm.cli.main import main

    assert main(["methods"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("toy "))
    assert "toy: never emit one token" in line and " no " in line  # no vLLM mapping registered


def test_toy_method_runs_through_debias_lm_generate(toy, tiny_llama, tiny_llama_dir, tmp_path, capsys):
    from debias_lm.cli.main import main

    model, tok = tiny_llama
    prompt = "A pilot"
    top, second = _plain_greedy_first_tokens(model, tok, prompt)
    out = tmp_path / "gen.json"
    code = main(["generate", "--method", "toy", "--model", str(tiny_llama_dir), "--no-chat", "--prompt", prompt,
                 "--max-new-tokens", "1", "--set", f"banned_token={top}", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["config"] == {"method": "toy", "banned_token": top}
    row = data["outputs"][0]
    assert row["plain"] == tok.decode([top], skip_special_tokens=True)
    assert row["debiased"] == tok.decode([second], skip_special_tokens=True)
    assert "--- toy:" in capsys.readouterr().out


def test_toy_method_runs_through_the_harness(toy, tiny_llama_dir, tmp_path, capsys):
    from pathlib import Path

    from debias_lm.cli.main import main

    prompts = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "rtp_prompts.jsonl"
    out = tmp_path / "run"
    code = main(["eval", "--suite", "toxicity", "--method", "none,toy", "--model", str(tiny_llama_dir),
                 "--limit", "1", "--n-samples", "1", "--max-new-tokens", "2", "--toxicity-scorer", "profanity-check",
                 "--dataset", f"toxicity=rtp:{prompts}", "--set", "toy.banned_token=0", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]
    assert {r["method"] for r in rows if "error" not in r} == {"none", "toy"}  # "-": the fixture's bad prompt
    assert "toy" in json.loads((out / "results.json").read_text())["results"]["toxicity"]
