"""A bounded soak of ``debias-lm serve``: many concurrent mixed requests, bad and extreme ones included.

    python -m vllm_debias.soak                                  # embedded SmolLM2-135M-Instruct, 240 requests
    python -m vllm_debias.soak --model DIR --requests 400 --max-seconds 600 --out soak.json
    python -m vllm_debias.soak --steer tox=V.safetensors --steer g=G.safetensors     # + steering kinds

What it does, in order (only on 127.0.0.1; the request count and the wall time are bounded):

1. the no-plugin reference: the plain requests through an in-process vLLM engine **without** the plugin (same
   model, dtype and context length), then that engine is shut down;
2. starts ``debias-lm serve`` on a free local port (or uses ``--url http://127.0.0.1:PORT`` of a running one,
   with ``--model`` naming what it serves);
3. sends every request at once from a thread pool: plain ones (greedy and seeded sampling, some carrying
   another plugin's keys), identity, valid calibration and debias-sampling requests (extreme but valid values
   included), and invalid ones (alpha 1e38 / -1 / "nan" / "inf", beta 0 / 2, label ids beyond the vocabulary,
   negative or repeated ids, a zero prior with eps 0, an overflowing prior, wrong types, unknown keys, the old
   ``method`` key, a body with a NaN literal, a plain request longer than the context);
   With ``--steer NAME=FILE`` the server serves those vectors and the load adds steered requests (add,
   generated positions only, ablation, scale 0) on the same prompts as the plain ones — so plain requests also
   check the prefix-cache salt — and bad ones (unknown name, scale 1e9 / "nan", bad positions / mode / layers,
   a misspelt key); steered tokens are checked against the HF ``steer`` path;
4. checks: the server is still up (``/health`` and a last plain request); every plain request returned exactly
   the reference tokens; every request meant to succeed got HTTP 200 with its tokens; every bad one got HTTP 400
   (never 500, never a dropped connection).

Exit status 0 when every check holds, 1 otherwise; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlparse

PROMPTS = ["The nurse said that", "The engineer explained that", "My neighbour, a carpenter, told me",
           "The CEO of the company announced", "A pilot walked into the", "The teacher asked the students to",
           "Is a nurse more likely a woman? Answer yes or no:", "The doctor told me that"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: bytes, timeout: float) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read() or b"{}"
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, raw.decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - a dropped connection or a timeout is a finding, not a crash
        return -1, f"{type(e).__name__}: {e}"


def steer_kinds(steer: dict[str, tuple[int, ...]]) -> list[tuple[str, object, dict, dict]]:
    """Steering request kinds for the served vectors ``{name: layers in its file}`` (two names at most used)."""
    names = sorted(steer)
    a, b = names[0], names[-1]

    def x(name, **kw):
        return {"debias_method": "steer", "debias_vectors": name, **kw}

    return [
        ("steer_add", "steer", x(a, debias_scale=4.0), {}),
        ("steer_generated", "steer", x(b, debias_scale=-4.0, debias_positions="generated"), {}),
        ("steer_ablate_one_layer", "steer", x(a, debias_mode="ablate", debias_layers=[steer[a][-1]]), {}),
        ("steer_scale_0_is_plain", "ref", x(a, debias_scale=0.0), {}),
        ("bad_steer_unknown_name", 400, x("no-such-vectors"), {}),
        ("bad_steer_scale_1e9", 400, x(a, debias_scale=1e9), {}),
        ("bad_steer_scale_nan_string", 400, x(a, debias_scale="nan"), {}),
        ("bad_steer_positions", 400, x(a, debias_positions="prompt"), {}),
        ("bad_steer_mode", 400, x(a, debias_mode="subtract"), {}),
        ("bad_steer_layer_not_in_file", 400, x(a, debias_layers=[max(steer[a]) + 1000]), {}),
        ("bad_steer_misspelt_key", 400, {**x(a), "debias_scal": 2.0}, {}),
    ]


def build_requests(n: int, tokenizer, vocab_size: int, max_model_len: int, max_tokens: int,
                   seed: int = 0, prompts: list[str] = PROMPTS, labels: tuple[str, ...] = ("yes", "no"),
                   steer: dict[str, tuple[int, ...]] | None = None) -> list[dict]:
    """``n`` requests cycling through the kinds below; each is ``{"kind", "expect", "body", "raw"?}`` where
    ``expect`` is ``"ref"`` (200 and the reference tokens), ``"steer"`` (200, and the HF steer path's tokens when
    a reference has them), ``200`` or ``400``. ``steer``: the server's vectors ``{name: layers}`` (adds
    :func:`steer_kinds`)."""
    import debias_lm as dl

    from .args import request_args

    rng = random.Random(seed)
    cal = request_args(dl.CalibrationConfig(labels=labels, prior="given", prior_probs=(0.7, 0.3)), tokenizer)
    ids = cal["debias_label_ids"]
    ds_cfg = dl.DebiasSamplingConfig(alpha=1.0, counterfactual_prefix="He is a man. ")

    def pair(alpha=1.0, beta=0.1, role="main"):
        args = request_args(ds_cfg, pair=f"soak{rng.randrange(10**9)}", role=role)
        args.update(debias_alpha=alpha, debias_beta=beta)
        return args

    long_prompt = " ".join(["word"] * (max_model_len + 8))
    kinds: list[tuple[str, object, dict | None, dict]] = [
        # name, expect, vllm_xargs, extra body fields
        ("plain_greedy", "ref", None, {}),
        ("plain_seeded", "ref", None, {"temperature": 1.0, "seed": 7}),
        ("plain_other_plugin_keys", "ref", {"method": "beam_search", "someone_elses": 3}, {}),
        ("identity", "ref", {"debias_method": "identity"}, {}),
        ("calibration", 200, cal, {}),
        ("calibration_extreme_prior", 200, {**cal, "debias_prior_probs": [1e-300, 1.0]}, {}),
        ("calibration_eps_1", 200, {**cal, "debias_eps": 1.0}, {}),
        ("pair_main", 200, pair(), {}),
        ("pair_aux", 200, pair(role="aux"), {}),
        ("pair_alpha_0", 200, pair(alpha=0.0), {}),
        ("pair_alpha_100_sampled", 200, pair(alpha=100.0), {"temperature": 1.0}),
        ("pair_beta_1", 200, pair(beta=1.0), {}),
        ("pair_fused_true", 200, {**pair(), "debias_fused": True}, {}),
        ("bad_alpha_1e38", 400, pair(alpha=1e38), {"temperature": 0.8}),
        ("bad_alpha_negative", 400, pair(alpha=-1.0), {}),
        ("bad_alpha_nan_string", 400, pair(alpha="nan"), {}),
        ("bad_alpha_inf_string", 400, pair(alpha="inf"), {}),
        ("bad_beta_0", 400, pair(beta=0.0), {}),
        ("bad_beta_2", 400, pair(beta=2.0), {}),
        ("bad_label_ids_beyond_vocab", 400, {**cal, "debias_label_ids": [i + vocab_size for i in ids]}, {}),
        ("bad_label_ids_negative", 400, {**cal, "debias_label_ids": [-1] + ids[1:]}, {}),
        ("bad_label_ids_repeated", 400, {**cal, "debias_label_ids": [ids[0]] * len(ids)}, {}),
        ("bad_prior_zero_eps_0", 400, {**cal, "debias_prior_probs": [0.0, 1.0], "debias_eps": 0.0}, {}),
        ("bad_prior_overflow", 400, {**cal, "debias_prior_probs": [1e308, 1e308]}, {}),
        ("bad_prior_string", 400, {**cal, "debias_prior_probs": ["a", "b"]}, {}),
        ("bad_unknown_key", 400, {**cal, "debias_alfa": 1}, {}),
        ("bad_old_method_key", 400, dl.DebiasSamplingConfig().to_dict(), {}),
        ("bad_pair_without_method", 400, {"debias_pair": "x", "debias_role": "main"}, {}),
        ("bad_uddia", 400, {"debias_method": "uddia"}, {}),
        ("bad_nan_literal_body", 400, None, {"raw": True}),
        ("bad_plain_too_long", 400, None, {"prompt": long_prompt}),
    ]
    if steer:
        kinds += steer_kinds(steer)
    out = []
    for i in range(n):
        name, expect, xargs, extra = kinds[i % len(kinds)]
        if name == "pair_main":  # keep a fresh pair id per request
            xargs = pair()
        elif name == "pair_aux":
            xargs = pair(role="aux")
        prompt = extra.get("prompt", prompts[i % len(prompts)])
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "return_token_ids": True}
        body.update({k: v for k, v in extra.items() if k not in ("raw", "prompt")})
        if extra.get("raw"):  # a NaN literal (json.dumps writes it; it is not JSON): the server must refuse it
            xargs = {**pair(), "debias_alpha": float("nan")}
        if xargs is not None:
            body["vllm_xargs"] = xargs
        out.append({"kind": name, "expect": expect, "body": body})
    return out


def reference_from_llm(llm, requests: list[dict]) -> dict[tuple, list[int]]:
    """Tokens of every distinct plain request from ``llm``, an engine without the plugin."""
    from vllm import SamplingParams

    keys = sorted({_ref_key(r["body"]) for r in requests if r["expect"] == "ref"}, key=repr)
    sps = [SamplingParams(max_tokens=k[1], temperature=k[2], seed=k[3]) for k in keys]
    outs = llm.generate([k[0] for k in keys], sps, use_tqdm=False)
    return {k: list(o.outputs[0].token_ids) for k, o in zip(keys, outs)}


def steer_reference_hf(model: str, dtype: str, requests: list[dict], files: dict[str, str]) -> dict[tuple, list[int]]:
    """Greedy tokens of every distinct valid steered request through the HF ``steer`` path (``dl.wrap``)."""
    import debias_lm as dl
    from debias_lm.models import load_model

    wanted = {}
    for r in requests:
        if r["expect"] == "steer" and float(r["body"].get("temperature", 0.0)) == 0.0:
            wanted[_ref_key(r["body"])] = r["body"]
    if not wanted:
        return {}
    hf, tok = load_model(model, dtype=dtype)
    out = {}
    for key, body in wanted.items():
        xa = body["vllm_xargs"]
        config = dl.SteerConfig(vectors=files[xa["debias_vectors"]], **{
            k[len("debias_"):]: (tuple(v) if isinstance(v, list) else v) for k, v in xa.items()
            if k not in ("debias_method", "debias_vectors")})
        enc = tok(body["prompt"], return_tensors="pt")
        gen = dl.wrap(hf, tok, config).generate(**enc, do_sample=False, max_new_tokens=body["max_tokens"])
        out[key] = gen[0, enc["input_ids"].shape[1]:].tolist()
    return out


def reference_tokens(model: str, dtype: str, max_model_len: int, requests: list[dict]) -> dict[tuple, list[int]]:
    """:func:`reference_from_llm` on an in-process engine without the plugin, shut down afterwards."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    from .offline import shutdown

    llm = LLM(model=model, dtype=dtype, max_model_len=max_model_len, enforce_eager=True, seed=0)
    try:
        return reference_from_llm(llm, requests)
    finally:
        shutdown(llm)
        del llm


def _ref_key(body: dict) -> tuple:
    xa = body.get("vllm_xargs") or {}
    steer = json.dumps(xa, sort_keys=True) if "debias_vectors" in xa and xa.get("debias_scale") != 0 \
        else None
    return (body["prompt"], body["max_tokens"], float(body.get("temperature", 0.0)), body.get("seed")) + (
        (steer,) if steer else ())


class _Server:
    """``debias-lm serve`` on 127.0.0.1 in its own process group, stopped on exit."""

    def __init__(self, model: str, dtype: str, max_model_len: int, log_path: str, timeout: float = 600.0,
                 steer: dict[str, str] | None = None):
        from .serve import server_command, server_env

        self.port = _free_port()
        cmd = server_command(model, host="127.0.0.1", port=self.port, dtype=dtype, max_model_len=max_model_len,
                             extra=["--enforce-eager", "--seed", "0"], steer=steer)
        env = server_env(model=model, steer=steer)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + timeout
        while not _healthy(self.url):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not come up; see {log_path}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def soak(url: str, model_name: str, requests: list[dict], reference: dict | None, *, max_seconds: float,
         workers: int) -> dict:
    """Send every request concurrently; return the findings."""
    endpoint = url + "/v1/completions"
    t0 = time.time()

    def one(r):
        data = json.dumps(dict(r["body"], model=model_name)).encode()
        start = time.time()
        code, resp = _post(endpoint, data, timeout=max(1.0, max_seconds - (start - t0)))
        return code, resp, time.time() - start

    with ThreadPoolExecutor(max_workers=workers) as ex:
        futures = [ex.submit(one, r) for r in requests]
        done, pending = wait(futures, timeout=max_seconds)
    elapsed = time.time() - t0
    findings, per_kind, latencies = [], {}, []
    for r, f in zip(requests, futures):
        kind = per_kind.setdefault(r["kind"], {"sent": 0, "ok": 0, "codes": {}})
        kind["sent"] += 1
        if f not in done:
            findings.append({"kind": r["kind"], "problem": "no answer within --max-seconds"})
            continue
        code, resp, dt = f.result()
        latencies.append(dt)
        kind["codes"][str(code)] = kind["codes"].get(str(code), 0) + 1
        problem = None
        if r["expect"] == 400:
            if code != 400:
                problem = f"expected HTTP 400, got {code}"
        elif code != 200:
            problem = f"expected HTTP 200, got {code}: {str(resp)[:200]}"
        else:
            toks = list(resp["choices"][0].get("token_ids") or [])
            if not toks:
                problem = "HTTP 200 without tokens"
            elif r["expect"] == "ref" and reference is not None and toks != reference[_ref_key(r["body"])]:
                problem = "plain request differs from the no-plugin reference"
            elif r["expect"] == "steer" and reference is not None and _ref_key(r["body"]) in reference and \
                    toks != reference[_ref_key(r["body"])]:
                problem = "steered request differs from the HF steer path"
        if problem:
            findings.append({"kind": r["kind"], "problem": problem})
        else:
            kind["ok"] += 1
    alive = _healthy(url)
    last_code, _ = _post(endpoint, json.dumps({"model": model_name, "prompt": PROMPTS[0], "max_tokens": 2}).encode(),
                         timeout=60)
    if not alive or last_code != 200:
        findings.append({"kind": "server", "problem": f"not serving after the soak (health {alive}, "
                                                      f"plain request HTTP {last_code})"})
    expects = [r["expect"] for r in requests]
    return {"requests": len(requests), "concurrency": min(workers, len(requests)), "elapsed_s": round(elapsed, 2),
            "plain_requests": expects.count("ref"), "opted_in_ok": sum(1 for e in expects if e in (200, "steer")),
            "bad_requests": expects.count(400), "median_latency_s": round(statistics.median(latencies), 3)
            if latencies else None, "server_up_after": alive and last_code == 200, "per_kind": per_kind,
            "findings": findings, "passed": not findings}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_debias.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model dir/id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=240, help="how many requests (>= 200 for the soak)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="concurrent connections (default: all requests)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="wall-time bound for the load")
    ap.add_argument("--url", default=None, help="a running server on this machine (127.0.0.1) instead of starting one")
    ap.add_argument("--no-reference", action="store_true", help="skip the no-plugin reference engine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steer", action="append", default=[], metavar="NAME=FILE",
                    help="serve these steering vectors and add steered / bad steer requests (repeatable)")
    ap.add_argument("--out", default=None, help="write the findings as JSON here")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 5000:
        ap.error("--requests must be in [1, 5000]")
    if args.url and urlparse(args.url).hostname not in LOCAL_HOSTS:
        ap.error("--url must point at this machine (127.0.0.1 / localhost)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from .serve import resolve_model, vocab_size

    model = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model)
    steer = None
    if args.steer:
        from .serve import check_served_model
        from .steer.vectors import infos, parse_specs

        steer = parse_specs(args.steer)
        check_served_model(steer, model)
    requests = build_requests(args.requests, tok, vocab_size(model) or len(tok), args.max_model_len,
                              args.max_tokens, args.seed,
                              steer={n: i.layers for n, i in infos(steer).items()} if steer else None)
    reference = None if args.no_reference else reference_tokens(model, args.dtype, args.max_model_len, requests)
    if reference is not None and steer:
        reference.update(steer_reference_hf(model, args.dtype, requests, steer))
    server = None
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            log_path = os.path.join(tempfile.mkdtemp(prefix="vllm-debias-soak-"), "server.log")
            print(f"starting debias-lm serve (log: {log_path})", file=sys.stderr)
            server = _Server(model, args.dtype, args.max_model_len, log_path, steer=steer)
            url = server.url
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            served = json.loads(r.read())["data"][0]["id"]
        report = soak(url, served, requests, reference, max_seconds=args.max_seconds,
                      workers=args.workers or len(requests))
    finally:
        if server is not None:
            server.stop()
    report.update(model=model, dtype=args.dtype, max_tokens=args.max_tokens, reference=reference is not None)
    for name, k in sorted(report["per_kind"].items()):
        print(f"{name:<30} sent {k['sent']:>4}  as expected {k['ok']:>4}  HTTP {k['codes']}")
    print(f"{report['requests']} requests ({report['plain_requests']} plain, {report['opted_in_ok']} opted in and "
          f"valid, {report['bad_requests']} bad), {report['concurrency']} at once, {report['elapsed_s']} s; "
          f"server up after: {report['server_up_after']}; findings: {len(report['findings'])}")
    for f in report["findings"][:20]:
        print("  FINDING", f)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
