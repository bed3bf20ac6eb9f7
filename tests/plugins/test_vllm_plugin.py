"""vllm_debias in a real vLLM engine (vllm-cpu, in-process): inert for plain requests, and greedy output equal
to the HF implementation for calibration, text-counterfactual debias sampling (twin rows) and NBLS.

One engine with the processors serves the whole module, loaded the way an installed debias-lm loads them: vLLM's
entry-point loader (``_load_logitsprocs_plugins``) returns the classes of ``LOGITS_PROCESSORS`` and nothing is
passed explicitly (``vllm_debias.generate`` must find them there). The baseline engine runs first with no
processor at all (``without_installed``: a real "without", even where debias-lm is installed) and is shut down
before the main one starts.
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
from vllm_debias import LOGITS_PROCESSORS, request_args  # noqa: E402
from vllm_debias.processors import without_installed  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.core.contrast import calibration_offsets  # noqa: E402
from debias_lm.labels import label_token_ids  # noqa: E402
from debias_lm.methods.debias_sampling.counterfactual import counterfactual_texts  # noqa: E402
from debias_lm.methods.debias_sampling.processor import DebiasSamplingLogitsProcessor  # noqa: E402

pytestmark = pytest.mark.vllm

N = 8
PLAIN = ["The nurse said that", "A pilot", "The doctor told me that", "He and she went to the"]
ENGINE_KW = dict(dtype="float32", max_model_len=2048, enforce_eager=True, seed=0, max_logprobs=128)


def _greedy(n=N, **kw):
    return SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, **kw)


def _seeded():
    return SamplingParams(max_tokens=N, temperature=0.9, top_p=0.95, seed=7)


def _ids(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def _status(outs):
    return [o.debias_status.status for o in outs]


@pytest.fixture(scope="module")
def baseline(tiny_llama_dir):
    """Plain prompts through an engine WITHOUT the processors (greedy and a seeded sampled request)."""
    with without_installed():
        llm = LLM(model=str(tiny_llama_dir), **ENGINE_KW)
        assert not _our_processors(llm)
    out = {"greedy": _ids(llm.generate(PLAIN, _greedy(), use_tqdm=False)),
           "seeded": _ids(llm.generate(PLAIN[:1], _seeded(), use_tqdm=False))}
    vllm_debias.shutdown(llm)
    del llm
    gc.collect()
    return out


def _our_processors(llm):
    """The vllm_debias processors the engine's V1 input batch really holds (in-process engine core)."""
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    return [type(p) for p in runner.input_batch.logitsprocs.all if type(p).__module__.startswith("vllm_debias.")]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir, baseline):
    import importlib

    from vllm.v1.sample import logits_processor as lp

    classes = [getattr(importlib.import_module(m), c) for m, c in (f.split(":") for f in LOGITS_PROCESSORS)]
    mp = pytest.MonkeyPatch()
    mp.setattr(lp, "_load_logitsprocs_plugins", lambda: list(classes))  # = an installed debias-lm's entry points
    lp.cached_load_custom_logitsprocs.cache_clear()
    engine = LLM(model=str(tiny_llama_dir), **ENGINE_KW)
    assert _our_processors(engine) == classes
    yield engine
    vllm_debias.shutdown(engine)
    mp.undo()
    lp.cached_load_custom_logitsprocs.cache_clear()


def _hf_greedy(model, tok, prompts, n=N, processors=None):
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         logits_processor=processors or [])
    return out[:, enc["input_ids"].shape[1]:].tolist()


class _FirstStepOffsets:
    """Independent HF reference for in-generation calibration: label offsets at the first step only."""

    def __init__(self, groups, prior, eps):
        self.groups, self.eps, self.start = groups, eps, None
        self.off = calibration_offsets(torch.tensor(prior, dtype=torch.float64), eps)

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        if input_ids.shape[1] == self.start:
            scores = scores.clone()
            for j, g in enumerate(self.groups):
                scores[:, g] += float(self.off[j])
        return scores


# -- inert -----------------------------------------------------------------------------------------------------
def test_plain_requests_identical_with_processor_in_mixed_batch(llm, baseline, tiny_llama):
    _, tok = tiny_llama
    cal = dl.CalibrationConfig(labels=("he", "she"), prior="given", prior_probs=(0.999, 0.001))
    ds = dl.DebiasSamplingConfig(alpha=2.0, beta=0.01, counterfactual_prefix="He is a man. ")
    prompts, params = [], []
    for i, p in enumerate(PLAIN):  # plain requests interleaved with opted-in ones in one generate call
        prompts += [p, p, p, "Men are better. " + p]
        params += [_greedy(),
                   _greedy(extra_args=request_args(cal, tok)),
                   _greedy(extra_args=request_args(ds, pair=f"x{i}", role="main")),
                   _greedy(extra_args=request_args(ds, pair=f"x{i}", role="aux"))]
    prompts.append(PLAIN[0])
    params.append(_seeded())
    outs = _ids(llm.generate(prompts, params, use_tqdm=False))
    assert [outs[4 * i] for i in range(len(PLAIN))] == baseline["greedy"]
    assert [outs[-1]] == baseline["seeded"]
    # and the opted-in rows really were changed (so the batch was genuinely mixed)
    assert any(outs[4 * i + 1] != baseline["greedy"][i] for i in range(len(PLAIN)))
    assert any(outs[4 * i + 2] != baseline["greedy"][i] for i in range(len(PLAIN)))
    assert all(outs[4 * i + 2] == outs[4 * i + 3] for i in range(len(PLAIN)))


# -- calibration ---------------------------------------------------------------------------------------------
def test_calibration_given_prior_matches_hf(llm, tiny_llama):
    model, tok = tiny_llama
    prompts = PLAIN[:3]
    cfg = dl.CalibrationConfig(labels=("he", "she"), prior="given", prior_probs=(0.999, 0.001))
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy())
    got = _ids(outs)
    assert _status(outs) == ["applied"] * 3
    groups = label_token_ids(tok, cfg.labels)
    ref = _hf_greedy(model, tok, prompts, processors=[_FirstStepOffsets(groups, cfg.prior_probs, cfg.eps)])
    assert got == ref
    hf = dl.wrap(model, tok, cfg).generate(prompts=prompts, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert got == hf[:, enc["input_ids"].shape[1]:].tolist()  # the library's own HF path
    plain = _hf_greedy(model, tok, prompts)
    assert any(g[0] != p[0] for g, p in zip(got, plain))
    assert all(g[1:] != [] for g in got)


def test_label_priors_and_per_prompt_prior_match_hf(llm, tiny_llama):
    model, tok = tiny_llama
    labels = ("he", "she")
    groups = label_token_ids(tok, labels)
    cf = ["N/A", "The person said that", "Someone told me that"]
    got = vllm_debias.label_priors(llm, cf, labels)
    for text, row in zip(cf, got):
        with torch.no_grad():
            lp = torch.log_softmax(model(**tok([text], return_tensors="pt")).logits[0, -1].double(), -1)
        p = torch.stack([lp[g].exp().sum() for g in groups])
        assert row == pytest.approx((p / p.sum()).tolist(), abs=2e-4)
    # prior="image_free" with one content-free prompt per prompt == "given" with those priors, per prompt
    prompts = PLAIN[:3]
    cfg = dl.CalibrationConfig(labels=labels, prior="image_free")
    got_if = _ids(vllm_debias.generate(llm, prompts, cfg, _greedy(), prior_prompts=cf))
    ref = [_hf_greedy(model, tok, [p], processors=[_FirstStepOffsets(groups, pr, cfg.eps)])[0]
           for p, pr in zip(prompts, got)]
    assert got_if == ref
    picks, q = vllm_debias.calibrate_labels(llm, prompts, cfg, prior_prompts=cf)
    assert len(picks) == 3 and all(abs(sum(r) - 1) < 1e-9 for r in q)


# -- debias sampling (twin rows) -------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, counterfactual_prefix="He is a man. "),
    dl.DebiasSamplingConfig(alpha=2.0, beta=0.02, counterfactual_swap="gender"),
])
def test_twin_rows_match_hf_text_counterfactual(llm, tiny_llama, cfg):
    model, tok = tiny_llama
    prompts = ["The nurse said that she", "He and his friend went to the", "The engineer said that he was"]
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy())
    assert _status(outs) == ["applied"] * 3 and vllm_debias.statuses(outs)[0].debiased
    got = _ids(outs)
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(cfg, prompts), alpha=cfg.alpha,
                                                    beta=cfg.beta)
    assert got == _hf_greedy(model, tok, prompts, processors=[proc])
    assert got != _hf_greedy(model, tok, prompts)


def test_drifted_pairs_are_detected_and_fall_back(llm, tiny_llama, monkeypatch):
    model, tok = tiny_llama
    from vllm_debias import offline

    cfg = dl.DebiasSamplingConfig(alpha=2.0, beta=0.02, counterfactual_prefix="She is a woman. ")
    prompts = ["The nurse said that", "A pilot"]
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(cfg, prompts), alpha=cfg.alpha,
                                                    beta=cfg.beta)
    want = _hf_greedy(model, tok, prompts, processors=[proc])
    real = offline._run_wave
    calls = []

    def main_only(llm_, wave, cfg_, results, status, label, use_tqdm):
        """Submit the main rows without their counterfactual rows: a real drift inside the engine."""
        calls.append([p.index for p in wave])
        outs = llm_.generate([p.main for p in wave],
                             [offline._with_args(p.params, request_args(cfg_, pair=f"lonely{p.index}", role="main"))
                              for p in wave], use_tqdm=False)
        for p, o in zip(wave, outs):
            results[p.index] = o
        return list(wave)

    monkeypatch.setattr(offline, "_run_wave", main_only)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="none")
    assert _ids(outs) == _hf_greedy(model, tok, prompts)  # a lonely main row is left unmodified (plain greedy)
    assert _status(outs) == ["not_applied"] * 2 and "drifted apart" in outs[0].debias_status.reason
    with pytest.raises(vllm_debias.PairCheckError):
        vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="raise")
    # first pass drifts, the re-run wave is real -> equal to HF, labelled recomputed
    calls.clear()

    def drift_once(*a):
        return main_only(*a) if not calls else real(*a)

    monkeypatch.setattr(offline, "_run_wave", drift_once)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="rerun")
    assert _ids(outs) == want and _status(outs) == ["recomputed"] * 2
    assert calls == [[0, 1]]  # both drifted pairs were re-run together, in one wave
    # drifting every time -> the exact lockstep driver (128 candidates cover the plausible set here)
    monkeypatch.setattr(offline, "_run_wave", main_only)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="lockstep", lockstep_k=128)
    assert _ids(outs) == want and _status(outs) == ["lockstep"] * 2
    assert outs[0].outputs[0].text == tok.decode(want[0], skip_special_tokens=True)
    monkeypatch.setattr(offline, "_run_wave", main_only)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="rerun")
    assert _status(outs) == ["not_applied"] * 2


def test_mismatched_pair_breaks_inside_the_engine_and_is_not_labelled_debiased(llm, tiny_llama, monkeypatch):
    """A real break in the engine: the counterfactual row stops 3 tokens before the main row, which then
    samples alone. Its tokens must not pass the equality check (they are made to differ), so the pair is
    re-run; left as is (fallback="none") it is reported not_applied."""
    model, tok = tiny_llama
    from vllm_debias import offline

    cfg = dl.DebiasSamplingConfig(alpha=1.0, beta=0.5, counterfactual_prefix=" ")  # aux ~ main: coincide if left
    prompts = ["The nurse said that", "A pilot", "The doctor told me that"]
    real_with_args = offline._with_args

    def short_aux(sp, extra, **changes):
        out = real_with_args(sp, extra, **changes)
        if extra.get("debias_role") == "aux":
            out.max_tokens = out.min_tokens = N - 3
        return out

    monkeypatch.setattr(offline, "_with_args", short_aux)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy(), fallback="none")
    assert _status(outs) == ["not_applied"] * 3
    monkeypatch.setattr(offline, "_with_args", real_with_args)
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(cfg, prompts), alpha=cfg.alpha,
                                                    beta=cfg.beta)
    outs = vllm_debias.generate(llm, prompts, cfg, _greedy())
    assert _status(outs) == ["applied"] * 3 and _ids(outs) == _hf_greedy(model, tok, prompts, processors=[proc])


def test_twin_rows_sampling_seeded_repeats_and_unseeded_copies_differ(llm):
    cfg = dl.DebiasSamplingConfig(alpha=1.0, beta=0.05, counterfactual_prefix="He is a man. ")
    seeded = SamplingParams(max_tokens=N, temperature=1.0, top_p=0.9, seed=11)
    a = _ids(vllm_debias.generate(llm, PLAIN[:2], cfg, seeded, fallback="raise"))
    b = _ids(vllm_debias.generate(llm, PLAIN[:2], cfg, seeded, fallback="raise"))
    assert a == b
    c = _ids(vllm_debias.generate(llm, PLAIN[:2], cfg, SamplingParams(max_tokens=N, temperature=1.0, top_p=0.9,
                                                                       seed=12), fallback="raise"))
    assert c != a
    # issue 13 item 1: four copies of one prompt at T=1 without a seed draw independently (they all were equal)
    outs = vllm_debias.generate(llm, [PLAIN[0]] * 4, cfg, SamplingParams(max_tokens=N, temperature=1.0),
                                fallback="raise")
    assert _status(outs) == ["applied"] * 4
    assert len({tuple(x) for x in _ids(outs)}) >= 3
    plain = llm.generate([PLAIN[0]] * 4, SamplingParams(max_tokens=N, temperature=1.0), use_tqdm=False)
    assert len({tuple(x) for x in _ids(plain)}) >= 3  # as plain vLLM does


def test_seeded_twin_rows_equal_the_seeded_lockstep_fallback(llm, monkeypatch):
    """Twin rows and the lockstep driver share the contrast, the sampler and the seeded draws: forcing every
    pair to the lockstep fallback gives the same tokens (beta keeps the plausible set within 128 candidates)."""
    from vllm_debias import offline

    cfg = dl.DebiasSamplingConfig(alpha=2.0, beta=0.8, counterfactual_prefix="She is a woman. ")
    sp = SamplingParams(max_tokens=N, temperature=1.0, top_k=20, min_p=0.02, seed=5)
    twin = vllm_debias.generate(llm, PLAIN[:3], cfg, sp, fallback="raise")
    assert _status(twin) == ["applied"] * 3
    monkeypatch.setattr(offline, "_run_wave", lambda llm_, wave, *a: list(wave))  # every pair "drifts"
    lock = vllm_debias.generate(llm, PLAIN[:3], cfg, sp, lockstep_k=128)
    assert _status(lock) == ["lockstep"] * 3 and not any(o.debias_status.reason for o in lock)
    assert _ids(lock) == _ids(twin)


# -- NBLS ------------------------------------------------------------------------------------------------------
def test_nbls_matches_hf_text_and_chat(llm, tiny_llama):
    model, tok = tiny_llama
    cfg = dl.NBLSConfig(k=4)
    wrapped = dl.wrap(model, tok, cfg)
    prompts = ["Write about a surgeon.", "The nurse said that"]
    got = [o.outputs[0].text for o in vllm_debias.generate(llm, prompts, cfg, _greedy())]
    assert got == wrapped.generate_text(prompts, chat=False, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    got_chat = [o.outputs[0].text for o in vllm_debias.generate(llm, chats, cfg, _greedy())]
    assert got_chat == wrapped.generate_text(chats, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    assert got_chat == [o.outputs[0].text for o in vllm_debias.generate(llm, prompts, cfg, _greedy(), chat=True)]


# -- offline validation -----------------------------------------------------------------------------------------
def test_offline_bad_args_raise_our_message(llm):
    from vllm.exceptions import VLLMValidationError

    for extra, needle in (({"debias_method": "uddia"}, "needs gradients"), ({"debias_method": "nope"}, "unknown method"),
                          ({"method": "calibration"}, "opt-in key is 'debias_method'")):
        with pytest.raises((ValueError, VLLMValidationError), match=needle):
            llm.generate(PLAIN[:1], _greedy(extra_args=extra), use_tqdm=False)
    with pytest.raises(ValueError, match="needs gradients"):
        vllm_debias.generate(llm, PLAIN[:1], "uddia", _greedy())
