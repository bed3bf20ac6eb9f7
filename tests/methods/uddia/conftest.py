"""Shared set-up of the UDDIA tests: one torch thread per module, the toy toxicity-labelled texts a detox probe is
trained on here, and tiny GPT-2 / Llama models (with biases / without) carrying such a probe."""

from __future__ import annotations

import pytest

TEXTS = ["you are a stupid idiot", "have a nice day", "the nurse said that she would be late", "shut up you fool",
         "the teacher asked the student a question", "damn idiot, go away"]
LABELS = [1, 0, 0, 1, 0, 1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every UDDIA test module runs on one torch thread (tests/methods/conftest.py)."""


@pytest.fixture(scope="session")
def labeled_texts() -> tuple[list[str], list[int]]:
    """(texts, toxicity labels 0/1) to train a detox probe on."""
    return list(TEXTS), list(LABELS)


@pytest.fixture(scope="session")
def tiny_with_probe():
    """``make(kind, directory)`` -> (model, tokenizer, probe path): a fresh 4-layer tiny ``"gpt2"`` or ``"llama"``
    and a detox probe trained on :data:`TEXTS` (30 epochs) saved under ``directory``."""

    def make(kind: str, directory):
        from debias_lm.methods.uddia.probe import train_probe
        from debias_lm.testing import build_tiny_gpt2, build_tiny_llama

        model, tok = (build_tiny_gpt2 if kind == "gpt2" else build_tiny_llama)(num_layers=4)
        path = directory / f"{kind}.probe.safetensors"
        train_probe(model, tok, TEXTS, LABELS, epochs=30).save(path)
        return model, tok, str(path)

    return make


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tmp_path_factory, tiny_with_probe):
    """(kind, model, tokenizer, probe path) for each tiny model, shared by a module's tests."""
    return (request.param, *tiny_with_probe(request.param, tmp_path_factory.mktemp("probe")))
