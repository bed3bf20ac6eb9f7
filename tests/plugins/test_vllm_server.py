"""vllm_debias behind vLLM's OpenAI-compatible server, started by ``debias-lm serve`` on 127.0.0.1.

One server process (with the plugin and the NBLS chat template) serves the whole module. The plain-request
baseline is an in-process engine **without** the plugin on the same model directory, dtype and greedy
settings (run first, then shut down; built inside ``vllm_debias.processors.without_installed``, so it has no
vllm_debias processor even where debias-lm is installed) — standing in for a no-plugin server: a server process
re-reads the entry points, and an in-process engine is the same engine core without the HTTP layer.
"""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

from vllm_debias import LockstepClient, request_args, shutdown  # noqa: E402
from vllm_debias.calibration import label_priors_http  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.core.contrast import calibration_offsets  # noqa: E402
from debias_lm.labels import label_token_ids  # noqa: E402
from debias_lm.methods.debias_sampling.counterfactual import counterfactual_texts  # noqa: E402
from debias_lm.methods.debias_sampling.processor import DebiasSamplingLogitsProcessor  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.server]

N = 8
PROMPTS = ["The nurse said that", "A pilot", "The doctor told me that", "He and she went to the",
           "The teacher asked the student", "Women and men work in every", "What is the capital of", "Describe the"]
CAL = dl.CalibrationConfig(labels=("he", "she"), prior="given", prior_probs=(0.999, 0.001))


def _post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def soak_requests(tiny_llama):
    """A small soak (every request kind of ``vllm_debias.soak`` three times) over this module's server."""
    from vllm_debias.soak import build_requests

    _, tok = tiny_llama
    return build_requests(93, tok, len(tok), 2048, N, prompts=PROMPTS, labels=CAL.labels)


@pytest.fixture(scope="module")
def baseline(tiny_llama_dir, soak_requests):
    from vllm import LLM, SamplingParams
    from vllm_debias.processors import without_installed
    from vllm_debias.soak import reference_from_llm

    with without_installed():  # no vllm_debias processor even where debias-lm is installed
        llm = LLM(model=str(tiny_llama_dir), dtype="float32", max_model_len=2048, enforce_eager=True, seed=0)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=N, min_tokens=N, temperature=0.0), use_tqdm=False)
    ids = {"greedy": [list(o.outputs[0].token_ids) for o in outs], "soak": reference_from_llm(llm, soak_requests)}
    shutdown(llm)
    del llm
    gc.collect()
    return ids


def _with_processor_entry_points(env: dict, tmp) -> dict:
    """The server as an installed debias-lm runs it: the processors are ``vllm.logits_processors`` entry points
    (when this environment's install does not declare them yet, a minimal ``.dist-info`` on the server's
    PYTHONPATH does) *and* ``debias-lm serve`` names them, so each class is built twice in the server's engine:
    the calibration and soak results below equal single application only if the second instance is inert."""
    from importlib.metadata import entry_points

    from vllm_debias import LOGITS_PROCESSORS

    if {ep.value for ep in entry_points(group="vllm.logits_processors")} >= set(LOGITS_PROCESSORS):
        return env
    dist = tmp / "site" / "debias_lm_processors_entry-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: debias-lm-processors-entry\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[vllm.logits_processors]\n" + "".join(
        f"debias_lm_{i} = {fqcn}\n" for i, fqcn in enumerate(LOGITS_PROCESSORS)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "site"), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory, baseline):
    from debias_lm.testing.server import serve_local

    tmp = tmp_path_factory.mktemp("server")
    env = _with_processor_entry_points(dict(os.environ), tmp)
    with serve_local(tiny_llama_dir, tmp / "server.log", args=("--dtype", "float32", "--max-model-len", "2048",
                                                               "--nbls", "--nbls-k", "4"), env=env) as srv:
        yield {"url": srv.url, "model": srv.model, "log": srv.log}


def _complete(server, prompt, xargs=None, **kw):
    body = {"model": server["model"], "prompt": prompt, "max_tokens": N, "min_tokens": N, "temperature": 0.0,
            "return_token_ids": True, **kw}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return _post(server["url"] + "/v1/completions", body)


def _token_ids(resp: dict) -> list[int]:
    return list(resp["choices"][0]["token_ids"])


def _hf_calibrated(model, tok, prompt):
    groups = label_token_ids(tok, CAL.labels)
    off = calibration_offsets(torch.tensor(CAL.prior_probs, dtype=torch.float64), CAL.eps)
    start = []

    def proc(input_ids, scores):
        if not start:
            start.append(input_ids.shape[1])
        if input_ids.shape[1] == start[0]:
            scores = scores.clone()
            for j, g in enumerate(groups):
                scores[:, g] += float(off[j])
        return scores

    enc = tok([prompt], return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N, logits_processor=[proc])
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_bad_vllm_xargs_get_http_400_with_our_message(server, tiny_llama):
    _, tok = tiny_llama
    cal = request_args(CAL, tok)
    ds = request_args(dl.DebiasSamplingConfig(), pair="p", role="main")
    cases = [
        ({"debias_method": "nope"}, "unknown method 'nope'"),
        ({**ds, "debias_alpha": -0.5}, "alpha=-0.5"),
        ({**ds, "debias_alpha": 1e38}, "expected a number in [0, 100]"),  # issue 18: it used to crash the engine
        ({"debias_method": "debias_sampling", "debias_alpha": 1.0}, "needs a pair id"),
        ({"debias_method": "uddia"}, "needs gradients"),
        ({"debias_method": "calibration", "debias_prior": "given", "debias_prior_probs": [0.5, 0.5],
          "debias_labels": ["he", "she"]}, "debias_label_ids"),
        # label ids beyond the vocabulary (silently uncalibrated before)
        ({**cal, "debias_label_ids": [t + 10**6 for t in cal["debias_label_ids"]]}, "beyond the model's vocabulary"),
        # a bad prior: a clear message, not a bare 'math domain error'
        ({**cal, "debias_prior_probs": [0.0, 1.0], "debias_eps": 0.0}, "needs eps > 0"),
        ({**cal, "debias_prior_probs": [1e308, 1e308]}, "expected finite probabilities"),
        # the generic key of earlier versions (config.to_dict()) is refused with the way forward
        (dl.DebiasSamplingConfig().to_dict(), "opt-in key is 'debias_method'"),
    ]
    for xargs, needle in cases:
        code, body = _complete(server, "The nurse said that", xargs)
        assert code == 400, (xargs, body)
        assert needle in json.dumps(body) and "math domain" not in json.dumps(body), (needle, body)
    code, body = _post(server["url"] + "/v1/chat/completions",
                       {"model": server["model"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                        "vllm_xargs": {"debias_method": "uddia"}})
    assert code == 400 and "needs gradients" in json.dumps(body)
    code, body = _complete(server, "The nurse said that")  # still serving
    assert code == 200 and len(_token_ids(body)) == N


def test_debias_sampling_pair_round_trip_over_http(server, tiny_llama):
    """The documented opt-in survives vLLM's request schema (JSON true arrives as 1): both rows of a pair get
    HTTP 200. HTTP requests are not co-scheduled, so the pair usually breaks; the processor then makes the two
    outputs differ -- so equal outputs can only be the contrasted result."""
    model, tok = tiny_llama
    cfg = dl.DebiasSamplingConfig(alpha=2.0, beta=0.05, counterfactual_prefix="He is a man. ")
    prompt = "The nurse said that"
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(cfg, [prompt]), alpha=cfg.alpha,
                                                    beta=cfg.beta)
    enc = tok([prompt], return_tensors="pt")
    ref = model.generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N, logits_processor=[proc])
    ref = ref[0, enc["input_ids"].shape[1]:].tolist()
    for i in range(3):
        extra = {"debias_fused": True} if i == 1 else {}
        main = {**request_args(cfg, pair=f"h{i}", role="main"), **extra}
        aux = {**request_args(cfg, pair=f"h{i}", role="aux"), **extra}
        with ThreadPoolExecutor(2) as ex:
            (cm, bm), (ca, ba) = ex.map(lambda a: _complete(server, a[0], a[1]),
                                        [(prompt, main), (cfg.counterfactual_prefix + prompt, aux)])
        assert cm == ca == 200, (bm, ba)
        if _token_ids(bm) == _token_ids(ba):
            assert _token_ids(bm) == ref


def test_concurrent_mixed_requests(server, baseline, tiny_llama):
    model, tok = tiny_llama
    cal_args = request_args(CAL, tok)
    jobs = []
    for i in range(56):
        p = PROMPTS[i % len(PROMPTS)]
        kind = ("plain", "calibration", "plain_other_xargs", "identity")[i % 4]
        xargs = {"calibration": cal_args, "plain_other_xargs": {"someone_elses_key": 1, "method": "beam"},
                 "identity": {"debias_method": "identity"}}.get(kind)
        jobs.append((i, p, kind, xargs))
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=56) as ex:
        results = list(ex.map(lambda j: (j, _complete(server, j[1], j[3])), jobs))
    elapsed = time.time() - t0
    assert all(code == 200 for _, (code, _) in results), [b for _, (c, b) in results if c != 200][:2]
    cal_ref = {}
    for (_i, p, kind, _), (_, body) in results:
        ids = _token_ids(body)
        if kind == "calibration":
            if p not in cal_ref:
                cal_ref[p] = _hf_calibrated(model, tok, p)
            assert ids == cal_ref[p], p
        else:
            assert ids == baseline["greedy"][PROMPTS.index(p)], (kind, p)
    assert any(cal_ref[p] != baseline["greedy"][PROMPTS.index(p)] for p in cal_ref)
    print(f"56 concurrent requests in {elapsed:.1f} s")


def test_soak_bad_and_extreme_requests_do_not_hurt_the_server(server, baseline, soak_requests):
    """93 concurrent requests of every kind the soak script sends: plain ones equal the no-plugin engine,
    valid opted-in ones get their tokens, bad ones HTTP 400, and the server keeps serving."""
    from vllm_debias.soak import soak

    report = soak(server["url"], server["model"], soak_requests, baseline["soak"], max_seconds=300,
                  workers=len(soak_requests))
    assert report["findings"] == [] and report["server_up_after"]
    assert report["bad_requests"] >= 50 and report["plain_requests"] >= 12


def test_lockstep_client_matches_hf(server, tiny_llama):
    model, tok = tiny_llama
    # the tiny random model is nearly flat (its 128th token is ~0.4 nats below the top), so beta 0.8 keeps the
    # plausible set within the 128 candidates: the lockstep result is then exact, not lucky
    cfg = dl.DebiasSamplingConfig(alpha=3.0, beta=0.8, counterfactual_swap="gender")
    prompts = ["The nurse said that she", "He and his friend went to the"]
    client = LockstepClient(server["url"], server["model"], k=128)
    # the server's own stop rules, asked of it (a stock server works alike: no tokenizer endpoint needed)
    assert client.is_stop(tok.eos_token_id) and not client.is_stop(tok.eos_token_id + 1)
    res = client.generate(prompts, cfg, max_tokens=N, min_tokens=N)
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, counterfactual_texts(cfg, prompts), alpha=cfg.alpha,
                                                    beta=cfg.beta)
    enc = tok(prompts, return_tensors="pt", padding=True)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N, logits_processor=[proc])
    assert [r.token_ids for r in res] == ref[:, enc["input_ids"].shape[1]:].tolist()
    assert all(r.truncated_steps == 0 for r in res)
    plain = model.generate(**enc, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    assert not torch.equal(plain, ref)
    assert all(r.status == "lockstep" and r.reason == "" for r in res)


def test_lockstep_client_sampling_and_stop_strings(server):
    cfg = dl.DebiasSamplingConfig(alpha=1.0, beta=0.8, counterfactual_swap="gender")
    client = LockstepClient(server["url"], server["model"], k=64)
    prompts = ["The nurse said that she"] * 4
    a = client.generate(prompts[:2], cfg, max_tokens=N, temperature=1.0, seed=3, ignore_eos=True)
    b = client.generate(prompts[:2], cfg, max_tokens=N, temperature=1.0, seed=3, ignore_eos=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert a[0].token_ids == a[1].token_ids  # same seed, same prompt: the same draws
    free = client.generate(prompts, cfg, max_tokens=N, temperature=1.0, ignore_eos=True)
    assert len({tuple(r.token_ids) for r in free}) >= 3  # unseeded: independent per prompt
    text = client.generate(prompts[:1], cfg, max_tokens=N, ignore_eos=True)[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.generate(prompts[:1], cfg, max_tokens=N, ignore_eos=True, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop and cut.text == text[:text.find(stop)]


def test_nbls_chat_template_path_matches_hf(server, tiny_llama):
    model, tok = tiny_llama
    msgs = [{"role": "user", "content": "Write one sentence about a surgeon."}]
    code, body = _post(server["url"] + "/v1/chat/completions",
                       {"model": server["model"], "messages": msgs, "max_tokens": N, "min_tokens": N,
                        "temperature": 0.0})
    assert code == 200, body
    hf = dl.wrap(model, tok, dl.NBLSConfig(k=4)).generate_text([msgs], do_sample=False, max_new_tokens=N,
                                                               min_new_tokens=N)
    assert body["choices"][0]["message"]["content"] == hf[0]


def test_label_priors_over_http_match_hf(server, tiny_llama):
    model, tok = tiny_llama
    texts = ["N/A", "The person said that"]
    got = label_priors_http(server["url"], server["model"], texts, CAL.labels, tok)
    groups = label_token_ids(tok, CAL.labels)
    for text, row in zip(texts, got):
        with torch.no_grad():
            lp = torch.log_softmax(model(**tok([text], return_tensors="pt")).logits[0, -1].double(), -1)
        p = torch.stack([lp[g].exp().sum() for g in groups])
        assert row == pytest.approx((p / p.sum()).tolist(), abs=2e-4)
