"""The only module of the evaluation package that reaches generation engines.

* HF: :func:`hf_runner` wraps a model with :func:`debias_lm.wrap`; :class:`HFGenerator` samples through it.
* vLLM: :func:`vllm_engine` builds an offline ``vllm.LLM`` with the vllm_debias plugin's processor;
  :func:`vllm_generate` runs a method config through ``vllm_debias.generate``; :class:`VLLMGenerator` samples.

Suites, the benchmark helper and the runner call these, so which engine runs (and how a method config reaches
it) is decided in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .settings import EvalSettings, method_config


def hf_runner(model, tokenizer, config):
    """``debias_lm.wrap(model, tokenizer, config)``: the HF engine of one method."""
    from ..hf.wrap import wrap

    return wrap(model, tokenizer, config)


def vllm_model_path(model: str) -> str:
    """The local path vLLM loads for a model name (``default``: the embedded model)."""
    from vllm_debias.serve import resolve_model

    return resolve_model(model)


def vllm_engine(model_path: str, *, dtype: str, seed: int = 0, plugin: bool = True, **kw: Any):
    """An offline ``vllm.LLM`` in this process, with the vllm_debias logits processors, or with none of them
    (``plugin=False``: not even the installed entry points)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM
    from vllm_debias import LOGITS_PROCESSORS
    from vllm_debias.processors import without_installed

    if plugin:
        kw["logits_processors"] = list(LOGITS_PROCESSORS)
        return LLM(model=model_path, dtype=dtype, seed=seed, enforce_eager=True, **kw)
    with without_installed():
        return LLM(model=model_path, dtype=dtype, seed=seed, enforce_eager=True, **kw)


def vllm_generate(llm, prompts: Sequence[str], config, sampling_params, **kw: Any):
    """``vllm_debias.generate``: a method config applied to vLLM requests (twin rows, calibration offsets...)."""
    from vllm_debias import generate

    return generate(llm, list(prompts), config, sampling_params, **kw)


class HFGenerator:
    """Samples continuations with ``dl.wrap(model, tok, config)`` (one wrapper per method)."""

    backend = "hf"

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        self.model, self.tok, self.settings = model, tokenizer, settings
        self._runners: dict[str, Any] = {}

    def runner(self, method: str):
        if method not in self._runners:
            self._runners[method] = hf_runner(self.model, self.tok,
                                              method_config(method, self.settings.method_overrides.get(method)))
        return self._runners[method]

    def check(self, method: str, prompts: Sequence[str], chat: bool) -> None:
        self.runner(method).impl.check_prompts(list(prompts))

    def generate(self, method: str, prompts: Sequence[str], *, chat: bool, seed: int, max_new_tokens: int,
                 do_sample: bool = True) -> list[str]:
        import torch

        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                              "pad_token_id": self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id}
        if do_sample:
            kw.update(top_p=self.settings.top_p, temperature=self.settings.temperature, top_k=0)
        torch.manual_seed(seed)
        return self.runner(method).generate_text(list(prompts), chat=chat, **kw)


class VLLMGenerator:
    """Samples continuations with an offline ``vllm.LLM`` and the vllm_debias plugin."""

    backend = "vllm"

    def __init__(self, model_path: str, settings: EvalSettings) -> None:
        self.settings = settings
        dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[settings.dtype]
        self.llm = vllm_engine(model_path, dtype=dtype, seed=settings.seed)

    def check(self, method: str, prompts: Sequence[str], chat: bool) -> None:
        return None

    def generate(self, method: str, prompts: Sequence[str], *, chat: bool, seed: int, max_new_tokens: int,
                 do_sample: bool = True) -> list[str]:
        from vllm import SamplingParams

        sps = [SamplingParams(max_tokens=max_new_tokens, temperature=self.settings.temperature if do_sample else 0.0,
                              top_p=self.settings.top_p if do_sample else 1.0, seed=seed + i)
               for i in range(len(prompts))]
        cfg = method_config(method, self.settings.method_overrides.get(method))
        outs = vllm_generate(self.llm, prompts, cfg, sps, chat=chat)
        return [o.outputs[0].text for o in outs]


def make_generator(settings: EvalSettings, model, tokenizer):
    """The generator of ``settings.backend`` (vLLM loads its own engine from ``settings.model``)."""
    if settings.backend == "vllm":
        return VLLMGenerator(vllm_model_path(settings.model), settings)
    return HFGenerator(model, tokenizer, settings)
